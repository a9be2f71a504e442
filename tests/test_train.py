"""train.py: the update is right (teacher frozen, accumulation exact, DDP equal to one process), runs resume exactly,
signals leave a checkpoint, non-finite losses are handled, and the command line refuses what it does not know."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from corpus import prepare
from data import TokenData, mask_tokens
from machinery.tokenizer import load_tokenizer
import losses as L
from machinery import checkpoint, device
from machinery.hf import load_pretrained, save_pretrained
import train as T
from conftest import lock_held_by_another_process
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
    prepare([str(root / "corpus.txt")], root / "data", vocab_size=200, valid_fraction=0.1)
    data = TokenData(root / "data")
    torch.manual_seed(0)
    teacher = Bert(BertConfig(vocab_size=data.vocab_size, hidden_size=32, num_layers=4, num_heads=2,
                              intermediate_size=64, max_position=64, dropout=0.0, attention_dropout=0.0))
    save_pretrained(teacher, root / "teacher", tokenizer_files=[root / "data" / "vocab.txt"])
    noisy = Bert(BertConfig(vocab_size=data.vocab_size, hidden_size=32, num_layers=4, num_heads=2,
                            intermediate_size=64, max_position=64))  # with dropout, to test RNG restore
    save_pretrained(noisy, root / "teacher-dropout", tokenizer_files=[root / "data" / "vocab.txt"])
    return root, data


def args(root, out, **kw):
    base = dict(preset="tiny", data=root / "data", teacher=root / "teacher", out_dir=out, max_steps=4, max_len=32,
                dtype="float32",  # --dtype=auto probes the CPU: runs compared must not depend on it
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
    masked, labels = mask_tokens(ids, am, mask_id=data.special["mask"], vocab_size=data.vocab_size,
                                   special_ids=data.special, generator=g, mlm_prob=0.3)
    return masked, am, labels


def pair(setup):
    root, data = setup
    teacher = load_pretrained(root / "teacher").requires_grad_(False)
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


def final_student(out):
    ckpt = sorted(Path(out).glob("ckpt-*.pt"))[-1]
    return torch.load(ckpt, map_location="cpu", weights_only=True)


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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
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
                student_from_teacher(load_pretrained(root / "teacher")).state_dict().items())
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


def bertmodel_folder(root, data, tmp_path):
    """A BertModel checkpoint (as MiniLM's): a BERT with a pooler, saved without its MLM head."""
    torch.manual_seed(1)
    src = Bert(BertConfig(vocab_size=data.vocab_size, hidden_size=32, num_layers=2, num_heads=2,
                          intermediate_size=64, max_position=64, pooler=True))
    save_pretrained(src, tmp_path / "bertmodel-src", tokenizer_files=[root / "data" / "vocab.txt"])
    from safetensors.torch import load_file, save_file
    folder = tmp_path / "bertmodel"
    folder.mkdir()
    sd = load_file(str(tmp_path / "bertmodel-src" / "model.safetensors"))
    save_file({k[len("bert."):]: v for k, v in sd.items() if k.startswith("bert.")}, str(folder / "model.safetensors"))
    cfg = json.loads((tmp_path / "bertmodel-src" / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "architectures": ["BertModel"]}))
    (folder / "vocab.txt").write_text((root / "data" / "vocab.txt").read_text())
    return folder


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
    assert T.PRESETS["quickstart"]["freeze_pos_embs"] is False and T.TrainConfig().freeze_pos_embs is True


def test_lr_schedule_values():
    cfg = T.TrainConfig(lr=1.0, warmup=0.25, head_steps=2, head_lr=0.5)
    # 2 head steps at 0.5, then 8 steps: 2 of warm-up (0, 0.5), peak 1.0, linear decay to 0 over the remaining 6
    got = [T.lr_at(s, 10, cfg) for s in range(10)]
    want = [0.5, 0.5, 0.0, 0.5, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6]
    assert got == pytest.approx(want)


def test_auto_dtype_on_cpu_follows_the_probe(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "bf16_speedup", lambda: 3.5)
    assert device.auto_dtype(cpu)[0] == torch.bfloat16
    monkeypatch.setattr(device, "bf16_speedup", lambda: 0.3)
    assert device.auto_dtype(cpu)[0] == torch.float32


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


def ckpt_names(out):
    return sorted(p.name for p in Path(out).glob("ckpt-*"))


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


