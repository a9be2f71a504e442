"""The listing shows the design: the lesson's files at the top import no command and no module above them, and
no project module imports another that imports it back, at the top of a file or inside a function."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("machinery", "training", "course", "reproduction", "tasks", "finetune", "reports", "peakd", "corpus",
            "benchmarks")  # the folders beside the lesson
MODULES = {p.stem: p for p in ROOT.glob("*.py")} | {f"{d}.{p.stem}": p for d in PACKAGES
                                                     for p in (ROOT / d).glob("*.py") if p.stem != "__init__"}
MODULES |= {d: ROOT / d / "__init__.py" for d in PACKAGES}  # `import finetune` runs its __init__.py
LESSON = ("model", "losses", "data", "eval", "train")  # each may import those before it


def imports(path, inside_functions=False) -> set:
    """The project modules a file imports (at its top level, or only inside its functions)."""
    found = set()
    tree = ast.parse(path.read_text())
    nodes = [n for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f)] if inside_functions else tree.body
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in MODULES}
    return found


def test_no_import_cycles():
    graph = {m: imports(p) for m, p in MODULES.items()}
    state = {}

    def visit(m, path):
        if state.get(m) == "open":
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if state.get(m) == "done":
            return
        state[m] = "open"
        for n in sorted(graph[m]):
            visit(n, path + [m])
        state[m] = "done"
    for m in sorted(graph):
        visit(m, [])


def test_no_project_imports_inside_functions():
    """An import inside a function is how a cycle hides; course/contain.py's worker is the exception (it imports
    course.worker only once the process is contained)."""
    for m, p in MODULES.items():
        if m not in ("course.contain",):
            assert not imports(p, inside_functions=True), (m, imports(p, inside_functions=True))


def test_the_lesson_imports_only_the_lesson_before_it_and_the_machinery():
    """train.py also reads training/, the set-up of a run, which reads the lesson before train.py."""
    training = {n for n in MODULES if n.startswith("training.")}
    for i, m in enumerate(LESSON):
        allowed = set(LESSON[:i]) | {n for n in MODULES if n.split(".")[0] == "machinery"}
        allowed |= training if m == "train" else set()
        assert imports(MODULES[m]) <= allowed, (m, imports(MODULES[m]) - allowed)
    for m in (n for n in MODULES if n.split(".")[0] == "machinery"):  # the machinery needs only the model's config
        assert imports(MODULES[m]) <= {n for n in MODULES if n.split(".")[0] == "machinery"} | {"model"}, m
    for m in training:
        assert imports(MODULES[m]) <= set(LESSON[:-1]) | training | {n for n in MODULES if n.split(".")[0] == "machinery"}, m
