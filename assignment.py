"""
Course assignments from this project's own files, in the style of nbgrader: the instructor's copy is the
reference, with each graded function's solution between `### BEGIN SOLUTION: N lines` and `### END SOLUTION`.

    python assignment.py parts                          the parts table: name, file, function, points, tests
    python assignment.py make OUT [--kit KIT] [--lean]  the student version (a new folder), validated; KIT: the
                                                        grading kit (tests, hidden ones too, data, this grader)
    python assignment.py grade [--kit KIT] SUB... [--csv F] [--jobs N] [--part NAME] [--hide-hidden]
                                                        grades submissions part by part, in isolation
    python assignment.py check PART                     a student runs one part's visible tests (or `all`)

`python assignment.py COMMAND --help` says more. The instructors' guide is docs/instructors.md.
make: each region becomes its comment lines (the steps), `# YOUR CODE HERE` and `raise NotImplementedError()`;
the hidden tests (`### BEGIN HIDDEN TESTS` / `### END HIDDEN TESTS` in tests/test_parts.py) are left out, and
only files git tracks are copied. The kit holds no solution: its tree is the student version with the hidden
tests and other stored tensors (sanity/parts_grading.safetensors), so `grade --kit` needs no reference tree.
grade: each of the student's functions alone goes into a fresh copy of the kit's tree (every other part
blanked) and that part's tests run there in a new process, so one missing part costs only its own points. The
process reports through its stdout with a token it reads from its stdin, imports of transformers are refused
by an audit hook, and so are opening files outside that tree and Python's folders and starting processes.
This is not a sandbox: read what you grade (the report names functions that use suspicious names).
"""
import argparse
import ast
import atexit
import concurrent.futures
import csv
import dataclasses
import datetime
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TESTS = "tests/test_parts.py"
REFERENCE_DATA = "sanity/parts_reference.safetensors"  # what the tests load (in the kit: the grading data)
GRADING_DATA = "sanity/parts_grading.safetensors"      # the same tensors for other random weights: kit only
INSTRUCTOR_ONLY = ("tests/test_assignment.py", "tests/make_parts_reference.py", GRADING_DATA,
                   "docs/instructors.md")  # never in the student version
MANIFEST = "assignment.json"  # written into the student version
KIT_MANIFEST = "kit.json"     # written into the kit
INSTRUCTOR_SECTIONS = re.compile(r"instructor|course assignment", re.I)  # README sections not handed out
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
    read: str = ""    # what to read first (HANDOUT.md)


# The parts table: the one place that says which file and function each part is (paths relative to the root)
PARTS = (
    Part("attention", "model.py", "explicit_attention", 6,
         ("test_attention_equals_softmax_qkt_v", "test_attention_ignores_padding_keys",
          "test_attention_gradients_match_sdpa", "test_attention_dropout_on_the_weights"),
         "softmax(QK^T / sqrt(d)) V with padding masked",
         "Vaswani et al. 2017, Sec. 3.2.1; F.scaled_dot_product_attention's documentation"),
    Part("heads", "model.py", "Layer.attention", 8,
         ("test_heads_match_transformers", "test_heads_swap_exchanges_query_and_key",
          "test_heads_padding_and_no_mask", "test_heads_without_padding_mask",
          "test_heads_explicit_path_and_no_dropout_in_eval"),
         "split into heads and merge; SPS's Q/K swap",
         "Layer.__init__ (the fused qkv projection); Vaswani et al. Sec. 3.2.2; Pea-KD (Cho & Kang 2020) on SPS"),
    Part("layer", "model.py", "Layer.forward", 5,
         ("test_layer_matches_transformers", "test_layer_passes_swap_to_attention",
          "test_layer_dropout_on_each_sublayer_output"), "post-LayerNorm residual blocks",
         "Layer.feed_forward; Vaswani et al. Sec. 3.1 and 5.4 (residual dropout)"),
    Part("embeddings", "model.py", "Embeddings.forward", 5,
         ("test_embeddings_match_transformers", "test_embeddings_of_a_student_have_no_token_types",
          "test_embeddings_shorter_batch_and_dropout_after_layernorm"),
         "word + position (+ type) embeddings", "Embeddings.__init__; Devlin et al. 2019, Sec. 3 and Fig. 2"),
    Part("student_init", "model.py", "student_from_teacher", 8,
         ("test_student_init_copies_chosen_layers", "test_student_init_folds_type_zero_into_positions",
          "test_student_init_default_is_one_layer_of_two_and_copies"), "the student from one layer of two",
         "Sanh et al. 2019 (DistilBERT), Sec. 3, student initialisation; Bert.__init__"),
    Part("kl", "losses.py", "kl_per_row", 7,
         ("test_kl_equals_kl_div_at_temperature", "test_kl_by_hand", "test_kl_teacher_detached",
          "test_kl_zero_probabilities_and_teacher_detached"), "KL(teacher || student) at temperature T",
         "Hinton et al. 2015, Sec. 2; F.log_softmax"),
    Part("soft_targets", "losses.py", "soft_target_loss", 3,
         ("test_soft_targets_mean_times_t_squared", "test_soft_targets_sum_over_denom",
          "test_soft_targets_matches_kldivloss_batchmean"), "L_ce: the KL reduced, times T^2",
         "reduce_rows in losses.py; Hinton et al. 2015, Sec. 2 (why T^2)"),
    Part("mlm", "losses.py", "mlm_loss", 5,
         ("test_mlm_ignores_unmasked_rows", "test_mlm_flattens_batch_dims",
          "test_mlm_with_nothing_masked_is_zero_with_a_graph"), "L_mlm: cross-entropy at masked positions",
         "reduce_rows in losses.py; Devlin et al. 2019, Sec. 3.1 (masked LM)"),
    Part("cosine", "losses.py", "cosine_loss", 4,
         ("test_cosine_equals_cosine_embedding_loss", "test_cosine_teacher_detached",
          "test_cosine_ignores_norm_and_detaches_teacher"),
         "L_cos: 1 - cos(h_s, h_t)", "Sanh et al. 2019, Sec. 3 (the cosine loss); F.cosine_similarity"),
    Part("combine", "losses.py", "combine", 4,
         ("test_combine_weights_and_parts", "test_combine_missing_parts_left_out"),
         "alpha_ce L_ce + alpha_mlm L_mlm + alpha_cos L_cos", "combine's signature (the alpha defaults)"),
    Part("masking", "data.py", "mask_tokens", 12,
         ("test_masking_chooses_15_percent_of_real_tokens", "test_masking_80_10_10",
          "test_masking_smoothed_picks_exactly_ceil_by_weight",
          "test_masking_reproducible_and_input_untouched",
          "test_masking_random_ids_mask_and_padding"),
         "dynamic masking, 80/10/10, smoothed by weight",
         "Devlin et al. 2019, Sec. 3.1 and Appendix A.1; torch.multinomial and torch.Generator"),
    Part("smoothing", "data.py", "smoothing_weights", 4,
         ("test_smoothing_weights_by_hand", "test_smoothing_unseen_ids_and_dict_specials"),
         "masking weights count^-0.7", "mask_tokens' weights argument; Lample & Conneau 2019 (XLM), Sec. 3.3"),
    Part("lr_schedule", "machinery/optim.py", "linear_schedule", 4,
         ("test_lr_schedule_warmup_then_decay", "test_lr_schedule_no_warmup_and_past_the_end"),
         "linear warm-up, linear decay", "where train.py builds its LambdaLR; Devlin et al. 2019, Appendix A.2"),
    Part("denominators", "train.py", "forward_backward", 10,
         ("test_denominators_give_the_gradient_of_one_big_batch", "test_denominators_ce_on_masked_positions",
          "test_denominators_over_two_ranks"),
         "gradient accumulation: the step's token counts", "train.Objective (its denoms argument)"),
    Part("ptp", "peakd.py", "ptp_labels", 6,
         ("test_ptp_labels_four_classes", "test_ptp_labels_three_classes_from_logits"),
         "Pea-KD's PTP labels: right/wrong x confident/unsure", "Cho & Kang 2020 (Pea-KD), Sec. 3.2"),
    Part("pkd", "losses.py", "pkd_loss", 9,
         ("test_pkd_loss_equals_eq_7", "test_pkd_loss_without_layers_has_no_patient_term",
          "test_pkd_loss_teacher_states_detached"),
         "the Patient-KD loss (Sun et al., Eq. 7)", "Sun et al. 2019 (Patient-KD), Eq. 7; soft_target_loss"),
)
BY_NAME = {p.name: p for p in PARTS}

