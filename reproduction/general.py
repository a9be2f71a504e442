"""
The teacher and general distillation (Sections 2 and 3; Table 4), measured first by what the teacher itself can
do. all-MiniLM-L6-v2 is a sentence-embedding model: its own skill is zero-shot STS-B, the cosine of two
sentences' mean-pooled last states against the gold similarity, with no training and no head. Every student
row is scored on it (retention: the student's score over the teacher's), on held-out MLM accuracy, and on SST-2
after fine-tuning with several seeds.

Every row trains on the same batches from the same copied layers, in two blocks of equal steps within each:
  the main block (--general_steps), the students of Tables 1-3 and their baseline:
    pooled cosine  L_pool alone (train.py --alpha_pool): the cosine of the mean-pooled last states of student
                   and teacher on the sequences without masks. Not the paper's loss: MiniLM never saw [MASK] and
                   was trained on mean-pooled embeddings, so the paper's token-level L_cos on masked inputs
                   teaches the student the teacher's states at masks, which the teacher never made useful
    MLM-only       L_mlm alone (no teacher)
  the Table 4 block (--table4_steps, shorter: six rows):
    triple loss    the paper's 5 L_ce + 2 L_mlm + 1 L_cos (weights and T = 2 from the reference code)
    - L_cos, - L_ce, - L_mlm, random init   Table 4's ablations of the triple loss
    L_mlm alone    the masked-LM baseline at this budget
    pooled cosine, closest layers   L_pool from the copy closest to the teacher
"""
import dataclasses
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import data
import finetune as ft
from corpus import prepare as prepare_corpus
import train
from eval import bootstrap_se, heldout_hits, paired_difference, seeded_difference, verdict, zero_shot_similarity
from machinery.checkpoint import load_checkpoint
from machinery.device import choose_dtype
from machinery.files import write_text
from machinery.hf import load_pretrained, resolve_checkpoint, save_pretrained
from machinery.tokenizer import load_tokenizer, write_tokenizer_files
from model import Bert, BertConfig, student_from_teacher
import quickstart
from quickstart import run_stage
from reproduction import glue, mlm_head

POOLED = dict(alpha_ce=0.0, alpha_mlm=0.0, alpha_cos=0.0, alpha_pool=1.0)
ROWS = {  # name: (train.py settings, the exported folder, its block)
    "pooled cosine": (dict(mode="distill", **POOLED), "student", "main"),
    "MLM-only": (dict(mode="mlm", init="teacher"), "model", "main"),
    "triple loss": (dict(mode="distill"), "student", "table4"),
    "- L_cos": (dict(mode="distill", alpha_cos=0.0), "student", "table4"),
    "- L_ce": (dict(mode="distill", alpha_ce=0.0), "student", "table4"),
    "- L_mlm": (dict(mode="distill", alpha_mlm=0.0), "student", "table4"),
    "random init": (dict(mode="distill", init="random"), "student", "table4"),
    "L_mlm alone": (dict(mode="mlm", init="teacher"), "model", "table4"),
}
CLOSEST = "pooled cosine, closest layers"  # in the Table 4 block, from the copy closest to the teacher
CURVE_ROWS = ("pooled cosine", "MLM-only", "triple loss", "L_mlm alone")  # zero-shot retention at every budget
TABLE4 = ("- L_cos", "- L_ce", "- L_mlm", "random init")  # each minus the triple loss
BASELINE = {"main": "MLM-only", "table4": "L_mlm alone"}  # each block's masked-LM row


def log(msg):
    glue.log(msg)


def folder_name(name) -> str:
    return name.replace(" ", "_").replace("-", "no").replace("(", "").replace(")", "").replace(",", "")


# ------------------------------------------------------------------------------------------------------------
# The teacher: MiniLM's encoder as it is, with an MLM head fitted on its cached states (reproduction.mlm_head)

def corpus(cfg) -> list:
    root = Path(cfg.data) / "corpora"
    inputs = [root / "gutenberg", root / "wikitext-2" / "wiki.test.raw", root / "tinyshakespeare"]
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        raise FileNotFoundError(f"--data={cfg.data}: no {', '.join(missing)} (see ../shared/data/README.md)")
    return inputs


