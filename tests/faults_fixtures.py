"""Fixtures and helpers shared by the test_faults tests."""
import json
import resource
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from corpus.__main__ import main as corpus_main
import train as T
from train_fixtures import args, setup  # noqa: F401 (setup: a fixture)
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


GLUE_FAULTS = {  # what the file holds -> the one line expected
    "train without labels": ("train", "sentence\nthe cat\nthe dog\n", r"train.tsv: no column 'label'"),
    "dev without labels": ("dev", "sentence\nthe cat\nthe dog\n", r"dev.tsv: no column 'label'"),
    "header-only dev": ("dev", "sentence\tlabel\n", r"dev.tsv: no examples"),
}


def said(capsys):
    return capsys.readouterr().out


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


PREPARE_SETTINGS = {  # before: accepted (a 1-document training split, an 81-token vocabulary) or a traceback
    "--valid_fraction=2": r"--valid_fraction=2.0: expected a finite number in \[0, 1\)",
    "--vocab_size=0": r"--vocab_size=0: expected an integer in \[6, 2\*\*32\)",
    "--vocab_size=-5": r"--vocab_size=-5: expected an integer in \[6, 2\*\*32\)",
    "--shard_tokens=0": r"--shard_tokens=0: expected an integer >= 1",
    "--seed=-1": r"--seed=-1: expected an integer in \[0, 2\*\*63\)",
}


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
