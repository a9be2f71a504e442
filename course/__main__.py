"""
The course assignment's command, in the style of nbgrader: the instructor's copy is the reference, with each
graded function's solution between `### BEGIN SOLUTION: N lines` and `### END SOLUTION` (course/markers.py).

    python -m course parts                      the parts table: name, file, function, points, tests
    python -m course make OUT [--kit=KIT] [--lean] [--validate=false]
                                                the student version (a new folder), validated; KIT: the grading kit
    python -m course grade SUBMISSION... [--kit=KIT] [--csv=FILE] [--jobs=N] [--part=NAME] [--hide_hidden]
                     [--deadline=TIME] [--gradescope=FILE] ...   grades submissions part by part, contained
    python -m course check PART                 a student runs one part's visible tests (or `all`)
    python KIT/grade.py SUBMISSION... [options]   the same as `grade --kit=KIT`, with the kit's own grader

`python -m course COMMAND --help` lists a command's settings. Settings are `--key=value` (or `--key value`; a
bare `--flag` is true; `-` and `_` alike), as every command of this project (machinery/config.py); the folders
and the part come before or among them. The instructors' guide is docs/instructors.md.
"""
import dataclasses
import sys
import textwrap

from course import gradebook
from course.check import check, print_parts
from course.grade import grade_command
from course.make import make
from course.parts import AssignmentError
from machinery.config import check_fields, opt, parse_config


@dataclasses.dataclass
class PartsConfig:
    """python -m course parts: the parts table (name, file, function, points, what, how many tests)."""


@dataclasses.dataclass
class MakeConfig:
    """python -m course make OUT [settings]: writes the student version to OUT, a new folder: the solutions
    blanked, the hidden tests left out, HANDOUT.md in place of the instructors' README sections, only files git
    tracks. Validates that each part's tests fail blanked and pass with its solution alone."""
    args: tuple[str, ...] = opt((), "OUT, the new folder", positional=True)
    kit: str = opt("", "also write the grading kit (no solutions) to KIT, a new folder")
    lean: bool = opt(False, "leave out the files that hold near-solutions (course.parts.LEAN, named in "
                            "docs/instructors.md)")
    validate: bool = opt(True, "validate the parts before writing (false: skip it)")


@dataclasses.dataclass
class GradeConfig:
    """python -m course grade SUBMISSION... [settings]: grades each SUBMISSION folder (its name is the student's
    id) part by part: each part's function alone in a contained process of its own, with the kit's tests (hidden
    ones too) and data; without --kit, from this instructor's tree."""
    args: tuple[str, ...] = opt((), "SUBMISSION folders", positional=True)
    kit: str = opt("", "the grading kit that `make --kit` wrote")
    csv: str = opt("", "the gradebook: one row per submission (history in FILE's .history.jsonl)")
    reports: str = opt("", "ID.json and ID.md per submission (default: reports/ beside the CSV)")
    json: str = opt("", "one submission's report as JSON")
    gradescope: str = opt("", "one submission's results.json in Gradescope's autograder format")
    gradescope_hidden: str = opt("after_published", "the visibility of hidden tests in --gradescope",
                                 choices=gradebook.VISIBILITIES)
    deadline: str = opt("", "the due time (ISO 8601, e.g. 2026-03-01T23:59:00+01:00; UTC without an offset): a "
                            "later submission is marked late")
    metadata: str = opt("", "Gradescope's submission_metadata.json: the submission time and the due date")
    jobs: int = opt(2, "parts graded at a time", range=">= 1")
    part: str = opt("", "grade this part only, merged into the earlier reports")
    hide_hidden: bool = opt(False, 'name no hidden test: "a hidden test failed"')
    uncontained: bool = opt(False, "run student code without containment (not on Linux: it then runs as you, "
                                   "with your files and network)")


@dataclasses.dataclass
class CheckConfig:
    """python -m course check PART: runs the visible tests of PART (or all) in this tree, as grading runs them:
    ok / FAIL with expected and actual values, and the points they are worth. Linux, macOS and Windows."""
    args: tuple[str, ...] = opt((), "PART, or all", positional=True)


# each command: its settings, its positional arguments (a name, and whether several may be given)
COMMANDS = {"parts": (PartsConfig, None, False), "make": (MakeConfig, "OUT", False),
            "grade": (GradeConfig, "SUBMISSION", True), "check": (CheckConfig, "PART", False)}


def parse(argv):
    """(command, its config, its positional arguments) from argv; a bad argument is a ValueError."""
    if not argv or argv[0] not in COMMANDS:
        what = f"unknown command {argv[0]!r}" if argv and not argv[0].startswith("-") else "no command"
        raise ValueError(f"{what}: choose from {', '.join(COMMANDS)} (python -m course --help)")
    cls, name, several = COMMANDS[argv[0]]
    config = parse_config(argv[1:], cls, doc=textwrap.fill(" ".join(cls.__doc__.split()), 110))
    check_fields(config)
    positional = list(getattr(config, "args", ()))
    wanted = (1, 10 ** 9) if several else (1, 1) if name else (0, 0)
    if not wanted[0] <= len(positional) <= wanted[1]:
        expected = f"one or more {name}" if several else f"one {name}" if name else "no argument"
        raise ValueError(f"{argv[0]}: expected {expected}, got {' '.join(positional) or 'none'} (see --help)")
    return argv[0], config, positional


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return 0
    try:
        command, a, args = parse(argv)
        if command == "parts":
            print_parts()
        elif command == "make":
            make(args[0], check=a.validate, kit=a.kit or None, lean=a.lean)
        elif command == "grade":
            grade_command(a, args)
        elif command == "check":
            return 1 if check(args[0]) else 0
    except (AssignmentError, gradebook.BookError, OSError, ValueError) as e:
        print(f"course: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
