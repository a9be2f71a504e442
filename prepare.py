"""Corpus preparation: raw text -> the token shards data.py reads. Run once, before training.

  1. corpus      documents (blank-line separated blocks) from files/folders/globs, HF datasets, or Python's
                 own docs
  2. prepare     corpus -> flat binary token shards + document offsets + counts.npy + vocab + meta.json
                 (atomic)

Command line:  python prepare.py [inputs ...] [--out DIR] [--vocab=PATH | --vocab_size=N] [--valid_fraction=F]
With no inputs the corpus is Python's own documentation, so everything
runs offline.
"""
import contextlib
import functools
import glob
import hashlib
import importlib
import inspect
import io
import itertools
import json
import os
import pkgutil
import shutil
import sys
import sysconfig
import time
import warnings
from array import array
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data import FORMAT, FORMAT_VERSION, token_dtype
from machinery import files
from machinery.config import ArgumentParser, check_value
from machinery.files import WriteFailed, disk_error, fsync_dir, one_line
from machinery.files import sha256 as sha256_file
from machinery.files import write_atomic
from machinery.tokenizer import SPECIAL_TOKENS, load_tokenizer, special_ids, tokenizer_file, train_wordpiece, vocab_hash

PARTIAL = ".data.py-partial"  # in a folder data.py is still writing (so that a crash leaves it recognisable)
log = functools.partial(files.log, source="data")


# -------------------------------------------------------------------------------------------------- 1. corpus
# A document is a blank-line separated block of a text file (for a book that is a paragraph), one row of a
# Hugging Face dataset, or one Python documentation page / module. Documents are read lazily, one at a time.

# what a folder contributes: *.txt and extension-less files, hidden paths excluded
TEXT_SUFFIXES = {".txt", ""}
MAX_LINE_CHARS = MAX_DOC_CHARS = 1 << 20  # bounds memory on pathological files: longer pieces are cut there
BATCH_CHARS = 1 << 22  # an encoding batch holds at most batch_docs documents or ~4M characters
SKIP_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "tests",
                "lib2to3",
                # side effects, GUI, tests
                "ensurepip", "venv", "distutils", "pydoc_data", "readline", "rlcompleter"}


class SkipFile(Exception):
    """A file that is not UTF-8 text; it is skipped and reported, not fatal."""


def resolve_inputs(inputs):
    """Files, folders (searched recursively) and glob patterns -> sorted, de-duplicated list of files."""
    files = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = (f for f in path.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES
                     and not any(part.startswith(".") for part in f.relative_to(path).parts))
            files += sorted(found, key=str)
        elif any(c in str(item) for c in "*?["):
            matches = sorted(glob.glob(str(path), recursive=True))
            if not matches:
                raise FileNotFoundError(f"no file matches the pattern {item}")
            files += resolve_inputs(matches)
        else:
            raise FileNotFoundError(f"input path does not exist: {item}")
    return list(dict.fromkeys(f.resolve() for f in files))


def file_documents(path):
    """Blank-line separated blocks of a UTF-8 text file (BOM tolerated); SkipFile for binary or non-UTF-8
    files."""
    with open(path, "rb") as f:
        if b"\x00" in f.read(1 << 16):
            raise SkipFile("binary file (contains NUL bytes)")
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines, size = [], 0
            while line := f.readline(MAX_LINE_CHARS):
                if "\x00" in line:
                    raise SkipFile("binary file (contains NUL bytes)")
                blank = not line.strip()
                if not blank:
                    lines.append(line)
                    size += len(line)
                if lines and (blank or size >= MAX_DOC_CHARS):
                    yield "".join(lines).strip()
                    lines, size = [], 0
            if lines:
                yield "".join(lines).strip()
    except UnicodeDecodeError as e:
        raise SkipFile(f"not UTF-8 text ({e.reason})") from None


PACK_CHARS = 10_000  # sentence-per-row datasets: consecutive rows packed into documents of this size


