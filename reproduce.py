"""
The paper's tables, reproduced qualitatively on a 2-core CPU in about 70 minutes (bf16 with AMX), with a real
pretrained teacher.

    python reproduce.py                      # everything: ../shared/data in, out/reproduce out
    python reproduce.py --quick              # the same stages with tiny budgets (a smoke run)
    python reproduce.py --only=general,table1  # some stages (each needs the ones before it, which are reused)

Stages, each written to its own folder under --out and reused when its settings have not changed:
  teacher   all-MiniLM-L6-v2 (6 x 384) given an MLM head by continued MLM training on the English corpora
  general   general distillation (Section 3) of the [0, 2, 4] student, with Table 4's rows (the triple loss,
            - L_cos, - L_ce, - L_mlm, random init) and L_mlm alone: held-out MLM accuracy at the budgets of
            --curve, then SST-2 (--table4_limits) after fine-tuning; each row minus the triple loss, paired SEs
  table1    teacher, distilled student and MLM-only student fine-tuned on SST-2, MRPC, RTE, STS-B (Table 1)
  table2    task distillation, "DistilBERT (D)" (Section 4): SST-2 with a transfer set, SQuAD on the halves
  table3    parameters, size on disk, CPU time at batch size 1 (Table 3)
  peakd     Pea-KD (Cho & Kang): FT, PKD, PKD + SPS, PKD + PTP, Pea-KD on SST-2, MRPC, RTE, 3 student seeds
Each stage writes stage.json and, for a table, results.png in its folder; out/reproduce/tables.md holds all.
"""

import dataclasses
import json
import math
import sys
import time
import warnings
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import data
import finetune as ft
import losses
import peakd
import prepare
import train
from eval import heldout_hits, paired_difference, size_speed, speed_markdown, verdict
from machinery import files
from machinery.checkpoint import load_checkpoint
from machinery.config import opt, parse_config
from machinery.files import pyplot, save_figure, write_text
from machinery.hf import load_pretrained, resolve_checkpoint, save_pretrained
from machinery.tokenizer import load_tokenizer
from model import Bert, BertConfig, student_from_teacher
from quickstart import run_stage


@dataclass
class ReproduceConfig:
    data: str = opt("../shared/data", "glue/, squad/, imdb/, corpora/ (see ../shared/data/README.md)")
    out: str = opt("out/reproduce", "one folder per stage, and tables.md")
    docs: str = opt("", "comma-separated pages to write into: every table into a page's 'reproduce' region, the "
                        "claims and stage times into its 'claims' region, e.g. docs/reproduction.md,README.md "
                        "(nothing outside --out by default)")
    teacher: str = opt(train.QUICKSTART_TEACHER, "a pretrained BERT: a folder, a Hub name, or the pinned PyPI wheel's")
    student_layers: str = opt("0,2,4", "the student: these teacher layers, token types folded in")
    student_pool: str = opt("mean", "what the students' classifier head reads (finetune.py --pool): mean of the "
                                    "tokens' last states, as MiniLM was trained (its [CLS] barely varies below its "
                                    "last layer) | cls, the paper's [CLS]")
    only: str = opt("", "comma-separated stages to run (default: all)")
    quick: bool = opt(False, "tiny budgets everywhere: a smoke run of every stage")
    seeds: str = opt("1", "fine-tuning seeds of Table 1 and Table 2 (D); the median is reported (the paired SEs "
                          "count the dev examples' noise)")
    # the teacher's MLM head: head_steps of the head alone on the frozen encoder (all of teacher_steps by
    # default, so the encoder stays the pretrained one: full MLM training of MiniLM destroys its sentence-pair
    # skills), then the rest with everything trained
    teacher_steps: int = opt(300, "MLM steps that give the teacher its head (32 x 128 tokens each)")
    head_steps: int = opt(300, "of which the head alone, on the frozen encoder")
    # general distillation: every row trains on the same batches for the same steps (32 x 128 tokens each)
    general_steps: int = opt(50, "steps of each general-distillation row (Table 4)")
    curve: str = opt("10,25", "Table 4's budget curve: also score the rows' snapshots after these steps (of "
                              "the same run)")
    draws: int = opt(3, "independent masks of the held-out split in the MLM comparison")
    table4_limits: str = opt("SST-2:1000", "Table 4 on GLUE: each row fine-tuned on these (lr, epochs, seed); "
                                           "SST-2:1000,STS-B:800 adds STS-B, where the students stay under 0.6 Pearson")
    # fine-tuning (BERT's recipe, shortened: training subsets, 2 epochs)
    lr: float = opt(1e-4, "fine-tuning learning rate")
    epochs: float = opt(2.0, "fine-tuning epochs")
    limits: str = opt("SST-2:2000,MRPC:3668,RTE:800,STS-B:1500", "training examples kept per task (a fixed "
                                                                 "subset)")
    transfer: int = opt(8000, "SST-2 sentences beyond the labelled subset, labelled by the teacher only")
    max_len: int = opt(128, "longest sequence in pretraining and GLUE fine-tuning, in tokens")
    squad_train: int = opt(1200, "questions of dev-v1.1.json trained on; scored on squad_eval of test-v1.1.json")
    squad_eval: int = opt(800, "SQuAD questions scored")
    squad_len: int = opt(192, "SQuAD window length in tokens")
    squad_every: int = opt(40, "the teacher's SQuAD learning curve: also scored every this many steps")
    imdb_train: int = opt(2000, "IMDb reviews trained on (a fixed balanced subset of the 25,000 train reviews)")
    imdb_eval: int = opt(1000, "scored on the first reviews of the test split in its fixed random order")
    imdb_len: int = opt(256, "IMDb tokens kept per review")
    peakd_limits: str = opt(
        "SST-2:1000",
        "Pea-KD training examples per task; MRPC and RTE are left out by default: at budgets that fit here the "
        "fine-tuned teacher is near chance on them (e.g. MRPC:3668,RTE:2490 adds them, about 7x SST-2's time each)",
    )
    peakd_seeds: str = opt("1,2,3", "Pea-KD student seeds (the teacher is fine-tuned once, with seed)")
    peakd_pool: str = opt("mean", "what the Pea-KD students' head and patient term read (peakd.py --pool)")
    seed: int = opt(1, "seed of pretraining, the Pea-KD teacher and the data subsets")

STAGES = ("teacher", "general", "table1", "table2", "table3", "peakd")
TASKS = ("SST-2", "MRPC", "RTE", "STS-B")
QUICK = dict(
    squad_every=1,
    seeds="1,2",
    max_len=64,
    teacher_steps=4,
    head_steps=4,
    general_steps=4,
    curve="2",
    draws=2,
    table4_limits="SST-2:32,STS-B:32",
    epochs=1.0,
    limits="SST-2:48,MRPC:32,RTE:32,STS-B:32",
    transfer=48,
    squad_train=40,
    squad_eval=8,
    squad_len=64,
    imdb_train=16,
    imdb_eval=8,
    imdb_len=32,
    peakd_limits="SST-2:32,MRPC:32,RTE:32",
    peakd_seeds="1,2",
)


def log(msg):
    files.log(msg, "reproduce")


def limits(text) -> dict:
    return {task: int(n) for task, n in (item.split(":") for item in text.split(",") if item)}


def stage(folder: Path, settings: dict, compute):
    """compute() -> a JSON-able result, stored in folder/stage.json with the settings; the stored result when
    the
    settings are the same as last time (a stage that is already complete is not recomputed)."""
    before = stored(folder, settings)
    if before is not None:
        log(f"{folder.name}: already complete, reused")
        return before
    log(f"== {folder.name}")
    t0 = time.time()
    result = compute()
    result["seconds"] = round(time.time() - t0, 1)
    write_text(json.dumps({"settings": settings, "result": result}, indent=1) + "\n", folder / "stage.json")
    return result


