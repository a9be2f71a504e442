"""What notebook 04 shows of the quickstart: one finished `python quickstart.py` run, read from its folder or from
its record.

The quickstart leaves its three models and its results in a folder (out/quickstart by default). `view(folder)`
reads what the notebook shows from it: results.json, each stage's held-out accuracy during training
(metrics.jsonl), each model's per-token hits on the held-out masked tokens (the quickstart's own three masks,
eval.heldout_hits), those of the copy-only student (teacher layers 0, 2, 4 before any training: where both
students start) and every model's three best guesses for a few masked words. That takes a minute and a half, so
the view is kept beside results.json (notebook-view.json) and reused while results.json is unchanged.

A reader without a finished run gets RECORD, the view of one run committed with the notebooks, made by

    python quickstart.py --dtype=float32 && python notebooks/quickstart_view.py out/quickstart

(the README's main command in float32, whose numbers do not depend on the CPU's bf16 support).
"""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from data import TokenData  # noqa: E402
from eval import heldout_hits, mlm_eval  # noqa: E402
from machinery.files import write_json  # noqa: E402
from machinery.hf import load_pretrained  # noqa: E402
from model import student_from_teacher  # noqa: E402

RECORD = HERE / "quickstart_record.json"
MODELS = {"teacher": "teacher/model", "student": "student/student", "student-mlm-only": "student-mlm-only/model"}
SENTENCES = ["Return the [MASK] of the list.", "The function raises an [MASK] if the file does not exist.",
             "This module provides access to the operating [MASK].", "Open the file for [MASK] and writing."]


def bits(hits) -> str:
    """A 0/1 tensor as a hex string (4 tokens a digit), so that 20,000 tokens take 5 KB of JSON."""
    b = [int(x) for x in hits.tolist()] + [0] * (-len(hits) % 4)
    return "".join(f"{8 * b[i] + 4 * b[i + 1] + 2 * b[i + 2] + b[i + 3]:x}" for i in range(0, len(b), 4))


def unbits(text, n) -> torch.Tensor:
    return torch.tensor([(int(c, 16) >> s) & 1 for c in text for s in (3, 2, 1, 0)][:n], dtype=torch.bool)


def guesses(model, tok, mask_id, k=3) -> list:
    """The k most probable tokens (and their probabilities) at the [MASK] of each of SENTENCES."""
    out = []
    for text in SENTENCES:
        ids = torch.tensor([tok.encode(text).ids])
        with torch.no_grad():
            p = model(ids).logits[0, int((ids[0] == mask_id).nonzero()[0])].softmax(-1)
        top = p.topk(k)
        out.append([[tok.id_to_token(i), round(v, 4)] for v, i in zip(top.values.tolist(), top.indices.tolist())])
    return out


def make_view(folder) -> dict:
    """Everything notebook 04 prints or draws, from a finished quickstart folder."""
    folder = Path(folder)
    results = json.loads((folder / "results.json").read_text())
    settings = json.loads((folder / "student" / "stage.json").read_text())["settings"]
    tokens = TokenData(folder / "data")
    models = {name: load_pretrained(folder / path) for name, path in MODELS.items()}
    models["copy-only"] = student_from_teacher(models["teacher"], [int(i) for i in settings["student_layers"]
                                                                    .split(",")])
    hits = {name: heldout_hits(m, tokens, settings["max_len"], settings["micro_batch"], results["mask_draws"])
            for name, m in models.items()}
    first = hits["teacher"]
    # the masked tokens of the first mask (eval seed 1234, the one the runs scored during training) come first
    mask1 = mlm_eval(models["copy-only"], tokens, "valid", settings["max_len"], settings["micro_batch"], seed=1234)
    _, dense = torch.unique(first["sequence"], return_inverse=True)   # held-out sequence 0..G-1 of each token
    runs, run_lengths = torch.unique_consecutive(dense, return_counts=True)
    curves = {}
    for name in MODELS:
        rows = [json.loads(line) for line in (folder / name / "metrics.jsonl").read_text().splitlines()]
        curves[name] = [[r["step"], r["valid_accuracy"], r["seconds"]] for r in rows if "valid_accuracy" in r]
    return {"results": results, "curves": curves,
            "settings": {k: settings[k] for k in ("dtype", "seed", "max_len", "batch_size", "max_steps",
                                                  "student_layers", "temperature", "alpha_ce", "alpha_mlm",
                                                  "alpha_cos", "lr", "eval_batches", "micro_batch")},
            "valid_sequences": len(tokens.sequences("valid", settings["max_len"]).lengths),
            "tokens": len(first["correct"]), "runs": [runs.tolist(), run_lengths.tolist()],
            "copy_only_ppl": hits["copy-only"]["ppl"], "first_mask_tokens": mask1["tokens"],
            "hits": {name: bits(h["correct"]) for name, h in hits.items()},
            "guesses": {name: guesses(m, tokens.tokenizer, tokens.special["mask"]) for name, m in models.items()}}


def view(folder) -> dict:
    """make_view(folder), kept in folder/notebook-view.json and reused while results.json is the same."""
    folder = Path(folder)
    key = hashlib.sha256((folder / "results.json").read_bytes()).hexdigest()
    cached = folder / "notebook-view.json"
    if cached.is_file():
        v = json.loads(cached.read_text())
        if v.get("results_sha256") == key:
            return v
    v = {**make_view(folder), "results_sha256": key, "source": str(folder)}
    write_json(v, cached)
    return v


def load(folder=None) -> dict:
    """The view of `folder` when it holds a finished quickstart (results.json), else the committed RECORD."""
    if folder is not None and (Path(folder) / "results.json").is_file():
        return view(folder)
    return json.loads(RECORD.read_text())


def unpack(v) -> dict:
    """Per-token tensors from a view: hits per model (bool), and the held-out sequence of every token (for the
    SE clustered by sequence)."""
    n = v["tokens"]
    sequence = torch.repeat_interleave(torch.tensor(v["runs"][0]), torch.tensor(v["runs"][1]))
    return {name: unbits(h, n) for name, h in v["hits"].items()}, sequence


def main(argv):
    """python notebooks/quickstart_view.py FOLDER: write RECORD from a finished quickstart in FOLDER."""
    if len(argv) != 1 or not (Path(argv[0]) / "results.json").is_file():
        raise SystemExit("usage: python notebooks/quickstart_view.py FOLDER (a finished quickstart: "
                         "FOLDER/results.json)")
    v = view(argv[0])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dtype = v["settings"]["dtype"]
    v = {**v, "source": str(RECORD.relative_to(ROOT)), "commit": commit.stdout.strip() or None,
         "command": "python quickstart.py" + (f" --dtype={dtype}" if dtype != "auto" else "")
         + (f" --seed={v['settings']['seed']}" if v["settings"]["seed"] != 42 else "")}
    write_json(v, RECORD)
    print(f"wrote {RECORD}: {v['command']}, commit {v['commit']}")


if __name__ == "__main__":
    main(sys.argv[1:])
