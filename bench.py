"""
Speed and memory of this codebase against transformers, measured side by side in one run (issue #7).

    python bench.py                           # every section at BERT-base size (about 15 min on 2 idle cores)
    python bench.py --only inference,table3   # sections: inference, table3, train, data, loader, cpu-bf16,
                                              # cpu-share, gpu, inference-gpu (loader: can the data feed 8 GPUs?)
    python bench.py --quick                   # tiny shapes: a smoke test of the whole script (tests/test_bench.py)

  inference  our teacher vs BertForMaskedLM, our student vs DistilBertForMaskedLM, full MLM logits, batch 1
             and 32 x length 128 and 512, float32. ratio = our median time / transformers' median time.
  inference-gpu  the same cells on the GPU in bf16 (skipped without CUDA).
  table3     the paper's Table 3: encoder + a one-output task head, batch 1, one pass over STS-B dev; speed-up
             = teacher time / student time, ours and transformers' (ForSequenceClassification) side by side.
  train      one distillation step (teacher forward, student forward + backward, 5 L_ce + 2 L_mlm + 1 L_cos,
             AdamW): train.forward_backward + train.make_optimizer vs the step built from transformers models
             with the reference formulas (full logits, masked_select, KLDivLoss(batchmean) T^2,
             CrossEntropyLoss, CosineEmbeddingLoss, torch's default AdamW).
  loss-memory  peak memory of L_ce forward + backward at 4096 rows x 30522 (float32): full logits against
             checkpointed chunks (soft_target_loss_chunked, the baseline of the fused head), fresh processes.
  data       prepare.prepare (batched, all cores) vs encoding one line at a time in Python, as
             binarized_data.py does.
  loader     can the data path feed 8 GPUs? batches/s of one rank's loader (rank 0 of 8: shards -> grouped
             batches -> data.mask_tokens) at 16 x 512 on this CPU vs the micro-batches/s one H100 consumes at
             the README's estimate (0.77 GFLOP per token at 40% of 989 TFLOP/s).
  cpu-bf16   what --dtype=auto weighs on a CPU: bf16 against float32 time of its matmul probe, our student's
             encoder forward and forward + backward at 8 x 128 (CPUs with AMX/AVX512-BF16 units gain, others
             lose).
  cpu-share  the CPU's float32 matmul peak (a 2048^3 product) and the share of it that the quickstart's
             distillation step reaches in float32 (train.forward_backward + AdamW, a MiniLM-sized teacher of 6 x
             384, its 3-layer student, 32 x 128, L_ce on every token as train.py's default), timed in turns in
             one process; FLOPs counted by train_flops_per_token.
  gpu        tokens/s and MFU of our step at length 512 in bf16, eager and torch.compile (skipped without
             CUDA).

Method. Both sides get the same weights: a perturbed random BertForMaskedLM is saved and loaded into ours with
hf.load_pretrained; our student_from_teacher is saved and loaded into DistilBertForMaskedLM. Outputs (and
the training losses and gradient norm) are asserted equal before anything is timed. Both sides run with the
same thread count; repetitions are interleaved A B B A ... after a warm-up, so that drift hits both alike;
medians are reported. Peak memory of a training step: each variant runs in a fresh process; once models, batch
and optimizer are built, freed heap goes back to the OS (malloc_trim) and the peak-RSS mark is reset
(/proc/self/clear_refs); the peak is the VmHWM reached during the steps minus the RSS at that point, so it
counts gradients and AdamW state (equal on both sides), activations and loss temporaries. Results are merged
into out/bench-results.json (written atomically) and out/bench-results.md (the README table). Timings on a
busy machine are noise: --max_load waits for a quiet one.
"""
import argparse
import contextlib
import ctypes
import gc
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import data
import losses
import prepare
import train
from finetune import Classifier, encode, read_glue
from machinery import device, files, fused_head
from machinery.config import ArgumentParser
from machinery.hf import load_pretrained, save_pretrained
from machinery.tokenizer import load_tokenizer
from model import BertConfig, student_from_teacher

ROOT = Path(__file__).resolve().parent
SHARED = ROOT.parent / "shared" / "data"
BASE = dict(vocab_size=30522, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
            max_position=512)
MINILM = dict(vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536,
              max_position=512)  # the quickstart's teacher, all-MiniLM-L6-v2
QUICK = dict(vocab_size=512, hidden_size=64, num_layers=4, num_heads=4, intermediate_size=128,
             max_position=128)
INFER_BASE = {(1, 128): 9, (1, 512): 5, (32, 128): 5, (32, 512): 3}  # (batch, length): timed runs per side
INFER_QUICK = {(1, 16): 3, (2, 32): 3}
H200_BF16_DENSE = 989e12
SECTIONS = ("inference", "table3", "train", "loss-memory", "data", "loader", "cpu-bf16", "cpu-share", "gpu",
            "inference-gpu")
TOL = 1e-4     # largest |difference| of logits and hidden states between ours and transformers
NOISE = 1.02   # an inference ratio up to this counts as "no slower" (run-to-run spread on an idle 2-core machine)


def hf():
    try:
        import transformers
    except ImportError:
        raise SystemExit("bench.py compares with transformers, which is not installed: "
                         "pip install -r requirements-dev.txt") from None
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def row(measure, ours, ref, ratio, target="", met=None):
    return {"measure": measure, "ours": ours, "reference": ref, "ratio": ratio, "target": target,
            "met": "" if met is None else "yes" if met else "NO"}


def med(xs):
    return statistics.median(xs)


def interleaved(fns, reps, warmup=1):
    """Run fns {name: callable} `warmup` times each, then `reps` timed rounds, the order reversed every other
    round (A B, B A, A B, ...). -> {name: [seconds, ...]}"""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times = {k: [] for k in fns}
    for r in range(reps):
        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return times


