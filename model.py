"""
BERT (the teacher) and DistilBERT (the student), written by hand in plain PyTorch.

One encoder covers both. DistilBERT (Sanh et al., 2019, Section 3 "Student architecture") "has the same
general architecture as BERT. The token-type embeddings and the pooler are removed while the number of layers
is reduced by a factor of 2", and it is initialised "from the teacher by taking one layer out of two" (Section
3 "Student initialization"). So a student is a `Bert` whose config says `type_vocab_size=0, pooler=False` and
has half the layers; `student_from_teacher` builds it.

Checkpoints are read and written in Hugging Face's format by machinery/hf.py, so a teacher downloaded as
`bert-base-uncased` loads here and a student trained here loads in `transformers.DistilBertForMaskedLM`:

    teacher = hf.load_pretrained("path/to/bert-base-uncased")   # a folder or a Hub name
    student = student_from_teacher(teacher)                      # layers [0, 2, 4, 6, 8, 10]
    hf.save_pretrained(student, "out/student")                   # config.json + model.safetensors
"""
import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position: int = 512
    type_vocab_size: int = 2       # 0: no token-type embeddings (DistilBERT)
    pooler: bool = False           # tanh(W h_[CLS]) for BERT-style fine-tuning; BertForMaskedLM has none
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    attention_dropout: float = 0.1
    pad_token_id: int = 0
    init_std: float = 0.02
    attention: str = "sdpa"        # "sdpa" (fused kernel) or "explicit" (softmax(QK^T/sqrt(d))V, for reading)
    # Pea-KD's Shuffled Parameter Sharing: after layers 0..k-1, run these layers again with the same
    # parameters, with Query and Key exchanged when sps_swap (SPS) or as they are when not (paired sharing)
    sps_layers: tuple = ()
    sps_swap: bool = True

    def __post_init__(self):
        sizes = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position")
        for key in (*sizes, "type_vocab_size", "pad_token_id"):
            value = getattr(self, key)
            if type(value) is not int or value < (1 if key in sizes else 0):
                raise ValueError(f"{key}={value!r}: expected an integer >= {1 if key in sizes else 0}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not a multiple of "
                             f"num_heads={self.num_heads}")
        if self.attention not in ("sdpa", "explicit"):
            raise ValueError(f"attention={self.attention!r}: expected 'sdpa' or 'explicit'")
        self.sps_layers = tuple(self.sps_layers)
        bad = [i for i in self.sps_layers if not 0 <= i < self.num_layers]
        if bad:
            raise ValueError(f"sps_layers={self.sps_layers}: {bad} out of range for {self.num_layers} layers")


@dataclass
class BertOutput:
    logits: torch.Tensor | None         # (batch, length, vocab), or (rows, vocab) when logits_at was given
    hidden_states: tuple                # embeddings output, then each layer's output: num_layers + 1 tensors
    pooled: torch.Tensor | None = None  # the pooler's output, when the model has one

    @property
    def last_hidden_state(self):
        return self.hidden_states[-1]


# ------------------------------------------------------------------------------------------------------------
# The encoder


def explicit_attention(q, k, v, real_keys, dropout_p=0.0):
    """softmax(Q K^T / sqrt(d)) V written out (Vaswani et al., Eq. 1). q, k, v: (batch, heads, length,
    head_dim); real_keys: (batch, 1, 1, length) boolean, True for real (not padding) keys, or None (all real):
    padding keys get weight 0. dropout_p: dropout on the attention weights (after the softmax). Same function
    as F.scaled_dot_product_attention, kept for teaching: written out, it does not call it."""
    ### BEGIN SOLUTION: 4 lines
    # every query against every key, scaled by sqrt(head_dim): (batch, heads, length, length)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    # padding keys get -inf, so that softmax gives them weight 0
    if real_keys is not None:
        scores = scores.masked_fill(~real_keys, float("-inf"))
    # softmax over the keys, dropout on the weights, then the weighted sum of the values
    return F.dropout(scores.softmax(dim=-1), dropout_p) @ v
    ### END SOLUTION


