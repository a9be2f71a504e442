"""
Course assignments from this project's own files, in the style of nbgrader: the instructor's copy is the
reference, with each graded function's solution between `### BEGIN SOLUTION: N lines` and `### END SOLUTION`.

    python assignment.py parts                  the parts table: name, file, function, points, tests
    python assignment.py make OUT               writes the student version to OUT (a new folder), validated
    python assignment.py grade DIR [--json=F]   grades a student's tree part by part, in isolation
    python assignment.py check PART             a student runs one part's tests (or `all`) in their own tree

make: each region becomes its comment lines (the steps), `# YOUR CODE HERE` and `raise NotImplementedError()`;
the hidden tests (`### BEGIN HIDDEN TESTS` / `### END HIDDEN TESTS` in tests/test_parts.py) are left out; no
.git.
grade: for each part, the student's function alone is put into a copy of the reference and that part's tests
(hidden ones included) are run there, so one missing part costs only its own points. The tests are the
reference's: test files the student changed are reported and not used. Every test run blocks `transformers`,
so a solution cannot call it. The graded tests are in tests/test_parts.py; the parts table is PARTS below.
"""
import ast
import concurrent.futures
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TESTS = "tests/test_parts.py"
REFERENCE_DATA = "sanity/parts_reference.safetensors"
INSTRUCTOR_ONLY = ("tests/test_assignment.py", "tests/make_parts_reference.py")  # not in the student version
MANIFEST = "assignment.json"  # written into the student version
BEGIN = re.compile(r"^(\s*)### BEGIN SOLUTION: (\d+) lines?\s*$")
END = re.compile(r"^\s*### END SOLUTION\s*$")
BEGIN_HIDDEN = re.compile(r"^### BEGIN HIDDEN TESTS\s*$")
END_HIDDEN = re.compile(r"^### END HIDDEN TESTS\s*$")
ANY_MARKER = re.compile(r"^\s*### (BEGIN|END) (SOLUTION|HIDDEN TESTS)")


@dataclasses.dataclass(frozen=True)
class Part:
    name: str
    file: str
    function: str     # Class.method or function
    points: int
    tests: tuple      # test functions in tests/test_parts.py; each is worth points / len(tests)
    what: str


