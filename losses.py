"""
The DistilBERT training losses (Sanh et al. 2019, Section 2 "Knowledge distillation"), and the task losses of
fine-tuning (finetune.py) and Patient-KD (peakd.py), each formula written once as a small pure function:

  L_ce   distillation loss: the student imitates the teacher's soft targets, sum_i t_i * log(s_i), both from a
         softmax with temperature T, p_i = exp(z_i/T) / sum_j exp(z_j/T) (T = 1 at inference).
  L_mlm  the usual supervised masked language modelling loss.
  L_cos  a cosine embedding loss aligning the directions of student and teacher hidden states.
  total  alpha_ce * L_ce + alpha_mlm * L_mlm + alpha_cos * L_cos; the released model used 5, 2, 1 and T = 2.

As in the authors' reference code, L_ce is a KL divergence over every real (non-pad) token, multiplied by T^2
(Hinton et al. 2015: it keeps gradient magnitudes comparable across temperatures), and L_cos is taken over the
real tokens of the last layer.

Every function works on rows: 2-D tensors (rows x features) that the caller picked out with a boolean mask,
and takes `denom`: None -> mean over the rows given; a number D -> sum over the rows given, divided by D. With
gradient accumulation (and several ranks) the trainer passes the row count of the whole optimizer step as D,
so that summing the micro-batch gradients gives exactly the gradient of one big batch (micro-batches rarely
hold the same number of real or masked tokens, so averaging each one separately would weight their rows
unequally).

The production path, used by train.py, is the last section: L_ce and L_mlm fused over chunks of the vocabulary
projection, with their gradients computed on the way (tests/test_losses.py checks it equal to these formulas).
"""
import torch
import torch.nn.functional as F


# ------------------------------------------------------------------------------------------------------------
# The paper's formulas

def reduce_rows(per_row, denom):
    """Sum of per-row losses divided by denom (None: by the row count).
    With zero rows this is an exact 0 that still belongs to the graph."""
    if denom is None:
        denom = max(per_row.numel(), 1)
    return per_row.sum() / denom


def kl_per_row(student_logits, teacher_logits, temperature):
    """KL(softmax(t/T) || softmax(s/T)) for every row: (rows, classes) -> (rows,). The project's one
    temperature KL."""
    ### BEGIN SOLUTION: 5 lines
    # log-probabilities of both at temperature T; the teacher is a fixed target (detached)
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    p = log_p.exp()
    # p * (log p - log q), with the convention 0 * log 0 = 0 (a teacher logit of
    # -inf gives p = 0 and log p = -inf; the product would otherwise be NaN).
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(dim=-1)
    ### END SOLUTION


def soft_target_loss(student_logits, teacher_logits, temperature=2.0, denom=None):
    """L_ce of DistilBERT Section 2: match the teacher's softened distribution.

    Returns sum_rows KL(softmax(t/T) || softmax(s/T)) * T^2 / denom. KL differs
    from the paper's cross-entropy -sum_i t_i log s_i only by the teacher's
    entropy, a constant, so the gradient is the same; KL is 0 when the student
    matches the teacher. With denom=None this equals
    nn.KLDivLoss(reduction="batchmean")(log_softmax(s/T), softmax(t/T)) * T^2.
    The teacher is a fixed target: its logits are detached.
    """
    ### BEGIN SOLUTION: 2 lines
    # the KL of each row (kl_per_row), reduced over the rows (reduce_rows), times T^2
    per_row = kl_per_row(student_logits, teacher_logits, temperature)
    return reduce_rows(per_row, denom) * temperature**2
    ### END SOLUTION


def mlm_loss(student_logits, labels, denom=None):
    """L_mlm: cross-entropy of the student at the masked positions.

    Rows whose label is -100 are ignored, so the caller may pass only the
    masked rows or all rows with -100 on the unmasked ones. Leading dims are
    flattened. With no masked rows the result is 0 (not NaN), still attached
    to the graph so that backward works.
    """
    ### BEGIN SOLUTION: 5 lines
    # flatten to (rows, vocab) and (rows,); keep the rows whose label is not -100
    logits = student_logits.reshape(-1, student_logits.shape[-1])
    labels = labels.reshape(-1)
    keep = labels != -100
    # cross-entropy of each kept row, then reduced over the rows (reduce_rows)
    per_row = F.cross_entropy(logits[keep], labels[keep], reduction="none")
    return reduce_rows(per_row, denom)
    ### END SOLUTION


def logit_mse_loss(student_logits, teacher_logits, denom=None):
    """L_mse of the reference distiller (alpha_mse, off by default): the squared difference of the raw logits
    summed over the vocabulary: nn.MSELoss(reduction="sum")(s, t) / rows with denom=None ("batchmean")."""
    per_row = (student_logits - teacher_logits.detach()).square().sum(-1)
    return reduce_rows(per_row, denom)


