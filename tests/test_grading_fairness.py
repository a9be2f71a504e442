"""
A correct solution gets its points whatever its style, and a real mistake loses points (tests/course_cases.py:
the bodies, written from the docstrings). Each body is graded as `grade` grades a part: alone in the kit's tree,
its tests here, its code in a contained worker. The expected points are the parts table's, written out here.
"""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from course.kit import kit_from
from course.parts import BY_NAME, PARTS
from course.runner import Suite, in_parallel, run_tests
import course_cases as cases

ROOT = Path(__file__).resolve().parents[1]
POINTS = {"attention": 6, "heads": 8, "layer": 5, "embeddings": 5, "student_init": 8, "kl": 7, "soft_targets": 3,
          "mlm": 5, "cosine": 4, "combine": 4, "masking": 12, "smoothing": 4, "lr_schedule": 4, "denominators": 10,
          "ptp": 6, "pkd": 9}


@pytest.fixture(scope="module")
def kit():
    parts, base, _ = kit_from(ROOT)
    suite = Suite(base)
    yield base, suite
    suite.close()


def points(kit, jobs):
    """[(points, {test: why}) for each (part, body)], graded two at a time."""
    base, suite = kit
    run = lambda part, body: run_tests(cases.solved(base, part, body), BY_NAME[part].names,
                                                  suite=suite)
    results = in_parallel([lambda p=p, b=b: run(p, b) for p, b in jobs])
    return [(sum(w for t, w in BY_NAME[p].tests if res[t] is None), res)
            for (p, _), res in zip(jobs, results)]


def test_the_table_is_the_one_written_here():
    assert {p.name: p.points for p in PARTS} == POINTS


def test_every_correct_variant_gets_every_point(kit):
    jobs = [(part, body) for part, bodies in cases.VARIANTS.items() for body in bodies]
    assert len(jobs) >= 35 and set(cases.VARIANTS) == set(POINTS)
    lost = [(part, i, got, {t: why for t, why in res.items() if why})
            for (part, _), (got, res), i in zip(jobs, points(kit, jobs), range(len(jobs))) if got != POINTS[part]]
    assert not lost, f"correct variants that lost points: {lost}"


def test_every_real_mistake_loses_points(kit):
    results = points(kit, [(bug[0], cases.bug_body(bug)) for bug in cases.BUGS])
    missed = [(part, what) for (part, what, *_), (got, _) in zip(cases.BUGS, results) if got >= POINTS[part]]
    assert not missed, f"real mistakes that kept every point: {missed}"
    crashed = [(part, what, res) for (part, what, *_), (_, res) in zip(cases.BUGS, results)
               if any(why and why.startswith(("importing the", "the test process", "no test process"))
                      for why in res.values())]
    assert not crashed, f"mistakes that broke the test process instead of failing a test: {crashed}"
    got = {what: p for (_, what, *_), (p, _) in zip(cases.BUGS, results)}
    # what a part is about costs most of it
    assert got["80/10/10 swapped: 10% [MASK], 80% random ids"] <= 12 / 2 - 2, got
    assert got["T^2 forgotten"] == 0, got
    assert got["explicit_attention just calls F.scaled_dot_product_attention"] == 0, got
    assert got["off by one: teacher layers 1, 3, 5 whatever `layers` says"] <= 8 / 2, got


@pytest.mark.slow
def test_ten_correct_submissions_score_100_with_the_kit(tmp_path):
    """Ten whole submissions, each part in a style of VARIANTS (no two submissions alike), graded by the kit's
    own grader into a gradebook: each 100."""
    out, kit = tmp_path / "student", tmp_path / "kit"
    run = subprocess.run([sys.executable, "-m", "course", "make", out, "--kit", kit, "--validate=false"], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    subs = tmp_path / "subs"
    chosen = []
    for k in range(10):
        folder = subs / f"student{k}"
        shutil.copytree(out, folder, symlinks=True)
        bodies = cases.variant_submission(k)
        chosen.append(tuple(bodies.values()))
        for part, body in bodies.items():
            cases.solve(folder, part, body)
    assert len(set(chosen)) == 10
    run = subprocess.run([sys.executable, str(kit / "grade.py"),
                          *sorted(map(str, subs.iterdir())), "--csv", "grades.csv"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    rows = {r["id"]: r for r in csv.DictReader((tmp_path / "grades.csv").open())}
    assert {i: r["total"] for i, r in rows.items()} == {f"student{k}": "100" for k in range(10)}, run.stdout
    report = json.loads((tmp_path / "reports/student3.json").read_text())
    assert report["seconds"] < 30, f"{report['seconds']} s per submission"
