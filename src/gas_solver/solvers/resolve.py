"""One parse of a solver description: a classic spec or a trained checkpoint, known by one object.

Commands take solvers as text: ``unipc:nfe=4,grid=uniform`` or the path of a trained GS/GAS
(``runs/gs4/solver.safetensors`` or its run folder). :func:`resolve_solver` turns the text into a
:class:`~gas_solver.solvers.spec.SolverSpec` or a :class:`TrainedSolver`; both are a
:class:`ResolvedSolver`, what callers use: ``kind``, ``nfe``, ``label``, ``build(model)`` (the
callable ``solver(model, x, cond=None, *, callback=None)`` for that model), ``describe()`` and
what a trained one records (``checkpoint``, ``model_source``, ``trained_on``; ``None`` for a
classic spec).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from ..models.base import DiffusionModel
from .generalized import SOLVER_FILE, GeneralizedSolver, load_metadata
from .spec_text import parse_solver_spec


class ResolvedSolver(Protocol):
    """A solver as commands know it, classic or trained: what :func:`resolve_solver` returns.

    Attributes:
        kind: ``classic``, or ``gs``/``gas`` (how a checkpoint was trained).
        nfe: model calls per sample.
        label: short text naming it in tables and logs.
        checkpoint: the file a trained solver is read from; ``None``: a classic spec.
        model_source: the model a trained solver was made for (a name or path ``load_model``
            takes, if it recorded one); ``None`` for a classic spec, which runs on any model.
        trained_on: the teacher set a trained solver learnt from, as its metadata records it
            (``path``, ``seeds``; either may be missing); ``None`` for a classic spec.
    """

    @property
    def kind(self) -> str: ...

    @property
    def nfe(self) -> int: ...

    @property
    def label(self) -> str: ...

    @property
    def checkpoint(self) -> str | None: ...

    @property
    def model_source(self) -> str | None: ...

    @property
    def trained_on(self) -> dict[str, Any] | None: ...

    def build(self, model: DiffusionModel, device: Any = ...) -> Callable[..., Tensor]:
        """The sampler ``solver(model, noise, cond=None, *, callback=None)`` for ``model``."""
        ...

    def time_grid(self, model: DiffusionModel) -> Tensor:
        """The ``(steps+1,)`` float64 times it steps through on ``model``."""
        ...

    def describe(self) -> dict[str, Any]:
        """What it is, JSON-able: ``solver`` (its name, or ``gs``/``gas``) and its settings."""
        ...

    def to_string(self) -> str:
        """The text :func:`resolve_solver` makes it from again (a spec explicit, a path)."""
        ...


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
    def checkpoint(self) -> str:
        return self.path

    @property
    def model_source(self) -> str | None:
        """The model it was trained for, as a name or path ``load_model`` takes."""
        return self.metadata.get("model_source")

    @property
    def trained_on(self) -> dict[str, Any]:
        return self.metadata.get("teacher") or {}

    def build(self, model: DiffusionModel, device: str | torch.device = "cpu") -> GeneralizedSolver:
        """The solver for ``model`` (refused unless it is the model it was trained for)."""
        return GeneralizedSolver.load(self.path, model=model).to(device)

    def time_grid(self, model: DiffusionModel) -> Tensor:
        """Its learned timesteps (read from the checkpoint again)."""
        with torch.no_grad():
            return GeneralizedSolver.load(self.path, model=model).timesteps().double()

    @property
    def trained_dtype(self) -> str:
        """The dtype the network ran in while it was trained (``train --dtype``; float32 for
        solvers trained before it was recorded)."""
        return self.metadata.get("training", {}).get("config", {}).get("dtype", "float32")

    def describe(self) -> dict[str, Any]:
        return {
            "solver": self.kind,
            "checkpoint": str(self.path),
            "nfe": self.nfe,
            "trained_dtype": self.trained_dtype,
        }

    def to_string(self) -> str:
        return self.path


def resolve_solver(text: str, default_nfe: int | None = None) -> ResolvedSolver:
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


__all__ = ["ResolvedSolver", "TrainedSolver", "is_checkpoint", "resolve_solver"]
