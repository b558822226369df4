"""LPIPS-VGG: zero on identical images, symmetric, equal to a direct re-computation.

No real VGG16 weights are needed: the tests save random ones under torchvision's key names
(``features.N.weight``) and compare the module with a plain ``torch.nn.functional`` re-computation
written from the lpips 0.1.4 recipe.
"""

from __future__ import annotations

import importlib
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from gas_solver.errors import CheckpointMismatchError, ConfigError, MissingAssetError
from gas_solver.training import lpips as lp
from gas_solver.training.losses import DISTILLATION_LOSSES, get_loss

# torchvision vgg16().features: indices of the 3×3 convs and of the 2×2 max-pools.
CONVS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256),
         14: (256, 256), 17: (256, 512), 19: (512, 512), 21: (512, 512), 24: (512, 512),
         26: (512, 512), 28: (512, 512)}  # fmt: skip
POOLS = {4, 9, 16, 23}
RELU_TAPS = {3, 8, 15, 22, 29}  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """Random VGG16 trunk (+ a classifier entry, to be ignored) saved like vgg16-397923af.pth."""
    g = torch.Generator().manual_seed(1)
    state = {}
    for index, (c_in, c_out) in CONVS.items():
        state[f"features.{index}.weight"] = (
            torch.randn(c_out, c_in, 3, 3, generator=g) * (2.0 / (9 * c_in)) ** 0.5
        )
        state[f"features.{index}.bias"] = 0.01 * torch.randn(c_out, generator=g)
    state["classifier.0.weight"] = torch.zeros(4, 2)
    path = tmp_path_factory.mktemp("vgg") / lp.VGG16_FILE
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def heads_file(tmp_path_factory):
    """Random non-negative linear heads saved with lpips' key names."""
    g = torch.Generator().manual_seed(2)
    state = {
        f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) / c
        for k, c in enumerate((64, 128, 256, 512, 512))
    }
    path = tmp_path_factory.mktemp("heads") / "vgg.pth"
    torch.save(state, path)
    return path


def direct_lpips(x, y, vgg_file, heads_file, resize):
    """The lpips 0.1.4 VGG recipe written out with torch.nn.functional, one sample at a time."""
    vgg = torch.load(vgg_file, weights_only=True)
    heads = torch.load(heads_file, weights_only=True)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def features(img):
        img = img.expand(-1, 3, -1, -1)  # grayscale → RGB
        if resize is not None:
            img = F.interpolate(img, size=(resize, resize), mode="bilinear", align_corners=False)
        h = (img.clamp(-1, 1) - shift) / scale
        taps = []
        for index in range(30):
            if index in CONVS:
                h = F.conv2d(
                    h, vgg[f"features.{index}.weight"], vgg[f"features.{index}.bias"], 1, 1
                )
            elif index in POOLS:
                h = F.max_pool2d(h, 2, 2)
            else:
                h = F.relu(h)
            if index in RELU_TAPS:
                taps.append(h)
        return taps

    out = []
    for xi, yi in zip(x, y, strict=True):
        value = torch.zeros(())
        for k, (fx, fy) in enumerate(zip(features(xi[None]), features(yi[None]), strict=True)):
            fx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fy = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            w = heads[f"lin{k}.model.1.weight"].view(1, -1, 1, 1)
            value = value + (w * (fx - fy) ** 2).sum(1).mean()
        out.append(value)
    return torch.stack(out)