# ------------------------------------------------------------------------------------------------------------
# Same weights on both sides


def make_models(size, folder, seed=0):
    """Save a perturbed random BERT (transformers) as folder/teacher and our student of it as
    folder/student."""
    tf = hf()
    torch.manual_seed(seed)
    ref = tf.BertForMaskedLM(tf.BertConfig(
        vocab_size=size["vocab_size"], hidden_size=size["hidden_size"], num_hidden_layers=size["num_layers"],
        num_attention_heads=size["num_heads"], intermediate_size=size["intermediate_size"],
        max_position_embeddings=size["max_position"], hidden_act="gelu"))
    with torch.no_grad():  # random init leaves LayerNorms at 1/0 and biases at 0: make them non-trivial
        for name, p in ref.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    ref.save_pretrained(folder / "teacher")
    save_pretrained(student_from_teacher(load_pretrained(folder / "teacher")), folder / "student")


def load(folder, which):
    """(ours, transformers') teacher or student, in eval mode, from the same checkpoint folder."""
    cls = hf().BertForMaskedLM if which == "teacher" else hf().DistilBertForMaskedLM
    return load_pretrained(folder / which).eval(), cls.from_pretrained(folder / which).eval()


@torch.no_grad()
def check_same(ours, ref, name, tol=TOL, seed=0):
    """Assert ours and transformers' give the same MLM logits and last hidden states on a padded batch (with
    token types for a teacher); returns the largest |difference| over real tokens."""
    g, c = torch.Generator().manual_seed(seed), ours.cfg
    ids = torch.randint(1, c.vocab_size, (3, min(64, c.max_position)), generator=g)
    mask = torch.ones_like(ids)
    mask[1, ids.shape[1] // 2:], mask[2, 5:] = 0, 0
    kw = {"token_type_ids": torch.randint(0, c.type_vocab_size, ids.shape,
                                          generator=g)} if c.type_vocab_size else {}
    a, b = ours(ids * mask, mask, **kw), ref(input_ids=ids * mask, attention_mask=mask,
                                             output_hidden_states=True, **kw)
    real = mask.bool()
    d = max((a.logits - b.logits)[real].abs().max().item(),
            (a.hidden_states[-1] - b.hidden_states[-1])[real].abs().max().item())
    if not d <= tol:
        raise AssertionError(f"{name}: ours and transformers differ by {d:.3g} (> {tol}): not the same "
                             f"weights/function")
    return d


# ------------------------------------------------------------------------------------------------------------
# 1. Inference and 2. Table 3


def synchronizer(dev):
    """A function that waits for the device's queued work (CUDA); nothing to wait for on the CPU."""
    return (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)


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


# ------------------------------------------------------------------------------------------------------------
# 3. One distillation step; each variant in a fresh process, for its peak memory


def train_batch(B, L, vocab, seed=0, pad=True):
    """B x L random ids (rows shortened by up to a quarter when pad), masked with data.mask_tokens (uniform
    15%)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (B, L), generator=g)
    lengths = torch.tensor([L - i * L // (4 * B) if pad else L for i in range(B)])
    mask = (torch.arange(L)[None] < lengths[:, None]).long()
    masked, labels = data.mask_tokens(ids * mask, mask, mask_id=1, vocab_size=vocab, special_ids=[0],
                                      generator=g)
    return masked, mask, labels


def make_step(variant, folder, batch, temperature=2.0, alphas=(5.0, 2.0, 1.0)):
    """-> (step(update=True) returning the loss parts, student). variant: 'ours:<ce_chunk>' (train.py's step
    and optimizer; 'ours:<ce_chunk>:adamw' with torch's default AdamW instead, an ablation) or
    'transformers'."""
    ids, am, labels = batch
    if variant.startswith("ours"):
        teacher, student = (load_pretrained(folder / w) for w in ("teacher", "student"))
        cfg = train.TrainConfig(ce_chunk=int(variant.split(":")[1]), temperature=temperature,
                                alpha_ce=alphas[0],
                            alpha_mlm=alphas[1], alpha_cos=alphas[2], lr=1e-4)
        objective = train.Objective(student, teacher.requires_grad_(False), cfg)
        opt = train.make_optimizer(student, cfg) if not variant.endswith(":adamw") else None

        def forward_backward():
            return train.forward_backward(objective, teacher, [(ids, am, labels)], cfg)[0]
    else:  # the reference formulas on transformers models
        (_, teacher), (_, student), opt = load(folder, "teacher"), load(folder, "student"), None
        teacher.requires_grad_(False)
        kl, ce, cos = torch.nn.KLDivLoss(reduction="batchmean"), torch.nn.CrossEntropyLoss(), torch.nn.CosineEmbeddingLoss()

        def forward_backward():
            with torch.no_grad():
                t = teacher(input_ids=ids, attention_mask=am, output_hidden_states=True)
            s = student(input_ids=ids, attention_mask=am, output_hidden_states=True)
            real = am.bool().unsqueeze(-1)
            pick = lambda x: torch.masked_select(x, real.expand_as(x)).view(-1, x.shape[-1])  # noqa: E731
            parts = {"ce": kl(F.log_softmax(pick(s.logits) / temperature, -1),
                              F.softmax(pick(t.logits) / temperature, -1)) * temperature ** 2,
                     "mlm": ce(s.logits.view(-1, s.logits.shape[-1]), labels.view(-1))}
            s_h, t_h = pick(s.hidden_states[-1]), pick(t.hidden_states[-1])
            parts["cos"] = cos(s_h, t_h, s_h.new_ones(s_h.shape[0]))
            loss = alphas[0] * parts["ce"] + alphas[1] * parts["mlm"] + alphas[2] * parts["cos"]
            loss.backward()
            return {**parts, "total": loss}
    opt = opt or torch.optim.AdamW(student.parameters(), lr=1e-4)

    def step(update=True):
        parts = {k: float(v.detach()) for k, v in forward_backward().items()}
        if not update:  # the equality check: add the gradient norm; weights and gradients are left alone
            parts["grad_norm"] = float(torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None]).norm())
            return parts
        opt.step()
        opt.zero_grad(set_to_none=True)
        return parts
    return step, student


def losses_differ(a, b, rtol=1e-4):
    """Names of the loss parts and gradient norm on which two steps' checks differ by more than rtol
    (relative)."""
    return [k for k in ("ce", "mlm", "cos", "total",
                        "grad_norm") if not abs(a[k] - b[k]) <= rtol * abs(b[k]) + 1e-9]


def proc_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def train_worker(spec):
    """One variant in this fresh process: the equality check (dropout off), then timed steps and peak RSS."""
    torch.set_num_threads(spec["threads"])
    batch = train_batch(spec["batch"], spec["length"], spec["vocab"], pad=spec["pad"])
    step, student = make_step(spec["variant"], Path(spec["folder"]), batch)
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the OS, so the baseline is what is really held
    base = proc_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
    except OSError:
        base = proc_kib("VmHWM")  # cannot reset: the peak is then only seen if it exceeds the loading peak
    student.eval()  # dropout off: both sides must give the same losses
    check = step(update=False)
    student.zero_grad(set_to_none=True)
    student.train()
    times = []
    for i in range(1 + spec["steps"]):  # one warm-up step
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    Path(spec["result"]).write_text(json.dumps({"check": check, "step_s": times[1:],
                                                "tokens": int(batch[1].sum()),
                                                "peak_mb": (proc_kib("VmHWM") - base) / 1024}))


def bench_train(folder, vocab, B, L, variants, steps, rounds, threads, pad=True):
    variants = [v for v in variants if v != "transformers"] + ["transformers"]
    runs = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):  # one process per variant per round, the order reversed every other round
            for v in (variants if r % 2 == 0 else variants[::-1]):
                spec = dict(variant=v, folder=str(folder), batch=B, length=L, vocab=vocab, threads=threads,
                            steps=steps,
                            pad=pad, result=f"{tmp}/{r}-{v}.json")
                subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], check=True, cwd=ROOT)
                runs[v].append(json.loads(Path(spec["result"]).read_text()))
    res = {v: {"step_s": med([t for x in rs for t in x["step_s"]]),
               "all_step_s": [t for x in rs for t in x["step_s"]],
               "peak_mb": max(x["peak_mb"] for x in rs), "check": rs[0]["check"]} for v, rs in runs.items()}
    ref, tokens = res["transformers"], runs["transformers"][0]["tokens"]
    out = {"batch": B, "length": L, "real_tokens": tokens, "variants": res, "rows": []}
    for v, x in res.items():
        x.update(tokens_per_s=tokens / x["step_s"], speedup=ref["step_s"] / x["step_s"],
                 memory_ratio=x["peak_mb"] / ref["peak_mb"],
                 losses_differ=losses_differ(x["check"], ref["check"]))
    for v, x in res.items():
        out["rows"].append(row(f"{v}: s/step (tok/s), peak MB; loss {x['check']['total']:.6f}",
                               f"{x['step_s']:.2f} ({x['tokens_per_s']:.0f}), {x['peak_mb']:.0f}",
                               f"{ref['step_s']:.2f} ({ref['tokens_per_s']:.0f}), {ref['peak_mb']:.0f}",
                               f"{x['speedup']:.2f}x faster, {x['memory_ratio']:.2f}x memory",
                               ">= 1.15x, <= 0.6x" if v != "transformers" else "",
                               x["speedup"] >= 1.15 and x["memory_ratio"] <= 0.6 if v != "transformers" else None))
    print_rows(out["rows"])
    bad = {v: x["losses_differ"] for v, x in res.items() if x["losses_differ"]}
    if bad:
        raise AssertionError(f"steps that do not compute the transformers step's losses: {bad}; "
                             f"{ {v: x['check'] for v, x in res.items()} }")
    return out


# ------------------------------------------------------------------------------------------------------------
# loss-memory: peak memory of L_ce (forward + backward) at a BERT-base sized batch, full logits vs
# checkpointed chunks

def soft_target_loss_chunked(student_hidden, teacher_hidden, student_head, teacher_head,
                             temperature=2.0, denom=None, chunk_size=1024):
    """losses.soft_target_loss(student_head(student_hidden), teacher_head(teacher_hidden)) without ever
    holding the full (rows x vocab) logits: the memory baseline the fused head (fused_head.head_losses_fused) is
    measured against.

    Why recompute: a loop over chunks alone saves little. Autograd keeps every tensor that backward needs
    (each chunk's log-softmax output, teacher probabilities, ...) until backward runs, so the saved (chunk x
    V) tensors of all chunks are alive together. Wrapping each chunk in torch.utils.checkpoint keeps only the
    chunk's inputs; backward reruns that chunk's forward pass, at the cost of one extra forward pass of both
    heads per chunk."""
    from torch.utils.checkpoint import checkpoint

    def chunk_kl_sum(s_rows, t_rows):
        with torch.no_grad():
            t_logits = teacher_head(t_rows)
        return losses.kl_per_row(student_head(s_rows), t_logits, temperature).sum()

    n = student_hidden.shape[0]
    total = student_hidden.new_zeros(())
    for start in range(0, n, chunk_size):
        s_rows = student_hidden[start:start + chunk_size]
        t_rows = teacher_hidden[start:start + chunk_size].detach()
        total = total + checkpoint(chunk_kl_sum, s_rows, t_rows, use_reentrant=False)
    return total / (max(n, 1) if denom is None else denom) * temperature**2


def loss_memory_worker(spec):
    """One variant in this fresh process; its peak is the max resident set size (getrusage) minus the max RSS
    right after building the inputs."""
    import resource
    torch.manual_seed(0)
    torch.set_num_threads(spec["threads"])
    rows, d, vocab = spec["rows"], spec["hidden"], spec["vocab"]

    def make_head():
        emb = torch.nn.Embedding(vocab, d)
        decoder = torch.nn.Linear(d, vocab)
        decoder.weight = emb.weight  # tied to the word embeddings, as in BERT
        return torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.GELU(), torch.nn.LayerNorm(d), decoder)

    student_head, teacher_head = make_head(), make_head().requires_grad_(False)
    s_hidden, t_hidden = torch.randn(rows, d, requires_grad=True), torch.randn(rows, d)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    if spec["chunk_size"] == 0:
        loss = losses.soft_target_loss(student_head(s_hidden), teacher_head(t_hidden))
    else:
        loss = soft_target_loss_chunked(s_hidden, t_hidden, student_head, teacher_head,
                                        chunk_size=spec["chunk_size"])
    loss.backward()
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    torch.save({"loss": loss.detach(), "peak_mb": peak_mb, "grad_hidden": s_hidden.grad,
                "grad_emb": student_head[3].weight.grad}, spec["result"])


def bench_loss_memory(quick, threads, chunk_sizes=(2048, 1024, 512)):
    """L_ce forward + backward: full logits (chunk 0) against checkpointed chunks, each in a fresh process;
    the loss and gradients are asserted equal."""
    shape = dict(rows=256, hidden=64, vocab=512) if quick else dict(rows=4096, hidden=768, vocab=30522)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for chunk in (0, *chunk_sizes):
            spec = dict(kind="loss-memory", chunk_size=chunk // (16 if quick else 1), threads=threads,
                        result=f"{tmp}/{chunk}.pt", **shape)
            subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], check=True, cwd=ROOT)
            runs[spec["chunk_size"]] = torch.load(spec["result"])
    naive, out = runs.pop(0), {**shape, "rows": []}
    atol = 1e-7 if quick else 1e-9  # float32 rounding of the tiny shapes' larger gradients (max ~0.06)
    for chunk, r in runs.items():
        same = (torch.allclose(r["loss"], naive["loss"], rtol=1e-5)
                and torch.allclose(r["grad_hidden"], naive["grad_hidden"], rtol=1e-4, atol=atol)
                and torch.allclose(r["grad_emb"], naive["grad_emb"], rtol=1e-4, atol=atol))
        assert same, f"chunks of {chunk}: the loss or its gradients differ from the full logits'"
        out["rows"].append(row(f"L_ce peak MB, chunks of {chunk} vs full logits", f"{r['peak_mb']:.0f}",
                               f"{naive['peak_mb']:.0f}",
                               f"{r['peak_mb'] / max(naive['peak_mb'], 1e-9):.2f}x memory"))
    print_rows(out["rows"])
    return out


# ------------------------------------------------------------------------------------------------------------
# 4. Data preparation


def reference_encode(files, encode):
    """As the reference binarized_data.py: one encode(line) call per line, in Python -> number of tokens."""
    n = 0
    for f in files:
        with open(f, encoding="utf-8-sig") as fh:
            n += sum(len(encode(line.strip())) for line in fh if line.strip())
    return n


def utf8_text(path):
    """Whether prepare.prepare reads this file (UTF-8 text without NUL); it skips the others, and so do we."""
    try:
        return "\x00" not in path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        return False


def bench_data(corpus, vocab, reps):
    """prepare.prepare vs two line-by-line loops: with the reference script's tokenizer (transformers'
    pure-Python BertTokenizer, BertTokenizerLegacy since transformers 5) and with the Rust tokenizer
    prepare.prepare itself uses."""
    files = [f for f in prepare.resolve_inputs(corpus) if utf8_text(f)]
    tf, fast = hf(), load_tokenizer(vocab)
    slow = (getattr(tf, "BertTokenizerLegacy", None) or tf.BertTokenizer)(str(vocab), do_lower_case=True)
    counts, runs = {}, iter(range(1 << 30))
    with tempfile.TemporaryDirectory() as tmp:
        def ours():  # a fresh folder each time, or prepare() finds it up to date
            with contextlib.redirect_stderr(io.StringIO()):
                meta = prepare.prepare([str(f) for f in files], Path(tmp) / f"shards{next(runs)}",
                                       vocab=str(vocab))
            counts["ours"] = sum(s["tokens"] for s in meta["splits"].values())
        t = interleaved({"ours": ours, "python": lambda: counts.update(python=reference_encode(
                             files, lambda x: slow.encode(x, add_special_tokens=False))),
                         "rust": lambda: counts.update(rust=reference_encode(
                             files, lambda x: fast.encode(x, add_special_tokens=False).ids))}, reps, warmup=0)
    if counts["ours"] != counts["rust"]:
        raise AssertionError(f"prepare.prepare wrote {counts['ours']} tokens, the line-by-line loop "
                             f"{counts['rust']}")
    s = {k: med(v) for k, v in t.items()}
    out = {"files": len(files), "bytes": sum(f.stat().st_size for f in files), "tokens": counts, "seconds": s,
           "speedup": s["python"] / s["ours"], "speedup_same_tokenizer": s["rust"] / s["ours"]}
    n = counts["ours"]
    out["rows"] = [row(f"tokens/s, {n:,} tokens: vs per-line pure-Python BertTokenizer (reference script)",
                       f"{n / s['ours']:,.0f}", f"{n / s['python']:,.0f}", f"{out['speedup']:.2f}x", ">= 5x",
                       out["speedup"] >= 5),
                   row("tokens/s: vs per-line calls of the same Rust tokenizer", f"{n / s['ours']:,.0f}",
                       f"{n / s['rust']:,.0f}", f"{out['speedup_same_tokenizer']:.2f}x")]
    print_rows(out["rows"])
    return out


# ------------------------------------------------------------------------------------------------------------
# Can the data path feed 8 GPUs? One rank's loader on this CPU against what one GPU consumes

README_FLOPS_PER_TOKEN = 0.77e9  # README "Time and memory": teacher forward, student step, L_ce heads
H100_BF16_DENSE = 989e12


def gpu_batches_per_s(B, L, peak=H100_BF16_DENSE, mfu=0.4, flops_per_token=README_FLOPS_PER_TOKEN):
    """Micro-batches of B x L tokens that one GPU consumes per second at the README's estimated step rate."""
    return peak * mfu / flops_per_token / (B * L)


def bench_loader(corpus, vocab, B, L, n, world=8):
    """Batches per second one rank's loader (rank 0 of `world`) delivers on this CPU: prepared shards ->
    length-grouped, shuffled, rank-sharded batches (data.Batches), then dynamic masking (data.mask_tokens with
    the smoothed weights; in train.py it runs on the training device), against the micro-batches per second
    one H100 consumes at the README's estimate (gpu_batches_per_s)."""
    files = [f for f in prepare.resolve_inputs(corpus) if utf8_text(f)]
    # the corpus's paragraphs joined into documents of 20,000 characters (about 4,000 tokens, as a Wikipedia
    # article or packed BookCorpus rows), so that sequences are 512 tokens long as in the full run
    text = " ".join(" ".join(doc.split()) for f in files for doc in prepare.file_documents(f))
    with tempfile.TemporaryDirectory() as tmp:
        docs = (text[i:i + 20_000] for i in range(0, len(text), 20_000))
        (Path(tmp) / "long.txt").write_text("\n\n".join(docs))
        with contextlib.redirect_stderr(io.StringIO()):
            prepare.prepare([str(Path(tmp) / "long.txt")], Path(tmp) / "shards", vocab=str(vocab),
                            valid_fraction=0.01)
        shards = data.TokenData(Path(tmp) / "shards")
        loader = data.Batches(shards, "train", L, B, seed=0, rank=0, world_size=world)
        weights = data.smoothing_weights(shards.counts, shards.special)
        special = [v for k, v in shards.special.items() if k != "mask"]
        stream, tokens = train.micro_batches(loader), []

        def load():
            b = next(stream)
            tokens.append(int(b["attention_mask"].sum()))
            return b

        def load_and_mask():
            b = load()
            data.mask_tokens(b["input_ids"], b["attention_mask"], mask_id=shards.special["mask"],
                             vocab_size=shards.vocab_size, special_ids=special, weights=weights,
                             generator=data.mask_generator(0, b["epoch"], b["index"]))
        times = {}
        for name, f in (("load", load), ("load+mask", load_and_mask)):
            for _ in range(3):  # warm-up
                f()
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            times[name] = n / (time.perf_counter() - t0)
    need = gpu_batches_per_s(B, L)
    out = {"batch": B, "length": L, "world": world, "batches_per_rank_epoch": len(loader),
           "real_tokens_per_batch": statistics.mean(tokens), "batches_per_s": times,
           "gpu_batches_per_s": need, "gpu_tokens_per_s": need * B * L, "threads": torch.get_num_threads()}
    out["rows"] = [
        row(f"one H100 at the README's estimate ({README_FLOPS_PER_TOKEN / 1e9:.2f} GFLOP/token at 40% of "
            f"{H100_BF16_DENSE / 1e12:.0f} TFLOP/s): micro-batches of {B} x {L} per s", "", f"{need:.1f}", "",
            f"{need * B * L:,.0f} tok/s"),
        row(f"rank 0 of {world}, {B} x {L}: batches/s, shards -> grouped batches", f"{times['load']:.1f}",
            f"{need:.1f}", f"{times['load'] / need:.2f}x", ">= 1x", times["load"] >= need),
        row(f"rank 0 of {world}, {B} x {L}: batches/s, + masking on this CPU (data.mask_tokens, smoothed)",
            f"{times['load+mask']:.1f}", f"{need:.1f}", f"{times['load+mask'] / need:.2f}x", ">= 1x",
            times["load+mask"] >= need)]
    print_rows(out["rows"])
    return out


# ------------------------------------------------------------------------------------------------------------
# 5. GPU: tokens/s and MFU of our distillation step


def bench_cpu_bf16(folder, B, L, reps):
    """What --dtype=auto weighs on a CPU: bf16 against float32, in the same process. The probe
    device.auto_dtype uses, a large matrix product, and our student's encoder forward and training step under
    bf16 autocast."""
    student = load_pretrained(folder / "student").train()
    ids = torch.randint(1, student.cfg.vocab_size, (B, L))
    rows = []

    def forward(dtype):
        def f():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
                student(ids, return_logits=False)
        return f

    def step(dtype):
        def f():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
                h = student(ids, return_logits=False).hidden_states[-1]
            h.float().square().mean().backward()
        return f
    probe = med([device.bf16_speedup() for _ in range(reps)])
    rows.append(row("probe: 768x768 @ 768x3072, fp32 time / bf16 time", "", "", probe,
                    ">= 1.5: auto picks bf16"))
    for name, make in (("student encoder forward", forward), ("student forward + backward", step)):
        t = interleaved({"fp32": make("fp32"), "bf16": make("bf16")}, reps)
        rows.append(row(f"{name} {B} x {L}, ms: bf16 (ours) vs fp32 (reference)", med(t["bf16"]) * 1e3,
                        med(t["fp32"]) * 1e3, med(t["fp32"]) / med(t["bf16"]), "speed-up"))
    return {"rows": rows, "auto": str(device.auto_dtype(torch.device("cpu"))[0])}


def bench_cpu_share(B, L, reps, size, n=2048):
    """The distillation step's share of the CPU's float32 matmul peak, both measured here in turns (A B, B A,
    ...; medians), so that load and clock changes hit both alike. The peak is that of an n x n @ n x n
    product, repeated to last about as long as a tenth of a step; the step is train.py's (forward_backward
    with the default loss, L_ce on every real token in chunks of 1024, then the fused AdamW step); its FLOPs
    per real token are train_flops_per_token's count."""
    with tempfile.TemporaryDirectory() as tmp:
        make_models(size, Path(tmp))
        teacher = load_pretrained(Path(tmp) / "teacher").requires_grad_(False)
        student = load_pretrained(Path(tmp) / "student").train()
    ids, am, labels = train_batch(B, L, teacher.cfg.vocab_size)
    cfg = train.TrainConfig()
    objective, opt = train.Objective(student, teacher, cfg), train.make_optimizer(student, cfg)

    def step():
        train.forward_backward(objective, teacher, [(ids, am, labels)], cfg)
        opt.step()
        opt.zero_grad(set_to_none=True)
    a, b = torch.randn(n, n), torch.randn(n, n)
    t0 = time.perf_counter()
    step()
    t1 = time.perf_counter()
    a @ b
    repeat = max(1, round((t1 - t0) / 10 / max(time.perf_counter() - t1, 1e-6)))

    def matmul():
        for _ in range(repeat):
            a @ b
    t = interleaved({"matmul": matmul, "step": step}, reps)
    peak = 2 * n**3 * repeat / med(t["matmul"])
    tokens, flops = int(am.sum()), train_flops_per_token(teacher.cfg, student.cfg, L)
    tps = tokens / med(t["step"])
    share = flops * tps / peak
    rows = [row(f"float32 matmul peak ({n}^3 products, {torch.get_num_threads()} threads), GFLOP/s",
                f"{peak / 1e9:.1f}", "", "", ""),
            row(f"distillation step {B} x {L} ({tokens} real tokens, {flops / 1e6:.0f} MFLOP each): s/step, "
                f"tok/s, GFLOP/s; share of the peak", f"{med(t['step']):.2f}, {tps:,.0f}, "
                f"{flops * tps / 1e9:.1f}", f"{peak / 1e9:.1f}", f"{share:.1%}", ">= 35%", share >= 0.35)]
    print_rows(rows)
    return {"batch": B, "length": L, "real_tokens": tokens, "flops_per_token": flops, "peak_flops": peak,
            "step_s": t["step"], "matmul_s": t["matmul"], "matmul_repeat": repeat, "tokens_per_s": tps,
            "share": share, "rows": rows}


def train_flops_per_token(t: BertConfig, s: BertConfig, L):
    """Model FLOPs per token of one distillation step (a multiply-add is 2 FLOPs; recomputation is not
    counted): teacher forward F_t plus student forward and backward 3 F_s, where F = layers x (2 (4 d^2 + 2 d
    d_ff) for the matmuls + 4 L d for QK^T and AV) + 2 (d^2 + d V) for the MLM head (transform and decoder) on
    every token."""
    def fwd(c):
        d = c.hidden_size
        return c.num_layers * (8 * d * d + 4 * d * c.intermediate_size + 4 * L * d) + 2 * (d * d + d * c.vocab_size)
    return fwd(t) + 3 * fwd(s)


def bench_gpu(folder, B, L, steps, peak, ce_chunk=1024, device=None, backend="inductor"):
    """Tokens/s and MFU of the distillation step in bf16 autocast, eager and torch.compile'd as train.py
    --compile compiles (student, teacher forward, soft-target pass), the token counts given from the host as
    train.py's loader gives them (so the step never waits for the GPU). device=None: the
    CUDA device if there is one, else skipped. The tests run it on the CPU with backend="eager" (the code
    path, not the speed)."""
    if device is None and not torch.cuda.is_available():
        print("  no CUDA device here: GPU tokens/s and MFU not measured")
        return {"skipped": "no CUDA device", "rows": []}
    dev = torch.device(device or "cuda")
    cuda, sync = dev.type == "cuda", synchronizer(dev)
    out = {"batch": B, "length": L, "peak_flops": peak, "device": str(dev), "backend": backend, "rows": []}
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16)
    teacher = load_pretrained(folder / "teacher").to(dev, torch.bfloat16).requires_grad_(False)
    batch = train_batch(B, L, teacher.cfg.vocab_size, pad=False)
    ids, am, labels = (x.pin_memory().to(dev, non_blocking=True) if cuda else x for x in batch)
    counts = [train.token_counts(batch[1], batch[2])]  # counted on the host, as train.py's loader does
    name = torch.cuda.get_device_name(dev) if cuda else "cpu"
    for compiled in (False, True):
        cfg = train.TrainConfig(ce_chunk=ce_chunk, compile=compiled)
        wrap = (lambda f: torch.compile(f, backend=backend, dynamic=False)) if compiled else (lambda f: f)
        student = load_pretrained(folder / "student").to(dev).train()
        # as train.py --compile: the student, the teacher's forward and the fused head's soft-target pass
        objective = train.Objective(wrap(student), teacher, cfg,
                                    soft_targets=wrap(fused_head._soft_targets) if compiled else None)
        teacher_forward, opt = wrap(teacher), train.make_optimizer(student, cfg)

        def step():
            sums = train.forward_backward(objective, teacher_forward, [(ids, am, labels)], cfg, autocast,
                                          padded=[False], counts=counts)[0]
            opt.step()
            opt.zero_grad(set_to_none=True)
            return sums
        for _ in range(3):  # warm-up (and compilation)
            sums = step()
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        tps = B * L * steps / (time.perf_counter() - t0)
        flops = train_flops_per_token(teacher.cfg, student.cfg, L)
        key = "compiled" if compiled else "eager"
        out[key] = {"tokens_per_s": tps, "flops_per_token": flops, "mfu": flops * tps / peak,
                    "peak_gb": torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else None,
                    "last_warmup_losses": {k: float(v) for k, v in sums.items()}}
        out["rows"].append(row(f"{name} {key}, {B} x {L} bf16: tok/s, MFU",
                               f"{tps:,.0f}, {flops * tps / peak:.1%}", "", "", ">= 40%",
                               flops * tps / peak >= 0.4))
        del student, objective, opt, teacher_forward
    print_rows(out["rows"])
    return out


