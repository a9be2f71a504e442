"""
The files of a tree that the course tooling reads and writes: the project's files (those git tracks), the part
of them a graded test needs, the part a student's process gets, and new folders written whole or not at all.
"""
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from course.parts import MANIFEST, PROBES, REFERENCE_DATA, ROOT, TESTS, AssignmentError


def project_files(root):
    """The project's files, relative to root: those git tracks where root is a checkout (untracked files are
    never handed out), else those the student version's manifest lists."""
    root = Path(root)
    if (root / ".git").exists():
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached"], capture_output=True,
                                check=True).stdout
        names = {n for n in listed.decode().split("\0") if n}
    elif (root / MANIFEST).is_file():
        names = set(json.loads((root / MANIFEST).read_text()).get("files", [])) | {MANIFEST}
    else:
        raise AssignmentError(f"{root}: not a git checkout and no {MANIFEST}: the files to hand out are the "
                              f"ones git tracks")
    return sorted(n for n in names if (root / n).is_file())


SUITE = (TESTS, REFERENCE_DATA)  # the grader's half of a tree: the tests and their data, never in a worker


def graded_files(root=ROOT) -> dict:
    """{name: bytes} of what the graded tests need from a tree: the project's Python modules (not the other
    tests, the notebooks or the grading tooling), the graded tests, their probes and their data."""
    root = Path(root)
    try:
        names = project_files(root)
    except AssignmentError:  # a bare copy of the sources (the tooling's own tests make those)
        names = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                 and not {".git", ".venv", "venv", "__pycache__", "out"} & set(p.relative_to(root).parts)]
    keep = lambda n: n in (TESTS, PROBES, REFERENCE_DATA) or n.endswith(".py") and \
        not n.startswith(("tests/", "notebooks/", "docs/", "course/"))
    return {n: (root / n).read_bytes() for n in names if keep(n)}


def worker_files(files):
    """What the student's process gets of a tree: the modules and the probes; not the tests or their data."""
    return {n: data for n, data in files.items() if n not in SUITE and not n.startswith("sanity/")}


def write_new(path, write):
    """write(tmp) fills a temporary folder beside `path`, a folder that must not exist, which is then renamed
    to it: a failure leaves nothing."""
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        write(tmp)
        os.chmod(tmp, 0o755)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

