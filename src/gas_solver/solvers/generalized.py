"""The Generalized Solver (GS) of GAS (Oganov et al., arXiv 2510.17699): a learned few-step sampler.

GS is DPM-Solver++(3M) (multistep, data prediction, third order up to and including the last step,
no lower-order final) plus three learned parameter sets, all zero-initialised so that an untrained
GS *is* DPM-Solver++(3M) on its initial grid (paper eq. 12–14,
App. D.3):

* ``mu_logit`` θ ``(N−1,)``: the timesteps, through a stick-breaking map (§2.3),
* ``a_hat`` â and ``c_hat`` ĉ: additive corrections on the coefficients of the update, over the
  whole history of states ``y_j`` and data predictions ``D_j`` (§2.2),
* ``t_couple`` ξ ``(N,)``: offsets of the times at which the network is queried (§2.4).

Notation (paper eq. 12–14; the authors' ``generalized_solver.py``). States ``y_0 = noise`` at ``t_0 = 1``, …, ``y_N`` (the output) at
``t_N = t_eps``; ``D_k`` is the data prediction at ``y_k``, for ``k = 0 … N−1`` (N network calls,
none at ``t_N``). For the step ``k = 1 … N`` from ``t_{k−1}`` to ``t_k``:
``h_k = λ(t_k) − λ(t_{k−1}) > 0``, ``A_k = σ(t_k)/σ(t_{k−1})``, ``φ1 = expm1(−h_k)``,
``B_k = α(t_k)·φ1``, and the step's corrections â_i, ĉ_i are indexed by ``i`` = "steps back":

* ``k = 1``: ``y_1 = (A_1 + â_1) y_0 − (B_1 + ĉ_1) D_0`` (DDIM).
* ``k = 2``: with ``r0 = h_1/h_2`` and ``Δ0 = (D_1 − D_0)/r0``,
  ``y_2 = (A_2 + â_1) y_1 − (B_2 + ĉ_1) D_1 − (½B_2 + ĉ_2) Δ0 + â_2 y_0``.
* ``k ≥ 3``: with ``r0 = h_{k−1}/h_k``, ``r1 = h_{k−2}/h_k``, ``Δ0 = (D_{k−1} − D_{k−2})/r0``,
  ``Δ1 = (D_{k−2} − D_{k−3})/r1``, ``E1 = Δ0 + r0/(r0+r1)·(Δ0 − Δ1)``, ``E2 = (Δ0 − Δ1)/(r0+r1)``,
  ``φ2 = φ1/h_k + 1``, ``φ3 = φ2/h_k − ½``:
  ``y_k = (A_k + â_1) y_{k−1} − (B_k + ĉ_1) D_{k−1} + (α_k φ2 + ĉ_2) E1 − (α_k φ3 + ĉ_3) E2
  + Σ_{i=4..k} ĉ_i D_{k−i} + Σ_{i=2..k} â_i y_{k−i}``.

Step ``k`` thus uses exactly ``k`` â's and ``k`` ĉ's: ``N(N+1)`` coefficient scalars in all, plus
``N−1`` logits and ``N`` offsets (the authors' initialisation in ``gs_wrapper.py``).

**Theoretical guidance** (the paper's Table 5): by default A, B, φ2, φ3, r0, r1 are recomputed
from the current timesteps, so the corrections stay small corrections of a consistent method as
the grid moves. ``theory=False`` is the paper's ablation: those terms are frozen at their values
on the *initial* grid, so the step coefficients no longer follow the timesteps (both variants start
equal to DPM-Solver++(3M)).

**Starting from any classic solver** (:meth:`GeneralizedSolver.from_classic`). Each step's weights
over the history are an affine, invertible function of its 2k corrections (the weights of ``y_j``
are the â's themselves; those of ``D_j`` a triangular map of the ĉ's), and every one-call-per-step
classic solver is such a history combination (:mod:`.linear_form`). So a GS can equal DDIM,
DPM-Solver++, UniPC or iPNDM on their grids in two ways: with DPM-Solver++(3M) as the theory and
corrections that absorb the difference (solved once at the initial grid), or with the classic
solver's *own* coefficients as the theory (``theory_solver``), recomputed from the moving grid,
and zero corrections. In both the corrections keep DPM-Solver++(3M)'s parameterisation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from ..errors import CheckpointMismatchError, ConfigError, CorruptFileError
from ..models.base import DiffusionModel
from ..runtime import run_metadata
from ..schedules import GRID_KINDS, NoiseSchedule, schedule_from_dict, time_grid, validate_grid
from ..validation import quote
from ._common import Callback, report
from .linear_form import StepWeights, check_representable, classic_weights
from .solver_file import (
    CHECKPOINT_FORMAT,
    SOLVER_FILE,
    json_differences,
    load_metadata,
    read_solver_file,
    write_solver_file,
)
from .spec import SolverSpec
from .spec_text import parse_solver_spec

PAPER_THEORY = "dpmpp3m"
"""The name of the paper's theory, DPM-Solver++(3M), in solver files and on the command line."""

