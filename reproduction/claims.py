"""
The papers' claims, each with our number, its standard error and a verdict computed from them by one of three
rules, stated once here:

  direction    the paper's direction shown at 3 SE or more (eval.verdict): "reproduced"; the opposite at 3 SE:
               "reversed"; neither: "not shown at 3 SE".
  at least     a figure the paper reports as a level (97% of the teacher): "reproduced" when our 95% confidence
               interval lies above the paper's figure minus a stated margin; "not reproduced" when it lies below;
               "inconclusive" when it straddles it.
  equivalence  a difference the paper reports as small (IMDb, -0.64): "reproduced" when our 95% interval lies
               within the paper's figure plus or minus a stated margin; "not reproduced" when it lies outside;
               "inconclusive" otherwise.

A claim whose premise fails here is "not testable" (a teacher weaker than its students, a score at the chance
floor): the verdict says which premise.
"""
import math

Z95 = 1.96
MARGINS = {"retention": 0.03, "imdb": 0.015}  # stated margins of the "at least" and "equivalence" rules
TABLE4 = {"- L_ce": -2.96, "- L_cos": -1.46, "- L_mlm": -0.31, "random init": -3.69}  # GLUE macro, points


def direction(p, want) -> str:
    other = {"beats": "loses", "loses": "beats"}[want]
    return "reproduced" if p["verdict"] == want else "reversed" if p["verdict"] == other else "not shown at 3 SE"


def at_least(ours, se, paper, margin) -> str:
    if not math.isfinite(se):
        return "inconclusive (no SE)"
    lo, hi = ours - Z95 * se, ours + Z95 * se
    return "reproduced" if lo >= paper - margin else "not reproduced" if hi < paper - margin else "inconclusive"


def equivalence(ours, se, paper, margin) -> str:
    if not math.isfinite(se):
        return "inconclusive (no SE)"
    lo, hi = ours - Z95 * se, ours + Z95 * se
    if paper - margin <= lo and hi <= paper + margin:
        return "reproduced"
    return "not reproduced" if hi < paper - margin or lo > paper + margin else "inconclusive"


def pct(x) -> str:
    return f"{100 * x:.1f}"


def signed(p, scale=100, digits=2) -> str:
    """'+1.23 ± 0.45 (beats)': a difference in points with one SE and its verdict."""
    return f"{scale * p['delta']:+.{digits}f} ± {scale * p['se']:.{digits}f} ({p['verdict']})"


def claims(results) -> list:
    """[claim, paper, ours, verdict] rows from the stages' results (only the stages present)."""
    rows = []
    if "general" in results:
        rows += general_claims(results["general"])
    if "table1" in results:
        rows += table1_claims(results["table1"])
    if "table2" in results:
        rows += table2_claims(results["table2"])
    if "table3" in results:
        rows += table3_claims(results["table3"])
    if "peakd" in results:
        rows += peakd_claims(results["peakd"])
    return rows


