"""
What every benchmark shares: the model sizes, the same weights on both sides (a perturbed random BERT saved by
transformers and loaded into ours; our student of it loaded into DistilBertForMaskedLM, outputs asserted equal),
timing in interleaved rounds, the rows of the results table, and the FLOPs of a distillation step.
"""
import statistics
import time
from pathlib import Path

import torch

import data
from machinery.hf import load_pretrained, save_pretrained
from model import BertConfig, student_from_teacher

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
BASE = dict(vocab_size=30522, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
            max_position=512)
MINILM = dict(vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536,
              max_position=512)  # the quickstart's teacher, all-MiniLM-L6-v2
QUICK = dict(vocab_size=512, hidden_size=64, num_layers=4, num_heads=4, intermediate_size=128,
             max_position=128)
TOL = 1e-4     # largest |difference| of logits and hidden states between ours and transformers
NOISE = 1.02   # an inference ratio up to this counts as "no slower" (run-to-run spread on an idle 2-core machine)


def hf():
    try:
        import transformers
    except ImportError:
        raise SystemExit("the benchmarks compare with transformers, which is not installed: "
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



def synchronizer(dev):
    """A function that waits for the device's queued work (CUDA); nothing to wait for on the CPU."""
    return (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)



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



def train_flops_per_token(t: BertConfig, s: BertConfig, L):
    """Model FLOPs per token of one distillation step (a multiply-add is 2 FLOPs; recomputation is not
    counted): teacher forward F_t plus student forward and backward 3 F_s, where F = layers x (2 (4 d^2 + 2 d
    d_ff) for the matmuls + 4 L d for QK^T and AV) + 2 (d^2 + d V) for the MLM head (transform and decoder) on
    every token."""
    def fwd(c):
        d = c.hidden_size
        return c.num_layers * (8 * d * d + 4 * d * c.intermediate_size + 4 * L * d) + 2 * (d * d + d * c.vocab_size)
    return fwd(t) + 3 * fwd(s)



COLUMNS = ("measure", "ours", "reference", "ratio", "target", "met")


def print_rows(rows):
    for r in rows:
        print("  " + " | ".join(str(r[c]) for c in COLUMNS), flush=True)
