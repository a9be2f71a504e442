"""
L_ce + L_mlm (+ L_mse) over chunks of rows with their gradients computed in the forward pass: the full
(tokens x vocabulary) logits never exist and nothing is recomputed. It equals losses.py's formulas (the tests
check values and gradients); train.py calls it through `head_losses`.

No chunk has a shape that depends on the device's data: the caller puts the masked rows first and says how many
there are (a number the host knows), so the device is never asked which rows are masked (a boolean index would
make the host wait for it).
"""
import torch
import torch.nn.functional as F


class _HeadLosses(torch.autograd.Function):
    """Forward computes the losses and, on the way, their gradients, one chunk of rows at a time; backward
    only scales the stored gradients. Nothing (rows x vocab) outlives a chunk and nothing is recomputed.

    Precision: w_ce and w_mlm carry the step's 1/D (D ~ 1e5 tokens), and softmax differences are ~1e-5 each,
    so the logit gradient w * (q - p) is ~1e-10: below fp16's smallest number (6e-8) once autocast runs `g @
    weight` in half precision, and the GradScaler's factor only arrives in backward. So g is kept at order one
    (divided by `scale` = the larger weight) through the half-precision products, the factor goes back on in
    float32, and the stored gradients are float32 (mixed-precision training keeps loss scaling for the same
    reason: Micikevicius et al. 2018, "Mixed Precision Training", Section 3.2)."""

    @staticmethod
    def forward(ctx, u, weight, bias, teacher_hidden, teacher_head, labels, temperature, w_ce, w_mlm, w_mse,
                chunk_size, soft_targets):
        # softmaxes in float32 at least (bf16 under autocast)
        acc = torch.promote_types(weight.dtype, torch.float32)
        products, n_masked, soft = _Products(weight, acc), len(labels), bool(w_ce or w_mse)
        rows_used = u.shape[0] if soft else n_masked  # L_mlm alone: the masked rows only
        grad_u = torch.zeros(u.shape, dtype=acc, device=u.device)
        grad_w, grad_b = torch.zeros_like(weight, dtype=acc), torch.zeros_like(bias, dtype=acc)
        # taken out of g, put back in float32
        scale = max(abs(w_ce * temperature), abs(w_mlm), abs(2 * w_mse)) or 1.0
        c_ce, c_mse = (torch.full((), c, dtype=acc, device=u.device)
                       for c in (w_ce * temperature / scale, 2 * w_mse / scale))
        kl_sum, ce_sum, mse_sum = (u.new_zeros((), dtype=acc) for _ in range(3))
        for start, stop in _chunks(rows_used, chunk_size, 64 if soft_targets is not None else 0):
            rows = slice(start, stop)
            m = max(0, min(n_masked - start, stop - start))  # this chunk's masked rows are its first m
            z = [F.linear(u[rows], weight, bias)]                          # student logits (chunk, V)
            # L_mlm on the masked rows (T = 1), before _soft_targets reuses z's storage
            log_s = F.log_softmax(z[0][:m].to(acc), dim=-1)
            lab = labels[start:start + m]
            ce_sum += -log_s.gather(1, lab[:, None]).sum()
            g_mlm = _ce_grad(log_s, lab).mul_(w_mlm / scale)
            if soft:
                fn = soft_targets if soft_targets is not None and (stop - start) % 64 == 0 else _soft_targets
                # z.pop(): _soft_targets holds the logits' only references, so it can free them as it goes
                g, kl, mse = fn(z.pop(), teacher_head(teacher_hidden[rows]), temperature, c_ce, c_mse,
                                bool(w_mse))
                kl_sum += kl
                mse_sum += mse
                g[:m] += g_mlm
            else:
                g = g_mlm  # every row of this chunk is masked
            del g_mlm
            _accumulate(g, u[rows], products, scale, grad_u[rows], grad_w, grad_b, acc,
                        weight_grad=ctx.needs_input_grad[1])
        ctx.save_for_backward(grad_u, grad_w, grad_b)
        ctx.dtypes = u.dtype, weight.dtype, bias.dtype
        ctx.mark_non_differentiable(kl_sum, ce_sum, mse_sum)
        return w_ce * temperature**2 * kl_sum + w_mlm * ce_sum + w_mse * mse_sum, kl_sum, ce_sum, mse_sum

    @staticmethod
    def backward(ctx, grad_loss, _kl, _ce, _mse):
        grads = [(grad_loss.to(g.dtype) * g).to(dt) for g, dt in zip(ctx.saved_tensors, ctx.dtypes)]
        return (*grads, None, None, None, None, None, None, None, None, None)


