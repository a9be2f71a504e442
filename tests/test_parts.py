"""
The graded tests of the course assignment (python -m course): one group per part of its parts table, each test
exercising exactly one function written by the student. The points of each test are in course/parts.py.

The tests run in the grader's process; the student's code runs in another. A test builds its inputs, calls
`student.PROBE(...)` (tests/parts_probes.py: the probe builds what the test needs, calls the student's
function as its docstring documents it, and returns what came out) and compares what came back with values it
computes here. So the expected values, the tolerances and the comparisons never share a process with the
student's code, and nothing it does there changes a result except its outputs. Under pytest the probes run in
this process through the same encoding (course/wire.py); `python -m course check` and `grade` run them in
another process.

The references are independent of the code under test: torch's own functions (F.kl_div,
F.scaled_dot_product_attention, F.cross_entropy, ...), values worked out by hand, and for the layer and the
embeddings tensors computed by transformers and stored in sanity/parts_reference.safetensors (written by
make_parts_reference.py). No test needs pytest or transformers. The tests between `### BEGIN HIDDEN TESTS` and
`### END HIDDEN TESTS` are the grader's: the student version leaves them out. Every requirement a hidden test
checks is written in the docstring of the function it tests.
"""

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from course.wire import Local, Other

student = Local(Path(__file__).resolve().with_name("parts_probes.py"))  # at grading: the worker's end
REF = load_file(str(Path(__file__).resolve().parents[1] / "sanity" / "parts_reference.safetensors"))
TENSORS = (torch.Tensor, torch.nn.Parameter)


def close(actual, expected, what, atol=1e-5, rtol=1e-5):
    """actual is a tensor of expected's shape and dtype, each value within atol + rtol * |expected|; the message
    shows the expected value beside the actual one."""
    if type(actual) not in TENSORS:
        raise AssertionError(f"{what}: expected a torch.Tensor, got {kind(actual)}")
    if tuple(actual.shape) != tuple(expected.shape):
        raise AssertionError(f"{what}: expected shape {tuple(expected.shape)}, got {tuple(actual.shape)}")
    if actual.dtype != expected.dtype:
        raise AssertionError(f"{what}: expected dtype {expected.dtype}, got {actual.dtype}")
    a, e = actual.detach().double().flatten(), expected.detach().double().flatten()
    ok = (a == e) | ((a - e).abs() <= atol + rtol * e.abs())
    if not bool(ok.all()):
        diff = torch.where(ok, torch.zeros_like(a), (a - e).abs().nan_to_num(nan=math.inf))
        worst = int(diff.argmax())
        raise AssertionError(f"{what}: {int((~ok).sum())} of {a.numel()} values differ beyond atol {atol:g}, "
                             f"rtol {rtol:g}; at flat index {worst}: expected {e[worst].item():.6g}, got "
                             f"{a[worst].item():.6g}")


def kind(value):
    return repr(value) if isinstance(value, Other) else f"a {type(value).__name__}"


def exactly(value, kinds, what):
    """value itself, if it is of one of the types kinds (a tensor: torch.Tensor)."""
    kinds = kinds if type(kinds) is tuple else (kinds,)
    kinds = tuple(t for k in kinds for t in (TENSORS if k is torch.Tensor else (k,)))
    if type(value) not in kinds:
        raise AssertionError(f"{what}: expected a {' or '.join(dict.fromkeys(k.__name__ for k in kinds))}, "
                             f"got {kind(value)}")
    return value


def pair(value, what):
    """A function documented to return two things: a tuple (or a list) of two."""
    if type(value) not in (tuple, list) or len(value) != 2:
        raise AssertionError(f"{what}: expected a pair (a, b), got {kind(value)}")
    return value


def number(value, what):
    """value as a float, if it is a number: an int, a float or a 0-d real tensor (where a docstring fixes no
    type, a solution may return any of them)."""
    if type(value) in (int, float):
        return float(value)
    if type(value) in TENSORS and value.dim() == 0 and not value.is_complex() and value.dtype != torch.bool:
        return float(value.item())
    raise AssertionError(f"{what}: expected a number (an int, a float or a 0-d tensor), got {kind(value)}")


def numbers(values, expected, what, tol=1e-9):
    if type(values) not in (list, tuple) or len(values) != len(expected):
        raise AssertionError(f"{what}: expected {len(expected)} numbers, got {values!r}")
    got = [number(v, what) for v in values]
    if any(not abs(g - e) <= tol for g, e in zip(got, expected)):
        raise AssertionError(f"{what}: expected {expected}, got {got}")


def real_keys(mask):
    return mask.bool()[:, None, None, :]  # (batch, 1, 1, length)


def ref_kl(s, t, temperature):
    """KL(softmax(t/T) || softmax(s/T)) per row, by torch's F.kl_div."""
    return F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1), reduction="none",
                    log_target=True).sum(-1)


def layer_weights():
    names = [f"{m}.{p}" for m in ("qkv", "proj", "ln1", "fc1", "fc2", "ln2") for p in ("weight", "bias")]
    return {name: REF[f"layer.{name}"] for name in names}


def layer_norm(x, name):
    return F.layer_norm(x, x.shape[-1:], REF[f"layer.{name}.weight"], REF[f"layer.{name}.bias"], eps=1e-12)


# ------------------------------------------------------------------------------------------------------------
# attention: model.explicit_attention (every test: the formula written out, not the fused kernel)


