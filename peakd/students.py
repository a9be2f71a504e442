"""
Pea-KD's students (Cho & Kang, Section 3.2): the first k layers of a pre-trained BERT, run deeper with Shuffled
Parameter Sharing (SPS), without a single new parameter.
"""
import json
from dataclasses import replace
from pathlib import Path

import torch

from model import Bert, student_from_teacher


def make_student(teacher: Bert, num_layers: int, init: str = "first", distilbert: bool = False) -> Bert:
    """A `num_layers`-layer student initialised from the teacher's weights (embeddings, pooler, chosen
    layers). init="first": teacher layers 0..k-1, as Pea-KD (and Patient-KD) do; init="skip": evenly spaced
    layers, i * n // k, which for k = n/2 is DistilBERT's "one layer out of two" (0, 2, 4, ...).
    distilbert=False keeps the teacher's architecture (token-type embeddings, pooler): a truncated BERT, as in
    Pea-KD, which sentence-pair tasks need to tell the two segments apart. distilbert=True builds DistilBERT's
    student (no token types, no pooler) with model.student_from_teacher."""
    n = teacher.cfg.num_layers
    if not 1 <= num_layers <= n:
        raise ValueError(f"num_layers={num_layers}: a student needs 1..{n} layers (the teacher has {n})")
    if init == "first":
        layers = list(range(num_layers))
    elif init == "skip":
        layers = [i * n // num_layers for i in range(num_layers)]
    else:
        raise ValueError(f"init={init!r}: expected 'first' or 'skip'")
    if distilbert:
        return student_from_teacher(teacher, layers)
    student = Bert(replace(teacher.cfg, num_layers=num_layers, sps_layers=()))
    t = teacher.state_dict()
    sd = {k: v for k, v in t.items() if not k.startswith("layers.")}
    for j, i in enumerate(layers):
        sd.update({f"layers.{j}." + k[len(f"layers.{i}."):]: v for k,
                   v in t.items() if k.startswith(f"layers.{i}.")})
    student.load_state_dict({k: v.clone() for k, v in sd.items()})  # strict: every key present, none extra
    return student


def sps_layers(num_layers: int, layers="all", teacher_layers: int = 0) -> tuple:
    """Which layers SPS runs a second time (0-based). "all": every layer, k -> 2k effective layers (the
    reference BertEncoder_SPS: Pea-KD's 3-layer student becomes 6); "upper": the upper half, k // 2 .. k-1
    (the reference BertEncoder_SPS_6layer_student re-runs layers 4-6 of 6, giving 9); "auto": the reference's
    choice, "all" when k is less than half the teacher's `teacher_layers` and "upper" otherwise, so that a
    student of up to half the teacher's layers stays shallower than it (12-layer teacher: k = 3 -> 6, k = 6 ->
    9); or an explicit list."""
    if layers == "auto":
        if teacher_layers < 1:
            raise ValueError("layers='auto' needs the teacher's depth (teacher_layers)")
        layers = "all" if 2 * num_layers < teacher_layers else "upper"
    if layers == "all":
        return tuple(range(num_layers))
    if layers == "upper":
        return tuple(range(num_layers // 2, num_layers))
    if isinstance(layers, str):
        raise ValueError(f"layers={layers!r}: expected 'auto', 'all', 'upper' or a list of layer indices")
    return tuple(int(i) for i in layers)


def with_sps(student: Bert, layers="all", swap: bool = True, teacher_layers: int = 0) -> Bert:
    """The same student run with Shuffled Parameter Sharing (Pea-KD Section 3.2): after its k layers, the
    layers chosen by `sps_layers(k, layers, teacher_layers)` run again with Query and Key exchanged
    (swap=True, SPS) or unchanged (swap=False, paired sharing).

    The result is a new `Bert` whose submodules (embeddings, layers, pooler, MLM head) ARE the student's: one
    tensor per parameter, used twice per forward pass, so its gradient is the sum over both uses and the
    parameter count is the k-layer student's. Training either model trains both. Only the config and the layer
    schedule are new; the empty shell is built on the meta device, so nothing is allocated. model.py does the
    rest: `Bert.schedule` lists (layer, swap) per effective layer and `Layer.attention(x, keep, swap_qk)`
    exchanges q and k. Such a model cannot be saved in Hugging Face's format (HF has no equivalent); save its
    state_dict instead."""
    chosen = sps_layers(student.cfg.num_layers, layers, teacher_layers)
    cfg = replace(student.cfg, sps_layers=chosen, sps_swap=swap)
    with torch.device("meta"):
        shell = Bert(cfg)
    shell.emb, shell.layers, shell.pooler, shell.head = student.emb, student.layers, student.pooler, student.head
    return shell.train(student.training)



def pretrained_source(teacher_path, student_from=""):
    """Where the student's layers come from. The reference code (snudm-starlab/Pea-KD: load_model_finetune
    with --encoder_checkpoint, which defaults to the pre-trained bert-base-uncased checkpoint) copies the
    first k layers of the PRE-TRAINED BERT, not of the task-fine-tuned teacher. So: `student_from` when given
    ("finetuned": the fine-tuned teacher's own encoder); else `teacher_path` when it is a pre-trained BERT;
    else, for a finetune.py folder, the pre-trained model it was fine-tuned from (its finetune.json
    "source")."""
    if student_from:
        return student_from
    meta_file = Path(teacher_path) / "finetune.json"
    if not meta_file.is_file():
        return str(teacher_path)
    meta = json.loads(meta_file.read_text())
    source = meta.get("source") or meta.get("setup", {}).get("source")
    if not source:
        raise ValueError(f"{meta_file}: no 'source' (the pre-trained model it was fine-tuned from); pass "
                         f"--student_from=PRETRAINED_FOLDER, or --student_from=finetuned for the teacher's "
                         f"layers")
    return source


def init_student(teacher, pretrained, cfg, sps=True) -> Bert:
    """The student before any training: layers 0..k-1 (cfg.init="first") of `pretrained` (None: the
    fine-tuned teacher's encoder), k = cfg.student_layers or half the teacher's depth (the reference code's
    6-layer student of bert-base), run with SPS on the layers cfg.sps names ("auto": sps_layers' reference
    choice, 6 -> 9 layers; or indices "0,1,2"). cfg: a PeakdConfig."""
    n = teacher.encoder.cfg.num_layers
    k = cfg.student_layers or max(1, n // 2)
    student = make_student(pretrained or teacher.encoder, k, cfg.init, distilbert=cfg.arch == "distilbert")
    layers = cfg.sps if cfg.sps in ("auto", "all", "upper") else [int(i) for i in cfg.sps.split(",")]
    return with_sps(student, layers, swap=not cfg.no_swap, teacher_layers=n) if sps else student
