"""Validated configuration objects: YAML file and/or command-line flags, flags win.

Each command has one dataclass. Its fields carry their help text (``field(metadata={"help": …})``),
so the YAML keys, the CLI flags (``--batch-size`` for ``batch_size``) and the docs stay one list.
Every bad value stops before any work with a :class:`~gas_solver.errors.ConfigError` naming the
field.

Values are taken as their field's type and nothing else: YAML ``true`` is not an int, a mapping or
list is not text, ``1e20`` is not an int, numbers are finite and written in ASCII digits, ints fit
in int64. Fields that several commands share are checked here, by name, for every command:
``device`` (:func:`gas_solver.runtime.resolve_device`: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or
``auto``, present on this machine), ``batch_size`` (1 to :data:`MAX_BATCH_SIZE`), and ``seeds``
and ``*_seeds`` (counted without being expanded, at most :data:`gas_solver.seeds.MAX_SEEDS`).

Inputs are bounded before they are read (see docs/RELIABILITY.md, "Bad inputs"): a config file
holds at most :data:`MAX_CONFIG_BYTES`, nests at most :data:`MAX_CONFIG_DEPTH` deep, has no
anchors or aliases and no key twice; integer text longer than :data:`MAX_INT_DIGITS` is refused
before ``int()`` reads it; a message quotes at most :data:`EXCERPT` characters of any value.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError, MissingAssetError

C = TypeVar("C")

MAX_BATCH_SIZE = 4096
"""Largest ``batch_size`` any command takes. Batches are cut from it without looking at the
model, so a mistyped value (``640000``) would otherwise allocate until the kernel kills the
process; 4096 is above any batch the paper's settings use (at most a few hundred) and still fits
the small models' memory."""

MAX_INT_DIGITS = 19
"""Digits of the largest int64 (a leading sign and leading zeros aside). Longer integer text is
out of range whatever it says and is refused before ``int()`` reads it: Python refuses text of
over 4300 digits with a ``ValueError``, and reading a long one costs quadratic time."""
_INT_RANGES = {"batch_size": (1, MAX_BATCH_SIZE)}
"""Integer fields whose range is checked here for every command (others: int64 here, then their
command's ``validate``); a number beyond int64 gets this range's message too."""
MAX_CONFIG_BYTES = 1_000_000
"""Largest ``--config`` file. The presets are under 2 KB; a larger file is not a configuration,
and the pure-Python YAML reader would spend seconds on it."""
MAX_CONFIG_DEPTH = 32
"""Deepest nesting of lists and mappings in a config file. Fields are scalars (a few take a short
list); deeper documents are refused before the YAML reader's recursion fails."""
EXCERPT = 200
"""Most characters of a value that an error message quotes (one readable line, whatever was
given)."""

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def excerpt(value: Any, limit: int = EXCERPT) -> str:
    """``repr(value)`` as :func:`shorten` cuts it: what an error message quotes of a value. Never
    fails: an int too long to print is described by its size."""
    if isinstance(value, int) and value.bit_length() > 4 * limit:  # repr would be over limit
        return f"<an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits>"
    return shorten(repr(value), limit)


def shorten(text: str, limit: int = EXCERPT) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def option(default: Any, help: str | Callable[[], str], **kwargs: Any) -> Any:  # noqa: A002
    """A dataclass field with its help text (or a function giving it when the parser is built:
    help read from a registry). ``choices`` may be a registry too (a dict: its keys, as they are
    when the flags are parsed). ``positional=True``: an argument without a flag (``info FILE``)."""
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


