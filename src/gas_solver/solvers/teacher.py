"""The default teacher solver, and a teacher spec as it is run on a given model."""

from __future__ import annotations

import dataclasses

from ..models.base import DiffusionModel
from .spec import SolverSpec
from .spec_text import parse_solver_spec

DEFAULT_TEACHER = "unipc:nfe=20,order=3,variant=bh1,grid=logsnr"
"""The paper's teacher solver: UniPC-3 (variant bh1), 20 model calls, logSNR grid."""


def teacher_spec(text: str, model: DiffusionModel) -> SolverSpec:
    """Parse a teacher spec; a named grid without ``t_eps`` ends at the model's
    ``teacher_t_eps`` where it has one (the paper's 1e-4 on continuous pixel models)."""
    spec = parse_solver_spec(text)
    if spec.t_eps is None and isinstance(spec.grid, str) and model.teacher_t_eps is not None:
        spec = dataclasses.replace(spec, t_eps=model.teacher_t_eps)
    return spec


__all__ = ["DEFAULT_TEACHER", "teacher_spec"]
