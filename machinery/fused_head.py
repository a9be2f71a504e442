"""
L_ce + L_mlm (+ L_mse) over chunks of rows with their gradients computed in the forward pass: the full
(tokens x vocabulary) logits never exist and nothing is recomputed. It equals losses.py's formulas (the tests
check values and gradients); train.py calls it through `head_losses`.
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
                chunk_size):
        # softmaxes in float32 at least (bf16 under autocast)
        acc = torch.promote_types(weight.dtype, torch.float32)
        grad_u = torch.empty(u.shape, dtype=acc, device=u.device)
        grad_w, grad_b = torch.zeros_like(weight, dtype=acc), torch.zeros_like(bias, dtype=acc)
        # taken out of g, put back in float32
        scale = max(abs(w_ce * temperature), abs(w_mlm), abs(2 * w_mse)) or 1.0
        kl_sum, ce_sum, mse_sum = (u.new_zeros((), dtype=acc) for _ in range(3))
        for start in range(0, u.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            if not (w_ce or w_mse):  # L_mlm alone: the masked rows' logits only, no teacher logits
                keep = labels[rows] != -100
                part, lab = u[rows][keep], labels[rows][keep]
                log_s = F.log_softmax(F.linear(part, weight, bias).to(acc), dim=-1)
                ce_sum += -log_s.gather(1, lab[:, None]).sum()
                grad_u[rows] = 0.0
                g = (w_mlm / scale) * _ce_grad(log_s, lab)
                _accumulate(g.to(weight.dtype), part, weight, scale, grad_u, grad_w, grad_b,
                            torch.arange(start, start + len(keep), device=u.device)[keep], acc)
                continue
            # at most three (chunk, V) tensors at a time: z or log_q, t or log_p, p
            z = F.linear(u[rows], weight, bias).to(acc)                    # student logits
            lab = labels[rows]
            masked = lab != -100
            log_s = F.log_softmax(z[masked], dim=-1)                       # L_mlm on the masked rows (T = 1)
            ce_sum += -log_s.gather(1, lab[masked, None]).sum()
            t = teacher_head(teacher_hidden[rows]).to(acc)                 # teacher logits (no grad here)
            g_mse = None
            if w_mse:  # alpha_mse: d(w_mse sum (z - t)^2)/dz = 2 w_mse (z - t); a fourth (chunk, V) tensor
                g_mse = z - t
                mse_sum += g_mse.square().sum()
                g_mse.mul_(2 * w_mse / scale)
            log_q = F.log_softmax(z.div_(temperature), dim=-1)
            del z
            log_p = F.log_softmax(t.div_(temperature), dim=-1)
            del t
            p = log_p.exp()
            kl_sum += log_p.sub_(log_q).mul_(p).masked_fill_(p == 0, 0.0).sum()  # 0 log 0 = 0, as kl_per_row
            del log_p
            # d(w_ce T^2 KL)/dz / scale = w_ce T (q - p) / scale, in log_q's storage
            g = log_q.exp_().sub_(p).mul_(w_ce * temperature / scale)
            del p
            g[masked] += (w_mlm / scale) * _ce_grad(log_s, lab[masked])
            if g_mse is not None:
                g += g_mse
                del g_mse
            _accumulate(g.to(weight.dtype), u[rows], weight, scale, grad_u, grad_w, grad_b, rows, acc)
        ctx.save_for_backward(grad_u, grad_w, grad_b)
        ctx.dtypes = u.dtype, weight.dtype, bias.dtype
        ctx.mark_non_differentiable(kl_sum, ce_sum, mse_sum)
        return w_ce * temperature**2 * kl_sum + w_mlm * ce_sum + w_mse * mse_sum, kl_sum, ce_sum, mse_sum

    @staticmethod
    def backward(ctx, grad_loss, _kl, _ce, _mse):
        grads = [(grad_loss.to(g.dtype) * g).to(dt) for g, dt in zip(ctx.saved_tensors, ctx.dtypes)]
        return (*grads, None, None, None, None, None, None, None, None)


def _ce_grad(log_s, labels):
    """d CE/dz = softmax(z) - onehot(label), in log_s's storage."""
    g = log_s.exp_()
    g[torch.arange(len(g), device=g.device), labels] -= 1.0
    return g


def _accumulate(g, u, weight, scale, grad_u, grad_w, grad_b, rows, acc):
    """One chunk's gradients w.r.t. u, the weight and the bias from its logit gradient g (divided by scale)."""
    grad_u[rows] = (g @ weight).to(acc).mul_(scale)  # half under autocast: g is of order one there
    grad_w.addmm_(g.t().to(acc), u.to(acc), alpha=scale)
    grad_b.add_(g.sum(0).to(acc), alpha=scale)


def head_losses(u, weight, bias, *, teacher_hidden, teacher_head, labels, temperature, w_ce, w_mlm, w_mse=0.0,
                chunk_size=1024):
    """The distillation loss's two vocabulary terms, equal to losses.py's formulas:

        loss = w_ce * T^2 * sum_rows KL(softmax(t / T) || softmax(s / T))      (soft_target_loss * T^2, summed)
             + w_mlm * sum_masked CE(s, label)                                 (mlm_loss, summed)
             + w_mse * sum_rows |s - t|^2                                      (logit_mse_loss, when w_mse != 0)

    with s = F.linear(u, weight, bias) the student's logits (u: (N, d), the MLM transform's output) and
    t = teacher_head(teacher_hidden) the teacher's, computed `chunk_size` rows at a time without full
    (N x vocabulary) logits and without recomputation. labels: (N,), -100 on rows that are not masked. With
    w_ce = alpha_ce / D_ce and w_mlm = alpha_mlm / D_mlm, loss = alpha_ce * L_ce + alpha_mlm * L_mlm.
    Returns (loss, kl_sum, ce_sum, mse_sum): loss is differentiable w.r.t. u, weight and bias; the sums are
    detached, for logging.

    Why: the gradient of the logits is known in closed form, w_ce T (softmax(s/T) - softmax(t/T)) + w_mlm
    (softmax(s) - onehot) (+ 2 w_mse (s - t)), so each chunk's gradients w.r.t. u, the weight and the bias are
    computed in the forward pass and stored ((N + V) x d numbers); backward only scales them. Checkpointed
    chunks (bench.soft_target_loss_chunked, the memory baseline) would recompute both heads in backward."""
    return _HeadLosses.apply(u, weight, bias, teacher_hidden.detach(), teacher_head, labels, temperature, w_ce,
                             w_mlm, w_mse, chunk_size)