def qkv(seed=0, batch=2, heads=2, length=5, head_dim=4):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, length, head_dim, generator=g) for _ in range(3)]


def written_out(got):
    assert got["sdpa_calls"] == 0, "explicit_attention called F.scaled_dot_product_attention: write the formula out"


def test_attention_equals_softmax_qkt_v():
    q, k, v = qkv()
    got = student.attention(q, k, v, None)
    close(got["out"], torch.softmax(q @ k.transpose(-2, -1) / 2.0, dim=-1) @ v, "no padding")  # sqrt(4) = 2
    written_out(got)


def test_attention_ignores_padding_keys():
    q, k, v = qkv(1)
    keys = real_keys(torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]))
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=keys)
    close(student.attention(q, k, v, keys)["out"], expected, "with padding")
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 2:], v2[1, :, 2:] = 100.0, -100.0  # what padding keys hold must not matter
    got = student.attention(q, k2, v2, keys, grad="sum")
    close(got["out"], expected, "changed padding keys")
    for name, grad in zip(("keys", "values"), got["grads"][1:]):
        exactly(grad, torch.Tensor, f"the gradient to the {name}")
        close(grad[1, :, 2:], torch.zeros(2, 3, 4), f"the gradient to the padding {name} (they get weight 0)")
    written_out(got)


### BEGIN HIDDEN TESTS
def test_attention_gradients_match_sdpa():
    q, k, v = qkv(2)
    keys = real_keys(torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]))
    got = student.attention(q, k, v, keys, grad="square")
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    expected = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, attn_mask=keys).square().sum(), (q, k, v))
    for g, e, name in zip(got["grads"], expected, "qkv"):
        close(exactly(g, torch.Tensor, f"gradient of {name}"), e, f"gradient of {name}")
    written_out(got)


def test_attention_dropout_on_the_weights():
    q, k, _ = qkv(3)
    v = torch.ones(2, 2, 5, 4)  # each output is then the sum of its row's (kept, rescaled) weights
    got = student.attention(q, k, v, None, dropout_p=0.5, seed=0)
    out = exactly(got["out"], torch.Tensor, "dropout_p=0.5")
    assert not torch.allclose(out, torch.ones_like(out)), "dropout_p=0.5 changed nothing"
    close(out, out[..., :1].expand_as(out), "dropout on the attention weights: the same for every value dim")
    close(student.attention(q, k, v, None, dropout_p=1.0)["out"], torch.zeros_like(out), "dropout_p=1")
    written_out(got)


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# heads: model.Layer.attention (heads split and merged, Pea-KD's Q/K swap)


def test_heads_match_transformers():
    got = student.heads(layer_weights(), REF["layer.x"], real_keys(REF["layer.mask"]))
    close(got["out"], REF["layer.attention"], "Layer.attention against transformers' BertSelfAttention + dense")


def test_heads_swap_exchanges_query_and_key():
    got = student.heads(layer_weights(), REF["layer.x"], real_keys(REF["layer.mask"]), swap_qk=True)
    close(got["out"], REF["layer.attention_swapped"], "swap_qk=True against transformers with W_Q and W_K exchanged")


def test_heads_padding_and_no_mask():
    x = REF["layer.x"].clone()
    x[1, 3:] = 50.0  # the second sequence's padding positions: what they hold must not matter
    out = student.heads(layer_weights(), x, real_keys(REF["layer.mask"]))["out"]
    close(exactly(out, torch.Tensor, "Layer.attention")[1, :3], REF["layer.attention"][1, :3],
          "the real positions, with the padding positions changed")
    every = student.heads(layer_weights(), x[:1], real_keys(torch.ones(1, 5, dtype=torch.long)))["out"]
    close(every, REF["layer.attention"][:1], "a sequence without padding, every key real")


### BEGIN HIDDEN TESTS
def test_heads_without_padding_mask():
    x = REF["layer.x"][:1]  # the first sequence has no padding: real_keys=None must give the same
    close(student.heads(layer_weights(), x, None)["out"], REF["layer.attention"][:1], "real_keys=None")


def test_heads_explicit_path_and_dropout_only_in_training():
    cfg = {"attention": "explicit", "attention_dropout": 0.5}
    got = student.heads(layer_weights(), REF["layer.x"], real_keys(REF["layer.mask"]), cfg=cfg,
                        explicit_stand_in=True)
    assert got["explicit_calls"] == [0.0], (f"cfg.attention='explicit' in eval mode: explicit_attention called with "
                                           f"dropout_p {got['explicit_calls']}, expected once with 0")
    close(got["out"], REF["layer.attention"], "cfg.attention='explicit' in eval mode")
    trained = student.heads(layer_weights(), REF["layer.x"], real_keys(REF["layer.mask"]), cfg=cfg,
                            explicit_stand_in=True, training=True)
    assert trained["explicit_calls"] == [0.5], (f"in training mode explicit_attention called with dropout_p "
                                               f"{trained['explicit_calls']}, expected cfg.attention_dropout 0.5")


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# layer: model.Layer.forward


def run_layer(**kwargs):
    got = student.layer(layer_weights(), REF["layer.x"], real_keys(REF["layer.mask"]), REF["layer.attention"],
                        **kwargs)
    calls = got["calls"]
    assert len(calls) == 1 and calls[0]["x"], (f"Layer.forward must call self.attention once, on its input x "
                                               f"(calls: {calls})")
    return got["out"], calls[0]


