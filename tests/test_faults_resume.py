"""What a resume must not get wrong (issue 41): data lost (keep_last, checkpoint names, the user's files in an
export, a lock that is a link) and silent wrong results (another teacher, schedule, loss or precision; the
vocabulary hash; unreadable metrics rows)."""
import os

import pytest
import torch
from corpus.__main__ import main as corpus_main
import train as T
from train_fixtures import args, ckpt_names, final_student, setup  # noqa: F401 (setup: a fixture)

from faults_fixtures import (  # noqa: F401 (fixtures and helpers)
    rows, tree, export, one_line_error, bad_inputs, said, other_teacher, stopped_at_2, stopped, copy_of)


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