def autocast(cfg):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=train_dtype(cfg) == "bfloat16")


def train_dtype(cfg) -> str:
    """The dtype train.py's --dtype=auto picks on this CPU (bf16 where its products are fast), float32 in quick
    runs and when asked."""
    if cfg.quick or cfg.dtype == "float32":
        return "float32"
    return str(choose_dtype(cfg.dtype, torch.device("cpu"))[0]).replace("torch.", "")


def teacher_stage(cfg, root) -> dict:
    """The corpus tokenised with the teacher's vocabulary; the teacher's MLM head fitted on the frozen encoder's
    last states at the masked positions of (up to head_rows of) the training split, computed once; the encoder
    is the pretrained one, bit for bit."""
    source = resolve_checkpoint(cfg.teacher)
    meta = prepare_corpus(corpus(cfg), root / "data", vocab=source / "vocab.txt", valid_fraction=0.02,
                           overwrite=True)
    shards = data.TokenData(root / "data")
    teacher = load_pretrained(source)
    t0 = time.time()
    states, labels = mlm_head.masked_states(teacher, shards, max_len=cfg.max_len, max_rows=cfg.head_rows,
                                            autocast=autocast(cfg))
    cached = time.time() - t0
    fit = mlm_head.fit_head(teacher, states, labels, counts=shards.counts, epochs=cfg.head_epochs, lr=2e-3,
                            autocast=autocast(cfg))
    out = root / "teacher" / "model"
    save_pretrained(teacher, out, extra_files=lambda f: write_tokenizer_files(source / "vocab.txt", f,
                                                                               teacher.cfg.max_position))
    h = heldout_hits(teacher, shards, cfg.max_len, 32, cfg.draws)
    same = {k: torch.equal(v, load_pretrained(source).state_dict()[k]) for k, v in teacher.state_dict().items()
            if not k.startswith("head.")}
    return {"source": str(source), "data_hash": meta["inputs_hash"], "folder": str(out), "cache_seconds": round(cached, 1),
            "fit": fit, "mlm_acc": h["correct"].double().mean().item(), "ppl": h["ppl"],
            "encoder_unchanged": all(same.values()), "tensors_compared": len(same)}


# ------------------------------------------------------------------------------------------------------------
# Zero-shot STS-B: the teacher's own skill, and what each student keeps of it

class ZeroShot:
    """STS-B dev pairs, tokenised once; score(model) -> the cosines of its pairs' sentence embeddings (the
    per-pair output everything else is computed from), stats on resampled pairs by a paired bootstrap."""

    def __init__(self, cfg, limit=None):
        tokenizer = load_tokenizer(resolve_checkpoint(cfg.teacher))
        dev = ft.read_glue("STS-B", Path(cfg.data) / "glue", "dev")[:limit]
        self.first = ft.encode(tokenizer, [ft.Example(e.text_a) for e in dev], cfg.max_len)
        self.second = ft.encode(tokenizer, [ft.Example(e.text_b) for e in dev], cfg.max_len)
        self.gold = np.array([e.label for e in dev], dtype=float)
        self.resamples = 200 if cfg.quick else 1000

    def cosines(self, model) -> np.ndarray:
        return zero_shot_similarity(model, self.first, self.second)

    def score(self, cos, idx=slice(None)) -> float:
        """GLUE's STS-B score: the mean of Pearson and Spearman."""
        return (ft.pearson(cos[idx], self.gold[idx]) + ft.spearman(cos[idx], self.gold[idx])) / 2

    def summary(self, cos) -> dict:
        return {"score": self.score(cos), "pearson": ft.pearson(cos, self.gold),
                "spearman": ft.spearman(cos, self.gold)}

    def compared(self, a, b) -> dict:
        """a minus b on the same pairs, the SE by a paired bootstrap over the pairs."""
        diff = lambda idx: self.score(a, idx) - self.score(b, idx)
        delta = diff(slice(None))
        se = bootstrap_se(diff, len(self.gold), resamples=self.resamples)
        return {"a": self.score(a), "b": self.score(b), "delta": delta, "se": se, "verdict": verdict(delta, se)}

    def retention(self, student, teacher) -> dict:
        ratio = lambda idx: self.score(student, idx) / self.score(teacher, idx)
        return {"value": ratio(slice(None)), "se": bootstrap_se(ratio, len(self.gold), resamples=self.resamples)}