def stored(folder: Path, settings: dict):
    """The result folder/stage.json holds for these settings, or None."""
    marker = folder / "stage.json"
    before = json.loads(marker.read_text()) if marker.is_file() else {}
    return before.get("result") if before.get("settings") == settings else None


# ------------------------------------------------------------------------------------------------------------
# The teacher and general distillation (Section 3, Table 4)

ROWS = {  # Table 4's rows, and the MLM-only baseline: (train.py settings, the exported folder)
    "triple loss": (dict(mode="distill"), "student"),
    "- L_cos": (dict(mode="distill", alpha_cos=0.0), "student"),
    "- L_ce": (dict(mode="distill", alpha_ce=0.0), "student"),
    "- L_mlm": (dict(mode="distill", alpha_mlm=0.0), "student"),
    "random init": (dict(mode="distill", init="random"), "student"),
    "L_mlm alone": (dict(mode="mlm", init="teacher"), "model"),
}


def corpus(cfg) -> list:
    root = Path(cfg.data) / "corpora"
    inputs = [root / "gutenberg", root / "wikitext-2" / "wiki.test.raw", root / "tinyshakespeare"]
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        raise FileNotFoundError(f"--data={cfg.data}: no {', '.join(missing)} (see ../shared/data/README.md)")
    return inputs


def base_run(cfg, root) -> train.TrainConfig:
    """The quickstart's settings (uniform masking, the paper's lr and loss) on batches of 32 sequences of up to
    128 tokens (the quickstart's are 16)."""
    run = train.TrainConfig(**train.PRESETS["quickstart"])
    return dataclasses.replace(
        run,
        batch_size=32,
        micro_batch=32,
        data=str(root / "data"),
        student_layers=cfg.student_layers,
        seed=cfg.seed,
        eval_every=0,
        eval_batches=20,
        save_every=1000,
        teacher=str(root / "teacher" / "model"),
        max_steps=cfg.general_steps,
        max_len=cfg.max_len,
        ce_positions="all",  # the paper's L_ce over every real token (the quickstart's preset cuts it to masked)
        ce_chunk=256,  # the vocabulary losses in 256-row chunks: 1.2x faster than 1,024 here (docs/log.md)
        dtype="float32" if cfg.quick else "auto",
    )


def teacher_stage(cfg, root) -> dict:
    source = resolve_checkpoint(cfg.teacher)
    meta = prepare.prepare(
        corpus(cfg), root / "data", vocab=source / "vocab.txt", valid_fraction=0.02, overwrite=True
    )
    run = dataclasses.replace(
        base_run(cfg, root),
        mode="mlm",
        init="pretrained",
        teacher=str(source),
        out_dir=str(root / "teacher"),
        max_steps=cfg.teacher_steps,
        head_steps=cfg.head_steps,
        head_lr=2e-3,
    )
    stats = run_stage("teacher", run, root / "teacher" / "model", after=meta["inputs_hash"])
    return {
        "source": str(source),
        "data_hash": meta["inputs_hash"],
        "stats": stats,
        "settings": dataclasses.asdict(run),
    }


def budgets(cfg) -> list:
    return sorted({int(s) for s in cfg.curve.split(",") if s and 0 < int(s) < cfg.general_steps}) + [cfg.general_steps]


def snapshot(folder: Path, step: int) -> Bert:
    """The model of a train.py run as it was after `step` steps (its checkpoint)."""
    state = load_checkpoint(folder / f"ckpt-{step:07d}.pt")
    model = Bert(BertConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["model_config"].items()}))
    model.load_state_dict(state["model"])
    return model.eval()


