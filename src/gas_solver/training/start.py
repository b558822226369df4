"""Where a GS starts (``train --init-solver``): the paper's DPM-Solver++(3M), any classic solver,
the best classic solver on held-apart teacher pairs (``auto``), or a trained solver.

A GS contains every one-call-per-step classic solver (:meth:`GeneralizedSolver.from_classic`), so
starting from the best of them makes the untrained GS exactly as good as the best hand-designed
solver, and training only has to improve on it. On a flow model the paper's start,
DPM-Solver++(3M), is far from the best (arXiv 2510.17699 trains 10k iterations from it; a few
hundred here do not carry it past UniPC).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..distributed import all_sum, owns, show_progress
from ..errors import ConfigError
from ..models.base import DiffusionModel
from ..solvers.generalized import PAPER_THEORY, GeneralizedSolver
from ..solvers.registry import auto_candidates
from ..solvers.resolve import is_checkpoint
from ..solvers.spec import SolverSpec
from ..solvers.spec_text import parse_solver_spec
from .losses import DistillationLoss

log = logging.getLogger(__name__)

AUTO, PAPER = "auto", PAPER_THEORY
"""The two named starts: the best classic solver, and DPM-Solver++(3M) on ``--init-grid``."""

THEORIES = ("start", PAPER)
"""``--theory-solver``: the start solver's own coefficients as the theory, or DPM-Solver++(3M)'s."""


SCREEN_PAIRS, FINALISTS = 32, 8
"""``auto`` screens every candidate on the first ``SCREEN_PAIRS`` pairs and ranks the
``FINALISTS`` best of them on all ``--init-pairs``: a quarter of the model calls of ranking all of
them on all pairs at the defaults, with the same choice where the screen is not a near tie."""


@dataclass
class Start:
    """The solver a run starts from and why.

    Attributes:
        solver: the initial GS.
        label: what it is (a classic spec, ``dpmpp3m`` on a grid, or a checkpoint path).
        losses: ``auto``: the finalists' mean distillation loss on the ranking pairs.
        screened: ``auto``: every candidate's on the screening pairs.
    """

    solver: GeneralizedSolver
    label: str
    losses: dict[str, float] = field(default_factory=dict)
    screened: dict[str, float] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """What the summary and the solver's metadata keep of the start."""
        out: dict[str, Any] = {"solver": self.label, "theory": self.solver.theory_label}
        if self.losses:
            out.update(loss=self.losses[self.label], candidates=self.losses, screened=self.screened)
        return out


def candidate_specs(nfe: int, grids: Sequence[str], t_eps: float | None) -> list[SolverSpec]:
    """Every classic solver ``auto`` tries (each registered solver's ``candidates``, see
    :func:`~gas_solver.solvers.registry.auto_candidates`) on every grid kind of ``grids``, with
    ``nfe`` calls."""
    return [
        parse_solver_spec(name, nfe=nfe, grid=grid, t_eps=t_eps)
        for grid in grids
        for name in auto_candidates()
    ]


@torch.no_grad()
def rank_candidates(
    model: DiffusionModel,
    specs: Sequence[SolverSpec],
    noise: Tensor,
    target: Tensor,
    cond: Any,
    loss_fn: DistillationLoss,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, float]:
    """Mean ``loss_fn`` to ``target`` of each classic solver from ``noise``, by its label.

    Under torchrun rank ``r`` of ``K`` runs the candidates ``i mod K = r`` and the losses are
    summed over ranks, so every rank ends with all of them.

    Args:
        noise, target: ``(M, *sample_shape)`` teacher pairs on the model's device.
        cond: ``None``, a ``(M, …)`` tensor or a dict of them.
    """
    totals = torch.zeros(len(specs), dtype=torch.float64)
    bar = tqdm(specs, desc="rank starts", unit="solver", disable=not show_progress(progress))
    for i, spec in enumerate(bar):
        if not owns(i):
            continue
        for start in range(0, noise.shape[0], batch_size):
            part = slice(start, start + batch_size)
            out = spec(model, noise[part], _rows(cond, part))
            totals[i] += loss_fn(out, target[part]).sum().item()
    totals = all_sum(totals) / noise.shape[0]
    return {spec.label: float(loss) for spec, loss in zip(specs, totals, strict=True)}


