"""What survives what, round 2: the ways a run could still lose data, and faults that gave a traceback instead of
one line naming the file, key or value. Each test sets up exactly the state the fault leaves (or causes the fault
for real: a full or read-only file system where this machine lets the test mount one) and checks that nothing
already written is lost."""
import json
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from machinery import files
from corpus import PARTIAL, prepare
from corpus.__main__ import main as corpus_main
import train as T
from conftest import lock_held_by_another_process
from train_fixtures import ROOT, args, ckpt_names, damage, final_student, setup  # noqa: F401 (setup: a fixture)
from machinery.hf import save_pretrained


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def export(folder):
    """An exported folder: its files' bytes, the weights as tensors (safetensors' header order may vary)."""
    from safetensors.torch import load_file
    files = tree(folder)
    weights = load_file(Path(folder) / "model.safetensors")
    return {**files, "model.safetensors": {k: v.numpy().tobytes() for k, v in weights.items()}}


# ------------------------------------------------------------------------------------------------ the four losses

def test_kill_during_the_final_export_is_redone_on_resume(setup, tmp_path, capsys):
    """Before: a kill -9 during the final export left `.student.XXXXXXXX` and no student/; the resume said
    "resumed at step 4", exited 0 and never wrote student/. Same with student/ deleted by hand."""
    root, _ = setup
    out = tmp_path / "run"
    a = args(root, out, max_steps=4)
    T.train(T.parse_args(a))
    want = export(out / "student")
    (out / "student").rename(out / ".student.k9abc123")  # what the kill left: the temporary folder, no export
    capsys.readouterr()
    T.train(T.parse_args(a + ["--resume=true"]))
    said = capsys.readouterr().out
    assert "removing" in said and ".student.k9abc123" in said and "exporting it again" in said
    assert export(out / "student") == want and not (out / ".student.k9abc123").exists()
    import shutil
    shutil.rmtree(out / "student")  # deleted by the user: the same
    T.train(T.parse_args(a + ["--resume=true"]))
    assert export(out / "student") == want


@pytest.mark.slow
def test_a_refused_start_stays_refused_until_restart(setup, tmp_path, capsys):
    """Before: every checkpoint damaged, the first run refused as promised; the same command again printed
    "starting fresh" and cut metrics.jsonl to the new run's rows."""
    root, _ = setup
    out = tmp_path / "run"
    a = args(root, out, max_steps=6, save_every=2, keep_last=5)
    T.train(T.parse_args(a))
    metrics = (out / "metrics.jsonl").read_bytes()
    for ckpt in out.glob("ckpt-*.pt"):
        damage(ckpt, "truncate")
    for _ in range(2):
        with pytest.raises(SystemExit, match="no checkpoint|holds an earlier run's outputs"):
            T.train(T.parse_args(a + ["--resume=true"]))
        assert (out / "metrics.jsonl").read_bytes() == metrics
    with pytest.raises(SystemExit, match="--restart=true"):
        T.train(T.parse_args(a))
    assert (out / "metrics.jsonl").read_bytes() == metrics
    T.train(T.parse_args(a + ["--restart=true"]))  # moves the old run aside, deletes nothing
    aside = out / "earlier-1"
    assert (aside / "metrics.jsonl").read_bytes() == metrics and (aside / "student").is_dir()
    assert sorted(p.name for p in aside.glob("*.bad")) == [f"ckpt-000000{i}.pt.bad" for i in (2, 4, 6)]
    assert [r["step"] for r in rows(out / "metrics.jsonl") if "total" in r] == list(range(1, 7))
    with pytest.raises(SystemExit, match="choose one"):
        T.train(T.parse_args(a + ["--restart=true", "--resume=true"]))


@pytest.mark.slow
def test_outputs_without_checkpoints_are_never_written_over(setup, tmp_path):
    """Before: an out_dir holding student/ and metrics.jsonl but no checkpoints (cleaned up by the user): a new
    run replaced student/ and truncated the metrics (the refusal looked at ckpt-*.pt only)."""
    root, _ = setup
    out = tmp_path / "run"
    a = args(root, out, max_steps=4)
    T.train(T.parse_args(a))
    for p in [*out.glob("ckpt-*")]:
        p.unlink()
    before = tree(out)
    for extra in ([], ["--resume=true"]):
        with pytest.raises(SystemExit, match=r"holds an earlier run's outputs \(losses.png, metrics.jsonl, "
                                             r"student\) and no checkpoint"):
            T.train(T.parse_args(a + extra))
        assert tree(out) == before


def test_prepare_never_deletes_a_users_old_folder_and_two_prepares_exclude_each_other(tmp_path):
    """Before: prepare.py deleted a user's OUT.old, taking it for its own leftover; a second prepare.py on one
    --out deleted the first one's OUT.tmp, and the first died."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Document {i} about the cat and the dog and the bird." for i in range(40)))
    out = tmp_path / "out"
    prepare([corpus], out, vocab_size=120)
    (out).rename(tmp_path / "out.old")  # the user keeps a copy of an earlier preparation
    kept = tree(tmp_path / "out.old")
    prepare([corpus], out, vocab_size=120)
    assert tree(tmp_path / "out.old") == kept
    # a first prepare is writing (holds the lock, its out.tmp half full): the second is refused, touching nothing
    (tmp_path / "out.tmp").mkdir()
    (tmp_path / "out.tmp" / PARTIAL).write_text("x")
    with lock_held_by_another_process("corpus.folder._prepare_lock", out) as pid:
        with pytest.raises(SystemExit) as e:
            corpus_main([str(corpus), "--out", str(out), "--vocab-size", "130", "--overwrite"])
        assert "another preparation (python -m corpus) is writing" in str(e.value) and f"pid {pid}" in str(e.value)
        assert (tmp_path / "out.tmp" / PARTIAL).is_file()
    # the holder is gone: its marked out.tmp is provably a leftover now, and goes
    prepare([corpus], out, vocab_size=130, overwrite=True)
    assert not (tmp_path / "out.tmp").exists() and tree(tmp_path / "out.old") == kept
    assert not (tmp_path / ".out.lock").exists()


def test_prepare_puts_back_a_folder_set_aside_by_an_interrupted_overwrite(tmp_path):
    """A kill between the two renames of an --overwrite leaves the previous folder as .out.old and no out:
    the next prepare puts it back rather than deleting it."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Document {i} about the cat and the dog and the bird." for i in range(40)))
    out = tmp_path / "out"
    meta = prepare([corpus], out, vocab_size=120)
    (out / "marker").write_text("the folder itself, not a new one")
    out.rename(tmp_path / ".out.old")
    assert prepare([corpus], out, vocab_size=120)["inputs_hash"] == meta["inputs_hash"]
    assert not (tmp_path / ".out.old").exists() and (out / "marker").is_file()  # put back, not rebuilt


