"""
Pea-KD: parameter-efficient and accurate knowledge distillation of BERT (Cho & Kang, 2020), by hand.

Pea-KD distils a fine-tuned teacher into a small student for one task, with two ideas on top of Patient-KD:

1. Shuffled Parameter Sharing, SPS (Pea-KD Section 3.2). A k-layer student is run as a deeper one: after
   layers 1..k it runs layers 1..k again with the very same parameters, but with the Query and Key projections
   exchanged in the second use (q = W_K h, k = W_Q h; values, output projection, feed-forward and LayerNorms
   unchanged). Depth doubles, the parameter count does not move. Without the swap it is "paired" parameter
   sharing. `with_sps` builds such a model around an existing student: every tensor is shared, nothing is
   copied.
2. Pretraining with Teacher's Predictions, PTP (Pea-KD Section 3.3). Before distillation the student learns,
   with a throw-away 4-way head on [CLS], what the teacher "knows" about each training example: 0 = teacher
   right and confident, 1 = right and unsure, 2 = wrong and confident, 3 = wrong and unsure (`ptp_labels`).

The distillation itself is Patient-KD (Sun et al. 2019, "Patient Knowledge Distillation for BERT Model
Compression", Section 3, Eq. 5-7): cross-entropy on the labels, KL to the teacher's softened predictions, and
the "patient" term that pulls the L2-normalised [CLS] states of intermediate student layers towards chosen
teacher layers (`losses.pkd_loss`). The rows that use it are named "PKD" (beta 100), not plain KD.

`--pool=mean` reads the mean of the real tokens' states instead of [CLS], in the head and in the patient term
(`pooled_states`). It is not in the paper; it exists for a teacher whose [CLS] carries nothing below its last
layer: all-MiniLM-L6-v2, a sentence-transformer trained with mean pooling (the spread of its [CLS] state over
256 SST-2 sentences is 0.1-3% of its norm after layers 1-5 and 64% after layer 6). A student made of its
first k < 6 layers then sees one and the same [CLS] vector for every input: with 64 steps it never leaves
the majority class (FT and PKD, SST-2 50.9), and the patient term matches constants.

    python -m peakd run      --task=RTE --data=../shared/data/glue --teacher=out/quickstart/teacher/model
    python -m peakd ablation --task=SST-2,MRPC,RTE --data=../shared/data/glue --teacher=...  # the five students

`--teacher` is a pretrained BERT (a Hugging Face folder, fine-tuned on the task first and cached in
out/peakd/<task>/teacher) or a folder that finetune.py wrote for the task. As in the reference code, the
student takes the first k layers of the pre-trained BERT (not of the fine-tuned teacher), k = half the
teacher's depth, run with SPS on the upper half (6 -> 9 layers for bert-base; k = 3 re-runs all three, 6
layers). The loss weights default to the reference values (alpha 0.7, T 10, beta 100), the PTP thresholds to
the reference table (`PTP_THRESHOLDS`).
"""
from peakd.ablation import PEAKD, VARIANTS, PeakdConfig, load_data, pipeline, scored, train_student
from peakd.pkd import cls_states, pkd_layer_map, pkd_loss_fn, pooled_states, teacher_outputs
from peakd.ptp import PTP_CLASSES, PTP_THRESHOLDS, ptp_labels, ptp_pretrain, ptp_thresholds
from peakd.students import init_student, make_student, pretrained_source, sps_layers, with_sps

__all__ = ["PEAKD", "VARIANTS", "PeakdConfig", "load_data", "pipeline", "scored", "train_student", "cls_states",
           "pkd_layer_map", "pkd_loss_fn", "pooled_states", "teacher_outputs", "PTP_CLASSES", "PTP_THRESHOLDS",
           "ptp_labels", "ptp_pretrain", "ptp_thresholds", "init_student", "make_student", "pretrained_source",
           "sps_layers", "with_sps"]
