"""train.py's checkpoints and exports: damaged, blown up or partial ones set aside, a full disk, kill -9, the out_dir
lock, settings refused at start, exports that transformers reads."""
import json
import os
from pathlib import Path

import pytest
import torch
from machinery.tokenizer import load_tokenizer
from machinery import checkpoint
from machinery.hf import load_pretrained
import train as T
from conftest import lock_held_by_another_process

from train_fixtures import (  # noqa: F401 (fixtures and helpers)
    setup, args, batch, final_student, ckpt_names, damage)


def test_diverged_but_finite_final_eval_keeps_the_final_work(setup, tmp_path, monkeypatch):
    """Issue 14.2: a mean held-out loss above ~709 made math.exp overflow at the final evaluation, before the
    final checkpoint and the export. Here every masked token costs 1000 nats (exp(1000) overflows a float)."""
    import types
    import eval as ev
    root, _ = setup
    huge = types.SimpleNamespace(cross_entropy=lambda logits, gold, reduction: torch.full(
        (), 1000.0 * len(gold), dtype=logits.dtype))
    monkeypatch.setattr(ev, "F", huge)
    out = tmp_path / "diverged"
    T.train(T.parse_args(args(root, out, max_steps=2)))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["valid_perplexity"] == float("inf")
    assert final_student(out)["step"] == 2 and (out / "student" / "model.safetensors").is_file()
    assert (out / "losses.png").is_file()


@pytest.mark.slow
def test_blown_up_weights_make_no_good_checkpoint(setup, tmp_path, capsys):
    """Issue 14.3: after a step that blew the weights up (finite, ~1e29), the checkpoint was kept as good and
    the non-finite stop claimed an intact good checkpoint. Step 1 runs at lr 0 (warm-up), step 2 at lr
    1e29."""
    root, _ = setup
    out = tmp_path / "blown"
    a = args(root, out, mode="mlm", init="scratch", max_steps=6, save_every=1, max_nonfinite=2, lr=1e29)
    with pytest.raises(SystemExit) as e:
        T.train(T.parse_args(a))
    assert ckpt_names(out) == ["ckpt-0000001.pt", "ckpt-0000001.pt.sha256"]
    assert f"{out / 'ckpt-0000001.pt'} is the newest checkpoint that verifies" in str(e.value)
    assert "step 2: the parameters are not finite or give non-finite outputs" in capsys.readouterr().out
    # with no checkpoint at all, the message does not pretend there is one
    with pytest.raises(SystemExit, match="No checkpoint in .* verifies: nothing to resume"):
        T.train(T.parse_args(args(root, tmp_path / "none", mode="mlm", init="scratch", max_steps=6,
                                  max_nonfinite=2, lr=1e29)))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["overwrite", "truncate", "truncate-no-checksum"])
def test_damaged_newest_checkpoint_falls_back_to_one_that_verifies(setup, tmp_path, capsys, how):
    """Issue 14.3/14.4: a damaged newest checkpoint was loaded silently (4 KB overwritten) or gave a traceback
    naming no file (truncated); resume now names it, sets it aside and continues from the newest one that
    verifies, which gives the uninterrupted run's final parameters bitwise."""
    root, _ = setup
    a = args(root, tmp_path / "full", max_steps=6, save_every=2, keep_last=5)
    T.train(T.parse_args(a))
    full = final_student(tmp_path / "full")
    out = tmp_path / "dam"
    b = args(root, out, max_steps=6, save_every=2, keep_last=5)
    T.train(T.parse_args(b))
    (out / "ckpt-0000006.pt").unlink()  # as if stopped after step 4, and then step 4's checkpoint got damaged
    damage(out / "ckpt-0000004.pt", how.split("-")[0])
    if how.endswith("no-checksum"):
        (out / "ckpt-0000004.pt.sha256").unlink()
    capsys.readouterr()
    T.train(T.parse_args(b + ["--resume=true"]))
    said = capsys.readouterr().out
    assert f"skipping {out / 'ckpt-0000004.pt'}: " in said
    assert ("checksum mismatch" if how != "truncate-no-checksum" else "unreadable checkpoint") in said
    assert f"falling back to {out / 'ckpt-0000002.pt'}" in said and "resumed from" in said
    assert (out / "ckpt-0000004.pt.bad").is_file()
    resumed = final_student(out)
    assert resumed["step"] == 6 and all(torch.equal(v, resumed["model"][k]) for k, v in full["model"].items())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if "total" in r]
    assert train_steps == sorted(set(train_steps)) == list(range(1, 7))  # no row twice after the fallback


