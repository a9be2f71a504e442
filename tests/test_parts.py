"""
The graded tests of the course assignment (assignment.py): one group per part of its parts table, each test
exercising exactly one function written by the student. Where that function calls another part's function,
the test stands in a reference of its own for it (`stand_in`), so a missing part costs only its own points.

The references are independent of the code under test: torch's own functions (F.kl_div,
F.scaled_dot_product_attention, F.cross_entropy, ...), values worked out by hand, and for the layer and the
embeddings tensors computed by transformers and stored in sanity/parts_reference.safetensors (written by
make_parts_reference.py). No test needs pytest or transformers, so `python assignment.py check PART` runs them
anywhere. The tests between `### BEGIN HIDDEN TESTS` and `### END HIDDEN TESTS` are the grader's: the student
version leaves them out.
"""

import contextlib
import math
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

# The comparisons are this file's own, made of torch's functions taken here, before the project's modules are
# imported: code that patches torch.testing, torch.allclose or a Tensor method later changes nothing here.
TENSORS = (torch.Tensor, torch.nn.Parameter)
_detach, _double, _tolist = torch.Tensor.detach, torch.Tensor.double, torch.Tensor.tolist
_size = torch.Tensor.size
_flatten, _isfinite, _type, _float, _abs, _all = torch.flatten, math.isfinite, type, float, abs, all


def close(actual, expected, what, atol=1e-5, rtol=1e-5):
    """actual is a real tensor (not a subclass) of expected's shape and dtype, each value within atol + rtol *
    |expected|; the message shows the expected value beside the actual one."""
    if _type(actual) not in TENSORS:
        raise AssertionError(f"{what}: expected a torch.Tensor, got a {_type(actual).__name__}")
    shape, want = tuple(_size(actual)), tuple(_size(expected))
    if shape != want:
        raise AssertionError(f"{what}: expected shape {want}, got {shape}")
    if actual.dtype != expected.dtype:
        raise AssertionError(f"{what}: expected dtype {expected.dtype}, got {actual.dtype}")
    a = _tolist(_flatten(_double(_detach(actual))))
    e = _tolist(_flatten(_double(_detach(expected))))
    bad = [i for i, (x, y) in enumerate(zip(a, e)) if not (x == y or _abs(x - y) <= atol + rtol * _abs(y))]
    if bad:
        worst = max(bad, key=lambda i: _abs(a[i] - e[i]) if _isfinite(a[i] - e[i]) else float("inf"))
        raise AssertionError(f"{what}: {len(bad)} of {len(a)} values differ beyond atol {atol:g}, rtol {rtol:g}; "
                             f"at flat index {worst}: expected {e[worst]:.6g}, got {a[worst]:.6g}")


def exactly(value, kind, what):
    """value itself, if it is exactly of type kind (a torch.Tensor, not a subclass that could answer any
    comparison)."""
    kinds = TENSORS if kind is torch.Tensor else kind if _type(kind) is tuple else (kind,)
    if _type(value) not in kinds:
        names = " or ".join(k.__name__ for k in kinds[:1 if kind is torch.Tensor else None])
        raise AssertionError(f"{what}: expected a {names}, got a {_type(value).__name__}")
    return value


def same_floats(actual, expected, what):
    """actual is a list of real Python floats (no subclass) equal to expected's."""
    if _type(actual) is not list or len(actual) != len(expected):
        raise AssertionError(f"{what}: expected a list of {len(expected)} floats, got {actual!r}")
    for x, y in zip(actual, expected):
        if _type(x) is not _float:
            raise AssertionError(f"{what}: expected a float, got a {_type(x).__name__} ({x!r})")
    if not _all(_float.__eq__(x, y) for x, y in zip(actual, expected)):
        raise AssertionError(f"{what}: expected {expected}, got {actual}")


import data  # noqa: E402
import losses  # noqa: E402
import model  # noqa: E402
import peakd  # noqa: E402
import train  # noqa: E402
from machinery import optim  # noqa: E402

REF = load_file(str(Path(__file__).resolve().parents[1] / "sanity" / "parts_reference.safetensors"))
TINY = dict(vocab_size=30, hidden_size=16, num_heads=2, intermediate_size=32, max_position=8)


@contextlib.contextmanager
def stand_in(owner, name, value):
    """owner.name replaced by value for the block: another part's function, replaced by a reference."""
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


def ref_layer():
    layer = model.Layer(model.BertConfig(**TINY, dropout=0.0, attention_dropout=0.0))
    names = [f"{m}.{p}" for m in ("qkv", "proj", "ln1", "fc1", "fc2", "ln2") for p in ("weight", "bias")]
    layer.load_state_dict({name: REF[f"layer.{name}"] for name in names})
    return layer.eval()


def real_keys(mask):
    return mask.bool()[:, None, None, :]  # (batch, 1, 1, length)


