"""
What train.py's `build` reads to set up a run, and the checks it makes before any work: the models (student,
teacher), the settings that cannot work together, the memory a step needs, torch.compile, the end of a run's
processes. Nothing here is needed to read the training loop.
"""
import contextlib
import datetime
import gc
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import data
from machinery.checkpoint import RESUME_SAME
from machinery.device import pick_device
from machinery.hf import load_teacher, tensors_sha256
from model import Bert, BertConfig, student_from_teacher


@dataclass
class Run:
    """What one training run holds, built once by `build` and never changed (the progress lives in train)."""
    cfg: object              # train.TrainConfig
    ddp: bool
    rank: int
    world: int
    device: torch.device
    dtype: torch.dtype
    why: str                 # why this dtype
    autocast: object         # a torch.autocast context, or a null one in float32
    scaler: object           # the GradScaler (enabled only in float16)
    shards: data.TokenData
    loader: data.Batches
    accum: int               # micro-batches per optimizer step on each rank
    total: int               # optimizer steps of the whole run
    model: Bert              # the student (or, in mlm mode, the model trained)
    teacher: Bert            # frozen; None in mlm mode
    objective: torch.nn.Module
    wrapped: torch.nn.Module  # the objective, in DDP when there are several ranks
    optimizer: torch.optim.Optimizer
    mask_weights: torch.Tensor  # per-id masking weights (smoothed masking) on the host, or None (uniform)

    @property
    def master(self):
        return self.rank == 0

    @property
    def out_dir(self):
        return Path(self.cfg.out_dir)

    @property
    def vocab(self):  # the tokenizer's vocabulary, exported beside the model
        return self.shards.folder / self.shards.meta["tokenizer"]["file"]

    def say(self, *args, **kw):
        if self.master:
            print(*args, **kw)


DIST_TIMEOUT = datetime.timedelta(minutes=30)  # a collective that long: a rank is gone (rank 0 alone writes
# checkpoints and the export while the others wait; 30 minutes leaves a slow file system room)


# checkpoints and the export while the others wait; 30 minutes leaves a slow file system room)
COMPILE_OPTIONS = {"dynamic": False}  # static shapes (the tests use backend="eager" on the CPU)


def compiler(cfg):
    """--compile: torch.compile with static shapes (widths are multiples of 64, so a run has at most
    max_len / 64 of them per batch size, each compiled once: the recompile limit is raised to let them all
    compile); without it, nothing is compiled."""
    if not cfg.compile:
        return lambda f: f
    import torch._dynamo
    for name in ("recompile_limit", "cache_size_limit"):  # the name of torch >= 2.6, and of before
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))
    return lambda f: torch.compile(f, **COMPILE_OPTIONS)


def accumulation_warning(cfg, world, accum) -> str:
    """Accumulation rounds the global batch down to a multiple of micro_batch x ranks: say so, with the
    micro-batches (no larger than this one) that would give batch_size exactly."""
    got = accum * cfg.micro_batch * world
    exact = [m for m in range(cfg.micro_batch, 0, -1) if cfg.batch_size % (m * world) == 0]
    fix = (f"--micro_batch={exact[0]} gives exactly {cfg.batch_size:,} ({exact[0]} x {world} x "
           f"{cfg.batch_size // (exact[0] * world)})" if exact else
           f"no micro-batch gives exactly {cfg.batch_size:,} on {world} rank(s)")
    return (f"warning: --batch_size={cfg.batch_size:,}: {cfg.micro_batch} sequences x {world} rank(s) x {accum} "
            f"micro-steps = {got:,} sequences per step (accumulation rounds down); {fix}")


def finish(run: Run):
    """Leave together (rank 0 was still writing), and drop DDP's reducer before its process group."""
    if run.ddp:
        dist.barrier()
        run.wrapped = None
        gc.collect()
        dist.destroy_process_group()