# make --lean: files that hold near-solutions of parts, left out of the student version ("out") or with a
# function's body blanked ("file:function")
LEAN = (
    ("notebooks/01_bert_and_student.ipynb", "the per-head attention written out (attention, heads)"),
    ("tests/test_peakd.py", "an SPS layer written out (heads)"),
    ("tests/test_losses.py", "KL times T^2 written out (kl, soft_targets)"),
    ("bench.py", "the reference formulas of the losses, KL times T^2 (kl, soft_targets, mlm, cosine)"),
    ("tests/test_bench.py", "the tests of bench.py, which is left out"),
    ("peakd.py:make_student", "copies the teacher's layers as student_from_teacher does (student_init)"),
)


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
    modules = {n for n in graded_files(root) if n.endswith(".py") and n != TESTS}
    sources = sorted({p.file for p in PARTS} | modules)
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
# ------------------------------------------------------------------------------------------------------------
# The project's files and the student version

def project_files(root):
    """The project's files, relative to root: those git tracks where root is a checkout (untracked files are
    never handed out), else those the student version's manifest lists."""
    root = Path(root)
    if (root / ".git").exists():
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached"], capture_output=True,
                                check=True).stdout
        names = {n for n in listed.decode().split("\0") if n}
    elif (root / MANIFEST).is_file():
        names = set(json.loads((root / MANIFEST).read_text()).get("files", [])) | {MANIFEST}
    else:
        raise AssignmentError(f"{root}: not a git checkout and no {MANIFEST}: the files to hand out are the "
                              f"ones git tracks")
    return sorted(n for n in names if (root / n).is_file())


def lean_files(root):
    """LEAN checked against the tree: {file to leave out}, {file: {function to blank}}."""
    out, blanks = set(), {}
    for where, _ in LEAN:
        file, _, function = where.partition(":")
        if not (root / file).is_file():
            raise AssignmentError(f"assignment.LEAN: {file} is not in {root}")
        if function:
            if function not in functions((root / file).read_text(), file):
                raise AssignmentError(f"assignment.LEAN: {file} has no function {function}")
            blanks.setdefault(file, set()).add(function)
        else:
            out.add(file)
    return out, blanks


def blank_body(text, file, names):
    """text with each function of `names` left as its signature and docstring, raising NotImplementedError."""
    tree, lines = ast.parse(text), text.splitlines()
    nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
             and n.name in {f.split(".")[-1] for f in names}]
    for node in sorted(nodes, key=lambda n: -n.lineno):
        body = node.body[1:] if ast.get_docstring(node) is not None else node.body
        first, indent = body[0].lineno - 1, " " * body[0].col_offset
        lines[first:node.end_lineno] = [f'{indent}raise NotImplementedError("left out of this hand-out")']
    return "\n".join(lines) + "\n"


def without_sections(text, pattern=INSTRUCTOR_SECTIONS):
    """Markdown text without the sections whose heading matches pattern (to the next heading of the same or a
    higher level; code blocks are not headings)."""
    out, skip, fence = [], None, False
    for line in text.splitlines():
        fence ^= line.lstrip().startswith("```")
        heading = None if fence or line.lstrip().startswith("```") else re.match(r"^(#+)\s+(.*)", line)
        if heading and skip is not None and len(heading.group(1)) <= skip:
            skip = None
        if heading and skip is None and pattern.search(heading.group(2)):
            skip = len(heading.group(1))
        if skip is None:
            out.append(line)
    return "\n".join(out) + "\n"


