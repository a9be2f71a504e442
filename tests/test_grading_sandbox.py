"""
The student's code never shares a process with the grader's tests, and the process it runs in is contained:

  - what crosses between the two (course/wire.py) is data, never pickle;
  - a worker (course/sandbox.py) runs as another user, in namespaces of its own, under limits: probes written
    as attacks (C-level reads and writes that no audit hook sees, a shell, a socket, 2 GiB, a fork storm, a
    spin) find nothing of the host, reach no one, and leave no process and no file behind;
  - the cheats of tests/course_cases.py score 0, and the escape of issue 42 (another student's file read by a
    shell, a sleeper left in a session of its own) scores 0 and leaves nothing, graded by the kit's grader.

Where namespaces are refused the fallback is tested too (ASSIGNMENT_SANDBOX=fallback): every process killed.
"""
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from course.kit import kit_from
from course.make import make
from course.parts import BY_NAME
from course.runner import Suite, in_parallel, run_tests
import course_cases as cases
from course import contain, sandbox, wire

ROOT = Path(__file__).resolve().parents[1]
NAMESPACES = contain.measure()["mode"] == "namespaces"
needs_namespaces = pytest.mark.skipif(not NAMESPACES, reason="this machine refuses namespaces (the fallback is "
                                      "tested below)")