def general_stage(cfg, root, teacher) -> dict:
    """Every row on the same batches and steps; all scored on the same held-out masks, each against the triple
    loss, paired, the SE clustered by held-out sequence; the distillation rows also at the earlier budgets of
    the curve (snapshots of the same runs) and, at the last budget, on GLUE after fine-tuning (Table 4)."""
    shards = data.TokenData(root / "data")
    steps = budgets(cfg)
    every = math.gcd(*steps)
    rows, hits, curve_hits = {}, {}, {}
    for name, (settings, export) in ROWS.items():
        folder = root / "general" / name.replace(" ", "_").replace("-", "no")
        run = dataclasses.replace(base_run(cfg, root), out_dir=str(folder), **settings)
        if settings["mode"] == "distill":  # a checkpoint at every budget of the curve, all kept
            run = dataclasses.replace(run, save_every=every, keep_last=cfg.general_steps // every + 1)
        t0 = time.time()
        stats = run_stage(name, run, folder / export, after=teacher["settings"])
        model = load_pretrained(folder / export)
        h = heldout_hits(model, shards, run.max_len, run.micro_batch, cfg.draws)
        hits[name] = h["correct"]
        if settings["mode"] == "distill":
            curve_hits[name] = {s: heldout_hits(snapshot(folder, s), shards, run.max_len, run.micro_batch,
                                                cfg.draws)["correct"] for s in steps[:-1]}
            curve_hits[name][steps[-1]] = h["correct"]
        rows[name] = {
            "folder": str(folder / export),
            "mlm_acc": h["correct"].double().mean().item(),
            "ppl": h["ppl"],
            "steps": stats["step"],
            "seconds": round(time.time() - t0, 1),
            "tokens_per_s": stats["tokens_per_s"],
        }
    t = heldout_hits(
        load_pretrained(root / "teacher" / "model"), shards, run.max_len, run.micro_batch, cfg.draws
    )
    for name in ROWS:
        if name != "triple loss":
            rows[name]["vs_triple"] = compared(hits[name], hits["triple loss"], t["sequence"])
    curve = {name: {str(s): {"mlm_acc": c.double().mean().item(),
                             **({} if name == "triple loss" else
                                {"vs_triple": compared(c, curve_hits["triple loss"][s], t["sequence"])})}
                    for s, c in per.items()} for name, per in curve_hits.items()}
    return {
        "curve": curve,
        "glue": table4_glue(cfg, root, {n: rows[n]["folder"] for n in curve_hits}),
        "teacher": {"mlm_acc": t["correct"].double().mean().item(), "ppl": t["ppl"]},
        "rows": rows,
        "masked_tokens": int(t["labels"].numel()),
        "draws": cfg.draws,
        "sequences": int(torch.unique(t["sequence"]).numel()),
        "tokens_per_row": cfg.general_steps * run.batch_size * run.max_len,
        "steps": steps,
    }


def table4_glue(cfg, root, folders) -> dict:
    """Table 4 the paper's way: every distillation row (at the last budget) fine-tuned on cfg.table4_limits with
    the same data, steps and seed, each minus the triple loss, paired over the dev examples (paired_task)."""
    tasks = list(limits(cfg.table4_limits))
    results = {name: {task: finetuned(cfg, root, finetune_config(
        cfg, root, task=task, model=folder, name=name.replace(" ", "_").replace("-", "no"), out=str(root / "general" / "glue"),
        seeds=str(cfg.seed), train_limit=limits(cfg.table4_limits)[task], pool=cfg.student_pool)) for task in tasks}
        for name, folder in folders.items()}
    metric = lambda task: ft.GLUE_TASKS[task]["metrics"][0]
    return {"tasks": tasks, "seed": cfg.seed, "limits": limits(cfg.table4_limits), "lr": cfg.lr, "epochs": cfg.epochs,
            "scores": {n: {t: r[t]["median"][metric(t)] for t in tasks} for n, r in results.items()},
            "vs_triple": {n: {t: paired_task(results, t, n, "triple loss", dev_labels(cfg, t)) for t in tasks}
                          for n in results if n != "triple loss"}}


def compared(a, b, groups=None) -> dict:
    """a minus b, paired (per-item scores on the same items), with its SE and the verdict at 3 SE."""
    p = paired_difference(torch.as_tensor(a), torch.as_tensor(b), groups)
    return {**p, "verdict": verdict(p["delta"], p["se"])}


# ------------------------------------------------------------------------------------------------------------
# Table 1: GLUE dev, median over seeds; Table 2: task distillation; Table 3: size and speed


def finetune_config(cfg, root, **changes) -> ft.FinetuneConfig:
    return ft.FinetuneConfig(
        **{
            **dict(
                data=str(Path(cfg.data) / "glue"),
                vocab=str(resolve_checkpoint(cfg.teacher)),
                seeds=cfg.seeds,
                lr=cfg.lr,
                epochs=cfg.epochs,
                log_every=0,
                save=False,
                max_len=cfg.max_len,
            ),
            **changes,
        }
    )


def models(cfg, root, general) -> dict:
    """Table 1's rows: the pretrained model itself (the teacher's acceptance test: its head must not have
    changed what the encoder knows), the teacher, the distilled and MLM-only students, and the student right
    after the layer copy (no general distillation)."""
    return {
        "original": str(resolve_checkpoint(cfg.teacher)),
        "teacher": str(root / "teacher" / "model"),
        "distilled": general["rows"]["triple loss"]["folder"],
        "MLM-only": general["rows"]["L_mlm alone"]["folder"],
        "copy-only": copy_only(cfg, root),
    }


def copy_only(cfg, root) -> str:
    """The student right after the layer copy (the teacher's layers cfg.student_layers, token types folded),
    no general distillation: exported once beside the general stage's rows."""
    folder = root / "general" / "copy_only" / "student"
    if not (folder / "config.json").is_file():
        teacher = load_pretrained(root / "teacher" / "model")
        layers = [int(i) for i in cfg.student_layers.split(",")]
        save_pretrained(student_from_teacher(teacher, layers), folder)
    return str(folder)


def finetuned(cfg, root, fcfg) -> dict:
    """finetune.run(fcfg), reused when its results file holds the same settings."""
    path = Path(fcfg.out) / f"{fcfg.name}-{ft.task_spec(fcfg.task)[0]}.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        # a setting added since, at its default, changes nothing the saved run did
        defaults = dataclasses.asdict(ft.FinetuneConfig())
        if {**defaults, **saved.get("config", {})} == dataclasses.asdict(fcfg):
            log(f"{path.name}: already complete, reused")
            return saved
    return ft.run(fcfg)


def differing_tensors(a: str, b: str) -> dict:
    """The encoder and pooler tensors (every one but the MLM head's) that differ between two exported models."""
    with warnings.catch_warnings():  # "no MLM head" on the original: the head is not compared
        warnings.simplefilter("ignore", UserWarning)
        sa, sb = (load_pretrained(f).state_dict() for f in (a, b))
    keys = sorted(k for k in set(sa) | set(sb) if not k.startswith("head."))
    return {"compared": len(keys),
            "differing": [k for k in keys if k not in sa or k not in sb or not torch.equal(sa[k], sb[k])]}


def table1_stage(cfg, root, general) -> dict:
    out, results = root / "table1", {}
    rows = models(cfg, root, general)
    # the teacher's acceptance test: an encoder bit-identical to the original's fine-tunes identically (same
    # head, seeds and data), so the original is fine-tuned only when some tensor differs
    identity = differing_tensors(rows["original"], rows["teacher"])
    for name, folder in rows.items():
        if name == "original" and not identity["differing"]:
            continue
        for task in TASKS:
            fcfg = finetune_config(
                cfg,
                root,
                task=task,
                model=folder,
                name=name,
                out=str(out),
                train_limit=limits(cfg.limits)[task],
                save=name == "teacher",
                pool="cls" if name in ("original", "teacher") else cfg.student_pool,
            )
            results.setdefault(name, {})[task] = finetuned(cfg, root, fcfg)
    if not identity["differing"]:
        results = {"original": results["teacher"], **results}
    medians = {name: {task: r["median"] for task, r in tasks.items()} for name, tasks in results.items()}
    scores = {name: ft.glue_score(m) for name, m in medians.items()}
    first = lambda name, task: medians[name][task][ft.GLUE_TASKS[task]["metrics"][0]]
    ratio = lambda a, b: a / b if b else float("nan")
    per_task = {name: {task: ratio(first(name, task), first("teacher", task)) for task in TASKS}
                for name in medians}
    paired = {}
    for other in ("teacher", "MLM-only", "copy-only", "original"):
        a, b = ("teacher", other) if other == "original" else ("distilled", other)
        paired[f"{a} - {other}"] = {task: paired_task(results, task, a, b, dev_labels(cfg, task))
                                    for task in TASKS}
    return {
        "medians": medians,
        "retention_per_task": per_task,
        "paired": paired,
        "runs": {
            n: {t: [r["metrics"] for r in v["runs"]] for t, v in tasks.items()}
            for n, tasks in results.items()
        },
        "macro": scores,
        "retention": {n: s / scores["teacher"] for n, s in scores.items()},
        "seeds": cfg.seeds,
        "limits": limits(cfg.limits),
        "original_vs_teacher": identity,
        "bars": {task: above_chance(cfg, task, medians["teacher"][task]) for task in TASKS},
        "teachers": {task: results["teacher"][task]["runs"] for task in TASKS},
    }


def above_chance(cfg, task, metrics) -> dict:
    """The bar a Table 1 teacher must clear for its students' scores to mean something (accuracy 5 points
    above the majority class; RTE 60%; STS-B Pearson 0.6), and whether it does."""
    metric, bar = ("pearson", 0.6) if task == "STS-B" else ("accuracy", 0.6 if task == "RTE" else
                                                             majority(cfg, task) + 0.05)
    return {"metric": metric, "bar": bar, "score": metrics[metric], "clears": metrics[metric] >= bar}


def dev_labels(cfg, task):
    return np.array([e.label for e in ft.read_glue(task, Path(cfg.data) / "glue", "dev")], dtype=float)


def paired_task(results, task, a, b, labels, resamples=2000) -> dict:
    """Model a minus model b on a task's dev set, per example with the predictions averaged over seeds. The
    classification tasks: accuracy, with the paired SE of the per-example differences (eval.paired_difference).
    STS-B: Pearson's r, which is not a mean over examples, with the SE of a paired bootstrap over the dev pairs
    (the same resampled pairs for both models)."""
    mean = lambda name: np.mean([r["per_example"] for r in results[name][task]["runs"]], axis=0)
    if ft.GLUE_TASKS[task]["num_labels"] > 1:
        return compared(mean(a), mean(b))
    pa, pb = mean(a), mean(b)
    idx = np.random.default_rng(0).integers(0, len(labels), (resamples, len(labels)))
    r = lambda pred, i: np.corrcoef(pred[i], labels[i])[0, 1]
    deltas = [r(pa, i) - r(pb, i) for i in idx]
    delta, se = r(pa, slice(None)) - r(pb, slice(None)), float(np.nanstd(deltas, ddof=1))
    return {"delta": float(delta), "se": se, "n": len(labels), "verdict": verdict(delta, se),
            "metric": "pearson", "bootstrap": resamples}


def teacher_folder(table1, task) -> str:
    """The saved teacher run of the median seed."""
    runs = table1["teachers"][task]
    metric = ft.task_spec(task)[1]["metrics"][0]
    return ft.median_run(runs, metric)["path"]


def sst2_transfer(cfg, root, general, table1) -> dict:
    """DistilBERT (D) on SST-2: the student fine-tuned on the labelled subset plus a transfer set (more SST-2
    training sentences, their labels hidden), with alpha T^2 KL(teacher || student) on every sentence and
    (1 - alpha) CE on the labelled ones; the teacher's logits computed once. Against fine-tuning alone on the
    labelled subset (Table 1's runs, same seeds), paired over the dev sentences."""
    tokenizer = load_tokenizer(resolve_checkpoint(cfg.teacher))
    rows = ft.read_glue("SST-2", Path(cfg.data) / "glue", "train")
    n_labelled = limits(cfg.limits)["SST-2"]
    order = np.random.default_rng(0).permutation(
        len(rows)
    )  # finetune.load_task's subset: the first n_labelled
    labelled = set(order[:n_labelled].tolist())
    rest = [i for i in np.random.default_rng(1).permutation(len(rows)).tolist() if i not in labelled][
        : cfg.transfer
    ]
    keep = sorted(labelled) + rest
    train = ft.encode(tokenizer, [rows[i] for i in keep], cfg.max_len)
    train["labels"][n_labelled:] = -100  # hidden: only the teacher's soft labels are used there
    teacher = ft.load_finetuned(teacher_folder(table1, "SST-2"))
    fcfg = finetune_config(cfg, root, task="SST-2")
    with ft.autocast(fcfg.dtype, torch.device("cpu")):
        train["teacher_logits"] = ft.predict(teacher, train, fcfg.eval_batch_size)
    dev = ft.encode(tokenizer, ft.read_glue("SST-2", Path(cfg.data) / "glue", "dev"), cfg.max_len)
    runs = []
    for seed in [int(s) for s in cfg.seeds.split(",")]:
        torch.manual_seed(seed)
        model = ft.Classifier(ft.load_encoder(general["rows"]["triple loss"]["folder"]), 2, pool=cfg.student_pool)
        ft.fit(model, train, dataclasses.replace(fcfg, seed=seed, epochs=1.0), loss_fn=transfer_loss(fcfg))
        logits = ft.predict(model, dev)
        runs.append(
            {
                "seed": seed,
                "accuracy": ft.accuracy(logits.argmax(-1).numpy(), dev["labels"].numpy()),
                "correct": (logits.argmax(-1) == dev["labels"]).float().tolist(),
            }
        )
    alone = [
        r["per_example"] for r in json.loads((root / "table1" / "distilled-SST-2.json").read_text())["runs"]
    ]
    same = sst2_same_data(cfg, root, general, table1)
    return {
        "labelled": n_labelled,
        "transfer": len(rest),
        "teacher": teacher_folder(table1, "SST-2"),
        "runs": [{k: v for k, v in r.items() if k != "correct"} for r in runs],
        "mean": float(np.mean([r["correct"] for r in runs])),  # over seeds and dev sentences, as the delta
        "alone_mean": float(np.mean(alone)),
        "teacher_accuracy": table1["medians"]["teacher"]["SST-2"]["accuracy"],
        "d_vs_alone": compared(np.mean([r["correct"] for r in runs], 0), np.mean(alone, 0)),
        "same_data": same,
    }


def sst2_same_data(cfg, root, general, table1) -> dict:
    """The paper's (D) compared one thing at a time: the same labelled sentences, epochs, steps and seeds as
    Table 1's distilled student fine-tuned alone, with the teacher's soft targets added (finetune --teacher:
    alpha KL at T plus (1 - alpha) CE), paired over the dev sentences with seed-averaged correctness."""
    fcfg = finetune_config(cfg, root, task="SST-2", model=general["rows"]["triple loss"]["folder"],
                           name="distilled-D", out=str(root / "table2"), train_limit=limits(cfg.limits)["SST-2"],
                           teacher=teacher_folder(table1, "SST-2"), pool=cfg.student_pool)
    d = finetuned(cfg, root, fcfg)
    alone = json.loads((root / "table1" / "distilled-SST-2.json").read_text())["runs"]
    mean = lambda runs: np.mean([r["per_example"] for r in runs], 0)
    return {"mean": float(mean(d["runs"]).mean()), "alone_mean": float(mean(alone).mean()),
            "steps_equal": [r["seed"] for r in d["runs"]] == [r["seed"] for r in alone],
            "d_vs_alone": compared(mean(d["runs"]), mean(alone))}


def transfer_loss(fcfg):
    """alpha * soft-target loss on every row + (1 - alpha) * CE on the rows with a label (-100: hidden)."""

    def loss_fn(model, batch):
        inputs = {k: batch[k] for k in ft.INPUTS}
        logits = model(**inputs).logits
        loss = fcfg.alpha * losses.task_distill_loss(logits, batch["teacher_logits"], None, fcfg.temperature)
        shown = batch["labels"] >= 0
        if shown.any():
            loss = loss + (1 - fcfg.alpha) * losses.task_loss(logits[shown], batch["labels"][shown])
        return loss

    return loss_fn


def squad(cfg, root, general) -> dict:
    """SQuAD v1.1: trained on dev-v1.1.json (one half of the official dev set), scored on test-v1.1.json (the
    other);
    teacher and student fine-tuned alone, then the student with the teacher's span logits (D), one seed."""
    folder = Path(cfg.data) / "squad"
    common = dict(
        task="squad",
        train_file=str(folder / "dev-v1.1.json"),
        eval_file=str(folder / "test-v1.1.json"),
        train_limit=cfg.squad_train,
        eval_limit=cfg.squad_eval,
        max_len=cfg.squad_len,
        doc_stride=64,
        max_query=48,
        seeds=str(cfg.seed),
        out=str(root / "table2"),
    )
    teacher = finetuned(
        cfg,
        root,
        finetune_config(
            cfg, root, model=str(root / "teacher" / "model"), name="teacher", save=True,
            eval_every=cfg.squad_every, **common
        ),
    )
    student_folder = general["rows"]["triple loss"]["folder"]
    alone = finetuned(cfg, root, finetune_config(cfg, root, model=student_folder, name="student", **common))
    distilled = finetuned(
        cfg,
        root,
        finetune_config(
            cfg, root, model=student_folder, name="student-D", teacher=teacher["runs"][0]["path"], **common
        ),
    )
    per = lambda r, k: [x[k] for x in r["runs"][0]["per_example"]]
    dev = ft.read_squad(folder / "test-v1.1.json")[: cfg.squad_eval]
    paragraph = {}  # the questions of one paragraph are not independent: SEs clustered by paragraph
    groups = torch.tensor([paragraph.setdefault(e.context, len(paragraph)) for e in dev])
    return {
        "rows": {
            n: r["median"] for n, r in (("teacher", teacher), ("student", alone), ("student (D)", distilled))
        },
        "curve": teacher["runs"][0].get("curve", []),
        "questions": len(per(alone, 0)),
        "train_questions": cfg.squad_train,
        "paragraphs": len(paragraph),
        "d_vs_alone": {
            "exact_match": compared(per(distilled, 0), per(alone, 0), groups),
            "f1": compared(per(distilled, 1), per(alone, 1), groups),
        },
    }


def imdb(cfg, root, general) -> dict:
    """IMDb (Table 2): the teacher and the distilled student fine-tuned the same way on a fixed subset of the
    train reviews (../shared/data/imdb: the release tarball, read as it is), scored on the same fixed test
    reviews; student minus teacher paired over them. One seed."""
    common = dict(task="imdb", data=str(Path(cfg.data) / "imdb"), train_limit=cfg.imdb_train,
                  eval_limit=cfg.imdb_eval, max_len=cfg.imdb_len, seeds=str(cfg.seed), out=str(root / "table2"))
    rows = {name: finetuned(cfg, root, finetune_config(cfg, root, model=folder, name=name, pool=pool, **common))
            for name, folder, pool in (("teacher", str(root / "teacher" / "model"), "cls"),
                                       ("distilled", general["rows"]["triple loss"]["folder"], cfg.student_pool))}
    per = lambda name: rows[name]["runs"][0]["per_example"]
    return {"rows": {n: r["median"]["accuracy"] for n, r in rows.items()}, "reviews": len(per("teacher")),
            "train_reviews": cfg.imdb_train, "student_vs_teacher": compared(per("distilled"), per("teacher"))}


def table2_stage(cfg, root, general, table1) -> dict:
    return {"sst2": sst2_transfer(cfg, root, general, table1), "squad": squad(cfg, root, general),
            "imdb": imdb(cfg, root, general)}


def table3_stage(cfg, root, general) -> dict:
    tokenizer = load_tokenizer(resolve_checkpoint(cfg.teacher))
    encoders = {
        "teacher": load_pretrained(root / "teacher" / "model"),
        "distilled": load_pretrained(general["rows"]["triple loss"]["folder"]),
    }
    return size_speed(
        encoders,
        tokenizer,
        Path(cfg.data) / "glue" / "STS-B" / "dev.tsv",
        limit=8 if cfg.quick else 300,
        batch_size=32,
    )


# ------------------------------------------------------------------------------------------------------------
# Pea-KD: the teacher (the pretrained model, fine-tuned on each task); the students from its first 3 layers
# (pretrained, not fine-tuned), SPS runs them twice (6 layers); every row trained once per seed of peakd_seeds


def peakd_args(cfg, root, task, n) -> Namespace:
    return Namespace(
        task=task, data=str(Path(cfg.data) / "glue"), teacher=str(resolve_checkpoint(cfg.teacher)),
        vocab=str(resolve_checkpoint(cfg.teacher)), out=str(root / "peakd"), student_layers=3, student_from="",
        init="first", arch="bert", sps="all", no_swap=False, ptp_thresholds="reference", alpha=0.7, T=10.0,
        beta=100.0, layer_map="skip", lr=cfg.lr, epochs=cfg.epochs, ptp_epochs=1.0, teacher_lr=cfg.lr,
        teacher_epochs=cfg.epochs, batch_size=32, max_steps=None, max_len=cfg.max_len, train_limit=n,
        seed=cfg.seed, log_every=0, save=False, threads=0, pool=cfg.peakd_pool)


def peakd_stage(cfg, root) -> dict:
    results = {}
    seeds = [int(s) for s in cfg.peakd_seeds.split(",")]
    for task, n in limits(cfg.peakd_limits).items():
        args = peakd_args(cfg, root, task, n)
        saved = root / "peakd" / task / "results.json"  # a task already done with these settings is reused
        r = json.loads(saved.read_text()) if saved.is_file() else {}
        if r.get("args") != json.loads(json.dumps(vars(args))) or r.get("seeds") != seeds or \
                list(r.get("rows", {}))[1:] != list(peakd.VARIANTS):
            r = peakd.pipeline(args, list(peakd.VARIANTS), seeds)
        rows = r["rows"]
        results[task] = {
            "rows": {k: {m: v for m, v in row.items() if m != "correct"} for k, row in rows.items()},
            "vs_pkd": {k: seed_compared(row["correct"], rows["PKD"]["correct"])
                       for k, row in rows.items() if k not in ("teacher", "PKD")},
            "majority": majority(cfg, task),
            "train": n,
            "ptp": r["ptp"],
        }
    return {"tasks": results, "seeds": seeds, "pool": cfg.peakd_pool, "lr": cfg.lr, "epochs": cfg.epochs,
            "ptp_epochs": 1.0}


def majority(cfg, task) -> float:
    labels = dev_labels(cfg, task)
    return float(max(np.mean(labels == c) for c in np.unique(labels)))


def seed_compared(a, b) -> dict:
    """a minus b, each one list of per-dev-example scores per seed (the same examples and seeds). Two SEs: over
    the dev examples, pooled over the seeds and clustered by example (eval.paired_difference); and over the
    seeds, sd / sqrt(k) of the k per-seed deltas. The verdict uses the larger ("se")."""
    a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    k, n = a.shape
    pooled = paired_difference(a.flatten(), b.flatten(), torch.arange(n).repeat(k))
    per_seed = (a - b).mean(1)
    se_seeds = (per_seed.std() / math.sqrt(k)).item() if k > 1 else 0.0
    se = max(pooled["se"], se_seeds)
    return {"delta": pooled["delta"], "se": se, "se_examples": pooled["se"], "se_seeds": se_seeds,
            "se_used": "seeds" if se_seeds > pooled["se"] else "examples", "per_seed": per_seed.tolist(),
            "n": n, "seeds": k, "verdict": verdict(pooled["delta"], se)}


# ------------------------------------------------------------------------------------------------------------
# Tables and figures


def pct(x):
    return f"{100 * x:.1f}"


def signed(p):
    return f"{100 * p['delta']:+.2f} ± {100 * p['se']:.2f} ({p['verdict']})"


def general_md(g) -> str:
    steps, tasks = g["steps"], g["glue"]["tasks"]
    lines = [
        "Command: `python reproduce.py --only=general` (the teacher stage first). Every row trains the student of "
        f"the teacher's layers 0, 2, 4 on the same batches for {steps[-1]} steps of 32 x 128 tokens "
        f"({g['tokens_per_row']:,} tokens; L_ce over every real token); Table 4 of the paper removes one loss "
        "at a time (its weight set to 0) or initialises the student at random.",
        "",
        f"Held-out MLM accuracy: {g['masked_tokens']:,} masked tokens ({g['draws']} masks of {g['sequences']} "
        "held-out sequences). \"vs triple loss\": the row minus the triple loss in points ± one SE of the paired "
        "per-token difference, clustered by held-out sequence; one training run per row, so the SE counts the "
        "held-out tokens' noise, not the seed's. Verdict (eval.verdict): \"beats\"/\"loses\" only at 3 SE or more.",
        "",
        "| row | MLM acc | ppl | vs triple loss | train tok/s (real tokens) |",
        "|---|---|---|---|---|",
        f"| teacher | {pct(g['teacher']['mlm_acc'])} | {g['teacher']['ppl']:.1f} | | |",
    ]
    for name, r in g["rows"].items():
        lines.append(
            f"| {name} | {pct(r['mlm_acc'])} | {r['ppl']:.1f} | "
            f"{signed(r['vs_triple']) if 'vs_triple' in r else ''} | {r['tokens_per_s']:,.0f} |"
        )
    gl = g["glue"]
    lines += ["", f"Table 4 on GLUE: each distillation row above fine-tuned once (seed {gl['seed']}) on the same "
              f"training subsets ({', '.join(f'{k} {v:,}' for k, v in gl['limits'].items())} examples), lr "
              f"{gl['lr']:g}, {gl['epochs']:g} epochs, batch 32; dev score (SST-2 accuracy, STS-B "
              "Pearson) x 100; minus the triple loss, paired over the dev examples (SST-2: SE of the per-sentence "
              "differences; STS-B: SE of a paired bootstrap over the dev pairs). Paper (GLUE macro score): "
              "-L_ce -2.96, -L_cos -1.46, -L_mlm -0.31, random init -3.69.", "",
              "| row | " + " | ".join(tasks) + " |", "|---" * (1 + len(tasks)) + "|"]
    for name, sc in gl["scores"].items():
        cells = [pct(sc[t]) + (f" ({signed(gl['vs_triple'][name][t])})" if name in gl["vs_triple"] else "")
                 for t in tasks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Budget curve (`results.png`, right): held-out MLM accuracy minus the triple loss after "
              + ", ".join(map(str, steps)) + " steps, ± one SE as above. The earlier points are snapshots of the "
              f"same {steps[-1]}-step runs (their learning rate decays to 0 at step {steps[-1]}), not separate "
              "shorter runs.", "",
              "| row | " + " | ".join(f"{s} steps" for s in steps) + " |", "|---" * (1 + len(steps)) + "|"]
    for name, per in g["curve"].items():
        lines.append(f"| {name} | " + " | ".join(
            pct(per[str(s)]["mlm_acc"]) + (f" ({signed(per[str(s)]['vs_triple'])})" if "vs_triple" in per[str(s)]
                                           else "") for s in steps) + " |")
    return "\n".join(lines)


def metric_cell(task, m) -> str:
    names = ft.GLUE_TASKS[task]["metrics"]
    return "/".join(pct(m[k]) for k in names)


def table1_md(t) -> str:
    lines = [
        f"GLUE dev, median of seeds {t['seeds']}; trained on fixed subsets of "
        f"{', '.join(f'{k} {v:,}' for k, v in t['limits'].items())} examples. "
        "MRPC F1/acc, STS-B Pearson/Spearman. Retention: of the teacher's macro score, and per task of its "
        "first metric.",
        "",
        "| model | macro | retention | " + " | ".join(TASKS) + " |",
        "|---" * (3 + len(TASKS)) + "|",
    ]
    for name, m in t["medians"].items():
        lines.append(
            f"| {name} | {pct(t['macro'][name])} | {pct(t['retention'][name])}% | "
            + " | ".join(f"{metric_cell(task, m[task])} ({pct(t['retention_per_task'][name][task])}%)"
                         for task in TASKS)
            + " |"
        )
    lines += ["", "Paired differences, predictions averaged over the seeds (accuracy: paired SE over the dev "
                  "examples; STS-B: Pearson, SE of a paired bootstrap over the dev pairs), in points:", "",
              "| difference | " + " | ".join(TASKS) + " |", "|---" * (1 + len(TASKS)) + "|"]
    for name, per in t["paired"].items():
        lines.append(f"| {name} | " + " | ".join(signed(per[task]) for task in TASKS) + " |")
    same = t["original_vs_teacher"]
    lines += ["", "The teacher's acceptance test (within 1 point of the original per task, STS-B 0.02): "
              + (f"its {same['compared']} encoder and pooler tensors are bit-identical to the original's (only "
                 "the MLM head differs), so the two fine-tune identically; the original row is the teacher's "
                 "runs, not separate ones." if not same["differing"] else
                 f"{len(same['differing'])} of its {same['compared']} encoder tensors differ from the "
                 "original's; both were fine-tuned (the row teacher - original above)."),
              "", "The teacher above chance (the bars a student's score needs to mean something): " + "; ".join(
                  f"{task} {b['metric']} {pct(b['score'])} vs {pct(b['bar'])}: "
                  + ("clears it" if b["clears"] else "below it") for task, b in t["bars"].items()) + "."]
    return "\n".join(lines)


def table2_md(t) -> str:
    s, q = t["sst2"], t["squad"]
    return "\n".join(
        [
            f"SST-2 dev accuracy, mean over seeds and dev sentences (the paired deltas are of these means; "
            f"teacher: median of seeds {pct(s['teacher_accuracy'])}):",
            "",
            "| student | accuracy | minus fine-tuned alone |",
            "|---|---|---|",
            f"| fine-tuned alone on {s['labelled']} labelled sentences | {pct(s['alone_mean'])} | |",
            f"| (D), the same sentences, epochs and seeds, with the teacher's soft targets | "
            f"{pct(s['same_data']['mean'])} | {signed(s['same_data']['d_vs_alone'])} |",
            f"| (D) with a transfer set: the same plus {s['transfer']} sentences labelled by the teacher "
            f"only, 1 epoch | {pct(s['mean'])} | {signed(s['d_vs_alone'])} |",
            "",
            f"SQuAD v1.1, trained on {q['train_questions']} questions of one dev half, scored on "
            f"{q['questions']} of the other, one seed:",
            "",
            "| model | EM | F1 |",
            "|---|---|---|",
            *[f"| {n} | {pct(r['exact_match'])} | {pct(r['f1'])} |" for n, r in q["rows"].items()],
            "",
            "The teacher's learning curve (EM/F1 on the same questions after each number of training rows "
            "seen, windows of one epoch counted again in the next): " + ", ".join(
                f"{c['rows_seen']:,}: {pct(c['exact_match'])}/{pct(c['f1'])}" for c in q.get("curve", [])) + ".",
            "",
            f"(D) minus alone, points, paired SE over the questions clustered by paragraph "
            f"({q['paragraphs']} paragraphs): "
            f"EM {signed(q['d_vs_alone']['exact_match'])}, F1 {signed(q['d_vs_alone']['f1'])}",
            "",
            f"IMDb, trained on {t['imdb']['train_reviews']} reviews, scored on {t['imdb']['reviews']} test "
            f"reviews, one seed: teacher {pct(t['imdb']['rows']['teacher'])}, distilled student "
            f"{pct(t['imdb']['rows']['distilled'])}; student minus teacher "
            f"{signed(t['imdb']['student_vs_teacher'])} (paper: 93.46 vs 92.82, -0.6).",
        ]
    )


def peakd_md(p) -> str:
    seeds, t = p["seeds"], p["tasks"]
    tasks = list(t)
    names = list(next(iter(t.values()))["rows"])
    subsets = ", ".join(f"{k} {v['train']:,}" for k, v in t.items())
    arg, pooled = ",".join(f"{k}:{v['train']}" for k, v in t.items()), "mean of the tokens'"
    lines = [
        f"Command: `python reproduce.py --only=peakd --peakd_limits={arg}`"
        ". Teacher: the pretrained model fine-tuned on each task "
        f"(seed 1); students: its first 3 pretrained layers (as the reference code); SPS re-runs all 3 with Query "
        f"and Key swapped (6 effective layers); PTP thresholds from the reference table. Training subsets "
        f"{subsets}; lr {p['lr']:g}, {p['epochs']:g} epochs, PTP "
        f"{p['ptp_epochs']:g} epoch, batch 32 (the reference: lr 2e-5, 10 epochs, PTP 6 epochs, on full training "
        "sets). \"PKD\" is Patient-KD (alpha 0.7, T 10, beta 100 on the normalised pooled states of the mapped "
        "layers), the reference's \"KD\"; FT is cross-entropy alone.",
        "",
        f"Head and patient term read the {pooled if p['pool'] == 'mean' else '[CLS]'} states "
        "(`peakd.py --pool`)" + (": all-MiniLM-L6-v2 is trained with mean pooling and its [CLS] state is the same "
                                 "for every input below its last layer, so a [CLS] head on its first 3 layers "
                                 "stays at the majority class at this budget (see peakd.py). Not the paper's "
                                 "[CLS]." if p["pool"] == "mean" else "."),
        "",
        f"Cells: dev accuracy (MRPC accuracy/F1) x 100, the mean over student seeds {seeds}; then the row minus "
        "PKD in points ± SE (verdict). The SE is the larger of two, marked: (e) over the dev examples, pooled over "
        "the seeds and clustered by example; (s) over the seeds, sd/sqrt(k) of the per-seed deltas. Verdict "
        "(eval.verdict) on that larger SE: \"beats\"/\"loses\" only at 3 SE or more. The paper: Pea-KD beats "
        "KD on every task (+4.4 points on average over its four).",
        "",
        "| model | depth | " + " | ".join(tasks) + " |",
        "|---" * (2 + len(tasks)) + "|",
        "| majority class | | " + " | ".join(pct(t[k]["majority"]) for k in tasks) + " |",
    ]
    for n in names:
        cells = []
        for task in tasks:
            row = t[task]["rows"][n]
            cell = pct(row["accuracy"]) + (f"/{pct(row['f1'])}" if "f1" in row else "")
            if n in t[task]["vs_pkd"]:
                v = t[task]["vs_pkd"][n]
                cell += (f" ({100 * v['delta']:+.1f} ± {100 * v['se']:.1f}{'s' if v['se_used'] == 'seeds' else 'e'}, "
                         f"{v['verdict']})")
            cells.append(cell)
        lines.append(f"| {n} | {t[tasks[0]]['rows'][n]['depth']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bars(png, groups: dict, ylabel, title):
    """groups: {group: {bar: (value, error or 0)}}: one cluster of bars per group."""
    plt = pyplot("no results.png")
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(groups) + 2), 3.6))
    names = list(dict.fromkeys(b for g in groups.values() for b in g))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        xs = [i + k * width for i, g in enumerate(groups.values()) if name in g]
        vals = [g[name] for g in groups.values() if name in g]
        ax.bar(xs, [v for v, _ in vals], width, yerr=[e for _, e in vals], label=name, capsize=2)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], list(groups))
    ax.set(ylabel=ylabel, title=title)
    ax.legend(fontsize=7)
    save_figure(fig, png)


