"""Trained solvers for other tools: a diffusers scheduler and a k-diffusion-style sampler.

Both are built from :class:`~gas_solver.export.table.SolverTable`, the trained GS as numbers,
and written by ``gas-solver export`` through their entries in
:data:`~gas_solver.export.targets.EXPORT_TARGETS` (add one there for another format).
The diffusers part imports diffusers, so it is loaded on first use.
"""

from __future__ import annotations

from typing import Any

from .k_diffusion import (
    KDiffusionSolver,
    load_k_diffusion_solver,
    read_k_diffusion_solver,
    sample_gs,
)
from .table import SolverTable, solver_table
from .targets import EXPORT_TARGETS, ExportTarget

_DIFFUSERS = ("GeneralizedSolverScheduler", "use_in_pipeline")


def __getattr__(name: str) -> Any:
    if name in _DIFFUSERS:
        from . import diffusers_scheduler

        return getattr(diffusers_scheduler, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EXPORT_TARGETS",
    "ExportTarget",
    "GeneralizedSolverScheduler",
    "KDiffusionSolver",
    "SolverTable",
    "load_k_diffusion_solver",
    "read_k_diffusion_solver",
    "sample_gs",
    "solver_table",
    "use_in_pipeline",
]