def handout(parts, visible):
    rows = "\n".join(f"| {p.name} | {p.file} | `{p.function}` | {p.points} | {p.what} | {p.read} | "
                     f"`python assignment.py check {p.name}` ({sum(t in visible for t in p.tests)} of "
                     f"{len(p.tests)} tests here) |" for p in parts)
    return f"""# The assignment: {len(parts)} parts, {sum(p.points for p in parts)} points

Write each function below where its `# YOUR CODE HERE` stands; the comment lines above it are the steps, and
the docstring says what comes in and what goes out. Grading takes each function alone and puts it into a copy
of this project where every other part is blank, so write imports and helpers inside the function (`check`
says when it sees one outside).

Check your work in your own tree; it needs only `pip install -r requirements.txt` (no pytest, no transformers):

```bash
python assignment.py check kl        # one part's visible tests: ok / FAIL, expected beside actual, points
python assignment.py check all       # every part
python assignment.py parts           # the table below
```

The visible tests are in `tests/test_parts.py`; each part has hidden tests too, run at grading, and a part's
points are split evenly over all its tests. Changing the tests changes nothing at grading: the grader uses its
own. The rest of the project (the quickstart, training, notebooks, the other tests) runs once the parts it uses
are done.

| part | file | function | points | what | read first | check |
|---|---|---|---:|---|---|---|
{rows}
"""


def student_version(root=ROOT, lean=False) -> dict:
    """{relative path: bytes} of the student version."""
    root = Path(root)
    table, visible = check_table(root), visible_tests(root)
    left_out, blanks = lean_files(root) if lean else (set(), {})
    out = {}
    for name in project_files(root):
        if name in INSTRUCTOR_ONLY or name in (MANIFEST, "HANDOUT.md") or name in left_out:
            continue
        data = (root / name).read_bytes()
        if name in table and table[name]:
            data = blank(data.decode(), name).encode()
        elif name == TESTS:
            data = without_hidden_tests(data.decode(), name).encode()
        elif name == "assignment.py":
            data = visible_table(data.decode(), visible).encode()
        elif name == "README.md":
            text = without_sections(data.decode()).split("\n", 1)
            data = (text[0] + "\n\n**Doing the course assignment? Start with [HANDOUT.md](HANDOUT.md).**\n" +
                    text[1]).encode()
        if name in blanks:
            data = blank_body(data.decode(), name, blanks[name]).encode()
        out[name] = data
    out["HANDOUT.md"] = handout(PARTS, visible).encode()
    out[MANIFEST] = (json.dumps({
        "format": "distilbert-from-scratch/assignment", "version": 2, "lean": lean,
        "parts": {p.name: {"file": p.file, "function": p.function, "points": p.points, "tests": len(p.tests)}
                  for p in PARTS},
        "top_level": {f: top_level(out[f].decode()) for f in sorted({p.file for p in PARTS})},
        "files": sorted(out),
    }, indent=2) + "\n").encode()
    return out


def visible_table(text, visible):
    """This file with the parts table listing only the visible tests: the hidden ones' names say what they
    check."""
    rows = []
    for p in PARTS:
        tests = tuple(t for t in p.tests if t in visible)
        rows.append(f"    Part({p.name!r}, {p.file!r}, {p.function!r}, {p.points},\n         {tests!r},\n"
                    f"         {p.what!r},\n         {p.read!r}),\n")
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
# Running a part's tests: in a fresh process, in a temporary tree, guarded

def graded_files(root=ROOT) -> dict:
    """{name: bytes} of what the graded tests need from a tree: the project's Python modules (not the other
    tests or the notebooks), the graded tests and their data."""
    root = Path(root)
    try:
        names = project_files(root)
    except AssignmentError:  # a bare copy of the sources (the tooling's own tests make those)
        names = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                 and not {".git", ".venv", "venv", "__pycache__", "out"} & set(p.relative_to(root).parts)]
    keep = lambda n: n in (TESTS, REFERENCE_DATA) or n.endswith(".py") and not n.startswith(
        ("tests/", "notebooks/", "docs/"))
    return {n: (root / n).read_bytes() for n in names if keep(n)}


def tree(files: dict, into: Path) -> Path:
    for name, data in files.items():
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        (into / name).write_bytes(data)
    return into


PER_TEST = 5  # seconds a graded test may take (the reference's take well under 1 s)


def run_tests(files: dict, names, timeout=None, forget=()) -> dict:
    """{test: None (passed) or the error in one line} for tests of tests/test_parts.py run in a fresh process
    in a temporary tree of `files`: a child the test server forks for this job alone. It writes its results to
    a file beside the tree (not in it), each line led by a token made for this job, to a last "end"; the files
    `forget` are deleted once the tests are imported."""
    timeout = timeout or 30 + PER_TEST * len(names)
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="assignment-") as tmp:
        where = tree(files, Path(tmp) / "tree")
        code = server().run({"token": token, "tree": str(where), "names": list(names), "per_test": PER_TEST,
                             "forget": list(forget)}, timeout)
        read = lambda name: (Path(tmp) / name).read_text(errors="replace") if (Path(tmp) / name).is_file() else ""
        lines, err = read("results").splitlines(), read("stderr")
    if code is None:
        return {n: f"no result within {timeout} s" for n in names}
    results, ended = {}, False
    for line in lines:
        if line == f"{token} end":
            ended = True
        elif line.startswith(token + " ") and not ended:
            name, why = json.loads(line[len(token) + 1:])
            results.setdefault(name, why)
    if not ended:
        why = (err.strip().splitlines() or [f"exit code {code}" if isinstance(code, int) else code])[-1][:300]
        return {n: f"the test process ended before its last test: {why}" for n in names}
    return {n: results.get(n, "no result from the test process") for n in names}


