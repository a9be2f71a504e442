"""
The papers' claims, measured on a 2-core CPU in about 90 minutes, with a real pretrained teacher
(all-MiniLM-L6-v2, a sentence-embedding model) and statistics that count example and seed noise.

    python -m reproduction                        # every stage: ../shared/data in, out/reproduce out
    python -m reproduction --quick                # the same stages with tiny budgets (a smoke run)
    python -m reproduction --only=general,table1  # some stages (each needs the ones before it, which are reused)
    python -m reproduction --only=recipe          # the fine-tuning recipe search (not in the default run)

Stages, each written to its own folder under --out and reused when its settings have not changed:
  teacher   MiniLM's encoder as it is, an MLM head fitted on its cached states (reproduction/mlm_head.py)
  general   general distillation (Sections 2-3) of students copied from the teacher's layers: zero-shot STS-B
            retention of the teacher's own skill (and its curve over steps), held-out MLM accuracy, and
            Table 4's rows fine-tuned on SST-2 with seeds (reproduction/general.py)
  table1    GLUE dev (SST-2, MRPC, RTE, STS-B): teacher and students, the same head and seeds, the teacher's
            recipe and the students'; raw and chance-adjusted retention (reproduction/glue.py)
  table2    task distillation "DistilBERT (D)" on SST-2 (and SQuAD with --squad_train), and IMDb
            (reproduction/tasks.py)
  table3    parameters, size on disk, CPU time at batch size 1 in interleaved rounds
  peakd     Pea-KD (Cho & Kang): FT, PKD, + SPS, + PTP, Pea-KD on SST-2 with seeds
  recipe    (only when asked) each task's lr and epochs chosen on held-out training rows, never the dev set,
            for the teacher (--recipe) and for the copy-only student (--student_recipe, every student's)
Each claim's verdict is computed from its statistics by the rules of reproduction/claims.py.
"""
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from machinery import files, stages
from machinery.config import opt, parse_config
from machinery.files import one_line, write_text
from reproduction import claims, general, glue, report, tasks


@dataclass
class ReproduceConfig:
    data: str = opt("../shared/data", "glue/, squad/, imdb/, corpora/ (see ../shared/data/README.md)")
    out: str = opt("out/reproduce", "one folder per stage, and tables.md")
    docs: str = opt("", "comma-separated pages to write into: the tables into a page's 'reproduce' region, the "
                        "claims and stage times into its 'claims' region, e.g. docs/reproduction.md,README.md")
    teacher: str = opt("sentence-transformers/all-MiniLM-L6-v2", "a pretrained BERT: a folder, a Hub name, or "
                                                                 "the pinned PyPI wheel's")
    only: str = opt("", "comma-separated stages to run (default: all but recipe)")
    quick: bool = opt(False, "tiny budgets everywhere: a smoke run of every stage")
    dtype: str = opt("auto", "auto (bf16 where this CPU's bf16 products are fast) | float32",
                     choices=("auto", "float32"))
    seed: int = opt(1, "seed of distillation, the data subsets and the Pea-KD teacher")
    seeds: str = opt("1,2,3", "fine-tuning seeds of every model in a verdict")
    # the teacher's MLM head, fitted on the frozen encoder's cached states
    head_rows: int = opt(50000, "masked positions of the training split whose states are cached (a random sample "
                                "of its sequences)", range=">= 1")
    head_epochs: int = opt(4, "passes of the head over them", range=">= 1")
    draws: int = opt(2, "independent masks of the held-out split in MLM accuracy", range=">= 1")
    # general distillation: every row on the same batches and steps
    student_layers: str = opt("0,2,4", "the students' teacher layers (the paper: one out of two); the stage also "
                                       "reports the copy closest to the teacher and the pooled cosine from it")
    general_steps: int = opt(400, "steps of the main rows (pooled cosine, MLM-only)", range=">= 1")
    table4_steps: int = opt(150, "steps of Table 4's rows (triple loss, its ablations, L_mlm alone)", range=">= 1")
    batch_size: int = opt(16, "sequences per distillation step", range=">= 1")
    curve: str = opt("50,100,200", "also score zero-shot retention after these steps of the main rows (snapshots)")
    table4_curve: str = opt("25,50,100", "the same for the triple loss and L_mlm alone")
    distilled: str = opt("pooled cosine", "the row Tables 1-3 call 'the distilled student'",
                         choices=tuple(n for n, r in general.ROWS.items() if r[2] == "main"))
    # fine-tuning: the mean-pooled DistilBERT head for every model, standardised STS-B targets
    recipe: str = opt("SST-2:0.0003:4,MRPC:0.0001:4,RTE:0.0003:2,STS-B:0.0003:4,imdb:0.0003:4",
                      "the teacher's lr and epochs per task (TASK:lr:epochs,...): what --only=recipe chose on "
                      "held-out training rows (docs/reproduction.md)")
    student_recipe: str = opt("SST-2:0.0003:4,MRPC:0.0003:2,RTE:0.001:2,STS-B:0.0003:4,imdb:0.0003:4",
                              "the same for every student: what --only=recipe chose for the copy-only student")
    lr: float = opt(1e-4, "fine-tuning lr of a task without a recipe", range="> 0")
    epochs: float = opt(3.0, "fine-tuning epochs of a task without a recipe", range="> 0")
    limits: str = opt("SST-2:1000,MRPC:500,RTE:400,STS-B:800", "training examples kept per task (a fixed "
                                                               "subset)")
    recipe_lrs: str = opt("1e-4,3e-4,1e-3", "the recipe stage's learning rates")
    recipe_epochs: str = opt("2,4", "the recipe stage's epochs")
    table1: str = opt("pooled cosine,MLM-only,copy-only", "Table 1's students (rows of the general stage)")
    max_len: int = opt(128, "longest sequence in distillation and GLUE, in tokens", range=">= 8")
    squad_train: int = opt(0, "questions of dev-v1.1.json trained on (0: SQuAD not run; 600 made a teacher of "
                              "EM 7.5, a floor, in 14 minutes: docs/reproduction.md)", range=">= 0")
    squad_eval: int = opt(800, "questions of test-v1.1.json scored", range=">= 1")
    squad_len: int = opt(160, "SQuAD window length in tokens", range=">= 32")
    squad_lr: float = opt(1e-4, "SQuAD lr", range="> 0")
    squad_epochs: float = opt(2.0, "SQuAD epochs", range="> 0")
    imdb_train: int = opt(500, "IMDb reviews trained on (0: IMDb not run)", range=">= 0")
    imdb_eval: int = opt(1000, "IMDb test reviews scored", range=">= 1")
    imdb_len: int = opt(128, "IMDb tokens kept per review", range=">= 8")
    peakd_limits: str = opt("SST-2:1000", "Pea-KD training examples per task")
    peakd_seeds: str = opt("1,2,3", "Pea-KD student seeds (the teacher fine-tuned once, with --seed)")
    peakd_epochs: float = opt(2.0, "Pea-KD epochs of the teacher and every student (the lr is the task's recipe)",
                              range="> 0")


