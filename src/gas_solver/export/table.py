"""A trained Generalized Solver as a table of numbers: what every export format is built from.

A GS with ``N`` network calls is, once trained, a fixed linear multistep method (paper eq. 12):

    D_k = (y_k − σ(t_k)·ε̂(y_k, τ_k)) / α(t_k),                 k = 0 … N−1,
    y_k = Σ_{j<k} W[k−1][j]·y_j + Σ_{j<k} V[k−1][j]·D_j,          k = 1 … N,

from ``y_0`` (the noise, at ``t_0 = 1``) to the output ``y_N`` at ``t_N = t_eps``. ``τ_k = t_k + ξ_k``
are the times the network is queried at (the learned offsets ξ), and ``W``, ``V`` the effective
history weights (:meth:`~gas_solver.solvers.generalized.GeneralizedSolver.history_weights`). The
network's native output at ``τ_k`` is turned into ``ε̂`` with the schedule's ``α(τ_k)``,
``σ(τ_k)``. Everything here is computed once, in float64, from the solver's parameters and the
model's schedule, so the formats (diffusers scheduler, k-diffusion sampler) need neither
gas-solver's solver nor its schedule.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch

from ..models.base import DiffusionModel
from ..solvers.generalized import GeneralizedSolver, grid_from_logits


@dataclasses.dataclass(frozen=True)
class SolverTable:
    """The numbers of a trained GS (see the module docstring); lists of Python floats.

    Attributes:
        nfe: N, the number of network calls.
        times: ``t_0 = 1 > … > t_N = t_eps`` (N+1).
        alphas, sigmas: ``α(t_k)``, ``σ(t_k)`` (N+1).
        query_times: ``τ_k = t_k + ξ_k`` (N).
        query_alphas, query_sigmas: ``α(τ_k)``, ``σ(τ_k)`` (N).
        model_timesteps: ``τ_k`` in the network's own time unit (diffusers: ``N_train·τ − 1``).
        state_weights: ``W``, row ``k−1`` holds the k weights of ``y_0 … y_{k−1}`` in step k.
        pred_weights: ``V``, the same for ``D_0 … D_{k−1}``.
        schedule: the model schedule's description (what the numbers were computed for).
        provenance: where the solver comes from (model identity, training summary, …).
    """

    nfe: int
    times: list[float]
    alphas: list[float]
    sigmas: list[float]
    query_times: list[float]
    query_alphas: list[float]
    query_sigmas: list[float]
    model_timesteps: list[float]
    state_weights: list[list[float]]
    pred_weights: list[list[float]]
    schedule: dict[str, Any]
    provenance: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def edm_sigmas(self) -> list[float]:
        """``σ̃(t_k) = σ/α`` at the grid times (N+1), EDM's / k-diffusion's noise levels."""
        return [s / a for a, s in zip(self.alphas, self.sigmas, strict=True)]

    @property
    def query_edm_sigmas(self) -> list[float]:
        """``σ̃(τ_k)`` (N): the noise levels the denoiser is queried at."""
        return [s / a for a, s in zip(self.query_alphas, self.query_sigmas, strict=True)]


@torch.no_grad()
def solver_table(
    solver: GeneralizedSolver, model: DiffusionModel, provenance: dict[str, Any] | None = None
) -> SolverTable:
    """The table of ``solver`` for ``model`` (whose schedule the solver was trained with)."""
    schedule = copy.deepcopy(model.schedule).cpu()  # float64 math on the CPU, model untouched
    params = {name: p.detach().to("cpu", torch.float64) for name, p in solver.named_parameters()}
    grid = grid_from_logits(params["mu_logit"], solver.t_eps, solver.t_max)
    query = grid[:-1] + params["t_couple"]
    alpha, sigma = schedule.alpha(grid), schedule.sigma(grid)
    state_weights, pred_weights = [], []
    for w, v in solver.history_weights(schedule, grid):
        state_weights.append([float(x) for x in w])
        pred_weights.append([float(x) for x in v])
    return SolverTable(
        nfe=solver.nfe,
        times=grid.tolist(),
        alphas=alpha.tolist(),
        sigmas=sigma.tolist(),
        query_times=query.tolist(),
        query_alphas=schedule.alpha(query).tolist(),
        query_sigmas=schedule.sigma(query).tolist(),
        model_timesteps=schedule.timestep(query).tolist(),
        state_weights=state_weights,
        pred_weights=pred_weights,
        schedule=schedule.to_dict(),
        provenance=dict(provenance or {}),
    )
