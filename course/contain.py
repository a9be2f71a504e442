"""
The containment itself, as the processes below the grader run it (course/sandbox.py is the grader's side):

  - the fork server (serve_forks): started once per grading from a copy of the worker's modules, it imports
    torch once and forks a supervisor per job;
  - a supervisor (supervise): unshares the namespaces (or becomes a subreaper), forks the worker, kills it at
    the wall-clock limit and leaves nothing of it running;
  - the worker (run_worker): pivots into a root of its own (new_root), sets its limits, drops to its own user,
    then serves the tests' calls (course/worker.py).

Linux system calls through ctypes; nothing here runs on another system. `measure` says which containment this
machine allows, by trying it in a child.
"""
import ctypes
import json
import os
import platform
import signal
import socket
import stat
import sys
import time
from pathlib import Path

from course import wire

LINUX = sys.platform.startswith("linux")
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x4000000, 0x8000000, 0x20000000, \
    0x40000000
NAMESPACES = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, \
    1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER = 1, 38, 36
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(platform.machine())
ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf", "passwd", "group")
MODES = ("namespaces", "fallback")  # ASSIGNMENT_SANDBOX=MODE forces one (the tests); default: the best there is


# ------------------------------------------------------------------------------------------------------------
# System calls (Linux)

_libc = None


def libc():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def check(result, what):
    if result != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def prctl(option, value):
    check(libc().prctl(option, ctypes.c_ulong(value), 0, 0, 0), f"prctl({option})")


def mount(source, target, fstype, flags, data=None):
    enc = lambda s: s.encode() if s is not None else None
    check(libc().mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
          f"mount {target}")


def unshare(flags):
    check(libc().unshare(flags), "unshare")


# ------------------------------------------------------------------------------------------------------------
# Inside the worker: the root it sees, its limits, its user


def bind(root, path, writable=False):
    """path (a folder or a file of the host) at the same place under root, read-only unless writable."""
    real = os.path.realpath(path)
    target = root + path
    if os.path.isdir(real):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            open(target, "w").close()
    mount(real, target, None, MS_BIND | MS_REC)
    flags = MS_BIND | MS_REMOUNT | MS_NOSUID | (0 if writable else MS_RDONLY)
    if not path.startswith("/dev/"):
        flags |= MS_NODEV
    mount(None, target, None, flags)


def python_folders():
    """The Python installation and its packages: read-only in the worker's root."""
    import site
    import sysconfig
    found = {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages(),
             *(p for p in sysconfig.get_paths().values())}
    found = {os.path.abspath(p) for p in found if p and os.path.isdir(p)}
    return sorted(p for p in found if not any(p != q and p.startswith(q + os.sep) for q in found))


def hidden_packages():
    """Packages a solution may not use (transformers: the tests' reference): an empty folder over each."""
    import importlib.util
    try:
        spec = importlib.util.find_spec("transformers")
    except (ImportError, ValueError):
        return []
    return [os.path.realpath(p) for p in (spec.submodule_search_locations or [])] if spec else []


