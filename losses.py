"""
The three DistilBERT training losses, written as small pure functions.

Sanh et al. 2019, "DistilBERT, a distilled version of BERT", Section 2
("Knowledge distillation") trains the student with a linear combination of

  L_ce  - distillation loss: the student imitates the teacher's soft target
          distribution, sum_i t_i * log(s_i), where both distributions come
          from a softmax with temperature, p_i = exp(z_i/T) / sum_j exp(z_j/T).
          The same T is used for student and teacher during training; at
          inference T = 1 (i.e. the ordinary softmax).
  L_mlm - the usual supervised masked language modelling loss.
  L_cos - a cosine embedding loss that aligns the directions of the student's
          and the teacher's hidden state vectors.

The released model used alpha_ce=5, alpha_mlm=2, alpha_cos=1 and T=2. As in
the authors' reference training code, L_ce is a KL divergence over every real
(non-pad) token, multiplied by T^2 (Hinton et al. 2015: this keeps gradient
magnitudes comparable across temperatures, since d(KL)/dz scales like 1/T^2
for large T), and L_cos is taken over the real tokens of the last layer.

Every function works on rows: 2-D tensors (N rows x features) that the caller
has already picked out with a boolean mask. Every loss takes `denom`:
  denom=None  -> mean over the rows given;
  denom=D     -> sum over the rows given, divided by D.
With gradient accumulation (and several ranks) the trainer passes the total
row count of the whole optimizer step as D, so that summing the micro-batch
gradients gives exactly the gradient of one big batch. Averaging each
micro-batch separately would not: micro-batches rarely hold the same number
of real or masked tokens, so their rows would get unequal weights.
(DDP averages gradients over ranks; a trainer using it should account for that.)
"""

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _reduce(per_row, denom):
    """Sum of per-row losses divided by denom (None: by the row count).
    With zero rows this is an exact 0 that still belongs to the graph."""
    if denom is None:
        denom = max(per_row.numel(), 1)
    return per_row.sum() / denom


def _kl_per_row(student_logits, teacher_logits, temperature):
    """KL(softmax(t/T) || softmax(s/T)) for every row, shape (N,)."""
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    p = log_p.exp()
    # p * (log p - log q), with the convention 0 * log 0 = 0 (a teacher logit of
    # -inf gives p = 0 and log p = -inf; the product would otherwise be NaN).
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(dim=-1)


def soft_target_loss(student_logits, teacher_logits, temperature=2.0, denom=None):
    """L_ce of DistilBERT Section 2: match the teacher's softened distribution.

    Returns sum_rows KL(softmax(t/T) || softmax(s/T)) * T^2 / denom. KL differs
    from the paper's cross-entropy -sum_i t_i log s_i only by the teacher's
    entropy, a constant, so the gradient is the same; KL is 0 when the student
    matches the teacher. With denom=None this equals
    nn.KLDivLoss(reduction="batchmean")(log_softmax(s/T), softmax(t/T)) * T^2.
    The teacher is a fixed target: its logits are detached.
    """
    per_row = _kl_per_row(student_logits, teacher_logits, temperature)
    return _reduce(per_row, denom) * temperature**2


def soft_target_loss_chunked(student_hidden, teacher_hidden, student_head, teacher_head,
                             temperature=2.0, denom=None, chunk_size=1024):
    """soft_target_loss(student_head(student_hidden), teacher_head(teacher_hidden))
    without ever holding the full (rows x vocab) logits.

    The heads are any differentiable callables (N, d) -> (N, V), e.g. the MLM
    transform followed by the decoder tied to the word embeddings. Value and
    gradients (w.r.t. student_hidden and the student head's parameters) are
    those of the unchunked loss, up to float rounding.

    Why recompute: a loop over chunks alone saves little. Autograd keeps every
    tensor that backward needs (each chunk's log-softmax output, teacher
    probabilities, ...) until backward runs, so after the loop the saved
    (chunk x V) tensors of all chunks are alive together and the peak still
    grows with rows x V; only short-lived temporaries shrink. Wrapping each chunk
    in torch.utils.checkpoint keeps only the chunk's inputs; during backward it
    reruns that chunk's forward pass, backpropagates, and frees it before the
    next chunk. The cost is one extra forward pass of both heads per chunk
    (the teacher's logits are recomputed too rather than stored). Measured
    peak for L_ce forward+backward at 4096 rows, V=30522, float32 on CPU: naive
    3.9 GB, plain chunks of 512 rows 1.4 GB, checkpointed chunks of 512 0.28 GB.
    """
    def chunk_kl_sum(s_rows, t_rows):
        with torch.no_grad():
            t_logits = teacher_head(t_rows)
        return _kl_per_row(student_head(s_rows), t_logits, temperature).sum()

    n = student_hidden.shape[0]
    total = student_hidden.new_zeros(())
    for start in range(0, n, chunk_size):
        s_rows = student_hidden[start:start + chunk_size]
        t_rows = teacher_hidden[start:start + chunk_size].detach()
        total = total + checkpoint(chunk_kl_sum, s_rows, t_rows, use_reentrant=False)
    if denom is None:
        denom = max(n, 1)
    return total / denom * temperature**2


