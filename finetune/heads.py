"""
Task heads on the encoder (Sanh et al. 2019, Section 4: the models of Tables 1 and 2): a sentence (pair)
classifier or regressor, as BERT's or DistilBERT's, and extractive QA for SQuAD. Both return .logits and the
encoder's .hidden_states (for PKD-style losses).
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import Bert, masked_mean


@dataclass
class TaskOutput:
    logits: torch.Tensor   # (B, num_labels) for Classifier, (B, L, 2) start/end for SpanQA
    hidden_states: tuple


SEQ_CLASSIF_DROPOUT = 0.2  # DistilBertConfig.seq_classif_dropout: the DistilBERT head's dropout


class Classifier(nn.Module):
    """style "bert": pooler -> dropout (the encoder's, 0.1) -> linear (BertForSequenceClassification). style
    "distilbert": h_[CLS] -> pre_classifier linear -> ReLU -> dropout 0.2 (seq_classif_dropout) -> linear
    (DistilBertForSequenceClassification). "auto" picks "bert" when the encoder has a pooler; an MLM-only
    teacher has none, so it gets the DistilBERT head too. pool="mean" (DistilBERT head only, not the paper's)
    reads the mean of the last layer's states over the real tokens instead of h_[CLS]: for students of a
    teacher whose [CLS] state carries almost nothing below its last layer (all-MiniLM-L6-v2, trained with mean
    pooling)."""

    def __init__(self, encoder: Bert, num_labels, style="auto", pool="cls"):
        super().__init__()
        style = ("bert" if encoder.pooler is not None else "distilbert") if style == "auto" else style
        if style not in ("bert", "distilbert") or (style == "bert" and encoder.pooler is None):
            raise ValueError(f"style={style!r}: expected 'auto', 'distilbert' or 'bert' (with a pooler in "
                             f"the encoder)")
        if pool not in ("cls", "mean") or (pool == "mean" and style == "bert"):
            raise ValueError(f"pool={pool!r}: expected 'cls', or 'mean' with the DistilBERT head (style "
                             f"{style!r} reads its pooler)")
        d, self.style, self.num_labels, self.encoder = encoder.cfg.hidden_size, style, num_labels, encoder
        self.pool = pool
        self.pre_classifier = nn.Linear(d, d) if style == "distilbert" else None
        self.dropout = nn.Dropout(encoder.cfg.dropout if style == "bert" else SEQ_CLASSIF_DROPOUT)
        self.classifier = nn.Linear(d, num_labels)
        for m in (self.pre_classifier, self.classifier):
            if m is not None:
                nn.init.normal_(m.weight, std=encoder.cfg.init_std)
                nn.init.zeros_(m.bias)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        out = self.encoder(input_ids, attention_mask, token_type_ids, return_logits=False)
        if self.style == "bert":
            h = out.pooled
        else:
            last = out.hidden_states[-1]  # (B, L, d)
            h = last[:, 0] if self.pool == "cls" else masked_mean(last, attention_mask)
            h = F.relu(self.pre_classifier(h))
        return TaskOutput(self.classifier(self.dropout(h)), out.hidden_states)


class SpanQA(nn.Module):
    """Extractive QA (BertForQuestionAnswering): one linear layer gives a start and an end logit per token.
    Padding positions get -1e4 so that softmaxes (and the distillation KL) ignore them."""

    def __init__(self, encoder: Bert):
        super().__init__()
        self.encoder, self.num_labels = encoder, 2
        self.qa = nn.Linear(encoder.cfg.hidden_size, 2)
        nn.init.normal_(self.qa.weight, std=encoder.cfg.init_std)
        nn.init.zeros_(self.qa.bias)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        out = self.encoder(input_ids, attention_mask, token_type_ids, return_logits=False)
        logits = self.qa(out.hidden_states[-1])
        if attention_mask is not None:
            logits = logits.masked_fill(attention_mask[..., None] == 0, -1e4)
        return TaskOutput(logits, out.hidden_states)


def kind_of(model):
    return "span" if isinstance(model, SpanQA) else "classifier"
