"""What the GAS trainer needs of a discriminator: :class:`GasDiscriminator`.

A discriminator is an ``nn.Module`` that gives one logit per sample, ``(B, *sample_shape) →
(B,)``, and that the trainer can build, save and restore without knowing what it is:

* **build**: ``cls.from_settings(settings, model)``, from the run's
  :class:`~gas_solver.training.settings.TrainSettings` (``seed``, ``disc_preset``, …) and the
  frozen :class:`~gas_solver.models.base.DiffusionModel` (its ``sample_shape``, or its
  :meth:`~gas_solver.models.base.DiffusionModel.feature_encoder`); a sample shape it cannot take is
  a one-line :class:`~gas_solver.errors.ConfigError`. :meth:`check_samples` may refuse earlier,
  before ``gas-solver train`` loads the model.
* **forward**: differentiable twice in its input (the R1/R2 penalties); the adversary keeps it in
  ``eval()`` and toggles ``requires_grad_`` on :meth:`parameters`, which are what its Adam trains
  (hold a frozen network outside the module tree so that it is neither trained nor saved).
* **checkpoints**: ``arch.to_dict()`` (a JSON-able description) and ``state_dict()`` are saved in
  every GAS ``checkpoint.pt`` (:meth:`to_checkpoint`). On ``--resume`` the trainer builds the
  discriminator from the settings again, refuses a saved architecture that differs from
  ``arch.to_dict()``, and loads the saved state. ``--disc-checkpoint FILE`` is given to
  :meth:`from_settings` (``settings.disc_checkpoint``) only when :attr:`takes_checkpoint` is true;
  otherwise it is refused before the discriminator is built.

Registered discriminators are listed by name in :mod:`.discriminators`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from torch import Tensor, nn

if TYPE_CHECKING:
    from ..models.base import DiffusionModel
    from .settings import TrainSettings


class Architecture(Protocol):
    """A discriminator's description, saved in checkpoints and compared on ``--resume``."""

    def to_dict(self) -> dict[str, Any]: ...


class GasDiscriminator(nn.Module, abc.ABC):
    """The contract of the module docstring; subclasses set :attr:`arch` in ``__init__``."""

    arch: Architecture
    takes_checkpoint: ClassVar[bool] = False
    """Whether :meth:`from_settings` reads ``settings.disc_checkpoint``."""

    @classmethod
    def check_samples(cls, sample_shape: Sequence[int]) -> None:
        """Refuse samples ``sample_shape`` it cannot take (``ConfigError``); any, by default."""

    @classmethod
    @abc.abstractmethod
    def from_settings(cls, settings: TrainSettings, model: DiffusionModel) -> GasDiscriminator:
        """The discriminator of a training run with ``settings`` on ``model``."""

    @abc.abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, *sample_shape)`` → logits ``(B,)``."""

    def to_checkpoint(self) -> dict[str, Any]:
        """``{"architecture": …, "state": …}``: what a trainer checkpoint stores."""
        return {"architecture": self.arch.to_dict(), "state": self.state_dict()}
