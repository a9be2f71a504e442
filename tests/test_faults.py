"""What survives what, round 2: the ways a run could still lose data, and faults that gave a traceback instead of
one line naming the file, key or value. Each test sets up exactly the state the fault leaves (or causes the fault
for real: a full or read-only file system where this machine lets the test mount one) and checks that nothing
already written is lost."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from machinery import files
from corpus import PARTIAL, prepare
from corpus.__main__ import main as corpus_main
import train as T
from conftest import lock_held_by_another_process
from train_fixtures import args, ckpt_names, damage, final_student, ROOT, setup  # noqa: F401 (setup: a fixture)

from faults_fixtures import (  # noqa: F401 (fixtures and helpers)
    rows, tree, export, mount_tmpfs, unmount, limit_file_size, said)


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