def test_layer_matches_transformers():
    out, _ = run_layer(dropout=0.1)  # eval mode: dropout does nothing
    close(out, REF["layer.output"], "Layer.forward (eval mode, cfg.dropout 0.1) against transformers' BertLayer")


def test_layer_passes_swap_to_attention():
    out, call = run_layer(swap_qk=True)
    assert call["swap_qk"] is True, f"self.attention was called with swap_qk={call['swap_qk']!r}, expected True"
    close(out, REF["layer.output"], "Layer.forward with swap_qk=True (the stand-in attention ignores it)")


### BEGIN HIDDEN TESTS
def test_layer_dropout_on_each_sublayer_output():
    out, call = run_layer(training=True, dropout=1.0)  # every sub-layer output dropped: LN2(LN1(x))
    assert call["swap_qk"] in (False, 0), f"self.attention was called with swap_qk={call['swap_qk']!r}"
    expected = layer_norm(layer_norm(REF["layer.x"], "ln1"), "ln2")
    close(out, expected, "training with dropout 1: x = LN1(x + drop(attention)), then LN2(x + drop(FFN(x)))",
          atol=1e-4, rtol=1e-4)


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# embeddings: model.Embeddings.forward


def embedding_weights(types=2):
    names = ["word.weight", "pos.weight", "ln.weight", "ln.bias"] + (["types.weight"] if types else [])
    return {name: REF[f"emb.{name}"] for name in names}


def test_embeddings_match_transformers():
    ids, types = REF["emb.input_ids"], REF["emb.token_type_ids"]
    close(student.embeddings(embedding_weights(), ids, types, dropout=0.1), REF["emb.with_types"],
          "with token types (eval mode, cfg.dropout 0.1)")
    close(student.embeddings(embedding_weights(), ids), REF["emb.type0"], "token_type_ids=None: type 0 everywhere")


def test_embeddings_of_a_student_have_no_token_types():
    close(student.embeddings(embedding_weights(0), REF["emb.input_ids"], type_vocab_size=0), REF["emb.student"],
          "type_vocab_size=0")


### BEGIN HIDDEN TESTS
def test_embeddings_shorter_batch_and_dropout_after_layernorm():
    ids = REF["emb.input_ids"]
    close(student.embeddings(embedding_weights(), ids[:, :3]), REF["emb.type0"][:, :3],
          "a shorter batch uses positions 0..2")
    out = student.embeddings(embedding_weights(), ids, dropout=0.5, training=True, seed=0)
    out = exactly(out, torch.Tensor, "training with dropout 0.5")
    kept = out != 0  # dropout after the LayerNorm: dropped entries are exact zeros
    share = kept.float().mean().item()  # of 160 entries: SE 0.04
    assert 0.35 < share < 0.65, f"{share:.2f} of the entries kept with dropout 0.5"
    close(out[kept], 2 * REF["emb.type0"][kept], "the kept entries: the LayerNorm's output / (1 - p)")


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# student_init: model.student_from_teacher


def teacher_state(layers, seed=0):
    """Random tensors under the names and shapes of a TINY Bert (pooler, two token types): every tensor
    distinct, LayerNorms and biases included."""
    d, f, vocab, positions = 16, 32, 30, 8
    shapes = {"emb.word.weight": (vocab, d), "emb.pos.weight": (positions, d), "emb.types.weight": (2, d),
              "emb.ln.weight": (d,), "emb.ln.bias": (d,)}
    for i in range(layers):
        for name, shape in (("qkv.weight", (3 * d, d)), ("qkv.bias", (3 * d,)), ("proj.weight", (d, d)),
                            ("proj.bias", (d,)), ("ln1.weight", (d,)), ("ln1.bias", (d,)), ("fc1.weight", (f, d)),
                            ("fc1.bias", (f,)), ("fc2.weight", (d, f)), ("fc2.bias", (d,)), ("ln2.weight", (d,)),
                            ("ln2.bias", (d,))):
            shapes[f"layers.{i}.{name}"] = shape
    shapes.update({"pooler.weight": (d, d), "pooler.bias": (d,), "head.bias": (vocab,), "head.dense.weight": (d, d),
                   "head.dense.bias": (d,), "head.ln.weight": (d,), "head.ln.bias": (d,)})
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=g) for name, shape in shapes.items()}


def a_student(got, layers):
    """The student that came back: a model.Bert of len(layers) layers, no token types, no pooler, eval mode."""
    assert got["type"] == "model.Bert", f"student_from_teacher returned a {got['type']}, expected a model.Bert"
    cfg = got["cfg"]
    assert cfg == {"num_layers": layers, "type_vocab_size": 0, "pooler": False}, \
        f"student config {cfg}: expected {layers} layers, type_vocab_size=0, pooler=False"
    assert not got["training"], "the student must be returned in eval mode"
    return got["state"]


def test_student_init_copies_chosen_layers():
    t = teacher_state(4)
    got = student.student_init(t, 4, [0, 3])
    s = a_student(got, 2)
    expected = {k for k in t if not k.startswith(("layers.", "emb.types", "pooler"))} | {
        f"layers.{j}.{k.split('.', 2)[2]}" for j in range(2) for k in t if k.startswith("layers.0.")}
    assert set(s) == expected, f"the student's tensors: {sorted(set(s) ^ expected)} differ from a 2-layer student's"
    for j, i in enumerate([0, 3]):
        for name in ("qkv.weight", "qkv.bias", "proj.weight", "ln1.weight", "fc1.weight", "fc2.bias", "ln2.bias"):
            close(s[f"layers.{j}.{name}"], t[f"layers.{i}.{name}"], f"student layers.{j}.{name} (teacher layer {i})",
                  atol=0, rtol=0)
    for name in ("emb.word.weight", "emb.ln.weight", "emb.ln.bias", "head.dense.weight", "head.ln.bias", "head.bias"):
        close(s[name], t[name], f"student {name} (the teacher's)", atol=0, rtol=0)


