"""The SST-2 runs of notebooks 05 and 06: the data, the real teacher fine-tuned with several seeds, its students,
each run cached in the scratch folder so that notebook 06 reuses notebook 05's teacher.

Data: ../shared/data/glue/SST-2/train.tsv and dev.tsv, GLUE's SST-2 (Socher et al. 2013): 67,349 training
sentences and phrases, 872 dev sentences, labels 1 (positive) and 0 (negative). Training uses a fixed random
subset of `labelled` sentences; the transfer set is `transfer` more training sentences whose labels are put
aside; every model is scored on the whole dev set, which nothing is chosen on. Without those files (a clone
without ../shared) the notebooks run on a synthetic stand-in and say so: short sentences of sentiment words,
some negated, labelled by their net sentiment; its numbers say nothing about SST-2.

Models: all-MiniLM-L6-v2 (machinery.hf.load_pretrained: the Hub, or offline its pinned PyPI wheel), and students
built from its layers. Every classifier here has DistilBERT's head reading the mean of the last layer's states
over the real tokens (finetune.Classifier(style="distilbert", pool="mean")): MiniLM was trained as a
mean-pooled sentence encoder and its [CLS] state barely varies below its last layer, and a comparison between
teacher and students is only fair with the same head. Settings: finetune.FinetuneConfig, in float32 so that
the stored numbers do not depend on the CPU's bf16 support. NOTEBOOK_QUICK=1 (the tests): 32 sentences, one
seed, one epoch: the same code, numbers that mean nothing (with one seed the seed noise is unknown, so every SE
prints as inf).
"""
import copy
import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

import finetune as ft
import losses
import peakd
from machinery.files import write_json
from machinery.hf import load_pretrained, resolve_checkpoint
from machinery.tokenizer import load_tokenizer

NAME = "sentence-transformers/all-MiniLM-L6-v2"
ROOT = Path(__file__).resolve().parents[1]
GLUE = Path(os.environ.get("NOTEBOOK_GLUE", ROOT.parent / "shared" / "data" / "glue"))
QUICK = bool(os.environ.get("NOTEBOOK_QUICK"))


@dataclass(frozen=True)
class Budget:
    labelled: int = 1000    # labelled SST-2 training sentences, the same for teacher and students
    transfer: int = 8000    # more training sentences for the transfer set, their labels put aside
    dev: int = 0            # dev sentences scored (0: all 872)
    epochs: float = 2.0     # passes over the training rows (reproduce.py's fine-tuning recipe)
    lr: float = 1e-4
    batch_size: int = 32
    max_len: int = 64       # SST-2's longest dev sentence is 55 tokens
    seeds: tuple = (1, 2, 3)


BUDGET = Budget(labelled=32, transfer=32, dev=32, epochs=1.0, seeds=(1,)) if QUICK else Budget()


def config(b: Budget, seed, **kw) -> ft.FinetuneConfig:
    return ft.FinetuneConfig(**{**dict(lr=b.lr, batch_size=b.batch_size, epochs=b.epochs, seed=seed, log_every=0,
                                       device="cpu", dtype="float32"), **kw})


def stand_in(n, seed):
    """n synthetic examples: 1-3 clauses 'the <noun> was (not) <word>', labelled 1 when more clauses are
    positive than negative (a tie: one more positive clause)."""
    rng, words = np.random.default_rng(seed), {1: ["good", "great", "fun", "moving"],
                                               -1: ["bad", "dull", "awful", "boring"]}
    out = []
    for _ in range(n):
        clauses, score = [], 0
        for _ in range(rng.integers(1, 4)):
            sign, negate = int(rng.choice([1, -1])), rng.random() < 0.4
            noun = rng.choice(["movie", "plot", "acting", "music", "story"])
            clauses.append(f"the {noun} was {'not ' if negate else ''}{rng.choice(words[sign])}")
            score += -sign if negate else sign
        if score == 0:
            clauses.append("the ending was good"); score = 1
        out.append(ft.Example(" and ".join(clauses), None, int(score > 0)))
    return out


