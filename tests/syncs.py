"""Counting the operations that make the host wait for the device, where there is no GPU to ask (tests and the
CPU dry run of tests/gpu_smoke.py; on a GPU, torch.cuda.set_sync_debug_mode does this).

An operation waits for the device when the host needs a value or a shape that only the device knows: a tensor
read as a Python number or list (`.item()`, `bool()`, `.tolist()`, `int()`...: aten's _local_scalar_dense), and
the operations whose output shape depends on the data (nonzero, masked_select, boolean indexing, unique...).
SyncCounter sees them all, on the tensors of one device: on the CPU test every tensor counts, so a step that
counts 0 there has none on a GPU either."""
import contextlib
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ALWAYS = {"nonzero", "nonzero_static", "_local_scalar_dense", "masked_select", "masked_scatter", "unique",
          "_unique", "_unique2", "unique_consecutive", "unique_dim", "bincount", "histc", "repeat_interleave",
          "argwhere", "_assert_async", "equal", "allclose", "is_nonzero"}
BOOLEAN_INDEX = {"index", "index_put", "index_put_", "_index_put_impl_", "_unsafe_index", "_unsafe_index_put"}
READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy")


class SyncCounter(TorchDispatchMode):
    """with SyncCounter("cpu") as c: ...  ->  c.found: [(what, where)] for each operation on that device's
    tensors that would make the host wait (aten ops, and the Tensor methods that read values: patched while
    the block runs)."""

    def __init__(self, device="cpu"):
        super().__init__()
        self.device, self.found, self._inside = torch.device(device).type, [], 0
        self._patches = contextlib.ExitStack()

    def _on_device(self, *values) -> bool:
        tensors = [v for v in _flatten(values) if isinstance(v, torch.Tensor)]
        return any(t.device.type == self.device for t in tensors)

    def _note(self, what):
        where = next((f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in
                      reversed(traceback.extract_stack()[:-2]) if "syncs.py" not in f.filename
                      and "/torch/" not in f.filename), "?")
        self.found.append((what, where))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._overloadpacket.__name__
        if self._inside == 0 and self._on_device(args, kwargs):
            if name in ALWAYS:
                self._note(name)
            elif name in BOOLEAN_INDEX:
                indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
                if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in _flatten(indices)):
                    self._note(f"{name} with a boolean index")
        return func(*args, **kwargs)

    def __enter__(self):
        for method in READS:
            original = getattr(torch.Tensor, method)

            def read(t, *a, _original=original, _method=method, **k):
                if self._inside == 0 and t.device.type == self.device:
                    self._note(f"Tensor.{_method}")
                self._inside += 1  # what the method dispatches is this one read, already noted
                try:
                    return _original(t, *a, **k)
                finally:
                    self._inside -= 1
            self._patches.callback(setattr, torch.Tensor, method, original)
            setattr(torch.Tensor, method, read)
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._patches.close()


def _flatten(values):
    for v in values:
        if isinstance(v, (list, tuple)):
            yield from _flatten(v)
        elif isinstance(v, dict):
            yield from _flatten(list(v.values()))
        else:
            yield v