def damage(path, how):
    raw = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(raw[:len(raw) // 2]))
    else:  # 4 KB overwritten in the middle (the zip container still reads: only the checksum can tell)
        mid = len(raw) // 2
        raw[mid:mid + 4096] = bytes(4096)
        path.write_bytes(bytes(raw))


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
    assert steps == [1, 2, 3, 4, 5, 6, 6]  # every training row once, then the final evaluation's row


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


def test_auto_dtype_fp16_without_native_bf16(monkeypatch):
    """--dtype=auto: bf16 only from compute capability 8.0 (native), fp16 + GradScaler below (V100 7.0, T4
    7.5), even where torch.cuda.is_bf16_supported() counts emulation."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulation counts as support
    for capability, want in [((7, 0), torch.float16), ((7, 5), torch.float16), ((8, 0), torch.bfloat16),
                             ((9, 0), torch.bfloat16)]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, c=capability: c)
        assert device.auto_dtype(torch.device("cuda:0"))[0] == want, capability


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


def test_ddp_signal_on_one_rank_stops_every_rank_at_the_same_step(setup, tmp_path):
    """Two gloo ranks (launched here as torchrun would: RANK, WORLD_SIZE, MASTER_ADDR/PORT); a SIGTERM reaches
    rank 1 alone while the ranks evaluate after step 2, i.e. after that step's all-reduced stop flag. Both
    ranks must run step 3, see the flag there and stop together: one checkpoint (step 3), no hang, exit code
    0."""
    root, _ = setup
    driver = tmp_path / "driver.py"
    driver.write_text(SIGNAL_RANK.format(rank=1, root=str(ROOT), flag=str(tmp_path / "signalled")))
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


# ------------------------------------------------------------------------------------------------------------
# The full run's launch, simulated on the CPU: 8 ranks on one node, and 2 nodes of 2 ranks (gloo)

def launch_env():
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def torchrun(*flags, script="train.py", argv=()):
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *flags, script, *map(str, argv)],
                            cwd=ROOT, env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(proc, timeout=420):
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"torchrun hung:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    return out


def max_param_diff(a, b):
    return max((a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"])


SIGNAL_RANK = """
import os, signal, sys
sys.path.insert(0, {root!r})
import train as T
from machinery.hf import load_pretrained, save_pretrained
real_evaluate = T.evaluate

def evaluate(*a, **k):  # rank {rank}: SIGTERM during the first evaluation (after step 2)
    out = real_evaluate(*a, **k)
    if os.environ["RANK"] == "{rank}" and not os.path.exists({flag!r}):
        open({flag!r}, "w").close()
        os.kill(os.getpid(), signal.SIGTERM)
    return out
T.evaluate = evaluate
T.train(T.parse_args(sys.argv[1:]))
"""


@pytest.mark.slow
def test_torchrun_eight_ranks_equals_one_process_and_resumes_after_sigterm(setup, tmp_path):
    """The README's `torchrun --nproc_per_node=8 train.py` with gloo: 8 ranks x micro-batch 2 x 1 micro-step
    give the parameters of 1 process x micro-batch 2 x 8 micro-steps on the same global batches of 16 after 4
    steps. Then a SIGTERM to rank 5 alone during the evaluation after step 2: every rank stops after step 3
    with a checkpoint, exit code 0; the same command with --resume=true runs step 4 and reaches the
    uninterrupted parameters."""
    root, _ = setup
    # float32: the comparison is then of the accumulation arithmetic, not of bf16 autocast's rounding
    common = dict(max_steps=4, micro_batch=2, batch_size=16, eval_every=2, eval_batches=2, save_every=100,
                  dtype="float32")
    T.train(T.parse_args(args(root, tmp_path / "one", **common)))
    one = final_student(tmp_path / "one")
    eight = finished(torchrun("--nproc_per_node=8", f"--master_port={free_port()}",
                              argv=args(root, tmp_path / "eight", **common)))
    assert "8 rank(s) x 2 sequences x 1 micro-steps" in eight, eight[-2000:]
    got = final_student(tmp_path / "eight")
    worst = max_param_diff(one, got)
    moved = max((one["model"][k] - v).abs().max().item() for k, v in
                student_from_teacher(load_pretrained(root / "teacher")).state_dict().items())
    print(f"8 ranks vs 1 process after 4 steps: max |parameter difference| {worst:.3g} (moved {moved:.3g})")
    assert got["step"] == 4 and len(got["rng"]) == 8 and worst < 1e-5 and moved > 1e-4, (worst, moved)

    driver = tmp_path / "driver.py"
    driver.write_text(SIGNAL_RANK.format(root=str(ROOT), rank=5, flag=str(tmp_path / "signalled")))
    out = tmp_path / "eight-sig"
    stopped = finished(torchrun("--nproc_per_node=8", f"--master_port={free_port()}", script=str(driver),
                                argv=args(root, out, **common)))
    assert (tmp_path / "signalled").exists() and "stopped by signal" in stopped, stopped[-2000:]
    assert [c.name for c in sorted(out.glob("ckpt-*.pt"))] == ["ckpt-0000003.pt"]
    finished(torchrun("--nproc_per_node=8", f"--master_port={free_port()}",
                      argv=args(root, out, **common, resume=True)))
    resumed = final_student(out)
    worst_resumed = max_param_diff(one, resumed)
    print(f"8 ranks, SIGTERM to rank 5 at step 3, resumed to step 4, vs 1 process: {worst_resumed:.3g}")
    assert resumed["step"] == 4 and worst_resumed < 1e-5, worst_resumed
    assert max_param_diff(got, resumed) < 1e-6  # and the uninterrupted 8-rank run (float32 rounding apart)


@pytest.mark.slow
def test_two_nodes_of_two_ranks_with_c10d_equal_one_process(setup, tmp_path):
    """The README's multi-node command: two torchrun launchers (as on two machines) meet through the c10d
    rendezvous on localhost, 2 nodes x 2 ranks x micro-batch 2 x 2 micro-steps; their parameters after 3
    steps equal 1 process x micro-batch 2 x 8 micro-steps."""
    root, _ = setup
    common = dict(max_steps=3, micro_batch=2, batch_size=16, dtype="float32")
    T.train(T.parse_args(args(root, tmp_path / "one", **common)))
    port = free_port()
    nodes = [torchrun("--nnodes=2", "--nproc_per_node=2", "--rdzv_backend=c10d",
                      f"--rdzv_endpoint=localhost:{port}", "--rdzv_id=two-nodes", f"--node_rank={n}",
                      argv=args(root, tmp_path / "two-nodes", **common)) for n in range(2)]
    logs = [finished(p) for p in nodes]
    assert any("4 rank(s) x 2 sequences x 2 micro-steps" in log for log in logs), logs[0][-2000:]
    got = final_student(tmp_path / "two-nodes")
    worst = max_param_diff(final_student(tmp_path / "one"), got)
    print(f"2 nodes x 2 ranks vs 1 process after 3 steps: max |parameter difference| {worst:.3g}")
    assert got["step"] == 3 and len(got["rng"]) == 4 and worst < 1e-5, worst


# ------------------------------------------------------------------------------------------------------------
# A step that never waits for the device (issue 40): counted on the CPU (syncs.SyncCounter), run on `meta`

def step_inputs(setup, tmp_path, **kw):
    """A built run (train.build) and two steps' micro-batches made on the host as train.py makes them."""
    root, _ = setup
    run = T.build(T.parse_args(args(root, tmp_path / "out", **kw)))
    stream = T.micro_batches(run.loader)
    return run, [T.host_batches(run, [next(stream) for _ in range(run.accum)]) for _ in range(2)]


@pytest.mark.parametrize("kw", [{}, dict(ce_chunk=8, alpha_mse=1.0), dict(ce_positions="masked"),
                                dict(mode="mlm", init="scratch"), dict(mode="mlm", init="teacher", head_steps=1),
                                dict(dtype="bfloat16")])
def test_a_step_has_no_operation_that_waits_for_the_device(setup, tmp_path, kw):
    """Issue 40: about 50 operations per micro-batch made the host wait for the GPU (boolean indexing in the
    losses and the fused head's chunks, the masking, .tolist()/.item()). Counted here on the CPU, where every
    tensor counts: forward_backward with the loader's host counts, and the whole train_step (the copies, the
    optimizer step with its skip decided on the device, the stop flag), 0 per micro-step. Without the host
    counts forward_backward counts the tokens itself, and the counter sees it: it can fail."""
    from syncs import SyncCounter
    run, (first, second) = step_inputs(setup, tmp_path, micro_batch=2, batch_size=4, **kw)
    batches, padded, counts = T.on_device(run, first)
    assert len(batches) == 2 and all(isinstance(n, int) for c in counts for n in c)
    with SyncCounter("cpu") as c:
        T.forward_backward(run.wrapped, run.teacher, batches, run.cfg, run.autocast, run.scaler, padded=padded,
                           counts=counts)
    assert c.found == [], c.found
    with SyncCounter("cpu") as c:
        T.forward_backward(run.wrapped, run.teacher, batches, run.cfg, run.autocast, run.scaler, padded=padded)
    assert len(c.found) >= 2 * len(batches), c.found  # int(am.sum()), int(...) per micro-batch
    run.optimizer.zero_grad(set_to_none=True)
    skipped, stop = T.NonFinite(run.device), T.StopSignal()
    try:
        with SyncCounter("cpu") as c:
            sums, lr, norm, n_real, stopping = T.train_step(run, second, skipped, stop)
    finally:
        stop.restore()
    assert c.found == [], c.found
    assert run.step == 1 and not stopping and n_real == sum(r for r, _ in T.on_device(run, second)[2])
    assert torch.isfinite(norm) and all(torch.isfinite(v) for v in sums.values())


def test_the_counter_sees_what_waits():
    """syncs.SyncCounter, by hand: each kind of operation that waits, once; what does not wait, never."""
    from syncs import SyncCounter
    x, rows = torch.randn(6, 3), torch.tensor([0, 2])
    with SyncCounter("cpu") as c:
        x.index_select(0, rows), x[rows], x[1:3], torch.argsort(x[:, 0], stable=True), x.sum() / 2
    assert c.found == []
    with SyncCounter("cpu") as c:
        mask = x[:, 0] > 0
        x[mask], x.sum().item(), bool(x.sum() > 0), x.tolist(), mask.nonzero(), torch.masked_select(x, x > 0)
        x[mask] = 0.0
    assert [what for what, _ in c.found] == ["index with a boolean index", "Tensor.item", "Tensor.__bool__",
                                             "Tensor.tolist", "nonzero", "masked_select",
                                             "index_put_ with a boolean index"], c.found
    assert all(where.startswith("test_train.py:") for _, where in c.found)
    with SyncCounter("meta") as c:  # another device's tensors do not count
        x.sum().item()
    assert c.found == []


def test_forward_backward_runs_on_the_meta_device(setup):
    """Issue 40: forward_backward could not run on `meta` (tensors without values: any read of one fails), at
    the token counts and the boolean indexing. With the host's counts and padding it runs there, in distill and
    mlm mode, with several chunks of the fused head."""
    root, data = setup
    teacher = load_pretrained(root / "teacher").requires_grad_(False)
    batches = [batch(data, B=3, seed=s) for s in range(2)]
    counts = [(int(am.sum()), int((lb != -100).sum())) for _, am, lb in batches]
    meta = [tuple(t.to("meta") for t in b) for b in batches]
    teacher_meta = load_pretrained(root / "teacher").requires_grad_(False).to("meta")
    for kw in (dict(ce_chunk=16), dict(ce_chunk=16, mode="mlm"), dict(ce_chunk=16, ce_positions="masked")):
        cfg = T.TrainConfig(**kw)
        student = student_from_teacher(teacher).train().to("meta")
        t = teacher_meta if cfg.mode == "distill" else None
        sums, finite, n_real = T.forward_backward(T.Objective(student, t, cfg), t, meta, cfg, padded=[True, True],
                                                  counts=counts)
        assert n_real == sum(c[0] for c in counts) and finite.device.type == "meta", kw
        assert all(p.grad is not None and p.grad.device.type == "meta" for p in student.parameters()
                   if p.requires_grad), kw
        assert set(sums) == ({"mlm", "total"} if cfg.mode == "mlm" else {"ce", "mlm", "cos", "total"})


# ------------------------------------------------------------------------------------------------------------
# Several ranks resume together (issue 40)

def ranks_in_their_folders(tmp_path, argv, world=2, timeout=150, name="run"):
    """`world` gloo ranks launched as torchrun would (RANK, WORLD_SIZE, MASTER_ADDR/PORT), each in its own
    working directory tmp_path/node<r>: a relative --out_dir is then a different folder on each rank, as on
    machines without a shared file system. -> (return codes, logs); ranks still running after `timeout` s
    (a hang) are killed and get None."""
    port, procs = free_port(), []
    for rank in range(world):
        (tmp_path / f"node{rank}").mkdir(exist_ok=True)
        env = {**launch_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        log = open(tmp_path / f"{name}-rank{rank}.log", "w")
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "train.py"), *map(str, argv)],
                                      cwd=tmp_path / f"node{rank}", env=env, stdout=log, stderr=subprocess.STDOUT))
        log.close()
    deadline = time.time() + timeout
    while time.time() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.5)
    codes = [p.poll() for p in procs]
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    return codes, [(tmp_path / f"{name}-rank{r}.log").read_text() for r in range(world)]


