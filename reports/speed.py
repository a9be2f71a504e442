"""
Size and speed, the paper's Table 3 (Sanh et al. 2019, Section 4): parameters, checkpoint size and "inference
time of a full pass of GLUE task STS-B ... on CPU with a batch size of 1", plus throughput at a larger batch, GPU
columns when there is one, and the student quantised to int8 (dynamic quantisation of its nn.Linear layers) as
an option.
"""
import copy
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from eval import mlm_eval
from finetune import Classifier
from tasks import encode, read_glue


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
