"""``gas-solver teacher``: run a many-step solver on seeded noise and store the pairs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..config import option, require
from ..data.teacher import generate_teacher_set
from ..data.teacher_set import TeacherSet
from ..distributed import main_lock
from ..models.base import COMPILE_HELP, COMPUTE_DTYPES, DTYPE_HELP, DiffusionModel, prepare_network
from ..models.loading import load_model
from ..outputs import check_output
from ..runtime import resolve_device
from ..sampling import seed_cond_fn
from ..seeds import parse_seeds
from ..solvers.spec_text import parse_solver_spec
from ..solvers.teacher import DEFAULT_TEACHER, teacher_spec


@dataclasses.dataclass
class TeacherConfig:
    """``gas-solver teacher``: run a many-step solver on seeded noise and store the pairs."""

    model: str = option("", "model name or path (`gas-solver models` lists built-ins)")
    out: str = option("runs/teacher", "output folder of the teacher set")
    seeds: str = option("0-2399", "teacher seeds, EDM style ranges (train first, validate last)")
    solver: str = option(
        DEFAULT_TEACHER,
        "teacher solver spec NAME[:KEY=VALUE,...] (the paper's UniPC-3, NFE 20, logSNR grid)",
    )
    batch_size: int = option(64, "samples per model call batch")
    shard_size: int = option(1000, "samples per shard file")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    dtype: str = option(
        "float32", DTYPE_HELP + " (recorded in the set; train takes the same)",
        choices=list(COMPUTE_DTYPES),
    )  # fmt: skip
    compile: bool = option(False, COMPILE_HELP)
    overwrite: bool = option(False, "replace an existing teacher set of other settings")
    prompts: str | None = option(
        None, "text models: a file of prompts, one a line; seed s gets prompt s mod count"
    )

    def validate(self) -> None:
        require(bool(self.model), "model", "a model name or path is required")
        check_output(self.out, "folder")
        if self.prompts is not None:
            require(Path(self.prompts).is_file(), "prompts", f"{self.prompts} is not a file")
        parse_seeds(self.seeds)
        parse_solver_spec(self.solver)
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.shard_size >= 1, "shard_size", "must be >= 1")


def run_teacher(config: TeacherConfig, progress: bool = True) -> TeacherSet:
    """Load the model and make (or finish) the teacher set; returns it."""
    device = resolve_device(config.device)
    return make_teacher_set(config, load_model(config.model, device), device, progress)


def make_teacher_set(
    config: TeacherConfig, model: DiffusionModel, device: torch.device, progress: bool = True
) -> TeacherSet:
    """The teacher set of ``config`` for a model already loaded (``config.model``) on ``device``,
    its network run as ``config.dtype`` and ``config.compile`` say."""
    prepare_network(model, config.dtype, config.compile)
    spec = teacher_spec(config.solver, model)
    cond_fn = seed_cond_fn(model, config.prompts)  # a bad --prompts is refused before writing
    with main_lock(config.out):
        return generate_teacher_set(
            model, config.out, config.seeds, spec, spec.to_dict(),
            batch_size=config.batch_size, shard_size=config.shard_size, device=device,
            overwrite=config.overwrite, progress=progress, cond_fn=cond_fn,
        )  # fmt: skip
