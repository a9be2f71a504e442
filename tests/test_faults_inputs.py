"""Bad files and settings, one line naming them: config.json, tokenizer.json, task files, limits, another vocabulary,
edited meta.json, and the tracebacks that became one line (issue 41)."""
import json
import os
import resource
import subprocess
import sys

import pytest
from corpus import prepare
from corpus.__main__ import main as corpus_main
import train as T
from train_fixtures import args, ROOT, setup  # noqa: F401 (setup: a fixture)
from machinery.hf import save_pretrained

from faults_fixtures import (  # noqa: F401 (fixtures and helpers)
    rows, one_line_error, bad_inputs, model_variant, CONFIG_EDITS, GLUE_FAULTS, said, BAD_TRAIN_SETTINGS,
    PREPARE_SETTINGS)


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