PARTS = (
    Part("attention", "model.py", "explicit_attention", 6,
         ("test_attention_equals_softmax_qkt_v", "test_attention_ignores_padding_keys",
          "test_attention_gradients_match_sdpa", "test_attention_dropout_on_the_weights"),
         "softmax(QK^T / sqrt(d)) V with padding masked"),
    Part("heads", "model.py", "Layer.attention", 8,
         ("test_heads_match_transformers", "test_heads_swap_exchanges_query_and_key",
          "test_heads_without_padding_mask", "test_heads_explicit_path_and_no_dropout_in_eval"),
         "split into heads and merge; SPS's Q/K swap"),
    Part("layer", "model.py", "Layer.forward", 5,
         ("test_layer_matches_transformers", "test_layer_passes_swap_to_attention",
          "test_layer_dropout_on_each_sublayer_output"), "post-LayerNorm residual blocks"),
    Part("embeddings", "model.py", "Embeddings.forward", 5,
         ("test_embeddings_match_transformers", "test_embeddings_of_a_student_have_no_token_types",
          "test_embeddings_shorter_batch_and_dropout_after_layernorm"),
         "word + position (+ type) embeddings"),
    Part("student_init", "model.py", "student_from_teacher", 8,
         ("test_student_init_copies_chosen_layers", "test_student_init_folds_type_zero_into_positions",
          "test_student_init_default_is_one_layer_of_two_and_copies"), "the student from one layer of two"),
    Part("kl", "losses.py", "kl_per_row", 7,
         ("test_kl_equals_kl_div_at_temperature", "test_kl_by_hand",
          "test_kl_zero_probabilities_and_teacher_detached"), "KL(teacher || student) at temperature T"),
    Part("soft_targets", "losses.py", "soft_target_loss", 3,
         ("test_soft_targets_mean_times_t_squared", "test_soft_targets_sum_over_denom",
          "test_soft_targets_matches_kldivloss_batchmean"), "L_ce: the KL reduced, times T^2"),
    Part("mlm", "losses.py", "mlm_loss", 5,
         ("test_mlm_ignores_unmasked_rows", "test_mlm_flattens_batch_dims",
          "test_mlm_with_nothing_masked_is_zero_with_a_graph"), "L_mlm: cross-entropy at masked positions"),
    Part("cosine", "losses.py", "cosine_loss", 4,
         ("test_cosine_equals_cosine_embedding_loss", "test_cosine_ignores_norm_and_detaches_teacher"),
         "L_cos: 1 - cos(h_s, h_t)"),
    Part("combine", "losses.py", "combine", 4,
         ("test_combine_weights_and_parts", "test_combine_missing_parts_left_out"),
         "alpha_ce L_ce + alpha_mlm L_mlm + alpha_cos L_cos"),
    Part("masking", "data.py", "mask_tokens", 12,
         ("test_masking_chooses_15_percent_of_real_tokens", "test_masking_80_10_10",
          "test_masking_smoothed_picks_exactly_ceil_by_weight",
          "test_masking_reproducible_and_input_untouched",
          "test_masking_random_ids_mask_and_padding"),
         "dynamic masking, 80/10/10, smoothed by weight"),
    Part("smoothing", "data.py", "smoothing_weights", 4,
         ("test_smoothing_weights_by_hand", "test_smoothing_unseen_ids_and_dict_specials"),
         "masking weights count^-0.7"),
    Part("lr_schedule", "machinery/optim.py", "linear_schedule", 4,
         ("test_lr_schedule_warmup_then_decay", "test_lr_schedule_no_warmup_and_past_the_end"),
         "linear warm-up, linear decay"),
    Part("denominators", "train.py", "forward_backward", 10,
         ("test_denominators_give_the_gradient_of_one_big_batch", "test_denominators_ce_on_masked_positions",
          "test_denominators_over_two_ranks"),
         "gradient accumulation: the step's token counts"),
    Part("ptp", "peakd.py", "ptp_labels", 6,
         ("test_ptp_labels_four_classes", "test_ptp_labels_three_classes_from_logits"),
         "Pea-KD's PTP labels: right/wrong x confident/unsure"),
    Part("pkd", "losses.py", "pkd_loss", 9,
         ("test_pkd_loss_equals_eq_7", "test_pkd_loss_without_layers_has_no_patient_term",
          "test_pkd_loss_teacher_states_detached"),
         "the Patient-KD loss (Sun et al., Eq. 7)"),
)
BY_NAME = {p.name: p for p in PARTS}


class AssignmentError(ValueError):
    """Bad markers, a bad parts table or bad input: one line naming the file, line or value at fault."""


# ------------------------------------------------------------------------------------------------------------
# Markers: where the regions are, and the student version of a file

def regions(text, path, begin=BEGIN, end=END, what="SOLUTION"):
    """[(first, last)] 0-based line numbers of the marker lines of each region, checked: no region inside
    another, none left open, no END without a BEGIN, and a BEGIN SOLUTION's `N lines` equal to its code lines.
    """
    found, start, lines = [], None, text.splitlines()
    for i, line in enumerate(lines):
        if begin.match(line):
            if start is not None:
                raise AssignmentError(f"{path}:{i + 1}: BEGIN {what} inside the region opened at line "
                                      f"{start + 1}")
            start = i
        elif end.match(line):
            if start is None:
                raise AssignmentError(f"{path}:{i + 1}: END {what} without a BEGIN {what}")
            found.append((start, i))
            start = None
        elif ANY_MARKER.match(line) and what in line:
            raise AssignmentError(f"{path}:{i + 1}: a malformed marker {line.strip()!r}")
    if start is not None:
        raise AssignmentError(f"{path}:{start + 1}: BEGIN {what} is never closed (no END {what})")
    if what == "SOLUTION":
        for first, last in found:
            said, real = int(begin.match(lines[first]).group(2)), len(code_lines(lines[first + 1:last]))
            if said != real:
                raise AssignmentError(f"{path}:{first + 1}: the marker says {said} lines, the region has "
                                      f"{real} lines of code")
    return found


