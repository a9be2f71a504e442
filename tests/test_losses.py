"""Tests for losses.py: each loss is checked against torch built-ins, numbers
worked out by hand, or closed-form gradients, never against itself."""

import math
import os
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.training import soft_target_loss_chunked  # noqa: E402  (the memory baseline lives with its benchmark)
from losses import combine, cosine_loss, mlm_loss, soft_target_loss  # noqa: E402
import losses  # noqa: E402
from machinery import fused_head  # noqa: E402

f64 = torch.float64


def kldiv_reference(s, t, T, reduction="batchmean"):
    """The reference implementation's L_ce: KLDivLoss on temperature softmaxes, times T^2."""
    kl = nn.KLDivLoss(reduction=reduction)
    return kl(F.log_softmax(s / T, dim=-1), F.softmax(t / T, dim=-1)) * T**2


# ----------------------------------------------------------------------------- L_ce

@pytest.mark.parametrize("T", [1.0, 2.0, 4.5])
def test_soft_target_matches_kldivloss_batchmean(T):
    torch.manual_seed(0)
    s, t = torch.randn(13, 50) * 3, torch.randn(13, 50) * 3
    torch.testing.assert_close(soft_target_loss(s, t, temperature=T), kldiv_reference(s, t, T))


def test_soft_target_hand_value_two_classes():
    # T = 2; student logits (0, 0) -> q = (1/2, 1/2);
    # teacher logits (2 ln 3, 0) -> t/T = (ln 3, 0) -> p = (3/4, 1/4).
    # KL(p||q) = 3/4 ln(3/4 / 1/2) + 1/4 ln(1/4 / 1/2), times T^2 = 4.
    s = torch.tensor([[0.0, 0.0]], dtype=f64)
    t = torch.tensor([[2 * math.log(3), 0.0]], dtype=f64)
    expected = 4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert soft_target_loss(s, t, temperature=2.0).item() == pytest.approx(expected, rel=1e-12)
    # A second, identical row leaves the mean unchanged; denom=1 gives the sum.
    s2, t2 = s.repeat(2, 1), t.repeat(2, 1)
    assert soft_target_loss(s2, t2, 2.0).item() == pytest.approx(expected, rel=1e-12)
    assert soft_target_loss(s2, t2, 2.0, denom=1).item() == pytest.approx(2 * expected, rel=1e-12)


def test_soft_target_zero_when_student_equals_teacher():
    torch.manual_seed(1)
    s = torch.randn(6, 20, requires_grad=True)
    loss = soft_target_loss(s, s.detach().clone(), temperature=2.0)
    assert abs(loss.item()) < 1e-6
    loss.backward()
    assert s.grad.abs().max().item() < 1e-6


def test_soft_target_teacher_probability_exactly_zero():
    # A teacher logit of -inf gives p = 0 for that class: 0 * log 0 must count as 0.
    s = torch.tensor([[0.0, 1.0, -1.0]], dtype=f64, requires_grad=True)
    t = torch.tensor([[0.5, -math.inf, 0.0]], dtype=f64)
    loss = soft_target_loss(s, t, temperature=2.0)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, kldiv_reference(s, t, 2.0))
    # by hand: p over the two live classes, q over all three
    p = [math.exp(0.25) / (math.exp(0.25) + 1), 0.0, 1 / (math.exp(0.25) + 1)]
    zq = math.exp(0.0) + math.exp(0.5) + math.exp(-0.5)
    q = [1 / zq, math.exp(0.5) / zq, math.exp(-0.5) / zq]
    expected = 4 * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    assert torch.isfinite(s.grad).all()


def test_soft_target_gradient_is_T_times_q_minus_p():
    # d/ds [T^2 * KL(p || softmax(s/T))] = T * (q - p), divided by N for the mean.
    torch.manual_seed(2)
    T, N = 2.0, 5
    s = torch.randn(N, 11, dtype=f64, requires_grad=True)
    t = torch.randn(N, 11, dtype=f64)
    soft_target_loss(s, t, temperature=T).backward()
    q, p = F.softmax(s.detach() / T, -1), F.softmax(t / T, -1)
    torch.testing.assert_close(s.grad, T * (q - p) / N)


