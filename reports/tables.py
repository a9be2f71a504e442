"""
The results table, the paper's Tables 1 and 2: teacher vs student per task and the GLUE macro score, with the
student's retention (student / teacher, the paper's "97% of BERT's performance"), as Markdown, JSON and a bar
chart, from the result files of `python -m finetune`.
"""
import json
import sys
from pathlib import Path

import numpy as np

from machinery.files import write_atomic
from tasks import GLUE_TASKS, glue_score, task_spec


def results_table(results, teacher=None, student=None) -> dict:
    """results: the result dicts of python -m finetune ({"task", "name", "parameters", "median": {metric:
    value}}). teacher and student are model names; by default the two names present, the one with more
    parameters being the teacher. A task's score is the mean of its metrics (GLUE's rule); retention = 100 *
    student score / teacher score."""
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
        print("[reports] matplotlib is not installed: no bar chart (pip install matplotlib)", file=sys.stderr)
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


def read_results(paths) -> list:
    """The result files of python -m finetune; a missing, unreadable or foreign one stops with one line naming
    it."""
    results = []
    for path in paths:
        try:
            results.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"{path}: cannot read a results JSON ({e})")
        missing = [k for k in ("task", "name", "median") if k not in results[-1]]
        if missing:
            raise SystemExit(f"{path}: not a result of python -m finetune, missing the keys {missing}")
    return results
