"""
Course assignments from this project's own files, in the style of nbgrader: the instructor's copy is the
reference, with each graded function's solution between `### BEGIN SOLUTION: N lines` and `### END SOLUTION`.

    python assignment.py parts                          the parts table: name, file, function, points, tests
    python assignment.py make OUT [--kit KIT] [--lean]  the student version (a new folder), validated; KIT: the
                                                        grading kit (tests, hidden ones too, data, this grader)
    python assignment.py grade [--kit KIT] SUB... [--csv F] [--jobs N] [--part NAME] [--hide-hidden]
                          [--deadline T] [--gradescope FILE]    grades submissions part by part, contained
    python assignment.py check PART                     a student runs one part's visible tests (or `all`)

`python assignment.py COMMAND --help` says more. The instructors' guide is docs/instructors.md.
make: each region becomes its comment lines (the steps), `# YOUR CODE HERE` and `raise NotImplementedError()`;
the hidden tests (`### BEGIN HIDDEN TESTS` / `### END HIDDEN TESTS` in tests/test_parts.py) are left out, and
only files git tracks are copied. The kit holds no solution: its tree is the student version with the hidden
tests and other stored tensors (sanity/parts_grading.safetensors), so `grade --kit` needs no reference tree.
grade: each of the student's functions alone goes into a fresh copy of the kit's modules (every other part
blanked), run by a process of its own that gets only the tests' inputs and returns only outputs (safetensors +
JSON, course/wire.py); the tests, their expected values, the points and the gradebook stay in this process.
That process is contained by the operating system (course/sandbox.py: namespaces, another user, limits).
"""
import argparse
import ast
import concurrent.futures
import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from course import gradebook, sandbox, wire

ROOT = Path(__file__).resolve().parent
TESTS = "tests/test_parts.py"
REFERENCE_DATA = "sanity/parts_reference.safetensors"  # what the tests load (in the kit: the grading data)
GRADING_DATA = "sanity/parts_grading.safetensors"      # the same tensors for other random weights: kit only
PROBES = "tests/parts_probes.py"                         # what the tests run in the student's process
INSTRUCTOR_ONLY = ("tests/test_assignment.py", "tests/make_parts_reference.py", GRADING_DATA, "docs/instructors.md",
                   "tests/course_cases.py", "tests/test_grading_sandbox.py", "tests/test_grading_fairness.py",
                   "tests/test_gradebook.py")  # never in the student version (course_cases.py holds solutions)
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
    tests: tuple      # ((test function in tests/test_parts.py, its points), ...): the points add up to the part's
    what: str
    read: str = ""    # what to read first (HANDOUT.md)

    @property
    def names(self):
        return tuple(t for t, _ in self.tests)


