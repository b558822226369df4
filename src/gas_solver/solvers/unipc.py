"""UniPC multistep predictor–corrector, data-prediction form (B(h) variants bh1 and bh2)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..models.base import DiffusionModel
from ._common import Callback, check_grid, check_order, finite_order, report, vp_terms
from .classic import ClassicSolver, SolverOption

UNIPC_VARIANTS = ("bh1", "bh2")


def unipc(
    model: DiffusionModel,
    x: Tensor,
    grid: Tensor,
    cond: Any = None,
    *,
    order: int = 3,
    variant: str = "bh1",
    lower_order_final: bool = True,
    callback: Callback | None = None,
) -> Tensor:
    """UniPC-p: the UniP-p predictor plus the UniC-p corrector, which reuses the next evaluation.

    A step of order ``p`` from ``t_i`` to ``t_{i+1}`` (``h = λ_{i+1} − λ_i``,
    ``r_k = (λ_{i−k} − λ_i)/h``, ``Δ_k = (D_{i−k} − D_i)/r_k``, ``B(h) = −h`` (bh1) or
    ``e^{−h} − 1`` (bh2)):

    * UniP: ``x̃_{i+1} = (σ_{i+1}/σ_i) x_i − α_{i+1}(e^{−h}−1) D_i − α_{i+1} B(h) Σ_{k<p} a_k Δ_k``
    * the model is evaluated once, at ``x̃_{i+1}``: ``D_{i+1} = x̂₀(x̃_{i+1}, t_{i+1})``;
    * UniC: ``x_{i+1}`` = the same with weights ``c_k`` and the extra term ``c_p (D_{i+1} − D_i)``.

    The weights solve ``R a = g`` with ``R_{jk} = r_k^{j−1}`` (``r_p = 1``) and
    ``g_j = j! (−h) φ_{j+1}(−h) / B(h)``, where ``φ₁(z) = (e^z − 1)/z`` and
    ``φ_{k+1}(z) = (φ_k(z) − 1/k!)/z`` (Zhao et al. 2023, *UniPC*, arXiv 2302.04867, §3,
    data-prediction form). As in the UniPC reference code and diffusers, order-2 predictors and
    order-1 correctors use the weight ½ instead of the solve; elsewhere ``B(h)·a`` does not depend
    on B, so bh1 and bh2 differ only in those steps. ``D_{i+1}`` stays the prediction at the
    *uncorrected* point (the next step uses it). The first steps warm up with orders 1, 2, …;
    there is no corrector after the last step, so ``N`` model calls in all. Next to an infinite
    λ (a flow model's σ = 1 or 0) the predictor is of order 1
    (:func:`~gas_solver.solvers._common.finite_order`) and that step is not corrected (UniC's
    ``B(h)`` is infinite there for bh1).

    Args:
        model, x, grid, cond, callback: as in :func:`~gas_solver.solvers.dpm_solver.ddim`
            (``x`` of a callback is the predicted, uncorrected state the model saw).
        order: the predictor order ``p`` (1, 2 or 3); with the corrector the step is of order p+1.
        variant: ``bh1`` (recommended for few steps, unconditional) or ``bh2``.
        lower_order_final: cap the order at the number of remaining steps (the last step is order
            1, the one before at most 2), always, as diffusers' ``UniPCMultistepScheduler`` does.

    Returns:
        ``(B, *sample_shape)`` state at ``grid[-1]``.
    """
    check_order("unipc", order, (1, 2, 3))
    if variant not in UNIPC_VARIANTS:
        raise ConfigError(f"unipc: variant must be one of {UNIPC_VARIANTS}, got {variant!r}")
    grid = check_grid(grid, model.schedule)
    alpha, sigma, lam = vp_terms(model.schedule, grid)
    n = grid.numel() - 1
    denoised: list[Tensor] = []  # D at the most recent grid points, newest last
    x_last, k_last = x, 0
    for i in range(n):
        d = model.data_prediction(x, grid[i], cond)
        report(callback, i, grid[i], x, d)
        if i > 0 and bool(torch.isfinite(lam[i - 1 : i + 1]).all()):
            # correct the previous step with the evaluation just made (no extra call)
            x = _unipc_update(x_last, denoised[-k_last:], lam, alpha, sigma, i - 1, variant, d)
        denoised = [*denoised, d][-order:]
        k = finite_order(lam, i, min(order, i + 1, n - i if lower_order_final else order))
        x_last, k_last = x, k
        x = _unipc_update(x, denoised[-k:], lam, alpha, sigma, i, variant)
    return x


def _unipc_update(
    x: Tensor,
    d: list[Tensor],
    lam: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    i: int,
    variant: str,
    d_next: Tensor | None = None,
) -> Tensor:
    """UniP (``d_next is None``) or UniC step of order ``len(d)`` from grid point ``i`` to ``i+1``.

    ``d`` holds D at grid points ``i − len(d) + 1 … i`` (newest last); ``d_next`` is D at ``i+1``.
    """
    p = len(d)
    h = lam[i + 1] - lam[i]
    rks = torch.stack([*((lam[i - k] - lam[i]) / h for k in range(1, p)), torch.ones_like(h)])
    hh = -h
    h_phi1 = torch.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi1
    rows, g = [], []
    h_phi_k, factorial = h_phi1 / hh - 1.0, 1
    for j in range(1, p + 1):  # g_j = j! · (h φ_{j+1}) / B(h), built by the φ recurrence
        rows.append(rks ** (j - 1))
        g.append(h_phi_k * factorial / b_h)
        factorial *= j + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    R, g = torch.stack(rows), torch.stack(g)
    alpha_t = alpha[i + 1]
    x_next = (sigma[i + 1] / sigma[i]).to(x) * x - (alpha_t * h_phi1).to(x) * d[-1]
    deltas = [(d[-1 - k] - d[-1]) / rks[k - 1].to(x) for k in range(1, p)]
    if d_next is None:  # predictor: p − 1 history differences
        if p == 1:
            return x_next
        rhos = torch.full_like(h, 0.5)[None] if p == 2 else torch.linalg.solve(R[:-1, :-1], g[:-1])
    else:  # corrector: the history differences plus D_{i+1} − D_i
        rhos = torch.full_like(h, 0.5)[None] if p == 1 else torch.linalg.solve(R, g)
        deltas.append(d_next - d[-1])
    residual = sum(rho.to(x) * delta for rho, delta in zip(rhos, deltas, strict=True))
    return x_next - (alpha_t * b_h).to(x) * residual


UNIPC = ClassicSolver(
    unipc,
    "UniPC predictor-corrector, data prediction (Zhao et al. 2023), the paper's teacher",
    (
        SolverOption("order", (1, 2, 3), 3),
        SolverOption("variant", UNIPC_VARIANTS, "bh1"),
        SolverOption("lower_order_final", (False, True), True),
    ),
    candidates=("order=1", "order=2", "order=3", "order=2,variant=bh2", "order=3,variant=bh2"),
)

__all__ = ["UNIPC", "UNIPC_VARIANTS", "unipc"]
