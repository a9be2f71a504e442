"""
GLUE (Wang et al. 2018): the nine tasks' files and labels. The files are tab-separated with no quoting (sentences
contain quotes); columns are found by header name, except CoLA's train/dev files, which have no header. Test files
carry no labels. IMDb and SQuAD are named here too, so that every task has one spec (task_spec).
"""
import csv
import math
import sys
from dataclasses import dataclass
from pathlib import Path

GLUE_TASKS = {
    "CoLA": {"text_a": "sentence", "text_b": None, "label": "label", "labels": ["0", "1"],
             "metrics": ("mcc",),
             "columns": ("source", "label", "original_label", "sentence")},  # headerless train/dev
    "SST-2": {"text_a": "sentence", "text_b": None, "label": "label", "labels": ["0", "1"],
              "metrics": ("accuracy",)},
    "MRPC": {"text_a": "#1 String", "text_b": "#2 String", "label": "Quality", "labels": ["0", "1"],
             "metrics": ("f1", "accuracy")},
    "STS-B": {"text_a": "sentence1", "text_b": "sentence2", "label": "score", "labels": None,
              "metrics": ("pearson", "spearman"), "range": (0.0, 5.0)},  # similarity scores from 0 to 5
    "QQP": {"text_a": "question1", "text_b": "question2", "label": "is_duplicate", "labels": ["0", "1"],
            "metrics": ("accuracy", "f1"), "skip_short_rows": True},
            # GLUE's QQP train.tsv has a few broken rows
    "MNLI": {"text_a": "sentence1", "text_b": "sentence2", "label": "gold_label",
             "labels": ["contradiction", "entailment", "neutral"], "metrics": ("accuracy", "accuracy_mm"),
             "dev": ("dev_matched", "dev_mismatched")},  # accuracy_mm: accuracy on dev_mismatched
    "QNLI": {"text_a": "question", "text_b": "sentence", "label": "label",
             "labels": ["entailment", "not_entailment"],
             "metrics": ("accuracy",)},
    "RTE": {"text_a": "sentence1", "text_b": "sentence2", "label": "label",
            "labels": ["entailment", "not_entailment"],
            "metrics": ("accuracy",)},
    "WNLI": {"text_a": "sentence1", "text_b": "sentence2", "label": "label", "labels": ["0", "1"],
             "metrics": ("accuracy",)},
}
for _spec in GLUE_TASKS.values():
    _spec["num_labels"] = len(_spec["labels"]) if _spec["labels"] else 1  # 1: regression (STS-B)
    _spec.setdefault("columns", None)
    _spec.setdefault("dev", ("dev",))
    _spec.setdefault("skip_short_rows", False)
OTHER_TASKS = {"imdb": {"num_labels": 2, "metrics": ("accuracy",)},
               "squad": {"num_labels": 2, "metrics": ("exact_match", "f1")}}


def task_spec(task):
    for name, spec in {**GLUE_TASKS, **OTHER_TASKS}.items():
        if name.lower() == str(task).lower():
            return name, spec
    raise ValueError(f"unknown task {task!r}; known: {', '.join([*GLUE_TASKS, *OTHER_TASKS])}")


@dataclass
class Example:
    text_a: str
    text_b: str | None = None
    label: int | float | None = None  # class index, a float for STS-B, None for test sets


def read_glue(task, folder, split) -> list:
    """Examples of `split` ("train", "dev", "test", "dev_mismatched", ...) from `folder`: the GLUE root (with
    a folder per task) or the task's own folder. For MNLI "dev" means "dev_matched"."""
    name, spec = task_spec(task)
    folder = Path(folder) / name if (Path(folder) / name).is_dir() else Path(folder)
    split = spec["dev"][0] if split == "dev" else split
    path = folder / f"{split}.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (task {name}, split {split!r})")
    with open(path, encoding="utf-8-sig", newline="") as f:  # utf-8-sig drops a byte-order mark
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        names = spec["columns"] if spec["columns"] and not split.startswith("test") else next(rows, None)
        if names is None:
            raise ValueError(f"{path}: empty file, expected a header line")
        col = {n.strip(): i for i, n in enumerate(names)}
        for key in ("text_a", "text_b"):
            if spec[key] is not None and spec[key] not in col:
                raise ValueError(f"{path}: no column {spec[key]!r} in the header {list(col)}")
        if spec["label"] not in col and not split.startswith("test"):  # only test sets come unlabelled
            raise ValueError(f"{path}: no column {spec['label']!r} in the header {list(col)}: a {split} file "
                             f"needs its labels")
        wanted = [col[spec[k]] for k in ("text_a", "text_b") if spec[k] is not None]
        if spec["label"] in col:  # test sets have none
            wanted.append(col[spec["label"]])
        out, skipped = [], []
        for row in rows:
            if row == [] or row == [""]:
                continue
            if len(row) <= max(wanted):
                if spec["skip_short_rows"]:  # QQP: skipped (and counted), as the reference GLUE readers do
                    skipped.append(rows.line_num)
                    continue
                raise ValueError(f"{path}, line {rows.line_num}: {len(row)} columns, expected at least "
                                 f"{max(wanted) + 1} ({row!r:.80})")
            label = None
            if spec["label"] in col:
                value = row[col[spec["label"]]].strip()
                label = _label(value, spec, f"{path}, line {rows.line_num}")
            text_b = row[col[spec["text_b"]]] if spec["text_b"] else None
            out.append(Example(row[col[spec["text_a"]]], text_b, label))
    if not out:
        raise ValueError(f"{path}: no examples (a header and nothing else)")
    if skipped:
        print(f"{path}: skipped {len(skipped)} rows with missing columns (lines {', '.join(map(str, skipped[:5]))}"
              f"{', ...' if len(skipped) > 5 else ''})", file=sys.stderr)
    return out


def _label(value, spec, where):
    """A class index, or a regression score checked to be a finite number within the task's range (STS-B:
    0..5)."""
    try:
        label = float(value) if spec["labels"] is None else spec["labels"].index(value)
    except ValueError:
        label = None
    lo, hi = spec.get("range", (-math.inf, math.inf))
    if label is None or (spec["labels"] is None and not (math.isfinite(label) and lo <= label <= hi)):
        expected = f"a number from {lo:g} to {hi:g}" if spec["labels"] is None else f"one of {spec['labels']}"
        raise ValueError(f"{where}: label {value!r} is not {expected}")
    return label