@torch.no_grad()
def closest_layers(teacher, shards, cfg, k=3) -> list:
    """Every choice of k of the teacher's layers, ranked by how close the copy's last states are to the
    teacher's (mean token cosine) on the first 4 training batches: a rule that reads no label and no STS-B
    pair. [(layers, cosine)], closest first."""
    batches = [b for _, b in zip(range(4), data.Batches(shards, "train", cfg.max_len, 32, seed=0))]
    teacher.eval()
    target = [teacher(b["input_ids"], attention_mask=b["attention_mask"], return_logits=False).hidden_states[-1]
              for b in batches]
    ranking = []
    for layers in itertools.combinations(range(teacher.cfg.num_layers), k):
        student = student_from_teacher(teacher, list(layers)).eval()
        cos = []
        for b, t in zip(batches, target):
            real = b["attention_mask"].bool()
            s = student(b["input_ids"], attention_mask=b["attention_mask"], return_logits=False).hidden_states[-1]
            cos.append(F.cosine_similarity(s[real], t[real], dim=-1).mean().item())
        ranking.append((list(layers), float(np.mean(cos))))
    return sorted(ranking, key=lambda r: -r[1])


# ------------------------------------------------------------------------------------------------------------
# The rows: train.py runs on the same batches and steps

def base_run(cfg, root) -> train.TrainConfig:
    """The quickstart's settings (uniform masking, the paper's lr 5e-4) on batches of cfg.batch_size sequences
    of up to max_len tokens; L_ce over the masked positions (the quickstart's choice: over every token it costs
    several times more here)."""
    run = train.TrainConfig(**quickstart.PRESET)
    return dataclasses.replace(
        run, batch_size=cfg.batch_size, micro_batch=cfg.batch_size, data=str(root / "data"),
        student_layers=cfg.student_layers, seed=cfg.seed, eval_every=0, eval_batches=20,
        teacher=str(root / "teacher" / "model"), max_steps=cfg.general_steps, max_len=cfg.max_len,
        ce_positions="masked", ce_chunk=256, dtype=train_dtype(cfg), log_every=10)


def block_of(name) -> str:
    return "table4" if name == CLOSEST else ROWS[name][2]


def budgets(cfg, block) -> list:
    """The steps of a block's rows, and the earlier budgets of its curve."""
    last, curve = (cfg.general_steps, cfg.curve) if block == "main" else (cfg.table4_steps, cfg.table4_curve)
    return sorted({int(s) for s in curve.split(",") if s and 0 < int(s) < last}) + [last]


def snapshot(folder: Path, step: int) -> Bert:
    """The model of a train.py run as it was after `step` steps (its checkpoint)."""
    state = load_checkpoint(folder / f"ckpt-{step:07d}.pt")
    model = Bert(BertConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["model_config"].items()}))
    model.load_state_dict(state["model"])
    return model.eval()


