"""
What a submission is made of: its graded files, read safely (no link out of the submission, nothing but a
regular file, at most 2 MB), each graded function taken alone and put into a tree of the kit's, the hash of what
was graded, and the notes an instructor should read (names a solution has no need of, changed tests).
"""
import hashlib
import os
import re
import stat
from pathlib import Path

from course import wire
from course.markers import functions
from course.parts import TESTS, AssignmentError

SUSPECT = ("sys.argv", "_exit", "sys.modules", "torch.testing", "__class__", "__subclasses__", "gc.", "inspect",
           "_getframe", "f_back", "f_globals", "open(", "exec(", "eval(", "compile(", "subprocess", "safetensors",
           "load_file", "__import__", "importlib", "globals(", "setattr(", "getattr(", "builtins", "signal",
           "__closure__", "__code__", "os.environ", "Path(", "__file__", "atexit", "sys.stdout", "os.write",
           "os.dup", "__eq__", "__torch_function__", "from_file", "socket", "multiprocessing", "ctypes", "fork",
           "spawn", "TCPStore", "torch.save", "save_file", "os.", "chr(", "bytes(", "base64", "codecs")
# a name that starts a word matches only where no letter, digit, _ or . comes before it (".eval()" is no eval()
SUSPECT_RE = [(s, re.compile((r"(?<![\w.])" if s[0].isalpha() else "") + re.escape(s))) for s in SUSPECT]
MAX_FILE = 2 << 20  # bytes of a graded file: more is refused


class Refused(AssignmentError):
    """A submission's file that is not graded (a link out of the submission, not a file, too large)."""


def read_submitted(dir, name):
    """The bytes of dir/name, a regular file inside dir: a symbolic link that leaves the submission (another
    student's file), a folder, a device or a file over 2 MB is refused with one line."""
    dir = Path(dir)
    path = dir / name
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f"{name} is missing")
    real, home = path.resolve(), dir.resolve()
    if home not in real.parents:
        raise Refused(f"{name} is a link to {real}, outside the submission: refused")
    info = os.stat(real)
    if not stat.S_ISREG(info.st_mode):
        raise Refused(f"{name} is not a regular file: refused")
    if info.st_size > MAX_FILE:
        raise Refused(f"{name} has {info.st_size:,} bytes, over {MAX_FILE:,}: refused")
    with open(real, "rb") as f:
        return f.read(MAX_FILE + 1)


def student_function(dir, part):
    """The lines of part.function in the student's file, or the reason there are none."""
    try:
        text = read_submitted(dir, part.file).decode(errors="replace")
    except (OSError, Refused) as e:
        return None, str(e) if isinstance(e, Refused) or isinstance(e, FileNotFoundError) else wire.one_line(e)
    try:
        spans = functions(text, part.file)
    except AssignmentError as e:
        return None, str(e)
    if part.function not in spans:
        return None, f"{part.file} has no function {part.function}"
    first, last = spans[part.function]
    return text.splitlines()[first:last + 1], None


def combined(base, part, lines):
    """The base's files with part.function replaced by the student's lines."""
    text = base[part.file].decode()
    first, last = functions(text, part.file)[part.function]
    new = text.splitlines()
    new[first:last + 1] = lines
    return {**base, part.file: ("\n".join(new) + "\n").encode()}


def submitted_hash(dir, parts):
    """sha256 over the submission's graded files (names and contents)."""
    h = hashlib.sha256()
    for file in sorted({p.file for p in parts}):
        try:
            data = read_submitted(dir, file)
        except (OSError, Refused) as e:
            data = f"({e})".encode()
        h.update(f"{file}\0".encode() + data + b"\0")
    return h.hexdigest()


def notes(dir, parts):
    """What to read: graded functions that use names a solution has no need of (a hint, not a defence: the
    containment is), and files refused."""
    out = []
    for file in sorted({p.file for p in parts}):
        try:
            read_submitted(dir, file)
        except Refused as e:
            out.append(f"{e} (its parts score 0)")
        except OSError:
            pass
    for p in parts:
        lines, _ = student_function(dir, p)
        code = "\n".join(lines or [])
        found = [s for s, pattern in SUSPECT_RE if pattern.search(code)]
        if found:
            out.append(f"{p.name}: {p.function} uses {', '.join(found)}: read it")
    return out


def changed_tests(dir, visible_text):
    """The graded tests file, if the submission's differs from the hand-out's (it is not used in grading)."""
    try:
        text = read_submitted(dir, TESTS).decode(errors="replace")
    except (OSError, Refused):
        return [f"{TESTS} (missing)"]
    return [] if text == visible_text else [f"{TESTS} (changed)"]

