"""Pretrained R3GAN discriminators from the official network pickles, read without running code.

The GAS paper starts its pixel-space discriminators from R3GAN's released snapshots
(``network-snapshot-final.pkl``; CIFAR-10 from ``brownvc/R3GAN-CIFAR10`` and FFHQ-64 from
``brownvc/R3GAN-FFHQ-64x64`` on the Hugging Face hub), taking the entry ``D``. R3GAN writes a
snapshot with a plain ``pickle.dump`` of its modules: the wrapper ``training.networks.Discriminator``
holds ``Model``, an ``R3GAN.Networks.Discriminator`` laid out as

* ``ExtractionLayer.Layer`` (1×1 convolution, no bias);
* ``MainLayers[i].Layers[j]`` for ``j < B_i``: residual blocks ``LinearLayer1.Layer`` (1×1),
  ``NonLinearity1.Bias``, ``LinearLayer2.Layer`` (grouped k×k), ``NonLinearity2.Bias``,
  ``LinearLayer3.Layer`` (1×1);
* ``MainLayers[i].Layers[B_i]``: the transition, a ``DownsampleLayer`` (``Resampler.Kernel``
  and, where the width changes, ``LinearLayer.Layer``), or in the last stage the
  ``DiscriminativeBasis`` (``Basis``, 4×4 depthwise, and ``LinearLayer``);
* ``EmbeddingLayer`` for class-conditional snapshots.

:func:`read_r3gan_discriminator` reads the pickle with the restricted unpickler of
:mod:`gas_solver.safe_pickle` (R3GAN's classes become inert records, under its released module
names and the earlier ``BaselineGAN`` / ``training.networks_baseline`` ones), infers the
architecture from the tensor shapes, and renames the weights for this package's
:class:`~.discriminator.Discriminator`, which loads them ``strict``. As in GAS, a conditional snapshot's class
embedding is replaced by the constant 1: the logit is the sum of the projection. The snapshots
run some stages in bfloat16 (R3GAN's ``FP16Stages``); here everything runs in float32.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..safe_pickle import Captured, captured_class, captured_state_dict, read_pickle
from .discriminator_arch import DiscriminatorArch, lowpass_kernel

DOWNLOADS = (
    "https://huggingface.co/brownvc/R3GAN-CIFAR10/resolve/main/network-snapshot-final.pkl (32x32), "
    "https://huggingface.co/brownvc/R3GAN-FFHQ-64x64/resolve/main/network-snapshot-final.pkl (64x64)"
)
_R3GAN_CLASSES = {
    "Networks": (
        "Convolution", "ResidualBlock", "UpsampleLayer", "DownsampleLayer", "GenerativeBasis",
        "DiscriminativeBasis", "GeneratorStage", "DiscriminatorStage", "Generator", "Discriminator",
    ),
    "Resamplers": tuple(
        f"{kind}{direction}{impl}"
        for kind in ("Interpolative", "Inplace")
        for direction in ("Upsampler", "Downsampler")
        for impl in ("", "CUDA", "Reference")
    ),
    "FusedOperators": ("BiasedActivation", "BiasedActivationCUDA", "BiasedActivationReference"),
}  # fmt: skip
_TORCH_LAYERS = (
    ("torch.nn.modules.conv", "Conv2d"),
    ("torch.nn.modules.linear", "Linear"),
    ("torch.nn.modules.activation", "LeakyReLU"),
)


def _r3gan_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {}
    for package in ("R3GAN", "BaselineGAN"):
        for module, names in _R3GAN_CLASSES.items():
            for name in names:
                allowed[(f"{package}.{module}", name)] = captured_class(
                    f"{package}.{module}.{name}"
                )
    for module in ("training.networks", "training.networks_baseline"):
        for name in ("Generator", "Discriminator"):
            allowed[(module, name)] = captured_class(f"{module}.{name}")
    for module, name in _TORCH_LAYERS:
        allowed[(module, name)] = captured_class(f"{module}.{name}")
    return allowed


R3GAN_GLOBALS = _r3gan_globals()
"""R3GAN's network classes (as inert records) and the torch layers inside them."""

_BLOCK = re.compile(r"MainLayers\.(\d+)\.Layers\.(\d+)\.(.+)")
_BLOCK_NAMES = {
    "LinearLayer1.Layer.weight": "expand.weight",
    "NonLinearity1.Bias": "expand.bias",
    "LinearLayer2.Layer.weight": "grouped.weight",
    "NonLinearity2.Bias": "grouped.bias",
    "LinearLayer3.Layer.weight": "project.weight",
}


def _discriminator_record(data: Any, source: str) -> Captured:
    """The ``R3GAN.Networks.Discriminator`` record inside a snapshot (entry ``D``)."""
    if isinstance(data, dict):
        if "D" not in data:
            raise ConfigError(
                f"{source}: no 'D' entry (keys: {', '.join(map(str, data))}); R3GAN snapshots "
                "keep the discriminator under 'D'"
            )
        data = data["D"]
    if isinstance(data, Captured) and "Model" in (data.state.get("_modules") or {}):
        data = data.state["_modules"]["Model"]  # the training.networks wrapper
    if not (isinstance(data, Captured) and data.class_name.endswith("Networks.Discriminator")):
        raise ConfigError(f"{source}: 'D' is not an R3GAN discriminator")
    return data


