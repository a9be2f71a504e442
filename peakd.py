"""
Pea-KD: parameter-efficient and accurate knowledge distillation of BERT (Cho & Kang, 2020), by hand.

Pea-KD distils a fine-tuned teacher into a small student for one task, with two ideas on top of Patient-KD:

1. Shuffled Parameter Sharing, SPS (Pea-KD Section 3.2). A k-layer student is run as a deeper one: after
   layers 1..k it runs layers 1..k again with the very same parameters, but with the Query and Key projections
   exchanged in the second use (q = W_K h, k = W_Q h; values, output projection, feed-forward and LayerNorms
   unchanged). Depth doubles, the parameter count does not move. Without the swap it is "paired" parameter
   sharing. `with_sps` builds such a model around an existing student: every tensor is shared, nothing is
   copied.
2. Pretraining with Teacher's Predictions, PTP (Pea-KD Section 3.3). Before distillation the student learns,
   with a throw-away 4-way head on [CLS], what the teacher "knows" about each training example: 0 = teacher
   right and confident, 1 = right and unsure, 2 = wrong and confident, 3 = wrong and unsure (`ptp_labels`).

The distillation itself is Patient-KD (Sun et al. 2019, "Patient Knowledge Distillation for BERT Model
Compression", Section 3, Eq. 5-7): cross-entropy on the labels, KL to the teacher's softened predictions, and
the "patient" term that pulls the L2-normalised [CLS] states of intermediate student layers towards chosen
teacher layers (`losses.pkd_loss`). The rows that use it are named "PKD" (beta 100), not plain KD.

`--pool=mean` reads the mean of the real tokens' states instead of [CLS], in the head and in the patient term
(`pooled_states`). It is not in the paper; it exists for a teacher whose [CLS] carries nothing below its last
layer: all-MiniLM-L6-v2, a sentence-transformer trained with mean pooling (the spread of its [CLS] state over
256 SST-2 sentences is 0.1-3% of its norm after layers 1-5 and 64% after layer 6). A student made of its
first k < 6 layers then sees one and the same [CLS] vector for every input: with 64 steps it never leaves
the majority class (FT and PKD, SST-2 50.9), and the patient term matches constants.

    python peakd.py run      --task RTE --data ../shared/data/glue --teacher out/quickstart/teacher/model
    python peakd.py ablation --task SST-2 MRPC RTE --data ../shared/data/glue --teacher ...  # the five students

`--teacher` is a pretrained BERT (a Hugging Face folder, fine-tuned on the task first and cached in
out/peakd/<task>/teacher) or a folder that finetune.py wrote for the task. As in the reference code, the
student takes the first k layers of the pre-trained BERT (not of the fine-tuned teacher), k = half the
teacher's depth, run with SPS on the upper half (6 -> 9 layers for bert-base; k = 3 re-runs all three, 6
layers). The loss weights default to the reference values (alpha 0.7, T 10, beta 100), the PTP thresholds to
the reference table (`PTP_THRESHOLDS`).
"""
import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from finetune import (GLUE_TASKS, Classifier, FinetuneConfig, encode, evaluate, fit, load_encoder,
                      load_finetuned, masked_mean, predict, read_glue, save_finetuned, task_spec)
from losses import pkd_loss
from machinery.config import ArgumentParser
from machinery.files import one_line
from machinery.hf import model_folder
from machinery.tokenizer import load_tokenizer
from model import Bert, student_from_teacher

# ------------------------------------------------------------------------------------------------------------
# 1. Students: initialisation from the teacher, and Shuffled Parameter Sharing (Pea-KD Section 3.2)