def test_T_squared_keeps_gradient_scale_at_high_temperature():
    # Hinton et al.: for large T (zero-mean logits) the KL gradient is about
    # (s - t) / (V T^2); the T^2 factor makes it (s - t) / V whatever T is.
    torch.manual_seed(3)
    N, V = 4, 30
    s0 = torch.randn(N, V, dtype=f64)
    t = torch.randn(N, V, dtype=f64)
    s0, t = s0 - s0.mean(-1, keepdim=True), t - t.mean(-1, keepdim=True)
    expected = (s0 - t) / (V * N)
    grads = []
    for T in (50.0, 100.0):
        s = s0.clone().requires_grad_(True)
        soft_target_loss(s, t, temperature=T).backward()
        assert ((s.grad - expected).norm() / expected.norm()).item() < 0.02
        grads.append(s.grad)
    # Without the T^2 the two gradients would differ by (100/50)^2 = 4.
    ratio = (grads[0] / 50.0**2).norm() / (grads[1] / 100.0**2).norm()
    assert ratio.item() == pytest.approx(4.0, rel=0.01)


def test_soft_target_teacher_gets_no_gradient():
    s = torch.randn(3, 8, requires_grad=True)
    t = torch.randn(3, 8, requires_grad=True)
    soft_target_loss(s, t).backward()
    assert s.grad is not None and t.grad is None


# ----------------------------------------------------------------------------- denom

def test_denom_is_sum_over_rows_divided_by_denom():
    torch.manual_seed(4)
    s, t = torch.randn(9, 12, dtype=f64), torch.randn(9, 12, dtype=f64)
    hs, ht = torch.randn(9, 6, dtype=f64), torch.randn(9, 6, dtype=f64)
    labels = torch.tensor([3, -100, 0, 11, -100, 5, 5, -100, 2])
    for d in (7, torch.tensor(7.0, dtype=f64)):
        torch.testing.assert_close(soft_target_loss(s, t, 2.0, denom=d),
                                   kldiv_reference(s, t, 2.0, reduction="sum") / 7)
        torch.testing.assert_close(mlm_loss(s, labels, denom=d),
                                   F.cross_entropy(s, labels, reduction="sum") / 7)
        target = torch.ones(9, dtype=f64)
        torch.testing.assert_close(cosine_loss(hs, ht, denom=d),
                                   nn.CosineEmbeddingLoss(reduction="sum")(hs, ht, target) / 7)


# ----------------------------------------------------------------------------- L_mlm

