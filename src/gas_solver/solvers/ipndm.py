"""iPNDM: Adams–Bashforth multistep on the EDM ODE, with a lower-order warm start."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..models.base import DiffusionModel
from ._common import Callback, check_grid, check_order, report
from .classic import ClassicSolver, SolverOption

IPNDM_VARIANTS = ("fixed", "variable")

# Adams–Bashforth weights of ε̂_i, ε̂_{i−1}, … (newest first) for a uniform step, orders 1–4.
AB_WEIGHTS = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def ipndm(
    model: DiffusionModel,
    x: Tensor,
    grid: Tensor,
    cond: Any = None,
    *,
    order: int = 4,
    variant: str = "fixed",
    callback: Callback | None = None,
) -> Tensor:
    """Improved PNDM (iPNDM) of order 1–4 on the EDM ODE ``dy/dσ̃ = ε̂`` with ``y = x/α``.

    ``y_{i+1} = y_i + (σ̃_{i+1} − σ̃_i) Σ_j b_j ε̂_{i−j}`` with Adams–Bashforth weights ``b`` of
    order ``k = min(order, i+1)`` (lower-order warm start); in x,
    ``x_{i+1} = (α_{i+1}/α_i) x_i + α_{i+1}(σ̃_{i+1} − σ̃_i) Σ_j b_j ε̂_{i−j}``. Order 1 is DDIM.

    Zhang & Chen (2023), *DEIS*, arXiv 2204.13902 (iPNDM: PNDM with a multistep warm start
    instead of Runge–Kutta), as used with GITS/LD3 schedules (Zhou et al. 2024, *AMED*; Chen et
    al. 2024, *GITS*). ``N`` model calls, none at ``grid[-1]``.

    Args:
        model, x, grid, cond, callback: as in :func:`~gas_solver.solvers.dpm_solver.ddim`.
        order: the maximal Adams–Bashforth order, 1–4.
        variant: ``fixed`` uses the uniform-step weights ``AB_WEIGHTS`` on any grid, as the
            AMED/GITS/LD3 code does (on a non-uniform grid this is only second-order accurate, but
            it is what those results use); ``variable`` uses variable-step Adams–Bashforth weights
            that integrate the interpolating polynomial of ε̂ in σ̃ exactly (order ``k`` on any
            grid; the same as ``fixed`` on a grid uniform in σ̃).

    Returns:
        ``(B, *sample_shape)`` state at ``grid[-1]``.
    """
    check_order("ipndm", order, AB_WEIGHTS)
    if variant not in IPNDM_VARIANTS:
        raise ConfigError(f"ipndm: variant must be one of {IPNDM_VARIANTS}, got {variant!r}")
    grid = check_grid(grid, model.schedule)
    alpha, edm_sigma = model.schedule.alpha(grid), model.schedule.edm_sigma(grid)
    eps: list[Tensor] = []  # ε̂ at the most recent grid points, newest first
    for i in range(grid.numel() - 1):
        eps = [model.noise_prediction(x, grid[i], cond), *eps][:order]
        if callback is not None:
            sigma = alpha[i] * edm_sigma[i]
            report(callback, i, grid[i], x, (x - sigma.to(x) * eps[0]) / alpha[i].to(x))
        k = len(eps)
        if variant == "fixed":
            weights = AB_WEIGHTS[k]
        else:
            weights = adams_bashforth_weights(edm_sigma[i + 1 - k : i + 2]).to(x)
        slope = sum(b * e for b, e in zip(weights, eps, strict=True))
        step = alpha[i + 1] * (edm_sigma[i + 1] - edm_sigma[i])
        x = (alpha[i + 1] / alpha[i]).to(x) * x + step.to(x) * slope
    return x


def adams_bashforth_weights(nodes: Tensor) -> Tensor:
    """Variable-step Adams–Bashforth weights for the step ``nodes[-2] → nodes[-1]``.

    ``nodes``: ``(k+1,)`` the abscissae (here σ̃) of the last ``k`` evaluations, oldest first, then
    the target. Returns ``(k,)`` weights for the evaluations, newest first. With
    ``u_j = (s_{i−j} − s_i)/(s_{i+1} − s_i)`` they solve ``Σ_j w_j u_j^m = ∫₀¹ u^m du = 1/(m+1)``,
    ``m < k``, i.e. they integrate the interpolating polynomial exactly.
    """
    past = nodes[:-1].flip(0)
    u = (past - past[0]) / (nodes[-1] - past[0])
    powers = torch.arange(u.numel(), dtype=u.dtype, device=u.device)
    return torch.linalg.solve(u[None, :] ** powers[:, None], 1.0 / (powers + 1.0))


IPNDM = ClassicSolver(
    ipndm,
    "improved PNDM, Adams-Bashforth on the EDM ODE (Zhang & Chen 2023)",
    (SolverOption("order", (1, 2, 3, 4), 4), SolverOption("variant", IPNDM_VARIANTS, "fixed")),
    candidates=(  # order 1 is DDIM
        "order=2",
        "order=3",
        "order=4",
        "order=2,variant=variable",
        "order=3,variant=variable",
        "order=4,variant=variable",
    ),  # fmt: skip
)

__all__ = ["AB_WEIGHTS", "IPNDM", "IPNDM_VARIANTS", "adams_bashforth_weights", "ipndm"]
