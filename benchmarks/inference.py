"""
inference: our teacher and student against transformers' (BertForMaskedLM, DistilBertForMaskedLM), full MLM
logits, interleaved, on the CPU in float32 or on a GPU in bf16. table3: the paper's Table 3, encoder and a
one-output head, batch 1, one pass over STS-B dev, ours and transformers' speed-ups side by side.
"""
import gc
import time

import torch

from benchmarks.common import NOISE, check_same, hf, interleaved, load, med, print_rows, row, synchronizer
from finetune import Classifier, encode, read_glue
from machinery.hf import load_pretrained
from machinery.tokenizer import load_tokenizer

INFER_BASE = {(1, 128): 9, (1, 512): 5, (32, 128): 5, (32, 512): 3}  # (batch, length): timed runs per side
INFER_QUICK = {(1, 16): 3, (2, 32): 3}


def bench_inference(folder, cells, device="cpu", dtype=torch.float32, models=("teacher", "student")):
    """Our model vs transformers' at each (batch, length) cell: same weights, same ids, full MLM logits. The
    outputs are checked equal in float32 on the CPU first; then both sides move to `device` and `dtype` (the
    GPU run: cuda, bfloat16) and are timed, interleaved."""
    dev = torch.device(device)
    sync = synchronizer(dev)

    def timed(f):  # a GPU call returns before its kernels finish: wait for them inside the timed call
        return lambda: (f(), sync())
    rows, cellsout, dtype_name = [], [], str(dtype).removeprefix("torch.")
    for which in models:
        ours, ref = load(folder, which)
        diff = check_same(ours, ref, which)
        ours, ref = ours.to(dev, dtype), ref.to(dev, dtype)
        label = which if (dev.type, dtype) == ("cpu", torch.float32) else f"{which} {dev.type} {dtype_name}"
        for (B, L), reps in cells.items():
            ids = torch.randint(1, ours.cfg.vocab_size, (B, L),
                                generator=torch.Generator().manual_seed(B * L)).to(dev)
            mask = torch.ones_like(ids)
            n = B if dev.type == "cuda" else 1  # warm-up: the full shape on a GPU (kernels, allocator), batch 1 on the CPU
            with torch.no_grad():
                interleaved({"o": timed(lambda: ours(ids[:n], mask[:n])),
                             "r": timed(lambda: ref(input_ids=ids[:n], attention_mask=mask[:n]))}, 0)
                t = interleaved({"ours": timed(lambda: ours(ids, mask)),
                                 "ref": timed(lambda: ref(input_ids=ids, attention_mask=mask))}, reps,
                                 warmup=0)
                lo, lr = ours(ids[:1], mask[:1]).logits.float(), ref(input_ids=ids[:1],
                                                                     attention_mask=mask[:1]).logits.float()
            o, r = med(t["ours"]), med(t["ref"])
            per_run = [a / b for a, b in zip(t["ours"], t["ref"])]
            cellsout.append({"model": which, "batch": B, "length": L, "ours_s": t["ours"], "ref_s": t["ref"],
                             "ratio": o / r, "max_abs_diff": diff, "device": str(dev), "dtype": dtype_name,
                             "timed_logits_max_abs_diff": (lo - lr).abs().max().item()})
            rows.append(row(f"{label} {B} x {L}, ms", f"{1e3 * o:.1f}", f"{1e3 * r:.1f}",
                            f"{o / r:.3f} ({min(per_run):.2f}-{max(per_run):.2f})", "<= 1.0", o / r <= NOISE))
            print_rows(rows[-1:])
        del ours, ref
        gc.collect()
    return {"rows": rows, "cells": cellsout, "dtype": dtype_name, "device": str(dev)}


def bench_table3(folder, vocab, sts, limit):
    """Encoder + one-output head (finetune.Classifier / transformers' ForSequenceClassification), batch 1,
    each STS-B dev pair once per model, the four models timed pair by pair in rotating order."""
    tf = hf()
    enc = encode(load_tokenizer(vocab), read_glue("STS-B", sts.parent, sts.stem)[:limit], 128)
    n = enc["attention_mask"].sum(1).tolist()
    inputs = [[enc[k][i:i + 1, :m] for k in ("input_ids", "attention_mask", "token_type_ids")] for i,
              m in enumerate(n)]
    torch.manual_seed(0)
    models = {"ours teacher": Classifier(load_pretrained(folder / "teacher"), 1).eval(),
              "ours student": Classifier(load_pretrained(folder / "student"), 1).eval(),
              "transformers teacher": tf.BertForSequenceClassification.from_pretrained(folder / "teacher",
                                                                                       num_labels=1),
              "transformers student": tf.DistilBertForSequenceClassification.from_pretrained(folder / "student", num_labels=1)}
    call = {"ours teacher": lambda m, x: m(*x), "ours student": lambda m, x: m(x[0], x[1]),
            "transformers teacher": lambda m, x: m(input_ids=x[0], attention_mask=x[1], token_type_ids=x[2]),
            "transformers student": lambda m, x: m(input_ids=x[0], attention_mask=x[1])}
    names, times = list(models), {k: [] for k in models}
    with torch.no_grad():
        for x in inputs[:20]:  # warm-up
            for k in names:
                call[k](models[k].eval(), x)
        for i, x in enumerate(inputs):
            for k in names[i % 4:] + names[:i % 4]:
                t0 = time.perf_counter()
                call[k](models[k], x)
                times[k].append(time.perf_counter() - t0)
    total = {k: sum(v) for k, v in times.items()}
    out = {"pairs": len(inputs), "mean_tokens": sum(n) / len(n), "seconds": total, "rows": []}
    for side in ("ours", "transformers"):
        t, s = total[f"{side} teacher"], total[f"{side} student"]
        per_pair = med([a / b for a, b in zip(times[f"{side} teacher"], times[f"{side} student"])])
        out[f"speedup_{side}"] = t / s
        out["rows"].append(row(f"{side}: teacher s / student s over {len(inputs)} pairs (median per-pair "
                               f"speed-up)",
                               f"{t:.2f}", f"{s:.2f}", f"{t / s:.2f}x ({per_pair:.2f}x)",
                               ">= 1.9x" if side == "ours" else "(paper 1.63x)",
                               t / s >= 1.9 if side == "ours" else None))
    out["rows"].append(row("ours vs transformers, teacher and student pass time",
                           f"{total['ours teacher']:.2f}, "
                           f"{total['ours student']:.2f}", f"{total['transformers teacher']:.2f}, "
                           f"{total['transformers student']:.2f}",
                           f"{total['ours teacher'] / total['transformers teacher']:.3f}, "
                           f"{total['ours student'] / total['transformers student']:.3f}", "<= 1.0"))
    print_rows(out["rows"])
    return out