class _HeadLosses(torch.autograd.Function):
    """Forward computes the losses and, on the way, their gradients, one chunk of rows at a time; backward only
    scales the stored gradients. Nothing (rows x vocab) outlives a chunk and nothing is recomputed.

    Precision: w_ce and w_mlm carry the step's 1/D (D ~ 1e5 tokens), and softmax differences are ~1e-5 each,
    so the logit gradient w * (q - p) is ~1e-10: below fp16's smallest number (6e-8) once autocast runs `g @
    weight` in half precision, and the GradScaler's factor only arrives in backward. So g is kept at order one
    (divided by `scale` = the larger weight) through the half-precision products, the factor goes back on in
    float32, and the stored gradients are float32 (mixed-precision training keeps loss scaling for the same
    reason: Micikevicius et al. 2018, "Mixed Precision Training", Section 3.2)."""

    @staticmethod
    def forward(ctx, u, weight, bias, teacher_hidden, labels, teacher_head, T, w_ce, w_mlm, chunk_size,
                w_mse):
        acc = torch.promote_types(weight.dtype, torch.float32)  # softmaxes in float32 at least (bf16 under autocast)
        grad_u = torch.empty(u.shape, dtype=acc, device=u.device)
        grad_w, grad_b = torch.zeros_like(weight, dtype=acc), torch.zeros_like(bias, dtype=acc)
        scale = max(abs(w_ce * T), abs(w_mlm), abs(2 * w_mse)) or 1.0  # taken out of g, put back in float32
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
            log_q = F.log_softmax(z.div_(T), dim=-1)
            del z
            log_p = F.log_softmax(t.div_(T), dim=-1)
            del t
            p = log_p.exp()
            kl_sum += log_p.sub_(log_q).mul_(p).masked_fill_(p == 0, 0.0).sum()  # 0 log 0 = 0, as _kl_per_row
            del log_p
            # d(w_ce T^2 KL)/dz / scale = w_ce T (q - p) / scale, in log_q's storage
            g = log_q.exp_().sub_(p).mul_(w_ce * T / scale)
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
        return w_ce * T**2 * kl_sum + w_mlm * ce_sum + w_mse * mse_sum, kl_sum, ce_sum, mse_sum

    @staticmethod
    def backward(ctx, grad_loss, _kl, _ce, _mse):
        grads = [(grad_loss.to(g.dtype) * g).to(dt) for g, dt in zip(ctx.saved_tensors, ctx.dtypes)]
        return (*grads, None, None, None, None, None, None, None, None)


def head_losses_fused(student_u, decoder_weight, decoder_bias, teacher_hidden, teacher_head, labels,
                      temperature=2.0, weight_ce=1.0, weight_mlm=1.0, chunk_size=1024, weight_mse=0.0):
    """weight_ce * T^2 * sum_rows KL(softmax(t/T) || softmax(s/T)) + weight_mlm * sum_masked CE(s, label)
    (+ weight_mse * sum_rows |s - t|^2, the reference distiller's alpha_mse term, when weight_mse != 0), where
    s = F.linear(student_u, decoder_weight, decoder_bias) and t = teacher_head(teacher_hidden), computed chunk by
    chunk without full-vocabulary logits for all rows and without recomputation.

    student_u: (N, d) the student's MLM transform output (the decoder's input); labels: (N,) with -100 on rows that
    are not masked. Returns (loss, kl_sum, ce_sum, mse_sum): `loss` is differentiable w.r.t. student_u,
    decoder_weight and decoder_bias; the sums are detached, for logging (mse_sum is 0 when weight_mse is 0).
    With weight_ce = alpha_ce / D_ce and weight_mlm = alpha_mlm / D_mlm, `loss` is
    alpha_ce * soft_target_loss(..., denom=D_ce) + alpha_mlm * mlm_loss(..., denom=D_mlm).

    Why: soft_target_loss_chunked keeps memory flat by recomputing both heads in backward (one extra pass of the
    vocabulary projection for student and teacher). Here the gradient of the logits is known in closed form,
    w_ce T (softmax(s/T) - softmax(t/T)) + w_mlm (softmax(s) - onehot), so each chunk's gradients w.r.t. student_u,
    the weight and the bias are computed in the forward pass and stored ((N + V) x d numbers); backward just scales
    them by the incoming gradient. It is only worth it when a backward pass follows (training)."""
    return _HeadLosses.apply(student_u, decoder_weight, decoder_bias, teacher_hidden.detach(), labels,
                             teacher_head, temperature, weight_ce, weight_mlm, chunk_size, weight_mse)


