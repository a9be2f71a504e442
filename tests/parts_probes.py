"""
The probes of the graded tests: what runs in the process that holds the student's code. The tests themselves
(tests/test_parts.py) run in the grader's process and call these through `student.NAME(...)`.

A probe takes plain inputs (tensors, numbers, lists, dicts), builds what its test needs (a Layer with given
weights, a teacher, a stand-in), calls one graded function the way its docstring documents it, and returns what
came out: outputs, gradients, what a stand-in saw. It compares nothing and holds no expected value. Where the
graded function calls another part's function, a reference with that function's own signature stands in for
it (stand_in), so that a missing part costs only its own points, and a solution may call it positionally or
by keyword, as that function's docstring allows.
"""

import contextlib
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

import data
import losses
import model
import peakd
import train
from machinery import optim

TINY = dict(vocab_size=30, hidden_size=16, num_heads=2, intermediate_size=32, max_position=8)
SDPA = F.scaled_dot_product_attention  # the kernel itself, taken before any solution runs


@contextlib.contextmanager
def stand_in(owner, name, value):
    """owner.name replaced by value for the block: another part's function, replaced by a reference."""
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


@contextlib.contextmanager
def counting_sdpa():
    """F.scaled_dot_product_attention counted while the block runs (explicit_attention writes the formula out)."""
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return SDPA(*args, **kwargs)

    with stand_in(F, "scaled_dot_product_attention", counted), stand_in(
        torch._C._nn, "scaled_dot_product_attention", counted
    ):
        yield calls


# ------------------------------------------------------------------------------------------------------------
# References that stand in for other parts: the signatures of the functions they replace


def reference_kl(student_logits, teacher_logits, temperature):
    """losses.kl_per_row by F.kl_div."""
    return F.kl_div(
        F.log_softmax(student_logits / temperature, -1),
        F.log_softmax(teacher_logits.detach() / temperature, -1),
        reduction="none",
        log_target=True,
    ).sum(-1)


def reference_soft_targets(student_logits, teacher_logits, temperature=2.0, denom=None):
    """losses.soft_target_loss: the KL's rows reduced (mean, or sum / denom), times T^2."""
    per_row = reference_kl(student_logits, teacher_logits, temperature)
    reduced = per_row.mean() if denom is None else per_row.sum() / denom
    return reduced * temperature**2


# ------------------------------------------------------------------------------------------------------------
# attention, heads, layer, embeddings, student_init: model.py


def attention(q, k, v, real_keys, dropout_p=None, seed=None, grad=None):
    """model.explicit_attention(q, k, v, real_keys[, dropout_p=...]), F.scaled_dot_product_attention counted.
    seed: torch.manual_seed before the call (dropout); grad "sum" or "square": the gradients of out.sum() or
    out.square().sum() to q, k and v."""
    if grad:
        q, k, v = (t.requires_grad_() for t in (q, k, v))
    with counting_sdpa() as calls:
        if seed is not None:
            torch.manual_seed(seed)
        if dropout_p is None:
            out = model.explicit_attention(q, k, v, real_keys)
        else:
            out = model.explicit_attention(q, k, v, real_keys, dropout_p=dropout_p)
        grads = None
        if grad:
            (out.sum() if grad == "sum" else out.square().sum()).backward()
            grads = [q.grad, k.grad, v.grad]
    return {"out": out, "grads": grads, "sdpa_calls": len(calls)}


def a_layer(weights, **cfg):
    layer = model.Layer(model.BertConfig(**TINY, **{"dropout": 0.0, "attention_dropout": 0.0, **cfg}))
    layer.load_state_dict(weights)
    return layer


def heads(weights, x, real_keys, swap_qk=None, training=False, cfg=None, explicit_stand_in=False):
    """Layer(cfg).attention(x, real_keys[, swap_qk=...]) with the given weights, in eval mode (or training).
    explicit_stand_in: model.explicit_attention replaced by F.scaled_dot_product_attention, its dropout_p
    recorded."""
    layer = a_layer(weights, **(cfg or {})).train(training)
    calls = []

    def explicit_attention(q, k, v, real_keys, dropout_p=0.0):
        calls.append(dropout_p)
        return SDPA(q, k, v, attn_mask=real_keys, dropout_p=dropout_p)

    with stand_in(model, "explicit_attention", explicit_attention) if explicit_stand_in else \
            contextlib.nullcontext(), torch.no_grad():
        out = layer.attention(x, real_keys) if swap_qk is None else layer.attention(x, real_keys, swap_qk=swap_qk)
    return {"out": out, "explicit_calls": calls}


def layer(weights, x, real_keys, attention_out, swap_qk=None, training=False, dropout=0.0):
    """Layer(cfg)(x, real_keys[, swap_qk]) as Bert.forward calls it, with its attention replaced by a stand-in
    that returns attention_out (transformers' attention output for x) and records how it was called."""
    lay = a_layer(weights, dropout=dropout).train(training)
    given, calls = x, []

    def attention(x, real_keys, swap_qk=False):
        calls.append({"x": bool(x is given or (x.shape == given.shape and torch.equal(x, given))),
                      "swap_qk": swap_qk})
        return attention_out

    with stand_in(lay, "attention", attention), torch.no_grad():
        out = lay(x, real_keys) if swap_qk is None else lay(x, real_keys, swap_qk)
    return {"out": out, "calls": calls}