class Server:
    """A process that imports torch once and forks a fresh child for each job (a child runs no more than one
    job, and the server runs no code of a tree), so that a job costs a fork, not a Python start."""

    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="assignment-server-")
        shutil.copy(Path(__file__).resolve(), Path(self.tmp) / "assignment.py")  # argv[0]: beside no solution
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.tmp, "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-I", str(Path(self.tmp) / "assignment.py"), "_serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=self.tmp,
                                     env=env)
        self.lock, self.waiting, self.next = threading.Lock(), {}, 0
        threading.Thread(target=self.read, daemon=True).start()

    def read(self):
        for line in self.proc.stdout:  # "exit ID CODE" when a job's child has ended
            if not re.fullmatch(r"exit \d+ -?\d+", line.strip()):
                continue
            _, job, code = line.split()
            with self.lock:
                done = self.waiting.pop(int(job), None)
            if done:
                done[1] = int(code)
                done[0].set()
        with self.lock:  # the server ended: nobody waits for ever
            for done in self.waiting.values():
                done[1] = "the test server ended"
                done[0].set()

    def send(self, line):
        with self.lock:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()

    def run(self, job, timeout):
        """The exit code of the job's child, or None if it ran past timeout (then it is killed)."""
        with self.lock:
            self.next += 1
            job, done = {**job, "id": self.next}, [threading.Event(), None]
            self.waiting[job["id"]] = done
        self.send(json.dumps(job))
        if done[0].wait(timeout):
            return done[1]
        self.send(f"kill {job['id']}")
        done[0].wait(30)
        return None

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


SERVER, SERVER_LOCK = [], threading.Lock()


def server():
    with SERVER_LOCK:
        if not SERVER or SERVER[-1].proc.poll() is not None:  # none yet, or it ended: a new one
            SERVER.append(Server())
            atexit.register(SERVER[-1].close)
        return SERVER[-1]


FORK = sys.platform.startswith("linux")  # elsewhere (macOS) forking after torch is unsafe: a Python start per job