@pytest.mark.slow
def test_ranks_resume_rank0s_checkpoint_without_a_shared_folder(setup, tmp_path):
    """Issue 40: each rank resumed the newest checkpoint of its own out_dir. Without a shared file system the
    other ranks found none and started at step 0 while rank 0 continued: their replicas drifted apart and the
    run hung at its end (on the code before the fix, this test's resume hangs). Now rank 0 chooses and sends
    the checkpoint: two gloo ranks whose out_dir are different folders (rank 1's holds nothing), interrupted
    after step 2 and resumed, reach the parameters of the uninterrupted run; a refusal by rank 0 stops both."""
    root, _ = setup
    common = args(root, "out", max_steps=4, save_every=2, micro_batch=2, batch_size=4, keep_last=5,
                  teacher=root / "teacher-dropout")  # dropout: the ranks' RNG states must be restored too
    codes, logs = ranks_in_their_folders(tmp_path, common)
    assert codes == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    out0 = tmp_path / "node0" / "out"
    assert not list((tmp_path / "node1").glob("out/ckpt-*")), "only rank 0 writes checkpoints"
    full = final_student(out0)
    (out0 / "ckpt-0000004.pt").unlink()  # as if stopped after step 2
    (out0 / "ckpt-0000004.pt.sha256").unlink()
    codes, logs = ranks_in_their_folders(tmp_path, common + ["--resume=true"], name="resumed")
    assert codes == [0, 0], f"ranks hung or failed: {codes}\n{logs[0][-2000:]}\n{logs[1][-2000:]}"
    assert "resumed from out/ckpt-0000002.pt at step 2" in logs[0]
    resumed = final_student(out0)
    assert resumed["step"] == 4 and max_param_diff(full, resumed) == 0.0
    # a refusal decided by rank 0 (another seed) stops every rank with its message, none hangs
    codes, logs = ranks_in_their_folders(tmp_path, common + ["--resume=true", "--seed=7", "--max_steps=6"],
                                         name="refused")
    assert codes == [1, 1] and all("resuming it with --seed=7 is refused" in log for log in logs), logs
    # on another number of ranks: refused, unless --resume_changes=world (the data order rule: data.Batches)
    one = args(root, out0, max_steps=6, save_every=2, micro_batch=2, batch_size=4, keep_last=5,
               teacher=root / "teacher-dropout", resume=True)
    with pytest.raises(SystemExit, match=r"written by a run on 2 rank\(s\); resuming it on 1 is refused"):
        T.train(T.parse_args(one + ["--resume_changes=max_steps"]))  # extending the run is allowed; the world not
    assert T.train(T.parse_args(one + ["--resume_changes=max_steps,world"]))["step"] == 6
    assert len(final_student(out0)["rng"]) == 1


