"""
The gradebook a course keeps: where a submission's files are, when it was submitted, and what is written after
grading. Nothing written is lost: grades.csv holds the latest row per student and keeps the rows of students
not graded this time and any column the instructor added; every grading is appended to grades.history.jsonl
(one JSON report a line, never rewritten); Gradescope's results.json is written for one submission.

A report (one submission, one grading):
    id, folder, graded_at, submitted_at, deadline, late, sha256, containment, seconds, total, max, notes,
    changed_tests, parts: {part: {file, function, points, max, passed, count,
                                  tests: {test: {points, max, hidden, failed}}}}
"""
import csv
import datetime
import io
import json
import os
import tempfile
from pathlib import Path

SKIP = ("__MACOSX", ".git", "__pycache__")


class BookError(ValueError):
    """Bad input: one line naming the file or value at fault."""


def now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def iso(t):
    return t.astimezone(datetime.timezone.utc).isoformat(timespec="seconds") if t else ""


def parse_time(text, what="--deadline"):
    """An ISO 8601 time (2026-03-01T23:59:00+01:00, or 2026-03-01 23:59: UTC when no offset is given)."""
    try:
        t = datetime.datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    except ValueError:
        raise BookError(f"{what} {text!r}: not a time; write it as 2026-03-01T23:59:00+01:00") from None
    return t if t.tzinfo else t.replace(tzinfo=datetime.timezone.utc)


def find_submission(folder, graded):
    """(the folder that holds the graded files, a note or None): the folder itself, or its one subfolder that
    holds them (a zip unpacked into a folder of its own)."""
    folder = Path(folder)
    if any((folder / name).exists() or (folder / name).is_symlink() for name in graded):
        return folder, None
    inner = [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".") and p.name not in SKIP
             and any((p / name).exists() for name in graded)] if folder.is_dir() else []
    if len(inner) == 1:
        return inner[0], f"graded the files in {folder.name}/{inner[0].name}/ (the submission's one folder)"
    return folder, None


def submitted_at(folder, metadata=None):
    """When the submission was handed in: Gradescope's created_at (metadata), else the latest modification
    time of its files (links not followed)."""
    if metadata and metadata.get("created_at"):
        return parse_time(metadata["created_at"], "submission_metadata.json created_at")
    latest = os.lstat(folder).st_mtime
    for path in Path(folder).rglob("*"):
        if set(path.relative_to(folder).parts) & set(SKIP):
            continue
        try:
            latest = max(latest, os.lstat(path).st_mtime)
        except OSError:
            continue
    return datetime.datetime.fromtimestamp(latest, datetime.timezone.utc).replace(microsecond=0)


def read_metadata(path):
    """Gradescope's submission_metadata.json: {created_at, assignment: {due_date, ...}, users, ...}."""
    try:
        meta = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise BookError(f"{path}: not a submission_metadata.json ({e})") from None
    if not isinstance(meta, dict):
        raise BookError(f"{path}: not a submission_metadata.json (not an object)")
    return meta


def lateness(submitted, deadline):
    """(late, how late in hours) of a submission; (None, None) without a deadline."""
    if deadline is None or submitted is None:
        return None, None
    hours = (submitted - deadline).total_seconds() / 3600
    return hours > 0, round(max(hours, 0.0), 2)


# ------------------------------------------------------------------------------------------------------------
# Writing: through a temporary file and a rename, or appending


def write_file(path, text):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_history(path, reports, event):
    """Each report as one JSON line at the end of path (created if need be): never rewritten."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps({"event": event, **r}, sort_keys=True) + "\n" for r in reports)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, lines.encode())
    finally:
        os.close(fd)


def history(path):
    """The reports of a history file, oldest first."""
    if not Path(path).is_file():
        return []
    out = []
    for i, line in enumerate(Path(path).read_text().splitlines()):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                raise BookError(f"{path}:{i + 1}: not a JSON line") from None
    return out


def csv_row(report, parts):
    row = {"id": report["id"]}
    row.update({p: f"{report['parts'][p]['points']:g}" for p in parts if p in report["parts"]})
    late = report.get("late")
    row.update({"total": f"{report['total']:g}", "max": f"{report['max']:g}",
                "submitted_at": report.get("submitted_at") or "", "late": "" if late is None else
                ("yes" if late else "no"), "graded_at": report["graded_at"], "sha256": report["sha256"]})
    return row


def write_csv(path, reports, parts):
    """The gradebook: one row per student, the latest grading. The rows of students not graded now are kept,
    and so is every column already in the file (an instructor's comments or manual points), with its values."""
    ours = ["id", *parts, "total", "max", "submitted_at", "late", "graded_at", "sha256"]
    rows, header = [], list(ours)
    if Path(path).is_file():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            old_header = reader.fieldnames or []
            if "id" not in old_header:
                raise BookError(f"{path}: not a gradebook (no 'id' column); write to another file")
            rows = list(reader)
        header = old_header + [c for c in ours if c not in old_header]
    by_id = {row.get("id"): row for row in rows}
    for report in reports:
        new = csv_row(report, parts)
        if report["id"] in by_id:
            by_id[report["id"]].update(new)
        else:
            rows.append({c: "" for c in header} | new)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, header, restval="", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda row: str(row.get("id"))))
    write_file(path, buf.getvalue())