def build_models(cfg, shards) -> tuple:
    """(the model to train, the frozen teacher or None): the student from the teacher's layers
    (--init=teacher), a fresh model (--init=scratch) or the teacher itself (--init=pretrained, mlm mode)."""
    teacher = None
    if cfg.mode == "distill" or cfg.init in ("teacher", "pretrained", "random"):
        teacher = load_teacher(cfg.teacher, shards, distill=cfg.mode == "distill")
    if cfg.init == "pretrained":
        if cfg.mode != "mlm":
            raise SystemExit("--init=pretrained continues the MLM training of --teacher itself: use it with "
                             "--mode=mlm")
        model = teacher
        if model.pooler is not None:  # kept as it is: the MLM loss does not reach it
            model.pooler.requires_grad_(False)
    elif cfg.init in ("teacher", "random"):
        layers = [int(i) for i in cfg.student_layers.split(",")] if cfg.student_layers else None
        try:
            model = student_from_teacher(teacher, layers)
        except ValueError as e:  # layers the teacher does not have
            raise SystemExit(f"--student_layers={cfg.student_layers} with --teacher={cfg.teacher}: {e}") from None
        if cfg.init == "random":  # Table 4's "random init": the same student shape, its weights drawn afresh
            model = Bert(model.cfg)
    elif cfg.init == "scratch":
        matrices = cfg.layers * (4 * cfg.hidden ** 2 + 2 * cfg.hidden * cfg.intermediate)  # the layers' alone
        free = free_memory("cpu")
        if free is not None and 4 * matrices > free:
            raise SystemExit(f"--layers={cfg.layers} --hidden={cfg.hidden} --intermediate={cfg.intermediate}: "
                             f"the model has more than {matrices:,} parameters, {4 * matrices / 2**30:,.1f} GiB in "
                             f"float32, more than the {free / 2**30:,.1f} GiB free here: train a smaller model")
        model = Bert(BertConfig(vocab_size=shards.vocab_size, hidden_size=cfg.hidden, num_layers=cfg.layers,
                                num_heads=cfg.heads, intermediate_size=cfg.intermediate,
                                max_position=cfg.max_len, pad_token_id=shards.special["pad"]))
    else:
        raise SystemExit(f"--init={cfg.init}: expected teacher, random, scratch or pretrained")
    if cfg.freeze_pos_embs and cfg.init == "teacher":  # as the released model: see README, "The reference"
        model.emb.pos.weight.requires_grad_(False)
    source = cfg.teacher if cfg.init in ("teacher", "pretrained", "random") else "the model"
    check_positions(cfg, model, source)
    if cfg.mode == "distill":  # what the teacher is, whatever its path: a resume must distil from the same one
        teacher.content_id = tensors_sha256(teacher.state_dict())
    check_memory(cfg, shards, model, teacher if cfg.mode == "distill" else None)
    return model, (teacher if cfg.mode == "distill" else None)  # in mlm mode the teacher only lent its layers


def check_settings(cfg):
    """train.TrainConfig's settings that only work together (each alone is checked by its opt range): a
    ValueError of one line naming the setting."""
    layers = cfg.student_layers.split(",") if cfg.student_layers else []
    unknown = sorted({k for k in cfg.resume_changes.split(",") if k} - {*RESUME_SAME, "world"})
    rules = [
        (cfg.init != "scratch" or cfg.hidden % cfg.heads == 0,
         f"--hidden={cfg.hidden} is not a multiple of --heads={cfg.heads} (each head has hidden/heads dimensions)"),
        (all(s.strip().isdigit() for s in layers) and all(int(b) > int(a) for a, b in zip(layers, layers[1:]))
         if layers else True,
         f"--student_layers={cfg.student_layers!r}: expected teacher layer numbers, increasing, e.g. 0,2,4"),
        (cfg.mode != "distill" or cfg.alpha_ce + cfg.alpha_mlm + cfg.alpha_cos + cfg.alpha_mse + cfg.alpha_pool > 0,
         "--alpha_ce, --alpha_mlm, --alpha_cos, --alpha_mse and --alpha_pool are all 0: the loss would be 0"),
        (not unknown, f"--resume_changes={cfg.resume_changes}: {', '.join(unknown)} not among "
                      f"{', '.join((*RESUME_SAME, 'world'))}"),
        (not cfg.head_steps or cfg.mode == "mlm", f"--head_steps={cfg.head_steps}: only in --mode=mlm"),
    ]
    for ok, why in rules:
        if not ok:
            raise ValueError(why)


def check_config(cfg, world):
    """The batch against the ranks, refused in one line before anything is loaded."""
    if cfg.micro_batch * world > cfg.batch_size:
        raise SystemExit(f"--micro_batch={cfg.micro_batch} x {world} rank(s) is more than --batch_size="
                         f"{cfg.batch_size}: a step would train on {cfg.micro_batch * world} sequences; "
                         f"lower --micro_batch or raise --batch_size")


