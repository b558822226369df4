"""The adversarial part of GAS: relativistic pairing loss with R1/R2 (arXiv 2510.17699 §3.2).

With ``softplus(u) = log(1 + e^u)`` and a discriminator ``D`` giving one logit per sample:

* discriminator loss, per sample: ``softplus(−(D(r) − D(f))) + γ/2·(R1 + R2)`` with
  ``R1 = ‖∇_r D(r)‖²`` on reals and ``R2 = ‖∇_f D(f)‖²`` on fakes (zero-centred penalties, summed
  over C, H, W; γ = 0.2, i.e. 0.1 each, as in the paper);
* generator (solver) term, per sample: ``softplus(−(D(S(z)) − D(T(z))))``, the student output
  against the teacher target **of the same noise** (the paper's code pairs them by noise).

One discriminator step per iteration comes **before** the generator term: reals are the batch's
teacher targets, fakes the solver's outputs on fresh noise, made without gradient. The generator
term then uses the updated discriminator with its parameters frozen. The discriminator has its own
Adam (lr 1e-5, betas (0.9, 0.999)), no gradient clipping, and stays in ``eval()`` mode.

Every term is a per-sample value averaged over the batch (R1 and R2 too: each sample's logit
depends on that sample alone), so under torchrun K processes with B/K samples each and their
gradients averaged (:func:`~gas_solver.distributed.average_gradients`) step like one process
with B samples.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..distributed import all_mean, average_gradients
from ..errors import GasSolverError
from .gas_discriminator import GasDiscriminator


class NonFiniteLossError(GasSolverError, FloatingPointError):
    """A training loss became NaN or infinite; nothing was updated with it."""


def relativistic_loss(first: Tensor, second: Tensor) -> Tensor:
    """``softplus(−(first − second))`` per sample: small when ``first`` out-scores ``second``.

    The discriminator's loss is ``relativistic_loss(D(real), D(fake))``, the solver's adversarial
    term ``relativistic_loss(D(fake), D(real))``.
    """
    return F.softplus(second - first)


def logits_and_penalty(disc: GasDiscriminator, x: Tensor) -> tuple[Tensor, Tensor]:
    """``D(x)`` and the zero-centred gradient penalty ``‖∇_x D(x)‖²`` per sample, both ``(B,)``.

    The penalty keeps its graph (double backward), so it can be minimised. Each sample's logit
    depends on that sample only, so the gradient of the summed logits is the per-sample gradient.
    """
    x = x.detach().to(next(disc.parameters()).dtype).requires_grad_(True)
    logits = disc(x)
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    return logits, grad.pow(2).flatten(1).sum(1)


class Adversary:
    """The discriminator, its optimizer, and the two GAS loss terms.

    Args:
        discriminator: any :class:`~gas_solver.training.gas_discriminator.GasDiscriminator`
            (R3GAN, model features, …), already on its device.
        lr: Adam learning rate of the discriminator (paper: 1e-5).
        r1_gamma: γ of ``γ/2·(R1 + R2)`` (paper: 0.2).
        betas: Adam betas (paper: (0.9, 0.999)).
    """

    def __init__(
        self,
        discriminator: GasDiscriminator,
        lr: float = 1e-5,
        r1_gamma: float = 0.2,
        betas: tuple[float, float] = (0.9, 0.999),
    ) -> None:
        self.discriminator = discriminator.eval().requires_grad_(False)
        self.r1_gamma = r1_gamma
        self.optimizer = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas)

    def discriminator_loss(self, real: Tensor, fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-sample ``softplus(−(D(r) − D(f))) + γ/2·(R1 + R2)`` ``(B,)`` and its parts."""
        real_logits, r1 = logits_and_penalty(self.discriminator, real)
        fake_logits, r2 = logits_and_penalty(self.discriminator, fake)
        pairing = relativistic_loss(real_logits, fake_logits)
        loss = pairing + 0.5 * self.r1_gamma * (r1 + r2)
        parts = {"pairing": pairing, "r1": r1, "r2": r2, "real": real_logits, "fake": fake_logits}
        return loss, parts

    def discriminator_step(self, real: Tensor, fake: Tensor) -> dict[str, float]:
        """One Adam step of the discriminator on reals ``(B, C, H, W)`` and fakes (no gradient
        reaches whatever made them). Returns the statistics that are logged.

        Raises:
            NonFiniteLossError: the loss is NaN or infinite; the discriminator is left unchanged.
        """
        disc = self.discriminator
        disc.requires_grad_(True)
        try:
            per_sample, parts = self.discriminator_loss(real.detach(), fake.detach())
            loss = per_sample.mean()
            if not torch.isfinite(all_mean(loss)):  # torchrun: every rank stops, or none
                raise NonFiniteLossError("non-finite discriminator loss")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(disc.parameters())  # torchrun: the global batch's gradient
            self.optimizer.step()
        finally:
            disc.requires_grad_(False)
        real_logits, fake_logits = parts["real"].detach(), parts["fake"].detach()
        return {
            "disc_loss": loss.item(),
            "disc_pairing": parts["pairing"].mean().item(),
            "r1": parts["r1"].mean().item(),
            "r2": parts["r2"].mean().item(),
            "logits_real": real_logits.mean().item(),
            "logits_fake": fake_logits.mean().item(),
            # sign statistics: mean sign of each logit, and of the relativistic difference
            "sign_real": real_logits.sign().mean().item(),
            "sign_fake": fake_logits.sign().mean().item(),
            "sign_real_minus_fake": (real_logits - fake_logits).sign().mean().item(),
        }

    def generator_loss(self, student: Tensor, target: Tensor) -> Tensor:
        """Per-sample ``softplus(−(D(student) − D(target)))`` ``(B,)``, differentiable in
        ``student``; the discriminator's parameters stay frozen."""
        disc = self.discriminator
        dtype = next(disc.parameters()).dtype
        with torch.no_grad():
            real_logits = disc(target.to(dtype))
        return relativistic_loss(disc(student.to(dtype)), real_logits)

    # -- persistence --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "discriminator": self.discriminator.to_checkpoint(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.discriminator.load_state_dict(state["discriminator"]["state"])
        self.optimizer.load_state_dict(state["optimizer"])
