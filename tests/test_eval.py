"""eval.py: held-out MLM numbers on models whose answers are known in advance, perplexity, and paired
differences with their standard errors worked out by hand. (The size/speed and results tables: test_reports.py.)"""
import json
import math

import pytest
import numpy as np
import torch
import torch.nn as nn

import eval as ev
from data import TokenData
from corpus import prepare
from model import Bert, BertConfig, BertOutput
from machinery.hf import save_pretrained

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "a", "man", "dog", "is", "runs", "playing", "guitar", "."]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(SPECIAL + WORDS) + "\n")
    return path


@pytest.fixture(scope="module")
def the_corpus(tmp_path_factory, vocab):
    """Twelve documents, each the word 'the' 30 times: every masked token's answer is 'the' (id 5)."""
    d = tmp_path_factory.mktemp("corpus")
    (d / "c.txt").write_text("\n\n".join(" ".join(["the"] * 30) for _ in range(12)) + "\n")
    prepare([d / "c.txt"], d / "shards", vocab=vocab, valid_fraction=0.5)
    return TokenData(d / "shards")


class Fixed(nn.Module):
    """A 'model' whose logits are the same vector at every position."""

    def __init__(self, logits):
        super().__init__()
        self.z = nn.Parameter(logits)

    def forward(self, ids, attention_mask=None, logits_at=None):
        rows = int(logits_at.sum()) if logits_at is not None else ids.numel()
        return BertOutput(self.z.expand(rows, -1), ())


def test_mlm_eval_known_answers(the_corpus):
    V = the_corpus.vocab_size
    assert V == len(SPECIAL + WORDS)
    # uniform logits: loss ln V per token, so perplexity exactly V; argmax is id 0 ([PAD]), never a label
    uniform = ev.mlm_eval(Fixed(torch.zeros(V)), the_corpus, batch_size=2)
    assert uniform["perplexity"] == pytest.approx(V) and uniform["accuracy"] == 0.0
    # logit ln(V - 1) on 'the', 0 elsewhere: p(the) = (V-1) / ((V-1) + (V-1)) = 1/2 -> perplexity 2, accuracy 1
    z = torch.zeros(V)
    z[5] = math.log(V - 1)
    oracle = ev.mlm_eval(Fixed(z), the_corpus, batch_size=2)
    assert oracle["perplexity"] == pytest.approx(2.0) and oracle["accuracy"] == 1.0
    # the same masked tokens for both models (fixed seed); about 15% of the 'the' tokens
    eligible = sum(len(s) - 2 for s in (the_corpus.sequences("valid", 128)[i] for i in range(6)))
    assert oracle["tokens"] == uniform["tokens"] and 0.07 < oracle["tokens"] / eligible < 0.25
    other = ev.mlm_eval(Fixed(z), the_corpus, batch_size=2, seed=99)
    assert other["tokens"] != oracle["tokens"]  # another seed masks other tokens (180 tokens: equal is unlikely)
    assert ev.mlm_eval(Fixed(z), the_corpus, batch_size=2, max_batches=1)["tokens"] < oracle["tokens"]
    # every batch holds the same two sequences, yet each gets its own mask (seeded by the batch index)
    seen = []
    record = Fixed(z)
    record.forward = lambda ids, attention_mask=None, logits_at=None: seen.append(logits_at) or Fixed.forward(
        record, ids, attention_mask, logits_at)
    ev.mlm_eval(record, the_corpus, batch_size=2)
    assert len(seen) == 3 and not torch.equal(seen[0], seen[1])


def test_mlm_eval_same_seed_same_numbers(the_corpus):
    torch.manual_seed(0)
    model = Bert(BertConfig(vocab_size=the_corpus.vocab_size, hidden_size=16, num_layers=1, num_heads=2,
                            intermediate_size=32, max_position=64))
    a, b = ev.mlm_eval(model, the_corpus, batch_size=4), ev.mlm_eval(model, the_corpus, batch_size=4)
    assert a == b and 0 <= a["accuracy"] <= 1 and a["perplexity"] > 1

