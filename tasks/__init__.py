"""
The downstream tasks of DistilBERT's Tables 1 and 2 (Sanh et al. 2019, Section 4): their readers, their official
metrics and their features, shared by fine-tuning (finetune/), Pea-KD (peakd.py), the reports and the benchmarks.

    glue.py      GLUE_TASKS, task_spec, Example, read_glue: the nine GLUE tasks in the standard folder layout
    imdb.py      read_imdb: the aclImdb folders or the release tarball
    squad.py     read_squad, normalize_answer / squad_em_f1 (the official v1.1 script), the document-stride
                 windows (prepare_squad_features) and the best span back (squad_predict, squad_evaluate)
    metrics.py   accuracy, f1_binary, matthews_corrcoef, pearson, spearman, glue_score, evaluate
    features.py  encode: [CLS] a [SEP] (b [SEP]) as padded tensors
"""
from tasks.features import encode, special_id
from tasks.glue import GLUE_TASKS, OTHER_TASKS, Example, read_glue, task_spec
from tasks.imdb import read_imdb
from tasks.metrics import (METRICS, accuracy, evaluate, f1_binary, glue_score, matthews_corrcoef, pearson, ranks,
                           spearman)
from tasks.squad import (SquadExample, normalize_answer, prepare_squad_features, read_squad, squad_em_f1,
                         squad_evaluate, squad_predict)
