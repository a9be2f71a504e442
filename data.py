"""Everything between raw text and a masked batch, for DistilBERT distillation.

DistilBERT (Sanh et al. 2019), Section 3 (paragraphs "Distillation" and "Data and compute power"), trains the student
on the teacher's own pretraining corpus (English Wikipedia + Toronto Book Corpus) with the RoBERTa practices: very
large batches (up to 4K examples, by gradient accumulation), *dynamic* masking, and no next-sentence-prediction
objective, so a training example is just a piece of one document between [CLS] and [SEP]. The reference code
(huggingface/transformers, examples/research_projects/distillation) also draws the tokens to mask with probability
proportional to token_count^-0.7 instead of uniformly.
This file is read top to bottom:

  1. tokenizer   load_tokenizer, train_wordpiece, special_ids, vocab_hash (BERT uncased WordPiece)
  2. corpus      documents (blank-line separated blocks) from files/folders/globs, HF datasets, or Python's own docs
  3. prepare     corpus -> flat binary token shards + document offsets + counts.npy + vocab + meta.json (atomic)
  4. TokenData   reads a prepared folder; sequences() cuts documents into [CLS] ... [SEP] pieces
  5. Batches     shuffled, length-grouped, rank-sharded, resumable batches
  6. masking     mask_tokens (uniform or smoothed), smoothing_weights, mask_generator

Command line:  python data.py [inputs ...] [--out DIR] [--vocab PATH | --vocab-size N] [--valid-fraction F]
With no inputs the corpus is Python's own documentation, so everything runs offline.
"""
import argparse
import contextlib
import glob
import hashlib
import importlib
import inspect
import io
import itertools
import json
import math
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
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tqdm import tqdm

from model import sha256 as sha256_file

SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
FORMAT, FORMAT_VERSION = "distilbert-from-scratch/token-shards", 1
PARTIAL = ".data.py-partial"  # in a folder data.py is still writing (so that a crash leaves it recognisable)
VERIFY_BYTES = 1 << 30  # token shards up to 1 GiB are checked against their sha256 each time they are opened
MIN_SEQ_TOKENS = 12  # sequences of <= 11 tokens ([CLS] and [SEP] included) are dropped, as in the reference code


def log(msg):
    print(f"[data] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------- 1. tokenizer

def _bert_pipeline(tok):
    """The BERT-uncased text pipeline: clean control chars, split CJK chars, lowercase + strip accents, split on
    whitespace and punctuation; pieces after the first in a word carry the '##' prefix."""
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _tokenizer_file(path):
    """A tokenizer.json or vocab.txt path; a folder is searched for either (tokenizer.json first)."""
    path = Path(path)
    if path.is_dir():
        for name in ("tokenizer.json", "vocab.txt"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"no tokenizer.json or vocab.txt in {path}")
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    return path


def load_tokenizer(path):
    """A `tokenizers.Tokenizer` from a WordPiece vocab.txt (one token per line, id = line number) or a tokenizer.json.
    For a vocab.txt the result gives the same ids as transformers' BertTokenizer(Fast) with do_lower_case=True:
    single = [CLS] A [SEP], pair = [CLS] A [SEP] B [SEP] with token type ids 0 / 1."""
    path = _tokenizer_file(path)
    if path.suffix == ".json":
        return Tokenizer.from_file(str(path))
    with open(path, encoding="utf-8") as f:
        vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}  # a repeated token keeps its last id, like BERT
    tok = _bert_pipeline(Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##",
                                                    max_input_chars_per_word=100)))
    tok.add_special_tokens([t for t in SPECIAL_TOKENS.values() if t in vocab])  # "[MASK]" in text stays one token
    ids = special_ids(tok)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["cls"]), ("[SEP]", ids["sep"])])
    return tok


def special_ids(tokenizer):
    """{'pad', 'unk', 'cls', 'sep', 'mask'} -> id; an error names any special token missing from the vocabulary."""
    ids = {key: tokenizer.token_to_id(tok) for key, tok in SPECIAL_TOKENS.items()}
    missing = [SPECIAL_TOKENS[k] for k, v in ids.items() if v is None]
    if missing:
        raise ValueError(f"vocabulary lacks the special tokens {missing}")
    return ids


