"""The GAS discriminators by name: the one list ``--disc-preset`` chooses from.

``train``, ``demo``, ``sweep``, the benchmarks and the presets in ``configs/`` take their choices
from :data:`DISCRIMINATORS`; the trainer builds the chosen one with :func:`make_discriminator`.
Each entry is a :class:`~.gas_discriminator.GasDiscriminator` subclass and a one-line help. A new
discriminator is one module with such a subclass and one entry here (or, from outside the
package, one :func:`register_discriminator` call); see ``docs/ARCHITECTURE.md``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .discriminator import Discriminator
from .discriminator_arch import PRESETS
from .feature_discriminator import FEATURE_PRESET, FeatureDiscriminator
from .gas_discriminator import GasDiscriminator

if TYPE_CHECKING:
    from ..models.base import DiffusionModel
    from .settings import TrainSettings


@dataclasses.dataclass(frozen=True)
class DiscriminatorEntry:
    """A registered discriminator: its class and its one-line help."""

    cls: type[GasDiscriminator]
    help: str


DISCRIMINATORS: dict[str, DiscriminatorEntry] = {
    "auto": DiscriminatorEntry(
        Discriminator, "R3GAN, the paper's: r3gan-32 at 32x32, r3gan-64 at 64x64, else small"
    ),
    **{name: DiscriminatorEntry(Discriminator, about) for name, (_, _, about) in PRESETS.items()},
    FEATURE_PRESET: DiscriminatorEntry(
        FeatureDiscriminator, "small heads on the frozen model's own encoder (LADD-style)"
    ),
}
"""``--disc-preset`` name → discriminator. The R3GAN names share one class, which reads its
architecture from the name (``settings.disc_preset``)."""

CHOICES = DISCRIMINATORS.keys()
"""The registered names, as the flags' and YAML keys' choices (a live view: later registrations
count)."""


def discriminator_help() -> str:
    """``name = help`` of every registered discriminator, for ``--help`` texts."""
    return "; ".join(f"{name} = {entry.help}" for name, entry in DISCRIMINATORS.items())


def register_discriminator(name: str, cls: type[GasDiscriminator], help: str) -> None:  # noqa: A002
    """Add ``cls`` under ``name`` (a new name) with its one-line ``help``."""
    if name in DISCRIMINATORS:
        raise ConfigError(f"disc_preset: the name {name!r} is taken; choose another")
    if not (isinstance(cls, type) and issubclass(cls, GasDiscriminator)):
        raise ConfigError(f"disc_preset {name!r}: {cls!r} is not a GasDiscriminator subclass")
    DISCRIMINATORS[name] = DiscriminatorEntry(cls, help)


def discriminator_class(name: str) -> type[GasDiscriminator]:
    """The class registered as ``name``."""
    if name not in DISCRIMINATORS:
        raise ConfigError(f"disc_preset: one of {list(CHOICES)}, got {name!r}")
    return DISCRIMINATORS[name].cls


def make_discriminator(settings: TrainSettings, model: DiffusionModel) -> GasDiscriminator:
    """The discriminator ``settings.disc_preset`` of a GAS run on ``model``;
    ``settings.disc_checkpoint`` is refused where the discriminator does not read it."""
    cls = discriminator_class(settings.disc_preset)
    if settings.disc_checkpoint and not cls.takes_checkpoint:
        raise ConfigError(f"disc_checkpoint: not used with disc_preset {settings.disc_preset!r}")
    return cls.from_settings(settings, model)
