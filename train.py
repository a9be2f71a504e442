"""
Distil BERT into DistilBERT (Sanh et al., 2019), or pretrain a BERT with the masked-LM loss alone.

One process:      python train.py --data=data/wiki --teacher=bert-base-uncased
Several GPUs:     torchrun --nproc_per_node=8 train.py --data=data/wiki --teacher=bert-base-uncased
Laptop, offline:  python quickstart.py   (a teacher head, then a distilled and an MLM-only student)

The defaults are the paper's recipe (Section 3 "Distillation" and the released model): a student made of one
teacher layer out of two, batches of 4,000 sequences by gradient accumulation, dynamic masking without NSP,
AdamW, lr 5e-4 with 5% warm-up, and the loss 5 * L_ce + 2 * L_mlm + 1 * L_cos at temperature 2.
`python train.py --help` lists every setting; any of them can be changed with --key=value.
Exit codes: 0 the run finished, 75 stopped by SIGTERM or Ctrl-C with a checkpoint (the same command with
--resume=true continues), 1 an error (one line).
"""
import contextlib
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import data
import losses
from eval import mlm_eval
from machinery import fused_head
from machinery.checkpoint import export, export_current, holds_out_dir_lock, probe_batch
from machinery.config import check_fields, opt, parse_config
from machinery.device import choose_dtype, peak_flops, pick_device
from machinery.files import disk_error
from machinery.logs import Eta, Logs, StopSignal, mean_over_ranks
from machinery.optim import adamw, linear_schedule
from model import count_parameters, masked_mean
from training.batches import host_batches, micro_batches, on_device, step_macs, token_counts
from training.setup import (DIST_TIMEOUT, Run, accumulation_warning, build_models, check_config, check_settings,
                            compiler, finish, open_data, teacher_dtype)
from training.state import NonFinite, export_dir, save, start, checkpoint_state


MIN_LEN = data.MIN_SEQ_TOKENS  # (inside TrainConfig, `data` is the setting)