def code_lines(lines):
    return [ln for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def functions(text, path):
    """{qualified name: (first, last)} 0-based lines of every function (decorators included), methods as
    Class.method."""
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as e:
        raise AssignmentError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
    spans, lines = {}, text.splitlines()

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    first = min([child.lineno] + [d.lineno for d in child.decorator_list]) - 1
                    last = child.end_lineno
                    # comment lines indented under the def (an END SOLUTION marker) belong to it too
                    while last < len(lines) and lines[last].strip().startswith("#") and \
                            len(lines[last]) - len(lines[last].lstrip()) > child.col_offset:
                        last += 1
                    spans[name] = (first, last - 1)
                visit(child, name + ".")
    visit(tree, "")
    return spans


def owner(span, spans):
    """The innermost function holding the lines of span, or None."""
    inside = [(b - a, name) for name, (a, b) in spans.items() if a < span[0] and span[1] <= b]
    return min(inside)[1] if inside else None


def check_file(root, file, parts):
    """The file's regions, each the one region of one of `parts`' functions: {function: (first, last)}."""
    text = (root / file).read_text()
    spans, found = functions(text, file), {}
    for span in regions(text, file):
        name = owner(span, spans)
        if name is None:
            raise AssignmentError(f"{file}:{span[0] + 1}: a solution region outside any function")
        if name not in {p.function for p in parts}:
            raise AssignmentError(f"{file}:{span[0] + 1}: a solution region in {name}, which is not in the "
                                  f"parts table (assignment.PARTS)")
        if name in found:
            raise AssignmentError(f"{file}:{span[0] + 1}: a second solution region in {name} (one per part)")
        found[name] = span
    for p in parts:
        if p.function not in spans:
            raise AssignmentError(f"{file}: no function {p.function} (part {p.name!r} of assignment.PARTS)")
        if p.function not in found:
            raise AssignmentError(f"{file}: {p.function} has no ### BEGIN SOLUTION region (part {p.name!r})")
    return found


def blank(text, file, only=None):
    """The student version of a source file: each region (of the functions in `only`, default all) replaced by
    its comment lines, `# YOUR CODE HERE` and `raise NotImplementedError()`, at the region's indentation."""
    lines, spans = text.splitlines(), functions(text, file)
    for first, last in reversed(regions(text, file)):
        if only is not None and owner((first, last), spans) not in only:
            continue
        indent, n = BEGIN.match(lines[first]).group(1), BEGIN.match(lines[first]).group(2)
        steps = [ln for ln in lines[first + 1:last] if ln.strip().startswith("#")]
        lines[first:last + 1] = steps + [f"{indent}# YOUR CODE HERE (the reference: {n} lines)",
                                         f"{indent}raise NotImplementedError()"]
    return "\n".join(lines) + "\n"


def without_hidden_tests(text, file):
    lines = text.splitlines()
    for first, last in reversed(regions(text, file, BEGIN_HIDDEN, END_HIDDEN, "HIDDEN TESTS")):
        del lines[first:last + 1]
    return re.sub(r"\n{4,}", "\n\n\n", "\n".join(lines) + "\n")


def check_table(root=ROOT):
    """Every part's function has one region, every region is a part's, every graded test is in exactly one
    part, and the points add up to 100. Returns {file: {function: span}}."""
    names = [p.name for p in PARTS]
    if len(set(names)) != len(names):
        raise AssignmentError("assignment.PARTS: two parts with the same name")
    if sum(p.points for p in PARTS) != 100:
        raise AssignmentError(f"assignment.PARTS: the points add up to {sum(p.points for p in PARTS)}, "
                              f"not 100")
    sources = sorted({p.file for p in PARTS} | {f.name for f in root.glob("*.py")})
    table = {f: check_file(root, f, [p for p in PARTS if p.file == f]) for f in sources}
    tests_text = (root / TESTS).read_text()
    regions(tests_text, TESTS, BEGIN_HIDDEN, END_HIDDEN, "HIDDEN TESTS")
    defined = {n for n in functions(tests_text, TESTS) if n.startswith("test_") and "." not in n}
    listed = [t for p in PARTS for t in p.tests]
    for t in listed:
        if t not in defined:
            raise AssignmentError(f"{TESTS}: no test {t} (listed in assignment.PARTS)")
    if len(set(listed)) != len(listed):
        raise AssignmentError("assignment.PARTS: a test is listed in two parts")
    if defined - set(listed):
        raise AssignmentError(f"{TESTS}: {sorted(defined - set(listed))[0]} belongs to no part of "
                              f"assignment.PARTS")
    return table


def visible_tests(root=ROOT):
    text = without_hidden_tests((root / TESTS).read_text(), TESTS)
    return {n for n in functions(text, TESTS) if n.startswith("test_") and "." not in n}


# ------------------------------------------------------------------------------------------------------------
# The project's files and the student version

def project_files(root):
    """The project's files, relative to root: git's (tracked, and untracked but not ignored) where root is a
    checkout, else every file outside .git, caches, virtual environments and out/."""
    if (root / ".git").exists():
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard"], capture_output=True, check=True).stdout
        names = sorted({n for n in listed.decode().split("\0") if n and (root / n).is_file()})
    else:
        skip = {".git", "__pycache__", ".venv", "venv", "out", ".pytest_cache", ".ipynb_checkpoints"}
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                       if p.is_file() and not skip & set(p.relative_to(root).parts))
    return names