def _serve():
    """The test server: jobs as JSON lines on stdin, "kill ID" to end one; "exit ID CODE" on stdout."""
    import select
    import safetensors.torch  # noqa: F401  (imported once here, as torch, for every child)
    import torch
    torch.set_num_threads(1)
    children, buf = {}, b""  # job id: the child's pid (forked) or its Popen
    ended = lambda c: c.poll() if not isinstance(c, int) else (
        lambda pid, status: None if pid == 0 else os.waitstatus_to_exitcode(status))(*os.waitpid(c, os.WNOHANG))
    while True:
        if select.select([0], [], [], 0.02)[0]:
            data = os.read(0, 1 << 16)
            if not data:
                break
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.startswith(b"kill "):
                    child = children.get(int(line.split()[1]))
                    os.kill(child, signal.SIGKILL) if isinstance(child, int) else child and child.kill()
                    continue
                job = json.loads(line)
                if FORK:
                    pid = os.fork()
                    if pid == 0:
                        try:
                            _child(job)
                        finally:
                            os._exit(70)
                    children[job["id"]] = pid
                else:
                    children[job["id"]] = subprocess.Popen(
                        [sys.executable, "-I", os.path.abspath(sys.argv[0]), "_child"], stdin=subprocess.PIPE,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
                    children[job["id"]].stdin.write(json.dumps(job))
                    children[job["id"]].stdin.close()
                job = line = None
        for job, child in list(children.items()):
            code = ended(child)
            if code is not None:
                del children[job]
                os.write(1, f"exit {job} {code}\n".encode())
    for child in children.values():
        os.kill(child, signal.SIGKILL) if isinstance(child, int) else child.kill()


def _child_main():
    """A test process started, not forked (where FORK is False): the job on stdin."""
    job = json.loads(sys.stdin.read())
    import torch
    torch.set_num_threads(1)
    _child(job)


def guard(where):
    """From here on this process may not import transformers (however reached: an audit hook cannot be taken
    back), read a file outside the tree and Python's own folders, change one outside the tree, start or signal
    a process, open a socket or call C through ctypes."""
    import importlib.util
    import site
    import sysconfig
    spec = importlib.util.find_spec("transformers")
    folder = lambda p: os.path.join(os.path.realpath(p), "")
    banned = tuple(folder(p) for p in (spec.submodule_search_locations or [])) if spec else ()
    readable = tuple({folder(p) for p in (where, sys.prefix, sys.base_prefix, sys.exec_prefix,
                                          *site.getsitepackages(), *sysconfig.get_paths().values(),
                                          "/proc/self", "/dev")})
    writable = (folder(where), "/dev/null/")
    refused = ("subprocess.", "os.system", "os.posix_spawn", "os.exec", "os.spawn", "os.fork", "os.forkpty",
               "pty.spawn", "os.kill", "os.killpg", "signal.pthread_kill", "socket.", "ctypes.")
    changes = {"os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.chmod", "os.chown", "os.truncate",
               "os.link", "os.symlink", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile"}
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    inside = lambda path, where: (os.path.realpath(os.fsdecode(path)) + os.sep).startswith(where)

    def hook(event, args):
        if event == "import" and str(args[0]).split(".")[0] == "transformers":
            raise ImportError("import of transformers refused while grading")
        if event == "open" and isinstance(args[0], (str, bytes)):
            path = os.path.realpath(os.fsdecode(args[0]))
            write = isinstance(args[2], int) and args[2] & writing or "w" in str(args[1] or "") or \
                "a" in str(args[1] or "") or "+" in str(args[1] or "") or "x" in str(args[1] or "")
            if path.startswith(banned) or not inside(path, writable if write else readable):
                raise PermissionError(f"{path}: {'writing' if write else 'reading'} this file is refused while "
                                      f"grading")
        if event in changes and not all(inside(a, writable) for a in args if isinstance(a, (str, bytes))):
            raise PermissionError(f"{event}{args}: changing files outside the tree is refused while grading")
        if event.startswith(refused):
            raise PermissionError(f"{event}: refused while grading")
    sys.addaudithook(hook)


def _child(job):
    """A forked test process: stdin from /dev/null, stdout and stderr to the file `stderr` and the results to
    `results` (both beside the tree), each line led by the job's token; then guarded, the tests run."""
    token, where = job["token"], job["tree"]
    null, err = os.open(os.devnull, os.O_RDWR), os.open(Path(where).parent / "stderr", os.O_WRONLY | os.O_CREAT)
    for fd, to in ((0, null), (1, err), (2, err)):
        os.dup2(to, fd)
    results, write = os.open(Path(where).parent / "results", os.O_WRONLY | os.O_CREAT), os.write
    report = lambda body: write(results, f"{token} {body}\n".encode())
    sys.path.insert(0, where)
    os.chdir(where)
    guard(where)
    try:
        module = import_tests(where)
    except BaseException as e:  # the tree does not even import: every test fails with the reason
        for n in job["names"]:
            report(json.dumps([n, f"importing the tests failed: {one_line(e)}"]))
        report("end")
        os._exit(0)
    for name in job["forget"]:
        os.remove(Path(where) / name)

    def too_long(signum, frame):
        raise TimeoutError(f"over {job['per_test']} s")
    signal.signal(signal.SIGALRM, too_long)
    for n in job["names"]:
        test, why = getattr(module, n, None), None
        signal.alarm(job["per_test"])
        try:
            test() if test else None
            why = None if test else "not in tests/test_parts.py"
        except BaseException as e:
            why = one_line(e)
        finally:
            signal.alarm(0)
        report(json.dumps([n, why]))
    report("end")
    os._exit(0)


def import_tests(where):
    """tests/test_parts.py as a module. A project module it imports that does not import itself (a syntax
    error in a sibling file) is replaced by one whose every attribute raises the reason, so that only the
    tests that use it fail."""
    import importlib
    import importlib.util
    import types

    class Broken(types.ModuleType):
        def __getattr__(self, attr):
            raise ImportError(self.__dict__["why"])
    path = Path(where) / TESTS
    for node in ast.parse(path.read_text()).body:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module] + [
            f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) and node.module \
            and not node.level else []
        for name in names:  # a module, or a package's (machinery.optim): the project's, if a file has it
            file = Path(where, *name.split("."))
            if not (file.with_suffix(".py").is_file() or (file / "__init__.py").is_file()) or name in sys.modules:
                continue
            try:
                importlib.import_module(name)
            except BaseException as e:
                sys.modules[name] = Broken(name)
                sys.modules[name].why = f"{name.replace('.', '/')}.py does not import: {one_line(e)}"
                if "." in name and name.rsplit(".", 1)[0] in sys.modules:
                    setattr(sys.modules[name.rsplit(".", 1)[0]], name.rsplit(".", 1)[1], sys.modules[name])
    spec = importlib.util.spec_from_file_location("test_parts", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_line(e):  # not files.one_line: the test process imports none of the tree's modules before its tests
    text = " ".join(str(e).split())[:300]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def in_parallel(jobs, workers=2):
    """[f() for f in jobs], `workers` at a time (the machines have two cores)."""
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(lambda f: f(), jobs))


# ------------------------------------------------------------------------------------------------------------
# The kit and make

def base_files(root, parts):
    """The graded files of root with the parts' functions blanked: the tree each of a submission's functions
    goes into alone."""
    files = graded_files(root)
    for file in sorted({p.file for p in parts}):
        only = {p.function for p in parts if p.file == file}
        files[file] = blank(files[file].decode(), file, only=only).encode()
    return files


def kit_from(root=ROOT):
    """(parts, {file: bytes} of the kit's tree, visible tests) from the instructor's tree: the student version's
    modules, every graded test, and the grading data in place of the visible data."""
    root = Path(root)
    check_table(root)
    if not (root / GRADING_DATA).is_file():
        raise AssignmentError(f"{root / GRADING_DATA}: missing (python tests/make_parts_reference.py writes it)")
    files = {**base_files(root, PARTS), REFERENCE_DATA: (root / GRADING_DATA).read_bytes()}
    return PARTS, files, sorted(visible_tests(root))


def write_kit(kit, parts, files, visible):
    def write(tmp):
        tree(files, tmp / "tree")
        shutil.copy(Path(__file__).resolve(), tmp / "assignment.py")
        (tmp / KIT_MANIFEST).write_text(json.dumps({
            "format": "distilbert-from-scratch/kit", "version": 1,
            "parts": [dataclasses.asdict(p) for p in parts], "visible": visible}, indent=2) + "\n")
    write_new(kit, write)


def load_kit(kit):
    kit = Path(kit)
    path = kit / KIT_MANIFEST
    if not path.is_file():
        raise AssignmentError(f"{path}: no such file; `make OUT --kit KIT` writes a kit")
    try:
        meta = json.loads(path.read_text())
        assert meta["format"] == "distilbert-from-scratch/kit", meta["format"]
        parts = tuple(Part(**{**p, "tests": tuple(p["tests"])}) for p in meta["parts"])
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        raise AssignmentError(f"{path}: not a grading kit ({one_line(e)})") from None
    files = {str(p.relative_to(kit / "tree")): p.read_bytes() for p in (kit / "tree").rglob("*") if p.is_file()}
    return parts, files, meta["visible"]


def write_new(path, write):
    """write(tmp) fills a temporary folder beside `path`, a folder that must not exist, which is then renamed
    to it: a failure leaves nothing."""
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        write(tmp)
        os.chmod(tmp, 0o755)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_file(path, text):
    """text into path through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def validate(root=ROOT, parts=None):
    """The reference passes every graded test, with the visible data and with the grading data; with every
    part blanked every test fails; each part's solution alone, every other part blanked, passes all of its
    tests. Returns lines to print; raises AssignmentError on the first part that breaks this."""
    root, parts = Path(root), parts or PARTS
    ref, base = graded_files(root), base_files(root, parts)
    every = [t for p in parts for t in p.tests]
    trees = {"the reference": ref}
    if (root / GRADING_DATA).is_file():
        trees[f"the reference with {GRADING_DATA}"] = {**ref, REFERENCE_DATA: (root / GRADING_DATA).read_bytes()}
    alone = [combined(base, p, student_function(root, p)[0]) for p in parts]
    start = time.time()
    jobs = [lambda f=f: run_tests(f, every) for f in (*trees.values(), base)]
    results = in_parallel(jobs + [lambda f=f, p=p: run_tests(f, p.tests) for f, p in zip(alone, parts)])
    for what, res in zip(trees, results):
        failed = [t for t, why in res.items() if why]
        if failed:
            raise AssignmentError(f"{what} fails {failed[0]}: {res[failed[0]]}")
    lines, blanked = [], results[len(trees)]
    for part, res in zip(parts, results[len(trees) + 1:]):
        passing = [t for t in part.tests if blanked[t] is None]
        if passing:
            raise AssignmentError(f"part {part.name}: blanked, its test {passing[0]} still passes")
        failing = [t for t in part.tests if res[t] is not None]
        if failing:
            raise AssignmentError(f"part {part.name}: alone in the student version (every other part blanked), "
                                  f"its test {failing[0]} fails: {res[failing[0]]}")
        lines.append(f"  {part.name:<14} its {len(part.tests)} tests fail blanked and pass with its solution "
                     f"alone")
    lines.append(f"validated in {time.time() - start:.0f} s")
    return lines


def make(out, root=ROOT, check=True, kit=None, lean=False):
    out, kit = Path(out), kit and Path(kit)
    for path in (out, kit) if kit else (out,):
        if path.exists():
            raise AssignmentError(f"{path}: already exists; make writes a new folder and never overwrites one")
        if not path.resolve().parent.is_dir():
            raise AssignmentError(f"{path.parent}: no such folder to make {path.name} in")
    if kit and (out.resolve() in kit.resolve().parents or kit.resolve() in out.resolve().parents):
        raise AssignmentError(f"{kit}: the kit and the student version must not hold each other (the kit has the "
                              f"hidden tests)")
    files = student_version(root, lean)
    made = kit_from(root) if kit else None
    report = validate(root) if check else ["not validated (--validate=false)"]

    def write(tmp):
        tree(files, tmp)
        for name in files:
            if os.access(root / name, os.X_OK) and (root / name).is_file():
                os.chmod(tmp / name, 0o755)
    write_new(out, write)
    print(f"{out}: the student version, {len(files)} files, {len(PARTS)} parts, "
          f"{sum(p.points for p in PARTS)} points{', lean' if lean else ''}")
    if kit:
        write_kit(kit, *made)
        print(f"{kit}: the grading kit, no solutions: grade with "
              f"python {kit / 'assignment.py'} grade --kit {kit} SUBMISSION...")
    print("\n".join(report))


# ------------------------------------------------------------------------------------------------------------
# grade

SUSPECT = ("sys.argv", "_exit", "sys.modules", "torch.testing", "__class__", "__subclasses__", "gc.", "inspect",
           "_getframe", "f_back", "f_globals", "open(", "exec(", "eval(", "compile(", "subprocess", "safetensors",
           "load_file", "__import__", "importlib", "globals(", "setattr(", "builtins", "signal", "__closure__",
           "__code__", "os.environ", "Path(", "__file__", "atexit", "sys.stdout", "os.write", "os.dup", "__eq__",
           "__torch_function__", "REF")


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


def combined(base, part, lines):
    """The base's files with part.function replaced by the student's lines."""
    text = base[part.file].decode()
    first, last = functions(text, part.file)[part.function]
    new = text.splitlines()
    new[first:last + 1] = lines
    return {**base, part.file: ("\n".join(new) + "\n").encode()}


def grade_part(dir, part, base):
    lines, why = student_function(dir, part)
    if lines is None:
        return {t: why for t in part.tests}
    try:
        files = combined(base, part, lines)
        functions(files[part.file].decode(), part.file)
    except AssignmentError as e:
        return {t: str(e) for t in part.tests}
    return run_tests(files, part.tests, forget=(REFERENCE_DATA,))


def submitted_hash(dir, parts):
    """sha256 over the submission's graded files (names and contents)."""
    h = hashlib.sha256()
    for file in sorted({p.file for p in parts}):
        path = Path(dir) / file
        h.update(f"{file}\0".encode() + (path.read_bytes() if path.is_file() else b"(missing)") + b"\0")
    return h.hexdigest()


def notes(dir, parts):
    """Graded functions that use names a solution has no need of: read those."""
    out = []
    for p in parts:
        lines, _ = student_function(dir, p)
        found = [s for s in SUSPECT if lines and s in "\n".join(lines)]
        if found:
            out.append(f"{p.name}: {p.function} uses {', '.join(found)}: read it")
    return out


def changed_tests(dir, visible_text):
    """The graded tests file, if the submission's differs from the hand-out's (it is not used in grading)."""
    path = Path(dir) / TESTS
    if not path.is_file():
        return [f"{TESTS} (missing)"]
    return [] if path.read_text(errors="replace") == visible_text else [f"{TESTS} (changed)"]


def grade_all(dirs, kit=None, root=ROOT, jobs=2, only=None):
    """[report] for each submission folder: every (submission, part) pair graded in its own process, `jobs` at
    a time. kit: a kit folder, else the kit is made from the instructor's tree root."""
    dirs = [Path(d) for d in dirs]
    for d in dirs:
        if not d.is_dir():
            raise AssignmentError(f"{d}: not a folder")
    ids = [d.resolve().name for d in dirs]
    if len(set(ids)) != len(ids):
        raise AssignmentError(f"two submissions named {next(i for i in ids if ids.count(i) > 1)}: a report is "
                              f"named by its folder")
    if kit is None and (Path(root) / MANIFEST).exists():
        raise AssignmentError(f"{root}: this is a student version; grade with --kit, or from the instructor's "
                              f"copy")
    parts, base, visible = load_kit(kit) if kit else kit_from(root)
    if only and only not in {p.name for p in parts}:
        raise AssignmentError(f"--part {only}: no such part (the kit's are {', '.join(p.name for p in parts)})")
    chosen = [p for p in parts if only in (None, p.name)]
    visible_text = without_hidden_tests(base[TESTS].decode(), TESTS)
    start = time.time()
    pairs = [(d, p) for d in dirs for p in chosen]
    results = in_parallel([lambda d=d, p=p: grade_part(d, p, base) for d, p in pairs], jobs)
    seconds = round((time.time() - start) / len(dirs), 1)
    reports = []
    for d, i in zip(dirs, ids):
        graded = {}
        for (dd, part), res in zip(pairs, results):
            if dd != d:
                continue
            passed = sum(res[t] is None for t in part.tests)
            graded[part.name] = {"file": part.file, "function": part.function,
                                 "points": round(part.points * passed / len(part.tests), 2), "max": part.points,
                                 "passed": passed, "tests": len(part.tests),
                                 "failed": {t: why for t, why in res.items() if why},
                                 "hidden": [t for t in part.tests if t not in visible]}
        reports.append({"id": i, "graded_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"), "sha256": submitted_hash(d, parts), "parts": graded,
            "total": round(sum(p["points"] for p in graded.values()), 2), "max": sum(p.points for p in parts),
            "changed_tests": changed_tests(d, visible_text), "notes": notes(d, chosen), "seconds": seconds})
    return parts, reports


