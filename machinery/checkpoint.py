"""
A training run's checkpoints: written atomically with a sha256 beside them (`sha256sum -c` format), verified
on load, damaged ones set aside, and the out_dir lock that keeps two runs from writing to one folder. train.py
calls these; nothing here is needed to read the training loop.
"""
import contextlib
import dataclasses
import functools
import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError

from machinery.files import exclusive_lock as common_lock
from machinery.files import disk_error, fsync_dir, sha256, sha256_text, write_atomic
from machinery.hf import MANIFEST, convert_to_hf, save_pretrained, stored_sha256, tensors_sha256
from machinery.tokenizer import write_tokenizer_files

CKPT_KEYS = ("model", "optimizer", "scaler", "step", "skipped", "data", "rng")
EXPORTS = ("student", "model")  # the exported model folder of a distill run and of an mlm run
# a checkpoint is a file named exactly so (ckpt-0000040.pt): a user's ckpt-best.pt is never one
CHECKPOINT = re.compile(r"ckpt-(\d{7,})\.pt")
# what a run writes in out_dir besides its lock (checkpoints, their checksums, set-aside and temporary
# ones; metrics, set-aside metrics rows, the plot, the exports): a start that resumes none of it never writes
# over it, --restart moves it aside, and nothing else in out_dir is ever touched
OUTPUT = re.compile(r"ckpt-\d{7,}\.pt(\.bad(\.\d+)?)?(\.sha256)?(\.tmp)?|metrics\.jsonl(\.bad(\.\d+)?)?|"
                    rf"losses\.png|{'|'.join(EXPORTS)}")

# The settings that decide what a run computes, each with the runs that read it (a test keeps every
# TrainConfig field either here or in NOT_COMPUTED). A resume must keep them: data and teacher by content,
# dtype as resolved on this machine, the model's shape by the checkpoint's; --resume_changes=KEY,... accepts
# a change. The quickstart reuses a finished stage only when they are the same.
ALWAYS = lambda c: True  # noqa: E731
READ_BY = {
    "mode": ALWAYS, "init": ALWAYS, "data": ALWAYS,
    "teacher": lambda c: c["mode"] == "distill" or c["init"] != "scratch",
    "student_layers": lambda c: c["init"] in ("teacher", "random"),
    "freeze_pos_embs": lambda c: c["init"] == "teacher",
    **{k: lambda c: c["init"] == "scratch" for k in ("layers", "hidden", "heads", "intermediate")},
    **{k: ALWAYS for k in ("max_len", "batch_size", "micro_batch", "masking", "seed", "dtype", "lr", "warmup",
                           "beta1", "beta2", "adam_eps", "weight_decay", "grad_clip", "max_steps")},
    "epochs": lambda c: not c["max_steps"],
    "head_steps": lambda c: c["mode"] == "mlm",
    "head_lr": lambda c: c["mode"] == "mlm" and c["head_steps"] > 0,
    **{k: lambda c: c["mode"] == "distill" for k in ("temperature", "alpha_ce", "alpha_mlm", "alpha_cos",
                                                      "alpha_mse", "alpha_pool", "ce_positions",
                                                      "teacher_half")},
}
# where a run writes, how often it reports, and what only changes rounding or speed (ce_chunk, compile)
NOT_COMPUTED = ("out_dir", "device", "compile", "ce_chunk", "eval_every", "eval_batches", "save_every",
                "keep_last", "log_every", "resume", "restart", "resume_changes", "max_nonfinite", "wandb",
                "preset")
# compared otherwise: the model's shape by the checkpoint's model_config, freeze_pos_embs on its own
SHAPE = ("layers", "hidden", "heads", "intermediate", "freeze_pos_embs")
RESUME_SAME = tuple(k for k in READ_BY if k not in SHAPE)  # what --resume_changes may name


def read_settings(config: dict) -> dict:
    """The settings of a run (a TrainConfig as a dict) that decide what it computes, those its mode and init
    read; keys it does not hold (a checkpoint from before they existed) are left out."""
    return {k: config[k] for k, read in READ_BY.items() if k in config and read(config)}


