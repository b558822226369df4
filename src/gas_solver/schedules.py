"""Noise schedules in continuous time, and the time grids solvers walk.

Convention (as in DPM-Solver and the GAS paper, arXiv 2510.17699 §1): the forward process is
``x_t = α(t) x_0 + σ(t) ε``, time ``t ∈ [t_eps, t_max]`` (``t_max`` normally 1), large ``t`` the
noise end. Variance-preserving (VP) schedules have ``α² + σ² = 1``; the flow-matching schedule
(rectified flow: SD3, FLUX) has ``α + σ = 1``. Solvers need only α, σ and λ, so they run on both.
Every schedule exposes

* ``log_alpha(t)``, ``alpha(t)``, ``sigma(t)``;
* the half log-SNR ``λ(t) = log α(t) − log σ(t)`` (decreasing in t) and its inverse ``t(λ)``;
* the EDM noise level ``σ̃(t) = σ(t)/α(t) = e^{−λ(t)}`` and its inverse;
* the network's timestep: DDPM's integer convention ``t_i = (i + 1)/N`` (``N`` =
  ``num_train_timesteps``) for VP schedules, ``N·σ`` for flow models.

All maps are torch functions, differentiable in ``t`` (the learned solver trains its timesteps
through them). Schedules are ``nn.Module`` s so their tables follow ``.to(device)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ConfigError

GRID_KINDS = ("uniform", "logsnr", "quadratic", "edm")
GRID_UNITS = ("t", "sigma", "flow_sigma", "timestep")


def interp_linear(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation of ``fp(xp)`` at ``x``, extrapolating the end segments.

    ``xp`` must be strictly increasing. Differentiable in ``x`` (the segment index is not).
    """
    xp, fp = xp.to(x), fp.to(x)
    idx = torch.searchsorted(xp, x.detach().contiguous()).clamp(1, xp.numel() - 1)
    x0, x1, f0, f1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
    return f0 + (f1 - f0) * (x - x0) / (x1 - x0)