def test_another_world_size_continues_at_the_same_global_batch(setup):
    """data.Batches.load_state_dict: a position of w ranks read on w' ranks continues the epoch at the same
    global batch, rounded down to a multiple of w' (never skipping one): the global batches each rank takes
    next are those after the ones the old ranks used, bar at most w' - 1 seen again."""
    _, data = setup
    for was, now, position in [(2, 1, 3), (2, 4, 3), (4, 2, 1), (3, 2, 2)]:
        old = rank_batches(data, was, 0)
        used = position * was  # global batches 0 .. used - 1
        state = {**old.state_dict(), "position": position}
        ranks = [rank_batches(data, now, r) for r in range(now)]
        for b in ranks:
            b.load_state_dict(state)
        nxt = [next(iter(b))["index"] for b in ranks]
        assert sorted(nxt) == list(range(min(nxt), min(nxt) + now)), nxt
        assert used - now < min(nxt) <= used, (was, now, nxt)


def rank_batches(data, world, rank):
    from data import Batches
    return Batches(data, "train", 32, 2, seed=0, rank=rank, world_size=world)


def test_compile_covers_the_teacher_and_the_vocabulary_losses(setup, tmp_path, monkeypatch):
    """Issue 40: --compile compiled the student alone. Now the teacher's forward and the fused head's soft-target
    pass are compiled too, with static shapes: the loader pads widths to multiples of 64. On the CPU with
    torch.compile's eager backend (the code path, not the speed): the same step as without --compile."""
    monkeypatch.setitem(T.COMPILE_OPTIONS, "backend", "eager")
    torch._dynamo.reset()
    results, first = {}, None
    for compile in (True, False):
        run, (made, _) = step_inputs(setup, tmp_path / str(compile), max_len=64, compile=compile, ce_chunk=64)
        if compile:
            first = made  # both runs take these batches (a mask is drawn for its batch's width)
            assert all(b[0].shape[1] == 64 for b in first) and run.loader.pad_multiple == 64
            compiled = torch._dynamo.eval_frame.OptimizedModule
            assert isinstance(run.teacher, compiled) and isinstance(run.objective.student, compiled)
            assert run.objective.soft_targets is not None
        run.model.eval()  # no dropout: the two runs must agree
        skipped, stop = T.NonFinite(run.device), T.StopSignal()
        try:
            sums = T.train_step(run, first, skipped, stop)[0]
        finally:
            stop.restore()
        results[compile] = {k: float(v) for k, v in sums.items()}, run.model.state_dict()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 3  # student, teacher, soft targets
    (a, sd_a), (b, sd_b) = results[True], results[False]
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-5 * abs(b[k]) + 1e-7 for k in a), (a, b)
    assert max((sd_a[k] - sd_b[k]).abs().max().item() for k in sd_a) < 1e-6


