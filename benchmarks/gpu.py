"""
gpu: tokens/s and MFU of our distillation step at length 512 in bf16, eager and torch.compile (skipped without
CUDA; the tests run its code path on the CPU).
"""
import time

import torch

import train
from benchmarks.common import print_rows, row, synchronizer, train_batch, train_flops_per_token
from machinery import fused_head
from machinery.hf import load_pretrained

H200_BF16_DENSE = 989e12


def bench_gpu(folder, B, L, steps, peak, ce_chunk=1024, device=None, backend="inductor"):
    """Tokens/s and MFU of the distillation step in bf16 autocast, eager and torch.compile'd as train.py
    --compile compiles (student, teacher forward, soft-target pass), the token counts given from the host as
    train.py's loader gives them (so the step never waits for the GPU). device=None: the
    CUDA device if there is one, else skipped. The tests run it on the CPU with backend="eager" (the code
    path, not the speed)."""
    if device is None and not torch.cuda.is_available():
        print("  no CUDA device here: GPU tokens/s and MFU not measured")
        return {"skipped": "no CUDA device", "rows": []}
    dev = torch.device(device or "cuda")
    cuda, sync = dev.type == "cuda", synchronizer(dev)
    out = {"batch": B, "length": L, "peak_flops": peak, "device": str(dev), "backend": backend, "rows": []}
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16)
    teacher = load_pretrained(folder / "teacher").to(dev, torch.bfloat16).requires_grad_(False)
    batch = train_batch(B, L, teacher.cfg.vocab_size, pad=False)
    ids, am, labels = (x.pin_memory().to(dev, non_blocking=True) if cuda else x for x in batch)
    counts = [train.token_counts(batch[1], batch[2])]  # counted on the host, as train.py's loader does
    name = torch.cuda.get_device_name(dev) if cuda else "cpu"
    for compiled in (False, True):
        cfg = train.TrainConfig(ce_chunk=ce_chunk, compile=compiled)
        wrap = (lambda f: torch.compile(f, backend=backend, dynamic=False)) if compiled else (lambda f: f)
        student = load_pretrained(folder / "student").to(dev).train()
        # as train.py --compile: the student, the teacher's forward and the fused head's soft-target pass
        objective = train.Objective(wrap(student), teacher, cfg,
                                    soft_targets=wrap(fused_head._soft_targets) if compiled else None)
        teacher_forward, opt = wrap(teacher), train.make_optimizer(student, cfg)

        def step():
            sums = train.forward_backward(objective, teacher_forward, [(ids, am, labels)], cfg, autocast,
                                          padded=[False], counts=counts)[0]
            opt.step()
            opt.zero_grad(set_to_none=True)
            return sums
        for _ in range(3):  # warm-up (and compilation)
            sums = step()
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        tps = B * L * steps / (time.perf_counter() - t0)
        flops = train_flops_per_token(teacher.cfg, student.cfg, L)
        key = "compiled" if compiled else "eager"
        out[key] = {"tokens_per_s": tps, "flops_per_token": flops, "mfu": flops * tps / peak,
                    "peak_gb": torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else None,
                    "last_warmup_losses": {k: float(v) for k, v in sums.items()}}
        out["rows"].append(row(f"{name} {key}, {B} x {L} bf16: tok/s, MFU",
                               f"{tps:,.0f}, {flops * tps / peak:.1%}", "", "", ">= 40%",
                               flops * tps / peak >= 0.4))
        del student, objective, opt, teacher_forward
    print_rows(out["rows"])
    return out
