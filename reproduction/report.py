"""
The stages' results as markdown tables and figures, built only from what the stages wrote (stage.json), so that
docs/reproduction.md and README's claims are the command's output.
"""
from pathlib import Path

import numpy as np

from reports import speed_markdown
from machinery.files import pyplot, save_figure
from reproduction.claims import claims_md, pct, signed
from reproduction.glue import recipes


def pm(p, scale=100) -> str:
    """'84.1 ± 0.9': a value and its SE."""
    return f"{scale * p['value']:.1f} ± {scale * p['se']:.1f}"


def table(header, rows) -> list:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c) for c in r) + " |" for r in rows)]


# ------------------------------------------------------------------------------------------------------------
# general

def general_md(g) -> str:
    t, z, m = g["teacher"], g["zero_shot"], g["mlm"]
    lines = [f"The teacher: {Path(t['source']).name}'s encoder, unchanged ({t['tensors_compared']} tensors compared: "
             f"{'identical' if t['encoder_unchanged'] else 'DIFFERENT'}), with an MLM head fitted on the cached last "
             f"states of {t['fit']['rows']:,} masked positions, {t['fit']['epochs']} passes "
             f"({t['cache_seconds']:.0f} s to cache, {t['fit']['seconds']:.0f} s to fit): held-out MLM accuracy "
             f"{pct(t['mlm_acc'])}%, perplexity {t['ppl']:.0f}.", "",
             f"Students: the teacher's layers {g['layers']['paper']} (the paper's one out of two) unless the row says "
             f"otherwise; the copy closest to the teacher (mean token cosine of the last states on 4 training "
             f"batches, no label read) is layers {g['layers']['closest']}. Batches of {g['batch_size']} sequences "
             f"of up to {g.get('max_len', 128)} tokens, the same batches for every row, lr 5e-4. Main rows (pooled cosine, MLM-only): "
             f"{g['steps']['main'][-1]} steps ({g['tokens_per_row']['main']:,} token slots); Table 4's rows: "
             f"{g['steps']['table4'][-1]} steps ({g['tokens_per_row']['table4']:,}).", "",
             "Closest copies (token cosine to the teacher): " + ", ".join(
                 f"{r[0]} {r[1]:.3f}" for r in g["layers"]["ranking"][:5]) + ".", "",
             f"**Zero-shot STS-B** (dev, {z['pairs']:,} pairs; the cosine of the two sentences' mean-pooled last "
             "states against the gold score, no training; score = mean of Pearson and Spearman). Retention = "
             "student / teacher; SEs by a paired bootstrap over the pairs (one distillation run per row: the "
             "distillation seed's noise is not counted).", ""]
    rows = [["teacher", pct(z["teacher"]["pearson"]), pct(z["teacher"]["spearman"]), pct(z["teacher"]["score"]),
             "100", ""]]
    for n, r in z["rows"].items():
        rows.append([n, pct(r["pearson"]), pct(r["spearman"]), pct(r["score"]), pm(r["retention"]),
                     signed(r["vs_copy"]) if "vs_copy" in r else ""])
    lines += table(["model", "Pearson", "Spearman", "score", "retention, %", "minus its copy-only, points"], rows)
    lines += ["", "Retention (%) over distillation steps (snapshots of the same runs, whose learning rate decays to "
              "0 at their last step; 0 = copy-only):", ""]
    for block in ("main", "table4"):
        steps = ["0", *map(str, g["steps"][block])]
        lines += table(["row", *steps], [[n, *(pm(per[s]) for s in steps)] for n, per in g["curve"].items()
                                         if g["rows"][n]["block"] == block]) + [""]
    lines += ["", f"**Held-out MLM accuracy** ({m['masked_tokens']:,} masked tokens, {m['draws']} masks of the "
              "held-out split); differences paired per token, SE clustered by sequence:", ""]
    rows = [["teacher", pct(m["teacher"]["mlm_acc"]), "", ""]]
    rows += [[n, pct(r["mlm_acc"]), signed(r["vs_mlm_only"]) if "vs_mlm_only" in r else "",
              signed(r["vs_triple"]) if "vs_triple" in r else ""] for n, r in m["rows"].items()]
    lines += table(["row", "MLM accuracy, %", "minus its block's masked-LM row", "minus triple loss"], rows)
    s = g["table4"]
    f = s["triple_above_floor"]
    lines += ["", f"**Table 4 on SST-2** (fine-tuned on {s['limit']:,} sentences, seeds {s['seeds']}; accuracy, "
              "mean over seeds; minus the triple loss ± SE of examples and seeds). The triple loss is "
              f"{signed(f)} above the majority class ({pct(s['majority'])}%): "
              f"{'above' if f['clears'] else 'NOT above'} the floor at 3 SE. Paper (GLUE macro): -L_ce -2.96, "
              "-L_cos -1.46, -L_mlm -0.31, random init -3.69.", ""]
    lines += table(["row", "SST-2 accuracy, %", "minus triple loss"],
                   [[n, pct(v), signed(s["rows"][n]) if n in s["rows"] else ""] for n, v in s["mean"].items()])
    lines += ["", "Distillation runs: " + ", ".join(f"{n} {r['seconds']:.0f} s ({r['tokens_per_s']:,.0f} tok/s)"
                                                    for n, r in g["rows"].items() if "seconds" in r) + "."]
    return "\n".join(lines)


