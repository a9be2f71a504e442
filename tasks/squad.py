"""
SQuAD v1.1 (Rajpurkar et al. 2016): the reader, the official answer normalisation with exact match and F1, the
document-stride windows of BERT's run_squad.py, and the best span back from start/end logits.
"""
import json
import math
import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tasks.features import special_id


@dataclass
class SquadExample:
    id: str
    question: str
    context: str
    answers: list          # answer texts (one for train, usually three for dev)
    answer_starts: list    # character offsets into context


def read_squad(path) -> list:
    """SQuAD v1.1 json: data -> paragraphs -> qas -> answers."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        out = []
        for article in doc["data"]:
            for para in article["paragraphs"]:
                for qa in para["qas"]:
                    answers = qa["answers"]
                    out.append(SquadExample(qa["id"], qa["question"], para["context"],
                                            [a["text"] for a in answers],
                                            [a["answer_start"] for a in answers]))
    except KeyError as e:
        raise ValueError(f"{path}: missing key {e.args[0]!r} (expected SQuAD v1.1 json)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid json ({e})") from None
    return out


def normalize_answer(s):
    """As the official SQuAD v1.1 script: lower case, drop punctuation, drop the articles a/an/the, squash
    spaces."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def squad_em_f1(prediction, gold_answers):
    """(exact match, token F1) of one prediction, each the maximum over the gold answers."""
    pred = normalize_answer(prediction).split()
    em = f1 = 0.0
    for gold in gold_answers:
        g = normalize_answer(gold).split()
        em = max(em, float(pred == g))
        same = sum((Counter(pred) & Counter(g)).values())
        if same:
            precision, recall = same / len(pred), same / len(g)
            f1 = max(f1, 2 * precision * recall / (precision + recall))
    return em, f1


def _windows(n_tokens, room, doc_stride):
    """(start, length) of the document windows over n_tokens context tokens: as many as fit, doc_stride
    apart."""
    out, start = [], 0
    while True:
        n = min(room, n_tokens - start)
        out.append((start, n))
        if start + n >= n_tokens:
            return out
        start += min(doc_stride, n)


def _max_context(windows, n_tokens):
    """For each context token, the window where it has the most context: the largest min(tokens on its left,
    tokens on its right) + 0.01 * window length, the first on ties (BERT's run_squad.py,
    _check_is_max_context)."""
    best, score = [0] * n_tokens, [-1.0] * n_tokens
    for w, (start, n) in enumerate(windows):
        for j in range(n):
            s = min(j, n - 1 - j) + 0.01 * n
            if s > score[start + j]:
                best[start + j], score[start + j] = w, s
    return best


def prepare_squad_features(tokenizer, examples, max_len=384, doc_stride=128, max_query=64):
    """[CLS] question [SEP] window [SEP] for windows over each context, BERT's way: a window holds as many
    context tokens as fit, the next starts doc_stride tokens later. -> (tensors, mapping): tensors as `encode`
    plus start_positions / end_positions (the first answer's tokens, or 0 = [CLS] when the window lacks it);
    mapping[f] = {"example": index, "offsets": per token (start, end) characters in the context, None outside
    the context, "max_context": per token, whether this window is the one where the token has the most context
    (_max_context)}."""
    if not examples:
        raise ValueError("prepare_squad_features: no examples")
    cls, sep = special_id(tokenizer, "[CLS]", 101), special_id(tokenizer, "[SEP]", 102)
    saved = tokenizer.truncation
    tokenizer.no_truncation()
    try:
        questions = tokenizer.encode_batch([e.question for e in examples], add_special_tokens=False)
        contexts = tokenizer.encode_batch([e.context for e in examples], add_special_tokens=False)
    finally:
        if saved is not None:
            tokenizer.enable_truncation(**saved)
    rows, mapping = [], []
    for i, (ex, q, c) in enumerate(zip(examples, questions, contexts)):
        q_ids, offsets = q.ids[:max_query], c.offsets
        room = max_len - len(q_ids) - 3
        if room <= 0:
            raise ValueError(f"max_len={max_len} leaves no room for the context after a {len(q_ids)}-token "
                             f"question")
        answer = _answer_tokens(ex, offsets)
        first, windows = len(q_ids) + 2, _windows(len(c.ids), room, doc_stride)
        best = _max_context(windows, len(c.ids))
        for w, (start, n) in enumerate(windows):
            ids = [cls] + q_ids + [sep] + c.ids[start:start + n] + [sep]
            s_pos = e_pos = 0
            if answer and start <= answer[0] and answer[1] < start + n:
                s_pos, e_pos = answer[0] - start + first, answer[1] - start + first
            rows.append((ids, first, s_pos, e_pos))
            mapping.append({"example": i, "offsets": [None] * first + list(offsets[start:start + n]) + [None],
                            "max_context": [False] * first + [best[start + j] == w for j in range(n)]
                            + [False]})
    return _pack(rows, special_id(tokenizer, "[PAD]", 0)), mapping