def _hf_rows(spec):
    """The non-empty 'text' rows of a Hugging Face dataset, streamed: neither the corpus nor a converted copy
    of it is ever held in memory (a few thousand rows at a time) or written to disk. spec: 'name[:config]' on
    the Hub, or a local folder of its data files (parquet, arrow, json, ...; 'folder[:config]' when its
    README names configs), both read by the same datasets.load_dataset(..., streaming=True), train split; or a
    folder written by Dataset.save_to_disk (memory-mapped). `datasets` is optional."""
    try:
        import datasets
    except ImportError:
        raise ImportError(f"--hf_dataset={spec} needs the Hugging Face `datasets` package: "
                          f"pip install datasets") from None
    saved = Path(spec).is_dir() and any((Path(spec) / f).is_file()
                                        for f in ("state.json", "dataset_dict.json"))  # save_to_disk's
    if saved:
        rows = datasets.load_from_disk(spec)
        rows = rows["train"] if isinstance(rows, datasets.DatasetDict) else rows
    else:
        name, _, config = (spec, "", "") if Path(spec).is_dir() else spec.partition(":")
        try:
            rows = datasets.load_dataset(name, config or None, split="train", streaming=True)
        except RuntimeError as e:
            if "script" not in str(e).lower():
                raise
            raise ValueError(f"--hf_dataset={spec}: {one_line(e)} (`datasets` {datasets.__version__} runs no "
                             f"loading scripts: name a script-free dataset, e.g. "
                             f"wikimedia/wikipedia:20231101.en or SamuelYang/bookcorpus)") from None
    for row in rows:
        if "text" not in row:
            raise ValueError(f"--hf_dataset={spec}: no 'text' column (columns: {sorted(row)})")
        if row["text"].strip():
            yield row["text"].strip()