def test_accumulation_that_rounds_the_batch_says_so(setup, tmp_path, capsys):
    """Issue 40: accumulation rounded the global batch down without a word (micro-batch 128 on 8 GPUs: 3,072
    sequences a step, not 4,000). Now a warning says what a step holds and which micro-batch gives the batch
    exactly."""
    cfg = T.TrainConfig(micro_batch=128)
    assert T.accumulation_warning(cfg, 8, 3) == (
        "warning: --batch_size=4,000: 128 sequences x 8 rank(s) x 3 micro-steps = 3,072 sequences per step "
        "(accumulation rounds down); --micro_batch=125 gives exactly 4,000 (125 x 8 x 4)")
    assert "no micro-batch gives exactly 7 on 2 rank(s)" in T.accumulation_warning(
        T.TrainConfig(micro_batch=2, batch_size=7), 2, 1)
    root, _ = setup
    T.build(T.parse_args(args(root, tmp_path / "a", micro_batch=3, batch_size=8)))
    assert "3 sequences x 1 rank(s) x 2 micro-steps = 6 sequences per step" in capsys.readouterr().out
    T.build(T.parse_args(args(root, tmp_path / "b", micro_batch=4, batch_size=8)))
    assert "warning" not in capsys.readouterr().out


def test_float16_steps_with_the_grad_scaler(setup, tmp_path):
    """optimizer_step in float16 (on the CPU): the GradScaler unscales, a step whose gradient overflowed is
    skipped on the device (parameters and AdamW's step count unchanged) and halves the scale; a finite one
    steps and keeps it."""
    run, (first, second) = step_inputs(setup, tmp_path, dtype="float16")
    assert run.scaler.is_enabled()
    skipped, stop = T.NonFinite(run.device), T.StopSignal()
    try:
        T.train_step(run, first, skipped, stop)
        scale, before = run.scaler.get_scale(), {k: v.clone() for k, v in run.model.state_dict().items()}
        T.forward_backward(run.wrapped, run.teacher, *T.on_device(run, second)[:1], run.cfg, run.autocast,
                           run.scaler, padded=T.on_device(run, second)[1], counts=T.on_device(run, second)[2])
        next(p for p in run.model.parameters() if p.grad is not None).grad.view(-1)[0] = float("inf")
        norm, skip = T.optimizer_step(run, torch.tensor(True))
        assert bool(skip) and run.scaler.get_scale() == scale / 2
        assert all(torch.equal(v, run.model.state_dict()[k]) for k, v in before.items())
        steps = {int(s["step"]) for s in run.optimizer.state.values()}
        T.train_step(run, second, skipped, stop)
        assert run.scaler.get_scale() == scale / 2 and {int(s["step"]) for s in run.optimizer.state.values()} \
            == {s + 1 for s in steps}
    finally:
        stop.restore()
    skipped.check(run)
    assert run.skipped == 0  # optimizer_step alone was called for the overflow: NonFinite counts train_step's


