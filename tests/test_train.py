"""train.py: the update is right (teacher frozen, accumulation exact, DDP equal to one process), runs resume exactly,
signals leave a checkpoint, non-finite losses are handled, and the command line refuses what it does not know."""
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch
import losses as L
from machinery.hf import load_pretrained, save_pretrained
import quickstart
import train as T
from model import Bert, BertConfig, student_from_teacher

from train_fixtures import (  # noqa: F401 (fixtures and helpers)
    ROOT, setup, args, batch, pair, grads, final_student, bertmodel_folder, finished)


def test_one_step_changes_student_not_teacher(setup):
    teacher, student, objective, cfg = pair(setup)
    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    s0 = {k: v.clone() for k, v in student.state_dict().items()}
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    sums, finite, n_real = T.forward_backward(objective, teacher, [batch(setup[1])], cfg)
    assert finite and set(sums) == {"ce", "mlm", "cos", "total"}
    opt.step()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, t0[k]) for k, v in teacher.state_dict().items())
    changed = [k for k, v in student.state_dict().items() if not torch.equal(v, s0[k])]
    assert len(changed) == len(s0)  # every student tensor moved (the LayerNorms and biases too)


@pytest.mark.slow
def test_loss_falls_when_overfitting_one_batch(setup):
    teacher, student, objective, cfg = pair(setup)
    b = batch(setup[1])
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        sums, _, _ = T.forward_backward(objective, teacher, [b], cfg)
        opt.step()
        opt.zero_grad()
        losses.append(float(sums["total"]))
    assert losses[-1] < 0.5 * losses[0], losses


def test_accumulation_equals_one_big_batch(setup):
    teacher, student, objective, cfg = pair(setup)
    big = batch(setup[1], B=8)
    T.forward_backward(objective, teacher, [big], cfg)
    want = grads(student)
    student.zero_grad()
    halves = [tuple(t[i:i + 2] for t in big) for i in range(0, 8, 2)]  # 4 micro-batches of unequal token counts
    assert len({int(h[1].sum()) for h in halves}) > 1
    T.forward_backward(objective, teacher, halves, cfg)
    got = grads(student)
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-6, rtol=1e-5), k


def test_cli_overrides_are_checked():
    cfg = T.parse_args(["--lr=0.001", "--resume=true", "--epochs=2", "--preset=tiny", "--student_layers=0,2"])
    assert cfg.lr == 0.001 and cfg.resume is True and cfg.epochs == 2 and cfg.hidden == 64
    assert T.TrainConfig().batch_size == 4000 and T.TrainConfig().alpha_ce == 5.0  # the paper's recipe by default
    for bad, msg in [(["--nope=1"], "unknown setting --nope"), (["--lr=fast"], "--lr='fast': expected a number"),
                     (["--epochs=2.5"], "--epochs='2.5': expected an integer"), (["--resume=maybe"], "--resume='maybe': expected true or false"),
                     (["lr=1"], "expected --key=value"), (["--preset=huge"], "unknown preset")]:
        with pytest.raises(SystemExit, match=msg):
            T.parse_args(bad)


def test_help_lists_every_setting():
    out = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for name in ("alpha_ce", "temperature", "micro_batch", "resume", "ce_positions"):
        assert f"--{name}=" in out.stdout


@pytest.mark.slow
def test_exact_resume(setup, tmp_path):
    root, _ = setup
    a = args(root, tmp_path / "a", max_steps=6, save_every=3, teacher=root / "teacher-dropout")
    T.train(T.parse_args(a))
    full = final_student(tmp_path / "a")
    assert full["step"] == 6
    (tmp_path / "a" / "ckpt-0000006.pt").unlink()  # as if the run had stopped right after step 3
    T.train(T.parse_args(a + ["--resume=true"]))
    resumed = final_student(tmp_path / "a")
    assert resumed["step"] == 6
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    # without --resume a folder with checkpoints is refused rather than silently mixed
    with pytest.raises(SystemExit, match="already has checkpoints"):
        T.train(T.parse_args(a))


