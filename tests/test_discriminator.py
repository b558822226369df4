"""The R3GAN discriminator: shapes of every preset, checks against the data, fix-up init, files."""

import pytest
import torch
import torch.nn.functional as F

from gas_solver.errors import CheckpointMismatchError, ConfigError, MissingAssetError
from gas_solver.runtime import save_checkpoint_file
from gas_solver.training.discriminator import Discriminator, LowPassDown, build_discriminator
from gas_solver.training.discriminator_arch import PRESETS, DiscriminatorArch, preset_arch

CASES = [
    ("r3gan-32", (3, 32, 32)),
    ("r3gan-32", (1, 32, 32)),
    ("r3gan-64", (4, 64, 64)),  # SD latents
    ("r3gan-64", (3, 64, 64)),  # LDM latents
    ("small", (1, 8, 8)),
    ("small", (4, 16, 16)),
    ("tiny", (3, 256, 256)),
    ("auto", (3, 32, 32)),
    ("auto", (1, 8, 8)),
]


@pytest.mark.parametrize("preset, shape", CASES, ids=lambda v: str(v))
def test_every_preset_gives_one_logit_per_sample(preset, shape):
    disc = Discriminator(preset_arch(preset, shape))
    with torch.no_grad():
        logits = disc(torch.randn(2, *shape))
    assert logits.shape == (2,) and torch.isfinite(logits).all()
    assert disc.arch.in_channels == shape[0] and disc.arch.resolution == shape[1]


def test_every_preset_is_tested():
    assert {p for p, _ in CASES} == {"auto", *PRESETS}


def test_auto_is_the_papers_architecture_at_32_and_64():
    assert preset_arch("auto", (3, 32, 32)) == preset_arch("r3gan-32", (3, 32, 32))
    latent = preset_arch("auto", (4, 64, 64))
    assert latent.widths == (384, 768, 768, 768, 768)
    assert latent.cardinalities == (48, 96, 96, 96, 96) and latent.blocks == (2,) * 5
    assert latent.expansion == 2 and latent.kernel_size == 3
    assert preset_arch("auto", (1, 16, 16)) == preset_arch("small", (1, 16, 16))


@pytest.mark.parametrize(
    "preset, shape, message",
    [
        ("auto", (2,), "image-shaped"),
        ("auto", (1, 8, 16), "image-shaped"),
        ("auto", (1, 12, 12), "powers of two"),
        ("auto", (1, 4, 4), "powers of two"),
        ("auto", (1, 512, 512), "powers of two"),
        ("r3gan-32", (3, 64, 64), "made for 32"),
        ("huge", (3, 32, 32), "unknown preset"),
    ],
)
def test_data_that_does_not_fit_is_refused(preset, shape, message):
    with pytest.raises(ConfigError, match=message):
        build_discriminator(shape, preset)


def test_bad_architecture_is_refused():
    with pytest.raises(ConfigError, match="stages"):
        DiscriminatorArch(16, 1, (8, 8), (2, 2), (1, 1))
    with pytest.raises(ConfigError, match="divide"):
        DiscriminatorArch(8, 1, (8, 8), (3, 2), (1, 1))


def test_wrong_input_shape_is_refused():
    disc = Discriminator(preset_arch("tiny", (1, 8, 8)))
    with pytest.raises(ConfigError, match="takes"):
        disc(torch.randn(2, 3, 8, 8))


def test_untrained_network_is_affine_and_seeded():
    """Fix-up init: every residual branch ends in zeros, so D starts affine in its input."""
    arch = preset_arch("tiny", (1, 16, 16))
    disc = Discriminator(arch, seed=3).double()
    x, y = torch.randn(2, 4, 1, 16, 16, dtype=torch.float64)
    zero = torch.zeros_like(x)
    with torch.no_grad():
        torch.testing.assert_close(disc(x + y) - disc(y), disc(x) - disc(zero))
    state = torch.get_rng_state()
    again, other = Discriminator(arch, seed=3), Discriminator(arch, seed=4)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is untouched
    for (name, p), q, r in zip(
        disc.state_dict().items(),
        again.state_dict().values(),
        other.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(p.float(), q), name
        if "project" not in name and p.abs().sum() > 0:
            assert not torch.equal(q, r), name


def test_low_pass_is_r3gans_4x4_filter():
    """R3GAN turns ResamplingFilter [1, 2, 1] into [1,3,3,1]ᵀ[1,3,3,1]/64, stride 2, padding 1."""
    down = LowPassDown(3)
    x = torch.randn(2, 3, 16, 16)
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    kernel = (torch.outer(taps, taps) / 64).view(1, 1, 4, 4)
    expected = F.conv2d(x.reshape(6, 1, 16, 16), kernel, stride=2, padding=1).view(2, 3, 8, 8)
    torch.testing.assert_close(down(x), expected)
    constant = down(torch.ones(1, 3, 8, 8))
    assert constant.shape == (1, 3, 4, 4)
    torch.testing.assert_close(constant[..., 1:-1, 1:-1], torch.ones(1, 3, 2, 2))  # off the pad


def test_save_and_load_round_trip(tmp_path):
    disc = Discriminator(preset_arch("tiny", (4, 16, 16)), seed=1)
    with torch.no_grad():
        for p in disc.parameters():
            p.add_(0.01)
    disc.save(tmp_path / "d.safetensors")
    save_checkpoint_file(tmp_path / "checkpoint.pt", {"discriminator": disc.to_checkpoint()})
    for name in ("d.safetensors", "checkpoint.pt"):
        loaded = build_discriminator((4, 16, 16), checkpoint=tmp_path / name)
        assert loaded.arch == disc.arch
        for (k, p), q in zip(disc.state_dict().items(), loaded.state_dict().values(), strict=True):
            assert torch.equal(p, q), k
    with pytest.raises(CheckpointMismatchError, match="takes 4"):
        build_discriminator((3, 16, 16), checkpoint=tmp_path / "d.safetensors")
    with pytest.raises(MissingAssetError, match="not found"):
        build_discriminator((4, 16, 16), checkpoint=tmp_path / "nope.pt")
    save_checkpoint_file(tmp_path / "other.pt", {"solver": {}})
    with pytest.raises(CheckpointMismatchError, match="no discriminator"):
        build_discriminator((4, 16, 16), checkpoint=tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="junk.pt: not a gas-solver checkpoint"):
        build_discriminator((4, 16, 16), checkpoint=tmp_path / "junk.pt")