def test_log_lines_give_the_mfu_where_the_peak_is_known(setup, tmp_path, monkeypatch):
    """Issue 40: train.py prints the MFU at its log lines: the step's model FLOPs (2 x step_macs per token) at the
    measured tokens/s over the peak of the device (here given: a CPU has none, and then no mfu is written)."""
    root, _ = setup
    monkeypatch.setattr(T, "peak_flops", lambda device, dtype: 1e9)
    T.train(T.parse_args(args(root, tmp_path / "a", max_steps=2)))
    cfg = T.parse_args(args(root, tmp_path / "a"))
    run_rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in run_rows if "total" in r]
    student = load_pretrained(tmp_path / "a" / "student").cfg
    teacher = load_pretrained(root / "teacher").cfg
    per_token = T.step_macs(cfg, student, teacher) / (cfg.batch_size * cfg.max_len)
    assert len(rows) == 2 and all(r["mfu"] == pytest.approx(2 * per_token * r["tokens_per_s"] / 1e9) for r in rows)
    monkeypatch.undo()
    T.train(T.parse_args(args(root, tmp_path / "b", max_steps=1)))
    assert "mfu" not in (tmp_path / "b" / "metrics.jsonl").read_text()


def test_peak_flops_of_known_gpus(monkeypatch):
    names = {"NVIDIA H100 80GB HBM3": (989e12, 495e12), "NVIDIA H100 PCIe": (756e12, 378e12),
             "NVIDIA A100-SXM4-80GB": (312e12, 156e12), "NVIDIA H200": (989e12, 495e12),
             "NVIDIA L40S": (362e12, 183e12), "NVIDIA L4": (121e12, 60e12), "Tesla V100-SXM2-16GB": (125e12, 15.7e12),
             "Some Future GPU": (None, None)}
    cuda = torch.device("cuda:0")
    for name, (half, single) in names.items():
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, n=name: n)
        assert (device.peak_flops(cuda, torch.bfloat16), device.peak_flops(cuda, torch.float32)) == (half, single)
    assert device.peak_flops(torch.device("cpu"), torch.bfloat16) is None


