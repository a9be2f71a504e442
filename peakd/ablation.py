"""
The Pea-KD pipeline for one task (Cho & Kang, Section 4): teacher -> its predictions -> PTP labels -> PTP
pretraining -> Patient-KD with SPS, and the ablation's rows (Section 4.4), each trained once per student seed.
A task finished with the same settings is reused (machinery.stages.cached: out/<task>/stage.json).
"""
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from finetune import (GLUE_TASKS, Classifier, FinetuneConfig, encode, evaluate, fit, load_encoder,
                      load_finetuned, predict, read_glue, save_finetuned, task_spec)
from machinery.config import check_fields, opt
from machinery.hf import model_folder
from machinery.stages import cached
from machinery.tokenizer import load_tokenizer
from peakd.pkd import classifier, pkd_layer_map, pkd_loss_fn, teacher_outputs
from peakd.ptp import ptp_pretrain, ptp_targets
from peakd.students import init_student, pretrained_source


@dataclass
class PeakdConfig:
    """The settings of one task's pipeline (`python -m peakd run --help` lists them)."""
    task: str = opt("", "GLUE task: SST-2, MRPC, RTE, QNLI, ... (the command takes several: --task=SST-2,RTE)")
    data: str = opt("", "GLUE root folder (one folder per task)")
    teacher: str = opt("", "a pretrained BERT (fine-tuned here first) or a finetune.py folder already fine-tuned "
                           "on the task")
    vocab: str = opt("", "vocab.txt or tokenizer.json (default: the teacher folder's)")
    out: str = opt("out/peakd", "results, fine-tuned teacher and students go here")
    student_layers: int = opt(0, "k (0: half the teacher's layers)", range=">= 0")
    student_from: str = opt("", "where the student's layers come from (default: the pre-trained BERT, as the "
                                "reference; 'finetuned': the fine-tuned teacher; or a folder)")
    init: str = opt("first", "first k layers | every other one", choices=("first", "skip"))
    arch: str = opt("bert", "bert: the student keeps token types and pooler, as Pea-KD | distilbert: drops them",
                    choices=("bert", "distilbert"))
    sps: str = opt("auto", "layers SPS re-runs: auto (all if k < n/2, else upper, as the reference) | all | "
                           "upper | 0,1,2")
    no_swap: bool = opt(False, "paired sharing: re-run layers without the Q/K swap")
    ptp_thresholds: str = opt("reference", "reference (the reference code's table; median for tasks it "
                                           "lacks) | median | t1,t2")
    alpha: float = opt(0.7, "weight of the soft targets (1 - alpha: the labels)", range="[0, 1]")
    T: float = opt(10.0, "temperature of the soft targets", range="> 0")
    beta: float = opt(100.0, "weight of the patient term", range=">= 0")
    layer_map: str = opt("skip", "PKD-Skip | PKD-Last", choices=("skip", "last"))
    lr: float = opt(5e-5, "the students' learning rate", range="> 0")
    epochs: float = opt(3.0, "the students' epochs", range="> 0")
    ptp_epochs: float = opt(2.0, "epochs of PTP pretraining", range="> 0")
    teacher_lr: float = opt(5e-5, "the teacher's fine-tuning learning rate", range="> 0")
    teacher_epochs: float = opt(3.0, "the teacher's fine-tuning epochs", range="> 0")
    batch_size: int = opt(32, "batch size", range=">= 1")
    max_steps: int | None = opt(None, "cap each student training stage (smoke tests)", range=">= 1")
    max_len: int = opt(128, "tokens per example", range=">= 2")
    train_limit: int | None = opt(None, "keep this many training examples (seed 0)", range=">= 1")
    seed: int = opt(42, "the teacher's seed (and the students' without --seeds)", range=">= 0")
    seeds: str = opt("", "student seeds, e.g. 1,2,3: each row trained once per seed")
    pool: str = opt("cls", "what the head and the patient term read: [CLS] (the paper) | the mean of the tokens",
                    choices=("cls", "mean"))
    log_every: int = opt(100, "steps between log lines (0: none)", range=">= 0")
    dtype: str = opt("auto", "auto (bf16 autocast where it is fast, as finetune) | float32",
                     choices=("auto", "float32"))
    save: bool = opt(False, "save each student (finetune.py format)")
    threads: int = opt(0, "torch CPU threads (0: torch's default)", range=">= 0")

    def __post_init__(self):
        check_fields(self)
        if self.sps not in ("auto", "all", "upper") and not all(
                i.strip().isdigit() for i in self.sps.split(",")):
            raise ValueError(f"--sps={self.sps!r}: expected auto, all, upper or layer indices such as 0,1,2")
        if self.save and self.pool != "cls":
            raise ValueError("--save keeps finetune.py's format, whose heads read [CLS]: not with --pool=mean")


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


