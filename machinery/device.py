"""
The device and the training precision: a GPU when there is one, bf16 autocast where it pays.
"""
import os
import time

import torch


def pick_device(name="auto") -> torch.device:
    """auto: the GPU of this process (LOCAL_RANK under torchrun) when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if name == "cuda" else name)


def auto_dtype(device) -> tuple:
    """--dtype=auto: (dtype, why). CUDA: bf16 where the GPU computes it natively (compute capability >= 8.0:
    A100, H100), else fp16 with a GradScaler, the paper's setting on V100s (torch.cuda.is_bf16_supported()
    also counts slow emulation, so it would pick bf16 on a V100 or T4). CPU: bf16 autocast only when a short
    probe shows bf16 matrix products clearly faster than float32 there (CPUs with AMX or AVX512-BF16 units),
    else float32."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return (torch.bfloat16 if major >= 8 else torch.float16), f"auto: compute capability {major}.{minor}"
    ratio = bf16_speedup()
    if ratio >= 1.5:
        return torch.bfloat16, f"auto: bf16 matrix products {ratio:.1f}x faster than float32 on this CPU"
    return torch.float32, f"auto: bf16 matrix products only {ratio:.1f}x the speed of float32 on this CPU"


def choose_dtype(name, device) -> tuple:
    """The one precision choice of train.py and finetune.py: (dtype, why) for --dtype=name (auto, float32,
    bfloat16, float16); auto is auto_dtype's, whose CPU probe runs once per process."""
    if name not in ("auto", "float32", "bfloat16", "float16"):
        raise ValueError(f"--dtype={name}: expected auto, float32, bfloat16 or float16")
    if name != "auto":
        return getattr(torch, name), "--dtype"
    if device.type not in _CHOSEN:
        _CHOSEN[device.type] = auto_dtype(device)
    return _CHOSEN[device.type]


_CHOSEN = {}  # auto_dtype's answer per device type, probed once per process


def bf16_speedup(n=768, reps=6) -> float:
    """float32 time / bf16 time of an (n x n) @ (n x 4n) product on the CPU, best of `reps` (about 0.1 s)."""
    g = torch.Generator().manual_seed(0)  # its own generator: probing must not move the global RNG (dropout)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, 4 * n, generator=g)
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        x @ y  # warm-up
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            x @ y
            best = min(best, time.perf_counter() - t)
        times[dtype] = best
    return times[torch.float32] / times[torch.bfloat16]



# Dense peak FLOP/s of GPUs (the vendors' data sheets, without sparsity): (bf16/fp16 tensor cores, tf32/fp32).
# Matched in order against torch.cuda.get_device_name: the more specific names first.
PEAK_FLOPS = (("H100 PCIe", 756e12, 378e12), ("H100 NVL", 835e12, 418e12), ("H100", 989e12, 495e12),
              ("H200", 989e12, 495e12), ("GH200", 989e12, 495e12), ("B200", 2250e12, 1100e12),
              ("A100", 312e12, 156e12), ("L40S", 362e12, 183e12), ("L40", 181e12, 90.5e12), ("A10", 125e12, 62.5e12),
              ("L4", 121e12, 60e12), ("V100", 125e12, 15.7e12), ("T4", 65e12, 8.1e12))


def peak_flops(device, dtype):
    """The device's dense peak FLOP/s in this dtype (float32 counts as TF32 where the GPU has it: train.py
    turns it on), for the MFU at train.py's log lines; None on a CPU or an unknown GPU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, half, single in PEAK_FLOPS:
        if key in name:
            return half if dtype in (torch.bfloat16, torch.float16) else single
    return None
