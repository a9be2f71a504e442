"""Tests for losses.py: each loss is checked against torch built-ins, numbers
worked out by hand, or closed-form gradients, never against itself."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from benchmarks.training import soft_target_loss_chunked  # noqa: E402  (the memory baseline lives with its benchmark)
from losses import combine, cosine_loss, mlm_loss, soft_target_loss  # noqa: E402

from losses_fixtures import (  # noqa: F401 (fixtures and helpers)
    f64, kldiv_reference, _accumulation_setup)


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