def student_version(root=ROOT) -> dict:
    """{relative path: bytes} of the student version."""
    table = check_table(root)
    out = {}
    for name in project_files(root):
        if name in INSTRUCTOR_ONLY or name == MANIFEST:
            continue
        data = (root / name).read_bytes()
        if name in table and table[name]:
            data = blank(data.decode(), name).encode()
        elif name == TESTS:
            data = without_hidden_tests(data.decode(), name).encode()
        elif name == "assignment.py":
            data = visible_table(data.decode(), visible_tests(root)).encode()
        out[name] = data
    out[MANIFEST] = (json.dumps({
        "format": "distilbert-from-scratch/assignment", "version": 1,
        "parts": {p.name: {"file": p.file, "function": p.function, "points": p.points} for p in PARTS},
        "top_level": {f: top_level(out[f].decode()) for f in sorted({p.file for p in PARTS})},
    }, indent=2) + "\n").encode()
    return out


def visible_table(text, visible):
    """This file with the parts table listing only the visible tests: the hidden ones' names say what they
    check."""
    rows = []
    for p in PARTS:
        tests = tuple(t for t in p.tests if t in visible)
        rows.append(f"    Part({p.name!r}, {p.file!r}, {p.function!r}, {p.points},\n         {tests!r},\n"
                    f"         {p.what!r}),\n")
    start, end = text.index("PARTS = (\n") + len("PARTS = (\n"), text.index(")\nBY_NAME = ")
    return text[:start] + "".join(rows) + text[end:]


def top_level(text):
    """The names a module defines at its top level (imports, functions, classes, assignments)."""
    names = set()
    for node in ast.parse(text).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return sorted(names)


# ------------------------------------------------------------------------------------------------------------
# Running a part's tests: in a subprocess, in a tree, with transformers blocked

def graded_files(root=ROOT) -> dict:
    """{name: bytes} of what the graded tests need from a tree: the modules (top level and machinery/), the
    tests and their data."""
    return {n: (root / n).read_bytes() for n in project_files(root)
            if n.endswith(".py") and ("/" not in n or n.startswith("machinery/")) or n in (TESTS, REFERENCE_DATA)}


