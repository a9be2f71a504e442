"""Everything between raw text and a masked batch, for DistilBERT distillation.

DistilBERT (Sanh et al. 2019), Section 3 (paragraphs "Distillation" and "Data and compute power"), trains the
student on the teacher's own pretraining corpus (English Wikipedia + Toronto Book Corpus) with the RoBERTa
practices: very large batches (up to 4K examples, by gradient accumulation), *dynamic* masking, and no
next-sentence-prediction objective, so a training example is just a piece of one document between [CLS] and
[SEP]. The reference code (huggingface/transformers, examples/research_projects/distillation) also draws the
tokens to mask with probability proportional to token_count^-0.7 instead of uniformly. This file is what
training reads, top to bottom (corpus/ writes the shards: python -m corpus; machinery/tokenizer.py is the vocabulary):

  1. masking     mask_tokens (uniform or smoothed), smoothing_weights, mask_generator
  2. Batches     shuffled, length-grouped, rank-sharded, resumable batches; Prefetch, the next ones made
                 in a background thread
  3. TokenData   reads a prepared folder; sequences() cuts documents into [CLS] ... [SEP] pieces
"""
import contextlib
import hashlib
import json
import math
import queue
import threading
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from machinery.files import sha256 as sha256_file
from machinery.tokenizer import SPECIAL_TOKENS, load_tokenizer, vocab_hash

FORMAT, FORMAT_VERSION = "distilbert-from-scratch/token-shards", 1
VERIFY_BYTES = 1 << 30  # token shards up to 1 GiB are checked against their sha256 each time they are opened
# sequences of <= 11 tokens ([CLS] and [SEP] included) are dropped, as in the reference code
MIN_SEQ_TOKENS = 12

# ------------------------------------------------------------------------------------------------- 1. masking

def _id_list(ids):
    return sorted(set(ids.values() if isinstance(ids, dict) else ids))


def mask_tokens(input_ids, attention_mask, *, mask_id, vocab_size, special_ids, generator, mlm_prob=0.15,
                weights=None, mask_frac=0.8, random_frac=0.1):
    """Dynamic masking (Sanh et al. 2019, Section 3, after RoBERTa): a fresh mask every time a batch is used.
    -> (masked input_ids, labels): labels hold the original id at chosen positions and -100 elsewhere.

    special_ids: a list of ids or a dict name -> id. Only real (attention_mask 1), non-special tokens can be
    chosen, never [MASK] itself, even where padding holds ordinary ids. weights None: each one independently with
    probability mlm_prob (BERT). weights (per-id tensor, see smoothing_weights): exactly ceil(mlm_prob * n) of
    the batch's n eligible tokens, without replacement, with probability proportional to weights[id] (the
    reference's smoothed masking). Chosen tokens become [MASK] (mask_frac), a random non-special id
    (random_frac, never [MASK]) or stay. All randomness comes from `generator` (on input_ids' device), so the
    same seed gives the same mask; neither input_ids nor attention_mask is modified."""
    ### BEGIN SOLUTION: 22 lines
    # 1. the eligible tokens: real, and neither special nor [MASK]
    device = input_ids.device
    special = torch.tensor(_id_list(special_ids) + [mask_id], device=device)
    eligible = attention_mask.bool() & ~torch.isin(input_ids, special)
    # 2. the chosen tokens: each with probability mlm_prob, or ceil(mlm_prob * n) drawn by weight
    if weights is None:
        chosen = eligible & (torch.rand(input_ids.shape, generator=generator, device=device) < mlm_prob)
    else:
        w = (weights.to(device=device, dtype=torch.float32)[input_ids] * eligible).flatten()
        n_pick = min(math.ceil(mlm_prob * int(eligible.sum()) - 1e-9), int((w > 0).sum()))
        chosen = torch.zeros(w.numel(), dtype=torch.bool, device=device)
        if n_pick > 0:
            chosen[torch.multinomial(w, n_pick, replacement=False, generator=generator)] = True
        chosen = chosen.view(input_ids.shape)
    # 3. the labels: the original id where chosen, -100 elsewhere
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    # 4. a chosen token becomes [MASK] (mask_frac), a random non-special id (random_frac), or stays
    action = torch.rand(input_ids.shape, generator=generator, device=device)
    vocab = torch.arange(vocab_size, device=device)
    candidates = vocab[~torch.isin(vocab, special)]
    pick = torch.randint(len(candidates), input_ids.shape, generator=generator, device=device)
    random_ids = candidates[pick]
    masked = torch.where(chosen & (action < mask_frac), torch.full_like(input_ids, mask_id), input_ids)
    randomised = chosen & (action >= mask_frac) & (action < mask_frac + random_frac)
    masked = torch.where(randomised, random_ids, masked)
    return masked, labels
    ### END SOLUTION


