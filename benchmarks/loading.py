"""
data: corpus preparation (corpus.prepare, batched, all cores) against encoding one line at a time in Python, as
the reference binarized_data.py does. loader: can the data path feed 8 GPUs? One rank's loader on this CPU
against the micro-batches one H100 consumes at the README's estimate.
"""
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

import torch

import data
import train
from benchmarks.common import hf, interleaved, med, print_rows, row
from corpus import file_documents, prepare, resolve_inputs
from machinery.tokenizer import load_tokenizer

def reference_encode(files, encode):
    """As the reference binarized_data.py: one encode(line) call per line, in Python -> number of tokens."""
    n = 0
    for f in files:
        with open(f, encoding="utf-8-sig") as fh:
            n += sum(len(encode(line.strip())) for line in fh if line.strip())
    return n


def utf8_text(path):
    """Whether corpus.prepare reads this file (UTF-8 text without NUL); it skips the others, and so do we."""
    try:
        return "\x00" not in path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        return False


def bench_data(corpus, vocab, reps):
    """corpus.prepare vs two line-by-line loops: with the reference script's tokenizer (transformers'
    pure-Python BertTokenizer, BertTokenizerLegacy since transformers 5) and with the Rust tokenizer
    corpus.prepare itself uses."""
    files = [f for f in resolve_inputs(corpus) if utf8_text(f)]
    tf, fast = hf(), load_tokenizer(vocab)
    slow = (getattr(tf, "BertTokenizerLegacy", None) or tf.BertTokenizer)(str(vocab), do_lower_case=True)
    counts, runs = {}, iter(range(1 << 30))
    with tempfile.TemporaryDirectory() as tmp:
        def ours():  # a fresh folder each time, or prepare() finds it up to date
            with contextlib.redirect_stderr(io.StringIO()):
                meta = prepare([str(f) for f in files], Path(tmp) / f"shards{next(runs)}",
                                       vocab=str(vocab))
            counts["ours"] = sum(s["tokens"] for s in meta["splits"].values())
        t = interleaved({"ours": ours, "python": lambda: counts.update(python=reference_encode(
                             files, lambda x: slow.encode(x, add_special_tokens=False))),
                         "rust": lambda: counts.update(rust=reference_encode(
                             files, lambda x: fast.encode(x, add_special_tokens=False).ids))}, reps, warmup=0)
    if counts["ours"] != counts["rust"]:
        raise AssertionError(f"corpus.prepare wrote {counts['ours']} tokens, the line-by-line loop "
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
    files = [f for f in resolve_inputs(corpus) if utf8_text(f)]
    # the corpus's paragraphs joined into documents of 20,000 characters (about 4,000 tokens, as a Wikipedia
    # article or packed BookCorpus rows), so that sequences are 512 tokens long as in the full run
    text = " ".join(" ".join(doc.split()) for f in files for doc in file_documents(f))
    with tempfile.TemporaryDirectory() as tmp:
        docs = (text[i:i + 20_000] for i in range(0, len(text), 20_000))
        (Path(tmp) / "long.txt").write_text("\n\n".join(docs))
        with contextlib.redirect_stderr(io.StringIO()):
            prepare([str(Path(tmp) / "long.txt")], Path(tmp) / "shards", vocab=str(vocab),
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