def general_claims(g) -> list:
    """Zero-shot and MLM claims carry the SE of the pairs or tokens only: each row is one distillation run."""
    z, rows, d = g["zero_shot"]["rows"], [], g["distilled"]
    steps = lambda n: g["steps"][g["rows"][n]["block"]][-1]
    for name in (d, "pooled cosine, closest layers", "triple loss"):
        if name not in z:
            continue
        ret = z[name]["retention"]
        rows.append([f"{name} ({steps(name)} steps) keeps the teacher's own skill (zero-shot STS-B retention; the "
                     "paper's 97% is of GLUE)", "97%", f"{pct(ret['value'])}% ± {pct(ret['se'])} (pairs; teacher "
                     f"{pct(g['zero_shot']['teacher']['score'])}, {name} {pct(z[name]['score'])}, its copy "
                     f"{pct(z['copy-only, closest layers' if 'closest' in name else 'copy-only']['score'])})",
                     at_least(ret["value"], ret["se"], 0.97, MARGINS["retention"])])
    for name, want, text in ((d, "beats", "general distillation raises the copied layers' zero-shot skill"),
                             ("triple loss", "beats", "the paper's triple loss raises it"),
                             ("MLM-only", "loses", "the masked-LM loss alone lowers it")):
        p = z[name]["vs_copy"]
        rows.append([f"{text} ({name} minus copy-only, zero-shot STS-B)", "",
                     f"{signed(p)} points after {steps(name)} steps (pairs)", direction(p, want)])
    p = z[d]["vs_mlm_only"]
    rows.append([f"distillation keeps more of it than the masked-LM loss alone ({d} minus MLM-only, the same "
                 "steps)", "", f"{signed(p)} points (pairs)", direction(p, "beats")])
    mlm = g["mlm"]
    teacher, best = mlm["teacher"]["mlm_acc"], max(r["mlm_acc"] for r in mlm["rows"].values())
    weak = f"not testable (the teacher's MLM accuracy {pct(teacher)} is below its students', up to {pct(best)})"
    p = mlm["rows"]["triple loss"]["vs_mlm_only"]
    rows.append(["distillation beats the masked-LM loss alone on held-out MLM accuracy (Section 3's premise; "
                 f"triple loss minus L_mlm alone, {steps('triple loss')} steps)", "",
                 f"{signed(p)} points (tokens); teacher {pct(teacher)}, best student {pct(best)}",
                 direction(p, "beats") if teacher > best else weak])
    s4 = g["table4"]
    for name, paper in TABLE4.items():
        parts = [f"SST-2 {signed(s4['rows'][name])} (examples and seeds)",
                 f"zero-shot STS-B {signed(z[name]['vs_triple'])} (pairs)",
                 f"MLM accuracy {signed(mlm['rows'][name]['vs_triple'])} (tokens)"]
        verdict = direction(s4["rows"][name], "loses")
        if not s4["triple_above_floor"]["clears"]:
            verdict = "not testable (the triple loss at SST-2's majority-class floor)"
        elif name == "- L_ce" and teacher <= best:  # what L_ce adds is the teacher's MLM predictions
            verdict = weak
        rows.append([f"Table 4: {name} hurts (minus the triple loss, {steps('triple loss')} steps; SST-2 with "
                     f"seeds {s4['seeds']})", f"{paper:+.2f} GLUE", "; ".join(parts), verdict])
    return rows


def table1_claims(t) -> list:
    d = t["distilled"]
    rows, ret = [], t["retention"][d]
    under = [k for k, b in t["bars"]["teacher"].items() if not b["clears"]]
    cleared = [k for k in t["tasks"] if k not in under]
    rows.append([f"97% of the teacher's GLUE score ({d}; Table 1, macro of " + ", ".join(t["tasks"]) + ")", "97%",
                 f"{pct(ret['raw'])}% ± {pct(ret['raw_se'])}; chance-adjusted {pct(ret['adjusted'])}% ± "
                 f"{pct(ret['adjusted_se'])} (a constant predictor scores {pct(t['floor_macro'])})"
                 + (f"; the teacher is not above chance at 3 SE on {', '.join(under)}" if under else ""),
                 at_least(ret["raw"], ret["raw_se"], 0.97, MARGINS["retention"])
                 + (f" (raw; the macro includes {', '.join(under)}, where the teacher is at chance)" if under and
                    cleared else "") if cleared else "not testable (the teacher at chance on every task)"])
    for other in (o for o in ("MLM-only", "copy-only", "triple loss") if f"{d} - {o}" in t["paired"]):
        per = t["paired"][f"{d} - {other}"]
        counted = [k for k in t["tasks"] if t["bars"][d][k]["clears"]]
        rows.append([f"{d} beats {other} after fine-tuning, seeds {t['seeds']}", "",
                     "; ".join(f"{k} {signed(per[k])}" for k in t["tasks"])
                     + ("; counted where the distilled student is above chance: " + ", ".join(counted)
                        if len(counted) < len(t["tasks"]) else ""),
                     _combine([direction(per[k], "beats") for k in counted]) if counted
                     else "not testable (every task at its floor)"])
    return rows


def _both(verdicts) -> str:
    """One claim measured two ways (SQuAD's EM and F1): reproduced only when both show it."""
    if all(v == "reproduced" for v in verdicts):
        return "reproduced"
    return "reversed" if all(v == "reversed" for v in verdicts) else "not shown at 3 SE on both"


