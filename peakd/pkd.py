"""
Patient-KD (Sun et al. 2019, Section 3) as Pea-KD uses it: which student layer learns from which teacher layer,
the states both are compared on ([CLS], or the mean of the tokens: `pool`), the teacher's outputs computed once,
and the loss for finetune.fit (the formula itself is losses.pkd_loss).
"""
import torch

from finetune import Classifier, masked_mean
from losses import pkd_loss

def pkd_layer_map(student_depth: int, teacher_depth: int, strategy: str = "skip") -> list:
    """Pairs (student effective layer j, teacher layer i), 1-based (index 0 of hidden_states is the
    embeddings), for the intermediate student layers j = 1..m-1; the last layer is matched through the logits
    instead (Patient-KD, Section 3.2). "skip" (PKD-Skip): i = round(j * n / m), every (n/m)-th teacher layer,
    e.g. 6 -> 12 gives teacher layers 2, 4, 6, 8, 10; "last" (PKD-Last): the m-1 teacher layers just below the
    last one."""
    m, n = student_depth, teacher_depth
    if strategy == "skip":
        return [(j, min(max(int(j * n / m + 0.5), 1), n)) for j in range(1, m)]
    if strategy == "last":
        return [(j, max(n - m + j, 1)) for j in range(1, m)]
    raise ValueError(f"strategy={strategy!r}: expected 'skip' or 'last'")


def cls_states(hidden_states, layers) -> torch.Tensor:
    """The [CLS] vectors of the chosen layers, stacked: (B, len(layers), hidden); (B, 0, hidden) for none (a
    1-layer student has no intermediate layer to match)."""
    if not layers:
        return hidden_states[0][:, :0]
    return torch.stack([hidden_states[i][:, 0] for i in layers], dim=1)


def pooled_states(hidden_states, layers, mask, pool="cls") -> torch.Tensor:
    """(B, len(layers), hidden): per chosen layer, its [CLS] state (pool="cls", as Patient-KD) or the mean of
    its states over the real tokens (pool="mean", `mask` 1 on them)."""
    if pool == "cls" or not layers:
        return cls_states(hidden_states, layers)
    if pool != "mean":
        raise ValueError(f"pool={pool!r}: expected 'cls' or 'mean'")
    return torch.stack([masked_mean(hidden_states[i], mask) for i in layers], dim=1)


def classifier(encoder, num_labels, pool="cls"):
    return Classifier(encoder, num_labels, "auto" if pool == "cls" else "distilbert", pool)



@torch.no_grad()
def teacher_outputs(teacher, tensors, batch_size=128, pool="cls"):
    """One pass of the frozen teacher over the training set: logits (N, C) and the [CLS] (or mean-pooled:
    `pooled_states`) state of every layer, embeddings included (N, n + 1, hidden), kept for PTP labels and the
    distillation targets."""
    teacher.eval()
    device = next(teacher.parameters()).device
    logits, cls = [], []
    for idx in torch.arange(len(tensors["input_ids"])).split(batch_size):
        L = int(tensors["attention_mask"][idx].sum(1).max())
        out = teacher(*(tensors[k][idx, :L].to(device) for k in ("input_ids", "attention_mask",
                                                                 "token_type_ids")))
        logits.append(out.logits.float().cpu())
        mask = tensors["attention_mask"][idx, :L].to(device)
        cls.append(pooled_states(out.hidden_states, list(range(len(out.hidden_states))), mask, pool).float().cpu())
    return torch.cat(logits), torch.cat(cls)


def pkd_loss_fn(layer_map, alpha=0.7, temperature=10.0, beta=100.0, pool="cls"):
    """loss_fn(model, batch) for finetune.fit: pkd_loss against the teacher's outputs stored in the batch (its
    states pooled the same way, `pool`)."""
    s_layers, t_layers = [j for j, _ in layer_map], [i for _, i in layer_map]

    def loss_fn(model, batch):
        out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        return pkd_loss(out.logits, batch["teacher_logits"], batch["labels"],
                        pooled_states(out.hidden_states, s_layers, batch["attention_mask"], pool),
                        batch["teacher_cls"][:, t_layers], alpha, temperature, beta)[0]
    return loss_fn
