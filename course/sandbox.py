"""
Where a student's code runs at grading: one process per (submission, part), started by a fork server that has
imported torch once (so a part costs a fork, not a Python start), and contained by the operating system:

  - its own copy of the tree (the kit's modules, the student's one function) in a fresh temporary folder;
  - namespaces (Linux, where unshare is allowed): a new mount namespace whose root is an empty tmpfs holding
    read-only binds of /usr, the Python installation and its packages, a few files of /etc, the devices null,
    zero and (u)random, a private /proc and /tmp, and the tree (writable): the instructor's files, the kit and
    the other submissions are not there; a new network namespace (no interface up: no connection anywhere, not
    even to 127.0.0.1); a new PID namespace whose first process is the worker, so that when it ends, at the end
    of the part or killed at the time limit, the kernel kills every process it started, double-forked or in a
    session of its own; new IPC and UTS namespaces;
  - run as root, it becomes a user and group of its own (uid and gid 61000 + a slot, no home, no groups) with
    no_new_privs, so a setuid program gives nothing back;
  - resource limits: address space (its size at start + `memory`), CPU seconds, processes (with a user of its
    own), file size, open files, no core files.

Where namespaces are refused (not root and no unprivileged user namespaces, or a container that forbids
unshare) it falls back, and says so in every report: the process still gets a fresh tree, the limits, another
user when run as root (if Python is readable by it), a session of its own under a subreaper that kills every
descendant at the end, and the audit hook of course/worker.py; it can then open network connections and read
what any user may read. Off Linux there is no fork server and no containment: `grade` says so and asks for
--uncontained. bubblewrap and firejail do the same with namespaces from a setuid helper or user namespaces;
doing it here keeps the fork (a fresh Python with torch is about 1 s of CPU per part) and needs nothing
installed.
"""
import ctypes
import json
import os
import platform
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
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
UID_BASE, SLOTS = 61000, 500  # the workers' users: UID_BASE + slot, with no passwd entry
ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf", "passwd", "group")
MODES = ("namespaces", "fallback")  # ASSIGNMENT_SANDBOX=MODE forces one (the tests); default: the best there is