def ref_kl(s, t, temperature):
    """KL(softmax(t/T) || softmax(s/T)) per row, by torch's F.kl_div."""
    return F.kl_div(
        F.log_softmax(s / temperature, -1),
        F.log_softmax(t / temperature, -1),
        reduction="none",
        log_target=True,
    ).sum(-1)


# ------------------------------------------------------------------------------------------------------------
# attention: model.explicit_attention


def qkv(seed=0, batch=2, heads=2, length=5, head_dim=4):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, length, head_dim, generator=g) for _ in range(3)]


def test_attention_equals_softmax_qkt_v():
    q, k, v = qkv()
    expected = torch.softmax(q @ k.transpose(-2, -1) / 2.0, dim=-1) @ v  # sqrt(head_dim=4) = 2
    close(model.explicit_attention(q, k, v, None), expected, "no padding")


def test_attention_ignores_padding_keys():
    q, k, v = qkv(1)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=real_keys(mask))
    out = model.explicit_attention(q, k, v, real_keys(mask))
    close(out, expected, "with padding")
    k2, v2 = k.clone().requires_grad_(), v.clone().requires_grad_()
    with torch.no_grad():
        k2[1, :, 2:], v2[1, :, 2:] = 100.0, -100.0  # what padding keys hold must not matter
    changed = model.explicit_attention(q, k2, v2, real_keys(mask))
    close(changed, out, "changed padding keys")
    changed.sum().backward()
    for name, grad in (("keys", k2.grad), ("values", v2.grad)):
        close(grad[1, :, 2:], torch.zeros(2, 3, 4), f"the gradient to the padding {name} (they get weight 0)")


### BEGIN HIDDEN TESTS
def test_attention_gradients_match_sdpa():
    q, k, v = [t.requires_grad_() for t in qkv(2)]
    mask = real_keys(torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]))
    grads = torch.autograd.grad(model.explicit_attention(q, k, v, mask).square().sum(), (q, k, v))
    expected = torch.autograd.grad(
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask).square().sum(), (q, k, v)
    )
    for g, e, name in zip(grads, expected, "qkv"):
        close(g, e, f"gradient of {name}")


def test_attention_dropout_on_the_weights():
    q, k, _ = qkv(3)
    v = torch.ones(2, 2, 5, 4)  # each output is then the sum of its row's (kept, rescaled) weights
    torch.manual_seed(0)
    out = model.explicit_attention(q, k, v, None, dropout_p=0.5)
    assert not torch.allclose(out, torch.ones_like(out)), "dropout_p=0.5 changed nothing"
    close(out, out[..., :1].expand_as(out), "dropout on the attention weights: the same for every value dim")
    close(model.explicit_attention(q, k, v, None, dropout_p=1.0), torch.zeros_like(out), "dropout_p=1")


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# heads: model.Layer.attention (heads split and merged, Pea-KD's Q/K swap)


def test_heads_match_transformers():
    layer = ref_layer()
    with torch.no_grad():
        out = layer.attention(REF["layer.x"], real_keys(REF["layer.mask"]))
    close(out, REF["layer.attention"], "Layer.attention against transformers' BertSelfAttention + dense")


def test_heads_swap_exchanges_query_and_key():
    layer = ref_layer()
    with torch.no_grad():
        out = layer.attention(REF["layer.x"], real_keys(REF["layer.mask"]), swap_qk=True)
    close(out, REF["layer.attention_swapped"], "swap_qk=True against transformers with W_Q and W_K exchanged")


def test_heads_padding_and_no_mask():
    layer = ref_layer()
    x = REF["layer.x"].clone()
    x[1, 3:] = 50.0  # the second sequence's padding positions: what they hold must not matter
    with torch.no_grad():
        out = layer.attention(x, real_keys(REF["layer.mask"]))
        every = layer.attention(x[:1], real_keys(torch.ones(1, 5, dtype=torch.long)))
    close(out[1, :3], REF["layer.attention"][1, :3], "the real positions, with the padding positions changed")
    close(every, REF["layer.attention"][:1], "a sequence without padding, every key real")


### BEGIN HIDDEN TESTS
def test_heads_without_padding_mask():
    layer = ref_layer()
    x = REF["layer.x"][:1]  # the first sequence has no padding: real_keys=None must give the same
    with torch.no_grad():
        close(layer.attention(x, None), REF["layer.attention"][:1], "real_keys=None")


def test_heads_explicit_path_and_no_dropout_in_eval():
    calls = []

    def attention(q, k, v, keys, dropout_p=0.0):  # a stand-in for model.explicit_attention
        calls.append(dropout_p)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=keys, dropout_p=dropout_p)

    layer = ref_layer()
    layer.cfg = model.BertConfig(**TINY, attention="explicit", attention_dropout=0.5)
    with stand_in(model, "explicit_attention", attention), torch.no_grad():
        out = layer.eval().attention(REF["layer.x"], real_keys(REF["layer.mask"]))
    assert calls == [0.0], f"explicit_attention called with dropout_p {calls}: expected once, 0 in eval mode"
    close(out, REF["layer.attention"], "cfg.attention='explicit' in eval mode")


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# layer: model.Layer.forward