def general_figure(png, g):
    """Left: held-out MLM accuracy per row. Right: the budget curve, each row minus the triple loss against
    the steps, ± one SE."""
    plt = pyplot("no results.png")
    if plt is None:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    names = ["teacher", *g["rows"]]
    accs = [g["teacher"]["mlm_acc"], *(r["mlm_acc"] for r in g["rows"].values())]
    left.bar(range(len(names)), [100 * a for a in accs])
    left.set_xticks(range(len(names)), names, rotation=30, fontsize=7)
    left.set(ylabel="held-out MLM accuracy, %", title=f"Table 4 rows, {g['steps'][-1]} steps")
    for name, per in g["curve"].items():
        if name != "triple loss":
            pts = [(int(s), 100 * v["vs_triple"]["delta"], 100 * v["vs_triple"]["se"]) for s, v in per.items()]
            right.errorbar(*zip(*pts), marker="o", capsize=3, label=name)
    right.axhline(0, color="grey", lw=0.8)
    right.set(xlabel="general-distillation steps", ylabel="minus triple loss, points (±1 SE)",
              title="budget curve (held-out MLM accuracy)")
    right.legend(fontsize=7)
    save_figure(fig, png)


def table1_bars(t) -> dict:
    first = lambda task, m: 100 * m[ft.GLUE_TASKS[task]["metrics"][0]]
    tasks = {task: {n: (first(task, m[task]), 0) for n, m in t["medians"].items()} for task in TASKS}
    return {**tasks, "macro": {n: (100 * score, 0) for n, score in t["macro"].items()}}


