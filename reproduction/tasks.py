"""
Table 2 (task distillation, "DistilBERT (D)", Section 4; IMDb), Table 3 (size and CPU time) and Pea-KD (Cho &
Kang), each on the teacher and the distilled student of the general stage, with the recipe and seeds of
reproduction/glue.py: every difference between separately fine-tuned models has an SE that counts the dev
examples and the seeds (eval.seeded_difference).
"""
from pathlib import Path

import numpy as np

import finetune as ft
import peakd
from eval import seeded_difference, verdict
from machinery.hf import load_pretrained, resolve_checkpoint
from machinery.tokenizer import load_tokenizer
from reports import size_speed
from reproduction import glue


def compared(a, b, groups=None, metric=None) -> dict:
    p = seeded_difference(a, b, metric=metric, groups=groups)
    return {**p, "verdict": verdict(p["delta"], p["se"])}


def per_example(result, column=None) -> np.ndarray:
    """(seeds, items): each seed's per-example scores (SQuAD: column 0 exact match, 1 F1)."""
    rows = [r["per_example"] for r in result["runs"]]
    return np.array(rows if column is None else [[x[column] for x in r] for r in rows], dtype=float)


def saved_teacher(result, task) -> str:
    """The saved fine-tuned teacher of the median seed."""
    return ft.median_run(result["runs"], ft.task_spec(task)[1]["metrics"][0])["path"]


# ------------------------------------------------------------------------------------------------------------
# Table 2

def sst2_d(cfg, root, general) -> dict:
    """(D) on SST-2, one thing at a time: the distilled student fine-tuned on the same labelled sentences, recipe
    and seeds as in Table 1, with the teacher's soft targets added (finetune --teacher: alpha T^2 KL at T plus
    (1 - alpha) CE), against Table 1's runs of the same student alone."""
    name = general["distilled"]
    distilled = general["rows"][name]["folder"]
    teacher = glue.glue_run(cfg, root, "teacher", str(root / "teacher" / "model"), "SST-2")
    alone = glue.glue_run(cfg, root, name, distilled, "SST-2")
    d = glue.glue_run(cfg, root, f"{name} (D)", distilled, "SST-2", teacher=saved_teacher(teacher, "SST-2"))
    return {"mean": float(per_example(d).mean()), "alone_mean": float(per_example(alone).mean()),
            "teacher_accuracy": float(per_example(teacher).mean()), "seeds": cfg.seeds,
            "d_vs_alone": compared(per_example(d), per_example(alone))}


def squad(cfg, root, distilled) -> dict:
    """SQuAD v1.1: trained on dev-v1.1.json (one half of the official dev set), scored on test-v1.1.json (the
    other). The teacher fine-tuned once (seed cfg.seed); the student alone and with the teacher's span logits
    (D), each with every seed of cfg.seeds; (D) minus alone on EM and F1, SEs of questions (clustered by
    paragraph) and seeds."""
    folder = Path(cfg.data) / "squad"
    common = dict(train_file=str(folder / "dev-v1.1.json"), eval_file=str(folder / "test-v1.1.json"),
                  train_limit=cfg.squad_train, eval_limit=cfg.squad_eval, max_len=cfg.squad_len, doc_stride=64,
                  max_query=48, out=str(root / "table2"), lr=cfg.squad_lr, epochs=cfg.squad_epochs)
    teacher = glue.finetuned(glue.finetune_config(cfg, "squad", model=str(root / "teacher" / "model"),
                                                  name="teacher", save=True, seeds=str(cfg.seed), **common))
    alone = glue.finetuned(glue.finetune_config(cfg, "squad", model=distilled, name="student", **common))
    d = glue.finetuned(glue.finetune_config(cfg, "squad", model=distilled, name="student-D",
                                            teacher=teacher["runs"][0]["path"], **common))
    dev = ft.read_squad(folder / "test-v1.1.json")[: cfg.squad_eval]
    paragraph = {}  # the questions of one paragraph are not independent
    groups = np.array([paragraph.setdefault(e.context, len(paragraph)) for e in dev])
    mean = lambda r, c: float(per_example(r, c).mean())
    return {"teacher": {"exact_match": mean(teacher, 0), "f1": mean(teacher, 1)},
            "rows": {n: {"exact_match": mean(r, 0), "f1": mean(r, 1)} for n, r in
                     (("teacher", teacher), ("student", alone), ("student (D)", d))},
            "seeds": cfg.seeds, "questions": len(dev), "paragraphs": len(paragraph), "train": cfg.squad_train,
            "d_vs_alone": {k: compared(per_example(d, c), per_example(alone, c), groups)
                           for c, k in enumerate(("exact_match", "f1"))}}


