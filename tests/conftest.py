import contextlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (a machine shared with other jobs makes several threads much slower);
    the setting is restored after the module."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@contextlib.contextmanager
def lock_held_by_another_process(lock, path, kill=False):
    """A child process that holds `lock` ("module.function", a context manager taking a Path) on `path` until
    the block ends (then it leaves, or with kill is killed: its lock file stays, its flock goes); yields the
    child's pid."""
    module = lock.rpartition(".")[0]
    holder = subprocess.Popen([sys.executable, "-c", f"import sys, {module}; from pathlib import Path\n"
                               f"with {lock}(Path(sys.argv[1])):\n print('held', flush=True)\n sys.stdin.read()",
                               str(path)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        if kill:
            holder.kill()
        holder.communicate("", timeout=30)
