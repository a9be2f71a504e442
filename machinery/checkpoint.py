"""
A training run's checkpoints: written atomically with a sha256 beside them (`sha256sum -c` format), verified
on load, damaged ones set aside, and the out_dir lock that keeps two runs from writing to one folder. train.py
calls these; nothing here is needed to read the training loop.
"""
import contextlib
import dataclasses
import functools
import json
import math
import os
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from machinery.files import exclusive_lock as common_lock
from machinery.files import fsync_dir, sha256, sha256_text, write_atomic, write_text
from machinery.hf import save_pretrained
from machinery.tokenizer import write_tokenizer_files
from model import count_parameters

CKPT_KEYS = ("model", "optimizer", "scaler", "step", "skipped", "data", "rng")
EXPORTS = ("student", "model")  # the exported model folder of a distill run and of an mlm run
# the settings a resumed run must share with the checkpoint (--resume_changes=KEY,... accepts a change)
RESUME_SAME = ("mode", "init", "batch_size", "micro_batch", "seed", "lr", "max_len", "masking")
# what a run writes in out_dir besides its lock: a start that resumes none of it never writes over it
OUTPUTS = ("ckpt-*.pt*", "metrics.jsonl", "losses.png", *EXPORTS)


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_checkpoint(path: Path, state: dict, keep_last: int):
    """torch.save into path.tmp, its checksum into path.sha256, then renamed into place: a crash or a full
    disk leaves the previous checkpoints intact, and the temporary files are removed. The checksum goes first,
    so that a checkpoint is never there without it. Keeps the newest keep_last checkpoints."""
    sums = checksum_path(path)

    def write(tmp):
        torch.save(state, tmp)
        write_atomic(sums, lambda t: t.write_text(f"{sha256(tmp)}  {path.name}\n"),
                     tmp=sums.with_name(sums.name + ".tmp"))
    try:
        write_atomic(path, write, tmp=path.with_name(path.name + ".tmp"))
    except (OSError, RuntimeError) as e:  # a full disk: OSError from a write, RuntimeError from torch.save
        why = e.strerror if isinstance(e, OSError) and e.strerror else (str(e).splitlines() or [""])[0][:120]
        with contextlib.suppress(OSError):
            why += f"; {shutil.disk_usage(path.parent).free:,} bytes free there"
        raise SystemExit(f"{path}: checkpoint not written ({why}); the previous checkpoints in "
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
        if sha256(path) != want:
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
                         f"--restart=true moves this run aside and starts fresh, or use another --out_dir")
    return None, None


def set_aside(path: Path, say):
    """Rename a damaged checkpoint (and its checksum) to *.pt.bad (then .bad.2, .bad.3, ...: an earlier one is
    never overwritten): kept for inspection, out of the way."""
    bad, n = path.with_name(path.name + ".bad"), 1
    while bad.exists() or checksum_path(bad).exists():
        n += 1
        bad = path.with_name(f"{path.name}.bad.{n}")
    with contextlib.suppress(OSError):
        os.replace(path, bad)
        if checksum_path(path).exists():
            os.replace(checksum_path(path), checksum_path(bad))
        say(f"{path} set aside as {bad.name}")


def clean_stale_tmp(out_dir: Path, say):
    """Remove the temporary files an interrupted checkpoint write left (only our own names: ckpt-*.pt.tmp and
    ckpt-*.pt.sha256.tmp, and a ckpt-*.pt.sha256 whose checkpoint never arrived), so that a full disk does not
    stay full, and the temporary folder of an interrupted export (.student.XXXXXXXX or .model.XXXXXXXX, the
    names write_atomic gives it, in this run's locked out_dir)."""
    orphans = [p for p in out_dir.glob("ckpt-*.pt.sha256") if not p.with_suffix("").exists()]
    for tmp in sorted([*out_dir.glob("ckpt-*.pt.tmp"), *out_dir.glob("ckpt-*.pt.sha256.tmp"), *orphans]):
        if tmp.is_file():
            say(f"removing {tmp}, left by an interrupted checkpoint write")
            tmp.unlink()
    for tmp in sorted(p for name in EXPORTS for p in out_dir.glob(f".{name}.*")):
        if tmp.is_dir() and re.fullmatch(rf"\.({'|'.join(EXPORTS)})\.([a-z0-9_]{{8}}|old)", tmp.name):
            say(f"removing {tmp}, left by an interrupted export")
            shutil.rmtree(tmp)


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


