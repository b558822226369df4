"""The GAS discriminator: the R3GAN architecture family (arXiv 2510.17699 §3.2, App. D.4).

R3GAN ("The GAN is dead; long live the GAN!", Huang et al. 2024) is a modernised ResNet:

* a 1×1 convolution lifts the input (1, 3 or latent 4 channels) to the first stage's width;
* each **stage** is a stack of residual blocks ``x + 1×1 → lrelu → grouped k×k → lrelu → 1×1``
  (leaky ReLU 0.2 after a per-channel bias, the middle width is ``expansion × width``,
  ``cardinality`` groups), then a **transition** to the next stage: a low-pass filter with stride
  2 and, where the width changes, a 1×1 convolution. R3GAN's ``ResamplingFilter`` [1, 2, 1] is
  convolved with [1, 1] into the 4×4 kernel ``[1,3,3,1]ᵀ[1,3,3,1]/64`` (``CreateLowpassKernel``),
  applied with padding 1;
* after the last stage (at 4×4) a 4×4 depthwise "basis" convolution gives one vector per sample,
  and a linear layer projects it to ``head_channels`` values whose sum is the logit. R3GAN's
  class-conditional discriminators project to an embedding and take its inner product with the
  class embedding; GAS replaces that embedding by the constant 1, i.e. the sum.

As in R3GAN, no convolution or linear layer carries a bias; the only biases are those added
before each activation (held here by the convolution that precedes it).

Initialisation is fix-up style (R3GAN's "MSR"): He-normal weights, the first two convolutions of
each residual branch scaled by ``L^(-1/4)`` (``L`` residual blocks in all, 3 layers per branch),
the last one zero, so every block starts as the identity and the untrained network is linear.

There is no normalisation layer and no dropout, so the network behaves the same in ``train()`` and
``eval()``; the trainer keeps it in ``eval()`` and in float32. A ``resolution`` of ``2^k`` needs
``k − 1`` stages (``k − 2`` downsamplings to 4×4).

The official pretrained R3GAN pickles (``network-snapshot-final.pkl`` of CIFAR-10 and FFHQ-64,
key ``D``) load with ``--disc-checkpoint FILE.pkl`` through :mod:`.r3gan_pickle`, without running
anything from the file. A discriminator trained here is saved in every GAS checkpoint and can be
reused with ``--disc-checkpoint`` too.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointMismatchError, ConfigError, MissingAssetError
from ..outputs import atomic_write
from ..runtime import load_checkpoint_file
from .gas_discriminator import GasDiscriminator

if TYPE_CHECKING:
    from ..models.base import DiffusionModel
    from .settings import TrainSettings

LRELU_SLOPE = 0.2
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


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


def lowpass_kernel(taps: Sequence[float] = RESAMPLING_FILTER) -> Tensor:
    """R3GAN's interpolative down-sampling kernel (``Resamplers.CreateLowpassKernel``): the taps
    convolved with [1, 1], outer product, normalised to sum 1; [1, 2, 1] gives
    ``[1,3,3,1]ᵀ[1,3,3,1]/64`` (4×4)."""
    row = torch.tensor(np.convolve(np.asarray(taps, dtype=np.float64), [1.0, 1.0]))
    kernel = torch.outer(row, row)
    return (kernel / kernel.sum()).float()


class LowPassDown(nn.Module):
    """Depthwise convolution with :func:`lowpass_kernel`, stride 2, zero padding ``len(taps)//2``
    (R3GAN's ``InterpolativeDownsampler``): ``(B, C, R, R)`` → ``(B, C, R/2, R/2)``."""

    def __init__(self, channels: int, taps: Sequence[float] = RESAMPLING_FILTER) -> None:
        super().__init__()
        kernel = lowpass_kernel(taps)
        self.padding = len(taps) // 2
        self.register_buffer(
            "kernel", kernel.expand(channels, 1, *kernel.shape).clone(), persistent=False
        )

    def forward(self, x: Tensor) -> Tensor:
        kernel = self.kernel.to(x.dtype)
        return F.conv2d(x, kernel, stride=2, padding=self.padding, groups=x.shape[1])


class ResidualBlock(nn.Module):
    """``x + W3·lrelu(G·lrelu(W1·x + b1) + b2)``: 1×1 expand, grouped k×k, 1×1 project."""

    def __init__(self, width: int, cardinality: int, expansion: int, kernel_size: int) -> None:
        super().__init__()
        inner = width * expansion
        self.expand = nn.Conv2d(width, inner, 1)
        self.grouped = nn.Conv2d(
            inner, inner, kernel_size, padding=kernel_size // 2, groups=cardinality
        )
        self.project = nn.Conv2d(inner, width, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = F.leaky_relu(self.expand(x), LRELU_SLOPE)
        h = F.leaky_relu(self.grouped(h), LRELU_SLOPE)
        return x + self.project(h)


class Transition(nn.Module):
    """Halve the resolution (:class:`LowPassDown`), then change the width with a 1×1 convolution."""

    def __init__(self, width_in: int, width_out: int) -> None:
        super().__init__()
        self.down = LowPassDown(width_in)
        self.conv = nn.Conv2d(width_in, width_out, 1, bias=False) if width_in != width_out else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.down(x)
        return x if self.conv is None else self.conv(x)


class Discriminator(GasDiscriminator):
    """R3GAN discriminator: ``(B, C, R, R)`` images or latents → ``(B,)`` logits.

    Args:
        arch: the architecture (see :class:`DiscriminatorArch` and :func:`preset_arch`).
        seed: seed of the initial weights (the global RNG is not touched).
    """

    takes_checkpoint = True

    def __init__(self, arch: DiscriminatorArch, seed: int = 0) -> None:
        super().__init__()
        self.arch = arch
        with torch.random.fork_rng(devices=[]):  # torch's default init must not move the global RNG
            self._build(arch)
        self.reset_parameters(seed)

    @classmethod
    def check_samples(cls, sample_shape: Sequence[int]) -> None:
        image_shape(sample_shape)

    @classmethod
    def from_settings(cls, settings: TrainSettings, model: DiffusionModel) -> Discriminator:
        """Preset ``settings.disc_preset``, or the file ``settings.disc_checkpoint``."""
        return build_discriminator(
            model.sample_shape, settings.disc_preset, settings.disc_checkpoint, seed=settings.seed
        )

    def _build(self, arch: DiscriminatorArch) -> None:
        w = arch.widths
        self.stem = nn.Conv2d(arch.in_channels, w[0], 1, bias=False)
        self.stages = nn.ModuleList(
            nn.Sequential(
                *(
                    ResidualBlock(w[i], arch.cardinalities[i], arch.expansion, arch.kernel_size)
                    for _ in range(arch.blocks[i])
                )
            )
            for i in range(len(w))
        )
        self.transitions = nn.ModuleList(Transition(w[i], w[i + 1]) for i in range(len(w) - 1))
        self.basis = nn.Conv2d(w[-1], w[-1], BASIS_SIZE, groups=w[-1], bias=False)
        self.head = nn.Linear(w[-1], arch.head_channels, bias=False)

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """Fix-up init: He-normal, residual branches scaled by ``L^(-1/4)``, last layer zero."""
        gen = torch.Generator().manual_seed(seed)
        lrelu_gain = math.sqrt(2.0 / (1.0 + LRELU_SLOPE**2))
        branch_scale = max(sum(self.arch.blocks), 1) ** -0.25

        def he(weight: Tensor, gain: float) -> None:
            fan_in = weight[0].numel()
            weight.copy_(torch.randn(weight.shape, generator=gen) * (gain / math.sqrt(fan_in)))

        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, ResidualBlock):
                he(module.expand.weight, lrelu_gain * branch_scale)
                he(module.grouped.weight, lrelu_gain * branch_scale)
                module.project.weight.zero_()
            elif isinstance(module, Transition) and module.conv is not None:
                he(module.conv.weight, 1.0)
        he(self.stem.weight, 1.0)
        he(self.basis.weight, 1.0)
        he(self.head.weight, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, C, R, R)`` → logits ``(B,)`` (computed in the parameters' dtype)."""
        expected = (self.arch.in_channels, self.arch.resolution, self.arch.resolution)
        if tuple(x.shape[1:]) != expected:
            raise ConfigError(
                f"the discriminator takes (B, {', '.join(map(str, expected))}) inputs, got "
                f"{tuple(x.shape)}"
            )
        x = self.stem(x.to(self.head.weight.dtype))
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < len(self.transitions):
                x = self.transitions[i](x)
        return self.head(self.basis(x).flatten(1)).sum(1)

    # -- persistence ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the weights as safetensors, with the architecture in the file's metadata."""
        from safetensors.torch import save

        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        metadata = {
            "format": "gas-solver-discriminator",
            "architecture": json.dumps(self.arch.to_dict()),
        }
        data = save(tensors, metadata=metadata)  # in memory: a failed write is an OSError
        return atomic_write(path, lambda tmp: tmp.write_bytes(data))

    @classmethod
    def load(cls, path: str | Path) -> Discriminator:
        """A discriminator from a local file: one written by :meth:`save` (``.safetensors``), a
        ``gas-solver train --loss gas`` ``checkpoint.pt``, or an R3GAN snapshot ``.pkl`` (its
        ``D``, read by :func:`~.r3gan_pickle.load_r3gan_discriminator`).

        Raises:
            MissingAssetError: no such file.
            CheckpointMismatchError: the file holds no discriminator, or weights that do not fit
                its architecture.
        """
        path = Path(path)
        if not path.is_file():
            raise MissingAssetError(
                f"disc_checkpoint: {path} not found (a discriminator .safetensors, the "
                "checkpoint.pt of a `gas-solver train --loss gas` run, or an R3GAN snapshot .pkl)"
            )
        if path.suffix == ".pkl":
            from .r3gan_pickle import load_r3gan_discriminator

            return load_r3gan_discriminator(path)
        try:
            entry = _read_entry(path)
        except CheckpointMismatchError:
            raise
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same message
            raise CheckpointMismatchError(
                f"disc_checkpoint: cannot read {path} ({type(err).__name__}: {err})"
            ) from None
        return cls.from_checkpoint(entry, str(path))

    @classmethod
    def from_checkpoint(cls, entry: dict[str, Any], source: str = "checkpoint") -> Discriminator:
        disc = cls(DiscriminatorArch.from_dict(entry["architecture"]))
        try:
            disc.load_state_dict(entry["state"])
        except RuntimeError as err:
            raise CheckpointMismatchError(
                f"{source}: discriminator weights do not fit: {err}"
            ) from None
        return disc


def _read_entry(path: Path) -> dict[str, Any]:
    """``{"architecture": …, "state": …}`` from a discriminator file (see Discriminator.load)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if "architecture" not in metadata:
                raise CheckpointMismatchError(f"{path} is not a gas-solver discriminator file")
            return {
                "architecture": json.loads(metadata["architecture"]),
                "state": {k: f.get_tensor(k) for k in f.keys()},  # noqa: SIM118
            }
    entry = load_checkpoint_file(path).get("discriminator")
    if not isinstance(entry, dict) or "architecture" not in entry or "state" not in entry:
        raise CheckpointMismatchError(
            f"{path} holds no discriminator (expected a GAS training checkpoint.pt or a "
            "discriminator .safetensors file)"
        )
    return entry


def build_discriminator(
    sample_shape: Sequence[int],
    preset: str = "auto",
    checkpoint: str | Path | None = None,
    seed: int = 0,
) -> Discriminator:
    """The discriminator for samples ``(C, H, W)``: from ``checkpoint`` if given, else ``preset``.

    Either way its input channels and resolution are checked against ``sample_shape`` here, before
    any training starts.
    """
    channels, resolution = image_shape(sample_shape)
    if checkpoint:
        disc = Discriminator.load(checkpoint)
        arch = disc.arch
        if (arch.in_channels, arch.resolution) != (channels, resolution):
            raise CheckpointMismatchError(
                f"disc_checkpoint: {checkpoint} takes {arch.in_channels}×{arch.resolution}×"
                f"{arch.resolution} inputs, the samples are {channels}×{resolution}×{resolution}"
            )
        return disc
    return Discriminator(preset_arch(preset, sample_shape), seed=seed)