def checkpoints(out_dir: Path) -> list:
    """The checkpoints in out_dir (ckpt-NNNNNNN.pt, nothing else), oldest first by step."""
    found = [p for p in Path(out_dir).glob("ckpt-*.pt") if CHECKPOINT.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT.fullmatch(p.name)[1]))


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_checkpoint(path: Path, state: dict, keep_last: int):
    """torch.save into path.tmp, its checksum into path.sha256, then renamed into place: a crash or a full
    disk leaves the previous checkpoints intact, and the temporary files are removed. The checksum goes first,
    so that a checkpoint is never there without it. Keeps the newest keep_last checkpoints."""
    if keep_last < 1:
        raise ValueError(f"keep_last={keep_last}: at least the checkpoint just written is kept")
    sums = checksum_path(path)

    def write(tmp):
        torch.save(state, tmp)
        write_atomic(sums, lambda t: t.write_text(f"{sha256(tmp)}  {path.name}\n"),
                     tmp=sums.with_name(sums.name + ".tmp"))
    try:
        write_atomic(path, write, tmp=path.with_name(path.name + ".tmp"))
    except (OSError, RuntimeError) as e:  # a full disk: OSError from a write, RuntimeError from torch.save
        raise SystemExit(f"{disk_error(path, e, 'checkpoint not written')}; the previous checkpoints in "
                         f"{path.parent} are intact") from None
    for old in checkpoints(path.parent)[:-keep_last]:
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
    ckpts = checkpoints(out_dir)[::-1]
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
    ours = lambda p, pattern: re.fullmatch(rf"ckpt-\d{{7,}}\.pt{pattern}", p.name)  # noqa: E731
    orphans = [p for p in out_dir.glob("ckpt-*.pt.sha256") if ours(p, r"\.sha256") and not
               p.with_suffix("").exists()]
    for tmp in sorted([*out_dir.glob("ckpt-*.pt.tmp"), *out_dir.glob("ckpt-*.pt.sha256.tmp"), *orphans]):
        if tmp.is_file() and ours(tmp, r"(\.sha256)?(\.tmp)?"):
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
    for path in checkpoints(out_dir)[::-1]:
        with contextlib.suppress(ValueError, OSError):
            load_checkpoint(path)
            return (f"{count} non-finite steps in a row at step {step}: stopping. {path} is the newest "
                    f"checkpoint that verifies (checksum, finite parameters); --resume=true continues from "
                    f"it: try a lower --lr or --dtype=float32")
    return (f"{count} non-finite steps in a row at step {step}: stopping. No checkpoint in {out_dir} "
            f"verifies: nothing to resume; start again with a lower --lr or --dtype=float32")


def trim_metrics(path: Path, step: int, say=print):
    """Before a resumed run appends to metrics.jsonl: the rows of steps after `step` (written after the
    checkpoint it continues from, e.g. before a kill -9) are dropped, so that no step appears twice, with a
    last row cut short by a kill (written after that checkpoint too); a row that cannot be read (not UTF-8,
    not a JSON object with a step) is moved to metrics.jsonl.bad (then .bad.2, ...: never overwritten),
    never dropped. Each is said in one line; the file is rewritten atomically."""
    if not path.is_file():
        return
    *lines, last = path.read_bytes().split(b"\n")
    keep, later, bad = [], 0, []
    for n, raw in enumerate(lines, 1):
        row = _row_step(raw)
        if isinstance(row, str):
            bad.append((n, raw, row))
        elif row is not None and row <= step:
            keep.append(raw)
        elif row is not None:
            later += 1
    cut = bool(last.strip())  # no newline after it: cut short by a kill (a whole row ends with one)
    if cut and isinstance(_row_step(last), int):  # whole after all, only its newline missing
        keep += [last] if _row_step(last) <= step else []
        later += _row_step(last) > step
        cut = False
    if bad:
        aside, n = path.with_name(path.name + ".bad"), 1
        while aside.exists():
            n += 1
            aside = path.with_name(f"{path.name}.bad.{n}")
        write_atomic(aside, lambda tmp: tmp.write_bytes(b"".join(raw + b"\n" for _, raw, _ in bad)))
        first = bad[0]
        say(f"{path}: {len(bad)} row(s) could not be read (line {first[0]}: {first[2]}"
            f"{', ...' if len(bad) > 1 else ''}): moved to {aside.name}, the other rows kept")
    if later or cut:
        say(f"{path}: dropping {later} row(s) of steps after {step}, written after the checkpoint this run "
            f"continues from" + (", and a last row cut short by a kill" if cut else ""))
    if bad or later or cut:
        write_atomic(path, lambda tmp: tmp.write_bytes(b"".join(raw + b"\n" for raw in keep)))


def _row_step(raw: bytes):
    """A metrics row's step (an int); None for a blank line; else why the row cannot be read (a str)."""
    if not raw.strip():
        return None
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        return f"not UTF-8 (byte {raw[e.start]:#04x} at {e.start})"
    except ValueError:
        return "not JSON"
    if not isinstance(row, dict) or not isinstance(row.get("step"), int) or isinstance(row["step"], bool):
        return "no integer step"
    return row["step"]


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
            except FileExistsError as e:  # a train.lock that is a link, or not a file: never written
                raise SystemExit(str(e)) from None
            except OSError as e:  # a read-only file system, no permission, a file on the way
                raise SystemExit(f"--out_dir={out}: cannot write there ({e.strerror or e}: "
                                 f"{e.filename or out})") from None
            return run(cfg, *a, **k)
    return locked


