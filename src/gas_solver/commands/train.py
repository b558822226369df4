"""``gas-solver train``: open a teacher set, load its model, train a GS or GAS on it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..data.teacher_set import TeacherSet
from ..errors import ConfigError
from ..models.loading import load_model
from ..runtime import resolve_device
from ..training.discriminators import discriminator_class
from ..training.settings import TrainSettings
from ..training.trainer import train


@dataclasses.dataclass
class TrainConfig(TrainSettings):
    """``gas-solver train``: the trainer's settings
    (:class:`~gas_solver.training.settings.TrainSettings`) as flags and YAML keys."""


def run_train(config: TrainConfig, progress: bool = True) -> Path:
    """Open the teacher set, load its model (or ``config.model``), train; returns the solver."""
    teacher = TeacherSet(config.teacher)
    if not config.allow_dtype_mismatch:  # fail before loading the model
        teacher.check_compute_dtype(config.dtype)
    if config.loss == "gas":
        discriminator_class(config.disc_preset).check_samples(teacher.sample_shape)
    source = config.model or teacher.model_source
    if not source:
        raise ConfigError("model: the teacher set does not name its model; pass --model")
    return train(config, load_model(source, resolve_device(config.device)), teacher, progress)