def load_config(
    cls: type[C], path: str | Path | None = None, overrides: Mapping | None = None
) -> C:
    """Build ``cls`` from a YAML file and overrides (``None`` values in overrides are ignored)."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = read_config_file(path) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config file must be a mapping of field: value")
        data.update(loaded)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(map(str, set(data) - set(names)))
    if unknown:
        given = shorten(", ".join(unknown))  # YAML keys can be anything
        raise ConfigError(f"unknown field(s) {given}; valid: {', '.join(names)}")
    values = {name: _coerce(name, data[name], hints[name]) for name in names if name in data}
    return validated(cls(**values))


def validated(config: C) -> C:
    """``config`` once it passed its checks (the common fields, its ``validate``, its fields'
    choices): what :func:`load_config` returns, and how one command hands typed settings to the
    step of another (``validated(TrainConfig(...))``) without a round trip through text.

    Raises:
        ConfigError: naming the first field that fails.
    """
    _check_common_fields(config)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()  # first: its messages are the more specific ones
    for f in dataclasses.fields(config):  # flags check their choices in argparse, YAML values here
        choices, value = f.metadata.get("choices"), getattr(config, f.name)
        if choices and value is not None and value not in choices:
            raise ConfigError(f"{f.name}: one of {list(choices)}, got {excerpt(value)}")
    return config


def read_config_file(path: str | Path) -> Any:
    """The YAML document of a ``--config`` file, read within the limits of the module docstring.

    Raises:
        MissingAssetError: no such file.
        ConfigError: unreadable, too large, not valid YAML, or using what configs do not use
            (anchors and aliases, nesting over :data:`MAX_CONFIG_DEPTH`, a key given twice).
    """
    if not os.path.isfile(path):  # False, not OSError, for a name too long to be a file
        raise MissingAssetError(f"config file not found: {shorten(str(path))}")
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read it ({err.strerror or err})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES:,} bytes; not a config file")
    try:
        return yaml.load(raw.decode("utf-8"), Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader
    except _Refused as err:
        raise ConfigError(f"{path}: {err}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        reason = shorten(" ".join(str(err).split()))
        raise ConfigError(f"{path}: not valid YAML ({reason})") from None
    except (RecursionError, MemoryError):  # the limits above should come first
        raise ConfigError(f"{path}: too large or too deeply nested to read") from None


class _Refused(yaml.YAMLError):
    """What configs do not use, met while reading one (the message says what and where)."""


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without anchors and aliases (a few lines can expand to gigabytes),
    nesting over :data:`MAX_CONFIG_DEPTH`, duplicate keys (YAML would keep the last silently) or
    decimal integers too long to read (kept as text: the field then says what is wrong)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise _Refused(f"line {line}: YAML anchors and aliases (&name, *name) are not allowed")
        if self._depth == MAX_CONFIG_DEPTH:
            raise _Refused(f"line {line}: nested deeper than {MAX_CONFIG_DEPTH} levels")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        first: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<:` (no use without aliases): the base class merges it
            key = self.construct_object(key_node, deep=deep)
            try:
                earlier = first.setdefault(key, key_node)
            except TypeError:  # an unhashable key: the base class refuses it
                continue
            if earlier is not key_node:
                raise _Refused(
                    f"line {key_node.start_mark.line + 1}: key {excerpt(key)} given twice "
                    f"(first on line {earlier.start_mark.line + 1})"
                )
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: Any) -> Any:
        if len(node.value.lstrip("+-").lstrip("0_")) > 4 * MAX_INT_DIGITS:
            return self.construct_scalar(node)  # too long for any int form of int64
        return super().construct_yaml_int(node)


_ConfigLoader.add_constructor("tag:yaml.org,2002:int", _ConfigLoader.construct_yaml_int)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field (defaults shown in --help), plus ``--config FILE``."""
    parser.add_argument("--config", metavar="FILE", help="YAML file with any of these fields")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = _base_type(hints[f.name])
        choices = f.metadata.get("choices")
        help_text = f.metadata.get("help", "")
        help_text = help_text() if callable(help_text) else help_text
        if choices:
            help_text += f" ({' | '.join(map(str, choices))})"
        if f.default not in (None, ""):
            help_text += f" (default: {f.default})"
        if f.metadata.get("positional"):
            parser.add_argument(f.name, metavar=f.name.upper(), nargs="?", help=help_text)
        elif kind is bool:
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, help=help_text
            )
        else:
            parser.add_argument(
                flag, dest=f.name, metavar=f.name.upper(), choices=choices, help=help_text
            )


def config_from_args(cls: type[C], args: argparse.Namespace) -> C:
    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)}
    return load_config(cls, getattr(args, "config", None), overrides)


def require(condition: bool, field: str, message: str) -> None:
    """Raise a ConfigError naming ``field`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{field}: {message}")


def _check_common_fields(config: Any) -> None:
    """The checks of ``device`` and ``batch_size``, whichever command has them."""
    if isinstance(getattr(config, "device", None), str):
        from .runtime import resolve_device  # torch: imported only when a command runs

        resolve_device(config.device)
    batch_size = getattr(config, "batch_size", None)
    if isinstance(batch_size, int) and not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ConfigError(f"batch_size: must be from 1 to {MAX_BATCH_SIZE}, got {batch_size}")
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if (f.name == "seeds" or f.name.endswith("_seeds")) and isinstance(value, str):
            from .seeds import count_seeds  # torch: imported only when a command runs

            try:
                count_seeds(value)  # checked as counted, nothing expanded
            except ConfigError as err:
                raise ConfigError(f"{f.name}{str(err).removeprefix('seeds')}") from None


def _base_type(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def _coerce(name: str, value: Any, hint: Any) -> Any:
    optional = type(None) in typing.get_args(hint)
    if optional and isinstance(value, str) and value.lower() in ("none", "null"):
        value = None  # how a flag or a YAML string switches an optional setting off
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name}: a value is required")
    kind = _base_type(hint)
    coerced = _as_kind(value, kind)
    if coerced is None and kind is int and name in _INT_RANGES and _is_integer(value):
        low, high = _INT_RANGES[name]  # beyond int64: the field's own range says what is wrong
        raise ConfigError(f"{name}: must be from {low} to {high}, got {excerpt(value)}")
    if coerced is None:
        what = {bool: "true or false", int: "an integer", float: "a finite number", str: "text"}
        raise ConfigError(f"{name}: expected {what.get(kind, kind.__name__)}, got {excerpt(value)}")
    return coerced


def _is_integer(value: Any) -> bool:
    """An int (not a bool) or integer text, of any size."""
    if isinstance(value, str):
        return _INT.fullmatch(value) is not None
    return isinstance(value, int) and not isinstance(value, bool)


def _read_int(text: str) -> int | None:
    """Integer text as an int if it has at most :data:`MAX_INT_DIGITS` digits; longer text is not
    read at all (``None``)."""
    digits = text.lstrip("+-").lstrip("0")  # Python's limit counts leading zeros too
    if len(digits) > MAX_INT_DIGITS:
        return None
    return -int(digits or "0") if text.startswith("-") else int(digits or "0")


def _as_kind(value: Any, kind: Any) -> Any:
    """``value`` as ``kind`` (bool, int, float or str) if it is one, else ``None``."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        return None
    if isinstance(value, (bool, dict, list, tuple, set)):
        return None  # YAML's true is not 1, and a mapping is not text
    if kind is int:
        if isinstance(value, str) and _INT.fullmatch(value):
            value = _read_int(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return value if isinstance(value, int) and -(2**63) <= value < 2**63 else None
    if kind is float:
        if isinstance(value, str) and _FLOAT.fullmatch(value):
            value = float(value)
        if isinstance(value, int):
            value = float(value)
        return value if isinstance(value, float) and math.isfinite(value) else None
    if kind is str:
        if not isinstance(value, (str, int, float)) or "\x00" in str(value):
            return None  # no path or name can hold a NUL
        return str(value)
    return value
