"""
The parts table, the markers and bad input (python -m course): a bad marker or a test that needs another part
stops `make` with one line and writes nothing; `make` never overwrites; only tracked files are handed out;
--lean leaves out the near-solutions; the stored tensors are what transformers computes; each command has its
own help. The end-to-end runs: test_assignment.py.
"""
import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import course.make
import course_cases as cases
from course.handout import student_version
from course.make import validate
from course.markers import check_table
from course.parts import PARTS, AssignmentError
from course.tree import project_files

ROOT = Path(__file__).resolve().parents[1]
cli = cases.command


def copy_sources(tmp_path):
    root = tmp_path / "ref"
    (root / "tests").mkdir(parents=True)
    (root / "sanity").mkdir()
    (root / "machinery").mkdir()
    for path in [*ROOT.glob("*.py"), *ROOT.glob("machinery/*.py")]:
        shutil.copy(path, root / path.relative_to(ROOT))
    for name in ("tests/test_parts.py", "tests/parts_probes.py", "sanity/parts_reference.safetensors"):
        shutil.copy(ROOT / name, root / name)
    for package in (p.parent for p in ROOT.glob("*/__init__.py") if p.parent.name != "machinery"):
        shutil.copytree(package, root / package.name, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def line_of(text, needle, after=0):
    lines = text.splitlines()
    return next(i for i in range(after, len(lines)) if needle in lines[i]) + 1


def test_unterminated_nested_and_miscounted_regions_are_clear_errors(tmp_path):
    root = copy_sources(tmp_path)
    text = (ROOT / "model.py").read_text()
    begin = line_of(text, "### BEGIN SOLUTION", line_of(text, "def student_from_teacher"))
    cases = {
        "unterminated": (
            text[::-1].replace("### END SOLUTION"[::-1], "", 1)[::-1],
            f"model.py:{begin}: BEGIN SOLUTION is never closed",
        ),
        "nested": (
            text.replace("    ### END SOLUTION\n", "    ### BEGIN SOLUTION: 0 lines\n", 1),
            f"model.py:{line_of(text, '### END SOLUTION')}: BEGIN SOLUTION inside the region opened at "
            f"line {line_of(text, '### BEGIN SOLUTION')}",
        ),
        "miscounted": (
            text.replace("### BEGIN SOLUTION: 4 lines", "### BEGIN SOLUTION: 5 lines", 1),
            f"model.py:{line_of(text, '### BEGIN SOLUTION')}: the marker says 5 lines, the region "
            f"has 4 lines of code",
        ),
        "outside the table": (
            text.replace(
                "        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU, as BERT",
                "        ### BEGIN SOLUTION: 1 lines\n"
                "        return self.fc2(F.gelu(self.fc1(x)))\n"
                "        ### END SOLUTION",
            ),
            "a solution region in Layer.feed_forward, which is not in the parts table",
        ),
    }
    for case, (broken, message) in cases.items():
        (root / "model.py").write_text(broken)
        with pytest.raises(AssignmentError) as e:
            check_table(root)
        assert message in str(e.value), f"{case}: {e.value}"
    (root / "model.py").write_text(cases["unterminated"][0])
    run = subprocess.run(
        [sys.executable, "-m", "course", "make", tmp_path / "out"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert (
        run.returncode == 2
        and run.stderr.strip() == f"course: {cases['unterminated'][1]} (no END " "SOLUTION)"
    ), run.stderr
    assert not (tmp_path / "out").exists(), "nothing is written when the markers are bad"


def test_validation_catches_a_test_that_needs_another_part(tmp_path, monkeypatch):
    root = copy_sources(tmp_path)
    tests = (root / "tests/test_parts.py").read_text()
    tests = tests.replace(
        '    total, parts = combined(student.combine({"ce": 1.5, "mlm": 2.0, "cos": 0.25}), "combine")',
        "    student.mlm(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))  # needs part mlm\n"
        '    total, parts = combined(student.combine({"ce": 1.5, "mlm": 2.0, "cos": 0.25}), "combine")',
    )
    (root / "tests/test_parts.py").write_text(tests)
    monkeypatch.setattr(
        course.make, "PARTS", tuple(p for p in PARTS if p.name in ("mlm", "combine"))
    )
    with pytest.raises(AssignmentError) as e:
        validate(root)
    assert str(e.value).startswith(
        "part combine: alone in the student version (every other part blanked), its test "
        "test_combine_weights_and_parts fails: NotImplementedError"
    ), e.value


def test_make_never_overwrites(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    run = cli("make", out, "--validate=false")
    assert run.returncode == 2 and "already exists" in run.stderr, run.stderr
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
    assert cli("check", "nope").stderr.startswith("course: unknown part 'nope'")


def test_reference_file_matches_transformers():
    """sanity/parts_reference.safetensors is what make_parts_reference.py computes with transformers now."""
    sys.path.insert(0, str(ROOT / "tests"))
    import make_parts_reference
    from safetensors.torch import load_file
    import torch

    for seed, name in ((0, "parts_reference"), (1, "parts_grading")):  # the hand-out's, the kit's
        stored, fresh = load_file(str(ROOT / f"sanity/{name}.safetensors")), make_parts_reference.build(seed)
        assert set(stored) == set(fresh)
        for k in fresh:
            torch.testing.assert_close(
                stored[k], fresh[k], atol=1e-6, rtol=1e-6, msg=lambda m: f"{name} {k}: {m}"
            )
        assert (ROOT / f"sanity/{name}.safetensors").stat().st_size < 500_000
    assert not torch.allclose(load_file(str(ROOT / "sanity/parts_grading.safetensors"))["layer.output"],
                              load_file(str(ROOT / "sanity/parts_reference.safetensors"))["layer.output"])


def test_only_tracked_files_are_handed_out(tmp_path):
    git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / "model.py").write_text("x = 1\n")
    (tmp_path / "notes.md").write_text("the instructor's notes\n")
    git("add", "model.py")
    assert project_files(tmp_path) == ["model.py"], "an untracked file would be handed out"
    with pytest.raises(AssignmentError, match="not a git checkout"):
        project_files(tmp_path / "..")


def test_lean_leaves_out_the_near_solutions():
    full, lean = student_version(ROOT), student_version(ROOT, lean=True)
    lean_out = ("notebooks/01_bert_and_student.ipynb", "tests/test_peakd.py", "tests/test_losses.py",
                "tests/losses_fixtures.py", "tests/test_fused_head.py",
                "benchmarks/training.py")
    for name in lean_out:
        assert name in full and name not in lean, name
    students = "peakd/students.py"
    body = ast.get_source_segment(lean[students].decode(), defs_of(lean[students])["make_student"])
    assert "load_state_dict" not in body and 'raise NotImplementedError("left out' in body, body
    assert "load_state_dict" in ast.get_source_segment(full[students].decode(),
                                                       defs_of(full[students])["make_student"])
    assert json.loads(lean["assignment.json"])["lean"] is True


def defs_of(data):
    return {n.name: n for n in ast.walk(ast.parse(data.decode())) if isinstance(n, ast.FunctionDef)}


def test_each_command_has_its_own_help():
    make, grade = cli("make", "--help"), cli("grade", "--help")
    assert make.returncode == 0 and "--kit" in make.stdout and "--lean" in make.stdout, make.stdout
    assert "--hide_hidden" not in make.stdout and "--hide_hidden" in grade.stdout and "--jobs" in grade.stdout
    for option in ("--deadline", "--gradescope", "--metadata", "--uncontained"):
        assert option in grade.stdout, option
    bad = cli("grade")
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr == "course: grade: expected one or more SUBMISSION, got none (see --help)\n", bad.stderr
