"""eval.py: held-out MLM numbers on models whose answers are known in advance, the size/speed table on tiny models,
and the teacher/student table with retention worked out by hand."""
import json
import math
import sys

import pytest
import numpy as np
import torch
import torch.nn as nn

import eval as ev
from data import TokenData
from corpus import prepare
from machinery.tokenizer import load_tokenizer
from model import Bert, BertConfig, BertOutput, count_parameters, student_from_teacher
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


# ------------------------------------------------------------------------------------------------ size and speed

def sts_file(tmp_path, n=6):
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    pair = "a man is playing the guitar .\tthe dog runs ."
    rows = [f"{i}\tg\tf\t2012\t{i}\tn\tn\t{pair}\t{i / 2:.1f}\n" for i in range(n)]
    path = tmp_path / "STS-B" / "dev.tsv"
    path.parent.mkdir()
    path.write_text(head + "".join(rows))
    return path


def test_size_speed_table_on_tiny_models(tmp_path, vocab):
    V, d, I, P = len(SPECIAL + WORDS), 64, 256, 64
    torch.manual_seed(0)
    teacher = Bert(BertConfig(vocab_size=V, hidden_size=d, num_layers=4, num_heads=4, intermediate_size=I,
                              max_position=P, pooler=True))
    student = student_from_teacher(teacher)
    report = ev.size_speed({"teacher": teacher, "student": student}, load_tokenizer(vocab), sts_file(tmp_path),
                           limit=5, batch_size=2, quantize_student="student")
    rows = {r["model"]: r for r in report["rows"]}
    assert list(rows) == ["teacher", "student", "student-int8"] and report["pairs"] == 5
    # parameters by hand (no MLM head): embeddings word + position (+ 2 token types) + LayerNorm; per layer
    # qkv 3(d^2 + d), proj d^2 + d, two LayerNorms 4d, fc1 dI + I, fc2 Id + d; BERT head: pooler d^2 + d and
    # a linear d -> 1; DistilBERT head: pre_classifier d^2 + d and the same linear
    layer = 3 * (d * d + d) + d * d + d + 4 * d + d * I + I + I * d + d
    t_params = V * d + P * d + 2 * d + 2 * d + 4 * layer + d * d + d + d + 1
    s_params = V * d + P * d + 2 * d + 2 * layer + d * d + d + d + 1
    assert rows["teacher"]["parameters_M"] * 1e6 == pytest.approx(t_params)
    assert rows["student"]["parameters_M"] * 1e6 == pytest.approx(s_params)
    assert count_parameters(student)["total"] > s_params  # the MLM head is not counted in Table 3
    assert rows["student-int8"]["checkpoint_MB"] < rows["student"]["checkpoint_MB"] < rows["teacher"]["checkpoint_MB"]
    # float32 weights: 4 bytes a parameter plus a little serialisation overhead (the MLM head alone would add 17 kB)
    assert 4 * s_params < rows["student"]["checkpoint_MB"] * 2**20 < 4 * s_params + 10_000
    assert rows["teacher"]["speedup_cpu_bs1"] == 1.0 and all(r["cpu_bs1_s"] > 0 for r in rows.values())
    # 5 rounds, the models in turn; the bound: 4 layers against 2 of the same width at 32 tokens, by hand
    assert all(len(r["cpu_bs1_runs"]) == 5 for r in rows.values())
    assert rows["student"]["cpu_bs1_s"] == pytest.approx(sorted(rows["student"]["cpu_bs1_runs"])[2])
    assert rows["student"]["speedup_bound"] == pytest.approx(2.0) and rows["teacher"]["speedup_bound"] == 1.0
    per_layer = 4 * d * d + 2 * d * I + 2 * 32 * d
    assert ev.layer_macs(teacher.cfg) == 4 * per_layer
    assert 0.5 <= report["int8"]["mlm_top1_agreement"] <= 1.0 and report["int8"]["mlm_max_abs_logit_diff"] >= 0
    md = ev.speed_markdown(report)
    assert "| student-int8 |" in md and "5 pairs" in md and "top1_agreement" in md