def mlm_loss(student_logits, labels, denom=None):
    """L_mlm: cross-entropy of the student at the masked positions.

    Rows whose label is -100 are ignored, so the caller may pass only the
    masked rows or all rows with -100 on the unmasked ones. Leading dims are
    flattened. With no masked rows the result is 0 (not NaN), still attached
    to the graph so that backward works.
    """
    logits = student_logits.reshape(-1, student_logits.shape[-1])
    labels = labels.reshape(-1)
    keep = labels != -100
    per_row = F.cross_entropy(logits[keep], labels[keep], reduction="none")
    return _reduce(per_row, denom)


def logit_mse_loss(student_logits, teacher_logits, denom=None):
    """L_mse of the reference distiller (alpha_mse, off by default): the squared difference of the raw logits
    summed over the vocabulary: nn.MSELoss(reduction="sum")(s, t) / rows with denom=None ("batchmean")."""
    per_row = (student_logits - teacher_logits.detach()).square().sum(-1)
    return _reduce(per_row, denom)


def cosine_loss(student_hidden, teacher_hidden, denom=None):
    """L_cos: 1 - cos(h_s, h_t) per row, aligning the direction (not the norm)
    of student and teacher hidden states. With denom=None this equals
    nn.CosineEmbeddingLoss()(h_s, h_t, target=ones(N)). The teacher is detached.
    """
    cos = F.cosine_similarity(student_hidden, teacher_hidden.detach(), dim=-1)
    return _reduce(1.0 - cos, denom)


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
    total = sum(alphas[name] * value for name, value in losses.items())
    parts = {name: value.detach() for name, value in losses.items()}
    parts["total"] = total.detach()
    return total, parts


# -----------------------------------------------------------------------------
# python losses.py --measure-memory
# Peak memory of L_ce (forward + backward) at a BERT-base sized batch, naive vs
# chunked. Each variant runs in a fresh process; its peak is the process's max
# resident set size (getrusage) minus the max RSS right after building inputs.

def _measure_one(variant, chunk_size, out_path, rows=4096, d=768, vocab=30522):
    import resource
    torch.manual_seed(0)
    torch.set_num_threads(2)

    def make_head():
        emb = torch.nn.Embedding(vocab, d)
        decoder = torch.nn.Linear(d, vocab)
        decoder.weight = emb.weight  # tied to the word embeddings, as in BERT
        return torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.GELU(),
                                   torch.nn.LayerNorm(d), decoder)

    student_head, teacher_head = make_head(), make_head().requires_grad_(False)
    s_hidden = torch.randn(rows, d, requires_grad=True)
    t_hidden = torch.randn(rows, d)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    if variant == "naive":
        loss = soft_target_loss(student_head(s_hidden), teacher_head(t_hidden))
    else:
        loss = soft_target_loss_chunked(s_hidden, t_hidden, student_head, teacher_head,
                                        chunk_size=chunk_size)
    loss.backward()
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    torch.save({"loss": loss.detach(), "peak_mb": peak_mb, "grad_hidden": s_hidden.grad,
                "grad_emb": student_head[3].weight.grad}, out_path)


def _measure_memory(chunk_sizes=(2048, 1024, 512)):
    import os, subprocess, sys, tempfile
    with tempfile.TemporaryDirectory() as tmp:
        def run(variant, chunk_size=0):
            path = os.path.join(tmp, f"{variant}{chunk_size}.pt")
            subprocess.run([sys.executable, __file__, "--measure-one", variant,
                            str(chunk_size), path], check=True)
            return torch.load(path)

        naive = run("naive")
        print(f"rows=4096 d=768 vocab=30522 float32, L_ce forward+backward, peak RSS above inputs")
        print(f"naive              : {naive['peak_mb']:8.1f} MB  loss {naive['loss'].item():.6f}")
        for cs in chunk_sizes:
            res = run("chunked", cs)
            same = (torch.allclose(res["loss"], naive["loss"], rtol=1e-5)
                    and torch.allclose(res["grad_hidden"], naive["grad_hidden"], rtol=1e-4, atol=1e-9)
                    and torch.allclose(res["grad_emb"], naive["grad_emb"], rtol=1e-4, atol=1e-9))
            print(f"chunked (size {cs:4d}): {res['peak_mb']:8.1f} MB  loss {res['loss'].item():.6f}  "
                  f"ratio naive/chunked {naive['peak_mb'] / res['peak_mb']:.2f}x  "
                  f"loss and grads equal: {same}")
            assert same, "chunked loss or gradients differ from the naive ones"


if __name__ == "__main__":
    import sys
    if sys.argv[1:2] == ["--measure-memory"]:
        _measure_memory()
    elif sys.argv[1:2] == ["--measure-one"]:
        _measure_one(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        print("usage: python losses.py --measure-memory")
