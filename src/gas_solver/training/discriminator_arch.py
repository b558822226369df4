"""The R3GAN discriminator's architecture as data (arXiv 2510.17699 §3.2, App. D.4): per-stage
widths, groups and blocks (:class:`DiscriminatorArch`), the presets (R3GAN's CIFAR-10 and FFHQ-64
discriminators and two small ones), the check that samples are square images of a supported size,
and R3GAN's low-pass down-sampling kernel. The network built from it is
:class:`~.discriminator.Discriminator`; :mod:`.r3gan_pickle` reads R3GAN's own snapshots into it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError

BASIS_SIZE = 4
RESAMPLING_FILTER = (1.0, 2.0, 1.0)  # R3GAN's default ResamplingFilter
MIN_RESOLUTION, MAX_RESOLUTION = 8, 256


@dataclasses.dataclass(frozen=True)
class DiscriminatorArch:
    """One R3GAN discriminator: per-stage widths, cardinalities (groups) and block counts.

    Args:
        resolution: input height = width, a power of two in [8, 256].
        in_channels: input channels (1 or 3 for pixels, 4 for SD latents, 3 for LDM latents).
        widths: channels of each stage; ``log2(resolution) − 1`` stages.
        cardinalities: groups of each stage's k×k convolution (they divide
            ``expansion × width``).
        blocks: residual blocks per stage.
        expansion: width multiplier inside a residual block.
        kernel_size: of the grouped convolution (odd).
        head_channels: outputs of the final linear layer, summed into the logit (1 for an
            unconditional R3GAN; the embedding width for a conditional one, as loaded by GAS).
    """

    resolution: int
    in_channels: int
    widths: tuple[int, ...]
    cardinalities: tuple[int, ...]
    blocks: tuple[int, ...]
    expansion: int = 2
    kernel_size: int = 3
    head_channels: int = 1

    def __post_init__(self) -> None:
        for name in ("widths", "cardinalities", "blocks"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        res = self.resolution
        if res < MIN_RESOLUTION or res > MAX_RESOLUTION or res & (res - 1):
            raise ConfigError(
                f"discriminator resolution must be a power of two in [{MIN_RESOLUTION}, "
                f"{MAX_RESOLUTION}], got {res}"
            )
        stages = stages_for(res)
        for name in ("widths", "cardinalities", "blocks"):
            if len(getattr(self, name)) != stages:
                raise ConfigError(
                    f"discriminator {name}: a {res}×{res} input needs {stages} stages "
                    f"(down to {BASIS_SIZE}×{BASIS_SIZE}), got {len(getattr(self, name))}"
                )
        if (
            min(self.in_channels, self.expansion, self.head_channels) < 1
            or self.kernel_size % 2 == 0
        ):
            raise ConfigError(
                "discriminator: in_channels, expansion, head_channels >= 1 and an odd kernel_size"
            )
        for w, c, b in zip(self.widths, self.cardinalities, self.blocks, strict=True):
            if w < 1 or c < 1 or b < 0 or (w * self.expansion) % c:
                raise ConfigError(
                    f"discriminator stage (width {w}, cardinality {c}, blocks {b}): widths and "
                    "cardinalities must be positive and cardinality must divide "
                    f"expansion × width = {w * self.expansion}"
                )

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiscriminatorArch:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"discriminator architecture: unknown key(s) {sorted(unknown)}")
        return cls(**data)


def stages_for(resolution: int) -> int:
    """Stages of a discriminator for ``resolution``: one per scale from it down to 4×4."""
    return int(math.log2(resolution)) - 1


def _uniform(resolution: int, in_channels: int, width: int, cardinality: int, blocks: int):
    n = stages_for(resolution)
    return DiscriminatorArch(
        resolution, in_channels, (width,) * n, (cardinality,) * n, (blocks,) * n
    )


def _r3gan_32(resolution: int, in_channels: int) -> DiscriminatorArch:
    # R3GAN CIFAR-10: widths 3/4·1024, cardinality 3·32, 2 blocks per stage, expansion 2.
    return _uniform(resolution, in_channels, 768, 96, 2)


def _r3gan_64(resolution: int, in_channels: int) -> DiscriminatorArch:
    # R3GAN FFHQ-64, the paper's latent discriminator (eq. 10, 11, 22).
    return DiscriminatorArch(
        resolution, in_channels, (384, 768, 768, 768, 768), (48, 96, 96, 96, 96), (2,) * 5
    )


#: preset → (fixed resolution or None for any, builder, description)
PRESETS: dict[str, tuple[int | None, Any, str]] = {
    "r3gan-32": (32, _r3gan_32, "R3GAN CIFAR-10 architecture, 32×32 (4 stages of 768, ~21M)"),
    "r3gan-64": (64, _r3gan_64, "R3GAN FFHQ-64 architecture, 64×64: the paper's latent D (~22M)"),
    "small": (
        None,
        lambda r, c: _uniform(r, c, 128, 16, 1),
        "R3GAN, 128 wide, 1 block/stage, any size",
    ),
    "tiny": (None, lambda r, c: _uniform(r, c, 16, 4, 1), "R3GAN, 16 wide, 1 block/stage (tests)"),
}
PRESET_CHOICES = ["auto", *PRESETS]


def preset_arch(name: str, sample_shape: Sequence[int]) -> DiscriminatorArch:
    """The architecture of preset ``name`` for samples ``(C, H, W)``.

    ``auto`` is the paper's choice where there is one (``r3gan-32`` at 32×32, ``r3gan-64`` at
    64×64) and ``small`` at other resolutions.

    Raises:
        ConfigError: samples that are not square images of a supported size, an unknown preset,
            or a preset made for another resolution.
    """
    channels, resolution = image_shape(sample_shape)
    if name == "auto":
        name = {32: "r3gan-32", 64: "r3gan-64"}.get(resolution, "small")
    if name not in PRESETS:
        raise ConfigError(f"disc_preset: unknown preset {name!r}; known: {PRESET_CHOICES}")
    fixed, build, _ = PRESETS[name]
    if fixed is not None and fixed != resolution:
        raise ConfigError(
            f"disc_preset: {name!r} is made for {fixed}×{fixed} inputs, the samples are "
            f"{resolution}×{resolution}; use 'auto', 'small' or 'tiny'"
        )
    return build(resolution, channels)


def image_shape(sample_shape: Sequence[int]) -> tuple[int, int]:
    """``(channels, resolution)`` of square image samples ``(C, H, W)``, else a ConfigError."""
    shape = tuple(sample_shape)
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ConfigError(
            f"loss: 'gas' needs a discriminator, which needs square image-shaped samples "
            f"(C, H, W); this model's samples have shape {shape}. Use --loss gs"
        )
    res = shape[1]
    if res < MIN_RESOLUTION or res > MAX_RESOLUTION or res & (res - 1):
        raise ConfigError(
            f"loss: the discriminator takes {MIN_RESOLUTION}×{MIN_RESOLUTION} to "
            f"{MAX_RESOLUTION}×{MAX_RESOLUTION} inputs (powers of two); the samples are {res}×{res}"
        )
    return shape[0], res


def lowpass_kernel(taps: Sequence[float] = RESAMPLING_FILTER) -> Tensor:
    """R3GAN's interpolative down-sampling kernel (``Resamplers.CreateLowpassKernel``): the taps
    convolved with [1, 1], outer product, normalised to sum 1; [1, 2, 1] gives
    ``[1,3,3,1]ᵀ[1,3,3,1]/64`` (4×4)."""
    row = torch.tensor(np.convolve(np.asarray(taps, dtype=np.float64), [1.0, 1.0]))
    kernel = torch.outer(row, row)
    return (kernel / kernel.sum()).float()
