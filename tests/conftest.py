import contextlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true",
                     help="run the tests marked slow too (notebooks, python -m reproduction, torchrun, the real PyPI "
                          "download, the end-to-end runs): the README's test command and .ci/run do")


def pytest_collection_modifyitems(config, items):
    """Without --slow, the tests marked slow are deselected (not skipped: they are not run at all, and the
    summary says how many were deselected)."""
    if config.getoption("--slow"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


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


def padded_batch(vocab_size, B=3, L=11, lengths=None, types=0, generator=None):
    """(input_ids, attention_mask, token_type_ids or None): random ids in [1, vocab_size), the sequences after
    the first cut to `lengths` (default: 7, then 3, ...) with padding id 0 after them, so that every batch has
    one full row and padded ones; token types drawn from [0, types) when types > 0."""
    lengths = lengths or [L] + [max(1, 7 - 4 * i) for i in range(B - 1)]
    ids = torch.randint(1, vocab_size, (B, L), generator=generator)
    mask = (torch.arange(L)[None] < torch.tensor(lengths)[:, None]).long()
    ids[mask == 0] = 0
    token_types = torch.randint(0, types, (B, L), generator=generator) if types else None
    return ids, mask, token_types
