"""``sample``: one entry point from noise to samples, for classic and learned solvers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .errors import ConfigError
from .models.base import DiffusionModel
from .schedules import explicit_grid
from .solvers._common import Callback
from .solvers.registry import SolverSpec, check_noise

SPEC_OPTIONS = ("variant", "lower_order_final", "rho", "grid_unit")


def sample(
    model: DiffusionModel,
    noise: Tensor,
    solver: str | SolverSpec | Callable[..., Tensor] = "unipc",
    nfe: int | None = None,
    grid: str | Tensor | Sequence[float] = "logsnr",
    order: int | None = None,
    cond: Any = None,
    t_eps: float | None = None,
    callback: Callback | None = None,
    **options: Any,
) -> Tensor:
    """Integrate the probability-flow ODE of ``model`` from ``noise`` (at t = 1) to the grid's end.

    The caller decides on ``torch.no_grad()``; nothing here disables gradients.

    Args:
        model: the diffusion model.
        noise: ``(B, *model.sample_shape)`` initial state, normally ``N(0, I)`` (no rescaling).
        solver: a classic solver name (``ddim``, ``dpmpp``, ``unipc``, ``ipndm``, ``heun``), a
            :class:`~gas_solver.solvers.SolverSpec`, or any callable
            ``solver(model, noise, cond, *, callback)``
            such as the learned ``GeneralizedSolver`` (then ``grid``, ``order``, ``t_eps`` and
            options must be left at their defaults; ``nfe``, if given, is checked against the
            solver's ``nfe`` attribute when it has one).
        nfe: number of model calls; required with a grid kind, implied by an explicit grid.
        grid: a grid kind (``uniform``, ``logsnr``, ``quadratic``, ``edm``) or explicit,
            strictly decreasing times in [t_min, 1] (a tensor stays differentiable).
        order: solver order (default per solver, see :class:`~gas_solver.solvers.SolverSpec`).
        cond: conditioning passed to the model.
        t_eps: last time of a grid kind (default: the schedule's ``t_eps``).
        callback: called after each model call with ``{"i", "t", "x", "denoised"}`` (every
            solver, classic or learned, k-diffusion's convention).
        **options: further :class:`~gas_solver.solvers.SolverSpec` fields: ``variant``,
            ``lower_order_final``, ``rho``, ``grid_unit``.

    Returns:
        ``(B, *model.sample_shape)`` samples at the last grid time.

    Raises:
        ConfigError (a ``ValueError``): unknown solver or option, NFE < 1, unsupported order,
        noise of the wrong shape; ``ValueError`` for a grid that is not strictly decreasing or
        leaves [t_min, 1].
    """
    if callable(solver) and not isinstance(solver, str):
        given = [name for name, value in (("order", order), ("t_eps", t_eps)) if value is not None]
        if not (isinstance(grid, str) and grid == "logsnr"):
            given.append("grid")
        given += sorted(options)
        if given:
            raise ConfigError(
                f"{', '.join(given)}: only apply to classic solvers named by a string, "
                f"not to {type(solver).__name__}"
            )
        expected = getattr(solver, "nfe", None)
        if nfe is not None and isinstance(expected, int) and expected != nfe:
            raise ConfigError(f"nfe: the solver makes {expected} model calls, but nfe={nfe}")
        check_noise(model, noise)
        if callback is None:  # a callable of the older shape (model, noise, cond) still fits
            return solver(model, noise, cond)
        return solver(model, noise, cond, callback=callback)
    unknown = sorted(set(options) - set(SPEC_OPTIONS))
    if unknown:
        raise ConfigError(f"sample: unknown option(s) {unknown}, known: {list(SPEC_OPTIONS)}")
    if isinstance(grid, str):
        spec = SolverSpec(solver, nfe, grid, order=order, t_eps=t_eps, **options)
        return spec(model, noise, cond, callback=callback)
    values = torch.as_tensor(grid, dtype=torch.float64)
    spec = SolverSpec(solver, nfe, values, order=order, t_eps=t_eps, **options)
    times = explicit_grid(model.schedule, values, unit=spec.grid_unit)
    return spec.run(model, noise, times.to(noise.device), cond, callback=callback)


__all__ = ["sample"]