# ------------------------------------------------------------------------------------------------ and the others

@pytest.mark.slow
def test_a_second_set_aside_of_the_same_step_keeps_the_first(setup, tmp_path):
    root, _ = setup
    out = tmp_path / "run"
    a = args(root, out, max_steps=4, save_every=2, keep_last=5)
    T.train(T.parse_args(a))
    first = None
    for n in range(2):
        T.train(T.parse_args(args(root, tmp_path / f"copy{n}", max_steps=4, save_every=2, keep_last=5)))
        src = tmp_path / f"copy{n}" / "ckpt-0000004.pt"
        for suffix in ("", ".sha256"):
            os.replace(Path(str(src) + suffix), Path(str(out / "ckpt-0000004.pt") + suffix))
        damage(out / "ckpt-0000004.pt", "overwrite")
        first = first or (out / "ckpt-0000004.pt").read_bytes()
        T.train(T.parse_args(a + ["--resume=true"]))  # falls back to step 2, runs to 4 again
    assert (out / "ckpt-0000004.pt.bad").read_bytes() == first and (out / "ckpt-0000004.pt.bad.2").is_file()
    assert (out / "ckpt-0000004.pt.bad.2.sha256").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("change", ["lr=0.001", "seed=3", "batch_size=16", "micro_batch=2", "data"])
def test_a_resume_that_changes_the_run_is_refused_naming_the_setting(setup, tmp_path, change):
    root, _ = setup
    out = tmp_path / "run"
    a = args(root, out, max_steps=6, save_every=3)
    T.train(T.parse_args(a))
    (out / "ckpt-0000006.pt").unlink()
    key = change.split("=")[0]
    if key == "data":  # the same vocabulary (size and hash), other documents
        import shutil
        other = tmp_path / "other-data"
        shutil.copytree(root / "data", other)
        meta = json.loads((other / "meta.json").read_text())
        name = next(n for n in meta["files"] if n.startswith("train_") and n.endswith(".bin"))
        raw = bytearray((other / name).read_bytes())
        raw[10:14] = raw[20:24]
        (other / name).write_bytes(bytes(raw))
        meta["files"][name] = files.sha256(other / name)
        (other / "meta.json").write_text(json.dumps(meta))
        change = f"data={other}"
    with pytest.raises(SystemExit, match=rf"--{key}=.*is refused .*--resume_changes={key}"):
        T.train(T.parse_args(a + ["--resume=true", f"--{change}"]))
    if key == "lr":  # accepted when named, and said
        T.train(T.parse_args(a + ["--resume=true", f"--{change}", "--resume_changes=lr"]))
        assert final_student(out)["step"] == 6
    # moved, same content: still the same data
    if key == "seed":
        import shutil
        shutil.copytree(root / "data", tmp_path / "moved")
        T.train(T.parse_args(a + ["--resume=true", f"--data={tmp_path / 'moved'}"]))


def test_every_commit_is_fsynced_file_and_folder(tmp_path, monkeypatch):
    """write_atomic fsyncs the new data before the rename and the folder's entry after it."""
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)
    monkeypatch.setattr(os, "fsync", spy)
    files.write_text("hello", tmp_path / "a.txt")
    assert any(Path(p).name.startswith(".a.txt.") for p in synced) and str(tmp_path) in synced
    assert synced.index(str(tmp_path)) == len(synced) - 1  # the folder last, after the rename
    synced.clear()

    def fill(folder):
        (folder / "x.bin").write_bytes(b"1")
    files.write_atomic(tmp_path / "model", fill, folder=True)
    assert any(p.endswith("x.bin") for p in synced) and synced[-1] == str(tmp_path)


# ------------------------------------------------------------------------------------- a file system that fails

