"""The classic solvers by name: :data:`SOLVERS`, :func:`register_classic_solver`, and what
is read from the table (the option names every spec shows, ``train --init-solver auto``'s
candidates, the CLI help). A :class:`~gas_solver.solvers.spec.SolverSpec` names one of them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from .classic import ClassicSolver
from .dpm_solver import DDIM, DPMPP
from .heun import HEUN
from .ipndm import IPNDM
from .unipc import UNIPC

SOLVERS: dict[str, ClassicSolver] = {
    "ddim": DDIM,
    "dpmpp": DPMPP,
    "unipc": UNIPC,
    "ipndm": IPNDM,
    "heun": HEUN,
}
"""Classic solver name → its declaration (each in its own module). The spec syntax, ``sample()``'s
options, ``train --init-solver auto``'s candidates and the CLI help are read from this table when
they are used, so a later :func:`register_classic_solver` counts everywhere."""


def _parse_grid(raw: str) -> str | tuple[float, ...]:
    """A grid kind as it is, or a bracketed list of times."""
    if not raw.startswith("["):
        return raw
    if not raw.endswith("]"):
        raise ValueError(raw)
    return tuple(float(v) for v in raw[1:-1].split(","))


GRID_KEYS: dict[str, Callable[[str], Any]] = {
    "nfe": int,
    "grid": _parse_grid,
    "grid_unit": str,
    "t_eps": float,
    "rho": float,
}
"""The keys every spec has besides ``name`` and its solver's options, and how text reads them."""


def register_classic_solver(name: str, solver: ClassicSolver) -> None:
    """Add ``solver`` under ``name`` (a new plain word); ``SOLVERS.pop(name)`` removes it."""
    if not isinstance(solver, ClassicSolver):
        raise ConfigError(f"solver {name!r}: {solver!r} is not a ClassicSolver")
    clash = sorted({option.name for option in solver.options} & {"name", "settings", *GRID_KEYS})
    if clash:
        raise ConfigError(f"solver {name!r}: options {clash} are keys every spec has")
    if name in SOLVERS or not name or any(char in name for char in ":,=[] "):
        raise ConfigError(f"solver: the name {name!r} is taken or not a plain word; choose another")
    SOLVERS[name] = solver


def option_names() -> list[str]:
    """Every registered solver's option names, in the order specs show them: each solver's in
    its own order, a name first declared by a later solver after the one its solver lists
    before it, or last (``order``, ``variant``, ``lower_order_final`` for the built-ins)."""
    names: list[str] = []
    for solver in SOLVERS.values():
        at = len(names)
        for option in solver.options:
            if option.name not in names:
                names.insert(at, option.name)
            at = names.index(option.name) + 1
    return names


def auto_candidates() -> list[str]:
    """The classic specs (without NFE and grid) that ``train --init-solver auto`` tries: each
    registered solver's ``candidates``, in the order of :data:`SOLVERS`."""
    return [
        f"{name}:{options}" if options else name
        for name, solver in SOLVERS.items()
        for options in solver.candidates
    ]


def classic_solvers_help() -> str:
    """The registered solvers and their options, for ``--help`` texts."""
    return "; ".join(
        f"{name} = {solver.help}" + (f": {solver.describe_options()}" if solver.options else "")
        for name, solver in SOLVERS.items()
    )


__all__ = [
    "GRID_KEYS",
    "SOLVERS",
    "auto_candidates",
    "classic_solvers_help",
    "option_names",
    "register_classic_solver",
]
