"""GAS adversarial losses: R1/R2 against finite differences, the discriminator step, freezing."""

import math

import pytest
import torch

from gas_solver.training.adversarial import (
    Adversary,
    NonFiniteLossError,
    logits_and_penalty,
    relativistic_loss,
)
from gas_solver.training.discriminator import Discriminator
from gas_solver.training.discriminator_arch import preset_arch

SHAPE = (1, 8, 8)


def _disc(seed: int = 0) -> Discriminator:
    """A tiny discriminator made non-linear (the fix-up init zeroes every residual branch)."""
    disc = Discriminator(preset_arch("tiny", SHAPE), seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for block in disc.modules():
            if hasattr(block, "project"):
                block.project.weight.copy_(
                    0.3 * torch.randn(block.project.weight.shape, generator=gen)
                )
    return disc


def _toy_batch():
    gen = torch.Generator().manual_seed(0)
    ramp = torch.linspace(-1, 1, 8)
    real = (ramp[:, None] * ramp[None, :]).expand(8, *SHAPE) + 0.05 * torch.randn(
        8, *SHAPE, generator=gen
    )
    fake = torch.randn(8, *SHAPE, generator=gen)
    return real, fake


def test_relativistic_loss_is_softplus_of_the_negated_difference():
    a, b = torch.tensor([0.0, 2.0, -1.0]), torch.tensor([0.0, -1.0, 3.0])
    expected = torch.tensor([math.log(2), math.log1p(math.exp(-3)), math.log1p(math.exp(4))])
    torch.testing.assert_close(relativistic_loss(a, b), expected)


def test_gradient_penalty_equals_finite_differences():
    disc = _disc().double()
    x = torch.randn(3, *SHAPE, dtype=torch.float64)
    logits, penalty = logits_and_penalty(disc, x)
    h = 1e-5
    grad = torch.zeros_like(x).flatten(1)
    with torch.no_grad():
        for i in range(grad.shape[1]):
            step = torch.zeros_like(grad)
            step[:, i] = h
            step = step.view_as(x)
            grad[:, i] = (disc(x + step) - disc(x - step)) / (2 * h)
        torch.testing.assert_close(logits, disc(x))
    estimate = grad.pow(2).sum(1)
    assert penalty.shape == (3,) and (estimate > 1e-3).all()
    torch.testing.assert_close(penalty.detach(), estimate, rtol=1e-6, atol=1e-9)


def test_discriminator_loss_combines_pairing_and_both_penalties():
    disc = _disc().double()
    adversary = Adversary(disc, r1_gamma=0.2)
    real, fake = (t.double() for t in _toy_batch())
    loss, parts = adversary.discriminator_loss(real, fake)
    _, r1 = logits_and_penalty(disc, real)
    _, r2 = logits_and_penalty(disc, fake)
    torch.testing.assert_close(parts["r1"], r1)
    torch.testing.assert_close(parts["r2"], r2)
    expected = relativistic_loss(disc(real), disc(fake)) + 0.1 * (r1 + r2)
    torch.testing.assert_close(loss, expected)


def test_discriminator_step_lowers_its_loss_on_a_fixed_batch():
    real, fake = _toy_batch()
    adversary = Adversary(_disc())  # the paper's lr 1e-5: one step already lowers the loss
    before = adversary.discriminator_loss(real, fake)[0].mean().item()
    stats = adversary.discriminator_step(real, fake)
    assert stats["disc_loss"] == pytest.approx(before)
    assert adversary.discriminator_loss(real, fake)[0].mean().item() < before

    fast = Adversary(_disc(), lr=1e-3)
    first = [fast.discriminator_step(real, fake) for _ in range(30)]
    assert first[-1]["disc_loss"] < 0.5 * first[0]["disc_loss"]
    assert first[-1]["sign_real_minus_fake"] == 1.0
    for key in ("r1", "r2", "sign_real", "sign_fake", "logits_real", "logits_fake"):
        assert math.isfinite(first[-1][key])


def test_step_reaches_only_the_discriminator_and_leaves_it_frozen_in_eval():
    real, _ = _toy_batch()
    maker = torch.nn.Parameter(torch.randn(8, *SHAPE))
    adversary = Adversary(_disc(), lr=1e-3)
    before = [p.clone() for p in adversary.discriminator.parameters()]
    adversary.discriminator_step(real, maker * 2)
    assert maker.grad is None
    disc = adversary.discriminator
    assert not disc.training and not any(p.requires_grad for p in disc.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(before, disc.parameters(), strict=True))


def test_generator_term_is_differentiable_in_the_student_only():
    real, fake = _toy_batch()
    adversary = Adversary(_disc())
    student = fake.clone().requires_grad_(True)
    per_sample = adversary.generator_loss(student, real)
    assert per_sample.shape == (8,)
    disc = adversary.discriminator
    with torch.no_grad():
        torch.testing.assert_close(per_sample, relativistic_loss(disc(fake), disc(real)))
    per_sample.mean().backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.parameters())


def test_non_finite_loss_leaves_the_discriminator_unchanged():
    real, fake = _toy_batch()
    adversary = Adversary(_disc(), lr=1e-3)
    before = [p.clone() for p in adversary.discriminator.parameters()]
    real[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="discriminator"):
        adversary.discriminator_step(real, fake)
    for p, q in zip(before, adversary.discriminator.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not any(p.requires_grad for p in adversary.discriminator.parameters())


def test_state_round_trip():
    real, fake = _toy_batch()
    a = Adversary(_disc(), lr=1e-3)
    a.discriminator_step(real, fake)
    b = Adversary(_disc(seed=5), lr=1e-3)
    b.load_state_dict(a.state_dict())
    assert a.discriminator_step(real, fake) == b.discriminator_step(real, fake)


def test_latent_sample_shapes_fit_the_discriminator():
    """GAS on latent models discriminates latents (spec §3.2): SD's 4×64×64 gets the paper's
    FFHQ-64 architecture with a 4-channel stem, LDM's VQ-f4 3×64×64 the 3-channel one."""
    from gas_solver.errors import ConfigError
    from gas_solver.training.discriminator_arch import image_shape

    for channels in (4, 3):
        arch = preset_arch("auto", (channels, 64, 64))
        assert (arch.in_channels, arch.resolution) == (channels, 64)
        assert arch.widths == (384, 768, 768, 768, 768)
    assert image_shape((4, 8, 8)) == (4, 8)
    with pytest.raises(ConfigError, match="square"):
        image_shape((4, 64, 32))

    # one step on 4-channel latents: reals, fakes and the penalties all have the latent shape
    disc = Discriminator(preset_arch("tiny", (4, 8, 8)), seed=0)
    adversary = Adversary(disc, lr=1e-3)
    real, fake = torch.randn(2, 6, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    stats = adversary.discriminator_step(real, fake)
    assert all(math.isfinite(value) for value in stats.values())
    student = fake.clone().requires_grad_(True)
    adversary.generator_loss(student, real).sum().backward()
    assert student.grad is not None and student.grad.shape == (6, 4, 8, 8)