def mount_tmpfs(path, options):
    """A small tmpfs at path (root only, where the sandbox allows mounts): a real file system that fills up or
    is read-only. Returns False where it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def unmount(path):
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def limit_file_size(nbytes):
    """For a child process: writes past nbytes fail with EFBIG (a real error from the kernel, not a mock)."""
    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return set_limit


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_what_was_written(setup, tmp_path):
    """Before: the real torch.save raised RuntimeError on a full disk (the earlier test mocked an OSError), about
    40 lines of traceback. A 160 KB tmpfs holds the metrics but not a checkpoint of the tiny student (~330 KB);
    where no tmpfs can be mounted, a file-size limit makes the same write fail for real."""
    root, _ = setup
    disk = tmp_path / "disk"
    mounted = mount_tmpfs(disk, "size=160k")
    try:
        out = disk / "run"
        done = subprocess.run([sys.executable, "train.py", *args(root, out, max_steps=2)], cwd=ROOT,
                              capture_output=True, text=True, timeout=300,
                              preexec_fn=None if mounted else limit_file_size(160_000))
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1, done.stderr[-2000:]
        assert "ckpt-0000002.pt: checkpoint not written" in lines[0] and "bytes free" in lines[0]
        assert [r["step"] for r in rows(out / "metrics.jsonl") if "total" in r] == [1, 2]
        assert ckpt_names(out) == []  # no temporary left to keep the disk full
    finally:
        if mounted:
            unmount(disk)


def test_an_out_dir_that_cannot_be_written_is_one_line(setup, tmp_path):
    root, _ = setup
    (tmp_path / "a-file").write_text("mine")
    ro = tmp_path / "ro"
    targets = {tmp_path / "a-file": "is a file, not a folder", tmp_path / "a-file" / "run": "Not a directory"}
    if mount_tmpfs(ro, "size=1m,ro"):
        targets[ro / "run"] = "Read-only file system"
    elif os.geteuid() != 0:
        ro.mkdir()
        ro.chmod(0o555)
        targets[ro / "run"] = "Permission denied"
    assert len(targets) == 3, "neither a read-only tmpfs nor a read-only folder could be made here"
    try:
        for out, why in targets.items():
            done = subprocess.run([sys.executable, "train.py", *args(root, out, max_steps=1)], cwd=ROOT,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 1 and done.stderr.strip().count("\n") == 0, done.stderr[-1500:]
            assert why in done.stderr and str(out) in done.stderr
        assert (tmp_path / "a-file").read_text() == "mine"
    finally:
        unmount(ro)


# ------------------------------------------------------------------------------- bad files, one line naming them

def one_line_error(argv, match):
    """A command line (run in this process, through its main) that must stop with SystemExit and one line that
    matches: what the command prints on stderr before exiting with 1. Any other exception is a traceback."""
    import importlib
    script, *rest = argv
    main = importlib.import_module(script.removesuffix(".py")).main
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in rest])
    line = str(e.value.code)
    assert e.value.code not in (0, None) and "\n" not in line.strip(), line
    assert __import__("re").search(match, line), line
    return line


@pytest.fixture(scope="module")
def bad_inputs(setup, tmp_path_factory):
    """A model folder and GLUE-layout files that work, for the bad variants made from them."""
    from model import Bert, BertConfig
    root, data = setup
    base = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    model = Bert(BertConfig(vocab_size=data.vocab_size, hidden_size=32, num_layers=2, num_heads=2,
                            intermediate_size=64, max_position=64))
    save_pretrained(model, base / "model", tokenizer_files=[root / "data" / "vocab.txt"])
    glue = base / "glue" / "SST-2"
    glue.mkdir(parents=True)
    lines = [f"the cat sat on mat {i}\t{i % 2}\n" for i in range(24)]
    (glue / "train.tsv").write_text("sentence\tlabel\n" + "".join(lines))
    (glue / "dev.tsv").write_text("sentence\tlabel\n" + "".join(lines[:8]))
    return base


def model_variant(base, name, edit):
    import shutil
    folder = base / name
    if not folder.exists():
        shutil.copytree(base / "model", folder)
        edit(folder)
        from machinery.hf import write_manifest
        write_manifest(folder)  # an edit made on purpose, not damage: the checksums agree with it
    return folder


CONFIG_EDITS = {
    "invalid-json": (lambda c: '{"model_type": "bert",\n', r"config.json: not valid JSON"),
    "list": (lambda c: "[1, 2]", r"config.json: expected a JSON object of settings, found a list"),
    "zero-heads": (lambda c: json.dumps({**c, "num_attention_heads": 0}), r"num_attention_heads=0: expected an "
                                                                         r"integer >= 1"),
    "string-size": (lambda c: json.dumps({**c, "hidden_size": "64"}), r"hidden_size='64': expected an integer"),
}


@pytest.mark.parametrize("edit", CONFIG_EDITS)
def test_a_bad_config_json_is_one_line_naming_the_file_and_key(setup, bad_inputs, edit):
    root, _ = setup
    make, match = CONFIG_EDITS[edit]

    def write(folder):
        c = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(make(c))
    folder = model_variant(bad_inputs, f"cfg-{edit}", write)
    one_line_error(["finetune", "--task=SST-2", f"--data={bad_inputs / 'glue'}", f"--model={folder}",
                    "--dtype=float32"], rf"{folder / 'config.json'}: .*" if edit in ("invalid-json", "list")
                   else rf"{folder / 'config.json'}: {match}")
    one_line_error(["train.py", *args(root, bad_inputs / f"out-{edit}", teacher=folder)], match)


def test_a_damaged_tokenizer_json_is_one_line_naming_the_file(setup, bad_inputs, tmp_path):
    root, _ = setup
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"version": "1.0", "trunc')
    one_line_error(["corpus.__main__", root / "corpus.txt" if (root / "corpus.txt").exists() else bad_inputs,
                    "--vocab", bad, "--out", tmp_path / "out"], rf"{bad}: not a readable tokenizer.json")
    folder = model_variant(bad_inputs, "bad-tokenizer",
                           lambda f: (f / "tokenizer.json").write_text('{"version": "1.0", "trunc'))
    one_line_error(["finetune", "--task=SST-2", f"--data={bad_inputs / 'glue'}", f"--model={folder}",
                    "--dtype=float32"], rf"{folder / 'tokenizer.json'}: not a readable tokenizer.json")


GLUE_FAULTS = {  # what the file holds -> the one line expected
    "train without labels": ("train", "sentence\nthe cat\nthe dog\n", r"train.tsv: no column 'label'"),
    "dev without labels": ("dev", "sentence\nthe cat\nthe dog\n", r"dev.tsv: no column 'label'"),
    "header-only dev": ("dev", "sentence\tlabel\n", r"dev.tsv: no examples"),
}


@pytest.mark.parametrize("fault", GLUE_FAULTS)
def test_bad_task_files_are_one_line(bad_inputs, tmp_path, fault):
    import shutil
    split, text, match = GLUE_FAULTS[fault]
    shutil.copytree(bad_inputs / "glue", tmp_path / "glue")
    (tmp_path / "glue" / "SST-2" / f"{split}.tsv").write_text(text)
    one_line_error(["finetune", "--task=SST-2", f"--data={tmp_path / 'glue'}",
                    f"--model={bad_inputs / 'model'}", "--dtype=float32"], match)


@pytest.mark.parametrize("limit", ["--eval_limit=0", "--train_limit=0", "--train_limit=-5"])
def test_limits_below_one_are_refused(bad_inputs, limit):
    """Before: --train_limit=-5 silently kept 59 of 64 rows, --train_limit=0 all of them, --eval_limit=0 gave
    a 23-line traceback."""
    one_line_error(["finetune", "--task=SST-2", f"--data={bad_inputs / 'glue'}",
                    f"--model={bad_inputs / 'model'}", "--dtype=float32", limit], rf"{limit}: expected an integer >= 1")


@pytest.mark.parametrize("size", [250, 100])
def test_a_model_or_teacher_of_another_vocabulary_is_refused(setup, bad_inputs, tmp_path, size):
    """Before: a --teacher of a larger vocabulary distilled silently, a smaller one raised IndexError."""
    from model import Bert, BertConfig
    root, _ = setup
    other = Bert(BertConfig(vocab_size=size, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                            max_position=64))
    save_pretrained(other, tmp_path / "other")
    vocab = root / "data" / "vocab.txt"
    one_line_error(["finetune", "--task=SST-2", f"--data={bad_inputs / 'glue'}", f"--model={tmp_path / 'other'}",
                    f"--vocab={vocab}", "--dtype=float32"], rf"has a vocabulary of {size} tokens")
    import finetune as ft
    from machinery.tokenizer import load_tokenizer
    teacher = ft.Classifier(other, 2, "distilbert")
    with pytest.raises(ValueError, match=rf"--teacher=T has a vocabulary of {size} tokens"):
        ft.check_vocabulary(teacher.encoder, load_tokenizer(vocab), "--teacher=T", vocab)


@pytest.mark.parametrize("edit", ["mask", "vocab_size"])
def test_edited_meta_json_values_are_checked_against_the_data(setup, tmp_path, edit):
    """Before: "mask": 4 -> 5 or another vocab_size in meta.json (checksums cover the files, not the values)
    trained silently."""
    import shutil
    from data import TokenData
    root, _ = setup
    folder = tmp_path / "data"
    shutil.copytree(root / "data", folder)
    meta = json.loads((folder / "meta.json").read_text())
    if edit == "mask":
        meta["special_ids"]["mask"] += 1
    else:
        meta["vocab_size"] += 7
    (folder / "meta.json").write_text(json.dumps(meta))
    key = {"mask": "special_ids.mask", "vocab_size": "vocab_size"}[edit]
    with pytest.raises(ValueError, match=rf"meta.json: {key} is .* but vocab.txt says"):
        TokenData(folder)
    one_line_error(["train.py", *args(root, tmp_path / "out", data=folder)], rf"{key} is ")


def test_eval_mlm_refuses_too_long_sequences_and_another_vocabulary(setup, bad_inputs, tmp_path):
    root, _ = setup
    model = bad_inputs / "model"
    one_line_error(["eval.py", "mlm", "--model", model, "--data", root / "data", "--max-len", "100"],
                   r"--max_len=100 is more than the 64 positions")
    corpus = tmp_path / "other.txt"  # a vocabulary of the same size, trained on other text
    corpus.write_text("\n\n".join(f"zebra quantum {i} xylophone jungle marmalade vortex" * 3 for i in range(200)))
    prepare([corpus], tmp_path / "other", vocab_size=200)
    from data import TokenData
    assert TokenData(tmp_path / "other").vocab_size == TokenData(root / "data").vocab_size
    one_line_error(["eval.py", "mlm", "--model", model, "--data", tmp_path / "other", "--max-len", "64"],
                   r"was not trained with the vocabulary")


# ================================================================================================== round 3
# Issue 41: six ways to lose data, nine silent wrong results, sixteen tracebacks. Each test names what main did.

def said(capsys):
    return capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- data lost

def test_keep_last_below_one_is_refused_and_deletes_nothing(setup, tmp_path):
    """Before: --keep_last=-1 then SIGTERM said "checkpoint written" and left none; --resume=true --keep_last=-3
    deleted all three checkpoints of a run (sorted(...)[:-keep_last] unchecked)."""
    from machinery.checkpoint import save_checkpoint
    root, _ = setup
    out = tmp_path / "run"
    a = args(root, out, max_steps=6, save_every=2, keep_last=3)
    T.train(T.parse_args(a))
    kept = tree(out)
    assert ckpt_names(out)[::2] == ["ckpt-0000002.pt", "ckpt-0000004.pt", "ckpt-0000006.pt"]
    for keep in ("-3", "-1", "0"):
        one_line_error(["train.py", *a, "--resume=true", f"--keep_last={keep}"],
                       rf"--keep_last={keep}: expected an integer >= 1")
    assert tree(out) == kept
    with pytest.raises(ValueError, match="keep_last=0"):
        save_checkpoint(out / "ckpt-0000007.pt", {"step": 7}, keep_last=0)
    assert tree(out) == kept


def test_only_files_named_ckpt_nnnnnnn_pt_are_checkpoints(setup, tmp_path, capsys):
    """Before: a user's ckpt-best.pt (a copy of step 2's) sorted after ckpt-0000004.pt as a string: the run
    resumed at step 2 instead of 4 and dropped the metrics rows 3-4; a user's ckpt-0000001-mine.pt was deleted
    by the pruning."""
    root, _ = setup
    out = tmp_path / "run"
    a = args(root, out, max_steps=6, save_every=2, keep_last=5)
    T.train(T.parse_args(a))
    for suffix in ("", ".sha256"):
        (out / f"ckpt-0000006.pt{suffix}").unlink()  # as if stopped after step 4's checkpoint
        for mine in ("ckpt-best.pt", "ckpt-0000001-mine.pt"):
            (out / f"{mine}{suffix}").write_bytes((out / f"ckpt-0000002.pt{suffix}").read_bytes())
    theirs = {p: p.read_bytes() for p in out.glob("ckpt-*[a-z].pt*")}
    said(capsys)
    T.train(T.parse_args(a + ["--resume=true", "--keep_last=1"]))
    out_text = said(capsys)
    assert f"resumed from {out / 'ckpt-0000004.pt'} at step 4" in out_text
    assert "dropping 3 row(s) of steps after 4" in out_text  # steps 5, 6 and 6's evaluation, written after it
    assert {p: p.read_bytes() for p in theirs} == theirs  # never the newest, never pruned, never set aside
    assert [r["step"] for r in rows(out / "metrics.jsonl") if "total" in r] == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in out.glob("ckpt-0*.pt") if "mine" not in p.name) == ["ckpt-0000006.pt"]
    T.train(T.parse_args(a + ["--restart=true", "--max_steps=1"]))  # moves our outputs aside, not the user's
    assert {p: p.read_bytes() for p in theirs} == theirs and (out / "earlier-1" / "ckpt-0000006.pt").is_file()


def test_extending_a_run_keeps_the_users_files_in_the_export(setup, tmp_path, capsys):
    """Before: --resume=true --max_steps=6 after 4 replaced student/ whole, deleting the model card the user had
    put there; a kill or a full disk during that export left the step-4 export, which the next resume took
    for done."""
    root, _ = setup
    out = tmp_path / "run"
    a = args(root, out, max_steps=4, save_every=2)
    T.train(T.parse_args(a))
    (out / "student" / "README.md").write_text("my model card")
    step4 = tree(out / "student")
    said(capsys)
    T.train(T.parse_args(args(root, out, max_steps=6, save_every=2) + ["--resume=true",
                                                                         "--resume_changes=max_steps"]))
    assert "held files train.py did not write there (README.md)" in said(capsys)
    assert tree(out / "earlier-1" / "student") == step4  # moved whole, nothing deleted
    assert not (out / "student" / "README.md").exists() and final_student(out)["step"] == 6
    step6 = export(out / "student")
    # the state a kill during the step-6 export leaves: the step-4 export still in place
    import shutil
    shutil.rmtree(out / "student")
    shutil.copytree(out / "earlier-1" / "student", out / "student")
    (out / "student" / "README.md").unlink()
    T.train(T.parse_args(args(root, out, max_steps=6, save_every=2) + ["--resume=true"]))
    assert "holds another model: exporting it again" in said(capsys)
    assert export(out / "student") == step6


def test_a_lock_file_that_is_a_link_is_never_written_through(setup, tmp_path):
    """Before: a train.lock (or prepare's .OUT.lock) that is a symbolic link to a user's file: the run wrote
    "pid N on host" into the user's file."""
    root, _ = setup
    mine = tmp_path / "mine.txt"
    mine.write_text("my notes")
    out = tmp_path / "run"
    out.mkdir()
    (out / "train.lock").symlink_to(mine)
    one_line_error(["train.py", *args(root, out, max_steps=1)], r"train.lock is a symbolic link .*never written")
    os.link(mine, out / "hard.lock")  # a hard link: the same file under another name
    from machinery.files import exclusive_lock
    with pytest.raises(FileExistsError, match="hard link"):
        with exclusive_lock(out / "hard.lock", RuntimeError):
            pass
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Document {i} about the cat and the dog." for i in range(40)))
    (tmp_path / ".prep.lock").symlink_to(mine)
    one_line_error(["corpus.__main__", corpus, "--out", tmp_path / "prep", "--vocab_size=120"],
                   r"\.prep\.lock is a symbolic link")
    assert mine.read_text() == "my notes" and not list(out.glob("ckpt-*")) and not (tmp_path / "prep").exists()


# -------------------------------------------------------------------------------------- silent wrong results

def other_teacher(root, folder):
    """A copy of the test teacher with other weights (same shape, same vocabulary files)."""
    from machinery.hf import load_pretrained
    teacher = load_pretrained(root / "teacher")
    with torch.no_grad():
        teacher.layers[0].fc2.weight.mul_(1.5)
    save_pretrained(teacher, folder, tokenizer_files=[root / "data" / "vocab.txt"])
    return folder


def stopped_at_2(root, out, **kw):
    """A distillation run's checkpoints as a stop after step 2 leaves them (steps 2 of 4 written)."""
    a = args(root, out, max_steps=4, save_every=2, **kw)
    T.train(T.parse_args(a))
    for suffix in ("", ".sha256"):
        (out / f"ckpt-0000004.pt{suffix}").unlink()
    import shutil
    shutil.rmtree(out / "student")
    return a


@pytest.fixture(scope="module")
def stopped(setup, tmp_path_factory):
    """A distillation run stopped after step 2 (its command line, its out_dir): a test that resumes it copies
    it (copy_of)."""
    root, _ = setup
    out = tmp_path_factory.mktemp("stopped") / "run"
    return stopped_at_2(root, out), out


def copy_of(stopped, tmp_path):
    """The stopped run copied into tmp_path/run, and its command line there."""
    import shutil
    a, out = stopped
    shutil.copytree(out, tmp_path / "run")
    return [x.replace(str(out), str(tmp_path / "run")) for x in a], tmp_path / "run"


def test_resuming_with_another_teacher_is_refused_by_content(setup, stopped, tmp_path):
    """Before: 2 steps distilled from teacher A, then --resume=true --teacher=B: accepted without a word."""
    import shutil
    root, _ = setup
    a, out = copy_of(stopped, tmp_path)
    b = other_teacher(root, tmp_path / "teacher-b")
    one_line_error(["train.py", *a, "--resume=true", f"--teacher={b}"],
                   r"was written by a --teacher=.*teacher \(weights sha256 \w+\) run; resuming it with "
                   r"--teacher=.*teacher-b \(other weights.*--resume_changes=teacher")
    shutil.copytree(root / "teacher", tmp_path / "moved")  # the same weights elsewhere: the same teacher
    T.train(T.parse_args(a + ["--resume=true", f"--teacher={tmp_path / 'moved'}"]))
    assert final_student(out)["step"] == 4


@pytest.mark.parametrize("change", ["warmup=0.5", "max_steps=6", "grad_clip=1.0", "alpha_ce=4.0",
                                    "temperature=3.0", "weight_decay=0.01", "dtype=bfloat16"])
def test_resuming_with_another_schedule_loss_or_precision_is_refused(stopped, change):
    """Before: --warmup, --max_steps, --grad_clip, the loss weights and --dtype were not compared on resume."""
    a, out = stopped
    before = tree(out)
    key = change.split("=")[0]
    one_line_error(["train.py", *a, "--resume=true", f"--{change}"],
                   rf"was written by a --{key}=\S+ run; resuming it with --{key}=.* is refused .*"
                   rf"--resume_changes={key}")
    assert tree(out) == before


def test_dtype_auto_is_compared_as_resolved(setup, tmp_path, monkeypatch, capsys):
    """Before: --dtype=auto decides from a timing probe, so a resume on another machine could switch
    precision unseen; a bf16 checkpoint resumed in fp16 (when accepted) crashed in GradScaler.load_state_dict."""
    root, _ = setup
    out = tmp_path / "run"
    from machinery import device
    monkeypatch.setattr(device, "_CHOSEN", {})  # the probe's answer is kept per process: another machine's
    monkeypatch.setattr(device, "auto_dtype", lambda device: (torch.bfloat16, "auto: this machine"))
    a = stopped_at_2(root, out, dtype="auto")
    monkeypatch.setattr(device, "_CHOSEN", {})
    monkeypatch.setattr(device, "auto_dtype", lambda device: (torch.float32, "auto: another machine"))
    one_line_error(["train.py", *a, "--resume=true"],
                   r"written by a --dtype=bfloat16 run; resuming it with --dtype=float32 \(what --dtype=auto "
                   r"gives here\) is refused \(use --dtype=bfloat16")
    assert final_student(out)["dtype"] == "bfloat16"  # as resolved, in the checkpoint
    said(capsys)
    T.train(T.parse_args(a + ["--resume=true", "--dtype=float16", "--resume_changes=dtype"]))
    text = said(capsys)
    assert "accepted by --resume_changes" in text and "the loss scale starts afresh" in text
    assert final_student(out)["step"] == 4 and final_student(out)["scaler"]["scale"] > 0


def test_every_setting_is_either_compared_on_resume_or_said_not_to_change_the_run():
    """A new TrainConfig setting must be classified: compared on resume (and in the quickstart's stage
    identity) or listed as not changing what a run computes."""
    from machinery.checkpoint import NOT_COMPUTED, READ_BY, RESUME_SAME
    import dataclasses
    fields = {f.name for f in dataclasses.fields(T.TrainConfig)}
    assert fields == set(READ_BY) | set(NOT_COMPUTED) and not set(READ_BY) & set(NOT_COMPUTED)
    assert {"teacher", "dtype", "warmup", "max_steps", "grad_clip", "alpha_ce", "data"} <= set(RESUME_SAME)


def test_the_vocabulary_hash_covers_the_normaliser(setup, tmp_path):
    """Before: a tokenizer.json with "lowercase": false hashed as the vocab.txt of the same tokens, and a
    teacher carrying it distilled on lowercased shards silently (6.6% of the tokens became [UNK])."""
    import shutil
    from tokenizers import normalizers
    from machinery.tokenizer import load_tokenizer, vocab_hash
    root, _ = setup
    tok = load_tokenizer(root / "data" / "vocab.txt")
    cased = load_tokenizer(root / "data" / "vocab.txt")
    cased.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                  strip_accents=None, lowercase=False)
    assert tok.encode("The Cat").ids != cased.encode("The Cat").ids
    assert vocab_hash(tok) != vocab_hash(cased)
    teacher = tmp_path / "teacher-cased"
    shutil.copytree(root / "teacher", teacher)
    (teacher / "vocab.txt").unlink()
    cased.save(str(teacher / "tokenizer.json"))
    from machinery.hf import write_manifest
    write_manifest(teacher)
    one_line_error(["train.py", *args(root, tmp_path / "run", teacher=teacher)], r"vocabulary mismatch")


