r"""
Fine-tuning BERT / DistilBERT on downstream tasks, and task-specific distillation (Sanh et al. 2019, Section 4).

- Table 1 (GLUE dev sets, "median of 5 runs"): the nine GLUE tasks, `--seeds=1,2,3,4,5` reports the median.
- Table 2: IMDb test accuracy and SQuAD v1.1 dev EM/F1. "DistilBERT (D)" adds a second step of distillation
  during fine-tuning on SQuAD, with a BERT already fine-tuned on SQuAD as the teacher: `--teacher=FOLDER`
  turns on losses.task_distill_loss for any task here.
- Table 3 (parameters, CPU inference time on STS-B) is measured by the reports (python -m reports speed).

The tasks' readers and metrics are in tasks/. Read in order: heads.py (Classifier, SpanQA), saving.py
(save_finetuned, load_finetuned, load_encoder), config.py (FinetuneConfig), fit.py (make_loss, fit, predict),
run.py (load_task, run, find_teacher, main), and the command:

    python -m finetune --task=SST-2 --data=../shared/data/glue --model=out/teacher --out=results
    python -m finetune --task=squad --train_file=train.json --eval_file=dev.json --model=out/student \
        --teacher=results/teacher-squad-seed42          # "DistilBERT (D)"
    python -m finetune --task=imdb --data=aclImdb --model=out/student --seeds=1,2,3

`import finetune as ft` reaches the names of both packages (ft.read_glue, ft.fit, ft.Classifier, ...).
"""
from finetune.config import FinetuneConfig
from finetune.fit import INPUTS, autocast, fit, fit_steps, make_loss, predict, target_scale
from finetune.heads import SEQ_CLASSIF_DROPOUT, Classifier, SpanQA, TaskOutput, kind_of
from finetune.run import (check_vocabulary, find_teacher, held_out, load_task, main, median_run, one_seed,
                          run)
from finetune.saving import HF_HEADS, from_hf_format, hf_format, load_encoder, load_finetuned, save_finetuned
from losses import task_distill_loss, task_loss
from model import masked_mean
from tasks import (GLUE_TASKS, METRICS, OTHER_TASKS, Example, SquadExample, accuracy, encode, evaluate,
                   f1_binary, glue_score, matthews_corrcoef, normalize_answer, pearson, prepare_squad_features,
                   ranks, read_glue, read_imdb, read_squad, spearman, squad_em_f1, squad_evaluate, squad_predict,
                   task_spec)