STAGES = ("teacher", "general", "table1", "table2", "table3", "peakd")
EXTRA = ("recipe",)  # only when --only names it
QUICK = dict(seeds="1,2", head_rows=400, head_epochs=1, draws=1, general_steps=4, table4_steps=4, batch_size=4,
             curve="2", table4_curve="2",
             limits="SST-2:48,MRPC:32,RTE:32,STS-B:32", recipe_lrs="1e-4", recipe_epochs="1,2", max_len=32,
             squad_train=40, squad_eval=8, squad_len=64, imdb_train=16, imdb_eval=8, imdb_len=32,
             peakd_limits="SST-2:32", peakd_seeds="1,2", peakd_epochs=1.0, epochs=1.0, recipe="",
             student_recipe="")
NEEDS = {"teacher": [], "general": ["teacher"], "table1": ["general"], "table2": ["general"],
         "table3": ["general"], "peakd": [], "recipe": ["teacher"]}
FIELDS = {  # the settings each stage reads itself; its stage.json also holds those of the stages it needs
    "teacher": ("data", "teacher", "max_len", "head_rows", "head_epochs", "draws", "seed", "quick", "dtype"),
    "general": ("student_layers", "general_steps", "table4_steps", "batch_size", "curve", "table4_curve",
                "distilled", "seeds", "recipe", "student_recipe", "lr",
                "epochs", "limits"),
    "table1": ("seeds", "recipe", "student_recipe", "lr", "epochs", "limits", "table1"),
    "table2": ("seeds", "recipe", "student_recipe", "lr", "epochs", "limits", "squad_train", "squad_eval",
               "squad_len", "squad_lr", "squad_epochs", "imdb_train", "imdb_eval", "imdb_len"),
    "table3": (),
    "peakd": ("data", "teacher", "max_len", "seed", "recipe", "lr", "peakd_epochs", "peakd_limits", "peakd_seeds",
              "quick", "dtype"),
    "recipe": ("data", "teacher", "max_len", "seed", "limits", "recipe_lrs", "recipe_epochs", "student_layers",
               "imdb_train", "imdb_len", "quick"),
}


def log(msg):
    files.log(msg, "reproduce")


def stage(folder: Path, settings: dict, compute):
    """compute() -> a JSON-able result, stored in folder/stage.json with the settings and the seconds it took
    (stages.cached); the stored result when the settings are the same as last time."""
    def timed():
        log(f"== {folder.name}")
        t0 = time.time()
        return {**compute(), "seconds": round(time.time() - t0, 1)}
    return stages.cached(folder, settings, timed, log=log)


def stage_settings(cfg, name) -> dict:
    """A stage is only as current as the stages it reads: its own settings and, recursively, theirs."""
    return {"stage": name, **{k: getattr(cfg, k) for k in FIELDS[name]},
            "needs": {n: stage_settings(cfg, n) for n in NEEDS[name]}}


