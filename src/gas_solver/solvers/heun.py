"""EDM's deterministic Heun sampler (2nd order) in σ̃ space."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..models.base import DiffusionModel
from ._common import Callback, check_grid, report
from .classic import ClassicSolver, SolverOption


def heun(
    model: DiffusionModel,
    x: Tensor,
    grid: Tensor,
    cond: Any = None,
    *,
    callback: Callback | None = None,
) -> Tensor:
    """Heun's method (explicit trapezoid) on the EDM ODE ``dy/dσ̃ = ε̂`` with ``y = x/α``.

    ``y' = y_i + Δ ε̂(x_i, t_i)``, ``y_{i+1} = y_i + Δ (ε̂(x_i, t_i) + ε̂(α_{i+1} y', t_{i+1}))/2``
    with ``Δ = σ̃_{i+1} − σ̃_i`` and ``x = α y``.

    Karras et al. (2022), *Elucidating the Design Space of Diffusion-Based Generative Models*,
    Alg. 1 (deterministic, s(t) = α). EDM skips the correction on its last step because its grid
    ends at σ̃ = 0; ours ends at ``t_eps > 0``, so every step is corrected and the cost is
    **2 model calls per step, NFE = 2·(len(grid) − 1)** (EDM counts 2N − 1).

    Args:
        model, x, grid, cond, callback: as in :func:`~gas_solver.solvers.dpm_solver.ddim`; the
            callback sees both calls of a step (indices ``2i`` and ``2i+1``).

    Returns:
        ``(B, *sample_shape)`` state at ``grid[-1]``.
    """
    grid = check_grid(grid, model.schedule)
    alpha, edm_sigma = model.schedule.alpha(grid), model.schedule.edm_sigma(grid)
    for i in range(grid.numel() - 1):
        ratio = (alpha[i + 1] / alpha[i]).to(x)
        step = (alpha[i + 1] * (edm_sigma[i + 1] - edm_sigma[i])).to(x)
        eps = model.noise_prediction(x, grid[i], cond)
        _report_eps(callback, 2 * i, grid[i], x, eps, alpha[i], edm_sigma[i])
        x_euler = ratio * x + step * eps
        eps_next = model.noise_prediction(x_euler, grid[i + 1], cond)
        _report_eps(
            callback, 2 * i + 1, grid[i + 1], x_euler, eps_next, alpha[i + 1], edm_sigma[i + 1]
        )
        x = ratio * x + step * (eps + eps_next) / 2
    return x


def _report_eps(
    callback: Callback | None,
    i: int,
    t: Tensor,
    x: Tensor,
    eps: Tensor,
    alpha: Tensor,
    edm_sigma: Tensor,
) -> None:
    if callback is not None:
        report(callback, i, t, x, (x - (alpha * edm_sigma).to(x) * eps) / alpha.to(x))


HEUN = ClassicSolver(
    heun,
    "EDM's deterministic Heun sampler (Karras et al. 2022), 2 calls per step",
    (SolverOption("order", (2,), 2),),
    calls_per_step=2,
)

__all__ = ["HEUN", "heun"]
