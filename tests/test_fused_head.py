"""machinery/fused_head.py: L_ce + L_mlm chunk by chunk with closed-form gradients, equal to losses.py's formulas
(values and gradients, float16 and bf16 products, a teacher logit of minus infinity, L_mse), compiled as eager,
and the rows it keeps for the backward pass."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from benchmarks.training import soft_target_loss_chunked  # noqa: E402  (the memory baseline lives with its benchmark)
from losses import soft_target_loss  # noqa: E402
import losses  # noqa: E402
from machinery import fused_head  # noqa: E402

from losses_fixtures import (  # noqa: F401 (fixtures and helpers)
    f64, TiedHead, _saved_for_backward_numels, masked_first)


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
