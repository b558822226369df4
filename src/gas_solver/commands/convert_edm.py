"""``gas-solver convert-edm``: an NVIDIA EDM network pickle → the safe folder ``edm.json`` +
``model.safetensors``, read without running the pickle's code."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import option, require
from ..models.edm_folder import save_edm_folder
from ..models.edm_pickle import RELEASE_URL, load_edm_pickle
from ..outputs import check_output


@dataclasses.dataclass
class ConvertEDMConfig:
    """``gas-solver convert-edm``: an EDM network pickle → ``edm.json`` + ``model.safetensors``."""

    pkl: str = option(
        "", f"an EDM network pickle, e.g. edm-cifar10-32x32-uncond-vp.pkl ({RELEASE_URL})"
    )
    out: str = option("", "output folder (edm.json + model.safetensors); load it with --model OUT")

    def validate(self) -> None:
        require(bool(self.pkl), "pkl", "the EDM .pkl file to convert is required")
        require(bool(self.out), "out", "an output folder is required")
        check_output(self.out, "folder")


def run_convert_edm(config: ConvertEDMConfig) -> str:
    """Convert ``config.pkl`` into the safe folder ``config.out``; returns a one-line summary."""
    net = load_edm_pickle(config.pkl)
    folder = save_edm_folder(net, config.out, converted_from=Path(config.pkl).name)
    count = sum(p.numel() for p in net.parameters())
    return (
        f"{folder} ({type(net).__name__}/{net.model_type}, {count / 1e6:.2f}M parameters, "
        f"{net.img_channels}x{net.img_resolution}x{net.img_resolution}); "
        f"load it with --model {folder}"
    )
