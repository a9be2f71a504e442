"""The quickstart's machinery on a tiny teacher (the real run takes ten minutes: README): every stage runs, the
results file has the promised keys, the verdict follows from its statistics, and a second run reuses the stages."""
import dataclasses
import json
import math

import pytest
import torch

from corpus import prepare
import quickstart
import train as T
from eval import paired_difference, verdict
from model import Bert, BertConfig
from machinery.hf import save_pretrained


def test_paired_difference_and_verdict_by_hand():
    a = torch.tensor([1, 1, 0, 1, 0, 1, 1, 1], dtype=torch.bool)
    b = torch.tensor([1, 0, 0, 0, 0, 1, 1, 0], dtype=torch.bool)
    d = [0, 1, 0, 1, 0, 0, 0, 1]  # a - b by hand: mean 3/8, sample variance (3 * (5/8)^2 + 5 * (3/8)^2) / 7
    p = paired_difference(a, b)
    assert p["delta"] == pytest.approx(3 / 8)
    assert p["se"] == pytest.approx(math.sqrt((3 * (5 / 8) ** 2 + 5 * (3 / 8) ** 2) / 7 / 8))
    assert p["n"] == len(d)
    assert verdict(0.03, 0.01) == "beats" and verdict(0.029, 0.01) == "ties within noise"
    assert verdict(-0.04, 0.01) == "loses" and verdict(0.0, 0.0) == "ties within noise"


def test_clustered_se_by_hand():
    """Groups of one item give the plain paired SE; two groups worked by hand."""
    a = torch.tensor([1, 1, 0, 1, 0, 1], dtype=torch.bool)
    b = torch.tensor([0, 1, 0, 0, 1, 0], dtype=torch.bool)
    plain = paired_difference(a, b)
    assert paired_difference(a, b, groups=torch.arange(6))["se"] == pytest.approx(plain["se"])
    # d = [1, 0, 0, 1, -1, 1], mean 1/3; groups {0, 1, 2} and {3, 4, 5}: residual sums 1 - 1 = 0 and 1 - 1 = 0
    assert paired_difference(a, b, groups=torch.tensor([0, 0, 0, 1, 1, 1]))["se"] == pytest.approx(0.0)
    # groups {0, 3} and {1, 2, 4, 5}: residual sums 2 - 2/3 = 4/3 and 0 - 4/3 = -4/3; SE = sqrt(2 * 32/9) / 6
    got = paired_difference(a, b, groups=torch.tensor([7, 9, 9, 7, 9, 9]))["se"]
    assert got == pytest.approx(math.sqrt(2 * (16 / 9 + 16 / 9)) / 6)


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """A tiny BertModel checkpoint (no MLM head, a pooler, token types) with a vocabulary trained on the default
    corpus: the shape of the real MiniLM teacher, in miniature."""
    root = tmp_path_factory.mktemp("qs")
    prepare([], root / "vocab-data", vocab_size=600, valid_fraction=0.05)
    torch.manual_seed(0)
    model = Bert(BertConfig(vocab_size=600, hidden_size=32, num_layers=6, num_heads=2, intermediate_size=64,
                            max_position=64, pooler=True))
    save_pretrained(model, root / "teacher", tokenizer_files=[root / "vocab-data" / "vocab.txt"])
    cfg = json.loads((root / "teacher" / "config.json").read_text())
    (root / "teacher" / "config.json").write_text(json.dumps({**cfg, "architectures": ["BertModel"]}))
    (root / "teacher" / "SHA256SUMS").unlink()  # edited on purpose
    return root