def processes_with(marker):
    """Command lines of the processes on this machine that hold marker."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                text = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in text:
                found.append(text)
    return found


def started(marker, n, seconds=10):
    """Whether n processes holding marker run within seconds (a loaded machine starts them late)."""
    deadline = time.time() + seconds
    while len(processes_with(marker)) < n and time.time() < deadline:
        time.sleep(0.1)
    return len(processes_with(marker)) >= n


def job_folders():
    return set(Path(sandbox.tempfile.gettempdir()).glob("assignment-job-*"))


# ------------------------------------------------------------------------------------------------------------
# What crosses: data, never pickle


class Yes(float):
    def __eq__(self, other):
        return True

    __hash__ = float.__hash__


class Loud:
    def __reduce__(self):  # what pickle would run
        return (Path("/nonexistent/x").write_text, ("pickled",))


def test_values_cross_as_data():
    value = {"a": [1, 2.5, True, None, "s"], "t": (torch.zeros(()), torch.ones(2, 3, dtype=torch.float16)),
             "b": torch.tensor([True, False]), "h": torch.ones(2, dtype=torch.bfloat16), "e": torch.zeros(0, 4),
             7: torch.arange(3), "g": torch.ones(2, requires_grad=True) * 2, "dtype": torch.long}
    back = wire.decode(wire.encode(value))
    assert set(back) == set(value) and back["a"] == value["a"] and type(back["t"]) is tuple
    for key in ("b", "h", "e", 7):
        assert back[key].dtype == value[key].dtype and torch.equal(back[key], value[key])
    assert back["g"].requires_grad and not back[7].requires_grad and back["dtype"] is torch.long
    assert type(back["t"][0]) is torch.Tensor and back["t"][0].dim() == 0


def test_a_float_or_tensor_subclass_arrives_as_plain_data_and_nothing_is_unpickled(tmp_path):
    back = wire.decode(wire.encode([Yes(0.25), torch.zeros(2).as_subclass(SubTensor), Loud(), (1).__class__(3)]))
    assert type(back[0]) is float and back[0] == 0.25 and not back[0] == 0.5
    assert isinstance(back[1], wire.Other) and back[1].type.endswith("SubTensor")
    assert isinstance(back[2], wire.Other) and back[2].type.endswith("Loud")
    with pytest.raises(wire.WireError):
        wire.decode(b"\x80\x04\x95" + b"\0" * 40)  # a pickle is not a message
    big = wire.LIMIT + 1
    with pytest.raises(wire.WireError, match="over the limit"):
        wire.receive(__import__("io").BytesIO(big.to_bytes(8, "big")))


class SubTensor(torch.Tensor):
    pass


# ------------------------------------------------------------------------------------------------------------
# A worker as an attacker: probes that try what a submission could, without the audit hook's help (C calls)

ATTACKS = '''
import ctypes, datetime, multiprocessing.util, os, time
import torch
from safetensors.torch import save_file

def who():
    return {"uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid(), "groups": os.getgroups(),
            "cwd": os.getcwd(), "root": sorted(os.listdir("/"))}

def ls(path):
    return sorted(os.listdir(path))

def from_file(path, n):
    return torch.from_file(path, size=n, dtype=torch.uint8).tolist()  # C++: no audit event

def write(path):
    save_file({"x": torch.zeros(1)}, path)  # Rust: no audit event
    return "written"

def connect(port):
    torch.distributed.TCPStore("127.0.0.1", port, is_master=False, timeout=datetime.timedelta(seconds=2))
    return "connected"

def shell(command):
    multiprocessing.util.spawnv_passfds(b"/bin/sh", [b"sh", b"-c", command.encode()], ())
    time.sleep(0.5)
    return "started"

def allocate(gib):
    torch.empty(int(gib * (1 << 30)), dtype=torch.uint8).fill_(1)
    return "allocated"

def big_file(mb):
    fd = os.open("big.bin", os.O_WRONLY | os.O_CREAT)
    chunk = b"x" * (1 << 20)
    for _ in range(mb):
        os.write(fd, chunk)
    return "written"

def spin():
    while True:
        pass
'''


def attacker(**kwargs):
    return sandbox.Worker({"tests/parts_probes.py": ATTACKS.encode()}, **kwargs)


def raised(call, *args):
    try:
        return call(*args)
    except wire.Raised as e:
        return f"raised: {e}"


@needs_namespaces
def test_a_worker_runs_as_a_stranger_in_an_empty_world(tmp_path):
    secret = tmp_path / "other-student.py"
    secret.write_text("def linear_schedule(step, total, warmup_steps):  # bob's\n    return 0.5\n")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    before, marker = job_folders(), f"sleep 31{secrets.randbelow(90) + 10}"
    with attacker(timeout=5) as w:
        assert w.features["mode"] == "namespaces" and w.first == {"ready": True}, w.first
        me = w.student.who()
        assert me["uid"] >= sandbox.UID_BASE and me["gid"] == me["uid"] and me["groups"] == [], me
        assert me["pid"] == 1, "the worker is the first process of a PID namespace of its own"
        assert "home" not in me["root"] and "mnt" not in me["root"], me["root"]
        prefix = Path(sys.prefix)
        if ROOT in prefix.parents:  # the README's set-up: the virtual environment inside the project's tree
            assert w.student.ls(str(ROOT)) == [prefix.relative_to(ROOT).parts[0]], "the installation alone"
        else:
            assert raised(w.student.ls, str(ROOT)).startswith("raised: FileNotFoundError"), "the instructor's tree"
        assert raised(w.student.ls, str(tmp_path)).startswith("raised: FileNotFoundError"), "another folder"
        if not str(prefix).startswith("/usr"):  # the Python installation alone, not the folder it is in
            assert w.student.ls(str(prefix.parent)) == [prefix.name]
        for path in (secret, ROOT / "losses.py", Path("/etc/shadow")):
            assert raised(w.student.from_file, str(path), 10).startswith("raised: RuntimeError"), path
        assert raised(w.student.write, str(tmp_path / "escaped.safetensors")).startswith("raised:")
        assert raised(w.student.connect, port).startswith("raised:")
        assert w.student.shell(f"({marker} &); setsid {marker}0 &") == "started"
        assert started(marker, 2), "the sleepers run inside the sandbox"
        assert raised(w.student.allocate, 2).startswith(("raised: RuntimeError", "raised: MemoryError"))
        assert raised(w.student.big_file, 100).startswith("raised: OSError: [Errno 27] File too large")
        with pytest.raises(wire.Ended, match="no answer within 5 s"):
            w.student.spin()
    with pytest.raises(socket.timeout):
        listener.accept()  # nobody connected
    listener.close()
    assert not (tmp_path / "escaped.safetensors").exists()
    assert not processes_with(marker), "a process of the worker outlived it"
    assert job_folders() <= before, "the worker's folder was left behind"


@needs_namespaces
def test_processes_are_limited_per_worker():
    with attacker(limits=sandbox.Limits(processes=16)) as w:
        marker = f"sleep 32{secrets.randbelow(90) + 10}"
        w.student.shell(f"for i in $(seq 40); do ({marker} &) 2>/dev/null; done")
        started(marker, 16, seconds=3)  # as many as may start
        running = len(processes_with(marker))
        assert 5 < running < 16, f"{running} sleepers: the worker's user may have 16 processes"
    assert not processes_with(marker)


def test_a_sandbox_that_cannot_be_set_up_says_why_and_grades_nothing():
    with attacker(limits=sandbox.Limits(cpu=None)) as w:  # a limit that is no number
        assert w.broken.startswith("the sandbox could not be set up: "), w.first


def test_no_two_workers_share_a_user(monkeypatch):
    slots = sandbox.Slots()
    first = slots.take()
    monkeypatch.setattr(sandbox, "users_running", lambda: {first + 1, first - 1} | set(range(60000, 70000, 2)))
    taken = [slots.take() for _ in range(5)]
    assert first not in taken and len(set(taken)) == 5 and all(u % 2 != 0 or u >= 70000 for u in taken), taken


def test_the_fallback_kills_every_process_it_started(monkeypatch):
    """Without namespaces (a container that forbids unshare, no root): a session of its own, a subreaper that
    kills every descendant, double-forked or setsid'd, at the end."""
    monkeypatch.setenv("ASSIGNMENT_SANDBOX", "fallback")
    server = sandbox.ForkServer()
    try:
        marker = f"sleep 33{secrets.randbelow(90) + 10}"
        with attacker(server=server) as w:
            assert w.features["mode"] == "fallback"
            assert "partly contained" in sandbox.describe(w.features) and "NOT contained" in \
                sandbox.describe(w.features)
            assert w.student.who()["pid"] != 1
            w.student.shell(f"({marker} &); (setsid {marker}1 &); setsid sh -c '{marker}2; true' &")
            assert started(marker, 3)
        assert not processes_with(marker), "the fallback left a process running"
    finally:
        server.close()


