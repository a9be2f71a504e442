"""tests/gpu_smoke.py, the checks to run when a GPU is lent (issue 40), run here as its CPU dry run: the same code
on tiny shapes, the CPU standing in for the device (its waits counted by tests/syncs.SyncCounter)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import gpu_smoke

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_in_process(tmp_path, capsys):
    """The in-process checks: the device's step equals the CPU's, no waits in train_step (bf16, fp16, one
    process and DDP) nor in the fused head (equal to the formulas). (The slow test below runs every check.)"""
    out = tmp_path / "smoke.json"
    results = gpu_smoke.main(["--dry-run", "--only", "step,syncs", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results, default=str))
    checks = results["checks"]
    assert all(c["ok"] for c in checks.values()), {k: c["text"] for k, c in checks.items()}
    assert checks["step"]["details"]["moved"] > 1e-4
    assert "| syncs | ok |" in capsys.readouterr().out


def test_a_failed_check_is_reported_and_the_others_run(tmp_path, monkeypatch):
    """A check that breaks fails alone: the run goes on, says which failed, and exits non-zero."""
    monkeypatch.setattr(gpu_smoke.Smoke, "check_step", lambda self: 1 / 0)
    monkeypatch.setattr(gpu_smoke.Smoke, "check_fp16", lambda self: (True, {}, "stood in"))
    with pytest.raises(SystemExit, match="failed: step"):
        gpu_smoke.main(["--dry-run", "--only", "step,fp16", "--out", str(tmp_path / "s.json")])
    checks = json.loads((tmp_path / "s.json").read_text())["checks"]
    assert not checks["step"]["ok"] and "ZeroDivisionError" in checks["step"]["details"]["error"]
    assert checks["fp16"]["ok"] and checks["fp16"]["text"] == "stood in"


@pytest.mark.slow
def test_dry_run_command(tmp_path):
    """`python tests/gpu_smoke.py --dry-run`, every check (torchrun with gloo for the resume), and its table into
    a page's gpu-smoke region."""
    page = tmp_path / "page.md"
    page.write_text("before\n<!-- begin gpu-smoke -->\nold\n<!-- end gpu-smoke -->\nafter\n")
    r = subprocess.run([sys.executable, "tests/gpu_smoke.py", "--dry-run", "--out", str(tmp_path / "s.json"),
                        "--docs", str(page)], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    checks = json.loads((tmp_path / "s.json").read_text())["checks"]
    assert list(checks) == list(gpu_smoke.CHECKS) and all(c["ok"] for c in checks.values())
    assert checks["resume"]["details"]["max_abs_diff"] == 0.0 and checks["fp16"]["details"]["scale"] > 0
    assert set(checks["speed"]["details"]) == {"eager", "compiled"}
    text = page.read_text()
    assert text.startswith("before\n<!-- begin gpu-smoke -->\ncpu (dry run)") and "| resume | ok |" in text