@dataclass
class TrainConfig:
    mode: str = opt("distill", "distill: train a student from a frozen teacher | mlm: masked-LM loss alone",
                     choices=("distill", "mlm"))
    data: str = opt("data/shards", "a folder prepared by python -m corpus")
    out_dir: str = opt("out/distill", "checkpoints, metrics.jsonl and the exported model (student/ or model/)")
    teacher: str = opt("bert-base-uncased", "teacher: a Hugging Face folder or Hub name (train.py exports one)")
    init: str = opt("teacher",
            "teacher: student layers copied from the teacher | random: the same student shape, random weights | "
            "scratch: random, --layers/--hidden... (mlm mode) | pretrained: the --teacher checkpoint itself, whole "
            "(mlm mode: continue its MLM training, token types and pooler kept, a fresh MLM head when it has none)",
            choices=("teacher", "random", "scratch", "pretrained"))
    freeze_pos_embs: bool = opt(True,
            "--init=teacher: the position embeddings stay as copied from the teacher, as in the released "
            "distilbert-base-uncased (README)")
    student_layers: str = opt("",
            "teacher layers the student copies (empty: one out of two, 0,2,4,6,8,10 of bert-base as in the paper; "
            "the released distilbert-base-uncased took --student_layers=0,2,4,7,9,11)")
    # shape of a model trained from scratch (init=scratch)
    layers: int = opt(12, "number of layers (init=scratch)", range=">= 1")
    hidden: int = opt(768, "hidden size (init=scratch)", range=">= 1")
    heads: int = opt(12, "attention heads (init=scratch)", range=">= 1")
    intermediate: int = opt(3072, "feed-forward size (init=scratch)", range=">= 1")
    # data and batches
    max_len: int = opt(512, "longest sequence, in tokens, [CLS] and [SEP] included (sequences of fewer than "
                        f"{MIN_LEN} are dropped)", range=f">= {MIN_LEN}")
    batch_size: int = opt(4000, "global batch in sequences, reached by gradient accumulation", range=">= 1")
    micro_batch: int = opt(8, "sequences per forward pass on one rank", range=">= 1")
    masking: str = opt("smoothed", "smoothed: weights count^-0.7 as the reference code | uniform: BERT's 15%",
                        choices=("smoothed", "uniform"))
    # optimisation
    lr: float = opt(5e-4, "peak learning rate", range="> 0")
    head_steps: int = opt(0,
            "mlm mode: train only the MLM head for the first N steps (encoder and tied decoder frozen), then "
            "everything; for a pretrained model given a fresh head", range=">= 0")
    head_lr: float = opt(1e-3, "constant learning rate of the head-only steps", range="> 0")
    warmup: float = opt(0.05, "fraction of the steps with linear warm-up, then linear decay to 0", range="[0, 1)")
    # AdamW
    beta1: float = opt(0.9, "AdamW beta1", range="[0, 1)")
    beta2: float = opt(0.98, "AdamW beta2", range="[0, 1)")
    adam_eps: float = opt(1e-6, "AdamW epsilon", range="> 0")
    weight_decay: float = opt(0.0, "AdamW weight decay (never on biases and LayerNorms)", range=">= 0")
    grad_clip: float = opt(5.0, "gradient norm clipping (0: off)", range=">= 0")
    # how long
    epochs: int = opt(3, "passes over the training data", range=">= 1")
    max_steps: int = opt(0, "stop after this many optimizer steps (0: run all epochs)", range=">= 0")
    # the loss (Section 3)
    temperature: float = opt(2.0, "softmax temperature T of L_ce", range="> 0")
    alpha_ce: float = opt(5.0, "weight of L_ce, the soft-target loss", range=">= 0")
    alpha_mlm: float = opt(2.0, "weight of L_mlm, the masked-LM loss", range=">= 0")
    alpha_cos: float = opt(1.0, "weight of L_cos, the cosine loss on the last hidden states", range=">= 0")
    alpha_mse: float = opt(0.0, "weight of L_mse, squared logit differences on the L_ce rows (reference)",
                            range=">= 0")
    alpha_pool: float = opt(0.0, "weight of L_pool, 1 - cos of the student's and teacher's mean-pooled last "
                                 "states on the sequences without masks (not the paper's: for a sentence-"
                                 "embedding teacher, docs/reproduction.md)", range=">= 0")
    ce_positions: str = opt("all", "all: L_ce over every real token (released model) | masked: masked ones only",
                             choices=("all", "masked"))
    ce_chunk: int = opt(1024,
            "rows per chunk of L_ce, so full-vocabulary logits never exist at once (0: no chunks)", range=">= 0")
    # system
    seed: int = opt(42, "seed of initialisation, data order, masking and dropout", range="[0, 2**63)")
    device: str = opt("auto", "auto | cpu | cuda")
    dtype: str = opt("auto",
            "auto (CUDA: bf16 on compute capability >= 8.0, else fp16 + GradScaler; CPU: fp32) | float32 | bfloat16"
            " | float16", choices=("auto", "float32", "bfloat16", "float16"))
    teacher_half: bool = opt(True, "frozen teacher in --dtype's half precision on GPU (fp32 with float32)")
    compile: bool = opt(False, "torch.compile the student")
    eval_every: int = opt(500, "held-out MLM evaluation every N steps (0: only at the end)", range=">= 0")
    eval_batches: int = opt(50, "batches per evaluation", range=">= 1")
    save_every: int = opt(1000, "checkpoint every N steps (and always at the end)", range=">= 1")
    keep_last: int = opt(3, "checkpoints kept (the newest; ckpt-NNNNNNN.pt only)", range=">= 1")
    log_every: int = opt(10, "metrics.jsonl line every N steps", range=">= 1")
    resume: bool = opt(False, "continue from the newest checkpoint in out_dir")
    restart: bool = opt(False, "move an earlier run's outputs in out_dir aside (earlier-N/), start afresh")
    resume_changes: str = opt("", "settings a resume may change, e.g. lr,seed,max_steps (refused otherwise)")
    max_nonfinite: int = opt(10, "stop after this many non-finite steps in a row", range=">= 1")
    wandb: str = opt("", "a wandb project name to log to (needs wandb installed)")
    preset: str = opt("", "start from named settings: bert-base, tiny (quickstart.py: quickstart)")

    def __post_init__(self):
        """Each setting within what opt(range=, choices=) allows, and the ones that only work together
        (training.setup.check_settings): a ValueError of one line naming the setting (parse_args turns it into
        the command's error)."""
        check_fields(self)
        check_settings(self)


