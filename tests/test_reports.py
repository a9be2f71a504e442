"""reports: the size/speed table (Table 3) on tiny models with parameters counted by hand, and the teacher/student
table (Tables 1-2) with retention worked out by hand; their command lines."""
import json
import sys

import pytest
import torch

import reports as rp
from machinery.hf import save_pretrained
from machinery.tokenizer import load_tokenizer
from model import Bert, BertConfig, count_parameters, student_from_teacher
from test_eval import SPECIAL, WORDS, vocab  # noqa: F401 (vocab: the fixture of a small vocabulary)


pytestmark = pytest.mark.usefixtures("one_thread")


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
    report = rp.size_speed({"teacher": teacher, "student": student}, load_tokenizer(vocab), sts_file(tmp_path),
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
    assert rp.layer_macs(teacher.cfg) == 4 * per_layer
    assert 0.5 <= report["int8"]["mlm_top1_agreement"] <= 1.0 and report["int8"]["mlm_max_abs_logit_diff"] >= 0
    md = rp.speed_markdown(report)
    assert "| student-int8 |" in md and "5 pairs" in md and "top1_agreement" in md


def test_speed_command_line(tmp_path, vocab):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(SPECIAL + WORDS), hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                     max_position=64)
    save_pretrained(Bert(cfg), tmp_path / "teacher", tokenizer_files=[vocab])
    rp.main(["speed", "--teacher", str(tmp_path / "teacher"), "--sts", str(sts_file(tmp_path)), "--limit", "3",
             "--batch-size", "2", "--quantize", "--out", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "speed.json").read_text())
    assert [r["model"] for r in report["rows"]] == ["teacher", "student", "student-int8"]
    assert (tmp_path / "out" / "speed.md").read_text().count("| student") == 2


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
    table = rp.results_table(RESULTS)  # teacher = the model with more parameters
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
    md = rp.table_markdown(table)
    assert "| SST-2 | accuracy | 90.0 | 87.0 | 96.7% |" in md
    assert "| MRPC | f1/accuracy | 90.0/80.0 | 85.0/75.0 | 94.1% |" in md
    assert "| **GLUE macro** (3 tasks) | score | 85.0 | 79.0 | 92.9% |" in md
    assert rp.results_table(RESULTS, teacher="small", student="big")["rows"][0]["retention"] == pytest.approx(
        100 * 0.9 / 0.87)
    with pytest.raises(ValueError, match="two results"):
        rp.results_table(RESULTS + [result("big", "SST-2", 100, accuracy=0.5)])
    with pytest.raises(ValueError, match="name the teacher"):
        rp.results_table(RESULTS + [result("third", "SST-2", 10, accuracy=0.5)])


def test_table_command_writes_markdown_json_png(tmp_path, monkeypatch, capsys):
    paths = []
    for i, r in enumerate(RESULTS):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(r))
    rp.main(["table", "--results", *map(str, paths), "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| STS-B | pearson/spearman | 80.0/80.0 | 70.0/70.0 | 87.5% |" in md
    assert json.loads((tmp_path / "out" / "results.json").read_text())["glue"]["tasks"] == 3
    assert (tmp_path / "out" / "results.png").read_bytes()[:4] == b"\x89PNG"
    for name in ("matplotlib", "matplotlib.figure"):  # as if it were not installed
        monkeypatch.setitem(sys.modules, name, None)
    assert rp.bar_chart(rp.results_table(RESULTS), tmp_path / "x.png") is False
    assert "matplotlib is not installed" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
    (tmp_path / "bad.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(SystemExit, match=r"bad\.json: not a result of python -m finetune"):
        rp.main(["table", "--results", str(tmp_path / "bad.json"), "--out", str(tmp_path / "out")])