def test_full_disk_leaves_no_tmp_and_stale_tmp_is_cleaned(setup, tmp_path, monkeypatch, capsys):
    """Issue 14.4: a full disk left a .pt.tmp that made the next attempt fail the same way."""
    import errno
    root, _ = setup
    out = tmp_path / "disk"
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        Path(f).write_bytes(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", full_disk)
    full = r"ckpt-0000002.pt: checkpoint not written \(No space left on device"
    with pytest.raises(SystemExit, match=full):
        T.train(T.parse_args(args(root, out, max_steps=2)))
    assert ckpt_names(out) == []
    monkeypatch.setattr(torch, "save", real_save)
    (out / "ckpt-0000002.pt.tmp").write_bytes(b"x" * 100_000)  # left by a hard kill during a write
    (out / "notes.tmp").write_text("not ours")
    (out / "ckpt-0000009.pt.sha256").write_text("0" * 64)  # its checkpoint never arrived
    # the failed run left its metrics.jsonl: a new start moves it aside (--restart=true), never writes over it
    T.train(T.parse_args(args(root, out, max_steps=2, restart=True)))
    said = capsys.readouterr().out
    assert "removing" in said and f"outputs moved to {out / 'earlier-1'}" in said
    assert (out / "earlier-1" / "metrics.jsonl").is_file()
    assert ckpt_names(out) == ["ckpt-0000002.pt", "ckpt-0000002.pt.sha256"] and (out / "notes.tmp").is_file()


@pytest.mark.slow
def test_kill9_resume_does_not_duplicate_metrics_rows(setup, tmp_path):
    """Issue 14.6: rows written after the last checkpoint (before a kill -9) appeared twice after resuming."""
    root, _ = setup
    out = tmp_path / "k9"
    a = args(root, out, max_steps=6, save_every=3)
    T.train(T.parse_args(a))
    (out / "ckpt-0000006.pt").unlink()  # the run was killed after writing the rows of steps 4-6
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "tot')  # a row cut short by the kill
    T.train(T.parse_args(a + ["--resume=true"]))
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4, 5, 6, 6]  # the config row, every training row once, the final evaluation's


def test_settings_that_cannot_work_fail_at_start(setup, tmp_path, capsys):
    """Issue 14.5: max_len above the model's positions failed only at the first forward pass; micro_batch
    above batch_size silently trained a bigger batch; another --mode on resume was accepted; --resume=true
    without a checkpoint started fresh without saying so."""
    root, _ = setup
    with pytest.raises(SystemExit, match="--max_len=128 is more than the 64 positions of .*teacher"):
        T.train(T.parse_args(args(root, tmp_path / "a", max_len=128)))
    with pytest.raises(SystemExit, match="--micro_batch=16 x 1 rank.* is more than --batch_size=8"):
        T.train(T.parse_args(args(root, tmp_path / "b", micro_batch=16)))
    assert not list((tmp_path / "a").glob("ckpt-*")) and not list((tmp_path / "b").glob("ckpt-*"))
    out = tmp_path / "c"
    T.train(T.parse_args(args(root, out, max_steps=2, resume=True)))
    assert f"--resume=true: no checkpoint in {out}: starting fresh" in capsys.readouterr().out
    refused = "written by a --mode=distill run; resuming it with --mode=mlm is refused"
    with pytest.raises(SystemExit, match=refused):
        T.train(T.parse_args(args(root, out, max_steps=4, resume=True, mode="mlm")))
    scratch = tmp_path / "d"
    T.train(T.parse_args(args(root, scratch, max_steps=2, mode="mlm", init="scratch")))
    with pytest.raises(SystemExit, match=r"holds another model \(num_layers 2 vs 3 here\)"):
        T.train(T.parse_args(args(root, scratch, max_steps=4, mode="mlm", init="scratch", layers=3,
                                  resume=True)))
    # a damaged data folder is one line naming the file, not a traceback
    shard = root / "data" / "train_000.bin"
    raw = shard.read_bytes()
    try:
        shard.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
        with pytest.raises(SystemExit, match=f"--data={root / 'data'}: {shard}: checksum mismatch"):
            T.train(T.parse_args(args(root, tmp_path / "e")))
    finally:
        shard.write_bytes(raw)


