"""The text form of a solver spec, :func:`parse_solver_spec` (the inverse of
:meth:`~gas_solver.solvers.spec.SolverSpec.to_string`)::

    NAME[:KEY=VALUE[,KEY=VALUE]...]

    unipc:nfe=8,order=3,variant=bh2,grid=logsnr
    dpmpp:nfe=10,order=2,lower_order_final=true,t_eps=1e-4
    heun:nfe=18,grid=edm,rho=7
    ddim:grid=[1,0.6,0.3,0.001]          # explicit grid in t; NFE follows from its length
    ddim:grid=[999,666,333,0],grid_unit=timestep

Keys are :data:`GRID_KEYS` (``nfe``, ``grid``, ``grid_unit``, ``t_eps``, ``rho``) and the
options the solver declares (:class:`~gas_solver.solvers.classic.ClassicSolver`, e.g. ``order``,
``variant``, ``lower_order_final``); booleans are ``true``/``false``; an explicit grid is a
bracketed, comma-separated list. Spaces are ignored.
"""

from __future__ import annotations

from typing import Any

from ..config import excerpt
from ..errors import ConfigError
from .registry import GRID_KEYS, SOLVERS
from .spec import SolverSpec


def parse_solver_spec(text: str, **defaults: Any) -> SolverSpec:
    """Parse ``NAME[:KEY=VALUE,...]`` (see the module docstring) into a :class:`SolverSpec`.

    ``defaults`` (e.g. ``nfe=8`` from a separate CLI flag) apply where the text gives no value;
    ``nfe`` also not when the text gives an explicit grid (its length fixes the NFE).
    """
    text = "".join(str(text).split())
    name, _, rest = text.partition(":")
    if not name:
        raise ConfigError(f"solver spec {excerpt(text)}: missing solver name, e.g. 'unipc:nfe=8'")
    if name not in SOLVERS:
        raise ConfigError(f"solver: unknown solver {excerpt(name)}, choose one of {list(SOLVERS)}")
    options = {option.name: option.parse for option in SOLVERS[name].options}
    parsers = {**GRID_KEYS, **options}
    values: dict[str, Any] = {}
    for item in _split_top_level(rest) if rest else []:
        key, eq, raw = item.partition("=")
        if not eq or not key or not raw:
            raise ConfigError(
                f"solver spec {excerpt(text)}: expected KEY=VALUE, got {excerpt(item)}"
            )
        if key not in parsers:
            raise ConfigError(
                f"solver spec {excerpt(text)}: unknown key {excerpt(key)}, known: {sorted(parsers)}"
            )
        if key in values:
            raise ConfigError(f"solver spec {excerpt(text)}: {key} given twice")
        try:
            if not raw.isascii():
                raise ValueError(raw)
            values[key] = parsers[key](raw)
        except (ValueError, KeyError):
            raise ConfigError(
                f"solver spec {excerpt(text)}: bad value for {key}: {excerpt(raw)}"
            ) from None
    if isinstance(values.get("grid"), tuple):
        defaults = {k: v for k, v in defaults.items() if k != "nfe"}
    return SolverSpec(name=name, **{**defaults, **values})


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return items


__all__ = ["parse_solver_spec"]
