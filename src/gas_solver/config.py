"""Validated configuration objects: YAML file and/or command-line flags, flags win.

Each command has one dataclass. Its fields carry their help text (``field(metadata={"help": …})``),
so the YAML keys, the CLI flags (``--batch-size`` for ``batch_size``) and the docs stay one list.
Every bad value stops before any work with a :class:`~gas_solver.errors.ConfigError` naming the
field.

Values are taken as their field's type and nothing else: YAML ``true`` is not an int, a mapping or
list is not text, ``1e20`` is not an int, numbers are finite and written in ASCII digits, ints fit
in int64. Two fields that several commands share are checked here, by name, for every command:
``device`` (:func:`gas_solver.runtime.resolve_device`: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or
``auto``, present on this machine) and ``batch_size`` (1 to :data:`MAX_BATCH_SIZE`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
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

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def option(default: Any, help: str, **kwargs: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A dataclass field with its help text."""
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


def load_config(
    cls: type[C], path: str | Path | None = None, overrides: Mapping | None = None
) -> C:
    """Build ``cls`` from a YAML file and overrides (``None`` values in overrides are ignored)."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise MissingAssetError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config file must be a mapping of field: value")
        data.update(loaded)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(unknown)}; valid: {', '.join(names)}")
    values = {name: _coerce(name, data[name], hints[name]) for name in names if name in data}
    config = cls(**values)
    _check_common_fields(config)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()  # first: its messages are the more specific ones
    for f in dataclasses.fields(cls):  # flags check their choices in argparse, YAML values here
        choices = f.metadata.get("choices")
        if choices and f.name in values and values[f.name] not in choices:
            raise ConfigError(f"{f.name}: one of {list(choices)}, got {values[f.name]!r}")
    return config


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field (defaults shown in --help), plus ``--config FILE``."""
    parser.add_argument("--config", metavar="FILE", help="YAML file with any of these fields")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = _base_type(hints[f.name])
        choices = f.metadata.get("choices")
        help_text = f.metadata.get("help", "")
        if choices:
            help_text += f" ({' | '.join(map(str, choices))})"
        if f.default not in (None, ""):
            help_text += f" (default: {f.default})"
        if kind is bool:
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


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


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
    if coerced is None:
        what = {bool: "true or false", int: "an integer", float: "a finite number", str: "text"}
        raise ConfigError(f"{name}: expected {what.get(kind, kind.__name__)}, got {value!r}")
    return coerced


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
            value = int(value)
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