def _architecture(tensors: dict[str, Tensor], source: str) -> tuple[DiscriminatorArch, int]:
    """The architecture the tensors describe, and the index of the last stage."""
    stages: dict[int, dict[int, dict[str, Tensor]]] = {}
    for name, tensor in tensors.items():
        match = _BLOCK.fullmatch(name)
        if match:
            stage, layer, rest = int(match[1]), int(match[2]), match[3]
            stages.setdefault(stage, {}).setdefault(layer, {})[rest] = tensor
    if "ExtractionLayer.Layer.weight" not in tensors or sorted(stages) != list(range(len(stages))):
        raise ConfigError(f"{source}: the discriminator's layers are not R3GAN's")
    last = len(stages) - 1
    width = tensors["ExtractionLayer.Layer.weight"].shape[0]
    widths, cardinalities, blocks, expansion, kernel = [], [], [], 2, 3
    for index in range(len(stages)):
        layers = stages[index]
        residual = sorted(
            j for j, entries in layers.items() if "LinearLayer1.Layer.weight" in entries
        )
        widths.append(width)
        blocks.append(len(residual))
        cardinalities.append(1)
        if residual:
            expand = layers[residual[0]]["LinearLayer1.Layer.weight"]
            grouped = layers[residual[0]]["LinearLayer2.Layer.weight"]
            expansion, kernel = expand.shape[0] // expand.shape[1], grouped.shape[-1]
            cardinalities[-1] = grouped.shape[0] // grouped.shape[1]
        transition = layers.get(len(residual), {})
        if index < last:
            if "Resampler.Kernel" in transition and not torch.allclose(
                transition["Resampler.Kernel"].float(), lowpass_kernel()
            ):
                raise ConfigError(f"{source}: a ResamplingFilter other than R3GAN's [1, 2, 1]")
            if "LinearLayer.Layer.weight" in transition:
                width = transition["LinearLayer.Layer.weight"].shape[0]
    head = stages[last].get(blocks[-1], {}).get("LinearLayer.weight")
    if head is None:
        raise ConfigError(f"{source}: the last stage has no DiscriminativeBasis")
    arch = DiscriminatorArch(
        resolution=2 ** (len(stages) + 1),
        in_channels=tensors["ExtractionLayer.Layer.weight"].shape[1],
        widths=tuple(widths),
        cardinalities=tuple(cardinalities),
        blocks=tuple(blocks),
        expansion=expansion,
        kernel_size=kernel,
        head_channels=head.shape[0],
    )
    return arch, last


def _our_names(tensors: dict[str, Tensor], arch: DiscriminatorArch, last: int) -> dict[str, Tensor]:
    """R3GAN's state-dict names → :class:`Discriminator`'s; the resampling kernels (fixed) and
    the class embedding (replaced by the constant 1) are dropped."""
    ours: dict[str, Tensor] = {}
    for name, tensor in tensors.items():
        match = _BLOCK.fullmatch(name)
        if name == "ExtractionLayer.Layer.weight":
            ours["stem.weight"] = tensor
        elif name.startswith("EmbeddingLayer.") or name.endswith("Resampler.Kernel"):
            continue
        elif match is None:
            raise ConfigError(f"unexpected tensor {name}")
        else:
            stage, layer, rest = int(match[1]), int(match[2]), match[3]
            if layer < arch.blocks[stage] and rest in _BLOCK_NAMES:
                ours[f"stages.{stage}.{layer}.{_BLOCK_NAMES[rest]}"] = tensor
            elif stage < last and rest == "LinearLayer.Layer.weight":
                ours[f"transitions.{stage}.conv.weight"] = tensor
            elif stage == last and rest in ("Basis.weight", "LinearLayer.weight"):
                ours["basis.weight" if rest == "Basis.weight" else "head.weight"] = tensor
            else:
                raise ConfigError(f"unexpected tensor {name}")
    return {k: v.float() for k, v in ours.items()}


def read_r3gan_discriminator(path: str | Path) -> dict[str, Any]:
    """The discriminator ``D`` of an R3GAN snapshot pickle, as the ``{"architecture", "state"}``
    entry :meth:`~.discriminator.Discriminator.from_checkpoint` builds a
    :class:`~.discriminator.Discriminator` from (``Discriminator.load(path)`` does both).

    Raises:
        MissingAssetError: no file at ``path`` (the message names the downloads).
        ConfigError: anything in the file other than R3GAN's networks, tensors and plain data
            (the global is named and nothing runs), or a network not laid out as R3GAN's.
        CheckpointMismatchError: weights that do not fit the inferred architecture.
    """
    source = str(path)
    data = read_pickle(
        path,
        extra=R3GAN_GLOBALS,
        kind="R3GAN network pickle",
        missing=f"pretrained R3GAN discriminators are the snapshots {DOWNLOADS}; download one "
        "yourself and pass its path (nothing is downloaded here)",
    )
    tensors = captured_state_dict(_discriminator_record(data, source))
    arch, last = _architecture(tensors, source)
    try:
        state = _our_names(tensors, arch, last)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return {"architecture": arch.to_dict(), "state": state}