def _chunks(n, size, align=0) -> list:
    """[(start, stop)] of rows in chunks of `size`; with align, a last chunk that is not a multiple of align is cut
    in two: its multiple of align, and the rest (fewer than align rows). So a compiled pass over them sees at most
    size / align shapes, each compiled once."""
    bounds = [(start, min(start + size, n)) for start in range(0, n, size)]
    if align and bounds and (bounds[-1][1] - bounds[-1][0]) % align:
        start, stop = bounds.pop()
        cut = start + (stop - start) // align * align
        bounds += [(start, cut), (cut, stop)] if cut > start else [(start, stop)]
    return bounds


def _soft_targets(z, t, temperature, c_ce, c_mse, mse: bool):
    """One chunk's L_ce (and L_mse) from the student's and the teacher's logits z and t (rows, V): (g, the sum
    over its rows of KL(softmax(t/T) || softmax(z/T)), the sum of |z - t|^2 or 0), with g = c_ce (softmax(z/T)
    - softmax(t/T)) (+ c_mse (z - t)): the terms' gradient w.r.t. z divided by the caller's scale (c_ce =
    w_ce T / scale, c_mse = 2 w_mse / scale; 0-d tensors, so that a compiled copy does not recompile when
    they change). In float32 at least, at most three (rows, V) tensors at a time (four with L_mse); shapes
    fixed by the inputs', so torch.compile can fuse its passes over the logits."""
    acc = torch.promote_types(z.dtype, torch.float32)
    z, t = z.to(acc), t.to(acc)
    g_mse, mse_sum = None, z.new_zeros(())
    if mse:  # d(w_mse sum (z - t)^2)/dz = 2 w_mse (z - t)
        g_mse = z - t
        mse_sum = g_mse.square().sum()
        g_mse.mul_(c_mse)
    log_q = F.log_softmax(z.div_(temperature), dim=-1)
    del z
    log_p = F.log_softmax(t.div_(temperature), dim=-1)
    del t
    p = log_p.exp()
    kl_sum = log_p.sub_(log_q).mul_(p).masked_fill_(p == 0, 0.0).sum()  # 0 log 0 = 0, as kl_per_row
    del log_p
    # d(w_ce T^2 KL)/dz / scale = w_ce T (q - p) / scale, in log_q's storage
    g = log_q.exp_().sub_(p).mul_(c_ce)
    if g_mse is not None:
        g += g_mse
    return g, kl_sum, mse_sum


def _ce_grad(log_s, labels):
    """d CE/dz = softmax(z) - onehot(label), in log_s's storage."""
    g = log_s.exp_()
    g[torch.arange(len(g), device=g.device), labels] -= 1.0
    return g


class _Products:
    """The head's two gradient products, g @ weight and g^T @ u. Under CUDA autocast they run in its half
    dtype with float32 results (`torch.mm(..., out_dtype=float32)`, torch >= 2.9: tensor cores, float32
    accumulation, the result never rounded to half). Elsewhere (the CPU, older torch) g @ weight runs as
    autocast runs it, and g^T @ u in float32, in place (an in-place product is not autocast)."""

    def __init__(self, weight, acc):
        self.weight, self.acc, self.half = weight, acc, None
        kind = weight.device.type
        if _has_out_dtype(weight.device) and torch.is_autocast_enabled(kind):
            self.half = torch.get_autocast_dtype(kind)
            self.weight_half = weight.to(self.half)  # cast once, not once per chunk

    def grad_u(self, g):
        if self.half is not None:
            return _mm_out(g.to(self.half), self.weight_half, self.acc)
        return (g.to(self.weight.dtype) @ self.weight).to(self.acc)  # half under autocast: g is of order one

    def add_grad_w(self, grad_w, g, u, scale):
        if self.half is not None:
            grad_w.add_(_mm_out(g.t().to(self.half), u.to(self.half), self.acc), alpha=scale)
        else:
            grad_w.addmm_(g.t(), u.to(self.acc), alpha=scale)