def test_finetune_refuses_another_vocabulary_of_the_same_size(setup, bad_inputs, tmp_path):
    """Before: finetune --vocab=V, another vocabulary of the model's size, trained without a warning (only the
    sizes were compared)."""
    root, _ = setup
    vocab = (root / "data" / "vocab.txt").read_text().splitlines()
    vocab[10], vocab[11] = vocab[11], vocab[10]  # the same tokens, two ids swapped
    (tmp_path / "vocab.txt").write_text("".join(t + "\n" for t in vocab))
    one_line_error(["finetune", "--task=SST-2", f"--data={bad_inputs / 'glue'}", f"--model={bad_inputs / 'model'}",
                    f"--vocab={tmp_path / 'vocab.txt'}", "--dtype=float32", "--max_steps=1", "--train_limit=4",
                    "--eval_limit=2"], r"was trained with .*vocab.txt, and .* is another vocabulary of the same size")


def test_unreadable_metrics_rows_are_set_aside_not_dropped(stopped, tmp_path, capsys):
    """Before: a row that is not JSON was dropped silently on resume, and a byte that is not UTF-8 stopped every
    resume with a UnicodeDecodeError traceback."""
    a, out = copy_of(stopped, tmp_path)
    lines = (out / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    edited = lines[:1] + [b'{"step": 1, "note": "caf\xe9 latin-1"}\n', b"my note, not JSON\n"] + lines[1:]
    (out / "metrics.jsonl").write_bytes(b"".join(edited))
    said(capsys)
    T.train(T.parse_args(a + ["--resume=true"]))
    text = said(capsys)
    assert "2 row(s) could not be read (line 2: not UTF-8 (byte 0xe9 at 24), ...): moved to metrics.jsonl.bad" \
        in text
    assert (out / "metrics.jsonl.bad").read_bytes() == edited[1] + edited[2]
    assert [r["step"] for r in rows(out / "metrics.jsonl") if "total" in r] == [1, 2, 3, 4]


# ------------------------------------------------------------------------------ tracebacks instead of one line

BAD_TRAIN_SETTINGS = {  # the setting -> the one line expected (before: the traceback or the false message)
    "--save_every=0": r"--save_every=0: expected an integer >= 1",  # ZeroDivisionError, after a step
    "--log_every=0": r"--log_every=0: expected an integer >= 1",  # ZeroDivisionError
    "--lr=nan": r"--lr=nan: expected a finite number > 0",  # ValueError: Invalid learning rate
    "--lr=-1": r"--lr=-1.0: expected a finite number > 0",
    "--max_len=2": r"--max_len=2: expected an integer >= 12",  # ValueError from TokenData.sequences
    "--hidden=65": r"--hidden=65 is not a multiple of --heads=2",  # ValueError from BertConfig
    "--hidden=-64": r"--hidden=-64: expected an integer >= 1",
    "--heads=0": r"--heads=0: expected an integer >= 1",
    "--seed=-1": r"--seed=-1: expected an integer in \[0, 2\*\*63\)",  # numpy's ValueError
    "--eval_batches=0": r"--eval_batches=0: expected an integer >= 1",  # "mlm_eval: no masked tokens"
    "--max_steps=-5": r"--max_steps=-5: expected an integer >= 0",  # "fewer than the 1 that make one step"
    "--warmup=1.5": r"--warmup=1.5: expected a finite number in \[0, 1\)",
    "--dtype=half": r"--dtype='half': expected one of auto, float32, bfloat16, float16",
    "--student_layers=0,9": r"--student_layers=0,9 with --teacher=.*out of range for a 4-layer teacher",
    "--student_layers=2,1": r"--student_layers='2,1': expected teacher layer numbers, increasing",
    "--resume_changes=lr,colour": r"--resume_changes=lr,colour: colour not among mode, init",
}


@pytest.mark.parametrize("setting", BAD_TRAIN_SETTINGS)
def test_bad_train_settings_are_one_line(setup, tmp_path, setting):
    root, _ = setup
    scratch = dict(mode="mlm", init="scratch") if "student_layers" not in setting else {}
    one_line_error(["train.py", *args(root, tmp_path / "run", **scratch), setting], BAD_TRAIN_SETTINGS[setting])
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing written that blocks the next run


def test_meta_json_holding_a_list_or_lacking_a_key_is_one_line(setup, tmp_path):
    """Before: meta.json holding [] gave AttributeError: 'list' object has no attribute 'get'."""
    import shutil
    root, _ = setup
    folder = tmp_path / "data"
    shutil.copytree(root / "data", folder)
    (folder / "meta.json").write_text("[]")
    one_line_error(["train.py", *args(root, tmp_path / "run", data=folder)], r"meta.json: expected a JSON "
                                                                           r"object, found a list")
    meta = json.loads((root / "data" / "meta.json").read_text())
    del meta["splits"]["valid"]
    (folder / "meta.json").write_text(json.dumps(meta))
    one_line_error(["train.py", *args(root, tmp_path / "run", data=folder)], r"meta.json: splits.valid.shards is "
                                                                           r"missing or malformed")


PREPARE_SETTINGS = {  # before: accepted (a 1-document training split, an 81-token vocabulary) or a traceback
    "--valid_fraction=2": r"--valid_fraction=2.0: expected a finite number in \[0, 1\)",
    "--vocab_size=0": r"--vocab_size=0: expected an integer in \[6, 2\*\*32\)",
    "--vocab_size=-5": r"--vocab_size=-5: expected an integer in \[6, 2\*\*32\)",
    "--shard_tokens=0": r"--shard_tokens=0: expected an integer >= 1",
    "--seed=-1": r"--seed=-1: expected an integer in \[0, 2\*\*63\)",
}


@pytest.mark.parametrize("setting", PREPARE_SETTINGS)
def test_bad_prepare_settings_are_one_line(tmp_path, setting):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Document {i} about the cat and the dog and the bird." for i in range(40)))
    one_line_error(["corpus.__main__", corpus, "--out", tmp_path / "out", setting], PREPARE_SETTINGS[setting])
    assert not (tmp_path / "out").exists()


def test_memory_that_cannot_fit_is_refused_up_front(setup, tmp_path):
    """Before: --batch_size=10^12 (with --max_steps) grew to 17 GB before the kernel killed it. Here the child
    runs under a 6 GB address-space limit, so that the unfixed code fails fast instead of filling the machine."""
    root, _ = setup
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    for setting, knob in [("--batch_size=1000000000000", "--batch_size"),
                          ("--layers=48 --hidden=16384 --intermediate=65536 --heads=64", "a smaller model")]:
        done = subprocess.run([sys.executable, "train.py", *args(root, tmp_path / "run", mode="mlm", init="scratch",
                                                                  max_steps=3), *setting.split()],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, preexec_fn=limit)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1, done.stderr[-1500:]
        assert "GiB free" in lines[0] and knob in lines[0], lines[0]
        assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_damaged_or_list_valued_stage_json_is_moved_aside(setup, tmp_path, capsys):
    """Before: a damaged stage.json gave a JSONDecodeError traceback, one holding a list an AttributeError."""
    import quickstart
    root, _ = setup
    out = tmp_path / "stage"
    run = T.parse_args(args(root, out, max_steps=1))
    for n, text in enumerate(['{"settings": {"mode": "dis', "[1, 2]"], 1):
        out.mkdir(exist_ok=True)
        (out / "stage.json").write_text(text)
        said(capsys)
        stats = quickstart.run_stage("student", run, out / "student")
        assert stats["step"] == 1 and "stage.json" in said(capsys)
        assert (out / f"earlier-{n}" / "stage.json").read_text() == text  # moved aside, not deleted
        import shutil
        shutil.rmtree(out / "student")  # not reused: run it again with the next damage
        for p in [*out.glob("ckpt-*"), out / "metrics.jsonl", out / "losses.png"]:
            p.unlink()


# ---------------------------------------------------------------------------- refuted claims of docs/faults.md

KILL_AT_RENAME = """
import os, signal, sys
sys.path.insert(0, {root!r})
from corpus.__main__ import main
real, seen = os.replace, []

def replace(src, dst, *a, **k):  # SIGKILL at the n-th rename of the folder into place (a real kill -9)
    if os.path.basename(str(dst)) in ("out", ".out.old"):
        seen.append(dst)
        if len(seen) == {n}:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *a, **k)
os.replace = replace
main(sys.argv[1:])
"""


@pytest.mark.parametrize("kill", ["fresh", "overwrite-first-rename", "overwrite-second-rename"])
def test_prepare_killed_at_its_renames_recovers(tmp_path, kill):
    """Before: a prepare killed after meta.json was written (before its rename) left out.tmp without its
    marker, and every rerun refused ("not left by an interrupted preparation"); an --overwrite killed between
    its two renames was never put back (the stale-.tmp check ran first and refused)."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Document {i} about the cat and the dog and the bird." for i in range(40)))
    out = tmp_path / "out"
    argv = [str(corpus), "--out", str(out), "--vocab_size=120"]
    if kill != "fresh":
        prepare([corpus], out, vocab_size=130)
        (out / "marker").write_text("the earlier folder")
        argv.append("--overwrite")
    driver = tmp_path / "driver.py"
    driver.write_text(KILL_AT_RENAME.format(root=str(ROOT), n=2 if kill.endswith("second-rename") else 1))
    done = subprocess.run([sys.executable, str(driver), *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-1500:]
    assert (tmp_path / "out.tmp").is_dir()  # what the kill left
    if kill == "overwrite-second-rename":  # the earlier folder set aside, not yet replaced: it is put back
        assert not out.exists() and (tmp_path / ".out.old" / "marker").is_file()
        with pytest.raises(FileExistsError, match="use --overwrite"):
            prepare([corpus], out, vocab_size=120)
        assert (out / "marker").read_text() == "the earlier folder" and not (tmp_path / "out.tmp").exists()
    meta = prepare([corpus], out, vocab_size=120, overwrite=kill != "fresh")
    assert meta["settings"]["vocab"] == "train:120" and not (tmp_path / "out.tmp").exists()
    assert not (out / PARTIAL).exists() and not (tmp_path / ".out.old").exists()
    from data import TokenData
    TokenData(out)


def test_a_full_disk_during_the_export_names_the_folder_and_the_free_bytes(setup, tmp_path, monkeypatch):
    """Before: "R: No space left on device" (no file, no free bytes), or a SafetensorError traceback. A 400 KB
    tmpfs holds the final checkpoint of the tiny student (~350 KB) but not its export (~125 KB); grown to 1 MB,
    the resume writes the export. Where no tmpfs can be mounted, the error safetensors raises on a full disk is
    raised in its place."""
    from safetensors import SafetensorError
    import machinery.hf as hf
    root, _ = setup
    disk = tmp_path / "disk"
    mounted = mount_tmpfs(disk, "size=400k")
    out = disk / "run"
    want = (rf"{out / 'student'}: export not written \(.*No space left on device.*; [\d,]+ bytes free there\); "
            rf"the checkpoints in .* are intact: .*--resume=true exports again")
    try:
        if mounted:
            done = subprocess.run([sys.executable, "train.py", *args(root, out, max_steps=2)], cwd=ROOT,
                                  capture_output=True, text=True, timeout=300)
            lines = done.stderr.strip().splitlines()
            assert done.returncode == 1 and len(lines) == 1, done.stderr[-2000:]
            assert re.search(want, lines[0]), lines[0]
            subprocess.run(["mount", "-o", "remount,size=1m", str(disk)], check=True)
        else:
            def full(tensors, path):
                raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
            monkeypatch.setattr(hf, "save_tensors", full)
            one_line_error(["train.py", *args(root, out, max_steps=2)], want)
            monkeypatch.undo()
        assert ckpt_names(out)[0] == "ckpt-0000002.pt" and not list(out.glob(".student.*"))  # no temporary left
        T.train(T.parse_args(args(root, out, max_steps=2, resume=True)))
        assert (out / "student" / "model.safetensors").is_file()
    finally:
        if mounted:
            unmount(disk)


def test_a_full_disk_in_prepare_names_the_file_and_the_free_bytes(tmp_path):
    """Before: "prepare.py: error: OSError: 4901 requested and 0 written". A 64 KB tmpfs (or, where none can be
    mounted, a file-size limit) makes the shard write fail for real."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Document {i}: the cat and the dog met the bird by the river {i * 7}."
                                  for i in range(4000)))
    disk = tmp_path / "disk"
    mounted = mount_tmpfs(disk, "size=64k")
    try:
        done = subprocess.run([sys.executable, "-m", "corpus", str(corpus), "--out", str(disk / "out"),
                               "--vocab_size=200"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                              preexec_fn=None if mounted else limit_file_size(64_000))
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-1500:]
        assert re.search(rf"corpus: error: {disk / 'out.tmp'}/\S+: not written \(.*[\d,]+ bytes free there\); "
                         rf"{disk / 'out'} is as it was", lines[-1]), lines[-1]
        assert not (disk / "out.tmp").exists() and not (disk / "out").exists()
    finally:
        if mounted:
            unmount(disk)