def attention_stand_in(calls):
    def attention(x, keys, swap_qk=False):  # transformers' attention output for the stored input
        calls.append(swap_qk)
        assert torch.equal(x, REF["layer.x"]), "Layer.forward must pass its input x to self.attention"
        return REF["layer.attention"]

    return attention


def test_layer_matches_transformers():
    layer, calls = ref_layer(), []
    with stand_in(layer, "attention", attention_stand_in(calls)), torch.no_grad():
        out = layer(REF["layer.x"], real_keys(REF["layer.mask"]))
    close(out, REF["layer.output"], "Layer.forward against transformers' BertLayer")


def test_layer_passes_swap_to_attention():
    layer, calls = ref_layer(), []
    with stand_in(layer, "attention", attention_stand_in(calls)), torch.no_grad():
        layer(REF["layer.x"], real_keys(REF["layer.mask"]), swap_qk=True)
    assert calls == [True], f"self.attention was called with swap_qk {calls}, expected [True]"


### BEGIN HIDDEN TESTS
class Half(torch.nn.Module):
    """A deterministic stand-in for dropout: halves its input, and counts the calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, h):
        self.calls += 1
        return 0.5 * h


def test_layer_dropout_on_each_sublayer_output():
    layer, calls, half = ref_layer(), [], Half()
    with stand_in(layer, "attention", attention_stand_in(calls)), stand_in(
        layer, "drop", half
    ), torch.no_grad():
        out = layer(REF["layer.x"], real_keys(REF["layer.mask"]))
        x = layer.ln1(REF["layer.x"] + 0.5 * REF["layer.attention"])  # the formula, the layer's own parts
        expected = layer.ln2(x + 0.5 * layer.feed_forward(x))
    assert half.calls == 2, f"self.drop applied {half.calls} times, expected twice (once per sublayer)"
    close(out, expected, "LN(x + drop(sublayer(x))) for attention, then the feed-forward network")


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# embeddings: model.Embeddings.forward


def ref_embeddings(types=2):
    emb = model.Embeddings(model.BertConfig(**TINY, type_vocab_size=types, dropout=0.0))
    names = ["word.weight", "pos.weight", "ln.weight", "ln.bias"] + (["types.weight"] if types else [])
    emb.load_state_dict({name: REF[f"emb.{name}"] for name in names})
    return emb.eval()


def test_embeddings_match_transformers():
    emb = ref_embeddings()
    with torch.no_grad():
        close(emb(REF["emb.input_ids"], REF["emb.token_type_ids"]), REF["emb.with_types"], "with token types")
        close(emb(REF["emb.input_ids"]), REF["emb.type0"], "token_type_ids=None: type 0 everywhere")


def test_embeddings_of_a_student_have_no_token_types():
    emb = ref_embeddings(types=0)
    with torch.no_grad():
        close(emb(REF["emb.input_ids"]), REF["emb.student"], "type_vocab_size=0")


### BEGIN HIDDEN TESTS
def test_embeddings_shorter_batch_and_dropout_after_layernorm():
    emb = ref_embeddings()
    ids = REF["emb.input_ids"]
    with torch.no_grad():
        close(emb(ids[:, :3]), REF["emb.type0"][:, :3], "a shorter batch uses positions 0..2")
    emb.drop.p = 0.5  # training: dropout after the LayerNorm, so dropped entries are exact zeros
    torch.manual_seed(0)
    with torch.no_grad():
        out = emb.train()(ids)
    kept = out != 0
    share = kept.float().mean().item()  # of 160 entries: SE 0.04
    assert 0.35 < share < 0.65, f"{share:.2f} of the entries kept with dropout 0.5"
    close(out[kept], 2 * REF["emb.type0"][kept], "the kept entries: the LayerNorm's output / (1 - p)")


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# student_init: model.student_from_teacher


def tiny_teacher(layers=4):
    torch.manual_seed(0)
    teacher = model.Bert(model.BertConfig(**TINY, num_layers=layers, pooler=True))
    with torch.no_grad():
        for p in teacher.parameters():
            p.normal_()  # every tensor distinct, LayerNorms and biases included
    return teacher


def test_student_init_copies_chosen_layers():
    teacher = tiny_teacher()
    student = exactly(model.student_from_teacher(teacher, [1, 3]), model.Bert, "student_from_teacher")
    assert (
        student.cfg.num_layers == 2 and student.cfg.type_vocab_size == 0 and not student.cfg.pooler
    ), f"student config {student.cfg}: expected 2 layers, type_vocab_size=0, pooler=False"
    assert student.emb.types is None and student.pooler is None, "the student has token types or a pooler"
    t, s = teacher.state_dict(), student.state_dict()
    for j, i in enumerate([1, 3]):
        for name in ("qkv.weight", "proj.bias", "ln1.weight", "fc1.weight", "fc2.bias", "ln2.bias"):
            assert torch.equal(
                s[f"layers.{j}.{name}"], t[f"layers.{i}.{name}"]
            ), f"student layers.{j}.{name} is not teacher layers.{i}.{name}"
    for name in (
        "emb.word.weight",
        "emb.ln.weight",
        "emb.ln.bias",
        "head.dense.weight",
        "head.ln.bias",
        "head.bias",
    ):
        assert torch.equal(s[name], t[name]), f"student {name} differs from the teacher's"
    assert not student.training, "the student must be returned in eval mode"


def test_student_init_folds_type_zero_into_positions():
    teacher = tiny_teacher()
    folded = model.student_from_teacher(teacher, [0, 2]).emb.pos.weight
    close(folded, teacher.emb.pos.weight + teacher.emb.types.weight[0], "fold_token_types=True")
    plain = model.student_from_teacher(teacher, [0, 2], fold_token_types=False).emb.pos.weight
    assert torch.equal(plain, teacher.emb.pos.weight), "fold_token_types=False: positions copied as they are"


### BEGIN HIDDEN TESTS
def test_student_init_default_is_one_layer_of_two_and_copies():
    teacher = tiny_teacher(6)
    student = exactly(model.student_from_teacher(teacher), model.Bert, "student_from_teacher")
    assert student.cfg.num_layers == 3, f"{student.cfg.num_layers} layers from a 6-layer teacher, expected 3"
    for j, i in enumerate([0, 2, 4]):
        assert torch.equal(student.layers[j].fc1.weight, teacher.layers[i].fc1.weight), f"layer {j} != {i}"
    with torch.no_grad():
        for p in teacher.parameters():
            p.zero_()
    shared = [name for name, p in student.state_dict().items() if p.abs().sum() == 0]
    assert not shared, f"student {shared} share storage with the teacher: copy (clone) the tensors"


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# kl: losses.kl_per_row (the KL at temperature T)


def logits(seed, rows=6, classes=5, scale=3.0):
    return torch.randn(rows, classes, generator=torch.Generator().manual_seed(seed)) * scale


def test_kl_equals_kl_div_at_temperature():
    s, t = logits(0), logits(1)
    for temperature in (1.0, 2.0, 4.0):
        close(losses.kl_per_row(s, t, temperature), ref_kl(s, t, temperature), f"T={temperature}")


def test_kl_by_hand():
    # teacher (ln 3, 0) at T=1: p = (3/4, 1/4); student (0, 0): q = (1/2, 1/2)
    # KL = 3/4 ln(3/2) + 1/4 ln(1/2)
    s, t = torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]])
    expected = torch.tensor([0.75 * math.log(1.5) + 0.25 * math.log(0.5)])
    close(losses.kl_per_row(s, t, 1.0), expected, "the worked example")
    close(losses.kl_per_row(t, t, 2.0), torch.zeros(1), "a student equal to the teacher")


def test_kl_teacher_detached():
    s, t = logits(20).requires_grad_(), logits(21).requires_grad_()
    losses.kl_per_row(s, t, 2.0).sum().backward()
    assert t.grad is None, "the teacher's logits got a gradient: expected none (detach them)"
    expected = (torch.softmax(s / 2.0, -1) - torch.softmax(t / 2.0, -1)).detach() / 2.0
    close(s.grad, expected, "the gradient to the student's logits: (softmax(s/T) - softmax(t/T)) / T")


### BEGIN HIDDEN TESTS
def test_kl_zero_probabilities_and_teacher_detached():
    s = logits(2, rows=2, classes=3).requires_grad_()
    t = torch.tensor([[1.0, float("-inf"), 0.0], [0.0, 0.0, float("-inf")]]).requires_grad_()
    kl = losses.kl_per_row(s, t, 2.0)
    assert torch.isfinite(kl).all(), f"a teacher probability of 0 gave {kl} (0 * log 0 is 0)"
    finite = torch.where(torch.isinf(t), torch.full_like(t, -1e4), t).detach()
    close(kl, ref_kl(s, finite, 2.0), "with -inf teacher logits")
    kl.sum().backward()
    assert t.grad is None, "the teacher's logits must be detached (no gradient to the teacher)"


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# soft_targets: losses.soft_target_loss (L_ce: the rows reduced, times T^2)


def test_soft_targets_mean_times_t_squared():
    s, t = logits(3), logits(4)
    with stand_in(losses, "kl_per_row", ref_kl):
        out = losses.soft_target_loss(s, t, temperature=2.0)
    close(out, ref_kl(s, t, 2.0).mean() * 4.0, "denom=None: the mean over rows, times T^2 = 4")


def test_soft_targets_sum_over_denom():
    s, t = logits(5), logits(6)
    with stand_in(losses, "kl_per_row", ref_kl):
        out = losses.soft_target_loss(s, t, temperature=3.0, denom=10)
    close(out, ref_kl(s, t, 3.0).sum() / 10 * 9.0, "denom=10: the sum over rows / 10, times T^2 = 9")


### BEGIN HIDDEN TESTS
def test_soft_targets_matches_kldivloss_batchmean():
    s, t = logits(7), logits(8)
    expected = torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(s / 2, -1), F.softmax(t / 2, -1)) * 4
    with stand_in(losses, "kl_per_row", ref_kl):
        close(losses.soft_target_loss(s, t), expected, "the default T=2 against nn.KLDivLoss")


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# mlm: losses.mlm_loss


def test_mlm_ignores_unmasked_rows():
    x = logits(9, rows=8, classes=7)
    labels = torch.tensor([3, -100, 0, -100, 6, 2, -100, 1])
    close(losses.mlm_loss(x, labels), F.cross_entropy(x, labels, ignore_index=-100), "mean over masked rows")
    keep = labels != -100
    close(
        losses.mlm_loss(x, labels, denom=20),
        F.cross_entropy(x[keep], labels[keep], reduction="sum") / 20,
        "denom=20",
    )


def test_mlm_flattens_batch_dims():
    x = logits(10, rows=12, classes=7).view(3, 4, 7)
    labels = torch.tensor([[1, -100, 2, 3], [-100, -100, 4, 5], [6, 0, -100, 1]])
    close(
        losses.mlm_loss(x, labels), F.cross_entropy(x.view(12, 7), labels.view(12)), "(batch, length, vocab)"
    )


### BEGIN HIDDEN TESTS
def test_mlm_with_nothing_masked_is_zero_with_a_graph():
    x = logits(11).requires_grad_()
    out = exactly(losses.mlm_loss(x, torch.full((6,), -100)), torch.Tensor, "mlm_loss")
    assert out.item() == 0.0, f"no masked rows gave {out.item()}, expected 0"
    out.backward()  # still part of the graph
    assert x.grad is not None and x.grad.abs().sum() == 0


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# cosine: losses.cosine_loss


def test_cosine_equals_cosine_embedding_loss():
    s, t = logits(12, rows=7, classes=16), logits(13, rows=7, classes=16)
    close(losses.cosine_loss(s, t), torch.nn.CosineEmbeddingLoss()(s, t, torch.ones(7)), "denom=None")
    close(losses.cosine_loss(s, t, denom=14), (1 - F.cosine_similarity(s, t)).sum() / 14, "denom=14")


def test_cosine_teacher_detached():
    s, t = logits(22, rows=5, classes=8).requires_grad_(), logits(23, rows=5, classes=8).requires_grad_()
    losses.cosine_loss(s, t).backward()
    assert t.grad is None, "the teacher's states got a gradient: expected none (detach them)"
    s2 = s.detach().clone().requires_grad_()
    torch.nn.CosineEmbeddingLoss()(s2, t.detach(), torch.ones(5)).backward()
    close(s.grad, s2.grad, "the gradient to the student's states")


### BEGIN HIDDEN TESTS
def test_cosine_ignores_norm_and_detaches_teacher():
    s, t = logits(14, rows=3, classes=4).requires_grad_(), logits(15, rows=3, classes=4).requires_grad_()
    close(losses.cosine_loss(5 * s, t), losses.cosine_loss(s, t), "a scaled student")
    close(losses.cosine_loss(t, t), torch.zeros(()), "equal directions", atol=1e-6, rtol=0)
    losses.cosine_loss(s, t).backward()
    assert t.grad is None, "the teacher's states must be detached"


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# combine: losses.combine


def test_combine_weights_and_parts():
    ce, mlm, cos = (torch.tensor(v, requires_grad=True) for v in (1.5, 2.0, 0.25))
    total, parts = losses.combine({"ce": ce, "mlm": mlm, "cos": cos})
    close(total, torch.tensor(5 * 1.5 + 2 * 2.0 + 1 * 0.25), "5 * L_ce + 2 * L_mlm + 1 * L_cos")
    assert (
        total.requires_grad and not parts["total"].requires_grad and not parts["ce"].requires_grad
    ), "the total keeps its graph; the parts are detached"
    assert set(parts) == {"ce", "mlm", "cos", "total"}, f"parts {sorted(parts)}"


### BEGIN HIDDEN TESTS
def test_combine_missing_parts_left_out():
    total, parts = losses.combine({"mlm": torch.tensor(3.0)}, alpha_mlm=0.5)
    close(total, torch.tensor(1.5), "L_mlm alone")
    assert set(parts) == {"mlm", "total"}, f"parts {sorted(parts)}"
    four = {name: torch.tensor(v) for name, v in (("ce", 1.0), ("mlm", 2.0), ("cos", 3.0), ("mse", 4.0))}
    total, parts = losses.combine(four, alpha_ce=0.1, alpha_mlm=0.2, alpha_cos=0.3, alpha_mse=0.4)
    close(total, torch.tensor(0.1 + 0.4 + 0.9 + 1.6), "every alpha given, L_mse included")


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# masking: data.mask_tokens

SPECIAL = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
MASK_ID, VOCAB = 4, 1000


def corpus(seed=0, batch=64, length=128):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, length), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    am = torch.ones_like(ids)
    am[: batch // 2, length // 2 :] = 0  # half the batch padded after the middle
    ids[am == 0] = 0
    return ids, am


def masked(ids, am, seed=0, weights=None):
    g = torch.Generator().manual_seed(seed)
    out = data.mask_tokens(
        ids, am, mask_id=MASK_ID, vocab_size=VOCAB, special_ids=SPECIAL, generator=g, weights=weights
    )
    return tuple(exactly(t, torch.Tensor, "mask_tokens' outputs") for t in exactly(out, tuple, "mask_tokens"))


def test_masking_chooses_15_percent_of_real_tokens():
    ids, am = corpus()
    out, labels = masked(ids, am)
    chosen = labels != -100
    eligible = (am == 1) & (ids > 4)
    assert not (chosen & ~eligible).any(), "padding or special tokens were chosen"
    assert torch.equal(labels[chosen], ids[chosen]), "labels must hold the original ids where chosen"
    assert torch.equal(out[~chosen], ids[~chosen]), "tokens not chosen must stay as they are"
    rate = chosen.sum().item() / eligible.sum().item()  # about 6,000 eligible: SE 0.005
    assert abs(rate - 0.15) < 0.025, f"{rate:.3f} of the eligible tokens chosen, expected 0.15"


def test_masking_80_10_10():
    ids, am = corpus(1)
    out, labels = masked(ids, am, seed=1)
    chosen = labels != -100
    n = chosen.sum().item()  # about 900 chosen: SE 0.013 on the 80%, 0.010 on each 10%
    to_mask = (out[chosen] == MASK_ID).float().mean().item()
    kept = (out[chosen] == ids[chosen]).float().mean().item()
    randomised = 1 - to_mask - kept
    assert abs(to_mask - 0.8) < 0.06, f"{to_mask:.3f} of {n} chosen tokens became [MASK], expected 0.8"
    assert abs(kept - 0.1) < 0.05, f"{kept:.3f} stayed, expected 0.1"
    assert abs(randomised - 0.1) < 0.05, f"{randomised:.3f} became a random id, expected 0.1"
    replaced = out[chosen & (out != MASK_ID) & (out != ids)]
    assert not torch.isin(replaced, torch.tensor([0, 1, 2, 3, 4])).any(), "a random id must not be special"


def test_masking_smoothed_picks_exactly_ceil_by_weight():
    ids, am = corpus(2)
    weights = torch.ones(VOCAB)
    weights[:5] = 0.0
    weights[5:100] = 8.0  # ids 5..99 weigh 8 times the others: chosen about 5.5 times as often (4.9-6.0 over
    # 20 seeds; drawing without replacement lowers it from 8), uniform masking would give 1
    eligible = ((am == 1) & (ids > 4)).sum().item()
    out, labels = masked(ids, am, seed=2, weights=weights)
    chosen = labels != -100
    assert chosen.sum().item() == math.ceil(
        0.15 * eligible
    ), f"{chosen.sum().item()} chosen, expected ceil(0.15 * {eligible})"
    heavy = (ids >= 5) & (ids < 100)
    rate_heavy = chosen[heavy].float().mean().item()
    rate_light = chosen[~heavy & (ids > 4) & (am == 1)].float().mean().item()
    assert (
        rate_heavy > 3 * rate_light
    ), f"ids of weight 8 chosen at {rate_heavy:.3f}, weight 1 at {rate_light:.3f}"


### BEGIN HIDDEN TESTS
def test_masking_reproducible_and_input_untouched():
    ids, am = corpus(3)
    before = ids.clone()
    a, la = masked(ids, am, seed=7)
    b, lb = masked(ids, am, seed=7)
    assert torch.equal(ids, before), "mask_tokens modified its input"
    assert torch.equal(a, b) and torch.equal(la, lb), "the same generator seed must give the same mask"
    c, _ = masked(ids, am, seed=8)
    assert not torch.equal(a, c), "another seed gave the same mask"
    weights = torch.ones(VOCAB)
    weights[:5] = 0.0
    weights[500:] = 0.0  # ids of weight 0 are never chosen
    _, lw = masked(ids, am, seed=7, weights=weights)
    assert not ((lw != -100) & (ids >= 500)).any(), "an id of weight 0 was chosen"


def test_masking_random_ids_mask_and_padding():
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(4, 10, (64, 64), generator=g)  # a vocabulary of 10: half of it special
    am = torch.ones_like(ids)
    am[:, 48:] = 0  # padding that holds ordinary ids: only attention_mask says it is padding
    out, labels = data.mask_tokens(ids, am, mask_id=MASK_ID, vocab_size=10, special_ids=SPECIAL, generator=g)
    out, labels = exactly(out, torch.Tensor, "the masked ids"), exactly(labels, torch.Tensor, "the labels")
    assert not (labels[ids == MASK_ID] != -100).any(), "a [MASK] already in the input was chosen"
    assert (labels[:, 48:] == -100).all() and torch.equal(out[:, 48:], ids[:, 48:]), "padding was masked"
    replaced = out[(labels != -100) & (out != MASK_ID)]
    assert (
        len(replaced) > 50 and ((replaced >= 5) & (replaced < 10)).all()
    ), f"random ids must be non-special ids of the vocabulary (5..9), got {sorted(set(replaced.tolist()))}"


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# smoothing: data.smoothing_weights


def test_smoothing_weights_by_hand():
    w = data.smoothing_weights([0, 1, 8, 1000, 32], special_ids=[0], exponent=0.7)
    expected = torch.tensor([0.0, 1.0, 8**-0.7, 1000**-0.7, 32**-0.7])
    close(w, expected, "max(count, 1) ** -0.7, 0 for special ids")
    assert w.dtype == torch.float32, f"dtype {w.dtype}, expected float32"


### BEGIN HIDDEN TESTS
def test_smoothing_unseen_ids_and_dict_specials():
    w = data.smoothing_weights([0, 0, 16, 4], special_ids={"[PAD]": 0, "[CLS]": 2}, exponent=0.5)
    close(w, torch.tensor([0.0, 1.0, 0.0, 0.5]), "an unseen id counts as 1; special ids (a dict) get 0")


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# lr_schedule: optim.linear_schedule


def test_lr_schedule_warmup_then_decay():
    got = [optim.linear_schedule(s, 100, 10) for s in (0, 5, 10, 55, 100)]
    same_floats(got, [0.0, 0.5, 1.0, 0.5, 0.0], "factors at steps 0, 5, 10, 55, 100")


### BEGIN HIDDEN TESTS
def test_lr_schedule_no_warmup_and_past_the_end():
    same_floats([optim.linear_schedule(0, 50, 0)], [1.0], "without warm-up the first step has the peak rate")
    same_floats([optim.linear_schedule(70, 50, 5)], [0.0], "past the last step the factor is 0, not negative")


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# denominators: train.forward_backward (the accumulation denominators)


class Recorder(torch.nn.Module):
    """A stand-in for train.Objective: a loss linear in three weights, so each weight's gradient is the sum
    of token values over the step's real (masked) tokens divided by the denominator it was given."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))
        self.seen = []

    @contextlib.contextmanager
    def no_sync(self):  # as DistributedDataParallel has
        yield

    def forward(self, ids, attention_mask, labels, teacher_hidden, denoms, padded=None, counts=None):
        self.seen.append(dict(denoms))
        x, real, masked = ids.float(), attention_mask.bool(), labels != -100
        loss = (
            self.w[0] * x[real].sum() / denoms["real"]
            + self.w[1] * x[masked].sum() / denoms["masked"]
            + self.w[2] * x[real].sum() / denoms["ce"]
        )
        return loss, {"total": loss.detach()}


