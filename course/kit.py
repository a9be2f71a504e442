"""
The grading kit: the student version's modules with the parts blanked, every graded test (the hidden ones too)
and the grading data, under KIT/tree; the grader (this package, and machinery/config.py for its command line);
kit.json (the parts table, the visible tests); and Gradescope's autograder files (setup.sh, run_autograder).
The kit holds no solution. It has an entry script of its own, grade.py, because its users run it from where the
submissions are, not from the kit's folder (`python -m course` would need the kit as the current folder), and
Gradescope's run_autograder calls it too: `python KIT/grade.py SUBMISSION...` grades with that kit.
"""
import dataclasses
import json
import os
import shutil
from pathlib import Path

from course import wire
from course.markers import blank, check_table, visible_tests
from course.parts import GRADING_DATA, KIT_MANIFEST, PARTS, REFERENCE_DATA, ROOT, AssignmentError, Part
from course.tree import graded_files, write_new

CONFIG = ("machinery/__init__.py", "machinery/config.py")  # what the command line needs beside this package
KIT_EXTRAS = {  # the kit's own files: Gradescope's autograder layout (zip the kit's contents and upload them)
    "setup.sh": """#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder's image.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m pip install -r requirements.txt
""",
    "run_autograder": """#!/usr/bin/env bash
# Gradescope runs this for each submission: /autograder/source is the kit, /autograder/submission the upload.
set -euo pipefail
AG="${AUTOGRADER:-/autograder}"
mkdir -p "$AG/results"
cd "$AG/source"
META=()
if [ -f "$AG/submission_metadata.json" ]; then META=(--metadata "$AG/submission_metadata.json"); fi
python3 grade.py "$AG/submission" --gradescope "$AG/results/results.json" "${META[@]}"
""",
    "grade.py": '''"""
Grades submissions with this kit, from wherever you are: python KIT/grade.py SUBMISSION... [--csv=grades.csv]
(every option: python KIT/grade.py --help). It is `python -m course grade --kit=KIT`.
"""
import sys
from pathlib import Path

KIT = Path(__file__).resolve().parent
sys.path.insert(0, str(KIT))
from course.__main__ import main  # noqa: E402

sys.exit(main(["grade", f"--kit={KIT}", *sys.argv[1:]]))
''',
}


def base_files(root, parts):
    """The graded files of root with the parts' functions blanked: the tree each of a submission's functions
    goes into alone."""
    files = graded_files(root)
    for file in sorted({p.file for p in parts}):
        only = {p.function for p in parts if p.file == file}
        files[file] = blank(files[file].decode(), file, only=only).encode()
    return files


def kit_from(root=ROOT):
    """(parts, {file: bytes} of the kit's tree, visible tests) from the instructor's tree: the student version's
    modules, every graded test, and the grading data in place of the visible data."""
    root = Path(root)
    check_table(root)
    if not (root / GRADING_DATA).is_file():
        raise AssignmentError(f"{root / GRADING_DATA}: missing (python tests/make_parts_reference.py writes it)")
    files = {**base_files(root, PARTS), REFERENCE_DATA: (root / GRADING_DATA).read_bytes()}
    return PARTS, files, sorted(visible_tests(root))


def write_kit(kit, parts, files, visible, root=ROOT):
    def write(tmp):
        for name, data in files.items():
            (tmp / "tree" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / "tree" / name).write_bytes(data)
        shutil.copytree(Path(__file__).resolve().parent, tmp / "course", ignore=shutil.ignore_patterns("__pycache__"))
        for name in CONFIG:
            (tmp / name).parent.mkdir(exist_ok=True)
            shutil.copy(ROOT / name, tmp / name)
        shutil.copy(Path(root) / "requirements.txt", tmp / "requirements.txt")
        for name, text in KIT_EXTRAS.items():
            (tmp / name).write_text(text)
            os.chmod(tmp / name, 0o755)
        (tmp / KIT_MANIFEST).write_text(json.dumps({
            "format": "distilbert-from-scratch/kit", "version": 2,
            "parts": [dataclasses.asdict(p) for p in parts], "visible": visible}, indent=2) + "\n")
    write_new(kit, write)


def load_kit(kit):
    kit = Path(kit)
    path = kit / KIT_MANIFEST
    if not path.is_file():
        raise AssignmentError(f"{path}: no such file; `python -m course make OUT --kit=KIT` writes a kit")
    try:
        meta = json.loads(path.read_text())
        assert meta["format"] == "distilbert-from-scratch/kit" and meta.get("version") == 2, \
            f"{meta['format']} version {meta.get('version')}"
        parts = tuple(Part(**{**p, "tests": tuple((t, w) for t, w in p["tests"])}) for p in meta["parts"])
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        raise AssignmentError(f"{path}: not a grading kit of this grader ({wire.one_line(e)})") from None
    files = {str(p.relative_to(kit / "tree")): p.read_bytes() for p in (kit / "tree").rglob("*") if p.is_file()
             and "__pycache__" not in p.parts}
    return parts, files, meta["visible"]

