"""One validation layer for the JSON that gas-solver reads back from its own files.

Solver metadata, teacher manifests and sweep states pass through :func:`parse_json` (a size cap,
a nesting cap, strict numbers: no unbounded recursion, no NaN) and then :func:`validate` against a
*schema*: a table of the fields that readers use, each with its type and range. A failure is one
:class:`~gas_solver.errors.CorruptFileError` naming the file and the field and quoting at most
:data:`QUOTE` characters of the value.

A schema is built from small checks::

    SCHEMA = mapping({
        "nfe": integer(1, 100),
        "t_eps": number(0, 1, closed=False),
        "training?": mapping({"iteration?": integer(0)}),   # "?": the key may be absent
        "model_source?": nullable(text()),                   # nullable: it may be null
    })

A check is a callable that returns nothing or raises :class:`Invalid`; :func:`mapping` prefixes the
field's path (``training.iteration``, ``shards[3].sha256``). Keys a schema does not name are
allowed (files carry extra information for people).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from typing import Any

from .errors import CorruptFileError

MAX_JSON_BYTES = 4 << 20
"""Default cap on the JSON text of a file's metadata (a GS of 100 steps writes about 0.2 MB)."""
MAX_JSON_DEPTH = 32
"""Nesting cap: every file of the project nests a few levels deep."""
QUOTE = 200
"""At most this many characters of a bad value go into a message."""
BIG = 2**62
"""Upper bound of counts, sizes and indices: far beyond any real one, and exact in int64."""

Check = Callable[[Any], None]


class Invalid(Exception):
    """A value that fails a check: ``path`` (dotted, from the schema's root) and ``reason``."""

    def __init__(self, reason: str, path: str = "") -> None:
        super().__init__(reason)
        self.reason, self.path = reason, path

    def under(self, step: str) -> Invalid:
        """The same failure seen from the container holding it under ``step``."""
        joined = step if not self.path else f"{step}{'' if self.path[0] == '[' else '.'}{self.path}"
        return Invalid(self.reason, joined)


def quote(value: Any, limit: int = QUOTE) -> str:
    """``value`` as JSON text of at most ``limit`` characters."""
    try:
        text = json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_json(
    text: str | bytes,
    path: str | os.PathLike,
    *,
    what: str = "content",
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """Parse ``text`` (the content of ``path``, or of its ``what``) as strict JSON.

    Checked: at most ``max_bytes`` long, well formed (a :class:`RecursionError` of a deeply nested
    text included), no ``NaN``/``Infinity``, nesting at most ``max_depth`` deep.

    Raises:
        CorruptFileError: naming ``path`` and what is wrong.
    """
    if len(text) > max_bytes:
        raise CorruptFileError(
            f"{path}: its {what} is {len(text)} bytes, more than the {max_bytes} gas-solver "
            "writes; the file is damaged or not such a file"
        )
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError too
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)[:QUOTE]
        raise CorruptFileError(
            f"{path}: its {what} is not readable JSON ({reason}); the file is damaged or not "
            "such a file"
        ) from None
    if _depth(value, max_depth) > max_depth:
        raise CorruptFileError(
            f"{path}: its {what} nests more than {max_depth} levels deep; the file is damaged or "
            "not such a file"
        )
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _depth(value: Any, limit: int) -> int:
    """The nesting depth of a parsed JSON value (a scalar is 1), counted up to ``limit + 1``."""
    deepest, stack = 0, [(value, 1)]
    while stack and deepest <= limit:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        )
        stack.extend((child, depth + 1) for child in children)
    return deepest


def validate(value: Any, schema: Check, path: str | os.PathLike, what: str = "") -> None:
    """Check ``value`` (read from ``path``) against ``schema``.

    Raises:
        CorruptFileError: ``"PATH: [WHAT ]key 'FIELD' is missing"`` or ``"... must be ..., got
            VALUE"``.
    """
    try:
        schema(value)
    except Invalid as err:
        raise CorruptFileError(f"{path}: {field_problem(err, what)}") from None


def field_problem(err: Invalid, what: str = "") -> str:
    """The message of a failed check, without the file: ``[WHAT ]key 'FIELD' REASON``."""
    field = f"key {err.path!r}" if err.path else "the value"
    return f"{what} {field} {err.reason}".strip()


# -- checks ----------------------------------------------------------------------------------------
def _fails(value: Any, expected: str) -> Invalid:
    return Invalid(f"must be {expected}, got {quote(value)}")


