"""A perceptual distillation distance in the frozen model's own features
(``--distillation model-features``).

LPIPS compares images in the features of an ImageNet VGG (whose weights are not shipped offline,
and whose features know nothing of the model's data). This distance reads where the
``model-features`` discriminator reads (:mod:`.feature_discriminator`): the frozen model's
:meth:`~gas_solver.models.base.DiffusionModel.feature_encoder` (a diffusers UNet's encoder), run on
the samples at the timestep of ``t_eps``. As LPIPS does with VGG, per level
``l`` the features ``f_l`` are divided by their L2 norm over channels at each position, and

    d(S, T) = Σ_l mean_{h,w} ‖ f̂_l(S) − f̂_l(T) ‖²_channels

(no learned linear heads: every channel weighs the same). It is never the Inception network FID
uses, so it cannot game that metric.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..models.base import DiffusionModel
from .feature_discriminator import feature_encoder, last_timestep

MODEL_FEATURES = "model-features"


class ModelFeatureDistance:
    """``(student, target) → (B,)``: the distance of the module docstring in ``model``'s
    features."""

    def __init__(self, model: DiffusionModel) -> None:
        self.encoder = feature_encoder(model, f"distillation {MODEL_FEATURES!r} (use l1 or lpips)")
        self.timestep = last_timestep(model)

    def __call__(self, student: Tensor, target: Tensor) -> Tensor:
        n = student.shape[0]
        both = torch.cat([student, target.to(student)])
        distance = student.new_zeros(n)
        for features in self.encoder(both, self.timestep):
            unit = features / (features.norm(dim=1, keepdim=True) + 1e-10)
            distance = distance + (unit[:n] - unit[n:]).pow(2).sum(1).flatten(1).mean(1)
        return distance