def _answer_tokens(example, offsets):
    """(first, last) context token of the example's first answer: the tokens overlapping its characters; None
    when it has no answer or no token overlaps it."""
    if not example.answers:
        return None
    a0 = example.answer_starts[0]
    a1 = a0 + len(example.answers[0])
    inside = [t for t, (s, e) in enumerate(offsets) if s < a1 and e > a0]
    return (inside[0], inside[-1]) if inside else None


def _pack(rows, pad):
    """Tensors of the windows rows = [(ids, first context position, start, end)], padded with `pad`: the
    context (from `first` to the last [SEP]) has token type 1."""
    L = max(len(r[0]) for r in rows)
    t = {k: torch.zeros(len(rows), L, dtype=torch.long) for k in ("input_ids", "attention_mask",
                                                                  "token_type_ids")}
    t["input_ids"].fill_(pad)
    for f, (ids, first, _, _) in enumerate(rows):
        t["input_ids"][f, :len(ids)], t["attention_mask"][f, :len(ids)] = torch.tensor(ids), 1
        t["token_type_ids"][f, first:len(ids)] = 1
    t["start_positions"] = torch.tensor([r[2] for r in rows])
    t["end_positions"] = torch.tensor([r[3] for r in rows])
    return t


def squad_predict(start_logits, end_logits, mapping, examples, max_answer_len=30) -> dict:
    """{example id: answer text}: over all windows of an example, the context span (start <= end, at most
    max_answer_len tokens) with the highest start logit + end logit, whose start token has its maximum context
    in that window (BERT's run_squad.py: token_is_max_context), when the mapping says so."""
    n_feat, L = start_logits.shape
    ctx, starts = torch.zeros(n_feat, L, dtype=torch.bool), torch.zeros(n_feat, L, dtype=torch.bool)
    for f, m in enumerate(mapping):
        ctx[f, :len(m["offsets"])] = torch.tensor([o is not None for o in m["offsets"]])
        n = len(m["offsets"])
        starts[f, :n] = torch.tensor(m.get("max_context", ctx[f, :n].tolist()))
    s = start_logits.float().masked_fill(~(ctx & starts), -math.inf)
    e = end_logits.float().masked_fill(~ctx, -math.inf)
    top = torch.full((n_feat,), -math.inf)
    start, length = torch.zeros(n_feat, dtype=torch.long), torch.zeros(n_feat, dtype=torch.long)
    for d in range(min(max_answer_len, L)):  # spans of d + 1 tokens: start a, end a + d
        score, a = (s[:, :L - d] + e[:, d:]).max(1)
        better = score > top
        top, start = torch.where(better, score, top), torch.where(better, a, start)
        length = length.masked_fill(better, d)
    best = {}
    for f, m in enumerate(mapping):
        if top[f] > best.get(m["example"], (-math.inf,))[0]:
            a, b = int(start[f]), int(start[f] + length[f])
            best[m["example"]] = (float(top[f]), m["offsets"][a][0], m["offsets"][b][1])
    return {ex.id: ex.context[best[i][1]:best[i][2]] if i in best else "" for i, ex in enumerate(examples)}


def squad_evaluate(predictions, examples) -> dict:
    scores = np.array([squad_em_f1(predictions.get(ex.id, ""), ex.answers) for ex in examples])
    return {"exact_match": float(scores[:, 0].mean()), "f1": float(scores[:, 1].mean())}
