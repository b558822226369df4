"""An analytic model: a Gaussian mixture whose noise prediction is exact under any VP schedule.

Data ``x₀ ~ Σ_k w_k N(μ_k, s_k² I)``. Under ``x_t = α x₀ + σ ε`` each component stays Gaussian,
``N(α μ_k, (α² s_k² + σ²) I)``, so the score of the noisy marginal is closed-form and

    ε̂(x, t) = −σ ∇ log p_t(x) = σ Σ_k r_k(x) (x − α μ_k) / (α² s_k² + σ²),

with ``r_k`` the posterior responsibilities. Its probability-flow ODE, written in EDM variables
``y = x/α`` and ``σ̃ = σ/α`` as ``dy/dσ̃ = ε̂`` (Karras et al. 2022, eq. 4 with s = α), is solved
to high accuracy by :meth:`GaussianMixtureModel.reference_solution`, the ground truth of tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

from ..errors import ConfigError
from ..schedules import LinearVPSchedule, NoiseSchedule
from .base import DiffusionModel


class GaussianMixtureModel(DiffusionModel):
    """Isotropic Gaussian mixture with exact ε-prediction.

    Args:
        means: ``(K, *sample_shape)`` component means.
        stds: one standard deviation for all components, or ``(K,)``.
        weights: ``(K,)`` mixture weights (normalised here); uniform by default.
        schedule: the noise schedule; linear VP (β₀=0.1, β₁=20) by default.
    """

    def __init__(
        self,
        means: Tensor | Sequence,
        stds: float | Sequence[float] | Tensor = 0.1,
        weights: Sequence[float] | Tensor | None = None,
        schedule: NoiseSchedule | None = None,
    ) -> None:
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.dim() < 2:
            raise ConfigError("means must have shape (K, *sample_shape)")
        k = means.shape[0]
        stds = torch.as_tensor(stds, dtype=torch.float64).flatten().expand(k).clone()
        weights = (
            torch.ones(k, dtype=torch.float64)
            if weights is None
            else torch.as_tensor(weights, dtype=torch.float64)
        )
        if weights.shape != (k,) or bool((weights <= 0).any()) or bool((stds < 0).any()):
            raise ConfigError("weights must be K positive numbers and stds non-negative")
        super().__init__(schedule or LinearVPSchedule(), tuple(means.shape[1:]), "epsilon")
        self.register_buffer("means", means.flatten(1))
        self.register_buffer("stds", stds)
        self.register_buffer("log_weights", (weights / weights.sum()).log())

    @classmethod
    def ring(cls, modes: int = 8, radius: float = 1.0, std: float = 0.05, **kwargs: Any):
        """The 2-D example of the docs: ``modes`` equal Gaussians on a circle."""
        angle = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
        return cls(radius * torch.stack([angle.cos(), angle.sin()], dim=1), std, **kwargs)

    def identity(self) -> dict[str, Any]:
        return {
            **super().identity(),
            "modes": int(self.means.shape[0]),
            "means_sum": float(self.means.sum()),
            "stds_sum": float(self.stds.sum()),
        }

    def network_output(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        flat = x.flatten(1)
        dim = flat.shape[1]
        means, stds = self.means.to(x.dtype), self.stds.to(x.dtype)
        alpha, sigma = self.schedule.alpha(t)[:, None], self.schedule.sigma(t)[:, None]
        var = alpha**2 * stds**2 + sigma**2  # (B, K)
        diff = flat[:, None, :] - alpha[:, :, None] * means  # (B, K, D)
        log_p = self.log_weights.to(x.dtype) - 0.5 * dim * var.log()
        log_p = log_p - 0.5 * diff.pow(2).sum(-1) / var
        resp = log_p.softmax(dim=1)
        eps = sigma * (resp[:, :, None] * diff / var[:, :, None]).sum(1)
        return eps.view_as(x)

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws from the clean data distribution, shape ``(n, *sample_shape)``."""
        comp = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        noise = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        return (self.means[comp] + self.stds[comp, None] * noise).view(n, *self.sample_shape)

    @torch.no_grad()
    def reference_solution(
        self,
        x: Tensor,
        t_start: float = 1.0,
        t_end: float | None = None,
        rtol: float = 1e-10,
        atol: float = 1e-10,
    ) -> Tensor:
        """Solve the probability-flow ODE from ``t_start`` to ``t_end`` with an adaptive
        8th-order Runge–Kutta (scipy DOP853), in the variable ``u = log σ̃`` where it is smooth:
        ``dy/du = σ̃ ε̂(α y, t(σ̃))``. Returns the state at ``t_end`` in the dtype of ``x``.
        """
        t_end = self.schedule.t_eps if t_end is None else t_end
        sched = self.schedule
        ends = torch.tensor([t_start, t_end], dtype=torch.float64)
        u_start, u_end = sched.edm_sigma(ends).log().tolist()
        shape = x.shape

        def rhs(u: float, y: np.ndarray) -> np.ndarray:
            edm_sigma = torch.tensor(math.exp(u), dtype=torch.float64)
            t = sched.t_from_edm_sigma(edm_sigma)
            alpha = sched.alpha(t)
            y_t = torch.from_numpy(y).view(shape)
            eps = self.network_output(alpha * y_t, t.expand(shape[0]))
            return (edm_sigma * eps).flatten().numpy()

        y0 = (x.double().cpu() / sched.alpha(ends[0])).flatten().numpy()
        sol = solve_ivp(rhs, (u_start, u_end), y0, method="DOP853", rtol=rtol, atol=atol)
        if not sol.success:
            raise RuntimeError(f"reference ODE solve failed: {sol.message}")
        y_end = torch.from_numpy(sol.y[:, -1]).view(shape)
        return (sched.alpha(ends[1]) * y_end).to(dtype=x.dtype, device=x.device)