class NoiseSchedule(nn.Module):
    """A noise schedule in continuous time. Subclasses define ``log_alpha`` and ``inverse_lambda``
    (and, when not VP, ``sigma`` and ``lambda_``).

    Attributes:
        t_eps: the default last grid time (smallest time a solver integrates to).
        t_min: the smallest time the schedule accepts in a grid.
        t_max: the first time of every grid (where the noise is drawn).
        num_train_timesteps: ``N`` of the DDPM integer timestep convention ``t_i = (i+1)/N``.
        teacher_t_eps: the last time of a teacher's named grid when its spec gives none
            (``None``: the solver's own, ``t_eps``); models read it as
            :attr:`~gas_solver.models.base.DiffusionModel.teacher_t_eps`.

    A schedule that can be rebuilt from its :meth:`to_dict` alone has :meth:`from_dict`
    and an entry in :data:`SCHEDULES`.
    """

    kind: str = ""
    t_eps: float = 1e-3
    t_min: float = 1e-6
    t_max: float = 1.0
    num_train_timesteps: int = 1000
    teacher_t_eps: float | None = None

    def log_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def inverse_lambda(self, lam: Tensor) -> Tensor:
        """The time ``t`` at which ``λ(t) = lam``."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """JSON-able identity of the schedule (stored in checkpoints and teacher manifests)."""
        raise NotImplementedError

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> NoiseSchedule:
        """The schedule :meth:`to_dict` gave ``spec`` (a ``KeyError`` for a missing field)."""
        raise NotImplementedError

    def matches(self, description: dict[str, Any], rel_tol: float = 1e-6) -> bool:
        """Whether ``description`` (a :meth:`to_dict`, read back from a file) is this noise
        schedule: the same kind and every number within ``rel_tol``. ``t_eps`` is not compared:
        it is where a solver stops, not part of the noise."""
        ours = self.to_dict()
        return description.get("kind") == ours["kind"] and all(
            _close(value, description.get(key), rel_tol)
            for key, value in ours.items()
            if key not in ("kind", "t_eps")
        )

    def alpha(self, t: Tensor) -> Tensor:
        return self.log_alpha(t).exp()

    def sigma(self, t: Tensor) -> Tensor:
        """``σ = √(1 − α²)`` (VP; the flow schedule overrides it)."""
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def lambda_(self, t: Tensor) -> Tensor:
        """Half log-SNR ``λ = log α − log σ`` (VP form; the flow schedule overrides it)."""
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * torch.log(-torch.expm1(2.0 * log_alpha))

    def edm_sigma(self, t: Tensor) -> Tensor:
        """EDM noise level ``σ̃ = σ/α``."""
        return torch.exp(-self.lambda_(t))

    def t_from_edm_sigma(self, edm_sigma: Tensor) -> Tensor:
        return self.inverse_lambda(-torch.log(edm_sigma))

    def timestep(self, t: Tensor) -> Tensor:
        """Continuous DDPM timestep ``N·t − 1`` (an integer on the training grid)."""
        return t * self.num_train_timesteps - 1.0

    def t_from_timestep(self, timestep: Tensor) -> Tensor:
        return (timestep + 1.0) / self.num_train_timesteps


class LinearVPSchedule(NoiseSchedule):
    """Linear-β VP (score-SDE, EDM VP checkpoints): ``log α(t) = −¼ t² (β₁ − β₀) − ½ t β₀``.

    The inverse of λ is closed-form (DPM-Solver, Lu et al. 2022, App. of ``NoiseScheduleVP``):
    with ``u = log(1 + e^{−2λ})``, ``t = 2u / (√(β₀² + 2(β₁−β₀)u) + β₀)``.
    """

    kind = "linear_vp"
    teacher_t_eps = 1e-4
    """The paper's teacher on continuous-time pixel (EDM) models (App. D.2, Table 17)."""

    def __init__(self, beta_0: float = 0.1, beta_1: float = 20.0, t_eps: float = 1e-3) -> None:
        super().__init__()
        if not 0 < beta_0 < beta_1:
            raise ConfigError(
                f"linear VP schedule needs 0 < beta_0 < beta_1, got {beta_0}, {beta_1}"
            )
        self.beta_0, self.beta_1, self.t_eps = float(beta_0), float(beta_1), float(t_eps)

    def log_alpha(self, t: Tensor) -> Tensor:
        return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def inverse_lambda(self, lam: Tensor) -> Tensor:
        u = torch.logaddexp(-2.0 * lam, torch.zeros_like(lam))
        delta = self.beta_1 - self.beta_0
        return 2.0 * u / (torch.sqrt(self.beta_0**2 + 2.0 * delta * u) + self.beta_0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "beta_0": self.beta_0,
            "beta_1": self.beta_1,
            "t_eps": self.t_eps,
        }

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> LinearVPSchedule:
        return cls(spec["beta_0"], spec["beta_1"], spec.get("t_eps", 1e-3))


class DiscreteVPSchedule(NoiseSchedule):
    """Discrete DDPM schedule (LDM, Stable Diffusion, diffusers) made continuous.

    ``log α`` at ``t_i = (i+1)/N`` is ``½ log ᾱ_i``; between (and beyond) those points it is
    piecewise linear in t, hence differentiable. λ is monotone in ``log α``
    (``log α = −½ log(1 + e^{−2λ})``), so the inverse of λ is exact: invert that relation, then the
    piecewise-linear ``log α(t)``.
    """

    kind = "discrete_vp"

    def __init__(self, alphas_cumprod: Tensor | Sequence[float]) -> None:
        super().__init__()
        alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if alphas_cumprod.numel() < 2:
            raise ConfigError("discrete schedule needs at least 2 alphas_cumprod values")
        if not bool(((alphas_cumprod > 0) & (alphas_cumprod < 1)).all()):
            raise ConfigError("alphas_cumprod must lie in (0, 1)")
        if not bool((alphas_cumprod[1:] < alphas_cumprod[:-1]).all()):
            raise ConfigError("alphas_cumprod must be strictly decreasing")
        n = alphas_cumprod.numel()
        self.num_train_timesteps = n
        self.t_eps = self.t_min = 1.0 / n
        t_table = torch.arange(1, n + 1, dtype=torch.float64) / n
        self.register_buffer("t_table", t_table, persistent=False)
        self.register_buffer("log_alpha_table", 0.5 * alphas_cumprod.log(), persistent=False)
        self.register_buffer("alphas_cumprod", alphas_cumprod, persistent=False)

    @classmethod
    def from_betas(cls, betas: Tensor | Sequence[float]) -> DiscreteVPSchedule:
        betas = torch.as_tensor(betas, dtype=torch.float64)
        return cls(torch.cumprod(1.0 - betas, dim=0))

    @classmethod
    def from_beta_range(
        cls,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "scaled_linear",
    ) -> DiscreteVPSchedule:
        """Betas as diffusers builds them: ``linear`` or ``scaled_linear`` (linear in √β)."""
        n = num_train_timesteps
        if beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
        elif beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
        else:
            raise ConfigError(
                f"beta_schedule must be 'linear' or 'scaled_linear', got {beta_schedule!r}"
            )
        return cls.from_betas(betas)

    def log_alpha(self, t: Tensor) -> Tensor:
        return interp_linear(t, self.t_table, self.log_alpha_table)

    def inverse_lambda(self, lam: Tensor) -> Tensor:
        log_alpha = -0.5 * torch.logaddexp(-2.0 * lam, torch.zeros_like(lam))
        return interp_linear(log_alpha, self.log_alpha_table.flip(0), self.t_table.flip(0))

    def to_dict(self) -> dict[str, Any]:
        ac = self.alphas_cumprod
        return {
            "kind": self.kind,
            "num_train_timesteps": self.num_train_timesteps,
            "alphas_cumprod_first_last": [float(ac[0]), float(ac[-1])],
            "alphas_cumprod_sum": float(ac.sum()),
        }