def test_teacher_vocabulary_is_checked_without_vocab_txt(setup, tmp_path, capsys):
    """Issue 14.5: the vocabulary check was skipped when the teacher folder had no vocab.txt."""
    root, data = setup
    import shutil
    for name in ("bare", "tok"):
        shutil.copytree(root / "teacher", tmp_path / name)
        (tmp_path / name / "vocab.txt").unlink()
    # a tokenizer.json of another vocabulary of the same size: refused by its hash
    other = load_tokenizer(root / "data" / "vocab.txt")
    vocab = other.get_vocab()
    swapped = sorted(vocab, key=vocab.get)
    swapped[10], swapped[11] = swapped[11], swapped[10]
    (tmp_path / "v.txt").write_text("".join(t + "\n" for t in swapped))
    load_tokenizer(tmp_path / "v.txt").save(str(tmp_path / "tok" / "tokenizer.json"))
    with pytest.raises(SystemExit, match="vocabulary mismatch"):
        T.train(T.parse_args(args(root, tmp_path / "x", teacher=tmp_path / "tok")))
    # no tokenizer at all: the size is checked, and the log says that only the size could be
    T.train(T.parse_args(args(root, tmp_path / "y", teacher=tmp_path / "bare", max_steps=1)))
    assert "only the vocabulary size" in capsys.readouterr().out


def test_two_runs_cannot_share_an_out_dir(setup, tmp_path):
    """Issue 14.5: two runs in one out_dir wrote over each other; now the second is refused. A lock left by a
    killed run (its pid written, its flock gone with it) is no obstacle."""
    root, _ = setup
    out = tmp_path / "shared"
    with lock_held_by_another_process("machinery.checkpoint.out_dir_lock", out, kill=True) as pid:
        with pytest.raises(SystemExit, match=f"train.lock: another run is writing to .*pid {pid}"):
            T.train(T.parse_args(args(root, out, max_steps=1)))
    assert f"pid {pid}" in (out / "train.lock").read_text()  # left by a killed run
    assert T.train(T.parse_args(args(root, out, max_steps=1)))["step"] == 1
    with checkpoint.out_dir_lock(out):  # released at the end of the run
        pass


def test_exports_work_in_transformers_tools(setup, tmp_path):
    """Issue 14.7: an exported student and teacher load with AutoTokenizer and run in pipeline("fill-mask"),
    giving our model's probabilities and our tokenizer's ids; the folders are readable by others (0755 /
    0644)."""
    transformers = pytest.importorskip("transformers")
    root, data = setup
    old = os.umask(0o022)
    try:
        T.train(T.parse_args(args(root, tmp_path / "s", max_steps=1)))
        T.train(T.parse_args(args(root, tmp_path / "t", mode="mlm", init="scratch", max_steps=1)))
    finally:
        os.umask(old)
    text = "the cat sat on the mat while the [MASK] watched from the window"
    ours_tok = load_tokenizer(root / "data" / "vocab.txt")
    for folder in (tmp_path / "s" / "student", tmp_path / "t" / "model"):
        assert oct(folder.stat().st_mode & 0o777) == "0o755"
        assert {oct(f.stat().st_mode & 0o777) for f in folder.iterdir()} == {"0o644"}
        tok = transformers.AutoTokenizer.from_pretrained(folder)
        assert tok(text)["input_ids"] == ours_tok.encode(text).ids
        fill = transformers.pipeline("fill-mask", model=str(folder), top_k=3)
        got = fill(text)
        model = load_pretrained(folder)
        ids = torch.tensor([ours_tok.encode(text).ids])
        where = ids[0].tolist().index(data.special["mask"])
        probs = model(ids).logits[0, where].softmax(-1)
        top = probs.topk(3)
        assert [g["token"] for g in got] == top.indices.tolist()
        assert all(abs(g["score"] - p) < 1e-5 for g, p in zip(got, top.values.tolist()))
