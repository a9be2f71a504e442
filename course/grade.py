"""
`grade`: each part of each submission graded alone. The student's function goes into a fresh copy of the kit's
modules (every other part blanked), run by a process of its own that gets only the tests' inputs and returns
only outputs (course/runner.py, course/wire.py), contained by the operating system (course/sandbox.py); the
tests, their expected values, the points and the gradebook (course/gradebook.py) stay in this process.
"""
import json
import sys
import time
from pathlib import Path

from course import gradebook, sandbox, wire
from course.kit import kit_from, load_kit
from course.markers import functions, without_hidden_tests
from course.parts import MANIFEST, ROOT, TESTS, AssignmentError
from course.runner import Suite, in_parallel, run_tests
from course.submission import changed_tests, combined, notes, student_function, submitted_hash


def grade_part(dir, part, base, suite, contained=True):
    lines, why = student_function(dir, part)
    if lines is None:
        return {t: why for t in part.names}
    try:
        files = combined(base, part, lines)
        functions(files[part.file].decode(), part.file)
    except AssignmentError as e:
        return {t: str(e) for t in part.names}
    return run_tests(files, part.names, suite=suite, contained=contained)


def submission_ids(dirs):
    """The report names of the submission folders (their folder names), checked: folders, none twice."""
    for d in dirs:
        if not d.is_dir():
            raise AssignmentError(f"{d}: not a folder")
    ids = [d.resolve().name for d in dirs]
    if len(set(ids)) != len(ids):
        raise AssignmentError(f"two submissions named {next(i for i in ids if ids.count(i) > 1)}: a report is "
                              f"named by its folder")
    return ids


def due(deadline, meta):
    """The deadline given, else the due date of Gradescope's submission_metadata.json, else None."""
    if deadline is None and meta and (meta.get("assignment") or {}).get("due_date"):
        return gradebook.parse_time(meta["assignment"]["due_date"], "submission_metadata.json due_date")
    return deadline


def part_report(part, res, visible):
    """One part's entry of a report from its tests' results {test: None or why it failed}."""
    tests = {t: {"points": 0 if res[t] else w, "max": w, "hidden": t not in visible, "failed": res[t]}
             for t, w in part.tests}
    return {"file": part.file, "function": part.function, "max": part.points,
            "points": round(sum(r["points"] for r in tests.values()), 2),
            "passed": sum(not r["failed"] for r in tests.values()), "count": len(tests), "tests": tests}


def grade_all(dirs, kit=None, root=ROOT, jobs=2, only=None, deadline=None, metadata=None, contained=True):
    """(parts, [report]) for the submission folders: every (submission, part) pair graded by a worker of its
    own, `jobs` at a time. kit: a kit folder, else the kit is made from the instructor's tree root."""
    dirs = [Path(d) for d in dirs]
    ids = submission_ids(dirs)
    if kit is None and (Path(root) / MANIFEST).exists():
        raise AssignmentError(f"{root}: this is a student version; grade with --kit, or from the instructor's "
                              f"copy")
    parts, base, visible = load_kit(kit) if kit else kit_from(root)
    if only and only not in {p.name for p in parts}:
        raise AssignmentError(f"--part {only}: no such part (the kit's are {', '.join(p.name for p in parts)})")
    meta = gradebook.read_metadata(metadata) if metadata else None
    deadline = due(deadline, meta)
    chosen = [p for p in parts if only in (None, p.name)]
    visible_text = without_hidden_tests(base[TESTS].decode(), TESTS)
    found = [gradebook.find_submission(d, sorted({p.file for p in parts})) for d in dirs]
    features = sandbox.fork_server().features if contained else \
        {"mode": "none", "root": False, "why": "--uncontained: student code runs as you"}
    suite, start = Suite(base), time.time()
    try:
        pairs = [(i, p) for i in range(len(dirs)) for p in chosen]
        results = in_parallel([lambda i=i, p=p: grade_part(found[i][0], p, base, suite, contained)
                               for i, p in pairs], jobs)
    finally:
        suite.close()
    seconds = round((time.time() - start) / len(dirs), 1)
    reports = []
    for i, (folder, where) in enumerate(found):
        graded = {part.name: part_report(part, res, visible) for (j, part), res in zip(pairs, results) if j == i}
        submitted = gradebook.submitted_at(folder, meta)
        late, late_by = gradebook.lateness(submitted, deadline)
        reports.append({
            "id": ids[i], "folder": str(folder), "graded_at": gradebook.iso(gradebook.now()),
            "submitted_at": gradebook.iso(submitted), "deadline": gradebook.iso(deadline), "late": late,
            "late_by": late_by, "sha256": submitted_hash(folder, parts), "containment": sandbox.describe(features),
            "parts": graded, "total": round(sum(p["points"] for p in graded.values()), 2),
            "max": sum(p.points for p in parts), "changed_tests": changed_tests(folder, visible_text),
            "notes": ([where] if where else []) + notes(folder, chosen), "seconds": seconds})
    return parts, reports


