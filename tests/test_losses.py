"""The per-sample distillation distances against closed forms."""

from __future__ import annotations

import pytest
import torch

from gas_solver.errors import ConfigError
from gas_solver.training.losses import TEXTURE_WEIGHT, default_distance, get_loss


def test_l1_grad_charges_a_smooth_error_as_l1_and_speckle_more():
    """A constant error c costs |c| (its differences are 0); a checkerboard ±c costs
    c + 2c + 2c = 5c (every neighbouring difference is 2c), five times its L1."""
    loss, l1 = get_loss("l1-grad"), get_loss("l1")
    target = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    smooth = target + 0.1
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2 - 1
    speckled = target + 0.1 * checker.to(target)
    torch.testing.assert_close(loss(smooth, target), l1(smooth, target))
    torch.testing.assert_close(loss(smooth, target), torch.full((3,), 0.1, dtype=torch.float64))
    torch.testing.assert_close(loss(speckled, target), torch.full((3,), 0.5, dtype=torch.float64))


def test_l1_grad_is_per_sample_and_differentiable():
    student = torch.randn(4, 3, 5, 6, requires_grad=True)
    target = torch.randn(4, 3, 5, 6)
    values = get_loss("l1-grad")(student, target)
    assert values.shape == (4,)
    one = get_loss("l1-grad")(student[1:2], target[1:2])
    torch.testing.assert_close(values[1:2], one)
    values.sum().backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_l1_grad_refuses_samples_without_spatial_dimensions():
    with pytest.raises(ConfigError, match="needs images"):
        get_loss("l1-grad")(torch.randn(4, 2), torch.randn(4, 2))


@pytest.mark.parametrize("weight", [TEXTURE_WEIGHT, 10.0])
def test_l1_texture_adds_the_dark_roughness_difference(weight):
    """On an all-dark teacher image: a constant offset keeps the roughness (loss = L1); a
    checkerboard of ±c on it adds roughness 2c, so the loss is c + w·2c; bright pixels, and
    pixel pairs not both dark in the teacher's image, do not count."""
    loss, l1 = get_loss("l1-texture", texture_weight=weight), get_loss("l1")
    target = torch.full((2, 1, 6, 6), -0.99, dtype=torch.float64)
    shifted = target + 0.01
    checker = ((torch.arange(6)[:, None] + torch.arange(6)[None, :]) % 2 * 2 - 1).to(target)
    speckled = target + 0.005 * checker
    torch.testing.assert_close(loss(shifted, target), l1(shifted, target))
    expected = torch.full((2,), 0.005 + weight * 0.01, dtype=torch.float64)
    torch.testing.assert_close(loss(speckled, target), expected)
    bright = torch.full_like(target, 0.5)
    torch.testing.assert_close(loss(bright + 0.005 * checker, bright), l1(bright, bright) + 0.005)


def test_l1_texture_refuses_samples_without_spatial_dimensions():
    with pytest.raises(ConfigError, match="needs images"):
        get_loss("l1-texture")(torch.randn(4, 2), torch.randn(4, 2))


@pytest.mark.parametrize(
    ("is_latent", "sample_shape", "expected"),
    [
        (False, (1, 32, 32), "l1-texture"),  # mnist32
        (False, (3, 64, 64), "l1-texture"),  # EDM pixel models
        (True, (4, 64, 64), "l1"),  # SD latents
        (True, (3, 64, 64), "l1"),  # LDM latents with three channels
        (False, (2,), "l1"),  # the 2-D mixture
    ],
)
def test_the_automatic_distance_charges_texture_on_pixel_images_only(
    is_latent, sample_shape, expected
):
    assert default_distance(is_latent, sample_shape) == expected