@pytest.mark.parametrize("channels, size, resize", [(3, 32, None), (1, 20, 40)])
def test_matches_direct_computation(vgg_file, heads_file, channels, size, resize):
    model = lp.LPIPS.from_files(vgg_file, heads_file, resize=resize)
    x = 1.2 * torch.rand(2, channels, size, size) * 2 - 1.2  # some pixels outside [-1, 1]
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1.2, 1.2)
    with torch.no_grad():
        got = model(x, y)
        want = direct_lpips(x, y, vgg_file, heads_file, resize)
    assert got.shape == (2,)
    assert (want > 0).all()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_zero_on_identical_images_and_symmetric(vgg_file, heads_file):
    model = lp.LPIPS.from_files(vgg_file, heads_file, resize=None)
    x, y = torch.rand(2, 2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert model(x, x).abs().max() == 0
        torch.testing.assert_close(model(x, y), model(y, x))
        assert (model(x, y) > 0).all()


def test_gradient_reaches_the_student_only(vgg_file, heads_file):
    model = lp.LPIPS.from_files(vgg_file, heads_file, resize=None)
    x = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_()
    model(x, torch.rand(2, 3, 16, 16) * 2 - 1).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_registered_loss_loads_lazily_from_env(vgg_file, monkeypatch):
    """``get_loss("lpips")`` finds the VGG file from $GAS_SOLVER_VGG16 and the wheel's heads."""
    assert "lpips" in DISTILLATION_LOSSES
    monkeypatch.setenv(lp.VGG16_ENV, str(vgg_file))
    x, y = torch.rand(2, 1, 1, 8, 8) * 2 - 1  # MNIST-like grayscale, upsampled to 224
    with torch.no_grad():
        got = get_loss("lpips")(x, y)
        want = lp.LPIPS.from_files(vgg_file, lp.heads_path(), resize=224)(x, y)
    assert got.shape == (1,)
    torch.testing.assert_close(got, want)


def test_wheel_heads_found_without_import():
    state = torch.load(lp.heads_path(), map_location="cpu", weights_only=True)
    for k, c in enumerate((64, 128, 256, 512, 512)):
        w = state[f"lin{k}.model.1.weight"]
        assert w.shape == (1, c, 1, 1) and (w >= 0).all()


def test_missing_vgg_names_file_and_url(tmp_path, monkeypatch):
    monkeypatch.setenv(lp.VGG16_ENV, str(tmp_path / "nowhere.pth"))
    with pytest.raises(MissingAssetError, match="vgg16-397923af.pth") as info:
        get_loss("lpips")(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16))
    assert lp.VGG16_URL in str(info.value) and "nowhere.pth" in str(info.value)
    assert lp.VGG16_ENV in str(info.value)


def test_set_vgg16_path_takes_precedence(vgg_file, tmp_path, monkeypatch):
    monkeypatch.setenv(lp.VGG16_ENV, str(vgg_file))
    lp.set_vgg16_path(tmp_path / "other.pth")
    try:
        with pytest.raises(MissingAssetError, match="set_vgg16_path"):
            lp.vgg16_path()
    finally:
        lp.set_vgg16_path(None)
    assert lp.vgg16_path() == vgg_file


def test_wrong_files_and_inputs_are_clear(vgg_file, heads_file, tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointMismatchError, match="VGG16"):
        lp.LPIPS.from_files(bad, heads_file)
    with pytest.raises(CheckpointMismatchError, match="lin"):
        lp.LPIPS.from_files(vgg_file, bad)
    model = lp.LPIPS.from_files(vgg_file, heads_file, resize=None)
    latents = torch.zeros(1, 4, 16, 16)
    with pytest.raises(ConfigError, match="l1"):
        model(latents, latents)


def test_agrees_with_lpips_package_forward(vgg_file, monkeypatch):
    """lpips 0.1.4's own ``LPIPS(net='vgg')`` (wheel heads), torchvision stubbed by our trunk."""
    trunk = lp.VGG16Features()
    trunk.load_state_dict(
        {k: v for k, v in torch.load(vgg_file, weights_only=True).items() if "features" in k}
    )
    models = types.ModuleType("torchvision.models")
    models.vgg16 = lambda pretrained=False: trunk
    torchvision = types.ModuleType("torchvision")
    torchvision.models = models
    monkeypatch.setitem(sys.modules, "torchvision", torchvision)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    for name in [m for m in sys.modules if m == "lpips" or m.startswith("lpips.")]:
        monkeypatch.delitem(sys.modules, name)
    try:
        lpips = importlib.import_module("lpips")
        reference = lpips.LPIPS(net="vgg", verbose=False)
    finally:
        for name in [m for m in sys.modules if m == "lpips" or m.startswith("lpips.")]:
            del sys.modules[name]
    model = lp.LPIPS.from_files(vgg_file, resize=None)
    x, y = torch.rand(2, 2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(x, y), reference(x, y).flatten())
