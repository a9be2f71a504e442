"""
Evaluating teacher and student: held-out masked LM, size and speed, and the comparison table (Sanh et al.
2019, Section 4 "Experiments").

1. mlm_eval     masked-token accuracy and perplexity on held-out shards, with a fixed mask so models compare.
2. size_speed   Table 3: parameters, checkpoint size and "inference time of a full pass of GLUE task STS-B
                ... on CPU with a batch size of 1", plus throughput at a larger batch, GPU columns when there
                is one, and the student quantised to int8 (dynamic quantisation of its nn.Linear layers) as
                an option.
3. results_table  Tables 1-2: teacher vs student per task and the GLUE macro score, with the student's
                retention (student / teacher, the paper's "97% of BERT's performance"), as Markdown, JSON
                and a bar chart.

    python eval.py mlm   --model out/student --data data/shards
    python eval.py speed --teacher out/teacher --student out/student --vocab vocab.txt \
        --sts glue/STS-B/dev.tsv
    python eval.py table --results results/*.json --out results/
"""
import copy
import json
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from data import Batches, TokenData, mask_generator, mask_tokens
from finetune import GLUE_TASKS, Classifier, encode, glue_score, load_encoder, read_glue, task_spec
from machinery.config import ArgumentParser
from machinery.files import one_line, write_atomic, write_json, write_text
from machinery.hf import model_folder, teacher_tokenizer_file
from machinery.tokenizer import load_tokenizer, vocab_hash
from model import student_from_teacher

# ------------------------------------------------------------------------------------------------------------
# 1. Held-out masked LM