def merged(old, new):
    """new (one part regraded) laid over the earlier report old of the same submission."""
    parts = {**old["parts"], **new["parts"]}
    out = {**new, "parts": parts, "total": round(sum(p["points"] for p in parts.values()), 2)}
    if old.get("sha256") != new["sha256"]:
        out["notes"] = new["notes"] + ["the files changed since the earlier grading of the other parts"]
    return out


def earlier(path):
    try:
        report = json.loads(Path(path).read_text())
        assert all(type(p.get("tests")) is dict for p in report["parts"].values())
        return report
    except (ValueError, KeyError, AttributeError, AssertionError) as e:
        raise AssignmentError(f"{path}: not a report of this grader ({wire.one_line(e)})") from None


def print_grades(report):
    late = " (late by {:g} h)".format(report["late_by"]) if report.get("late") else ""
    print(f"{report['id']}: {report['total']:g} / {report['max']:g}{late}")
    print(f"  {'part':<14}{'file':<11}{'function':<22}{'tests':>7}{'points':>12}")
    for name, p in report["parts"].items():
        print(f"  {name:<14}{p['file']:<11}{p['function']:<22}{p['passed']:>4}/{p['count']:<2}"
              f"{p['points']:>8g} / {p['max']:g}")
        for t, r in p["tests"].items():
            if r["failed"]:
                print(f"      {t}: {r['failed'][:150]}")
    for name in report["changed_tests"]:
        print(f"  note: {name}: the tests of the hand-out were used")
    for n in report["notes"]:
        print(f"  note: {n}")


def grade_command(a, submissions):
    """`grade`: a (GradeConfig, course/__main__.py) on the submission folders: print, and write what it asks."""
    contained = not a.uncontained
    if contained and not sandbox.LINUX:
        raise AssignmentError(f"grade: the containment of student code needs Linux (namespaces, another user, "
                              f"limits); on {sys.platform} it would run as you: grade on Linux (a VM, a container, "
                              f"or Gradescope with the kit's run_autograder), or pass --uncontained")
    deadline = gradebook.parse_time(a.deadline) if a.deadline else None
    parts, reports = grade_all(submissions, kit=a.kit or None, jobs=a.jobs, only=a.part or None,
                               deadline=deadline, metadata=a.metadata or None, contained=contained)
    folder = Path(a.reports) if a.reports else Path(a.csv).parent / "reports" if a.csv else None
    if a.part and folder:
        reports = [merged(earlier(folder / f"{r['id']}.json"), r)
                   if (folder / f"{r['id']}.json").is_file() else r for r in reports]
    shown = [gradebook.hidden_out(r) if a.hide_hidden else r for r in reports]
    if reports:
        print(f"containment: {reports[0]['containment']}")
    for r in shown:
        print_grades(r)
    print(f"graded {len(reports)} submission(s), {reports[0]['seconds']} s each" if reports else "nothing graded")
    write_outputs(a, parts, reports, shown, folder)


def write_outputs(a, parts, reports, shown, folder):
    """The reports (ID.json, ID.md), the gradebook and its history, --json and --gradescope, as a asks."""
    if folder:
        for r in shown:
            gradebook.write_file(folder / f"{r['id']}.json", json.dumps(r, indent=2) + "\n")
            gradebook.write_file(folder / f"{r['id']}.md", gradebook.markdown(r))
    if a.csv:
        gradebook.write_csv(a.csv, reports, [p.name for p in parts])
        gradebook.append_history(Path(a.csv).with_suffix(".history.jsonl"), reports,
                                 f"regraded part {a.part}" if a.part else "graded")
    if a.json or a.gradescope:
        if len(reports) != 1:
            raise AssignmentError("--json and --gradescope are for one submission; use --csv (and --reports) for "
                                  "several")
        if a.json:
            gradebook.write_file(a.json, json.dumps(shown[0], indent=2) + "\n")
        if a.gradescope:
            gradebook.write_file(a.gradescope, json.dumps(gradebook.gradescope(reports[0], a.gradescope_hidden),
                                                          indent=2) + "\n")