@pytest.mark.slow
def test_quickstart_end_to_end_and_reuse(tiny_teacher, tmp_path, capsys):
    cfg = quickstart.parse_args([f"--teacher={tiny_teacher / 'teacher'}", f"--out_dir={tmp_path}",
                        "--max_len=64", "--max_steps=4", "--eval_every=2", "--eval_batches=2", "--dtype=float32"])
    steps = dict(max_steps=4, head_steps=2, head_lr=1e-3, lr=1e-3)
    r = quickstart.quickstart(cfg, teacher_steps=steps)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["models"]) == {"teacher", "student", "student-mlm-only"}
    for m in saved["models"].values():
        assert {"mlm_acc", "ppl", "params"} <= set(m)
    assert saved["models"]["student"]["params"] < saved["models"]["teacher"]["params"]
    assert {"delta", "se", "verdict"} <= set(saved["student_vs_mlm_only"]) and saved["mask_draws"] == 3
    p = saved["student_vs_mlm_only"]
    assert p["verdict"] == verdict(p["delta"], p["se"])
    assert 0 <= saved["baseline_acc"] < 1 and saved["seconds"] > 0
    assert (tmp_path / "accuracy.png").is_file()
    out = capsys.readouterr().out
    assert "frequency baseline" in out and "paired SE" in out and p["verdict"] in out

    ckpts = {f: f.stat().st_mtime_ns for f in tmp_path.rglob("ckpt-*.pt")}
    quickstart.quickstart(cfg, teacher_steps=steps)
    out = capsys.readouterr().out
    assert out.count("already complete") == 3
    assert {f: f.stat().st_mtime_ns for f in tmp_path.rglob("ckpt-*.pt")} == ckpts
    assert json.loads((tmp_path / "results.json").read_text())["models"] == saved["models"]

    # other student settings: the teacher is reused, the students run again
    quickstart.quickstart(quickstart.parse_args([*[f"--{k}={v}" for k, v in dict(
        teacher=tiny_teacher / "teacher", out_dir=tmp_path, max_len=64, max_steps=2,
        eval_every=2, eval_batches=2, dtype="float32").items()]]), teacher_steps=steps)
    out = capsys.readouterr().out
    assert out.count("already complete") == 1 and "teacher: already complete" in out

    # another teacher: everything after it runs again too
    quickstart.quickstart(cfg, teacher_steps={**steps, "max_steps": 3})
    assert "already complete" not in capsys.readouterr().out


def test_eta_from_a_fake_clock_by_hand():
    """Expected ends from the pace so far, worked by hand: head-only steps cost a quarter of a full one."""
    from machinery.logs import Eta
    now = [100.0]
    eta = Eta(later=50.0, clock=lambda: now[0])
    eta.start(0, 10, cost=lambda k: 0.25 if k < 2 else 1.0)
    assert eta.estimate(0) is None and eta.text(0) == ""
    now[0] = 110.0  # 4 steps in 10 s: 0.25 + 0.25 + 1 + 1 = 2.5 units, 0.25 units/s
    left, everything = eta.estimate(4)
    assert left == pytest.approx(6 / 0.25) and everything == pytest.approx((6 + 50) / 0.25)
    assert eta.text(4).startswith("ends in 24s (") and ", all ends in 3m44s (" in eta.text(4)
    resumed = Eta(clock=lambda: now[0])  # resumed at step 5: only the steps run since count
    resumed.start(5, 10)
    now[0] = 130.0  # 2 steps in 20 s
    assert resumed.estimate(7) == pytest.approx((30.0, 30.0)) and "all ends" not in resumed.text(7)


@pytest.mark.slow
def test_progress_lines_show_the_eta_of_the_stage_and_of_all(tiny_teacher, tmp_path, capsys):
    """The plain progress lines of every quickstart stage carry an ETA; the last stage's 'all' end is the
    compare_models work alone, less than before."""
    cfg = quickstart.parse_args([f"--teacher={tiny_teacher / 'teacher'}", f"--out_dir={tmp_path}",
                        "--max_len=64", "--max_steps=4", "--log_every=2", "--eval_every=0", "--eval_batches=1",
                        "--dtype=float32"])
    quickstart.quickstart(cfg, teacher_steps=dict(max_steps=4, head_steps=2, head_lr=1e-3, lr=1e-3))
    lines = [line for line in capsys.readouterr().out.splitlines() if " step 2/4:" in line]
    assert len(lines) == 3 and all(" | ends in " in line and ", all ends in " in line for line in lines)


def test_preset_work_fits_the_measured_float32_run():
    """The preset's training work, counted by train.step_macs on MiniLM's shape, stays within that of the preset
    measured at 12 min 41 s in float32 on 2 cores, pip install included (docs/quickstart.md: 29.8T multiply-adds;
    the earlier preset, half an hour there, counted 76.5T): a preset made longer must be measured again."""
    teacher = BertConfig(hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536)
    student = dataclasses.replace(teacher, num_layers=3)
    cfg = quickstart.parse_args([])
    steps = quickstart.QUICKSTART_TEACHER_STEPS
    run = dataclasses.replace(cfg, mode="mlm", max_steps=steps["max_steps"], head_steps=steps["head_steps"])
    work = (run.head_steps * T.step_macs(run, teacher, head_only=True)
            + (run.max_steps - run.head_steps) * T.step_macs(run, teacher)
            + cfg.max_steps * T.step_macs(dataclasses.replace(cfg, mode="distill"), student, teacher)
            + cfg.max_steps * T.step_macs(dataclasses.replace(cfg, mode="mlm"), student))
    assert work <= 29.9e12, f"{work / 1e12:.1f}T multiply-adds"
    assert cfg.ce_positions == "all" and cfg.batch_size == 16
