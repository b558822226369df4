"""Turn a model name or path into a :class:`DiffusionModel`.

Built-in names need no files of their own. Anything else is a local path:

* an EDM network pickle ``….pkl``, or a folder with ``edm.json`` + ``model.safetensors`` written
  by ``gas-solver convert-edm`` (:mod:`gas_solver.models.edm`; pickles are read without running
  their code);
* any other folder: the diffusers pipeline layout (:mod:`gas_solver.models.diffusers`), optionally
  ``folder:guidance=S``.

The string a model was loaded from is kept as ``model.source`` so teacher sets and checkpoints can
name it and later commands can load it again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import ConfigError
from ..schedules import DiscreteVPSchedule, FlowSchedule
from .analytic import GaussianMixtureModel
from .base import DiffusionModel
from .diffusers import is_diffusers_source, load_diffusers_model
from .edm import is_edm_source, load_edm_model


def _ring_discrete() -> DiffusionModel:
    return GaussianMixtureModel.ring(
        schedule=DiscreteVPSchedule.from_beta_range(1e-4, 0.02, 1000, "linear")
    )


def _ring_flow() -> DiffusionModel:
    return GaussianMixtureModel.ring(schedule=FlowSchedule(shift=3.0))


def _digits_mixture() -> DiffusionModel:
    """64 real 8×8 digits as the means of an exact mixture: image-shaped and exact."""
    from ..data.datasets import load_digits

    return GaussianMixtureModel(load_digits().images[:64], stds=0.1)


ASSETS = Path(__file__).resolve().parents[1] / "assets"


def _bundled(name: str) -> Callable[[], DiffusionModel]:
    """Loader of the bundled diffusers folder ``assets/NAME``."""
    return functools.partial(load_diffusers_model, ASSETS / name)


BUILTIN_MODELS: dict[str, tuple[Callable[[], DiffusionModel], str]] = {
    "mnist32": (
        _bundled("mnist32"),
        "the bundled default: a rectified-flow UNet (1.51M params, velocity, FlowMatch scheduler) "
        "trained on 5000 real MNIST digits, 32x32, see its card",
    ),
    "mnist32-vp": (
        _bundled("mnist32-vp"),
        "the bundled diffusion counterpart: the same UNet under a DDPM schedule (v-prediction), "
        "trained on the same digits, 32x32, see its card",
    ),
    "gmm-ring": (
        GaussianMixtureModel.ring,
        "exact 2-D mixture of 8 Gaussians on a circle, linear VP (EDM) schedule",
    ),
    "gmm-ring-discrete": (
        _ring_discrete,
        "the same mixture under a discrete DDPM schedule (LDM/SD style)",
    ),
    "gmm-ring-flow": (
        _ring_flow,
        "the same mixture under a rectified-flow schedule (SD3 style, shift 3)",
    ),
    "gmm-digits": (
        _digits_mixture,
        "exact mixture of 64 Gaussians centred on real 8x8 sklearn digits (images, std 0.1)",
    ),
}


RENAMED_MODELS = {
    "mnist32-flow": "the default mnist32 is now a (deeper, better) rectified-flow model: use "
    "--model mnist32; the diffusion model that was mnist32 is mnist32-vp",
}


def load_model(source: str, device: str | torch.device = "cpu") -> DiffusionModel:
    """Load a model by built-in name (see ``BUILTIN_MODELS``), from an EDM ``.pkl`` or converted
    EDM folder, or from a local diffusers folder (see the module docstring)."""
    if source in RENAMED_MODELS:
        raise ConfigError(f"model: {source!r} is no longer bundled; {RENAMED_MODELS[source]}")
    if source in BUILTIN_MODELS:
        model = BUILTIN_MODELS[source][0]()
    elif is_edm_source(source):  # "x.pkl", or a folder with edm.json
        model = load_edm_model(source)
    elif is_diffusers_source(source):  # a folder, optionally "folder:guidance=S"
        model = load_diffusers_model(source)
    else:
        known = ", ".join(BUILTIN_MODELS)
        raise ConfigError(
            f"model: {source!r} is neither a built-in model ({known}) nor a local model folder "
            "or EDM .pkl file"
        )
    model.source = source
    return model.to(device).eval().requires_grad_(False)