class Layer(nn.Module):
    """One post-LayerNorm Transformer layer, as in BERT: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        d = cfg.hidden_size
        self.cfg = cfg
        self.qkv = nn.Linear(d, 3 * d)   # query, key and value projections fused into one matmul
        self.proj = nn.Linear(d, d)
        self.ln1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(d, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, d)
        self.ln2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def attention(self, x, real_keys, swap_qk=False):
        """Multi-head self-attention of x (batch, length, hidden), before the residual: the output projection
        of the heads' results side by side. swap_qk: Pea-KD's SPS (Section 3.2) re-runs a layer with its
        query and key projections exchanged. real_keys: as explicit_attention's (None: every key real).
        cfg.attention "explicit" calls explicit_attention(q, k, v, real_keys, dropout_p), "sdpa"
        F.scaled_dot_product_attention; dropout_p = cfg.attention_dropout in training mode, 0 in eval mode."""
        ### BEGIN SOLUTION: 11 lines
        batch, length, d = x.shape
        heads = self.cfg.num_heads
        # one matmul for query, key and value; its output features are laid out as (3, heads, d/heads), query
        # first: split into q, k, v, each (batch, heads, length, d/heads)
        q, k, v = self.qkv(x).view(batch, length, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        # SPS: the same layer with W_Q and W_K exchanged
        if swap_qk:
            q, k = k, q
        # attention dropout only while training; cfg.attention picks the formula written out or the fused kernel
        p = self.cfg.attention_dropout if self.training else 0.0
        if self.cfg.attention == "explicit":
            y = explicit_attention(q, k, v, real_keys, p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=real_keys, dropout_p=p)
        # the heads side by side again: (batch, length, hidden), then the output projection
        return self.proj(y.transpose(1, 2).reshape(batch, length, d))
        ### END SOLUTION

    def feed_forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU, as BERT

    def forward(self, x, real_keys=None, swap_qk=False):
        """x = LN1(x + drop(self.attention(x, real_keys, swap_qk))), then x = LN2(x + drop(FFN(x))): x (batch,
        length, hidden) in and out; drop: dropout of p = cfg.dropout on each sub-layer's output, in training
        mode only (self.drop)."""
        ### BEGIN SOLUTION: 3 lines
        # post-LayerNorm: add each sub-layer's output (after dropout) to its input, then LayerNorm
        x = self.ln1(x + self.drop(self.attention(x, real_keys, swap_qk)))  # x: (batch, length, hidden)
        x = self.ln2(x + self.drop(self.feed_forward(x)))
        return x
        ### END SOLUTION


class Embeddings(nn.Module):
    """Word + position (+ token type, teacher only) embeddings, then LayerNorm and dropout."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.pos = nn.Embedding(cfg.max_position, cfg.hidden_size)
        self.types = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size) if cfg.type_vocab_size else None
        self.ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, input_ids, token_type_ids=None):
        """input_ids (batch, length) -> (batch, length, hidden): word vectors + the vectors of positions
        0..length-1 (+ token-type vectors: type 0 where token_type_ids is None; a student has none), then
        LayerNorm, then dropout (cfg.dropout, in training mode only)."""
        length = input_ids.size(1)
        if length > self.pos.num_embeddings:
            raise ValueError(f"sequence length {length} exceeds max_position={self.pos.num_embeddings}")
        ### BEGIN SOLUTION: 4 lines
        # word vectors plus the vectors of positions 0..length-1: (batch, length, hidden)
        x = self.word(input_ids) + self.pos.weight[:length]
        # the teacher adds token-type vectors (type 0 when none are given); a student has none
        if self.types is not None:
            x = x + (self.types(token_type_ids) if token_type_ids is not None else self.types.weight[0])
        # LayerNorm, then dropout
        return self.drop(self.ln(x))
        ### END SOLUTION


class MLMHead(nn.Module):
    """The masked-LM head's own parameters: dense + GELU + LayerNorm, and the decoder's bias. The decoder's
    weight is the word-embedding matrix (tied), so it lives in Embeddings; `Bert.mlm_logits` puts the two
    together."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def transform(self, h):
        """The decoder's input: LayerNorm(GELU(dense(h)))."""
        return self.ln(F.gelu(self.dense(h)))

    def forward(self, h, decoder_weight):
        return F.linear(self.transform(h), decoder_weight, self.bias)


