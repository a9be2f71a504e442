"""
cpu-bf16: what --dtype=auto weighs on a CPU, bf16 against float32. cpu-share: the share of the CPU's float32
matmul peak that the quickstart's distillation step reaches.
"""
import tempfile
import time
from pathlib import Path

import torch

import train
from benchmarks.common import interleaved, make_models, med, print_rows, row, train_batch, train_flops_per_token
from machinery import device
from machinery.hf import load_pretrained

def bench_cpu_bf16(folder, B, L, reps):
    """What --dtype=auto weighs on a CPU: bf16 against float32, in the same process. The probe
    device.auto_dtype uses, a large matrix product, and our student's encoder forward and training step under
    bf16 autocast."""
    student = load_pretrained(folder / "student").train()
    ids = torch.randint(1, student.cfg.vocab_size, (B, L))
    rows = []

    def forward(dtype):
        def f():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
                student(ids, return_logits=False)
        return f

    def step(dtype):
        def f():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
                h = student(ids, return_logits=False).hidden_states[-1]
            h.float().square().mean().backward()
        return f
    probe = med([device.bf16_speedup() for _ in range(reps)])
    rows.append(row("probe: 768x768 @ 768x3072, fp32 time / bf16 time", "", "", probe,
                    ">= 1.5: auto picks bf16"))
    for name, make in (("student encoder forward", forward), ("student forward + backward", step)):
        t = interleaved({"fp32": make("fp32"), "bf16": make("bf16")}, reps)
        rows.append(row(f"{name} {B} x {L}, ms: bf16 (ours) vs fp32 (reference)", med(t["bf16"]) * 1e3,
                        med(t["fp32"]) * 1e3, med(t["fp32"]) / med(t["bf16"]), "speed-up"))
    return {"rows": rows, "auto": str(device.auto_dtype(torch.device("cpu"))[0])}


def bench_cpu_share(B, L, reps, size, n=2048):
    """The distillation step's share of the CPU's float32 matmul peak, both measured here in turns (A B, B A,
    ...; medians), so that load and clock changes hit both alike. The peak is that of an n x n @ n x n
    product, repeated to last about as long as a tenth of a step; the step is train.py's (forward_backward
    with the default loss, L_ce on every real token in chunks of 1024, then the fused AdamW step); its FLOPs
    per real token are train_flops_per_token's count."""
    with tempfile.TemporaryDirectory() as tmp:
        make_models(size, Path(tmp))
        teacher = load_pretrained(Path(tmp) / "teacher").requires_grad_(False)
        student = load_pretrained(Path(tmp) / "student").train()
    ids, am, labels = train_batch(B, L, teacher.cfg.vocab_size)
    cfg = train.TrainConfig()
    objective, opt = train.Objective(student, teacher, cfg), train.make_optimizer(student, cfg)

    def step():
        train.forward_backward(objective, teacher, [(ids, am, labels)], cfg)
        opt.step()
        opt.zero_grad(set_to_none=True)
    a, b = torch.randn(n, n), torch.randn(n, n)
    t0 = time.perf_counter()
    step()
    t1 = time.perf_counter()
    a @ b
    repeat = max(1, round((t1 - t0) / 10 / max(time.perf_counter() - t1, 1e-6)))

    def matmul():
        for _ in range(repeat):
            a @ b
    t = interleaved({"matmul": matmul, "step": step}, reps)
    peak = 2 * n**3 * repeat / med(t["matmul"])
    tokens, flops = int(am.sum()), train_flops_per_token(teacher.cfg, student.cfg, L)
    tps = tokens / med(t["step"])
    share = flops * tps / peak
    rows = [row(f"float32 matmul peak ({n}^3 products, {torch.get_num_threads()} threads), GFLOP/s",
                f"{peak / 1e9:.1f}", "", "", ""),
            row(f"distillation step {B} x {L} ({tokens} real tokens, {flops / 1e6:.0f} MFLOP each): s/step, "
                f"tok/s, GFLOP/s; share of the peak", f"{med(t['step']):.2f}, {tps:,.0f}, "
                f"{flops * tps / 1e9:.1f}", f"{peak / 1e9:.1f}", f"{share:.1%}", ">= 35%", share >= 0.35)]
    print_rows(rows)
    return {"batch": B, "length": L, "real_tokens": tokens, "flops_per_token": flops, "peak_flops": peak,
            "step_s": t["step"], "matmul_s": t["matmul"], "matmul_repeat": repeat, "tokens_per_s": tps,
            "share": share, "rows": rows}
