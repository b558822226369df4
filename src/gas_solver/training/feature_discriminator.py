"""A GAS discriminator on the frozen diffusion model's own features (``--disc-preset model-features``).

After latent adversarial diffusion distillation (Sauer et al. 2024, LADD): instead of a separate
network trained from scratch, the discriminator reads the encoder half of the frozen denoiser —
features that already know the data — and trains only small heads. Here the samples are the
solver's outputs at ``t_eps``, so the encoder is run on them as they are, at the timestep of
``t_eps`` (no noise is added, so the logits are deterministic and R1/R2 apply unchanged):

* features ``h_l``: the model's :meth:`~gas_solver.models.base.DiffusionModel.feature_encoder`
  (for a diffusers ``UNet2DModel``: the output of every down block and of the mid block; its
  weights frozen, gradients flow to the input);
* a head per level: ``1×1 conv (C_l → hidden) → leaky ReLU 0.2 → 4×4 average pool → linear → 1``;
* the logit is the sum over levels.

Only the heads are parameters of this module (the model is held outside the module tree), so the
adversary's optimizer, ``requires_grad_`` toggling and checkpoints see the heads alone.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.base import DiffusionModel
from .discriminator_arch import image_shape
from .gas_discriminator import GasDiscriminator

if TYPE_CHECKING:
    from .settings import TrainSettings

POOL = 4
FEATURE_PRESET = "model-features"


@dataclasses.dataclass(frozen=True)
class FeatureDiscriminatorArch:
    """The heads' shape: the feature widths they read, their hidden width, the model's identity."""

    widths: tuple[int, ...]
    hidden: int
    model: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": FEATURE_PRESET,
            "widths": list(self.widths),
            "hidden": self.hidden,
            "model": self.model,
        }


def feature_encoder(model: DiffusionModel, use: str) -> nn.Module:
    """``model``'s :meth:`~gas_solver.models.base.DiffusionModel.feature_encoder`, which ``use``
    reads.

    Raises:
        ConfigError: ``model`` has none.
    """
    encoder = model.feature_encoder()
    if encoder is None:
        raise ConfigError(
            f"{use} reads the model's encoder features (e.g. an unconditional diffusers "
            "UNet2DModel's); this model has none"
        )
    return encoder


def last_timestep(model: DiffusionModel) -> Tensor:
    """The network timestep of the schedule's ``t_eps``, ``(1,)`` float32: where the encoder
    reads samples (the solver's outputs are at ``t_eps``, no noise is added)."""
    t_eps = torch.tensor(model.schedule.t_eps, dtype=torch.float64)
    return model.schedule.timestep(t_eps).float().reshape(1)


class FeatureDiscriminator(GasDiscriminator):
    """Heads on the frozen encoder of ``model``: ``(B, C, H, W)`` samples → ``(B,)`` logits.

    Args:
        model: a model with a :meth:`~gas_solver.models.base.DiffusionModel.feature_encoder`
            (an unconditional diffusers ``UNet2DModel``).
        hidden: channels of each head.
        seed: seed of the heads' initial weights (the global RNG is not touched).
    """

    def __init__(self, model: DiffusionModel, hidden: int = 32, seed: int = 0) -> None:
        super().__init__()
        encoder = feature_encoder(
            model, "disc_preset 'model-features' (use an R3GAN preset instead)"
        )
        self._encoder = (encoder,)  # outside the module tree: frozen, not saved, not optimised
        self.register_buffer("timestep", last_timestep(model), persistent=False)
        widths = tuple(encoder.widths)
        self.arch = FeatureDiscriminatorArch(
            widths, hidden, str(model.identity().get("weights", ""))
        )
        self.heads = nn.ModuleList(
            nn.ModuleDict(
                {"project": nn.Conv2d(w, hidden, 1), "out": nn.Linear(hidden * POOL * POOL, 1)}
            )
            for w in widths
        )
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for head in self.heads:
                for layer, gain in ((head["project"], math.sqrt(2 / 1.04)), (head["out"], 1.0)):
                    fan_in = layer.weight[0].numel()
                    layer.weight.copy_(
                        torch.randn(layer.weight.shape, generator=gen) * gain / math.sqrt(fan_in)
                    )
                    layer.bias.zero_()

    @classmethod
    def check_samples(cls, sample_shape: Sequence[int]) -> None:
        image_shape(sample_shape)

    @classmethod
    def from_settings(cls, settings: TrainSettings, model: DiffusionModel) -> FeatureDiscriminator:
        return cls(model, seed=settings.seed)

    def features(self, x: Tensor) -> list[Tensor]:
        """The frozen encoder's feature maps of ``x``."""
        return self._encoder[0](x, self.timestep)

    def forward(self, x: Tensor) -> Tensor:
        logits = x.new_zeros(x.shape[0])
        for head, h in zip(self.heads, self.features(x), strict=True):
            h = F.leaky_relu(head["project"](h), 0.2)
            h = F.adaptive_avg_pool2d(h, POOL).flatten(1)
            logits = logits + head["out"](h).squeeze(1)
        return logits