def choose_classic(
    model: DiffusionModel,
    specs: Sequence[SolverSpec],
    noise: Tensor,
    target: Tensor,
    cond: Any,
    loss_fn: DistillationLoss,
    progress: bool = True,
) -> tuple[SolverSpec, dict[str, float], dict[str, float]]:
    """The candidate with the lowest loss on the pairs, after a screen (:data:`SCREEN_PAIRS`).

    Returns:
        ``(best, losses, screened)``: the finalists' losses on all pairs and every candidate's
        on the screening pairs, by label.
    """
    first = slice(0, SCREEN_PAIRS)
    screened = rank_candidates(
        model, specs, noise[first], target[first], _rows(cond, first), loss_fn, progress=progress
    )
    finalists = sorted(specs, key=lambda spec: screened[spec.label])[:FINALISTS]
    losses = {spec.label: screened[spec.label] for spec in finalists}
    if noise.shape[0] > SCREEN_PAIRS:
        losses = rank_candidates(model, finalists, noise, target, cond, loss_fn, progress=progress)
    best = min(finalists, key=lambda spec: losses[spec.label])
    return best, losses, screened


def classic_start(
    spec: SolverSpec, model: DiffusionModel, theory_solver: str, theory: bool
) -> GeneralizedSolver:
    """The GS equal to ``spec``, with ``theory_solver`` (:data:`THEORIES`) as its theory."""
    if theory_solver not in THEORIES:
        raise ConfigError(f"theory_solver: one of {THEORIES}, got {theory_solver!r}")
    return GeneralizedSolver.from_classic(
        spec, model.schedule, own_theory=theory_solver == "start", theory=theory
    )


def trained_start(
    path: str, model: DiffusionModel, nfe: int, t_eps: float | None, theory: bool
) -> GeneralizedSolver:
    """A trained solver (its EMA weights, its grid, its theory) to continue from.

    Raises:
        ConfigError: it ends at another ``t_eps`` than the run's, or differs in ``theory``.
    """
    solver = GeneralizedSolver.load(path, model, nfe=nfe)
    if t_eps is not None and solver.t_eps != t_eps:
        raise ConfigError(
            f"init_solver: {path} ends its grid at t_eps={solver.t_eps}, this run at {t_eps}; "
            f"pass --t-eps {solver.t_eps}"
        )
    if solver.theory != theory:
        raise ConfigError(
            f"init_solver: {path} was trained with theory={solver.theory}, this run has "
            f"theory={theory}: give the same --theory/--no-theory"
        )
    return solver


def parse_start(text: str, nfe: int, t_eps: float | None) -> SolverSpec | str:
    """``--init-solver`` as :data:`AUTO`, :data:`PAPER`, a checkpoint path, or a classic spec
    (its NFE is the run's; a spec that names another NFE is refused)."""
    if text in (AUTO, PAPER) or is_checkpoint(text):
        return text
    spec = parse_solver_spec(text, nfe=nfe, **({} if t_eps is None else {"t_eps": t_eps}))
    if spec.nfe != nfe:
        raise ConfigError(
            f"init_solver: {text!r} makes {spec.nfe} model calls, the run --nfe {nfe}"
        )
    return spec


def _rows(cond: Any, part: slice) -> Any:
    if isinstance(cond, dict):
        return {key: value[part] for key, value in cond.items()}
    return None if cond is None else cond[part]


__all__ = [
    "AUTO",
    "FINALISTS",
    "SCREEN_PAIRS",
    "PAPER",
    "THEORIES",
    "Start",
    "candidate_specs",
    "choose_classic",
    "classic_start",
    "parse_start",
    "rank_candidates",
    "trained_start",
]