def doc_regions(cfg) -> dict:
    """--docs: each page and the regions it has ('reproduce', 'claims'); a page with neither is refused."""
    pages = {}
    for page in [p.strip() for p in cfg.docs.split(",") if p.strip()]:
        text = Path(page).read_text()
        pages[page] = [n for n in ("reproduce", "claims") if f"<!-- begin {n} -->" in text]
        if not pages[page]:
            raise ValueError(f"--docs={page}: no '<!-- begin reproduce -->' or '<!-- begin claims -->' region")
    return pages


def checked(cfg) -> ReproduceConfig:
    """Quick budgets where asked; the lists parsed once here, so that a bad value stops before any stage."""
    if cfg.quick:
        cfg = dataclasses.replace(cfg, **{k: v for k, v in QUICK.items()
                                          if getattr(cfg, k) == getattr(ReproduceConfig, k)})
    for name, parse in (("limits", glue.limits), ("peakd_limits", glue.limits), ("recipe", glue.recipes),
                        ("student_recipe", glue.recipes),
                        ("seeds", glue.seeds), ("peakd_seeds", glue.seeds)):
        try:
            parse(getattr(cfg, name))
        except ValueError:
            raise ValueError(f"--{name}={getattr(cfg, name)}: not in the form its help shows") from None
    if len(glue.seeds(cfg.seeds)) < 2:
        raise ValueError(f"--seeds={cfg.seeds}: at least 2 fine-tuning seeds (the SEs count the seeds' noise)")
    unknown = [r for r in cfg.table1.split(",") if r not in general.ROWS and r != "copy-only"]
    if unknown:
        raise ValueError(f"--table1={cfg.table1}: {', '.join(unknown)} not a row of the general stage")
    if cfg.distilled not in cfg.table1.split(","):
        raise ValueError(f"--table1={cfg.table1}: has no --distilled={cfg.distilled} (its claims compare it)")
    return cfg


def run_stages(cfg, root) -> dict:
    only = [s for s in cfg.only.split(",") if s] or list(STAGES)
    unknown = [s for s in only if s not in STAGES + EXTRA]
    if unknown:
        raise ValueError(f"--only={cfg.only}: unknown stage(s) {unknown}; stages: {', '.join(STAGES + EXTRA)}")
    results = {}
    steps = {
        "teacher": lambda: general.teacher_stage(cfg, root),
        "general": lambda: general.general_stage(cfg, root, results["teacher"]),
        "table1": lambda: glue.table1_stage(cfg, root, table1_models(cfg, root, results["general"]),
                                            results["general"]["distilled"]),
        "table2": lambda: tasks.table2_stage(cfg, root, results["general"]),
        "table3": lambda: tasks.table3_stage(cfg, root, results["general"]),
        "peakd": lambda: tasks.peakd_stage(cfg, root),
        "recipe": lambda: glue.recipe_stage(cfg, root, {"teacher": str(root / "teacher" / "model"),
                                                        "copy-only": general.paper_copy(cfg, root)}),
    }
    wanted = set(only)
    for name in reversed(STAGES + EXTRA):  # a stage needs the ones it reads
        if name in wanted:
            wanted |= set(NEEDS[name])
    for name in STAGES + EXTRA:
        if name in wanted:
            results[name] = stage(root / name, stage_settings(cfg, name), steps[name])
        elif stages.stored(root / name, stage_settings(cfg, name)) is not None:  # complete, not rerun
            results[name] = stages.stored(root / name, stage_settings(cfg, name))
    return results


def table1_models(cfg, root, g) -> dict:
    return {"teacher": str(root / "teacher" / "model"),
            **{name: g["rows"][name]["folder"] for name in cfg.table1.split(",")}}


def reproduce(cfg: ReproduceConfig) -> dict:
    cfg = checked(cfg)
    doc_regions(cfg)  # a bad --docs page stops here, before any stage runs
    root, t0 = Path(cfg.out), time.time()
    results = run_stages(cfg, root)
    report.figures(root, results)
    rows = claims.claims(results)
    text = report.markdown(results, rows)
    write_text(text, root / "tables.md")
    flags = (" --quick" if cfg.quick else "") + (" --dtype=float32" if cfg.dtype == "float32" else "")
    made = f"`python -m reproduction{flags}` ({time.strftime('%Y-%m-%d')}, stages " \
           f"{', '.join(results)})"
    regions = {"reproduce": f"{made}:\n\n{text}",
               "claims": f"{claims.claims_md(rows)}\n\n{made}; each stage's time in the run that completed it "
                         "(runs reused inside a stage not counted): "
                         + ", ".join(f"{n} {r['seconds']:,.0f} s" for n, r in results.items()) + "."}
    for page, found in doc_regions(cfg).items():  # asked for: into the pages' regions, their prose kept
        for name in found:
            files.write_region(page, name, regions[name])
    log(f"all stages in {time.time() - t0:.0f} s; tables in {root / 'tables.md'}")
    print(text)
    return results


def main(argv):
    try:
        reproduce(parse_config(argv, ReproduceConfig, doc=__doc__))
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"python -m reproduction: error: {one_line(e)}") from None
