"""
Fine-tuning a task head and its encoder: BERT's recipe (AdamW, linear warm-up and decay, gradient clipping), the
task loss, or task distillation against a fine-tuned teacher's logits ("DistilBERT (D)", Sanh et al. 2019,
Section 4: losses.task_distill_loss); predict gives the logits of every row.
"""
import contextlib
import functools
import math
import time

import torch
import torch.nn.functional as F

from losses import task_distill_loss, task_loss
from machinery import files
from machinery.device import choose_dtype, pick_device
from machinery.optim import adamw, linear_schedule

log = functools.partial(files.log, source="finetune")


INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _outputs(out, batch):
    """(logits, labels) for the losses: SQuAD's as (start, end) pairs."""
    if "start_positions" in batch:
        return (out.logits[..., 0], out.logits[..., 1]), (batch["start_positions"], batch["end_positions"])
    return out.logits, batch.get("labels")


def make_loss(temperature=2.0, alpha=0.5):
    """The default loss_fn(model, batch): the task loss, or, when the batch carries the teacher's logits (fit
    stores them once per example), task_distill_loss against them."""
    def loss_fn(model, batch):
        inputs = {k: batch[k] for k in INPUTS if k in batch}
        logits, labels = _outputs(model(**inputs), batch)
        if "teacher_logits" not in batch:
            return task_loss(logits, labels)
        teacher_logits = batch["teacher_logits"]
        if isinstance(logits, tuple):  # SQuAD: (B, L, 2) -> start, end
            teacher_logits = (teacher_logits[..., 0], teacher_logits[..., 1])
        return task_distill_loss(logits, teacher_logits, labels, temperature, alpha)
    return loss_fn


def autocast(name, device):
    """The autocast context of --dtype=name on `device`: machinery.device.choose_dtype's choice, the one train.py
    makes too (auto: bf16 on a GPU of compute capability 8.0 or more, and on a CPU where a probe, run once per
    process, shows bf16 matrix products clearly faster). Fine-tuning has no GradScaler: where choose_dtype answers
    float16 (a CUDA GPU below compute capability 8.0: V100, T4) it runs in float32, as it always has. Weights and
    optimiser state stay float32."""
    dtype, _ = choose_dtype(name, device)
    if dtype != torch.bfloat16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _batch(tensors, idx, device):
    """Rows idx of every tensor, token tensors cut to the longest real sequence among them."""
    L = int(tensors["attention_mask"][idx].sum(1).max())
    cut = lambda k, v: k in INPUTS or (k == "teacher_logits" and v.dim() == 3)  # SQuAD: (N, width, 2)
    return {k: (v[idx, :L] if cut(k, v) else v[idx]).to(device) for k, v in tensors.items()}


def fit_steps(cfg, n) -> int:
    """The optimizer steps of fit() on n training rows."""
    return cfg.max_steps or max(1, round(cfg.epochs * math.ceil(n / cfg.batch_size)))


def fit(model, train_tensors, cfg, loss_fn=None, eval_fn=None, teacher=None):
    """AdamW (no decay on biases and LayerNorms), linear warm-up then decay, gradient clipping, batches
    shuffled by cfg.seed, under cfg.dtype's autocast. loss_fn(model, batch) -> loss; default: make_loss. With
    a (frozen) teacher, its logits are computed once per training example before the first step (task
    distillation; dropout is off in the teacher, so this equals running it at every step) unless train_tensors
    already hold "teacher_logits". A regression head trains on standardised targets (target_scale). eval_fn(model,
    step) is called every cfg.eval_every steps and at the end (on a regression head, in standardised units)."""
    device = pick_device(cfg.device)
    n = len(train_tensors["input_ids"])
    if n == 0:
        raise ValueError("fit: no training examples")
    cast = autocast(cfg.dtype, device)
    train_tensors, (shift, scale) = _targets(model, train_tensors, cfg, teacher, cast, device)
    model.to(device).train()
    loss_fn = loss_fn or make_loss(cfg.temperature, cfg.alpha)
    total = fit_steps(cfg, n)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, cfg.lr, cfg.weight_decay, fused=True)  # one pass over the weights: 1.3x per CPU step
    warm = int(cfg.warmup * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: linear_schedule(s, total, warm))
    gen, step, t0, running = torch.Generator().manual_seed(cfg.seed), 0, time.time(), 0.0
    while step < total:
        for idx in torch.randperm(n, generator=gen).split(cfg.batch_size):
            with cast:
                loss = loss_fn(model, _batch(train_tensors, idx, device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            step, running = step + 1, running + loss.item()
            if cfg.log_every and step % cfg.log_every == 0:
                log(f"step {step}/{total}  loss {running / cfg.log_every:.4f}  {time.time() - t0:.0f}s")
                running = 0.0
            if eval_fn is not None and (step == total or (cfg.eval_every and step % cfg.eval_every == 0)):
                eval_fn(model, step)
                model.train()
            if step >= total:
                break
    if (shift, scale) != (0.0, 1.0):  # the head predicts in the labels' units again: scale * z + shift
        with torch.no_grad():
            model.classifier.weight.mul_(scale)
            model.classifier.bias.mul_(scale).add_(shift)
    return model.eval()


def _targets(model, tensors, cfg, teacher, cast, device):
    """(training tensors, (shift, scale)): the teacher's logits added once per example when there is a teacher
    and the tensors lack them, and a regression task's targets standardised (target_scale) when
    cfg.standardize."""
    if teacher is not None and "teacher_logits" not in tensors:
        with cast:
            tensors = {**tensors, "teacher_logits": predict(teacher, tensors, cfg.eval_batch_size, device)}
    shift, scale = target_scale(model, tensors) if cfg.standardize else (0.0, 1.0)
    if (shift, scale) != (0.0, 1.0):
        tensors = {k: (v - shift) / scale if k in ("labels", "teacher_logits") else v for k, v in tensors.items()}
    return tensors, (shift, scale)


def target_scale(model, tensors) -> tuple:
    """(mean, standard deviation) of a regression task's training targets (STS-B's 0-5 scores), else (0, 1).
    fit trains on the standardised targets (y - mean) / sd and then folds mean and sd into the output layer:
    a head that starts at zero predicts the mean, where raw targets would leave Adam, which moves each weight
    by about lr per step, hundreds of steps away from it (a fresh head's bias is 0, STS-B's mean 2.7)."""
    y = tensors.get("labels")
    if getattr(model, "num_labels", None) != 1 or y is None or not y.is_floating_point() or len(y) < 2:
        return 0.0, 1.0
    return float(y.mean()), float(y.std()) or 1.0


@torch.no_grad()
def predict(model, tensors, batch_size=128, device=None) -> torch.Tensor:
    """Logits for every row, in order, on the CPU (span logits padded back to the full width with -1e4)."""
    device = next(model.parameters()).device if device is None else pick_device(device)
    model.to(device).eval()
    out, width = [], tensors["input_ids"].size(1)
    # rows of similar length batched together (less padding), the logits put back in the rows' order
    order = tensors["attention_mask"].sum(1).argsort(descending=True, stable=True)
    for idx in order.split(batch_size):
        batch = _batch({k: tensors[k] for k in INPUTS if k in tensors}, idx, device)
        logits = model(**batch).logits.float().cpu()
        if logits.dim() == 3:
            logits = F.pad(logits, (0, 0, 0, width - logits.size(1)), value=-1e4)
        out.append(logits)
    return torch.cat(out)[order.argsort()]
