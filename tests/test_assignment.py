"""
The course assignment end to end (python -m course): make the student version and the grading kit, grade a class
of three submissions with the kit alone (a full one, an untouched one, one that cheats), grade from the
instructor's tree, the hand-out, and `check` as grading runs it. The expected points are written out here by hand
from the parts table in the instructors' guide, not read from course.parts.PARTS. The parts table, the markers and
bad input: test_course_table.py; containment and cheats: test_grading_sandbox.py; correct styles and real
mistakes: test_grading_fairness.py; the gradebook: test_gradebook.py.
"""
import ast
import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import course_cases as cases
from course.markers import functions
from course.parts import BY_NAME, PARTS

ROOT = Path(__file__).resolve().parents[1]
LOSSES_PARTS = {"kl": 7, "soft_targets": 3, "mlm": 5, "cosine": 4, "combine": 4, "pkd": 9}  # losses.py's
cli = cases.command


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    where = tmp_path_factory.mktemp("made")
    run = cli("make", where / "student", "--kit", where / "kit")
    assert run.returncode == 0, run.stderr
    return where / "student", where / "kit", run.stdout


@pytest.fixture(scope="module")
def student(made):
    return made[0], made[2]


def grades(tmp_path, folder):
    report = tmp_path / "grades.json"
    run = cli("grade", folder, f"--json={report}")
    assert run.returncode == 0, run.stderr
    return json.loads(report.read_text()), run.stdout


def test_make_validates_every_part(student):
    out, stdout = student
    assert stdout.count("tests fail blanked and pass with its solution alone") == 16, stdout
    assert "validated in" in stdout


def test_student_version_leaves_out_the_instructors_files_and_hidden_tests(student):
    out, _ = student
    assert not (out / ".git").exists(), "the student version must not hold the history (and the solutions)"
    for name in ("tests/test_assignment.py", "tests/make_parts_reference.py", "sanity/parts_grading.safetensors",
                 "tests/course_cases.py", "tests/course_variants.py", "tests/test_grading_fairness.py",
                 "tests/test_course_table.py", "docs/instructors.md"):
        assert not (out / name).exists(), f"{name} is the instructor's"
    for name in ("tests/parts_probes.py", "course/wire.py", "course/worker.py", "course/sandbox.py",
                 "course/contain.py"):
        assert (out / name).is_file(), f"{name}: check needs it"
    handout = (out / "HANDOUT.md").read_text()
    assert "| kl | losses.py | `kl_per_row` | 7 |" in handout and "python -m course check kl" in handout
    assert "(3 of 5 tests, 4.5 of its 7 points, here)" in handout, handout
    readme = (out / "README.md").read_text()
    assert "HANDOUT.md" in readme and not re.search(r"^#+ .*(Course assignments|[Ii]nstructor)", readme, re.M)
    tests = (out / "tests/test_parts.py").read_text()
    assert "\n### BEGIN HIDDEN TESTS" not in tests and "def test_attention_gradients_match_sdpa" not in tests
    assert "def test_attention_equals_softmax_qkt_v" in tests, "the visible tests are kept"
    for path in out.rglob("*.py"):
        assert not re.search(
            r"^\s*### BEGIN SOLUTION: \d", path.read_text(), re.M
        ), f"{path}: a region left in"


def test_student_version_blanks_regions_and_keeps_the_rest(student):
    out, _ = student
    expected = {
        "model.py": [
            "explicit_attention",
            "Layer.attention",
            "Layer.forward",
            "Embeddings.forward",
            "student_from_teacher",
        ],
        "losses.py": ["kl_per_row", "soft_target_loss", "mlm_loss", "cosine_loss", "combine", "pkd_loss"],
        "data.py": ["mask_tokens", "smoothing_weights"],
        "machinery/optim.py": ["linear_schedule"],
        "train.py": ["forward_backward"],
        "peakd/ptp.py": ["ptp_labels"],
    }
    for file, names in expected.items():
        ref, mine = defs(ROOT / file), defs(out / file)
        assert set(ref) == set(mine), f"{file}: functions added or lost"
        for name, node in ref.items():
            same = ast.dump(node) == ast.dump(mine[name])
            if name in names:
                assert not same, f"{file}: {name} was not blanked"
                assert ast.get_docstring(node) == ast.get_docstring(mine[name]), f"{name}: docstring changed"
                body = ast.get_source_segment((out / file).read_text(), mine[name])
                assert "# YOUR CODE HERE" in body and "raise NotImplementedError()" in body, body
            else:
                assert same, f"{file}: {name} changed, though it is no part"
    table = (out / "course/parts.py").read_text()
    assert "test_attention_gradients_match_sdpa" not in table, "the student's parts table names a hidden test"
    assert "('test_attention_equals_softmax_qkt_v', 2)" in table
    manifest = json.loads((out / "assignment.json").read_text())
    assert manifest["base"]["losses.py"] == (out / "losses.py").read_text(), "check's base is the hand-out's"
    steps = (out / "data.py").read_text()
    assert "# 4. a chosen token becomes [MASK]" in steps, "the step comments of a region are kept"
    run = subprocess.run(
        [sys.executable, "-c", "import model, losses, data, train, peakd, machinery.optim, finetune"],
        cwd=out,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, f"the student version does not import: {run.stderr}"
    parts = cli("parts", cwd=out)
    assert parts.returncode == 0 and "masking" in parts.stdout and "100" in parts.stdout, parts.stderr


def defs(path):
    out = {}

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.ClassDef)):
                if isinstance(child, ast.FunctionDef):
                    out[prefix + child.name] = child
                visit(child, prefix + child.name + ".")

    visit(ast.parse(path.read_text()), "")
    return out