def table2_bars(t) -> dict:
    s, q = t["sst2"], t["squad"]
    return {"SST-2 acc": {"teacher": (100 * s["teacher_accuracy"], 0),
                          "student": (100 * s["alone_mean"], 0),
                          "student (D)": (100 * s["same_data"]["mean"],
                                          100 * s["same_data"]["d_vs_alone"]["se"]),
                          "student (D) + transfer": (100 * s["mean"], 100 * s["d_vs_alone"]["se"])},
            "SQuAD EM": {n: (100 * r["exact_match"], 0) for n, r in q["rows"].items()},
            "SQuAD F1": {n: (100 * r["f1"], 0) for n, r in q["rows"].items()},
            "IMDb acc": {n: (100 * a, 0) for n, a in t["imdb"]["rows"].items()}}


def table3_bars(t) -> dict:
    return {"parameters (M)": {r["model"]: (r["parameters_M"], 0) for r in t["rows"]},
            "size (MB)": {r["model"]: (r["checkpoint_MB"], 0) for r in t["rows"]},
            "CPU s, batch 1": {r["model"]: (r["cpu_bs1_s"], 0) for r in t["rows"]}}


def peakd_bars(p) -> dict:
    return {task: {n: (100 * row["accuracy"], 100 * r["vs_pkd"].get(n, {}).get("se", 0))
                   for n, row in r["rows"].items()} for task, r in p["tasks"].items()}


