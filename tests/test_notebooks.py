"""The notebooks are part of the lesson, so they are tested like code: each runs top to bottom on CPU (slow:
with NOTEBOOK_QUICK=1, the same code on fewer steps), and each is committed with its outputs stored."""
import sys
from pathlib import Path

import nbformat
import pytest

FOLDER = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(FOLDER.glob("[0-9][0-9]_*.ipynb"))
sys.path.insert(0, str(FOLDER))
import run  # noqa: E402  (notebooks/run.py)


@pytest.fixture(scope="module")
def shared_work(tmp_path_factory):
    """One scratch folder for the module, as run.py gives one run: the corpus and the teacher's head are made
    once."""
    mp = pytest.MonkeyPatch()
    mp.setenv("NOTEBOOK_WORK", str(tmp_path_factory.mktemp("notebooks")))
    mp.setenv("NOTEBOOK_QUICK", "1")
    yield
    mp.undo()


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, shared_work):
    nb, _, _ = run.execute(path)  # raises CellExecutionError on the first cell that fails
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.output_type == "error"]
    assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_outputs_stored(path):
    """Every code cell has an output (or the tag "silent"), at least one figure is stored as a PNG, and the
    first cell says where and how long the run took (notebooks/run.py writes that line)."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    silent = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and not c.outputs
              and "silent" not in c.metadata.get("tags", [])]   # a cell of imports may be tagged silent
    assert not silent, f"code cells without outputs: {silent} (run python notebooks/run.py)"
    assert all(o.output_type != "error" for c in code for o in c.outputs)
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs), "no figure stored"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and run.RUN_LINE + " `python notebooks/run.py` ran" in first.source


def test_stamp_replaces_the_run_line():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Title\n\ntext")])
    run.stamp(nb, run.RUN_LINE + " first*")
    run.stamp(nb, run.RUN_LINE + " second*")
    assert nb.cells[0].source == "# Title\n\ntext\n\n" + run.RUN_LINE + " second*"


def test_a_failing_notebook_is_left_as_it_was(tmp_path, monkeypatch, capsys):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# x"),
                                         nbformat.v4.new_code_cell("raise ValueError('boom')")])
    path = tmp_path / "99_fails.ipynb"
    nbformat.write(nb, path)
    before = path.read_bytes()
    monkeypatch.setattr(run, "HERE", tmp_path)
    assert run.main(["99_fails"]) == 1
    assert path.read_bytes() == before
    assert "boom" in capsys.readouterr().err
