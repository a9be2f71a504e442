"""
The few helpers every entry point shares (like nanochat's common.py): the command line, the device, the AdamW
groups and the learning-rate schedule, logging, and files written atomically.
"""
import contextlib
import dataclasses
import hashlib
import inspect
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import typing
from pathlib import Path

import torch


# ------------------------------------------------------------------------------------------------------------
# The command line: --key=value for the fields of a dataclass, typed by its annotations

def parse_config(argv, cls, presets=None, doc=""):
    """The dataclass `cls` from `--key=value` arguments (also `--key value`; a bare `--flag` is true; `-` and
    `_` alike), each converted to its field's type, read with typing.get_type_hints (no eval). `--preset=name`
    starts from presets[name]. `--help` prints `doc` and every field with its default. A bad argument is a
    ValueError."""
    if any(a in ("-h", "--help") for a in argv):
        print(doc)
        helps = field_help(cls)
        for f in dataclasses.fields(cls):
            print(f"  --{f.name}={f.default!s:<20} {helps.get(f.name, '')}")
        sys.exit(0)
    hints, values, i = typing.get_type_hints(cls), {}, 0
    while i < len(argv):
        if not argv[i].startswith("--"):
            raise ValueError(f"argument {argv[i]!r}: expected --key=value (see --help)")
        key, eq, value = argv[i][2:].partition("=")
        key = key.replace("-", "_")
        if key not in hints:
            raise ValueError(f"unknown setting --{key} (see --help)")
        if not eq:  # --key value, or a bare --flag
            bare = i + 1 >= len(argv) or argv[i + 1].startswith("--")
            value, i = ("true", i) if bare else (argv[i + 1], i + 1)
        values[key] = convert(key, value, hints[key])
        i += 1
    preset = values.get("preset", "")
    if preset and preset not in (presets or {}):
        raise ValueError(f"unknown preset {preset!r}: choose from {sorted(presets or {})}")
    return cls(**{**(presets or {}).get(preset, {}), **values})


def field_help(cls) -> dict:
    """Each field's help: the comment after it in the class's source, and the comment lines aligned below."""
    helps, name, column = {}, None, 0
    for line in inspect.getsource(cls).splitlines():
        field = re.match(r"\s+(\w+): [^=#]+=[^#]*#\s?(.*)$", line)
        more = re.match(r"(\s+)#\s?(.*)$", line)
        if field:
            name, column = field.group(1), line.index("#")
            helps[name] = field.group(2)
        elif more and name and len(more.group(1)) == column:
            helps[name] += " " + more.group(2)
        else:
            name = None
    return helps


def convert(key, value: str, kind):
    """value as a `kind` (str, int, float, bool, or one of them | None)."""
    options = [t for t in typing.get_args(kind) if t is not type(None)] or [kind]
    if len(options) < len(typing.get_args(kind)) and value.lower() in ("none", "null", ""):
        return None
    kind = options[0]
    if kind is bool:
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"--{key}={value!r}: expected true or false")
        return value.lower() in ("true", "1", "yes")
    try:
        return kind(value)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise ValueError(f"--{key}={value!r}: expected {expected}") from None


# ------------------------------------------------------------------------------------------------------------
# Device and precision, optimiser, schedule

def pick_device(name="auto") -> torch.device:
    """auto: the GPU of this process (LOCAL_RANK under torchrun) when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if name == "cuda" else name)


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
    total."""
    ### BEGIN SOLUTION: 3 lines
    # rises from 0 to 1 over the warm-up, then falls linearly to 0 at step `total` (never below)
    if step < warmup_steps:
        return step / warmup_steps
    return max(0.0, (total - step) / max(1, total - warmup_steps))
    ### END SOLUTION


