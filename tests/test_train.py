"""train.py: the update is right (teacher frozen, accumulation exact, DDP equal to one process), runs resume exactly,
signals leave a checkpoint, non-finite losses are handled, and the command line refuses what it does not know."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import data as D
import losses as L
import train as T
from model import Bert, BertConfig, student_from_teacher

ROOT = Path(__file__).resolve().parents[1]
CORPUS = "\n\n".join(
    f"Document {i}. The {w} sat on the mat while the {v} watched from the window, and nobody said a word about "
    f"the {w} or the {v} until evening came and the lamps were lit along the quiet street number {i}."
    for i, (w, v) in enumerate([(a, b) for a in ["cat", "dog", "bird", "fox", "owl", "hen"] for b in
                                ["child", "farmer", "teacher", "sailor", "baker", "doctor"]]))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A prepared corpus and a tiny teacher (no dropout, so runs on different rank counts are comparable)."""
    root = tmp_path_factory.mktemp("train")
    (root / "corpus.txt").write_text(CORPUS * 3)
    D.prepare([str(root / "corpus.txt")], root / "data", vocab_size=200, valid_fraction=0.1)
    data = D.TokenData(root / "data")
    torch.manual_seed(0)
    teacher = Bert(BertConfig(vocab_size=data.vocab_size, hidden_size=32, num_layers=4, num_heads=2,
                              intermediate_size=64, max_position=64, dropout=0.0, attention_dropout=0.0))
    teacher.save_pretrained(root / "teacher", tokenizer_files=[root / "data" / "vocab.txt"])
    noisy = Bert(BertConfig(vocab_size=data.vocab_size, hidden_size=32, num_layers=4, num_heads=2,
                            intermediate_size=64, max_position=64))  # with dropout, to test RNG restore
    noisy.save_pretrained(root / "teacher-dropout", tokenizer_files=[root / "data" / "vocab.txt"])
    return root, data


def args(root, out, **kw):
    base = dict(preset="tiny", data=root / "data", teacher=root / "teacher", out_dir=out, max_steps=4, max_len=32,
                micro_batch=4, batch_size=8)
    return [f"--{k}={v}" for k, v in {**base, **kw}.items()]


def batch(data, B=6, Lmax=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, data.vocab_size, (B, Lmax), generator=g)
    lengths = torch.randint(8, Lmax + 1, (B,), generator=g)
    am = (torch.arange(Lmax)[None] < lengths[:, None]).long()
    ids[:, 0] = data.special["cls"]
    ids[torch.arange(B), lengths - 1] = data.special["sep"]
    ids[am == 0] = data.special["pad"]
    masked, labels = D.mask_tokens(ids, am, mask_id=data.special["mask"], vocab_size=data.vocab_size,
                                   special_ids=data.special, generator=g, mlm_prob=0.3)
    return masked, am, labels


def pair(setup):
    root, data = setup
    teacher = Bert.from_pretrained(root / "teacher").requires_grad_(False)
    student = student_from_teacher(teacher)
    cfg = T.TrainConfig()
    return teacher, student, T.Objective(student, teacher, cfg), cfg


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


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
    for bad, msg in [(["--nope=1"], "unknown setting --nope"), (["--lr=fast"], "--lr=fast: expected a float"),
                     (["--epochs=2.5"], "expected a int"), (["--resume=maybe"], "expected a bool"),
                     (["lr=1"], "expected --key=value"), (["--preset=huge"], "unknown preset")]:
        with pytest.raises(SystemExit, match=msg):
            T.parse_args(bad)


def test_help_lists_every_setting():
    out = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for name in ("alpha_ce", "temperature", "micro_batch", "resume", "ce_positions"):
        assert f"--{name}=" in out.stdout


