"""corpus/ (python -m corpus) against independent references: the raw shard files read back with plain numpy
(np.fromfile, through test_data's read_split), the documents the tests wrote themselves, transformers' tokenizer
where a vocabulary is shared; atomic and locked folders; Hugging Face datasets from local files."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import data
from corpus import PARTIAL, default_corpus_documents, hf_documents, prepare, shards
from corpus.__main__ import main as corpus_main
from test_data import ROOT, SPECIAL, WORDS, read_split, reference_tokenizer, tiny_setup, write_corpus, write_vocab


def tree(folder):
    files = [p for p in sorted(Path(folder).rglob("*")) if p.is_file()]
    return {str(p.relative_to(folder)): p.read_bytes() for p in files}


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("vocab_kind", ["trained", "handmade"])
def test_prepare_round_trip(tmp_path, vocab_kind):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    docs = write_corpus(corpus)
    extra = tmp_path / "extra.dat"  # a file named explicitly is read whatever its extension
    extra.write_text("extra document one\n\nextra document two, the last\n")
    docs += ["extra document one", "extra document two, the last"]
    out = tmp_path / "out"
    if vocab_kind == "trained":
        meta = prepare([corpus, extra], out, vocab_size=300, valid_fraction=0.3, shard_tokens=100, batch_docs=7)
        assert meta["tokenizer"]["trained"] and meta["vocab_size"] <= 300
    else:
        vocab = write_vocab(tmp_path / "v", SPECIAL + sorted({w.lower() for w in WORDS}) + ["doc", "!", ".", ","])
        meta = prepare([corpus, extra], out, vocab=vocab, valid_fraction=0.3, shard_tokens=100, batch_docs=7)
        assert (out / "vocab.txt").read_bytes() == vocab.read_bytes()
    ref = reference_tokenizer(out)  # the folder's own copy of the vocabulary, read by transformers
    expected = ref(docs, add_special_tokens=False)["input_ids"]
    n_vocab = len((out / "vocab.txt").read_text(encoding="utf-8").split("\n")) - 1
    assert meta["vocab_size"] == n_vocab and meta["dtype"] == "uint16"
    assert meta["vocab_hash"] == hashlib.sha256((out / "vocab.txt").read_text("utf-8")[:-1].encode()).hexdigest()
    train, valid = read_split(out, "train", np.uint16), read_split(out, "valid", np.uint16)
    assert len(docs) == 42 and len(valid) == 13 and len(train) == 29  # round(0.3 * 42) valid documents
    assert sorted(map(tuple, train + valid)) == sorted(map(tuple, expected))  # each document, whole, exactly once
    in_train = {tuple(d) for d in train}
    assert train == [d for d in expected if tuple(d) in in_train]  # reading order kept
    assert len(list(out.glob("train_*.bin"))) > 1  # small shard_tokens -> several shards
    on_disk = json.loads((out / "meta.json").read_text())
    for split, split_docs in (("train", train), ("valid", valid)):
        s = on_disk["splits"][split]
        assert s["docs"] == len(split_docs) and s["tokens"] == sum(map(len, split_docs))
        assert sum(sh["tokens"] for sh in s["shards"]) == s["tokens"]
    counts = np.load(out / "counts.npy")
    assert np.array_equal(counts, np.bincount(np.concatenate(train), minlength=n_vocab))
    assert len(on_disk["sources"]) == 5 and on_disk["skipped"] == [] and on_disk["inputs_hash"] == meta["inputs_hash"]
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "v")
    assert leftovers == ["corpus", "extra.dat", "out"]  # no temporary folder left next to out


def test_prepare_again_is_a_no_op_and_changes_need_overwrite(tmp_path, capsys):
    corpus, vocab, out = tiny_setup(tmp_path)
    meta = prepare([corpus], out, vocab=vocab)
    stamp = (out / "meta.json").stat().st_mtime_ns, (out / "train_000.bin").stat().st_mtime_ns
    capsys.readouterr()
    assert prepare([corpus], out, vocab=vocab) == meta
    assert "up to date" in capsys.readouterr().err
    assert ((out / "meta.json").stat().st_mtime_ns, (out / "train_000.bin").stat().st_mtime_ns) == stamp
    with pytest.raises(FileExistsError, match="overwrite"):  # other settings
        prepare([corpus], out, vocab=vocab, valid_fraction=0.5)
    with (corpus / "a.txt").open("a") as f:
        f.write("\nalpha beta gamma, a new document\n")
    with pytest.raises(FileExistsError, match="overwrite"):  # other inputs
        prepare([corpus], out, vocab=vocab)
    new = prepare([corpus], out, vocab=vocab, overwrite=True)
    assert new["inputs_hash"] != meta["inputs_hash"]
    assert sum(s["docs"] for s in new["splits"].values()) == sum(s["docs"] for s in meta["splits"].values()) + 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "out", "v"]  # no .tmp / .old left over
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a prepared"):
        prepare([corpus], tmp_path / "other", vocab=vocab)


def test_interrupted_prepare_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    corpus, vocab, out = tiny_setup(tmp_path, n_docs=30)
    real, calls = shards._encode_batch, []

    def crash_on_second_batch(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(shards, "_encode_batch", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        prepare([corpus], out, vocab=vocab, batch_docs=4)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "v"]
    monkeypatch.setattr(shards, "_encode_batch", real)
    # a hard kill leaves the temporary folder behind: the next run removes it
    (tmp_path / "out.tmp").mkdir()
    (tmp_path / "out.tmp" / PARTIAL).write_text(data.FORMAT)  # what prepare writes first into its tmp
    (tmp_path / "out.tmp" / "train_000.bin").write_bytes(b"\x01\x02")
    meta = prepare([corpus], out, vocab=vocab)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "out", "v"]
    # a crash while overwriting keeps the old, complete folder untouched
    calls.clear()
    monkeypatch.setattr(shards, "_encode_batch", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        prepare([corpus], out, vocab=vocab, batch_docs=4, valid_fraction=0.3, overwrite=True)
    assert json.loads((out / "meta.json").read_text())["inputs_hash"] == meta["inputs_hash"]
    assert data.TokenData(out).meta["splits"] == meta["splits"]


def test_overwrite_never_deletes_an_input_or_a_foreign_folder(tmp_path, capsys):
    """Issue 14.1: `data.py CORPUS --out=CORPUS --overwrite` deleted the corpus (and an unrelated
    sub/notes.md)."""
    corpus, vocab, out = tiny_setup(tmp_path)
    (corpus / "sub" / "notes.md").write_text("my notes")
    before = tree(corpus)
    for target in (corpus, corpus / "sub", corpus / "a.txt"):
        with pytest.raises(SystemExit) as e:
            corpus_main([str(corpus), "--out", str(target), "--vocab", str(vocab), "--overwrite"])
        assert str(corpus) in str(e.value) and "\n" not in str(e.value)
        assert tree(corpus) == before
    # a folder with a meta.json that is not ours is not replaced either, nor is a foreign '.tmp' folder
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "meta.json").write_text('{"format": "something else"}')
    with pytest.raises(FileExistsError, match="not a prepared shard folder made by data.py"):
        prepare([corpus], foreign, vocab=vocab, overwrite=True)
    (tmp_path / "out.tmp").mkdir()
    (tmp_path / "out.tmp" / "thesis.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="out.tmp"):
        prepare([corpus], out, vocab=vocab)
    assert (foreign / "meta.json").is_file()
    assert (tmp_path / "out.tmp" / "thesis.txt").read_text() == "keep me"
    assert not out.exists()


def test_cli_default_out_and_one_line_errors(tmp_path, monkeypatch):
    """`python -m corpus` as the docs show it needs no --out; CLI errors are one line."""
    corpus, vocab, _ = tiny_setup(tmp_path)
    monkeypatch.chdir(tmp_path)
    corpus_main([str(corpus), "--vocab", str(vocab)])
    assert data.TokenData(tmp_path / "data" / "shards").meta["splits"]["train"]["docs"] > 0
    run = subprocess.run([sys.executable, "-m", "corpus", str(tmp_path / "missing.txt"), "--out",
                          str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
    want = f"corpus: error: input path does not exist: {tmp_path}/missing.txt"
    assert run.stderr.strip().splitlines() == [want]


def test_bad_inputs(tmp_path, monkeypatch):
    corpus, vocab, out = tiny_setup(tmp_path)
    with pytest.raises(FileNotFoundError, match="no_such_file.txt"):
        prepare([corpus, tmp_path / "no_such_file.txt"], out, vocab=vocab)
    with pytest.raises(FileNotFoundError, match=r"nothing\*"):
        prepare([str(tmp_path / "nothing*.txt")], out, vocab=vocab)
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "empty.txt").write_text("\n   \n\t\n\n")
    with pytest.raises(ValueError, match="empty corpus"):
        prepare([tmp_path / "blank"], out, vocab=vocab)
    (tmp_path / "nofiles").mkdir()
    with pytest.raises(ValueError, match="empty corpus"):
        prepare([tmp_path / "nofiles"], out, vocab=vocab)
    (corpus / "image").write_bytes(bytes(range(256)) * 4)  # extension-less, so picked up by the folder walk
    (corpus / "latin1.txt").write_bytes("un café à Zürich\n".encode("latin-1"))
    with pytest.warns(UserWarning) as warned:
        meta = prepare([corpus], out, vocab=vocab)
    text = " ".join(str(w.message) for w in warned)
    assert "image" in text and "latin1.txt" in text
    reasons = {Path(s["path"]).name: s["reason"] for s in meta["skipped"]}
    assert set(reasons) == {"image", "latin1.txt"} and "binary" in reasons["image"] and "UTF-8" in reasons["latin1.txt"]
    assert meta["splits"]["train"]["docs"] == 11 and meta["splits"]["valid"]["docs"] == 1  # 0.5% of 12, at least 1
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "doc.txt").write_text("a single document\n")
    assert prepare([tmp_path / "one"], tmp_path / "out1", vocab=vocab)["splits"]["valid"]["docs"] == 0
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_bytes(b"\x00\x01\x02binary")
    (tmp_path / "junk" / "b.txt").write_bytes(b"\xff\xfe\xfa not utf-8")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="empty corpus(.|\n)*b.txt"):
        prepare([tmp_path / "junk"], tmp_path / "out2", vocab=vocab)
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if `datasets` were not installed
    with pytest.raises(ImportError, match="datasets"):
        prepare([], tmp_path / "out3", vocab=vocab, hf_datasets=["bookcorpus"])


def test_reading_with_another_vocabulary_fails(tmp_path):
    corpus, vocab, out = tiny_setup(tmp_path)
    prepare([corpus], out, vocab=vocab)
    assert data.TokenData(out, vocab=vocab).vocab_size == len(SPECIAL) + len({w.lower() for w in WORDS})
    other = write_vocab(tmp_path / "other", SPECIAL + ["alpha", "beta"])
    with pytest.raises(ValueError, match=f"(?s){other}.*{out / 'meta.json'}"):
        data.TokenData(out, vocab=other)
    write_vocab(out, SPECIAL + ["alpha", "beta"])  # the folder's own copy tampered with
    with pytest.raises(ValueError, match="mismatch"):
        data.TokenData(out)


def test_token_dtype_follows_vocab_size(tmp_path, monkeypatch):
    assert data.token_dtype(30522) == np.uint16 and data.token_dtype(65535) == np.uint16
    assert data.token_dtype(65536) == np.uint32
    vocab = write_vocab(tmp_path / "big", SPECIAL + [f"w{i}" for i in range(70_000)])
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "t.txt").write_text("w0 w65535 w69999 w5\n\nw70000 w3\n")
    meta = prepare([tmp_path / "c"], tmp_path / "out", vocab=vocab, valid_fraction=0)
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 70_005
    assert read_split(tmp_path / "out", "train", np.uint32) == [[5, 65540, 70004, 10], [1, 8]]  # by hand: id = i + 5
    assert (tmp_path / "out" / "train_000.bin").stat().st_size == 6 * 4
    monkeypatch.setattr(shards, "token_dtype", lambda n: np.dtype(np.uint16))  # a wrong choice must be caught
    with pytest.raises(OverflowError, match="does not fit"):
        prepare([tmp_path / "c"], tmp_path / "out16", vocab=vocab, valid_fraction=0)
    assert not (tmp_path / "out16").exists()


def test_cli(tmp_path):
    corpus, vocab, out = tiny_setup(tmp_path)
    corpus_main([str(corpus), "--out", str(out), "--vocab", str(vocab), "--valid-fraction", "0.25"])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["splits"]["valid"]["docs"] == 3 and meta["settings"]["valid_fraction"] == 0.25


def test_default_corpus_is_python_documentation(capsys):
    docs = list(default_corpus_documents())
    assert len(docs) > 300 and sum(map(len, docs)) > 1_500_000
    assert not any("\x00" in d or not d.strip() for d in docs)
    assert any("for_stmt" in d or "The \"for\" statement" in d for d in docs)  # a pydoc topic
    assert any(d.startswith("Support for regular expressions") for d in docs)  # the `re` module's docstring
    assert "Beautiful is better than ugly" not in capsys.readouterr().out  # `this` is never imported
    assert docs[:50] == list(default_corpus_documents())[:50]


def test_prepare_without_inputs_uses_the_default_corpus(tmp_path):
    meta = prepare([], tmp_path / "out", vocab_size=1000)
    assert [s["kind"] for s in meta["sources"]] == ["python_docs"] and meta["tokenizer"]["trained"]
    assert meta["vocab_size"] == 1000 and meta["splits"]["train"]["tokens"] > 300_000
    assert meta["splits"]["valid"]["docs"] == max(1, round(0.005 * meta["sources"][0]["docs"]))


def test_hf_dataset_rows_are_documents(tmp_path, monkeypatch):
    calls = []

    class FakeDatasets:  # stands in for the `datasets` package: load_dataset(name, config, split) -> rows
        @staticmethod
        def load_dataset(name, config, split, streaming):
            calls.append((name, config, split, streaming))
            return [{"text": "alpha beta gamma"}, {"text": "  "}, {"text": "delta\n\nepsilon"}]

    monkeypatch.setitem(sys.modules, "datasets", FakeDatasets)
    vocab = write_vocab(tmp_path / "v", SPECIAL + ["alpha", "beta", "gamma", "delta", "epsilon"])
    meta = prepare([], tmp_path / "out", vocab=vocab, valid_fraction=0,
                           hf_datasets=["wikimedia/wikipedia:20231101.en"])
    assert calls == [("wikimedia/wikipedia", "20231101.en", "train", True)] * 2  # pass 1 counts, pass 2 encodes
    assert read_split(tmp_path / "out", "train", np.uint16) == [[5, 6, 7], [8, 9]]
    assert meta["sources"][0]["name"] == "wikimedia/wikipedia:20231101.en"


def test_script_free_datasets_laid_out_as_the_full_runs_load_from_local_files(tmp_path):
    """The README's full-run datasets, as local folders laid out as their Hub repositories and read by the
    same load_dataset(name, config, split="train", streaming=True) as a Hub name: wikimedia/wikipedia's
    (a README naming the config 20231101.en, parquet shards under it; one document per article) and
    SamuelYang/bookcorpus's (bookcorpus-train.arrow and dataset_info.json; sentence rows packed). A dataset
    with a loading script, which `datasets` >= 4 refuses, stops with one line. Expected ids by hand."""
    datasets = pytest.importorskip("datasets")
    words = [f"w{i}" for i in range(10)]
    vocab = write_vocab(tmp_path / "v", SPECIAL + words)  # w{i} has id 5 + i
    wiki = tmp_path / "wikimedia-wikipedia"
    articles = [" ".join(words[(i + j) % 10] for j in range(80)) for i in range(120)]  # 239 characters: not packed
    for k in range(2):
        datasets.Dataset.from_dict({"id": list(range(k * 60, k * 60 + 60)), "text": articles[k * 60:(k + 1) * 60]}) \
            .to_parquet(str(wiki / "20231101.en" / f"train-0000{k}-of-00002.parquet"))
    datasets.Dataset.from_dict({"text": ["w0 w0"] * 5}).to_parquet(str(wiki / "20231101.fr" / "train-00000-of-00001.parquet"))
    (wiki / "README.md").write_text("---\nconfigs:\n- config_name: 20231101.en\n  data_files:\n  - split: train\n"
                                    "    path: 20231101.en/train-*\n- config_name: 20231101.fr\n  data_files:\n"
                                    "  - split: train\n    path: 20231101.fr/train-*\n---\n")
    meta = prepare([], tmp_path / "wiki-out", vocab=vocab, valid_fraction=0,
                           hf_datasets=[f"{wiki}:20231101.en"])
    assert read_split(tmp_path / "wiki-out", "train", np.uint16) == [
        [5 + (i + j) % 10 for j in range(80)] for i in range(120)]  # one document per article, in order
    books = tmp_path / "SamuelYang-bookcorpus"
    rows = [f"w{i % 10} w{(i + 1) % 10}" for i in range(300)]
    datasets.Dataset.from_dict({"text": rows}).save_to_disk(str(tmp_path / "saved"))
    books.mkdir()
    (books / "bookcorpus-train.arrow").write_bytes(next((tmp_path / "saved").glob("*.arrow")).read_bytes())
    (books / "dataset_info.json").write_text(json.dumps({"features": {"text": {"dtype": "string", "_type": "Value"}}}))
    prepare([], tmp_path / "books-out", vocab=vocab, valid_fraction=0, hf_datasets=[str(books)],
                    pack_chars=17)
    want = [[5 + (i % 10), 5 + (i + 1) % 10] for i in range(300)]
    assert read_split(tmp_path / "books-out", "train", np.uint16) == [want[j] + want[j + 1] + want[j + 2]
                                                                      for j in range(0, 300, 3)]
    scripted = tmp_path / "scripted"
    scripted.mkdir()
    (scripted / "scripted.py").write_text("import datasets\n")
    out = subprocess.run([sys.executable, "-m", "corpus", f"--hf-dataset={scripted}", f"--vocab={vocab}",
                          f"--out={tmp_path / 'never'}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "scripted.py" in out.stderr and "name a script-free dataset" in out.stderr, out.stderr
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the resident set size from /proc")
def test_streaming_keeps_memory_flat(tmp_path):
    """400,000 sentence rows (about 55 MB of text, more as Python strings) in 8 parquet shards, streamed and
    packed into documents: after the first 1,000 documents (start-up, the first shard's buffers) the
    resident memory, sampled every 100 documents, grows by less than 10 MB over the remaining 40 MB of text.
    A dataset read whole, or converted to an Arrow cache and memory-mapped (load_dataset without streaming),
    would grow by about the size of the text."""
    pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq
    folder, shards, rows = tmp_path / "big", 8, 50_000
    folder.mkdir()
    for k in range(shards):  # distinct rows, so nothing is shared in memory
        text = [f"row {i}: the cat sat on the mat while the dog watched it from the window {i * 7919 % 100003} "
                f"times, and the bird sang on the roof of the house {i % 977}." for i in range(k * rows, (k + 1) * rows)]
        pq.write_table(pa.table({"text": text}), str(folder / f"train-{k:05d}-of-{shards:05d}.parquet"),
                       row_group_size=5_000)
    docs, chars, peak, base = 0, 0, 0, None
    for doc in hf_documents(str(folder)):
        docs, chars = docs + 1, chars + len(doc)
        if docs % 100 == 0 and docs >= 1000:
            base = rss_bytes() if base is None else base
            peak = max(peak, rss_bytes() - base)
    print(f"streamed {chars / 1e6:.0f} MB of text in {docs} documents; after the first 1,000 the resident memory "
          f"grew by {peak / 1e6:.1f} MB")
    assert docs > 5_000 and chars > 50e6, (docs, chars)  # packed: about 10,000 characters each
    assert peak < 10e6, f"resident memory grew by {peak / 1e6:.0f} MB while streaming {chars / 1e6:.0f} MB of text"