def _combine(verdicts) -> str:
    """Tasks' verdicts on one claim: reproduced when at least half of the tasks show it and none reverses it
    (one task in four at 3 SE is not enough: the more tasks, the likelier one passes by chance)."""
    shown, against = verdicts.count("reproduced"), verdicts.count("reversed")
    if against:
        return "reversed" if not shown else "mixed"
    return "reproduced" if shown and 2 * shown >= len(verdicts) else "not shown at 3 SE"


def table2_claims(t) -> list:
    rows = []
    if "squad" in t:
        q = t["squad"]
        em, f1 = q["d_vs_alone"]["exact_match"], q["d_vs_alone"]["f1"]
        floor = q["teacher"]["exact_match"] < 0.10
        rows.append(["task distillation (D) helps on SQuAD (Table 2)", "+1.4 EM, +1.1 F1",
                     f"EM {signed(em)}, F1 {signed(f1)} ({q['seeds']} seeds each; teacher EM "
                     f"{pct(q['teacher']['exact_match'])})",
                     "not testable (the teacher under 10 EM)" if floor else
                     "not testable (the student alone under 10 EM)" if q["rows"]["student"]["exact_match"] < 0.10
                     else _both([direction(em, "beats"), direction(f1, "beats")])])
    if "sst2" in t:
        sd = t["sst2"]["d_vs_alone"]
        rows.append([f"(D) on SST-2, the same data, steps and seeds {t['sst2']['seeds']} (no figure in the paper)", "",
                     signed(sd), direction(sd, "beats")])
    if "imdb" in t:
        v, n = t["imdb"]["student_vs_teacher"], t["imdb"]["reviews"]
        teacher = v["b"]
        learned = (teacher - 0.5) >= 3 * math.sqrt(teacher * (1 - teacher) / n)  # balanced reviews: chance 50%
        rows.append(["IMDb: the student close to the teacher (Table 2)", "92.82 vs 93.46 (-0.64)",
                     f"{pct(v['a'])} vs {pct(v['b'])} ({signed(v)}; {t['imdb']['seeds']} seeds each)",
                     (equivalence(v["delta"], v["se"], -0.0064, MARGINS["imdb"])
                      + f" (the rule: our 95% interval within ±{100 * MARGINS['imdb']:.1f} points of the paper's gap)")
                     if learned else
                     "not testable (the teacher not 3 SE above chance)"])
    return rows


def table3_claims(t) -> list:
    r = {x["model"]: x for x in t["rows"]}
    s, tt = r["distilled"], r["teacher"]
    fewer = 1 - s["parameters_M"] / tt["parameters_M"]
    lo, hi = s["speedup_cpu_bs1_range"]
    return [["40% fewer parameters (Table 3)", "66M vs 110M",
             f"{s['parameters_M']:.1f}M vs {tt['parameters_M']:.1f}M ({pct(fewer)}% fewer)",
             "reproduced" if fewer >= 0.40 - 0.03 else
             "not testable (halving the layers of this narrow teacher cannot: its embeddings, which the student "
             "keeps whole, are a large share of it)" if fewer > 0 else "not reproduced"],
            ["60% faster (Table 3)", "1.6x",
             f"{s['speedup_cpu_bs1']:.2f}x on the CPU at batch size 1 (median of {len(s['cpu_bs1_runs'])} "
             f"interleaved rounds, {lo:.2f}-{hi:.2f}x; its layers allow at most {s['speedup_bound']:.2f}x)",
             "reproduced" if lo >= 1.6 else "not reproduced" if hi < 1.6 else "inconclusive"]]


def peakd_claims(p) -> list:
    rows = []
    for task, t in p["tasks"].items():
        v = t["vs_pkd"][p["peakd"]]
        rows.append([f"Pea-KD beats (Patient-)KD on {task}", "+4.4 on average over four tasks",
                     f"{signed(v)} (seeds {p['seeds']})", direction(v, "beats")])
    return rows


def claims_md(rows) -> str:
    return "\n".join(["| claim | paper | ours (± one SE; of what, in brackets) | verdict |", "|---|---|---|---|",
                      *("| " + " | ".join(r) + " |" for r in rows)])