def vocab_hash(tokenizer):
    """sha256 of the vocabulary in id order ('\\n'-joined tokens): two tokenizers agree on ids iff hashes agree."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    return hashlib.sha256("\n".join(sorted(vocab, key=vocab.get)).encode("utf-8")).hexdigest()


def write_tokenizer_files(source, folder, model_max_length=512):
    """The files transformers' AutoTokenizer reads, written into `folder` beside exported weights, from our
    vocab.txt or tokenizer.json `source`: vocab.txt, tokenizer.json, tokenizer_config.json (BertTokenizer,
    do_lower_case, the special tokens) and special_tokens_map.json."""
    source, folder = _tokenizer_file(source), Path(folder)
    tok = load_tokenizer(source)
    vocab = tok.get_vocab(with_added_tokens=True)
    tokens = sorted(vocab, key=vocab.get)
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    if source.suffix == ".json":
        shutil.copyfile(source, folder / "tokenizer.json")
    else:
        tok.save(str(folder / "tokenizer.json"))
    special = {f"{k}_token": v for k, v in SPECIAL_TOKENS.items()}
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "tokenize_chinese_chars": True,
              "strip_accents": None, "model_max_length": model_max_length,
              "clean_up_tokenization_spaces": True, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def train_wordpiece(text_iterator, vocab_size, out_path):
    """Train a WordPiece vocabulary (same normalizer and pre-tokenizer as BERT uncased) on an iterator of strings,
    write it as vocab.txt (special tokens first: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4), return the tokenizer."""
    tok = _bert_pipeline(Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##",
                                                    max_input_chars_per_word=100)))
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                        continuing_subword_prefix="##", show_progress=False)
    tok.train_from_iterator(text_iterator, trainer)
    out = Path(out_path)
    out = out / "vocab.txt" if out.is_dir() else out
    vocab = tok.get_vocab()
    out.write_text("".join(t + "\n" for t in sorted(vocab, key=vocab.get)), encoding="utf-8")
    return load_tokenizer(out)


# ------------------------------------------------------------------------------------------------------------ 2. corpus
# A document is a blank-line separated block of a text file (for a book that is a paragraph), one row of a Hugging Face
# dataset, or one Python documentation page / module. Documents are read lazily, one at a time.

TEXT_SUFFIXES = {".txt", ""}  # what a folder contributes: *.txt and extension-less files, hidden paths excluded
MAX_LINE_CHARS = MAX_DOC_CHARS = 1 << 20  # bounds memory on pathological files: longer pieces are cut there
BATCH_CHARS = 1 << 22  # an encoding batch holds at most batch_docs documents or ~4M characters
SKIP_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "tests", "lib2to3",
                "ensurepip", "venv", "distutils", "pydoc_data", "readline", "rlcompleter"}  # side effects, GUI, tests


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
    """Blank-line separated blocks of a UTF-8 text file (BOM tolerated); SkipFile for binary or non-UTF-8 files."""
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
    """The non-empty 'text' rows of a Hugging Face dataset: 'name[:config]' (train split) or a local folder
    written by Dataset.save_to_disk (a DatasetDict's train split). `datasets` is optional."""
    try:
        import datasets
    except ImportError:
        raise ImportError(f"--hf-dataset {spec} needs the Hugging Face `datasets` package: pip install datasets") \
            from None
    if Path(spec).is_dir():
        rows = datasets.load_from_disk(spec)
        rows = rows["train"] if isinstance(rows, datasets.DatasetDict) else rows
    else:
        name, _, config = spec.partition(":")
        rows = datasets.load_dataset(name, config or None, split="train")
    for row in rows:
        if "text" not in row:
            raise ValueError(f"--hf-dataset {spec}: no 'text' column (columns: {sorted(row)})")
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
        raise ValueError(f"--pack-rows={pack}: expected auto, on or off")
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
    """The offline default corpus (~1.7 MB of English): Python's help topics (pydoc_data.topics), one document each,
    then one document per standard-library module made of its docstrings. Same interpreter -> same documents."""
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


# ----------------------------------------------------------------------------------------------------------- 3. prepare

def token_dtype(vocab_size):
    """Shards store ids as uint16 when the vocabulary has fewer than 65536 entries, else uint32."""
    return np.dtype(np.uint16) if vocab_size < 1 << 16 else np.dtype(np.uint32)


def _encode_batch(tokenizer, docs, dtype):
    """Encode documents in parallel (Rust, all cores), no special tokens -> (flat ids as dtype, length per doc)."""
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


class _ShardWriter:
    """Appends documents of one split to {split}_000.bin, {split}_001.bin, ... (raw ids, no header) and writes each
    shard's document offsets ({split}_000.docs.npy, int64, ndocs + 1 entries). Documents never straddle shards; a new
    shard starts once the current one holds shard_tokens tokens. Memory: one offset per document of the open shard."""

    def __init__(self, folder, split, shard_tokens):
        self.folder, self.split, self.shard_tokens = folder, split, shard_tokens
        self.shards, self.file = [], None

    def add(self, ids):
        if self.file is None or self.offsets[-1] >= self.shard_tokens:
            self._finish_shard()
            self.name = f"{self.split}_{len(self.shards):03d}"
            self.file, self.offsets = open(self.folder / f"{self.name}.bin", "wb"), array("q", [0])
        ids.tofile(self.file)
        self.offsets.append(self.offsets[-1] + len(ids))

    def _finish_shard(self):
        if self.file is not None:
            self.file.close()
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
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    out_dir = Path(out_dir).resolve()
    tmp, old = out_dir.with_name(out_dir.name + ".tmp"), out_dir.with_name(out_dir.name + ".old")
    files = resolve_inputs(inputs)
    if inputs and not files:
        raise ValueError(f"empty corpus: no text files (*.txt or no extension) in {list(map(str, inputs))}")
    sources = [{"kind": "file", "path": str(f), "bytes": f.stat().st_size, "mtime": f.stat().st_mtime_ns}
               for f in files] + [{"kind": "hf_dataset", "name": n, "pack": pack_rows,
                                   "pack_chars": pack_chars} for n in hf_datasets]
    if not sources:
        sources = [{"kind": "python_docs", "python": sys.version}]
    tokenizer = load_tokenizer(vocab) if vocab is not None else None
    settings = {"format_version": FORMAT_VERSION, "valid_fraction": valid_fraction, "seed": seed,
                "shard_tokens": shard_tokens,
                "vocab": vocab_hash(tokenizer) if tokenizer is not None else f"train:{vocab_size}"}
    inputs_hash = hashlib.sha256(json.dumps([sources, settings], sort_keys=True).encode()).hexdigest()

    _check_not_an_input(out_dir, files, inputs)
    for stale in (tmp, old):  # left behind by an interrupted run
        _remove_stale(stale)
    existing = _own_meta(out_dir)
    if existing is not None:
        if existing.get("inputs_hash") == inputs_hash:
            log(f"{out_dir} is up to date (same inputs and settings): nothing to do")
            return existing
        if not overwrite:
            raise FileExistsError(f"{out_dir} holds shards of other inputs or settings; use --overwrite "
                                  "(prepare(..., overwrite=True)) to replace it")
    elif out_dir.exists():
        raise FileExistsError(f"{out_dir} exists and is not a prepared shard folder made by data.py (no "
                              f"meta.json with format {FORMAT!r}): never replaced, even with --overwrite; "
                              f"choose another --out")

    tmp.mkdir(parents=True)
    (tmp / PARTIAL).write_text(FORMAT + "\n")  # marks the folder as ours while it is incomplete
    try:
        meta = _build(tmp, sources, tokenizer, vocab, vocab_size, valid_fraction, shard_tokens, batch_docs, seed)
        meta.update(inputs_hash=inputs_hash, settings=settings)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))  # written last: marks the folder complete
        (tmp / PARTIAL).unlink()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():  # --overwrite: the old folder goes only once the new one is complete
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old)
    else:
        tmp.rename(out_dir)
    s = meta["splits"]
    log(f"wrote {out_dir}: train {s['train']['docs']} docs / {s['train']['tokens']} tokens, "
        f"valid {s['valid']['docs']} docs / {s['valid']['tokens']} tokens")
    return meta


