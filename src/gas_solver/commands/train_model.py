"""``gas-solver train-model``: train a small diffusion or flow-matching UNet (the bundled default)
on a bundled data set."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..training.denoiser import DenoiserConfig, train_denoiser


@dataclasses.dataclass
class TrainModelConfig(DenoiserConfig):
    """``gas-solver train-model``: the denoiser trainer's settings
    (:class:`~gas_solver.training.denoiser.DenoiserConfig`) as flags and YAML keys."""


def run_train_model(config: TrainModelConfig, progress: bool = True) -> Path:
    """Train the model; returns its diffusers pipeline folder."""
    return train_denoiser(config, progress)
