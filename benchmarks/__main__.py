"""
Speed and memory of this codebase against transformers, measured side by side in one run.

    python -m benchmarks                         # every section at BERT-base size (about 15 min on 2 idle cores)
    python -m benchmarks inference table3        # some sections: inference, table3, train, loss-memory, data,
                                                 # loader, cpu-bf16, cpu-share, gpu, inference-gpu
    python -m benchmarks --quick                 # tiny shapes: a smoke test of every section (tests/test_bench.py)

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
  data       corpus.prepare (batched, all cores) vs encoding one line at a time in Python, as
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
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.common import BASE, MINILM, QUICK, SHARED, make_models
from benchmarks.cpu import bench_cpu_bf16, bench_cpu_share
from benchmarks.gpu import H200_BF16_DENSE, bench_gpu
from benchmarks.inference import INFER_BASE, INFER_QUICK, bench_inference, bench_table3
from benchmarks.loading import bench_data, bench_loader
from benchmarks.run import markdown, measure, results_so_far
from benchmarks.training import bench_loss_memory, bench_train, loss_memory_worker, train_worker
from machinery import files
from machinery.config import check_fields, opt, parse_config
from machinery.tokenizer import load_tokenizer

SECTIONS = ("inference", "table3", "train", "loss-memory", "data", "loader", "cpu-bf16", "cpu-share", "gpu",
            "inference-gpu")


@dataclass
class BenchConfig:
    sections: tuple[str, ...] = opt(SECTIONS, "the sections to run, in order (default: all)", choices=SECTIONS,
                                    positional=True)
    quick: bool = opt(False, "tiny shapes, few repetitions: a smoke test")
    out: str = opt("out/bench-results.json", "results (merged with earlier runs of the same shapes)")
    docs: str = opt("", "also write the table into this page's 'bench' region, e.g. docs/benchmarks.md")
    threads: int = opt(os.cpu_count() or 1, "torch threads, both sides", range=">= 1")
    max_load: float = opt(0.0, "before each section wait (up to --wait s) until the 1-minute load average is "
                               "below this (0: do not wait)", range=">= 0")
    wait: float = opt(1200.0, "the longest wait for a quiet machine, seconds", range=">= 0")
    retries: int = opt(0, "run a section again (after waiting) when other processes kept more than 0.3 cores "
                          "busy during it", range=">= 0")
    vocab: str = opt(str(SHARED / "bert-base-uncased" / "vocab.txt"), "the vocabulary (table3, data, loader)")
    sts: str = opt(str(SHARED / "glue" / "STS-B" / "dev.tsv"), "STS-B dev.tsv (table3)")
    corpus: tuple[str, ...] = opt((str(SHARED / "corpora"),), "corpus files or folders (data, loader; repeatable)")
    sts_limit: int | None = opt(None, "the first N STS-B dev pairs only", range=">= 1")
    train_shape: str | None = opt(None, "batch x length of the training step (default 8x128)")
    no_pad: bool = opt(False, "training batch without padding")
    variants: str | None = opt(None, "our steps, default ours:1024,ours:256,ours:0: ours:<ce_chunk> (0: full "
                                     "logits at once); ours:<ce_chunk>:adamw with torch's default AdamW")
    train_steps: int | None = opt(None, "timed steps per process", range=">= 1")
    train_rounds: int | None = opt(None, "processes per variant, interleaved", range=">= 1")
    infer_cells: str | None = opt(None, "inference cells and timed runs per side, e.g. 32x512:4,1x128:9 "
                                        "(default: batch 1 and 32 x length 128 and 512)")
    infer_models: str = opt("teacher,student", "inference: teacher, student or both")
    gpu_batch: int = opt(32, "batch of the GPU section", range=">= 1")
    peak_tflops: float = opt(H200_BF16_DENSE / 1e12, "GPU peak, for MFU", range="> 0")
    worker: str = opt("", "internal: one measurement in this fresh process (its spec as JSON)")

    def __post_init__(self):
        check_fields(self)


def main(argv=None):
    try:
        a = parse_config(sys.argv[1:] if argv is None else list(argv), BenchConfig, doc=__doc__)
    except ValueError as e:
        raise SystemExit(f"benchmarks: error: {e}") from None
    if a.worker:
        spec = json.loads(a.worker)
        return (loss_memory_worker if spec.get("kind") == "loss-memory" else train_worker)(spec)
    torch.set_num_threads(a.threads)
    size, vocab, out = dict(QUICK if a.quick else BASE), Path(a.vocab), Path(a.out)
    if vocab.is_file():  # models and tokenizer must agree on the vocabulary (Table 3 feeds real token ids)
        size["vocab_size"] = load_tokenizer(vocab).get_vocab_size()
    run = sections(a, size, vocab, Path(a.sts))
    res = results_so_far(a, size, out)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_models(size, folder)
        for name in a.sections:
            res["sections"][name] = measure(name, lambda: run[name](folder), a, res)
            files.write_atomic(out, lambda t: t.write_text(json.dumps(res, indent=1)))  # a reader never sees half
            out.with_suffix(".md").write_text(markdown(res))
            if a.docs:
                files.write_region(a.docs, "bench", markdown(res))
    print(f"wrote {out} and {out.with_suffix('.md')}" + (f", and the table into {a.docs}" if a.docs else ""))
    return res


def inference_cells(a) -> dict:
    if not a.infer_cells:
        return INFER_QUICK if a.quick else INFER_BASE
    try:
        return {tuple(map(int, c.split(":")[0].split("x"))): int(c.split(":")[1]) for c in a.infer_cells.split(",")}
    except (ValueError, IndexError):
        raise SystemExit(f"--infer_cells={a.infer_cells}: expected BxL:runs[,BxL:runs...], e.g. 32x512:4") from None


def sections(a, size, vocab, sts) -> dict:
    """{section: run(folder) -> its results}, from the command line's settings."""
    B, L = map(int, (a.train_shape or ("2x32" if a.quick else "8x128")).split("x"))
    cells, models = inference_cells(a), tuple(a.infer_models.split(","))
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


if __name__ == "__main__":
    main()
