"""DDIM and multistep DPM-Solver++ (data prediction), orders 1–3.

Notation (GAS paper §1, DPM-Solver++ §3): on a descending grid ``t_0 > … > t_N`` write
``α_i, σ_i, λ_i = log α_i − log σ_i`` and ``D_i = x̂₀(x_i, t_i)``. One step from ``t_i`` to
``t_{i+1}`` has ``h = λ_{i+1} − λ_i > 0`` and ``φ₁ = e^{−h} − 1``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..models.base import DiffusionModel
from ._common import Callback, check_grid, check_order, finite_order, report, vp_terms
from .classic import ClassicSolver, SolverOption


def ddim(
    model: DiffusionModel,
    x: Tensor,
    grid: Tensor,
    cond: Any = None,
    *,
    callback: Callback | None = None,
) -> Tensor:
    """Deterministic DDIM (η = 0), which is DPM-Solver++ of order 1.

    ``x_{i+1} = (σ_{i+1}/σ_i) x_i − α_{i+1} φ₁ D_i``

    Song, Meng & Ermon (2021), *Denoising Diffusion Implicit Models*, eq. 12 with σ_t = 0; written
    as the first-order solver of Lu et al. (2022b), *DPM-Solver++*, arXiv 2211.01095.

    Args:
        model: the diffusion model (one call per grid point except the last: ``N`` calls).
        x: ``(B, *sample_shape)`` state at ``grid[0]``.
        grid: ``(N+1,)`` strictly decreasing times (float64).
        cond: conditioning passed through to the model.
        callback: called after each model call with ``{"i", "t", "x", "denoised"}``.

    Returns:
        ``(B, *sample_shape)`` state at ``grid[-1]``.
    """
    return dpm_solver_pp(model, x, grid, cond, order=1, callback=callback)


def dpm_solver_pp(
    model: DiffusionModel,
    x: Tensor,
    grid: Tensor,
    cond: Any = None,
    *,
    order: int = 3,
    lower_order_final: bool = False,
    callback: Callback | None = None,
) -> Tensor:
    """Multistep DPM-Solver++ (data prediction), order 1, 2 (2M) or 3 (3M).

    With ``r₀ = h_{i}/h``, ``r₁ = h_{i−1}/h`` (``h_i = λ_i − λ_{i−1}``) and
    ``Δ₀ = (D_i − D_{i−1})/r₀``, ``Δ₁ = (D_{i−1} − D_{i−2})/r₁``:

    * order 1: ``x_{i+1} = (σ_{i+1}/σ_i) x_i − α_{i+1} φ₁ D_i``
    * order 2: ``… − ½ α_{i+1} φ₁ Δ₀`` (2M, "midpoint" form)
    * order 3: ``… + α_{i+1} φ₂ E₁ − α_{i+1} φ₃ E₂`` with ``φ₂ = φ₁/h + 1``,
      ``φ₃ = (φ₁ + h)/h² − ½``, ``E₁ = Δ₀ + r₀/(r₀+r₁)(Δ₀ − Δ₁)``, ``E₂ = (Δ₀ − Δ₁)/(r₀+r₁)``.

    Lu et al. (2022b), *DPM-Solver++*, arXiv 2211.01095, Alg. 2 (2M); the 3M update is the one of
    the DPM-Solver reference code, diffusers and the GAS base solver (arXiv 2510.17699, App. D.3).
    The first steps warm up with orders 1, 2, …; ``N`` model calls in all, none at ``grid[-1]``.
    Steps next to an infinite λ (a flow model's σ = 1 or 0) are of order 1
    (:func:`~gas_solver.solvers._common.finite_order`).

    Note: ``E₂ ≈ h² D''/2`` but gets the coefficient of ``h² D''``, so the 3M step is exact for D
    linear in λ, not quadratic, and converges at order 2 (``tests/test_solvers.py``); doubling
    that term would give order 3. It is kept as is to equal diffusers and the GS initialisation.

    Args:
        model, x, grid, cond, callback: as in :func:`ddim`.
        order: 1, 2 or 3.
        lower_order_final: use order 1 for the last step and at most 2 for the one before. Unlike
            diffusers (which applies it only when there are fewer than 15 steps) it applies
            whenever set; the default ``False`` is the GAS base solver, which has none.

    Returns:
        ``(B, *sample_shape)`` state at ``grid[-1]``.
    """
    check_order("dpm_solver_pp", order, (1, 2, 3))
    grid = check_grid(grid, model.schedule)
    alpha, sigma, lam = vp_terms(model.schedule, grid)
    n = grid.numel() - 1
    denoised: list[Tensor] = []  # D at the most recent grid points, newest last
    for i in range(n):
        denoised = [*denoised, model.data_prediction(x, grid[i], cond)][-order:]
        report(callback, i, grid[i], x, denoised[-1])
        k = finite_order(lam, i, min(order, i + 1, n - i if lower_order_final else order))
        x = _dpmpp_update(
            x, denoised[-k:], lam[i + 1 - k : i + 2], alpha[i + 1], sigma[i + 1] / sigma[i]
        )
    return x


def _dpmpp_update(
    x: Tensor, d: list[Tensor], lam: Tensor, alpha_t: Tensor, sigma_ratio: Tensor
) -> Tensor:
    """One update of order ``len(d)`` from ``λ[-2]`` to ``λ[-1]``; ``d`` holds D at ``λ[:-1]``."""
    h = lam[-1] - lam[-2]
    phi1 = torch.expm1(-h)
    x_next = sigma_ratio.to(x) * x - (alpha_t * phi1).to(x) * d[-1]
    if len(d) == 1:
        return x_next
    r0 = (lam[-2] - lam[-3]) / h
    delta0 = (d[-1] - d[-2]) / r0.to(x)
    if len(d) == 2:
        return x_next - (0.5 * alpha_t * phi1).to(x) * delta0
    r1 = (lam[-3] - lam[-4]) / h
    delta1 = (d[-2] - d[-3]) / r1.to(x)
    e1 = delta0 + (r0 / (r0 + r1)).to(x) * (delta0 - delta1)
    e2 = (delta0 - delta1) / (r0 + r1).to(x)
    phi2, phi3 = phi1 / h + 1.0, (phi1 + h) / h**2 - 0.5
    return x_next + (alpha_t * phi2).to(x) * e1 - (alpha_t * phi3).to(x) * e2


DDIM = ClassicSolver(
    ddim,
    "DDIM, deterministic (Song et al. 2021)",
    (SolverOption("order", (1,), 1),),
    candidates=("",),
)
DPMPP = ClassicSolver(
    dpm_solver_pp,
    "multistep DPM-Solver++ (Lu et al. 2022b), 3M as in the GAS paper",
    (SolverOption("order", (1, 2, 3), 3), SolverOption("lower_order_final", (False, True), False)),
    candidates=("order=2", "order=3"),  # order 1 is DDIM
)

__all__ = ["DDIM", "DPMPP", "ddim", "dpm_solver_pp"]
