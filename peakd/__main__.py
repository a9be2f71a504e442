"""
python -m peakd run|ablation --task=SST-2[,MRPC,...] --data=GLUE_ROOT --teacher=MODEL [--key=value ...]

run: the Pea-KD pipeline (its one row) on each task; ablation: every row of VARIANTS. The settings are
PeakdConfig's (--help lists them); a table of the rows per task is printed at the end.
"""
import sys
from dataclasses import replace

import torch

from machinery.config import parse_config
from machinery.files import one_line
from peakd.ablation import PEAKD, VARIANTS, PeakdConfig, pipeline

COMMANDS = {"run": [PEAKD], "ablation": list(VARIANTS)}


def table(results) -> str:
    """A markdown table: one row per variant, one column per task (the task's metrics x 100)."""
    names = list(dict.fromkeys(n for r in results for n in r["rows"]))
    metric = lambda row: " / ".join(f"{100 * row[m]:.1f}" for m in ("accuracy", "f1") if m in row)
    head = "| model | params | depth | " + " | ".join(r["task"] + (" (acc / F1)" if "f1" in next(iter(r["rows"].values()))
                                                                 else " (acc)") for r in results) + " |"
    lines = [head, "|" + "---|" * (3 + len(results))]
    for n in names:
        row0 = next(r["rows"][n] for r in results if n in r["rows"])
        cells = [metric(r["rows"][n]) if n in r["rows"] else "" for r in results]
        lines.append(f"| {n} | {row0['parameters'] / 1e6:.2f}M | {row0['depth']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        parse_config(["--help"], PeakdConfig, doc=__doc__)
    command, argv = argv[0], argv[1:]
    try:
        if command not in COMMANDS:
            raise ValueError(f"command {command!r}: expected run or ablation")
        cfg = parse_config(argv, PeakdConfig, doc=__doc__)
        if not (cfg.task and cfg.data and cfg.teacher):
            raise ValueError("--task, --data and --teacher are required")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        results = [pipeline(replace(cfg, task=task), COMMANDS[command]) for task in cfg.task.split(",")]
    except (OSError, ValueError) as e:  # a bad setting, path or file: one line, not a traceback
        raise SystemExit(f"peakd: error: {one_line(e)}") from None
    print(table(results))
    return results


if __name__ == "__main__":
    main()