def trim_metrics(path: Path, step: int):
    """Drop the metrics.jsonl rows after `step` (written after the checkpoint a resumed run continues from,
    e.g. before a kill -9), atomically, so that no step appears twice."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines(keepends=True)
            if line.strip() and _row_step(line) <= step]
    write_text("".join(line if line.endswith("\n") else line + "\n" for line in keep), path)


def _row_step(line):
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf  # a row cut short by a kill goes


def out_dir_lock(out_dir: Path):
    """An exclusive lock on out_dir/train.lock (common.exclusive_lock: released by the system when the process
    dies); a second run on the same out_dir is refused, naming the holder's pid."""
    path = Path(out_dir) / "train.lock"
    return common_lock(path, lambda holder: SystemExit(
        f"{path}: another run is writing to {out_dir} ({holder}); wait for it to finish or choose another "
        f"--out_dir"))


def holds_out_dir_lock(run):
    """train(cfg) under the out_dir lock, taken by rank 0 (the only rank that writes there)."""
    @functools.wraps(run)
    def locked(cfg, *a, **k):
        rank0, out = int(os.environ.get("RANK", "0")) == 0, Path(cfg.out_dir)
        if out.exists() and not out.is_dir():
            raise SystemExit(f"--out_dir={out} is a file, not a folder: choose another --out_dir")
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(out_dir_lock(out) if rank0 else contextlib.nullcontext())
            except OSError as e:  # a read-only file system, no permission, a file on the way
                raise SystemExit(f"--out_dir={out}: cannot write there ({e.strerror or e}: "
                                 f"{e.filename or out})") from None
            return run(cfg, *a, **k)
    return locked


def check_resume(cfg, state, path, model, data_id):
    """A checkpoint continues only the run that wrote it: the same --mode, --init, data (by content, not
    path), batch geometry, seed, lr, max_len and masking, and a model of the same shape. A change named in
    --resume_changes is accepted, and said."""
    was, allowed = state.get("config", {}), {k for k in cfg.resume_changes.split(",") if k}
    unknown = allowed - {*RESUME_SAME, "data", "world"}
    if unknown:
        raise SystemExit(f"--resume_changes={cfg.resume_changes}: {', '.join(sorted(unknown))} not among "
                         f"{', '.join((*RESUME_SAME, 'data', 'world'))}")
    changed = {k: (was[k], getattr(cfg, k)) for k in RESUME_SAME if k in was and was[k] != getattr(cfg, k)}
    if state.get("data_id") not in (None, data_id):
        changed["data"] = ("other data", f"{cfg.data} (other content)")
    for key, (a, b) in changed.items():
        if key not in allowed:
            raise SystemExit(f"{path} was written by a --{key}={a} run; resuming it with --{key}={b} is "
                             f"refused (use --{key}={a}, another --out_dir, or --resume_changes={key} to "
                             f"accept the change)")
        print(f"resuming {path} with --{key}={b} (was {a}): accepted by --resume_changes")
    # frozen position embeddings (train.build_models); a checkpoint from before the setting trained them
    frozen = lambda c: bool(c.get("freeze_pos_embs", False)) and c.get("init") == "teacher"
    if was and frozen(was) != frozen(dataclasses.asdict(cfg)):
        raise SystemExit(f"{path} was written by a run whose position embeddings were "
                         f"{'frozen' if frozen(was) else 'trained'}: resume it with --freeze_pos_embs="
                         f"{str(frozen(was)).lower()}, or use another --out_dir")
    now = dataclasses.asdict(model.cfg)
    other = {k: (v, now.get(k)) for k, v in state.get("model_config", now).items() if now.get(k) != v}
    if other:
        diff = ", ".join(f"{k} {a} vs {b} here" for k, (a, b) in other.items())
        raise SystemExit(f"{path} holds another model ({diff}): resuming it is refused (use another "
                         f"--out_dir)")