def test_student_init_folds_type_zero_into_positions():
    t = teacher_state(4, seed=1)
    folded = a_student(student.student_init(t, 4, [1, 2]), 2)
    close(folded["emb.pos.weight"], t["emb.pos.weight"] + t["emb.types.weight"][0], "fold_token_types=True")
    plain = a_student(student.student_init(t, 4, [1, 2], fold_token_types=False), 2)
    close(plain["emb.pos.weight"], t["emb.pos.weight"], "fold_token_types=False: positions copied as they are",
          atol=0, rtol=0)


### BEGIN HIDDEN TESTS
def test_student_init_default_is_one_layer_of_two_and_copies():
    t = teacher_state(6, seed=2)
    got = student.student_init(t, 6, zero_teacher_after=True)
    s = a_student(got, 3)
    for j, i in enumerate([0, 2, 4]):
        close(s[f"layers.{j}.fc1.weight"], t[f"layers.{i}.fc1.weight"], f"default: student layer {j} is teacher "
              f"layer {i}", atol=0, rtol=0)
    close(s["emb.pos.weight"], t["emb.pos.weight"] + t["emb.types.weight"][0], "default: the type-0 vector folded")
    changed = [k for k in t if not torch.equal(got["teacher_after"][k], t[k])]
    assert not changed, f"student_from_teacher changed the teacher's {changed}"
    assert not got["zeroed"], f"student {got['zeroed']} share storage with the teacher: copy (clone) the tensors"


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# kl: losses.kl_per_row (the KL at temperature T)


def logits(seed, rows=6, classes=5, scale=3.0):
    return torch.randn(rows, classes, generator=torch.Generator().manual_seed(seed)) * scale


def test_kl_equals_kl_div_at_temperature():
    s, t = logits(0), logits(1)
    for temperature in (1.0, 2.0, 4.0):
        close(student.kl(s, t, temperature)["kl"], ref_kl(s, t, temperature), f"T={temperature}")
    close(student.kl(s, t, 2)["kl"], ref_kl(s, t, 2.0), "T=2 given as an int")


def test_kl_by_hand():
    # teacher (ln 3, 0) at T=1: p = (3/4, 1/4); student (0, 0): q = (1/2, 1/2); KL = 3/4 ln(3/2) + 1/4 ln(1/2)
    s, t = torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]])
    expected = torch.tensor([0.75 * math.log(1.5) + 0.25 * math.log(0.5)])
    close(student.kl(s, t, 1.0)["kl"], expected, "the worked example")
    close(student.kl(t, t, 2.0)["kl"], torch.zeros(1), "a student equal to the teacher")


def test_kl_teacher_detached():
    s, t = logits(20), logits(21)
    got = student.kl(s, t, 2.0, grad=True)
    assert got["t_grad"] is None, "the teacher's logits got a gradient: expected none (detach them)"
    assert got["t_requires_grad"] is True, ("the caller's teacher tensor no longer requires a gradient: use "
                                            "teacher_logits.detach(), which leaves the caller's tensor as it was")
    close(got["t_after"], t, "the caller's teacher logits after the call (unchanged)", atol=0, rtol=0)
    expected = (torch.softmax(s / 2.0, -1) - torch.softmax(t / 2.0, -1)) / 2.0
    close(got["s_grad"], expected, "the gradient to the student's logits: (softmax(s/T) - softmax(t/T)) / T")


### BEGIN HIDDEN TESTS
def test_kl_zero_probabilities_and_teacher_detached():
    s = logits(2, rows=2, classes=3)
    t = torch.tensor([[1.0, float("-inf"), 0.0], [0.0, 0.0, float("-inf")]])
    got = student.kl(s, t, 2.0, grad=True)
    kl = exactly(got["kl"], torch.Tensor, "kl_per_row")
    assert torch.isfinite(kl).all(), f"a teacher probability of 0 gave {kl.tolist()} (0 * log 0 is 0)"
    close(kl, ref_kl(s, torch.where(torch.isinf(t), torch.full_like(t, -1e4), t), 2.0), "with -inf teacher logits")
    assert got["t_grad"] is None, "the teacher's logits must be detached (no gradient to the teacher)"


def test_kl_float16_at_a_large_logit_gap():
    s = torch.tensor([[24.0, 0.0, 0.0], [0.0, 30.0, -2.0]], dtype=torch.float16)  # exp(-24) is 0 in float16
    t = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 3.0]], dtype=torch.float16)
    kl = exactly(student.kl(s, t, 1.0)["kl"], torch.Tensor, "kl_per_row in float16")
    assert kl.dtype == torch.float16 and torch.isfinite(kl).all(), f"float16 logits 24 apart gave {kl} ({kl.dtype})"
    close(kl, ref_kl(s.double(), t.double(), 1.0).half(), "float16 (against float64, rounded)", atol=1e-2, rtol=2e-3)


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# soft_targets: losses.soft_target_loss (L_ce: the rows reduced, times T^2)