def embeddings(weights, input_ids, token_type_ids=None, type_vocab_size=2, dropout=0.0, training=False, seed=None):
    """Embeddings(cfg)(input_ids[, token_type_ids]) with the given weights."""
    emb = model.Embeddings(model.BertConfig(**TINY, type_vocab_size=type_vocab_size, dropout=dropout))
    emb.load_state_dict(weights)
    emb.train(training)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        return emb(input_ids) if token_type_ids is None else emb(input_ids, token_type_ids)


def student_init(teacher_state, num_layers, layers=None, fold_token_types=None, zero_teacher_after=False):
    """model.student_from_teacher(teacher[, layers][, fold_token_types=...]) for a teacher (pooler, two token
    types) holding teacher_state; what came back, its state, and the teacher's state after the call.
    zero_teacher_after: then the teacher's parameters zeroed, and the student's tensors that became all 0."""
    teacher = model.Bert(model.BertConfig(**TINY, num_layers=num_layers, pooler=True))
    teacher.load_state_dict(teacher_state)
    args = () if layers is None else (layers,)
    kwargs = {} if fold_token_types is None else {"fold_token_types": fold_token_types}
    student = model.student_from_teacher(teacher, *args, **kwargs)
    out = {"type": f"{type(student).__module__}.{type(student).__qualname__}",
           "teacher_after": {k: v.clone() for k, v in teacher.state_dict().items()}}
    if not isinstance(student, torch.nn.Module):
        return out
    state = student.state_dict()
    out.update(state={k: v.clone() for k, v in state.items()}, training=student.training)
    cfg = getattr(student, "cfg", None)
    out["cfg"] = {key: getattr(cfg, key, None) for key in ("num_layers", "type_vocab_size", "pooler")}
    if zero_teacher_after:
        with torch.no_grad():
            for p in teacher.parameters():
                p.zero_()
        out["zeroed"] = sorted(name for name, t in state.items() if t.numel() and not t.abs().sum())
    return out


# ------------------------------------------------------------------------------------------------------------
# kl, soft_targets, mlm, cosine, combine, pkd: losses.py


def kl(student_logits, teacher_logits, temperature, grad=False):
    """losses.kl_per_row(s, t, T); grad: the gradients of its sum to s and t (None: none), and whether the
    caller's teacher tensor still requires a gradient; the teacher's values after the call."""
    s, t = student_logits, teacher_logits
    if grad:
        s.requires_grad_(), t.requires_grad_()
    out = losses.kl_per_row(s, t, temperature)
    result = {"kl": out}
    if grad:
        out.sum().backward()
        result.update(s_grad=s.grad, t_grad=t.grad, t_requires_grad=t.requires_grad)
    result["t_after"] = t.detach()
    return result


def soft_targets(student_logits, teacher_logits, temperature=None, denom=None):
    """losses.soft_target_loss(s, t[, temperature=...][, denom=...]), kl_per_row stood in for."""
    kwargs = {k: v for k, v in (("temperature", temperature), ("denom", denom)) if v is not None}
    with stand_in(losses, "kl_per_row", reference_kl):
        return losses.soft_target_loss(student_logits, teacher_logits, **kwargs)


def mlm(student_logits, labels, denom=None, grad=False):
    """losses.mlm_loss(logits, labels[, denom=...]); grad: the gradient of the loss to the logits."""
    if grad:
        student_logits.requires_grad_()
    out = losses.mlm_loss(student_logits, labels) if denom is None else \
        losses.mlm_loss(student_logits, labels, denom=denom)
    result = {"loss": out}
    if grad:
        out.backward()
        result["grad"] = student_logits.grad
    return result


def cosine(student_hidden, teacher_hidden, denom=None, grad=False):
    """losses.cosine_loss(s, t[, denom=...]); grad: the gradients of the loss to s and t."""
    s, t = student_hidden, teacher_hidden
    if grad:
        s.requires_grad_(), t.requires_grad_()
    out = losses.cosine_loss(s, t) if denom is None else losses.cosine_loss(s, t, denom=denom)
    result = {"loss": out}
    if grad:
        out.backward()
        result.update(s_grad=s.grad, t_grad=t.grad, t_requires_grad=t.requires_grad)
    return result


def combine(values, **alphas):
    """losses.combine({name: a 0-d tensor that requires grad}[, alpha_...=...]) -> what it returned."""
    given = {name: torch.tensor(float(v), requires_grad=True) for name, v in values.items()}
    return losses.combine(given, **alphas)