def test_speed_and_mlm_command_lines(tmp_path, vocab, the_corpus, capsys):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(SPECIAL + WORDS), hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                     max_position=64)
    save_pretrained(Bert(cfg), tmp_path / "teacher", tokenizer_files=[vocab])
    ev.main(["speed", "--teacher", str(tmp_path / "teacher"), "--sts", str(sts_file(tmp_path)), "--limit", "3",
             "--batch-size", "2", "--quantize", "--out", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "speed.json").read_text())
    assert [r["model"] for r in report["rows"]] == ["teacher", "student", "student-int8"]
    assert (tmp_path / "out" / "speed.md").read_text().count("| student") == 2
    ev.main(["mlm", "--model", str(tmp_path / "teacher"), "--data", str(the_corpus.folder), "--out",
             str(tmp_path / "mlm.json")])
    assert set(json.loads((tmp_path / "mlm.json").read_text())[str(tmp_path / "teacher")]) == \
        {"accuracy", "perplexity", "tokens"}


# ------------------------------------------------------------------------------------------------ results table

def result(name, task, params, **median):
    return {"name": name, "task": task, "parameters": params, "median": median}


RESULTS = [result("big", "SST-2", 100, accuracy=0.9), result("small", "SST-2", 60, accuracy=0.87),
           result("big", "MRPC", 100, f1=0.9, accuracy=0.8), result("small", "MRPC", 60, f1=0.85, accuracy=0.75),
           result("small", "STS-B", 60, pearson=0.7, spearman=0.7),
           result("big", "STS-B", 100, pearson=0.8, spearman=0.8),
           result("big", "squad", 100, exact_match=0.8, f1=0.88), result("small", "squad", 60, exact_match=0.7, f1=0.8),
           result("small", "RTE", 60, accuracy=0.6)]  # no teacher result for RTE: left out


def test_results_table_retention_by_hand():
    table = ev.results_table(RESULTS)  # teacher = the model with more parameters
    assert (table["teacher"], table["student"]) == ("big", "small")
    rows = {r["task"]: r for r in table["rows"]}
    assert list(rows) == ["SST-2", "MRPC", "STS-B", "squad"]
    assert rows["SST-2"]["retention"] == pytest.approx(100 * 0.87 / 0.9)      # 96.67
    assert rows["MRPC"]["retention"] == pytest.approx(100 * 0.8 / 0.85)       # task score = mean(F1, acc)
    assert rows["STS-B"]["retention"] == pytest.approx(87.5)
    assert rows["squad"]["retention"] == pytest.approx(100 * 0.75 / 0.84)     # mean(EM, F1); not part of GLUE
    # GLUE macro over SST-2, MRPC, STS-B: teacher (0.9 + 0.85 + 0.8) / 3 = 0.85, student (0.87 + 0.8 + 0.7) / 3 = 0.79
    g = table["glue"]
    assert (g["tasks"], g["teacher"], g["student"]) == (3, pytest.approx(0.85), pytest.approx(0.79))
    assert g["retention"] == pytest.approx(100 * 0.79 / 0.85)
    md = ev.table_markdown(table)
    assert "| SST-2 | accuracy | 90.0 | 87.0 | 96.7% |" in md
    assert "| MRPC | f1/accuracy | 90.0/80.0 | 85.0/75.0 | 94.1% |" in md
    assert "| **GLUE macro** (3 tasks) | score | 85.0 | 79.0 | 92.9% |" in md
    assert ev.results_table(RESULTS, teacher="small", student="big")["rows"][0]["retention"] == pytest.approx(
        100 * 0.9 / 0.87)
    with pytest.raises(ValueError, match="two results"):
        ev.results_table(RESULTS + [result("big", "SST-2", 100, accuracy=0.5)])
    with pytest.raises(ValueError, match="name the teacher"):
        ev.results_table(RESULTS + [result("third", "SST-2", 10, accuracy=0.5)])


def test_table_command_writes_markdown_json_png(tmp_path, monkeypatch, capsys):
    paths = []
    for i, r in enumerate(RESULTS):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(r))
    ev.main(["table", "--results", *map(str, paths), "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| STS-B | pearson/spearman | 80.0/80.0 | 70.0/70.0 | 87.5% |" in md
    assert json.loads((tmp_path / "out" / "results.json").read_text())["glue"]["tasks"] == 3
    assert (tmp_path / "out" / "results.png").read_bytes()[:4] == b"\x89PNG"
    for name in ("matplotlib", "matplotlib.figure"):  # as if it were not installed
        monkeypatch.setitem(sys.modules, name, None)
    assert ev.bar_chart(ev.results_table(RESULTS), tmp_path / "x.png") is False
    assert "matplotlib is not installed" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
    (tmp_path / "bad.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(SystemExit, match=r"bad\.json: not a finetune.py result"):
        ev.main(["table", "--results", str(tmp_path / "bad.json"), "--out", str(tmp_path / "out")])


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