MU_EPS = 1e-5
"""Offset keeping every stick-breaking fraction μ in [1e-5, 1 − 1e-5] (``eps_mu_offset``)."""


def grid_from_logits(mu_logit: Tensor, t_eps: float, t_max: float = 1.0) -> Tensor:
    """The stick-breaking map (the authors' ``gs_wrapper.py::get_mu_t_steps``, in its orientation): logits → time grid.

    ``μ_j = 1e-5 + (1 − 2e-5)·sigmoid(θ_j)``, ``P_j = Π_{i≤j} μ_i`` and the ``j``-th *smallest*
    interior time is ``s_j = t_eps + (t_max − t_eps)(1 − P_j)``, ``j = 1 … N−1``. The grid is
    ``[t_max, s_{N−1}, …, s_1, t_eps]``: monotone by construction, ends exact (``t_max`` is the
    schedule's first time: 1, or ``1 − 1/N`` on a flow schedule; the paper has 1). In floating point two
    times merge once ``P_j`` falls below the resolution of ``1 − P_j`` (saturated negative logits).

    Computed without cancellation near ``t_eps``: ``1 − μ = 1e-5 + (1 − 2e-5)·sigmoid(−θ)`` and
    ``1 − P_j = −expm1(Σ_{i≤j} log1p(−(1 − μ_i)))``.

    Args:
        mu_logit: θ, shape ``(N−1,)``.
        t_eps: the last time ``t_N``.
        t_max: the first time ``t_0``.

    Returns:
        ``(N+1,)`` descending times in the dtype of ``mu_logit``, differentiable in it.
    """
    one_minus_mu = MU_EPS + (1.0 - 2.0 * MU_EPS) * torch.sigmoid(-mu_logit)
    one_minus_p = -torch.expm1(torch.cumsum(torch.log1p(-one_minus_mu), dim=0))
    interior = t_eps + (t_max - t_eps) * one_minus_p  # ascending
    ends = mu_logit.new_tensor([t_max, t_eps])
    return torch.cat([ends[:1], interior.flip(0), ends[1:]])


def logits_from_grid(grid: Tensor) -> Tensor:
    """The exact inverse of :func:`grid_from_logits` for a grid from ``grid[0] = t_max`` down to
    ``grid[-1] = t_eps``.

    ``P_j = (t_max − s_j)/(t_max − t_eps)``, ``μ_j = P_j / P_{j−1}`` (``P_0 = 1``),
    ``θ_j = logit((μ_j − 1e-5)/(1 − 2e-5))``.

    Args:
        grid: ``(N+1,)`` strictly decreasing times.

    Returns:
        θ, shape ``(N−1,)``, float64.

    Raises:
        ConfigError: if a fraction μ falls outside ``(1e-5, 1 − 1e-5)`` (times too close).
    """
    grid = grid.detach().to(torch.float64)
    t_max, t_eps = grid[0], grid[-1]
    p = (t_max - grid[1:-1].flip(0)) / (t_max - t_eps)
    mu = p / torch.cat([p.new_ones(1), p[:-1]])
    u = (mu - MU_EPS) / (1.0 - 2.0 * MU_EPS)
    if not bool(((u > 0) & (u < 1)).all()):
        raise ConfigError(
            f"grid {grid.tolist()} cannot be represented by the stick-breaking map: its "
            f"fractions (t_max − s_j)/(t_max − s_(j−1)) must lie in ({MU_EPS}, 1 − {MU_EPS})"
        )
    return torch.logit(u)