def test_mlm_matches_cross_entropy_with_ignore_index():
    torch.manual_seed(5)
    logits = torch.randn(2, 7, 40)  # (batch, seq, vocab): leading dims are flattened
    labels = torch.randint(0, 40, (2, 7))
    labels[0, :3] = -100
    labels[1, 5:] = -100
    expected = F.cross_entropy(logits.reshape(-1, 40), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(mlm_loss(logits, labels), expected)
    # the caller may also pass only the masked rows
    keep = labels != -100
    torch.testing.assert_close(mlm_loss(logits[keep], labels[keep]), expected)


def test_mlm_hand_value():
    # row 0: logits (0,0,0), label 1 -> -log(1/3) = ln 3
    # row 1: ignored
    # row 2: logits (ln 2, 0, 0), label 0 -> -log(2/4) = ln 2
    logits = torch.tensor([[0.0, 0.0, 0.0], [5.0, -5.0, 0.0], [math.log(2), 0.0, 0.0]], dtype=f64)
    labels = torch.tensor([1, -100, 0])
    assert mlm_loss(logits, labels).item() == pytest.approx((math.log(3) + math.log(2)) / 2, rel=1e-12)


def test_mlm_no_masked_rows_is_zero_not_nan():
    logits = torch.randn(4, 10, requires_grad=True)
    labels = torch.full((4,), -100)
    for loss in (mlm_loss(logits, labels), mlm_loss(logits, labels, denom=8)):
        assert loss.item() == 0.0
        assert loss.requires_grad
        loss.backward()
        assert torch.equal(logits.grad, torch.zeros_like(logits))
    # also with zero rows passed in
    empty = torch.zeros(0, 10, requires_grad=True)
    loss = mlm_loss(empty, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()


# ----------------------------------------------------------------------------- L_cos

def test_cosine_matches_cosine_embedding_loss():
    torch.manual_seed(6)
    s, t = torch.randn(17, 32), torch.randn(17, 32)
    expected = nn.CosineEmbeddingLoss()(s, t, torch.ones(17))
    torch.testing.assert_close(cosine_loss(s, t), expected)


def test_cosine_hand_values():
    s = torch.tensor([[1.0, 0.0], [1.0, 2.0], [1.0, 0.0]], dtype=f64)
    t = torch.tensor([[0.0, 1.0], [2.0, 4.0], [-3.0, 0.0]], dtype=f64)
    # orthogonal -> 1, parallel (different norm) -> 0, opposite -> 2
    for i, expected in enumerate([1.0, 0.0, 2.0]):
        assert cosine_loss(s[i:i + 1], t[i:i + 1]).item() == pytest.approx(expected, abs=1e-12)
    assert cosine_loss(s, t).item() == pytest.approx(1.0, abs=1e-12)


def test_cosine_zero_when_equal_and_teacher_detached():
    h = torch.randn(5, 16, requires_grad=True)
    t = (h.detach() * 3.0).requires_grad_(True)  # same direction, other norm
    loss = cosine_loss(h, t)
    assert abs(loss.item()) < 1e-6
    loss.backward()
    assert t.grad is None


# ----------------------------------------------------------------------------- gradcheck

def test_gradcheck_all_losses():
    torch.manual_seed(7)
    s = torch.randn(4, 6, dtype=f64, requires_grad=True)
    t = torch.randn(4, 6, dtype=f64)
    labels = torch.tensor([2, -100, 5, 0])
    assert torch.autograd.gradcheck(lambda x: soft_target_loss(x, t, 2.0), (s,))
    assert torch.autograd.gradcheck(lambda x: soft_target_loss(x, t, 1.5, denom=3), (s,))
    assert torch.autograd.gradcheck(lambda x: mlm_loss(x, labels), (s,))
    assert torch.autograd.gradcheck(lambda x: mlm_loss(x, labels, denom=5), (s,))
    assert torch.autograd.gradcheck(lambda x: cosine_loss(x, t), (s,))
    assert torch.autograd.gradcheck(lambda x: cosine_loss(x, t, denom=2), (s,))


def test_gradcheck_chunked_hidden_and_head_weight():
    # The head's weight is an input of gradcheck, captured by the closure that
    # the checkpoint recomputes: its gradient must come through correctly.
    torch.manual_seed(8)
    h = torch.randn(5, 3, dtype=f64, requires_grad=True)
    w = torch.randn(7, 3, dtype=f64, requires_grad=True)
    ht, wt = torch.randn(5, 3, dtype=f64), torch.randn(7, 3, dtype=f64)

    def fn(h, w):
        return soft_target_loss_chunked(h, ht, lambda x: F.linear(torch.tanh(x), w),
                                        lambda x: F.linear(x, wt), temperature=2.0, chunk_size=2)

    assert torch.autograd.gradcheck(fn, (h, w))


# ----------------------------------------------------------------------------- chunked == naive

class TiedHead(nn.Module):
    """MLM-style head: transform (Linear, GELU, LayerNorm) then a decoder whose
    weight is the word embedding matrix."""

    def __init__(self, d, vocab):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d)
        self.transform = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d))
        self.decoder = nn.Linear(d, vocab)
        self.decoder.weight = self.embedding.weight

    def forward(self, h):
        return self.decoder(self.transform(h))


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 12, 100])
@pytest.mark.parametrize("denom", [None, 20])
def test_chunked_equals_naive_value_and_gradients(chunk_size, denom):
    torch.manual_seed(9)
    N, d, V = 12, 8, 25
    student, teacher = TiedHead(d, V).double(), TiedHead(d, V).double().requires_grad_(False)
    hs0, ht = torch.randn(N, d, dtype=f64), torch.randn(N, d, dtype=f64)

    def run(chunked):
        student.zero_grad(set_to_none=True)
        hs = hs0.clone().requires_grad_(True)
        if chunked:
            loss = soft_target_loss_chunked(hs, ht, student, teacher, 2.0, denom, chunk_size)
        else:
            loss = soft_target_loss(student(hs), teacher(ht), 2.0, denom)
        loss.backward()
        return loss.detach(), hs.grad, {n: p.grad.clone() for n, p in student.named_parameters()}

    loss_c, gh_c, gp_c = run(True)
    loss_n, gh_n, gp_n = run(False)
    torch.testing.assert_close(loss_c, loss_n)
    torch.testing.assert_close(gh_c, gh_n)
    assert set(gp_c) == set(gp_n) and "embedding.weight" in gp_c
    for name in gp_n:
        torch.testing.assert_close(gp_c[name], gp_n[name], msg=name)
    assert all(p.grad is None for p in teacher.parameters())