class FlowSchedule(NoiseSchedule):
    """Rectified flow (flow matching; SD3, FLUX, Wan): ``α = 1 − s``, ``σ = s``, with the shifted
    noise level ``s(t) = k t / (1 + (k − 1) t)`` (``k`` = SD3's ``shift``; FLUX's ``mu`` is
    ``k = e^mu``; ``k = 1`` is no shift).

    ``α + σ = 1`` (not VP), so ``σ`` and ``λ`` are given directly:
    ``λ(t) = log((1 − s)/s) = log(1 − t) − log t − log k`` and ``t(λ) = 1 / (1 + k e^λ)``, both
    exact. The network sees the timestep ``N·s`` (diffusers' flow schedulers and transformers).

    Ends: at ``t = 1`` (``σ = 1``, ``α = 0``) λ is −∞, so grids start at ``t_max = 1 − 1/N``
    as diffusers' ``DPMSolverMultistepScheduler`` and ``UniPCMultistepScheduler`` do with
    ``use_flow_sigmas`` (``σ = 0.99967`` for ``k = 3``, ``N = 1000``); the noise drawn there is
    taken as the state, as in diffusers. ``t = 0`` (``σ = 0``, λ = +∞) is allowed as the last grid
    time: solvers take that last step at order 1, ``x = x̂₀``, as diffusers does.

    Args:
        shift: ``k > 0``.
        num_train_timesteps: ``N`` of the timestep convention ``N·σ`` (diffusers: 1000).
        t_eps: the default last time: ``1e-3`` (``σ ≈ k·1e-3``), a finite λ as the GS needs.
    """

    kind = "flow"
    t_min = 0.0

    def __init__(self, shift: float = 1.0, num_train_timesteps: int = 1000, t_eps: float = 1e-3):
        super().__init__()
        if not shift > 0:
            raise ConfigError(f"flow schedule: shift must be > 0, got {shift}")
        if not (isinstance(num_train_timesteps, int) and num_train_timesteps >= 2):
            raise ConfigError("flow schedule: num_train_timesteps must be an integer >= 2")
        self.shift, self.num_train_timesteps = float(shift), num_train_timesteps
        self.t_max = 1.0 - 1.0 / num_train_timesteps
        if not 0 <= t_eps < self.t_max:
            raise ConfigError(f"flow schedule: t_eps must be in [0, {self.t_max}), got {t_eps}")
        self.t_eps = float(t_eps)

    def flow_sigma(self, t: Tensor) -> Tensor:
        """The shifted noise level ``s(t) = k t / (1 + (k − 1) t)``: the flow's σ."""
        return self.shift * t / (1.0 + (self.shift - 1.0) * t)

    def t_from_flow_sigma(self, s: Tensor) -> Tensor:
        """The inverse of :meth:`flow_sigma`: ``t = s / (k − (k − 1) s)``."""
        return s / (self.shift - (self.shift - 1.0) * s)

    def log_alpha(self, t: Tensor) -> Tensor:
        return torch.log1p(-self.flow_sigma(t))

    def alpha(self, t: Tensor) -> Tensor:
        """``1 − s(t)``: finite (extrapolated linearly in s) a little beyond t = 1, where the GS's
        query times ``t_k + ξ_k`` may go."""
        return 1.0 - self.flow_sigma(t)

    def sigma(self, t: Tensor) -> Tensor:
        return self.flow_sigma(t)

    def lambda_(self, t: Tensor) -> Tensor:
        return torch.log1p(-t) - torch.log(t) - math.log(self.shift)

    def inverse_lambda(self, lam: Tensor) -> Tensor:
        return torch.sigmoid(-lam - math.log(self.shift))

    def timestep(self, t: Tensor) -> Tensor:
        """The network's timestep ``N·s(t)`` (a float, as diffusers' flow schedulers pass it)."""
        return self.num_train_timesteps * self.flow_sigma(t)

    def t_from_timestep(self, timestep: Tensor) -> Tensor:
        return self.t_from_flow_sigma(timestep / self.num_train_timesteps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "shift": self.shift,
            "num_train_timesteps": self.num_train_timesteps,
            "t_eps": self.t_eps,
        }

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> FlowSchedule:
        return cls(spec["shift"], spec["num_train_timesteps"], spec["t_eps"])