PRESETS = {  # (quickstart.py has its own: quickstart.PRESET)
    "bert-base": {},  # the defaults: DistilBERT's recipe from bert-base-uncased
    "tiny": dict(max_len=64, batch_size=16, micro_batch=8, eval_every=0, eval_batches=5, save_every=1000,
                 log_every=1, layers=2, hidden=64, heads=2, intermediate=128),
}


def parse_args(argv, doc=None, presets=None) -> TrainConfig:
    """--key=value overrides on top of a preset (config.parse_config; presets: PRESETS unless given); a bad
    argument stops with one line. `--help` prints `doc` (default: this file's docstring) and every setting."""
    try:
        return parse_config(argv, TrainConfig, PRESETS if presets is None else presets,
                            __doc__ if doc is None else doc)
    except ValueError as e:
        raise SystemExit(str(e)) from None


# ------------------------------------------------------------------------------------------------------------
# The objective: the student and its loss in one module, so that DDP sees one forward per micro-step

class Objective(torch.nn.Module):
    """The student and its loss in one module, so that DDP sees one forward per micro-step (Section 3):

        L = alpha_ce * L_ce + alpha_mlm * L_mlm + alpha_cos * L_cos        (in mlm mode: L_mlm alone)
          (+ alpha_pool * L_pool, not in the paper: a second pass over the sequences without masks)

    Each term is a sum over this micro-batch's rows divided by `denoms`, the row counts of the whole optimizer
    step over all ranks divided by the world size (DDP averages over ranks), so that the gradient is that of
    one big batch. counts: this micro-batch's (real, masked) token counts, known on the host (None: counted
    here, which waits for the device on a GPU). Returns (L, its parts detached for logging).

    The rows of each term are picked by their positions (loss_rows: the real tokens, the masked ones first),
    never by a boolean mask: the host knows every shape, so the step never waits for the device."""

    def __init__(self, student, teacher, cfg, soft_targets=None):
        super().__init__()
        self.student, self.cfg = student, cfg
        self.teacher_head = teacher.mlm_logits if teacher is not None else None  # a method: not a submodule
        self.head_only = False  # mlm mode: the encoder and the tied decoder frozen, only the MLM head learns
        self.soft_targets = soft_targets  # --compile: fused_head._soft_targets compiled

    def forward(self, ids, attention_mask, labels, teacher_hidden, denoms, padded=None, counts=None,
                teacher_pooled=None):
        cfg = self.cfg
        L_pool = 0.0
        if teacher_pooled is not None:  # L_pool: the unmasked sequences (the labels hold the masked tokens)
            clean = torch.where(labels != -100, labels, ids)
            h = self.student(clean, attention_mask=attention_mask, return_logits=False,
                             padded=padded).hidden_states[-1]
            L_pool = losses.cosine_loss(masked_mean(h, attention_mask).float(), teacher_pooled.float(),
                                        denom=denoms["sequences"])
            if teacher_hidden is None:  # L_pool alone: no pass over the masked sequences
                return cfg.alpha_pool * L_pool, {"pool": L_pool.detach(), "total": (cfg.alpha_pool * L_pool).detach()}
        n_real, n_masked = counts if counts is not None else token_counts(attention_mask, labels)
        with torch.no_grad() if self.head_only else contextlib.nullcontext():
            h = self.student(ids, attention_mask=attention_mask, return_logits=False,
                             padded=padded).hidden_states[-1]                        # (batch, len, hidden)
        rows = loss_rows(attention_mask, labels, n_real)  # (n_real,): the masked ones first
        pick = lambda x, n=n_real: x.flatten(0, 1).index_select(0, rows[:n])  # noqa: E731
        if teacher_hidden is None:  # mlm mode: the masked-LM loss alone
            return self.vocabulary_losses(pick(h, n_masked), None, pick(labels, n_masked), denoms,
                                          alphas=(0.0, 1.0, 0.0))
        h, teacher_hidden = pick(h), pick(teacher_hidden)  # every real token's row, the masked ones first
        L_cos = losses.cosine_loss(h.float(), teacher_hidden.float(), denom=denoms["real"])
        n_ce = n_real if cfg.ce_positions == "all" else n_masked  # the rows of L_ce: the first n_ce
        L_vocab, parts = self.vocabulary_losses(h[:n_ce], teacher_hidden[:n_ce], pick(labels, n_masked), denoms)
        L = L_vocab + cfg.alpha_cos * L_cos  # = alpha_ce * L_ce + alpha_mlm * L_mlm + alpha_cos * L_cos
        if teacher_pooled is not None:
            L, parts = L + cfg.alpha_pool * L_pool, {**parts, "pool": L_pool.detach()}
        return L, {**parts, "cos": L_cos.detach(), "total": L.detach()}

    def vocabulary_losses(self, h, teacher_hidden, labels, denoms, alphas=None) -> tuple:
        """alpha_ce * L_ce + alpha_mlm * L_mlm (+ alpha_mse * L_mse) on the rows h (rows, hidden), the terms that
        need logits over the whole vocabulary, and the terms detached (the total too when alphas is given).
        labels: those of the first len(labels) rows, the masked ones. alphas: (ce, mlm, mse), default the
        config's; mlm mode passes (0, 1, 0) and teacher_hidden None. ce_chunk=0: losses.py's formulas on the
        full (rows x vocabulary) logits (for reading: mlm_loss's boolean index waits for the device). ce_chunk>0
        (the default): the same value and gradients from fused_head.head_losses, chunk by chunk, the full
        logits never held (the tests check they are equal)."""
        cfg, T = self.cfg, self.cfg.temperature
        a_ce, a_mlm, a_mse = alphas or (cfg.alpha_ce, cfg.alpha_mlm, cfg.alpha_mse)
        decoder = self.student.emb.word.weight
        decoder = decoder.detach() if self.head_only else decoder
        if cfg.ce_chunk > 0:
            head = self.student.head
            loss, kl_sum, ce_sum, mse_sum = fused_head.head_losses(
                head.transform(h), decoder, head.bias, teacher_hidden=teacher_hidden,
                teacher_head=self.teacher_head, labels=labels, temperature=T, w_ce=a_ce / denoms["ce"],
                w_mlm=a_mlm / denoms["masked"], w_mse=a_mse / denoms["ce"], chunk_size=cfg.ce_chunk,
                soft_targets=self.soft_targets)
            parts = {"mlm": ce_sum / denoms["masked"]}
            if alphas is not None:  # mlm mode
                return loss, {**parts, "total": loss.detach()}
            parts = {"ce": kl_sum * T**2 / denoms["ce"], **parts}
            return loss, {**parts, **({"mse": mse_sum / denoms["ce"]} if a_mse else {})}
        s_logits = self.student.head(h, decoder)
        parts = {"mlm": losses.mlm_loss(s_logits[:len(labels)], labels, denom=denoms["masked"])}
        if teacher_hidden is not None:
            with torch.no_grad():
                t_logits = self.teacher_head(teacher_hidden)
            parts["ce"] = losses.soft_target_loss(s_logits, t_logits, T, denom=denoms["ce"])
            if a_mse:
                parts["mse"] = losses.logit_mse_loss(s_logits, t_logits, denom=denoms["ce"])
        loss, parts = losses.combine(parts, a_ce, a_mlm, alpha_mse=a_mse)
        return loss, (parts if alphas is not None else {k: v for k, v in parts.items() if k != "total"})