def _saved_for_backward_numels(fn):
    """Run fn() and list the sizes of all tensors autograd saves for backward."""
    sizes = []

    def pack(x):
        sizes.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        fn().backward()
    return sizes


def test_chunked_keeps_no_vocab_sized_tensor_for_backward():
    # The memory claim, checked through autograd: the naive loss keeps
    # (rows x vocab) tensors until backward; the chunked one keeps only the
    # (chunk x d) hidden rows, recomputing logits during backward.
    torch.manual_seed(12)
    N, d, V, chunk = 64, 8, 50, 16
    w = torch.randn(V, d, requires_grad=True)
    wt = torch.randn(V, d)
    hs, ht = torch.randn(N, d, requires_grad=True), torch.randn(N, d)
    naive = _saved_for_backward_numels(
        lambda: soft_target_loss(F.linear(hs, w), F.linear(ht, wt)))
    chunked = _saved_for_backward_numels(
        lambda: soft_target_loss_chunked(hs, ht, lambda x: F.linear(x, w), lambda x: F.linear(x, wt),
                                         chunk_size=chunk))
    assert max(naive) >= N * V
    assert max(chunked) <= chunk * d
    assert sum(chunked) <= 2 * N * d


# ----------------------------------------------------------------------------- accumulation

def _accumulation_setup(kind):
    """Returns (leaf parameter, loss on rows `sl` with a given denom, number of rows
    that count toward the loss in `sl`) for one of the losses."""
    torch.manual_seed(10)
    N, d, V = 16, 5, 9
    x = torch.randn(N, d, dtype=f64)
    w = torch.randn(d, V, dtype=f64, requires_grad=True)
    t = torch.randn(N, V, dtype=f64)
    labels = torch.randint(0, V, (N,))
    labels[torch.arange(N) % 3 == 0] = -100  # unmasked positions in the full rows
    if kind == "ce":
        return w, lambda sl, dn: soft_target_loss(x[sl] @ w, t[sl], 2.0, dn), lambda sl: len(x[sl])
    if kind == "ce_chunked":
        return w, (lambda sl, dn: soft_target_loss_chunked(x[sl], x[sl], lambda h: h @ w,
                                                           lambda h: h @ t[:d], 2.0, dn, 2)), \
            lambda sl: len(x[sl])
    if kind == "mlm":
        return w, lambda sl, dn: mlm_loss(x[sl] @ w, labels[sl], dn), \
            lambda sl: int((labels[sl] != -100).sum())
    if kind == "cos":
        return w, lambda sl, dn: cosine_loss(x[sl] @ w, t[sl], dn), lambda sl: len(x[sl])
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["ce", "ce_chunked", "mlm", "cos"])
def test_gradient_accumulation_with_global_denom_matches_big_batch(kind):
    w, loss_on, rows_in = _accumulation_setup(kind)
    micro = [slice(0, 2), slice(2, 7), slice(7, 16)]  # unequal micro-batches
    total_rows = sum(rows_in(sl) for sl in micro)

    w.grad = None
    loss_on(slice(0, 16), None).backward()  # one big batch, mean over rows
    g_big = w.grad.clone()

    w.grad = None
    for sl in micro:  # accumulate, each normalised by the step's total row count
        loss_on(sl, total_rows).backward()
    torch.testing.assert_close(w.grad, g_big)

    # Why denom exists: the mean of each micro-batch, averaged over micro-batches,
    # weights rows unequally and gives a different gradient.
    w.grad = None
    for sl in micro:
        (loss_on(sl, None) / len(micro)).backward()
    assert (w.grad - g_big).abs().max().item() > 1e-3


