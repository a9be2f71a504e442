"""Fixtures and helpers shared by the test_losses tests."""
import os
import sys
import torch
import torch.nn as nn
import torch.nn.functional as F
from benchmarks.training import soft_target_loss_chunked  # noqa: E402  (the memory baseline lives with its benchmark)
from losses import cosine_loss, mlm_loss, soft_target_loss  # noqa: E402



sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


f64 = torch.float64


def kldiv_reference(s, t, T, reduction="batchmean"):
    """The reference implementation's L_ce: KLDivLoss on temperature softmaxes, times T^2."""
    kl = nn.KLDivLoss(reduction=reduction)
    return kl(F.log_softmax(s / T, dim=-1), F.softmax(t / T, dim=-1)) * T**2


class TiedHead(nn.Module):
    """MLM-style head: transform (Linear, GELU, LayerNorm) then a decoder whose
    weight is the word embedding matrix."""

    def __init__(self, d, vocab):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d)
        self.transform = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d))
        self.decoder = nn.Linear(d, vocab)
        self.decoder.weight = self.embedding.weight

    def forward(self, h):
        return self.decoder(self.transform(h))


def _saved_for_backward_numels(fn):
    """Run fn() and list the sizes of all tensors autograd saves for backward."""
    sizes = []

    def pack(x):
        sizes.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        fn().backward()
    return sizes


def _accumulation_setup(kind):
    """Returns (leaf parameter, loss on rows `sl` with a given denom, number of rows
    that count toward the loss in `sl`) for one of the losses."""
    torch.manual_seed(10)
    N, d, V = 16, 5, 9
    x = torch.randn(N, d, dtype=f64)
    w = torch.randn(d, V, dtype=f64, requires_grad=True)
    t = torch.randn(N, V, dtype=f64)
    labels = torch.randint(0, V, (N,))
    labels[torch.arange(N) % 3 == 0] = -100  # unmasked positions in the full rows
    if kind == "ce":
        return w, lambda sl, dn: soft_target_loss(x[sl] @ w, t[sl], 2.0, dn), lambda sl: len(x[sl])
    if kind == "ce_chunked":
        return w, (lambda sl, dn: soft_target_loss_chunked(x[sl], x[sl], lambda h: h @ w,
                                                           lambda h: h @ t[:d], 2.0, dn, 2)), \
            lambda sl: len(x[sl])
    if kind == "mlm":
        return w, lambda sl, dn: mlm_loss(x[sl] @ w, labels[sl], dn), \
            lambda sl: int((labels[sl] != -100).sum())
    if kind == "cos":
        return w, lambda sl, dn: cosine_loss(x[sl] @ w, t[sl], dn), lambda sl: len(x[sl])
    raise ValueError(kind)


def masked_first(labels):
    """head_losses' row order: (the positions of the masked rows (label != -100), then of the others; the masked
    rows' labels)."""
    keep = labels != -100
    return torch.cat([keep.nonzero()[:, 0], (~keep).nonzero()[:, 0]]), labels[keep]