def general_figure(png, g):
    """Zero-shot STS-B retention against distillation steps, ± one SE: the teacher's own skill kept."""
    plt = pyplot("no results.png")
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, per in g["curve"].items():
        slots = g["batch_size"] * g.get("max_len", 128) / 1e6
        pts = [(int(s) * slots, 100 * v["value"], 100 * v["se"]) for s, v in per.items()]
        ax.errorbar(*zip(*pts), marker="o", capsize=3, label=name)
    ax.axhline(100, color="grey", lw=0.8, ls="--", label="teacher")
    ax.set(xlabel="distillation tokens (millions of token slots)", ylabel="zero-shot STS-B retention, %",
           title=f"students of layers {g['layers']['paper']}")
    ax.legend(fontsize=8)
    save_figure(fig, png)


# ------------------------------------------------------------------------------------------------------------
# Table 1

def table1_md(t) -> str:
    tasks, d = t["tasks"], t["distilled"]
    lines = [f"GLUE dev, each model fine-tuned with seeds {t['seeds']} on the same subsets "
             f"({', '.join(f'{k} {v:,}' for k, v in t['limits'].items())} examples), the same mean-pooled head, the "
             f"teacher's recipe (`--recipe={t['recipe']}`) and the students' (`--student_recipe="
             f"{t['student_recipe']}`). Cells: the task's GLUE score (MRPC: mean of F1 and accuracy; "
             "STS-B: mean of Pearson and Spearman) x 100, mean over seeds (± SD over seeds); * = at least 3 SE "
             "(examples and seeds) above the best constant predictor.", ""]
    rows = [["constant predictor", *(pct(t["floors"][k]) for k in tasks), pct(t["floor_macro"]), "", ""]]
    for n in t["models"]:
        cells = [f"{pct(t['mean'][n][k])} ± {pct(np.std(t['scores'][n][k], ddof=1))}"
                 + ("*" if t["bars"][n][k]["clears"] else "") for k in tasks]
        r = t["retention"].get(n)
        rows.append([n, *cells, pct(t["macro"][n]), f"{pct(r['raw'])} ± {pct(r['raw_se'])}" if r else "100",
                     f"{pct(r['adjusted'])} ± {pct(r['adjusted_se'])}" if r else "100"])
    lines += table(["model", *tasks, "macro", "retention, %", "chance-adjusted, %"], rows)
    lines += ["", f"{d} minus each other model, points ± SE (examples and seeds):", ""]
    lines += table(["", *tasks], [[k, *(signed(v[x]) for x in tasks)] for k, v in t["paired"].items()])
    lines += ["", "Chance-adjusted retention = (student - floor) / (teacher - floor), the floor the macro of the "
              "constant predictors; its SE combines a paired bootstrap over the dev examples and the seeds' "
              "variance (delta method)."]
    return "\n".join(lines)


def table1_figure(png, t):
    plt = pyplot("no results.png")
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.8 / len(t["models"])
    for k, n in enumerate(t["models"]):
        ax.bar([i + k * width for i in range(len(t["tasks"]))], [100 * t["mean"][n][x] for x in t["tasks"]], width,
               yerr=[100 * np.std(t["scores"][n][x], ddof=1) for x in t["tasks"]], capsize=2, label=n)
    for i, x in enumerate(t["tasks"]):
        ax.hlines(100 * t["floors"][x], i - width / 2, i + 0.8 - width / 2, color="black", lw=1.5)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(t["tasks"]))], t["tasks"])
    ax.set(ylabel="GLUE score x 100 (black: constant predictor)", title="Table 1, mean over seeds (± SD)")
    ax.legend(fontsize=7)
    save_figure(fig, png)


# ------------------------------------------------------------------------------------------------------------
# Table 2, Table 3, Pea-KD