# ----------------------------------------------------------------------------- combine

def test_combine_default_weights_by_hand():
    ce = torch.tensor(0.7, requires_grad=True)
    mlm = torch.tensor(2.5, requires_grad=True)
    cos = torch.tensor(0.1, requires_grad=True)
    total, parts = combine({"ce": ce, "mlm": mlm, "cos": cos})
    assert total.item() == pytest.approx(5 * 0.7 + 2 * 2.5 + 1 * 0.1)
    total.backward()
    assert (ce.grad.item(), mlm.grad.item(), cos.grad.item()) == (5.0, 2.0, 1.0)
    assert set(parts) == {"ce", "mlm", "cos", "total"}
    assert parts["mlm"].item() == pytest.approx(2.5)
    assert parts["total"].item() == pytest.approx(8.6)
    assert not any(v.requires_grad for v in parts.values())


def test_combine_custom_weights_missing_and_unknown_parts():
    ce, mlm = torch.tensor(1.5), torch.tensor(4.0)
    total, parts = combine({"ce": ce, "mlm": mlm}, alpha_ce=0.5, alpha_mlm=3.0)
    assert total.item() == pytest.approx(0.5 * 1.5 + 3.0 * 4.0)
    assert "cos" not in parts
    with pytest.raises(KeyError):
        combine({"ce": ce, "kd": mlm})


def test_combine_on_real_losses_by_hand():
    torch.manual_seed(11)
    s, t = torch.randn(6, 10), torch.randn(6, 10)
    hs, ht = torch.randn(6, 4), torch.randn(6, 4)
    labels = torch.tensor([1, -100, 3, -100, 9, 0])
    ce = kldiv_reference(s, t, 2.0)
    mlm = F.cross_entropy(s, labels, ignore_index=-100)
    cos = nn.CosineEmbeddingLoss()(hs, ht, torch.ones(6))
    total, _ = combine({"ce": soft_target_loss(s, t, 2.0), "mlm": mlm_loss(s, labels),
                        "cos": cosine_loss(hs, ht)})
    torch.testing.assert_close(total, 5 * ce + 2 * mlm + 1 * cos)


def masked_first(labels):
    """head_losses' row order: (the positions of the masked rows (label != -100), then of the others; the masked
    rows' labels)."""
    keep = labels != -100
    return torch.cat([keep.nonzero()[:, 0], (~keep).nonzero()[:, 0]]), labels[keep]


