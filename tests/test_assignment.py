"""
The course assignment end to end (assignment.py): make the student version and the grading kit, grade a class
of three submissions with the kit alone (a full one, an untouched one, one that cheats), grade from the
instructor's tree, the hand-out, and the errors a bad marker gives. The expected points are written out here by
hand from the parts table in the instructors' guide, not read from assignment.PARTS.
"""

import ast
import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import assignment

ROOT = Path(__file__).resolve().parents[1]
LOSSES_PARTS = {"kl": 7, "soft_targets": 3, "mlm": 5, "cosine": 4, "combine": 4, "pkd": 9}  # losses.py's


def cli(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "assignment.py", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


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


def test_student_version_blanks_regions_and_keeps_the_rest(student):
    out, _ = student
    assert not (out / ".git").exists(), "the student version must not hold the history (and the solutions)"
    for name in ("tests/test_assignment.py", "tests/make_parts_reference.py", "sanity/parts_grading.safetensors"):
        assert not (out / name).exists(), f"{name} is the instructor's"
    handout = (out / "HANDOUT.md").read_text()
    assert "| kl | losses.py | `kl_per_row` | 7 |" in handout and "python assignment.py check kl" in handout
    readme = (out / "README.md").read_text()
    assert "HANDOUT.md" in readme and not re.search(r"^#+ .*(Course assignments|[Ii]nstructor)", readme, re.M)
    tests = (out / "tests/test_parts.py").read_text()
    assert "\n### BEGIN HIDDEN TESTS" not in tests and "def test_attention_gradients_match_sdpa" not in tests
    assert "def test_attention_equals_softmax_qkt_v" in tests, "the visible tests are kept"
    for path in out.rglob("*.py"):
        assert not re.search(
            r"^\s*### BEGIN SOLUTION: \d", path.read_text(), re.M
        ), f"{path}: a region left in"
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
        "peakd.py": ["ptp_labels"],
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
    table = (out / "assignment.py").read_text()
    assert "test_attention_gradients_match_sdpa" not in table, "the student's parts table names a hidden test"
    assert "test_attention_equals_softmax_qkt_v" in table
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
    assert "5.25 of its 7 points so far; hidden tests at grading: 1" in check.stdout, check.stdout
    check = cli("check", "masking", cwd=mine)  # the broken file: one line per test, no traceback
    assert check.returncode == 1 and "Traceback" not in check.stdout + check.stderr, check.stdout + check.stderr
    assert "FAIL test_masking_80_10_10: ImportError: data.py does not import: SyntaxError" in check.stdout
    solve(mine, "attention", "return (q @ k.transpose(-2, -1) / 2.0).softmax(-1) @ v\n")  # padding not masked
    check = cli("check", "attention", cwd=mine)
    assert check.returncode == 1 and "ok   test_attention_equals_softmax_qkt_v" in check.stdout, check.stdout
    assert re.search(r"FAIL test_attention_ignores_padding_keys: AssertionError: with padding: .* expected "
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
    assert got == {**LOSSES_PARTS, "attention": 1.5}, printed  # attention without the padding: 1 test of 4
    assert report["total"] == sum(LOSSES_PARTS.values()) + 1.5 == 33.5, printed
    assert report["changed_tests"] == ["tests/test_parts.py (changed)"], report["changed_tests"]
    assert "syntax error" in report["parts"]["masking"]["failed"]["test_masking_80_10_10"]
    assert (
        "import of transformers refused"
        in report["parts"]["lr_schedule"]["failed"]["test_lr_schedule_warmup_then_decay"]
    )
    refused = cli("grade", out, cwd=mine)
    assert refused.returncode == 2 and "student version" in refused.stderr


# ------------------------------------------------------------------------------------------------------------
# Bad markers, a bad table, bad input


def copy_sources(tmp_path):
    root = tmp_path / "ref"
    (root / "tests").mkdir(parents=True)
    (root / "sanity").mkdir()
    (root / "machinery").mkdir()
    for path in [*ROOT.glob("*.py"), *ROOT.glob("machinery/*.py")]:
        shutil.copy(path, root / path.relative_to(ROOT))
    for name in ("tests/test_parts.py", "sanity/parts_reference.safetensors"):
        shutil.copy(ROOT / name, root / name)
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
        with pytest.raises(assignment.AssignmentError) as e:
            assignment.check_table(root)
        assert message in str(e.value), f"{case}: {e.value}"
    (root / "model.py").write_text(cases["unterminated"][0])
    run = subprocess.run(
        [sys.executable, str(root / "assignment.py"), "make", tmp_path / "out"],
        capture_output=True,
        text=True,
    )
    assert (
        run.returncode == 2
        and run.stderr.strip() == f"assignment: {cases['unterminated'][1]} (no END " "SOLUTION)"
    ), run.stderr
    assert not (tmp_path / "out").exists(), "nothing is written when the markers are bad"


def test_validation_catches_a_test_that_needs_another_part(tmp_path, monkeypatch):
    root = copy_sources(tmp_path)
    tests = (root / "tests/test_parts.py").read_text()
    tests = tests.replace(
        '    close(total, torch.tensor(5 * 1.5 + 2 * 2.0 + 1 * 0.25), "5 * L_ce + 2 * L_mlm + 1 * L_cos")',
        "    losses.mlm_loss(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))  # needs part mlm",
    )
    (root / "tests/test_parts.py").write_text(tests)
    monkeypatch.setattr(
        assignment, "PARTS", tuple(p for p in assignment.PARTS if p.name in ("mlm", "combine"))
    )
    with pytest.raises(assignment.AssignmentError) as e:
        assignment.validate(root)
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
    assert cli("check", "nope").stderr.startswith("assignment: unknown part 'nope'")


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


# ------------------------------------------------------------------------------------------------------------
# The graded tests catch subtly wrong solutions: (part, file, the reference's text, a wrong version of it)

WRONG = [
    (
        "attention",
        "model.py",
        "    return F.dropout(scores.softmax(dim=-1), dropout_p) @ v",
        "    return scores.softmax(dim=-1) @ v",
    ),
    (
        "attention",
        "model.py",
        "    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))",
        "    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1) * q.size(1))",
    ),
    (
        "heads",
        "model.py",
        "        p = self.cfg.attention_dropout if self.training else 0.0",
        "        p = self.cfg.attention_dropout",
    ),
    (
        "heads",
        "model.py",
        "            y = explicit_attention(q, k, v, real_keys, p)",
        "            y = explicit_attention(k, q, v, None, p)",
    ),
    (
        "layer",
        "model.py",
        "        x = self.ln1(x + self.drop(self.attention(x, real_keys, swap_qk)))",
        "        x = self.ln1(x + self.attention(x, real_keys, swap_qk))",
    ),
    (
        "layer",
        "model.py",
        "        x = self.ln2(x + self.drop(self.feed_forward(x)))",
        "        x = self.drop(self.ln2(x + self.feed_forward(x)))",
    ),
    (
        "embeddings",
        "model.py",
        "        return self.drop(self.ln(x))",
        "        return self.ln(self.drop(x))",
    ),
    (
        "student_init",
        "model.py",
        '        sd["emb.pos.weight"] += t["emb.types.weight"][0]',
        '        sd["emb.pos.weight"] += t["emb.types.weight"][1]',
    ),
    (
        "kl",
        "losses.py",
        "    log_p = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)",
        "    log_p = F.log_softmax(teacher_logits / temperature, dim=-1)",
    ),
    (
        "soft_targets",
        "losses.py",
        "    return reduce_rows(per_row, denom) * temperature**2",
        "    return reduce_rows(per_row, denom)",
    ),
    (
        "mlm",
        "losses.py",
        '    per_row = F.cross_entropy(logits[keep], labels[keep], reduction="none")\n    return reduce_rows(per_row, denom)',
        '    per_row = F.cross_entropy(logits[keep], labels[keep], reduction="none")\n    return per_row.mean()',
    ),
    (
        "cosine",
        "losses.py",
        "    cos = F.cosine_similarity(student_hidden, teacher_hidden.detach(), dim=-1)",
        "    cos = F.cosine_similarity(student_hidden, teacher_hidden, dim=-1)",
    ),
    (
        "combine",
        "losses.py",
        "    total = sum(alphas[name] * value for name, value in losses.items())",
        "    total = sum(alphas[name] * value for name, value in losses.items() if name != 'mse')",
    ),
    (
        "masking",
        "data.py",
        "    eligible = attention_mask.bool() & ~torch.isin(input_ids, special)",
        "    eligible = ~torch.isin(input_ids, special)",
    ),
    ("masking", "data.py", "    candidates = vocab[~torch.isin(vocab, special)]", "    candidates = vocab"),
    (
        "masking",
        "data.py",
        "    randomised = chosen & (action >= mask_frac) & (action < mask_frac + random_frac)",
        "    randomised = chosen & (action >= mask_frac)",
    ),
    (
        "smoothing",
        "data.py",
        "    w = np.maximum(np.asarray(counts, np.float64), 1.0) ** -exponent",
        "    w = (np.asarray(counts, np.float64) + 1.0) ** -exponent",
    ),
    (
        "lr_schedule",
        "machinery/optim.py",
        "        return step / warmup_steps",
        "        return (step + 1) / warmup_steps",
    ),
    (
        "denominators",
        "train.py",
        '    denoms = {"real": n_real / world, "masked": max(n_masked, 1) / world}',
        '    denoms = {"real": n_real, "masked": max(n_masked, 1)}',
    ),
    (
        "denominators",
        "train.py",
        '    denoms["ce"] = denoms["real"] if cfg.ce_positions == "all" else denoms["masked"]',
        '    denoms["ce"] = denoms["real"]',
    ),
    (
        "ptp",
        "peakd.py",
        "    conf, pred = teacher_logits.softmax(-1).max(-1)",
        "    conf, pred = teacher_logits.max(-1)",
    ),
    ("pkd", "losses.py", "F.normalize(teacher_cls.detach(), dim=-1)", "F.normalize(teacher_cls, dim=-1)"),
    (
        "pkd",
        "losses.py",
        "    loss = (1 - alpha) * ce + alpha * kd + beta * pt",
        "    loss = alpha * ce + (1 - alpha) * kd + beta * pt",
    ),
]


def test_subtly_wrong_solutions_fail_their_parts_tests():
    assert len(WRONG) == 23  # the count the README gives
    ref = assignment.graded_files(ROOT)
    jobs = []
    for part, file, right, wrong in WRONG:
        text = ref[file].decode()
        assert text.count(right) == 1, f"{file}: {right!r} is not in the reference once"
        files = {**ref, file: text.replace(right, wrong).encode()}
        names = [p for p in assignment.PARTS if p.name == part][0].tests
        jobs.append(lambda files=files, names=names: assignment.run_tests(files, names))
    every = [t for p in assignment.PARTS for t in p.tests]
    results = assignment.in_parallel([lambda: assignment.run_tests(ref, every)] + jobs)
    assert not any(results[0].values()), f"the reference itself fails: {results[0]}"
    missed = [
        (part, wrong.strip()) for (part, _, _, wrong), res in zip(WRONG, results[1:]) if not any(res.values())
    ]
    crashed = [
        (part, res)
        for (part, *_), res in zip(WRONG, results[1:])
        if any(
            why and why.startswith(("importing the tests failed", "the test process")) for why in res.values()
        )
    ]
    assert not missed, f"wrong solutions that pass every test of their part: {missed}"
    assert not crashed, f"wrong solutions that broke the test process instead of failing a test: {crashed}"


# ------------------------------------------------------------------------------------------------------------
# Cheats: each is the body of a graded function in the student version, and must score 0. Each scored on the
# grader before the kit (checked by hand with it: the points it got there are in the comment).

CHEATS = {
    "kl": (  # the reference tree named by sys.argv[0]: its solution called (old grader: 7 / 7)
        "import pathlib, sys\n"
        "src = (pathlib.Path(sys.argv[0]).resolve().parent / 'losses.py').read_text()\n"
        "ns = {}\n"
        "exec(compile(src, 'reference', 'exec'), ns)\n"
        "return ns['kl_per_row'](student_logits, teacher_logits, temperature)\n"
    ),
    "ptp": (  # the result file forged, then out before the grader writes it (old grader: 6 / 6)
        "import json, os, sys\n"
        "with open(sys.argv[3], 'w') as f:\n"
        "    json.dump({name: None for name in sys.argv[4:]}, f)\n"
        "os._exit(0)\n"
    ),
    "mlm": (  # torch.testing.assert_close made to pass anything (old grader: 3.33 / 5)
        "import torch\n"
        "torch.testing.assert_close = lambda *args, **kwargs: None\n"
        "return torch.tensor(0.5)\n"
    ),
    "lr_schedule": (  # a float equal to everything (old grader: 4 / 4)
        "class Yes(float):\n"
        "    def __eq__(self, other):\n"
        "        return True\n"
        "    __hash__ = float.__hash__\n"
        "return Yes(0.25)\n"
    ),
    "smoothing": (  # transformers let in again: sys.modules.pop, then an honest use of it (old grader: 4 / 4)
        "import sys\n"
        "sys.modules.pop('transformers', None)\n"
        "import transformers  # noqa\n"
        "import numpy as np\n"
        "w = np.maximum(np.asarray(counts, np.float64), 1.0) ** -exponent\n"
        "specials = special_ids.values() if isinstance(special_ids, dict) else special_ids\n"
        "w[[i for i in specials if i < len(w)]] = 0.0\n"
        "return torch.tensor(w, dtype=torch.float32)\n"
    ),
    "heads": (  # the stored tensors returned (old grader: 6 / 8)
        "from safetensors.torch import load_file\n"
        "ref = load_file('sanity/parts_reference.safetensors')\n"
        "return ref['layer.attention_swapped' if swap_qk else 'layer.attention'][: x.shape[0]]\n"
    ),
}


def solve(folder, part, body):
    """In folder, the part's `raise NotImplementedError()` replaced by body (at its indentation)."""
    p = assignment.BY_NAME[part]
    path = folder / p.file
    lines = path.read_text().splitlines()
    first, last = assignment.functions(path.read_text(), p.file)[p.function]
    i = next(i for i in range(first, last + 1) if lines[i].strip() == "raise NotImplementedError()")
    indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
    lines[i : i + 1] = [indent + line for line in body.splitlines()]
    path.write_text("\n".join(lines) + "\n")


def reference_body(part):
    """The reference's solution of a part, as a body for solve."""
    p = assignment.BY_NAME[part]
    text = (ROOT / p.file).read_text()
    first, last = assignment.functions(text, p.file)[p.function]
    lines = text.splitlines()[first : last + 1]
    start = next(i for i, line in enumerate(lines) if "### BEGIN SOLUTION" in line)
    end = next(i for i, line in enumerate(lines) if "### END SOLUTION" in line)
    indent = len(lines[start]) - len(lines[start].lstrip())
    return "\n".join(line[indent:] for line in lines[start + 1 : end]) + "\n"


def test_the_kit_holds_no_solution(made):
    out, kit, _ = made
    for p in assignment.PARTS:  # each graded function in the kit is the student version's, blanked
        ref, mine = defs(out / p.file), defs(kit / "tree" / p.file)
        assert ast.dump(ref[p.function]) == ast.dump(mine[p.function]), f"kit: {p.file} {p.function}"
    for path in kit.rglob("*.py"):
        assert not re.search(r"^\s*### BEGIN SOLUTION: \d", path.read_text(), re.M), f"{path}: a solution"
    tests = (kit / "tree/tests/test_parts.py").read_text()
    assert "def test_attention_gradients_match_sdpa" in tests, "the kit holds the hidden tests"
    data = (kit / "tree/sanity/parts_reference.safetensors").read_bytes()
    grading = (ROOT / "sanity/parts_grading.safetensors").read_bytes()
    assert data == grading, "the kit's tensors are the grading ones"
    assert data != (out / "sanity/parts_reference.safetensors").read_bytes()


@pytest.mark.slow
def test_a_class_graded_with_the_kit_alone(made, tmp_path):
    """Three submissions (all solved, untouched, six cheats and one honest part) graded by the kit's own
    grader, from a folder with no reference in it; then one part regraded with the hidden tests hidden."""
    out, kit, _ = made
    subs = tmp_path / "subs"
    for name in ("full", "blank", "cheater"):
        shutil.copytree(out, subs / name)
    for file in {p.file for p in assignment.PARTS}:
        shutil.copy(ROOT / file, subs / "full" / file)
    for part, body in CHEATS.items():
        solve(subs / "cheater", part, body)
    solve(subs / "cheater", "masking", reference_body("masking"))
    grader = [sys.executable, str(kit / "assignment.py"), "grade", "--kit", str(kit), *sorted(subs.iterdir())]
    run = subprocess.run([*grader, "--csv", "grades.csv", "--jobs", "2"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    rows = {r["id"]: r for r in csv.DictReader((tmp_path / "grades.csv").open())}
    assert sorted(rows) == ["blank", "cheater", "full"], rows
    assert rows["full"]["total"] == "100" and rows["blank"]["total"] == "0", run.stdout
    assert {part: rows["cheater"][part] for part in CHEATS} == {part: "0" for part in CHEATS}, run.stdout
    assert rows["cheater"]["masking"] == "12" and rows["cheater"]["total"] == "12", run.stdout
    assert len({r["sha256"] for r in rows.values()}) == 3 and all(r["graded_at"] for r in rows.values())
    report = json.loads((tmp_path / "reports/cheater.json").read_text())
    flagged = {n.split(":")[0] for n in report["notes"]}
    assert flagged >= set(CHEATS), report["notes"]
    assert "| **total** | | | | **100 / 100** |" in (tmp_path / "reports/full.md").read_text()
    seconds = report["seconds"]  # the wall time per submission, two test processes at a time
    assert seconds < 120, f"{seconds} s per submission"
    one = [*grader[:5], str(subs / "blank"), "--csv", "grades.csv", "--part", "kl", "--hide-hidden"]
    run = subprocess.run(one, cwd=tmp_path, capture_output=True, text=True, timeout=600)  # one part of one
    assert run.returncode == 0, run.stderr
    rows = {r["id"]: r for r in csv.DictReader((tmp_path / "grades.csv").open())}
    assert rows["full"]["total"] == "100" and rows["cheater"]["masking"] == "12", "the regrade kept the rest"
    assert rows["blank"]["total"] == "0" and rows["blank"]["masking"] == "0", rows["blank"]
    blank = (tmp_path / "reports/blank.md").read_text()
    assert "`test_kl_by_hand`: NotImplementedError" in blank and "a hidden test failed" in blank, blank
    assert "test_kl_zero_probabilities_and_teacher_detached" not in blank + run.stdout, "a hidden test named"


def test_only_tracked_files_are_handed_out(tmp_path):
    git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / "model.py").write_text("x = 1\n")
    (tmp_path / "notes.md").write_text("the instructor's notes\n")
    git("add", "model.py")
    assert assignment.project_files(tmp_path) == ["model.py"], "an untracked file would be handed out"
    with pytest.raises(assignment.AssignmentError, match="not a git checkout"):
        assignment.project_files(tmp_path / "..")


def test_lean_leaves_out_the_near_solutions():
    full, lean = assignment.student_version(ROOT), assignment.student_version(ROOT, lean=True)
    lean_out = ("notebooks/01_bert_and_student.ipynb", "tests/test_peakd.py", "tests/test_losses.py", "bench.py")
    for name in lean_out:
        assert name in full and name not in lean, name
    body = ast.get_source_segment(lean["peakd.py"].decode(), defs_of(lean["peakd.py"])["make_student"])
    assert "load_state_dict" not in body and 'raise NotImplementedError("left out' in body, body
    assert "load_state_dict" in ast.get_source_segment(full["peakd.py"].decode(),
                                                       defs_of(full["peakd.py"])["make_student"])
    assert json.loads(lean["assignment.json"])["lean"] is True


def defs_of(data):
    return {n.name: n for n in ast.walk(ast.parse(data.decode())) if isinstance(n, ast.FunctionDef)}


def test_each_command_has_its_own_help():
    make, grade = cli("make", "--help"), cli("grade", "--help")
    assert make.returncode == 0 and "--kit" in make.stdout and "--lean" in make.stdout, make.stdout
    assert "--hide-hidden" not in make.stdout and "--hide-hidden" in grade.stdout and "--jobs" in grade.stdout
    bad = cli("grade")
    assert bad.returncode == 2 and "the following arguments are required: SUBMISSION" in bad.stderr


def test_the_test_process_is_fenced(tmp_path):
    """What a graded function could do to the machine is refused in the test process: each of these tests
    must fail with PermissionError, and the file outside the tree stays as it was."""
    outside = tmp_path / "kept.txt"
    outside.write_text("mine")
    tests = f'''
import os, pathlib, sys
OUTSIDE = {str(outside)!r}
def test_read():
    open(OUTSIDE).read()
def test_write():
    open(OUTSIDE, "w").write("gone")
def test_remove():
    os.remove(OUTSIDE)
def test_kill():
    os.kill(os.getppid(), 9)
def test_process():
    import subprocess
    subprocess.run(["true"])
def test_socket():
    import socket
    socket.create_connection(("127.0.0.1", 9))
def test_ctypes():
    import ctypes
    ctypes.CDLL(None).getpid()
def test_the_tree_is_fine():
    pathlib.Path("scratch.txt").write_text("ok")
    assert open("scratch.txt").read() == "ok"
'''
    names = re.findall(r"def (test_\w+)", tests)
    res = assignment.run_tests({"tests/test_parts.py": tests.encode()}, names)
    assert res.pop("test_the_tree_is_fine") is None
    assert all(why.startswith("PermissionError") for why in res.values()), res
    assert outside.read_text() == "mine"