def sentence_per_row(rows, min_rows=100, max_median_chars=200):
    """Whether rows look like BookCorpus's (74M rows, one sentence each): at least min_rows rows, none
    spanning paragraphs, and a median length under max_median_chars characters (Wikipedia's rows are whole
    articles)."""
    lengths = sorted(len(r) for r in rows)
    return (len(lengths) >= min_rows and lengths[len(lengths) // 2] < max_median_chars
            and not any("\n\n" in r for r in rows))


def pack_rows(rows, max_chars=PACK_CHARS):
    """Consecutive rows joined by spaces into documents of at most max_chars characters (a longer row is a
    document of its own), so that sequences of sentence rows fill max_len as the BookCorpus text files of the
    paper did."""
    doc, size = [], 0
    for r in rows:
        if doc and size + 1 + len(r) > max_chars:
            yield " ".join(doc)
            doc, size = [], 0
        doc.append(r)
        size += len(r) + (len(doc) > 1)
    if doc:
        yield " ".join(doc)


def hf_documents(spec, pack="auto", max_chars=PACK_CHARS):
    """Documents of a Hugging Face dataset (see _hf_rows): one per row, or, with pack="on" (or "auto" and
    sentence_per_row on the first 1,000 rows), consecutive rows packed into documents of up to max_chars."""
    if pack not in ("auto", "on", "off"):
        raise ValueError(f"--pack_rows={pack}: expected auto, on or off")
    rows = _hf_rows(spec)
    head = list(itertools.islice(rows, 1000))
    rows = itertools.chain(head, rows)
    if pack == "on" or (pack == "auto" and sentence_per_row(head)):
        return pack_rows(rows, max_chars)
    return rows


def _stdlib_modules():
    """Public standard-library modules, depth first in sorted order; ones that fail to import are skipped."""
    stdlib = sysconfig.get_paths()["stdlib"]
    top = {m.name for m in pkgutil.iter_modules([stdlib, os.path.join(stdlib, "lib-dynload")])}
    top |= set(sys.builtin_module_names)

    def visit(name):
        if any(p.startswith("_") or p in SKIP_MODULES or p.startswith("xx") for p in name.split(".")):
            return
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except (Exception, SystemExit):
            return
        yield module
        if hasattr(module, "__path__"):
            for sub in sorted(m.name for m in pkgutil.iter_modules(module.__path__, name + ".")):
                yield from visit(sub)

    for name in sorted(top):
        yield from visit(name)


def _module_text(module):
    """A module's docstring followed by those of its public classes, their methods, and its functions."""
    def own_doc(obj):  # the object's own docstring, not one inherited from a base class
        doc = getattr(obj, "__doc__", None)
        return inspect.cleandoc(doc) if isinstance(doc, str) else ""

    parts = [own_doc(module)]
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isroutine(obj):
            parts.append(own_doc(obj))
        elif inspect.isclass(obj):
            parts.append(own_doc(obj))
            parts += [own_doc(m) for k, m in sorted(vars(obj).items())
                      if not k.startswith("_") and inspect.isroutine(m)]
    return "\n\n".join(p for p in parts if p.strip())


def default_corpus_documents():
    """The offline default corpus (~1.7 MB of English): Python's help topics (pydoc_data.topics), one document
    each, then one document per standard-library module made of its docstrings. Same interpreter -> same
    documents."""
    from pydoc_data.topics import topics
    for key in sorted(topics):
        if topics[key].strip():
            yield topics[key].strip()
    for module in _stdlib_modules():
        with warnings.catch_warnings():  # e.g. typing.io warns when its attributes are touched
            warnings.simplefilter("ignore")
            text = _module_text(module)
        if text:
            yield text


def _documents(source):
    if source["kind"] == "file":
        return file_documents(source["path"])
    if source["kind"] == "hf_dataset":
        return hf_documents(source["name"], source.get("pack", "auto"), source.get("pack_chars", PACK_CHARS))
    return default_corpus_documents()


# ------------------------------------------------------------------------------------------------- 2. prepare

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


def prepare(inputs=(), out_dir="data/shards", vocab=None, vocab_size=8192, valid_fraction=0.005,
            shard_tokens=1 << 27, batch_docs=1000, seed=0, hf_datasets=(), overwrite=False, pack_rows="auto",
            pack_chars=PACK_CHARS):
    """Tokenize a corpus into `out_dir` and return its meta dict (see the module docstring for the layout).

    inputs: files, folders, globs; hf_datasets: 'name[:config]' strings or save_to_disk folders, their rows
    packed into documents by pack_rows (auto | on | off, see hf_documents); neither -> the Python-docs default
    corpus. vocab: a vocab.txt / tokenizer.json (copied into out_dir); None -> train a WordPiece vocab of
    vocab_size on the train documents. valid_fraction of the documents (chosen at random with `seed`, at least
    one when there are two or more) form the valid split. Two passes over the text: the first validates files
    and counts documents, the second encodes batches of documents and streams ids to disk, so memory does not
    grow with the corpus. Built in '<out_dir>.tmp' and renamed at the end; the same inputs and settings again
    -> nothing to do."""
    check_settings(vocab_size=vocab_size if vocab is None else None, valid_fraction=valid_fraction,
                   shard_tokens=shard_tokens, batch_docs=batch_docs, seed=seed, pack_chars=pack_chars,
                   pack_rows=pack_rows)
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    out_dir = Path(out_dir).resolve()
    tmp, old = out_dir.with_name(out_dir.name + ".tmp"), out_dir.with_name(f".{out_dir.name}.old")
    files = resolve_inputs(inputs)
    if inputs and not files:
        raise ValueError(f"empty corpus: no text files (*.txt or no extension) in {list(map(str, inputs))}")
    sources = _sources(files, hf_datasets, pack_rows, pack_chars)
    tokenizer = load_tokenizer(vocab) if vocab is not None else None
    settings = {"format_version": FORMAT_VERSION, "valid_fraction": valid_fraction, "seed": seed,
                "shard_tokens": shard_tokens,
                "vocab": vocab_hash(tokenizer) if tokenizer is not None else f"train:{vocab_size}"}
    inputs_hash = hashlib.sha256(json.dumps([sources, settings], sort_keys=True).encode()).hexdigest()
    _check_not_an_input(out_dir, files, inputs)
    with _prepare_lock(out_dir):  # a second prepare.py on the same --out waits for none: it is refused
        _recover_old(old, out_dir)  # first: a folder set aside by an interrupted --overwrite goes back
        _remove_stale(tmp)  # left behind by an interrupted run (no living prepare.py holds the lock)
        existing = _own_meta(out_dir)
        if existing is not None and (out_dir / PARTIAL).is_file():  # killed right after its rename
            (out_dir / PARTIAL).unlink()
        if existing is not None and existing.get("inputs_hash") == inputs_hash:
            log(f"{out_dir} is up to date (same inputs and settings): nothing to do")
            return existing
        _check_replaceable(out_dir, existing, overwrite)
        meta = {}

        def fill(tmp):  # the old folder (--overwrite) goes only once the new one is complete
            tmp.mkdir(parents=True)
            # marks the folder as ours until it has its name: a kill at any moment before leaves a
            # recognisable <out>.tmp (removed by the next run), never one that could be a user's
            with writing(tmp / PARTIAL):
                (tmp / PARTIAL).write_text(FORMAT + "\n")
            meta.update(_build(tmp, sources, tokenizer, vocab, vocab_size, valid_fraction, shard_tokens,
                               batch_docs, seed), inputs_hash=inputs_hash, settings=settings)
            with writing(tmp / "meta.json"):  # last: marks the folder complete
                (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            write_atomic(out_dir, fill, folder=True, tmp=tmp)
        except OSError as e:  # a full disk: the file, the bytes free; the temporary folder is gone
            raise WriteFailed(f"{disk_error(e.filename or tmp, e)}; {out_dir} is as it was, and "
                              f"{tmp.name} removed") from None
        (out_dir / PARTIAL).unlink()
        fsync_dir(out_dir)
        s = meta["splits"]
        log(f"wrote {out_dir}: train {s['train']['docs']} docs / {s['train']['tokens']} tokens, "
            f"valid {s['valid']['docs']} docs / {s['valid']['tokens']} tokens")
        return meta


# prepare's settings: what each allows (machinery.config.check_value, the check of every command's settings)
SETTINGS = {"vocab_size": (f"[{len(SPECIAL_TOKENS) + 1}, 2**32)", int), "valid_fraction": ("[0, 1)", float),
            "shard_tokens": (">= 1", int), "batch_docs": (">= 1", int), "seed": ("[0, 2**63)", int),
            "pack_chars": (">= 1", int)}


def check_settings(**values):
    """Each of prepare's settings within what SETTINGS allows (None: not used); a ValueError of one line
    naming the first that is not: `--vocab_size=0: expected an integer in [6, 2**32)`."""
    for key, value in values.items():
        if key == "pack_rows":
            why = check_value(key, value, choices=("auto", "on", "off"))
        else:
            why = check_value(key, value, SETTINGS[key][0], kind=SETTINGS[key][1])
        if why:
            raise ValueError(why)


def _sources(files, hf_datasets, pack_rows, pack_chars) -> list:
    """What the corpus is made of, as recorded in meta.json (and hashed: the same sources again, nothing to
    do)."""
    sources = [{"kind": "file", "path": str(f), "bytes": f.stat().st_size, "mtime": f.stat().st_mtime_ns}
               for f in files] + [{"kind": "hf_dataset", "name": n, "pack": pack_rows,
                                   "pack_chars": pack_chars} for n in hf_datasets]
    return sources or [{"kind": "python_docs", "python": sys.version}]


def _check_replaceable(out_dir, existing, overwrite):
    """out_dir may be replaced only when it is ours (its meta.json) and --overwrite says so."""
    if existing is not None:
        if not overwrite:
            raise FileExistsError(f"{out_dir} holds shards of other inputs or settings; use --overwrite "
                                  "(prepare(..., overwrite=True)) to replace it")
    elif out_dir.exists():
        raise FileExistsError(f"{out_dir} exists and is not a prepared shard folder made by data.py (no "
                              f"meta.json with format {FORMAT!r}): never replaced, even with --overwrite; "
                              f"choose another --out")


def _own_meta(folder):
    """The meta dict of a folder that data.py wrote (meta.json with our format marker), else None."""
    try:
        meta = json.loads((Path(folder) / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def _remove_stale(folder):
    """Remove the '<out>.tmp' folder an interrupted run left, only when it is provably ours: the PARTIAL
    marker prepare writes into it first, and (the caller holds it) the lock no living prepare.py holds. A
    folder of that name without the marker is never deleted."""
    if not folder.exists():
        return
    if not (folder / PARTIAL).is_file():
        raise FileExistsError(f"{folder} is in the way and was not left by an interrupted prepare.py (no "
                              f"{PARTIAL} inside); move it away or choose another --out")
    log(f"removing {folder} left by an interrupted run")
    shutil.rmtree(folder)


def _recover_old(old, out_dir):
    """'.<out>.old' is where an --overwrite sets the previous folder aside for the moment of the rename: after
    a kill in that moment it is put back when <out> is missing, and removed when <out> is there (it was on
    its way out) and it is a folder data.py made; anything else of that name is left alone."""
    if not old.is_dir() or _own_meta(old) is None:
        return
    if not out_dir.exists():
        log(f"restoring {out_dir} from {old}, set aside by an interrupted --overwrite")
        os.replace(old, out_dir)
    else:
        log(f"removing {old}, the previous folder an interrupted --overwrite had replaced")
        shutil.rmtree(old)


def _prepare_lock(out_dir):
    """An exclusive lock on '.<out>.lock' beside out_dir for the whole preparation (files.exclusive_lock): a
    killed run is no obstacle, and a second prepare.py on the same --out is refused in one line."""
    path = out_dir.with_name(f".{out_dir.name}.lock")
    return files.exclusive_lock(path, lambda holder: FileExistsError(
        f"{path}: another prepare.py is writing {out_dir} ({holder}); wait for it to finish or choose "
        f"another --out"), remove=True)


def _check_not_an_input(out_dir, files, inputs):
    """Refuse an output folder that holds (or is) one of the input files, since replacing it would delete the
    corpus, or that lies inside an input folder, whose next reading would take our own files for text."""
    for f in files:
        if f == out_dir or out_dir in f.parents:
            raise FileExistsError(f"--out {out_dir} holds the input {f}: the output must be a folder of its "
                                  f"own")
    for item in inputs:
        if Path(item).expanduser().resolve() in out_dir.parents:
            raise FileExistsError(f"--out {out_dir} lies inside the input folder {item}: choose a folder "
                                  f"outside it")


def _count_documents(sources) -> tuple:
    """Pass 1: every source validated (binary / non-UTF-8 files skipped) and its documents counted."""
    good, skipped = [], []
    for src in sources:
        try:
            src["docs"] = sum(1 for _ in _documents(src))
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


def _build(tmp, sources, tokenizer, vocab, vocab_size, valid_fraction, shard_tokens, batch_docs, seed):
    good, skipped = _count_documents(sources)  # pass 1
    n_docs = sum(src["docs"] for src in good)

    # Split by document: a seeded random sample of documents forms the valid split.
    n_valid = (0 if n_docs < 2 or valid_fraction <= 0
               else min(n_docs - 1, max(1, round(valid_fraction * n_docs))))
    valid_ids = np.append(np.sort(np.random.default_rng(seed).choice(n_docs, n_valid, replace=False)), n_docs)

    def is_valid(doc_ids):  # membership in the sorted valid_ids (n_docs at the end keeps the lookup in range)
        return valid_ids[np.searchsorted(valid_ids, doc_ids)] == doc_ids

    def all_documents():
        return itertools.chain.from_iterable(_documents(src) for src in good)

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


# -------------------------------------------------------------------------------------------------------- CLI

def main(argv=None):
    p = ArgumentParser(description="Tokenize a corpus into token shards for distillation "
                                            "(see prepare.py).")
    p.add_argument("inputs", nargs="*", help="files, folders, globs (none: Python's own documentation)")
    p.add_argument("--out", default="data/shards",
                   help="output folder (default: data/shards, train.py's default --data)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--vocab", help="vocab.txt or tokenizer.json (e.g. the teacher's); default: train one")
    g.add_argument("--vocab_size", type=int, default=8192, help="size of the WordPiece vocabulary to train; in "
                   f"{SETTINGS['vocab_size'][0]}")
    p.add_argument("--valid_fraction", type=float, default=0.005, help="documents held out as the valid split; "
                   f"in {SETTINGS['valid_fraction'][0]}")
    p.add_argument("--hf_dataset", action="append", default=[], help="name[:config] of a HF dataset, or a "
                   "save_to_disk folder (repeatable)")
    p.add_argument("--pack_rows", default="auto", choices=["auto", "on", "off"], help="join consecutive "
                   "rows of a HF dataset into documents (auto: when rows are sentences, as BookCorpus's)")
    p.add_argument("--pack_chars", type=int, default=PACK_CHARS, help="packed document size in characters; >= 1")
    p.add_argument("--shard_tokens", type=int, default=1 << 27, help="tokens per shard file; >= 1")
    p.add_argument("--batch_docs", type=int, default=1000, help="documents per encoding batch; >= 1")
    p.add_argument("--seed", type=int, default=0, help="seed of the valid split's draw; "
                   f"in {SETTINGS['seed'][0]}")
    p.add_argument("--overwrite", action="store_true", help="replace an out folder made from other inputs")
    a = p.parse_args(argv)
    try:
        meta = prepare(a.inputs, a.out, vocab=a.vocab, vocab_size=a.vocab_size,
                       valid_fraction=a.valid_fraction, shard_tokens=a.shard_tokens, batch_docs=a.batch_docs,
                       seed=a.seed, hf_datasets=a.hf_dataset, pack_rows=a.pack_rows, pack_chars=a.pack_chars,
                       overwrite=a.overwrite)
    except (OSError, ValueError, ImportError, RuntimeError) as e:  # one line, not a traceback
        raise SystemExit(f"prepare.py: error: {one_line(e)}") from None
    splits = {s: {k: v for k, v in meta["splits"][s].items() if k != "shards"} for s in meta["splits"]}
    print(json.dumps({k: meta[k] for k in ("vocab_size", "dtype", "vocab_hash")} | splits))


if __name__ == "__main__":
    main()