class Bert(nn.Module):
    """BERT encoder with its masked-LM head. With type_vocab_size=0 and pooler=False it is DistilBERT. Task
    heads (sequence classification, spans) wrap it in finetune code and read `hidden_states` / `pooled`."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.emb = Embeddings(cfg)
        self.layers = nn.ModuleList([Layer(cfg) for _ in range(cfg.num_layers)])
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size) if cfg.pooler else None
        self.head = MLMHead(cfg)
        # (layer, swap Q/K) for each effective layer: the plain stack, then any layers re-run by SPS (Pea-KD)
        self.schedule = ([(i, False) for i in range(cfg.num_layers)]
                         + [(i, cfg.sps_swap) for i in cfg.sps_layers])
        self.apply(self._init)

    def _init(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=self.cfg.init_std)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
            elif m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, logits_at=None,
                return_logits=True, padded=None):
        """input_ids (batch, length); attention_mask (batch, length), 1 for real tokens, 0 for padding;
        token_type_ids (batch, length), ignored by a student. logits_at: an optional (batch, length) boolean
        mask; logits are then computed only for those rows and returned as (rows, vocab), which is all the MLM
        loss needs. return_logits=False skips the head. padded: whether attention_mask holds any 0, when the
        caller knows it from how the batch was built (False: no mask, so SDPA may pick its fastest kernel);
        None: looked up when the mask is on the CPU, else the mask is used. Never a device sync."""
        if padded is None and attention_mask is not None and attention_mask.device.type == "cpu" \
                and not torch.compiler.is_compiling():
            padded = not bool(attention_mask.all())  # a host tensor: no device to wait for
        real_keys = None
        if attention_mask is not None and padded is not False:
            real_keys = attention_mask.bool()[:, None, None, :]
        x = self.emb(input_ids, token_type_ids)
        hidden = [x]
        for i, swap in self.schedule:
            x = self.layers[i](x, real_keys, swap)
            hidden.append(x)
        pooled = torch.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None
        logits = None
        if return_logits:
            logits = self.mlm_logits(x if logits_at is None else x[logits_at])
        return BertOutput(logits, tuple(hidden), pooled)

    def mlm_logits(self, h):
        """Vocabulary logits for hidden states h (..., hidden): the MLM head with the tied decoder."""
        return self.head(h, self.emb.word.weight)


def masked_mean(states, mask=None) -> torch.Tensor:
    """(B, L, d) -> (B, d): the mean over the real tokens (mask 1; no mask: every position)."""
    if mask is None:
        return states.mean(1)
    m = mask[..., None].to(states.dtype)
    return (states * m).sum(1) / m.sum(1)


def student_from_teacher(teacher: Bert, layers=None, fold_token_types=True) -> Bert:
    """DistilBERT's student (Section 3): the teacher's architecture without token-type embeddings and pooler,
    with the chosen teacher layers copied in order. Default: one layer out of two, [0, 2, 4, 6, 8, 10] for a
    12-layer teacher, as the paper says (the released distilbert-base-uncased used [0, 2, 4, 7, 9, 11]). Word
    and position embeddings, the embedding LayerNorm and the whole MLM head are copied too.

    fold_token_types: the student has no token types, and single-segment pretraining feeds the teacher type 0,
    so the teacher's type-0 vector is added to the student's position embeddings; a student of all the
    teacher's layers then computes exactly what the teacher computes at type 0. False: drop it as the
    reference code does. Returns the student in eval mode, like hf.load_pretrained. Its tensors are copies:
    it shares no storage with the teacher, and the teacher is left as it was."""
    n = teacher.cfg.num_layers
    layers = list(range(0, n, 2)) if layers is None else list(layers)
    if not layers:
        raise ValueError("student layers: the list is empty")
    bad = [i for i in layers if not isinstance(i, int) or not 0 <= i < n]
    if bad:
        raise ValueError(f"student layers {layers}: {bad} out of range for a {n}-layer teacher (0..{n - 1})")
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise ValueError(f"student layers {layers}: must be strictly increasing (no repeats, sorted)")
    ### BEGIN SOLUTION: 10 lines
    # the teacher's config with len(layers) layers, no token-type embeddings and no pooler
    student = Bert(replace(teacher.cfg, num_layers=len(layers), type_vocab_size=0, pooler=False))
    t = teacher.state_dict()
    # copies (not views) of the word and position embeddings, the embedding LayerNorm and the MLM head
    sd = {k: v.clone() for k, v in t.items() if k.startswith(("emb.word", "emb.pos", "emb.ln", "head."))}
    # fold: the teacher's type-0 vector added to every position vector
    if fold_token_types and "emb.types.weight" in t:
        sd["emb.pos.weight"] += t["emb.types.weight"][0]  # (max_position, hidden) + (hidden,)
    # teacher layer layers[j] becomes student layer j
    for j, i in enumerate(layers):
        sd.update({k.replace(f"layers.{i}.", f"layers.{j}.", 1): v.clone() for k, v in t.items()
                   if k.startswith(f"layers.{i}.")})
    # strict: every tensor of the student is set; eval mode, like hf.load_pretrained
    student.load_state_dict(sd)
    return student.eval()
    ### END SOLUTION


def count_parameters(model: Bert) -> dict:
    """Parameters per part (the tied decoder weight is counted once, in the embeddings). Works on the meta
    device."""
    part = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0
    sizes = {"embeddings": part(model.emb), "layers": part(model.layers), "pooler": part(model.pooler),
             "mlm_head": part(model.head)}
    sizes["total"] = sum(sizes.values())
    return sizes


if __name__ == "__main__":
    # A short offline demonstration: build BERT-base and its DistilBERT student, and compare their sizes
    # (Table 3).
    teacher = Bert(BertConfig(num_layers=12))
    student = student_from_teacher(teacher)
    t, s = count_parameters(teacher), count_parameters(student)
    print(f"{'part':<12}{'BERT-base':>14}{'DistilBERT':>14}")
    for k in t:
        print(f"{k:<12}{t[k]:>14,}{s[k]:>14,}")
    print(f"the student has {1 - s['total'] / t['total']:.1%} fewer parameters, taken from teacher layers "
          f"{[0, 2, 4, 6, 8, 10]}")
