"""
Fine-tuning for the tables: one recipe per task, chosen on held-out training data (never the dev set), the same
head for every model, several seeds, and differences whose standard errors count both the dev examples and the
seeds (eval.seeded_difference). Table 1 (GLUE dev) and the recipe stage live here.
"""
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

import finetune as ft
from eval import seeded_difference, verdict
from machinery import files
from machinery.hf import resolve_checkpoint

GLUE = ("SST-2", "MRPC", "RTE", "STS-B")


def log(msg):
    files.log(msg, "reproduce")


def limits(text) -> dict:
    """'SST-2:2000,MRPC:1500' -> {'SST-2': 2000, 'MRPC': 1500}."""
    return {task: int(n) for task, n in (item.split(":") for item in text.split(",") if item)}


def recipes(text) -> dict:
    """'SST-2:1e-4:3,STS-B:2e-4:4' -> {'SST-2': (1e-4, 3.0), ...}: each task's learning rate and epochs."""
    out = {}
    for item in (x for x in text.split(",") if x):
        task, lr, epochs = item.split(":")
        out[task] = (float(lr), float(epochs))
    return out


def seeds(text) -> list:
    return [int(s) for s in text.split(",") if s]


def finetune_dtype(cfg) -> str:
    """The precision of every fine-tuning of the run (Pea-KD's too): float32 when asked (and in --quick runs),
    else finetune's auto."""
    return "float32" if cfg.quick or cfg.dtype == "float32" else "auto"


def finetune_config(cfg, task, who="student", **changes) -> ft.FinetuneConfig:
    """finetune.py's settings for a task of the reproduction: its recipe (lr, epochs) for `who` (the teacher's
    --recipe, or every student's --student_recipe), the mean-pooled head for every model (see
    docs/reproduction.md: MiniLM was trained with mean pooling; the same head for teacher and students keeps each
    comparison to one difference), standardised regression targets, no checkpoint."""
    book = cfg.recipe if who == "teacher" else cfg.student_recipe
    lr, epochs = recipes(book).get(ft.task_spec(task)[0], (cfg.lr, cfg.epochs))
    base = dict(task=task, data=str(Path(cfg.data) / "glue"), vocab=str(resolve_checkpoint(cfg.teacher)),
                seeds=cfg.seeds, lr=lr, epochs=epochs, log_every=0, save=False, max_len=cfg.max_len,
                style="distilbert", pool="mean", dtype=finetune_dtype(cfg))
    return ft.FinetuneConfig(**{**base, **changes})