def test_the_audit_hook_names_what_python_may_not_do(tmp_path):
    """Python's own calls that the sandbox forbids anyway fail with one clear line (the audit hook, in every
    mode), and the file outside the tree stays as it was."""
    outside = tmp_path / "kept.txt"
    outside.write_text("mine")
    probes = f'''
import os, pathlib
OUTSIDE = {str(outside)!r}
def read():
    return open(OUTSIDE).read()
def write():
    open(OUTSIDE, "w").write("gone")
def remove():
    os.remove(OUTSIDE)
def kill():
    os.kill(os.getppid(), 9)
def process():
    import subprocess
    subprocess.run(["true"])
def connect():
    import socket
    socket.create_connection(("127.0.0.1", 9))
def call_c():
    import ctypes
    ctypes.CDLL(None).getpid()
def transformers():
    import transformers
def the_tree_is_fine():
    pathlib.Path("scratch.txt").write_text("ok")
    return open("scratch.txt").read()
'''
    with sandbox.Worker({"tests/parts_probes.py": probes.encode()}) as w:
        assert w.student.the_tree_is_fine() == "ok"
        for name in ("read", "write", "remove", "kill", "process", "connect", "call_c"):
            assert raised(getattr(w.student, name)).startswith("raised: PermissionError"), name
        assert raised(w.student.transformers) == "raised: ImportError: import of transformers refused while grading"
    assert outside.read_text() == "mine"


# ------------------------------------------------------------------------------------------------------------
# The cheats score 0 and leave nothing


def test_every_cheat_scores_zero_and_leaves_nothing():
    parts, base, _ = kit_from(ROOT)
    suite, before = Suite(base), job_folders()
    try:
        jobs = [lambda part=part, body=body: run_tests(cases.solved(base, part, body),
                                                                  BY_NAME[part].names, suite=suite)
                for part, body in cases.CHEATS.values()]
        results = in_parallel(jobs)
    finally:
        suite.close()
    scored = {name: [t for t, why in res.items() if why is None] for name, res in zip(cases.CHEATS, results)}
    assert scored == {name: [] for name in cases.CHEATS}, scored
    assert len(cases.CHEATS) >= 12
    assert job_folders() <= before


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    where = tmp_path_factory.mktemp("kit")
    make(where / "student", kit=where / "kit", check=False)
    return where / "student", where / "kit"


