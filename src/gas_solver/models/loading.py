"""Turn a model name or path into a :class:`DiffusionModel`.

Built-in names need no files; anything else is a path (adapters for diffusers folders and EDM
checkpoints plug in here). The string a model was loaded from is kept as ``model.source`` so
teacher sets and checkpoints can name it and later commands can load it again.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import ConfigError
from ..schedules import DiscreteVPSchedule
from .analytic import GaussianMixtureModel
from .base import DiffusionModel


def _ring_discrete() -> DiffusionModel:
    return GaussianMixtureModel.ring(
        schedule=DiscreteVPSchedule.from_beta_range(1e-4, 0.02, 1000, "linear")
    )


BUILTIN_MODELS: dict[str, tuple[Callable[[], DiffusionModel], str]] = {
    "gmm-ring": (
        GaussianMixtureModel.ring,
        "exact 2-D mixture of 8 Gaussians on a circle, linear VP (EDM) schedule",
    ),
    "gmm-ring-discrete": (
        _ring_discrete,
        "the same mixture under a discrete DDPM schedule (LDM/SD style)",
    ),
}


def load_model(source: str, device: str | torch.device = "cpu") -> DiffusionModel:
    """Load a model by built-in name (see ``BUILTIN_MODELS``)."""
    if source in BUILTIN_MODELS:
        model = BUILTIN_MODELS[source][0]()
    else:
        known = ", ".join(BUILTIN_MODELS)
        raise ConfigError(f"model: unknown model {source!r}; built-in models: {known}")
    model.source = source
    return model.to(device).eval().requires_grad_(False)