def merged(old, new):
    """new (one part regraded) laid over the earlier report old of the same submission."""
    parts = {**old["parts"], **new["parts"]}
    out = {**new, "parts": parts, "total": round(sum(p["points"] for p in parts.values()), 2)}
    if old.get("sha256") != new["sha256"]:
        out["notes"] = new["notes"] + ["the files changed since the earlier grading of the other parts"]
    return out


def hidden_out(report):
    """The report with each hidden test's name and message replaced by "a hidden test failed"."""
    parts = {}
    for name, p in report["parts"].items():
        if not isinstance(p["hidden"], list):  # already done
            parts[name] = p
            continue
        failed, n = {}, 0
        for t, why in p["failed"].items():
            if t in p["hidden"]:
                n += 1
                failed[f"hidden test {n}"] = "a hidden test failed"
            else:
                failed[t] = why
        parts[name] = {**p, "failed": failed, "hidden": len(p["hidden"])}
    return {**report, "parts": parts}


def markdown(report):
    rows = "\n".join(f"| {n} | {p['file']} | `{p['function']}` | {p['passed']}/{p['tests']} | "
                     f"{p['points']:g} / {p['max']} |" for n, p in report["parts"].items())
    failed = "\n".join(f"- **{n}** `{t}`: {why}" for n, p in report["parts"].items()
                       for t, why in p["failed"].items())
    text = (f"# {report['id']}: {report['total']:g} / {report['max']}\n\nGraded {report['graded_at']}; the "
            f"graded files' sha256 {report['sha256'][:16]}.\n\n| part | file | function | tests | points |\n"
            f"|---|---|---|---:|---:|\n{rows}\n| **total** | | | | **{report['total']:g} / {report['max']}** |\n")
    if failed:
        text += f"\n## What failed\n\n{failed}\n"
    extra = [f"{t}: the tests of the hand-out were used" for t in report["changed_tests"]] + report["notes"]
    if extra:
        text += "\n## Notes\n\n" + "\n".join(f"- {n}" for n in extra) + "\n"
    return text