@pytest.mark.slow
def test_grade_one_file_restored_gives_exactly_its_points(student, tmp_path):
    out, _ = student
    mine = tmp_path / "mine"
    shutil.copytree(out, mine)
    shutil.copy(ROOT / "losses.py", mine / "losses.py")  # this file's parts solved
    (mine / "data.py").write_text("def mask_tokens(:\n")  # a file that does not parse costs only its parts
    check = cli("check", "kl", cwd=mine)
    assert check.returncode == 0 and "kl: 3/3 visible tests pass" in check.stdout, check.stdout + check.stderr
    assert "4.5 of its 7 points so far; hidden tests at grading: 2 (2.5 points)" in check.stdout, check.stdout
    check = cli("check", "masking", cwd=mine)  # the broken file: one line per test, no traceback
    assert check.returncode == 1 and "Traceback" not in check.stdout + check.stderr, check.stdout + check.stderr
    assert "FAIL test_masking_80_10_10 (3.5): data.py:1: syntax error" in check.stdout, check.stdout
    solve(mine, "attention", "return (q @ k.transpose(-2, -1) / 2.0).softmax(-1) @ v\n")  # padding not masked
    check = cli("check", "attention", cwd=mine)
    assert check.returncode == 1 and "ok   test_attention_equals_softmax_qkt_v (2)" in check.stdout, check.stdout
    assert re.search(r"FAIL test_attention_ignores_padding_keys \(2\): AssertionError: with padding: .* expected "
                     r"-?[0-9.]+, got -?[0-9.]+", check.stdout), check.stdout
    common = (mine / "machinery/optim.py").read_text()  # a solution that calls transformers gets nothing
    common = common.replace(
        "    # YOUR CODE HERE (the reference: 3 lines)\n    raise NotImplementedError()\n",
        "    import transformers\n    return transformers.get_scheduler\n",
    )
    (mine / "machinery/optim.py").write_text(common)
    with open(mine / "tests/test_parts.py", "a") as f:  # a student "fixing" a test: ignored
        f.write("\n\ndef test_attention_equals_softmax_qkt_v():\n    pass\n")
    report, printed = grades(tmp_path, mine)
    got = {name: p["points"] for name, p in report["parts"].items() if p["points"]}
    assert got == {**LOSSES_PARTS, "attention": 2}, printed  # attention without the padding: its first test
    assert report["total"] == sum(LOSSES_PARTS.values()) + 2 == 34, printed
    assert report["changed_tests"] == ["tests/test_parts.py (changed)"], report["changed_tests"]
    assert "syntax error" in report["parts"]["masking"]["tests"]["test_masking_80_10_10"]["failed"]
    failed = report["parts"]["lr_schedule"]["tests"]["test_lr_schedule_warmup_then_decay"]["failed"]
    assert "import of transformers refused" in failed, failed
    refused = cli("grade", out, cwd=mine)
    assert refused.returncode == 2 and "student version" in refused.stderr


@pytest.mark.slow
def test_check_fails_where_grading_fails(student, tmp_path):
    """A helper written outside the graded function is missing at grading; check says so and fails too."""
    out, _ = student
    mine = tmp_path / "mine"
    shutil.copytree(out, mine)
    optim = mine / "machinery/optim.py"
    optim.write_text("def ramp(step, n):\n    return step / n\n\n\n" + optim.read_text())
    solve(mine, "lr_schedule", "if step < warmup_steps:\n    return ramp(step, warmup_steps)\n"
          "return max(0.0, (total - step) / (total - warmup_steps))\n")
    check = cli("check", "lr_schedule", cwd=mine)
    assert check.returncode == 1, check.stdout
    assert "note: machinery/optim.py defines ramp outside the graded functions" in check.stdout, check.stdout
    assert "FAIL test_lr_schedule_warmup_then_decay (2): NameError: name 'ramp' is not defined" in check.stdout
    report, _ = grades(tmp_path, mine)  # the same failure at grading (the hidden test takes no warm-up step)
    lr = report["parts"]["lr_schedule"]
    assert lr["tests"]["test_lr_schedule_warmup_then_decay"]["failed"] == "NameError: name 'ramp' is not defined"
    assert lr["points"] == 2, lr


# ------------------------------------------------------------------------------------------------------------
# The kit, and a class graded with it

solve = cases.solve