def tree(files: dict, into: Path) -> Path:
    for name, data in files.items():
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        (into / name).write_bytes(data)
    return into


PER_TEST = 5  # seconds a graded test may take (the reference's take well under 1 s)


def run_tests(files: dict, names, timeout=None) -> dict:
    """{test: None (passed) or the error in one line} for tests of tests/test_parts.py run in a fresh process
    in a temporary tree of `files`."""
    timeout = timeout or 30 + PER_TEST * len(names)
    with tempfile.TemporaryDirectory(prefix="assignment-") as tmp:
        where = tree(files, Path(tmp))
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "_run", str(where), str(result), *names]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {n: f"no result within {timeout} s" for n in names}
        if not result.exists():
            why = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            return {n: f"the test process failed: {why}" for n in names}
        return json.loads(result.read_text())


def _run(where, result, names, per_test=PER_TEST):
    """The test process: import the tree's tests/test_parts.py (transformers blocked) and call each test."""
    sys.modules["transformers"] = None  # `import transformers` now raises ImportError
    sys.path.insert(0, where)
    os.chdir(where)
    out = {}
    try:
        import importlib.util

        import torch
        torch.set_num_threads(1)
        spec = importlib.util.spec_from_file_location("test_parts", Path(where) / TESTS)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except BaseException as e:  # the tree does not even import: every test fails with the reason
        out = {n: f"importing the tests failed: {one_line(e)}" for n in names}
        Path(result).write_text(json.dumps(out))
        return
    def too_long(signum, frame):
        raise TimeoutError(f"over {per_test} s")
    signal.signal(signal.SIGALRM, too_long)
    for n in names:
        test = getattr(module, n, None)
        if test is None:
            out[n] = "not in tests/test_parts.py"
            continue
        signal.alarm(per_test)
        try:
            test()
            out[n] = None
        except BaseException as e:
            out[n] = one_line(e)
        finally:
            signal.alarm(0)
    Path(result).write_text(json.dumps(out))


def one_line(e):  # not files.one_line: the test process imports none of the tree's modules before its tests
    text = " ".join(str(e).split())[:300]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def in_parallel(jobs, workers=2):
    """[f() for f in jobs], two at a time (the machines have two cores)."""
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda f: f(), jobs))


# ------------------------------------------------------------------------------------------------------------
# make

def validate(root=ROOT):
    """The reference passes every graded test; each part blanked alone fails all of its own tests and none of
    the others'. Returns lines to print; raises AssignmentError on the first part that breaks this."""
    ref = graded_files(root)
    every = [t for p in PARTS for t in p.tests]

    def blanked(part):
        files = dict(ref)
        files[part.file] = blank(ref[part.file].decode(), part.file, only={part.function}).encode()
        return files

    jobs = [lambda: run_tests(ref, every)] + [lambda p=p: run_tests(blanked(p), every) for p in PARTS]
    start = time.time()
    results = in_parallel(jobs)
    failed = [t for t, why in results[0].items() if why]
    if failed:
        raise AssignmentError(f"the reference fails {failed[0]}: {results[0][failed[0]]}")
    lines = []
    for part, res in zip(PARTS, results[1:]):
        passing_own = [t for t in part.tests if res[t] is None]
        others = [t for t in every if t not in part.tests and res[t] is not None]
        if passing_own:
            raise AssignmentError(f"part {part.name}: blanked, its test {passing_own[0]} still passes")
        if others:
            raise AssignmentError(f"part {part.name}: blanked, another part's test {others[0]} fails too: "
                                  f"{res[others[0]]}")
        lines.append(f"  {part.name:<14} blanked alone: its {len(part.tests)} tests fail, the other "
                     f"{len(every) - len(part.tests)} pass")
    lines.append(f"validated in {time.time() - start:.0f} s")
    return lines


