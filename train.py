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
import gc
import json
import os
import shutil
import signal
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
    init: str = opt("teacher", "teacher: student layers copied from the teacher | scratch: random (mlm mode)")
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


PRESETS = {
    "bert-base": {},  # the defaults: DistilBERT's recipe from bert-base-uncased
    "tiny": dict(max_len=64, batch_size=16, micro_batch=8, eval_every=0, eval_batches=5, save_every=1000,
                 log_every=1, layers=2, hidden=64, heads=2, intermediate=128),
    # the README's main command: a 4 x 128 teacher pretrained for QUICKSTART_TEACHER_STEPS at QUICKSTART_TEACHER_LR,
    # students for max_steps at the paper's lr;
    # uniform masking, which takes a small model past the "most frequent word" stage sooner than the smoothed choice
    "quickstart": dict(max_len=128, batch_size=32, micro_batch=32, max_steps=300, eval_every=0,
                       eval_batches=20, save_every=100, log_every=10, layers=4, hidden=128, heads=2,
                       intermediate=512, masking="uniform"),
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

    def forward(self, ids, attention_mask, labels, teacher_hidden, denoms):
        cfg, real, masked = self.cfg, attention_mask.bool(), labels != -100
        out = self.student(ids, attention_mask=attention_mask, return_logits=False)
        h = out.hidden_states[-1]
        rows = real if cfg.ce_positions == "all" else masked
        if teacher_hidden is None:  # mlm mode: the masked-LM loss alone
            return L.combine({"mlm": L.mlm_loss(self.student.mlm_logits(h[masked]), labels[masked],
                                                denom=denoms["masked"])}, alpha_mlm=1.0)
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
    warm = max(1, int(cfg.warmup * total))
    return cfg.lr * (step / warm if step < warm else max(0.0, (total - step) / max(1, total - warm)))


def save_checkpoint(path: Path, state: dict, keep_last: int):
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash leaves the previous checkpoint intact
    for old in sorted(path.parent.glob("ckpt-*.pt"))[:-keep_last]:
        old.unlink()


def load_teacher(cfg, data):
    try:
        teacher = Bert.from_pretrained(cfg.teacher)
    except FileNotFoundError as e:
        raise SystemExit(f"teacher {cfg.teacher!r} not found.\n{e}\nOr pretrain one offline on your data: "
                         f"python train.py --mode=mlm --init=scratch --data={cfg.data} --out_dir=out/teacher "
                         f"(then --teacher=out/teacher/model)") from None
    vocab = Path(cfg.teacher) / "vocab.txt"
    if teacher.cfg.vocab_size != data.vocab_size or (vocab.is_file() and D.vocab_hash(D.load_tokenizer(vocab)) !=
                                                     data.meta["vocab_hash"]):
        raise SystemExit(f"vocabulary mismatch: teacher {cfg.teacher} (vocab_size {teacher.cfg.vocab_size}) was not "
                         f"trained with the vocabulary of the shards in {cfg.data} (vocab_size {data.vocab_size}); "
                         f"prepare the data with --vocab={vocab if vocab.is_file() else 'the teacher vocab.txt'}")
    return teacher


def auto_dtype(device) -> torch.dtype:
    """--dtype=auto. CUDA: bf16 where the GPU computes it natively (compute capability >= 8.0: A100, H100),
    else fp16 with a GradScaler, the paper's setting on V100s (torch.cuda.is_bf16_supported() also counts slow
    emulation, so it would pick bf16 on a V100 or T4). CPU: float32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    return torch.float32


def teacher_dtype(cfg, device, dtype) -> torch.dtype:
    """The frozen teacher's weights: the training half precision on CUDA with --teacher_half (it only runs
    forward, under the same autocast), float32 otherwise: --dtype=float32 keeps the teacher in float32 too."""
    return dtype if cfg.teacher_half and device.type == "cuda" and dtype != torch.float32 else torch.float32


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
    dtype = auto_dtype(device) if cfg.dtype == "auto" else \
        {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.dtype]
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext())
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    torch.manual_seed(cfg.seed + rank)
    out_dir = Path(cfg.out_dir)
    say = print if master else (lambda *a, **k: None)

    # --- data, models ---
    data = D.TokenData(cfg.data)
    loader = D.Batches(data, "train", cfg.max_len, cfg.micro_batch, seed=cfg.seed, rank=rank, world_size=world,
                       pin_memory=device.type == "cuda")
    accum = max(1, cfg.batch_size // (cfg.micro_batch * world))
    steps_per_epoch = len(loader) // accum
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    if total < 1:
        raise SystemExit(f"{cfg.data}: {len(loader)} micro-batches per rank, fewer than the {accum} that make one "
                         f"step of {cfg.batch_size} sequences: use more data or a smaller --batch_size")
    teacher = None
    if cfg.mode == "distill" or cfg.init == "teacher":
        teacher = load_teacher(cfg, data)
    if cfg.init == "teacher":
        layers = [int(i) for i in cfg.student_layers.split(",")] if cfg.student_layers else None
        model = student_from_teacher(teacher, layers)
    elif cfg.init == "scratch":
        model = Bert(BertConfig(vocab_size=data.vocab_size, hidden_size=cfg.hidden, num_layers=cfg.layers,
                                num_heads=cfg.heads, intermediate_size=cfg.intermediate, max_position=cfg.max_len,
                                pad_token_id=data.special["pad"]))
    else:
        raise SystemExit(f"--init={cfg.init}: expected teacher or scratch")
    if cfg.mode not in ("distill", "mlm"):
        raise SystemExit(f"--mode={cfg.mode}: expected distill or mlm")
    if cfg.mode == "mlm":
        teacher = None  # it only lent its layers
    model.to(device).train()
    if teacher is not None:
        teacher.to(device).eval().requires_grad_(False)
        teacher.to(teacher_dtype(cfg, device, dtype))
    objective = Objective(torch.compile(model) if cfg.compile else model, teacher, cfg)
    wrapped = DDP(objective, device_ids=[device.index] if device.type == "cuda" else None) if ddp else objective
    optimizer = make_optimizer(model, cfg)
    weights = D.smoothing_weights(data.counts, data.special).to(device) if cfg.masking == "smoothed" else None
    special = [v for k, v in data.special.items() if k != "mask"]

    # --- resume ---
    step, nonfinite, skipped = 0, 0, 0
    ckpts = sorted(out_dir.glob("ckpt-*.pt"))
    if cfg.resume and ckpts:
        state = torch.load(ckpts[-1], map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        loader.load_state_dict(state["data"])
        step, skipped = state["step"], state["skipped"]
        rng = state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0]
        torch.set_rng_state(rng["cpu"])
        if device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"])
        say(f"resumed from {ckpts[-1]} at step {step}")
    elif ckpts:
        raise SystemExit(f"{out_dir} already has checkpoints ({ckpts[-1].name}): pass --resume=true to continue, "
                         f"or choose another --out_dir")

    sizes = count_parameters(model)
    say(json.dumps({"config": dataclasses.asdict(cfg)}, indent=None))
    say(f"{cfg.mode}: {sizes['total']:,} trainable parameters, {world} rank(s) x {cfg.micro_batch} sequences x "
        f"{accum} micro-steps = {world * cfg.micro_batch * accum} per step, {total} steps, device {device}, {dtype}")

    def checkpoint(final=False):
        rng = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
        rngs = [None] * world
        if ddp:
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        if master:
            out_dir.mkdir(parents=True, exist_ok=True)
            state = {"model": model.state_dict(), "model_config": dataclasses.asdict(model.cfg),
                     "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "step": step,
                     "skipped": skipped, "data": loader.state_dict(), "rng": rngs, "config": dataclasses.asdict(cfg)}
            save_checkpoint(out_dir / f"ckpt-{step:07d}.pt", state, cfg.keep_last)
            if final:
                model.save_pretrained(out_dir / ("student" if cfg.mode == "distill" else "model"),
                                      tokenizer_files=[data.folder / data.meta["tokenizer"]["file"]])

    # A signal only sets stop["signal"] on the rank that received it; every rank leaves on `stopping`, the
    # flag all-reduced at the end of a step, so all ranks stop after the same step and enter the same
    # collectives (a signal reaching one rank after that all-reduce, during evaluation or a checkpoint, waits
    # for the next step's).
    stop, stopping = {"signal": None}, False

    def on_signal(signum, frame):
        stop["signal"] = signum
    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    # --- logging ---
    metrics = None
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
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
                raise SystemExit(f"{nonfinite} non-finite steps in a row: stopping. The last good checkpoint in "
                                 f"{out_dir} is intact; try a lower --lr or --dtype=float32")
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
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
                if run:
                    run.log(row, step=step)
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == total:
            result = evaluate(model, data, cfg, device)
            if master:
                row = {"step": step, **{f"valid_{k}": v for k, v in result.items()}}
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
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: no plot of {metrics_path}")
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
    fig.tight_layout()
    tmp = Path(png_path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)


def evaluate(model, data, cfg, device):
    from eval import mlm_eval  # held-out masked-token accuracy with a fixed mask; reduced over ranks
    return mlm_eval(model, data, split="valid", max_len=cfg.max_len, batch_size=cfg.micro_batch,
                    max_batches=cfg.eval_batches)


def quickstart(cfg: TrainConfig):
    """The whole recipe in miniature, offline on a CPU: prepare Python's own documentation as a corpus, pretrain a
    small teacher with the MLM loss, distil a half-depth student from it, and train the same student (same init, same
    steps) with the MLM loss alone as the baseline. Prints parameters, held-out MLM accuracy and perplexity."""
    from eval import mlm_eval
    root = Path(cfg.out_dir if cfg.out_dir != TrainConfig.out_dir else "out/quickstart")
    t0 = time.time()
    data_dir = root / "data"
    D.prepare([], data_dir, vocab_size=QUICKSTART_VOCAB, valid_fraction=0.05)
    for sub in ("teacher", "student", "student-mlm-only"):  # fresh runs each time; the data is reused
        shutil.rmtree(root / sub, ignore_errors=True)
    base = dataclasses.replace(cfg, data=str(data_dir), preset="")
    runs = {"teacher": dataclasses.replace(base, mode="mlm", init="scratch", out_dir=str(root / "teacher"),
                                           max_steps=QUICKSTART_TEACHER_STEPS, lr=QUICKSTART_TEACHER_LR)}
    teacher_dir = root / "teacher" / "model"
    runs["student"] = dataclasses.replace(base, mode="distill", teacher=str(teacher_dir), out_dir=str(root / "student"))
    runs["student-mlm-only"] = dataclasses.replace(base, mode="mlm", init="teacher", teacher=str(teacher_dir),
                                                   out_dir=str(root / "student-mlm-only"))
    stats = {}
    for name, run in runs.items():
        stats[name] = train(run)
        if stats[name]["stopped"]:
            raise SystemExit(f"quickstart stopped during the {name} run; its checkpoint is in {run.out_dir}")
    data = D.TokenData(data_dir)
    rows = []
    for name, folder in [("teacher", teacher_dir), ("student", root / "student" / "student"),
                         ("student-mlm-only", root / "student-mlm-only" / "model")]:
        model = Bert.from_pretrained(folder)
        result = mlm_eval(model, data, split="valid", max_len=cfg.max_len, batch_size=cfg.micro_batch)
        rows.append((name, stats[name], result))
    print(f"\n{'model':<18}{'params':>12}{'steps':>7}{'MLM acc':>9}{'ppl':>9}{'train tok/s':>13}")
    for name, st, r in rows:
        print(f"{name:<18}{st['parameters']:>12,}{st['step']:>7}{r['accuracy']:>9.4f}{r['perplexity']:>9.2f}"
              f"{st['tokens_per_s']:>13,.0f}")
    verdict = "beats" if rows[1][2]["accuracy"] > rows[2][2]["accuracy"] else "does NOT beat"
    print(f"held-out MLM accuracy on {rows[0][2]['tokens']:,} masked tokens of {data_dir}/valid: the distilled "
          f"student {verdict} the MLM-only student; total time {time.time() - t0:.0f} s")
    (root / "results.json").write_text(json.dumps({n: {"train": st, "valid": r} for n, st, r in rows}, indent=2))
    return rows


QUICKSTART_VOCAB, QUICKSTART_TEACHER_STEPS, QUICKSTART_TEACHER_LR = 4096, 1000, 2e-3  # students: the paper's lr

if __name__ == "__main__":
    cfg = parse_args(sys.argv[1:])
    if cfg.preset == "quickstart":
        quickstart(cfg)
    else:
        train(cfg)
