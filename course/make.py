"""
`make`: the student version and, with --kit, the grading kit, each written to a new folder, after validating
the parts: each part's tests fail with the part blanked and pass with its solution alone in the hand-out.
"""
import os
import time
from pathlib import Path

from course.handout import student_version
from course.kit import base_files, kit_from, write_kit
from course.parts import GRADING_DATA, PARTS, REFERENCE_DATA, ROOT, AssignmentError
from course.runner import in_parallel, run_tests
from course.submission import combined, student_function
from course.tree import graded_files, write_new


def validate(root=ROOT, parts=None):
    """The reference passes every graded test, with the visible data and with the grading data; with every
    part blanked every test fails; each part's solution alone, every other part blanked, passes all of its
    tests. Returns lines to print; raises AssignmentError on the first part that breaks this."""
    root, parts = Path(root), parts or PARTS
    ref, base = graded_files(root), base_files(root, parts)
    every = [t for p in parts for t in p.names]
    trees = {"the reference": ref}
    if (root / GRADING_DATA).is_file():
        trees[f"the reference with {GRADING_DATA}"] = {**ref, REFERENCE_DATA: (root / GRADING_DATA).read_bytes()}
    alone = [combined(base, p, student_function(root, p)[0]) for p in parts]
    start = time.time()
    jobs = [lambda f=f: run_tests(f, every) for f in (*trees.values(), base)]
    results = in_parallel(jobs + [lambda f=f, p=p: run_tests(f, p.names) for f, p in zip(alone, parts)])
    for what, res in zip(trees, results):
        failed = [t for t, why in res.items() if why]
        if failed:
            raise AssignmentError(f"{what} fails {failed[0]}: {res[failed[0]]}")
    lines, blanked = [], results[len(trees)]
    for part, res in zip(parts, results[len(trees) + 1:]):
        passing = [t for t in part.names if blanked[t] is None]
        if passing:
            raise AssignmentError(f"part {part.name}: blanked, its test {passing[0]} still passes")
        failing = [t for t in part.names if res[t] is not None]
        if failing:
            raise AssignmentError(f"part {part.name}: alone in the student version (every other part blanked), "
                                  f"its test {failing[0]} fails: {res[failing[0]]}")
        lines.append(f"  {part.name:<14} its {len(part.tests)} tests fail blanked and pass with its solution "
                     f"alone")
    lines.append(f"validated in {time.time() - start:.0f} s")
    return lines


def make(out, root=ROOT, check=True, kit=None, lean=False):
    out, kit = Path(out), kit and Path(kit)
    for path in (out, kit) if kit else (out,):
        if path.exists():
            raise AssignmentError(f"{path}: already exists; make writes a new folder and never overwrites one")
        if not path.resolve().parent.is_dir():
            raise AssignmentError(f"{path.parent}: no such folder to make {path.name} in")
    if kit and (out.resolve() in kit.resolve().parents or kit.resolve() in out.resolve().parents):
        raise AssignmentError(f"{kit}: the kit and the student version must not hold each other (the kit has the "
                              f"hidden tests)")
    files = student_version(root, lean)
    made = kit_from(root) if kit else None
    report = validate(root) if check else ["not validated (--validate=false)"]

    def write(tmp):
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
            if os.access(root / name, os.X_OK) and (root / name).is_file():
                os.chmod(tmp / name, 0o755)
    write_new(out, write)
    print(f"{out}: the student version, {len(files)} files, {len(PARTS)} parts, "
          f"{sum(p.points for p in PARTS)} points{', lean' if lean else ''}")
    if kit:
        write_kit(kit, *made, root=root)
        print(f"{kit}: the grading kit, no solutions: grade with "
              f"python {kit / 'grade.py'} SUBMISSION...")
    print("\n".join(report))

