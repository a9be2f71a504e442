"""What survives what, round 2: the ways a run could still lose data, and faults that gave a traceback instead of
one line naming the file, key or value. Each test sets up exactly the state the fault leaves (or causes the fault
for real: a full or read-only file system where this machine lets the test mount one) and checks that nothing
already written is lost."""
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from machinery import files
import prepare
import train as T
from conftest import lock_held_by_another_process
from test_train import ROOT, args, ckpt_names, damage, final_student, setup  # noqa: F401 (setup: a fixture)
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
    prepare.prepare([corpus], out, vocab_size=120)
    (out).rename(tmp_path / "out.old")  # the user keeps a copy of an earlier preparation
    kept = tree(tmp_path / "out.old")
    prepare.prepare([corpus], out, vocab_size=120)
    assert tree(tmp_path / "out.old") == kept
    # a first prepare is writing (holds the lock, its out.tmp half full): the second is refused, touching nothing
    (tmp_path / "out.tmp").mkdir()
    (tmp_path / "out.tmp" / prepare.PARTIAL).write_text("x")
    with lock_held_by_another_process("prepare._prepare_lock", out) as pid:
        with pytest.raises(SystemExit) as e:
            prepare.main([str(corpus), "--out", str(out), "--vocab-size", "130", "--overwrite"])
        assert "another prepare.py is writing" in str(e.value) and f"pid {pid}" in str(e.value)
        assert (tmp_path / "out.tmp" / prepare.PARTIAL).is_file()
    # the holder is gone: its marked out.tmp is provably a leftover now, and goes
    prepare.prepare([corpus], out, vocab_size=130, overwrite=True)
    assert not (tmp_path / "out.tmp").exists() and tree(tmp_path / "out.old") == kept
    assert not (tmp_path / ".out.lock").exists()


def test_prepare_puts_back_a_folder_set_aside_by_an_interrupted_overwrite(tmp_path):
    """A kill between the two renames of an --overwrite leaves the previous folder as .out.old and no out:
    the next prepare puts it back rather than deleting it."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Document {i} about the cat and the dog and the bird." for i in range(40)))
    out = tmp_path / "out"
    meta = prepare.prepare([corpus], out, vocab_size=120)
    (out / "marker").write_text("the folder itself, not a new one")
    out.rename(tmp_path / ".out.old")
    assert prepare.prepare([corpus], out, vocab_size=120)["inputs_hash"] == meta["inputs_hash"]
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
    one_line_error(["finetune.py", "--task=SST-2", f"--data={bad_inputs / 'glue'}", f"--model={folder}",
                    "--dtype=float32"], rf"{folder / 'config.json'}: .*" if edit in ("invalid-json", "list")
                   else rf"{folder / 'config.json'}: {match}")
    one_line_error(["train.py", *args(root, bad_inputs / f"out-{edit}", teacher=folder)], match)


def test_a_damaged_tokenizer_json_is_one_line_naming_the_file(setup, bad_inputs, tmp_path):
    root, _ = setup
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"version": "1.0", "trunc')
    one_line_error(["prepare.py", root / "corpus.txt" if (root / "corpus.txt").exists() else bad_inputs,
                    "--vocab", bad, "--out", tmp_path / "out"], rf"{bad}: not a readable tokenizer.json")
    folder = model_variant(bad_inputs, "bad-tokenizer",
                           lambda f: (f / "tokenizer.json").write_text('{"version": "1.0", "trunc'))
    one_line_error(["finetune.py", "--task=SST-2", f"--data={bad_inputs / 'glue'}", f"--model={folder}",
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
    one_line_error(["finetune.py", "--task=SST-2", f"--data={tmp_path / 'glue'}",
                    f"--model={bad_inputs / 'model'}", "--dtype=float32"], match)


@pytest.mark.parametrize("limit", ["--eval_limit=0", "--train_limit=0", "--train_limit=-5"])
def test_limits_below_one_are_refused(bad_inputs, limit):
    """Before: --train_limit=-5 silently kept 59 of 64 rows, --train_limit=0 all of them, --eval_limit=0 gave
    a 23-line traceback."""
    one_line_error(["finetune.py", "--task=SST-2", f"--data={bad_inputs / 'glue'}",
                    f"--model={bad_inputs / 'model'}", "--dtype=float32", limit], rf"invalid {limit[2:]}")


@pytest.mark.parametrize("size", [250, 100])
def test_a_model_or_teacher_of_another_vocabulary_is_refused(setup, bad_inputs, tmp_path, size):
    """Before: a --teacher of a larger vocabulary distilled silently, a smaller one raised IndexError."""
    from model import Bert, BertConfig
    root, _ = setup
    other = Bert(BertConfig(vocab_size=size, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                            max_position=64))
    save_pretrained(other, tmp_path / "other")
    vocab = root / "data" / "vocab.txt"
    one_line_error(["finetune.py", "--task=SST-2", f"--data={bad_inputs / 'glue'}", f"--model={tmp_path / 'other'}",
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
    prepare.prepare([corpus], tmp_path / "other", vocab_size=200)
    from data import TokenData
    assert TokenData(tmp_path / "other").vocab_size == TokenData(root / "data").vocab_size
    one_line_error(["eval.py", "mlm", "--model", model, "--data", tmp_path / "other", "--max-len", "64"],
                   r"was not trained with the vocabulary")