def cosine_loss(student_hidden, teacher_hidden, denom=None):
    """L_cos: 1 - cos(h_s, h_t) per row, aligning the direction (not the norm)
    of student and teacher hidden states. With denom=None this equals
    nn.CosineEmbeddingLoss()(h_s, h_t, target=ones(N)). The teacher is detached.
    """
    ### BEGIN SOLUTION: 2 lines
    # cosine of each row pair (teacher detached); the loss of a row is 1 - cos, reduced by reduce_rows
    cos = F.cosine_similarity(student_hidden, teacher_hidden.detach(), dim=-1)
    return reduce_rows(1.0 - cos, denom)
    ### END SOLUTION


def combine(losses, alpha_ce=5.0, alpha_mlm=2.0, alpha_cos=1.0, alpha_mse=0.0):
    """The DistilBERT objective: alpha_ce*L_ce + alpha_mlm*L_mlm + alpha_cos*L_cos (+ alpha_mse*L_mse).

    `losses` maps any of "ce", "mlm", "cos", "mse" to a scalar loss; missing parts are
    left out (useful for ablations). Returns (total, parts), where parts holds
    every given loss and the total, detached, for logging.
    """
    alphas = {"ce": alpha_ce, "mlm": alpha_mlm, "cos": alpha_cos, "mse": alpha_mse}
    unknown = set(losses) - set(alphas)
    if unknown:
        raise KeyError(f"unknown loss names {sorted(unknown)}; expected {sorted(alphas)}")
    if not losses:
        raise ValueError("combine() needs at least one loss")
    ### BEGIN SOLUTION: 4 lines
    # the weighted sum of the given losses; the parts (and the total) detached, for logging
    total = sum(alphas[name] * value for name, value in losses.items())
    parts = {name: value.detach() for name, value in losses.items()}
    parts["total"] = total.detach()
    return total, parts
    ### END SOLUTION


# ------------------------------------------------------------------------------------------------------------
# Task distillation (finetune.py: "DistilBERT (D)", Section 4) and Patient-KD (peakd.py: Sun et al. 2019)

def task_loss(logits, labels):
    """Cross-entropy, or MSE for one output (regression); over positions for SQuAD's (B, L) start/end
    logits."""
    if isinstance(logits, (tuple, list)):
        return sum(task_loss(s, y) for s, y in zip(logits, labels)) / len(logits)
    if logits.size(-1) == 1:
        return F.mse_loss(logits.squeeze(-1), labels.float())
    return F.cross_entropy(logits, labels)


def task_distill_loss(student_logits, teacher_logits, labels, temperature=2.0, alpha=0.5):
    """alpha * L_ce (soft_target_loss, batch mean) + (1 - alpha) * task loss (Hinton et al.). A regression
    output (one logit) has no distribution to soften: there the first term is the MSE to the teacher's
    prediction, without T. For SQuAD pass (start, end) tuples: each is distilled over the positions and the
    two losses are averaged. labels=None: the distillation term alone."""
    if isinstance(student_logits, (tuple, list)):
        labels = labels if labels is not None else [None] * len(student_logits)
        return sum(task_distill_loss(s, t, y, temperature, alpha)
                   for s, t, y in zip(student_logits, teacher_logits, labels)) / len(student_logits)
    if student_logits.size(-1) == 1:
        soft = F.mse_loss(student_logits, teacher_logits.detach())
    else:
        soft = soft_target_loss(student_logits, teacher_logits, temperature)
    return soft if labels is None else alpha * soft + (1 - alpha) * task_loss(student_logits, labels)


def pkd_loss(student_logits, teacher_logits, labels, student_cls=None, teacher_cls=None, alpha=0.7,
             temperature=10.0, beta=100.0) -> tuple:
    """Patient-KD (Sun et al. 2019, Eq. 7):
        (1 - alpha) * CE(student, labels)
      + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))    Eq. 5-6, averaged over the batch
      + beta * mean((s / |s| - t / |t|)^2)                                Eq. 6, the "patient" term
    over the [CLS] states (batch, layers, hidden) of the mapped layers. The mean is over every element, as in
    the reference code (F.mse_loss), so beta=100 is the reference weight. Returns (loss, {"ce", "kd", "pt"} as
    floats)."""
    ### BEGIN SOLUTION: 7 lines
    # the hard-label loss, and the soft-target loss at temperature T (times T^2)
    ce = F.cross_entropy(student_logits, labels)
    kd = soft_target_loss(student_logits, teacher_logits, temperature)
    # the patient term: squared distance of the unit-normalised [CLS] states (0 without mapped layers)
    pt = student_logits.new_zeros(())
    if beta and student_cls is not None and student_cls.size(1):
        pt = F.mse_loss(F.normalize(student_cls, dim=-1), F.normalize(teacher_cls.detach(), dim=-1))
    loss = (1 - alpha) * ce + alpha * kd + beta * pt
    return loss, {"ce": ce.item(), "kd": kd.item(), "pt": pt.item()}
    ### END SOLUTION


