"""
The DistilBERT training losses (Sanh et al. 2019, Section 2 "Knowledge distillation"), and the task losses of
fine-tuning (finetune/) and Patient-KD (peakd.py), each formula written once as a small pure function:

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
    temperature KL. The teacher is a fixed target: detached, with the caller's tensor left as it is, so no
    gradient reaches it. A teacher probability of 0 (a logit of -inf) adds 0 (0 log 0 = 0). In float16 too:
    the result keeps the inputs' dtype and stays finite and accurate when a row's logits are 30 apart (where
    softmax's small probabilities underflow to 0)."""
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
    to the graph so that backward works. denom None: the mean over the
    masked rows; a number D: their sum / D.
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
    nn.CosineEmbeddingLoss()(h_s, h_t, target=ones(N)); a number D: the sum
    over rows / D. The teacher is detached (the caller's tensor left as it is).
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
# Task distillation (finetune/: "DistilBERT (D)", Section 4) and Patient-KD (peakd.py: Sun et al. 2019)

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
    the reference code (F.mse_loss), so beta=100 is the reference weight; without [CLS] states (None) or mapped
    layers the patient term is 0. The teacher's [CLS] states are detached (no gradient reaches them). Returns
    (loss, {"ce", "kd", "pt"} as floats)."""
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
