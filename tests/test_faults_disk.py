"""Faults of the file system and the process (issue 41): kills during renames, full disks during the export and in
corpus preparation, the quickstart's stages moved aside, never deleted, and a stopped stage."""
import json
import re
import signal
import subprocess
import sys

import pytest
from corpus import PARTIAL, prepare
from corpus.__main__ import main as corpus_main
import train as T
from train_fixtures import args, ckpt_names, ROOT, setup  # noqa: F401 (setup: a fixture)

from faults_fixtures import (  # noqa: F401 (fixtures and helpers)
    tree, export, mount_tmpfs, unmount, limit_file_size, one_line_error, said, stopped, KILL_AT_RENAME)


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