# ------------------------------------------------------------------------------------------------------------
# The production path: L_ce + L_mlm fused over chunks of rows, gradients computed in the forward pass

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
    def forward(ctx, u, weight, bias, teacher_hidden, labels, teacher_head, temperature, w_ce, w_mlm,
                chunk_size, w_mse):
        # softmaxes in float32 at least (bf16 under autocast)
        acc = torch.promote_types(weight.dtype, torch.float32)
        grad_u = torch.empty(u.shape, dtype=acc, device=u.device)
        grad_w, grad_b = torch.zeros_like(weight, dtype=acc), torch.zeros_like(bias, dtype=acc)
        # taken out of g, put back in float32
        scale = max(abs(w_ce * temperature), abs(w_mlm), abs(2 * w_mse)) or 1.0
        kl_sum, ce_sum, mse_sum = (u.new_zeros((), dtype=acc) for _ in range(3))
        for start in range(0, u.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
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
            g_mlm = log_s.exp_()                       # d CE/dz = softmax(z) - onehot(label)
            g_mlm[torch.arange(len(g_mlm), device=g.device), lab[masked]] -= 1.0
            g[masked] += (w_mlm / scale) * g_mlm
            if g_mse is not None:
                g += g_mse
                del g_mse
            g = g.to(weight.dtype)
            grad_u[rows] = (g @ weight).to(acc).mul_(scale)  # half under autocast: g is of order one there
            grad_w.addmm_(g.t().to(acc), u[rows].to(acc), alpha=scale)
            grad_b.add_(g.sum(0).to(acc), alpha=scale)
        ctx.save_for_backward(grad_u, grad_w, grad_b)
        ctx.dtypes = u.dtype, weight.dtype, bias.dtype
        ctx.mark_non_differentiable(kl_sum, ce_sum, mse_sum)
        return w_ce * temperature**2 * kl_sum + w_mlm * ce_sum + w_mse * mse_sum, kl_sum, ce_sum, mse_sum

    @staticmethod
    def backward(ctx, grad_loss, _kl, _ce, _mse):
        grads = [(grad_loss.to(g.dtype) * g).to(dt) for g, dt in zip(ctx.saved_tensors, ctx.dtypes)]
        return (*grads, None, None, None, None, None, None, None, None)


def head_losses_fused(student_u, decoder_weight, decoder_bias, teacher_hidden, teacher_head, labels,
                      temperature=2.0, weight_ce=1.0, weight_mlm=1.0, chunk_size=1024, weight_mse=0.0):
    """weight_ce * T^2 * sum_rows KL(softmax(t/T) || softmax(s/T)) + weight_mlm * sum_masked CE(s, label) (+
    weight_mse * sum_rows |s - t|^2, the reference distiller's alpha_mse term, when weight_mse != 0), where s
    = F.linear(student_u, decoder_weight, decoder_bias) and t = teacher_head(teacher_hidden), computed chunk
    by chunk without full-vocabulary logits for all rows and without recomputation.

    student_u: (N, d) the student's MLM transform output (the decoder's input); labels: (N,) with -100 on rows
    that are not masked. Returns (loss, kl_sum, ce_sum, mse_sum): `loss` is differentiable w.r.t. student_u,
    decoder_weight and decoder_bias; the sums are detached, for logging (mse_sum is 0 when weight_mse is 0).
    With weight_ce = alpha_ce / D_ce and weight_mlm = alpha_mlm / D_mlm, `loss` is alpha_ce *
    soft_target_loss(..., denom=D_ce) + alpha_mlm * mlm_loss(..., denom=D_mlm).

    Why: checkpointed chunks (bench.soft_target_loss_chunked, the memory baseline) keep memory flat by
    recomputing both heads in backward (one extra pass of the vocabulary projection for student and teacher).
    Here the gradient of the logits is known in closed form, w_ce T (softmax(s/T) - softmax(t/T)) + w_mlm
    (softmax(s) - onehot), so each chunk's gradients w.r.t. student_u, the weight and the bias are computed in
    the forward pass and stored ((N + V) x d numbers); backward just scales them by the incoming gradient. It
    is only worth it when a backward pass follows (training)."""
    return _HeadLosses.apply(student_u, decoder_weight, decoder_bias, teacher_hidden.detach(), labels,
                             teacher_head, temperature, weight_ce, weight_mlm, chunk_size, weight_mse)