@pytest.mark.parametrize("alpha_ce", [5.0, 0.0])
@pytest.mark.parametrize("chunk", [1, 5, 7, 64])
def test_head_losses_fused_equals_naive_value_and_gradient(chunk, alpha_ce):
    """The fused L_ce + L_mlm (gradients computed in forward, closed form) against the plain losses on full logits;
    alpha_ce = 0 (Table 4's - L_ce row) takes the path without teacher logits."""
    torch.manual_seed(3)
    N, d, V, T = 13, 6, 11, 2.0
    u = torch.randn(N, d, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, d, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(V, dtype=torch.float64, requires_grad=True)
    t_hidden = torch.randn(N, d, dtype=torch.float64)
    t_weight = torch.randn(V, d, dtype=torch.float64)
    labels = torch.full((N,), -100)
    labels[[0, 3, 4, 9]] = torch.tensor([2, 7, 7, 0])
    D_ce, D_mlm = 20.0, 5.0
    teacher_head = lambda h: h @ t_weight.T
    order, first = masked_first(labels)
    loss, kl_sum, ce_sum, _ = fused_head.head_losses(u[order], weight, bias, teacher_hidden=t_hidden[order],
                                                      teacher_head=teacher_head, labels=first, temperature=T,
                                                      w_ce=alpha_ce / D_ce,
                                                      w_mlm=2.0 / D_mlm, chunk_size=chunk)
    loss.backward()
    got = [g.clone() for g in (u.grad, weight.grad, bias.grad)]
    for p in (u, weight, bias):
        p.grad = None
    s_logits = u @ weight.T + bias
    ce = losses.soft_target_loss(s_logits, teacher_head(t_hidden), T, denom=D_ce)
    keep = labels != -100
    mlm = F.cross_entropy(s_logits[keep], labels[keep], reduction="sum") / D_mlm
    want = alpha_ce * ce + 2.0 * mlm
    want.backward()
    assert torch.allclose(loss, want, atol=1e-10)
    assert kl_sum == 0 if alpha_ce == 0 else torch.allclose(kl_sum * T**2 / D_ce, ce, atol=1e-10)
    assert torch.allclose(ce_sum / D_mlm, mlm, atol=1e-10)
    for a, b in zip(got, (u.grad, weight.grad, bias.grad)):
        assert torch.allclose(a, b, atol=1e-10)


def test_head_losses_fused_fp16_gradient_does_not_underflow():
    """Under fp16 autocast with the step's 1/D (D ~ 1e5 tokens) in the weights and a GradScaler-like loss
    scale, the gradient w.r.t. the student's hidden states matches a float64 reference on full logits (torch's
    kl_div and cross_entropy). Before the fix 86% of its entries were exactly 0 (the 1/D product underflowed
    in half)."""
    torch.manual_seed(0)
    N, d, V, T, scale = 512, 64, 4000, 2.0, 2.0**15
    D_ce, D_mlm = 1e5, 1.5e4
    h = torch.randn(N, d, requires_grad=True)
    transform = nn.Linear(d, d)
    weight = nn.Parameter(torch.randn(V, d) * 0.05)
    bias = nn.Parameter(torch.zeros(V))
    t_weight, t_hidden = torch.randn(V, d) * 0.05, torch.randn(N, d)
    labels = torch.full((N,), -100)
    picked = torch.randperm(N)[: N // 7]
    labels[picked] = torch.randint(0, V, (len(picked),))
    order, first = masked_first(labels)
    with torch.autocast("cpu", dtype=torch.float16):
        loss, *_ = fused_head.head_losses(transform(h)[order], weight, bias, teacher_hidden=t_hidden[order],
                                          teacher_head=lambda x: F.linear(x, t_weight), labels=first,
                                          temperature=T, w_ce=5.0 / D_ce, w_mlm=2.0 / D_mlm, chunk_size=128)
    (loss * scale).backward()
    got, got_w = h.grad / scale, weight.grad / scale
    h64 = h.detach().double().requires_grad_(True)
    w64 = weight.detach().double().requires_grad_(True)
    s = F.linear(F.linear(h64, transform.weight.double(), transform.bias.double()), w64, bias.double())
    t = F.linear(t_hidden.double(), t_weight.double())
    kl = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction="sum")
    keep = labels != -100
    mlm = F.cross_entropy(s[keep], labels[keep], reduction="sum")
    (5.0 * T**2 * kl / D_ce + 2.0 * mlm / D_mlm).backward()
    zeros = (got == 0).float().mean().item()
    rel = ((got.double() - h64.grad).norm() / h64.grad.norm()).item()
    rel_w = ((got_w.double() - w64.grad).norm() / w64.grad.norm()).item()
    assert zeros < 0.01 and rel < 0.01 and rel_w < 0.01, (zeros, rel, rel_w)



@pytest.mark.parametrize("chunk", [2, 64])
@pytest.mark.parametrize("case", ["minus_inf", "mse"])
def test_head_losses_fused_minus_inf_teacher_logit_and_mse_equal_the_plain_formulas(chunk, case):
    """A teacher logit of -inf (p = 0: 0 log 0 counts as 0, as in kl_per_row) in one row, or L_mse on: the
    fused value and gradients equal the plain losses on full logits (soft_target_loss, cross_entropy,
    logit_mse_loss)."""
    torch.manual_seed(4)
    N, d, V, T = 9, 5, 7, 2.0
    u = torch.randn(N, d, dtype=f64, requires_grad=True)
    weight = torch.randn(V, d, dtype=f64, requires_grad=True)
    bias = torch.randn(V, dtype=f64, requires_grad=True)
    t_hidden, t_weight = torch.randn(N, d, dtype=f64), torch.randn(V, d, dtype=f64)
    labels = torch.full((N,), -100)
    labels[[1, 2, 8]] = torch.tensor([6, 0, 3])
    w_mse = 0.1 if case == "mse" else 0.0
    if case == "minus_inf":
        t_hidden[4, 0] = 100.0  # a marker: the teacher rules out class 3 on this row
    teacher_head = lambda h: (h @ t_weight.T).masked_fill((h[:, :1] > 50) & (torch.arange(V) == 3), -math.inf)
    order, first = masked_first(labels)
    loss, kl_sum, ce_sum, mse_sum = fused_head.head_losses(u[order], weight, bias, teacher_hidden=t_hidden[order],
                                                            teacher_head=teacher_head, labels=first,
                                                            temperature=T, w_ce=5.0 / 10, w_mlm=2.0 / 3,
                                                            w_mse=w_mse / 10, chunk_size=chunk)
    loss.backward()
    got = [g.clone() for g in (u.grad, weight.grad, bias.grad)]
    for p in (u, weight, bias):
        p.grad = None
    s = u @ weight.T + bias
    t = teacher_head(t_hidden)
    assert t.isinf().sum() == (case == "minus_inf")
    keep = labels != -100
    ce, mse = losses.soft_target_loss(s, t, T, denom=10), losses.logit_mse_loss(s, t, denom=10)
    want = 5.0 * ce + 2.0 * F.cross_entropy(s[keep], labels[keep], reduction="sum") / 3 + (w_mse * mse if w_mse else 0)
    want.backward()
    assert torch.isfinite(loss) and torch.allclose(loss, want, atol=1e-10)
    assert torch.allclose(kl_sum * T**2 / 10, ce, atol=1e-10)
    if w_mse:
        assert torch.allclose(mse_sum / 10, mse, atol=1e-10)
    for a, b in zip(got, (u.grad, weight.grad, bias.grad)):
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_head_losses_half_products_with_float32_results(monkeypatch, dtype):
    """The CUDA path of the fused head's gradient products (torch.mm(..., out_dtype=float32): half inputs, float32
    accumulation and result; issue 40: g^T @ u ran in float32 under autocast, an in-place product not being
    autocast), emulated on the CPU by the same arithmetic (the half-rounded inputs' product in float32): taken (2
    products per chunk) and equal to a float64 reference on full logits within half precision, with the step's
    1/D and a loss scale as in float16 training."""
    calls = []
    monkeypatch.setitem(fused_head._OUT_DTYPE, "cpu", True)
    monkeypatch.setattr(fused_head, "_mm_out", lambda a, b, dt: calls.append(a.dtype) or a.to(dt) @ b.to(dt))
    torch.manual_seed(1)
    N, d, V, T, scale, D_ce, D_mlm = 256, 32, 1000, 2.0, 2.0**12, 1e5, 1.5e4
    h = torch.randn(N, d, requires_grad=True)
    weight, bias = nn.Parameter(torch.randn(V, d) * 0.05), nn.Parameter(torch.zeros(V))
    t_weight, t_hidden = torch.randn(V, d) * 0.05, torch.randn(N, d)
    labels = torch.full((N,), -100)
    labels[torch.randperm(N)[:40]] = torch.randint(0, V, (40,))
    order, first = masked_first(labels)
    with torch.autocast("cpu", dtype=dtype):
        loss, *_ = fused_head.head_losses(h[order], weight, bias, teacher_hidden=t_hidden[order],
                                          teacher_head=lambda x: F.linear(x, t_weight), labels=first,
                                          temperature=T, w_ce=5.0 / D_ce, w_mlm=2.0 / D_mlm, chunk_size=64)
    (loss * scale).backward()
    assert calls == [dtype] * 2 * (N // 64)
    h64, w64 = h.detach().double().requires_grad_(True), weight.detach().double().requires_grad_(True)
    s = F.linear(h64, w64, bias.double())
    t = F.linear(t_hidden.double(), t_weight.double())
    kl = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction="sum")
    keep = labels != -100
    want = 5.0 * T**2 * kl / D_ce + 2.0 * F.cross_entropy(s[keep], labels[keep], reduction="sum") / D_mlm
    want.backward()
    rel = lambda a, b: ((a.double() - b).norm() / b.norm()).item()  # noqa: E731
    assert abs(loss.item() - want.item()) < 0.01 * want.item()
    assert rel(h.grad / scale, h64.grad) < 0.02 and rel(weight.grad / scale, w64.grad) < 0.02


def test_soft_targets_compiled_equal_eager():
    """--compile's copy of the fused head's soft-target pass (fused_head._soft_targets, torch.compile with static
    shapes): traced whole (no graph break) and equal to the eager pass, L_mse on and off."""
    torch._dynamo.reset()
    compiled = torch.compile(fused_head._soft_targets, dynamic=False, backend="eager", fullgraph=True)
    torch.manual_seed(2)
    z, t = torch.randn(64, 50), torch.randn(64, 50)
    c_ce, c_mse = torch.tensor(0.3), torch.tensor(0.02)
    for mse in (False, True):
        want = fused_head._soft_targets(z.clone(), t.clone(), 2.0, c_ce, c_mse, mse)
        got = compiled(z.clone(), t.clone(), 2.0, c_ce, c_mse, mse)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)