def earlier_outputs(out_dir: Path) -> list:
    """The files and folders of an earlier run in out_dir (checkpoints, set-aside ones, metrics, exports)."""
    return sorted({p for pattern in OUTPUTS for p in out_dir.glob(pattern)}) if out_dir.is_dir() else []


def move_aside(out_dir: Path, say) -> Path:
    """--restart=true: the earlier run's outputs moved (never deleted) into out_dir/earlier-N, a new N each
    time."""
    n = 1
    while (out_dir / f"earlier-{n}").exists():
        n += 1
    aside = out_dir / f"earlier-{n}"
    aside.mkdir()
    for p in earlier_outputs(out_dir):
        os.replace(p, aside / p.name)
    fsync_dir(out_dir)
    say(f"--restart=true: the earlier run's outputs moved to {aside}")
    return aside


def data_identity(shards) -> str:
    """What the data is, whatever its path: the sha256 of its meta.json's file checksums and splits."""
    meta = shards.meta
    return sha256_text(json.dumps([meta.get("files"), meta.get("splits"), meta.get("vocab_hash")],
                                  sort_keys=True))


def resume(run):
    """With --resume=true, continue from the newest checkpoint that verifies; without, refuse an out_dir that
    already has checkpoints. A start that resumes nothing never writes over an earlier run's outputs
    (metrics.jsonl, the export, set-aside checkpoints): it is refused until --restart=true moves them aside.
    Then print the run's settings. Returns the (step, skipped) to continue from: (0, 0) for a fresh run.

    Rank 0 alone looks at out_dir and decides: another rank's out_dir may be another machine's folder, without
    rank 0's checkpoints (no shared file system). The checkpoint it resumes is sent to every rank, so that all
    continue from the same step with the same weights (DDP only checks that they start alike), or every rank
    stops with rank 0's message."""
    cfg = run.cfg
    if cfg.restart and cfg.resume:
        raise SystemExit("--restart=true starts afresh and --resume=true continues: choose one")
    decision = None
    if run.master:
        try:
            decision = start_point(run)
        except SystemExit as e:
            if not run.ddp:
                raise
            decision = str(e.code)
    if run.ddp:  # over the host's process group (gloo): the checkpoint is on the host
        sent = [decision]
        dist.broadcast_object_list(sent, src=0)
        decision = sent[0]
    if isinstance(decision, str):  # rank 0 refused to start
        raise SystemExit(decision)
    step = skipped = 0
    if decision is not None:
        path, state = decision
        step, skipped = load_state(run, state)
        run.say(f"resumed from {path} at step {step}")
    run.say(json.dumps({"config": dataclasses.asdict(cfg)}, indent=None))
    per_step = run.world * cfg.micro_batch * run.accum
    frozen = sum(p.numel() for p in run.model.parameters() if not p.requires_grad)
    run.say(f"{cfg.mode}: {count_parameters(run.model)['total'] - frozen:,} trainable parameters"
            + (f" ({frozen:,} frozen)" if frozen else "") + f", {run.world} rank(s) "
            f"x {cfg.micro_batch} sequences x {run.accum} micro-steps = {per_step} per step, {run.total} "
            f"steps, device {run.device}, {run.dtype} ({run.why})")
    return step, skipped


def start_point(run):
    """Rank 0's decision on out_dir: (path, state) of the checkpoint to resume, or None to start afresh; a
    refusal is a SystemExit."""
    cfg, out_dir = run.cfg, run.out_dir
    if out_dir.is_dir():
        clean_stale_tmp(out_dir, run.say)
    if cfg.restart and earlier_outputs(out_dir):
        move_aside(out_dir, run.say)
    ckpts = sorted(out_dir.glob("ckpt-*.pt"))
    path, state = newest_good_checkpoint(out_dir, True, run.say) if cfg.resume else (None, None)
    if state is not None:
        check_resume(cfg, state, path, run.model, data_identity(run.shards))
        check_world(cfg, state, path, run.world)
        return path, state
    if ckpts:
        raise SystemExit(f"{out_dir} already has checkpoints ({ckpts[-1].name}): pass --resume=true to "
                         f"continue, --restart=true to move them aside and start fresh, or choose another "
                         f"--out_dir")
    if earlier := earlier_outputs(out_dir):
        names = ", ".join(p.name for p in earlier[:4])
        raise SystemExit(f"{out_dir} holds an earlier run's outputs ({names}) and no checkpoint to resume: "
                         f"--restart=true moves them aside into {out_dir}/earlier-N and starts fresh "
                         f"(nothing is deleted), or choose another --out_dir")
    if cfg.resume:
        run.say(f"--resume=true: no checkpoint in {out_dir}: starting fresh")
    return None