def micro_batches():
    g = torch.Generator().manual_seed(0)
    out = []
    for length, pad in ((6, 2), (4, 0), (8, 5)):  # micro-batches of different sizes and padding
        ids = torch.randint(1, 50, (2, length), generator=g)
        am = torch.ones_like(ids)
        am[1, length - pad :] = 0
        labels = torch.where(torch.rand(ids.shape, generator=g) < 0.4, ids, torch.full_like(ids, -100))
        labels[am == 0] = -100
        out.append((ids, am, labels))
    return out


def test_denominators_give_the_gradient_of_one_big_batch():
    batches, rec = micro_batches(), Recorder()
    _, _, n_real = train.forward_backward(rec, None, batches, SimpleNamespace(ce_positions="all"))
    exactly(n_real, (int, float), "n_real")
    real = torch.cat([ids[am.bool()] for ids, am, _ in batches]).double()
    hidden = torch.cat([ids[lb != -100] for ids, _, lb in batches]).double()
    assert n_real == len(real), f"n_real {n_real}, expected {len(real)} real tokens in the step"
    expected = torch.tensor([real.mean(), hidden.mean(), real.mean()], dtype=torch.float32)
    close(rec.w.grad, expected, "gradients = means over the whole step's real / masked tokens")
    assert all(d == rec.seen[0] for d in rec.seen), f"denominators changed between micro-batches: {rec.seen}"