def folder_id(folder) -> str | None:
    """sha256 of a model folder's files (weights and configs), or None for a name that is not a folder: a run
    is reused only for the same model, not for another one saved in the same place."""
    if not folder or not Path(folder).is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".json",
                                                                                       ".pt", ".txt")):
        h.update(f.name.encode())
        with open(f, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def finetuned(fcfg) -> dict:
    """finetune.run(fcfg), reused when its results file holds exactly these settings and the models it read
    (model, teacher) are the same files (their hashes, kept beside the results in .inputs.json)."""
    path = Path(fcfg.out) / f"{fcfg.name}-{ft.task_spec(fcfg.task)[0]}.json"
    inputs = {"model": folder_id(fcfg.model), "teacher": folder_id(fcfg.teacher)}
    sidecar = path.with_suffix(".inputs.json")
    if path.is_file() and sidecar.is_file():
        saved = json.loads(path.read_text())
        if saved.get("config") == dataclasses.asdict(fcfg) and json.loads(sidecar.read_text()) == inputs:
            log(f"{path.name}: already complete, reused")
            return saved
    result = ft.run(fcfg)
    files.write_text(json.dumps(inputs) + "\n", sidecar)
    return result


# ------------------------------------------------------------------------------------------------------------
# What a score means: the dev labels, the chance floor, and each task's score (GLUE's rule) on resampled rows

def dev_labels(cfg, task) -> np.ndarray:
    return np.array([e.label for e in ft.read_glue(task, Path(cfg.data) / "glue", "dev")], dtype=float)


def task_score(task, labels):
    """score(predictions, idx): the task's GLUE score on the dev rows idx, the mean of its metrics (MRPC F1 and
    accuracy, STS-B Pearson and Spearman), from one run's predictions (class or score per dev example)."""
    names = ft.GLUE_TASKS[task]["metrics"]

    def score(pred, idx):
        p, y = np.asarray(pred)[idx], labels[idx]
        if ft.GLUE_TASKS[task]["num_labels"] == 1:
            m = {"pearson": ft.pearson(p, y), "spearman": ft.spearman(p, y)}
        else:
            m = {"accuracy": ft.accuracy(p, y), "f1": ft.f1_binary(p, y), "mcc": ft.matthews_corrcoef(p, y)}
        return float(np.mean([m[k] for k in names if k in m]))
    return score


def floor(task, labels) -> float:
    """The best GLUE score of a constant predictor (the majority class; always 'paraphrase' on MRPC, whose F1
    rewards it; 0 Pearson on STS-B): a model at this score has learned nothing."""
    if ft.GLUE_TASKS[task]["num_labels"] == 1:
        return 0.0
    score = task_score(task, labels)
    everything = np.arange(len(labels))
    return max(score(np.full(len(labels), c), everything) for c in np.unique(labels))


def runs_of(result) -> np.ndarray:
    """(seeds, dev examples): each seed's predictions from a finetune.run result."""
    return np.array([r["predictions"] for r in result["runs"]], dtype=float)


# ------------------------------------------------------------------------------------------------------------
# The recipe stage: lr and epochs per task, chosen on a held-out part of the training subset

def recipe_tasks(cfg) -> list:
    """(task, training rows, other finetune settings) of every task the tables fine-tune on: GLUE's, and IMDb's
    when it runs."""
    tasks = [(task, n, {}) for task, n in limits(cfg.limits).items()]
    if cfg.imdb_train:
        tasks.append(("imdb", cfg.imdb_train, {"data": str(Path(cfg.data) / "imdb"), "max_len": cfg.imdb_len}))
    return tasks


def recipe_stage(cfg, root, models: dict) -> dict:
    """For each task (recipe_tasks): each model of `models` ({"teacher": folder, "copy-only": folder}) fine-tuned
    with every (lr, epochs) of the grid on 80% of the task's training subset, scored on the other 20% (finetune
    --holdout=0.2; the dev set is not read), one seed per grid point; the best held-out score is the task's
    recipe. The teacher's is --recipe. The copy-only student's is --student_recipe, used by every student: the
    copy is where every student row starts, so the choice favours no method of general distillation, and a
    3-layer student need not learn at the 6-layer teacher's pace."""
    grid_lr, grid_ep = [float(x) for x in cfg.recipe_lrs.split(",")], [float(x) for x in cfg.recipe_epochs.split(",")]
    grids, chosen = {}, {}
    for name, folder in models.items():
        out, best_of = {}, {}
        for task, n, extra in recipe_tasks(cfg):
            points, metrics = [], ft.task_spec(task)[1]["metrics"]
            for lr in grid_lr:
                for epochs in grid_ep:
                    fcfg = finetune_config(cfg, task, model=folder, name=f"{name}-{lr:g}-{epochs:g}",
                                           out=str(root / "recipe"), train_limit=n, lr=lr, epochs=epochs,
                                           holdout=0.2, seeds=str(cfg.seed), **extra)
                    r = finetuned(fcfg)
                    points.append({"lr": lr, "epochs": epochs,
                                   "score": float(np.mean([r["median"][m] for m in metrics]))})
            best = max(points, key=lambda p: p["score"])
            out[task], best_of[task] = points, (best["lr"], best["epochs"])
        grids[name] = out
        chosen[name] = ",".join(f"{t}:{lr:g}:{ep:g}" for t, (lr, ep) in best_of.items())
        log(f"recipe of {name}: {chosen[name]}")
    return {"grid": grids, "chosen": chosen, "holdout": 0.2, "seed": cfg.seed}


# ------------------------------------------------------------------------------------------------------------
# Table 1: GLUE dev, every model with the same head and seeds, the teacher's recipe or the students'

def glue_run(cfg, root, name, folder, task, **changes) -> dict:
    """One model fine-tuned on one GLUE task with the task's recipe and every seed (reused when done): the runs
    of Table 1, Table 4 and (D) share this cache, root/glue/<name>-<task>.json. The teacher's runs are saved
    (Table 2's soft targets)."""
    safe = name.replace(" ", "_").replace(",", "")
    return finetuned(finetune_config(cfg, task, "teacher" if name == "teacher" else "student", model=folder,
                                     name=safe, out=str(root / "glue"),
                                     train_limit=limits(cfg.limits)[task], save=name == "teacher", **changes))


def table1_stage(cfg, root, models: dict, distilled: str) -> dict:
    """models: {name: folder}, 'teacher' first; `distilled` names the student the claims are about. Every model
    fine-tuned on every task with every seed of cfg.seeds; per task the mean over seeds of the GLUE score, its
    floor and whether each model clears it (3 SE above the floor, SE of examples and seeds); the macro and the
    retention of the teacher's macro, raw and chance-adjusted; the distilled student minus the others."""
    tasks = list(limits(cfg.limits))
    results = {name: {task: glue_run(cfg, root, name, folder, task) for task in tasks}
               for name, folder in models.items()}
    labels = {task: dev_labels(cfg, task) for task in tasks}
    scorer = {task: task_score(task, labels[task]) for task in tasks}
    floors = {task: floor(task, labels[task]) for task in tasks}
    preds = {n: {t: runs_of(results[n][t]) for t in tasks} for n in models}
    every = {t: np.arange(len(labels[t])) for t in tasks}
    scores = {n: {t: [scorer[t](p, every[t]) for p in preds[n][t]] for t in tasks} for n in models}
    mean = {n: {t: float(np.mean(scores[n][t])) for t in tasks} for n in models}
    bars = {n: {t: above_floor(preds[n][t], scorer[t], labels[t]) for t in tasks} for n in models}
    paired = {f"{distilled} - {o}": {t: compared(preds[distilled][t], preds[o][t], scorer[t]) for t in tasks}
              for o in models if o != distilled}
    macro = {n: float(np.mean(list(mean[n].values()))) for n in models}
    floor_macro = float(np.mean(list(floors.values())))
    retention = {n: retention_of(preds[n], preds["teacher"], scorer, floors) for n in models if n != "teacher"}
    return {"tasks": tasks, "models": list(models), "distilled": distilled, "seeds": cfg.seeds,
            "limits": limits(cfg.limits), "recipe": cfg.recipe, "student_recipe": cfg.student_recipe,
            "scores": scores, "mean": mean, "macro": macro,
            "floors": floors, "floor_macro": floor_macro, "bars": bars, "paired": paired, "retention": retention,
            "metrics": {n: {t: [r["metrics"] for r in results[n][t]["runs"]] for t in tasks} for n in models}}


def compared(a, b, score) -> dict:
    p = seeded_difference(a, b, metric=score)
    return {**p, "verdict": verdict(p["delta"], p["se"])}


def above_floor(runs, score, labels) -> dict:
    """Whether a model's mean score is at least 3 SE above the best constant predictor's on the same dev rows
    (the SE of the examples, by bootstrap, and of the seeds)."""
    constant = np.full((2, len(labels)), _floor_prediction(score, labels))
    p = seeded_difference(runs, constant, metric=score)
    return {"score": p["a"], "floor": p["b"], "se": p["se"], "clears": bool(p["delta"] >= 3 * p["se"])}


def _floor_prediction(score, labels):
    everything = np.arange(len(labels))
    values = np.unique(labels)
    if len(values) > 10:  # regression: any constant (its Pearson is 0)
        return float(labels.mean())
    return max(values, key=lambda c: score(np.full(len(labels), c), everything))


def retention_of(student, teacher, scorer, floors, resamples=1000) -> dict:
    """The student's macro score over the teacher's, raw and chance-adjusted ((S - F) / (T - F), F the macro of
    the floors), with SEs: the examples by a paired bootstrap (each task's dev examples resampled, the same for
    both models; every resample's scores are means over the seeds), the seeds by the delta method on the
    per-task seed variances."""
    tasks = list(student)
    rng = np.random.default_rng(0)
    F = float(np.mean([floors[t] for t in tasks]))

    def macros(idx):
        s = np.mean([np.mean([scorer[t](p, idx[t]) for p in student[t]]) for t in tasks])
        T = np.mean([np.mean([scorer[t](p, idx[t]) for p in teacher[t]]) for t in tasks])
        return s, T
    full = {t: np.arange(student[t].shape[1]) for t in tasks}
    S, T = macros(full)
    boot = [macros({t: rng.integers(0, len(full[t]), len(full[t])) for t in tasks}) for _ in range(resamples)]
    raw_items = float(np.std([s / t for s, t in boot], ddof=1))
    adj_items = float(np.std([(s - F) / (t - F) for s, t in boot], ddof=1))
    var_seed = lambda runs: sum(np.var([scorer[t](p, full[t]) for p in runs[t]], ddof=1) / len(runs[t])
                                for t in tasks) / len(tasks) ** 2
    vs, vt = var_seed(student), var_seed(teacher)
    raw_seeds = np.sqrt(vs / T ** 2 + S ** 2 * vt / T ** 4)
    adj_seeds = np.sqrt(vs / (T - F) ** 2 + (S - F) ** 2 * vt / (T - F) ** 4)
    return {"raw": float(S / T), "raw_se": float(np.hypot(raw_items, raw_seeds)),
            "adjusted": float((S - F) / (T - F)), "adjusted_se": float(np.hypot(adj_items, adj_seeds)),
            "floor_macro": F}
