"""
A run's outputs as it goes: metrics.jsonl, the progress bar (plain lines off a terminal) with the expected end,
wandb when asked for, the loss plot, and the stop signals that end every rank after the same step.
"""
import dataclasses
import itertools
import json
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from machinery.checkpoint import trim_metrics
from machinery.files import pyplot, save_figure


class StopSignal:
    """SIGTERM and SIGINT only set `signal` on the rank that received them; every rank leaves on the flag
    all-reduced at the end of a step, so all ranks stop after the same step and enter the same collectives (a
    signal reaching one rank after that all-reduce, during evaluation or a checkpoint, waits for the next
    step's)."""

    def __init__(self):
        self.signal = None
        self.old_handlers = {s: signal.signal(s, self.on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def on_signal(self, signum, frame):
        self.signal = signum

    def restore(self):
        for s, h in self.old_handlers.items():
            signal.signal(s, h)

    def anywhere(self, ddp: bool) -> bool:
        """Whether any rank was asked to stop (every rank calls this at the same point). The flag is a tensor
        on the host, all-reduced there (gloo): asking never waits for the GPU."""
        stopping = self.signal is not None
        if ddp:
            flag = torch.tensor(float(stopping))
            dist.all_reduce(flag)
            stopping = bool(flag > 0)
        if stopping and self.signal is None:
            self.signal = "a peer's"
        return stopping


def mean_over_ranks(sums: dict, world: int) -> dict:
    """The step's loss parts (0-d tensors on the device) averaged over the `world` ranks, as numbers: this
    waits for the device, so train.py asks only at its log lines."""
    logged = torch.stack([sums[k].float() for k in sorted(sums)])
    if world > 1:
        dist.all_reduce(logged)
        logged /= world
    return dict(zip(sorted(sums), logged.tolist()))


class Eta:
    """The expected end of a run, and of the work that follows it, from the pace of its steps so far. Work is
    counted in multiply-adds (train.step_macs): cost(k) is that of step k (head-only steps are cheaper),
    `later` that of what comes after this run (the quickstart's next stages), measured at this run's pace.
    Evaluations are not counted as work: their time goes into the pace, as it will for the steps left."""

    def __init__(self, later=0.0, clock=time.time):
        self.later, self.clock = later, clock
        self.work, self.first, self.total, self.t0 = [0.0], 0, 0, None

    def start(self, step, total, cost=None):
        """The run begins (or resumes) at `step` of `total`, now. The work of steps 0..k-1 is summed once here
        (work[k]), so that each progress line costs O(1), not a pass over all the steps."""
        self.first, self.total, self.t0 = step, total, self.clock()
        cost = cost or (lambda k: 1.0)
        self.work = [0.0, *itertools.accumulate(cost(k) for k in range(total))]

    def estimate(self, step) -> tuple:
        """(seconds left in this run, seconds left in all) after `step` steps, or None before any step."""
        step = min(step, self.total)
        done, elapsed = self.work[step] - self.work[self.first], self.clock() - self.t0
        if step <= self.first or done <= 0 or elapsed <= 0:
            return None
        left = self.work[self.total] - self.work[step]
        return left * elapsed / done, (left + self.later) * elapsed / done

    def text(self, step) -> str:
        """'ends in 3m05s (14:31)', plus ', all ends in 12m40s (14:41)' when later work follows; '' before any
        step."""
        e = self.estimate(step)
        if e is None:
            return ""
        now = self.clock()
        at = lambda s: time.strftime("%H:%M", time.localtime(now + s))  # noqa: E731
        out = f"ends in {minutes(e[0])} ({at(e[0])})"
        return out + (f", all ends in {minutes(e[1])} ({at(e[1])})" if self.later else "")


def minutes(seconds) -> str:
    """1h02m, 3m05s or 42s."""
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else \
        f"{s}s"


class Logs:
    """Rank 0's outputs: metrics.jsonl (the run's whole config first, then a row every log_every steps and the
    evaluations), the progress bar (plain lines when not on a terminal) and wandb when asked for. Other ranks
    (master=False) write nothing."""

    def __init__(self, out_dir, cfg, step: int, total: int, eta: Eta = None, master=True):
        self.metrics = self.wandb = self.bar = None
        self.out_dir, self.mode, self.total, self.eta = Path(out_dir), cfg.mode, total, eta or Eta()
        if not master:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if step:  # resumed: the rows written after the checkpoint go, the config row stays
            trim_metrics(self.out_dir / "metrics.jsonl", step)
        self.metrics = open(self.out_dir / "metrics.jsonl", "a" if step else "w")
        if not step:
            self.write({"step": 0, "config": dataclasses.asdict(cfg)})
        if cfg.wandb:
            import wandb  # optional: only when asked for
            self.wandb = wandb.init(project=cfg.wandb, config=dataclasses.asdict(cfg))
        self.bar = tqdm(total=total, initial=step, dynamic_ncols=True, disable=None)

    def write(self, row):
        self.metrics.write(json.dumps(row) + "\n")
        self.metrics.flush()

    def step(self, step: int, row=None):
        """Every step: the bar moves on. At a log line, row (the step's loss parts, lr, grad_norm, tokens_per_s
        and, where the GPU's peak is known, mfu) goes into the bar, metrics.jsonl and wandb."""
        if self.bar is None:
            return
        self.bar.update(1)
        if row is None:
            return
        eta = self.eta.text(step)
        losses = {k: v for k, v in row.items() if k not in ("lr", "grad_norm", "tokens_per_s", "mfu")}
        mfu = {"mfu": f"{row['mfu']:.1%}"} if "mfu" in row else {}
        self.bar.set_postfix({**{k: f"{v:.3f}" for k, v in losses.items()}, "lr": f"{row['lr']:.2e}",
                              "tok/s": f"{row['tokens_per_s']:.0f}", **mfu, **({"eta": eta} if eta else {})})
        if self.bar.disable:  # not a terminal (a file, a notebook): progress as plain lines
            print(f"{self.mode} step {step}/{self.total}: "
                  + " ".join(f"{k} {v:.4f}" for k, v in losses.items())
                  + f" lr {row['lr']:.2e} tok/s {row['tokens_per_s']:,.0f}"
                  + (f" MFU {row['mfu']:.1%}" if "mfu" in row else "") + (f" | {eta}" if eta else ""), flush=True)
        self.write({"step": step, **row})
        if self.wandb:
            self.wandb.log({"step": step, **row}, step=step)

    def valid(self, step: int, result: dict, seconds):
        if self.bar is None:
            return
        self.write({"step": step, **{f"valid_{k}": v for k, v in result.items()}, "seconds": seconds})
        self.bar.write(f"step {step}: held-out MLM accuracy {result['accuracy']:.4f}, "
                       f"perplexity {result['perplexity']:.2f}")

    def close(self):
        if self.bar:
            self.bar.close()
        if self.metrics:
            self.metrics.close()
            plot_metrics(self.out_dir / "metrics.jsonl", self.out_dir / "losses.png")


def read_rows(metrics_path) -> list:
    """The rows of a metrics.jsonl that can be read (JSON objects); others are left out of the plots."""
    rows = []
    for line in Path(metrics_path).read_bytes().splitlines():
        try:
            row = json.loads(line.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError included
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def plot_metrics(metrics_path, png_path):
    """Loss curves (each part of the loss, and the held-out MLM accuracy) drawn from a run's metrics.jsonl."""
    plt = pyplot(f"no plot of {metrics_path}")
    if plt is None:
        return
    rows = read_rows(metrics_path)
    train_rows, valid_rows = [r for r in rows if "total" in r], [r for r in rows if "valid_accuracy" in r]
    fig, axes = plt.subplots(1, 2 if valid_rows else 1, figsize=(10 if valid_rows else 5, 3.5), squeeze=False)
    for key in ("total", "ce", "mlm", "cos", "pool"):
        if train_rows and key in train_rows[0]:
            axes[0, 0].plot([r["step"] for r in train_rows], [r[key] for r in train_rows], label=key)
    axes[0, 0].set(xlabel="step", ylabel="loss", yscale="log", title=str(Path(metrics_path).parent.name))
    axes[0, 0].legend()
    if valid_rows:
        axes[0, 1].plot([r["step"] for r in valid_rows], [r["valid_accuracy"] for r in valid_rows],
                        marker="o")
        axes[0, 1].set(xlabel="step", ylabel="held-out MLM accuracy")
    save_figure(fig, png_path)