def check_resume(cfg, state, path, model_config: dict, data_id, teacher_id=None, dtype=None):
    """A checkpoint continues only the run that wrote it: the same settings of those that decide what it
    computes (READ_BY: mode, init, batch geometry, seed, the optimizer and its schedule, the loss...), the
    same data and, in distillation, the same teacher (both by content, not path), the same precision as
    resolved here (dtype: --dtype=auto may resolve otherwise on another machine), and a model of the same
    shape (model_config: this run's model's, as a dict). A change named in --resume_changes is accepted, and
    said."""
    was, now = state.get("config") or {}, dataclasses.asdict(cfg)
    allowed = {k for k in cfg.resume_changes.split(",") if k}
    # frozen position embeddings (train.build_models); a checkpoint from before the setting trained them
    frozen = lambda c: bool(c.get("freeze_pos_embs", False)) and c.get("init") == "teacher"  # noqa: E731
    if was and frozen(was) != frozen(now):
        raise SystemExit(f"{path} was written by a run whose position embeddings were "
                         f"{'frozen' if frozen(was) else 'trained'}: resume it with --freeze_pos_embs="
                         f"{str(frozen(was)).lower()}, or use another --out_dir")
    shape = model_config
    other = {k: (v, shape.get(k)) for k, v in state.get("model_config", shape).items() if shape.get(k) != v}
    if other:
        diff = ", ".join(f"{k} {a} vs {b} here" for k, (a, b) in other.items())
        raise SystemExit(f"{path} holds another model ({diff}): resuming it is refused (use another "
                         f"--out_dir)")
    read = read_settings(now)
    changed = {k: (was[k], now[k]) for k in RESUME_SAME
               if k in read and k in was and k not in ("data", "teacher", "dtype") and was[k] != now[k]}
    if state.get("data_id") not in (None, data_id):
        changed["data"] = ("other data", f"{cfg.data} (other content)")
    if cfg.mode == "distill" and state.get("teacher_id") not in (None, teacher_id):
        changed["teacher"] = (f"{was.get('teacher')} (weights sha256 {state['teacher_id'][:12]})",
                              f"{cfg.teacher} (other weights, sha256 {str(teacher_id)[:12]})")
    if dtype is not None and state.get("dtype") not in (None, dtype):
        here = dtype
        changed["dtype"] = (state["dtype"], here if cfg.dtype == here else f"{here} (what --dtype={cfg.dtype} "
                                                                        f"gives here)")
    for key in [k for k in RESUME_SAME if k in changed]:
        a, b = changed[key]
        if key not in allowed:
            same = {"data": "the data it was trained on", "teacher": "the teacher it was distilled from",
                    "dtype": f"--dtype={a}"}.get(key, f"--{key}={a}")
            raise SystemExit(f"{path} was written by a --{key}={a} run; resuming it with --{key}={b} is "
                             f"refused (use {same}, another --out_dir, or --resume_changes={key} to accept "
                             f"the change)")
        print(f"resuming {path} with --{key}={b} (was {a}): accepted by --resume_changes")


def load_scaler(scaler, state: dict, say):
    """The GradScaler's state from a checkpoint; one written without loss scaling (a bf16 or float32 run)
    resumed in float16 (--resume_changes=dtype) starts from a fresh scale, and says so."""
    if scaler.is_enabled() and not state:
        say("the checkpoint was not trained in float16: the loss scale starts afresh")
        return
    scaler.load_state_dict(state)


def earlier_outputs(out_dir: Path) -> list:
    """The files and folders of an earlier run in out_dir (checkpoints, set-aside ones, metrics, exports)."""
    return sorted(p for p in out_dir.iterdir() if OUTPUT.fullmatch(p.name)) if out_dir.is_dir() else []


def new_aside(out_dir: Path) -> Path:
    """A new, empty out_dir/earlier-N (the first N free): where outputs go instead of being deleted."""
    n = 1
    while True:
        try:
            (out_dir / f"earlier-{n}").mkdir()
            return out_dir / f"earlier-{n}"
        except FileExistsError:
            n += 1


def move_aside(out_dir: Path, say, also=(), why="--restart=true") -> Path:
    """--restart=true: the earlier run's outputs (and the files named in `also`, such as the quickstart's
    stage.json) moved, never deleted, into out_dir/earlier-N, a new N each time. Nothing else in out_dir is
    touched."""
    aside = new_aside(out_dir)
    for p in [*earlier_outputs(out_dir), *(out_dir / name for name in also if (out_dir / name).exists())]:
        os.replace(p, aside / p.name)
    fsync_dir(out_dir)
    say(f"{why}: the earlier run's outputs moved to {aside}")
    return aside


