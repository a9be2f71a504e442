"""The README and docs/ as a user meets them: the README short, its links and the files it names present, no
commit hashes or issue numbers in the pages users read, and the tables that commands write into docs/ written
between their markers only."""
import re
from pathlib import Path

import pytest

from machinery.files import write_region

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
USER_PAGES = [p for p in PAGES if p.name != "log.md"]  # the dated measurement log may name what it compares


def test_readme_is_short_and_has_exactly_two_setup_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    setup = [line for line in text.splitlines() if line.startswith("python3 -m venv .venv")]
    assert len(setup) == 2 and setup[0].endswith("python quickstart.py")
    assert (ROOT / ".ci" / "run").read_text().strip().endswith(setup[1].split("pip install ")[1].split(" && ", 1)[1])


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_links_point_at_files_that_exist(page):
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
        if not target.startswith("http"):
            assert (page.parent / target).exists(), f"{page.name}: {target}"


def test_the_file_map_names_files_that_exist():
    text = (ROOT / "README.md").read_text()
    tree = text[text.index("## Files"):].split("```")[1]
    names = re.findall(r"[├└]── ([\w./]+)", tree)
    assert len(names) > 15
    for name in names:
        assert (ROOT / name).exists() or any((ROOT / d / name).exists() for d in ("machinery", "course")), name


@pytest.mark.parametrize("page", USER_PAGES, ids=[p.name for p in USER_PAGES])
def test_no_commit_hashes_or_issue_numbers(page):
    text = page.read_text()
    assert not re.findall(r"(?<![\w/-])#\d+\b", text.replace("transformers issue #1226", ""))
    assert not re.findall(r"\bcommit [0-9a-f]{7,}\b|\b[0-9a-f]{7}\b(?= \()", text)
    assert not re.search(r"\b(our|the development) machines?\b", text, re.I)


def test_write_region_replaces_only_between_the_markers(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("intro\n<!-- begin t -->\nold\n<!-- end t -->\nafter\n")
    write_region(page, "t", "| a |\n|---|\n")
    assert page.read_text() == "intro\n<!-- begin t -->\n| a |\n|---|\n<!-- end t -->\nafter\n"
    (tmp_path / "bare.md").write_text("no markers\n")
    with pytest.raises(ValueError, match="bare.md: no '<!-- begin t -->'"):
        write_region(tmp_path / "bare.md", "t", "x")
    assert (tmp_path / "bare.md").read_text() == "no markers\n"


def commands(page) -> list:
    """The command lines in a page's fenced code blocks (continuation lines joined), `python ...` or `torchrun`,
    without the set-up commands (the README's two are checked above)."""
    found, inside, lines = [], False, page.read_text().replace("\\\n", " ").splitlines()
    for line in lines:
        if line.startswith("```"):
            inside = not inside
            continue
        line = line.split("  #")[0].strip()
        if inside and re.match(r"(python|torchrun) ", line) and not line.startswith(("python3 -m venv", "python -c")):
            found.append(line)
    return found


def program(line) -> tuple:
    """(the argv that runs the command's program with its subcommand, the --keys the line gives), or None for a
    program these tests do not start (a kit the course writes elsewhere)."""
    words = line.split()
    if words[0] == "torchrun":
        words = ["python", next(w for w in words if w.endswith(".py")), *words[words.index(
            next(w for w in words if w.endswith(".py"))) + 1:]]
    argv = words[:3] if words[1] == "-m" else words[:2]
    if not (ROOT / argv[1]).is_file() and not (argv[1] == "-m" and (ROOT / argv[2] / "__main__.py").is_file()):
        return None
    rest = words[len(argv):]
    if rest and not rest[0].startswith("-") and argv[-1] in ("eval.py", "reports", "peakd", "course"):
        argv.append(rest[0])  # the subcommand
    keys = {w[2:].split("=")[0].replace("-", "_") for w in rest if w.startswith("--")}
    return argv, keys - {"help"}


HELP = """
import contextlib, io, json, runpy, sys
out = {}
for argv in json.loads(sys.argv[1]):
    module = argv[0] == "-m"
    sys.argv, text, code = [*(argv[1:] if module else argv), "--help"], io.StringIO(), 0
    with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
        try:
            (runpy.run_module(argv[1], run_name="__main__", alter_sys=True) if module else
             runpy.run_path(argv[0], run_name="__main__"))
        except SystemExit as e:
            code = e.code or 0
    out[" ".join(argv)] = [code, text.getvalue()]
print(json.dumps(out))
"""


def test_every_command_in_the_docs_exists_and_takes_its_settings():
    """Issue 44 moved the commands into packages (python -m finetune, ...): each command a page shows runs its
    program from the checkout (its --help exits 0) and every --key it gives is one the program lists. The --help
    of every program runs in one interpreter (runpy), as `python PROGRAM --help` would."""
    import json
    import subprocess
    import sys
    wanted = {}
    for page in USER_PAGES:
        for line in commands(page):
            found = program(line)
            if found is None:
                assert "kit/grade.py" in line.lower(), f"{page.name}: {line}: no such program in the checkout"
                continue
            argv, keys = found
            wanted.setdefault(tuple(argv[1:]), []).append((page.name, line, keys))
    run = subprocess.run([sys.executable, "-c", HELP, json.dumps([list(a) for a in wanted])], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    helps = json.loads(run.stdout.splitlines()[-1])
    assert len(wanted) >= 8, wanted
    for argv, uses in wanted.items():
        code, text = helps[" ".join(argv)]
        assert code == 0, f"{' '.join(argv)} --help exits {code}: {text[-500:]}"
        for page, line, keys in uses:
            missing = [k for k in keys if f"__{k}" not in text.replace("-", "_")]
            assert not missing, f"{page}: {line}: {missing} not in {' '.join(argv)} --help"
