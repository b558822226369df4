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

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointMismatchError, ConfigError, MissingAssetError
from ..outputs import atomic_write
from ..runtime import load_checkpoint_file
from .discriminator_arch import (
    BASIS_SIZE,
    RESAMPLING_FILTER,
    DiscriminatorArch,
    image_shape,
    lowpass_kernel,
    preset_arch,
)
from .gas_discriminator import GasDiscriminator
from .r3gan_pickle import read_r3gan_discriminator

if TYPE_CHECKING:
    from ..models.base import DiffusionModel
    from .settings import TrainSettings

LRELU_SLOPE = 0.2
# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


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
        ``D``, read by :func:`~.r3gan_pickle.read_r3gan_discriminator`).

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
            return cls.from_checkpoint(read_r3gan_discriminator(path), str(path))
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
