"""
The reports of a distillation: how the student compares with its teacher once both are fine-tuned, and what it
costs to run (Sanh et al. 2019, Section 4, Tables 1-3). The lesson's own measures (held-out MLM accuracy, paired
differences and their standard errors, verdicts) are in eval.py.

    speed.py    Table 3: parameters, checkpoint size, CPU (and GPU) inference time on STS-B dev, int8 option
    tables.py   Tables 1-2: teacher vs student per task, GLUE macro score, retention; Markdown, JSON, bar chart
    command.py  python -m reports speed ... | python -m reports table ...
"""
from reports.command import main
from reports.speed import (checkpoint_mb, inference_model, int8_agreement, layer_macs, parameters, quantize,
                           size_speed, speed_markdown, time_pass)
from reports.tables import bar_chart, read_results, results_table, table_markdown
