"""tasks/: the official metrics against hand-computed values (and scipy/sklearn), GLUE/IMDb/SQuAD readers on small
files with each format's quirks, the features of sentence pairs, SQuAD's windows and the answers mapped back."""
import json
import math

import numpy as np
import pytest
import torch

import tasks
from machinery.tokenizer import load_tokenizer

WORDS = ["the", "a", "an", "cat", "dog", "sat", "on", "mat", "good", "bad", "movie", ".", ",", "?", "\"", "'"]
WORDS += [f"tok{i}" for i in range(80)]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    return path


@pytest.fixture(scope="module")
def tok(vocab):
    return load_tokenizer(vocab)


def test_accuracy_and_f1():
    assert tasks.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    # tp = 2 (positions 0, 4), fp = 1 (position 1), fn = 1 (position 3): P = R = 2/3, F1 = 2/3
    assert tasks.f1_binary([1, 1, 0, 0, 1], [1, 0, 0, 1, 1]) == pytest.approx(2 / 3)
    # tp = 1, fp = 0, fn = 2: P = 1, R = 1/3, F1 = 2 * 1/3 / (4/3) = 0.5
    assert tasks.f1_binary([1, 0, 0], [1, 1, 1]) == pytest.approx(0.5)
    assert tasks.f1_binary([0, 0, 0], [1, 0, 1]) == 0.0  # no true positive


def test_matthews_by_hand():
    gold = [1, 1, 1, 1, 0, 0, 0]
    pred = [1, 1, 1, 0, 1, 0, 0]  # tp 3, fn 1, fp 1, tn 2: (3*2 - 1*1) / sqrt(4 * 4 * 3 * 3) = 5 / 12
    assert tasks.matthews_corrcoef(pred, gold) == pytest.approx(5 / 12)
    assert tasks.matthews_corrcoef([0, 1, 0, 1], [0, 1, 0, 1]) == pytest.approx(1.0)
    assert tasks.matthews_corrcoef([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)
    assert tasks.matthews_corrcoef([1, 1, 1, 1], [0, 1, 0, 1]) == 0.0  # constant prediction: defined as 0


def test_pearson_spearman_with_ties():
    # x = [1, 2, 3], y = [2, 4, 7]: deviations [-1, 0, 1] and [-7/3, -1/3, 8/3]; sum of products 5,
    # sum of squares 2 and 114/9: r = 5 / sqrt(2 * 114 / 9)
    assert tasks.pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / math.sqrt(2 * 114 / 9))
    assert list(tasks.ranks([10, 20, 20, 30])) == [1, 2.5, 2.5, 4]
    assert list(tasks.ranks([3, 1, 3, 3])) == [3, 1, 3, 3]
    # ranks [1, 2.5, 2.5, 4] vs [1, 3, 2, 4]: deviations [-1.5, 0, 0, 1.5] and [-1.5, .5, -.5, 1.5];
    # sum of products 4.5, sums of squares 4.5 and 5: rho = 4.5 / sqrt(22.5) = sqrt(0.9)
    assert tasks.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(math.sqrt(0.9))
    assert tasks.spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)  # monotone, not linear


def test_metrics_agree_with_scipy_sklearn():
    import scipy.stats as stats  # requirements-dev.txt: the independent references
    import sklearn.metrics as sk
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 50), rng.integers(0, 5, 50)
    assert tasks.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])
    a, b = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
    assert tasks.matthews_corrcoef(a, b) == pytest.approx(sk.matthews_corrcoef(b, a))
    assert tasks.f1_binary(a, b) == pytest.approx(sk.f1_score(b, a))


def test_glue_score_averages_metrics_within_a_task_first():
    results = {"MRPC": {"f1": 0.9, "accuracy": 0.8}, "SST-2": {"accuracy": 0.9},
               "STS-B": {"pearson": 0.8, "spearman": 0.6}, "squad": {"f1": 0.1}}
    assert tasks.glue_score(results) == pytest.approx((0.85 + 0.9 + 0.7) / 3)  # squad is not GLUE
    with pytest.raises(KeyError, match="spearman"):
        tasks.glue_score({"STS-B": {"pearson": 0.8}})


