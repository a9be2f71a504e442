"""
Files written so that nothing is lost: atomic writes (a temporary, fsynced, then renamed), the one file hash,
the exclusive lock two runs on one folder take, one-line messages, and figures written as PNG.
"""
import contextlib
import hashlib
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
from pathlib import Path


def log(msg, source):
    """One line on stderr, tagged with the file it comes from: `[data] ...`."""
    print(f"[{source}] {msg}", file=sys.stderr, flush=True)


def one_line(e) -> str:
    """An exception as one line for a command-line error (its message, or its type when it has none)."""
    text = " ".join(str(e).split()) or type(e).__name__
    plain = isinstance(e, (ValueError, FileNotFoundError, FileExistsError, WriteFailed))
    return text if plain else f"{type(e).__name__}: {text}"


class WriteFailed(OSError):
    """A write that failed (a full disk...), with its one-line message: disk_error's."""


def disk_error(path, e, what="not written") -> str:
    """One line for a write that failed (a full disk, a file-size limit, a read-only file system): the file,
    the reason and the bytes free where it was going."""
    why = (e.strerror if isinstance(e, OSError) and e.strerror else " ".join(str(e).split())[:160]
           or type(e).__name__)
    place = Path(path)
    while not place.exists() and place != place.parent:
        place = place.parent
    with contextlib.suppress(OSError):
        why += f"; {shutil.disk_usage(place).free:,} bytes free there"
    return f"{path}: {what} ({why})"


def sha256(path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (the project's one file hash)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


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
        try:  # never through a symbolic link: its target is not ours to write
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            if path.is_symlink():
                raise FileExistsError(f"{path} is a symbolic link (to {os.readlink(path)}), not a lock file "
                                      f"this project made: it is never written through; remove the link")
            raise e from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:  # a FIFO, a device, a hard link to a file
            os.close(fd)
            what = "a hard link to another file" if stat.S_ISREG(info.st_mode) else "not a plain file"
            raise FileExistsError(f"{path} is {what}, not a lock file this project made: it is never written; "
                                  f"remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise busy(holder) from None
        try:
            same = os.lstat(path).st_ino == info.st_ino
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


def write_region(path, name, text):
    """Replace what lies between the lines `<!-- begin NAME -->` and `<!-- end NAME -->` of the Markdown page
    `path` with `text`, atomically: how the benchmarks and reproduce.py write their tables into docs/, around prose
    written by hand. A page without the markers is refused in one line (nothing is written)."""
    path = Path(path)
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    page = path.read_text()
    if begin not in page or end not in page or page.index(begin) > page.index(end):
        raise ValueError(f"{path}: no '{begin}' ... '{end}' region to write the {name} table into")
    head, rest = page.split(begin, 1)
    tail = rest.split(end, 1)[1]
    write_text(f"{head}{begin}\n{text.strip()}\n{end}{tail}", path)