# ------------------------------------------------------------------------------------------------------------
# What a report looks like to a student


def hidden_out(report):
    """The report with each hidden test's name and message replaced ("hidden test 1": "a hidden test failed")."""
    parts = {}
    for name, p in report["parts"].items():
        tests, n = {}, 0
        for t, r in p["tests"].items():
            if r["hidden"]:
                n += 1
                tests[f"hidden test {n}"] = {**r, "failed": "a hidden test failed" if r["failed"] else None}
            else:
                tests[t] = r
        parts[name] = {**p, "tests": tests}
    return {**report, "parts": parts}


def markdown(report):
    rows = "\n".join(f"| {n} | {p['file']} | `{p['function']}` | {p['passed']}/{p['count']} | "
                     f"{p['points']:g} / {p['max']:g} |" for n, p in report["parts"].items())
    failed = "\n".join(f"- **{n}** `{t}` ({r['max']:g} points): {r['failed']}" for n, p in report["parts"].items()
                       for t, r in p["tests"].items() if r["failed"])
    when = f"submitted {report['submitted_at']}" if report.get("submitted_at") else ""
    if report.get("late"):
        when += f", **late** by {report['late_by']:g} h (deadline {report['deadline']})"
    text = (f"# {report['id']}: {report['total']:g} / {report['max']:g}\n\nGraded {report['graded_at']}"
            f"{'; ' + when if when else ''}; the graded files' sha256 {report['sha256'][:16]}.\n\n"
            f"| part | file | function | tests | points |\n|---|---|---|---:|---:|\n{rows}\n"
            f"| **total** | | | | **{report['total']:g} / {report['max']:g}** |\n")
    if failed:
        text += f"\n## What failed\n\n{failed}\n"
    extra = [f"{t}: the tests of the hand-out were used" for t in report["changed_tests"]] + report["notes"]
    if extra:
        text += "\n## Notes\n\n" + "\n".join(f"- {n}" for n in extra) + "\n"
    return text


VISIBILITIES = ("hidden", "after_due_date", "after_published", "visible")


def gradescope(report, hidden_visibility="after_published"):
    """Gradescope's autograder results.json for one report: a test per graded test (name, number, score,
    max_score, status, output, visibility, tags), hidden tests shown as hidden_visibility says."""
    if hidden_visibility not in VISIBILITIES:
        raise BookError(f"--gradescope-hidden {hidden_visibility!r}: one of {', '.join(VISIBILITIES)}")
    tests = []
    for i, (part, p) in enumerate(report["parts"].items(), 1):
        for j, (name, r) in enumerate(p["tests"].items(), 1):
            tests.append({"name": f"{part}: {name}", "number": f"{i}.{j}", "score": r["points"],
                          "max_score": r["max"], "status": "failed" if r["failed"] else "passed",
                          "output": r["failed"] or "", "tags": [part, p["file"]],
                          "visibility": hidden_visibility if r["hidden"] else "visible"})
    lines = [f"{report['total']:g} / {report['max']:g} points"]
    if report.get("late"):
        lines.append(f"late by {report['late_by']:g} h (deadline {report['deadline']})")
    lines += [f"{t}: the tests of the hand-out were used" for t in report["changed_tests"]] + report["notes"]
    return {"score": report["total"], "execution_time": round(report.get("seconds") or 0), "output": "\n".join(lines),
            "visibility": "visible", "stdout_visibility": "hidden", "tests": tests,
            "extra_data": {"id": report["id"], "sha256": report["sha256"], "graded_at": report["graded_at"],
                           "containment": report.get("containment", "")}}