def test_head_losses_compiled_pass_sees_multiples_of_64_rows():
    """With a compiled soft-target pass (train.py --compile: static shapes), each chunk given to it has a multiple
    of 64 rows: a last chunk of 72 rows is cut into 64 for it and 8 run uncompiled; values and gradients equal
    the plain chunks' (float64)."""
    torch.manual_seed(5)
    N, d, V = 200, 8, 30
    u = torch.randn(N, d, dtype=f64, requires_grad=True)
    weight, bias = torch.randn(V, d, dtype=f64, requires_grad=True), torch.randn(V, dtype=f64, requires_grad=True)
    t_hidden, t_weight, labels = torch.randn(N, d, dtype=f64), torch.randn(V, d, dtype=f64), torch.randint(0, V, (70,))
    seen, results = [], []

    def recording(z, *a):
        seen.append(z.shape[0])
        return fused_head._soft_targets(z, *a)
    for compiled in (recording, None):
        loss, *_ = fused_head.head_losses(u, weight, bias, teacher_hidden=t_hidden, teacher_head=lambda h: h @ t_weight.T,
                                          labels=labels, temperature=2.0, w_ce=0.5, w_mlm=0.2, w_mse=0.01,
                                          chunk_size=128, soft_targets=compiled)
        loss.backward()
        results.append([loss.detach()] + [p.grad.clone() for p in (u, weight, bias)])
        for p in (u, weight, bias):
            p.grad = None
    assert seen == [128, 64]
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-12)
