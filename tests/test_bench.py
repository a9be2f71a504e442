"""benchmarks/: the whole command runs end to end on tiny shapes, and its equality checks would catch a wrong model
or a wrong training step. Timings are not asserted here (speed is what the benchmarks report, not what tests
decide)."""
import json
import random
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import benchmarks.cpu
from benchmarks.__main__ import main
from benchmarks.common import (QUICK, TOL, check_same, interleaved, load, make_models, train_batch,
                               train_flops_per_token)
from benchmarks.cpu import bench_cpu_share
from benchmarks.gpu import bench_gpu
from benchmarks.inference import INFER_QUICK, bench_inference
from benchmarks.loading import gpu_batches_per_s
from benchmarks.training import losses_differ, make_step
from model import BertConfig
from machinery.tokenizer import train_wordpiece

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A small corpus, a WordPiece vocabulary trained on it, and an STS-B-shaped dev.tsv: no shared data needed."""
    root = tmp_path_factory.mktemp("bench")
    words = ("the cat dog sat on a mat while bird watched from window and nobody said word about evening came lamps "
             "were lit along quiet street").split()
    r = random.Random(0)
    lines = [" ".join(r.choice(words) for _ in range(r.randint(5, 20))).capitalize() + "." for _ in range(300)]
    (root / "corpus.txt").write_text("\n".join(lines[:150]) + "\n\n" + "\n".join(lines[150:]) + "\n")
    train_wordpiece(iter(lines), 200, root / "vocab.txt")
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    rows = [f"{i}\tg\tf\t2012\t{i}\tnone\tnone\t{lines[i]}\t{lines[i + 1]}\t{r.uniform(0, 5):.3f}" for i in range(25)]
    (root / "dev.tsv").write_text("\n".join([header] + rows) + "\n")
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    make_models(QUICK, folder)
    return folder


@pytest.mark.slow
def test_quick_run_end_to_end(inputs, tmp_path):
    out, page = tmp_path / "res.json", tmp_path / "page.md"
    page.write_text("# prose before\n<!-- begin bench -->\nold table\n<!-- end bench -->\nprose after\n")
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--vocab", str(inputs / "vocab.txt"), "--sts", str(inputs / "dev.tsv"),
           "--corpus", str(inputs / "corpus.txt"), "--out", str(out), "--threads", "1",  # 1: no thread waits under load
           "--docs", str(page)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    res = json.loads(out.read_text())["sections"]
    assert not list(tmp_path.glob("*.tmp"))  # written atomically
    assert {(c["model"], c["batch"], c["length"]) for c in res["inference"]["cells"]} == \
        {(m, b, l) for m in ("teacher", "student") for b, l in INFER_QUICK}
    assert all(c["ratio"] > 0 and c["max_abs_diff"] <= TOL for c in res["inference"]["cells"])
    assert res["table3"]["pairs"] == 20 and res["table3"]["speedup_ours"] > 0
    variants = res["train"]["variants"]
    assert set(variants) == {"ours:16", "ours:0", "transformers"}
    assert all(v["losses_differ"] == [] and v["peak_mb"] >= 0 and v["tokens_per_s"] > 0 for v in variants.values())
    assert res["data"]["tokens"]["ours"] > 1000 and res["data"]["speedup"] > 0
    loader = res["loader"]
    assert loader["batches_per_s"]["load"] > loader["batches_per_s"]["load+mask"] > 0 and loader["world"] == 8
    assert loader["real_tokens_per_batch"] > 0.5 * 4 * 32  # long documents: batches are mostly real tokens
    assert loader["gpu_batches_per_s"] == pytest.approx(gpu_batches_per_s(4, 32))
    assert "skipped" in res["gpu"] or res["gpu"]["eager"]["mfu"] > 0
    assert len(res["cpu-bf16"]["rows"]) == 3 and all(r["ratio"] > 0 for r in res["cpu-bf16"]["rows"])
    share = res["cpu-share"]  # the printed share is the one its stored times give
    assert share["share"] == pytest.approx(share["flops_per_token"] * share["real_tokens"]
                                           / statistics.median(share["step_s"]) / share["peak_flops"])
    assert share["rows"][1]["ratio"] == f"{share['share']:.1%}" and share["peak_flops"] > 0
    assert all(0 <= s["other_cores"] and s["seconds"] > 0 for s in res.values())
    table = out.with_suffix(".md").read_text()
    assert all(f"| {name} |" in table for name in ("inference", "table3", "train", "data", "loader",
                                                           "cpu-bf16", "cpu-share"))
    # --docs: the same table between the page's markers, the prose around it kept
    assert page.read_text() == ("# prose before\n<!-- begin bench -->\n" + table.strip()
                                + "\n<!-- end bench -->\nprose after\n")


def test_cpu_share_by_hand(monkeypatch):
    """The peak and the share from given times, by hand: 2 n^3 FLOPs per product, the medians of the turns."""
    times = {"matmul": [0.5, 4.0, 1.0], "step": [2.0, 0.5, 1.0]}
    monkeypatch.setattr(benchmarks.cpu, "interleaved", lambda fns, reps: times)
    res = bench_cpu_share(2, 32, 3, QUICK, n=64)
    peak = 2 * 64**3 * res["matmul_repeat"] / 1.0
    L, t, s = 32, BertConfig(**QUICK), BertConfig(**{**QUICK, "num_layers": 2})
    d, V, ff = 64, 512, 128  # train_flops_per_token by hand: teacher forward, student forward + backward
    flops = 4 * (8 * d * d + 4 * d * ff + 4 * L * d) + 2 * (d * d + d * V) \
        + 3 * (2 * (8 * d * d + 4 * d * ff + 4 * L * d) + 2 * (d * d + d * V))
    assert res["flops_per_token"] == flops == train_flops_per_token(t, s, L)
    assert res["peak_flops"] == pytest.approx(peak)
    assert res["share"] == pytest.approx(flops * res["real_tokens"] / 1.0 / peak)
    assert res["rows"][1]["met"] == ("yes" if res["share"] >= 0.35 else "NO")


def test_equality_check_catches_a_wrong_weight(models):
    for which in ("teacher", "student"):
        ours, ref = load(models, which)
        assert check_same(ours, ref, which) <= TOL
        with torch.no_grad():
            ours.layers[1].fc1.weight[3, 5] += 0.05  # one number in one layer
        with pytest.raises(AssertionError, match="differ"):
            check_same(ours, ref, which)


def test_training_loss_check_catches_a_wrong_student(models):
    batch = train_batch(2, 32, QUICK["vocab_size"])
    checks = {}
    for variant in ("ours:8", "ours:0", "transformers"):
        step, student = make_step(variant, models, batch)
        student.eval()
        checks[variant] = step(update=False)
    assert losses_differ(checks["ours:8"], checks["transformers"]) == []
    assert losses_differ(checks["ours:0"], checks["transformers"]) == []
    step, student = make_step("ours:8", models, batch)
    with torch.no_grad():
        student.layers[0].proj.weight[0, 0] += 0.5
    student.eval()
    assert losses_differ(step(update=False), checks["transformers"])


def test_fused_head_losses_give_the_full_logits_gradients(models):
    """The step the benchmarks time (ce_chunk > 0: L_ce and L_mlm fused, chunk by chunk) has the gradients of the plain one
    (ce_chunk=0: full logits, autograd), parameter by parameter, with several chunks and a partial last one."""
    batch = train_batch(3, 32, QUICK["vocab_size"])
    grads = {}
    for variant in ("ours:7", "ours:0"):
        step, student = make_step(variant, models, batch)
        student.eval()
        step(update=False)
        grads[variant] = {n: p.grad.clone() for n, p in student.named_parameters()}
    assert set(grads["ours:7"]) == set(grads["ours:0"])
    for n, g in grads["ours:0"].items():
        torch.testing.assert_close(grads["ours:7"][n], g, rtol=1e-4, atol=1e-6, msg=n)


def test_flops_per_token_formula():
    from model import BertConfig
    t = BertConfig()
    s = BertConfig(num_layers=6, type_vocab_size=0)
    # per layer 8 d^2 + 4 d d_ff + 4 L d = 15,728,640 at L = 512; head 2 (d^2 + d V) = 48,061,440
    assert train_flops_per_token(t, s, 512) == 12 * 15728640 + 48061440 + 3 * (6 * 15728640 + 48061440)


def test_gpu_consumption_from_the_readme_estimate():
    # 0.4 x 989e12 FLOP/s / 0.77e9 FLOP per token = 513,766 tokens/s; / (16 x 512) = 62.7 micro-batches/s
    assert gpu_batches_per_s(16, 512) == pytest.approx(0.4 * 989e12 / 0.77e9 / 8192)
    assert gpu_batches_per_s(16, 512) == pytest.approx(62.716, abs=1e-3)


def test_interleaving_alternates_the_order():
    calls = []
    interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, reps=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]


@pytest.mark.slow
def test_gpu_section_code_path_on_cpu(models):
    """The GPU section cannot be timed here, but its code path (bf16 autocast, the teacher in bf16, torch.compile of
    the student, the MFU arithmetic) runs on the CPU with the 'eager' compile backend."""
    res = bench_gpu(models, B=2, L=32, steps=1, peak=1e12, ce_chunk=16, device="cpu", backend="eager")
    flops = train_flops_per_token(*(load(models, w)[0].cfg for w in ("teacher", "student")), 32)
    for key in ("eager", "compiled"):
        r = res[key]
        assert r["flops_per_token"] == flops and r["tokens_per_s"] > 0
        assert r["mfu"] == pytest.approx(flops * r["tokens_per_s"] / 1e12)
        assert all(torch.isfinite(torch.tensor(v)) for v in r["last_warmup_losses"].values())
    assert len(res["rows"]) == 2


def test_inference_section_in_another_dtype(models):
    """The GPU inference run moves both models to the device and dtype after the float32 check; on the CPU in bf16
    the same code path runs, and the two models still agree to bf16 precision."""
    res = bench_inference(models, {(2, 16): 1}, "cpu", torch.bfloat16)
    assert [c["model"] for c in res["cells"]] == ["teacher", "student"] and res["dtype"] == "bfloat16"
    for c in res["cells"]:
        assert c["max_abs_diff"] <= TOL and c["ratio"] > 0
        assert c["timed_logits_max_abs_diff"] < 0.1, c  # logits of these small models are O(1); bf16 keeps 8 bits
    assert res["rows"][0]["measure"] == "teacher cpu bfloat16 2 x 16, ms"


@pytest.mark.parametrize("argv, msg", [(["--infer-cells", "32x512"], "expected BxL:runs"),
                                       (["--infer-models", "bert"], "expected teacher, student"),
                                       (["inference", "speed"], "--sections='speed': expected one of inference, table3")])
def test_command_line_errors_name_the_value(argv, msg, tmp_path):
    with pytest.raises(SystemExit, match=msg):
        main(argv + ["--out", str(tmp_path / "r.json")])
    assert not (tmp_path / "r.json").exists()


def test_without_transformers_it_says_what_to_install():
    """Before: the benchmarks without transformers failed with an ImportError traceback."""
    code = ("import runpy, sys; sys.modules['transformers'] = None; sys.argv = ['benchmarks', '--quick']; "
            "runpy.run_module('benchmarks', run_name='__main__', alter_sys=True)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert run.stderr.strip() == ("the benchmarks compare with transformers, which is not installed: "
                                  "pip install -r requirements-dev.txt")