def write_csv(path, reports, parts):
    """The gradebook: a row per report, and the rows of other ids already in the file kept."""
    header = ["id", *(p.name for p in parts), "total", "max", "graded_at", "sha256"]
    rows = [{"id": r["id"], **{p.name: f"{r['parts'][p.name]['points']:g}" for p in parts
                               if p.name in r["parts"]},
             "total": f"{r['total']:g}", "max": r["max"], "graded_at": r["graded_at"], "sha256": r["sha256"]}
            for r in reports]
    if Path(path).is_file():
        with open(path, newline="") as f:
            old = list(csv.DictReader(f))
        if old and list(old[0]) != header:
            raise AssignmentError(f"{path}: its columns are not this kit's parts; write another file")
        rows = [row for row in old if row["id"] not in {r["id"] for r in reports}] + rows
    buf = io.StringIO()
    w = csv.DictWriter(buf, header)
    w.writeheader()
    w.writerows(sorted(rows, key=lambda row: row["id"]))
    write_file(path, buf.getvalue())


def earlier(path):
    try:
        return json.loads(Path(path).read_text())
    except ValueError as e:
        raise AssignmentError(f"{path}: not a report ({e})") from None


def print_grades(report):
    print(f"{report['id']}: {report['total']:g} / {report['max']}")
    print(f"  {'part':<14}{'file':<11}{'function':<22}{'tests':>7}{'points':>12}")
    for name, p in report["parts"].items():
        print(f"  {name:<14}{p['file']:<11}{p['function']:<22}{p['passed']:>4}/{p['tests']:<2}"
              f"{p['points']:>8g} / {p['max']}")
        for t, why in p["failed"].items():
            print(f"      {t}: {why[:150]}")
    for name in report["changed_tests"]:
        print(f"  note: {name}: the tests of the hand-out were used")
    for n in report["notes"]:
        print(f"  note: {n}")


