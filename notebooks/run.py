"""Execute the notebooks in order and store their outputs in them: `python notebooks/run.py [name ...]`.

Each notebook runs top to bottom in a fresh kernel (working folder notebooks/), and is written back only when
every cell ran without an error: to a temporary file beside it first, then renamed over the original. The run
stops at the first notebook with an error, which is printed, and exits with status 1.

The last paragraph of each notebook's first cell, the one that starts with RUN_LINE, is rewritten with the
machine, the torch version, the seconds (wall clock and CPU), the load and the date of this run, and a hash of
the code that ran (`code_hash`: the code cells and the notebooks/ modules they import), so that what it says is
true by construction and tests/test_notebooks.py can tell stored outputs from code changed since. The notebooks
of one run share a scratch folder (NOTEBOOK_WORK: the prepared corpus, the teacher's fitted head, the SST-2
fine-tunings that notebooks 05 and 06 share), removed at the end unless NOTEBOOK_WORK was given; a notebook run
alone (in Jupyter) makes its own. Seeds are fixed in the notebooks, so a second run prints the same numbers, up
to the last digits of float sums on another machine.

Notebook 04 trains nothing: it reads a finished quickstart (../out/quickstart, or NOTEBOOK_QUICKSTART) or else
notebooks/quickstart_record.json, which `python notebooks/quickstart_view.py FOLDER` writes from one.
"""
import datetime
import hashlib
import os
import platform
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).resolve().parent
RUN_LINE = "*Stored outputs:"


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def execute(path, timeout=1800):
    """Runs the notebook at `path` in a fresh kernel; returns (the executed notebook, seconds, CPU seconds).
    Raises CellExecutionError on the first cell that fails."""
    # torch imports tqdm, which warns inside a kernel without ipywidgets: noise, not a result
    os.environ.setdefault("PYTHONWARNINGS", "ignore:IProgress not found")
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(Path(path).parent)}})
    t0, cpu0 = time.time(), children_cpu()
    client.execute()  # the kernel is shut down and waited for at the end, so its CPU time is counted
    return nb, time.time() - t0, children_cpu() - cpu0


def children_cpu():
    """CPU seconds (user + system) of this process's finished children: the kernels and what they ran."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def helpers(source, folder=HERE, seen=None) -> list:
    """The modules of `folder` (notebooks/) that `source` imports, and theirs, in a fixed order."""
    seen = [] if seen is None else seen
    for name in re.findall(r"^\s*(?:from|import)\s+(\w+)", source, flags=re.M):
        path = Path(folder) / f"{name}.py"
        if path.is_file() and path not in seen:
            seen.append(path)
            helpers(path.read_text(encoding="utf-8"), folder, seen)
    return seen


def code_hash(nb, folder=HERE) -> str:
    """The first 12 hex digits of the sha256 of the notebook's code cells and of the notebooks/ modules they
    import: what decides its outputs, apart from the library and the data."""
    code = "\n\n".join(c.source for c in nb.cells if c.cell_type == "code")
    digest = hashlib.sha256(code.encode())
    for path in helpers(code, folder):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def run_line(seconds, cpu, load, code=""):
    import torch
    shared = f" (above {cores()}, other jobs shared the cores)" if load > cores() else ""
    return (f"{RUN_LINE} `python notebooks/run.py` ran this notebook in {seconds:.0f} s "
            f"({cpu:.0f} CPU-seconds) on {datetime.date.today().isoformat()}: {cpu_name()}, {cores()} cores, "
            f"load average {load:.1f} at the start{shared}, torch {torch.__version__}, "
            f"Python {platform.python_version()}; code {code}.*")


def stamp(nb, line):
    """Replaces (or appends) the RUN_LINE paragraph of the first cell."""
    first = nb.cells[0]
    kept = first.source.split("\n\n" + RUN_LINE)[0].rstrip()
    first.source = kept + "\n\n" + line


def write_atomic(nb, path):
    fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix="." + Path(path).name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            nbformat.write(nb, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(names):
    paths = [HERE / n if (HERE / n).is_file() else HERE / f"{n}.ipynb" for n in names] if names else \
        sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"no such notebook: {', '.join(missing)}")
    given = os.environ.get("NOTEBOOK_WORK")
    work = given or tempfile.mkdtemp(prefix="distilbert-notebooks-")
    saved = dict(os.environ)
    os.environ["NOTEBOOK_WORK"] = work      # the kernels inherit it
    os.environ.setdefault("PYTHONHASHSEED", "0")
    total = total_cpu = 0.0
    try:
        for path in paths:
            load = os.getloadavg()[0]
            print(f"{path.name}: running (load average {load:.1f})", flush=True)
            try:
                nb, seconds, cpu = execute(path)
            except CellExecutionError as e:
                print(f"{path.name}: a cell failed, the notebook is left as it was\n{e}", file=sys.stderr)
                return 1
            stamp(nb, run_line(seconds, cpu, load, code_hash(nb, path.parent)))
            write_atomic(nb, path)
            total, total_cpu = total + seconds, total_cpu + cpu
            print(f"{path.name}: {seconds:.0f} s ({cpu:.0f} CPU-seconds), written", flush=True)
    finally:
        os.environ.clear(); os.environ.update(saved)
        if not given:
            shutil.rmtree(work, ignore_errors=True)
    print(f"all {len(paths)} notebooks in {total:.0f} s ({total_cpu:.0f} CPU-seconds)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