def make(out, root=ROOT, check=True):
    out = Path(out)
    if out.exists():
        raise AssignmentError(f"{out}: already exists; make writes a new folder and never overwrites one")
    if not out.resolve().parent.is_dir():
        raise AssignmentError(f"{out.parent}: no such folder to make {out.name} in")
    files = student_version(root)
    report = validate(root) if check else ["not validated (--validate=false)"]

    def write(tmp):
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
            if os.access(root / name, os.X_OK) and (root / name).is_file():
                os.chmod(tmp / name, 0o755)
    from machinery.files import write_atomic
    write_atomic(out, write, folder=True)
    print(f"{out}: the student version, {len(files)} files, {len(PARTS)} parts, "
          f"{sum(p.points for p in PARTS)} points")
    print("\n".join(report))


# ------------------------------------------------------------------------------------------------------------
# grade

def student_function(dir, part):
    """The lines of part.function in the student's file, or the reason there are none."""
    path = Path(dir) / part.file
    if not path.is_file():
        return None, f"{part.file} is missing"
    text = path.read_text(errors="replace")
    try:
        spans = functions(text, part.file)
    except AssignmentError as e:
        return None, str(e)
    if part.function not in spans:
        return None, f"{part.file} has no function {part.function}"
    first, last = spans[part.function]
    return text.splitlines()[first:last + 1], None


def combined(ref, part, lines):
    """The reference's files with part.function replaced by the student's lines."""
    text = ref[part.file].decode()
    first, last = functions(text, part.file)[part.function]
    new = text.splitlines()
    new[first:last + 1] = lines
    return {**ref, part.file: ("\n".join(new) + "\n").encode()}


def changed_tests(dir, expected, root=ROOT):
    """Test files of the student version (`expected`) that DIR holds changed or lacks (one equal to the
    reference's is not changed). They are not used in grading."""
    changed = []
    for name, data in sorted(expected.items()):
        if not name.startswith("tests/"):
            continue
        path = Path(dir) / name
        if not path.is_file():
            changed.append(f"{name} (missing)")
        elif path.read_bytes() not in (data, (root / name).read_bytes()):
            changed.append(f"{name} (changed)")
    return changed


def grade(dir, root=ROOT):
    dir = Path(dir)
    if not dir.is_dir():
        raise AssignmentError(f"{dir}: not a folder")
    if (root / MANIFEST).exists():
        raise AssignmentError(f"{root}: this is a student version; grade from the instructor's copy")
    expected = student_version(root)  # checks the markers and the table too
    ref, start = graded_files(root), time.time()

    def one(part):
        lines, why = student_function(dir, part)
        if lines is None:
            return {t: why for t in part.tests}
        try:
            files = combined(ref, part, lines)
            functions(files[part.file].decode(), part.file)
        except AssignmentError as e:
            return {t: str(e) for t in part.tests}
        return run_tests(files, part.tests)

    results = in_parallel([lambda p=p: one(p) for p in PARTS])
    parts = {}
    for part, res in zip(PARTS, results):
        passed = sum(res[t] is None for t in part.tests)
        parts[part.name] = {"file": part.file, "function": part.function,
                            "points": round(part.points * passed / len(part.tests), 2), "max": part.points,
                            "passed": passed, "tests": len(part.tests),
                            "failed": {t: why for t, why in res.items() if why}}
    total = round(sum(p["points"] for p in parts.values()), 2)
    return {"parts": parts, "total": total, "max": sum(p.points for p in PARTS),
            "changed_tests": changed_tests(dir, expected, root), "seconds": round(time.time() - start, 1)}


def print_grades(report):
    print(f"{'part':<14}{'file':<11}{'function':<22}{'tests':>7}{'points':>12}")
    for name, p in report["parts"].items():
        print(f"{name:<14}{p['file']:<11}{p['function']:<22}{p['passed']:>4}/{p['tests']:<2}"
              f"{p['points']:>8g} / {p['max']}")
        for t, why in p["failed"].items():
            print(f"    {t}: {why[:150]}")
    print(f"{'total':<54}{report['total']:>8g} / {report['max']}")
    for name in report["changed_tests"]:
        print(f"note: {name}: the reference's tests were used")
    print(f"graded in {report['seconds']} s")