def table2_md(t) -> str:
    s = t["sst2"]
    lines = [f"SST-2, (D) on the same sentences, recipe and seeds ({s['seeds']}) as fine-tuning alone: "
             f"{pct(s['mean'])} vs {pct(s['alone_mean'])}, {signed(s['d_vs_alone'])}; the teacher "
             f"{pct(s['teacher_accuracy'])}."]
    if "squad" in t:
        q = t["squad"]
        lines += ["", f"SQuAD v1.1: trained on {q['train']:,} questions of one half of the dev set, scored on "
                  f"{q['questions']} questions ({q['paragraphs']} paragraphs) of the other; the teacher one seed, the "
                  f"students seeds {q['seeds']}; SEs clustered by paragraph and counting the seeds.", ""]
        lines += table(["model", "EM", "F1"], [[n, pct(r["exact_match"]), pct(r["f1"])] for n, r in q["rows"].items()])
        lines += ["", f"(D) minus alone: EM {signed(q['d_vs_alone']['exact_match'])}, F1 "
                  f"{signed(q['d_vs_alone']['f1'])}. Paper: +1.4 EM, +1.1 F1 (77.7/85.8 vs 79.1/86.9)."]
    else:
        lines += ["", "SQuAD: not run (`--squad_train=0`)."]
    if "imdb" in t:
        i = t["imdb"]
        lines += ["", f"IMDb: trained on {i['train_reviews']:,} reviews, scored on {i['reviews']:,}, seeds "
                  f"{i['seeds']}: teacher {pct(i['rows']['teacher'])}, distilled {pct(i['rows']['distilled'])}; "
                  f"student minus teacher {signed(i['student_vs_teacher'])} (paper: 92.82 vs 93.46, -0.64)."]
    return "\n".join(lines)


def peakd_md(p) -> str:
    lines = [f"Pea-KD (Cho & Kang): students of the teacher's first 3 layers (SPS: run twice, 6 layers), seeds "
             f"{p['seeds']}; dev accuracy x 100, mean over seeds; minus PKD ± SE of examples and seeds.", ""]
    for task, r in p["tasks"].items():
        lines += [f"{task} ({r['train']:,} training sentences; majority class {pct(r['majority'])}):", ""]
        lines += table(["row", "accuracy", "minus PKD"],
                       [[n, pct(row["accuracy"]), signed(r["vs_pkd"][n]) if n in r["vs_pkd"] else ""]
                        for n, row in r["rows"].items()])
        lines.append("")
    return "\n".join(lines)


SECTIONS = (("general", "General distillation and the teacher's own skill (Table 4)", general_md),
            ("table1", "Table 1: GLUE", table1_md), ("table2", "Table 2: task distillation and IMDb", table2_md),
            ("table3", "Table 3: size and speed", speed_markdown), ("peakd", "Pea-KD", peakd_md))


def recipe_md(r, t1) -> list:
    """The recipe stage's grids, one table per model, and its choices (said when Table 1 used others)."""
    used = {"teacher": t1.get("recipe"), "copy-only": t1.get("student_recipe")}
    flag = {"teacher": "--recipe", "copy-only": "--student_recipe"}
    out = ["## Fine-tuning recipe", "", f"Each model fine-tuned with every point of the grid on "
           f"{100 - 100 * r['holdout']:.0f}% of each task's training subset, scored on the other "
           f"{100 * r['holdout']:.0f}% (seed {r['seed']}); the best point is the task's recipe. The teacher's is "
           "`--recipe`; the copy-only student's is `--student_recipe`, used by every student.", ""]
    for name, grid in r["grid"].items():
        differs = used.get(name) and recipes(used[name]) != recipes(r["chosen"][name])
        out += [f"{name}: `{flag.get(name, name)}={r['chosen'][name]}`"
                + (f" (**Table 1 used another: `{used[name]}`**)" if differs else ""), ""]
        out += table(["task", *(f"lr {p['lr']:g}, {p['epochs']:g} epochs" for p in next(iter(grid.values())))],
                     [[t, *(pct(p["score"]) for p in pts)] for t, pts in grid.items()]) + [""]
    return out


def markdown(results, rows) -> str:
    out = ["## Claims", "", claims_md(rows), ""]
    if "recipe" in results:
        out += recipe_md(results["recipe"], results.get("table1", {}))
    for name, title, md in SECTIONS:
        if name in results:
            out += [f"## {title}", "", md(results[name]), ""]
    return "\n".join(out)


def figures(root, results):
    if "general" in results:
        general_figure(Path(root) / "general" / "results.png", results["general"])
    if "table1" in results:
        table1_figure(Path(root) / "table1" / "results.png", results["table1"])