def smoothing_weights(counts, special_ids, exponent=0.7):
    """Per-id masking weights max(count, 1) ** -exponent (rare tokens masked more often); special ids get
    0. counts: per id, a list or a numpy array; special_ids: a list of ids or a dict name -> id. -> a float32
    tensor."""
    ### BEGIN SOLUTION: 3 lines
    # count ** -exponent, counting an unseen id as seen once; special ids never masked
    w = np.maximum(np.asarray(counts, np.float64), 1.0) ** -exponent
    w[_id_list(special_ids)] = 0.0
    return torch.tensor(w, dtype=torch.float32)
    ### END SOLUTION


def mask_generator(seed, epoch, index, device="cpu"):
    """A torch.Generator on `device` seeded from (seed, epoch, global batch index): a batch gets the same mask
    whatever the world size and across resumes."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint32)
    generator = torch.Generator(device=device)
    generator.manual_seed((int(state[0]) << 31) ^ int(state[1]))
    return generator


# ------------------------------------------------------------------------------------------------- 2. Batches

class Batches:
    """Batches of sequences for one rank. Iterating yields the rest of the current epoch, then moves to the
    next epoch (so `for epoch ...: for batch in batches:` works); `set_epoch`, `state_dict`, `load_state_dict`
    resume.

    Each epoch has ONE global list of batches: sequences shuffled with a generator seeded by (seed, epoch),
    sorted by length within windows of 100 batches (less padding), cut into batches of batch_size, batch order
    shuffled. Rank r takes global batches r, r + world_size, ... For DDP lockstep every rank needs the same
    number of batches, so the batches past the last multiple of world_size and the final partial batch are
    pooled and split evenly into world_size smaller batches (the only part that depends on world_size). Every
    sequence is seen exactly once per epoch, except when fewer than world_size sequences are pooled: those few
    are skipped this epoch. Batch dicts: input_ids, attention_mask (B x L, L = longest rounded up to
    pad_multiple, capped at max_len), padded (whether any row is shorter than L: Bert.forward's `padded`),
    index (global batch index in the epoch; seeds the mask, see mask_generator) and epoch."""
    GROUP = 100

    def __init__(self, data, split, max_len, batch_size, seed=0, rank=0, world_size=1, shuffle=True,
                 group_by_length=True, pad_multiple=8, pin_memory=False):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.seqs, self.pad_id = data.sequences(split, max_len), data.special["pad"]
        self.max_len, self.batch_size, self.seed = max_len, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.group_by_length = shuffle, group_by_length
        self.pad_multiple, self.pin_memory = pad_multiple, pin_memory and torch.cuda.is_available()
        self.epoch, self.position, self._plan = 0, 0, (None, None)
        if len(self) == 0:
            raise ValueError(f"{split!r} has {len(self.seqs)} sequences of max_len {max_len}: too few for "
                             f"{world_size} rank(s)")

    def __len__(self):
        """Batches per rank per epoch (the same every epoch and on every rank)."""
        n, b, w = len(self.seqs), self.batch_size, self.world_size
        pooled = (n // b) % w * b + n % b
        return n // b // w + (pooled >= w)

    def global_batches(self, epoch):
        """The epoch's batches (arrays of sequence indices) in global order: rank r gets entries
        r::world_size."""
        rng = np.random.default_rng([self.seed, epoch])
        n, b, w, lengths = len(self.seqs), self.batch_size, self.world_size, self.seqs.lengths
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.group_by_length:
            windows = np.split(order, range(b * self.GROUP, n, b * self.GROUP))
            order = np.concatenate([win[np.argsort(-lengths[win], kind="stable")] for win in windows])
        n_full = n // b
        batches = list(order[:n_full * b].reshape(n_full, b))
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(n_full)]
        n_main = n_full // w * w
        pooled = np.concatenate([order[n_full * b:]] + batches[n_main:])
        batches = batches[:n_main]
        if len(pooled) >= w:
            if self.group_by_length:
                pooled = pooled[np.argsort(-lengths[pooled], kind="stable")]
            batches += np.array_split(pooled, w)
        return batches

    def _rank_batches(self):
        if self._plan[0] != self.epoch:
            self._plan = (self.epoch, self.global_batches(self.epoch)[self.rank::self.world_size])
        return self._plan[1]

    def __iter__(self):
        if self.position >= len(self):
            self.set_epoch(self.epoch + 1)
        batches = self._rank_batches()
        while self.position < len(batches):
            k = self.position
            self.position += 1
            yield self._collate(batches[k], index=self.rank + k * self.world_size)
        self.set_epoch(self.epoch + 1)

    def _collate(self, idx, index):
        rows = [self.seqs[i] for i in idx]
        longest = max(len(r) for r in rows)
        width = min(-(-longest // self.pad_multiple) * self.pad_multiple, max(self.max_len, longest))
        ids = np.full((len(rows), width), self.pad_id, np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        for r, row in enumerate(rows):
            ids[r, :len(row)], mask[r, :len(row)] = row, 1
        ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
        if self.pin_memory:  # faster, asynchronous copies to the GPU
            ids, mask = ids.pin_memory(), mask.pin_memory()
        padded = min(len(r) for r in rows) < width  # known here, so the model never asks the device
        return {"input_ids": ids, "attention_mask": mask, "padded": padded, "index": index,
                "epoch": self.epoch}

    def set_epoch(self, epoch):
        self.epoch, self.position = epoch, 0

    def state_dict(self):
        if self.position >= len(self):
            return {"epoch": self.epoch + 1, "position": 0, "world": self.world_size}
        return {"epoch": self.epoch, "position": self.position, "world": self.world_size}

    def load_state_dict(self, state):
        """Continue where `state` stopped. A state of another world size (a resume on more or fewer ranks)
        continues at the same global batch, rounded down to a multiple of this world size: position p on w
        ranks means the epoch's first p * w global batches were used, so here the position is p * w //
        world_size and at most world_size - 1 batches are seen again, none skipped. The epoch's global order is
        the same for every world size except its last batches (those past the last multiple of world_size,
        pooled and split among the ranks): their cut changes."""
        position = int(state["position"])
        world = int(state.get("world", self.world_size))
        self.epoch, self.position = int(state["epoch"]), position * world // self.world_size


class Prefetch:
    """The items of `make()` made in a background thread, one ahead: while the device runs a step, the host
    collates, masks and pins the next one (train.py). make() returns (item, state); `state` after next()
    is the state that came with the item just handed out (train.py: the loader's position after its batches,
    so that a checkpoint never counts the item made ahead). An error in make() is raised by next()."""

    def __init__(self, make, ahead=1):
        self.make, self.state = make, None
        self.items, self.closed = queue.Queue(maxsize=ahead), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="prefetch")
        self.thread.start()

    def _run(self):
        while not self.closed.is_set():
            try:
                item = (self.make(), None)
            except BaseException as e:  # handed to the consumer, which raises it
                item = (None, e)
            while not self.closed.is_set():
                try:
                    self.items.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[1] is not None:
                return

    def __iter__(self):
        return self

    def __next__(self):
        made, error = self.items.get()
        if error is not None:
            raise error
        item, self.state = made
        return item

    def close(self):
        """Stop the thread (it may be making an item: it ends when that is done) and drop what it made."""
        self.closed.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self.items.get_nowait()
        self.thread.join(timeout=60)


# ----------------------------------------------------------------------------------------------- 3. TokenData

class Sequences:
    """A cheap index of training sequences: sequence i is [CLS] + tokens[start[i] : start[i] + length[i]] of
    shard shard[i] + [SEP]. Token data stays in np.memmap files; `seqs[i]` reads one sequence (int64 array).
    """

    def __init__(self, shards, shard, start, length, cls_id, sep_id):
        self.shards, self.shard, self.start, self.length = shards, shard, start, length
        self.cls_id, self.sep_id = cls_id, sep_id
        self.lengths = length + 2  # with [CLS] and [SEP]

    def __len__(self):
        return len(self.start)

    def __getitem__(self, i):
        s, n = self.start[i], self.length[i]
        out = np.empty(n + 2, np.int64)
        out[0], out[1:-1], out[-1] = self.cls_id, self.shards[self.shard[i]][s:s + n], self.sep_id
        return out


def token_dtype(vocab_size):
    """Shards store ids as uint16 when the vocabulary has fewer than 65536 entries, else uint32."""
    return np.dtype(np.uint16) if vocab_size < 1 << 16 else np.dtype(np.uint32)


class TokenData:
    """A prepared shard folder: `.meta`, `.vocab_size`, `.special`, `.counts` (train token counts per id),
    `.tokenizer` (from the folder's own vocabulary) and `sequences(split, max_len)`. If `vocab` (a path or a
    Tokenizer) is given, it must be the vocabulary the shards were made with."""

    def __init__(self, folder, vocab=None, verify="auto"):
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: {self.folder} is not a prepared folder "
                                    f"(run python -m corpus)")
        try:
            self.meta = json.loads(meta_path.read_text())
        except ValueError as e:
            raise ValueError(f"{meta_path}: not valid JSON ({e}): the folder is damaged; prepare it "
                             f"again") from None
        if not isinstance(self.meta, dict):
            raise ValueError(f"{meta_path}: expected a JSON object, found a {type(self.meta).__name__}: the "
                             f"folder is damaged; prepare it again")
        if (self.meta.get("format"), self.meta.get("format_version")) != (FORMAT, FORMAT_VERSION):
            raise ValueError(f"{meta_path} is not a {FORMAT} v{FORMAT_VERSION} meta file")
        _check_layout(self.meta, meta_path)
        self.dtype = np.dtype(self.meta["dtype"])
        for split in self.meta["splits"].values():
            for shard in split["shards"]:
                path = self.folder / f"{shard['name']}.bin"
                if not path.is_file() or path.stat().st_size != shard["tokens"] * self.dtype.itemsize:
                    raise ValueError(f"{path} is missing or does not hold the {shard['tokens']} tokens of "
                                     f"{meta_path}")
        self._verify_files(verify)
        own_vocab = self.folder / self.meta["tokenizer"]["file"]
        self.tokenizer = load_tokenizer(own_vocab)
        self._check_vocab(self.tokenizer, own_vocab, own=True)
        self.vocab_hash = vocab_hash(self.tokenizer)  # what other tokenizers are compared with
        if isinstance(vocab, Tokenizer):
            self._check_vocab(vocab, "the given tokenizer")
        elif vocab is not None:
            self._check_vocab(load_tokenizer(vocab), vocab)
        self.vocab_size, self.special = self.meta["vocab_size"], dict(self.meta["special_ids"])
        self.counts = np.load(self.folder / "counts.npy")
        self._check_values(meta_path)
        self._cache = {}

    def _verify_files(self, verify):
        """Every file against its sha256 in meta.json; verify="auto" reads the token shards too when they hold
        VERIFY_BYTES or less (sizes are always checked), True always, False never (only the small files)."""
        files = self.meta.get("files", {})  # folders made before checksums have none
        shard_bytes = sum((self.folder / n).stat().st_size for n in files if n.endswith(".bin"))
        full = verify is True or (verify == "auto" and shard_bytes <= VERIFY_BYTES)
        for name, want in files.items():
            path = self.folder / name
            if not path.is_file():
                raise ValueError(f"{path}: missing (listed in {self.folder / 'meta.json'})")
            if (full or not name.endswith(".bin")) and sha256_file(path) != want:
                raise ValueError(f"{path}: checksum mismatch with {self.folder / 'meta.json'}: the file is "
                                 f"damaged; prepare the folder again")

    def _check_values(self, meta_path):
        """meta.json's values against what they describe (the checksums cover the files, not the values): the
        vocabulary size and special ids against the folder's tokenizer, the id dtype against the size, the
        vocabulary size and train token count against counts.npy."""
        tok, meta, vocab = self.tokenizer, self.meta, self.folder / self.meta["tokenizer"]["file"]
        checks = [("vocab_size", meta["vocab_size"], tok.get_vocab_size(), vocab.name),
                  ("dtype", meta["dtype"], token_dtype(tok.get_vocab_size()).name, vocab.name),
                  *((f"special_ids.{k}", meta["special_ids"].get(k), tok.token_to_id(t), vocab.name)
                    for k, t in SPECIAL_TOKENS.items()),
                  ("vocab_size", meta["vocab_size"], len(self.counts), "counts.npy"),
                  ("splits.train.tokens", meta["splits"]["train"]["tokens"], int(self.counts.sum()),
                   "counts.npy")]
        bad = [f"{key} is {claim!r} but {source} says {actual!r}" for key, claim, actual, source in checks
               if claim != actual]
        if bad:
            raise ValueError(f"{meta_path}: {'; '.join(bad)} (edited or damaged: prepare the folder again)")

    def _check_vocab(self, tokenizer, name, own=False):
        """The tokenizer must be the one the shards were made with: its vocab_hash, tokens and text
        pipeline (own: the folder's own file, whose hash meta.json may hold from before the pipeline
        counted: the tokens' alone)."""
        got, want = vocab_hash(tokenizer), self.meta["vocab_hash"] if own else self.vocab_hash
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        legacy = hashlib.sha256("\n".join(sorted(vocab, key=vocab.get)).encode("utf-8")).hexdigest()
        if got != want and not (own and legacy == want):
            raise ValueError(f"vocabulary mismatch: {name} has hash {got[:16]}, but the shards in "
                             f"{self.folder} were made with vocab hash {want[:16]} "
                             f"({self.folder / 'meta.json'})")

    def sequences(self, split, max_len):
        """Each document cut into consecutive chunks of at most max_len - 2 tokens, each one [CLS] chunk
        [SEP]; sequences of <= 11 tokens and those whose chunk is at least half [UNK] are dropped (the
        reference's remove_empty_sequences / remove_unknown_sequences). Cached per (split, max_len)."""
        if (split, max_len) not in self._cache:
            if max_len < 3:
                raise ValueError(f"max_len must be >= 3, got {max_len}")
            shards, shard_of = [], [np.zeros(0, np.int32)]
            starts, lengths = [np.zeros(0, np.int64)], [np.zeros(0, int)]
            for k, shard in enumerate(self.meta["splits"][split]["shards"]):
                path = self.folder / f"{shard['name']}.bin"  # (an empty file cannot be memory-mapped)
                tokens = (np.memmap(path, dtype=self.dtype, mode="r") if shard["tokens"]
                          else np.zeros(0, self.dtype))
                start, length = _cut(np.load(self.folder / f"{shard['name']}.docs.npy"), max_len - 2)
                keep = length + 2 >= MIN_SEQ_TOKENS
                start, length = start[keep], length[keep]
                keep = 2 * _count_in(tokens, start, length, self.special["unk"]) < length
                shards.append(tokens)
                shard_of.append(np.full(keep.sum(), k, np.int32))
                starts.append(start[keep])
                lengths.append(length[keep])
            self._cache[split, max_len] = Sequences(shards, *map(np.concatenate, (shard_of, starts, lengths)),
                                                    self.special["cls"], self.special["sep"])
        return self._cache[split, max_len]


META_LAYOUT = {"dtype": str, "vocab_size": int, "vocab_hash": str, "special_ids": dict, "tokenizer": dict,
               "splits": dict}


def _check_layout(meta, meta_path):
    """The keys of meta.json that reading the folder relies on, each of its type; a ValueError naming the
    first one missing or malformed (an edited or damaged file), not a KeyError later."""
    def bad(key):
        return ValueError(f"{meta_path}: {key} is missing or malformed: the folder is damaged or edited; "
                          f"prepare it again")
    for key, kind in META_LAYOUT.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise bad(key)
    if not isinstance(meta["tokenizer"].get("file"), str) or not isinstance(meta.get("files", {}), dict):
        raise bad("tokenizer.file" if not isinstance(meta["tokenizer"].get("file"), str) else "files")
    for split in ("train", "valid"):
        shards = meta["splits"].get(split, {}).get("shards") if isinstance(meta["splits"].get(split), dict) \
            else None
        if not isinstance(shards, list) or not all(isinstance(x, dict) and isinstance(x.get("name"), str)
                                                   and isinstance(x.get("tokens"), int) for x in shards):
            raise bad(f"splits.{split}.shards")
        if not isinstance(meta["splits"][split].get("tokens"), int):
            raise bad(f"splits.{split}.tokens")


def _cut(offsets, chunk):
    """Documents (given by offsets) cut into consecutive chunks of at most `chunk` tokens -> (start,
    length)."""
    doc_len = np.diff(offsets)
    n_chunks = -(-doc_len // chunk)
    doc = np.repeat(np.arange(len(doc_len)), n_chunks)
    # chunk number within its doc
    k = np.arange(len(doc)) - np.repeat(np.cumsum(n_chunks) - n_chunks, n_chunks)
    start = offsets[doc] + k * chunk
    return start, np.minimum(chunk, offsets[doc + 1] - start)


def _count_in(tokens, start, length, token_id, block=1 << 24):
    """How many times token_id occurs in each tokens[start:start+length] (start ascending), reading ~block at
    a time."""
    out, i = np.zeros(len(start), np.int64), 0
    while i < len(start):
        j = max(i + 1, int(np.searchsorted(start, start[i] + block)))
        lo, hi = start[i], start[j - 1] + length[j - 1]
        cum = np.concatenate([[0], np.cumsum(tokens[lo:hi] == token_id)])
        out[i:j] = cum[start[i:j] - lo + length[i:j]] - cum[start[i:j] - lo]
        i = j
    return out