def test_soft_targets_mean_times_t_squared():
    s, t = logits(3), logits(4)
    close(student.soft_targets(s, t, temperature=2.0), ref_kl(s, t, 2.0).mean() * 4.0,
          "denom=None: the mean over rows, times T^2 = 4")


def test_soft_targets_sum_over_denom():
    s, t = logits(5), logits(6)
    close(student.soft_targets(s, t, temperature=3.0, denom=10), ref_kl(s, t, 3.0).sum() / 10 * 9.0,
          "denom=10: the sum over rows / 10, times T^2 = 9")


### BEGIN HIDDEN TESTS
def test_soft_targets_matches_kldivloss_batchmean():
    s, t = logits(7), logits(8)
    expected = torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(s / 2, -1), F.softmax(t / 2, -1)) * 4
    close(student.soft_targets(s, t), expected, "the default T=2 against nn.KLDivLoss")


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# mlm: losses.mlm_loss


def test_mlm_ignores_unmasked_rows():
    x = logits(9, rows=8, classes=7)
    labels = torch.tensor([3, -100, 0, -100, 6, 2, -100, 1])
    close(student.mlm(x, labels)["loss"], F.cross_entropy(x, labels, ignore_index=-100), "mean over masked rows")
    keep = labels != -100
    close(student.mlm(x, labels, denom=20)["loss"], F.cross_entropy(x[keep], labels[keep], reduction="sum") / 20,
          "denom=20")


def test_mlm_flattens_batch_dims():
    x = logits(10, rows=12, classes=7).view(3, 4, 7)
    labels = torch.tensor([[1, -100, 2, 3], [-100, -100, 4, 5], [6, 0, -100, 1]])
    close(student.mlm(x, labels)["loss"], F.cross_entropy(x.view(12, 7), labels.view(12)), "(batch, length, vocab)")


### BEGIN HIDDEN TESTS
def test_mlm_with_nothing_masked_is_zero_with_a_graph():
    got = student.mlm(logits(11), torch.full((6,), -100), grad=True)
    out = exactly(got["loss"], torch.Tensor, "mlm_loss")
    assert out.item() == 0.0, f"no masked rows gave {out.item()}, expected 0"
    close(exactly(got["grad"], torch.Tensor, "the gradient (the loss must still belong to the graph)"),
          torch.zeros(6, 5), "the gradient with nothing masked")


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# cosine: losses.cosine_loss


def test_cosine_equals_cosine_embedding_loss():
    s, t = logits(12, rows=7, classes=16), logits(13, rows=7, classes=16)
    close(student.cosine(s, t)["loss"], torch.nn.CosineEmbeddingLoss()(s, t, torch.ones(7)), "denom=None")
    close(student.cosine(s, t, denom=14)["loss"], (1 - F.cosine_similarity(s, t)).sum() / 14, "denom=14")


def test_cosine_teacher_detached():
    s, t = logits(22, rows=5, classes=8), logits(23, rows=5, classes=8)
    got = student.cosine(s, t, grad=True)
    assert got["t_grad"] is None, "the teacher's states got a gradient: expected none (detach them)"
    assert got["t_requires_grad"] is True, "the caller's teacher tensor was changed: use .detach(), not .detach_()"
    s2 = s.clone().requires_grad_()
    torch.nn.CosineEmbeddingLoss()(s2, t, torch.ones(5)).backward()
    close(got["s_grad"], s2.grad, "the gradient to the student's states")


### BEGIN HIDDEN TESTS
def test_cosine_ignores_norm_and_detaches_teacher():
    s, t = logits(14, rows=3, classes=4), logits(15, rows=3, classes=4)
    close(student.cosine(5 * s, t)["loss"], (1 - F.cosine_similarity(s, t)).mean(), "a scaled student")
    close(student.cosine(t, t)["loss"], torch.zeros(()), "equal directions", atol=1e-6, rtol=0)
    assert student.cosine(s, t, grad=True)["t_grad"] is None, "the teacher's states must be detached"


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# combine: losses.combine


def combined(got, what):
    total, parts = pair(got, what)
    return exactly(total, torch.Tensor, f"{what}: the total"), exactly(parts, dict, f"{what}: the parts")


def test_combine_weights_and_parts():
    total, parts = combined(student.combine({"ce": 1.5, "mlm": 2.0, "cos": 0.25}), "combine")
    close(total, torch.tensor(5 * 1.5 + 2 * 2.0 + 1 * 0.25), "5 * L_ce + 2 * L_mlm + 1 * L_cos")
    assert total.requires_grad, "the total must keep its graph (it is what backward runs on)"
    assert set(parts) == {"ce", "mlm", "cos", "total"}, f"parts {sorted(parts)}, expected ce, mlm, cos and total"
    for name, value in (("ce", 1.5), ("mlm", 2.0), ("cos", 0.25), ("total", 11.75)):
        got = parts[name]
        assert not getattr(got, "requires_grad", False), f"parts[{name!r}] must be detached"
        assert abs(number(got, f"parts[{name!r}]") - value) < 1e-6, f"parts[{name!r}]: expected {value}, got {got}"


### BEGIN HIDDEN TESTS
def test_combine_missing_parts_left_out():
    total, parts = combined(student.combine({"mlm": 3.0}, alpha_mlm=0.5), "combine")
    close(total, torch.tensor(1.5), "L_mlm alone")
    assert set(parts) == {"mlm", "total"}, f"parts {sorted(parts)}"
    total, _ = combined(student.combine({"ce": 1.0, "mlm": 2.0, "cos": 3.0, "mse": 4.0}, alpha_ce=0.1,
                                        alpha_mlm=0.2, alpha_cos=0.3, alpha_mse=0.4), "combine")
    close(total, torch.tensor(0.1 + 0.4 + 0.9 + 1.6), "every alpha given, L_mse included")


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# masking: data.mask_tokens

