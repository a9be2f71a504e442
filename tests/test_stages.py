"""machinery.stages.cached: a stage computed once per settings; machinery.device.choose_dtype."""
import json

import pytest
import torch

from machinery.device import choose_dtype
from machinery.stages import cached


def test_cached_reuses_only_the_same_settings(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"n": len(calls)}

    assert cached(tmp_path, {"lr": 1e-4, "layers": (0, 2)}, compute, log=lambda m: None) == {"n": 1}
    assert cached(tmp_path, {"lr": 1e-4, "layers": [0, 2]}, compute, log=lambda m: None) == {"n": 1}  # as JSON
    assert cached(tmp_path, {"lr": 3e-4, "layers": [0, 2]}, compute, log=lambda m: None) == {"n": 2}
    stage = json.loads((tmp_path / "stage.json").read_text())
    assert stage == {"settings": {"lr": 3e-4, "layers": [0, 2]}, "result": {"n": 2}}


@pytest.mark.parametrize("damage", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_a_damaged_stage_is_computed_again(tmp_path, damage):
    (tmp_path / "stage.json").write_bytes(damage)
    assert cached(tmp_path, {"a": 1}, lambda: {"done": True}, log=lambda m: None) == {"done": True}


def test_an_interrupted_stage_stores_nothing(tmp_path):
    def compute():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached(tmp_path / "s", {"a": 1}, compute)
    assert not (tmp_path / "s" / "stage.json").exists()


def test_choose_dtype():
    cpu = torch.device("cpu")
    assert choose_dtype("float32", cpu) == (torch.float32, "--dtype")
    assert choose_dtype("bfloat16", cpu)[0] == torch.bfloat16
    assert choose_dtype("auto", cpu)[0] in (torch.float32, torch.bfloat16)
    assert choose_dtype("auto", cpu) is choose_dtype("auto", cpu)  # probed once per process
    with pytest.raises(ValueError, match="--dtype=half"):
        choose_dtype("half", cpu)
