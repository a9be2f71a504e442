"""One step of train.py's loop as a GPU runs it (issue 40): nothing waits for the device, --compile covers the
teacher and the losses, float16 with the GradScaler, the batch that accumulation makes, the MFU, the precision
chosen, L_pool."""
import json

import pytest
import torch
from machinery import device
from machinery.hf import load_pretrained
import train as T
import training.setup as training_setup
from loop_body import one_step
from model import student_from_teacher

from train_fixtures import (  # noqa: F401 (fixtures and helpers)
    setup, args, batch, pair, step_inputs)


def test_auto_dtype_on_cpu_follows_the_probe(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "bf16_speedup", lambda: 3.5)
    assert device.auto_dtype(cpu)[0] == torch.bfloat16
    monkeypatch.setattr(device, "bf16_speedup", lambda: 0.3)
    assert device.auto_dtype(cpu)[0] == torch.float32


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


@pytest.mark.parametrize("kw", [{}, dict(ce_chunk=8, alpha_mse=1.0), dict(ce_positions="masked"),
                                dict(mode="mlm", init="scratch"), dict(mode="mlm", init="teacher", head_steps=1),
                                dict(dtype="bfloat16")])
def test_a_step_has_no_operation_that_waits_for_the_device(setup, tmp_path, kw):
    """Issue 40: about 50 operations per micro-batch made the host wait for the GPU (boolean indexing in the
    losses and the fused head's chunks, the masking, .tolist()/.item()). Counted here on the CPU, where every
    tensor counts: forward_backward with the loader's host counts, and the body of train's loop (the copies, the
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
    skipped = T.NonFinite(run.device)
    with SyncCounter("cpu") as c:
        sums, norm, n_real, stopping = one_step(run, second, skipped)
    assert c.found == [], c.found
    assert not stopping and n_real == sum(r for r, _ in T.on_device(run, second)[2])
    assert torch.isfinite(norm) and all(torch.isfinite(v) for v in sums.values())
    assert skipped.check(run, 1) == 0


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
    assert all(where.startswith("test_train_steps.py:") for _, where in c.found)
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


def test_compile_covers_the_teacher_and_the_vocabulary_losses(setup, tmp_path, monkeypatch):
    """Issue 40: --compile compiled the student alone. Now the teacher's forward and the fused head's soft-target
    pass are compiled too, with static shapes: the loader pads widths to multiples of 64. On the CPU with
    torch.compile's eager backend (the code path, not the speed): the same step as without --compile."""
    monkeypatch.setitem(training_setup.COMPILE_OPTIONS, "backend", "eager")
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
        sums = one_step(run, first)[0]
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
    skipped = T.NonFinite(run.device)
    one_step(run, first, skipped)
    scale, before = run.scaler.get_scale(), {k: v.clone() for k, v in run.model.state_dict().items()}
    T.forward_backward(run.wrapped, run.teacher, *T.on_device(run, second)[:1], run.cfg, run.autocast,
                       run.scaler, padded=T.on_device(run, second)[1], counts=T.on_device(run, second)[2])
    next(p for p in run.model.parameters() if p.grad is not None).grad.view(-1)[0] = float("inf")
    norm, skip = T.optimizer_step(run, torch.tensor(True))
    assert bool(skip) and run.scaler.get_scale() == scale / 2
    assert all(torch.equal(v, run.model.state_dict()[k]) for k, v in before.items())
    steps = {int(s["step"]) for s in run.optimizer.state.values()}
    one_step(run, second, skipped, step=1)
    assert run.scaler.get_scale() == scale / 2 and {int(s["step"]) for s in run.optimizer.state.values()} \
        == {s + 1 for s in steps}
    assert skipped.check(run, 2) == 0  # optimizer_step alone was called for the overflow: NonFinite counts steps'


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
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and rows[0]["config"]["max_steps"] == 1  # the whole config first
    assert rows[1:] and not any("mfu" in r for r in rows)


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
