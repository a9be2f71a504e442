"""
The gradebook a course keeps (course/gradebook.py, `grade --csv/--deadline/--gradescope`): a submission found
one folder down, its time and lateness, grades.csv keeping the instructor's own columns and the other students'
rows, a history that is only ever appended to, Gradescope's results.json, and the kit run as Gradescope runs
its autograder; `grade` off Linux says in one line why not, and `check` needs none of Linux's calls.
"""
import csv
import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import course.__main__ as command
from course.make import make
from course.parts import PARTS
import course_cases as cases
from course import gradebook, sandbox

ROOT = Path(__file__).resolve().parents[1]
UTC = datetime.timezone.utc


def report(id, total=10.0, late=None, hidden_failed=True):
    tests = {"test_a": {"points": 2, "max": 2, "hidden": False, "failed": None},
             "test_b": {"points": 0, "max": 3, "hidden": True,
                        "failed": "AssertionError: b" if hidden_failed else None}}
    return {"id": id, "graded_at": "2026-03-02T10:00:00+00:00", "submitted_at": "2026-03-01T22:00:00+00:00",
            "deadline": "2026-03-01T23:59:00+00:00" if late is not None else "", "late": late, "late_by": 0.5,
            "sha256": "ab" * 32, "containment": "contained", "seconds": 3.2, "total": total, "max": 5,
            "changed_tests": [], "notes": ["a note"],
            "parts": {"kl": {"file": "losses.py", "function": "kl_per_row", "points": 2, "max": 5, "passed": 1,
                             "count": 2, "tests": tests}}}


def test_a_submission_one_folder_down_is_found(tmp_path):
    (tmp_path / "alice/hand-out/machinery").mkdir(parents=True)
    (tmp_path / "alice/hand-out/losses.py").write_text("x = 1\n")
    (tmp_path / "alice/__MACOSX").mkdir()
    folder, note = gradebook.find_submission(tmp_path / "alice", ["losses.py", "model.py"])
    assert folder == tmp_path / "alice/hand-out" and note == "graded the files in alice/hand-out/ (the " \
        "submission's one folder)"
    (tmp_path / "bob/a").mkdir(parents=True)
    (tmp_path / "bob/b").mkdir()
    for sub in ("a", "b"):
        (tmp_path / f"bob/{sub}/losses.py").write_text("x = 1\n")
    assert gradebook.find_submission(tmp_path / "bob", ["losses.py"]) == (tmp_path / "bob", None)  # which one?


def test_submission_time_lateness_and_times_given_badly(tmp_path):
    (tmp_path / "s").mkdir()
    for name, when in (("losses.py", 1_772_400_000), ("model.py", 1_772_405_000)):
        (tmp_path / "s" / name).write_text("x\n")
        os.utime(tmp_path / "s" / name, (when, when))
    os.utime(tmp_path / "s", (1_772_300_000, 1_772_300_000))
    submitted = gradebook.submitted_at(tmp_path / "s")
    assert submitted == datetime.datetime.fromtimestamp(1_772_405_000, UTC)
    deadline = gradebook.parse_time("2026-03-01T23:00:00+01:00")
    assert gradebook.lateness(submitted, deadline) == (True, round((1_772_405_000 - deadline.timestamp()) / 3600, 2))
    assert gradebook.lateness(submitted, gradebook.parse_time("2030-01-01")) == (False, 0.0)
    assert gradebook.parse_time("2026-03-01 12:00").tzinfo == UTC, "no offset: UTC"
    meta = {"created_at": "2026-02-27T14:22:32.365935-07:00", "assignment": {"due_date": "2026-03-01"}}
    assert gradebook.submitted_at(tmp_path / "s", meta) == datetime.datetime(2026, 2, 27, 21, 22, 32, 365935, UTC)
    with pytest.raises(gradebook.BookError, match=r"^--deadline 'friday': not a time; write it as 2026-03-01T23"):
        gradebook.parse_time("friday")


def test_the_gradebook_keeps_added_columns_and_other_students(tmp_path):
    book = tmp_path / "grades.csv"
    book.write_text("id,kl,total,comment,max,submitted_at,late,graded_at,sha256\n"
                    "alice,1,1,\"see me, twice\",5,x,,y,z\ncarol,5,5,great,5,x,,y,z\n")
    gradebook.write_csv(book, [report("alice"), report("bob", late=True)], ["kl"])
    rows = list(csv.DictReader(book.open()))
    assert list(rows[0]) == ["id", "kl", "total", "comment", "max", "submitted_at", "late", "graded_at", "sha256"]
    by_id = {r["id"]: r for r in rows}
    assert sorted(by_id) == ["alice", "bob", "carol"]
    assert by_id["alice"]["comment"] == "see me, twice" and by_id["alice"]["total"] == "10", by_id["alice"]
    assert by_id["carol"] == {"id": "carol", "kl": "5", "total": "5", "comment": "great", "max": "5",
                              "submitted_at": "x", "late": "", "graded_at": "y", "sha256": "z"}
    assert by_id["bob"]["late"] == "yes" and by_id["bob"]["comment"] == ""
    (tmp_path / "other.csv").write_text("name,points\nx,1\n")
    with pytest.raises(gradebook.BookError, match=r"other.csv: not a gradebook \(no 'id' column\)"):
        gradebook.write_csv(tmp_path / "other.csv", [report("a")], ["kl"])
    assert (tmp_path / "other.csv").read_text() == "name,points\nx,1\n"


