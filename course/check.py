"""
`check`: a student runs one part's visible tests (or all) in their own tree, as grading runs them (each graded
function alone in the hand-out's file, in a process of its own), without containment, on any system.
"""
import json
from pathlib import Path

from course.markers import top_level, visible_tests
from course.parts import BY_NAME, MANIFEST, PARTS, ROOT, AssignmentError
from course.runner import run_tests
from course.submission import combined, student_function
from course.tree import graded_files


def check_files(root):
    """(the tree `check` runs, notes, {part: why it cannot run}): in a student version, the hand-out's graded
    files with the student's functions put in one by one, as grading does (a helper or an import added outside
    a function is missing here too, and a file that does not parse costs its parts); in the instructor's tree,
    the tree as it is."""
    files = graded_files(root)
    manifest = root / MANIFEST
    if not manifest.is_file():
        return files, [], {}
    base = json.loads(manifest.read_text()).get("base", {})
    lines, reasons = [], {}
    for file in sorted({p.file for p in PARTS} & set(base)):
        text = base[file].encode()
        for p in (p for p in PARTS if p.file == file):
            mine, why = student_function(root, p)
            try:
                text = combined({file: text}, p, mine)[file] if mine is not None else text
            except AssignmentError as e:
                why = str(e)
            if why:
                reasons[p.name] = why
        files[file] = text
        try:
            added = sorted(set(top_level((root / file).read_text())) - set(top_level(base[file])))
        except (OSError, SyntaxError):
            added = []
        if added:
            lines.append(f"note: {file} defines {', '.join(added)} outside the graded functions: grading (and "
                         f"this check) takes each graded function alone, so put imports and helpers inside it")
    return files, lines, reasons


def check(name, root=ROOT):
    """Run the visible tests of one part (or all) in this tree, as grading runs them (a process of its own, the
    student's functions alone); returns the number of failures."""
    root = Path(root)
    names = list(BY_NAME) if name == "all" else [name]
    if any(n not in BY_NAME for n in names):
        raise AssignmentError(f"unknown part {name!r}: choose from {', '.join(BY_NAME)} or all")
    visible = visible_tests(root)
    counts = {}
    if (root / MANIFEST).is_file():  # the student version: how many tests each part has at grading
        recorded = json.loads((root / MANIFEST).read_text()).get("parts", {})
        counts = {n: p.get("tests") for n, p in recorded.items()}
    files, lines, reasons = check_files(root)
    runnable = [t for n in names if n not in reasons for t in BY_NAME[n].names if t in visible]
    res = run_tests(files, runnable, contained=False) if runnable else {}
    res.update({t: reasons[n] for n in names if n in reasons for t in BY_NAME[n].names if t in visible})
    for line in lines:
        print(line)
    points = 0.0
    for n in names:
        part = BY_NAME[n]
        mine = [(t, w) for t, w in part.tests if t in visible]
        got = sum(w for t, w in mine if res[t] is None)
        hidden = (counts.get(n) or len(part.tests)) - len(mine)
        points += got
        print(f"{n}: {sum(res[t] is None for t, _ in mine)}/{len(mine)} visible tests pass ({part.file}, "
              f"{part.function}): {round(got, 2):g} of its {part.points} points so far; hidden tests at grading: "
              f"{hidden} ({part.points - sum(w for _, w in mine):g} points)")
        for t, w in mine:
            print(f"  {'ok  ' if res[t] is None else 'FAIL'} {t} ({w:g})" + (f": {res[t]}" if res[t] else ""))
    if len(names) > 1:
        print(f"all: {round(points, 2):g} of {sum(BY_NAME[n].points for n in names)} points from the visible tests")
    return sum(why is not None for why in res.values())


def print_parts():
    print(f"{'part':<14}{'file':<11}{'function':<22}{'points':>6}  what (tests)")
    for p in PARTS:
        print(f"{p.name:<14}{p.file:<11}{p.function:<22}{p.points:>6}  {p.what} ({len(p.tests)})")
    print(f"{'total':<47}{sum(p.points for p in PARTS):>6}")

