"""A GAS discriminator on the frozen diffusion model's own features (``--disc-preset model-features``).

After latent adversarial diffusion distillation (Sauer et al. 2024, LADD): instead of a separate
network trained from scratch, the discriminator reads the encoder half of the frozen denoiser —
features that already know the data — and trains only small heads. Here the samples are the
solver's outputs at ``t_eps``, so the UNet encoder is run on them as they are, at the timestep of
``t_eps`` (no noise is added, so the logits are deterministic and R1/R2 apply unchanged):

* features ``h_l``: the output of every down block and of the mid block of a diffusers
  ``UNet2DModel`` (its weights frozen; gradients flow to the input);
* a head per level: ``1×1 conv (C_l → hidden) → leaky ReLU 0.2 → 4×4 average pool → linear → 1``;
* the logit is the sum over levels.

Only the heads are parameters of this module (the model is held outside the module tree), so the
adversary's optimizer, ``requires_grad_`` toggling and checkpoints see the heads alone.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..errors import ConfigError
from ..models.base import DiffusionModel
from ..models.diffusers import DiffusersUNetModel

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


def feature_unet(model: DiffusionModel, use: str) -> nn.Module:
    """The unconditional diffusers ``UNet2DModel`` of ``model``, whose encoder ``use`` reads.

    Raises:
        ConfigError: ``model`` has no such UNet.
    """
    unet = model.unet if isinstance(model, DiffusersUNetModel) else None
    if type(unet).__name__ != "UNet2DModel" or unet.class_embedding is not None:
        raise ConfigError(
            f"{use} reads the encoder of an unconditional diffusers UNet2DModel; this model has "
            "none"
        )
    return unet


def last_timestep(model: DiffusionModel) -> Tensor:
    """The network timestep of the schedule's ``t_eps``, ``(1,)`` float32: where the encoder
    reads samples (the solver's outputs are at ``t_eps``, no noise is added)."""
    t_eps = torch.tensor(model.schedule.t_eps, dtype=torch.float64)
    return model.schedule.timestep(t_eps).float().reshape(1)


def encoder_features(unet: nn.Module, x: Tensor, timestep: Tensor) -> list[Tensor]:
    """The activations of every down block and of the mid block of ``unet`` on ``x`` at
    ``timestep`` ``(1,)``; differentiable in ``x`` (twice: the math attention kernel)."""
    timesteps = timestep.to(x.device).expand(x.shape[0])
    emb = unet.time_embedding(unet.time_proj(timesteps).to(x.dtype))
    h, feats = unet.conv_in(x), []
    # R1/R2 differentiate twice; only the math attention kernel has a double backward
    with sdpa_kernel(SDPBackend.MATH):
        for block in unet.down_blocks:
            h, _ = block(hidden_states=h, temb=emb)
            feats.append(h)
        feats.append(unet.mid_block(h, emb))
    return feats


class FeatureDiscriminator(nn.Module):
    """Heads on the frozen UNet encoder of ``model``: ``(B, C, H, W)`` samples → ``(B,)`` logits.

    Args:
        model: a diffusers ``UNet2DModel``-backed model (``DiffusersUNetModel``), unconditional.
        hidden: channels of each head.
        seed: seed of the heads' initial weights (the global RNG is not touched).
    """

    def __init__(self, model: DiffusionModel, hidden: int = 32, seed: int = 0) -> None:
        super().__init__()
        unet = feature_unet(model, "disc_preset 'model-features' (use an R3GAN preset instead)")
        self._model = (model,)  # outside the module tree: frozen, not saved, not optimised
        self.register_buffer("timestep", last_timestep(model), persistent=False)
        widths = tuple(int(b.resnets[-1].out_channels) for b in unet.down_blocks)
        widths += (int(unet.mid_block.resnets[-1].out_channels),)
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

    def features(self, x: Tensor) -> list[Tensor]:
        """The frozen encoder's activations of every down block and the mid block."""
        return encoder_features(self._model[0].unet, x, self.timestep)

    def forward(self, x: Tensor) -> Tensor:
        logits = x.new_zeros(x.shape[0])
        for head, h in zip(self.heads, self.features(x), strict=True):
            h = F.leaky_relu(head["project"](h), 0.2)
            h = F.adaptive_avg_pool2d(h, POOL).flatten(1)
            logits = logits + head["out"](h).squeeze(1)
        return logits

    def to_checkpoint(self) -> dict[str, Any]:
        return {"architecture": self.arch.to_dict(), "state": self.state_dict()}