def pkd(student_logits, teacher_logits, labels, student_cls=None, teacher_cls=None, grad=False, **options):
    """losses.pkd_loss(s, t, labels, s_cls, t_cls[, alpha=, temperature=, beta=]), soft_target_loss stood in
    for; grad: the gradients of the loss to the [CLS] states."""
    if grad:
        for h in (student_cls, teacher_cls):
            h.requires_grad_()
    with stand_in(losses, "soft_target_loss", reference_soft_targets):
        result = losses.pkd_loss(student_logits, teacher_logits, labels, student_cls, teacher_cls, **options)
    out = {"result": result}
    if grad:
        result[0].backward()
        out.update(s_cls_grad=student_cls.grad, t_cls_grad=teacher_cls.grad,
                   t_cls_requires_grad=teacher_cls.requires_grad)
    return out


# ------------------------------------------------------------------------------------------------------------
# masking, smoothing: data.py; lr_schedule: machinery/optim.py; ptp: peakd/ptp.py


def masking(input_ids, attention_mask, seed, mask_id, vocab_size, special_ids, weights=None):
    """data.mask_tokens(ids, mask, mask_id=, vocab_size=, special_ids=, generator=torch.Generator seeded by
    seed[, weights=]); the inputs after the call."""
    g = torch.Generator().manual_seed(seed)
    kwargs = {} if weights is None else {"weights": weights}
    out = data.mask_tokens(input_ids, attention_mask, mask_id=mask_id, vocab_size=vocab_size,
                           special_ids=special_ids, generator=g, **kwargs)
    return {"out": out, "ids_after": input_ids, "mask_after": attention_mask}


def smoothing(counts, special_ids, exponent=None, as_numpy=False):
    """data.smoothing_weights(counts, special_ids[, exponent=]); as_numpy: counts passed as a numpy array (as
    the prepared shards hold them)."""
    if as_numpy:
        counts = np.asarray(counts)
    return data.smoothing_weights(counts, special_ids) if exponent is None else \
        data.smoothing_weights(counts, special_ids, exponent=exponent)


def lr_schedule(calls):
    """[optim.linear_schedule(step, total, warmup_steps) for each call], positional, as LambdaLR's lambda."""
    return [optim.linear_schedule(step, total, warmup) for step, total, warmup in calls]


def ptp(teacher_logits, labels, t1, t2):
    """peakd.ptp_labels(teacher_logits, labels, t1=, t2=)."""
    return peakd.ptp_labels(teacher_logits, labels, t1=t1, t2=t2)


# ------------------------------------------------------------------------------------------------------------
# denominators: train.forward_backward


class Recorder(torch.nn.Module):
    """A stand-in for train.Objective: a loss linear in three weights, so that each weight's gradient is the sum
    of token values over the step's real (masked) tokens divided by the denominator it was given. It records
    the denominators it saw (as numbers: a 0-d tensor is read)."""

    def __init__(self, *args, **kwargs):  # also stands in for DistributedDataParallel(module, ...)
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))
        self.seen = []

    @contextlib.contextmanager
    def no_sync(self):  # as DistributedDataParallel has
        yield

    def forward(self, ids, attention_mask, labels, teacher_hidden, denoms, padded=None, counts=None):
        self.seen.append({k: float(v) for k, v in denoms.items()})
        x, real, masked = ids.float(), attention_mask.bool(), labels != -100
        loss = (
            self.w[0] * x[real].sum() / denoms["real"]
            + self.w[1] * x[masked].sum() / denoms["masked"]
            + self.w[2] * x[real].sum() / denoms["ce"]
        )
        return loss, {"total": loss.detach()}


def denominators(batches, ce_positions, world=1):
    """train.forward_backward(recorder, None, batches, cfg) on one rank, or on `world` ranks that hold the same
    micro-batches (DistributedDataParallel, the world size and all_reduce stood in for: all_reduce as
    torch.distributed documents it, dist.all_reduce(t) / (t, op=ReduceOp.SUM) / (t, ReduceOp.SUM))."""
    rec = Recorder()
    cfg = SimpleNamespace(ce_positions=ce_positions, alpha_ce=5.0, alpha_mlm=2.0, alpha_cos=1.0, alpha_mse=0.0,
                          alpha_pool=0.0)
    batches = [tuple(b) for b in batches]
    if world == 1:
        returned = train.forward_backward(rec, None, batches, cfg)
    else:
        def all_reduce(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
            if op != dist.ReduceOp.SUM:
                raise ValueError(f"all_reduce with op {op}: the counts are summed over the ranks")
            tensor.mul_(world)  # every rank holds the same counts

        with stand_in(train, "DDP", Recorder), stand_in(dist, "all_reduce", all_reduce), stand_in(
            dist, "get_world_size", lambda group=None: world
        ), stand_in(dist, "is_initialized", lambda: True), stand_in(dist, "get_rank", lambda group=None: 0):
            returned = train.forward_backward(rec, None, batches, cfg)
    n_real = returned[2] if isinstance(returned, (tuple, list)) and len(returned) == 3 else returned
    return {"seen": rec.seen, "grad": rec.w.grad, "n_real": n_real}

