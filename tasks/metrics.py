"""
The tasks' official metrics, by hand with numpy: accuracy, F1, Matthews correlation (CoLA), Pearson and Spearman
(STS-B), GLUE's macro score, and evaluate(task, logits, labels) for a task's own set. Every function returns a
fraction in [0, 1] (or a correlation); tables show them x 100. SQuAD's exact match and F1 are in tasks/squad.py.
"""
import math

import numpy as np
import torch

from tasks.glue import GLUE_TASKS, task_spec


def accuracy(pred, gold):
    return float(np.mean(np.asarray(pred) == np.asarray(gold)))


def f1_binary(pred, gold, positive=1):
    pred, gold = np.asarray(pred) == positive, np.asarray(gold) == positive
    tp, fp, fn = np.sum(pred & gold), np.sum(pred & ~gold), np.sum(~pred & gold)
    return float(2 * tp / (2 * tp + fp + fn)) if tp else 0.0


def matthews_corrcoef(pred, gold):
    """Matthews correlation from the confusion matrix C (multi-class form; the 2x2 case is
    (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn))). 0 when a marginal is constant."""
    classes = np.unique(np.concatenate([np.asarray(pred), np.asarray(gold)]))
    C = np.array([[np.sum((np.asarray(gold) == g) & (np.asarray(pred) == p)) for p in classes] for g in classes], float)
    n, correct, t, p = C.sum(), np.trace(C), C.sum(1), C.sum(0)
    denom = math.sqrt((n * n - p @ p) * (n * n - t @ t))
    return float((correct * n - t @ p) / denom) if denom else 0.0


def pearson(x, y):
    x, y = np.asarray(x, float) - np.mean(x), np.asarray(y, float) - np.mean(y)
    denom = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y / denom) if denom else 0.0


def ranks(x):
    """1-based ranks; tied values share the average of the ranks they span."""
    _, where, counts = np.unique(np.asarray(x, float), return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based position of each distinct value's first copy
    return (first + (counts + 1) / 2)[where.reshape(-1)]


def spearman(x, y):
    return pearson(ranks(x), ranks(y))


def glue_score(results):
    """GLUE's macro average: each task's metrics are averaged first (MRPC F1/acc, STS-B Pearson/Spearman, QQP
    acc/F1, MNLI matched/mismatched), then the tasks. results: {task: {metric: value}}; non-GLUE tasks are
    ignored."""
    scores = []
    for task, metrics in results.items():
        if task in GLUE_TASKS:
            missing = [m for m in GLUE_TASKS[task]["metrics"] if m not in metrics]
            if missing:
                raise KeyError(f"glue_score: {task} lacks the metrics {missing} (has {sorted(metrics)})")
            scores.append(np.mean([metrics[m] for m in GLUE_TASKS[task]["metrics"]]))
    if not scores:
        raise ValueError("glue_score: no GLUE task in the results")
    return float(np.mean(scores))


METRICS = {"accuracy": accuracy, "f1": f1_binary, "mcc": matthews_corrcoef}


def evaluate(task, logits, labels) -> dict:
    """The task's metrics (GLUE_TASKS[task]["metrics"]) from logits (N, num_labels) and gold labels."""
    name, spec = task_spec(task)
    logits, labels = torch.as_tensor(logits).float().numpy(), torch.as_tensor(labels).numpy()
    if spec["num_labels"] == 1:
        return {"pearson": pearson(logits[:, 0], labels), "spearman": spearman(logits[:, 0], labels)}
    pred = logits.argmax(-1)
    return {m: METRICS[m](pred, labels) for m in spec["metrics"] if m in METRICS}