def loss_rows(attention_mask, labels, n_real):
    """The flat positions (in batch x len) of the real tokens, the masked ones first: (n_real,). A stable sort
    of fixed shape cut at n_real, a number the host knows: no boolean index, so nothing waits for the device.
    (Masked tokens are real tokens: labels are -100 at padding.)"""
    key = (attention_mask.flatten() != 0).int() + (labels.flatten() != -100).int()  # 2 masked, 1 real, 0 pad
    return torch.argsort(key, descending=True, stable=True)[:n_real]


def forward_backward(wrapped, teacher, batches, cfg, autocast=contextlib.nullcontext(), scaler=None,
                     padded=None, counts=None):
    """Gradients of one optimizer step, accumulated over its micro-batches [(input_ids, attention_mask,
    labels)]; padded: per micro-batch, whether it has padding, and counts: per micro-batch, its (real, masked)
    token counts, both known on the host (None: padded unknown, counts counted here from the tensors). The
    losses are normalised by the real and masked token counts of the whole step over every rank, so k
    micro-steps on w ranks give the gradient of one batch k*w times larger. DDP synchronises on the last
    micro-step only. Each micro-step calls wrapped(ids, attention_mask, labels, teacher_hidden, denoms,
    padded=..., counts=...) with the same denoms {"real", "masked", "ce"}: the step's real tokens, masked tokens
    (at least 1) and L_ce's rows (real or masked, as cfg.ce_positions says), summed over the ranks
    (dist.all_reduce) and divided by the world size. Returns (loss parts summed over micro-steps, whether every
    loss was finite as a 0-d bool tensor on the device, real tokens in the step: a number or a 0-d tensor).
    With the host's counts nothing here waits for the device: the counts are summed on the host, the finite
    flag and the loss parts stay on the device."""
    ddp = isinstance(wrapped, DDP)
    world = dist.get_world_size() if ddp else 1
    ### BEGIN SOLUTION: 8 lines
    # counts: each micro-batch's (real, masked) token counts; when the loader did not give them, count them
    # here (on a GPU this waits for the device: train.py's loader counts on the host)
    counts = counts or [(int(am.sum()), int((lb != -100).sum())) for _, am, lb in batches]
    # n_real, n_masked: the whole step's counts, over its micro-batches and ranks (a sum on the host; the ranks'
    # counts added up in a tensor on the host, so that the all-reduce never waits for the device)
    n_real, n_masked = (sum(c) for c in zip(*counts))
    if ddp:
        step_counts = torch.tensor([n_real, n_masked], dtype=torch.float64)
        dist.all_reduce(step_counts)
        n_real, n_masked = step_counts.tolist()
    # denoms {"real", "masked", "ce"}: the counts / world size (DDP averages the ranks' gradients); "ce" is
    # the count of L_ce's rows, which cfg.ce_positions chooses
    denoms = {"real": n_real / world, "masked": max(n_masked, 1) / world}
    denoms["ce"] = denoms["real"] if cfg.ce_positions == "all" else denoms["masked"]
    ### END SOLUTION
    if cfg.alpha_pool:  # L_pool's rows: this rank's sequences (every rank has as many)
        denoms["sequences"] = sum(len(b[0]) for b in batches)
    masked_pass = teacher is not None and cfg.alpha_ce + cfg.alpha_mlm + cfg.alpha_cos + cfg.alpha_mse > 0
    sums, finite = {}, torch.ones((), dtype=torch.bool, device=batches[0][0].device)
    for i, (ids, am, labels) in enumerate(batches):
        with wrapped.no_sync() if ddp and i < len(batches) - 1 else contextlib.nullcontext():
            teacher_hidden, pooled, pad = None, {}, padded[i] if padded is not None else None
            with torch.no_grad(), autocast:
                if masked_pass:
                    teacher_hidden = teacher(ids, attention_mask=am, return_logits=False,
                                             padded=pad).hidden_states[-1]
                if teacher is not None and cfg.alpha_pool > 0:  # L_pool's target: the unmasked sequences
                    clean = torch.where(labels != -100, labels, ids)
                    pooled["teacher_pooled"] = masked_mean(teacher(clean, attention_mask=am, return_logits=False,
                                                                   padded=pad).hidden_states[-1], am)
            with autocast:
                loss, parts = wrapped(ids, am, labels, teacher_hidden, denoms, padded=pad, counts=counts[i],
                                      **pooled)
            finite &= torch.isfinite(loss.detach())
            (scaler.scale(loss) if scaler is not None else loss).backward()
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
    return sums, finite, n_real