def test_mlm_command_line(tmp_path, vocab, the_corpus):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(SPECIAL + WORDS), hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                     max_position=64)
    save_pretrained(Bert(cfg), tmp_path / "teacher", tokenizer_files=[vocab])
    ev.main(["mlm", "--model", str(tmp_path / "teacher"), "--data", str(the_corpus.folder), "--out",
             str(tmp_path / "mlm.json")])
    assert set(json.loads((tmp_path / "mlm.json").read_text())[str(tmp_path / "teacher")]) == \
        {"accuracy", "perplexity", "tokens"}


def test_perplexity_of_a_diverged_model_is_inf_not_an_error():
    """Issue 14.2: math.exp(mean loss) raised OverflowError above ~709."""
    assert ev.perplexity(2.5) == math.exp(2.5) and ev.perplexity(709.5) == math.exp(709.5)
    assert ev.perplexity(710.0) == math.inf and ev.perplexity(1e6) == math.inf
    assert math.isnan(ev.perplexity(float("nan")))


def test_seeded_difference_by_hand():
    """Two models, two seeds each, four dev items, worked out by hand: per-seed accuracies A 0.75, 0.75 and
    B 0.50, 0.25, so delta = 0.75 - 0.375; seed variance 0/2 + 0.03125/2; the seed-averaged per-item
    differences are 0.5, 0.5, 0.5, 0 (sd 0.25 over 4 items: SE 0.125)."""
    a = [[1, 0, 1, 1], [1, 1, 1, 0]]
    b = [[0, 0, 1, 1], [1, 0, 0, 0]]
    d = ev.seeded_difference(a, b)
    assert d["delta"] == pytest.approx(0.375)
    assert d["se_seeds"] == pytest.approx(0.125)
    assert d["se_items"] == pytest.approx(0.125)
    assert d["se"] == pytest.approx(math.sqrt(2) * 0.125)
    assert d["seeds"] == [2, 2] and d["a"] == pytest.approx(0.75) and d["b"] == pytest.approx(0.375)
    # items 0-1 and 2-3 in two groups: cluster sums of (d - mean) are 0.25 and -0.25, so SE = sqrt(2 * 0.125) / 4
    g = ev.seeded_difference(a, b, groups=[0, 0, 1, 1])
    assert g["se_items"] == pytest.approx(math.sqrt(2 * 0.125) / 4)
    # one seed of a model: its seed noise is unknown, so no SE and no verdict
    one = ev.seeded_difference(a[:1], b)
    assert one["se"] == math.inf and ev.verdict(one["delta"], one["se"]) == "ties within noise"


def test_seeded_difference_bootstrap_metric():
    """A metric given as a function is bootstrapped over the items: for the mean itself, the bootstrap SE of
    the paired difference approaches the formula's sd(d) / sqrt(n) (times sqrt((n - 1) / n), the bootstrap's
    plug-in variance); the seed part is the same formula as without a metric."""
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 300)), rng.random((3, 300))
    mean = lambda rows, idx: float(np.mean(rows[idx]))
    boot = ev.seeded_difference(a, b, metric=mean, resamples=4000)
    exact = ev.seeded_difference(a, b)
    assert boot["delta"] == pytest.approx(exact["delta"]) and boot["se_seeds"] == pytest.approx(exact["se_seeds"])
    d = a.mean(0) - b.mean(0)
    assert boot["se_items"] == pytest.approx(d.std(ddof=0) / math.sqrt(300), rel=0.05)
    # Pearson against fixed labels: a model equal to the labels has r = 1 on every resample
    labels = rng.random(50)
    r = lambda rows, idx: float(np.corrcoef(rows[idx], labels[idx])[0, 1])
    same = ev.seeded_difference([labels, labels], [labels, labels], metric=r, resamples=50)
    assert same["delta"] == pytest.approx(0.0) and same["se"] == pytest.approx(0.0, abs=1e-12)