def new_root(job):
    """The worker's file system: an empty tmpfs at JOB/root with the Python installation, /usr, some of /etc,
    the devices, a private /proc and /tmp and the tree; then pivot_root into it (the host's root unmounted,
    unreachable from inside)."""
    root, tree = os.path.join(job["dir"], "root"), job["tree"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    os.makedirs(root, exist_ok=True)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,mode=755")
    for top in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            os.symlink(os.readlink(top), root + top)
        elif os.path.isdir(top):
            bind(root, top)
    for name in ETC:
        if os.path.exists("/etc/" + name):
            bind(root, "/etc/" + name)
    # the private /tmp before the Python folders and the tree: a virtual environment (or a tree) under /tmp is
    # bound on top of it, not hidden by it
    os.makedirs(root + "/tmp", exist_ok=True)
    mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,mode=1777")
    for folder in python_folders():
        if not folder.startswith("/usr/"):  # under /usr it is there already
            bind(root, folder)
    for package in hidden_packages():
        if os.path.isdir(root + package):
            mount("tmpfs", root + package, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,mode=755")
    for device in ("null", "zero", "urandom", "random"):
        bind(root, "/dev/" + device, writable=True)
    os.makedirs(root + "/proc", exist_ok=True)
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    bind(root, tree, writable=True)
    os.chdir(root)
    if SYS_PIVOT_ROOT is not None:
        check(libc().syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
        check(libc().umount2(b".", MNT_DETACH), "umount the old root")
    else:  # an architecture whose pivot_root number is not known here: chroot (the user is dropped after it)
        os.chroot(".")
    os.chdir("/")


def set_limits(limits, own_user):
    import resource
    size = 0
    try:
        with open("/proc/self/statm") as f:
            size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        pass
    wanted = [(resource.RLIMIT_CPU, limits["cpu"], limits["cpu"] + 5), (resource.RLIMIT_CORE, 0, 0),
              (resource.RLIMIT_FSIZE, limits["file_size"], limits["file_size"]),
              (resource.RLIMIT_NOFILE, limits["open_files"], limits["open_files"])]
    if size:
        wanted.append((resource.RLIMIT_AS, size + limits["memory"], size + limits["memory"]))
    if own_user:  # RLIMIT_NPROC counts every process of the user: only with a user of its own
        wanted.append((resource.RLIMIT_NPROC, limits["processes"], limits["processes"]))
    for what, soft, hard in wanted:
        _, old_hard = resource.getrlimit(what)
        hard = hard if old_hard == resource.RLIM_INFINITY else min(hard, old_hard)
        resource.setrlimit(what, (min(soft, hard), hard))


def drop_user(uid, gid):
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def readable_by_others(path):
    """Whether a user other than its owner can reach path (every folder above it searchable by others)."""
    p = Path(path).resolve()
    for folder in [p, *p.parents]:
        try:
            mode = folder.stat().st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    return True


def run_worker(job, fd):
    """The worker (B): contained as job["mode"] says, then serving the tests' calls on fd."""
    os.setsid()
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if job["mode"] == "namespaces":
        new_root(job)
    uid = job.get("uid")
    set_limits(job["limits"], own_user=uid is not None)
    if uid is not None:
        drop_user(uid, uid)
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # a change of user clears it
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file over the limit: an error, not a dead worker
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null, target)
    keep = sorted({0, 1, 2, fd})
    for low, high in zip(keep, keep[1:] + [1 << 16]):
        os.closerange(low + 1, high)
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "HOME": job["tree"], "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
                       "TMPDIR": "/tmp" if job["mode"] == "namespaces" else job["tree"]})
    sys.path[:] = [p for p in sys.path if p and not p.startswith(job["course"])]
    from course import worker
    reader, writer = os.fdopen(fd, "rb", buffering=0, closefd=False), os.fdopen(os.dup(fd), "wb")
    worker.serve(reader, writer, job["tree"], strict=True)


# ------------------------------------------------------------------------------------------------------------
# The supervisor (A): one per worker, in the fork server's namespaces; it waits, kills, cleans up


def descendants(ancestor):
    """Pids of the processes below ancestor (from /proc's parent links)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    text = f.read()
                parents[int(entry)] = int(text[text.rindex(")") + 2:].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = set(), {ancestor}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier and pid not in found}
        found |= frontier
    return found


def kill_the_rest(uid):
    """Every process left of a worker, when no PID namespace ended them all: as its user (kill(-1) reaches
    every process of that user), and every descendant of this subreaper; then reap them."""
    for _ in range(100):
        if uid is not None:
            pid = os.fork()
            if pid == 0:
                try:
                    os.setresuid(uid, uid, uid)
                    os.kill(-1, signal.SIGKILL)
                except OSError:
                    pass
                os._exit(0)
            os.waitpid(pid, 0)
        left = descendants(os.getpid())
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        if not left and not descendants(os.getpid()):
            return
        time.sleep(0.01)


def supervise(job, fd):
    """A: start the worker B in new namespaces (or in a session of its own, as a subreaper), wait for it with
    the wall-clock limit, and leave nothing of it running. Exit code: 124 killed at the limit or on request,
    128 + N killed by signal N, else B's own (0-127); 125: the containment could not be set up."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        if job["mode"] == "namespaces":
            unshare(NAMESPACES)
        else:
            prctl(PR_SET_CHILD_SUBREAPER, 1)
    except OSError:
        os._exit(125)
    pid = os.fork()
    if pid == 0:
        try:
            run_worker(job, fd)
        except BaseException as e:
            try:
                data = wire.encode({"broken": f"the sandbox could not be set up: {wire.one_line(e)}"})
                os.write(fd, len(data).to_bytes(8, "big") + data)
            except BaseException:
                pass
        os._exit(125)
    os.close(fd)
    deadline, status = time.monotonic() + job["limits"]["wall"], None
    while status is None:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
        elif stop or time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = "killed"
        else:
            time.sleep(0.005)
    if job["mode"] != "namespaces":
        kill_the_rest(job.get("uid"))
    if status == "killed":
        os._exit(124)
    os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else min(os.WEXITSTATUS(status), 127))