# ------------------------------------------------------------------------------------------------------------
# The training loop, and the set-up it reads (the rest of the set-up: training/)

@holds_out_dir_lock
def train(cfg: TrainConfig, eta: Eta = None):
    """One training run, top to bottom: set up (build), continue from the newest checkpoint or start afresh,
    then optimizer steps until `total`, each with its learning rate, micro-steps, finite check and update,
    then a log line, a held-out evaluation and a checkpoint when they are due. A SIGTERM or SIGINT stops every
    rank after the same step, with a checkpoint. `eta` (logs.Eta): the work after this run, for the progress
    lines' expected end of the whole job.

    Nothing in a step waits for the device: the next step's micro-batches are masked and counted on the host
    in a background thread (data.Prefetch), a step whose loss or gradient is not finite is skipped by the
    optimizer on the device, and the host reads the device's numbers only at the log lines."""
    run = build(cfg)
    step, skipped = start(run)                                 # (0, 0), or where the checkpoint left off
    teacher_cfg = run.teacher.cfg if run.teacher is not None else None
    full, head = (step_macs(cfg, run.model.cfg, teacher_cfg, head_only=h) for h in (False, True))
    eta = eta or Eta()
    eta.start(step, run.total, lambda k: head if k < cfg.head_steps else full)
    logs = Logs(run.out_dir, cfg, step, run.total, eta, master=run.master)
    stream = micro_batches(run.loader)
    steps = data.Prefetch(lambda: (host_batches(run, [next(stream) for _ in range(run.accum)]),
                                   run.loader.state_dict()))
    nonfinite, stop, probe = NonFinite(run.device, skipped), StopSignal(), probe_batch(run.loader, run.device)
    peak = peak_flops(run.device, run.dtype)
    t0, tokens, stopping = time.time(), 0, False
    try:
        while step < run.total and not stopping:
            # the learning rate (mlm mode may train the head alone first, at its own rate)
            lr = lr_at(step, run.total, cfg)
            run.objective.head_only = step < cfg.head_steps
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            # micro-steps: the gradient of one batch of batch_size sequences, accumulated (Section 3)
            batches, padded, counts = on_device(run, next(steps))
            sums, finite, n_real = forward_backward(run.wrapped, run.teacher, batches, cfg, run.autocast,
                                                    run.scaler, padded=padded, counts=counts)
            # the update, skipped on the device when a rank's loss or the gradient is not finite
            norm, skip = optimizer_step(run, every_rank(run, finite))
            nonfinite.add(skip)
            step, tokens, stopping = step + 1, tokens + n_real, stop.anywhere(run.ddp)
            # log (the one point of a step where the host reads the device), evaluate, save
            row = None
            if step % cfg.log_every == 0 or step == run.total:
                row = {**mean_over_ranks(sums, run.world), "lr": lr, "grad_norm": float(norm),
                       "tokens_per_s": tokens / max(time.time() - t0, 1e-9)}
                if peak:  # model FLOPs (2 a multiply-add) over the ranks' peak
                    per_token = (head if step <= cfg.head_steps else full) / (cfg.batch_size * cfg.max_len)
                    row["mfu"] = 2 * per_token * row["tokens_per_s"] / (peak * run.world)
                skipped = nonfinite.check(run, step)
            logs.step(step, row)
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == run.total:
                logs.valid(step, evaluate(run.model, run.shards, cfg, run.device), time.time() - t0)
            if step % cfg.save_every == 0 or step == run.total or stopping:
                skipped = nonfinite.check(run, step)  # the checkpoint holds the count of skipped steps
                save(run, checkpoint_state(run, step, skipped, steps.state), probe, step == run.total)
        if stopping and step < run.total:
            run.say(f"stopped by signal {stop.signal} at step {step}: checkpoint written to {run.out_dir}; "
                    f"the same command with --resume=true continues (exit code {EXIT_STOPPED})")
        elif run.master and not export_current(export_dir(cfg), run.model):  # a kill during the export
            run.say(f"step {step} of {run.total}: {export_dir(cfg)} is missing or holds another model: "
                    f"exporting it again")
            export(export_dir(cfg), run.model, run.vocab, run.say)
    finally:
        steps.close()
    stop.restore()
    logs.close()
    finish(run)
    return {"step": step, "skipped": skipped, "tokens_per_s": tokens / max(time.time() - t0, 1e-9),
            "parameters": count_parameters(run.model)["total"], "stopped": stopping and step < run.total}