def check_memory(cfg, shards, model, teacher):
    """Refuse, before any work, settings whose memory cannot fit: a lower bound of what one optimizer step
    adds, from the shapes, against the memory free on this machine (and GPU). Counted: the step's
    micro-batches, as their shortest possible sequences' real tokens, each as int64 ids and attention mask
    from the loader, then masked ids and labels; the student's gradients and AdamW moments (fp32; on a GPU
    its weights and the frozen teacher's too, as they are not there yet); and the layer inputs and
    feed-forward activations one micro-batch keeps for the backward pass (2 bytes each unless
    --dtype=float32). Padding, attention, logits and the allocator are not counted, so a refusal is certain;
    a pass is no promise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # ranks sharing this machine's memory
    # a rank's share of the data, as short as it can be: its sequences the shortest ones, repeated when a step
    # holds more of them than the rank has
    every = np.sort(shards.sequences("train", cfg.max_len).lengths)
    lengths = every[:max(1, len(every) // world)]
    fewest = lambda k: (k // len(lengths)) * int(lengths.sum()) + int(lengths[:k % len(lengths)].sum())  # noqa: E731
    micro = min(cfg.micro_batch, len(lengths))  # a micro-batch holds no more than a rank's data
    step_tokens = fewest(max(1, cfg.batch_size // (cfg.micro_batch * world)) * micro)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    half_teacher = sum(p.numel() for p in teacher.parameters()) // 2 if teacher is not None else 0
    act = 4 if cfg.dtype == "float32" else 2
    activations = fewest(micro) * model.cfg.num_layers * (model.cfg.hidden_size + model.cfg.intermediate_size) * act
    gpu = pick_device(cfg.device).type == "cuda"
    parts = {  # name -> (bytes on the host, bytes on the GPU), what to do
        "batches": ((16 if gpu else 32) * step_tokens, 16 * step_tokens if gpu else 0),
        "weights": (0 if gpu else 12 * trainable, 16 * trainable + 4 * (frozen + half_teacher) if gpu else 0),
        "activations": (0 if gpu else activations, activations if gpu else 0),
    }
    advice = {"batches": "lower --batch_size", "weights": "train a smaller model",
              "activations": "lower --micro_batch"}
    places = [("cpu", local * sum(h for h, _ in parts.values()), 0)]
    if gpu:
        places.append((str(pick_device(cfg.device)), sum(d for _, d in parts.values()), 1))
    for where, need, i in places:
        free = free_memory(where)
        if free is not None and need > free:
            name = max(parts, key=lambda k: parts[k][i])
            raise SystemExit(f"--batch_size={cfg.batch_size} --micro_batch={cfg.micro_batch} --max_len="
                             f"{cfg.max_len}: one step needs at least {need / 2**30:,.1f} GiB on {where} (most "
                             f"of it the {name}), more than the {free / 2**30:,.1f} GiB free there: "
                             f"{advice[name]}")


def free_memory(where):
    """Bytes free for a new allocation: on a GPU what CUDA reports; on the CPU MemAvailable, within the
    control group's limit when there is one (its file cache counted as free: the kernel gives it back). None
    where it cannot be told."""
    if where != "cpu":
        return torch.cuda.mem_get_info(torch.device(where))[0]
    free = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError):
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        used = int((cgroup / "memory.current").read_text())
        stat = dict(line.split() for line in (cgroup / "memory.stat").read_text().splitlines())
        cache = int(stat.get("active_file", 0)) + int(stat.get("inactive_file", 0))
        if limit != "max":
            free = min(free if free is not None else math.inf, int(limit) - used + cache)
    return free


def check_positions(cfg, model, source):
    if cfg.max_len > model.cfg.max_position:
        raise SystemExit(f"--max_len={cfg.max_len} is more than the {model.cfg.max_position} positions of "
                         f"{source}: use --max_len={model.cfg.max_position} or less")


def open_data(cfg):
    """The prepared --data folder; a missing, damaged or foreign one is a one-line error naming the file."""
    try:
        return data.TokenData(cfg.data)
    except (ValueError, OSError) as e:
        raise SystemExit(f"--data={cfg.data}: {' '.join(str(e).split())}") from None


def teacher_dtype(cfg, device, dtype) -> torch.dtype:
    """The frozen teacher's weights: the training half precision on CUDA with --teacher_half (it only runs
    forward, under the same autocast), float32 otherwise: --dtype=float32 keeps the teacher in float32 too."""
    return dtype if cfg.teacher_half and device.type == "cuda" and dtype != torch.float32 else torch.float32