# ------------------------------------------------------------------------------------------------------------
# The fork server: imports torch once, forks a supervisor per job; jobs on a SEQPACKET socket, with the fd


def measure():
    """Which containment this machine allows: {"mode", "root", "why"}, found by trying in a child."""
    forced = os.environ.get("ASSIGNMENT_SANDBOX", "")
    root = os.geteuid() == 0
    if forced and forced not in MODES:
        raise ValueError(f"ASSIGNMENT_SANDBOX={forced!r}: expected one of {', '.join(MODES)}")
    if not LINUX:
        return {"mode": "none", "root": root, "own_user": False,
                "why": f"no containment on {sys.platform} (Linux only)"}
    # a user of its own when root: with namespaces always (the worker's root has the Python installation), in
    # the fallback only if that user can reach the installation where it is
    own_user = root and readable_by_others(sys.base_prefix) and readable_by_others(sys.prefix)
    if forced == "fallback":
        return {"mode": forced, "root": root, "own_user": own_user, "why": "ASSIGNMENT_SANDBOX=fallback"}
    why = "" if root else "not run as root (namespaces need it here)"
    if root:
        pid = os.fork()
        if pid == 0:
            try:
                unshare(NAMESPACES)
                os._exit(0)
            except OSError as e:
                os._exit(min(e.errno or 1, 100))
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        if code == 0:
            return {"mode": "namespaces", "root": True, "own_user": True, "why": ""}
        why = f"unshare refused ({os.strerror(code)})"
    if forced == "namespaces":
        raise OSError(f"ASSIGNMENT_SANDBOX=namespaces: {why}")
    return {"mode": "fallback", "root": root, "own_user": own_user, "why": why}


def serve_forks(ctl_fd):
    """The fork server's loop: {"start": id, ...} + an fd -> {"started": id, "pid"}; {"kill": id}; and
    {"exit": id, "code"} when a job's supervisor has ended. Single-threaded: it forks safely."""
    import select
    import numpy  # noqa: F401  (imported once here for every worker)
    import safetensors.torch  # noqa: F401
    import torch
    import torch.distributed  # noqa: F401
    import torch.nn.parallel  # noqa: F401
    try:
        import tokenizers  # noqa: F401
        import tqdm  # noqa: F401
    except ImportError:
        pass
    from course import worker  # noqa: F401
    torch.set_num_threads(1)
    ctl = socket.socket(fileno=ctl_fd)
    found = measure()
    ctl.send(json.dumps({"features": found}).encode())
    children = {}
    while True:
        ready = select.select([ctl], [], [], 0.01)[0]
        if ready:
            try:
                data, fds, _, _ = socket.recv_fds(ctl, 1 << 16, 1)
            except OSError:
                break
            if not data:
                break
            serve_one(ctl, json.loads(data), fds, found["mode"], children)
        for job_id, pid in list(children.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                del children[job_id]
                ctl.send(json.dumps({"exit": job_id, "code": os.waitstatus_to_exitcode(status)}).encode())
    for pid in children.values():
        os.kill(pid, signal.SIGTERM)
    for pid in children.values():
        os.waitpid(pid, 0)


def serve_one(ctl, message, fds, mode, children):
    """The fork server's answer to one message: {"start": id, ...} forks a supervisor for that job (children:
    {id: its pid}) and says {"started": id, "pid"}; {"kill": id} ends that job."""
    if "start" in message:
        job = {**message, "mode": mode}
        pid = os.fork()
        if pid == 0:
            ctl.close()
            try:
                supervise(job, fds[0])
            finally:
                os._exit(125)
        os.close(fds[0])
        children[message["start"]] = pid
        ctl.send(json.dumps({"started": message["start"], "pid": pid}).encode())
    elif "kill" in message and message["kill"] in children:
        os.kill(children[message["kill"]], signal.SIGTERM)