def check_world(cfg, state, path, world):
    """The number of ranks is part of the data order (rank r takes global batches r, r + ranks, ...; see
    data.Batches): a resume on another number is refused unless --resume_changes=world accepts it, and then
    the epoch goes on from the same global batch (Batches.load_state_dict)."""
    was = len(state["rng"])  # every rank's RNG state is saved
    if was == world:
        return
    if "world" not in cfg.resume_changes.split(","):
        raise SystemExit(f"{path} was written by a run on {was} rank(s); resuming it on {world} is refused: the "
                         f"data order depends on the number of ranks. Resume it on {was} rank(s), or pass "
                         f"--resume_changes=world to continue the epoch at the same global batch (rounded down "
                         f"to a multiple of {world}: up to {world - 1} batch(es) seen twice, none skipped; the "
                         f"epoch's last batches cut for {world} ranks; the micro-steps per step recomputed)")
    print(f"resuming {path}, written on {was} rank(s), on {world}: accepted by --resume_changes; the epoch "
          f"continues at the same global batch, rounded down to a multiple of {world}")


def load_state(run, state) -> tuple:
    """A checkpoint's state into this rank's run: weights, optimizer, loss scale, data position (converted
    when the number of ranks changed), RNG (a rank the checkpoint's run did not have keeps its own seed).
    Returns (step, skipped)."""
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    run.loader.load_state_dict({"world": len(state["rng"]), **state["data"]})
    if run.rank < len(state["rng"]):
        rng = state["rng"][run.rank]
        torch.set_rng_state(rng["cpu"])
        if run.device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"])
    return state["step"], state["skipped"]


def save(run, probe, final=False):
    """A checkpoint (every rank's RNG state gathered; written by rank 0, unless the model has gone
    non-finite); with final, the exported model too: student/ (distill) or model/ (mlm), with the tokenizer
    files."""
    cuda = run.device.type == "cuda"
    rng = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(run.device) if cuda else None}
    rngs = [None] * run.world
    if run.ddp:
        dist.all_gather_object(rngs, rng)
    else:
        rngs = [rng]
    if not run.master:
        return
    if not usable(run.model, probe, run.autocast):
        run.say(f"step {run.step}: the parameters are not finite or give non-finite outputs: no checkpoint "
                f"written")
        return
    state = {"model": run.model.state_dict(), "model_config": dataclasses.asdict(run.model.cfg),
             "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(), "step": run.step,
             "skipped": run.skipped, "data": run.data_state or run.loader.state_dict(), "rng": rngs,
             "config": dataclasses.asdict(run.cfg), "data_id": data_identity(run.shards)}
    save_checkpoint(run.out_dir / f"ckpt-{run.step:07d}.pt", state, run.cfg.keep_last)
    if final:
        export(run)


def export_dir(run) -> Path:
    return run.out_dir / ("student" if run.cfg.mode == "distill" else "model")


def export(run):
    """The trained model in Hugging Face's format with the tokenizer files: student/ (distill) or model/
    (mlm). Also redone by a run resumed at its last step whose export is missing (a kill during the export,
    or the folder deleted)."""
    if not run.master:
        return
    vocab = run.shards.folder / run.shards.meta["tokenizer"]["file"]
    tokenizer = lambda folder: write_tokenizer_files(vocab, folder, run.model.cfg.max_position)
    save_pretrained(run.model, export_dir(run), extra_files=tokenizer)


