"""
A fine-tuned model on disk: finetune.json (encoder config, head) + model.safetensors, in transformers' names where
transformers has the same model, so that its Auto classes load the folder.
"""
import json
from dataclasses import asdict
from pathlib import Path

from finetune.heads import Classifier, SpanQA, kind_of
from machinery.files import write_atomic
from machinery.hf import (config_from_dict, convert_from_hf, convert_to_hf, load_exact, load_pretrained,
                          load_tensors, save_tensors, verify_manifest, write_manifest)
from model import Bert


def save_finetuned(model, path, **info):
    """A fine-tuned model as finetune.json (encoder config, head) + model.safetensors, atomically. Where
    transformers has the same model (BertFor... / DistilBertForSequenceClassification or ...QuestionAnswering)
    the weights carry its names and a config.json is written, so that its Auto classes load the folder;
    otherwise our names."""
    kind, hf = kind_of(model), hf_format(model)
    meta = {"kind": kind, "num_labels": model.num_labels, "style": getattr(model, "style", None),
            "pool": getattr(model, "pool", None),
            "encoder": asdict(model.encoder.cfg), "weights": "hf" if hf else "ours", **info}

    def fill(tmp):
        (tmp / "finetune.json").write_text(json.dumps(meta, indent=2) + "\n")
        weights = hf[1] if hf else {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_tensors(weights, tmp / "model.safetensors")
        if hf:
            (tmp / "config.json").write_text(json.dumps(hf[0], indent=2) + "\n")
        write_manifest(tmp)
    write_atomic(path, fill, folder=True)


HF_HEADS = {"qa": "qa_outputs"}  # our head names -> transformers' (pre_classifier, classifier: the same)


def hf_format(model):
    """(config.json dict, state dict) of the transformers model equal to ours, or None where there is none: a
    DistilBERT head on a BERT encoder, or shared (SPS) layers."""
    enc = model.encoder.cfg
    student = enc.type_vocab_size == 0
    if enc.sps_layers or (kind_of(model) == "classifier" and ((model.style == "distilbert") != student
                                                                 or model.pool != "cls")):
        return None
    try:
        hf_cfg, sd = convert_to_hf(model.encoder)
    except ValueError:
        return None
    task = "QuestionAnswering" if kind_of(model) == "span" else "SequenceClassification"
    hf_cfg["architectures"] = [("DistilBert" if student else "Bert") + "For" + task]
    if task == "SequenceClassification":
        n = model.num_labels
        hf_cfg.update(id2label={str(i): f"LABEL_{i}" for i in range(n)},
                      label2id={f"LABEL_{i}": i for i in range(n)},
                      problem_type="regression" if n == 1 else "single_label_classification")
        hf_cfg["seq_classif_dropout" if student else "classifier_dropout"] = model.dropout.p
    for k, v in model.state_dict().items():
        if not k.startswith("encoder."):
            name, p = k.rsplit(".", 1)
            sd[f"{HF_HEADS.get(name, name)}.{p}"] = v.detach().cpu().contiguous()
    return hf_cfg, sd


def load_finetuned(path):
    path = Path(path)
    if not (path / "finetune.json").is_file():
        raise FileNotFoundError(f"{path}: no finetune.json (not a folder written by python -m finetune)")
    verify_manifest(path)
    meta = json.loads((path / "finetune.json").read_text())
    encoder = Bert(config_from_dict(meta["encoder"]))
    model = SpanQA(encoder) if meta["kind"] == "span" else Classifier(encoder, meta["num_labels"],
                                                                      meta["style"], meta.get("pool") or "cls")
    sd = load_tensors(path / "model.safetensors")
    if meta.get("weights") == "hf":
        sd = from_hf_format(sd, encoder)
    load_exact(model, sd, str(path / "model.safetensors"))
    return model.eval()


def from_hf_format(sd, encoder):
    """Our state dict from the names hf_format wrote."""
    heads = {v: k for k, v in HF_HEADS.items()}
    ours, rest = {}, {}
    for k, v in sd.items():
        name, p = k.rsplit(".", 1)
        if name in ("pre_classifier", "classifier", "qa_outputs"):
            ours[f"{heads.get(name, name)}.{p}"] = v
        else:
            rest[k] = v
    converted, _, _ = convert_from_hf(rest, "distilbert" if encoder.cfg.type_vocab_size == 0 else "bert")
    ours.update({f"encoder.{k}": v for k, v in converted.items()})
    return ours


def load_encoder(path) -> Bert:
    """A Hugging Face folder (what train.py exports), or the encoder of a folder written by save_finetuned."""
    return load_finetuned(path).encoder if (Path(path) / "finetune.json").is_file() else load_pretrained(path)