FIGURES = {  # stage: (bars, y label, title)
    "table1": (table1_bars, "dev score", "Table 1: GLUE dev, median of seeds"),
    "table2": (table2_bars, "score", "Table 2: task distillation"),
    "table3": (table3_bars, "", "Table 3: size and speed"),
    "peakd": (peakd_bars, "dev accuracy, %", "Pea-KD"),
}


def figures(root, results):
    """One results.png per table stage that has results."""
    if "general" in results:
        general_figure(root / "general" / "results.png", results["general"])
    for name, (groups, ylabel, title) in FIGURES.items():
        if name in results:
            bars(root / name / "results.png", groups(results[name]), ylabel, title)


TABLE4_PAPER = {"- L_ce": -2.96, "- L_cos": -1.46, "- L_mlm": -0.31, "random init": -3.69}  # GLUE macro


def direction(verdicts, want) -> str:
    """The paper's direction (want: "beats" or "loses") shown at 3 SE by some counted verdict and contradicted
    by none: "reproduced"; contradicted: "not reproduced"; else "not shown at 3 SE"."""
    other = {"beats": "loses", "loses": "beats"}[want]
    return "not reproduced" if other in verdicts else "reproduced" if want in verdicts else "not shown at 3 SE"


def claims(results) -> list:
    """The papers' claims (Tables 1-4, Pea-KD), each [claim, paper, ours, verdict], the verdict computed from the
    numbers: a difference counts only at 3 SE (eval.verdict); a retention or a difference is "reproduced"
    when the paper's figure lies within 2 SE of ours or ours is better; "not measurable here" when the teacher
    does not clear the bar that gives its students' scores a meaning."""
    rows = []
    within = lambda ours, se, paper: abs(ours - paper) <= 2 * se  # the paper's figure within 2 SE of ours
    if "general" in results:
        g = results["general"]
        alone = g["rows"]["L_mlm alone"]["vs_triple"]
        flip = {**alone, "delta": -alone["delta"], "verdict": {"beats": "loses", "loses": "beats"}.get(
            alone["verdict"], alone["verdict"])}
        rows.append(["distillation beats L_mlm alone on held-out MLM accuracy (Section 3's premise)", "",
                     f"{signed(flip)} points after {g['steps'][-1]} steps",
                     {"beats": "reproduced", "loses": "reversed"}.get(flip["verdict"], "not shown at 3 SE")])
        # a task counts when the triple loss itself is clearly above chance there (0.6, as Table 1's bars)
        low = [k for k, sc in g["glue"]["scores"]["triple loss"].items() if sc < 0.6]
        for name, paper in TABLE4_PAPER.items():
            per = g["glue"]["vs_triple"].get(name)
            if per is None:
                continue
            rows.append([f"Table 4: {name} hurts", f"{paper:+.2f} GLUE",
                         "; ".join(f"{k} {signed(p)}" for k, p in per.items())
                         + f"; MLM accuracy {signed(g['rows'][name]['vs_triple'])}"
                         + "".join(f"; {k} not counted (the triple loss scores {pct(g['glue']['scores']['triple loss'][k])}"
                                   ", under 60)" for k in low),
                         direction([p["verdict"] for k, p in per.items() if k not in low], "loses")])
    if "peakd" in results:
        for task, t in results["peakd"]["tasks"].items():
            v = t["vs_pkd"][peakd.PEAKD]
            rows.append([f"Pea-KD beats (Patient-)KD on {task}", "+4.4 on average over four tasks",
                         f"{signed(v)} ({len(results['peakd']['seeds'])} seeds)", direction([v["verdict"]], "beats")])
    if "table1" in results:
        t = results["table1"]
        d = t["paired"]["distilled - teacher"]
        se = math.sqrt(sum(d[k]["se"] ** 2 for k in TASKS)) / len(TASKS) / t["macro"]["teacher"]
        ret = t["retention"]["distilled"]
        low = [k for k, b in t["bars"].items() if not b["clears"]]
        ok = ret >= 0.97 or within(ret, se, 0.97)
        first = lambda name, k: t["medians"][name][k][ft.GLUE_TASKS[k]["metrics"][0]]
        tol = {k: 0.02 if k == "STS-B" else 0.01 for k in TASKS}  # the acceptance test of a teacher
        rows.append(["our teacher fine-tunes as the original MiniLM (its acceptance test: within 1 point, STS-B "
                     "0.02)", "", "; ".join(f"{k} {pct(first('teacher', k))} vs {pct(first('original', k))}"
                                            for k in TASKS)
                     + ("; the encoder bit-identical to the original's" if not t["original_vs_teacher"]["differing"]
                        else ""),
                     "passes" if all(abs(first("teacher", k) - first("original", k)) <= tol[k] for k in TASKS)
                     else "fails"])
        rows.append(["97% of the teacher's GLUE score (Table 1)", "97%",
                     f"{pct(ret)}% ± {pct(se)} (macro of SST-2, MRPC, RTE, STS-B)"
                     + (f"; the teacher below the bar on {', '.join(low)}" if low else ""),
                     ("reproduced" if ok else "not reproduced") + (" (but see the bars)" if low else "")])
        # a task counts where the distilled student itself clears the teacher's bar there
        under = [k for k, b in t["bars"].items() if t["medians"]["distilled"][k][b["metric"]] < b["bar"]]
        for other in ("MLM-only", "copy-only"):
            per = t["paired"][f"distilled - {other}"]
            rows.append([f"distillation beats {other} after fine-tuning (Table 4's premise)", "",
                         "; ".join(f"{k} {signed(per[k])}" for k in TASKS)
                         + (f"; not counted where the distilled student is under the bar: {', '.join(under)}"
                            if under else ""),
                         direction([per[k]["verdict"] for k in TASKS if k not in under], "beats")])
    if "table2" in results:
        im, q = results["table2"]["imdb"], results["table2"]["squad"]
        v = im["student_vs_teacher"]
        rows.append(["IMDb: the student close to the teacher (Table 2)", "92.82 vs 93.46 (-0.64)",
                     f"{pct(im['rows']['distilled'])} vs {pct(im['rows']['teacher'])} ({signed(v)})",
                     "reproduced" if within(v["delta"], v["se"], -0.0064) else "not reproduced"])
        em = q["d_vs_alone"]["exact_match"]
        floor = q["rows"]["teacher"]["exact_match"] < 0.10
        rows.append(["task distillation (D) helps on SQuAD (Table 2)", "+1.4 EM",
                     f"{signed(em)} EM, teacher EM {pct(q['rows']['teacher']['exact_match'])}",
                     "not measurable here (the teacher under 10 EM)" if floor else
                     "reproduced" if em["verdict"] == "beats" else
                     "consistent, not shown at 3 SE" if within(em["delta"], em["se"], 0.014) else
                     "not reproduced"])
        sd = results["table2"]["sst2"]["same_data"]["d_vs_alone"]
        rows.append(["(D) on SST-2, the same data and steps (no figure in the paper)", "",
                     signed(sd), sd["verdict"]])
    if "table3" in results:
        r = {x["model"]: x for x in results["table3"]["rows"]}
        fewer = 1 - r["distilled"]["parameters_M"] / r["teacher"]["parameters_M"]
        rows.append(["40% fewer parameters (Table 3)", "66M vs 110M",
                     f"{r['distilled']['parameters_M']:.1f}M vs {r['teacher']['parameters_M']:.1f}M "
                     f"({pct(fewer)}% fewer; width 384 puts two thirds of the student in its embeddings)",
                     "in kind" if fewer > 0 else "not reproduced"])
        rows.append(["60% faster (Table 3)", "1.6x", f"{r['distilled']['speedup_cpu_bs1']:.2f}x on the CPU at "
                     "batch size 1", "reproduced" if r["distilled"]["speedup_cpu_bs1"] >= 1.6 else "in kind"])
    return rows