# The parts table: the one place that says which file and function each part is (paths relative to the root),
# and what each test is worth: a test that checks what the part is about (the 80/10/10, T^2) weighs the most
PARTS = (
    Part("attention", "model.py", "explicit_attention", 6,
         (("test_attention_equals_softmax_qkt_v", 2), ("test_attention_ignores_padding_keys", 2),
          ("test_attention_gradients_match_sdpa", 1), ("test_attention_dropout_on_the_weights", 1)),
         "softmax(QK^T / sqrt(d)) V with padding masked",
         "Vaswani et al. 2017, Sec. 3.2.1; F.scaled_dot_product_attention's documentation"),
    Part("heads", "model.py", "Layer.attention", 8,
         (("test_heads_match_transformers", 2), ("test_heads_swap_exchanges_query_and_key", 2),
          ("test_heads_padding_and_no_mask", 2), ("test_heads_without_padding_mask", 1),
          ("test_heads_explicit_path_and_dropout_only_in_training", 1)),
         "split into heads and merge; SPS's Q/K swap",
         "Layer.__init__ (the fused qkv projection); Vaswani et al. Sec. 3.2.2; Pea-KD (Cho & Kang 2020) on SPS"),
    Part("layer", "model.py", "Layer.forward", 5,
         (("test_layer_matches_transformers", 2), ("test_layer_passes_swap_to_attention", 1.5),
          ("test_layer_dropout_on_each_sublayer_output", 1.5)), "post-LayerNorm residual blocks",
         "Layer.feed_forward; Vaswani et al. Sec. 3.1 and 5.4 (residual dropout)"),
    Part("embeddings", "model.py", "Embeddings.forward", 5,
         (("test_embeddings_match_transformers", 2), ("test_embeddings_of_a_student_have_no_token_types", 1.5),
          ("test_embeddings_shorter_batch_and_dropout_after_layernorm", 1.5)),
         "word + position (+ type) embeddings", "Embeddings.__init__; Devlin et al. 2019, Sec. 3 and Fig. 2"),
    Part("student_init", "model.py", "student_from_teacher", 8,
         (("test_student_init_copies_chosen_layers", 3), ("test_student_init_folds_type_zero_into_positions", 2.5),
          ("test_student_init_default_is_one_layer_of_two_and_copies", 2.5)), "the student from one layer of two",
         "Sanh et al. 2019 (DistilBERT), Sec. 3, student initialisation; Bert.__init__"),
    Part("kl", "losses.py", "kl_per_row", 7,
         (("test_kl_equals_kl_div_at_temperature", 2), ("test_kl_by_hand", 1), ("test_kl_teacher_detached", 1.5),
          ("test_kl_zero_probabilities_and_teacher_detached", 1), ("test_kl_float16_at_a_large_logit_gap", 1.5)),
         "KL(teacher || student) at temperature T", "Hinton et al. 2015, Sec. 2; F.log_softmax"),
    Part("soft_targets", "losses.py", "soft_target_loss", 3,
         (("test_soft_targets_mean_times_t_squared", 1), ("test_soft_targets_sum_over_denom", 1),
          ("test_soft_targets_matches_kldivloss_batchmean", 1)), "L_ce: the KL reduced, times T^2",
         "reduce_rows in losses.py; Hinton et al. 2015, Sec. 2 (why T^2)"),
    Part("mlm", "losses.py", "mlm_loss", 5,
         (("test_mlm_ignores_unmasked_rows", 2), ("test_mlm_flattens_batch_dims", 1.5),
          ("test_mlm_with_nothing_masked_is_zero_with_a_graph", 1.5)), "L_mlm: cross-entropy at masked positions",
         "reduce_rows in losses.py; Devlin et al. 2019, Sec. 3.1 (masked LM)"),
    Part("cosine", "losses.py", "cosine_loss", 4,
         (("test_cosine_equals_cosine_embedding_loss", 1.5), ("test_cosine_teacher_detached", 1.5),
          ("test_cosine_ignores_norm_and_detaches_teacher", 1)),
         "L_cos: 1 - cos(h_s, h_t)", "Sanh et al. 2019, Sec. 3 (the cosine loss); F.cosine_similarity"),
    Part("combine", "losses.py", "combine", 4,
         (("test_combine_weights_and_parts", 2.5), ("test_combine_missing_parts_left_out", 1.5)),
         "alpha_ce L_ce + alpha_mlm L_mlm + alpha_cos L_cos", "combine's signature (the alpha defaults)"),
    Part("masking", "data.py", "mask_tokens", 12,
         (("test_masking_chooses_15_percent_of_real_tokens", 2), ("test_masking_80_10_10", 3.5),
          ("test_masking_smoothed_picks_exactly_ceil_by_weight", 3),
          ("test_masking_reproducible_and_input_untouched", 1.5), ("test_masking_random_ids_mask_and_padding", 2)),
         "dynamic masking, 80/10/10, smoothed by weight",
         "Devlin et al. 2019, Sec. 3.1 and Appendix A.1; torch.multinomial and torch.Generator"),
    Part("smoothing", "data.py", "smoothing_weights", 4,
         (("test_smoothing_weights_by_hand", 2), ("test_smoothing_unseen_ids_and_dict_specials", 2)),
         "masking weights count^-0.7", "mask_tokens' weights argument; Lample & Conneau 2019 (XLM), Sec. 3.3"),
    Part("lr_schedule", "machinery/optim.py", "linear_schedule", 4,
         (("test_lr_schedule_warmup_then_decay", 2), ("test_lr_schedule_no_warmup_and_past_the_end", 2)),
         "linear warm-up, linear decay", "where train.py builds its LambdaLR; Devlin et al. 2019, Appendix A.2"),
    Part("denominators", "train.py", "forward_backward", 10,
         (("test_denominators_give_the_gradient_of_one_big_batch", 4), ("test_denominators_ce_on_masked_positions", 3),
          ("test_denominators_over_two_ranks", 3)),
         "gradient accumulation: the step's token counts", "train.Objective (its denoms argument)"),
    Part("ptp", "peakd.py", "ptp_labels", 6,
         (("test_ptp_labels_four_classes", 3.5), ("test_ptp_labels_three_classes_from_logits", 2.5)),
         "Pea-KD's PTP labels: right/wrong x confident/unsure", "Cho & Kang 2020 (Pea-KD), Sec. 3.2"),
    Part("pkd", "losses.py", "pkd_loss", 9,
         (("test_pkd_loss_equals_eq_7", 4), ("test_pkd_loss_without_layers_has_no_patient_term", 2.5),
          ("test_pkd_loss_teacher_states_detached", 2.5)),
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


AST_LOCK = threading.Lock()


def parse(text, filename="<unknown>"):
    """ast.parse, one thread at a time: CPython 3.11's conversion to Python objects keeps its recursion depth
    in state shared by threads, and two parses at once can fail with "AST constructor recursion depth
    mismatch" (grading runs parts in threads)."""
    with AST_LOCK:
        return ast.parse(text, filename=filename)


def code_lines(lines):
    return [ln for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def functions(text, path):
    """{qualified name: (first, last)} 0-based lines of every function (decorators included), methods as
    Class.method."""
    try:
        tree = parse(text, str(path))
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
    for p in PARTS:
        if abs(sum(points for _, points in p.tests) - p.points) > 1e-9 or any(w <= 0 for _, w in p.tests):
            raise AssignmentError(f"assignment.PARTS: the tests of part {p.name!r} are worth "
                                  f"{sum(points for _, points in p.tests):g} points, not its {p.points}")
    modules = {n for n in graded_files(root) if n.endswith(".py") and not n.startswith("tests/")}
    sources = sorted({p.file for p in PARTS} | modules)
    table = {f: check_file(root, f, [p for p in PARTS if p.file == f]) for f in sources}
    tests_text = (root / TESTS).read_text()
    regions(tests_text, TESTS, BEGIN_HIDDEN, END_HIDDEN, "HIDDEN TESTS")
    defined = {n for n in functions(tests_text, TESTS) if n.startswith("test_") and "." not in n}
    listed = [t for p in PARTS for t in p.names]
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
    tree, lines = parse(text), text.splitlines()
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
    def here(p):
        shown = [w for t, w in p.tests if t in visible]
        return f"{len(shown)} of {len(p.tests)} tests, {sum(shown):g} of its {p.points} points, here"
    rows = "\n".join(f"| {p.name} | {p.file} | `{p.function}` | {p.points} | {p.what} | {p.read} | "
                     f"`python assignment.py check {p.name}` ({here(p)}) |" for p in parts)
    return f"""# The assignment: {len(parts)} parts, {sum(p.points for p in parts)} points

Write each function below where its `# YOUR CODE HERE` stands; the comment lines above it are the steps, and
the docstring says what comes in and what goes out: every requirement a test checks, visible or hidden, is
written there. Grading takes each function alone and puts it into a copy of this project where every other
part is blank, so write imports and helpers inside the function; `check` does the same, so what passes there
passes at grading.

Check your work in your own tree; it needs only `pip install -r requirements.txt` (no pytest, no transformers)
and runs on Linux, macOS and Windows:

```bash
python assignment.py check kl        # one part's visible tests: ok / FAIL, expected beside actual, points
python assignment.py check all       # every part
python assignment.py parts           # the table below
```

The visible tests are in `tests/test_parts.py` (what they run in your code's process is in
`tests/parts_probes.py`); each part has hidden tests too, run at grading. Each test has its points (the parts
table in `assignment.py`). Changing the tests changes nothing at grading: the grader uses its own. At grading
your code runs in a process of its own, as another user, without network, with limits on memory, time and
processes. The rest of the project (the quickstart, training, notebooks, the other tests) runs once the parts
it uses are done.

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
    graded = sorted({p.file for p in PARTS})
    out[MANIFEST] = (json.dumps({
        "format": "distilbert-from-scratch/assignment", "version": 3, "lean": lean,
        "parts": {p.name: {"file": p.file, "function": p.function, "points": p.points, "tests": len(p.tests)}
                  for p in PARTS},
        "top_level": {f: top_level(out[f].decode()) for f in graded},
        # the hand-out's graded files: `check` puts the student's functions into these, as grading does
        "base": {f: out[f].decode() for f in graded},
        "files": sorted(out),
    }, indent=2) + "\n").encode()
    return out


def visible_table(text, visible):
    """This file with the parts table listing only the visible tests: the hidden ones' names say what they
    check."""
    rows = []
    for p in PARTS:
        tests = tuple((t, w) for t, w in p.tests if t in visible)
        rows.append(f"    Part({p.name!r}, {p.file!r}, {p.function!r}, {p.points},\n         {tests!r},\n"
                    f"         {p.what!r},\n         {p.read!r}),\n")
    start, end = text.index("PARTS = (\n") + len("PARTS = (\n"), text.index(")\nBY_NAME = ")
    return text[:start] + "".join(rows) + text[end:]


def top_level(text):
    """The names a module defines at its top level (imports, functions, classes, assignments)."""
    names = set()
    for node in parse(text).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return sorted(names)




# ------------------------------------------------------------------------------------------------------------
# Running a part's tests: the tests here, the student's code in a worker (course/sandbox.py)

PER_CALL = 10.0  # seconds a test's call into the student's code may take (the reference's take milliseconds)
SUITE = (TESTS, REFERENCE_DATA)  # the grader's half of a tree: the tests and their data, never in a worker


def graded_files(root=ROOT) -> dict:
    """{name: bytes} of what the graded tests need from a tree: the project's Python modules (not the other
    tests, the notebooks or the grading tooling), the graded tests, their probes and their data."""
    root = Path(root)
    try:
        names = project_files(root)
    except AssignmentError:  # a bare copy of the sources (the tooling's own tests make those)
        names = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                 and not {".git", ".venv", "venv", "__pycache__", "out"} & set(p.relative_to(root).parts)]
    keep = lambda n: n in (TESTS, PROBES, REFERENCE_DATA) or n.endswith(".py") and n != "assignment.py" and \
        not n.startswith(("tests/", "notebooks/", "docs/", "course/"))
    return {n: (root / n).read_bytes() for n in names if keep(n)}


def worker_files(files):
    """What the student's process gets of a tree: the modules and the probes; not the tests or their data."""
    return {n: data for n, data in files.items() if n not in SUITE and not n.startswith("sanity/")}


class Suite:
    """The tests of a tree (tests/test_parts.py and its data), loaded in this process: a fresh module for each
    run, whose `student` is that run's worker."""

    def __init__(self, files):
        self.folder = Path(tempfile.mkdtemp(prefix="assignment-tests-"))
        for name in SUITE:
            if name in files:
                (self.folder / name).parent.mkdir(parents=True, exist_ok=True)
                (self.folder / name).write_bytes(files[name])
        text = files[TESTS].decode()
        self.hidden = set(functions(text, TESTS)) - set(functions(without_hidden_tests(text, TESTS), TESTS))
        self.count, self.lock = 0, threading.Lock()

    def module(self):
        with self.lock:
            self.count += 1
            name = f"graded_tests_{self.count}"
        spec = importlib.util.spec_from_file_location(name, self.folder / TESTS)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    def close(self):
        shutil.rmtree(self.folder, ignore_errors=True)


def run_tests(files, names, suite=None, contained=None, limits=None) -> dict:
    """{test: None (passed) or why it failed, in one line} for tests of tests/test_parts.py: the tests run
    here, each call into the student's code goes to one worker that holds worker_files(files) (visible tests
    first, then hidden ones; a worker that ends or hangs is replaced for the next test). suite: the tests, if
    not those of files."""
    own, contained = suite is None, sandbox.LINUX if contained is None else contained
    suite = suite or Suite(files)
    results, order = {}, sorted(names, key=lambda n: n in suite.hidden)
    try:
        module = suite.module()
    except BaseException as e:
        return {n: f"importing the tests failed: {wire.one_line(e)}" for n in names}
    try:
        worker = sandbox.Worker(worker_files(files), limits=limits, contained=contained, timeout=PER_CALL)
    except OSError as e:
        if own:
            suite.close()
        return {n: f"no test process: {e}" for n in names}
    try:
        module.student = worker.student
        for n in order:
            test = getattr(module, n, None)
            if worker.broken:
                results[n] = worker.broken
            elif test is None:
                results[n] = f"not in {TESTS}"
            else:
                results[n] = run_one(test, worker)
    finally:
        worker.close()
        if own:
            suite.close()
    return {n: results[n] for n in names}


def run_one(test, worker):
    try:
        test()
        return None
    except wire.Ended as e:
        code = worker.stop()
        how = f"killed by signal {code - 128}" if isinstance(code, int) and code > 128 else \
            "killed at the time limit" if code == 124 else f"exit code {code}"
        worker.start()
        return f"the test process ended during this test ({e}; {how})"
    except wire.Raised as e:
        return str(e)
    except Exception as e:  # an assertion, or what came back could not be used as the test expects
        return wire.one_line(e)


def in_parallel(jobs, workers=2):
    """[f() for f in jobs], `workers` at a time (the machines have two cores)."""
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(lambda f: f(), jobs))


# ------------------------------------------------------------------------------------------------------------
# The kit and make

KIT_EXTRAS = {  # the kit's own files: Gradescope's autograder layout (zip the kit's contents and upload them)
    "setup.sh": """#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder's image.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m pip install -r requirements.txt
""",
    "run_autograder": """#!/usr/bin/env bash
# Gradescope runs this for each submission: /autograder/source is the kit, /autograder/submission the upload.
set -euo pipefail
AG="${AUTOGRADER:-/autograder}"
mkdir -p "$AG/results"
cd "$AG/source"
META=()
if [ -f "$AG/submission_metadata.json" ]; then META=(--metadata "$AG/submission_metadata.json"); fi
python3 assignment.py grade --kit . "$AG/submission" --gradescope "$AG/results/results.json" "${META[@]}"
""",
}


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


def write_kit(kit, parts, files, visible, root=ROOT):
    def write(tmp):
        for name, data in files.items():
            (tmp / "tree" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / "tree" / name).write_bytes(data)
        shutil.copy(Path(__file__).resolve(), tmp / "assignment.py")
        shutil.copytree(Path(sandbox.__file__).resolve().parent, tmp / "course",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(Path(root) / "requirements.txt", tmp / "requirements.txt")
        for name, text in KIT_EXTRAS.items():
            (tmp / name).write_text(text)
            os.chmod(tmp / name, 0o755)
        (tmp / KIT_MANIFEST).write_text(json.dumps({
            "format": "distilbert-from-scratch/kit", "version": 2,
            "parts": [dataclasses.asdict(p) for p in parts], "visible": visible}, indent=2) + "\n")
    write_new(kit, write)


def load_kit(kit):
    kit = Path(kit)
    path = kit / KIT_MANIFEST
    if not path.is_file():
        raise AssignmentError(f"{path}: no such file; `make OUT --kit KIT` writes a kit")
    try:
        meta = json.loads(path.read_text())
        assert meta["format"] == "distilbert-from-scratch/kit" and meta.get("version") == 2, \
            f"{meta['format']} version {meta.get('version')}"
        parts = tuple(Part(**{**p, "tests": tuple((t, w) for t, w in p["tests"])}) for p in meta["parts"])
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        raise AssignmentError(f"{path}: not a grading kit of this grader ({wire.one_line(e)})") from None
    files = {str(p.relative_to(kit / "tree")): p.read_bytes() for p in (kit / "tree").rglob("*") if p.is_file()
             and "__pycache__" not in p.parts}
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


def validate(root=ROOT, parts=None):
    """The reference passes every graded test, with the visible data and with the grading data; with every
    part blanked every test fails; each part's solution alone, every other part blanked, passes all of its
    tests. Returns lines to print; raises AssignmentError on the first part that breaks this."""
    root, parts = Path(root), parts or PARTS
    ref, base = graded_files(root), base_files(root, parts)
    every = [t for p in parts for t in p.names]
    trees = {"the reference": ref}
    if (root / GRADING_DATA).is_file():
        trees[f"the reference with {GRADING_DATA}"] = {**ref, REFERENCE_DATA: (root / GRADING_DATA).read_bytes()}
    alone = [combined(base, p, student_function(root, p)[0]) for p in parts]
    start = time.time()
    jobs = [lambda f=f: run_tests(f, every) for f in (*trees.values(), base)]
    results = in_parallel(jobs + [lambda f=f, p=p: run_tests(f, p.names) for f, p in zip(alone, parts)])
    for what, res in zip(trees, results):
        failed = [t for t, why in res.items() if why]
        if failed:
            raise AssignmentError(f"{what} fails {failed[0]}: {res[failed[0]]}")
    lines, blanked = [], results[len(trees)]
    for part, res in zip(parts, results[len(trees) + 1:]):
        passing = [t for t in part.names if blanked[t] is None]
        if passing:
            raise AssignmentError(f"part {part.name}: blanked, its test {passing[0]} still passes")
        failing = [t for t in part.names if res[t] is not None]
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
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
            if os.access(root / name, os.X_OK) and (root / name).is_file():
                os.chmod(tmp / name, 0o755)
    write_new(out, write)
    print(f"{out}: the student version, {len(files)} files, {len(PARTS)} parts, "
          f"{sum(p.points for p in PARTS)} points{', lean' if lean else ''}")
    if kit:
        write_kit(kit, *made, root=root)
        print(f"{kit}: the grading kit, no solutions: grade with "
              f"python {kit / 'assignment.py'} grade --kit {kit} SUBMISSION...")
    print("\n".join(report))


# ------------------------------------------------------------------------------------------------------------
# grade

SUSPECT = ("sys.argv", "_exit", "sys.modules", "torch.testing", "__class__", "__subclasses__", "gc.", "inspect",
           "_getframe", "f_back", "f_globals", "open(", "exec(", "eval(", "compile(", "subprocess", "safetensors",
           "load_file", "__import__", "importlib", "globals(", "setattr(", "getattr(", "builtins", "signal",
           "__closure__", "__code__", "os.environ", "Path(", "__file__", "atexit", "sys.stdout", "os.write",
           "os.dup", "__eq__", "__torch_function__", "from_file", "socket", "multiprocessing", "ctypes", "fork",
           "spawn", "TCPStore", "torch.save", "save_file", "os.", "chr(", "bytes(", "base64", "codecs")
# a name that starts a word matches only where no letter, digit, _ or . comes before it (".eval()" is no eval()
SUSPECT_RE = [(s, re.compile((r"(?<![\w.])" if s[0].isalpha() else "") + re.escape(s))) for s in SUSPECT]
MAX_FILE = 2 << 20  # bytes of a graded file: more is refused


class Refused(AssignmentError):
    """A submission's file that is not graded (a link out of the submission, not a file, too large)."""


def read_submitted(dir, name):
    """The bytes of dir/name, a regular file inside dir: a symbolic link that leaves the submission (another
    student's file), a folder, a device or a file over 2 MB is refused with one line."""
    dir = Path(dir)
    path = dir / name
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f"{name} is missing")
    real, home = path.resolve(), dir.resolve()
    if home not in real.parents:
        raise Refused(f"{name} is a link to {real}, outside the submission: refused")
    info = os.stat(real)
    if not stat.S_ISREG(info.st_mode):
        raise Refused(f"{name} is not a regular file: refused")
    if info.st_size > MAX_FILE:
        raise Refused(f"{name} has {info.st_size:,} bytes, over {MAX_FILE:,}: refused")
    with open(real, "rb") as f:
        return f.read(MAX_FILE + 1)


def student_function(dir, part):
    """The lines of part.function in the student's file, or the reason there are none."""
    try:
        text = read_submitted(dir, part.file).decode(errors="replace")
    except (OSError, Refused) as e:
        return None, str(e) if isinstance(e, Refused) or isinstance(e, FileNotFoundError) else wire.one_line(e)
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


def submitted_hash(dir, parts):
    """sha256 over the submission's graded files (names and contents)."""
    h = hashlib.sha256()
    for file in sorted({p.file for p in parts}):
        try:
            data = read_submitted(dir, file)
        except (OSError, Refused) as e:
            data = f"({e})".encode()
        h.update(f"{file}\0".encode() + data + b"\0")
    return h.hexdigest()


def notes(dir, parts):
    """What to read: graded functions that use names a solution has no need of (a hint, not a defence: the
    containment is), and files refused."""
    out = []
    for file in sorted({p.file for p in parts}):
        try:
            read_submitted(dir, file)
        except Refused as e:
            out.append(f"{e} (its parts score 0)")
        except OSError:
            pass
    for p in parts:
        lines, _ = student_function(dir, p)
        code = "\n".join(lines or [])
        found = [s for s, pattern in SUSPECT_RE if pattern.search(code)]
        if found:
            out.append(f"{p.name}: {p.function} uses {', '.join(found)}: read it")
    return out


def changed_tests(dir, visible_text):
    """The graded tests file, if the submission's differs from the hand-out's (it is not used in grading)."""
    try:
        text = read_submitted(dir, TESTS).decode(errors="replace")
    except (OSError, Refused):
        return [f"{TESTS} (missing)"]
    return [] if text == visible_text else [f"{TESTS} (changed)"]


def grade_all(dirs, kit=None, root=ROOT, jobs=2, only=None, deadline=None, metadata=None, contained=True):
    """(parts, [report]) for the submission folders: every (submission, part) pair graded by a worker of its
    own, `jobs` at a time. kit: a kit folder, else the kit is made from the instructor's tree root."""
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
    meta = gradebook.read_metadata(metadata) if metadata else None
    if deadline is None and meta and (meta.get("assignment") or {}).get("due_date"):
        deadline = gradebook.parse_time(meta["assignment"]["due_date"], "submission_metadata.json due_date")
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
    for i, (d, (folder, where)) in enumerate(zip(dirs, found)):
        graded = {}
        for (j, part), res in zip(pairs, results):
            if j != i:
                continue
            tests = {t: {"points": 0 if res[t] else w, "max": w, "hidden": t not in visible, "failed": res[t]}
                     for t, w in part.tests}
            graded[part.name] = {"file": part.file, "function": part.function, "max": part.points,
                                 "points": round(sum(r["points"] for r in tests.values()), 2),
                                 "passed": sum(not r["failed"] for r in tests.values()), "count": len(tests),
                                 "tests": tests}
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


def grade_command(a):
    contained = not a.uncontained
    if contained and not sandbox.LINUX:
        raise AssignmentError(f"grade: the containment of student code needs Linux (namespaces, another user, "
                              f"limits); on {sys.platform} it would run as you: grade on Linux (a VM, a container, "
                              f"or Gradescope with the kit's run_autograder), or pass --uncontained")
    deadline = gradebook.parse_time(a.deadline) if a.deadline else None
    parts, reports = grade_all(a.submissions, kit=a.kit, jobs=a.jobs, only=a.part, deadline=deadline,
                               metadata=a.metadata, contained=contained)
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


# ------------------------------------------------------------------------------------------------------------
# check and parts

def check_files(root):
    """(the tree `check` runs, notes, {part: why it cannot run}): in a student version, the hand-out's graded
    files with the student's functions put in one by one, as grading does (a helper or an import added outside
    a function is missing here too, and a file that does not parse costs its parts); in the instructor's tree,
    the tree as it is."""
    files = graded_files(root)
    manifest = root / MANIFEST
    if not manifest.is_file():
        return files, [], {}
    base = json.loads(manifest.read_text()).get("base", {})
    lines, reasons = [], {}
    for file in sorted({p.file for p in PARTS} & set(base)):
        text = base[file].encode()
        for p in (p for p in PARTS if p.file == file):
            mine, why = student_function(root, p)
            try:
                text = combined({file: text}, p, mine)[file] if mine is not None else text
            except AssignmentError as e:
                why = str(e)
            if why:
                reasons[p.name] = why
        files[file] = text
        try:
            added = sorted(set(top_level((root / file).read_text())) - set(top_level(base[file])))
        except (OSError, SyntaxError):
            added = []
        if added:
            lines.append(f"note: {file} defines {', '.join(added)} outside the graded functions: grading (and "
                         f"this check) takes each graded function alone, so put imports and helpers inside it")
    return files, lines, reasons


def check(name, root=ROOT):
    """Run the visible tests of one part (or all) in this tree, as grading runs them (a process of its own, the
    student's functions alone); returns the number of failures."""
    root = Path(root)
    names = list(BY_NAME) if name == "all" else [name]
    if any(n not in BY_NAME for n in names):
        raise AssignmentError(f"unknown part {name!r}: choose from {', '.join(BY_NAME)} or all")
    visible = visible_tests(root)
    counts = {}
    if (root / MANIFEST).is_file():  # the student version: how many tests each part has at grading
        recorded = json.loads((root / MANIFEST).read_text()).get("parts", {})
        counts = {n: p.get("tests") for n, p in recorded.items()}
    files, lines, reasons = check_files(root)
    runnable = [t for n in names if n not in reasons for t in BY_NAME[n].names if t in visible]
    res = run_tests(files, runnable, contained=False) if runnable else {}
    res.update({t: reasons[n] for n in names if n in reasons for t in BY_NAME[n].names if t in visible})
    for line in lines:
        print(line)
    points = 0.0
    for n in names:
        part = BY_NAME[n]
        mine = [(t, w) for t, w in part.tests if t in visible]
        got = sum(w for t, w in mine if res[t] is None)
        hidden = (counts.get(n) or len(part.tests)) - len(mine)
        points += got
        print(f"{n}: {sum(res[t] is None for t, _ in mine)}/{len(mine)} visible tests pass ({part.file}, "
              f"{part.function}): {round(got, 2):g} of its {part.points} points so far; hidden tests at grading: "
              f"{hidden} ({part.points - sum(w for _, w in mine):g} points)")
        for t, w in mine:
            print(f"  {'ok  ' if res[t] is None else 'FAIL'} {t} ({w:g})" + (f": {res[t]}" if res[t] else ""))
    if len(names) > 1:
        print(f"all: {round(points, 2):g} of {sum(BY_NAME[n].points for n in names)} points from the visible tests")
    return sum(why is not None for why in res.values())


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
        "Grades each SUBMISSION folder (its name is the student's id) part by part: each part's function alone "
        "in a contained process of its own, with the kit's tests (hidden ones too) and data; without --kit, "
        "from this instructor's tree."))
    g.add_argument("submissions", nargs="+", metavar="SUBMISSION")
    g.add_argument("--kit", metavar="KIT", help="the grading kit that `make --kit` wrote")
    g.add_argument("--csv", metavar="FILE", help="the gradebook: one row per submission (history in "
                   "FILE's .history.jsonl)")
    g.add_argument("--reports", metavar="DIR", help="ID.json and ID.md per submission (default: reports/ beside "
                   "the CSV)")
    g.add_argument("--json", metavar="FILE", help="one submission's report as JSON")
    g.add_argument("--gradescope", metavar="FILE", help="one submission's results.json in Gradescope's "
                   "autograder format")
    g.add_argument("--gradescope-hidden", default="after_published", choices=gradebook.VISIBILITIES,
                   help="the visibility of hidden tests in --gradescope (default after_published)")
    g.add_argument("--deadline", metavar="TIME", help="the due time (ISO 8601, e.g. 2026-03-01T23:59:00+01:00; "
                   "UTC without an offset): a later submission is marked late")
    g.add_argument("--metadata", metavar="FILE", help="Gradescope's submission_metadata.json: the submission "
                   "time and the due date")
    g.add_argument("--jobs", type=int, default=2, metavar="N", help="parts graded at a time (default 2)")
    g.add_argument("--part", metavar="NAME", help="grade this part only, merged into the earlier reports")
    g.add_argument("--hide-hidden", action="store_true", help="name no hidden test: \"a hidden test failed\"")
    g.add_argument("--uncontained", action="store_true", help="run student code without containment (not on "
                   "Linux: it then runs as you, with your files and network)")
    c = sub.add_parser("check", help="run a part's visible tests in this tree", description=(
        "Runs the visible tests of PART (or all) in this tree, as grading runs them: ok / FAIL with expected "
        "and actual values, and the points they are worth. Linux, macOS and Windows."))
    c.add_argument("part", metavar="PART")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
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
    except (AssignmentError, gradebook.BookError, OSError, ValueError) as e:
        print(f"assignment: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
