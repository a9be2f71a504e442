"""
The student version (the hand-out) of the instructor's tree: every file git tracks except the instructor's,
each graded function's solution blanked to its steps, the hidden tests left out, the README's instructor
sections replaced by HANDOUT.md, course/parts.py listing only the visible tests, and a manifest
(assignment.json) that `check` reads. The hand-out keeps this package, so a student checks a part with
`python -m course check PART` in the hand-out's root: no entry script of its own is needed.
"""
import ast
import json
import re
from pathlib import Path

from course.markers import blank, check_table, functions, parse, visible_tests, without_hidden_tests
from course.parts import INSTRUCTOR_ONLY, LEAN, MANIFEST, PARTS, ROOT, TESTS, AssignmentError
from course.tree import project_files

PARTS_FILE = "course/parts.py"  # the parts table: handed out with the visible tests only

INSTRUCTOR_SECTIONS = re.compile(r"instructor|course assignment", re.I)  # README sections not handed out


def lean_files(root):
    """LEAN checked against the tree: {file to leave out}, {file: {function to blank}}."""
    out, blanks = set(), {}
    for where, _ in LEAN:
        file, _, function = where.partition(":")
        if not (root / file).is_file():
            raise AssignmentError(f"course.parts.LEAN: {file} is not in {root}")
        if function:
            if function not in functions((root / file).read_text(), file):
                raise AssignmentError(f"course.parts.LEAN: {file} has no function {function}")
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
                     f"`python -m course check {p.name}` ({here(p)}) |" for p in parts)
    return f"""# The assignment: {len(parts)} parts, {sum(p.points for p in parts)} points

Write each function below where its `# YOUR CODE HERE` stands; the comment lines above it are the steps, and
the docstring says what comes in and what goes out: every requirement a test checks, visible or hidden, is
written there. Grading takes each function alone and puts it into a copy of this project where every other
part is blank, so write imports and helpers inside the function; `check` does the same, so what passes there
passes at grading.

Check your work in your own tree; it needs only `pip install -r requirements.txt` (no pytest, no transformers)
and runs on Linux, macOS and Windows:

```bash
python -m course check kl        # one part's visible tests: ok / FAIL, expected beside actual, points
python -m course check all       # every part
python -m course parts           # the table below
```

The visible tests are in `tests/test_parts.py` (what they run in your code's process is in
`tests/parts_probes.py`); each part has hidden tests too, run at grading. Each test has its points (the parts
table in `course/parts.py`). Changing the tests changes nothing at grading: the grader uses its own. At grading
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
        elif name == PARTS_FILE:
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