def claims_md(rows) -> str:
    return "\n".join(["| claim | paper | ours (± one paired SE) | verdict |", "|---|---|---|---|",
                      *("| " + " | ".join(r) + " |" for r in rows)])


def markdown(results, rows) -> str:
    """tables.md: the claims (`rows`, from claims()) first, then every stage's tables."""
    parts = [f"## claims\n\n{claims_md(rows)}\n"] if rows else []
    for name, fn in (
        ("general", general_md),
        ("table1", table1_md),
        ("table2", table2_md),
        ("peakd", peakd_md),
    ):
        if name in results:
            parts.append(f"## {name} ({results[name]['seconds']:.0f} s)\n\n{fn(results[name])}\n")
    if "table3" in results:
        parts.append(
            f"## table3 ({results['table3']['seconds']:.0f} s)\n\n{speed_markdown(results['table3'])}"
        )
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------------------

NEEDS = {
    "teacher": [],
    "general": ["teacher"],
    "table1": ["general"],
    "table2": ["general", "table1"],
    "table3": ["general"],
    "peakd": [],
}
FIELDS = {  # the settings each stage reads itself; its stage.json also holds those of the stages it needs
    "teacher": ("data", "teacher", "max_len", "teacher_steps", "head_steps", "seed", "quick"),
    "general": ("student_layers", "student_pool", "general_steps", "curve", "draws", "table4_limits", "lr", "epochs"),
    "table1": ("seeds", "lr", "epochs", "limits"),
    "table2": ("transfer", "squad_train", "squad_eval", "squad_len", "squad_every", "imdb_train", "imdb_eval",
               "imdb_len"),
    "table3": (),
    "peakd": ("data", "teacher", "max_len", "seed", "lr", "epochs", "peakd_limits", "peakd_seeds", "peakd_pool",
              "quick"),
}