@needs_namespaces
def test_the_escape_of_issue_42_scores_zero_and_leaves_nothing(kit, tmp_path):
    """bob's solution is read by a shell that mallory's lr_schedule starts through _posixsubprocess, with
    sleepers in sessions of their own; mallory's kl reads bob's losses.py with torch.from_file and leaks it in
    a failure message; her mlm writes outside with torch.save and safetensors; her cosine dials 127.0.0.1; eve's
    machinery/optim.py is a link to bob's. All graded together by the kit's grader."""
    student, kit_dir = kit
    subs, mark = tmp_path / "subs", f"m{secrets.token_hex(4)}"
    for name in ("bob", "mallory", "eve"):
        shutil.copytree(student, subs / name, symlinks=True)
    cases.solve(subs / "bob", "lr_schedule", cases.VARIANTS["lr_schedule"][1] + f"# bob-{mark}\n")
    cases.solve(subs / "bob", "kl", cases.VARIANTS["kl"][0] + f"# bob-{mark}\n")
    bob_optim, bob_losses = (subs / "bob/machinery/optim.py").resolve(), (subs / "bob/losses.py").resolve()
    part, body = cases.ESCAPE
    cases.solve(subs / "mallory", part, body.replace("OTHER", str(bob_optim)).replace("MARK", mark))
    cases.solve(subs / "mallory", "kl", (
        f"import os\n"
        f"data = torch.from_file('{bob_losses}', size=os.path.getsize('{bob_losses}'), dtype=torch.uint8)\n"
        f"text = bytes(data.tolist()).decode()\n"
        f"raise ValueError(text[text.find('# bob-'):][:200])\n"))
    outside = tmp_path / "outside"
    cases.solve(subs / "mallory", "mlm", (
        f"from safetensors.torch import save_file\n"
        f"try:\n"
        f"    torch.save(student_logits, '{outside}.pt')\n"
        f"finally:\n"
        f"    save_file({{'x': student_logits.detach()}}, '{outside}.safetensors')\n"
        f"return torch.tensor(0.0)\n"))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.settimeout(0.5)
    cases.solve(subs / "mallory", "cosine", (
        f"import datetime\n"
        f"torch.distributed.TCPStore('127.0.0.1', {listener.getsockname()[1]}, is_master=False, "
        f"timeout=datetime.timedelta(seconds=1))\n"
        f"return torch.tensor(0.0)\n"))
    (subs / "eve/machinery/optim.py").unlink()
    (subs / "eve/machinery/optim.py").symlink_to(bob_optim)
    before = job_folders()
    run = subprocess.run([sys.executable, str(kit_dir / "grade.py"),
                          *map(str, sorted(subs.iterdir())), "--csv", "grades.csv"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    reports = {n: json.loads((tmp_path / f"reports/{n}.json").read_text()) for n in ("bob", "mallory", "eve")}
    points = {n: {p: r["parts"][p]["points"] for p in ("lr_schedule", "kl", "mlm", "cosine")}
              for n, r in reports.items()}
    assert points == {"bob": {"lr_schedule": 4, "kl": 7, "mlm": 0, "cosine": 0},
                      "mallory": {"lr_schedule": 0, "kl": 0, "mlm": 0, "cosine": 0},
                      "eve": {"lr_schedule": 0, "kl": 0, "mlm": 0, "cosine": 0}}, run.stdout
    everything = run.stdout + run.stderr + "".join(p.read_text() for p in tmp_path.rglob("*.json")) + \
        "".join(p.read_text() for p in tmp_path.rglob("*.md"))
    assert f"bob-{mark}" not in everything, "bob's file leaked into a report"
    assert [n for n in reports["eve"]["notes"] if "link to" in n] == [
        f"machinery/optim.py is a link to {bob_optim}, outside the submission: refused (its parts score 0)"]
    assert not processes_with(mark) and not processes_with("sleep 3171") and not processes_with("sleep 3172")
    assert not Path(f"/tmp/leak-{mark}").exists()
    assert not list(tmp_path.glob("outside*"))
    with pytest.raises(socket.timeout):
        listener.accept()
    listener.close()
    assert job_folders() <= before
    assert "contained: own mount, PID, network" in run.stdout
