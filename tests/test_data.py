"""data.py against independent references: transformers' BertTokenizer for every tokenization, the raw shard files
read back with plain numpy (np.fromfile), values worked out by hand, and sampling statistics compared with the
probabilities the paper's recipe prescribes. transformers is only ever imported here, never by data.py."""
import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import data
from corpus import prepare
from machinery import tokenizer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
BERT_DIR = SHARED / "bert-base-uncased"
needs_shared = pytest.mark.skipif(not (BERT_DIR / "vocab.txt").is_file(),
                                  reason=f"shared development data not found at {SHARED} (tokenizer parity on real "
                                         "text needs bert-base-uncased/vocab.txt and corpora/)")
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def reference_tokenizer(folder):
    """transformers' own BERT tokenizer (uncased) for the vocab.txt in `folder`."""
    from transformers import BertTokenizerFast
    return BertTokenizerFast.from_pretrained(str(folder), do_lower_case=True)


def write_vocab(folder, tokens):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return folder / "vocab.txt"


def read_split(folder, split, dtype):
    """Documents of a split straight from the files: {split}_NNN.bin raw ids + {split}_NNN.docs.npy offsets."""
    docs = []
    for path in sorted(folder.glob(f"{split}_*.bin")):
        ids = np.fromfile(path, dtype=dtype)
        offsets = np.load(path.with_name(path.stem + ".docs.npy"))
        assert offsets[0] == 0 and offsets[-1] == len(ids)
        docs += [ids[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
    return docs


# ------------------------------------------------------------------------------------------------------------ tokenizer

TRICKY = ["Café Déjà vu", "naïve façade, RÉSUMÉ; Ångström", "中文字符 and 日本語のテキスト, 한국어",
          "MiXeD CaSe WoRdS",
          "Hello, World!!! ... (parens) [brackets] {braces} — em – en - hyphen", "tabs\tand\nnew\r\nlines\x0bvt",
          "control\x00nul\x07bell\x1bescape \u200bzero-width\ufeffbom", "a" * 150, "x" * 100, "y" * 101,
          "supercalifragilisticexpialidocious antidisestablishmentarianism", "emoji 😀👍🏽 ♥ ™ ©",
          "[MASK] and [CLS] inside text [SEP] [UNK] [PAD]", "", "   ", "numbers 3.14159 1,000,000 2019-10-02",
          "ﬁ ligature Ω Å ǅ ½ ²", "Ελληνικά кириллица العربية עברית हिन्दी ไทย",
          "don't can't won't ’quotes’ «guillemets»",
          "http://example.com/path?x=1&y=2 someone@example.org #hashtag @user $100 50%"]


def real_lines(limit_per_file=120):
    lines = []
    for path in sorted((SHARED / "corpora").rglob("*")):
        if path.is_file():
            text = path.read_bytes().decode("utf-8", errors="replace")
            lines += [line for line in text.splitlines() if line.strip()][::17][:limit_per_file]
    return lines


@pytest.mark.slow
@needs_shared
def test_tokenizer_matches_transformers_on_real_text():
    ref = reference_tokenizer(BERT_DIR)
    tok = tokenizer.load_tokenizer(BERT_DIR / "vocab.txt")
    texts = real_lines() + TRICKY
    assert len(texts) > 1000
    want = ref(texts)
    got = tok.encode_batch(texts)
    assert [e.ids for e in got] == want["input_ids"]
    assert sum(e.ids.count(100) for e in got) > 0  # the long words really went through the [UNK] path
    pairs = list(zip(texts[::2], texts[1::2]))
    want = ref([a for a, _ in pairs], [b for _, b in pairs])
    got = tok.encode_batch(pairs)
    assert [e.ids for e in got] == want["input_ids"]
    assert [e.type_ids for e in got] == want["token_type_ids"]
    for max_length in (9, 24):
        trunc = tokenizer.load_tokenizer(BERT_DIR)  # a folder works too
        trunc.enable_truncation(max_length=max_length)
        want = ref(texts, truncation=True, max_length=max_length)
        assert [e.ids for e in trunc.encode_batch(texts)] == want["input_ids"]
        want = ref([a for a, _ in pairs], [b for _, b in pairs], truncation=True, max_length=max_length)
        got = trunc.encode_batch(pairs)
        assert [e.ids for e in got] == want["input_ids"]
        assert [e.type_ids for e in got] == want["token_type_ids"]
    assert tokenizer.special_ids(tok) == dict(pad=0, unk=100, cls=101, sep=102, mask=103)
    lines = (BERT_DIR / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert tokenizer.vocab_hash(tok) == hashlib.sha256("\n".join(lines).encode()).hexdigest()


def test_tokenizer_on_handmade_vocab(tmp_path):
    vocab = SPECIAL + ["the", "cat", "sat", "on", "mat", ".", ",", "caf", "##e", "##s", "un", "##believ", "##able", "!"]
    path = write_vocab(tmp_path, vocab)
    tok = tokenizer.load_tokenizer(path)
    # worked out by hand: lowercase, accents stripped, punctuation split, greedy longest-match-first WordPiece
    assert tok.encode("The cats sat on the MAT.").ids == [2, 5, 6, 14, 7, 8, 5, 9, 10, 3]
    assert tok.encode("Café unbelievable!").ids == [2, 12, 13, 15, 16, 17, 18, 3]
    assert tok.encode("cats dogs", add_special_tokens=False).ids == [6, 14, 1]  # unknown word -> one [UNK]
    assert tok.encode("the [MASK] sat").ids == [2, 5, 4, 7, 3]
    pair = tok.encode("the cat", "sat.")
    assert (pair.ids, pair.type_ids) == ([2, 5, 6, 3, 7, 10, 3], [0, 0, 0, 0, 1, 1, 1])
    assert tok.decode([5, 6, 14, 7]) == "the cats sat"
    assert tokenizer.special_ids(tok) == dict(pad=0, unk=1, cls=2, sep=3, mask=4)
    assert tokenizer.vocab_hash(tok) == hashlib.sha256("\n".join(vocab).encode()).hexdigest()
    ref = reference_tokenizer(tmp_path)
    texts = ["The cats sat on the MAT.", "Café unbelievable!", "cats, dogs", "unbelievablecats"]
    assert [e.ids for e in tok.encode_batch(texts)] == ref(texts)["input_ids"]
    # a saved tokenizer.json is preferred when a folder holds both, and gives the same ids
    tok.save(str(tmp_path / "tokenizer.json"))
    assert tokenizer.load_tokenizer(tmp_path).encode("The cats sat on the MAT.").ids == [2, 5, 6, 14, 7, 8, 5, 9, 10, 3]
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        tokenizer.load_tokenizer(write_vocab(tmp_path / "bad", SPECIAL[:4] + ["the"]))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        tokenizer.load_tokenizer(tmp_path / "nowhere" / "vocab.txt")


def test_train_wordpiece(tmp_path):
    text = ["The quick brown fox jumps over the lazy dog.", "Pack my box with five dozen liquor jugs!"] * 50
    tok = tokenizer.train_wordpiece(iter(text), 120, tmp_path / "vocab.txt")
    lines = (tmp_path / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert lines[:5] == SPECIAL and 40 < len(lines) <= 120 and len(set(lines)) == len(lines)
    assert "##s" in lines or any(t.startswith("##") for t in lines)
    ref = reference_tokenizer(tmp_path)
    ids = ref(text[:2], add_special_tokens=False)["input_ids"]
    assert [e.ids for e in tok.encode_batch(text[:2], add_special_tokens=False)] == ids
    assert 1 not in sum(ids, [])  # every character of the training text is in the alphabet: no [UNK]


# ------------------------------------------------------------------------------------------------------------- prepare

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau upsilon "
         "phi chi psi omega Café naïve Zürich 東京 quick brown fox jumps over lazy dog").split()


def write_corpus(root, n_docs=40, seed=0):
    """Blank-line separated documents spread over several files; returns the documents in file-reading order."""
    rng = np.random.default_rng(seed)
    names = ["a.txt", "b", "sub/c.txt", "sub/deeper/d.txt"]
    docs, per_file = [], {n: [] for n in names}
    for i in range(n_docs):
        lines = [" ".join(rng.choice(WORDS, rng.integers(3, 12))) + rng.choice([".", ",", "!", ""])
                 for _ in range(rng.integers(1, 4))]
        per_file[names[i % len(names)]].append(f"doc{i} " + "\n".join(lines))
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        separator = "\r\n\r\n" if name == "b" else "\n  \n\n"  # CRLF; whitespace-only separator lines
        (root / name).write_bytes(("\n\n" + separator.join(per_file[name]) + "\n").encode("utf-8"))
        docs += per_file[name]
    (root / "notes.md").write_text("not a text corpus file\n")  # folders contribute *.txt and extension-less only
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.txt").write_text("hidden\n")
    return docs


def tiny_setup(tmp_path, n_docs=12):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_corpus(corpus, n_docs=n_docs)
    vocab = write_vocab(tmp_path / "v", SPECIAL + sorted({w.lower() for w in WORDS}))
    return corpus, vocab, tmp_path / "out"


# ----------------------------------------------------------------------------------------------------------- sequences

def test_sequences_cut_and_filter(tmp_path):
    words = [f"w{i}" for i in range(40)]
    vocab = write_vocab(tmp_path / "v", SPECIAL + words)
    ids = {w: i + 5 for i, w in enumerate(words)}  # by hand; "zz" is not in the vocabulary -> [UNK] = 1
    docs = {"A": words[:25],                                 # 25 tokens
            "B": words[:9],                                  # 9 tokens
            "C": words[10:20],                               # 10 tokens
            "D": ["zz"] * 5 + words[:5],                     # 10 tokens, 5 [UNK]
            "E": words[:6] + ["zz"] * 4,                     # 10 tokens, 4 [UNK]
            "F": words[:10] + ["zz"] * 6 + words[:4] + words[20:30]}  # 30 tokens, 6 [UNK] in the middle ten
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "t.txt").write_text("\n\n".join(" ".join(d) for d in docs.values()))
    prepare([tmp_path / "c"], tmp_path / "out", vocab=vocab, valid_fraction=0)
    td = data.TokenData(tmp_path / "out", vocab=vocab)
    tok = {k: [ids.get(w, 1) for w in d] for k, d in docs.items()}
    # max_len 12 -> pieces of 10: A -> 10, 10, (5: 7 tokens, dropped); B: 11 tokens, dropped; C kept;
    # D: half [UNK], dropped; E kept; F -> 10, (10 with 6 [UNK], dropped), 10
    want = {12: [tok["A"][:10], tok["A"][10:20], tok["C"], tok["E"], tok["F"][:10], tok["F"][20:]],
            # max_len 32 -> whole documents: B (11 tokens) and D (half [UNK]) dropped; F has 6/30 [UNK], kept
            32: [tok["A"], tok["C"], tok["E"], tok["F"]]}
    for max_len, expected in want.items():
        seqs = td.sequences("train", max_len)
        got = [seqs[i].tolist() for i in range(len(seqs))]
        assert got == [[2] + e + [3] for e in expected]
        assert all(len(s) <= max_len for s in got)
        assert seqs.lengths.tolist() == [len(e) + 2 for e in expected]
        assert td.sequences("train", max_len) is seqs  # cached
    assert isinstance(td.sequences("train", 12).shards[0], np.memmap)
    assert len(td.sequences("valid", 12)) == 0


# ------------------------------------------------------------------------------------------------------------- batches

class FakeData:
    """Sequences with chosen lengths; sequence i holds content [5 + i, 7, 7, ...] so a row tells which one it is."""
    special = dict(pad=0, unk=1, cls=2, sep=3, mask=4)

    def __init__(self, n, seed=0, low=10, high=62):
        lengths = np.random.default_rng(seed).integers(low, high + 1, n)  # content lengths
        self.tokens = np.concatenate([[5 + i] + [7] * (n_ - 1) for i, n_ in enumerate(lengths)]).astype(np.int64)
        self.starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.lengths = lengths

    def sequences(self, split, max_len):
        assert max_len >= self.lengths.max() + 2
        return data.Sequences([self.tokens], np.zeros(len(self.lengths), np.int32), self.starts, self.lengths, 2, 3)


def rows_of(batch):
    """Which FakeData sequence each row holds (its first content token is 5 + the sequence number)."""
    return [int(row[1]) - 5 for row in batch["input_ids"]]


def check_batch(batch, fake, max_len=64):
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.dtype == mask.dtype == torch.long and ids.shape == mask.shape
    real = mask.sum(1)
    assert ids.shape[1] % 8 == 0 and ids.shape[1] == min(max_len, -(-int(real.max()) // 8) * 8)
    for r, i in enumerate(rows_of(batch)):
        n = fake.lengths[i] + 2
        assert real[r] == n and mask[r, :n].all() and ids[r, 0] == 2 and ids[r, n - 1] == 3
        assert (ids[r, n:] == 0).all() and (mask[r, n:] == 0).all()


@pytest.mark.parametrize("n,batch_size", [(103, 8), (100, 8), (41, 8), (26, 8), (7, 3)])
def test_batches_cover_every_sequence_once_on_any_world_size(n, batch_size):
    fake = FakeData(n)
    global_lists = {}
    for world_size in (1, 2, 3):
        ranks = [data.Batches(fake, "train", 64, batch_size, seed=1, rank=r, world_size=world_size)
                 for r in range(world_size)]
        per_rank = [list(b) for b in ranks]
        assert len({len(p) for p in per_rank} | {len(b) for b in ranks}) == 1  # lockstep: same count everywhere
        seen = sorted(i for p in per_rank for batch in p for i in rows_of(batch))
        full = n // batch_size
        pooled = full % world_size * batch_size + n % batch_size  # worked out from the documented scheme
        dropped = pooled if pooled < world_size else 0
        assert len(seen) == len(set(seen)) == n - dropped and set(seen) <= set(range(n))
        for r, p in enumerate(per_rank):
            assert [b["index"] for b in p] == list(range(r, world_size * len(p), world_size))
            assert all(b["epoch"] == 0 and len(b["input_ids"]) <= batch_size for b in p)
            for batch in p:
                check_batch(batch, fake)
        global_lists[world_size] = {b["index"]: rows_of(b) for p in per_rank for b in p}
    for world_size in (2, 3):  # the global list does not depend on the world size (up to the pooled tail)
        n_main = n // batch_size // world_size * world_size
        assert all(global_lists[world_size][g] == global_lists[1][g] for g in range(n_main))
        assert all(len(global_lists[1][g]) == batch_size for g in range(n_main))


def test_batches_epochs_seeds_and_resume():
    fake = FakeData(150)

    def make(seed=0):
        return data.Batches(fake, "train", 64, 8, seed=seed, rank=1, world_size=2)

    b = make()
    epoch0 = [rows_of(x) for x in b]
    assert b.epoch == 1 and b.state_dict() == {"epoch": 1, "position": 0, "world": 2}  # a finished pass moves to the next epoch
    epoch1 = [rows_of(x) for x in b]
    assert epoch0 != epoch1 and len(epoch0) == len(epoch1) == len(b)
    assert [rows_of(x) for x in make()] == epoch0  # same seed, same order
    assert [rows_of(x) for x in make(seed=1)] != epoch0
    b = make()
    b.set_epoch(1)
    assert [rows_of(x) for x in b] == epoch1
    uninterrupted = make()
    straight = list(uninterrupted) + list(uninterrupted)  # epochs 0 and 1
    for k in (0, 3, len(epoch0) - 1, len(epoch0), len(epoch0) + 2):
        b = make()
        stream = itertools.chain(iter(b), iter(b))
        for _ in range(k):
            next(stream)
        state = b.state_dict()
        assert set(state) == {"epoch", "position", "world"}
        resumed = make()
        resumed.load_state_dict(json.loads(json.dumps(state)))
        rest = list(resumed) + (list(resumed) if state["epoch"] == 0 else [])
        assert [(x["epoch"], x["index"]) for x in rest] == [(x["epoch"], x["index"]) for x in straight[k:]]
        assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(rest, straight[k:]))


def test_group_by_length_cuts_padding():
    fake = FakeData(800, low=5, high=60)
    padded = {}
    for group in (True, False):
        b = data.Batches(fake, "train", 64, 16, group_by_length=group)
        batches = list(b)
        padded[group] = sum(x["input_ids"].numel() for x in batches)
        longest = [int(x["attention_mask"].sum(1).max()) for x in batches]
        assert longest != sorted(longest, reverse=True)  # batches sorted by length, but served in shuffled order
        assert sorted(i for x in batches for i in rows_of(x)) == list(range(800))
    real = int(fake.lengths.sum()) + 2 * 800
    assert padded[True] - real < 0.3 * (padded[False] - real)


def test_batches_on_prepared_data(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_corpus(corpus, n_docs=60)
    vocab = write_vocab(tmp_path / "v", SPECIAL + sorted({w.lower() for w in WORDS}) + ["!", ".", ","])
    prepare([corpus], tmp_path / "out", vocab=vocab, valid_fraction=0)
    td = data.TokenData(tmp_path / "out")
    seqs = td.sequences("train", 16)
    b = data.Batches(td, "train", 16, 4)
    seen = []
    for batch in b:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        assert ids.shape[1] in (8, 16) and ((ids == 0) == (mask == 0)).all()
        seen += [tuple(row[m.bool()].tolist()) for row, m in zip(ids, mask)]
    assert sorted(seen) == sorted(tuple(seqs[i].tolist()) for i in range(len(seqs))) and len(seen) == len(seqs) > 20


# ------------------------------------------------------------------------------------------------------------- masking

V, SPECIAL_IDS = 1000, {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}


def random_batch(seed=0, rows=32, width=128):
    g = np.random.default_rng(seed)
    ids = np.zeros((rows, width), np.int64)
    mask = np.zeros((rows, width), np.int64)
    for r in range(rows):
        n = g.integers(12, width + 1)
        ids[r, :n] = np.concatenate([[2], g.integers(5, V, n - 2), [3]])
        ids[r, g.integers(1, n - 1)] = 1  # an [UNK] in the text: special, never masked
        mask[r, :n] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def draw(ids, mask, seed, **kw):
    g = torch.Generator().manual_seed(seed)
    return data.mask_tokens(ids, mask, mask_id=4, vocab_size=V, special_ids=SPECIAL_IDS, generator=g, **kw)


def test_uniform_masking_statistics():
    ids, mask = random_batch()
    before = ids.clone()
    eligible = (mask == 1) & (ids >= 5)
    n_chosen, n_masked, n_random, n_kept, per_draw = 0, 0, 0, 0, set()
    for seed in range(100):
        masked, labels = draw(ids, mask, seed)
        chosen = labels != -100
        assert not (chosen & ~eligible).any()  # never special tokens or padding
        assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(masked[~chosen], ids[~chosen])
        n_chosen += int(chosen.sum())
        per_draw.add(int(chosen.sum()))
        n_masked += int((masked[chosen] == 4).sum())
        replaced = chosen & (masked != 4) & (masked != ids)
        assert (masked[replaced] >= 5).all()  # random replacements are ordinary tokens
        n_random += int(replaced.sum())
        n_kept += int((chosen & (masked == ids)).sum())
    assert torch.equal(ids, before)  # input untouched
    assert abs(n_chosen / (100 * int(eligible.sum())) - 0.15) < 0.005
    assert len(per_draw) > 10  # independent Bernoulli choices: the count varies from draw to draw
    assert abs(n_masked / n_chosen - 0.8) < 0.015
    assert abs(n_random / n_chosen - 0.1 * (1 - 1 / 995)) < 0.012
    assert abs(n_kept / n_chosen - (0.1 + 0.1 / 995)) < 0.012


def test_masks_are_reproducible_and_fresh():
    ids, mask = random_batch()
    a, b, c = draw(ids, mask, 5), draw(ids, mask, 5), draw(ids, mask, 6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])
    g = torch.Generator().manual_seed(5)
    kw = dict(mask_id=4, vocab_size=V, special_ids=SPECIAL_IDS, generator=g)
    first, second = data.mask_tokens(ids, mask, **kw), data.mask_tokens(ids, mask, **kw)
    assert torch.equal(first[1], a[1]) and not torch.equal(first[1], second[1])  # a new mask on each use
    gens = [data.mask_generator(*a, device="cpu") for a in [(0, 1, 5), (0, 1, 5), (0, 1, 6), (0, 2, 5), (1, 1, 5)]]
    r = [torch.rand(8, generator=g) for g in gens]
    assert torch.equal(r[0], r[1]) and not any(torch.equal(r[0], x) for x in r[2:])


def test_smoothing_weights_by_hand():
    counts = np.array([5, 0, 7, 9, 3, 1, 100, 0, 1000])
    w = data.smoothing_weights(counts, SPECIAL_IDS)
    assert w.dtype == torch.float32
    assert torch.allclose(w, torch.tensor([0, 0, 0, 0, 0, 1, 100 ** -0.7, 1, 1000 ** -0.7]), rtol=1e-6)
    assert torch.allclose(data.smoothing_weights(counts, [0], exponent=1.0)[1:], torch.tensor(
        [1, 1 / 7, 1 / 9, 1 / 3, 1, 1 / 100, 1, 1 / 1000]), rtol=1e-6)


def test_smoothed_masking():
    ids, mask = random_batch(1)
    eligible = (mask == 1) & (ids >= 5)
    n = int(eligible.sum())
    weights = data.smoothing_weights(np.random.default_rng(0).integers(0, 10_000, V), SPECIAL_IDS)
    n_chosen, n_masked = 0, 0
    for seed in range(30):
        masked, labels = draw(ids, mask, seed, weights=weights)
        chosen = labels != -100
        assert int(chosen.sum()) == -(-15 * n // 100)  # exactly ceil(15% of the eligible tokens)
        assert not (chosen & ~eligible).any() and torch.equal(labels[chosen], ids[chosen])
        n_chosen += int(chosen.sum())
        n_masked += int((masked[chosen] == 4).sum())
    assert abs(n_masked / n_chosen - 0.8) < 0.03
    # Rare tokens are chosen more often. With one position to choose (mlm_prob * 105 < 1), a position holding id a
    # is chosen with probability w_a / sum(w): the per-position rate ratio of a (count 1) to b (count 100) is 100^0.7.
    a, b = 10, 20
    counts = np.full(V, 50)
    counts[a], counts[b] = 1, 100
    weights = data.smoothing_weights(counts, SPECIAL_IDS)
    row = torch.tensor([[2] + [a] * 5 + [b] * 100 + [3] + [0] * 4])
    row_mask = (row != 0).long()
    hits = {a: 0, b: 0}
    for seed in range(4000):
        _, labels = draw(row, row_mask, seed, weights=weights, mlm_prob=0.005)
        assert int((labels != -100).sum()) == 1
        hits[int(labels[labels != -100])] += 1
    ratio = (hits[a] / 5) / (hits[b] / 100)
    assert abs(ratio - 100 ** 0.7) < 3.5, ratio


def test_damaged_shard_files_are_named(tmp_path):
    """Issue 14 rule: every file the project writes is covered by a checksum verified on load. A byte changed
    in a shard keeps its size (the old check passed) and was read silently."""
    corpus, vocab, out = tiny_setup(tmp_path)
    prepare([corpus], out, vocab=vocab)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["files"]["train_000.bin"] == hashlib.sha256((out / "train_000.bin").read_bytes()).hexdigest()
    assert set(meta["files"]) == {p.name for p in out.iterdir()} - {"meta.json"}
    for name in ("train_000.bin", "counts.npy", "train_000.docs.npy"):
        raw = (out / name).read_bytes()
        (out / name).write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
        with pytest.raises(ValueError, match=f"{out / name}: checksum mismatch"):
            data.TokenData(out)
        (out / name).write_bytes(raw)
    data.TokenData(out)
    (out / "meta.json").write_text((out / "meta.json").read_text()[:-20])
    with pytest.raises(ValueError, match=f"{out / 'meta.json'}: not valid JSON"):
        data.TokenData(out)