def step_weights(
    k: int, alpha_k: Tensor, sigma_ratio: Tensor, h: Tensor, a: Tensor, c: Tensor
) -> tuple[list[Tensor], list[Tensor]]:
    """The effective coefficients of step ``k``: ``y_k = Σ_j w_j y_j + Σ_j v_j D_j``, j = 0 … k−1.

    DPM-Solver++(3M) (paper eq. 12–14) with the additive corrections, expanded over the history. With
    ``φ1 = expm1(−h_k)``, ``A = σ(t_k)/σ(t_{k−1})``, ``B = α(t_k) φ1`` and "i steps back" indexing:

    * all k: ``w_{k−1} = A + â_1``, ``v_{k−1} = −(B + ĉ_1)``, ``w_{k−i} = â_i`` (i ≥ 2);
    * k = 2: ``− (½B + ĉ_2) Δ0`` with ``Δ0 = (D_1 − D_0)/r0``, ``r0 = h_1/h_2``;
    * k ≥ 3: ``+ P·E1 − Q·E2`` with ``P = α_k φ2 + ĉ_2``, ``Q = α_k φ3 + ĉ_3``,
      ``E1 = (1+ρ)Δ0 − ρΔ1``, ``E2 = (Δ0 − Δ1)/(r0+r1)``, ``ρ = r0/(r0+r1)``,
      ``Δ0 = (D_{k−1} − D_{k−2})/r0``, ``Δ1 = (D_{k−2} − D_{k−3})/r1``; and ``v_{k−i} += ĉ_i``
      (i ≥ 4).

    Args:
        k: the step, 1 … N.
        alpha_k: α(t_k); sigma_ratio: σ(t_k)/σ(t_{k−1}); h: ``(N,)`` λ increments.
        a, c: ``(k,)`` corrections â, ĉ of this step (entry ``i−1`` = i steps back).

    Returns:
        ``(w, v)``: two lists of k scalar tensors, index j weighting ``y_j`` and ``D_j``.
    """
    zero = torch.zeros((), dtype=h.dtype, device=h.device)
    w = [a[k - j - 1] for j in range(k)]  # â_i on y_{k−i}
    v = [zero] * k
    phi1 = torch.expm1(-h[k - 1])
    w[k - 1] = w[k - 1] + sigma_ratio
    v[k - 1] = -(alpha_k * phi1 + c[0])
    if k == 2:
        u0 = -(0.5 * alpha_k * phi1 + c[1]) / (h[0] / h[1])  # weight of (D_1 − D_0)
        v[1], v[0] = v[1] + u0, v[0] - u0
    elif k >= 3:
        r0, r1 = h[k - 2] / h[k - 1], h[k - 3] / h[k - 1]
        phi2 = phi1 / h[k - 1] + 1.0
        phi3 = phi2 / h[k - 1] - 0.5
        p, q = alpha_k * phi2 + c[1], alpha_k * phi3 + c[2]
        rho = r0 / (r0 + r1)
        u0 = (p * (1 + rho) - q / (r0 + r1)) / r0  # weight of (D_{k−1} − D_{k−2})
        u1 = (-p * rho + q / (r0 + r1)) / r1  # weight of (D_{k−2} − D_{k−3})
        v[k - 1] = v[k - 1] + u0
        v[k - 2] = v[k - 2] - u0 + u1
        v[k - 3] = v[k - 3] - u1
        for i in range(4, k + 1):
            v[k - i] = v[k - i] + c[i - 1]
    return w, v


