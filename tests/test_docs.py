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
