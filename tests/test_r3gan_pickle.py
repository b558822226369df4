"""R3GAN snapshot pickles: rebuilt without running anything from the file, same logits.

The reference network here is written for this test following R3GAN's layout and forward pass
(`R3GAN/Networks.py`, `Resamplers.py`, `FusedOperators.py`: names, biases only before the
activations, the [1,3,3,1] low-pass at padding 1, the conditional projection); its classes are
registered under R3GAN's module names only while the snapshot is pickled, as R3GAN's training loop
pickles it, and are gone when it is read back.
"""

from __future__ import annotations

import math
import os
import pickle
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gas_solver.errors import ConfigError, MissingAssetError
from gas_solver.training import discriminator as ours_module
from gas_solver.training.discriminator import build_discriminator
from gas_solver.training.r3gan_pickle import read_r3gan_discriminator


# -- a discriminator laid out as R3GAN's ---------------------------------------------------------
class Convolution(nn.Module):
    def __init__(self, cin, cout, kernel, groups=1):
        super().__init__()
        self.Layer = nn.Conv2d(
            cin, cout, kernel, padding=(kernel - 1) // 2, groups=groups, bias=False
        )

    def forward(self, x):
        return self.Layer(x)


class BiasedActivationCUDA(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.Bias = nn.Parameter(torch.randn(channels) * 0.1)

    def forward(self, x):
        return F.leaky_relu(x + self.Bias.view(1, -1, 1, 1), 0.2)


class InterpolativeDownsamplerCUDA(nn.Module):
    def __init__(self, taps):
        super().__init__()
        row = torch.tensor([float(a + b) for a, b in zip([0, *taps], [*taps, 0], strict=True)])
        kernel = torch.outer(row, row)
        self.register_buffer("Kernel", kernel / kernel.sum())

    def forward(self, x):
        b, c, h, w = x.shape
        k = self.Kernel.view(1, 1, *self.Kernel.shape)
        return F.conv2d(x.reshape(b * c, 1, h, w), k, stride=2, padding=1).view(
            b, c, h // 2, w // 2
        )


class ResidualBlock(nn.Module):
    def __init__(self, width, cardinality, expansion, kernel):
        super().__init__()
        inner = width * expansion
        self.LinearLayer1 = Convolution(width, inner, 1)
        self.LinearLayer2 = Convolution(inner, inner, kernel, groups=cardinality)
        self.LinearLayer3 = Convolution(inner, width, 1)
        self.NonLinearity1 = BiasedActivationCUDA(inner)
        self.NonLinearity2 = BiasedActivationCUDA(inner)

    def forward(self, x):
        y = self.LinearLayer2(self.NonLinearity1(self.LinearLayer1(x)))
        return x + self.LinearLayer3(self.NonLinearity2(y))


class DownsampleLayer(nn.Module):
    def __init__(self, cin, cout, taps):
        super().__init__()
        self.Resampler = InterpolativeDownsamplerCUDA(taps)
        if cin != cout:
            self.LinearLayer = Convolution(cin, cout, 1)

    def forward(self, x):
        x = self.Resampler(x)
        return self.LinearLayer(x) if hasattr(self, "LinearLayer") else x


class DiscriminativeBasis(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.Basis = nn.Conv2d(cin, cin, 4, groups=cin, bias=False)
        self.LinearLayer = nn.Linear(cin, cout, bias=False)

    def forward(self, x):
        return self.LinearLayer(self.Basis(x).view(x.shape[0], -1))


class DiscriminatorStage(nn.Module):
    def __init__(self, cin, cout, cardinality, blocks, expansion, kernel, taps=None):
        super().__init__()
        transition = (
            DiscriminativeBasis(cin, cout) if taps is None else DownsampleLayer(cin, cout, taps)
        )
        residual = [ResidualBlock(cin, cardinality, expansion, kernel) for _ in range(blocks)]
        self.Layers = nn.ModuleList([*residual, transition])
        self.DataType = torch.bfloat16  # as R3GAN's FP16Stages leave it; unused here

    def forward(self, x):
        for layer in self.Layers:
            x = layer(x)
        return x


class Discriminator(nn.Module):
    def __init__(self, widths, cardinalities, blocks, expansion, condition_dim=None, embed_dim=0):
        super().__init__()
        stages = [
            DiscriminatorStage(
                widths[i], widths[i + 1], cardinalities[i], blocks[i], expansion, 3, [1, 2, 1]
            )
            for i in range(len(widths) - 1)
        ]
        out = 1 if condition_dim is None else embed_dim
        stages.append(
            DiscriminatorStage(widths[-1], out, cardinalities[-1], blocks[-1], expansion, 3)
        )
        self.ExtractionLayer = Convolution(3, widths[0], 1)
        self.MainLayers = nn.ModuleList(stages)
        if condition_dim is not None:
            self.EmbeddingLayer = nn.Linear(condition_dim, embed_dim, bias=False)

    def forward(self, x, y=None):
        x = self.ExtractionLayer(x)
        for layer in self.MainLayers:
            x = layer(x)
        if hasattr(self, "EmbeddingLayer"):
            x = (x * self.EmbeddingLayer(y)).sum(dim=1, keepdim=True)
        return x.view(x.shape[0])


class Wrapper(nn.Module):  # training.networks.Discriminator
    def __init__(self, model):
        super().__init__()
        self.Model = model

    def forward(self, x, c):
        return self.Model(x, c)


_LAYOUT = {
    "R3GAN.Networks": (Convolution, ResidualBlock, DownsampleLayer, DiscriminativeBasis,
                       DiscriminatorStage, Discriminator),
    "R3GAN.Resamplers": (InterpolativeDownsamplerCUDA,),
    "R3GAN.FusedOperators": (BiasedActivationCUDA,),
    "training.networks": (Wrapper,),
}  # fmt: skip


def _write_snapshot(path, network, extra=None) -> None:
    """Pickle ``{"D": …}`` with the classes living in R3GAN's modules, then take them away."""
    saved = {name: sys.modules.get(name) for name in ("R3GAN", "training")}
    for name in saved:
        sys.modules[name] = types.ModuleType(name)
    for module_name, classes in _LAYOUT.items():
        module = types.ModuleType(module_name)
        for cls in classes:
            name = "Discriminator" if cls is Wrapper else cls.__name__
            cls.__module__, cls.__qualname__ = module_name, name
            setattr(module, name, cls)
        saved[module_name] = sys.modules.get(module_name)
        sys.modules[module_name] = module
    try:
        with open(path, "wb") as f:
            pickle.dump(
                {
                    "D": network,
                    "cur_nimg": 0,
                    "training_set_kwargs": {"xflip": False},
                    **(extra or {}),
                },
                f,
            )
    finally:
        for module_name, previous in saved.items():
            sys.modules.pop(module_name)
            if previous is not None:
                sys.modules[module_name] = previous
        for classes in _LAYOUT.values():
            for cls in classes:
                cls.__module__, cls.__qualname__ = __name__, cls.__name__
        Wrapper.__qualname__ = "Wrapper"


def _randomise(net: nn.Module) -> None:
    with torch.no_grad():
        for name, p in net.named_parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(
                torch.randn_like(p) / math.sqrt(fan_in) * (0.3 if "LinearLayer3" in name else 1.0)
            )


@pytest.mark.parametrize("conditional", [False, True])
def test_snapshot_rebuilds_with_the_same_logits(tmp_path, conditional) -> None:
    torch.manual_seed(0)
    widths, cards, blocks = [16, 32, 32], [4, 8, 8], [2, 1, 1]  # 16x16 input: 3 stages
    kwargs = {"condition_dim": 10, "embed_dim": 24} if conditional else {}
    reference = Discriminator(widths, cards, blocks, expansion=2, **kwargs).eval()
    _randomise(reference)
    _write_snapshot(tmp_path / "snap.pkl", Wrapper(reference))
    assert "R3GAN.Networks" not in sys.modules

    ours = ours_module.Discriminator.load(tmp_path / "snap.pkl")
    arch = ours.arch
    assert (arch.resolution, arch.in_channels, arch.widths) == (16, 3, (16, 32, 32))
    assert (arch.cardinalities, arch.blocks, arch.head_channels) == (
        (4, 8, 8),
        (2, 1, 1),
        24 if conditional else 1,
    )
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        if conditional:  # GAS: the class embedding replaced by the constant 1
            ones = torch.ones(5, 24)
            reference.EmbeddingLayer = nn.Identity()
            expected = reference(x, ones)
        else:
            expected = reference(x)
        torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)
    # --disc-checkpoint takes the .pkl too
    loaded = build_discriminator((3, 16, 16), checkpoint=tmp_path / "snap.pkl")
    assert loaded.arch == arch


def test_code_in_a_snapshot_is_refused_and_never_runs(tmp_path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"D": Payload()}, f)
    with pytest.raises(ConfigError, match="refused to load the global .*system"):
        read_r3gan_discriminator(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_missing_or_foreign_snapshots_say_what_is_wrong(tmp_path) -> None:
    with pytest.raises(MissingAssetError, match="R3GAN-CIFAR10"):
        read_r3gan_discriminator(tmp_path / "network-snapshot-final.pkl")
    with open(tmp_path / "g.pkl", "wb") as f:
        pickle.dump({"G": {}}, f)
    with pytest.raises(ConfigError, match="no 'D' entry"):
        read_r3gan_discriminator(tmp_path / "g.pkl")