@torch.no_grad()
def mlm_eval(model, data, split="valid", max_len=128, batch_size=32, seed=1234, max_batches=None,
             per_token=False) -> dict:
    """Accuracy and perplexity of the masked tokens of `split` (a data.TokenData). The mask is BERT's uniform
    15% (80% [MASK], 10% random, 10% kept) drawn from data.mask_generator(seed, 0, batch index): the same seed
    gives every model the same masked positions. Under torch.distributed each rank takes its share of the
    batches and the sums (correct, loss, count) are all-reduced. per_token (one process): also "correct",
    "labels" and "sequence" (which held-out sequence the token is in, the same number for any seed), one entry
    per masked token in a fixed order, for paired comparisons of models (paired_difference)."""
    device = next(model.parameters()).device
    rank, world = (dist.get_rank(),
                   dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    batches = Batches(data, split, max_len, batch_size, rank=rank, world_size=world, shuffle=False)
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # correct, summed loss, masked tokens
    hits, golds, where = [], [], []
    for k, batch in enumerate(batches):
        if max_batches is not None and k >= max_batches:
            break
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        # epoch 0 always: the same mask for every model
        generator = mask_generator(seed, 0, batch["index"], device)
        masked, labels = mask_tokens(ids, mask, mask_id=data.special["mask"], vocab_size=data.vocab_size,
                                     special_ids=data.special, generator=generator)
        chosen = labels != -100
        if not chosen.any():
            continue
        logits = model(masked, attention_mask=mask, logits_at=chosen).logits.float()
        gold = labels[chosen]
        hit = logits.argmax(-1) == gold
        if per_token:
            hits.append(hit.cpu())
            golds.append(gold.cpu())
            where.append(k * 1_000_000 + chosen.nonzero()[:, 0].cpu())  # (batch, row): one held-out sequence
        sums += torch.stack([hit.sum().double(),
                             F.cross_entropy(logits, gold, reduction="sum").double(),
                             torch.tensor(float(len(gold)), dtype=torch.float64, device=device)])
    if world > 1:
        dist.all_reduce(sums)
    model.train(was_training)
    correct, loss, count = sums.tolist()
    if count == 0:
        raise ValueError(f"mlm_eval: no masked tokens in split {split!r}")
    result = {"accuracy": correct / count, "perplexity": perplexity(loss / count), "tokens": int(count)}
    if per_token:
        result.update(correct=torch.cat(hits), labels=torch.cat(golds), sequence=torch.cat(where))
    return result


def heldout_hits(model, data, max_len=128, batch_size=32, draws=3) -> dict:
    """mlm_eval's per-token results over `draws` independent masks of the valid split (seeds 1234, 1235, ...),
    concatenated ("correct", "labels", "sequence"), and the perplexity over all their masked tokens."""
    runs = [mlm_eval(model, data, "valid", max_len, batch_size, seed=1234 + k,
                     per_token=True) for k in range(draws)]
    mean_loss = sum(math.log(r["perplexity"]) * r["tokens"] for r in runs) / sum(r["tokens"] for r in runs)
    return {**{k: torch.cat([r[k] for r in runs]) for k in ("correct", "labels", "sequence")},
            "ppl": perplexity(mean_loss)}


def paired_difference(a, b, groups=None) -> dict:
    """Accuracy of model A minus model B on the same items (a, b: boolean tensors of per-item correctness),
    with the standard error of the mean of the paired differences d_i = a_i - b_i: SE = std(d) / sqrt(n). With
    `groups` (e.g. the sequence of each masked token) items of a group may be correlated: the cluster-robust
    SE sqrt(G / (G - 1) * sum_g (sum_{i in g} (d_i - mean))^2) / n over the G groups, equal to the plain one
    when every item is its own group."""
    d = a.double() - b.double()
    n, mean = d.numel(), d.mean()
    if n < 2:
        return {"delta": mean.item(), "se": float("inf"), "n": n}
    if groups is None:
        se = (d.std(unbiased=True) / math.sqrt(n)).item()
    else:
        _, g = torch.unique(groups, return_inverse=True)
        G = int(g.max()) + 1
        per_group = torch.zeros(G, dtype=torch.float64).index_add_(0, g, d - mean)
        se = math.sqrt(G / max(G - 1, 1) * per_group.square().sum().item()) / n
    return {"delta": mean.item(), "se": se, "n": n}


def verdict(delta, se, z=3.0) -> str:
    """'beats' only when A's lead is at least z paired standard errors, 'loses' when B's is; otherwise a
    tie."""
    if delta > 0 and delta >= z * se:
        return "beats"
    if delta < 0 and delta <= -z * se:
        return "loses"
    return "ties within noise"


def seeded_difference(a, b, metric=None, groups=None, resamples=2000, seed=0) -> dict:
    """Model A minus model B on the same dev items, each fine-tuned with several seeds (the seeds of A and B
    are separate fine-tunings, not pairs). a, b: (seeds, items) arrays of per-item outputs. metric(rows, idx)
    -> the score of one seed's outputs `rows` on items idx (e.g. Pearson against labels[idx]); None: the score
    is the mean of the per-item scores (accuracy from 1/0 correctness, EM, F1 per question).

        delta = mean over A's seeds of its score - mean over B's seeds of its score

    Two sources of noise, added as variances: the dev items are a sample (se_items: the paired SE of the
    seed-averaged per-item differences, clustered by `groups`, or, for another metric, a paired bootstrap over
    the items or groups, the same resampled items for both models), and each fine-tuning is one draw
    (se_seeds^2 = var(A's per-seed scores) / k_A + var(B's) / k_B, with k - 1 degrees of freedom each). With
    one seed of a model its seed noise is unknown and se is inf: no verdict."""
    a, b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
    n = a.shape[1]
    everything = np.arange(n)
    score = (lambda rows, idx: float(np.mean(rows[idx]))) if metric is None else metric
    per_a = np.array([score(r, everything) for r in a])
    per_b = np.array([score(r, everything) for r in b])
    delta = float(per_a.mean() - per_b.mean())
    if metric is None:
        se_items = paired_difference(torch.as_tensor(a.mean(0)), torch.as_tensor(b.mean(0)),
                                     None if groups is None else torch.as_tensor(groups))["se"]
    else:
        se_items = bootstrap_se(lambda idx: np.mean([score(r, idx) for r in a]) - np.mean([score(r, idx)
                                                                                    for r in b]),
                                n, groups, resamples, seed)
    k_a, k_b = len(a), len(b)
    se_seeds = (math.sqrt(per_a.var(ddof=1) / k_a + per_b.var(ddof=1) / k_b) if min(k_a, k_b) > 1
                else math.inf)
    return {"delta": delta, "se": math.sqrt(se_items ** 2 + se_seeds ** 2), "se_items": float(se_items),
            "se_seeds": se_seeds, "seeds": [k_a, k_b], "n": n, "a": float(per_a.mean()),
            "b": float(per_b.mean())}


def bootstrap_se(statistic, n, groups=None, resamples=2000, seed=0) -> float:
    """The standard deviation of statistic(idx) over `resamples` resamplings of the n items with replacement
    (with `groups`, whole groups are resampled: items of one group are not independent)."""
    rng = np.random.default_rng(seed)
    if groups is None:
        members = [np.array([i]) for i in range(n)]
    else:
        _, g = np.unique(np.asarray(groups), return_inverse=True)
        members = [np.flatnonzero(g == j) for j in range(g.max() + 1)]
    values = [statistic(np.concatenate([members[j] for j in rng.integers(0, len(members), len(members))]))
              for _ in range(resamples)]
    return float(np.nanstd(values, ddof=1))


@torch.no_grad()
def sentence_embeddings(model, tensors, batch_size=256) -> torch.Tensor:
    """(N, hidden): the mean of each sentence's last hidden states over its real tokens, [CLS] and [SEP]
    included (how sentence-transformers uses all-MiniLM-L6-v2); tensors from finetune.encode."""
    was_training = model.training
    model.eval()
    out, mask = [], tensors["attention_mask"]
    order = mask.sum(1).argsort(descending=True, stable=True)  # similar lengths together: less padding
    for idx in order.split(batch_size):
        width = int(mask[idx].sum(1).max())
        ids, am = tensors["input_ids"][idx, :width], mask[idx, :width]
        h = model(ids, attention_mask=am, return_logits=False).hidden_states[-1].float()
        out.append((h * am[..., None]).sum(1) / am.sum(1, keepdim=True))
    model.train(was_training)
    return torch.cat(out)[order.argsort()]


def zero_shot_similarity(model, first, second) -> np.ndarray:
    """The cosine of the two sentences' embeddings for each pair (first[i], second[i]): no training, no head.
    An embedding model's own skill, measured on STS-B as Pearson/Spearman against the gold scores."""
    a, b = sentence_embeddings(model, first), sentence_embeddings(model, second)
    return F.cosine_similarity(a, b, dim=-1).numpy()


def perplexity(mean_loss):
    """exp(mean loss), inf where that overflows a float (a diverged model's loss above ~709), nan for nan."""
    try:
        return math.exp(mean_loss)
    except OverflowError:
        return math.inf


# ------------------------------------------------------------------------------------------------------------
# 2. Size and speed (Table 3)


def inference_model(encoder):
    """As Table 3: the encoder with a small task head (one output, as STS-B regression); the MLM head is not
    used."""
    return Classifier(encoder, 1).eval()


def _weights(model):
    return {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.head.")}


def parameters(model):
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("encoder.head."))


def checkpoint_mb(model):
    """Size on disk of the inference weights (torch.save of the state dict, which also holds int8 weights)."""
    with tempfile.TemporaryDirectory() as d:
        torch.save(_weights(model), Path(d) / "model.pt")
        return (Path(d) / "model.pt").stat().st_size / 2**20


def quantize(model):
    """Dynamic int8 quantisation of every nn.Linear (weights int8, activations quantised on the fly), on a
    copy."""
    # torch.ao.quantization is deprecated in favour of torchao, still works on CPU
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic
        return quantize_dynamic(copy.deepcopy(model).cpu(), {nn.Linear}, dtype=torch.qint8)


@torch.no_grad()
def time_pass(model, rows, batch_size, device="cpu", warmup=3):
    """Seconds for one pass over rows (unpadded token id lists) in batches of batch_size, padding to each
    batch's longest; the first `warmup` batches run once untimed."""
    batches = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        ids = torch.zeros(len(chunk), max(len(r) for r in chunk), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, r in enumerate(chunk):
            ids[j, :len(r)], mask[j, :len(r)] = torch.tensor(r), 1
        batches.append((ids.to(device), mask.to(device)))
    for ids, mask in batches[:warmup]:
        model(ids, attention_mask=mask)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for ids, mask in batches:
        model(ids, attention_mask=mask)
    sync()
    return time.perf_counter() - t0


def size_speed(models, tokenizer, sts_dev_path, limit=None, batch_size=32, quantize_student=None,
               threads=None, mlm_data=None, mlm_batches=20, repeats=5) -> dict:
    """Table 3 for models {name: Bert} (teacher first): parameters (encoder + head, M), checkpoint MB, seconds
    for a full pass over STS-B dev at batch size 1 on CPU (limit: the first `limit` pairs only; the median of
    `repeats` rounds in which the models take turns, and each model's speed-up as the median of the per-round
    ratios, with their range and the bound its layers allow), pairs/s at batch_size, and the same on GPU when
    available. quantize_student=name adds "<name>-int8" with its
    agreement with the float model: top-1 agreement and max |difference| of the MLM logits on the STS-B
    inputs, and MLM accuracy when mlm_data (a data.TokenData) is given."""
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads or saved_threads)
    try:
        return _size_speed(models, tokenizer, sts_dev_path, limit, batch_size, quantize_student, mlm_data,
                           mlm_batches, repeats)
    finally:
        torch.set_num_threads(saved_threads)


def _size_speed(models, tokenizer, sts_dev_path, limit, batch_size, quantize_student, mlm_data, mlm_batches, repeats):
    path = Path(sts_dev_path)
    pairs = read_glue("STS-B", path.parent, path.stem)[:limit]
    t = encode(tokenizer, pairs, 128)
    rows = [ids[:int(m.sum())].tolist() for ids, m in zip(t["input_ids"], t["attention_mask"])]
    models = {name: inference_model(m.cpu()) for name, m in models.items()}
    if quantize_student is not None:
        if quantize_student not in models:
            raise ValueError(f"quantize_student={quantize_student!r} is not one of the models {list(models)}")
        models[f"{quantize_student}-int8"] = quantize(models[quantize_student])
    report, base = {"pairs": len(rows), "batch_size": batch_size, "threads": torch.get_num_threads(),
                    "rows": []}, None
    # batch size 1, the paper's measure: the models timed in turn, `repeats` rounds, so that a machine getting
    # slower or faster during the measure (other work, the clock) touches every model alike
    bs1, first = {name: [] for name in models}, next(iter(models.values()))
    for _ in range(repeats):
        for name, m in models.items():
            bs1[name].append(time_pass(m, rows, 1))
    for name, m in models.items():
        row = {"model": name, "parameters_M": parameters(m) / 1e6, "checkpoint_MB": checkpoint_mb(m),
               "cpu_bs1_s": float(np.median(bs1[name])), "cpu_bs1_runs": bs1[name]}
        row[f"cpu_bs{batch_size}_per_s"] = len(rows) / time_pass(m, rows, batch_size)
        base = base or row
        ratios = [t / s for t, s in zip(base["cpu_bs1_runs"], bs1[name])]  # round by round
        row["speedup_cpu_bs1"] = float(np.median(ratios))
        row["speedup_cpu_bs1_range"] = [min(ratios), max(ratios)]
        # what the architecture allows: the ratio of the layers' multiply-adds per token (the embeddings are
        # lookups, the head one small product), e.g. 2.0 for half the layers of the same width
        row["speedup_bound"] = layer_macs(first.encoder.cfg) / layer_macs(m.encoder.cfg)
        if torch.cuda.is_available() and not name.endswith("-int8"):
            g = m.to("cuda")
            row["gpu_bs1_s"] = time_pass(g, rows, 1, "cuda")
            row[f"gpu_bs{batch_size}_per_s"] = len(rows) / time_pass(g, rows, batch_size, "cuda")
            m.cpu()
        report["rows"].append(row)
    if quantize_student is not None:
        report["int8"] = int8_agreement(models[quantize_student], models[f"{quantize_student}-int8"],
                                        rows[:64],
                                        mlm_data, mlm_batches)
    return report


@torch.no_grad()
def layer_macs(cfg, length=32) -> float:
    """Multiply-adds per token of the encoder's layers at `length` tokens: Q, K, V and output projections, the
    feed-forward, and Q K^T and the weighted sum of V."""
    d = cfg.hidden_size
    return (cfg.num_layers + len(getattr(cfg, "sps_layers", ()))) * (4 * d * d + 2 * d * cfg.intermediate_size
                                                                    + 2 * length * d)


@torch.no_grad()
def int8_agreement(fp32, int8, rows, mlm_data=None, mlm_batches=20):
    """How much dynamic int8 quantisation changes the student's masked-LM predictions."""
    agree, n, diff = 0, 0, 0.0
    for r in rows:
        ids = torch.tensor([r])
        a, b = fp32.encoder(ids).logits, int8.encoder(ids).logits
        agree, n = agree + int((a.argmax(-1) == b.argmax(-1)).sum()), n + len(r)
        diff = max(diff, float((a - b).abs().max()))
    out = {"mlm_top1_agreement": agree / max(n, 1), "mlm_max_abs_logit_diff": diff}
    if mlm_data is not None:
        out["mlm_accuracy_fp32"] = mlm_eval(fp32.encoder, mlm_data, max_batches=mlm_batches)["accuracy"]
        out["mlm_accuracy_int8"] = mlm_eval(int8.encoder, mlm_data, max_batches=mlm_batches)["accuracy"]
    return out


def speed_markdown(report):
    b = report["batch_size"]
    cols = ["model", "parameters_M", "checkpoint_MB", "cpu_bs1_s", "speedup_cpu_bs1", "speedup_bound",
            f"cpu_bs{b}_per_s"]
    cols += [c for c in ("gpu_bs1_s", f"gpu_bs{b}_per_s") if any(c in r for r in report["rows"])]
    lines = [f"STS-B dev, {report['pairs']} pairs, {report['threads']} CPU threads", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in report["rows"]:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    if "int8" in report:
        lines += ["", "int8 vs float student: " + ", ".join(f"{k} {_fmt(v)}" for k,
                                                            v in report["int8"].items())]
    return "\n".join(lines) + "\n"


def _fmt(v):
    if not isinstance(v, float):
        return str(v)
    return f"{v:.3g}" if abs(v) < 1 else f"{v:,.2f}"


# ------------------------------------------------------------------------------------------------------------
# 3. The results table (Tables 1 and 2): teacher, student, retention


def results_table(results, teacher=None, student=None) -> dict:
    """results: finetune.py result dicts ({"task", "name", "parameters", "median": {metric: value}}). teacher
    and student are model names; by default the two names present, the one with more parameters being the
    teacher. A task's score is the mean of its metrics (GLUE's rule); retention = 100 * student score /
    teacher score."""
    by = {}
    for r in results:
        key = (r["name"], r["task"])
        if key in by:
            raise ValueError(f"two results for model {r['name']!r} on task {r['task']!r}")
        by[key] = r
    names = list(dict.fromkeys(r["name"] for r in results))
    if teacher is None or student is None:
        if len(names) != 2:
            raise ValueError(f"results hold the models {names}: name the teacher and the student")
        size = {n: max(r.get("parameters", 0) for r in results if r["name"] == n) for n in names}
        teacher, student = sorted(names, key=lambda n: -size[n])
    order = [*GLUE_TASKS, "imdb", "squad"]
    tasks = sorted({t for (n, t) in by if n == teacher} & {t for (n, t) in by if n == student},
                   key=order.index)
    rows = []
    for task in tasks:
        metrics = list(task_spec(task)[1]["metrics"])
        t, s = by[teacher, task]["median"], by[student, task]["median"]
        metrics = [m for m in metrics if m in t and m in s]
        ts, ss = float(np.mean([t[m] for m in metrics])), float(np.mean([s[m] for m in metrics]))
        rows.append({"task": task, "metrics": {m: [t[m], s[m]] for m in metrics}, "teacher": ts,
                     "student": ss,
                     "retention": 100 * ss / ts if ts else float("nan")})
    table = {"teacher": teacher, "student": student, "rows": rows}
    glue = [r for r in rows if r["task"] in GLUE_TASKS]
    if glue:
        t = glue_score({r["task"]: {m: v[0] for m, v in r["metrics"].items()} for r in glue})
        s = glue_score({r["task"]: {m: v[1] for m, v in r["metrics"].items()} for r in glue})
        table["glue"] = {"tasks": len(glue), "teacher": t, "student": s,
                         "retention": 100 * s / t if t else float("nan")}
    return table


def _role(table, role):
    return table[role] if table[role] == role else f"{table[role]} ({role})"


def table_markdown(table):
    lines = [f"| task | metric | {_role(table, 'teacher')} | {_role(table, 'student')} | retention |",
             "|---|---|---|---|---|"]
    for r in table["rows"]:
        t = "/".join(f"{100 * v[0]:.1f}" for v in r["metrics"].values())
        s = "/".join(f"{100 * v[1]:.1f}" for v in r["metrics"].values())
        lines.append(f"| {r['task']} | {'/'.join(r['metrics'])} | {t} | {s} | {r['retention']:.1f}% |")
    if "glue" in table:
        g = table["glue"]
        tasks = f"{g['tasks']} task" + "s" * (g["tasks"] > 1)
        lines.append(f"| **GLUE macro** ({tasks}) | score | {100 * g['teacher']:.1f} | "
                     f"{100 * g['student']:.1f} | {g['retention']:.1f}% |")
    return "\n".join(lines) + "\n"


def bar_chart(table, path):
    """Teacher vs student score per task (and GLUE macro), retention written above the student's bar. Needs
    matplotlib (a dev dependency): returns False with a message when it is missing."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    except ImportError:
        print("[eval] matplotlib is not installed: no bar chart (pip install matplotlib)", file=sys.stderr)
        return False
    rows = table["rows"] + ([{"task": "GLUE", **table["glue"]}] if "glue" in table else [])
    x = np.arange(len(rows))
    fig = Figure(figsize=(1.2 * len(rows) + 2, 3.5))
    ax = fig.subplots()
    ax.bar(x - 0.2, [100 * r["teacher"] for r in rows], 0.4, label=_role(table, "teacher"))
    bars = ax.bar(x + 0.2, [100 * r["student"] for r in rows], 0.4, label=_role(table, "student"))
    for bar, r in zip(bars, rows):
        ax.annotate(f"{r['retention']:.0f}%", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom", fontsize=8)
    ax.set_xticks(x, [r["task"] for r in rows])
    ax.set_ylabel("score (x100)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    return True


# ------------------------------------------------------------------------------------------------------------
# Command line


def parser():
    p = ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mlm", help="held-out masked-LM accuracy and perplexity")
    m.add_argument("--model", required=True, nargs="+", help="Hugging Face folder(s)")
    m.add_argument("--data", required=True, help="a folder prepared by prepare.py")
    m.add_argument("--split", default="valid")
    m.add_argument("--max_len", type=int, help="tokens per sequence (default: 128, or the model's positions when "
                   "fewer)")
    m.add_argument("--batch_size", type=int, default=32)
    m.add_argument("--seed", type=int, default=1234)
    m.add_argument("--max_batches", type=int)
    m.add_argument("--out", help="JSON file for the results")
    s = sub.add_parser("speed", help="Table 3: parameters, size, CPU inference time on STS-B dev")
    s.add_argument("--teacher", required=True)
    s.add_argument("--student", help="default: student_from_teacher(teacher), one layer out of two")
    s.add_argument("--vocab", help="vocab.txt / tokenizer.json (default: the teacher folder's)")
    s.add_argument("--sts", required=True, help="STS-B dev.tsv")
    s.add_argument("--limit", type=int, help="time only the first N pairs")
    s.add_argument("--batch_size", type=int, default=32)
    s.add_argument("--threads", type=int)
    s.add_argument("--quantize", action="store_true", help="add the int8 (dynamic) quantised student")
    s.add_argument("--data", help="prepared shards: MLM accuracy of the int8 student")
    s.add_argument("--out", help="folder for speed.json and speed.md")
    t = sub.add_parser("table", help="teacher vs student table from finetune.py result files")
    t.add_argument("--results", required=True, nargs="+")
    t.add_argument("--teacher")
    t.add_argument("--student")
    t.add_argument("--out", required=True, help="folder for results.md, results.json, results.png")
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    try:
        command(a)
    except (OSError, ValueError) as e:  # a bad path or file: one line, not a traceback
        raise SystemExit(f"eval.py: error: {one_line(e)}") from None


def command(a):
    if a.cmd == "mlm":
        shards, out = TokenData(a.data), {}
        for path in a.model:
            model = load_encoder(model_folder(path))
            max_len = a.max_len or min(128, model.cfg.max_position)
            check_mlm_inputs(model, model_folder(path), shards, max_len)
            out[path] = mlm_eval(model, shards, a.split, max_len, a.batch_size, a.seed, a.max_batches)
            print(json.dumps({path: out[path]}))
        if a.out:
            write_json(out, a.out)
    elif a.cmd == "speed":
        teacher = load_encoder(model_folder(a.teacher))
        student = load_encoder(model_folder(a.student)) if a.student else student_from_teacher(teacher)
        names = ("teacher", "student")
        report = size_speed(dict(zip(names, (teacher, student))),
                            load_tokenizer(a.vocab or model_folder(a.teacher)), a.sts,
                            a.limit, a.batch_size, names[1] if a.quantize else None, a.threads,
                            TokenData(a.data) if a.data else None)
        print(speed_markdown(report))
        if a.out:
            write_json(report, Path(a.out) / "speed.json")
            write_text(speed_markdown(report), Path(a.out) / "speed.md")
    else:
        table = results_table(read_results(a.results), a.teacher, a.student)
        write_json(table, Path(a.out) / "results.json")
        write_text(table_markdown(table), Path(a.out) / "results.md")
        bar_chart(table, Path(a.out) / "results.png")
        print(table_markdown(table))


def check_mlm_inputs(model, path, shards, max_len):
    """The model must read the shards' ids (its own vocabulary, by hash where its folder has the tokenizer
    files, else by size) and have positions for max_len tokens."""
    if max_len > model.cfg.max_position:
        raise SystemExit(f"eval.py: --max_len={max_len} is more than the {model.cfg.max_position} positions "
                         f"of {path}")
    vocab = teacher_tokenizer_file(path)
    if model.cfg.vocab_size != shards.vocab_size or (
            vocab is not None and vocab_hash(load_tokenizer(vocab)) != shards.vocab_hash):
        raise SystemExit(f"eval.py: {path} was not trained with the vocabulary of {shards.folder} (its "
                         f"{vocab.name if vocab else 'vocab_size'} differs): prepare the data with its "
                         f"vocabulary")


def read_results(paths) -> list:
    """finetune.py's result files; a missing, unreadable or foreign one stops with one line naming it."""
    results = []
    for path in paths:
        try:
            results.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"{path}: cannot read a results JSON ({e})")
        missing = [k for k in ("task", "name", "median") if k not in results[-1]]
        if missing:
            raise SystemExit(f"{path}: not a finetune.py result, missing the keys {missing}")
    return results


if __name__ == "__main__":
    main()