SCHEDULES: dict[str, type[NoiseSchedule]] = {
    LinearVPSchedule.kind: LinearVPSchedule,
    FlowSchedule.kind: FlowSchedule,
}
"""``kind`` → the schedule class that :func:`schedule_from_dict` rebuilds it with: a new kind is
its class (with :meth:`~NoiseSchedule.from_dict`) and one entry here. Discrete schedules
are not here: their description holds only a checksum of their table, they come with their
model."""


def schedule_from_dict(spec: dict[str, Any]) -> NoiseSchedule:
    """Rebuild a schedule of a kind in :data:`SCHEDULES` from its :meth:`~NoiseSchedule.to_dict`."""
    cls = SCHEDULES.get(spec.get("kind"))
    if cls is None:
        raise ConfigError(f"cannot rebuild schedule {spec.get('kind')!r} from a description")
    return cls.from_dict(spec)


def _close(ours: Any, theirs: Any, rel_tol: float) -> bool:
    """Whether ``theirs`` is the number, or list of numbers, ``ours`` within ``rel_tol``."""
    ours, theirs = ([v] if not isinstance(v, (list, tuple)) else list(v) for v in (ours, theirs))
    return len(ours) == len(theirs) and all(
        isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=rel_tol)
        for a, b in zip(ours, theirs, strict=True)
    )


# ----------------------------------------------------------------------------------------------
# Time grids: N + 1 strictly decreasing times from t_max (the schedule's, normally 1) to t_eps.


def time_grid(
    schedule: NoiseSchedule,
    steps: int,
    kind: str = "logsnr",
    t_eps: float | None = None,
    t_max: float | None = None,
    rho: float = 7.0,
) -> Tensor:
    """A grid of ``steps + 1`` times (float64, descending) from ``t_max`` to ``t_eps``.

    Kinds:
        ``uniform``: uniform in t (on a flow schedule: diffusers' flow-sigma grid, shifted).
        ``logsnr``: uniform in λ (DPM-Solver's ``logSNR``).
        ``quadratic``: uniform in √t (DPM-Solver's ``time_quadratic``).
        ``edm``: Karras et al. (2022) eq. 5, uniform in ``σ̃^{1/ρ}`` between σ̃(t_max) and σ̃(t_eps).

    ``t_eps`` and ``t_max`` default to the schedule's. ``logsnr`` and ``edm`` need finite λ at both
    ends (a flow grid ending at σ = 0 is ``uniform`` or ``quadratic``).
    """
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps (NFE) must be an integer >= 1, got {steps!r}")
    t_eps = schedule.t_eps if t_eps is None else float(t_eps)
    t_max = schedule.t_max if t_max is None else float(t_max)
    _check_range(schedule, torch.tensor([t_max, t_eps], dtype=torch.float64))
    if not t_eps < t_max:
        raise ConfigError(f"t_eps ({t_eps}) must be smaller than t_max ({t_max})")
    ends = torch.tensor([t_max, t_eps], dtype=torch.float64)
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if kind in ("logsnr", "edm") and not bool(torch.isfinite(schedule.lambda_(ends)).all()):
        raise ConfigError(
            f"a {kind} grid needs a finite log-SNR at both ends; t = {t_eps:g} or {t_max:g} has "
            "none on this schedule: use a uniform or quadratic grid, or t_eps > 0"
        )
    if kind == "uniform":
        grid = t_max + (t_eps - t_max) * u
    elif kind == "logsnr":
        lam = schedule.lambda_(ends)
        grid = schedule.inverse_lambda(lam[0] + (lam[1] - lam[0]) * u)
    elif kind == "quadratic":
        r = ends.sqrt()
        grid = (r[0] + (r[1] - r[0]) * u) ** 2
    elif kind == "edm":
        s = schedule.edm_sigma(ends) ** (1.0 / rho)
        grid = schedule.t_from_edm_sigma((s[0] + (s[1] - s[0]) * u) ** rho)
    else:
        raise ConfigError(f"grid kind must be one of {GRID_KINDS}, got {kind!r}")
    grid[0], grid[-1] = t_max, t_eps  # exact ends despite round-off of the inverse maps
    return validate_grid(grid, schedule)