def _mm_out(a, b, dtype):
    """a @ b of half inputs with a result in dtype (float32), accumulated in float32."""
    return torch.mm(a, b, out_dtype=dtype)


_OUT_DTYPE = {"cpu": False, "meta": False}  # torch.mm has no out_dtype kernel there


def _has_out_dtype(device) -> bool:
    """Whether torch.mm takes out_dtype (bf16/fp16 inputs, a float32 result) on this kind of device."""
    if device.type not in _OUT_DTYPE:
        try:
            a = torch.ones(2, 2, dtype=torch.bfloat16, device=device)
            _OUT_DTYPE[device.type] = torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
        except (TypeError, RuntimeError, NotImplementedError):
            _OUT_DTYPE[device.type] = False
    return _OUT_DTYPE[device.type]


def _accumulate(g, u, products, scale, grad_u_rows, grad_w, grad_b, acc, weight_grad=True):
    """One chunk's gradients w.r.t. u, the weight (unless it needs none: train.py's head-only steps) and the
    bias from its logit gradient g (divided by scale)."""
    grad_u_rows.copy_(products.grad_u(g).mul_(scale))
    if weight_grad:
        products.add_grad_w(grad_w, g, u, scale)
    grad_b.add_(g.sum(0).to(acc), alpha=scale)


def head_losses(u, weight, bias, *, teacher_hidden, teacher_head, labels, temperature, w_ce, w_mlm, w_mse=0.0,
                chunk_size=1024, soft_targets=None):
    """The distillation loss's two vocabulary terms, equal to losses.py's formulas:

        loss = w_ce * T^2 * sum_rows KL(softmax(t / T) || softmax(s / T))      (soft_target_loss * T^2, summed)
             + w_mlm * sum_masked CE(s, label)                                 (mlm_loss, summed)
             + w_mse * sum_rows |s - t|^2                                      (logit_mse_loss, when w_mse != 0)

    with s = F.linear(u, weight, bias) the student's logits (u: (N, d), the MLM transform's output) and
    t = teacher_head(teacher_hidden) the teacher's, computed `chunk_size` rows at a time without full
    (N x vocabulary) logits and without recomputation. labels: (M,), the labels of the first M rows of u: the
    masked rows come first (M <= N, a length the host knows; the rows after them are not masked). With
    w_ce = alpha_ce / D_ce and w_mlm = alpha_mlm / D_mlm, loss = alpha_ce * L_ce + alpha_mlm * L_mlm; with
    w_ce = w_mse = 0 (L_mlm alone) only the first M rows are used and teacher_hidden may be None. soft_targets:
    a torch.compile'd _soft_targets (train.py --compile), used on chunks whose rows are a multiple of 64 (a last
    chunk is cut into such a multiple and the rest, which runs uncompiled).
    Returns (loss, kl_sum, ce_sum, mse_sum): loss is differentiable w.r.t. u, weight and bias; the sums are
    detached, for logging.

    Why: the gradient of the logits is known in closed form, w_ce T (softmax(s/T) - softmax(t/T)) + w_mlm
    (softmax(s) - onehot) (+ 2 w_mse (s - t)), so each chunk's gradients w.r.t. u, the weight and the bias are
    computed in the forward pass and stored ((N + V) x d numbers); backward only scales them. Checkpointed
    chunks (benchmarks.training.soft_target_loss_chunked, the memory baseline) would recompute both heads in
    backward."""
    if len(labels) > u.shape[0]:
        raise ValueError(f"{len(labels)} labels for {u.shape[0]} rows: the masked rows are the first rows")
    if teacher_hidden is not None:
        teacher_hidden = teacher_hidden.detach()
    return _HeadLosses.apply(u, weight, bias, teacher_hidden, teacher_head, labels, temperature, w_ce, w_mlm,
                             w_mse, chunk_size, soft_targets)
