"""
Where a run starts and what its checkpoints hold: the decision to resume (rank 0's, sent to every rank), the
state as plain data, the checkpoint and the export, the run's banner; the count of skipped steps.
"""
import dataclasses
from pathlib import Path

import torch
import torch.distributed as dist

from machinery import checkpoint
from machinery.checkpoint import (NOT_COMPUTED, data_identity, export, load_scaler, nonfinite_stop, read_settings,
                                  resume, usable)
from model import count_parameters
from training.setup import Run


class NonFinite:
    """Skipped steps (loss or gradient not finite), counted on the device and read by the host at the log
    lines (check): the run stops there once max_nonfinite of them came in a row."""

    def __init__(self, device, skipped=0):
        self.total = torch.full((), skipped, dtype=torch.int64, device=device)
        self.in_a_row, self.most_in_a_row = (torch.zeros((), dtype=torch.int64, device=device) for _ in range(2))
        self.seen = skipped

    def add(self, skip):
        self.total += skip
        self.in_a_row = (self.in_a_row + 1) * skip
        self.most_in_a_row = torch.maximum(self.most_in_a_row, self.in_a_row)

    def check(self, run, step) -> int:
        """Read the counts (this waits for the device): say how many steps were skipped since the last check,
        and stop the run (every rank: the counts are the same on all) after max_nonfinite in a row. Returns
        the steps skipped in the whole run."""
        total, in_a_row, most = torch.stack([self.total, self.in_a_row, self.most_in_a_row]).tolist()
        if total > self.seen:
            run.say(f"step {step}: {total - self.seen} step(s) skipped since the last line (non-finite loss "
                    f"or gradient; {in_a_row} in a row now)")
        self.seen = total
        if most >= run.cfg.max_nonfinite:  # rank 0's out_dir has the checkpoints to name
            raise SystemExit(nonfinite_stop(run.out_dir, step, most) if run.master else
                             f"{most} non-finite steps in a row at step {step}: stopping (see rank 0)")
        return total


def start(run: Run) -> tuple:
    """(step, skipped) to continue from: rank 0 alone decides from out_dir (checkpoint.resume: another rank's
    out_dir may be another machine's folder, without rank 0's checkpoints) and sends the checkpoint to every
    rank, so that all continue from the same step with the same weights (DDP only checks that they start
    alike), or every rank stops with rank 0's message. Then the run's banner."""
    decision = None
    if run.master:
        try:
            decision = resume(run.out_dir, run.cfg, {**identity(run), "world": run.world}, run.say)
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
    run.say(banner(run))
    return step, skipped


def load_state(run: Run, state: dict) -> tuple:
    """A checkpoint's state into this rank's run: weights, optimizer, loss scale, data position (converted
    when the number of ranks changed), RNG (a rank the checkpoint's run did not have keeps its own seed).
    Returns (step, skipped)."""
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    load_scaler(run.scaler, state["scaler"], run.say)
    run.loader.load_state_dict({"world": len(state["rng"]), **state["data"]})
    if run.rank < len(state["rng"]):
        rng = state["rng"][run.rank]
        torch.set_rng_state(rng["cpu"])
        if run.device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"])
    return state["step"], state["skipped"]


def checkpoint_state(run: Run, step, skipped, data_state) -> dict:
    """What a checkpoint holds, as plain data (every rank's RNG state gathered: each rank calls this): the
    weights, optimizer and loss scale, the progress, the loader's position after the step's batches
    (data_state), and what the run is (its config, data and teacher by content, dtype). None on ranks > 0."""
    cuda = run.device.type == "cuda"
    rng = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(run.device) if cuda else None}
    rngs = [None] * run.world
    if run.ddp:
        dist.all_gather_object(rngs, rng)
    else:
        rngs = [rng]
    if not run.master:
        return None
    return {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scaler": run.scaler.state_dict(), "step": step, "skipped": skipped,
            "data": data_state or run.loader.state_dict(), "rng": rngs, "config": dataclasses.asdict(run.cfg),
            **identity(run)}


def identity(run: Run) -> dict:
    """What the run is, as a checkpoint records it and a resume compares it: the model's shape, the data and
    the teacher by content (None in mlm mode), the dtype as resolved here."""
    return {"model_config": dataclasses.asdict(run.model.cfg), "data_id": data_identity(run.shards),
            "teacher_id": getattr(run.teacher, "content_id", None), "dtype": dtype_name(run.dtype)}


def dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def save(run: Run, state, probe, final=False):
    """Rank 0 writes the checkpoint (checkpoint.save), unless the model has gone non-finite; with final, the
    exported model too: out_dir/student (distill) or out_dir/model (mlm), with the tokenizer files."""
    if not run.master:
        return
    if not usable(run.model, probe, run.autocast):
        run.say(f"step {state['step']}: the parameters are not finite or give non-finite outputs: no "
                f"checkpoint written")
        return
    checkpoint.save(run.out_dir, state, run.cfg.keep_last)
    if final:
        export(export_dir(run.cfg), run.model, run.vocab, run.say)


def export_dir(cfg) -> Path:
    return Path(cfg.out_dir) / ("student" if cfg.mode == "distill" else "model")


def banner(run: Run) -> str:
    """The run in two lines: the settings that differ from the defaults, of those it reads (metrics.jsonl's
    first row holds them all), then the model, the batch geometry, the steps and the precision."""
    cfg, default = run.cfg, type(run.cfg)()
    now = dataclasses.asdict(cfg)
    shown = set(read_settings(now)) | set(NOT_COMPUTED)  # not the settings this run does not read
    changed = " ".join(f"--{k}={v}" for k, v in now.items() if k in shown and v != getattr(default, k))
    frozen = sum(p.numel() for p in run.model.parameters() if not p.requires_grad)
    trainable = count_parameters(run.model)["total"] - frozen
    return (f"settings: {changed or 'the defaults'}\n"
            f"{cfg.mode}: {trainable:,} trainable parameters" + (f" ({frozen:,} frozen)" if frozen else "")
            + f", {run.world} rank(s) x {cfg.micro_batch} sequences x {run.accum} micro-steps = "
            f"{run.world * cfg.micro_batch * run.accum} per step, {run.total} steps, device {run.device}, "
            f"{dtype_name(run.dtype)} ({run.why})")