class Limits:
    """What one worker may use: memory (bytes above its size at start), cpu (seconds), processes, file size
    (bytes), open files, wall (seconds, the whole part)."""

    def __init__(self, memory=1 << 30, cpu=120, processes=64, file_size=64 << 20, open_files=64, wall=600):
        self.memory, self.cpu, self.processes = memory, cpu, processes
        self.file_size, self.open_files, self.wall = file_size, open_files, wall

    def dict(self):
        return dict(vars(self))


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
    os.makedirs(root + "/tmp", exist_ok=True)
    mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,mode=1777")
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
            message = json.loads(data)
            if "start" in message:
                job = {**message, "mode": found["mode"]}
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
        for job_id, pid in list(children.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                del children[job_id]
                ctl.send(json.dumps({"exit": job_id, "code": os.waitstatus_to_exitcode(status)}).encode())
    for pid in children.values():
        os.kill(pid, signal.SIGTERM)
    for pid in children.values():
        os.waitpid(pid, 0)


BOOT = "import sys; sys.path.insert(0, sys.argv[1]); from course import sandbox; sandbox.serve_forks(int(sys.argv[2]))"


def course_copy():
    """A copy of this package in a folder of its own, which the workers' Python starts from: a folder that
    holds no solution (the instructor's tree does)."""
    folder = tempfile.mkdtemp(prefix="assignment-course-")
    shutil.copytree(Path(__file__).resolve().parent, Path(folder) / "course",
                    ignore=shutil.ignore_patterns("__pycache__"))
    os.chmod(folder, 0o755)
    return folder


class ForkServer:
    """The grader's handle on the fork server (started once per grading, from a copy of this package)."""

    def __init__(self):
        self.folder = course_copy()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
               "HOME": self.folder, **({"ASSIGNMENT_SANDBOX": os.environ["ASSIGNMENT_SANDBOX"]}
                                       if "ASSIGNMENT_SANDBOX" in os.environ else {})}
        self.proc = subprocess.Popen([sys.executable, "-I", "-c", BOOT, self.folder, str(theirs.fileno())],
                                     pass_fds=[theirs.fileno()], cwd=self.folder, env=env,
                                     stdin=subprocess.DEVNULL)
        theirs.close()
        self.ctl, self.lock, self.waiting, self.next = ours, threading.Lock(), {}, 0
        first = self.ctl.recv(1 << 16)
        if not first:
            raise OSError("the fork server did not start")
        self.features = json.loads(first)["features"]
        threading.Thread(target=self.read, daemon=True).start()

    def read(self):
        while True:
            try:
                data = self.ctl.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                break
            message = json.loads(data)
            with self.lock:
                job = self.waiting.get(message.get("started", message.get("exit")))
            if job is None:
                continue
            if "started" in message:
                job["pid"] = message["pid"]
                job["started"].set()
            else:
                job["code"] = message["code"]
                job["ended"].set()
        with self.lock:  # the server ended: nobody waits for ever
            for job in self.waiting.values():
                job.setdefault("code", "the fork server ended")
                job["started"].set()
                job["ended"].set()

    def start(self, job):
        """Start a worker for job {"dir", "tree", "uid", "limits"}: (a Channel to it, the job's record)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with self.lock:
            self.next += 1
            record = {"id": self.next, "started": threading.Event(), "ended": threading.Event()}
            self.waiting[self.next] = record
            socket.send_fds(self.ctl, [json.dumps({**job, "start": self.next}).encode()], [theirs.fileno()])
        theirs.close()
        record["started"].wait(30)
        channel = wire.Channel(ours.makefile("rb", buffering=0), ours.makefile("wb"))
        record.update(socket=ours, channel=channel)
        return channel, record

    def kill(self, record):
        with self.lock:
            try:
                self.ctl.send(json.dumps({"kill": record["id"]}).encode())
            except OSError:
                pass

    def finish(self, record, timeout=30):
        """Close the worker's stream (it leaves), wait until its supervisor reported it gone; the exit code."""
        try:
            record["socket"].shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        record["channel"].close()
        record["socket"].close()
        if not record["ended"].wait(timeout):
            self.kill(record)
            record["ended"].wait(timeout)
        with self.lock:
            self.waiting.pop(record["id"], None)
        return record.get("code")

    def close(self):
        try:
            self.ctl.shutdown(socket.SHUT_RDWR)  # wakes the reading thread, and the server sees the end
            self.ctl.close()
        except OSError:
            pass
        finally:
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            shutil.rmtree(self.folder, ignore_errors=True)


# ------------------------------------------------------------------------------------------------------------
# The grader's side of one worker


SERVER, SERVER_LOCK, COPY = [], threading.Lock(), []


def plain_course():
    """The folder of the copy of this package that plain (uncontained) workers start from."""
    with SERVER_LOCK:
        if not COPY:
            import atexit
            COPY.append(course_copy())
            atexit.register(shutil.rmtree, COPY[0], True)
        return COPY[0]


def fork_server():
    with SERVER_LOCK:
        if not SERVER or SERVER[-1].proc.poll() is not None:
            import atexit
            SERVER.append(ForkServer())
            atexit.register(SERVER[-1].close)
        return SERVER[-1]


class Slots:
    """Per-worker users (UID_BASE + slot), none shared by two running workers and none with a passwd entry."""

    def __init__(self):
        self.free, self.lock = None, threading.Lock()

    def take(self):
        """A free user, at random: another grader running at the same time picks from the same range, so a user
        that any process runs as now is skipped."""
        import pwd
        import random
        with self.lock:
            if self.free is None:
                self.free = []
                for slot in range(SLOTS):
                    try:
                        pwd.getpwuid(UID_BASE + slot)
                    except KeyError:
                        self.free.append(UID_BASE + slot)
                random.shuffle(self.free)
            busy = users_running()
            for i, uid in enumerate(self.free):
                if uid not in busy:
                    return self.free.pop(i)
            raise OSError("no free worker user left")

    def give(self, uid):
        with self.lock:
            self.free.append(uid)


SLOTS_IN_USE = Slots()


