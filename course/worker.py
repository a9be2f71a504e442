"""
The process that holds a student's code: it imports the tree it is given (the kit's modules with the student's
function in place) and the tests' probes (tests/parts_probes.py), then answers calls until the grader closes the
stream: {"call": probe, "args", "kwargs"} -> {"value": what the probe returned} or {"raised": the exception in
one line}. Its first message is {"ready": ...} or {"broken": why the probes do not import}.

Nothing here decides a score: the tests, their expected values and the points are in the grader's process. At
grading this runs inside the sandbox (course/sandbox.py) with an audit hook (`guard`) as well, which turns what
the sandbox forbids into one clear line ("import of transformers refused while grading") and fences Python's own
file and process calls where the operating system could not.
"""
import ast
import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path

from course import wire

PROBES = "tests/parts_probes.py"


def guard(tree, strict=True):
    """From here on this process may not import transformers (an audit hook cannot be taken back). strict
    (grading): nor read a file outside the tree and Python's own folders, change one outside the tree, start or
    signal a process, open a socket, or call C through ctypes. Python calls only: C code (torch.from_file, a
    shell started by _posixsubprocess) is the sandbox's to stop."""
    import site
    import sysconfig
    spec = importlib.util.find_spec("transformers")
    folder = lambda p: os.path.join(os.path.realpath(p), "")
    banned = tuple(folder(p) for p in (spec.submodule_search_locations or [])) if spec else ()
    readable = tuple({folder(p) for p in (tree, sys.prefix, sys.base_prefix, sys.exec_prefix,
                                          *site.getsitepackages(), *sysconfig.get_paths().values(),
                                          "/proc/self", "/dev")})
    writable = (folder(tree), "/dev/null/")
    refused = ("subprocess.", "os.system", "os.posix_spawn", "os.exec", "os.spawn", "os.fork", "os.forkpty",
               "pty.spawn", "os.kill", "os.killpg", "signal.pthread_kill", "socket.", "ctypes.")
    changes = {"os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.chmod", "os.chown", "os.truncate",
               "os.link", "os.symlink", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile"}
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    inside = lambda path, where: (os.path.realpath(os.fsdecode(path)) + os.sep).startswith(where)

    def hook(event, args):
        if event == "import" and str(args[0]).split(".")[0] == "transformers":
            raise ImportError("import of transformers refused while grading")
        if not strict:
            return
        if event == "open" and isinstance(args[0], (str, bytes)):
            path = os.path.realpath(os.fsdecode(args[0]))
            mode = str(args[1] or "")
            write = isinstance(args[2], int) and args[2] & writing or any(c in mode for c in "wax+")
            if path.startswith(banned) or not inside(path, writable if write else readable):
                raise PermissionError(f"{path}: {'writing' if write else 'reading'} this file is refused while "
                                      f"grading")
        if event in changes and not all(inside(a, writable) for a in args if isinstance(a, (str, bytes))):
            raise PermissionError(f"{event}: changing files outside the tree is refused while grading")
        if event.startswith(refused):
            raise PermissionError(f"{event}: refused while grading")
    sys.addaudithook(hook)


def import_probes(tree):
    """tests/parts_probes.py of tree as a module. A project module it imports that does not import itself (a
    syntax error in a sibling file) is replaced by one whose every attribute raises the reason, so that only the
    probes that use it fail."""

    class Broken(types.ModuleType):
        def __getattr__(self, attr):
            raise ImportError(self.__dict__["why"])
    path = Path(tree) / PROBES
    for node in ast.parse(path.read_text()).body:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module] + [
            f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) and node.module \
            and not node.level else []
        for name in names:  # a module, or a package's (machinery.optim): the project's, if the tree has it
            file = Path(tree, *name.split("."))
            if not (file.with_suffix(".py").is_file() or (file / "__init__.py").is_file()) or name in sys.modules:
                continue
            try:
                importlib.import_module(name)
            except BaseException as e:
                sys.modules[name] = Broken(name)
                sys.modules[name].why = f"{name.replace('.', '/')}.py does not import: {wire.one_line(e)}"
                if "." in name and name.rsplit(".", 1)[0] in sys.modules:
                    setattr(sys.modules[name.rsplit(".", 1)[0]], name.rsplit(".", 1)[1], sys.modules[name])
    spec = importlib.util.spec_from_file_location("parts_probes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def safe_line(e):
    try:
        return wire.one_line(e)
    except BaseException:  # an exception whose str raises
        return "an exception that cannot be printed"


def answer(probes, request):
    """The answer to one request, as bytes ready to send."""
    try:
        name, args, kwargs = request["call"], request["args"], request["kwargs"]
        probe = getattr(probes, name, None)
        if not callable(probe) or name.startswith("_"):
            raise AttributeError(f"no probe {name!r} in {PROBES}")
        reply = {"value": probe(*args, **kwargs)}
    except BaseException as e:  # the student's code raised (SystemExit and KeyboardInterrupt included)
        reply = {"raised": safe_line(e)}
    try:
        return wire.encode(reply)
    except BaseException as e:
        return wire.encode({"raised": f"what came back cannot be sent to the grader: {safe_line(e)}"})


def serve(reader, writer, tree, strict=True):
    """Import the tree's probes, say ready (or broken), answer calls until the stream ends; then leave at
    once (os._exit: no atexit handler or thread of the student's code runs after)."""
    sys.path.insert(0, str(tree))
    os.chdir(tree)
    guard(tree, strict)
    try:
        probes, first = import_probes(tree), {"ready": True}
    except BaseException as e:
        probes, first = None, {"broken": f"importing the tests' probes failed: {safe_line(e)}"}
    wire.send(writer, first)
    while True:
        try:
            request = wire.receive(reader)
        except BaseException:
            break
        if request is None or type(request) is not dict:
            break
        data = answer(probes, request) if probes else wire.encode({"raised": first["broken"]})
        writer.write(len(data).to_bytes(8, "big") + data)
        writer.flush()
    os._exit(0)


def main_stdio(tree, strict):
    """A worker started as a plain process (check, or a system without the fork server): requests on stdin,
    answers on what was stdout; the student's prints go to stderr."""
    reader = os.fdopen(os.dup(0), "rb", buffering=0)
    writer = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # print() in the student's code goes to stderr, not into the answers
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    import torch
    torch.set_num_threads(1)
    serve(reader, writer, tree, strict)