def explicit_grid(
    schedule: NoiseSchedule, values: Sequence[float] | Tensor, unit: str = "t"
) -> Tensor:
    """A grid from explicit values in one of ``GRID_UNITS``.

    Units: ``t`` (this module's time), ``sigma`` (EDM's ``σ̃ = σ/α``, > 0; infinite at a flow
    model's ``σ = 1``), ``flow_sigma`` (a flow schedule's ``σ``, the ``sigmas`` of diffusers' flow
    schedulers, in [0, 1]) or ``timestep`` (the network's: DDPM's integer timesteps, ``N·σ`` for
    flow models).
    """
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    if unit == "t":
        grid = values
    elif unit == "sigma":
        if not bool((values > 0).all()):
            raise ConfigError("EDM sigmas in an explicit grid must be > 0")
        grid = schedule.t_from_edm_sigma(values)
    elif unit == "flow_sigma":
        if not isinstance(schedule, FlowSchedule):
            raise ConfigError(
                f"grid unit 'flow_sigma' needs a flow model, not a {schedule.kind} one"
            )
        grid = schedule.t_from_flow_sigma(values)
    elif unit == "timestep":
        grid = schedule.t_from_timestep(values)
    else:
        raise ConfigError(f"grid unit must be one of {GRID_UNITS}, got {unit!r}")
    return validate_grid(grid, schedule)


def validate_grid(grid: Tensor, schedule: NoiseSchedule | None = None) -> Tensor:
    """Check that ``grid`` is 1-D, has ≥ 2 points, is strictly decreasing and lies in range.

    Raises:
        ConfigError (a ``ValueError``): naming what is wrong, for a one-line CLI message.
    """
    if grid.dim() != 1 or grid.numel() < 2:
        raise ConfigError(
            f"a time grid must be 1-D with at least 2 points, got shape {tuple(grid.shape)}"
        )
    if not bool(torch.isfinite(grid).all()):
        raise ConfigError("time grid contains non-finite values")
    if not bool((grid[1:] < grid[:-1]).all()):
        raise ConfigError(
            f"time grid must be strictly decreasing (from noise t=1 to data), got {_fmt(grid)}"
        )
    if schedule is not None:
        _check_range(schedule, grid)
    elif not bool(((grid > 0) & (grid <= 1)).all()):
        raise ConfigError(f"time grid must lie in (0, 1], got {_fmt(grid)}")
    return grid


def _check_range(schedule: NoiseSchedule, times: Tensor) -> None:
    lo = schedule.t_min * (1 - 1e-9)
    if not bool(((times >= lo) & (times <= 1.0 + 1e-12)).all()):
        raise ConfigError(
            f"times must lie in [t_min={schedule.t_min:g}, 1] for this {schedule.kind} schedule, "
            f"got {_fmt(times)}"
        )


def _fmt(grid: Tensor) -> str:
    vals = grid.detach().double().cpu().tolist()
    shown = ", ".join(f"{v:.6g}" for v in vals[:12])
    return f"[{shown}{', …' if len(vals) > 12 else ''}]"


__all__ = [
    "GRID_KINDS",
    "GRID_UNITS",
    "SCHEDULES",
    "DiscreteVPSchedule",
    "FlowSchedule",
    "LinearVPSchedule",
    "NoiseSchedule",
    "explicit_grid",
    "interp_linear",
    "schedule_from_dict",
    "time_grid",
    "validate_grid",
]