def train_student(teacher, train, t_logits, t_cls, ptp_y, cfg, kd=True, sps=True, ptp=True, pretrained=None):
    """One student (init_student), optionally pretrained with PTP (for cfg.ptp_epochs more), then trained on
    the task for cfg.epochs with Patient-KD (kd=True) or with cross-entropy alone (kd=False: plain
    fine-tuning, the reference's alpha 0; the teacher's outputs are then not handed to fit, which would
    otherwise distil from them). Every student starts from the same seed, cfg.seed."""
    fcfg = student_config(cfg)
    torch.manual_seed(cfg.seed)
    student = init_student(teacher, pretrained, cfg, sps)
    if ptp:
        student = ptp_pretrain(student, train, ptp_y, replace(fcfg, epochs=cfg.ptp_epochs), cfg.pool)
    model = classifier(student, t_logits.size(1), cfg.pool)
    layer_map = pkd_layer_map(len(student.schedule), teacher.encoder.cfg.num_layers, cfg.layer_map)
    if kd:
        fit(model, {**train, "teacher_logits": t_logits, "teacher_cls": t_cls}, fcfg,
            loss_fn=pkd_loss_fn(layer_map, cfg.alpha, cfg.T, cfg.beta, cfg.pool))
    else:
        fit(model, train, fcfg)  # the task's cross-entropy alone
    return model, layer_map


def student_config(cfg) -> FinetuneConfig:
    return FinetuneConfig(lr=cfg.lr, batch_size=cfg.batch_size, epochs=cfg.epochs, max_steps=cfg.max_steps,
                          seed=cfg.seed, log_every=cfg.log_every, dtype=cfg.dtype)


def classifier_parameters(model):
    """Parameters used for the task: everything but the encoder's (unused) masked-LM head."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("encoder.head."))


def scored(task, model, dev) -> dict:
    """The task's metrics on dev, and "correct": 1.0 or 0.0 per dev example (for paired comparisons)."""
    logits = predict(model, dev)
    return {**evaluate(task, logits, dev["labels"]),
            "correct": (logits.argmax(-1) == dev["labels"]).float().tolist()}


# ------------------------------------------------------------------------------------------------------------

def pipeline(cfg: PeakdConfig, variants=(PEAKD,), seeds=None) -> dict:
    """The whole Pea-KD pipeline for the task cfg.task, for each of `variants` (names in VARIANTS) and each
    student seed in `seeds` (default: cfg.seeds, else cfg.seed) on the same teacher (fine-tuned with cfg.seed),
    data and teacher predictions. A row's metrics are the means over the seeds; "seeds" holds each seed's,
    "correct" one list of per-dev-example 1.0/0.0 per seed. The result is stored in cfg.out/<task>/stage.json
    (and the students when cfg.save) and reused for the same settings; it reads the same either way (JSON)."""
    seeds = [int(s) for s in seeds or [s for s in cfg.seeds.split(",") if s] or [cfg.seed]]
    task, spec = task_spec(cfg.task)
    if spec["num_labels"] < 2:
        raise ValueError(f"{task}: Pea-KD's losses need classes (PTP labels, softmax KD); {task} is a "
                         f"regression")
    same = {k: v for k, v in asdict(cfg).items() if k not in ("seeds", "log_every", "threads")}
    settings = {"config": same, "variants": list(variants), "seeds": seeds}
    return cached(Path(cfg.out) / task, settings,
                  lambda: json.loads(json.dumps(run_task(replace(cfg, task=task), list(variants), seeds))))