def integer(lo: int = 0, hi: int = BIG) -> Check:
    """An integer (not a boolean) from ``lo`` to ``hi``."""

    def check(value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise _fails(value, f"an integer from {lo} to {hi}")

    return check


def number(lo: float = -math.inf, hi: float = math.inf, *, closed: bool = True) -> Check:
    """A finite number from ``lo`` to ``hi`` (``closed=False``: strictly between them)."""
    bounds = f"[{lo:g}, {hi:g}]" if closed else f"({lo:g}, {hi:g})"

    def check(value: Any) -> None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and math.isfinite(value) and (lo <= value <= hi if closed else lo < value < hi)
        if not ok:
            raise _fails(value, f"a finite number in {bounds}")

    return check


def boolean(value: Any) -> None:
    """``true`` or ``false``."""
    if not isinstance(value, bool):
        raise _fails(value, "true or false")


def text(max_length: int | None = None) -> Check:
    """A string of at most ``max_length`` characters."""

    def check(value: Any) -> None:
        if not isinstance(value, str) or (max_length is not None and len(value) > max_length):
            size = "" if max_length is None else f" of at most {max_length} characters"
            raise _fails(value, f"a string{size}")

    return check


def choice(*values: Any) -> Check:
    """One of ``values`` (compared with ``==``, a boolean never standing for a number)."""

    def check(value: Any) -> None:
        if not any(type(value) is type(v) and value == v for v in values):
            raise _fails(value, "one of " + ", ".join(quote(v) for v in values))

    return check


def anything(value: Any) -> None:
    """Any JSON value (its depth and size were checked by :func:`parse_json`)."""


def nullable(check: Check) -> Check:
    """``null`` or what ``check`` accepts."""

    def nullable_check(value: Any) -> None:
        if value is not None:
            try:
                check(value)
            except Invalid as err:
                if err.path:
                    raise
                raise Invalid(f"{err.reason.replace('must be ', 'must be null or ', 1)}") from None

    return nullable_check


def either(*checks: Check) -> Check:
    """What one of ``checks`` accepts (the first whose failure is not about the whole value
    decides the message: a list that fails in an element says which element)."""

    def check(value: Any) -> None:
        reasons = []
        for one in checks:
            try:
                one(value)
                return
            except Invalid as err:
                if err.path:
                    raise
                reasons.append(err.reason.split(", got ")[0].removeprefix("must be "))
        raise _fails(value, " or ".join(reasons))

    return check


def mapping(fields: dict[str, Check] | None = None) -> Check:
    """A JSON object with ``fields``: ``name`` must be present, ``name?`` may be absent; other
    keys are allowed."""
    table = {
        name.rstrip("?"): (name.endswith("?"), check) for name, check in (fields or {}).items()
    }

    def check(value: Any) -> None:
        if not isinstance(value, dict):
            raise _fails(value, "a JSON object")
        for name, (optional, field_check) in table.items():
            if name not in value:
                if optional:
                    continue
                raise Invalid("is missing", name)
            try:
                field_check(value[name])
            except Invalid as err:
                raise err.under(name) from None

    return check


def dict_of(check: Check, keys: Check = anything) -> Check:
    """A JSON object whose every key passes ``keys`` and every value passes ``check``."""

    def dict_check(value: Any) -> None:
        if not isinstance(value, dict):
            raise _fails(value, "a JSON object")
        for name, item in value.items():
            try:
                keys(name)
            except Invalid as err:
                raise Invalid(f"is not a valid key: {err.reason}", name) from None
            try:
                check(item)
            except Invalid as err:
                raise err.under(name) from None

    return dict_check


def list_of(check: Check, min_length: int = 0, max_length: int = BIG) -> Check:
    """A JSON array of ``min_length`` to ``max_length`` items, each passing ``check``."""

    def list_check(value: Any) -> None:
        if not isinstance(value, list) or not min_length <= len(value) <= max_length:
            raise _fails(value, f"a list of {min_length} to {max_length} items")
        for index, item in enumerate(value):
            try:
                check(item)
            except Invalid as err:
                raise err.under(f"[{index}]") from None

    return list_check


def all_of(*checks: Check) -> Check:
    """What every one of ``checks`` accepts (e.g. a table, then a rule across its fields)."""

    def check(value: Any) -> None:
        for one in checks:
            one(value)

    return check


def rule(test: Callable[[Any], Iterable[tuple[str, str]]]) -> Check:
    """A check across fields: ``test(value)`` yields ``(field path, reason)`` for each problem
    (run after the table that makes the fields' types sure); the first is raised."""

    def check(value: Any) -> None:
        for path, reason in test(value):
            raise Invalid(reason, path)

    return check


__all__ = [
    "BIG",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "Invalid",
    "all_of",
    "anything",
    "boolean",
    "choice",
    "dict_of",
    "either",
    "field_problem",
    "integer",
    "list_of",
    "mapping",
    "nullable",
    "number",
    "parse_json",
    "quote",
    "rule",
    "text",
    "validate",
]