SPECIAL = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
MASK_ID, VOCAB = 4, 1000


def corpus(seed=0, batch=64, length=128, pad_with_ids=False):
    """Random ids between [CLS] and [SEP], half the batch padded after the middle: with the padding id 0, or
    with ordinary ids (pad_with_ids: only attention_mask says they are padding)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, length), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    am = torch.ones_like(ids)
    am[: batch // 2, length // 2:] = 0
    if not pad_with_ids:
        ids[am == 0] = 0
    return ids, am


def masked(ids, am, seed=0, weights=None, special=None, vocab=VOCAB):
    got = student.masking(ids, am, seed, MASK_ID, vocab, SPECIAL if special is None else special, weights)
    out, labels = pair(got["out"], "mask_tokens")
    return exactly(out, torch.Tensor, "the masked ids"), exactly(labels, torch.Tensor, "the labels"), got


def chosen_ok(ids, am, out, labels, special=(0, 1, 2, 3)):
    """Chosen: real, not special, not [MASK]; labels the original ids there and -100 elsewhere; the rest kept."""
    assert out.shape == ids.shape and labels.shape == ids.shape, f"shapes {tuple(out.shape)}, {tuple(labels.shape)}"
    chosen = labels != -100
    assert not (chosen & (am == 0)).any(), f"{int((chosen & (am == 0)).sum())} padding positions were chosen"
    assert not (chosen & torch.isin(ids, torch.tensor([*special, MASK_ID]))).any(), "special tokens were chosen"
    assert torch.equal(labels[chosen], ids[chosen]), "labels must hold the original ids where chosen"
    assert torch.equal(out[~chosen], ids[~chosen]), "tokens not chosen must stay as they are"
    return chosen


def eighty_ten_ten(ids, out, chosen, exact_random=True):
    """The chosen tokens: 80% [MASK], 10% a random id, 10% kept (within 4.5 standard errors)."""
    n = int(chosen.sum())
    to_mask = (out[chosen] == MASK_ID).float().mean().item()
    kept = (out[chosen] == ids[chosen]).float().mean().item()
    se = lambda p: math.sqrt(p * (1 - p) / n)
    assert abs(to_mask - 0.8) < 4.5 * se(0.8), f"{to_mask:.3f} of {n} chosen tokens became [MASK], expected 0.8"
    if exact_random:
        assert abs(kept - 0.1) < 4.5 * se(0.1), f"{kept:.3f} of {n} chosen tokens stayed, expected 0.1"
        randomised = 1 - to_mask - kept
        assert abs(randomised - 0.1) < 4.5 * se(0.1), f"{randomised:.3f} became a random id, expected 0.1"


def test_masking_chooses_15_percent_of_real_tokens():
    ids, am = corpus()
    out, labels, _ = masked(ids, am)
    chosen = chosen_ok(ids, am, out, labels)
    eligible = ((am == 1) & (ids > 4)).sum().item()
    rate = chosen.sum().item() / eligible  # about 6,000 eligible: SE 0.0046
    assert abs(rate - 0.15) < 0.025, f"{rate:.3f} of the eligible tokens chosen, expected 0.15"


def test_masking_80_10_10():
    ids, am = corpus(1)
    out, labels, _ = masked(ids, am, seed=1)
    chosen = chosen_ok(ids, am, out, labels)
    eighty_ten_ten(ids, out, chosen)  # about 900 chosen: SE 0.013 on the 80%, 0.010 on each 10%
    replaced = out[chosen & (out != MASK_ID) & (out != ids)]
    assert len(replaced) and not torch.isin(replaced, torch.tensor([0, 1, 2, 3, 4])).any(), \
        "a random id must not be special or [MASK]"


def test_masking_smoothed_picks_exactly_ceil_by_weight():
    ids, am = corpus(2, pad_with_ids=True)  # padding that holds ordinary ids: only attention_mask says so
    weights = torch.ones(VOCAB)
    weights[:5] = 0.0
    weights[5:100] = 8.0  # ids 5..99 weigh 8 times the others: chosen about 5.5 times as often (4.9-6.0 over
    # 20 seeds; drawing without replacement lowers it from 8), uniform masking would give 1
    eligible = ((am == 1) & (ids > 4)).sum().item()
    out, labels, _ = masked(ids, am, seed=2, weights=weights)
    chosen = chosen_ok(ids, am, out, labels)
    assert chosen.sum().item() == math.ceil(0.15 * eligible), \
        f"{chosen.sum().item()} chosen, expected ceil(0.15 * {eligible}) of the real, non-special tokens"
    heavy = (ids >= 5) & (ids < 100) & (am == 1)
    rate_heavy = chosen[heavy].float().mean().item()
    rate_light = chosen[~heavy & (ids > 4) & (am == 1)].float().mean().item()
    assert rate_heavy > 3 * rate_light, f"ids of weight 8 chosen at {rate_heavy:.3f}, weight 1 at {rate_light:.3f}"
    eighty_ten_ten(ids, out, chosen)


### BEGIN HIDDEN TESTS
def test_masking_reproducible_and_input_untouched():
    ids, am = corpus(3)
    a, la, got = masked(ids, am, seed=7)
    assert torch.equal(got["ids_after"], ids), "mask_tokens modified its input_ids"
    assert torch.equal(got["mask_after"], am), "mask_tokens modified its attention_mask"
    b, lb, _ = masked(ids, am, seed=7)
    assert torch.equal(a, b) and torch.equal(la, lb), "the same generator seed must give the same mask"
    c, lc, _ = masked(ids, am, seed=8)
    assert not torch.equal(la, lc), "another seed gave the same mask"
    chosen_ok(ids, am, a, la)
    weights = torch.ones(VOCAB)
    weights[:5] = 0.0
    weights[500:] = 0.0  # ids of weight 0 are never chosen
    _, lw, got = masked(ids, am, seed=7, weights=weights, special=[0, 1, 2, 3])  # special ids as a list
    assert (lw != -100).any() and not ((lw != -100) & (ids >= 500)).any(), "an id of weight 0 was chosen"
    assert torch.equal(got["mask_after"], am), "mask_tokens (weights given) modified its attention_mask"


def test_masking_random_ids_mask_and_padding():
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(4, 10, (64, 64), generator=g)  # a vocabulary of 10: half of it special
    am = torch.ones_like(ids)
    am[:, 48:] = 0  # padding that holds ordinary ids: only attention_mask says it is padding
    for weights in (None, torch.tensor([0.0] * 5 + [1.0] * 5)):
        out, labels, _ = masked(ids, am, seed=4, weights=weights, vocab=10)
        chosen = chosen_ok(ids, am, out, labels)  # a [MASK] (id 4) in the input is never chosen
        replaced = out[chosen & (out != MASK_ID)]
        assert len(replaced) > 20 and ((replaced >= 5) & (replaced < 10)).all(), \
            f"random ids must be non-special ids of the vocabulary (5..9), got {sorted(set(replaced.tolist()))}"
        eighty_ten_ten(ids, out, chosen, exact_random=False)  # a random id may be the original one here


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# smoothing: data.smoothing_weights


def test_smoothing_weights_by_hand():
    w = student.smoothing([0, 1, 8, 1000, 32], [0], exponent=0.7)
    close(w, torch.tensor([0.0, 1.0, 8**-0.7, 1000**-0.7, 32**-0.7]), "max(count, 1) ** -0.7, 0 for special ids")


### BEGIN HIDDEN TESTS
def test_smoothing_unseen_ids_and_dict_specials():
    w = student.smoothing(torch.tensor([0, 0, 16, 4, 1]), {"[PAD]": 0, "[CLS]": 2}, exponent=0.5, as_numpy=True)
    close(w, torch.tensor([0.0, 1.0, 0.0, 0.5, 1.0]), "counts as a numpy array; an unseen id counts as 1; "
          "special ids (a dict) get 0")
    close(student.smoothing([1, 27], []), torch.tensor([1.0, 27**-0.7]), "the default exponent 0.7")


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# lr_schedule: optim.linear_schedule


def test_lr_schedule_warmup_then_decay():
    got = student.lr_schedule([(s, 100, 10) for s in (0, 5, 10, 55, 100)])
    numbers(got, [0.0, 0.5, 1.0, 0.5, 0.0], "factors at steps 0, 5, 10, 55, 100 of 100, 10 warm-up steps")


### BEGIN HIDDEN TESTS
def test_lr_schedule_no_warmup_and_past_the_end():
    numbers(student.lr_schedule([(0, 50, 0), (25, 50, 0)]), [1.0, 0.5], "without warm-up: the peak rate at step 0")
    numbers(student.lr_schedule([(70, 50, 5), (50, 50, 5)]), [0.0, 0.0], "past the last step the factor is 0, "
            "not negative")


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# denominators: train.forward_backward (the accumulation denominators)


def micro_batches():
    g = torch.Generator().manual_seed(0)
    out = []
    for length, pad in ((6, 2), (4, 0), (8, 5)):  # micro-batches of different sizes and padding
        ids = torch.randint(1, 50, (2, length), generator=g)
        am = torch.ones_like(ids)
        am[1, length - pad:] = 0
        labels = torch.where(torch.rand(ids.shape, generator=g) < 0.4, ids, torch.full_like(ids, -100))
        labels[am == 0] = -100
        out.append((ids, am, labels))
    return out


def counts(batches):
    return sum(int(am.sum()) for _, am, _ in batches), sum(int((lb != -100).sum()) for _, _, lb in batches)


def denominators_seen(got, expected, what):
    seen = got["seen"]
    assert seen and all(d == seen[0] for d in seen), f"{what}: denominators changed between micro-batches: {seen}"
    assert set(seen[0]) == set(expected) and all(abs(seen[0][k] - v) < 1e-9 for k, v in expected.items()), \
        f"{what}: denominators {seen[0]}, expected {expected}"


def test_denominators_give_the_gradient_of_one_big_batch():
    batches = micro_batches()
    got = student.denominators(batches, "all")
    n_real, n_masked = counts(batches)
    assert number(got["n_real"], "the real tokens returned") == n_real, \
        f"n_real {got['n_real']}, expected {n_real} real tokens in the step"
    real = torch.cat([ids[am.bool()] for ids, am, _ in batches]).double()
    hidden = torch.cat([ids[lb != -100] for ids, _, lb in batches]).double()
    expected = torch.tensor([real.mean(), hidden.mean(), real.mean()], dtype=torch.float32)
    close(got["grad"], expected, "gradients = means over the whole step's real / masked tokens")
    denominators_seen(got, {"real": n_real, "masked": n_masked, "ce": n_real}, "ce_positions='all'")


### BEGIN HIDDEN TESTS
def test_denominators_ce_on_masked_positions():
    batches = micro_batches()
    n_real, n_masked = counts(batches)
    denominators_seen(student.denominators(batches, "masked"), {"real": n_real, "masked": n_masked, "ce": n_masked},
                      "ce_positions='masked'")


def test_denominators_over_two_ranks():
    # two ranks holding the same micro-batches: all_reduce doubles the counts, the world size is 2, so each
    # rank divides by the whole step's count / 2, which is its own count again
    batches = micro_batches()
    n_real, n_masked = counts(batches)
    got = student.denominators(batches, "all", world=2)
    denominators_seen(got, {"real": n_real, "masked": n_masked, "ce": n_real},
                      "2 ranks: the step's counts over both ranks / 2")


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# ptp: peakd.ptp_labels


def test_ptp_labels_four_classes():
    p = torch.tensor([[0.95, 0.05], [0.6, 0.4], [0.9, 0.1], [0.55, 0.45], [0.25, 0.75]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    got = exactly(student.ptp(p.log(), labels, 0.8, 0.7), torch.Tensor, "ptp_labels")
    # right & 0.95 > 0.8; right & 0.6; wrong & 0.9 > 0.7; wrong & 0.55; right & 0.75 (> t2 but not > t1)
    assert got.tolist() == [0, 1, 2, 3, 1], f"PTP labels {got.tolist()}, expected [0, 1, 2, 3, 1]"
    assert got.dtype == torch.long, f"PTP labels of dtype {got.dtype}, expected torch.long (class indices)"


### BEGIN HIDDEN TESTS
def test_ptp_labels_three_classes_from_logits():
    z = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 5.0]])
    got = exactly(student.ptp(z, torch.tensor([0, 1, 0]), 0.9, 0.9), torch.Tensor, "ptp_labels")
    assert got.tolist() == [0, 1, 2] and got.dtype == torch.long, f"PTP labels {got.tolist()} ({got.dtype})"


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# pkd: losses.pkd_loss (Patient-KD, Sun et al. 2019, Eq. 7)


def pkd_inputs(seed=16):
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    y = torch.tensor([0, 2, 1, 1])
    s_cls, t_cls = torch.randn(4, 2, 8, generator=g), torch.randn(4, 2, 8, generator=g)
    return s, t, y, s_cls, t_cls


def pkd_result(got):
    loss, parts = pair(got["result"], "pkd_loss")
    return exactly(loss, torch.Tensor, "pkd_loss's loss"), exactly(parts, dict, "pkd_loss's parts")


def unit(h):
    return h / h.norm(dim=-1, keepdim=True)


def test_pkd_loss_equals_eq_7():
    s, t, y, s_cls, t_cls = pkd_inputs()
    loss, parts = pkd_result(student.pkd(s, t, y, s_cls, t_cls, alpha=0.7, temperature=10.0, beta=100.0))
    ce = F.cross_entropy(s, y)
    kd = ref_kl(s, t, 10.0).mean() * 100.0
    pt = (unit(s_cls) - unit(t_cls)).square().mean()
    close(loss, 0.3 * ce + 0.7 * kd + 100.0 * pt, "(1 - a) CE + a T^2 KL + beta * patient term")
    for name, value in (("ce", ce), ("kd", kd), ("pt", pt)):
        got = exactly(parts.get(name), (float, int), f"parts[{name!r}]")
        assert math.isclose(got, value.item(), rel_tol=1e-4), f"parts[{name!r}]: expected {value.item()}, got {got}"


### BEGIN HIDDEN TESTS
def test_pkd_loss_without_layers_has_no_patient_term():
    s, t, y, _, _ = pkd_inputs(17)
    loss, parts = pkd_result(student.pkd(s, t, y, None, None, alpha=0.5, temperature=2.0))
    close(loss, 0.5 * F.cross_entropy(s, y) + 0.5 * ref_kl(s, t, 2.0).mean() * 4.0, "no [CLS] states")
    assert parts.get("pt") == 0.0, f"patient term {parts.get('pt')} without mapped layers, expected 0.0"


def test_pkd_loss_teacher_states_detached():
    s, t, y, s_cls, t_cls = pkd_inputs(18)
    got = student.pkd(s, t, y, s_cls, t_cls, grad=True)
    loss, _ = pkd_result(got)
    expected = 0.3 * F.cross_entropy(s, y) + 0.7 * ref_kl(s, t, 10.0).mean() * 100.0 + \
        100.0 * (unit(s_cls) - unit(t_cls)).square().mean()
    close(loss, expected, "the defaults alpha=0.7, temperature=10, beta=100")
    assert got["t_cls_grad"] is None, "the teacher's [CLS] states must be detached"
    assert got["t_cls_requires_grad"] is True, \
        "the caller's teacher [CLS] tensor was changed: .detach(), not .detach_()"
    s_cls = s_cls.clone().requires_grad_()
    (100.0 * (unit(s_cls) - unit(t_cls)).square().mean()).backward()
    close(exactly(got["s_cls_grad"], torch.Tensor, "the gradient to the student's [CLS] states"), s_cls.grad,
          "the gradient to the student's [CLS] states")


### END HIDDEN TESTS
