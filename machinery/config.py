"""
The command line of every entry point, in one style: `--key=value` (or `--key value`), `_` and `-` alike in a key.
A command reads the fields of a dataclass, typed by its annotations, with `--help` from each field's
`opt(default, "help")`. A list of inputs is a tuple field: `--key=a --key=b` appends, and the one field marked
`opt(..., positional=True)` collects the bare arguments (`python -m corpus a.txt b.txt`). A command with
subcommands (`python -m peakd run ...`, `python eval.py mlm`, `python -m reports speed|table`, `python -m course
make|check|grade`) takes the subcommand first and parses the rest.
"""
import dataclasses
import math
import sys
import textwrap
import typing


def parse_config(argv, cls, presets=None, doc=""):
    """The dataclass `cls` from `--key=value` arguments (also `--key value`; a bare `--flag` is true; `-` and
    `_` alike), each converted to its field's type, read with typing.get_type_hints (no eval). `--preset=name`
    starts from presets[name]. `--help` prints `doc` and every field with its default. A bad argument is a
    ValueError."""
    if any(a in ("-h", "--help") for a in argv):
        print(doc)
        helps = field_help(cls)
        for f in dataclasses.fields(cls):
            left = f"  [{f.name} ...]" if f.metadata.get("positional") else f"  --{f.name}={f.default}"
            lines = textwrap.wrap(helps.get(f.name, ""), 110 - 34) or [""]
            print(f"{left:<34}{lines[0]}" if len(left) < 34 else f"{left}\n{'':<34}{lines[0]}")
            for line in lines[1:]:
                print(" " * 34 + line)
        sys.exit(0)
    hints, values, i = typing.get_type_hints(cls), {}, 0
    positional = next((f.name for f in dataclasses.fields(cls) if f.metadata.get("positional")), None)
    while i < len(argv):
        if not argv[i].startswith("--"):
            if positional is None:
                raise ValueError(f"argument {argv[i]!r}: expected --key=value (see --help)")
            key, eq, value = positional, "=", argv[i]
        else:
            key, eq, value = argv[i][2:].partition("=")
            key = key.replace("-", "_")
        if key not in hints:
            raise ValueError(f"unknown setting --{key} (see --help)")
        if not eq:  # --key value, or a bare --flag (followed by no true/false: the next word is not its value)
            following = argv[i + 1] if i + 1 < len(argv) else "--"
            bare = following.startswith("--") or (hints[key] is bool and following.lower() not in BOOLS)
            value, i = ("true", i) if bare else (following, i + 1)
        if typing.get_origin(hints[key]) is tuple:  # a list of inputs: each occurrence adds one
            values[key] = values.get(key, ()) + (convert(key, value, typing.get_args(hints[key])[0]),)
        else:
            values[key] = convert(key, value, hints[key])
        i += 1
    preset = values.get("preset", "")
    if preset and preset not in (presets or {}):
        raise ValueError(f"unknown preset {preset!r}: choose from {sorted(presets or {})}")
    return cls(**{**(presets or {}).get(preset, {}), **values})  # its __post_init__ may check_fields


def opt(default, help: str, range: str = "", choices: tuple = (), positional: bool = False):
    """A config field with its --help text and the values it allows, checked by check_fields:
    `lr: float = opt(5e-4, "peak learning rate", range="> 0")`. range: "> a", ">= a" or an interval such as
    "[0, 1)" (a bound may be written 2**63); choices: the allowed values. A float must also be finite.
    positional=True (on one tuple field, `inputs: tuple[str, ...] = opt((), ..., positional=True)`): the bare
    arguments of the command line."""
    return dataclasses.field(default=default, metadata={"help": help, "range": range, "choices": choices,
                                                        "positional": positional})


def check_fields(obj):
    """Every field of the dataclass `obj` (each value of a tuple field) within its opt(range=, choices=); the
    first that is not is a ValueError of one line naming the setting and what it allows: `--keep_last=-1:
    expected an integer >= 1`. None passes (an optional setting left unset)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        kind = next((t for t in typing.get_args(hints[f.name]) if t is not type(None)), hints[f.name])
        value = getattr(obj, f.name)
        for v in value if isinstance(value, tuple) else (value,):  # a tuple field: each of its values
            why = check_value(f.name, v, f.metadata.get("range", ""), f.metadata.get("choices", ()), kind)
            if why:
                raise ValueError(why)


def check_value(key, value, range="", choices=(), kind=float):
    """The one-line complaint about `--key=value` when value is outside `range` (see opt) or `choices`, or
    None when it is allowed: the one check of every command's settings (opt fields, prepare.py's options)."""
    if value is None or not (range or choices):
        return None
    shown = f"{value!r}" if isinstance(value, str) else f"{value}"
    if choices:
        if value not in choices:
            return f"--{key}={shown}: expected one of {', '.join(map(str, choices))}"
        return None
    low, high, what = _interval(range)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    integer = kind is int
    ok = number and (isinstance(value, int) or (not integer and math.isfinite(value)))
    ok = ok and (low is None or value > low[0] or (low[1] and value == low[0]))
    ok = ok and (high is None or value < high[0] or (high[1] and value == high[0]))
    if ok:
        return None
    return f"--{key}={shown}: expected {'an integer' if integer else 'a finite number'} {what}"


def _interval(text) -> tuple:
    """'>= 1' -> ((1, True), None, '>= 1'); '[0, 1)' -> ((0, True), (1, False), 'in [0, 1)')."""
    def number(s):
        base, _, power = s.strip().partition("**")
        return int(base) ** int(power) if power else float(base) if "." in base or "e" in base else int(base)
    text = text.strip()
    if text.startswith((">=", ">")):
        inclusive = text.startswith(">=")
        return (number(text[2 if inclusive else 1:]), inclusive), None, text
    a, b = text[1:-1].split(",")
    return (number(a), text[0] == "["), (number(b), text[-1] == "]"), f"in {text}"


def field_help(cls) -> dict:
    """Each field's --help text (its `opt` metadata), with the range it allows."""
    def allowed(r):
        return "" if not r else f"; {r}" if r.startswith(">") else f"; in {r}"
    return {f.name: f.metadata.get("help", "") + allowed(f.metadata.get("range", "")) for f in dataclasses.fields(cls)}


BOOLS = ("true", "false", "1", "0", "yes", "no")


def convert(key, value: str, kind):
    """value as a `kind` (str, int, float, bool, or one of them | None)."""
    options = [t for t in typing.get_args(kind) if t is not type(None)] or [kind]
    if len(options) < len(typing.get_args(kind)) and value.lower() in ("none", "null", ""):
        return None
    kind = options[0]
    if kind is bool:
        if value.lower() not in BOOLS:
            raise ValueError(f"--{key}={value!r}: expected true or false")
        return value.lower() in ("true", "1", "yes")
    try:
        return kind(value)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise ValueError(f"--{key}={value!r}: expected {expected}") from None