def data(b: Budget = BUDGET) -> dict:
    """{"train", "transfer", "dev": encoded tensors (the transfer set's labels kept, for checks only),
    "source": what was read}."""
    tok = load_tokenizer(resolve_checkpoint(NAME))
    if (GLUE / "SST-2" / "train.tsv").is_file() and (GLUE / "SST-2" / "dev.tsv").is_file():
        rows, dev = ft.read_glue("SST-2", GLUE, "train"), ft.read_glue("SST-2", GLUE, "dev")
        order = np.random.default_rng(0).permutation(len(rows))   # fixed subsets, one order for both
        train = [rows[i] for i in order[:b.labelled]]
        transfer = [rows[i] for i in order[b.labelled:b.labelled + b.transfer]]
        source = f"SST-2 from {GLUE / 'SST-2'}"
    else:
        train, transfer, dev = stand_in(b.labelled, 0), stand_in(b.transfer, 1), stand_in(872, 2)
        source = (f"a synthetic stand-in ({GLUE / 'SST-2'} has no train.tsv and dev.tsv): these numbers say "
                  f"nothing about SST-2")
    dev = dev[:b.dev] if b.dev else dev
    enc = lambda rows: ft.encode(tok, rows, b.max_len)
    return {"train": enc(train), "transfer": enc(transfer), "dev": enc(dev), "source": source}


def teacher_encoder():
    """all-MiniLM-L6-v2 as pretrained, a fresh copy each time (fine-tuning changes it in place); read once. Its
    masked-LM head, which MiniLM lacks, is random and unused."""
    if "minilm" not in _LOADED:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no masked-LM head": fine-tuning does not use one
            _LOADED["minilm"] = load_pretrained(NAME)
    return copy.deepcopy(_LOADED["minilm"])


_LOADED = {}


def classifier(encoder, num_labels=2):
    return ft.Classifier(encoder, num_labels, style="distilbert", pool="mean")


def hidden_labels(train, transfer, teacher_logits):
    """The labelled rows and the transfer set as one training set: the transfer set's labels hidden (-100),
    the teacher's logits on every row."""
    width = max(train["input_ids"].size(1), transfer["input_ids"].size(1))
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.size(1)))
    rows = {k: torch.cat([pad(train[k]), pad(transfer[k])]) for k in ft.INPUTS}
    rows["labels"] = torch.cat([train["labels"], torch.full_like(transfer["labels"], -100)])
    return {**rows, "teacher_logits": teacher_logits}


def transfer_loss(alpha=0.5, temperature=2.0):
    """finetune.fit's loss_fn for (D) with a transfer set: alpha * L_ce (T^2 KL at temperature T, against the
    teacher) on every row, plus (1 - alpha) * cross-entropy on the rows whose label is shown (not -100)."""
    def loss_fn(model, batch):
        logits = model(**{k: batch[k] for k in ft.INPUTS}).logits
        shown = batch["labels"] != -100
        soft = losses.soft_target_loss(logits, batch["teacher_logits"], temperature)
        hard = losses.task_loss(logits[shown], batch["labels"][shown]) if shown.any() else logits.sum() * 0
        return alpha * soft + (1 - alpha) * hard
    return loss_fn


