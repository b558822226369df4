"""Helpers shared by the tests that compare the project's samples with another implementation's."""

from __future__ import annotations

import torch

from gas_solver.solvers.generalized import GeneralizedSolver
from gas_solver.solvers.spec_text import parse_solver_spec


def relative_error(ours, theirs) -> float:
    """‖ours − theirs‖ / ‖theirs‖, in float64."""
    ours, theirs = torch.as_tensor(ours).double(), torch.as_tensor(theirs).double()
    return ((ours - theirs).norm() / theirs.norm()).item()


def trained_looking(
    nfe: int, schedule, seed: int = 0, theory: bool = True, start: str | None = None
) -> GeneralizedSolver:
    """A GS with every parameter non-zero: moved times, offsets below each time, corrections;
    from DPM-Solver++(3M) on logSNR, or from the classic solver ``start``."""
    if start is None:
        gs = GeneralizedSolver(nfe, schedule, init_grid="logsnr", theory=theory)
    else:
        spec = parse_solver_spec(start, nfe=nfe)
        gs = GeneralizedSolver.from_classic(spec, schedule, theory=theory)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        gs.mu_logit.add_(0.2 * torch.randn(gs.mu_logit.shape, generator=gen))
        gs.t_couple.copy_(-0.002 - 0.004 * torch.rand(nfe, generator=gen))
        gs.a_hat.copy_(0.02 * torch.randn(gs.a_hat.shape, generator=gen))
        gs.c_hat.copy_(0.02 * torch.randn(gs.c_hat.shape, generator=gen))
    assert all(bool((p != 0).all()) for p in gs.parameters())
    return gs
