"""The safe folder form of an EDM network: ``edm.json`` (how to rebuild it) + ``model.safetensors``
(its state dict), written from a network pickle (``gas-solver convert-edm``) and loaded without
any pickle at all.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import ConfigError, MissingAssetError
from ..outputs import atomic_write, write_json
from ..version import __version__
from .edm_networks import PRECONDS, Precond
from .edm_pickle import RELEASE_URL, build_precond

EDM_JSON = "edm.json"
EDM_WEIGHTS = "model.safetensors"
FOLDER_FORMAT = "gas-solver-edm"
FOLDER_VERSION = 1


# -- the safe folder --------------------------------------------------------------------------------
def save_edm_folder(net: Precond, folder: str | Path, converted_from: str = "") -> Path:
    """Write ``model.safetensors`` (the state dict) then ``edm.json`` (how to rebuild it)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    atomic_write(folder / EDM_WEIGHTS, lambda tmp: save_file(tensors, str(tmp), {"format": "pt"}))
    write_json(
        folder / EDM_JSON,
        {
            "format": FOLDER_FORMAT,
            "version": FOLDER_VERSION,
            "precond": type(net).__name__,
            "network": net.model_type,
            "init_kwargs": net.init_kwargs,
            "precond_params": {name: getattr(net, name) for name in net.param_names},
            "converted_from": converted_from,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "gas_solver_version": __version__,
        },
    )
    return folder


def load_edm_folder(folder: str | Path) -> Precond:
    """Rebuild the network of an ``edm.json`` + ``model.safetensors`` folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    meta_path, weights_path = folder / EDM_JSON, folder / EDM_WEIGHTS
    for needed in (meta_path, weights_path):
        if not needed.is_file():
            raise MissingAssetError(
                f"{needed} not found: an EDM model folder holds {EDM_JSON} and {EDM_WEIGHTS}, "
                "as written by `gas-solver convert-edm --pkl FILE.pkl --out FOLDER` from an EDM "
                f"network pickle ({RELEASE_URL})"
            )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{meta_path}: not valid JSON ({err})") from err
    if meta.get("format") != FOLDER_FORMAT or meta.get("version") != FOLDER_VERSION:
        raise ConfigError(
            f"{meta_path}: format {meta.get('format')!r} version {meta.get('version')!r}; "
            f"expected {FOLDER_FORMAT!r} version {FOLDER_VERSION}"
        )
    name = meta.get("precond")
    if name not in PRECONDS:
        raise ConfigError(f"{meta_path}: precond must be one of {list(PRECONDS)}, got {name!r}")
    kwargs = {**meta.get("init_kwargs", {}), **meta.get("precond_params", {})}
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"{weights_path}: not a readable safetensors file ({err})") from err
    return build_precond(name, kwargs, tensors, str(folder))
