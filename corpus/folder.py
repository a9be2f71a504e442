"""
prepare(): a corpus -> a folder of token shards data.py reads, built in '<out>.tmp' and renamed when complete,
under a lock; the same inputs and settings again -> nothing to do; never replacing what it did not make.
"""
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from corpus.shards import PARTIAL, build, log, writing
from corpus.sources import PACK_CHARS, resolve_inputs
from data import FORMAT, FORMAT_VERSION
from machinery import files
from machinery.config import check_value
from machinery.files import WriteFailed, disk_error, fsync_dir, write_atomic
from machinery.tokenizer import SPECIAL_TOKENS, load_tokenizer, vocab_hash


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
    with _prepare_lock(out_dir):  # a second preparation of the same --out waits for none: it is refused
        _recover_old(old, out_dir)  # first: a folder set aside by an interrupted --overwrite goes back
        _remove_stale(tmp)  # left behind by an interrupted run (no living preparation holds the lock)
        existing = _own_meta(out_dir)
        if existing is not None and (out_dir / PARTIAL).is_file():  # killed right after its rename
            (out_dir / PARTIAL).unlink()
        if existing is not None and existing.get("inputs_hash") == inputs_hash:
            log(f"{out_dir} is up to date (same inputs and settings): nothing to do")
            return existing
        _check_replaceable(out_dir, existing, overwrite)
        return _write(out_dir, tmp, lambda t: {**build(t, sources, tokenizer, vocab, vocab_size, valid_fraction,
                                                       shard_tokens, batch_docs, seed),
                                               "inputs_hash": inputs_hash, "settings": settings})


def _write(out_dir, tmp, make_meta) -> dict:
    """tmp filled by make_meta(tmp) -> its meta dict, then renamed to out_dir: marked ours first (PARTIAL), its
    meta.json written last, and an old out_dir (--overwrite) removed only once the new one is complete."""
    meta = {}

    def fill(tmp):
        tmp.mkdir(parents=True)
        # marks the folder as ours until it has its name: a kill at any moment before leaves a
        # recognisable <out>.tmp (removed by the next run), never one that could be a user's
        with writing(tmp / PARTIAL):
            (tmp / PARTIAL).write_text(FORMAT + "\n")
        meta.update(make_meta(tmp))
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
    marker prepare writes into it first, and (the caller holds it) the lock no living preparation holds. A
    folder of that name without the marker is never deleted."""
    if not folder.exists():
        return
    if not (folder / PARTIAL).is_file():
        raise FileExistsError(f"{folder} is in the way and was not left by an interrupted preparation (no "
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
    killed run is no obstacle, and a second preparation of the same --out is refused in one line."""
    path = out_dir.with_name(f".{out_dir.name}.lock")
    return files.exclusive_lock(path, lambda holder: FileExistsError(
        f"{path}: another preparation (python -m corpus) is writing {out_dir} ({holder}); wait for it to finish or choose "
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
