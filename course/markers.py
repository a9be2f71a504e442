"""
The markers in the instructor's files and what they delimit: `### BEGIN SOLUTION: N lines` / `### END SOLUTION`
inside each graded function (the solution; the student version keeps its comment lines as the steps) and
`### BEGIN HIDDEN TESTS` / `### END HIDDEN TESTS` in tests/test_parts.py (left out of the hand-out). Every
function here reads text and returns text or line spans; `check_table` checks the markers against the parts table.
"""
import ast
import re
import threading

from course.parts import PARTS, ROOT, TESTS, AssignmentError
from course.tree import graded_files

BEGIN = re.compile(r"^(\s*)### BEGIN SOLUTION: (\d+) lines?\s*$")
END = re.compile(r"^\s*### END SOLUTION\s*$")
BEGIN_HIDDEN = re.compile(r"^### BEGIN HIDDEN TESTS\s*$")
END_HIDDEN = re.compile(r"^### END HIDDEN TESTS\s*$")
ANY_MARKER = re.compile(r"^\s*### (BEGIN|END) (SOLUTION|HIDDEN TESTS)")


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
                                  f"parts table (course/parts.py)")
        if name in found:
            raise AssignmentError(f"{file}:{span[0] + 1}: a second solution region in {name} (one per part)")
        found[name] = span
    for p in parts:
        if p.function not in spans:
            raise AssignmentError(f"{file}: no function {p.function} (part {p.name!r} of course.parts.PARTS)")
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
        raise AssignmentError("course.parts.PARTS: two parts with the same name")
    if sum(p.points for p in PARTS) != 100:
        raise AssignmentError(f"course.parts.PARTS: the points add up to {sum(p.points for p in PARTS)}, "
                              f"not 100")
    for p in PARTS:
        if abs(sum(points for _, points in p.tests) - p.points) > 1e-9 or any(w <= 0 for _, w in p.tests):
            raise AssignmentError(f"course.parts.PARTS: the tests of part {p.name!r} are worth "
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
            raise AssignmentError(f"{TESTS}: no test {t} (listed in course.parts.PARTS)")
    if len(set(listed)) != len(listed):
        raise AssignmentError("course.parts.PARTS: a test is listed in two parts")
    if defined - set(listed):
        raise AssignmentError(f"{TESTS}: {sorted(defined - set(listed))[0]} belongs to no part of "
                              f"course.parts.PARTS")
    return table


def visible_tests(root=ROOT):
    text = without_hidden_tests((root / TESTS).read_text(), TESTS)
    return {n for n in functions(text, TESTS) if n.startswith("test_") and "." not in n}


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