def build(cfg) -> Run:
    """Everything a run holds: its processes (torchrun sets RANK), the device, the training dtype and the seed;
    the data; the models (the student, and the frozen teacher); the objective and the optimizer."""
    ddp = "RANK" in os.environ
    device = pick_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before the process group, which binds this rank's NCCL to it
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if ddp:  # tensors on the host (token counts, the stop flag, checkpoints) go through gloo, the GPU's NCCL
        cuda = device.type == "cuda"
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=DIST_TIMEOUT,
                                **({"device_id": device} if cuda else {}))
    rank, world = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
    try:
        dtype, why = choose_dtype(cfg.dtype, device)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32
                else contextlib.nullcontext())
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    torch.manual_seed(cfg.seed + rank)
    check_config(cfg, world)

    shards = open_data(cfg)
    # under --compile, widths are multiples of 64: a few static shapes, each compiled once
    loader = data.Batches(shards, "train", cfg.max_len, cfg.micro_batch, seed=cfg.seed, rank=rank,
                          world_size=world, pad_multiple=64 if cfg.compile else 8)
    accum = max(1, cfg.batch_size // (cfg.micro_batch * world))
    if rank == 0 and accum * cfg.micro_batch * world != cfg.batch_size:
        print(accumulation_warning(cfg, world, accum))
    total = cfg.max_steps or cfg.epochs * (len(loader) // accum)
    if total < 1:
        raise SystemExit(f"{cfg.data}: {len(loader)} micro-batches per rank, fewer than the {accum} that make "
                         f"one step of {cfg.batch_size} sequences: use more data or a smaller --batch_size")
    model, teacher = build_models(cfg, shards)
    model.to(device).train()
    if teacher is not None:
        teacher.to(device).eval().requires_grad_(False)
        teacher.to(teacher_dtype(cfg, device, dtype))
    compiled = compiler(cfg)  # --compile: the student, the teacher's forward and the vocabulary losses
    objective = Objective(compiled(model), teacher, cfg,
                          soft_targets=compiled(fused_head._soft_targets) if cfg.compile else None)
    wrapped = objective
    if ddp:  # head-only steps leave the encoder without gradients: DDP must be told
        wrapped = DDP(objective, device_ids=[device.index] if device.type == "cuda" else None,
                      find_unused_parameters=cfg.head_steps > 0)
    mask_weights = (data.smoothing_weights(shards.counts, shards.special) if cfg.masking == "smoothed"
                    else None)
    return Run(cfg, ddp, rank, world, device, dtype, why, autocast, scaler, shards, loader, accum, total, model,
               compiled(teacher) if teacher is not None else None, objective, wrapped,
               make_optimizer(model, cfg), mask_weights)


# ------------------------------------------------------------------------------------------------------------
# The update, its learning rate, the held-out evaluation

def every_rank(run: Run, flag) -> torch.Tensor:
    """Whether a 0-d bool tensor is true on every rank: a 0-d bool tensor on the device (nothing waits)."""
    ok = flag.float()
    if run.ddp:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return ok >= 1


def optimizer_step(run: Run, ok) -> tuple:
    """Unscale (float16), clip the gradient norm, step unless the loss (ok: on every rank) or the gradient is
    not finite, zero the gradients. Returns (the norm before clipping, whether the step was skipped), 0-d
    tensors on the device. The skip is decided on the device (fused AdamW's found_inf, as the GradScaler
    skips float16 steps): nothing here waits for it. A skipped step still counts as a step. An optimizer
    without found_inf (no fused kernel) is stepped after the host reads the flag."""
    run.scaler.unscale_(run.optimizer)
    clip = run.cfg.grad_clip if run.cfg.grad_clip > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), clip)
    skip = ~(ok & torch.isfinite(norm))  # a gradient that overflowed in float16 is not finite either
    if getattr(run.optimizer, "_step_supports_amp_scaling", False):
        run.optimizer.found_inf = skip.float()
        run.optimizer.step()
        del run.optimizer.found_inf
    elif not skip.item():
        run.optimizer.step()
    run.scaler.update()  # float16: halves the scale after an overflow (unscale_ recorded it)
    run.optimizer.zero_grad(set_to_none=True)
    return norm, skip


