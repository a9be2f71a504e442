"""
Pretraining with Teacher's Predictions, PTP (Pea-KD Section 3.3): before distillation the student learns, with a
throw-away 4-way head, what the teacher "knows" about each training example.
"""
import torch

from finetune import fit
from peakd.pkd import classifier
from model import Bert

# (t1, t2) of the reference code (snudm-starlab/Pea-KD, src/utils/nli_data_processing.py,
# get_pretrain_dataloader_PTP): "confident" means max softmax probability > t1 when the teacher is right, > t2
# when it is wrong.
PTP_THRESHOLDS = {"RTE": (0.8, 0.6), "MRPC": (0.95, 0.75), "SST-2": (0.98, 0.8), "QNLI": (0.98, 0.7),
                  "CoLA": (0.95, 0.7)}
PTP_CLASSES = ("right, confident", "right, unsure", "wrong, confident", "wrong, unsure")


def ptp_labels(teacher_logits: torch.Tensor, labels: torch.Tensor, t1: float, t2: float) -> torch.Tensor:
    """PTP labels (Pea-KD Section 3.3) from the teacher's logits (N, C) on the training set and the true
    labels (N,): 0 = right and max probability > t1, 1 = right otherwise, 2 = wrong and max probability > t2,
    3 = wrong otherwise. -> a long tensor (N,)."""
    ### BEGIN SOLUTION: 3 lines
    # the teacher's confidence (max probability) and prediction, then right/wrong x confident/unsure
    conf, pred = teacher_logits.softmax(-1).max(-1)
    right = pred == labels
    return torch.where(right, torch.where(conf > t1, 0, 1), torch.where(conf > t2, 2, 3)).long()
    ### END SOLUTION


def ptp_thresholds(teacher_logits: torch.Tensor, labels: torch.Tensor, how="reference", task=None) -> tuple:
    """(t1, t2). how="reference" (the default): the reference code's per-task values (PTP_THRESHOLDS);
    how="median": the median confidence of the examples the teacher gets right (t1) and of those it gets wrong
    (t2), which splits each group in two whatever the teacher's calibration (a small teacher is rarely 98%
    sure); or an explicit (t1, t2)."""
    if how == "reference":
        if task not in PTP_THRESHOLDS:
            raise ValueError(f"no reference PTP thresholds for task {task!r}; known: "
                             f"{sorted(PTP_THRESHOLDS)}")
        return PTP_THRESHOLDS[task]
    if how != "median":
        t1, t2 = how
        return float(t1), float(t2)
    conf, pred = teacher_logits.float().softmax(-1).max(-1)
    right = pred == labels
    t1 = conf[right].median().item() if right.any() else 0.5
    t2 = conf[~right].median().item() if (~right).any() else 0.5
    return t1, t2


def ptp_pretrain(student: Bert, tensors, labels, cfg, pool="cls") -> Bert:
    """PTP (Pea-KD Section 3.3): train the student with a new 4-way head on [CLS] (or the mean: `pool`) to
    predict the PTP labels, then drop the head. The student's own tensors are trained in place (an SPS student
    trains its shared tensors)."""
    fit(classifier(student, len(PTP_CLASSES), pool), {**tensors, "labels": labels}, cfg)
    return student  # the Classifier, and with it the PTP head, is discarded here


def ptp_targets(teacher_logits, labels, how: str, task) -> dict:
    """The PTP labels of the training set and how they were made: `how` is "reference" (PTP_THRESHOLDS; the
    median confidences for a task it lacks), "median" or "t1,t2". -> {"t1", "t2", "counts", "labels"}"""
    how = how if how in ("median", "reference") else tuple(float(t) for t in how.split(","))
    if how == "reference" and task not in PTP_THRESHOLDS:
        print(f"[peakd] no reference PTP thresholds for {task}: using the median confidences")
        how = "median"
    t1, t2 = ptp_thresholds(teacher_logits, labels, how, task)
    ptp = ptp_labels(teacher_logits, labels, t1, t2)
    counts = torch.bincount(ptp, minlength=len(PTP_CLASSES)).tolist()
    print(f"[peakd] PTP thresholds t1={t1:.4f} t2={t2:.4f}; labels {dict(zip(PTP_CLASSES, counts))}")
    return {"t1": t1, "t2": t2, "counts": counts, "labels": ptp}