def reference_body(part):
    """The reference's solution of a part, as a body for solve."""
    p = BY_NAME[part]
    text = (ROOT / p.file).read_text()
    first, last = functions(text, p.file)[p.function]
    lines = text.splitlines()[first : last + 1]
    start = next(i for i, line in enumerate(lines) if "### BEGIN SOLUTION" in line)
    end = next(i for i, line in enumerate(lines) if "### END SOLUTION" in line)
    indent = len(lines[start]) - len(lines[start].lstrip())
    return "\n".join(line[indent:] for line in lines[start + 1 : end]) + "\n"


def test_the_kit_holds_no_solution(made):
    out, kit, _ = made
    for p in PARTS:  # each graded function in the kit is the student version's, blanked
        ref, mine = defs(out / p.file), defs(kit / "tree" / p.file)
        assert ast.dump(ref[p.function]) == ast.dump(mine[p.function]), f"kit: {p.file} {p.function}"
    for path in kit.rglob("*.py"):
        assert not re.search(r"^\s*### BEGIN SOLUTION: \d", path.read_text(), re.M), f"{path}: a solution"
    tests = (kit / "tree/tests/test_parts.py").read_text()
    assert "def test_attention_gradients_match_sdpa" in tests, "the kit holds the hidden tests"
    for name in ("grade.py", "course/sandbox.py", "machinery/config.py", "setup.sh", "run_autograder",
                 "requirements.txt", "tree/tests/parts_probes.py"):
        assert (kit / name).is_file(), f"the kit has no {name}"
    assert os.access(kit / "run_autograder", os.X_OK) and os.access(kit / "setup.sh", os.X_OK)
    data = (kit / "tree/sanity/parts_reference.safetensors").read_bytes()
    grading = (ROOT / "sanity/parts_grading.safetensors").read_bytes()
    assert data == grading, "the kit's tensors are the grading ones"
    assert data != (out / "sanity/parts_reference.safetensors").read_bytes()


@pytest.mark.slow
def test_a_class_graded_with_the_kit_alone(made, tmp_path):
    """Three submissions (all solved, untouched, a cheat in each of six parts and one honest part) graded by the
    kit's own grader, from a folder with no reference in it; then one part regraded with the hidden tests
    hidden: the gradebook keeps the rest, and its history both gradings."""
    out, kit, _ = made
    subs = tmp_path / "subs"
    for name in ("full", "blank", "cheater"):
        shutil.copytree(out, subs / name)
    for file in {p.file for p in PARTS}:
        shutil.copy(ROOT / file, subs / "full" / file)
    cheats = {}
    for part, body in cases.CHEATS.values():  # the first cheat of each part
        cheats.setdefault(part, body)
    for part, body in cheats.items():
        solve(subs / "cheater", part, body)
    solve(subs / "cheater", "masking", reference_body("masking"))
    grader = [sys.executable, str(kit / "grade.py"), *sorted(subs.iterdir())]
    run = subprocess.run([*grader, "--csv", "grades.csv", "--jobs", "2"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    rows = {r["id"]: r for r in csv.DictReader((tmp_path / "grades.csv").open())}
    assert sorted(rows) == ["blank", "cheater", "full"], rows
    assert rows["full"]["total"] == "100" and rows["blank"]["total"] == "0", run.stdout
    assert {part: rows["cheater"][part] for part in cheats} == {part: "0" for part in cheats}, run.stdout
    assert rows["cheater"]["masking"] == "12" and rows["cheater"]["total"] == "12", run.stdout
    assert len({r["sha256"] for r in rows.values()}) == 3 and all(r["graded_at"] for r in rows.values())
    report = json.loads((tmp_path / "reports/cheater.json").read_text())
    flagged = {n.split(":")[0] for n in report["notes"]}
    assert flagged >= set(cheats), report["notes"]
    assert "| **total** | | | | **100 / 100** |" in (tmp_path / "reports/full.md").read_text()
    seconds = report["seconds"]  # the wall time per submission, two parts at a time
    assert seconds < 30, f"{seconds} s per submission"
    one = [*grader[:2], str(subs / "blank"), "--csv", "grades.csv", "--part", "kl", "--hide-hidden"]
    run = subprocess.run(one, cwd=tmp_path, capture_output=True, text=True, timeout=600)  # one part of one
    assert run.returncode == 0, run.stderr
    rows = {r["id"]: r for r in csv.DictReader((tmp_path / "grades.csv").open())}
    assert rows["full"]["total"] == "100" and rows["cheater"]["masking"] == "12", "the regrade kept the rest"
    assert rows["blank"]["total"] == "0" and rows["blank"]["masking"] == "0", rows["blank"]
    blank = (tmp_path / "reports/blank.md").read_text()
    assert "`test_kl_by_hand` (1 points): NotImplementedError" in blank and "a hidden test failed" in blank, blank
    assert "test_kl_zero_probabilities_and_teacher_detached" not in blank + run.stdout, "a hidden test named"
    events = [(r["id"], r["event"]) for r in map(json.loads, (tmp_path / "grades.history.jsonl").open())]
    assert events == [("blank", "graded"), ("cheater", "graded"), ("full", "graded"),
                      ("blank", "regraded part kl")], events