def stage_settings(cfg, name) -> dict:
    """A stage is only as current as the stages it reads: its own settings and, recursively, theirs."""
    return {
        "stage": name,
        **{k: getattr(cfg, k) for k in FIELDS[name]},
        "needs": {n: stage_settings(cfg, n) for n in NEEDS[name]},
    }


def doc_regions(cfg) -> dict:
    """--docs: each page and the regions it has ('reproduce', 'claims'); a page with neither is refused."""
    pages = {}
    for page in [p.strip() for p in cfg.docs.split(",") if p.strip()]:
        text = Path(page).read_text()
        pages[page] = [n for n in ("reproduce", "claims") if f"<!-- begin {n} -->" in text]
        if not pages[page]:
            raise ValueError(f"--docs={page}: no '<!-- begin reproduce -->' or '<!-- begin claims -->' region")
    return pages


def reproduce(cfg: ReproduceConfig) -> dict:
    if cfg.quick:
        cfg = dataclasses.replace(
            cfg, **{k: v for k, v in QUICK.items() if getattr(cfg, k) == getattr(ReproduceConfig, k)}
        )
    only = [s for s in cfg.only.split(",") if s] or list(STAGES)
    unknown = [s for s in only if s not in STAGES]
    if unknown:
        raise ValueError(f"--only={cfg.only}: unknown stage(s) {unknown}; stages: {', '.join(STAGES)}")
    doc_regions(cfg)  # a bad --docs page stops here, before any stage runs
    root, t0, results = Path(cfg.out), time.time(), {}
    steps = {
        "teacher": lambda: teacher_stage(cfg, root),
        "general": lambda: general_stage(cfg, root, results["teacher"]),
        "table1": lambda: table1_stage(cfg, root, results["general"]),
        "table2": lambda: table2_stage(cfg, root, results["general"], results["table1"]),
        "table3": lambda: table3_stage(cfg, root, results["general"]),
        "peakd": lambda: peakd_stage(cfg, root),
    }
    wanted = set(only)
    for name in reversed(STAGES):  # a stage needs the ones it reads
        if name in wanted:
            wanted |= set(NEEDS[name])
    for name in STAGES:
        if name in wanted:
            results[name] = stage(root / name, stage_settings(cfg, name), steps[name])
        elif stored(root / name, stage_settings(cfg, name)) is not None:  # for tables.md: complete, not rerun
            results[name] = stored(root / name, stage_settings(cfg, name))
    figures(root, results)
    rows = claims(results)
    text = markdown(results, rows)
    write_text(text, root / "tables.md")
    made = f"`python reproduce.py` ({time.strftime('%Y-%m-%d')}, {'--quick, ' if cfg.quick else ''}stages " \
           f"{', '.join(results)})"
    regions = {"reproduce": f"{made}:\n\n{text}",
               "claims": f"{claims_md(rows)}\n\n{made}; each stage's time in the run that completed it "
                         "(runs reused inside a stage not counted): "
                         + ", ".join(f"{n} {r['seconds']:,.0f} s" for n, r in results.items()) + "."}
    for page, found in doc_regions(cfg).items():  # asked for: into the pages' regions, their prose kept
        for name in found:
            files.write_region(page, name, regions[name])
    log(f"all stages in {time.time() - t0:.0f} s; tables in {root / 'tables.md'}")
    print(text)
    return results


if __name__ == "__main__":
    try:
        reproduce(parse_config(sys.argv[1:], ReproduceConfig, doc=__doc__))
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"reproduce.py: error: {' '.join(str(e).split()) or type(e).__name__}") from None
