r"""
The reports' command line:

    python -m reports speed --teacher out/teacher --student out/student --vocab vocab.txt \
        --sts glue/STS-B/dev.tsv
    python -m reports table --results results/*.json --out results/
"""
from pathlib import Path

from data import TokenData
from finetune import load_encoder
from machinery.config import ArgumentParser
from machinery.files import one_line, write_json, write_text
from machinery.hf import model_folder
from machinery.tokenizer import load_tokenizer
from model import student_from_teacher
from reports.speed import size_speed, speed_markdown
from reports.tables import bar_chart, read_results, results_table, table_markdown


def parser():
    p = ArgumentParser(prog="python -m reports", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed", help="Table 3: parameters, size, CPU inference time on STS-B dev")
    s.add_argument("--teacher", required=True)
    s.add_argument("--student", help="default: student_from_teacher(teacher), one layer out of two")
    s.add_argument("--vocab", help="vocab.txt / tokenizer.json (default: the teacher folder's)")
    s.add_argument("--sts", required=True, help="STS-B dev.tsv")
    s.add_argument("--limit", type=int, help="time only the first N pairs")
    s.add_argument("--batch_size", type=int, default=32)
    s.add_argument("--threads", type=int)
    s.add_argument("--quantize", action="store_true", help="add the int8 (dynamic) quantised student")
    s.add_argument("--data", help="prepared shards: MLM accuracy of the int8 student")
    s.add_argument("--out", help="folder for speed.json and speed.md")
    t = sub.add_parser("table", help="teacher vs student table from the result files of python -m finetune")
    t.add_argument("--results", required=True, nargs="+")
    t.add_argument("--teacher")
    t.add_argument("--student")
    t.add_argument("--out", required=True, help="folder for results.md, results.json, results.png")
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    try:
        speed(a) if a.cmd == "speed" else table(a)
    except (OSError, ValueError) as e:  # a bad path or file: one line, not a traceback
        raise SystemExit(f"reports: error: {one_line(e)}") from None


def speed(a):
    teacher = load_encoder(model_folder(a.teacher))
    student = load_encoder(model_folder(a.student)) if a.student else student_from_teacher(teacher)
    names = ("teacher", "student")
    report = size_speed(dict(zip(names, (teacher, student))),
                        load_tokenizer(a.vocab or model_folder(a.teacher)), a.sts,
                        a.limit, a.batch_size, names[1] if a.quantize else None, a.threads,
                        TokenData(a.data) if a.data else None)
    print(speed_markdown(report))
    if a.out:
        write_json(report, Path(a.out) / "speed.json")
        write_text(speed_markdown(report), Path(a.out) / "speed.md")


def table(a):
    report = results_table(read_results(a.results), a.teacher, a.student)
    write_json(report, Path(a.out) / "results.json")
    write_text(table_markdown(report), Path(a.out) / "results.md")
    bar_chart(report, Path(a.out) / "results.png")
    print(table_markdown(report))