def run_task(cfg: PeakdConfig, variants, seeds) -> dict:
    task, out_dir = cfg.task, Path(cfg.out) / cfg.task
    tokenizer = load_tokenizer(cfg.vocab or model_folder(cfg.teacher))  # a folder or a name
    train, dev, note = load_data(task, cfg.data, tokenizer, cfg.max_len, cfg.train_limit)
    print(f"[peakd] {task}: {len(train['input_ids'])} training / {len(dev['input_ids'])} test examples. "
          f"{note}")
    t0 = time.time()
    tcfg = FinetuneConfig(lr=cfg.teacher_lr, batch_size=cfg.batch_size, epochs=cfg.teacher_epochs,
                          seed=cfg.seed, log_every=cfg.log_every, dtype=cfg.dtype)
    setup = {k: getattr(cfg, k) for k in ("train_limit", "max_len", "teacher_lr", "teacher_epochs",
                                          "batch_size", "seed", "dtype")}
    teacher = get_teacher(cfg.teacher, task, train, tcfg, out_dir, setup)
    rows = {"teacher": {**scored(task, teacher, dev), "parameters": classifier_parameters(teacher),
                        "depth": teacher.encoder.cfg.num_layers, "seconds": round(time.time() - t0, 1)}}
    t_logits, t_cls = teacher_outputs(teacher, train, pool=cfg.pool)
    source = pretrained_source(cfg.teacher, cfg.student_from)
    pretrained = None if source == "finetuned" else load_encoder(source)
    print(f"[peakd] students start from {'the fine-tuned teacher' if pretrained is None else source}")
    ptp = ptp_targets(t_logits, train["labels"], cfg.ptp_thresholds, task)
    for name in variants:
        rows[name] = ablation_row(cfg, name, seeds, (teacher, train, dev, t_logits, t_cls, ptp["labels"]),
                                  pretrained)
    return {"task": task, "note": note, "seeds": seeds, "rows": rows,
            "ptp": {k: ptp[k] for k in ("t1", "t2", "counts")}}


def ablation_row(cfg, name, seeds, inputs, pretrained) -> dict:
    """One row of the ablation (VARIANTS[name]), its student trained once per seed: the mean metrics, each
    seed's, and each seed's per-example results."""
    (teacher, train, dev, t_logits, t_cls, ptp_y), t0, per_seed = inputs, time.time(), {}
    for seed in seeds:
        model, layer_map = train_student(teacher, train, t_logits, t_cls, ptp_y, replace(cfg, seed=seed),
                                         **VARIANTS[name], pretrained=pretrained)
        per_seed[seed] = scored(cfg.task, model, dev)
    metrics = {m: float(np.mean([s[m] for s in per_seed.values()])) for m in per_seed[seeds[0]] if m != "correct"}
    row = {**metrics, "seeds": {s: {m: v for m, v in r.items() if m != "correct"} for s, r in per_seed.items()},
           "correct": [r["correct"] for r in per_seed.values()],
           "parameters": classifier_parameters(model), "depth": len(model.encoder.schedule),
           "seconds": round(time.time() - t0, 1), "layer_map": layer_map}
    print(f"[peakd] {cfg.task} {name}: {json.dumps(metrics)}, seeds {seeds} ({row['seconds']}s)")
    if cfg.save:
        slug = name.split(" (")[0].replace(" + ", "+").replace(" ", "")
        save_finetuned(model, Path(cfg.out) / cfg.task / f"student-{slug}", task=cfg.task, variant=name,
                       teacher=str(cfg.teacher))
    return row
