"""
train: one distillation step (train.py's forward_backward and optimizer) against the step built from
transformers models with the reference formulas, each variant in a fresh process for its peak memory.
loss-memory: the peak memory of L_ce forward + backward, full logits against checkpointed chunks.
"""
import contextlib
import ctypes
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import losses
import train
from benchmarks.common import ROOT, load, med, print_rows, row, train_batch
from machinery.hf import load_pretrained


def run_worker(spec: dict):
    """One measurement in a fresh process: python -m benchmarks --worker=<spec as JSON>."""
    subprocess.run([sys.executable, "-m", "benchmarks", "--worker=" + json.dumps(spec)], check=True, cwd=ROOT)


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
                run_worker(spec)
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
            run_worker(spec)
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