def make_student(teacher: Bert, num_layers: int, init: str = "first", distilbert: bool = False) -> Bert:
    """A `num_layers`-layer student initialised from the teacher's weights (embeddings, pooler, chosen
    layers). init="first": teacher layers 0..k-1, as Pea-KD (and Patient-KD) do; init="skip": evenly spaced
    layers, i * n // k, which for k = n/2 is DistilBERT's "one layer out of two" (0, 2, 4, ...).
    distilbert=False keeps the teacher's architecture (token-type embeddings, pooler): a truncated BERT, as in
    Pea-KD, which sentence-pair tasks need to tell the two segments apart. distilbert=True builds DistilBERT's
    student (no token types, no pooler) with model.student_from_teacher."""
    n = teacher.cfg.num_layers
    if not 1 <= num_layers <= n:
        raise ValueError(f"num_layers={num_layers}: a student needs 1..{n} layers (the teacher has {n})")
    if init == "first":
        layers = list(range(num_layers))
    elif init == "skip":
        layers = [i * n // num_layers for i in range(num_layers)]
    else:
        raise ValueError(f"init={init!r}: expected 'first' or 'skip'")
    if distilbert:
        return student_from_teacher(teacher, layers)
    student = Bert(replace(teacher.cfg, num_layers=num_layers, sps_layers=()))
    t = teacher.state_dict()
    sd = {k: v for k, v in t.items() if not k.startswith("layers.")}
    for j, i in enumerate(layers):
        sd.update({f"layers.{j}." + k[len(f"layers.{i}."):]: v for k,
                   v in t.items() if k.startswith(f"layers.{i}.")})
    student.load_state_dict({k: v.clone() for k, v in sd.items()})  # strict: every key present, none extra
    return student


def sps_layers(num_layers: int, layers="all", teacher_layers: int = 0) -> tuple:
    """Which layers SPS runs a second time (0-based). "all": every layer, k -> 2k effective layers (the
    reference BertEncoder_SPS: Pea-KD's 3-layer student becomes 6); "upper": the upper half, k // 2 .. k-1
    (the reference BertEncoder_SPS_6layer_student re-runs layers 4-6 of 6, giving 9); "auto": the reference's
    choice, "all" when k is less than half the teacher's `teacher_layers` and "upper" otherwise, so that a
    student of up to half the teacher's layers stays shallower than it (12-layer teacher: k = 3 -> 6, k = 6 ->
    9); or an explicit list."""
    if layers == "auto":
        if teacher_layers < 1:
            raise ValueError("layers='auto' needs the teacher's depth (teacher_layers)")
        layers = "all" if 2 * num_layers < teacher_layers else "upper"
    if layers == "all":
        return tuple(range(num_layers))
    if layers == "upper":
        return tuple(range(num_layers // 2, num_layers))
    if isinstance(layers, str):
        raise ValueError(f"layers={layers!r}: expected 'auto', 'all', 'upper' or a list of layer indices")
    return tuple(int(i) for i in layers)


def with_sps(student: Bert, layers="all", swap: bool = True, teacher_layers: int = 0) -> Bert:
    """The same student run with Shuffled Parameter Sharing (Pea-KD Section 3.2): after its k layers, the
    layers chosen by `sps_layers(k, layers, teacher_layers)` run again with Query and Key exchanged
    (swap=True, SPS) or unchanged (swap=False, paired sharing).

    The result is a new `Bert` whose submodules (embeddings, layers, pooler, MLM head) ARE the student's: one
    tensor per parameter, used twice per forward pass, so its gradient is the sum over both uses and the
    parameter count is the k-layer student's. Training either model trains both. Only the config and the layer
    schedule are new; the empty shell is built on the meta device, so nothing is allocated. model.py does the
    rest: `Bert.schedule` lists (layer, swap) per effective layer and `Layer.attention(x, keep, swap_qk)`
    exchanges q and k. Such a model cannot be saved in Hugging Face's format (HF has no equivalent); save its
    state_dict instead."""
    chosen = sps_layers(student.cfg.num_layers, layers, teacher_layers)
    cfg = replace(student.cfg, sps_layers=chosen, sps_swap=swap)
    with torch.device("meta"):
        shell = Bert(cfg)
    shell.emb, shell.layers, shell.pooler, shell.head = student.emb, student.layers, student.pooler, student.head
    return shell.train(student.training)


# ------------------------------------------------------------------------------------------------------------
# 2. Pretraining with Teacher's Predictions (Pea-KD Section 3.3)

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


# ------------------------------------------------------------------------------------------------------------
# 3. The Patient-KD layer map (Sun et al. 2019, Section 3; the loss itself is losses.pkd_loss)


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


# ------------------------------------------------------------------------------------------------------------
# 4. The pipeline: teacher -> teacher's predictions -> PTP labels -> PTP pretraining -> Patient-KD with SPS

VARIANTS = {  # the ablation (Pea-KD Section 4.4): what each row adds; "PKD" is Patient-KD (beta 100)
    "FT": dict(kd=False, sps=False, ptp=False),
    "PKD": dict(kd=True, sps=False, ptp=False),
    "PKD + SPS": dict(kd=True, sps=True, ptp=False),
    "PKD + PTP": dict(kd=True, sps=False, ptp=True),
    "PKD + SPS + PTP (Pea-KD)": dict(kd=True, sps=True, ptp=True),
}
PEAKD = "PKD + SPS + PTP (Pea-KD)"


def load_data(task, folder, tokenizer, max_len=128, train_limit=None):
    """(train, dev, note): encoded tensors. train_limit keeps a fixed random subset of the training set. A
    task with no train.tsv (our QNLI has only dev.tsv) gets its dev set split in two at random (seed 0): the
    first half trains, the second half is the test set; the note says so."""
    note = ""
    try:
        train, dev = read_glue(task, folder, "train"), read_glue(task, folder, "dev")
    except FileNotFoundError:
        rows = read_glue(task, folder, "dev")
        order = np.random.default_rng(0).permutation(len(rows))
        train, dev = [rows[i] for i in order[: len(rows) // 2]], [rows[i] for i in order[len(rows) // 2:]]
        note = f"no train.tsv: dev.tsv split at random (seed 0) into {len(train)} training / {len(dev)} test examples"
    if train_limit and train_limit < len(train):
        keep = sorted(np.random.default_rng(0).permutation(len(train))[:train_limit])
        train = [train[i] for i in keep]
        note += f"{'; ' if note else ''}training set subsampled to {train_limit} examples (seed 0)"
    return encode(tokenizer, train, max_len), encode(tokenizer, dev, max_len), note


def get_teacher(path, task, train, cfg, out_dir, setup=None):
    """A Classifier fine-tuned on `task`: `path` itself when it is a finetune.py folder for this task, else
    the one fine-tuned earlier into out_dir/teacher from the same source and setup, else `path` (a pretrained
    BERT) fine-tuned now and saved there."""
    setup = {"source": str(path), **(setup or {})}
    for folder in (Path(path), Path(out_dir) / "teacher"):
        meta = json.loads((folder / "finetune.json").read_text()) if (folder / "finetune.json").is_file() else {}
        if meta.get("task") == task and (folder == Path(path) or meta.get("setup") == setup):
            print(f"[peakd] teacher: {folder} (fine-tuned on {task})")
            return load_finetuned(folder)
    print(f"[peakd] teacher: fine-tuning {path} on {task} for {cfg.epochs} epochs")
    torch.manual_seed(cfg.seed)
    teacher = fit(Classifier(load_encoder(path), GLUE_TASKS[task]["num_labels"]), train, cfg)
    save_finetuned(teacher, Path(out_dir) / "teacher", task=task, setup=setup)
    return teacher


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


def ptp_pretrain(student: Bert, tensors, labels, cfg, pool="cls") -> Bert:
    """PTP (Pea-KD Section 3.3): train the student with a new 4-way head on [CLS] (or the mean: `pool`) to
    predict the PTP labels, then drop the head. The student's own tensors are trained in place (an SPS student
    trains its shared tensors)."""
    fit(classifier(student, len(PTP_CLASSES), pool), {**tensors, "labels": labels}, cfg)
    return student  # the Classifier, and with it the PTP head, is discarded here


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


def pretrained_source(teacher_path, student_from=""):
    """Where the student's layers come from. The reference code (snudm-starlab/Pea-KD: load_model_finetune
    with --encoder_checkpoint, which defaults to the pre-trained bert-base-uncased checkpoint) copies the
    first k layers of the PRE-TRAINED BERT, not of the task-fine-tuned teacher. So: `student_from` when given
    ("finetuned": the fine-tuned teacher's own encoder); else `teacher_path` when it is a pre-trained BERT;
    else, for a finetune.py folder, the pre-trained model it was fine-tuned from (its finetune.json
    "source")."""
    if student_from:
        return student_from
    meta_file = Path(teacher_path) / "finetune.json"
    if not meta_file.is_file():
        return str(teacher_path)
    meta = json.loads(meta_file.read_text())
    source = meta.get("source") or meta.get("setup", {}).get("source")
    if not source:
        raise ValueError(f"{meta_file}: no 'source' (the pre-trained model it was fine-tuned from); pass "
                         f"--student_from=PRETRAINED_FOLDER, or --student_from=finetuned for the teacher's "
                         f"layers")
    return source


def init_student(teacher, pretrained, args, sps=True) -> Bert:
    """The student before any training: layers 0..k-1 (args.init="first") of `pretrained` (None: the
    fine-tuned teacher's encoder), k = args.student_layers or half the teacher's depth (the reference code's
    6-layer student of bert-base), run with SPS on the layers args.sps names ("auto": sps_layers' reference
    choice, 6 -> 9 layers)."""
    n = teacher.encoder.cfg.num_layers
    k = args.student_layers or max(1, n // 2)
    student = make_student(pretrained or teacher.encoder, k, args.init, distilbert=args.arch == "distilbert")
    return with_sps(student, args.sps, swap=not args.no_swap, teacher_layers=n) if sps else student


def train_student(teacher, train, t_logits, t_cls, ptp_y, args, kd=True, sps=True, ptp=True, pretrained=None):
    """One student (init_student), optionally pretrained with PTP (for args.ptp_epochs more), then trained on
    the task for args.epochs with Patient-KD (kd=True) or with cross-entropy alone (kd=False: plain
    fine-tuning, the reference's alpha 0; the teacher's outputs are then not handed to fit, which would
    otherwise distil from them). Every student starts from the same seed."""
    cfg, pool = student_config(args), getattr(args, "pool", "cls")
    torch.manual_seed(args.seed)
    student = init_student(teacher, pretrained, args, sps)
    if ptp:
        student = ptp_pretrain(student, train, ptp_y, replace(cfg, epochs=args.ptp_epochs), pool)
    model = classifier(student, t_logits.size(1), pool)
    depth = len(student.schedule)
    layer_map = pkd_layer_map(depth, teacher.encoder.cfg.num_layers, args.layer_map)
    if kd:
        fit(model, {**train, "teacher_logits": t_logits, "teacher_cls": t_cls}, cfg,
            loss_fn=pkd_loss_fn(layer_map, args.alpha, args.T, args.beta, pool))
    else:
        fit(model, train, cfg)  # the task's cross-entropy alone
    return model, layer_map


def student_config(args):
    return FinetuneConfig(lr=args.lr, batch_size=args.batch_size, epochs=args.epochs,
                          max_steps=args.max_steps,
                          seed=args.seed, log_every=args.log_every)


def classifier_parameters(model):
    """Parameters used for the task: everything but the encoder's (unused) masked-LM head."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("encoder.head."))


def pipeline(args, variants=(PEAKD,), seeds=None) -> dict:
    """The whole Pea-KD pipeline for one task, for each of `variants` (names in VARIANTS) and each student
    seed in `seeds` (default: args.seed) on the same teacher (fine-tuned with args.seed), data and teacher
    predictions. A row's metrics are the means over the seeds; "seeds" holds each seed's, "correct" one list of
    per-dev-example 1.0/0.0 per seed. Writes out_dir/<task>/results.json (and the students when args.save)."""
    seeds = list(seeds or [args.seed])
    pool = getattr(args, "pool", "cls")
    if args.save and pool != "cls":
        raise ValueError("--save keeps finetune.py's format, whose heads read [CLS]: not with --pool=mean")
    task, spec = task_spec(args.task)
    if spec["num_labels"] < 2:
        raise ValueError(f"{task}: Pea-KD's losses need classes (PTP labels, softmax KD); {task} is a "
                         f"regression")
    out_dir = Path(args.out) / task
    tokenizer = load_tokenizer(args.vocab or model_folder(args.teacher))  # a folder or a name
    train, dev, note = load_data(task, args.data, tokenizer, args.max_len, args.train_limit)
    print(f"[peakd] {task}: {len(train['input_ids'])} training / {len(dev['input_ids'])} test examples. "
          f"{note}")
    t0 = time.time()
    tcfg = FinetuneConfig(lr=args.teacher_lr, batch_size=args.batch_size, epochs=args.teacher_epochs,
                          seed=args.seed,
                          log_every=args.log_every)
    setup = {k: getattr(args, k) for k in ("train_limit", "max_len", "teacher_lr", "teacher_epochs",
                                           "batch_size", "seed")}
    teacher = get_teacher(args.teacher, task, train, tcfg, out_dir, setup)
    rows = {"teacher": {**scored(task, teacher, dev), "parameters": classifier_parameters(teacher),
                        "depth": teacher.encoder.cfg.num_layers, "seconds": round(time.time() - t0, 1)}}
    t_logits, t_cls = teacher_outputs(teacher, train, pool=pool)
    source = pretrained_source(args.teacher, args.student_from)
    pretrained = None if source == "finetuned" else load_encoder(source)
    print(f"[peakd] students start from {'the fine-tuned teacher' if pretrained is None else source}")
    how = args.ptp_thresholds if args.ptp_thresholds in ("median", "reference") else \
        tuple(float(t) for t in args.ptp_thresholds.split(","))
    if how == "reference" and task not in PTP_THRESHOLDS:
        print(f"[peakd] no reference PTP thresholds for {task}: using the median confidences")
        how = "median"
    t1, t2 = ptp_thresholds(t_logits, train["labels"], how, task)
    ptp = ptp_labels(t_logits, train["labels"], t1, t2)
    counts = torch.bincount(ptp, minlength=4).tolist()
    print(f"[peakd] PTP thresholds t1={t1:.4f} t2={t2:.4f}; labels {dict(zip(PTP_CLASSES, counts))}")
    for name in variants:
        t0, per_seed = time.time(), {}
        for seed in seeds:
            model, layer_map = train_student(teacher, train, t_logits, t_cls, ptp,
                                             argparse.Namespace(**{**vars(args), "seed": seed}),
                                             **VARIANTS[name], pretrained=pretrained)
            per_seed[seed] = scored(task, model, dev)
        metrics = {m: float(np.mean([s[m] for s in per_seed.values()])) for m in per_seed[seeds[0]] if m != "correct"}
        rows[name] = {**metrics, "seeds": {s: {m: v for m, v in r.items() if m != "correct"}
                                           for s, r in per_seed.items()},
                      "correct": [r["correct"] for r in per_seed.values()],
                      "parameters": classifier_parameters(model), "depth": len(model.encoder.schedule),
                      "seconds": round(time.time() - t0, 1), "layer_map": layer_map}
        print(f"[peakd] {task} {name}: {json.dumps(metrics)}, seeds {seeds} ({rows[name]['seconds']}s)")
        if args.save:
            slug = name.split(" (")[0].replace(" + ", "+").replace(" ", "")
            save_finetuned(model, out_dir / f"student-{slug}", task=task, variant=name,
                           teacher=str(args.teacher))
    result = {"task": task, "note": note, "seeds": seeds, "ptp": {"t1": t1, "t2": t2, "counts": counts}, "rows": rows,
              "args": vars(args)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def scored(task, model, dev) -> dict:
    """The task's metrics on dev, and "correct": 1.0 or 0.0 per dev example (for paired comparisons)."""
    logits = predict(model, dev)
    return {**evaluate(task, logits, dev["labels"]),
            "correct": (logits.argmax(-1) == dev["labels"]).float().tolist()}


def table(results) -> str:
    """A markdown table: one row per variant, one column per task (the task's metrics x 100)."""
    names = list(dict.fromkeys(n for r in results for n in r["rows"]))
    metric = lambda row: " / ".join(f"{100 * row[m]:.1f}" for m in ("accuracy", "f1") if m in row)
    head = "| model | params | depth | " + " | ".join(r["task"] + (" (acc / F1)" if "f1" in next(iter(r["rows"].values()))
                                                                 else " (acc)") for r in results) + " |"
    lines = [head, "|" + "---|" * (3 + len(results))]
    for n in names:
        row0 = next(r["rows"][n] for r in results if n in r["rows"])
        cells = [metric(r["rows"][n]) if n in r["rows"] else "" for r in results]
        lines.append(f"| {n} | {row0['parameters'] / 1e6:.2f}M | {row0['depth']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("command", choices=["run", "ablation"], help="run: the Pea-KD pipeline | ablation: all of "
                   + ", ".join(VARIANTS))
    p.add_argument("--task", nargs="+", required=True, help="GLUE task(s): SST-2 MRPC RTE QNLI ...")
    p.add_argument("--data", required=True, help="GLUE root folder (one folder per task)")
    p.add_argument("--teacher", required=True,
                   help="a pretrained BERT (fine-tuned here first) or a finetune.py folder already fine-tuned "
                        "on the task")
    p.add_argument("--vocab", default="", help="vocab.txt or tokenizer.json (default: the teacher folder's)")
    p.add_argument("--out", default="out/peakd", help="results, fine-tuned teacher and students go here")
    p.add_argument("--student_layers", type=int, default=0, help="k (default: half the teacher's layers)")
    p.add_argument("--student_from", default="", help="where the student's layers come from (default: the "
                   "pre-trained BERT, as the reference; 'finetuned': the fine-tuned teacher; or a folder)")
    p.add_argument("--init", default="first", choices=["first", "skip"],
                   help="first k layers | every other one")
    p.add_argument("--arch", default="bert", choices=["bert", "distilbert"],
                   help="bert: the student keeps token types and pooler, as Pea-KD | distilbert: drops them")
    p.add_argument("--sps", default="auto", type=lambda s: s if s in ("auto", "all", "upper")
                   else [int(i) for i in s.split(",")],
                   help="layers SPS re-runs: auto (all if k < n/2, else upper, as the reference) | all | "
                   "upper | 0,1,2")
    p.add_argument("--no_swap", action="store_true",
                   help="paired sharing: re-run layers without the Q/K swap")
    p.add_argument("--ptp_thresholds", default="reference", help="reference (the reference code's table; "
                   "median for tasks it lacks) | median | t1,t2")
    p.add_argument("--alpha", type=float, default=0.7)
    p.add_argument("--T", type=float, default=10.0)
    p.add_argument("--beta", type=float, default=100.0)
    p.add_argument("--layer_map", default="skip", choices=["skip", "last"], help="PKD-Skip | PKD-Last")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--ptp_epochs", type=float, default=2.0)
    p.add_argument("--teacher_lr", type=float, default=5e-5)
    p.add_argument("--teacher_epochs", type=float, default=3.0)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_steps", type=int, default=None,
                   help="cap each student training stage (smoke tests)")
    p.add_argument("--max_len", type=int, default=128)
    p.add_argument("--train_limit", type=int, default=None, help="keep this many training examples (seed 0)")
    p.add_argument("--seed", type=int, default=42, help="the teacher's seed (and the students' without --seeds)")
    p.add_argument("--seeds", default="", help="student seeds, e.g. 1,2,3: each row trained once per seed")
    p.add_argument("--pool", default="cls", choices=["cls", "mean"],
                   help="what the head and the patient term read: [CLS] (the paper) | the mean of the tokens")
    p.add_argument("--log_every", type=int, default=100)
    p.add_argument("--save", action="store_true", help="save each student (finetune.py format)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for task in args.task:
        a = argparse.Namespace(**{**vars(args), "task": task})
        try:
            variants = list(VARIANTS) if args.command == "ablation" else [PEAKD]
            results.append(pipeline(a, variants, [int(s) for s in args.seeds.split(",") if s] or None))
        except (OSError, ValueError) as e:  # a bad path or file: one line, not a traceback
            raise SystemExit(f"peakd.py: error: {one_line(e)}") from None
    print(table(results))
    return results


if __name__ == "__main__":
    main()