def grade_command(a):
    parts, reports = grade_all(a.submissions, kit=a.kit, jobs=a.jobs, only=a.part)
    folder = Path(a.reports) if a.reports else Path(a.csv).parent / "reports" if a.csv else None
    if a.part and folder:
        reports = [merged(earlier(folder / f"{r['id']}.json"), r)
                   if (folder / f"{r['id']}.json").is_file() else r for r in reports]
    shown = [hidden_out(r) if a.hide_hidden else r for r in reports]
    for r in shown:
        print_grades(r)
    print(f"graded {len(reports)} submission(s), {reports[0]['seconds']} s each" if reports else "nothing graded")
    if folder:
        for r in shown:
            write_file(folder / f"{r['id']}.json", json.dumps(r, indent=2) + "\n")
            write_file(folder / f"{r['id']}.md", markdown(r))
    if a.csv:
        write_csv(a.csv, reports, parts)
    if a.json:
        if len(reports) != 1:
            raise AssignmentError("--json is for one submission; use --csv (and --reports) for several")
        write_file(a.json, json.dumps(shown[0], indent=2) + "\n")


# ------------------------------------------------------------------------------------------------------------
# check and parts

def check(name, root=ROOT):
    """Run the visible tests of one part (or all) in this tree; returns the number of failures."""
    root = Path(root)
    names = list(BY_NAME) if name == "all" else [name]
    if any(n not in BY_NAME for n in names):
        raise AssignmentError(f"unknown part {name!r}: choose from {', '.join(BY_NAME)} or all")
    visible = visible_tests(root)
    counts = {}
    if (root / MANIFEST).is_file():  # the student version: how many tests each part has at grading
        recorded = json.loads((root / MANIFEST).read_text()).get("parts", {})
        counts = {n: p.get("tests") for n, p in recorded.items()}
    tests = [t for n in names for t in BY_NAME[n].tests if t in visible]
    res = run_tests(graded_files(root), tests)
    outside_the_functions(root, {BY_NAME[n].file for n in names})
    points = 0.0
    for n in names:
        part = BY_NAME[n]
        mine = [t for t in part.tests if t in visible]
        ok, total = sum(res[t] is None for t in mine), counts.get(n) or len(part.tests)
        points += part.points * ok / total
        print(f"{n}: {ok}/{len(mine)} visible tests pass ({part.file}, {part.function}): "
              f"{round(part.points * ok / total, 2):g} of its {part.points} points so far; hidden tests at grading: "
              f"{total - len(mine)}")
        for t in mine:
            print(f"  {'ok  ' if res[t] is None else 'FAIL'} {t}" + (f": {res[t]}" if res[t] else ""))
    if len(names) > 1:
        print(f"all: {round(points, 2):g} of {sum(BY_NAME[n].points for n in names)} points from the visible tests")
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


def boolean(text):
    if text.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected true or false")
    return text.lower() in ("true", "1")


def parser():
    p = argparse.ArgumentParser(prog="assignment.py", description=__doc__.strip().split("\n\n")[0],
                                epilog="python assignment.py COMMAND --help: that command's options")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("parts", help="the parts table", description="The parts table: name, file, function, "
                   "points, what, how many tests.")
    m = sub.add_parser("make", help="the student version (and the grading kit)", description=(
        "Writes the student version to OUT, a new folder: the solutions blanked, the hidden tests left out, "
        "HANDOUT.md in place of the instructors' README sections, only files git tracks. Validates that each "
        "part's tests fail blanked and pass with its solution alone."))
    m.add_argument("out", metavar="OUT")
    m.add_argument("--kit", metavar="KIT", help="also write the grading kit (no solutions) to KIT, a new folder")
    m.add_argument("--lean", action="store_true", help="leave out the files that hold near-solutions "
                   "(assignment.LEAN, named in docs/instructors.md)")
    m.add_argument("--validate", type=boolean, default=True, metavar="true|false", help="validate (default)")
    g = sub.add_parser("grade", help="grade submissions part by part", description=(
        "Grades each SUBMISSION folder (its name is the student's id) part by part, each part in a fresh "
        "process, with the kit's tests (hidden ones too) and data; without --kit, from this instructor's "
        "tree."))
    g.add_argument("submissions", nargs="+", metavar="SUBMISSION")
    g.add_argument("--kit", metavar="KIT", help="the grading kit that `make --kit` wrote")
    g.add_argument("--csv", metavar="FILE", help="the gradebook: one row per submission")
    g.add_argument("--reports", metavar="DIR", help="ID.json and ID.md per submission (default: reports/ beside "
                   "the CSV)")
    g.add_argument("--json", metavar="FILE", help="one submission's report as JSON")
    g.add_argument("--jobs", type=int, default=2, metavar="N", help="test processes at a time (default 2)")
    g.add_argument("--part", metavar="NAME", help="grade this part only, merged into the earlier reports")
    g.add_argument("--hide-hidden", action="store_true", help="name no hidden test: \"a hidden test failed\"")
    c = sub.add_parser("check", help="run a part's visible tests in this tree", description=(
        "Runs the visible tests of PART (or all) in this tree: ok / FAIL with expected and actual values, and "
        "the points they are worth."))
    c.add_argument("part", metavar="PART")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["_serve"]:  # the test server: nothing of a tree imported in it
        return _serve()
    if argv == ["_child"]:
        return _child_main()
    a = parser().parse_args(argv)
    try:
        if a.command == "parts":
            print_parts()
        elif a.command == "make":
            make(a.out, check=a.validate, kit=a.kit, lean=a.lean)
        elif a.command == "grade":
            if a.jobs < 1:
                raise AssignmentError(f"--jobs {a.jobs}: at least 1")
            grade_command(a)
        elif a.command == "check":
            return 1 if check(a.part) else 0
    except (AssignmentError, OSError, ValueError) as e:
        print(f"assignment: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