def test_the_history_is_only_appended_to(tmp_path):
    path = tmp_path / "grades.history.jsonl"
    gradebook.append_history(path, [report("alice", total=3.0)], "graded")
    first = path.read_bytes()
    gradebook.append_history(path, [report("alice", total=7.0)], "regraded part kl")
    assert path.read_bytes().startswith(first)
    assert [(r["event"], r["total"]) for r in gradebook.history(path)] == [("graded", 3.0), ("regraded part kl", 7.0)]


def test_gradescope_results_json():
    out = gradebook.gradescope(report("alice", total=2.0, late=True), hidden_visibility="after_due_date")
    assert out["score"] == 2.0 and out["execution_time"] == 3 and "late by 0.5 h" in out["output"]
    assert [(t["name"], t["score"], t["max_score"], t["visibility"], t["status"]) for t in out["tests"]] == [
        ("kl: test_a", 2, 2, "visible", "passed"), ("kl: test_b", 0, 3, "after_due_date", "failed")]
    assert out["tests"][1]["output"] == "AssertionError: b" and out["tests"][0]["number"] == "1.1"
    json.dumps(out)
    with pytest.raises(gradebook.BookError):
        gradebook.gradescope(report("a"), "secret")
    hidden = gradebook.hidden_out(report("alice"))
    assert hidden["parts"]["kl"]["tests"] == {"test_a": report("a")["parts"]["kl"]["tests"]["test_a"],
                                              "hidden test 1": {"points": 0, "max": 3, "hidden": True,
                                                                "failed": "a hidden test failed"}}


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    where = tmp_path_factory.mktemp("made")
    make(where / "student", kit=where / "kit", check=False)
    return where / "student", where / "kit"


def test_the_kit_runs_as_gradescopes_autograder(kit, tmp_path):
    """/autograder/source the kit, /autograder/submission an upload unpacked into a folder of its own, the
    metadata Gradescope writes: results.json with a test per graded test, the late submission said so."""
    student, kit_dir = kit
    ag = tmp_path / "autograder"
    shutil.copytree(kit_dir, ag / "source")
    shutil.copytree(student, ag / "submission/distilbert-hand-out")
    cases.solve(ag / "submission/distilbert-hand-out", "lr_schedule", cases.VARIANTS["lr_schedule"][0])
    (ag / "submission_metadata.json").write_text(json.dumps({
        "created_at": "2026-03-02T09:00:00+01:00", "assignment": {"due_date": "2026-03-01T23:59:00+01:00"},
        "users": [{"name": "Student User", "id": 1234}]}))
    env = {**os.environ, "AUTOGRADER": str(ag), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    run = subprocess.run(["bash", str(ag / "source/run_autograder")], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads((ag / "results/results.json").read_text())
    assert results["score"] == 4 and len(results["tests"]) == sum(len(p.tests) for p in PARTS)
    assert sum(t["max_score"] for t in results["tests"]) == 100
    lr = [t for t in results["tests"] if t["name"].startswith("lr_schedule")]
    assert [(t["score"], t["visibility"]) for t in lr] == [(2, "visible"), (2, "after_published")], lr
    assert "late by 9.02 h (deadline 2026-03-01T22:59:00+00:00)" in results["output"], results["output"]
    assert "graded the files in submission/distilbert-hand-out/" in results["output"]
    assert results["extra_data"]["containment"].startswith(("contained", "partly", "NOT"))


def test_grade_off_linux_says_why_in_one_line(kit, tmp_path, monkeypatch, capsys):
    student, kit_dir = kit
    shutil.copytree(student, tmp_path / "alice")
    monkeypatch.setattr(sandbox, "LINUX", False)
    assert command.main(["grade", "--kit", str(kit_dir), str(tmp_path / "alice")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("course: grade: the containment of student code needs Linux")
    assert "--uncontained" in err and "Gradescope" in err


def test_grade_uncontained_and_check_use_no_call_of_linux(kit, tmp_path, monkeypatch):
    """What macOS and Windows run: plain Python processes, pipes and a reading thread (no fork, no SIGALRM, no
    select on a pipe); here with Linux's calls made to fail."""
    student, kit_dir = kit
    shutil.copytree(student, tmp_path / "alice")
    cases.solve(tmp_path / "alice", "ptp", cases.VARIANTS["ptp"][1])
    monkeypatch.setattr(sandbox, "LINUX", False)
    for name in ("fork", "setsid"):
        monkeypatch.setattr(os, name, lambda *a, **k: (_ for _ in ()).throw(AssertionError(f"os.{name} called")))
    monkeypatch.setattr(sandbox, "fork_server", lambda: (_ for _ in ()).throw(AssertionError("fork server")))
    assert command.main(["grade", "--kit", str(kit_dir), str(tmp_path / "alice"), "--uncontained",
                            "--json", str(tmp_path / "alice.json"), "--part", "ptp"]) == 0
    got = json.loads((tmp_path / "alice.json").read_text())
    assert got["parts"]["ptp"]["points"] == 6 and got["containment"].startswith("NOT contained: --uncontained")