### BEGIN HIDDEN TESTS
def test_denominators_ce_on_masked_positions():
    batches, rec = micro_batches(), Recorder()
    train.forward_backward(rec, None, batches, SimpleNamespace(ce_positions="masked"))
    n_masked = sum(int((lb != -100).sum()) for _, _, lb in batches)
    n_real = sum(int(am.sum()) for _, am, _ in batches)
    assert rec.seen[0] == {"real": n_real, "masked": n_masked, "ce": n_masked}, f"denominators {rec.seen[0]}"


def test_denominators_over_two_ranks():
    # two ranks holding the same micro-batches: all_reduce doubles the counts, the world size is 2, so each
    # rank divides by the whole step's count / 2, which is its own count again
    batches, rec = micro_batches(), Recorder()
    n_real = sum(int(am.sum()) for _, am, _ in batches)
    n_masked = sum(int((lb != -100).sum()) for _, _, lb in batches)
    with stand_in(train, "DDP", Recorder), stand_in(train.dist, "get_world_size", lambda: 2), stand_in(
        train.dist, "all_reduce", lambda t: t.mul_(2)
    ):
        train.forward_backward(rec, None, batches, SimpleNamespace(ce_positions="all"))
    assert rec.seen[0] == {
        "real": n_real,
        "masked": n_masked,
        "ce": n_real,
    }, f"denominators {rec.seen[0]} on 2 ranks, expected the step's counts over both ranks / 2"


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# ptp: peakd.ptp_labels


