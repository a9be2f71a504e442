"""The real teacher of notebooks 02 and 03: all-MiniLM-L6-v2 with a masked-LM head fitted in a minute.

MiniLM was trained for sentence embeddings and has no masked-LM head; `hf.load_pretrained` gives it a fresh
(random) one. The quickstart trains the whole teacher for 260 steps (`out/quickstart/teacher/model`); a
notebook cannot spend that long, so here only the head (model.MLMHead: dense, GELU, LayerNorm, and the
decoder's bias; the decoder weight is the frozen word-embedding matrix, tied) is fitted on the frozen encoder,
with L_mlm (losses.mlm_loss): the encoder runs once over some training sequences masked as in training, then a
few AdamW steps fit the head on those masked positions. Its guesses are weak (a little better than always
answering the most frequent token; the numbers are printed), but it is a real teacher: every computation
downstream is the one a run makes. NOTEBOOK_QUICK=1 (the tests) fits it on less.
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import data
import losses
from machinery.hf import load_pretrained, resolve_checkpoint, save_pretrained
from model import Bert

NAME = "sentence-transformers/all-MiniLM-L6-v2"
QUICK = bool(os.environ.get("NOTEBOOK_QUICK"))
ROOT = Path(__file__).resolve().parents[1]


def work_folder() -> Path:
    """The scratch folder: run.py shares one between the notebooks of a run (NOTEBOOK_WORK); alone, a new
    one."""
    return Path(os.environ.get("NOTEBOOK_WORK") or tempfile.mkdtemp(prefix="distilbert-notebook-"))


def corpus(work) -> data.TokenData:
    """The quickstart's corpus (Python's own documentation) in the teacher's vocabulary, prepared by
    `python -m corpus` in a fresh interpreter: the corpus holds the docstrings of the modules an interpreter can
    import and of what they define, which would otherwise depend on what the notebook had imported before."""
    out, vocab = Path(work) / "data", resolve_checkpoint(NAME) / "vocab.txt"
    r = subprocess.run([sys.executable, "-m", "corpus", f"--out={out}", f"--vocab={vocab}",
                        "--valid-fraction=0.15", "--overwrite"], cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"python -m corpus failed:\n{r.stderr}")
    print("\n".join(line for line in r.stderr.splitlines() if line.startswith("[data]")))
    return data.TokenData(out)


def masked_rows(teacher, tokens, split, n, max_len=128, seed=0):
    """The encoder's last hidden states at the masked positions of n sequences of `split` (uniform 15%
    masking, data.mask_tokens), with their labels."""
    batches = data.Batches(tokens, split, max_len, batch_size=16, seed=seed)
    special = [v for k, v in tokens.special.items() if k != "mask"]
    hs, ys, seen = [], [], 0
    for b in batches:
        g = data.mask_generator(seed, 0, b["index"])
        ids, labels = data.mask_tokens(b["input_ids"], b["attention_mask"], mask_id=tokens.special["mask"],
                                       vocab_size=tokens.vocab_size, special_ids=special, generator=g)
        with torch.no_grad():
            h = teacher(ids, attention_mask=b["attention_mask"], return_logits=False).hidden_states[-1]
        hs.append(h[labels != -100]); ys.append(labels[labels != -100])
        seen += len(ids)
        if seen >= n:
            break
    return torch.cat(hs), torch.cat(ys)


def teacher_with_head(tokens, work, sequences=96, steps=120, lr=1e-3, rows=256, seed=0):
    """(MiniLM with its fitted head, facts about the fit). Fitted once per scratch folder, then reused."""
    folder = Path(work) / "teacher"
    if (folder / "fit.json").is_file():
        return load_pretrained(folder), json.loads((folder / "fit.json").read_text())
    if QUICK:
        sequences, steps = 16, 5
    torch.manual_seed(seed)
    teacher = load_pretrained(NAME)
    h, y = masked_rows(teacher, tokens, "train", sequences, seed=seed)
    hv, yv = masked_rows(teacher, tokens, "valid", 32, seed=seed)
    head, decoder = teacher.head, teacher.emb.word.weight.detach()
    counts = torch.as_tensor(tokens.counts, dtype=torch.float32).clamp(min=1)
    with torch.no_grad():
        head.bias.copy_(counts.log() - counts.sum().log())   # start from each token's log frequency
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        pick = torch.randint(len(y), (rows,), generator=g)
        loss = losses.mlm_loss(head(h[pick], decoder), y[pick])
        optimizer.zero_grad(); loss.backward(); optimizer.step()
    with torch.no_grad():
        logits = head(hv, decoder)
    counts[list(tokens.special.values())] = 0
    frequent = int(counts.argmax())                          # the frequency baseline's one answer
    fit = {"train_rows": len(y), "steps": steps, "valid_rows": len(yv),
           "valid_accuracy": (logits.argmax(-1) == yv).float().mean().item(),
           "valid_perplexity": losses.mlm_loss(logits, yv).exp().item(),
           "most_frequent_token_accuracy": (yv == frequent).float().mean().item()}
    save_pretrained(teacher.eval(), folder)
    (folder / "fit.json").write_text(json.dumps(fit))
    return teacher, fit