def _own_meta(folder):
    """The meta dict of a folder that data.py wrote (meta.json with our format marker), else None."""
    try:
        meta = json.loads((Path(folder) / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def _remove_stale(folder):
    """Remove a '.tmp' or '.old' folder left by an interrupted run, only if it is recognisably ours."""
    if not folder.exists():
        return
    if not (folder / PARTIAL).is_file() and _own_meta(folder) is None:
        raise FileExistsError(f"{folder} is in the way and was not made by data.py (no {PARTIAL} or meta.json"
                              f" "
                              f"with format {FORMAT!r}); move it away or choose another --out")
    log(f"removing {folder} left by an interrupted run")
    shutil.rmtree(folder)


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


def _build(tmp, sources, tokenizer, vocab, vocab_size, valid_fraction, shard_tokens, batch_docs, seed):
    # Pass 1: validate every source (skipping binary / non-UTF-8 files) and count documents.
    good, skipped = [], []
    for src in sources:
        try:
            src["docs"] = sum(1 for _ in _documents(src))
            good.append(src)
        except SkipFile as e:
            skipped.append({"path": src["path"], "reason": str(e)})
            warnings.warn(f"skipping {src['path']}: {e}")
    n_docs = sum(src["docs"] for src in good)
    if n_docs == 0:
        raise ValueError("empty corpus: no documents in the inputs"
                         + "".join(f"; skipped {s['path']}: {s['reason']}" for s in skipped))

    # Split by document: a seeded random sample of documents forms the valid split.
    n_valid = 0 if n_docs < 2 or valid_fraction <= 0 else min(n_docs - 1, max(1, round(valid_fraction * n_docs)))
    valid_ids = np.append(np.sort(np.random.default_rng(seed).choice(n_docs, n_valid, replace=False)), n_docs)

    def is_valid(doc_ids):  # membership in the sorted valid_ids (n_docs at the end keeps the lookup in range)
        return valid_ids[np.searchsorted(valid_ids, doc_ids)] == doc_ids

    def all_documents():
        return itertools.chain.from_iterable(_documents(src) for src in good)

    if tokenizer is None:
        log(f"training a WordPiece vocabulary of {vocab_size} on the train documents")
        train_docs = (doc for i, doc in enumerate(all_documents()) if not is_valid(i))
        tokenizer, vocab_file = train_wordpiece(train_docs, vocab_size, tmp / "vocab.txt"), tmp / "vocab.txt"
    else:
        vocab_file = _tokenizer_file(vocab)
        shutil.copyfile(vocab_file, tmp / vocab_file.name)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    n_vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(n_vocab)

    # Pass 2: encode batches of documents in parallel and stream the ids to the shard files.
    writers = {split: _ShardWriter(tmp, split, shard_tokens) for split in ("train", "valid")}
    counts = np.zeros(n_vocab, np.int64)
    done = 0
    with tqdm(total=n_docs, unit="doc", desc="tokenizing", disable=None) as bar:
        for docs in _groups(all_documents(), batch_docs, BATCH_CHARS):
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
    splits = {split: w.close() for split, w in writers.items()}
    if splits["train"]["tokens"] + splits["valid"]["tokens"] == 0:
        raise ValueError("empty corpus: the documents contain no tokens")
    np.save(tmp / "counts.npy", counts)
    files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file() and p.name != PARTIAL}
    return {"files": files,
            "format": FORMAT, "format_version": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "tokenizer": {"file": vocab_file.name, "source": None if vocab is None else str(vocab_file.resolve()),
                          "trained": vocab is None, "normalizer": repr(tokenizer.normalizer),
                          "pre_tokenizer": repr(tokenizer.pre_tokenizer), "model": type(tokenizer.model).__name__},
            "vocab_hash": vocab_hash(tokenizer), "vocab_size": n_vocab, "special_ids": special_ids(tokenizer),
            "dtype": dtype.name, "splits": splits, "sources": sources, "skipped": skipped}


# --------------------------------------------------------------------------------------------------------- 4. TokenData

class Sequences:
    """A cheap index of training sequences: sequence i is [CLS] + tokens[start[i] : start[i] + length[i]] of shard
    shard[i] + [SEP]. Token data stays in np.memmap files; `seqs[i]` reads one sequence (int64 array)."""

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


class TokenData:
    """A prepared shard folder: `.meta`, `.vocab_size`, `.special`, `.counts` (train token counts per id),
    `.tokenizer` (from the folder's own vocabulary) and `sequences(split, max_len)`. If `vocab` (a path or a
    Tokenizer) is given, it must be the vocabulary the shards were made with."""

    def __init__(self, folder, vocab=None, verify="auto"):
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: {self.folder} is not a prepared folder (run data.py)")
        try:
            self.meta = json.loads(meta_path.read_text())
        except ValueError as e:
            raise ValueError(f"{meta_path}: not valid JSON ({e}): the folder is damaged; prepare it "
                             f"again") from None
        if (self.meta.get("format"), self.meta.get("format_version")) != (FORMAT, FORMAT_VERSION):
            raise ValueError(f"{meta_path} is not a {FORMAT} v{FORMAT_VERSION} meta file")
        self.dtype = np.dtype(self.meta["dtype"])
        for split in self.meta["splits"].values():
            for shard in split["shards"]:
                path = self.folder / f"{shard['name']}.bin"
                if not path.is_file() or path.stat().st_size != shard["tokens"] * self.dtype.itemsize:
                    raise ValueError(f"{path} is missing or does not hold the {shard['tokens']} tokens of {meta_path}")
        self._verify_files(verify)
        own_vocab = self.folder / self.meta["tokenizer"]["file"]
        self.tokenizer = load_tokenizer(own_vocab)
        self._check_vocab(self.tokenizer, own_vocab)
        if isinstance(vocab, Tokenizer):
            self._check_vocab(vocab, "the given tokenizer")
        elif vocab is not None:
            self._check_vocab(load_tokenizer(vocab), vocab)
        self.vocab_size, self.special = self.meta["vocab_size"], dict(self.meta["special_ids"])
        self.counts = np.load(self.folder / "counts.npy")
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

    def _check_vocab(self, tokenizer, name):
        got, want = vocab_hash(tokenizer), self.meta["vocab_hash"]
        if got != want:
            raise ValueError(f"vocabulary mismatch: {name} has hash {got[:16]}, but the shards in {self.folder} were "
                             f"made with vocab hash {want[:16]} ({self.folder / 'meta.json'})")

    def sequences(self, split, max_len):
        """Each document cut into consecutive chunks of at most max_len - 2 tokens, each one [CLS] chunk [SEP];
        sequences of <= 11 tokens and those whose chunk is at least half [UNK] are dropped (the reference's
        remove_empty_sequences / remove_unknown_sequences). Cached per (split, max_len)."""
        if (split, max_len) not in self._cache:
            if max_len < 3:
                raise ValueError(f"max_len must be >= 3, got {max_len}")
            shards, shard_of, starts, lengths = [], [np.zeros(0, np.int32)], [np.zeros(0, np.int64)], [np.zeros(0, int)]
            for k, shard in enumerate(self.meta["splits"][split]["shards"]):
                path = self.folder / f"{shard['name']}.bin"  # (an empty file cannot be memory-mapped)
                tokens = np.memmap(path, dtype=self.dtype, mode="r") if shard["tokens"] else np.zeros(0, self.dtype)
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


def _cut(offsets, chunk):
    """Documents (given by offsets) cut into consecutive chunks of at most `chunk` tokens -> (start, length)."""
    doc_len = np.diff(offsets)
    n_chunks = -(-doc_len // chunk)
    doc = np.repeat(np.arange(len(doc_len)), n_chunks)
    k = np.arange(len(doc)) - np.repeat(np.cumsum(n_chunks) - n_chunks, n_chunks)  # chunk number within its doc
    start = offsets[doc] + k * chunk
    return start, np.minimum(chunk, offsets[doc + 1] - start)


def _count_in(tokens, start, length, token_id, block=1 << 24):
    """How many times token_id occurs in each tokens[start:start+length] (start ascending), reading ~block at a time."""
    out, i = np.zeros(len(start), np.int64), 0
    while i < len(start):
        j = max(i + 1, int(np.searchsorted(start, start[i] + block)))
        lo, hi = start[i], start[j - 1] + length[j - 1]
        cum = np.concatenate([[0], np.cumsum(tokens[lo:hi] == token_id)])
        out[i:j] = cum[start[i:j] - lo + length[i:j]] - cum[start[i:j] - lo]
        i = j
    return out


# ----------------------------------------------------------------------------------------------------------- 5. Batches

class Batches:
    """Batches of sequences for one rank. Iterating yields the rest of the current epoch, then moves to the next
    epoch (so `for epoch ...: for batch in batches:` works); `set_epoch`, `state_dict`, `load_state_dict` resume.

    Each epoch has ONE global list of batches: sequences shuffled with a generator seeded by (seed, epoch), sorted by
    length within windows of 100 batches (less padding), cut into batches of batch_size, batch order shuffled. Rank r
    takes global batches r, r + world_size, ... For DDP lockstep every rank needs the same number of batches, so the
    batches past the last multiple of world_size and the final partial batch are pooled and split evenly into
    world_size smaller batches (the only part that depends on world_size). Every sequence is seen exactly once per
    epoch, except when fewer than world_size sequences are pooled: those few are skipped this epoch.
    Batch dicts: input_ids, attention_mask (B x L, L = longest rounded up to pad_multiple, capped at max_len),
    index (global batch index in the epoch; seeds the mask, see mask_generator) and epoch."""
    GROUP = 100

    def __init__(self, data, split, max_len, batch_size, seed=0, rank=0, world_size=1, shuffle=True,
                 group_by_length=True, pad_multiple=8, pin_memory=False):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.seqs, self.pad_id = data.sequences(split, max_len), data.special["pad"]
        self.max_len, self.batch_size, self.seed = max_len, batch_size, seed
        self.rank, self.world_size, self.shuffle, self.group_by_length = rank, world_size, shuffle, group_by_length
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
        """The epoch's batches (arrays of sequence indices) in global order: rank r gets entries r::world_size."""
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
        return {"input_ids": ids, "attention_mask": mask, "index": index, "epoch": self.epoch}

    def set_epoch(self, epoch):
        self.epoch, self.position = epoch, 0

    def state_dict(self):
        if self.position >= len(self):
            return {"epoch": self.epoch + 1, "position": 0}
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state):
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


# ----------------------------------------------------------------------------------------------------------- 6. masking

def _id_list(ids):
    return sorted(set(ids.values() if isinstance(ids, dict) else ids))


def mask_tokens(input_ids, attention_mask, *, mask_id, vocab_size, special_ids, generator, mlm_prob=0.15,
                weights=None, mask_frac=0.8, random_frac=0.1):
    """Dynamic masking (Sanh et al. 2019, Section 3, after RoBERTa): a fresh mask every time a batch is used.
    -> (masked input_ids, labels): labels hold the original id at chosen positions and -100 elsewhere.

    Only real (attention_mask 1), non-special tokens can be chosen. weights None: each one independently with
    probability mlm_prob (BERT). weights (per-id tensor, see smoothing_weights): exactly ceil(mlm_prob * n) of the
    batch's n eligible tokens, without replacement, with probability proportional to weights[id] (the reference's
    smoothed masking). Chosen tokens become [MASK] (mask_frac), a random non-special id (random_frac) or stay.
    All randomness comes from `generator` (on input_ids' device); the input is not modified."""
    device = input_ids.device
    special = torch.tensor(_id_list(special_ids) + [mask_id], device=device)
    eligible = attention_mask.bool() & ~torch.isin(input_ids, special)
    if weights is None:
        chosen = eligible & (torch.rand(input_ids.shape, generator=generator, device=device) < mlm_prob)
    else:
        w = (weights.to(device=device, dtype=torch.float32)[input_ids] * eligible).flatten()
        n_pick = min(math.ceil(mlm_prob * int(eligible.sum()) - 1e-9), int((w > 0).sum()))
        chosen = torch.zeros(w.numel(), dtype=torch.bool, device=device)
        if n_pick > 0:
            chosen[torch.multinomial(w, n_pick, replacement=False, generator=generator)] = True
        chosen = chosen.view(input_ids.shape)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    action = torch.rand(input_ids.shape, generator=generator, device=device)
    vocab = torch.arange(vocab_size, device=device)
    candidates = vocab[~torch.isin(vocab, special)]
    random_ids = candidates[torch.randint(len(candidates), input_ids.shape, generator=generator, device=device)]
    masked = torch.where(chosen & (action < mask_frac), torch.full_like(input_ids, mask_id), input_ids)
    masked = torch.where(chosen & (action >= mask_frac) & (action < mask_frac + random_frac), random_ids, masked)
    return masked, labels


def smoothing_weights(counts, special_ids, exponent=0.7):
    """Per-id masking weights max(count, 1) ** -exponent (rare tokens masked more often); special ids get 0."""
    w = np.maximum(np.asarray(counts, np.float64), 1.0) ** -exponent
    w[_id_list(special_ids)] = 0.0
    return torch.tensor(w, dtype=torch.float32)


def mask_generator(seed, epoch, index, device="cpu"):
    """A torch.Generator on `device` seeded from (seed, epoch, global batch index): a batch gets the same mask
    whatever the world size and across resumes."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint32)
    generator = torch.Generator(device=device)
    generator.manual_seed((int(state[0]) << 31) ^ int(state[1]))
    return generator


# ------------------------------------------------------------------------------------------------------------------ CLI

def one_line(e):
    """An exception as one line for a command-line error (its message, or its type when it has none)."""
    text = " ".join(str(e).split()) or type(e).__name__
    plain = isinstance(e, (ValueError, FileNotFoundError, FileExistsError))
    return text if plain else f"{type(e).__name__}: {text}"


def main(argv=None):
    p = argparse.ArgumentParser(description="Tokenize a corpus into token shards for distillation (see data.py).")
    p.add_argument("inputs", nargs="*", help="files, folders, globs (none: Python's own documentation)")
    p.add_argument("--out", default="data/shards",
                   help="output folder (default: data/shards, train.py's default --data)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--vocab", help="vocab.txt or tokenizer.json (e.g. the teacher's); default: train one")
    g.add_argument("--vocab-size", type=int, default=8192, help="size of the WordPiece vocabulary to train")
    p.add_argument("--valid-fraction", type=float, default=0.005)
    p.add_argument("--hf-dataset", action="append", default=[], help="name[:config] of a HF dataset, or a "
                   "save_to_disk folder (repeatable)")
    p.add_argument("--pack-rows", default="auto", choices=["auto", "on", "off"], help="join consecutive "
                   "rows of a HF dataset into documents (auto: when rows are sentences, as BookCorpus's)")
    p.add_argument("--pack-chars", type=int, default=PACK_CHARS, help="packed document size in characters")
    p.add_argument("--shard-tokens", type=int, default=1 << 27)
    p.add_argument("--batch-docs", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an out folder made from other inputs")
    a = p.parse_args(argv)
    try:
        meta = prepare(a.inputs, a.out, vocab=a.vocab, vocab_size=a.vocab_size,
                       valid_fraction=a.valid_fraction, shard_tokens=a.shard_tokens, batch_docs=a.batch_docs,
                       seed=a.seed, hf_datasets=a.hf_dataset, pack_rows=a.pack_rows, pack_chars=a.pack_chars,
                       overwrite=a.overwrite)
    except (OSError, ValueError, ImportError, RuntimeError) as e:  # one line, not a traceback
        raise SystemExit(f"data.py: error: {one_line(e)}") from None
    print(json.dumps({k: meta[k] for k in ("vocab_size", "dtype", "vocab_hash")} |
                     {s: {k: v for k, v in meta["splits"][s].items() if k != "shards"} for s in meta["splits"]}))


if __name__ == "__main__":
    main()