def train_rows(cfg, root, teacher, closest) -> dict:
    """Each row trained (or reused), a checkpoint kept at every budget of the curve; {name: folder, stats}. Also
    the pooled cosine from the `closest` layers."""
    out = {}
    runs = {name: s[:2] for name, s in ROWS.items()}
    runs[CLOSEST] = (dict(mode="distill", student_layers=",".join(map(str, closest)), **POOLED), "student")
    for name, (settings, export) in runs.items():
        folder = root / "general" / folder_name(name)
        steps = budgets(cfg, block_of(name))
        every = math.gcd(*steps) if name in CURVE_ROWS else steps[-1]  # a checkpoint at every budget of the curve
        run = dataclasses.replace(base_run(cfg, root), out_dir=str(folder), **settings, save_every=every,
                                  keep_last=steps[-1] // every, max_steps=steps[-1])
        missing = [s for s in steps if (folder / "stage.json").is_file() and (folder / export).is_dir()
                   and not (folder / f"ckpt-{s:07d}.pt").is_file()]
        if missing and every != steps[-1]:  # a finished run without its curve's checkpoints (e.g. --curve changed)
            raise ValueError(f"{folder}: no checkpoint after step(s) {missing} for the curve; move the folder away "
                             "to train the row again")
        t0 = time.time()
        stats = run_stage(name, run, folder / export, after=teacher_identity(cfg, teacher))
        out[name] = {"folder": str(folder / export), "run": str(folder), "steps": stats["step"], "block": block_of(name),
                     "seconds": round(time.time() - t0, 1), "tokens_per_s": stats["tokens_per_s"]}
    return out


def teacher_identity(cfg, teacher) -> dict:
    """What makes the teacher: a run made from another teacher is not reused."""
    return {"data_hash": teacher["data_hash"], "head_rows": cfg.head_rows, "head_epochs": cfg.head_epochs,
            "source": teacher["source"], "max_len": cfg.max_len}


def copy_only(cfg, root, layers, name) -> str:
    """The student right after the layer copy (token types folded in), no general distillation; made again when
    the teacher or the layers differ from those of the copy there (made.json says which)."""
    folder = root / "general" / folder_name(name) / "student"
    made = {"layers": list(layers), "teacher": glue.folder_id(root / "teacher" / "model")}
    marker = folder.parent / "made.json"
    if not (folder / "config.json").is_file() or not marker.is_file() or json.loads(marker.read_text()) != made:
        teacher = load_pretrained(root / "teacher" / "model")
        save_pretrained(student_from_teacher(teacher, layers), folder)
        write_text(json.dumps(made) + "\n", marker)
    return str(folder)


def paper_copy(cfg, root) -> str:
    """The copy-only student of --student_layers (the paper's one out of two): every student row starts there."""
    return copy_only(cfg, root, [int(i) for i in cfg.student_layers.split(",")], "copy-only")


def general_stage(cfg, root, teacher) -> dict:
    t0 = time.time()
    shards = data.TokenData(root / "data")
    model = load_pretrained(teacher["folder"])
    ranking = closest_layers(model, shards, cfg)
    closest = ",".join(map(str, ranking[0][0]))
    log(f"closest layers: {closest} (token cosine {ranking[0][1]:.3f}); the paper's rule: {cfg.student_layers}")
    rows = train_rows(cfg, root, teacher, ranking[0][0])
    rows["copy-only"] = {"folder": paper_copy(cfg, root)}
    rows["copy-only, closest layers"] = {"folder": copy_only(cfg, root, ranking[0][0], "copy-only closest")}
    zs = ZeroShot(cfg, limit=200 if cfg.quick else None)
    cos = {"teacher": zs.cosines(model), **{n: zs.cosines(load_pretrained(r["folder"])) for n, r in rows.items()}}
    base = lambda n: "copy-only, closest layers" if n == CLOSEST else "copy-only"
    zero_shot = {"teacher": zs.summary(cos["teacher"]), "pairs": len(zs.gold),
                 "rows": {n: {**zs.summary(c), "retention": zs.retention(c, cos["teacher"]),
                              **({} if n.startswith("copy-only") else {"vs_copy": zs.compared(c, cos[base(n)])})}
                          for n, c in cos.items() if n != "teacher"}}
    for n in TABLE4:
        zero_shot["rows"][n]["vs_triple"] = zs.compared(cos[n], cos["triple loss"])
    zero_shot["rows"]["pooled cosine"]["vs_mlm_only"] = zs.compared(cos["pooled cosine"], cos["MLM-only"])
    curve = {}
    for n in CURVE_ROWS:
        steps = budgets(cfg, block_of(n))
        curve[n] = {str(s): zs.retention(zs.cosines(snapshot(Path(rows[n]["run"]), s)), cos["teacher"])
                    for s in steps[:-1]} | {str(steps[-1]): zero_shot["rows"][n]["retention"]}
    for n in CURVE_ROWS:
        curve[n] = {"0": zero_shot["rows"]["copy-only"]["retention"], **curve[n]}
    return {"teacher": teacher, "layers": {"paper": cfg.student_layers, "closest": closest,
                                           "ranking": ranking}, "rows": rows, "distilled": cfg.distilled,
            "zero_shot": zero_shot, "curve": curve, "batch_size": cfg.batch_size,
            "steps": {b: budgets(cfg, b) for b in ("main", "table4")},
            "tokens_per_row": {b: budgets(cfg, b)[-1] * cfg.batch_size * cfg.max_len for b in ("main", "table4")},
            "mlm": mlm_compared(cfg, shards, rows, teacher), "max_len": cfg.max_len,
            "table4": table4_sst2(cfg, root, rows), "total_seconds": round(time.time() - t0, 1)}


def mlm_compared(cfg, shards, rows, teacher) -> dict:
    """Held-out MLM accuracy of every row with a trained MLM head, on the same masks (cfg.draws of the valid
    split); each row minus MLM-only and minus the triple loss, paired per token, clustered by sequence."""
    hits = {n: heldout_hits(load_pretrained(r["folder"]), shards, cfg.max_len, 32, cfg.draws)
            for n, r in rows.items() if n in ROWS and n != "pooled cosine"}  # L_pool leaves the MLM head as copied
    seq = next(iter(hits.values()))["sequence"]

    def compared(a, b):
        p = paired_difference(hits[a]["correct"], hits[b]["correct"], seq)
        return {**p, "verdict": verdict(p["delta"], p["se"])}
    out = {n: {"mlm_acc": h["correct"].double().mean().item(), "ppl": h["ppl"]} for n, h in hits.items()}
    for n in out:
        if n not in BASELINE.values():  # against the masked-LM row of its own block (the same steps)
            out[n]["vs_mlm_only"] = compared(n, BASELINE[block_of(n)])
        if n in TABLE4:
            out[n]["vs_triple"] = compared(n, "triple loss")
    return {"teacher": {"mlm_acc": teacher["mlm_acc"], "ppl": teacher["ppl"]}, "rows": out,
            "masked_tokens": int(seq.numel()), "draws": cfg.draws}


def table4_sst2(cfg, root, rows) -> dict:
    """Table 4 on GLUE, the paper's way: every row fine-tuned on SST-2 (the Table 1 subset and recipe) with every
    seed of cfg.seeds; each Table 4 row minus the triple loss, SEs of examples and seeds
    (eval.seeded_difference); the triple loss against the majority class (a floor: a difference from a row there
    says nothing). The main block's rows and the copy are fine-tuned too (Table 1 reuses them)."""
    names = ["triple loss", *TABLE4, "pooled cosine", "MLM-only", "copy-only"]
    results = {n: glue.glue_run(cfg, root, n, rows[n]["folder"], "SST-2") for n in names}
    correct = {n: np.array([r["per_example"] for r in res["runs"]], dtype=float) for n, res in results.items()}
    labels = glue.dev_labels(cfg, "SST-2")
    out = {"limit": glue.limits(cfg.limits)["SST-2"], "seeds": cfg.seeds,
           "mean": {n: float(c.mean()) for n, c in correct.items()},
           "majority": float(majority_row(labels).mean()), "rows": {}}
    floor = seeded_difference(correct["triple loss"], np.stack([majority_row(labels)] * 2))
    out["triple_above_floor"] = {**floor, "verdict": verdict(floor["delta"], floor["se"]),
                                 "clears": bool(floor["delta"] >= 3 * floor["se"])}
    for n in TABLE4:
        p = seeded_difference(correct[n], correct["triple loss"])
        out["rows"][n] = {**p, "verdict": verdict(p["delta"], p["se"])}
    return out


def majority_row(labels) -> np.ndarray:
    """Per-example correctness of always answering the majority class."""
    values, counts = np.unique(labels, return_counts=True)
    return (labels == values[counts.argmax()]).astype(float)