def test_sigterm_writes_a_checkpoint(setup, tmp_path):
    root, _ = setup
    out = tmp_path / "sig"
    proc = subprocess.Popen([sys.executable, "train.py", *args(root, out, max_steps=100000, save_every=100000)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr[-2000:]  # EXIT_STOPPED, not 0: a scheduler tells it from a finished run
    assert "stopped by signal" in stdout and "--resume=true continues" in stdout
    state = final_student(out)
    assert 3 <= state["step"] < 100000
    Bert(BertConfig(**state["model_config"])).load_state_dict(state["model"])


def test_nonfinite_steps_are_skipped_then_stop(setup, tmp_path, monkeypatch):
    root, _ = setup
    calls = {"n": 0}
    real_cos = L.cosine_loss

    def sometimes_nan(*a, **k):
        calls["n"] += 1
        value = real_cos(*a, **k)
        return value * float("nan") if calls["n"] in (3, 4) else value  # both micro-steps of step 2
    monkeypatch.setattr(L, "cosine_loss", sometimes_nan)
    result = T.train(T.parse_args(args(root, tmp_path / "nan1", max_steps=4)))
    assert result["skipped"] == 1 and result["step"] == 4
    state = final_student(tmp_path / "nan1")
    assert all(torch.isfinite(v).all() for v in state["model"].values())

    monkeypatch.setattr(L, "cosine_loss", lambda *a, **k: real_cos(*a, **k) * (float("nan") if calls["n"] > 0 else 1))
    calls["n"] = 0
    good = T.train(T.parse_args(args(root, tmp_path / "nan2", max_steps=2, save_every=2)))
    assert good["step"] == 2
    before = (tmp_path / "nan2" / "ckpt-0000002.pt").read_bytes()
    calls["n"] = 1
    with pytest.raises(SystemExit, match="non-finite steps in a row"):
        T.train(T.parse_args(args(root, tmp_path / "nan2", max_steps=8, save_every=2, max_nonfinite=3, resume=True,
                                  resume_changes="max_steps")))
    assert (tmp_path / "nan2" / "ckpt-0000002.pt").read_bytes() == before


def test_mismatched_or_missing_teacher_is_refused(setup, tmp_path):
    root, data = setup
    other = Bert(BertConfig(vocab_size=data.vocab_size + 7, hidden_size=32, num_layers=2, num_heads=2,
                            intermediate_size=64, max_position=64))
    save_pretrained(other, tmp_path / "other")
    with pytest.raises(SystemExit, match="vocabulary mismatch"):
        T.train(T.parse_args(args(root, tmp_path / "x", teacher=tmp_path / "other")))
    with pytest.raises(SystemExit, match="(?s)not found.*--mode=mlm"):
        T.train(T.parse_args(args(root, tmp_path / "y", teacher=tmp_path / "nowhere")))
    assert not (tmp_path / "x" / "ckpt-0000001.pt").exists()


def test_fused_objective_equals_plain_formulas(setup):
    """ce_chunk > 0 (fused, chunked vocabulary pass) gives the losses and gradients of ce_chunk=0 (full logits)."""
    teacher, student, objective, cfg = pair(setup)
    b = batch(setup[1], B=5)
    sums_fused, _, _ = T.forward_backward(T.Objective(student, teacher, T.TrainConfig(ce_chunk=7)), teacher, [b], cfg)
    fused = grads(student)
    student.zero_grad()
    sums_plain, _, _ = T.forward_backward(T.Objective(student, teacher, T.TrainConfig(ce_chunk=0)), teacher, [b], cfg)
    plain = grads(student)
    for k in ("ce", "mlm", "cos", "total"):
        assert torch.allclose(sums_fused[k], sums_plain[k], rtol=1e-5), k
    for k in plain:
        assert torch.allclose(fused[k], plain[k], atol=1e-6, rtol=1e-4), k


@pytest.mark.parametrize("head_only", [False, True])
def test_mlm_mode_fused_equals_plain_formulas(setup, head_only):
    """mlm mode (L_mlm alone) through the fused head (ce_chunk > 0, the masked rows only, in chunks) gives the loss
    and gradients of ce_chunk=0 (the MLM head on the masked rows, losses.mlm_loss); in head-only steps the encoder
    and the tied decoder get no gradient either way."""
    teacher, student, _, _ = pair(setup)
    b = batch(setup[1], B=5)
    results = {}
    for chunk in (7, 0):
        cfg = T.TrainConfig(mode="mlm", ce_chunk=chunk)
        objective = T.Objective(student, None, cfg)
        objective.head_only = head_only
        student.zero_grad(set_to_none=True)
        sums, _, _ = T.forward_backward(objective, None, [b], cfg)
        results[chunk] = sums, grads(student)
    (fused, g_fused), (plain, g_plain) = results[7], results[0]
    assert set(fused) == set(plain) == {"mlm", "total"} and torch.allclose(fused["mlm"], plain["mlm"], rtol=1e-6)
    assert set(g_fused) == set(g_plain)
    if head_only:
        assert set(g_plain) == {"head.dense.weight", "head.dense.bias", "head.ln.weight", "head.ln.bias", "head.bias"}
    for k in g_plain:
        assert torch.allclose(g_fused[k], g_plain[k], atol=1e-6, rtol=1e-4), k


def test_headless_teacher_is_refused_in_distill_mode(setup, tmp_path, capsys):
    """A BertModel teacher (no MLM head) would give L_ce a random head to distil: --mode=distill refuses it in
    one line that says how to give it a head; from_pretrained says so with a warning (not an unconfigured
    log); --mode=mlm --init=pretrained takes it and says that the head is new."""
    root, data = setup
    folder = bertmodel_folder(root, data, tmp_path)
    with pytest.warns(UserWarning, match="without a masked-LM head.*initialised randomly"):
        load_pretrained(folder)
    with pytest.raises(SystemExit) as e:
        T.train(T.parse_args(args(root, tmp_path / "d", teacher=folder)))
    msg = str(e.value)
    assert "\n" not in msg and f"--teacher={folder}" in msg and "without a masked-LM head" in msg, msg
    assert "--mode=mlm --init=pretrained" in msg and "--head_steps" in msg, msg
    assert not (tmp_path / "d" / "ckpt-0000004.pt").exists()
    T.train(T.parse_args(args(root, tmp_path / "m", mode="mlm", init="pretrained", teacher=folder, max_steps=1)))
    assert "gets a fresh one" in capsys.readouterr().out
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a teacher with its head loads without a warning
        load_pretrained(tmp_path / "m" / "model")


def test_pretrained_init_trains_head_first_then_everything(setup, tmp_path):
    """--init=pretrained --head_steps=N on a checkpoint without MLM head (a BertModel with a pooler): during the first
    N steps only the head moves (the encoder and the tied decoder stay as loaded), afterwards the encoder moves too;
    the pooler and the token types are kept."""
    root, data = setup
    folder = bertmodel_folder(root, data, tmp_path)
    loaded = load_pretrained(folder)

    def run(steps, out):
        T.train(T.parse_args(args(root, out, mode="mlm", init="pretrained", teacher=folder, max_steps=steps,
                                  head_steps=2, head_lr=1e-2, lr=1e-2, warmup=0)))
        return load_pretrained(out / "model").state_dict()
    before, head, after = loaded.state_dict(), run(2, tmp_path / "a"), run(4, tmp_path / "b")
    moved = lambda sd, k: (sd[k] - before[k]).abs().max().item() > 0
    assert all(moved(head, k) for k in ("head.dense.weight", "head.ln.weight", "head.bias"))
    assert not any(moved(head, k) for k in before if not k.startswith("head."))
    assert moved(after, "layers.0.qkv.weight") and moved(after, "emb.word.weight") and moved(after, "emb.types.weight")
    assert not moved(after, "pooler.weight")


def test_freeze_pos_embs_keeps_the_copied_positions(setup, tmp_path, capsys):
    """--freeze_pos_embs (the default, as the released model): after training steps the student's position
    embeddings are still the teacher's (with the token-type fold), while everything else moved; with
    --freeze_pos_embs=false they move too. Resuming with the other setting is refused."""
    root, _ = setup
    start = student_from_teacher(load_pretrained(root / "teacher")).state_dict()
    runs = {}
    for freeze in (True, False):
        T.train(T.parse_args(args(root, tmp_path / str(freeze), max_steps=3, lr=1e-2, warmup=0,
                                  freeze_pos_embs=freeze, dtype="float32")))
        runs[freeze] = final_student(tmp_path / str(freeze))["model"]
    assert "trainable parameters (2,048 frozen)" in capsys.readouterr().out  # 64 positions x 32
    assert torch.equal(runs[True]["emb.pos.weight"], start["emb.pos.weight"])
    assert (runs[False]["emb.pos.weight"] - start["emb.pos.weight"]).abs().max() > 1e-3
    for sd in runs.values():
        assert (sd["emb.word.weight"] - start["emb.word.weight"]).abs().max() > 1e-3
        assert (sd["layers.0.qkv.weight"] - start["layers.0.qkv.weight"]).abs().max() > 1e-3
    exported = load_pretrained(tmp_path / "True" / "student").state_dict()
    assert torch.equal(exported["emb.pos.weight"], start["emb.pos.weight"])
    with pytest.raises(SystemExit, match="position embeddings were frozen: resume it with --freeze_pos_embs=true"):
        T.train(T.parse_args(args(root, tmp_path / "True", max_steps=4, lr=1e-2, warmup=0, resume=True,
                                  freeze_pos_embs=False)))
    assert quickstart.PRESET["freeze_pos_embs"] is False and T.TrainConfig().freeze_pos_embs is True


def test_lr_schedule_values():
    cfg = T.TrainConfig(mode="mlm", lr=1.0, warmup=0.25, head_steps=2, head_lr=0.5)
    # 2 head steps at 0.5, then 8 steps: 2 of warm-up (0, 0.5), peak 1.0, linear decay to 0 over the remaining 6
    got = [T.lr_at(s, 10, cfg) for s in range(10)]
    want = [0.5, 0.5, 0.0, 0.5, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6]
    assert got == pytest.approx(want)


def test_alpha_mse_is_the_reference_logit_mse(setup):
    """alpha_mse adds alpha_mse * nn.MSELoss(reduction="sum")(s, t) / rows over the L_ce rows, as the
    reference distiller; the fused path (ce_chunk > 0) gives the loss and gradients of the plain one."""
    teacher, student, _, _ = pair(setup)
    b = batch(setup[1], B=5)
    ids, am, _ = b
    with torch.no_grad():
        real = am.bool()
        s = student.mlm_logits(student(ids, attention_mask=am, return_logits=False).hidden_states[-1][real])
        t = teacher.mlm_logits(teacher(ids, attention_mask=am, return_logits=False).hidden_states[-1][real])
        want = torch.nn.MSELoss(reduction="sum")(s, t) / real.sum()
    results = {}
    for chunk in (0, 7):
        for mse in (0.0, 50.0):  # large: the students start close to the teacher (fold)
            cfg = T.TrainConfig(ce_chunk=chunk, alpha_mse=mse)
            student.zero_grad()
            sums, _, _ = T.forward_backward(T.Objective(student, teacher, cfg), teacher, [b], cfg)
            results[chunk, mse] = sums, grads(student)
    for chunk in (0, 7):
        sums = results[chunk, 50.0][0]
        assert torch.allclose(sums["mse"], want, rtol=1e-5), chunk
        assert torch.allclose(sums["total"] - results[chunk, 0.0][0]["total"], 50.0 * want, rtol=1e-3), chunk
        assert "mse" not in results[chunk, 0.0][0]
    for k, g in results[0, 50.0][1].items():  # float32 summation order: errors ~1e-6 of the largest entry
        assert torch.allclose(results[7, 50.0][1][k], g, atol=1e-5 * float(g.abs().max()), rtol=1e-4), k


def test_help_names_the_released_layers():
    out = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert "--student_layers=0,2,4,7,9,11" in out.stdout and "0,2,4,6,8,10" in out.stdout
    cfg = T.parse_args(["--preset=bert-base", "--student_layers=0,2,4,7,9,11"])
    assert cfg.student_layers == "0,2,4,7,9,11"


def test_quickstart_help_is_the_quickstarts():
    out = subprocess.run([sys.executable, "quickstart.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.lstrip().startswith("The quickstart:"), out.stdout[:200]
    assert "--dtype=" in out.stdout  # train.py's settings follow


def test_signal_during_nonfinite_steps_still_stops(setup, tmp_path, monkeypatch):
    """A skipped (non-finite) step also shares the stop flag: SIGTERM during step 2, whose loss is NaN, stops the
    run after it, instead of skipping until --max_nonfinite. The skipped step counts as a step (the optimizer
    skipped it on the device, as the GradScaler skips float16 steps): its checkpoint holds step 1's
    parameters."""
    root, _ = setup
    calls = {"n": 0}
    real_cos = L.cosine_loss

    def nan_and_signal(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # the first micro-step of step 2 (2 micro-steps per step)
            os.kill(os.getpid(), signal.SIGTERM)
        value = real_cos(*a, **k)
        return value * float("nan") if calls["n"] >= 3 else value
    monkeypatch.setattr(L, "cosine_loss", nan_and_signal)
    result = T.train(T.parse_args(args(root, tmp_path / "sig-nan", max_steps=50, max_nonfinite=5, save_every=1)))
    assert result["stopped"] and result["step"] == 2 and result["skipped"] == 1
    ckpts = sorted((tmp_path / "sig-nan").glob("ckpt-*.pt"))
    assert [c.name for c in ckpts] == ["ckpt-0000001.pt", "ckpt-0000002.pt"]
    one, two = (torch.load(c, weights_only=True) for c in ckpts)
    assert two["skipped"] == 1 and all(torch.equal(v, two["model"][k]) for k, v in one["model"].items())


def test_the_banner_says_what_differs_and_metrics_hold_the_whole_config(setup, tmp_path, capsys):
    """Issue 44: every stage printed its whole config as one JSON line (a 6 x 384 student's `"hidden": 768`
    among it). The banner names the settings that differ from the defaults, of those the run reads; the tiny
    preset's model shape is not read by a distillation (init=teacher), so it is not shown; metrics.jsonl's first
    row holds every setting."""
    root, _ = setup
    T.train(T.parse_args(args(root, tmp_path / "a", max_steps=2)))
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("settings: "))
    assert "--max_steps=2" in line and "--micro_batch=4" in line and "--preset=tiny" in line
    assert "--hidden=" not in line and "--layers=" not in line and '"config"' not in out
    first = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0 and first["config"]["hidden"] == 64 and first["config"]["max_steps"] == 2
