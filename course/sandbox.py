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

This module is the grader's side (the fork server's handle, the workers' users, a Worker); what runs below it
(the fork server, a supervisor per worker, the worker's own set-up) is course/contain.py.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from course import wire
from course.contain import LINUX

UID_BASE, SLOTS = 61000, 500  # the workers' users: UID_BASE + slot, with no passwd entry
WORKER_SIDE = ("__init__.py", "wire.py", "worker.py", "contain.py")  # what the fork server and workers import


class Limits:
    """What one worker may use: memory (bytes above its size at start), cpu (seconds), processes, file size
    (bytes), open files, wall (seconds, the whole part)."""

    def __init__(self, memory=1 << 30, cpu=120, processes=64, file_size=64 << 20, open_files=64, wall=600):
        self.memory, self.cpu, self.processes = memory, cpu, processes
        self.file_size, self.open_files, self.wall = file_size, open_files, wall

    def dict(self):
        return dict(vars(self))


# ------------------------------------------------------------------------------------------------------------
# The fork server's handle (the server itself: contain.serve_forks)

BOOT = "import sys; sys.path.insert(0, sys.argv[1]); from course import contain; contain.serve_forks(int(sys.argv[2]))"


def course_copy():
    """A copy of the worker's side of this package (WORKER_SIDE) in a folder of its own, which the workers'
    Python starts from: a folder that holds no solution (the instructor's tree does) and no parts table."""
    folder = tempfile.mkdtemp(prefix="assignment-course-")
    (Path(folder) / "course").mkdir()
    for name in WORKER_SIDE:
        shutil.copy(Path(__file__).resolve().parent / name, Path(folder) / "course" / name)
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
    probes; `stop()` then `start()` again after it ended; `close()` ends it and removes everything it had.

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