def test_ptp_labels_four_classes():
    p = torch.tensor([[0.95, 0.05], [0.6, 0.4], [0.9, 0.1], [0.55, 0.45], [0.25, 0.75]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    got = _tolist(exactly(peakd.ptp_labels(p.log(), labels, t1=0.8, t2=0.7), torch.Tensor, "ptp_labels"))
    # right & 0.95 > 0.8; right & 0.6; wrong & 0.9 > 0.7; wrong & 0.55; right & 0.75 (> t2 but not > t1)
    assert got == [0, 1, 2, 3, 1], f"PTP labels {got}, expected [0, 1, 2, 3, 1]"


### BEGIN HIDDEN TESTS
def test_ptp_labels_three_classes_from_logits():
    z = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 5.0]])
    got = exactly(peakd.ptp_labels(z, torch.tensor([0, 1, 0]), t1=0.9, t2=0.9), torch.Tensor, "ptp_labels")
    assert got.tolist() == [0, 1, 2] and got.dtype == torch.long, f"PTP labels {got}"


### END HIDDEN TESTS


# ------------------------------------------------------------------------------------------------------------
# pkd: losses.pkd_loss (Patient-KD, Sun et al. 2019, Eq. 7)


def soft_targets_stand_in(s, t, temperature=2.0, denom=None):
    return ref_kl(s, t.detach(), temperature).mean() * temperature**2


