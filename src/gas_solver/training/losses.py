"""Per-sample distillation losses between a student's output and the teacher's target.

Each loss maps ``(student, target)``, both ``(B, ...)``, to a ``(B,)`` tensor: the trainer averages
over the batch only after adding any other per-sample terms (GAS: ``w·adversarial + distillation``,
arXiv 2510.17699 §3.2). The paper's choices are LPIPS-VGG for pixel models and L1 on latents (§3.1).
``"lpips"`` (:mod:`.lpips`) loads its VGG16 weights only when first called.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import Tensor

from ..errors import ConfigError
from .lpips import lpips_loss

DistillationLoss = Callable[[Tensor, Tensor], Tensor]


def l1_loss(student: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error per sample: ``mean_{C,H,W} |S − T|`` (the paper's latent loss)."""
    return (student - target).abs().flatten(1).mean(1)


def l2_loss(student: Tensor, target: Tensor) -> Tensor:
    """Mean squared error per sample."""
    return (student - target).pow(2).flatten(1).mean(1)


def _require_images(student: Tensor, name: str) -> None:
    """Refuse samples without the two spatial dimensions a pixel-neighbour distance needs."""
    if student.dim() < 3:
        raise ConfigError(
            f"distillation {name} needs images (B, …, H, W), got samples of shape "
            f"{tuple(student.shape)}: use l1"
        )


def l1_gradient_loss(student: Tensor, target: Tensor) -> Tensor:
    """L1 plus the gradient-difference loss (Mathieu, Couprie & LeCun, ICLR 2016, eq. 5 with
    α = 1) per sample, on the last two (spatial) dimensions:
    ``mean|E| + mean|E[..., :, 1:] − E[..., :, :-1]| + mean|E[..., 1:, :] − E[..., :-1, :]|``,
    ``E = S − T``. A smooth error costs what L1 charges; pixel-to-pixel speckle about 3.8 times as
    much (independent Gaussian errors: ``E|e₁ − e₂| = √2·E|e|`` per direction). On ``mnist32`` at
    4 calls it brought the GS 4 % closer to the teacher in L1 than L1 itself, and further from
    the data in FID (``docs/BENCHMARKS.md``, "A distance that charges speckle")."""
    _require_images(student, "l1-grad")
    error = student - target
    across = error.diff(dim=-1).abs().flatten(1).mean(1)
    down = error.diff(dim=-2).abs().flatten(1).mean(1)
    return error.abs().flatten(1).mean(1) + across + down


DARK = -1 + 32 / 255
"""Pixels below 16 of 255 (in [−1, 1]): the dark areas whose texture :func:`l1_texture_loss`
compares."""
TEXTURE_WEIGHT = 1.0
"""The default weight of the texture term (``train --texture-weight``)."""


def dark_roughness(images: Tensor, dark: Tensor) -> Tensor:
    """Per sample, the mean ``|x_i − x_j|`` over neighbouring pixels (across and down) that are
    both ``dark`` (a boolean mask of the images' shape), of the images clamped to [−1, 1]."""
    x = images.clamp(-1, 1)
    total, count = 0.0, 0.0
    for dim in (-1, -2):
        size = x.shape[dim] - 1
        pairs = (dark.narrow(dim, 1, size) & dark.narrow(dim, 0, size)).to(x.dtype)
        step = (x.narrow(dim, 1, size) - x.narrow(dim, 0, size)).abs()
        total = total + (step * pairs).flatten(1).sum(1)
        count = count + pairs.flatten(1).sum(1)
    return total / count.clamp_min(1)


def l1_texture_loss(student: Tensor, target: Tensor, weight: float = TEXTURE_WEIGHT) -> Tensor:
    """L1 plus the difference in dark-area roughness, per sample, for images in [−1, 1]:
    ``mean|S − T| + w·|R(S) − R(T)|`` with ``R`` the :func:`dark_roughness` over the pixels
    that are dark in the teacher's image (below 16 of 255). The second term asks the student's
    flat dark areas to be as smooth as the teacher's, whatever the per-pixel match: on ``mnist32``
    the data's FID of 4-call solvers follows that roughness (``docs/BENCHMARKS.md``, "Why the
    closer solver has the worse data FID"), and the teacher's own roughness is the target (not
    the data's, not Inception's features)."""
    _require_images(student, "l1-texture")
    dark = target < DARK
    texture = (dark_roughness(student, dark) - dark_roughness(target, dark)).abs()
    return l1_loss(student, target) + weight * texture


DISTILLATION_LOSSES: dict[str, DistillationLoss] = {
    "l1": l1_loss,
    "l1-grad": l1_gradient_loss,
    "l1-texture": l1_texture_loss,
    "l2": l2_loss,
    "lpips": lpips_loss,
}


def get_loss(name: str, texture_weight: float = TEXTURE_WEIGHT) -> DistillationLoss:
    """The loss called ``name``; ``texture_weight`` is ``l1-texture``'s ``w``."""
    if name not in DISTILLATION_LOSSES:
        raise ConfigError(
            f"loss: unknown distillation loss {name!r}; known: {sorted(DISTILLATION_LOSSES)}"
        )
    if name == "l1-texture":
        return partial(l1_texture_loss, weight=texture_weight)
    return DISTILLATION_LOSSES[name]


def default_distance(is_latent: bool, sample_shape: tuple[int, ...]) -> str:
    """``--distillation auto``: ``l1-texture`` for pixel models with images (one or three
    channels, two spatial dimensions), ``l1`` (the paper's latent distance) for latent models
    and samples that are not images."""
    images = len(sample_shape) == 3 and sample_shape[0] in (1, 3)
    return "l1-texture" if images and not is_latent else "l1"
