"""Tests for peakd/ (Pea-KD). Every check compares against something computed another way: attention written out
by hand, an untied model with the Q/K rows exchanged, probabilities picked by hand, the loss with the math module."""
import math
from dataclasses import replace

import pytest
import torch
from conftest import padded_batch
import torch.nn.functional as F

from model import Bert, BertConfig, count_parameters
from losses import pkd_loss
from peakd import cls_states, make_student, pkd_layer_map, ptp_labels, ptp_thresholds, sps_layers, with_sps
from machinery.hf import load_pretrained, save_pretrained

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = BertConfig(vocab_size=60, hidden_size=24, num_layers=4, num_heads=3, intermediate_size=40, max_position=16)


def perturbed(cfg, seed=0):
    """A model whose LayerNorms and biases are not at their 1/0 initial values (so that a swap is visible in them)."""
    torch.manual_seed(seed)
    m = Bert(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return m.eval()


def batch(seed=1, B=3, L=7, vocab=60):
    """One padded sequence among full ones (conftest.padded_batch)."""
    ids, mask, _ = padded_batch(vocab, B, L, lengths=[5] + [L] * (B - 1), generator=torch.Generator().manual_seed(seed))
    return ids, mask


def layer_by_hand(layer, x, mask, swap):
    """One post-LN BERT layer written out, with q = x W_K + b_K and k = x W_Q + b_Q when swap."""
    d, H = x.size(-1), layer.cfg.num_heads
    Wq, Wk, Wv = layer.qkv.weight.chunk(3)
    bq, bk, bv = layer.qkv.bias.chunk(3)
    q, k, v = x @ Wq.T + bq, x @ Wk.T + bk, x @ Wv.T + bv
    if swap:
        q, k = x @ Wk.T + bk, x @ Wq.T + bq
    w = d // H
    heads = []
    for h in range(H):
        s = slice(h * w, (h + 1) * w)
        scores = q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(w)
        scores = scores.masked_fill(mask[:, None, :] == 0, float("-inf"))
        heads.append(scores.softmax(-1) @ v[..., s])
    a = torch.cat(heads, -1) @ layer.proj.weight.T + layer.proj.bias
    h1 = F.layer_norm(x + a, (d,), layer.ln1.weight, layer.ln1.bias, layer.cfg.layer_norm_eps)
    ff = F.gelu(h1 @ layer.fc1.weight.T + layer.fc1.bias) @ layer.fc2.weight.T + layer.fc2.bias
    return F.layer_norm(h1 + ff, (d,), layer.ln2.weight, layer.ln2.bias, layer.cfg.layer_norm_eps)


# ------------------------------------------------------------------------------------------------ SPS


@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
def test_qk_swap_on_one_layer_matches_hand_computation(attention):
    student = perturbed(replace(TINY, num_layers=1, attention=attention))
    ids, mask = batch()
    real = mask.bool()
    for swap in (True, False):
        out = with_sps(student, "all", swap=swap)(ids, mask, return_logits=False)
        assert len(out.hidden_states) == 3  # embeddings, layer 1, layer 1 again
        h1 = out.hidden_states[1]
        torch.testing.assert_close(h1, layer_by_hand(student.layers[0], out.hidden_states[0], mask, False))
        want = layer_by_hand(student.layers[0], h1, mask, swap)
        torch.testing.assert_close(out.hidden_states[2][real], want[real], rtol=1e-5, atol=1e-5)
    # the swap changes the function (else this test could not tell SPS from paired sharing)
    other = layer_by_hand(student.layers[0], h1, mask, True)
    assert (other - want)[real].abs().max() > 1e-3


def untied_copy(student, swap):
    """A plain 2k-layer Bert computing what with_sps(student, "all", swap) computes, with its own tensors: the second
    copy of each layer gets the qkv rows reordered [W_K; W_Q; W_V] when swap."""
    k = student.cfg.num_layers
    big = Bert(replace(student.cfg, num_layers=2 * k, sps_layers=())).eval()
    sd = {key: v.clone() for key, v in student.state_dict().items()}
    for i in range(k):
        for key, v in student.layers[i].state_dict().items():
            if swap and key.startswith("qkv."):
                q, kk, vv = v.chunk(3)
                v = torch.cat([kk, q, vv])
            sd[f"layers.{k + i}.{key}"] = v.clone()
    big.load_state_dict(sd)
    return big


@pytest.mark.parametrize("swap", [True, False])
def test_shared_parameters_get_gradient_from_both_uses(swap):
    student = perturbed(replace(TINY, num_layers=2)).double()  # float64: compare gradients tightly
    sps = with_sps(student, "all", swap=swap)
    big = untied_copy(student, swap).double()
    ids, mask = batch()
    target = torch.randn(3, 7, TINY.hidden_size, dtype=torch.float64)
    outs = []
    for m in (sps, big):
        out = m(ids, mask, return_logits=False)
        ((out.hidden_states[-1] - target) ** 2).sum().backward()
        outs.append(out.hidden_states)
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    k = student.cfg.num_layers
    for i in range(k):
        for name, p in student.layers[i].named_parameters():
            g1 = big.layers[i].get_parameter(name).grad
            g2 = big.layers[k + i].get_parameter(name).grad
            if swap and name.startswith("qkv."):  # the second use saw the rows reordered: put them back
                gk, gq, gv = g2.chunk(3)
                g2 = torch.cat([gq, gk, gv])
            assert g1.abs().max() > 0 and g2.abs().max() > 0
            torch.testing.assert_close(p.grad, g1 + g2, rtol=1e-9, atol=1e-10)


def test_sps_shares_tensors_and_keeps_the_parameter_count():
    student = make_student(perturbed(replace(TINY, num_layers=12)), 6)
    sps = with_sps(student, "upper")  # the reference code's 6-layer student: layers 4-6 re-run, 9 effective layers
    assert sps.schedule == [(i, False) for i in range(6)] + [(3, True), (4, True), (5, True)]
    assert count_parameters(sps) == count_parameters(student)
    assert [p.data_ptr() for p in sps.parameters()] == [p.data_ptr() for p in student.parameters()]
    out = sps(*batch(), return_logits=False)
    assert len(out.hidden_states) == 10
    with torch.no_grad():  # one tensor: a change through one model is seen by the other
        student.layers[3].qkv.weight.add_(1.0)
    assert torch.equal(sps.layers[3].qkv.weight, student.layers[3].qkv.weight)
    assert sps_layers(3) == (0, 1, 2) and sps_layers(6, "upper") == (3, 4, 5) and sps_layers(4, [1]) == (1,)
    with pytest.raises(ValueError):
        with_sps(student, [6])


@pytest.mark.parametrize("init,layers", [("first", [0, 1]), ("skip", [0, 2])])
def test_make_student_copies_the_chosen_teacher_layers(init, layers):
    teacher = perturbed(replace(TINY, pooler=True))
    student = make_student(teacher, 2, init=init).eval()
    assert student.cfg.num_layers == 2 and student.emb.types is not None and student.pooler is not None
    for j, i in enumerate(layers):
        for a, b in zip(student.layers[j].parameters(), teacher.layers[i].parameters()):
            assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    if init == "first":  # same embeddings and first layers: the same hidden states
        ids, mask = batch()
        s, t = student(ids, mask, return_logits=False), teacher(ids, mask, return_logits=False)
        for j in range(3):
            torch.testing.assert_close(s.hidden_states[j], t.hidden_states[j])
    d = make_student(teacher, 2, init=init, distilbert=True)
    assert d.emb.types is None and d.pooler is None


# ------------------------------------------------------------------------------------------------ PTP


def logits_for(probs):
    """Two-class logits whose softmax is (p, 1 - p)."""
    p = torch.tensor(probs, dtype=torch.float64)
    return torch.stack([p.log(), (1 - p).log()], -1)


def test_ptp_labels_on_hand_made_teacher_outputs():
    # teacher prob. of class 0:   right+sure  right+unsure  wrong+sure  wrong+unsure  right, = t1  wrong, = t2
    logits = logits_for([0.95, 0.70, 0.90, 0.60, 0.80, 0.75])
    labels = torch.tensor([0, 0, 1, 1, 0, 1])
    conf = logits.softmax(-1).max(-1).values  # ~0.8 and ~0.75 as the function computes them: exact ties
    t1, t2 = conf[4].item(), conf[5].item()
    assert ptp_labels(logits, labels, t1, t2).tolist() == [0, 1, 2, 3, 1, 3]  # "confident" is strictly above
    # the same for class 1 (probability 1 - p of class 1 when p < 0.5)
    logits = logits_for([0.05, 0.30, 0.10, 0.40])
    assert ptp_labels(logits, torch.tensor([1, 1, 0, 0]), 0.8, 0.75).tolist() == [0, 1, 2, 3]
    # three classes
    logits = torch.tensor([[0.0, 5.0, 0.0], [1.0, 1.2, 0.9]]).log_softmax(-1)
    assert ptp_labels(logits, torch.tensor([2, 1]), 0.8, 0.6).tolist() == [2, 1]


def test_ptp_thresholds():
    logits = logits_for([0.9, 0.7, 0.6, 0.2, 0.45])  # right: 0.9, 0.7, 0.6 ; wrong (label 1): 0.8, 0.55
    labels = torch.tensor([0, 0, 0, 0, 0])
    t1, t2 = ptp_thresholds(logits, labels, "median")
    assert t1 == pytest.approx(0.7) and t2 == pytest.approx(0.55)  # torch.median: the lower middle value
    assert ptp_thresholds(logits, labels, "reference", task="MRPC") == (0.95, 0.75)
    assert ptp_thresholds(logits, labels, (0.3, 0.2)) == (0.3, 0.2)
    assert ptp_thresholds(logits, labels, task="CoLA") == (0.95, 0.7)  # the reference table is the default
    assert ptp_thresholds(logits, labels, task="SST-2") == (0.98, 0.8)
    with pytest.raises(ValueError):
        ptp_thresholds(logits, labels, "reference", task="QQP")


def test_ptp_pretraining_trains_the_shared_student_and_drops_its_head():
    from finetune import FinetuneConfig
    from peakd import ptp_pretrain
    student = perturbed(replace(TINY, num_layers=2))
    sps = with_sps(student)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    ids, mask = batch(B=8)
    tensors = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    out = ptp_pretrain(sps, tensors, torch.tensor([0, 1, 2, 3] * 2), FinetuneConfig(lr=1e-3, batch_size=4, max_steps=2))
    assert out is sps and count_parameters(out) == count_parameters(student)  # no head left on the student
    changed = [k for k, v in student.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("layers.0.qkv") for k in changed) and any(k.startswith("emb.") for k in changed)


# ------------------------------------------------------------------------------------------------ Patient-KD


def test_pkd_loss_against_hand_computed_value():
    s, t, y = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    s_cls, t_cls = torch.tensor([[[3.0, 4.0]]]), torch.tensor([[[5.0, 0.0]]])
    ce = math.log(1 + math.exp(-1))                              # -log softmax(1, 0)[0]
    q0, p0 = 1 / (1 + math.exp(-0.5)), 1 / (1 + math.exp(-1.0))  # student and teacher at T = 2
    kl = p0 * math.log(p0 / q0) + (1 - p0) * math.log((1 - p0) / (1 - q0))
    pt = ((0.6 - 1.0) ** 2 + (0.8 - 0.0) ** 2) / 2              # unit vectors (0.6, 0.8) and (1, 0), mean of squares
    want = 0.5 * ce + 0.5 * 4 * kl + 10 * pt
    loss, parts = pkd_loss(s, t, y, s_cls, t_cls, alpha=0.5, temperature=2.0, beta=10.0)
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert parts["ce"] == pytest.approx(ce, rel=1e-6) and parts["kd"] == pytest.approx(4 * kl, rel=1e-5)
    assert parts["pt"] == pytest.approx(pt, rel=1e-6)
    # a batch of two copies gives the same value (means over the batch), and the reference defaults are 0.7 / 10 / 100
    loss2, _ = pkd_loss(s.repeat(2, 1), t.repeat(2, 1), y.repeat(2), s_cls.repeat(2, 1, 1), t_cls.repeat(2, 1, 1),
                        alpha=0.5, temperature=2.0, beta=10.0)
    assert loss2.item() == pytest.approx(want, rel=1e-6)
    q0, p0 = 1 / (1 + math.exp(-0.1)), 1 / (1 + math.exp(-0.2))
    kl10 = p0 * math.log(p0 / q0) + (1 - p0) * math.log((1 - p0) / (1 - q0))
    loss3, _ = pkd_loss(s, t, y, s_cls, t_cls)
    assert loss3.item() == pytest.approx(0.3 * ce + 0.7 * 100 * kl10 + 100 * pt, rel=1e-5)


def test_pkd_loss_gradient_reaches_student_only():
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    sc, tc = torch.randn(4, 2, 8, requires_grad=True), torch.randn(4, 2, 8, requires_grad=True)
    loss, _ = pkd_loss(s, t, torch.tensor([0, 1, 2, 0]), sc, tc)
    loss.backward()
    assert s.grad.abs().sum() > 0 and sc.grad.abs().sum() > 0 and t.grad is None and tc.grad is None


def test_pkd_layer_map_and_cls_states():
    assert pkd_layer_map(6, 12) == [(1, 2), (2, 4), (3, 6), (4, 8), (5, 10)]  # PKD-Skip as in Patient-KD
    assert pkd_layer_map(3, 12, "last") == [(1, 10), (2, 11)]                  # PKD-Last
    assert pkd_layer_map(9, 12) == [(1, 1), (2, 3), (3, 4), (4, 5), (5, 7), (6, 8), (7, 9), (8, 11)]
    assert pkd_layer_map(1, 4) == []
    hs = [torch.full((2, 5, 3), float(i)) for i in range(4)]
    c = cls_states(hs, [1, 3])
    assert c.shape == (2, 2, 3) and c[:, 0].eq(1).all() and c[:, 1].eq(3).all()


def test_pooled_states_mean_over_the_real_tokens_by_hand():
    from peakd import pooled_states
    g = torch.Generator().manual_seed(0)
    hs = [torch.randn(3, 5, 4, generator=g) for _ in range(3)]
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    got = pooled_states(hs, [0, 2], mask, "mean")
    for b in range(3):
        n = int(mask[b].sum())
        for j, i in enumerate([0, 2]):
            want = sum(hs[i][b, t] for t in range(n)) / n
            assert torch.allclose(got[b, j], want, atol=1e-6)
    assert torch.equal(pooled_states(hs, [1], mask, "cls"), cls_states(hs, [1]))
    assert pooled_states(hs, [], mask, "mean").shape == (3, 0, 4)


# ------------------------------------------------------------------------------------------------ the pipeline

WORDS = "good bad movie film plot actor scene fine dull long short story music great awful".split()


def tiny_task(root, seed=0):
    """A GLUE-style SST-2 folder (label 1 iff the sentence contains "good" or "great"), a QNLI folder with only a
    dev.tsv (a pair task: label "entailment" iff the question's first word occurs in the sentence), a vocab.txt
    and a small random 'pretrained' BERT saved in Hugging Face format."""
    import random
    rng = random.Random(seed)
    sentence = lambda: " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
    sst = root / "glue" / "SST-2"
    sst.mkdir(parents=True)
    for split, n in (("train", 240), ("dev", 60)):
        rows = [(s, int("good" in s.split() or "great" in s.split())) for s in (sentence() for _ in range(n))]
        (sst / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    qnli = root / "glue" / "QNLI"
    qnli.mkdir()
    lines = ["index\tquestion\tsentence\tlabel"]
    for i in range(80):
        q, s = sentence(), sentence()
        lines.append(f"{i}\t{q}\t{s}\t{'entailment' if q.split()[0] in s.split() else 'not_entailment'}")
    (qnli / "dev.tsv").write_text("\n".join(lines) + "\n")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    torch.manual_seed(seed)
    save_pretrained(Bert(BertConfig(vocab_size=5 + len(WORDS), hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64,
                    max_position=32)), root / "teacher")
    return root / "glue", vocab, root / "teacher"


def test_pipeline_end_to_end_on_a_tiny_task(tmp_path, capsys):
    from peakd import VARIANTS
    from peakd.__main__ import main
    glue, vocab, teacher = tiny_task(tmp_path)
    common = ["--data", str(glue), "--teacher", str(teacher), "--vocab", str(vocab), "--out", str(tmp_path / "out"),
              "--teacher_epochs", "8", "--teacher_lr", "2e-3", "--lr", "1e-3", "--batch_size", "16",
              "--max_steps", "4", "--ptp_epochs", "1", "--log_every", "0"]
    [res] = main(["ablation", "--task", "SST-2", *common, "--seeds", "1,2"])
    rows = res["rows"]
    for r in list(rows.values())[1:]:  # one run per student seed; the row's metric is their mean
        assert len(r["correct"]) == 2 and list(r["seeds"]) == ["1", "2"]  # as JSON stores it (stage.json)
        assert r["accuracy"] == pytest.approx(sum(s["accuracy"] for s in r["seeds"].values()) / 2)
        assert r["seeds"]["1"]["accuracy"] == pytest.approx(sum(r["correct"][0]) / len(r["correct"][0]))
    assert rows["FT"]["correct"][0] != rows["FT"]["correct"][1] or rows["PKD"]["correct"][0] != rows["PKD"]["correct"][1]
    assert list(rows) == ["teacher", *VARIANTS]
    assert rows["teacher"]["accuracy"] >= 0.9            # the teacher was fine-tuned here, and learnt the rule
    assert (tmp_path / "out" / "SST-2" / "teacher" / "finetune.json").is_file()
    assert sum(res["ptp"]["counts"]) == 240
    # 2 of 4 teacher layers; SPS re-runs the upper one (k = n/2, as the reference's 6-layer student): depth 3
    assert rows["PKD"]["depth"] == 2 and rows["PKD + SPS"]["depth"] == 3
    assert rows["PKD + SPS"]["parameters"] == rows["PKD"]["parameters"] == rows["FT"]["parameters"]
    assert rows["PKD + SPS"]["layer_map"] == [[1, 1], [2, 3]] and rows["PKD"]["layer_map"] == [[1, 2]]
    assert all(0 <= r["accuracy"] <= 1 for r in rows.values())
    table = capsys.readouterr().out
    assert "| PKD + SPS + PTP (Pea-KD) |" in table
    # the same settings again: the stored result (machinery.stages.cached), nothing trained
    assert main(["ablation", "--task", "SST-2", *common, "--seeds", "1,2", "--log_every=5"]) == [res]
    out = capsys.readouterr().out
    assert "already complete" in out and "[peakd] SST-2:" not in out
    # again, with the "run" command on a dev-only pair task and then with the fine-tuned teacher reused
    [res] = main(["run", "--task", "QNLI", *common, "--save"])
    assert "split at random" in res["note"] and list(res["rows"]) == ["teacher", "PKD + SPS + PTP (Pea-KD)"]
    from finetune import load_finetuned
    saved = load_finetuned(tmp_path / "out" / "QNLI" / "student-PKD+SPS+PTP")  # an SPS student saved and read back
    assert saved.encoder.schedule == [(0, False), (1, False), (1, True)]
    capsys.readouterr()
    main(["run", "--task", "QNLI", *common])
    assert "fine-tuning" not in capsys.readouterr().out  # the teacher fine-tuned above was found and reused


def test_sps_auto_depth_is_the_reference_choice():
    """Reference (cih23/PeaKD BertEncoder_SPS, BertEncoder_SPS_6layer_student): of a 12-layer teacher, a
    3-layer student re-runs all three (6 layers), a 6-layer one re-runs layers 4-6 (9 layers): shallower than
    12 up to k=6."""
    assert sps_layers(3, "auto", 12) == (0, 1, 2) and sps_layers(6, "auto", 12) == (3, 4, 5)
    assert sps_layers(2, "auto", 4) == (1,) and sps_layers(1, "auto", 4) == (0,)
    for k in range(1, 7):
        assert k + len(sps_layers(k, "auto", 12)) < 12
    with pytest.raises(ValueError, match="teacher's depth"):
        sps_layers(3, "auto")


def test_student_starts_from_the_pretrained_bert_not_the_finetuned_teacher(tmp_path):
    """Pea-KD's reference code copies the first k layers of the pre-trained checkpoint (--encoder_checkpoint),
    not of the task-fine-tuned teacher; a finetune.py teacher folder leads back to its pre-trained source."""
    from finetune import Classifier, save_finetuned
    from peakd import PeakdConfig, init_student, pretrained_source
    pretrained = perturbed(TINY, seed=0)
    save_pretrained(pretrained, tmp_path / "bert")
    teacher = Classifier(perturbed(TINY, seed=5), 2)  # stands for the fine-tuned teacher: different weights
    save_finetuned(teacher, tmp_path / "ft", task="SST-2", setup={"source": str(tmp_path / "bert")})
    assert pretrained_source(tmp_path / "ft") == str(tmp_path / "bert")
    assert pretrained_source(tmp_path / "bert") == str(tmp_path / "bert")
    assert pretrained_source(tmp_path / "ft", "finetuned") == "finetuned"
    save_finetuned(teacher, tmp_path / "ft2", task="SST-2")
    with pytest.raises(ValueError, match="student_from"):
        pretrained_source(tmp_path / "ft2")
    student = init_student(teacher, pretrained, PeakdConfig(student_layers=0, init="first", arch="bert", sps="auto",
                                                           no_swap=False))
    assert student.schedule == [(0, False), (1, False), (1, True)]
    for name, p in student.layers.named_parameters():
        assert torch.equal(p, dict(pretrained.layers.named_parameters())[name]), name
    assert torch.equal(student.emb.word.weight, pretrained.emb.word.weight)
    assert not torch.equal(student.layers[0].qkv.weight, teacher.encoder.layers[0].qkv.weight)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_ft_row_is_plain_finetuning_and_learns(tmp_path, pool):
    """Before: the "FT" row handed the teacher's logits to fit, whose default loss then distilled from them
    (alpha 0.5, T 2): every "minus FT" delta was against a distilled student. FT must equal plain fine-tuning
    of the same student (finetune.fit without a teacher), and leave the majority class on a task it can learn;
    a 1-layer student (no intermediate layer to match) trains under KD too (it crashed in torch.stack)."""
    import finetune as ft
    import peakd
    from peakd.ablation import student_config
    from peakd.pkd import classifier
    glue, vocab, teacher_dir = tiny_task(tmp_path)
    from machinery.tokenizer import load_tokenizer
    tok = load_tokenizer(vocab)
    train, dev, _ = peakd.load_data("SST-2", glue, tok, max_len=16)
    torch.manual_seed(0)
    teacher = ft.Classifier(load_pretrained(teacher_dir), 2, "distilbert")
    t_logits, t_cls = peakd.teacher_outputs(teacher, train)
    args = peakd.PeakdConfig(lr=3e-3, batch_size=16, epochs=6.0, max_steps=None, seed=0, log_every=0,
                             student_layers=2, init="first", arch="bert", sps="auto", no_swap=False,
                             layer_map="skip", alpha=0.7, T=10.0, beta=100.0, ptp_epochs=1.0, pool=pool)
    ft_model, _ = peakd.train_student(teacher, train, t_logits, t_cls, None, args, kd=False, sps=False, ptp=False,
                                      pretrained=teacher.encoder)
    torch.manual_seed(args.seed)
    alone = classifier(peakd.init_student(teacher, teacher.encoder, args, sps=False), 2, pool)
    assert type(alone) is type(ft_model) is ft.Classifier and alone.pool == ft_model.pool == pool
    ft.fit(alone, train, student_config(args))
    for (name, p), q in zip(ft_model.named_parameters(), alone.parameters()):
        assert torch.equal(p, q), name
    majority = max(dev["labels"].float().mean().item(), 1 - dev["labels"].float().mean().item())
    assert peakd.scored("SST-2", ft_model, dev)["accuracy"] >= majority + 0.1
    one = replace(args, student_layers=1, max_steps=2)
    model, layer_map = peakd.train_student(teacher, train, t_logits, t_cls, None, one, kd=True, sps=False,
                                           ptp=False, pretrained=teacher.encoder)
    assert layer_map == [] and all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("argv, message", [
    (["walk", "--task=SST-2"], r"command 'walk': expected run or ablation"),
    (["run", "--task=SST-2", "--data=glue"], r"--task, --data and --teacher are required"),
    (["run", "--sps=1,x"], r"--sps='1,x': expected auto, all, upper or layer indices"),
    (["run", "--pool=mean", "--save"], r"--save keeps finetune.py's format"),
    (["ablation", "--alpha=2"], r"--alpha=2.0: expected a finite number in \[0, 1\]"),
    (["run", "--epochs=x"], r"--epochs='x': expected a number"),
])
def test_bad_settings_stop_in_one_line(argv, message):
    from peakd.__main__ import main
    with pytest.raises(SystemExit, match=r"^peakd: error: " + message):
        main(argv)