def imdb(cfg, root, distilled) -> dict:
    """IMDb (Table 2): the teacher and the distilled student fine-tuned the same way (head, seeds; each its
    recipe, --recipe and --student_recipe) on a fixed balanced subset of the train reviews, scored on the same
    test reviews; student minus teacher."""
    common = dict(data=str(Path(cfg.data) / "imdb"), train_limit=cfg.imdb_train, eval_limit=cfg.imdb_eval,
                  max_len=cfg.imdb_len, out=str(root / "table2"))
    rows = {n: glue.finetuned(glue.finetune_config(cfg, "imdb", who, model=m, name=n, **common))
            for n, who, m in (("teacher", "teacher", str(root / "teacher" / "model")),
                              ("distilled", "student", distilled))}
    return {"rows": {n: float(per_example(r).mean()) for n, r in rows.items()}, "reviews": cfg.imdb_eval,
            "train_reviews": cfg.imdb_train, "seeds": cfg.seeds,
            "student_vs_teacher": compared(per_example(rows["distilled"]), per_example(rows["teacher"]))}


def table2_stage(cfg, root, general) -> dict:
    distilled = general["rows"][general["distilled"]]["folder"]
    out = {"sst2": sst2_d(cfg, root, general)}
    if cfg.squad_train:
        out["squad"] = squad(cfg, root, distilled)
    if cfg.imdb_train:
        out["imdb"] = imdb(cfg, root, distilled)
    return out


# ------------------------------------------------------------------------------------------------------------
# Table 3

def table3_stage(cfg, root, general) -> dict:
    """Parameters, size on disk and CPU time at batch size 1: models timed in turns (interleaved rounds), the
    median and range of the per-round speed-up, and the bound the layers allow (reports.size_speed)."""
    encoders = {"teacher": load_pretrained(root / "teacher" / "model"),
                "distilled": load_pretrained(general["rows"][general["distilled"]]["folder"])}
    return size_speed(encoders, load_tokenizer(resolve_checkpoint(cfg.teacher)),
                      Path(cfg.data) / "glue" / "STS-B" / "dev.tsv", limit=8 if cfg.quick else 200, batch_size=32,
                      repeats=3 if cfg.quick else 5)


# ------------------------------------------------------------------------------------------------------------
# Pea-KD: the teacher (the pretrained model, fine-tuned on each task); the students from its first 3 layers,
# SPS runs them twice (6 layers); every row trained once per seed of peakd_seeds

def peakd_config(cfg, root, task, n) -> peakd.PeakdConfig:
    lr, epochs = glue.recipes(cfg.recipe).get(task, (cfg.lr, cfg.epochs))[0], cfg.peakd_epochs
    teacher = str(resolve_checkpoint(cfg.teacher))
    return peakd.PeakdConfig(task=task, data=str(Path(cfg.data) / "glue"), teacher=teacher, vocab=teacher,
                             out=str(root / "peakd"), student_layers=3, sps="all", lr=lr, epochs=epochs,
                             ptp_epochs=1.0, teacher_lr=lr, teacher_epochs=epochs, max_len=cfg.max_len,
                             train_limit=n, seed=cfg.seed, log_every=0, pool="mean",
                             dtype=glue.finetune_dtype(cfg))


def peakd_stage(cfg, root) -> dict:
    results, seeds = {}, glue.seeds(cfg.peakd_seeds)
    for task, n in glue.limits(cfg.peakd_limits).items():  # a task done with these settings is reused (cached)
        r = peakd.pipeline(peakd_config(cfg, root, task, n), list(peakd.VARIANTS), seeds)
        rows = r["rows"]
        labels = glue.dev_labels(cfg, task)
        results[task] = {
            "rows": {k: {m: v for m, v in row.items() if m != "correct"} for k, row in rows.items()},
            "vs_pkd": {k: compared(np.array(row["correct"], dtype=float), np.array(rows["PKD"]["correct"], dtype=float))
                       for k, row in rows.items() if k not in ("teacher", "PKD")},
            "majority": float(max(np.mean(labels == c) for c in np.unique(labels))), "train": n, "ptp": r["ptp"]}
    return {"tasks": results, "seeds": seeds, "pool": "mean", "peakd": peakd.PEAKD}