def auto_dtype(device) -> tuple:
    """--dtype=auto: (dtype, why). CUDA: bf16 where the GPU computes it natively (compute capability >= 8.0:
    A100, H100), else fp16 with a GradScaler, the paper's setting on V100s (torch.cuda.is_bf16_supported()
    also counts slow emulation, so it would pick bf16 on a V100 or T4). CPU: bf16 autocast only when a short
    probe shows bf16 matrix products clearly faster than float32 there (CPUs with AMX or AVX512-BF16 units),
    else float32."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return (torch.bfloat16 if major >= 8 else torch.float16), f"auto: compute capability {major}.{minor}"
    ratio = bf16_speedup()
    if ratio >= 1.5:
        return torch.bfloat16, f"auto: bf16 matrix products {ratio:.1f}x faster than float32 on this CPU"
    return torch.float32, f"auto: bf16 matrix products only {ratio:.1f}x the speed of float32 on this CPU"


def bf16_speedup(n=768, reps=6) -> float:
    """float32 time / bf16 time of an (n x n) @ (n x 4n) product on the CPU, best of `reps` (about 0.1 s)."""
    g = torch.Generator().manual_seed(0)  # its own generator: probing must not move the global RNG (dropout)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, 4 * n, generator=g)
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


# ------------------------------------------------------------------------------------------------------------
# Logging and files

def log(msg, source):
    """One line on stderr, tagged with the file it comes from: `[data] ...`."""
    print(f"[{source}] {msg}", file=sys.stderr, flush=True)


def one_line(e) -> str:
    """An exception as one line for a command-line error (its message, or its type when it has none)."""
    text = " ".join(str(e).split()) or type(e).__name__
    plain = isinstance(e, (ValueError, FileNotFoundError, FileExistsError))
    return text if plain else f"{type(e).__name__}: {text}"


def sha256(path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (the project's one file hash)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def exclusive_lock(path, busy, remove=False):
    """An exclusive fcntl.flock on the file `path` (created) while the block runs: the system releases it when
    the process dies, so a lock left by a killed process is no obstacle. When another process holds it, the
    exception busy(holder) is raised, holder being the "pid N on HOST" it wrote there. remove: the file is
    deleted on leaving (a lock taken on a file that was deleted meanwhile is taken again on the new one). No
    lock where fcntl does not exist (Windows)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise busy(holder) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # its holder removed the file before we locked it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        if remove:
            with contextlib.suppress(OSError):
                os.unlink(path)
        os.close(fd)  # releases the lock


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def fsync_dir(folder):
    """Make a rename in `folder` durable (its directory entry on disk); a no-op where directories cannot be
    opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path):
    """fsync a file, or every file and folder of a folder, so that its bytes are on disk before a rename
    commits it (without it, a power loss soon after the rename can leave the new name on incomplete data)."""
    path = Path(path)
    for f in [*(sorted(path.rglob("*")) if path.is_dir() else []), path]:
        if f.is_dir():
            fsync_dir(f)
        else:
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def share(path):
    """Give a finished file or folder (and what it holds) the modes the umask allows, 0644 / 0755 under the
    usual 022, where mkstemp and mkdtemp make 0600 / 0700 (others could not read a shared model)."""
    mask = os.umask(0)
    os.umask(mask)
    path = Path(path)
    for f in [path, *(path.rglob("*") if path.is_dir() else [])]:
        os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~mask)


def write_atomic(path, write, folder=False, tmp=None):
    """write(tmp) fills a temporary file (folder=True: a folder) beside `path`, which then takes its place in
    one rename: a reader sees the old one or the new one, never half of one; a failure leaves the old one and
    no temporary. The data is fsynced before the rename and the folder's entry after it, so that a power loss
    leaves the old or the new one complete. The project's one atomic write, for JSON, text, figures,
    checkpoints and model folders. tmp:
    a fixed temporary name (default: a fresh one), so that what a hard kill leaves behind can be recognised
    later."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tmp is None:
        tmp = (tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent) if folder else
               tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)[1])
    tmp = Path(tmp)
    old = path.with_name(f".{path.name}.old")
    try:
        write(tmp)
        share(tmp)  # mkstemp and mkdtemp make 0600 / 0700
        fsync_tree(tmp)
        if folder and path.exists():  # a folder cannot be renamed over another: set the old one aside first
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True) if folder else tmp.unlink(missing_ok=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_text(text, path):
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json(obj, path):
    write_text(json.dumps(obj, indent=2) + "\n", path)


def pyplot(what_is_lost):
    """matplotlib.pyplot on the file-only Agg backend, or None (and a line saying what is lost) without it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: {what_is_lost}", file=sys.stderr)
        return None
    return plt


def save_figure(fig, path, dpi=100):
    """A matplotlib figure as a PNG, written atomically; the figure is closed."""
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    import matplotlib.pyplot as plt
    plt.close(fig)
