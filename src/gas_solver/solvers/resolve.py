"""One parse of a solver description: a classic spec or a trained checkpoint, known by one object.

Commands take solvers as text: ``unipc:nfe=4,grid=uniform`` or the path of a trained GS/GAS
(``runs/gs4/solver.safetensors`` or its run folder). :func:`resolve_solver` turns the text into a
:class:`~gas_solver.solvers.registry.SolverSpec` or a :class:`TrainedSolver`; both have ``kind``,
``nfe``, ``label`` and ``build(model)``, which gives the callable
``solver(model, x, cond=None, *, callback=None)`` for that model.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import torch

from ..models.base import DiffusionModel
from .generalized import SOLVER_FILE, GeneralizedSolver, load_metadata
from .registry import SolverSpec, parse_solver_spec


def is_checkpoint(text: str) -> bool:
    """A GS checkpoint: a ``.safetensors`` path, an existing file, or a training run folder.

    Text that cannot name a file (too long, a NUL) is not one: ``os.path.isfile`` says False
    where ``Path.is_file`` raises ``OSError`` (a 21-time explicit grid spec is longer than a file
    name may be)."""
    return (
        text.endswith(".safetensors")
        or os.path.isfile(text)
        or os.path.isfile(os.path.join(text, SOLVER_FILE))
    )


@dataclasses.dataclass(frozen=True)
class TrainedSolver:
    """A trained GS/GAS checkpoint; its metadata is read once, when first needed (a
    configuration may name a checkpoint that an earlier step will write).

    Attributes:
        path: the checkpoint as given (a ``.safetensors`` file or a training run folder).
    """

    path: str

    @functools.cached_property
    def metadata(self) -> dict[str, Any]:
        """What :meth:`GeneralizedSolver.save` stored: model identity and source, teacher,
        training configuration and summary."""
        return load_metadata(self.path)

    @property
    def kind(self) -> str:
        """``gs`` or ``gas``: how it was trained (its training configuration's loss)."""
        training = self.metadata.get("training", {}).get("config", {})
        return "gas" if training.get("loss") == "gas" else "gs"

    @property
    def nfe(self) -> int:
        return int(self.metadata["nfe"])

    @property
    def label(self) -> str:
        return f"{self.kind.upper()}-{self.nfe} {self.path}"

    @property
    def model_source(self) -> str | None:
        """The model it was trained for, as a name or path ``load_model`` takes."""
        return self.metadata.get("model_source")

    def build(self, model: DiffusionModel, device: str | torch.device = "cpu") -> GeneralizedSolver:
        """The solver for ``model`` (refused unless it is the model it was trained for)."""
        return GeneralizedSolver.load(self.path, model=model).to(device)

    def describe(self) -> dict[str, Any]:
        return {"solver": self.kind, "checkpoint": str(self.path), "nfe": self.nfe}


def resolve_solver(text: str, default_nfe: int | None = None) -> SolverSpec | TrainedSolver:
    """Parse ``text`` once.

    Args:
        text: a classic spec (``NAME[:KEY=VALUE,...]``) or a trained solver's path.
        default_nfe: the NFE of a classic spec that gives neither ``nfe`` nor an explicit grid
            (a checkpoint has its own).

    Raises:
        ConfigError: a malformed spec.
        MissingAssetError, CheckpointMismatchError: (on first use of a checkpoint's metadata) a
            missing or unreadable checkpoint.
    """
    if is_checkpoint(text):
        return TrainedSolver(text)
    return parse_solver_spec(text, **({} if default_nfe is None else {"nfe": default_nfe}))


__all__ = ["TrainedSolver", "is_checkpoint", "resolve_solver"]