# ------------------------------------------------------------------------------------------------------------

COLUMNS = ("measure", "ours", "reference", "ratio", "target", "met")


def print_rows(rows):
    for r in rows:
        print("  " + " | ".join(str(r[c]) for c in COLUMNS), flush=True)


def markdown(res):
    lines = ["| section | " + " | ".join(COLUMNS) + " | load before; others' cores |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    for name, sec in res["sections"].items():
        lines += [f"| {name} | " + " | ".join(str(r[c]) for c in COLUMNS) +
                  f" | {sec['load_before']:.2f}; {sec['other_cores']:.2f} |" for r in sec.get("rows", [])]
    m = res["machine"]
    runs = {(sec.get("started"), sec.get("command")) for sec in res["sections"].values()}
    if len(runs) > 1:  # sections merged from several runs: say which run each comes from
        lines += [""] + [f"- {name}: run started {sec.get('started')}, `{sec.get('command')}`"
                         for name, sec in res["sections"].items()]
    return (f"{m['cpu']}, {m['cores']} cores ({res['threads']} torch threads), torch {m['torch']}, "
            f"transformers "
            f"{m['transformers']}, Python {m['python']}; {m['date']}; `{m['command']}`\n\n" + "\n".join(lines) + "\n")


def cpu_seconds():
    """(CPU seconds used by the whole machine, by this process and its finished children) since boot /
    start."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    t = os.times()
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK"), t.user + t.system + t.children_user + t.children_system


def wait_for_quiet(max_load, timeout):
    """Wait (up to timeout s) until the 1-min load average is below max_load and, over 15 s, other processes
    kept less than a quarter of a core busy (a 2-thread run next to one busy core is mostly threads
    waiting)."""
    t0 = time.time()
    while max_load and time.time() - t0 < timeout:
        (all0, own0), s0 = cpu_seconds(), time.time()
        time.sleep(15)
        all1, own1 = cpu_seconds()
        if os.getloadavg()[0] < max_load and (all1 - all0 - (own1 - own0)) / (time.time() - s0) < 0.25:
            break
    return os.getloadavg()[0]


def parser():
    p = ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny shapes, few repetitions: a smoke test")
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    p.add_argument("--out", default="out/bench-results.json")
    p.add_argument("--docs", default="", help="also write the table into this page's 'bench' region, "
                   "e.g. docs/benchmarks.md")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, both sides")
    p.add_argument("--max_load", type=float, default=0,
                   help="before each section wait (up to --wait s) until the "
                   "1-minute load average is below this (0: do not wait)")
    p.add_argument("--wait", type=float, default=1200)
    p.add_argument("--retries", type=int, default=0,
                   help="run a section again (after waiting) when other processes "
                   "kept more than 0.3 cores busy during it")
    p.add_argument("--vocab", default=str(SHARED / "bert-base-uncased" / "vocab.txt"))
    p.add_argument("--sts", default=str(SHARED / "glue" / "STS-B" / "dev.tsv"))
    p.add_argument("--corpus", nargs="+", default=[str(SHARED / "corpora")])
    p.add_argument("--sts_limit", type=int, default=None, help="the first N STS-B dev pairs only")
    p.add_argument("--train_shape", default=None, help="batch x length of the training step (default 8x128)")
    p.add_argument("--no_pad", action="store_true", help="training batch without padding")
    p.add_argument("--variants", default=None,
                   help="our steps, default ours:1024,ours:256,ours:0: ours:<ce_chunk> "
                   "(0: full logits at once); ours:<ce_chunk>:adamw with torch's default AdamW, as the "
                   "reference")
    p.add_argument("--train_steps", type=int, default=None, help="timed steps per process")
    p.add_argument("--train_rounds", type=int, default=None, help="processes per variant, interleaved")
    p.add_argument("--infer_cells", default=None,
                   help="inference cells and timed runs per side, e.g. 32x512:4,1x128:9 "
                   "(default: batch 1 and 32 x length 128 and 512)")
    p.add_argument("--infer_models", default="teacher,student", help="inference: teacher, student or both")
    p.add_argument("--gpu_batch", type=int, default=32)
    p.add_argument("--peak_tflops", type=float, default=H200_BF16_DENSE / 1e12, help="GPU peak, for MFU")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    if a.worker:
        spec = json.loads(a.worker)
        return (loss_memory_worker if spec.get("kind") == "loss-memory" else train_worker)(spec)
    torch.set_num_threads(a.threads)
    only = a.only.split(",")
    if set(only) - set(SECTIONS):
        raise SystemExit(f"--only={a.only}: sections are {', '.join(SECTIONS)}")
    size, vocab, sts, out = dict(QUICK if a.quick else BASE), Path(a.vocab), Path(a.sts), Path(a.out)
    if vocab.is_file():  # models and tokenizer must agree on the vocabulary (Table 3 feeds real token ids)
        size["vocab_size"] = load_tokenizer(vocab).get_vocab_size()
    res = results_so_far(a, size, out)
    run = sections(a, size, vocab, sts)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_models(size, folder)
        for name in only:
            res["sections"][name] = measure(name, lambda: run[name](folder), a, res)
            files.write_atomic(out, lambda t: t.write_text(json.dumps(res, indent=1)))  # a reader never sees half
            out.with_suffix(".md").write_text(markdown(res))
            if a.docs:
                files.write_region(a.docs, "bench", markdown(res))
    print(f"wrote {out} and {out.with_suffix('.md')}" + (f", and the table into {a.docs}" if a.docs else ""))
    return res


def results_so_far(a, size, out) -> dict:
    """This run's machine and settings; sections run separately accumulate, as long as the shapes are the
    same."""
    transformers = hf()
    res = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "python": platform.python_version(), "torch": torch.__version__,
                       "transformers": transformers.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
                       "command": " ".join(["python"] + sys.argv)},
           "threads": a.threads, "size": size, "quick": a.quick, "sections": {}}
    with contextlib.suppress(OSError, StopIteration):
        res["machine"]["cpu"] = next(x.split(":", 1)[1].strip() for x in open("/proc/cpuinfo")
                                     if x.startswith("model name"))
    if out.is_file():
        old = json.loads(out.read_text())
        if (old.get("size"), old.get("quick")) == (size, a.quick):
            res["sections"] = old.get("sections", {})
    return res


def sections(a, size, vocab, sts) -> dict:
    """{section: run(folder) -> its results}, from the command line's settings."""
    B, L = map(int, (a.train_shape or ("2x32" if a.quick else "8x128")).split("x"))
    cells = INFER_QUICK if a.quick else INFER_BASE
    if a.infer_cells:
        try:
            cells = {tuple(map(int, c.split(":")[0].split("x"))): int(c.split(":")[1])
                     for c in a.infer_cells.split(",")}
        except (ValueError, IndexError):
            raise SystemExit(f"--infer_cells={a.infer_cells}: expected BxL:runs[,BxL:runs...], "
                             f"e.g. 32x512:4") from None
    models = tuple(a.infer_models.split(","))
    if not models or set(models) - {"teacher", "student"}:
        raise SystemExit(f"--infer_models={a.infer_models}: expected teacher, student or teacher,student")
    variants = (a.variants or ("ours:16,ours:0" if a.quick else "ours:1024,ours:256,ours:0")).split(",")
    have_corpus = all(map(os.path.exists, a.corpus)) and vocab.is_file()
    return {
        "inference": lambda folder: bench_inference(folder, cells, models=models),
        "inference-gpu": lambda folder: bench_inference(folder, cells, "cuda", torch.bfloat16, models)
        if torch.cuda.is_available() else {"skipped": "no CUDA device", "rows": []},
        "table3": lambda folder: bench_table3(folder, vocab, sts, a.sts_limit or (20 if a.quick else None))
        if sts.is_file() and vocab.is_file() else {"skipped": f"{sts} or {vocab} not found"},
        "train": lambda folder: bench_train(folder, size["vocab_size"], B, L, variants,
                                            a.train_steps or (2 if a.quick else 3),
                                            a.train_rounds or (1 if a.quick else 2), a.threads,
                                            pad=not a.no_pad),
        "loss-memory": lambda folder: bench_loss_memory(a.quick, a.threads),
        "data": lambda folder: bench_data(a.corpus, vocab, 1 if a.quick else 3)
        if have_corpus else {"skipped": f"{a.corpus} or {vocab} not found"},
        "loader": lambda folder: bench_loader(a.corpus, vocab, *((4, 32, 10) if a.quick else (16, 512, 200)))
        if have_corpus else {"skipped": f"{a.corpus} or {vocab} not found"},
        "cpu-bf16": lambda folder: bench_cpu_bf16(folder, *((2, 32) if a.quick else (8, 128)),
                                                  2 if a.quick else 5),
        "cpu-share": lambda folder: bench_cpu_share(*((2, 32) if a.quick else (32, 128)), 2 if a.quick else 5,
                                                    QUICK if a.quick else MINILM, 256 if a.quick else 2048),
        "gpu": lambda folder: bench_gpu(folder, 2 if a.quick else a.gpu_batch, 64 if a.quick else 512,
                                        3 if a.quick else 20, a.peak_tflops * 1e12)}


def measure(name, run, a, res) -> dict:
    """One section, after waiting for a quiet machine; run again (--retries) when other processes were
    busy."""
    for attempt in range(1 + a.retries):
        before = wait_for_quiet(a.max_load, a.wait)
        print(f"{name}: {res['machine']['cpu']}, {a.threads} threads, 1-min load average {before:.2f}",
              flush=True)
        (all0, own0), t0 = cpu_seconds(), time.time()
        sec = run()
        (all1, own1), wall = cpu_seconds(), time.time() - t0
        others = max(0.0, (all1 - all0) - (own1 - own0)) / wall  # cores other processes kept busy meanwhile
        sec.update(load_before=before, other_cores=others, seconds=wall, date=time.strftime("%Y-%m-%d %H:%M"),
                   started=res["machine"]["date"], command=res["machine"]["command"], attempt=attempt)
        print(f"  {wall:.0f} s; 1-min load average {before:.2f} before; other processes used {others:.2f} "
              "cores meanwhile" + ("  (busy machine: these timings are noise)" if others > 0.3 else "")
              + (f"; skipped: {sec['skipped']}" if "skipped" in sec else ""), flush=True)
        if others <= 0.3:
            break
    return sec


if __name__ == "__main__":
    main()
