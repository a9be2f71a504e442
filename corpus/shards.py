"""
Tokenising and the shard writer: documents encoded in parallel batches (Rust, all cores) and streamed into flat
binary shards per split, with document offsets and token counts; two passes, so memory does not grow with the
corpus (see corpus/folder.py for the folder they are written into).
"""
import contextlib
import functools
import itertools
import shutil
import time
import warnings
from array import array

import numpy as np
from tqdm import tqdm

from corpus.sources import SkipFile, source_documents
from data import FORMAT, FORMAT_VERSION, token_dtype
from machinery import files
from machinery.files import sha256 as sha256_file
from machinery.tokenizer import special_ids, tokenizer_file, train_wordpiece, vocab_hash

PARTIAL = ".data.py-partial"  # in a folder data.py is still writing (so that a crash leaves it recognisable)
log = functools.partial(files.log, source="data")
BATCH_CHARS = 1 << 22  # an encoding batch holds at most batch_docs documents or ~4M characters


def _encode_batch(tokenizer, docs, dtype):
    """Encode documents in parallel (Rust, all cores), no special tokens -> (flat ids as dtype, length per
    doc)."""
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    id_lists = [e.ids for e in encode(docs, add_special_tokens=False)]
    lengths = np.fromiter(map(len, id_lists), np.int64, len(id_lists))
    flat = np.fromiter(itertools.chain.from_iterable(id_lists), np.int64, int(lengths.sum()))
    if flat.size and flat.max() > np.iinfo(dtype).max:
        raise OverflowError(f"token id {flat.max()} does not fit in {dtype.name}")
    return flat.astype(dtype), lengths


def _groups(docs, max_docs, max_chars):
    """Consecutive documents grouped into lists of at most max_docs documents / about max_chars characters."""
    group, chars = [], 0
    for doc in docs:
        group.append(doc)
        chars += len(doc)
        if len(group) >= max_docs or chars >= max_chars:
            yield group
            group, chars = [], 0
    if group:
        yield group


@contextlib.contextmanager
def writing(path):
    """An OSError raised while writing `path` names it (numpy's "N requested and 0 written", and a full
    disk's error at a write or close, name no file), for the one line that says where the disk is full."""
    try:
        yield
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None


class _ShardWriter:
    """Appends documents of one split to {split}_000.bin, {split}_001.bin, ... (raw ids, no header) and writes
    each shard's document offsets ({split}_000.docs.npy, int64, ndocs + 1 entries). Documents never straddle
    shards; a new shard starts once the current one holds shard_tokens tokens. Memory: one offset per document
    of the open shard."""

    def __init__(self, folder, split, shard_tokens):
        self.folder, self.split, self.shard_tokens = folder, split, shard_tokens
        self.shards, self.file = [], None

    def add(self, ids):
        if self.file is None or self.offsets[-1] >= self.shard_tokens:
            self._finish_shard()
            self.name = f"{self.split}_{len(self.shards):03d}"
            self.file, self.offsets = open(self.folder / f"{self.name}.bin", "wb"), array("q", [0])
        with writing(self.file.name):  # numpy's "N requested and 0 written" names no file
            ids.tofile(self.file)
        self.offsets.append(self.offsets[-1] + len(ids))

    def _finish_shard(self):
        if self.file is not None:
            with writing(self.file.name):
                self.file.close()
            with writing(self.folder / f"{self.name}.docs.npy"):
                np.save(self.folder / f"{self.name}.docs.npy", np.frombuffer(self.offsets, np.int64))
            self.shards.append({"name": self.name, "docs": len(self.offsets) - 1, "tokens": self.offsets[-1]})
            self.file = None

    def close(self):
        self._finish_shard()
        return {"docs": sum(s["docs"] for s in self.shards), "tokens": sum(s["tokens"] for s in self.shards),
                "shards": self.shards}



def _count_documents(sources) -> tuple:
    """Pass 1: every source validated (binary / non-UTF-8 files skipped) and its documents counted."""
    good, skipped = [], []
    for src in sources:
        try:
            src["docs"] = sum(1 for _ in source_documents(src))
            good.append(src)
        except SkipFile as e:
            skipped.append({"path": src["path"], "reason": str(e)})
            warnings.warn(f"skipping {src['path']}: {e}")
    if sum(src["docs"] for src in good) == 0:
        raise ValueError("empty corpus: no documents in the inputs"
                         + "".join(f"; skipped {s['path']}: {s['reason']}" for s in skipped))
    return good, skipped