def test_alpha_pool_is_the_cosine_of_mean_pooled_unmasked_states(setup):
    """alpha_pool adds alpha_pool * mean over sequences of 1 - cos(mean_s, mean_t), the means of the last states
    over each sequence's real tokens, both models reading the sequence without its masks (the labels hold the
    masked tokens); alone (every other alpha 0) it is the whole loss, from the unmasked pass only."""
    teacher, student, _, _ = pair(setup)
    b = batch(setup[1], B=5)
    ids, am, labels = b
    clean = ids.clone()
    clean[labels != -100] = labels[labels != -100]
    with torch.no_grad():
        pooled = lambda m: [(m(clean, attention_mask=am, return_logits=False).hidden_states[-1][i, am[i].bool()]
                             .mean(0)) for i in range(len(ids))]
        want = sum(1 - torch.nn.functional.cosine_similarity(s, t, dim=0)
                   for s, t in zip(pooled(student), pooled(teacher))) / len(ids)
    assert want > 1e-6  # the copied student (fold) differs from the teacher: the loss is not trivially 0
    with_pool = T.TrainConfig(alpha_pool=3.0)
    sums, _, _ = T.forward_backward(T.Objective(student, teacher, with_pool), teacher, [b], with_pool)
    base, _, _ = T.forward_backward(T.Objective(student, teacher, T.TrainConfig()), teacher, [b], T.TrainConfig())
    assert torch.allclose(sums["pool"], want, rtol=1e-4)
    assert torch.allclose(sums["total"] - base["total"], 3.0 * want, rtol=1e-3)
    alone = T.TrainConfig(alpha_ce=0.0, alpha_mlm=0.0, alpha_cos=0.0, alpha_pool=1.0)
    sums, _, _ = T.forward_backward(T.Objective(student, teacher, alone), teacher, [b], alone)
    assert torch.allclose(sums["total"], want, rtol=1e-4) and set(sums) == {"pool", "total"}
    half = [(ids[:2], am[:2], labels[:2]), (ids[2:], am[2:], labels[2:])]  # two micro-batches: the same loss
    sums, _, _ = T.forward_backward(T.Objective(student, teacher, alone), teacher, half, alone)
    assert torch.allclose(sums["total"], want, rtol=1e-4)
