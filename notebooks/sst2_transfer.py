"""Notebook 05's data and runs: task distillation with a transfer set (DistilBERT's "(D)", Section 4; Tang et al.
2019), built from notebooks/sst2_runs.py's models, settings and cached runs.

Three disjoint pieces of one fixed random order of SST-2's 67,349 training rows (sst2_runs.data's order):
- the student's labelled set: the first `labelled` rows;
- the teacher's labelled set: the first `teacher_labelled` rows, i.e. the student's rows and more. The teacher
  stands for a bigger model someone fine-tuned with more labels than the student is given;
- the transfer set: the next `transfer` rows, labels hidden: sentences neither the teacher nor the student
  trained on with a label, which only the teacher's predictions label.
Every model is scored on all 872 dev sentences, which nothing is chosen on. Without ../shared's SST-2 files, the
synthetic stand-in of sst2_runs (and its numbers say nothing about SST-2). NOTEBOOK_QUICK=1: 32, 64 and 32 rows.
"""
from dataclasses import dataclass

import numpy as np
import torch

import finetune as ft
import sst2_runs as R
from machinery.hf import resolve_checkpoint
from machinery.tokenizer import load_tokenizer


@dataclass(frozen=True)
class Split:
    labelled: int = 200            # the student's labelled sentences
    teacher_labelled: int = 2000   # the teacher's: the student's and more (>= labelled)
    transfer: int = 8000           # unlabelled sentences, after both


SPLIT = Split(32, 64, 32) if R.QUICK else Split()


def data(split: Split = SPLIT, b: R.Budget = R.BUDGET) -> dict:
    """{"train" (the student's labelled set), "teacher_train", "transfer" (its labels kept, for checks only),
    "dev": encoded tensors, "source": what was read}."""
    if split.teacher_labelled < split.labelled:
        raise ValueError(f"Split.teacher_labelled={split.teacher_labelled}: must be at least "
                         f"Split.labelled={split.labelled} (the teacher's set holds the student's)")
    tok = load_tokenizer(resolve_checkpoint(R.NAME))
    glue = R.GLUE / "SST-2"
    if (glue / "train.tsv").is_file() and (glue / "dev.tsv").is_file():
        rows, dev = ft.read_glue("SST-2", R.GLUE, "train"), ft.read_glue("SST-2", R.GLUE, "dev")
        rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]   # sst2_runs.data's order
        source = f"SST-2 from {glue}"
    else:
        rows, dev = R.stand_in(split.teacher_labelled + split.transfer, 0), R.stand_in(872, 2)
        source = f"a synthetic stand-in ({glue} has no train.tsv and dev.tsv): these numbers say nothing about SST-2"
    dev = dev[:b.dev] if b.dev else dev
    enc = lambda part: ft.encode(tok, part, b.max_len)
    end = split.teacher_labelled
    return {"train": enc(rows[:split.labelled]), "teacher_train": enc(rows[:end]),
            "transfer": enc(rows[end:end + split.transfer]), "dev": enc(dev), "source": source}


def teachers(work, d, b: R.Budget = R.BUDGET) -> list:
    """all-MiniLM-L6-v2 fine-tuned on the teacher's labelled set once per seed (sst2_runs.run, cached); the first
    seed's with its model: the teacher the students learn from."""
    return [R.run(work, "teacher", s, lambda: R.classifier(R.teacher_encoder()), d["teacher_train"],
                  R.config(b, s), d["dev"], keep=(s == b.seeds[0])) for s in b.seeds]


def logits(teacher, d) -> torch.Tensor:
    """The teacher's logits on the student's labelled rows, then the transfer set (dropout off: computed once)."""
    with torch.no_grad():
        return torch.cat([ft.predict(teacher, d["train"]), ft.predict(teacher, d["transfer"])])