# ------------------------------------------------------------------------------------------------------------
# check and parts

def check(name, root=ROOT):
    """Run the visible tests of one part (or all) in this tree; returns the number of failures."""
    names = list(BY_NAME) if name == "all" else [name]
    if any(n not in BY_NAME for n in names):
        raise AssignmentError(f"unknown part {name!r}: choose from {', '.join(BY_NAME)} or all")
    visible = visible_tests(root)
    tests = [t for n in names for t in BY_NAME[n].tests if t in visible]
    res = run_tests(graded_files(root), tests)
    outside_the_functions(root, {BY_NAME[n].file for n in names})
    for n in names:
        part = BY_NAME[n]
        mine = [t for t in part.tests if t in visible]
        ok = sum(res[t] is None for t in mine)
        print(f"{n}: {ok}/{len(mine)} tests pass ({part.file}, {part.function})")
        for t in mine:
            print(f"  {'ok  ' if res[t] is None else 'FAIL'} {t}" + (f": {res[t]}" if res[t] else ""))
    return sum(why is not None for why in res.values())


def outside_the_functions(root, files):
    """In a student version: say which names a student added at the top level of a graded file. Grading takes
    each graded function alone, so an import or a helper placed outside it is missing there."""
    if not (root / MANIFEST).is_file():
        return
    recorded = json.loads((root / MANIFEST).read_text()).get("top_level", {})
    for file in sorted(files):
        try:
            added = sorted(set(top_level((root / file).read_text())) - set(recorded.get(file, [])))
        except (OSError, SyntaxError):
            continue
        if added:
            print(f"note: {file} defines {', '.join(added)} outside the graded functions; grading takes each "
                  f"graded function alone, so put imports and helpers inside the function")


def print_parts():
    print(f"{'part':<14}{'file':<11}{'function':<22}{'points':>6}  what (tests)")
    for p in PARTS:
        print(f"{p.name:<14}{p.file:<11}{p.function:<22}{p.points:>6}  {p.what} ({len(p.tests)})")
    print(f"{'total':<47}{sum(p.points for p in PARTS):>6}")


@dataclasses.dataclass
class Options:
    json: str = ""         # grade: also write the report to this JSON file
    validate: bool = True  # make: check that each part blanked alone fails only its own tests


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_run"] and len(argv) >= 3:  # the test process: nothing of a tree imported before it
        return _run(argv[1], argv[2], argv[3:])
    from machinery.config import \
        parse_config  # here, not at the top: the test process must not import the machinery
    usage = "usage: python assignment.py parts | make OUT | grade DIR [--json=FILE] | check PART"
    command, operands = (argv[:1] or ["help"])[0], []
    while len(argv) > 1 + len(operands) and not argv[1 + len(operands)].startswith("--"):
        operands.append(argv[1 + len(operands)])
    try:
        if command in ("-h", "--help", "help"):
            print(__doc__.strip())
            return 0
        if argv[-1] == "--json":
            raise AssignmentError("--json needs a file: --json=FILE")
        opts = parse_config(argv[1 + len(operands):], Options, doc=__doc__)
        if opts.json and command != "grade" or not opts.validate and command != "make":
            raise AssignmentError(f"--json is for grade, --validate for make ({usage})")
        if command == "parts" and not operands:
            print_parts()
        elif command == "make" and len(operands) == 1:
            make(operands[0], check=opts.validate)
        elif command == "grade" and len(operands) == 1:
            report = grade(operands[0])
            print_grades(report)
            if opts.json:
                from machinery.files import write_json
                write_json(report, opts.json)
        elif command == "check" and len(operands) == 1:
            return 1 if check(operands[0]) else 0
        else:
            raise AssignmentError(usage)
    except (AssignmentError, ValueError) as e:
        print(f"assignment: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
