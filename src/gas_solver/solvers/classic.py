"""What a classic solver declares to be run by name: :class:`ClassicSolver` and its options.

A classic solver is a function ``fn(model, x, grid, cond=None, *, callback=None, **options)``
(``x`` at ``grid[0]``, the result at ``grid[-1]``) that makes ``calls_per_step`` model calls per
grid step. Its module declares it as a :class:`ClassicSolver`, and one entry in
:data:`~gas_solver.solvers.registry.SOLVERS` names it; the spec syntax and its checks,
``SolverSpec.options()``, the options of :func:`~gas_solver.sampling.sample` and the CLI help are
read from that declaration.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..config import excerpt
from ..errors import ConfigError


@dataclass(frozen=True)
class SolverOption:
    """One keyword option of a classic solver and the values a spec may give it.

    Its values have the type of ``default`` (``bool``, ``int`` or ``str``); in spec text they are
    ``true``/``false``, an integer, or the text as it is. An option with a single choice is a
    fixed property of the method (DDIM's order 1): specs record and show it, and it is not passed
    to the function.

    Attributes:
        name: the keyword (and the key in specs, ``sample()`` and ``to_dict``).
        choices: the values it takes.
        default: the value of a spec that gives none.
    """

    name: str
    choices: tuple[Any, ...]
    default: Any

    def parse(self, raw: str) -> Any:
        """The value that spec text ``raw`` gives (``ValueError``/``KeyError`` if none)."""
        if isinstance(self.default, bool):
            return {"true": True, "false": False}[raw.lower()]
        return type(self.default)(raw)

    def check(self, solver: str, value: Any) -> Any:
        """``value`` (``None``: the default) as a spec stores it; :class:`ConfigError` naming the
        option unless it is one of the choices, of the right type."""
        value = self.default if value is None else value
        if isinstance(self.default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{self.name}: must be true or false, got {excerpt(value)}")
        elif not _has_type(value, type(self.default)) or value not in self.choices:
            raise ConfigError(
                f"{self.name}: {solver} supports {self.choices}, got {excerpt(value)}"
            )
        return type(self.default)(value)

    @property
    def passed(self) -> bool:
        """Whether the function takes it (more than one choice)."""
        return len(self.choices) > 1


@dataclass(frozen=True)
class ClassicSolver:
    """A classic solver as the registry knows it.

    Attributes:
        fn: the solver, ``fn(model, x, grid, cond, *, callback, **options) -> Tensor``.
        help: one line for the CLI help: what it is.
        options: its keyword options, in the order specs show them.
        calls_per_step: model calls per grid step (NFE = steps · calls_per_step); a GS can equal
            only a solver with one (:mod:`.linear_form`).
        candidates: the option settings that ``train --init-solver auto`` tries, as spec text
            after the name (``""``: the defaults); none: it is not tried.
    """

    fn: Callable[..., Tensor]
    help: str
    options: tuple[SolverOption, ...] = ()
    calls_per_step: int = 1
    candidates: tuple[str, ...] = ()

    def option(self, name: str) -> SolverOption | None:
        """The option called ``name``, or ``None``."""
        return next((option for option in self.options if option.name == name), None)

    def describe_options(self) -> str:
        """Its options for a help text: ``order=1|2|3 (default 3), variant=…``."""
        return ", ".join(
            f"{o.name}={'|'.join(map(_text, o.choices))}"
            + (f" (default {_text(o.default)})" if o.passed else "")
            for o in self.options
        )


def is_int(value: Any) -> bool:
    """An integer that is not a ``bool``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _has_type(value: Any, kind: type) -> bool:
    return is_int(value) if kind is int else isinstance(value, kind)


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


__all__ = ["ClassicSolver", "SolverOption", "is_int"]