def data_identity(shards) -> str:
    """What the data is, whatever its path: the sha256 of its meta.json's file checksums and splits."""
    meta = shards.meta
    return sha256_text(json.dumps([meta.get("files"), meta.get("splits"), meta.get("vocab_hash")],
                                  sort_keys=True))


def resume(out_dir: Path, cfg, here: dict, say=print):
    """Rank 0's decision on out_dir: (path, state) of the checkpoint to continue from, or None to start afresh;
    a refusal is a SystemExit. With --resume=true, the newest checkpoint that verifies, if it was written by
    this run (check_resume, check_world); without, an out_dir that already has checkpoints is refused. A start
    that resumes nothing never writes over an earlier run's outputs (metrics.jsonl, the export, set-aside
    checkpoints): refused until --restart=true moves them aside. here: what this run is, as plain data:
    model_config (a dict), data_id, teacher_id (None in mlm mode), dtype (its name), world (ranks)."""
    out_dir = Path(out_dir)
    if cfg.restart and cfg.resume:
        raise SystemExit("--restart=true starts afresh and --resume=true continues: choose one")
    if out_dir.is_dir():
        clean_stale_tmp(out_dir, say)
    if cfg.restart and earlier_outputs(out_dir):
        move_aside(out_dir, say)
    ckpts = checkpoints(out_dir)
    path, state = newest_good_checkpoint(out_dir, True, say) if cfg.resume else (None, None)
    if state is not None:
        check_resume(cfg, state, path, here["model_config"], here["data_id"], here["teacher_id"], here["dtype"])
        check_world(cfg, state, path, here["world"])
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
        say(f"--resume=true: no checkpoint in {out_dir}: starting fresh")
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


def save(out_dir: Path, state: dict, keep_last: int):
    """The checkpoint of state["step"]: out_dir/ckpt-NNNNNNN.pt (save_checkpoint: atomic, with its checksum;
    only the newest keep_last kept)."""
    save_checkpoint(Path(out_dir) / f"ckpt-{state['step']:07d}.pt", state, keep_last)


def export(folder: Path, model, vocab: Path, say=print):
    """The trained model in Hugging Face's format with the tokenizer files (from `vocab`), in `folder`
    (out_dir/student after distillation, out_dir/model after mlm). Also redone by a run resumed at its last
    step whose export is missing or not of its model (a kill or a full disk during the export, or the folder
    deleted). An earlier export that holds files train.py did not write there (a model card, an edited
    config) is moved whole into out_dir/earlier-N first, never deleted; a full disk is one line naming the
    folder and the bytes free."""
    folder = Path(folder)
    out_dir = folder.parent
    theirs = foreign_files(folder) if folder.is_dir() else []
    if theirs:
        aside = new_aside(out_dir)
        os.replace(folder, aside / folder.name)
        fsync_dir(out_dir)
        say(f"{folder} held files train.py did not write there ({', '.join(theirs[:3])}"
            f"{', ...' if len(theirs) > 3 else ''}): that export moved whole to {aside / folder.name}")
    tokenizer = lambda tmp: write_tokenizer_files(vocab, tmp, model.cfg.max_position)  # noqa: E731
    try:
        save_pretrained(model, folder, extra_files=tokenizer)
    except (OSError, RuntimeError, SafetensorError) as e:  # a full disk (safetensors has its own error)
        raise SystemExit(f"{disk_error(folder, e, 'export not written')}; the checkpoints in {out_dir} "
                         f"are intact: once there is room, the same command with --resume=true exports "
                         f"again") from None


def foreign_files(folder: Path) -> list:
    """The files of an exported folder that train.py did not write there, or that were changed since: not
    listed in its SHA256SUMS, or not matching it (model.safetensors carries its own checksum), and any
    subfolder."""
    listed = {}
    if (folder / MANIFEST).is_file():
        for line in (folder / MANIFEST).read_text(errors="replace").splitlines():
            want, _, name = line.partition("  ")
            listed[name] = want
    theirs = []
    for p in sorted(folder.iterdir()):
        if p.name in (MANIFEST, "model.safetensors") and p.is_file():
            continue
        if p.is_dir() or p.is_symlink() or p.name not in listed or sha256(p) != listed[p.name]:
            theirs.append(p.name)
    return theirs


def export_current(folder: Path, model) -> bool:
    """Whether the exported folder holds this model as it is now (the checksum its model.safetensors carries,
    against the model's tensors): after a kill or a full disk during the export of an extended run it still
    holds the earlier one."""
    weights = Path(folder) / "model.safetensors"
    return weights.is_file() and stored_sha256(weights) == tensors_sha256(convert_to_hf(model)[1])