def pkd_inputs(seed=16):
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    y = torch.tensor([0, 2, 1, 1])
    s_cls, t_cls = torch.randn(4, 2, 8, generator=g), torch.randn(4, 2, 8, generator=g)
    return s, t, y, s_cls, t_cls


def test_pkd_loss_equals_eq_7():
    s, t, y, s_cls, t_cls = pkd_inputs()
    with stand_in(losses, "soft_target_loss", soft_targets_stand_in):
        loss, parts = losses.pkd_loss(s, t, y, s_cls, t_cls, alpha=0.7, temperature=10.0, beta=100.0)
    ce = F.cross_entropy(s, y)
    kd = ref_kl(s, t, 10.0).mean() * 100.0
    unit = lambda h: h / h.norm(dim=-1, keepdim=True)
    pt = (unit(s_cls) - unit(t_cls)).square().mean()
    close(loss, 0.3 * ce + 0.7 * kd + 100.0 * pt, "(1 - a) CE + a T^2 KL + beta * patient term")
    for name, value in (("ce", ce), ("kd", kd), ("pt", pt)):
        got = exactly(parts[name], float, f"parts[{name!r}]")
        expected = value.item()
        assert math.isclose(got, expected, rel_tol=1e-4), f"parts[{name!r}]: expected {expected}, got {got}"


### BEGIN HIDDEN TESTS
def test_pkd_loss_without_layers_has_no_patient_term():
    s, t, y, _, _ = pkd_inputs(17)
    with stand_in(losses, "soft_target_loss", soft_targets_stand_in):
        loss, parts = losses.pkd_loss(s, t, y, None, None, alpha=0.5, temperature=2.0)
    close(loss, 0.5 * F.cross_entropy(s, y) + 0.5 * ref_kl(s, t, 2.0).mean() * 4.0, "no [CLS] states")
    assert parts["pt"] == 0.0, f"patient term {parts['pt']} without mapped layers"


def test_pkd_loss_teacher_states_detached():
    s, t, y, s_cls, t_cls = pkd_inputs(18)
    s_cls.requires_grad_(), t_cls.requires_grad_()
    with stand_in(losses, "soft_target_loss", soft_targets_stand_in):
        loss, _ = losses.pkd_loss(s, t, y, s_cls, t_cls)
    loss.backward()
    assert t_cls.grad is None, "the teacher's [CLS] states must be detached"
    assert s_cls.grad is not None and s_cls.grad.abs().sum() > 0, "no gradient to the student's [CLS] states"


### END HIDDEN TESTS
