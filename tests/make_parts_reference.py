"""
Writes sanity/parts_reference.safetensors: the small tensors the graded tests (tests/test_parts.py) compare a
Transformer layer and the embeddings against, so that `python -m course check PART` needs no transformers;
and sanity/parts_grading.safetensors, the same for other random weights (seed 1): the grading kit's, never in
the student version, so that a solution returning the stored tensors passes no graded test.

    python tests/make_parts_reference.py          # needs transformers (requirements-dev.txt)

Random weights (seed 0) are put into Hugging Face's BertLayer and BertEmbeddings, and their outputs are
stored with the weights under this project's parameter names. Nothing here runs the project's own encoder: the
expected values come from transformers alone. tests/test_course_table.py recomputes them with transformers and
compares them with the stored file (test_reference_file_matches_transformers).
"""

import json
import sys
from pathlib import Path

import torch

SANITY = Path(__file__).resolve().parents[1] / "sanity"
OUT = {0: SANITY / "parts_reference.safetensors", 1: SANITY / "parts_grading.safetensors"}  # seed: file
CONFIG = {
    "vocab_size": 30,
    "hidden_size": 16,
    "num_heads": 2,
    "intermediate_size": 32,
    "max_position": 8,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
}


def hf_config():
    from transformers import BertConfig

    c = CONFIG
    cfg = BertConfig(
        vocab_size=c["vocab_size"],
        hidden_size=c["hidden_size"],
        num_hidden_layers=1,
        num_attention_heads=c["num_heads"],
        intermediate_size=c["intermediate_size"],
        max_position_embeddings=c["max_position"],
        type_vocab_size=c["type_vocab_size"],
        layer_norm_eps=c["layer_norm_eps"],
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
    )
    cfg._attn_implementation = "eager"  # softmax(QK^T/sqrt(d))V written out in transformers
    return cfg


def random_weights(seed=0) -> dict:
    """This project's names -> random tensors: one Layer ("layer.") and one Embeddings ("emb.")."""
    g = torch.Generator().manual_seed(seed)
    c = CONFIG
    d, f = c["hidden_size"], c["intermediate_size"]
    r = lambda *shape, scale=0.5: torch.randn(*shape, generator=g) * scale
    w = {
        "layer.qkv.weight": r(3 * d, d),
        "layer.qkv.bias": r(3 * d),
        "layer.proj.weight": r(d, d),
        "layer.proj.bias": r(d),
        "layer.ln1.weight": 1 + r(d, scale=0.1),
        "layer.ln1.bias": r(d, scale=0.1),
        "layer.fc1.weight": r(f, d),
        "layer.fc1.bias": r(f),
        "layer.fc2.weight": r(d, f),
        "layer.fc2.bias": r(d),
        "layer.ln2.weight": 1 + r(d, scale=0.1),
        "layer.ln2.bias": r(d, scale=0.1),
        "emb.word.weight": r(c["vocab_size"], d),
        "emb.pos.weight": r(c["max_position"], d),
        "emb.types.weight": r(c["type_vocab_size"], d),
        "emb.ln.weight": 1 + r(d, scale=0.1),
        "emb.ln.bias": r(d, scale=0.1),
    }
    w["emb.word.weight"][0] = 0.0  # the padding id's vector, as nn.Embedding(padding_idx=0) keeps it
    w["layer.x"] = r(2, 5, d, scale=1.0)
    w["layer.mask"] = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    w["emb.input_ids"] = torch.tensor([[2, 7, 11, 29, 3], [2, 5, 3, 0, 0]])
    w["emb.token_type_ids"] = torch.tensor([[0, 0, 0, 1, 1], [0, 1, 1, 0, 0]])
    return w


def hf_layer(w, swap=False):
    from transformers.models.bert.modeling_bert import BertLayer

    d = CONFIG["hidden_size"]
    layer = BertLayer(hf_config()).eval()
    qw, kw, vw = w["layer.qkv.weight"].split(d)
    qb, kb, vb = w["layer.qkv.bias"].split(d)
    if swap:  # Pea-KD's SPS: the same layer with the query and key projections exchanged
        qw, kw, qb, kb = kw, qw, kb, qb
    sd = {
        "attention.self.query.weight": qw,
        "attention.self.query.bias": qb,
        "attention.self.key.weight": kw,
        "attention.self.key.bias": kb,
        "attention.self.value.weight": vw,
        "attention.self.value.bias": vb,
        "attention.output.dense.weight": w["layer.proj.weight"],
        "attention.output.dense.bias": w["layer.proj.bias"],
        "attention.output.LayerNorm.weight": w["layer.ln1.weight"],
        "attention.output.LayerNorm.bias": w["layer.ln1.bias"],
        "intermediate.dense.weight": w["layer.fc1.weight"],
        "intermediate.dense.bias": w["layer.fc1.bias"],
        "output.dense.weight": w["layer.fc2.weight"],
        "output.dense.bias": w["layer.fc2.bias"],
        "output.LayerNorm.weight": w["layer.ln2.weight"],
        "output.LayerNorm.bias": w["layer.ln2.bias"],
    }
    layer.load_state_dict(sd)
    return layer


def layer_outputs(w) -> dict:
    """The attention sub-layer before its residual (self-attention, then the output projection), with and
    without the Q/K swap, and the whole layer."""
    x = w["layer.x"]
    additive = (1 - w["layer.mask"][:, None, None, :].float()) * torch.finfo(torch.float32).min
    out = {}
    with torch.no_grad():
        for name, swap in (("layer.attention", False), ("layer.attention_swapped", True)):
            layer = hf_layer(w, swap)
            context = layer.attention.self(x, attention_mask=additive)[0]
            out[name] = layer.attention.output.dense(context)
        out["layer.output"] = hf_layer(w)(x, attention_mask=additive)
    return out


def embedding_outputs(w) -> dict:
    """With token types given, with none (type 0), and a student's (no token-type vectors at all)."""
    from transformers.models.bert.modeling_bert import BertEmbeddings

    emb = BertEmbeddings(hf_config()).eval()
    emb.load_state_dict(
        {
            "word_embeddings.weight": w["emb.word.weight"],
            "position_embeddings.weight": w["emb.pos.weight"],
            "token_type_embeddings.weight": w["emb.types.weight"],
            "LayerNorm.weight": w["emb.ln.weight"],
            "LayerNorm.bias": w["emb.ln.bias"],
        },
        strict=False,
    )  # position_ids / token_type_ids buffers keep their defaults
    ids = w["emb.input_ids"]
    with torch.no_grad():
        out = {
            "emb.with_types": emb(ids, token_type_ids=w["emb.token_type_ids"]),
            "emb.type0": emb(ids, token_type_ids=torch.zeros_like(ids)),
        }
        emb.token_type_embeddings.weight.zero_()  # no token-type vectors: a DistilBERT student
        out["emb.student"] = emb(ids, token_type_ids=torch.zeros_like(ids))
    return out


def build(seed=0) -> dict:
    w = random_weights(seed)
    return {**w, **layer_outputs(w), **embedding_outputs(w)}


def main():
    from safetensors.torch import save_file

    for seed, out in OUT.items():
        tensors = {k: v.contiguous() for k, v in build(seed).items()}
        tmp = out.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"config": json.dumps(CONFIG), "seed": str(seed)})
        tmp.replace(out)
        print(f"{out}: {len(tensors)} tensors, {out.stat().st_size:,} bytes")


if __name__ == "__main__":
    sys.exit(main())
