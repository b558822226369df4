"""Turn a model name or path into a :class:`DiffusionModel`: the two tables of model families.

Built-in names (:data:`BUILTIN_MODELS`: name → factory) need no files of their own. Anything else
is a local path, claimed by the first family in :data:`MODEL_FAMILIES` that recognises it:

* ``edm``: an EDM network pickle ``….pkl``, or a folder with ``edm.json`` + ``model.safetensors``
  written by ``gas-solver convert-edm`` (:mod:`gas_solver.models.edm`; pickles are read without
  running their code);
* ``diffusers``: any other folder, the diffusers pipeline layout
  (:mod:`gas_solver.models.diffusers_folder`), optionally ``folder:guidance=S``.

A new family is one module with its loader and one entry in :data:`MODEL_FAMILIES` (see
``docs/ARCHITECTURE.md``). The string a model was loaded from is kept as ``model.source`` so
teacher sets and checkpoints can name it and later commands can load it again.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import ConfigError
from ..schedules import DiscreteVPSchedule, FlowSchedule
from .analytic import GaussianMixtureModel
from .base import DiffusionModel
from .diffusers_folder import is_diffusers_source, load_diffusers_model
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


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """A kind of model file or folder: how its sources are recognised and loaded.

    Attributes:
        recognises: ``recognises(source) -> bool`` for a ``--model`` string: whether the source
            is of this family; cheap (it looks at the path, loads nothing).
        load: ``load(source) -> DiffusionModel``; :func:`load_model` then moves the model to the
            device, puts it in eval mode, freezes it and sets its ``source``.
        fallback: whether it takes whatever the others do not claim (``diffusers``: any folder),
            so that it is asked after them.
    """

    recognises: Callable[[str], bool]
    load: Callable[[str], DiffusionModel]
    fallback: bool = False


MODEL_FAMILIES: dict[str, ModelFamily] = {
    "edm": ModelFamily(is_edm_source, load_edm_model),  # "x.pkl", or a folder with edm.json
    "diffusers": ModelFamily(is_diffusers_source, load_diffusers_model, fallback=True),
}
"""Family name → :class:`ModelFamily`; :func:`load_model` asks them in this order, fallbacks
last."""


RENAMED_MODELS = {
    "mnist32-flow": "the default mnist32 is now a (deeper, better) rectified-flow model: use "
    "--model mnist32; the diffusion model that was mnist32 is mnist32-vp",
}


def load_model(source: str, device: str | torch.device = "cpu") -> DiffusionModel:
    """Load a model by built-in name (see ``BUILTIN_MODELS``) or from a path that a family of
    ``MODEL_FAMILIES`` recognises (see the module docstring)."""
    if source in RENAMED_MODELS:
        raise ConfigError(f"model: {source!r} is no longer bundled; {RENAMED_MODELS[source]}")
    if source in BUILTIN_MODELS:
        model = BUILTIN_MODELS[source][0]()
    else:
        model = _family_of(source).load(source)
    model.source = source
    return model.to(device).eval().requires_grad_(False)


def _family_of(source: str) -> ModelFamily:
    """The first family that recognises ``source``, fallbacks asked last."""
    for family in sorted(MODEL_FAMILIES.values(), key=lambda family: family.fallback):
        if family.recognises(source):
            return family
    known = ", ".join(BUILTIN_MODELS)
    raise ConfigError(
        f"model: {source!r} is neither a built-in model ({known}) nor a local model folder "
        "or EDM .pkl file"
    )
