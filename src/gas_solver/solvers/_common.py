"""Helpers shared by the classic solvers: order checks and the schedule terms of a grid."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..schedules import NoiseSchedule, validate_grid

Callback = Callable[[dict[str, Any]], None]
"""Called after each model call with ``{"i", "t", "x", "denoised"}``: the call's index, its time,
the state the model saw and the data prediction the solver made of it (k-diffusion's convention)."""


def report(callback: Callback | None, i: int, t: Tensor, x: Tensor, denoised: Tensor) -> None:
    """Call ``callback`` (if any) for model call ``i``."""
    if callback is not None:
        callback({"i": i, "t": t, "x": x, "denoised": denoised})


def check_order(solver: str, order: int, supported: Iterable[int]) -> None:
    """Raise :class:`ConfigError` unless ``order`` is one of ``supported``."""
    supported = tuple(supported)
    if isinstance(order, bool) or not isinstance(order, int) or order not in supported:
        raise ConfigError(f"{solver}: order must be one of {supported}, got {order!r}")


def check_grid(grid: Tensor, schedule: NoiseSchedule) -> Tensor:
    """The grid as a float64 tensor, validated (1-D, strictly decreasing, within the schedule)."""
    if not isinstance(grid, Tensor):
        raise TypeError(f"grid must be a 1-D tensor of times, got {type(grid).__name__}")
    return validate_grid(grid.to(torch.float64), schedule)


def vp_terms(schedule: NoiseSchedule, grid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``α(t)``, ``σ(t)`` and ``λ(t)`` on the grid, each ``(N+1,)`` in float64."""
    return schedule.alpha(grid), schedule.sigma(grid), schedule.lambda_(grid)


def finite_order(lam: Tensor, i: int, order: int) -> int:
    """The order, at most ``order``, of a multistep update from grid point ``i`` to ``i + 1``
    whose log-SNRs ``λ_{i+1−k} … λ_{i+1}`` are all finite.

    A flow model's grid may start at ``σ = 1`` (λ = −∞) or end at ``σ = 0`` (λ = +∞); a step into
    or next to such a point is taken at order 1 (``h = ∞``: ``x_{i+1} = (σ_{i+1}/σ_i) x_i +
    α_{i+1} D_i``, i.e. ``x = D_i`` at ``σ = 0``), as diffusers' flow schedulers do. The limit of
    the higher-order terms is the same (their differences are divided by an infinite ``h``).
    """
    while order > 1 and not bool(torch.isfinite(lam[i + 1 - order : i + 2]).all()):
        order -= 1
    return order