def _encode(tmp, documents, n_docs, tokenizer, dtype, is_valid, shard_tokens, batch_docs) -> tuple:
    """Pass 2: batches of documents encoded in parallel, their ids streamed to the shard files of their split.
    -> (the splits' shard lists, token counts per id over the train split)"""
    writers = {split: _ShardWriter(tmp, split, shard_tokens) for split in ("train", "valid")}
    n_vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    counts = np.zeros(n_vocab, np.int64)
    done = 0
    with tqdm(total=n_docs, unit="doc", desc="tokenizing", disable=None) as bar:
        for docs in _groups(documents, batch_docs, BATCH_CHARS):
            ids, lengths = _encode_batch(tokenizer, docs, dtype)
            valid = is_valid(np.arange(done, done + len(docs)))
            counts += np.bincount(ids[np.repeat(~valid, lengths)], minlength=n_vocab)
            ends = np.cumsum(lengths)
            for j in range(len(docs)):
                writers["valid" if valid[j] else "train"].add(ids[ends[j] - lengths[j]:ends[j]])
            done += len(docs)
            bar.update(len(docs))
    if done != n_docs:
        raise RuntimeError(f"the inputs changed while being prepared ({n_docs} documents, then {done})")
    return {split: w.close() for split, w in writers.items()}, counts


def build(tmp, sources, tokenizer, vocab, vocab_size, valid_fraction, shard_tokens, batch_docs, seed):
    good, skipped = _count_documents(sources)  # pass 1
    n_docs = sum(src["docs"] for src in good)

    # Split by document: a seeded random sample of documents forms the valid split.
    n_valid = (0 if n_docs < 2 or valid_fraction <= 0
               else min(n_docs - 1, max(1, round(valid_fraction * n_docs))))
    valid_ids = np.append(np.sort(np.random.default_rng(seed).choice(n_docs, n_valid, replace=False)), n_docs)

    def is_valid(doc_ids):  # membership in the sorted valid_ids (n_docs at the end keeps the lookup in range)
        return valid_ids[np.searchsorted(valid_ids, doc_ids)] == doc_ids

    def all_documents():
        return itertools.chain.from_iterable(source_documents(src) for src in good)

    if tokenizer is None:
        log(f"training a WordPiece vocabulary of {vocab_size} on the train documents")
        train_docs = (doc for i, doc in enumerate(all_documents()) if not is_valid(i))
        tokenizer, vocab_file = train_wordpiece(train_docs, vocab_size, tmp / "vocab.txt"), tmp / "vocab.txt"
        got = tokenizer.get_vocab_size(with_added_tokens=True)
        if got != vocab_size:  # the alphabet alone is larger, or the corpus has too few words for more
            log(f"the trained vocabulary holds {got} tokens, not the {vocab_size} of --vocab_size: "
                + ("the special tokens and the corpus's characters alone are more" if got > vocab_size else
                   "the training documents have no more pieces worth a token"))
    else:
        vocab_file = tokenizer_file(vocab)
        with writing(tmp / vocab_file.name):
            shutil.copyfile(vocab_file, tmp / vocab_file.name)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    n_vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(n_vocab)

    splits, counts = _encode(tmp, all_documents(), n_docs, tokenizer, dtype, is_valid, shard_tokens,
                             batch_docs)  # pass 2
    if splits["train"]["tokens"] + splits["valid"]["tokens"] == 0:
        raise ValueError("empty corpus: the documents contain no tokens")
    with writing(tmp / "counts.npy"):
        np.save(tmp / "counts.npy", counts)
    files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file() and p.name != PARTIAL}
    return {"files": files,
            "format": FORMAT, "format_version": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "tokenizer": {"file": vocab_file.name,
                          "source": None if vocab is None else str(vocab_file.resolve()),
                          "trained": vocab is None, "normalizer": repr(tokenizer.normalizer),
                          "pre_tokenizer": repr(tokenizer.pre_tokenizer),
                          "model": type(tokenizer.model).__name__},
            "vocab_hash": vocab_hash(tokenizer), "vocab_size": n_vocab, "special_ids": special_ids(tokenizer),
            "dtype": dtype.name, "splits": splits, "sources": sources, "skipped": skipped}
