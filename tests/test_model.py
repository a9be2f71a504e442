"""The encoder is the same function as transformers' BERT and DistilBERT: load their checkpoints, compare every hidden
state and the MLM logits; save ours and load them back in transformers; check the student is built as the paper says.
transformers is the independent reference here; it is never imported by the project's own code."""
import os

import pytest
import torch
import transformers
from model import Bert, BertConfig, count_parameters, student_from_teacher
from machinery.hf import load_pretrained, save_pretrained

from model_fixtures import (  # noqa: F401 (fixtures and helpers)
    TOL, ODD, perturb, hf_bert, hf_distilbert, batch, save_hf, compare, hf_grad_names, BERT2DISTIL)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("c", ODD)
def test_bert_for_masked_lm_matches_transformers(tmp_path, c, fmt):
    ref = hf_bert(transformers.BertForMaskedLM, c)
    ours = load_pretrained(save_hf(ref, tmp_path / "ckpt", fmt))
    ids, mask, types = batch(c)
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
    print("BertForMaskedLM max abs diff", compare(ours, r, ids, mask, types))


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
