"""diffusers models behind the model contract.

A local folder in the diffusers pipeline layout (``DDPMPipeline.save_pretrained``)::

    folder/
      unet/config.json, unet/diffusion_pytorch_model.safetensors
      scheduler/scheduler_config.json

becomes a :class:`DiffusersUNetModel`: the DDPM schedule is the scheduler's ``alphas_cumprod``
(:class:`~gas_solver.schedules.DiscreteVPSchedule`, t_i = (i+1)/N), the network is queried at the
continuous timestep ``N·t − 1`` (integer on the training grid), and its ``prediction_type``
(``epsilon``, ``v_prediction`` or ``sample``) is converted by the contract. Nothing is downloaded:
only local folders are accepted.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from torch import Tensor

from ..errors import ConfigError, MissingAssetError
from ..schedules import DiscreteVPSchedule
from .base import DiffusionModel


class DiffusersUNetModel(DiffusionModel):
    """An unconditional diffusers ``UNet2DModel`` with its DDPM scheduler config."""

    def __init__(self, unet: Any, scheduler: Any, fingerprint: str = "") -> None:
        config = unet.config
        size = config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        super().__init__(
            DiscreteVPSchedule(scheduler.alphas_cumprod),
            (config.in_channels, *size),
            scheduler.config.prediction_type,
        )
        self.unet = unet.eval().requires_grad_(False)
        self.fingerprint = fingerprint

    def network_output(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self.unet(x, self.schedule.timestep(t)).sample

    def identity(self) -> dict[str, Any]:
        return {
            **super().identity(),
            "network": type(self.unet).__name__,
            "weights": self.fingerprint,
        }


def load_diffusers_unet(folder: str | Path) -> DiffusersUNetModel:
    """Load an unconditional UNet pipeline folder (see the module docstring)."""
    folder = Path(folder)
    unet_dir, scheduler_dir = folder / "unet", folder / "scheduler"
    for needed in (unet_dir / "config.json", scheduler_dir / "scheduler_config.json"):
        if not needed.is_file():
            raise MissingAssetError(
                f"{needed} not found: a diffusers model folder needs unet/ and scheduler/ "
                "subfolders, as written by DDPMPipeline.save_pretrained(folder)"
            )
    try:
        from diffusers import DDPMScheduler, UNet2DModel
    except ImportError as err:
        raise MissingAssetError(
            "loading diffusers models needs the diffusers package: pip install diffusers"
        ) from err
    unet_config = json.loads((unet_dir / "config.json").read_text())
    if unet_config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ConfigError(
            f"{unet_dir}: only unconditional UNet2DModel folders are supported so far, "
            f"got {unet_config.get('_class_name')}"
        )
    unet = UNet2DModel.from_pretrained(unet_dir, low_cpu_mem_usage=False)  # no accelerate needed
    scheduler = DDPMScheduler.from_pretrained(scheduler_dir)
    return DiffusersUNetModel(unet, scheduler, _fingerprint(unet_dir))


def _fingerprint(unet_dir: Path) -> str:
    """A cheap identity of the weights: size plus SHA-256 of the first and last MiB of each file."""
    digest = hashlib.sha256()
    for path in sorted(unet_dir.glob("diffusion_pytorch_model*")):
        size = path.stat().st_size
        with open(path, "rb") as f:
            digest.update(f"{path.name}:{size}".encode())
            digest.update(f.read(1 << 20))
            f.seek(max(size - (1 << 20), 0))
            digest.update(f.read(1 << 20))
    return digest.hexdigest()[:16]
