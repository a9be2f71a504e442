"""
The corpus as documents, read lazily one at a time: blank-line separated blocks of text files (for a book that is a
paragraph), rows of a Hugging Face dataset (sentence rows packed into documents), or, with no input, Python's own
documentation, so that everything runs offline.
"""
import contextlib
import glob
import importlib
import inspect
import io
import itertools
import os
import pkgutil
import sys
import sysconfig
import warnings
from pathlib import Path

from machinery.files import one_line

# what a folder contributes: *.txt and extension-less files, hidden paths excluded
TEXT_SUFFIXES = {".txt", ""}
MAX_LINE_CHARS = MAX_DOC_CHARS = 1 << 20  # bounds memory on pathological files: longer pieces are cut there
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


def source_documents(source):
    """The documents of one source as recorded in meta.json: a file, a Hugging Face dataset, or Python's docs."""
    if source["kind"] == "file":
        return file_documents(source["path"])
    if source["kind"] == "hf_dataset":
        return hf_documents(source["name"], source.get("pack", "auto"), source.get("pack_chars", PACK_CHARS))
    return default_corpus_documents()