def final_student(out):
    ckpt = sorted(Path(out).glob("ckpt-*.pt"))[-1]
    return torch.load(ckpt, map_location="cpu", weights_only=True)


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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_ranks_equals_one_process(setup, tmp_path):
    root, _ = setup
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    one = subprocess.run([sys.executable, "train.py", *args(root, tmp_path / "one", max_steps=3)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={free_port()}", "train.py", *args(root, tmp_path / "two", max_steps=3)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 rank(s) x 4 sequences x 1 micro-steps" in two.stdout and "1 rank(s) x 4 sequences x 2" in one.stdout
    a, b = final_student(tmp_path / "one"), final_student(tmp_path / "two")
    worst = max((a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"])
    moved = max((a["model"][k] - v).abs().max().item() for k, v in
                student_from_teacher(Bert.from_pretrained(root / "teacher")).state_dict().items())
    assert worst < 1e-5 and moved > 1e-4, (worst, moved)
    assert len(b["rng"]) == 2  # every rank's RNG state is saved
    # only rank 0 wrote: one metrics file, one exported student
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert sum('"step": 3,' in l and "total" in l for l in lines) == 1


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
    assert proc.returncode == 0, stderr[-2000:]
    assert "stopped by signal" in stdout
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
        T.train(T.parse_args(args(root, tmp_path / "nan2", max_steps=8, save_every=2, max_nonfinite=3, resume=True)))
    assert (tmp_path / "nan2" / "ckpt-0000002.pt").read_bytes() == before


def test_mismatched_or_missing_teacher_is_refused(setup, tmp_path):
    root, data = setup
    other = Bert(BertConfig(vocab_size=data.vocab_size + 7, hidden_size=32, num_layers=2, num_heads=2,
                            intermediate_size=64, max_position=64))
    other.save_pretrained(tmp_path / "other")
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


def test_auto_dtype_fp16_without_native_bf16(monkeypatch):
    """--dtype=auto: bf16 only from compute capability 8.0 (native), fp16 + GradScaler below (V100 7.0, T4
    7.5), even where torch.cuda.is_bf16_supported() counts emulation; float32 on the CPU."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulation counts as support
    for capability, want in [((7, 0), torch.float16), ((7, 5), torch.float16), ((8, 0), torch.bfloat16),
                             ((9, 0), torch.bfloat16)]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, c=capability: c)
        assert T.auto_dtype(torch.device("cuda:0")) == want, capability
    assert T.auto_dtype(torch.device("cpu")) == torch.float32


def test_teacher_dtype_honours_float32():
    cuda, cpu = torch.device("cuda:0"), torch.device("cpu")
    assert T.teacher_dtype(T.TrainConfig(), cuda, torch.float32) == torch.float32
    assert T.teacher_dtype(T.TrainConfig(), cuda, torch.float16) == torch.float16
    assert T.teacher_dtype(T.TrainConfig(), cuda, torch.bfloat16) == torch.bfloat16
    assert T.teacher_dtype(T.TrainConfig(teacher_half=False), cuda, torch.bfloat16) == torch.float32
    assert T.teacher_dtype(T.TrainConfig(), cpu, torch.bfloat16) == torch.float32


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
        for mse in (0.0, 0.5):
            cfg = T.TrainConfig(ce_chunk=chunk, alpha_mse=mse)
            student.zero_grad()
            sums, _, _ = T.forward_backward(T.Objective(student, teacher, cfg), teacher, [b], cfg)
            results[chunk, mse] = sums, grads(student)
    for chunk in (0, 7):
        sums = results[chunk, 0.5][0]
        assert torch.allclose(sums["mse"], want, rtol=1e-5), chunk
        assert torch.allclose(sums["total"] - results[chunk, 0.0][0]["total"], 0.5 * want, rtol=1e-4), chunk
        assert "mse" not in results[chunk, 0.0][0]
    for k, g in results[0, 0.5][1].items():
        assert torch.allclose(results[7, 0.5][1][k], g, atol=1e-6, rtol=1e-4), k


def test_help_names_the_released_layers():
    out = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert "--student_layers=0,2,4,7,9,11" in out.stdout and "0,2,4,6,8,10" in out.stdout
    cfg = T.parse_args(["--preset=bert-base", "--student_layers=0,2,4,7,9,11"])
    assert cfg.student_layers == "0,2,4,7,9,11"


DRIVER = """
import os, signal, sys
sys.path.insert(0, {root!r})
import train as T
real_evaluate = T.evaluate

def evaluate(*a, **k):  # rank 1: SIGTERM during the first evaluation, after that step's all-reduced stop flag
    out = real_evaluate(*a, **k)
    if os.environ["RANK"] == "1" and not os.path.exists({flag!r}):
        open({flag!r}, "w").close()
        os.kill(os.getpid(), signal.SIGTERM)
    return out
T.evaluate = evaluate
T.train(T.parse_args(sys.argv[1:]))
"""


def test_ddp_signal_on_one_rank_stops_every_rank_at_the_same_step(setup, tmp_path):
    """Two gloo ranks (launched here as torchrun would: RANK, WORLD_SIZE, MASTER_ADDR/PORT); a SIGTERM reaches
    rank 1 alone while the ranks evaluate after step 2, i.e. after that step's all-reduced stop flag. Both
    ranks must run step 3, see the flag there and stop together: one checkpoint (step 3), no hang, exit code
    0."""
    root, _ = setup
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(root=str(ROOT), flag=str(tmp_path / "signalled")))
    out, port = tmp_path / "ddp-sig", free_port()
    argv = [sys.executable, str(driver), *args(root, out, max_steps=50, eval_every=2, save_every=100000)]
    procs = []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        log = open(tmp_path / f"rank{rank}.log", "w")
        procs.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        log.close()
    deadline = time.time() + 150
    while time.time() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.5)
    hung = [p.pid for p in procs if p.poll() is None]
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    logs = [(tmp_path / f"rank{r}.log").read_text() for r in range(2)]
    assert not hung, f"ranks hung after a signal reached one of them:\n{logs[0][-1500:]}\n{logs[1][-1500:]}"
    assert [p.returncode for p in procs] == [0, 0], logs[0][-1500:] + logs[1][-1500:]
    assert (tmp_path / "signalled").exists() and "stopped by signal" in logs[0]
    ckpts = sorted(out.glob("ckpt-*.pt"))
    assert [c.name for c in ckpts] == ["ckpt-0000003.pt"], ckpts
    assert final_student(out)["step"] == 3


def test_signal_during_nonfinite_steps_still_stops(setup, tmp_path, monkeypatch):
    """A skipped (non-finite) step also shares the stop flag: SIGTERM during step 2, whose loss is NaN, stops the
    run there with a checkpoint of step 1, instead of skipping until --max_nonfinite."""
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
    result = T.train(T.parse_args(args(root, tmp_path / "sig-nan", max_steps=50, max_nonfinite=5)))
    assert result["stopped"] and result["step"] == 1 and result["skipped"] == 1
    assert [c.name for c in (tmp_path / "sig-nan").glob("ckpt-*.pt")] == ["ckpt-0000001.pt"]