class GeneralizedSolver(nn.Module):
    """The Generalized Solver with ``N = nfe`` network calls (paper §3, eq. 12–14).

    Parameters (all learned; names as in the official code where one exists):

    * ``mu_logit``: ``(N−1,)`` timestep logits θ, see :func:`grid_from_logits`.
    * ``t_couple``: ``(N,)`` evaluation offsets ξ; call ``k`` queries the network at ``t_k + ξ_k``.
    * ``a_hat``: ``(N(N+1)/2,)`` corrections â on past states, packed by step: step ``k`` owns the
      slice ``[k(k−1)/2, k(k+1)/2)``, whose entry ``i−1`` is â_i ("i steps back", ``i = 1 … k``).
    * ``c_hat``: ``(N(N+1)/2,)`` corrections ĉ on data-prediction terms, same packing; ĉ_1, ĉ_2,
      ĉ_3 correct the φ1, φ2 (Δ0 at k = 2), φ3 terms and ĉ_i (i ≥ 4) multiplies ``D_{k−i}``.

    Args:
        nfe: ``N ≥ 1``, the number of network calls.
        schedule: the noise schedule of the model the solver is for; used to build the initial
            grid, recorded in checkpoints and checked against the model in :meth:`forward`.
        t_eps: the last time ``t_N``; default ``schedule.t_eps`` (or the last time of an explicit
            ``init_grid``).
        init_grid: a :func:`~gas_solver.schedules.time_grid` kind (``uniform`` is the paper's
            init, ``logsnr``, ``edm``, ``quadratic``) or an explicit ``(N+1,)`` descending tensor
            from ``schedule.t_max`` (1, or ``1 − 1/N`` for flow models) to ``t_eps``. It is
            turned into logits by the exact inverse map.
        theory: the theory's coefficients at the current timesteps (default), or frozen at
            the initial grid (``False``: the ablation of the module docstring).
        theory_solver: the classic solver whose coefficients are the theory (one model call per
            step, ``nfe`` calls); ``None``: DPM-Solver++(3M), the paper's.
    """

    def __init__(
        self,
        nfe: int,
        schedule: NoiseSchedule,
        t_eps: float | None = None,
        init_grid: str | Tensor = "uniform",
        theory: bool = True,
        theory_solver: SolverSpec | None = None,
    ) -> None:
        super().__init__()
        if theory_solver is not None:
            check_representable(theory_solver)
            if theory_solver.nfe != nfe:
                raise ConfigError(
                    f"theory_solver {theory_solver.label} makes {theory_solver.nfe} model calls, "
                    f"the GS {nfe}"
                )
        if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
            raise ConfigError(f"nfe must be an integer >= 1, got {nfe!r}")
        if isinstance(init_grid, str):
            if init_grid not in GRID_KINDS:
                raise ConfigError(f"init_grid must be one of {GRID_KINDS} or a tensor")
            grid = time_grid(schedule, nfe, init_grid, t_eps)
            self.init_grid: str | list[float] = init_grid
        else:
            grid = validate_grid(torch.as_tensor(init_grid, dtype=torch.float64), schedule)
            t_eps = float(grid[-1]) if t_eps is None else t_eps
            ends = (schedule.t_max, t_eps)
            if grid.numel() != nfe + 1 or (float(grid[0]), float(grid[-1])) != ends:
                raise ConfigError(
                    f"an explicit init_grid must have nfe + 1 = {nfe + 1} times from "
                    f"{schedule.t_max:g} down to t_eps = {t_eps}, got {grid.tolist()}"
                )
            self.init_grid = grid.tolist()
        if not bool(torch.isfinite(schedule.lambda_(grid[-1:])).all()):
            raise ConfigError(
                "t_eps: the GS needs a finite log-SNR at its last time (t_eps > 0 on a flow model)"
            )
        self.nfe, self.theory, self.theory_solver = nfe, theory, theory_solver
        self.t_max, self.t_eps = float(grid[0]), float(grid[-1])
        self.schedule_spec = schedule.to_dict()
        self.metadata: dict[str, Any] = {}
        dtype = torch.get_default_dtype()
        n_coef = nfe * (nfe + 1) // 2
        self.mu_logit = nn.Parameter(logits_from_grid(grid).to(dtype))
        self.t_couple = nn.Parameter(torch.zeros(nfe, dtype=dtype))
        self.a_hat = nn.Parameter(torch.zeros(n_coef, dtype=dtype))
        self.c_hat = nn.Parameter(torch.zeros(n_coef, dtype=dtype))
        logits = self.mu_logit.detach().double()  # float64 grid of the initial logits (CPU): the
        self.initial_grid = grid_from_logits(logits, self.t_eps, self.t_max)  # base w/o theory

    def extra_repr(self) -> str:
        return (
            f"nfe={self.nfe}, t_eps={self.t_eps:g}, init_grid={self.init_grid!r}, "
            f"theory={self.theory}, theory_solver={self.theory_label!r}"
        )

    @property
    def theory_label(self) -> str:
        """The theory's solver as text: ``dpmpp3m`` (the paper's) or a classic spec."""
        return PAPER_THEORY if self.theory_solver is None else self.theory_solver.to_string()

    # -- parameters seen as solver quantities ----------------------------------------------------
    def timesteps(self) -> Tensor:
        """The grid ``t_0 = t_max > … > t_N = t_eps``, shape ``(N+1,)``, differentiable in θ."""
        return grid_from_logits(self.mu_logit, self.t_eps, self.t_max)

    def evaluation_times(self) -> Tensor:
        """The network query times ``t_k + ξ_k``, ``k = 0 … N−1``, shape ``(N,)`` (not clamped)."""
        return self.timesteps()[:-1] + self.t_couple

    def corrections(self, step: int) -> tuple[Tensor, Tensor]:
        """â and ĉ of step ``k = step`` (1 … N): two ``(k,)`` views, entry ``i−1`` = i steps back."""
        if not 1 <= step <= self.nfe:
            raise ValueError(f"step must be in 1..{self.nfe}, got {step}")
        start = step * (step - 1) // 2
        return self.a_hat[start : start + step], self.c_hat[start : start + step]

    @classmethod
    def from_classic(
        cls,
        spec: SolverSpec,
        schedule: NoiseSchedule,
        *,
        own_theory: bool = True,
        theory: bool = True,
    ) -> GeneralizedSolver:
        """The GS that, untrained, equals the classic solver ``spec`` (its grid, its steps).

        Args:
            spec: a classic solver with one model call per step; the GS gets its NFE and grid.
            schedule: the schedule of the model.
            own_theory: keep ``spec``'s own coefficients as the theory, recomputed from the
                moving grid (``theory_solver = spec``, corrections 0); ``False``: the paper's
                DPM-Solver++(3M) theory, with corrections solved so the sum equals ``spec``.
            theory: as in the constructor (``False`` freezes the theory at ``spec``'s grid).

        Raises:
            ConfigError: ``spec`` makes several calls per step, or its grid does not start at the
                schedule's ``t_max``.
        """
        check_representable(spec)
        grid = spec.make_grid(schedule)
        if float(grid[0]) != schedule.t_max:
            raise ConfigError(
                f"{spec.label} starts at t={float(grid[0]):g}, the GS at the schedule's "
                f"t_max={schedule.t_max:g}"
            )
        solver = cls(
            spec.nfe, schedule, init_grid=grid, theory=theory,
            theory_solver=spec if own_theory else None,
        )  # fmt: skip
        if not own_theory:
            solver.absorb(schedule, classic_weights(spec, schedule, solver.initial_grid))
        return solver

    @torch.no_grad()
    def absorb(self, schedule: NoiseSchedule, targets: list[StepWeights]) -> None:
        """Set the corrections so that every step's weights on the initial grid are ``targets``.

        Step ``k``'s weights are affine in its ``2k`` corrections with an invertible linear part
        (module docstring); its ``2k × 2k`` matrix is read off column by column and solved.
        """
        grid = self.initial_grid
        for k, (w, v) in enumerate(targets, start=1):

            def weights_of(corr: Tensor, k: int = k) -> Tensor:
                (step,) = self._weights(schedule, grid, [(corr[:k], corr[k:])], k)
                return torch.stack([*step[0], *step[1]])

            zero = grid.new_zeros(2 * k)
            base = weights_of(zero)
            matrix = torch.stack([weights_of(e) - base for e in torch.eye(2 * k).to(grid)], 1)
            corr = torch.linalg.solve(matrix, torch.stack([*w, *v]).to(grid) - base)
            a, c = self.corrections(k)
            a.copy_(corr[:k])
            c.copy_(corr[k:])

    def history_weights(self, schedule: NoiseSchedule, grid: Tensor) -> list[StepWeights]:
        """The ``(w, v)`` of every step ``k = 1 … N`` of a solver on ``grid`` (its
        :meth:`timesteps`, in the dtype and on the device of the result): the theory's weights at
        ``grid`` (at the initial grid when ``theory`` is off) plus the corrections."""
        corrections = [
            tuple(v.to(grid) for v in self.corrections(k)) for k in range(1, self.nfe + 1)
        ]
        return self._weights(schedule, grid, corrections)

    def _weights(
        self,
        schedule: NoiseSchedule,
        grid: Tensor,
        corrections: list[tuple[Tensor, Tensor]],
        first: int = 1,
    ) -> list[StepWeights]:
        """:meth:`history_weights` for the steps ``first, first + 1, …`` with these corrections."""
        base = grid if self.theory else self.initial_grid.to(grid)
        alpha, sigma = schedule.alpha(base), schedule.sigma(base)
        h = schedule.lambda_(base).diff()  # h_k at index k−1, all > 0
        own = None
        if self.theory_solver is not None:
            own = classic_weights(self.theory_solver, schedule, base)
        weights = []
        for k, (a, c) in enumerate(corrections, start=first):
            w, v = step_weights(k, alpha[k], sigma[k] / sigma[k - 1], h, a, c)
            if own is not None:  # the solver's own theory in place of DPM-Solver++(3M)'s
                zero = torch.zeros_like(a)
                w3, v3 = step_weights(k, alpha[k], sigma[k] / sigma[k - 1], h, zero, zero)
                w = [x - y + z for x, y, z in zip(w, w3, own[k - 1][0], strict=True)]
                v = [x - y + z for x, y, z in zip(v, v3, own[k - 1][1], strict=True)]
            weights.append((w, v))
        return weights

    @torch.no_grad()
    def learned_values(self) -> dict[str, Any]:
        """JSON-able summary: grid, query times, offsets, corrections per step, parameter count."""
        return {
            "nfe": self.nfe,
            "t_eps": self.t_eps,
            "init_grid": self.init_grid,
            "theory": self.theory,
            "theory_solver": self.theory_label,
            "grid": self.timesteps().tolist(),
            "evaluation_times": self.evaluation_times().tolist(),
            "offsets": self.t_couple.tolist(),
            "corrections": [
                {"step": k, "a": a.tolist(), "c": c.tolist()}
                for k in range(1, self.nfe + 1)
                for a, c in [self.corrections(k)]
            ],
            "num_parameters": sum(p.numel() for p in self.parameters()),
        }

    # -- sampling --------------------------------------------------------------------------------
    def forward(
        self,
        model: DiffusionModel,
        noise: Tensor,
        cond: Any = None,
        *,
        checkpoint: bool = False,
        callback: Callback | None = None,
    ) -> Tensor:
        """Integrate from ``noise`` at ``t_max`` to ``t_eps`` with exactly ``N`` network calls.

        ``D_k = (y_k − σ(t_k)·ε̂(y_k, τ_k)) / α(t_k)``, ``τ_k = t_k + ξ_k``: the network sees the
        shifted time, the conversion to a data prediction uses the grid time (the authors' ``generalized_solver.py::model_fn``). With
        ``ε̂ = (y − α(τ)·D̂)/σ(τ)`` this is computed as ``c_y·y_k + c_D·D̂(y_k, τ_k)``,
        ``c_y = (1 − σ(t_k)/σ(τ_k))/α(t_k)``, ``c_D = σ(t_k)α(τ_k)/(σ(τ_k)α(t_k))``: the same value,
        without the cancellation of ``y − σ·ε̂`` where α is small (a flow model's first step).

        Args:
            model: the frozen model; its schedule must be the one the solver was built for.
            noise: ``y_0``, shape ``(B, *model.sample_shape)``.
            cond: passed unchanged to the model.
            checkpoint: recompute each network call in the backward pass
                (``torch.utils.checkpoint``, non-reentrant), so activation memory does not grow
                with N. The recomputed calls also count in ``model.nfe``.
            callback: called after each network call with ``{"i", "t", "x", "denoised"}``: the
                grid time ``t_k``, the state ``y_k`` and ``D_k``.

        Returns:
            ``y_N``, the state at ``t_eps``, same shape and dtype as ``noise``; differentiable in
            every solver parameter.
        """
        if model.schedule.to_dict() != self.schedule_spec:
            raise ConfigError(
                f"the solver was built for schedule {self.schedule_spec}, the model has "
                f"{model.schedule.to_dict()}"
            )
        dtype = torch.promote_types(self.mu_logit.dtype, noise.dtype)
        # the step weights are scalars with cancellations (φ2, φ3 at small h): float64 where the
        # device has it, cast to the samples' dtype only where they multiply a tensor
        exact = torch.float32 if noise.device.type == "mps" else torch.float64
        grid = grid_from_logits(self.mu_logit.to(exact), self.t_eps, self.t_max)
        query = grid[:-1] + self.t_couple.to(exact)  # t_k + ξ_k
        alpha, sigma = model.schedule.alpha(grid), model.schedule.sigma(grid)
        alpha_q, sigma_q = model.schedule.alpha(query), model.schedule.sigma(query)
        c_state = (1.0 - sigma[:-1] / sigma_q) / alpha[:-1]
        c_pred = sigma[:-1] * alpha_q / (sigma_q * alpha[:-1])
        weights = self.history_weights(model.schedule, grid)

        def predict(y: Tensor, t: Tensor) -> Tensor:
            if checkpoint:
                return activation_checkpoint(model.data_prediction, y, t, cond, use_reentrant=False)
            return model.data_prediction(y, t, cond)

        states, preds = [noise], []
        for k in range(1, self.nfe + 1):
            y = states[-1]
            denoised = predict(y, query[k - 1])
            preds.append(c_state[k - 1].to(dtype) * y + c_pred[k - 1].to(dtype) * denoised)
            report(callback, k - 1, grid[k - 1], y, preds[-1])
            w_states, w_preds = weights[k - 1]
            states.append(self._step(states, preds, [w.to(dtype) for w in w_states + w_preds]))
        return states[-1]

    @staticmethod
    def _step(states: list[Tensor], preds: list[Tensor], weights: list[Tensor]) -> Tensor:
        """``y_k = Σ_j w_j y_j + Σ_j v_j D_j`` (paper eq. 12), ``weights = w + v`` of
        :func:`step_weights`.

        Summing scaled history tensors, rather than building Δ0, Δ1, E1, E2, keeps only the
        shared states and predictions alive for the backward pass.
        """
        k = len(preds)
        y = weights[k - 1] * states[k - 1]
        for weight, tensor in (
            *zip(weights[: k - 1], states, strict=False),
            *zip(weights[k:], preds, strict=True),
        ):
            y = y + weight * tensor
        return y

    # -- checkpoints -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, metadata: dict[str, Any]) -> Path:
        """Write the parameters to ``path`` (``.safetensors``) and the metadata next to it.

        The metadata JSON goes both into the safetensors header (key ``gas_solver``, what
        :meth:`load` reads, with the SHA-256 of it and the tensors under ``gas_solver_sha256``,
        which :meth:`load` checks) and into a side-car ``<path minus suffix>.json`` for people
        (strict JSON: a non-finite number, such as a NaN validation loss, is ``null``). It is the
        caller's ``metadata`` (e.g. teacher spec, training summary; ``run`` defaults to
        :func:`~gas_solver.runtime.run_metadata`) plus the solver's own fields, which take
        precedence: ``format``, ``nfe``, ``t_eps``, ``schedule``, ``init_grid``, ``theory``,
        ``theory_solver`` and ``solver`` (:meth:`learned_values`). Both files are written atomically.

        Args:
            metadata: must contain ``"model"``, the ``identity()`` of the model the solver was
                trained for; :meth:`load` refuses any other model.

        Returns:
            the path of the ``.safetensors`` file.
        """
        if "model" not in metadata:
            raise ConfigError("solver metadata must contain 'model': the model's identity()")
        meta = {
            "run": run_metadata(),
            **metadata,
            "format": CHECKPOINT_FORMAT,
            "nfe": self.nfe,
            "t_eps": self.t_eps,
            "schedule": self.schedule_spec,
            "init_grid": self.init_grid,
            "theory": self.theory,
            "theory_solver": self.theory_label,
            "solver": self.learned_values(),
        }
        tensors = {name: p.detach().cpu().contiguous() for name, p in self.state_dict().items()}
        return write_solver_file(Path(path), meta, tensors)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        model: DiffusionModel | None = None,
        nfe: int | None = None,
    ) -> GeneralizedSolver:
        """Read a solver written by :meth:`save`; its metadata is on ``.metadata``.

        Args:
            model: if given, its ``identity()`` must equal the stored one, and its schedule is
                used; otherwise the schedule is rebuilt from the metadata (linear VP only).
            nfe: if given, must equal the stored NFE.

        Raises:
            MissingAssetError: the file does not exist.
            CheckpointMismatchError: not a GS checkpoint, a checksum that does not match (a
                corrupted file), non-finite parameters, or the NFE or model identity differs
                (the message names the file, or the differing fields).
        """
        path = Path(path)
        meta, tensors = read_solver_file(path)
        if nfe is not None and nfe != meta["nfe"]:
            raise CheckpointMismatchError(
                f"{path} holds a solver with nfe={meta['nfe']}, but nfe={nfe} was requested"
            )
        if model is not None:
            expected = json.loads(json.dumps(model.identity()))
            fields = json_differences(meta["model"], expected, "model")
            if fields:
                hint = model.mismatch_hint(meta["model"])
                raise CheckpointMismatchError(
                    f"{path} was trained for another model"
                    + (f": {hint}" if hint else "")
                    + "; differing fields: "
                    + "; ".join(fields)
                )
        if model is not None:
            schedule = model.schedule
        else:
            try:
                schedule = schedule_from_dict(meta["schedule"])
            except ConfigError as err:
                raise ConfigError(f"{err}; pass model= to load {path}") from err
            except (KeyError, TypeError, ValueError) as err:
                raise CorruptFileError(
                    f"{path}: metadata key 'schedule' does not describe a schedule "
                    f"({quote(meta['schedule'])}: {type(err).__name__} {quote(str(err))})"
                ) from None
        init = meta["init_grid"]
        try:  # the metadata's types and ranges are checked; here, that they make a solver
            solver = cls(
                meta["nfe"],
                schedule,
                t_eps=meta["t_eps"],
                init_grid=init
                if isinstance(init, str)
                else torch.tensor(init, dtype=torch.float64),
                theory=meta.get("theory", True),
                theory_solver=_theory_solver(meta.get("theory_solver", PAPER_THEORY)),
            )
        except ConfigError as err:
            raise CorruptFileError(
                f"{path}: its metadata (nfe, t_eps, init_grid, theory_solver) does not make a "
                f"solver: {quote(str(err))}"
            ) from None
        solver = solver.to(tensors["mu_logit"].dtype)
        try:
            solver.load_state_dict(tensors)
        except RuntimeError as err:
            raise CheckpointMismatchError(
                f"{path}: parameters do not fit the solver: {err}"
            ) from err
        solver.metadata = meta
        return solver


def _theory_solver(text: str) -> SolverSpec | None:
    """The stored :attr:`GeneralizedSolver.theory_label` as a constructor argument."""
    return None if text == PAPER_THEORY else parse_solver_spec(text)


__all__ = [
    "CHECKPOINT_FORMAT",
    "MU_EPS",
    "PAPER_THEORY",
    "SOLVER_FILE",
    "GeneralizedSolver",
    "grid_from_logits",
    "load_metadata",
    "logits_from_grid",
    "step_weights",
]
