"""
The command line of every entry point, in one style: `--key=value` (or `--key value`), `_` and `-` alike in a key.
train.py, finetune.py and reproduce.py read the fields of a dataclass, typed by its annotations, with `--help`
from each field's `opt(default, "help")`; the commands with subcommands or lists of inputs (eval.py, peakd.py,
prepare.py, bench.py) use `ArgumentParser` below, which takes the same spellings.
"""
import argparse
import dataclasses
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
            left = f"  --{f.name}={f.default}"
            lines = textwrap.wrap(helps.get(f.name, ""), 110 - 34) or [""]
            print(f"{left:<34}{lines[0]}" if len(left) < 34 else f"{left}\n{'':<34}{lines[0]}")
            for line in lines[1:]:
                print(" " * 34 + line)
        sys.exit(0)
    hints, values, i = typing.get_type_hints(cls), {}, 0
    while i < len(argv):
        if not argv[i].startswith("--"):
            raise ValueError(f"argument {argv[i]!r}: expected --key=value (see --help)")
        key, eq, value = argv[i][2:].partition("=")
        key = key.replace("-", "_")
        if key not in hints:
            raise ValueError(f"unknown setting --{key} (see --help)")
        if not eq:  # --key value, or a bare --flag
            bare = i + 1 >= len(argv) or argv[i + 1].startswith("--")
            value, i = ("true", i) if bare else (argv[i + 1], i + 1)
        values[key] = convert(key, value, hints[key])
        i += 1
    preset = values.get("preset", "")
    if preset and preset not in (presets or {}):
        raise ValueError(f"unknown preset {preset!r}: choose from {sorted(presets or {})}")
    return cls(**{**(presets or {}).get(preset, {}), **values})


def opt(default, help: str):
    """A config field with its --help text: `lr: float = opt(5e-4, "peak learning rate")`."""
    return dataclasses.field(default=default, metadata={"help": help})


def field_help(cls) -> dict:
    """Each field's --help text (its `opt` metadata)."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def convert(key, value: str, kind):
    """value as a `kind` (str, int, float, bool, or one of them | None)."""
    options = [t for t in typing.get_args(kind) if t is not type(None)] or [kind]
    if len(options) < len(typing.get_args(kind)) and value.lower() in ("none", "null", ""):
        return None
    kind = options[0]
    if kind is bool:
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"--{key}={value!r}: expected true or false")
        return value.lower() in ("true", "1", "yes")
    try:
        return kind(value)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise ValueError(f"--{key}={value!r}: expected {expected}") from None


class ArgumentParser(argparse.ArgumentParser):
    """argparse with this project's spelling: options are declared as `--some_key`, and `--some-key` on the
    command line means the same, as in parse_config; the help keeps the description's line breaks."""

    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kw)

    def parse_known_args(self, args=None, namespace=None):
        def spelled(a):
            key, eq, value = a[2:].partition("=")
            return "--" + key.replace("-", "_") + eq + value if a.startswith("--") and len(a) > 2 else a
        args = sys.argv[1:] if args is None else args
        return super().parse_known_args([spelled(a) for a in args], namespace)