def users_running():
    """The real user ids of the processes on this machine."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as f:
                    found |= {int(line.split()[1]) for line in f if line.startswith("Uid:")}
            except (OSError, ValueError, IndexError):
                continue
    return found


def remove_files_of(uid, folders=("/tmp", "/var/tmp", "/dev/shm")):
    """Files a worker's user left in the world-writable folders (only where no mount namespace kept them in
    a tmpfs of its own)."""
    for folder in folders:
        for entry in os.scandir(folder) if os.path.isdir(folder) else []:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
            except OSError:
                continue


class Worker:
    """A process that runs the student's code of one tree, contained as the machine allows: `student` calls its
    probes; `restart()` after it ended; `close()` ends it and removes everything it had.

    contained=False (check, or --uncontained): a plain Python process, on any system."""

    def __init__(self, files, limits=None, contained=True, timeout=10.0, startup=120.0, server=None):
        self.limits, self.contained, self.timeout, self.startup = limits or Limits(), contained, timeout, startup
        self.dir = Path(tempfile.mkdtemp(prefix="assignment-job-"))
        self.tree = self.dir / "tree"
        for name, data in files.items():
            (self.tree / name).parent.mkdir(parents=True, exist_ok=True)
            (self.tree / name).write_bytes(data)
        self.uid, self.record, self.proc, self.server = None, None, None, None
        if contained:
            if not LINUX:
                raise OSError(f"no containment on {sys.platform}")
            self.server = server or fork_server()
            self.features = self.server.features
            if self.features["own_user"]:
                self.uid = SLOTS_IN_USE.take()
                for path in [self.dir, *self.dir.rglob("*")]:
                    os.chown(path, self.uid, self.uid, follow_symlinks=False)
                os.chmod(self.dir, 0o700)
        else:
            self.features = {"mode": "none", "root": False, "own_user": False,
                             "why": "not contained (check, or --uncontained)"}
        self.student, self.first = None, None
        self.start()

    def start(self):
        if self.contained:
            job = {"dir": str(self.dir), "tree": str(self.tree), "uid": self.uid, "limits": self.limits.dict(),
                   "course": self.server.folder}
            channel, self.record = self.server.start(job)
        else:
            boot = ("import sys; sys.path.insert(0, sys.argv[1]); from course import worker; "
                    "worker.main_stdio(sys.argv[2], sys.argv[3] == 'strict')")
            here = plain_course()
            flags = {"start_new_session": True} if os.name == "posix" else {
                "creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
            self.proc = subprocess.Popen([sys.executable, "-I", "-c", boot, here, str(self.tree), "light"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(self.tree), **flags)
            channel = wire.Channel(self.proc.stdout, self.proc.stdin)
        self.channel = channel
        self.student = wire.Remote(channel, self.timeout, on_end=self.end)
        try:
            first = channel.receive(self.startup)
        except wire.Ended as e:
            first = {"broken": f"the test process did not start: {e}"}
        self.first = first if type(first) is dict else {"broken": f"the test process said {str(first)[:100]}"}

    @property
    def broken(self):
        return self.first.get("broken")

    def end(self):
        """The worker ended or took too long: make sure it is gone."""
        if self.contained:
            if self.record is not None:
                self.server.kill(self.record)
        elif self.proc is not None and self.proc.poll() is None:
            if os.name == "posix":
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except OSError:
                    pass
            self.proc.kill()

    def stop(self):
        """End the worker and wait until nothing of it runs; its exit code."""
        if self.contained:
            code = self.server.finish(self.record) if self.record is not None else None
            self.record = None
            return code
        if self.proc is None:
            return None
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.end()
            code = self.proc.wait()
        if os.name == "posix":
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # whatever it left in its session
            except OSError:
                pass
        self.proc = None
        return code

    def restart(self):
        self.stop()
        self.start()

    def close(self):
        try:
            self.stop()
        finally:
            if self.uid is not None:
                if self.features["mode"] != "namespaces":
                    remove_files_of(self.uid)
                SLOTS_IN_USE.give(self.uid)
                self.uid = None
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def describe(features):
    """One line: what contains a worker on this machine."""
    if features["mode"] == "namespaces":
        return ("contained: own mount, PID, network, IPC and UTS namespaces; a user of its own; resource limits; "
                "a fresh tree")
    if features["mode"] == "fallback":
        if features["own_user"]:
            return (f"partly contained ({features['why']}): a fresh tree, resource limits, a user of its own, every "
                    f"process killed at the end, the audit hook; NOT contained: the network, files any user may "
                    f"read")
        return (f"partly contained ({features['why']}): a fresh tree, resource limits, every process killed at the "
                f"end, the audit hook; NOT contained: the network, your files (it runs as you)")
    return f"NOT contained: {features['why']}"