def test_evaluate_picks_task_metrics():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])  # predictions 0, 1, 0, 1
    assert tasks.evaluate("MRPC", logits, torch.tensor([0, 1, 1, 1])) == {"f1": pytest.approx(0.8), "accuracy": 0.75}
    assert tasks.evaluate("cola", logits, torch.tensor([0, 1, 0, 1]))["mcc"] == pytest.approx(1.0)
    reg = tasks.evaluate("STS-B", torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([2.0, 4.0, 7.0]))
    assert reg["pearson"] == pytest.approx(5 / math.sqrt(2 * 114 / 9)) and reg["spearman"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------ SQuAD scoring

def test_normalize_answer():
    assert tasks.normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert tasks.normalize_answer("an apple a day") == "apple day"
    assert tasks.normalize_answer("theater") == "theater"  # articles only as whole words
    assert tasks.normalize_answer("U.S.A.") == "usa"


def test_squad_em_f1():
    assert tasks.squad_em_f1("the Denver Broncos", ["Denver Broncos", "Broncos"]) == (1.0, 1.0)
    # pred [denver, broncos, won], gold [broncos]: overlap 1, P = 1/3, R = 1, F1 = 0.5
    assert tasks.squad_em_f1("Denver Broncos won", ["Broncos"]) == (0.0, pytest.approx(0.5))
    # max over golds: vs "Denver Broncos team" overlap 2, P = R = 2/3
    assert tasks.squad_em_f1("Denver Broncos won", ["Broncos", "Denver Broncos team"]) == (0.0, pytest.approx(2 / 3))
    # repeated tokens count once per occurrence in the gold: [cat, cat] vs [cat]: P = 1/2, R = 1, F1 = 2/3
    assert tasks.squad_em_f1("the cat cat", ["cat"]) == (0.0, pytest.approx(2 / 3))
    # [cat, cat] vs [cat, cat, dog]: overlap 2 (counted with multiplicity), P = 1, R = 2/3, F1 = 0.8
    assert tasks.squad_em_f1("cat cat", ["cat cat dog"]) == (0.0, pytest.approx(0.8))
    assert tasks.squad_em_f1("nothing", ["cat"]) == (0.0, 0.0)
    ex = [tasks.SquadExample("1", "q", "c", ["cat"], [0]), tasks.SquadExample("2", "q", "c", ["a dog"], [0])]
    assert tasks.squad_evaluate({"1": "Cat.", "2": "dog sat"}, ex) == {"exact_match": 0.5, "f1": pytest.approx(5 / 6)}


def test_squad_windows_cover_the_answer_and_map_back(tok):
    words = [f"tok{i}" for i in range(60)]
    words[40] = "tok40 ,"  # punctuation is its own token: 61 context tokens
    context = " ".join(words)
    answer = "tok41 tok42 tok43"
    ex = tasks.SquadExample("q1", "tok1 tok2 ?", context, [answer], [context.index(answer)])
    t, mapping = tasks.prepare_squad_features(tok, [ex], max_len=24, doc_stride=8, max_query=64)
    # question 3 tokens -> 24 - 3 - 3 = 18 context tokens per window; windows start at 0, 8, ..., 48 (48 + 13 = 61)
    assert len(mapping) == 7 and t["input_ids"].shape == (7, 24)
    covered = set()
    for f, m in enumerate(mapping):
        offs = m["offsets"]
        covered |= {o for o in offs if o is not None}
        n = int(t["attention_mask"][f].sum())
        assert t["token_type_ids"][f, :5].tolist() == [0] * 5 and t["token_type_ids"][f, 5:n].tolist() == [1] * (n - 5)
        assert t["input_ids"][f, 0] == tok.token_to_id("[CLS]") and offs[:5] == [None] * 5 and offs[n - 1] is None
        s, e = int(t["start_positions"][f]), int(t["end_positions"][f])
        starts_in = {8 * f + k for k in range(18)}
        if {41, 42, 43, 44} <= starts_in:  # tokens 41..43 of the context (the comma is token 41) -> 42..44
            assert context[offs[s][0]:offs[e][1]] == answer
        else:
            assert s == e == 0
    assert len(covered) == 61
    assert sum(int(x) > 0 for x in t["start_positions"]) == 2  # windows starting at 32 and 40
    # predicting that span in one window gives exactly the answer text
    S, E = torch.zeros(7, 24), torch.zeros(7, 24)
    f = next(i for i in range(7) if t["start_positions"][i] > 0)
    S[f, t["start_positions"][f]], E[f, t["end_positions"][f]] = 5.0, 5.0
    assert tasks.squad_predict(S, E, mapping, [ex]) == {"q1": answer}
    # the best start/end pair is 5 tokens apart: with max_answer_len=3 it is not allowed
    S, E = torch.zeros(7, 24), torch.zeros(7, 24)
    S[0, 6], E[0, 10], E[0, 7] = 9.0, 9.0, 1.0
    assert tasks.squad_predict(S, E, mapping, [ex], max_answer_len=3) == {"q1": "tok1 tok2"}
    assert tasks.squad_predict(S, E, mapping, [ex])["q1"] == "tok1 tok2 tok3 tok4 tok5"


def test_squad_answer_start_must_have_max_context_in_its_window(tok):
    """BERT's run_squad.py: a token's score in a window is min(left, right context) + 0.01 * window length,
    and an answer may only start at a token in the window where that score is highest. Same 61-token context
    and 7 windows of 18 (starts 0, 8, ..., 48) as above; values worked out by hand."""
    words = [f"tok{i}" for i in range(60)]
    words[40] = "tok40 ,"
    context = " ".join(words)
    ex = tasks.SquadExample("q1", "tok1 tok2 ?", context, ["tok41"], [context.index("tok41")])
    t, mapping = tasks.prepare_squad_features(tok, [ex], max_len=24, doc_stride=8, max_query=64)
    first = 5  # [CLS] + 3 question tokens + [SEP]
    # context token 42 (tok41): window 4 (start 32) j=10 -> min(10, 7) = 7; window 5 (start 40) j=2 -> 2
    assert mapping[4]["max_context"][first + 10] and not mapping[5]["max_context"][first + 2]
    # context token 50 (tok49): window 5 j=10 -> 7; window 6 (start 48, 13 tokens) j=2 -> 2: window 5
    assert mapping[5]["max_context"][first + 10] and not mapping[6]["max_context"][first + 2]
    n_max = lambda c: sum(m["max_context"][first + c - 8 * f] for f, m in enumerate(mapping)
                          if 0 <= c - 8 * f < 18)
    assert all(n_max(c) == 1 for c in range(61))  # every context token has exactly one max-context window
    S, E = torch.zeros(7, 24), torch.zeros(7, 24)
    S[5, first + 2], E[5, first + 4] = 10.0, 10.0  # tok41 tok42 tok43 in window 5: tok41 lacks max context
    S[5, first + 10], E[5, first + 10] = 4.0, 4.0  # tok49 in window 5, its max-context window
    assert tasks.squad_predict(S, E, mapping, [ex]) == {"q1": "tok49"}


# ------------------------------------------------------------------------------------------------ readers

def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_glue_bom_quotes_header_and_test_set(tmp_path):
    write(tmp_path / "SST-2" / "train.tsv", "\ufeffsentence\tlabel\n\"a quoted\" word \t1\nit 's \" odd\t0\n")
    write(tmp_path / "SST-2" / "test.tsv", "index\tsentence\n0\tno label here\n")
    ex = tasks.read_glue("SST-2", tmp_path, "train")  # the GLUE root
    assert [(e.text_a, e.text_b, e.label) for e in ex] == [("\"a quoted\" word ", None, 1), ("it 's \" odd", None, 0)]
    assert [(e.text_a, e.label) for e in tasks.read_glue("sst-2", tmp_path / "SST-2", "test")] == [("no label here", None)]
    mrpc = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe said \" hi .\tA \"b\" c\n0\t3\t4\tx\ty\n"
    write(tmp_path / "MRPC" / "dev.tsv", mrpc)  # an unbalanced quote must not swallow the next line
    assert [(e.text_a, e.text_b, e.label) for e in tasks.read_glue("MRPC", tmp_path, "dev")] == \
        [("He said \" hi .", "A \"b\" c", 1), ("x", "y", 0)]


def test_glue_mnli_by_header_cola_without_header_stsb_float(tmp_path):
    head = "index\tpromptID\tpairID\tgenre\ts1_bp\ts2_bp\ts1_p\ts2_p\tsentence1\tsentence2\tlabel1\tgold_label\n"
    write(tmp_path / "MNLI" / "dev_matched.tsv", head + "0\t1\t2\tg\tb\tb\tp\tp\tA man .\tA dog .\tneutral\tneutral\n")
    write(tmp_path / "MNLI" / "dev_mismatched.tsv", head + "0\t1\t2\tg\tb\tb\tp\tp\tX\tY\tentailment\tcontradiction\n")
    assert [(e.text_a, e.text_b, e.label) for e in tasks.read_glue("MNLI", tmp_path, "dev")] == [("A man .", "A dog .", 2)]
    assert tasks.read_glue("MNLI", tmp_path, "dev_mismatched")[0].label == 0
    write(tmp_path / "CoLA" / "train.tsv", "gj04\t1\t\tThe sailors rode the breeze .\ngj04\t0\t*\tRode the .\n")
    write(tmp_path / "CoLA" / "test.tsv", "index\tsentence\n0\tBill left .\n")
    assert [(e.text_a, e.label) for e in tasks.read_glue("CoLA", tmp_path, "train")] == \
        [("The sailors rode the breeze .", 1), ("Rode the .", 0)]
    assert tasks.read_glue("CoLA", tmp_path, "test")[0].text_a == "Bill left ."
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    write(tmp_path / "STS-B" / "dev.tsv", head + "0\tg\tf\t2012\t1\tn\tn\tA man .\tA guy .\t4.750\n")
    assert tasks.read_glue("STS-B", tmp_path, "dev")[0].label == 4.75


def test_glue_errors_name_file_line_and_value(tmp_path):
    path = write(tmp_path / "SST-2" / "train.tsv", "sentence\tlabel\ngood\t1\njust text\n")
    with pytest.raises(ValueError, match=r"train\.tsv, line 3: 1 columns"):
        tasks.read_glue("SST-2", tmp_path, "train")
    write(path, "sentence\tlabel\ngood\t2\n")
    with pytest.raises(ValueError, match=r"train\.tsv, line 2: label '2' is not one of"):
        tasks.read_glue("SST-2", tmp_path, "train")
    write(path, "text\tlabel\ngood\t1\n")
    with pytest.raises(ValueError, match=r"no column 'sentence'"):
        tasks.read_glue("SST-2", tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="dev.tsv"):
        tasks.read_glue("SST-2", tmp_path, "dev")
    with pytest.raises(ValueError, match="unknown task"):
        tasks.read_glue("SST-3", tmp_path, "dev")


def test_qqp_short_rows_are_skipped_and_reported(tmp_path, capsys):
    """GLUE's QQP train.tsv has rows with missing fields; like the reference readers, those are skipped (and said),
    while the label of a complete row is still checked."""
    head = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
    write(tmp_path / "QQP" / "train.tsv", head + "0\t1\t2\tHow?\tWhy?\t1\n1\t3\t4\tbroken row\n2\t5\t6\tA?\tB?\t0\n")
    assert [(e.text_a, e.text_b, e.label) for e in tasks.read_glue("QQP", tmp_path, "train")] == \
        [("How?", "Why?", 1), ("A?", "B?", 0)]
    assert "skipped 1 rows with missing columns (lines 3)" in capsys.readouterr().err
    write(tmp_path / "QQP" / "train.tsv", head + "0\t1\t2\tHow?\tWhy?\tyes\n")
    with pytest.raises(ValueError, match=r"line 2: label 'yes'"):
        tasks.read_glue("QQP", tmp_path, "train")


def test_read_imdb_and_squad(tmp_path):
    write(tmp_path / "aclImdb" / "test" / "pos" / "0_9.txt", "Great.<br /><br />Loved it")
    write(tmp_path / "aclImdb" / "test" / "neg" / "1_2.txt", "Awful")
    ex = tasks.read_imdb(tmp_path / "aclImdb", "test")
    assert sorted((e.text_a, e.label) for e in ex) == [("Awful", 0), ("Great.  Loved it", 1)]
    with pytest.raises(FileNotFoundError, match="train"):
        tasks.read_imdb(tmp_path / "aclImdb", "train")


def test_read_imdb_from_the_release_tarball_or_its_folder_and_bad_layouts(tmp_path):
    """The shared data holds IMDb as the release tarball: read as it is (never extracted), from its path or
    its folder, with the same examples as the extracted folder, in a fixed order whose prefix is balanced."""
    import tarfile
    for split in ("train", "test"):
        for sub, label in (("pos", 1), ("neg", 0)):
            for i in range(6):
                write(tmp_path / "x" / "aclImdb" / split / sub / f"{i}_{7 if label else 2}.txt",
                      f"{split} {sub} review {i}<br />end")
    (tmp_path / "imdb").mkdir()
    with tarfile.open(tmp_path / "imdb" / "aclImdb.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "x" / "aclImdb", arcname="aclImdb")
    folder = tasks.read_imdb(tmp_path / "x" / "aclImdb", "test")
    for source in (tmp_path / "imdb" / "aclImdb.tar.gz", tmp_path / "imdb", tmp_path / "x"):
        got = tasks.read_imdb(source, "test")
        assert [(e.text_a, e.label) for e in got] == [(e.text_a, e.label) for e in folder], source
    assert sorted(e.text_a for e in folder) == sorted(f"test {s} review {i} end" for s in ("pos", "neg")
                                                      for i in range(6))
    assert 1 <= sum(e.label for e in folder[:4]) <= 3  # the first four are not one class
    import shutil
    shutil.rmtree(tmp_path / "x" / "aclImdb" / "test" / "neg")
    (tmp_path / "x" / "aclImdb" / "test" / "neg").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no reviews in test/neg/"):
        tasks.read_imdb(tmp_path / "x", "test")
    with pytest.raises(FileNotFoundError, match=r"no test/ folder of the aclImdb layout"):
        tasks.read_imdb(tmp_path / "nothing-here", "test")
    (tmp_path / "bad.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(ValueError, match=r"bad.tar.gz: not a readable tarball"):
        tasks.read_imdb(tmp_path / "bad.tar.gz", "test")


def test_read_squad(tmp_path):
    doc = {"data": [{"title": "t", "paragraphs": [{"context": "The cat sat.", "qas": [
        {"id": "a1", "question": "Who sat?", "answers": [{"text": "cat", "answer_start": 4},
                                                         {"text": "The cat", "answer_start": 0}]}]}]}]}
    path = write(tmp_path / "s.json", json.dumps(doc))
    (e,) = tasks.read_squad(path)
    assert (e.id, e.question, e.answers, e.answer_starts) == ("a1", "Who sat?", ["cat", "The cat"], [4, 0])
    del doc["data"][0]["paragraphs"][0]["qas"][0]["question"]
    write(path, json.dumps(doc))
    with pytest.raises(ValueError, match=r"s\.json: missing key 'question'"):
        tasks.read_squad(path)


# ------------------------------------------------------------------------------------------------ features, config

def test_encode_pairs_types_truncation_labels(tok):
    ids = {w: tok.token_to_id(w) for w in ["[CLS]", "[SEP]", "the", "cat", "dog", "sat"]}
    ex = [tasks.Example("the cat", "the dog sat", 1.5), tasks.Example("cat", None, 0.5)]
    t = tasks.encode(tok, ex, max_len=16)
    words = ["[CLS]", "the", "cat", "[SEP]", "the", "dog", "sat", "[SEP]"]
    assert t["input_ids"][0].tolist() == [ids[w] for w in words]
    assert t["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert t["input_ids"][1].tolist() == [ids["[CLS]"], ids["cat"], ids["[SEP]"], 0, 0, 0, 0, 0]
    assert t["attention_mask"][1].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert t["labels"].dtype == torch.float and t["labels"].tolist() == [1.5, 0.5]
    t = tasks.encode(tok, [tasks.Example("the cat", "the dog sat", 1)], max_len=6)
    # longest first, as BertTokenizer: b (3) loses 'sat', then on a tie (2, 2) a loses 'cat'
    assert t["input_ids"][0].tolist() == [ids[w] for w in ["[CLS]", "the", "[SEP]", "the", "dog", "[SEP]"]]
    assert t["labels"].dtype == torch.long and tok.truncation is None  # the tokenizer is left as it was
    assert "labels" not in tasks.encode(tok, [tasks.Example("cat")], 8)
    with pytest.raises(TypeError, match="example 1: text_a must be a string"):
        tasks.encode(tok, [tasks.Example("cat"), tasks.Example("cat", 1)], 8)  # a label passed as text_b
