"""Classic solvers as linear maps of their history: the weights a GS needs to *be* one of them.

Every classic solver here (DDIM, DPM-Solver++ 1–3, UniPC bh1/bh2 1–3, iPNDM 1–4) makes one model
call per grid step, and each state it hands the model is an affine function of the noise and of
the data predictions made so far:

    y_k = P_k y_0 + Σ_{j<k} Q_{k,j} D_j,      k = 0 … N  (y_N: the output; N = NFE).

The coefficients depend on the grid and the schedule only, not on the model, so one run of the
solver on a stand-in model whose ``j``-th data prediction is the basis vector ``e_{j+1}`` of
``R^{N+1}``, started from ``y_0 = e_0``, reveals all of them: ``y_k`` *is* ``(P_k, Q_{k,0}, …)``.
The run is differentiable in the grid, so the coefficients are differentiable functions of it.

A GS step (:func:`~gas_solver.solvers.generalized.step_weights`) writes
``y_k = Σ_j w_j y_j + Σ_j v_j D_j`` over its whole history. The classic step in that layout,
with weight on the last state only, is

    w_{k−1} = P_k / P_{k−1},     v_j = Q_{k,j} − w_{k−1} Q_{k−1,j}      (other w_j = 0),

which for the exponential integrators (DDIM, DPM-Solver++, UniPC) is ``σ(t_k)/σ(t_{k−1})``, their
own state weight. For UniPC the states are the points the model sees (the predictor's), so its
corrector is folded into the next step's weights, as its reference implementation computes it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..models.base import DiffusionModel
from ..schedules import NoiseSchedule
from .registry import SOLVERS
from .spec import SolverSpec

StepWeights = tuple[list[Tensor], list[Tensor]]
"""``(w, v)`` of one step ``k``: ``k`` weights on the states ``y_0 … y_{k−1}`` and ``k`` on the
data predictions ``D_0 … D_{k−1}``."""


class _BasisModel(DiffusionModel):
    """A stand-in model on ``R^{N+1}``: its ``j``-th call (from 0) predicts the data ``e_{j+1}``."""

    def __init__(self, schedule: NoiseSchedule, nfe: int) -> None:
        super().__init__(schedule, (nfe + 1,), "sample")
        self.calls = 0

    def network_output(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        self.calls += 1
        if self.calls >= x.shape[1]:
            raise ConfigError("the solver makes more model calls than its NFE")
        out = torch.zeros_like(x)
        out[:, self.calls] = 1.0
        return out


def check_representable(spec: SolverSpec) -> None:
    """Raise :class:`ConfigError` unless a GS with ``spec.nfe`` calls can equal ``spec``."""
    calls = SOLVERS[spec.name].calls_per_step
    if calls != 1:
        raise ConfigError(
            f"{spec.name} makes {calls} model calls per step and the GS one, so no GS equals it; "
            "start from a one-call-per-step solver "
            f"({', '.join(name for name, s in SOLVERS.items() if s.calls_per_step == 1)})"
        )


def classic_history(spec: SolverSpec, schedule: NoiseSchedule, grid: Tensor) -> Tensor:
    """The affine coefficients of every state of ``spec`` on ``grid`` (module docstring).

    Args:
        spec: a classic solver with one model call per step.
        schedule: the noise schedule of the model it will run on.
        grid: ``(N+1,)`` float64 descending times (may carry gradients).

    Returns:
        ``(N+1, N+1)``: row ``k`` is ``(P_k, Q_{k,0}, …, Q_{k,N−1})``; row ``N`` is the output.
    """
    check_representable(spec)
    nfe = spec.nfe
    model = _BasisModel(schedule, nfe)
    noise = torch.zeros(1, nfe + 1, dtype=torch.float64, device=grid.device)
    noise[0, 0] = 1.0
    states: list[Tensor] = []
    out = spec.run(model, noise, grid, callback=lambda step: states.append(step["x"][0]))
    history = torch.stack([*states, out[0]])
    if model.calls != nfe or len(states) != nfe:
        raise ConfigError(f"{spec.label} made {model.calls} model calls, not its nfe={nfe}")
    return history


def classic_weights(spec: SolverSpec, schedule: NoiseSchedule, grid: Tensor) -> list[StepWeights]:
    """``spec``'s steps in the GS's history layout: ``(w, v)`` for ``k = 1 … N`` (see
    :data:`StepWeights`), differentiable in ``grid``.

    Raises:
        ConfigError: a state has no weight on the noise (``P_{k−1} = 0``), so the step cannot be
            written on the last state.
    """
    history = classic_history(spec, schedule, grid)
    weights = []
    for k in range(1, spec.nfe + 1):
        previous, current = history[k - 1], history[k]
        if not bool(previous[0] != 0):
            raise ConfigError(f"{spec.label}: state {k - 1} does not depend on the noise")
        ratio = current[0] / previous[0]
        v = current[1 : k + 1] - ratio * previous[1 : k + 1]
        w = [torch.zeros_like(ratio)] * (k - 1) + [ratio]
        weights.append((w, list(v.unbind())))
    return weights


__all__ = ["StepWeights", "check_representable", "classic_history", "classic_weights"]
