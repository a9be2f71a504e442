"""
AdamW with the usual parameter groups, and the learning-rate schedule: linear warm-up, then linear decay.
"""
import torch


def adamw(params, lr, weight_decay, betas=(0.9, 0.999), eps=1e-8, fused=False):
    """AdamW without weight decay on biases and LayerNorms (the tensors of fewer than 2 dimensions). fused:
    the one-pass kernel where torch has one for the parameters' device (CUDA, and CPU since torch 2.4)."""
    params = list(params)
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    if fused:
        try:
            return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
        except (RuntimeError, ValueError):  # no fused kernel for this device or torch version
            pass
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def linear_schedule(step, total, warmup_steps) -> float:
    """The factor on the peak learning rate: linear warm-up over warmup_steps, then linear decay to 0 at
    total: step / warmup_steps before it (none when warmup_steps is 0: 1 at step 0), then (total - step) /
    (total - warmup_steps), and 0 from step total on (never negative). An int or a float."""
    ### BEGIN SOLUTION: 3 lines
    # rises from 0 to 1 over the warm-up, then falls linearly to 0 at step `total` (never below)
    if step < warmup_steps:
        return step / warmup_steps
    return max(0.0, (total - step) / max(1, total - warmup_steps))
    ### END SOLUTION

