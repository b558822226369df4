"""Reading NVlabs EDM network pickles without running any code from them.

EDM pickles a network with ``torch_utils.persistence``: each network
object becomes the call ``_reconstruct_persistent_obj(meta)``, where ``meta`` holds the Python
source of EDM's ``training/networks.py``, the class name and the object's ``__dict__``; a plain
``pickle.load`` would ``exec`` that source. The restricted unpickler of :mod:`gas_solver.safe_pickle`
resolves only plain data, tensors and :data:`EDM_GLOBALS`: the persistence hook becomes a function
that keeps ``class_name`` and ``state`` in a :class:`Captured` record and drops the source unread;
torch containers (``ModuleDict``, …) become records too. Any other global (``os.system``,
``builtins.eval``, …) stops the load with a :class:`ConfigError` naming it. The network is then
built from this package's classes (:mod:`.edm_networks`) with the constructor arguments EDM recorded in the state (``_init_args``, ``_init_kwargs``), and the captured tensors
are loaded into it with ``strict=True``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import CheckpointMismatchError, ConfigError
from ..safe_pickle import Captured, capture_persistent, captured_state_dict, read_pickle
from .edm_networks import PRECONDS, Precond

RELEASE_URL = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/"


# -- reading the pickle ---------------------------------------------------------------------------
EDM_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): capture_persistent,
}
"""What EDM pickles need beyond :data:`~gas_solver.safe_pickle.PLAIN_GLOBALS`: the persistence
hook, whose embedded source is dropped unread."""


def read_edm_pickle(path: str | Path) -> Any:
    """The contents of an EDM pickle, with networks as :class:`Captured` records."""
    return read_pickle(
        path,
        extra=EDM_GLOBALS,
        kind="EDM network pickle",
        missing="EDM checkpoints are the network pickles of the NVlabs EDM release (e.g. "
        f"edm-cifar10-32x32-uncond-vp.pkl) at {RELEASE_URL}; download one yourself and pass its "
        "path (nothing is downloaded here)",
    )


# -- rebuilding the network -------------------------------------------------------------------------
def _plain(value: Any, where: str) -> Any:
    """JSON-able copy of recorded constructor arguments (numpy scalars → numbers, tuples → lists)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | list):
        return [_plain(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, where) for k, v in value.items()}
    raise ConfigError(f"{where}: a constructor argument of type {type(value).__name__}")


def _network_record(data: Any, source: str) -> Captured:
    if isinstance(data, dict):
        if "ema" not in data:
            raise ConfigError(
                f"{source}: no 'ema' entry (keys: {', '.join(map(str, data))}); "
                "EDM network pickles keep the network under 'ema'"
            )
        data = data["ema"]
    if not (isinstance(data, Captured) and data.persistent):
        raise ConfigError(f"{source}: the network is not an EDM persistent object")
    return data


def precond_kwargs(record: Captured, source: str) -> tuple[str, dict[str, Any]]:
    """``(class name, constructor kwargs)`` of a captured EDM preconditioning object.

    The kwargs are those EDM recorded (``_init_args``/``_init_kwargs``, bound to the signature),
    with the preconditioning parameters taken from the object's state where present.
    """
    name = record.class_name.rsplit(".", 1)[-1]
    if name not in PRECONDS:
        raise ConfigError(
            f"{source}: the network is a {name}; supported: {', '.join(PRECONDS)} "
            "(every one an x0-predictor D(x; sigma))"
        )
    cls = PRECONDS[name]
    state = record.state
    args, kwargs = state.get("_init_args"), state.get("_init_kwargs")
    if kwargs is None:
        raise ConfigError(
            f"{source}: the {name} object records no constructor arguments (_init_kwargs)"
        )
    args, kwargs = _plain(list(args or ()), source), _plain(dict(kwargs), source)
    try:
        bound = inspect.signature(cls).bind(*args, **kwargs).arguments
    except TypeError as err:
        raise ConfigError(f"{source}: {name} arguments {sorted(kwargs)} do not fit: {err}") from err
    merged = {
        **{k: v for k, v in bound.items() if k != "model_kwargs"},
        **bound.get("model_kwargs", {}),
    }
    for param in cls.param_names:
        if param in state:
            merged[param] = _plain(state[param], source)
    return name, merged


def build_precond(name: str, kwargs: dict[str, Any], tensors: dict[str, Tensor], source: str):
    """Our :class:`Precond` ``name(**kwargs)`` holding ``tensors`` (loaded with ``strict=True``)."""
    try:
        with torch.device("meta"):  # no random init, no second copy of the weights
            net = PRECONDS[name](**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: cannot build {name}({sorted(kwargs)}): {err}") from err
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    try:
        net.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as err:
        raise CheckpointMismatchError(
            f"{source}: the weights do not fit {name}/{kwargs.get('model_type')}: {err}"
        ) from err
    return net.eval().requires_grad_(False)


def load_edm_pickle(path: str | Path) -> Precond:
    """The ``ema`` network of an EDM pickle as our :class:`Precond`, nothing from the file run."""
    source = str(path)
    record = _network_record(read_edm_pickle(path), source)
    name, kwargs = precond_kwargs(record, source)
    return build_precond(name, kwargs, captured_state_dict(record), source)
