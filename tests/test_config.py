"""machinery/config.py's command line: the lists of inputs (a tuple field each occurrence adds to, the bare
arguments of the one positional field) and the bare --flag before them, against values written by hand."""
import dataclasses

import pytest

from machinery.config import check_fields, opt, parse_config


@dataclasses.dataclass
class Inputs:
    inputs: tuple[str, ...] = opt((), "files", positional=True)
    dataset: tuple[str, ...] = opt((), "repeatable")
    sizes: tuple[int, ...] = opt((), "numbers", range=">= 1")
    sections: tuple[str, ...] = opt(("a",), "sections", choices=("a", "b"))
    overwrite: bool = opt(False, "a flag")
    out: str = opt("out", "a folder")


@dataclasses.dataclass
class Plain:
    out: str = opt("out", "a folder")
    save: bool = opt(False, "a flag")


def test_bare_arguments_go_to_the_positional_field_in_order():
    c = parse_config(["a.txt", "--out=o", "b.txt", "--overwrite", "c.txt"], Inputs)
    assert c.inputs == ("a.txt", "b.txt", "c.txt") and c.out == "o" and c.overwrite is True
    assert parse_config([], Inputs) == Inputs()  # the defaults: an empty tuple, ("a",)


def test_a_tuple_field_adds_each_occurrence_and_converts_each_value():
    c = parse_config(["--dataset=x:en", "--dataset", "y", "--sizes=3", "--sizes", "4"], Inputs)
    assert c.dataset == ("x:en", "y") and c.sizes == (3, 4)
    assert parse_config(["--sections=b"], Inputs).sections == ("b",)  # given: replaces the default
    with pytest.raises(ValueError, match=r"^--sizes='x': expected an integer$"):
        parse_config(["--sizes=x"], Inputs)


def test_check_fields_checks_each_value_of_a_tuple():
    check_fields(Inputs(sizes=(1, 2), sections=("a", "b")))
    with pytest.raises(ValueError, match=r"^--sizes=0: expected an integer >= 1$"):
        check_fields(Inputs(sizes=(2, 0)))
    with pytest.raises(ValueError, match=r"^--sections='c': expected one of a, b$"):
        check_fields(Inputs(sections=("a", "c")))


def test_a_bool_flag_takes_only_a_true_or_false_after_it():
    assert parse_config(["--overwrite", "false", "x"], Inputs) == Inputs(inputs=("x",))
    assert parse_config(["--save", "no"], Plain).save is False
    with pytest.raises(ValueError, match=r"^argument 'x': expected --key=value"):  # no positional field
        parse_config(["--save", "x"], Plain)
    with pytest.raises(ValueError, match="^argument 'x'"):
        parse_config(["x"], Plain)


def test_help_names_the_positional_field(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--help"], Inputs, doc="the doc")
    out = capsys.readouterr().out
    assert out.startswith("the doc") and "[inputs ...]" in out and "--dataset=()" in out