def make_optimizer(model, cfg):
    """AdamW without weight decay on biases and LayerNorms, with the fused kernel where torch has one (on a
    CPU it makes the optimizer step of a 66M-parameter student about 3x faster)."""
    betas = (cfg.beta1, cfg.beta2)  # a frozen tensor never has a gradient, so AdamW leaves it as it is
    return adamw(model.parameters(), cfg.lr, cfg.weight_decay, betas, cfg.adam_eps, fused=True)


def lr_at(step, total, cfg):
    """head_lr during the head-only steps; then linear warm-up over `warmup` of the remaining steps, linear
    decay."""
    if step < cfg.head_steps:
        return cfg.head_lr
    step, total = step - cfg.head_steps, total - cfg.head_steps
    return cfg.lr * linear_schedule(step, total, max(1, int(cfg.warmup * total)))


def evaluate(model, shards, cfg, device):
    """Held-out masked-token accuracy with a fixed mask (eval.mlm_eval); reduced over ranks."""
    return mlm_eval(model, shards, split="valid", max_len=cfg.max_len, batch_size=cfg.micro_batch,
                    max_batches=cfg.eval_batches)


# the exit code of a run stopped by SIGTERM or SIGINT after writing its checkpoint: EX_TEMPFAIL of sysexits.h,
# "a temporary failure; the user is invited to retry" (with --resume=true); 0 is a finished run, 1 an error
EXIT_STOPPED = 75


def main(argv):
    """python train.py [--key=value ...]. Exits 0 when the run is done, EXIT_STOPPED when a signal stopped it
    (a checkpoint written), 1 on an error."""
    result = on_disk_errors(train, parse_args(argv))
    if result.get("stopped"):
        sys.exit(EXIT_STOPPED)


def on_disk_errors(run, cfg):
    """run(cfg), with a file system failing under it (full, read-only) told in one line, without a traceback."""
    try:
        return run(cfg)
    except OSError as e:
        raise SystemExit(f"{disk_error(e.filename or cfg.out_dir, e, 'cannot be written')}; the checkpoints "
                         f"already in {cfg.out_dir} are intact (--resume=true continues from the newest)") from None


if __name__ == "__main__":
    main(sys.argv[1:])