def run(work, name, seed, make_model, train, cfg, dev, loss_fn=None, keep=False, settings=None) -> dict:
    """Fine-tunes make_model() on `train` with cfg (finetune.fit; loss_fn as fit's), scores it on `dev`:
    {"accuracy", "correct" (1.0/0.0 per dev sentence), "seconds"}, cached in work/sst2/ under `name`, the seed
    and a hash of the settings, the training rows and `settings` (what make_model and loss_fn depend on).
    keep: the fine-tuned model is saved beside it too (finetune.save_finetuned) and returned as "model"."""
    digest = hashlib.sha256(json.dumps([name, seed, asdict(cfg), settings, dev["input_ids"].shape[0]],
                                       sort_keys=True, default=str).encode())
    for k in sorted(train):
        digest.update(train[k].numpy().tobytes())
    folder = Path(work) / "sst2"
    path = folder / f"{name}-seed{seed}-{digest.hexdigest()[:12]}"
    if path.with_suffix(".json").is_file() and (not keep or path.is_dir()):
        out = json.loads(path.with_suffix(".json").read_text())
        return {**out, "model": ft.load_finetuned(path)} if keep else out
    t0 = time.time()
    torch.manual_seed(seed)
    model = ft.fit(make_model(), train, cfg, loss_fn=loss_fn)
    correct = (ft.predict(model, dev).argmax(-1) == dev["labels"]).float()
    out = {"accuracy": correct.mean().item(), "correct": correct.tolist(), "seconds": time.time() - t0}
    if keep:
        ft.save_finetuned(model, path, task="SST-2", seed=seed)
    write_json(out, path.with_suffix(".json"))
    return {**out, "model": model} if keep else out


def teachers(work, d, b: Budget = BUDGET) -> list:
    """The teacher fine-tuned once per seed of the budget; the first (seed b.seeds[0]) with its model."""
    return [run(work, "teacher", s, lambda: classifier(teacher_encoder()), d["train"], config(b, s), d["dev"],
                keep=(s == b.seeds[0])) for s in b.seeds]


def replace_budget(**kw) -> Budget:
    return replace(BUDGET, **kw)


# ------------------------------------------------------------------------------------------------------------
# Notebook 06: the Pea-KD ablation, from peakd.py's parts (its students, SPS, PTP, Patient-KD's loss), run with
# this module's settings (float32, cached runs) instead of peakd.pipeline's.

PKD = dict(alpha=0.7, temperature=10.0, beta=100.0)   # Patient-KD's weights, peakd.py's (the reference code's)


def peakd_student(work, name, seed, pretrained, d, teacher_out, ptp_y, b: Budget = BUDGET, k=2, kd=True,
                  sps=True, ptp=True, ptp_epochs=1.0, swap=True, **pkd):
    """One row of the ablation for one seed: the first k layers of the pretrained teacher (peakd.make_student: a
    truncated BERT, as Pea-KD's reference code), run with SPS (peakd.with_sps, "auto": every layer again when k
    is under half the teacher's depth), pretrained on the PTP labels (peakd.ptp_pretrain) for ptp_epochs, then
    fine-tuned with Patient-KD (peakd.pkd_loss_fn, on the mean-pooled states of the layers peakd.pkd_layer_map
    pairs) or with cross-entropy alone (kd=False). swap=False: paired sharing, the layers run again without the
    Q/K swap. Returns run()'s dict and the layer map."""
    n = pretrained.cfg.num_layers
    depth = k + (len(peakd.sps_layers(k, "auto", n)) if sps else 0)    # effective layers
    layer_map = peakd.pkd_layer_map(depth, n)
    cfg, weights = config(b, seed), {**PKD, **pkd}

    def make():
        student = peakd.make_student(pretrained, k)
        student = peakd.with_sps(student, "auto", swap=swap, teacher_layers=n) if sps else student
        if ptp:
            peakd.ptp_pretrain(student, d["train"], ptp_y, replace(cfg, epochs=ptp_epochs), pool="mean")
        return classifier(student)
    logits, states = teacher_out
    train = {**d["train"], "teacher_logits": logits, "teacher_cls": states} if kd else d["train"]
    loss_fn = peakd.pkd_loss_fn(layer_map, weights["alpha"], weights["temperature"], weights["beta"],
                                pool="mean") if kd else None
    out = run(work, name, seed, make, train, cfg, d["dev"], loss_fn=loss_fn,
              settings=dict(k=k, kd=kd, sps=sps, ptp=ptp, ptp_epochs=ptp_epochs, **weights,
                            ptp_y=ptp_y.tolist() if ptp else None, **({} if swap else {"swap": False})))
    return out, layer_map