def test_quickstart_stages_compare_only_what_they_read_and_move_aside_never_delete(setup, tmp_path, capsys):
    """Before: the quickstart run again with --alpha_ce=4 said "teacher: ... holds a run with other settings:
    starting it again", deleted the finished teacher (an mlm run: alpha_ce is not read) and retrained it, and
    the student's folder went with shutil.rmtree, a file the user had put there with it. The stages here are
    the quickstart's (run_stage), on the tiny teacher."""
    import dataclasses
    import quickstart
    root, _ = setup
    q = tmp_path / "q"

    def stages(**kw):
        base = T.parse_args(args(root, q, max_steps=1, **kw))
        teacher = dataclasses.replace(base, mode="mlm", init="pretrained", out_dir=str(q / "teacher"))
        student = dataclasses.replace(base, teacher=str(q / "teacher" / "model"), out_dir=str(q / "student"))
        return teacher, student

    def run_all(**kw):
        teacher, student = stages(**kw)
        quickstart.run_stage("teacher", teacher, q / "teacher" / "model", after="data-hash")
        after = {"data": "data-hash", "teacher": dataclasses.asdict(teacher)}
        quickstart.run_stage("student", student, q / "student" / "student", after=after)
    run_all()
    (q / "student" / "notes.txt").write_text("mine")
    teacher_files, student_files = tree(q / "teacher"), tree(q / "student")
    said(capsys)
    run_all(alpha_ce=4.0)
    text = said(capsys)
    assert "teacher: already complete" in text and tree(q / "teacher") == teacher_files  # not read by mlm
    assert "student: " in text and "holds a run with other settings: the earlier run's outputs moved to" in text
    assert (q / "student" / "notes.txt").read_text() == "mine"  # not the quickstart's: left where it is
    moved = {k: v for k, v in student_files.items() if k not in ("notes.txt", "train.lock")}
    assert tree(q / "student" / "earlier-1") == moved  # the finished stage, whole, stage.json with it
    assert json.loads((q / "student" / "stage.json").read_text())["settings"]["alpha_ce"] == 4.0
    said(capsys)
    run_all(alpha_ce=4.0)
    assert said(capsys).count("already complete") == 2


def test_a_stopped_quickstart_stage_exits_75(setup, tmp_path, monkeypatch, capsys):
    """Before: the quickstart stopped by a signal exited 1 (its message as the exit status), as an error would.
    (train.py's own exit code: tests/test_train.py::test_sigterm_writes_a_checkpoint.)"""
    import quickstart
    root, _ = setup
    monkeypatch.setattr(quickstart, "train", lambda cfg, eta=None: {"stopped": True, "step": 1})
    run = T.parse_args(args(root, tmp_path / "stage", max_steps=1))
    with pytest.raises(SystemExit) as e:
        quickstart.run_stage("student", run, tmp_path / "stage" / "student")
    assert e.value.code == 75, e.value.code
    assert "the same command again continues it" in capsys.readouterr().err
