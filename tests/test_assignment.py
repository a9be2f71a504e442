"""
The course assignment end to end (assignment.py): make the student version, grade the reference, the untouched
student version and a partly solved one, and the errors a bad marker gives. The expected points are written
out here by hand from the parts table in the README, not read from assignment.PARTS.
"""

import ast
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
def student(tmp_path_factory):
    out = tmp_path_factory.mktemp("made") / "student"
    run = cli("make", out)
    assert run.returncode == 0, run.stderr
    return out, run.stdout


def grades(tmp_path, folder):
    report = tmp_path / "grades.json"
    run = cli("grade", folder, f"--json={report}")
    assert run.returncode == 0, run.stderr
    return json.loads(report.read_text()), run.stdout


def test_make_validates_every_part(student):
    out, stdout = student
    assert stdout.count("blanked alone: its") == 16, stdout
    assert "validated in" in stdout


def test_student_version_blanks_regions_and_keeps_the_rest(student):
    out, _ = student
    assert not (out / ".git").exists(), "the student version must not hold the history (and the solutions)"
    for name in ("tests/test_assignment.py", "tests/make_parts_reference.py"):
        assert not (out / name).exists(), f"{name} is the instructor's"
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


def test_grade_reference_full_and_student_version_zero(student, tmp_path):
    out, _ = student
    ref, printed = grades(tmp_path, ROOT)
    assert ref["total"] == 100 and ref["max"] == 100, printed
    assert all(p["points"] == p["max"] for p in ref["parts"].values()), printed
    assert set(ref["parts"]["attention"]) >= {"file", "points", "max"}
    assert ref["parts"]["denominators"]["file"] == "train.py"
    zero, printed = grades(tmp_path, out)
    assert zero["total"] == 0 and len(zero["parts"]) == 16, printed
    assert zero["changed_tests"] == []
    assert "NotImplementedError" in zero["parts"]["masking"]["failed"]["test_masking_80_10_10"]


def test_grade_one_file_restored_gives_exactly_its_points(student, tmp_path):
    out, _ = student
    mine = tmp_path / "mine"
    shutil.copytree(out, mine)
    shutil.copy(ROOT / "losses.py", mine / "losses.py")  # this file's parts solved
    check = cli("check", "kl", cwd=mine)
    assert check.returncode == 0 and "kl: 2/2 tests pass" in check.stdout, check.stdout + check.stderr
    check = cli("check", "attention", cwd=mine)
    assert check.returncode == 1 and "FAIL test_attention_ignores_padding_keys" in check.stdout, check.stdout
    (mine / "data.py").write_text("def mask_tokens(:\n")  # a file that does not parse costs only its parts
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
    assert got == LOSSES_PARTS, printed
    assert report["total"] == sum(LOSSES_PARTS.values()) == 32, printed
    assert report["changed_tests"] == ["tests/test_parts.py (changed)"], report["changed_tests"]
    assert "syntax error" in report["parts"]["masking"]["failed"]["test_masking_80_10_10"]
    assert (
        "import of transformers halted"
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
        "part mlm: blanked, another part's test test_combine_weights_and_parts fails "
        "too: NotImplementedError"
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

    stored, fresh = load_file(str(ROOT / "sanity/parts_reference.safetensors")), make_parts_reference.build()
    assert set(stored) == set(fresh)
    for k in fresh:
        torch.testing.assert_close(stored[k], fresh[k], atol=1e-6, rtol=1e-6, msg=lambda m: f"{k}: {m}")
    assert (ROOT / "sanity/parts_reference.safetensors").stat().st_size < 500_000


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
