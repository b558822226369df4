"""EDM checkpoints (NVlabs/edm network pickles) behind the model contract, read without running
any code from the file.

Model sources accepted by :func:`~gas_solver.models.loading.load_model`:

* ``path/to/edm-cifar10-32x32-uncond-vp.pkl``: an EDM network pickle as released at
  https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/ (downloaded by the user, never by us); the
  network is its ``ema`` entry.
* ``path/to/folder`` holding ``edm.json`` and ``model.safetensors``: the same network in a safe form,
  written by ``gas-solver convert-edm --pkl FILE --out FOLDER`` (:func:`convert_edm`).

Both give the same :meth:`EDMModel.identity` (the weights hash is over the tensors, not the file),
so a solver trained on one loads with the other.

**Reading a pickle safely.** EDM pickles a network with ``torch_utils.persistence``: each network
object becomes the call ``_reconstruct_persistent_obj(meta)``, where ``meta`` holds the Python
source of EDM's ``training/networks.py``, the class name and the object's ``__dict__``; a plain
``pickle.load`` would ``exec`` that source. The restricted unpickler of :mod:`gas_solver.safe_pickle`
resolves only plain data, tensors and :data:`EDM_GLOBALS`: the persistence hook becomes a function
that keeps ``class_name`` and ``state`` in a :class:`Captured` record and drops the source unread;
torch containers (``ModuleDict``, …) become records too. Any other global (``os.system``,
``builtins.eval``, …) stops the load with a :class:`ConfigError` naming it. The network is then built from this package's classes (:mod:`.edm_networks`) with the constructor
arguments EDM recorded in the state (``_init_args``, ``_init_kwargs``), and the captured tensors
are loaded into it with ``strict=True``.

**The VP wrapper** (spec §1; Karras et al. 2022, eq. 4 with s = α). The denoiser ``D(x̃; σ̃)`` works
in EDM's variables ``x̃ = x/α``, ``σ̃ = σ/α``. On the linear VP schedule
``log α(t) = −¼ β_d t² − ½ β_min t`` (β₀ = β_min, β₁ = β_min + β_d) the model's native output is

    x̂₀(x, t) = D(x / α(t); σ̃(t)),   σ̃(t) = √(exp(½ β_d t² + β_min t) − 1) = σ(t)/α(t),

declared as prediction type ``sample``; the contract turns it into ``ε̂ = (x − α x̂₀)/σ``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..config import option, require
from ..errors import CheckpointMismatchError, ConfigError, MissingAssetError
from ..runtime import atomic_write, write_json
from ..safe_pickle import Captured, capture_persistent, captured_state_dict, read_pickle
from ..schedules import LinearVPSchedule, NoiseSchedule
from ..version import __version__
from .base import DiffusionModel
from .edm_networks import PRECONDS, Precond

log = logging.getLogger(__name__)

EDM_JSON = "edm.json"
EDM_WEIGHTS = "model.safetensors"
FOLDER_FORMAT = "gas-solver-edm"
FOLDER_VERSION = 1
RELEASE_URL = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/"
DEFAULT_VP = (0.1, 19.9)  # (β_min, β_d) of EDM's VP checkpoints and of the GAS paper's schedule


# -- the model --------------------------------------------------------------------------------------
class EDMModel(DiffusionModel):
    """An EDM denoiser ``D(x̃; σ̃)`` as a model on the linear VP schedule (see the module docstring).

    Args:
        net: the denoiser, called as ``net(x̃: (B, C, H, W), σ̃: (B,), class_labels=(B, L) | None)``
            and returning x₀; usually a :class:`~gas_solver.models.edm_networks.Precond`.
        sample_shape: ``(C, H, W)``.
        label_dim: number of classes of a class-conditional net (0: unconditional).
        schedule: the VP schedule; by default :func:`vp_schedule_for` ``(net)``.
        fingerprint: hash of the weights, part of :meth:`identity`.
        network: a name of the architecture for :meth:`identity`, e.g. ``VPPrecond/SongUNet``.

    Conditions: class labels as a ``(B,)`` int64 tensor (one-hot encoded here), a ``(B, L)`` float
    tensor used as is, or ``{"class_labels": …}``; :meth:`default_cond` gives ``seed mod L``.
    """

    def __init__(
        self,
        net: nn.Module,
        sample_shape: tuple[int, ...],
        label_dim: int = 0,
        schedule: NoiseSchedule | None = None,
        fingerprint: str = "",
        network: str = "",
    ) -> None:
        super().__init__(schedule or vp_schedule_for(net), sample_shape, "sample")
        self.net = net.eval().requires_grad_(False)
        self.label_dim = int(label_dim)
        self.num_classes = self.label_dim
        self.fingerprint = fingerprint
        self.network = network or type(net).__name__

    def network_output(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """``D(x/α(t); σ̃(t))`` with ``σ̃(t) = √(expm1(−2 log α(t)))``, i.e. spec §1's
        ``√(exp(½β_d t² + β_min t) − 1)``, computed without cancellation at small t."""
        log_alpha = self.schedule.log_alpha(t)
        edm_sigma = torch.sqrt(torch.expm1(-2.0 * log_alpha))
        scaled = x * torch.exp(-log_alpha).view((-1,) + (1,) * (x.dim() - 1))
        dtype = self._dtype(x)
        labels = self._class_labels(cond, x.shape[0], x.device)
        labels = None if labels is None else labels.to(dtype)
        out = self.net(scaled.to(dtype), edm_sigma.to(dtype), class_labels=labels)
        return out.to(x.dtype)

    def default_cond(self, seeds: Tensor) -> Tensor | None:
        """The paper's conditions for seeds (spec §3.4): ``label = seed mod label_dim``; ``None``
        for unconditional models."""
        if not self.label_dim:
            return None
        return torch.as_tensor(seeds).long() % self.label_dim

    def identity(self) -> dict[str, Any]:
        identity = {**super().identity(), "network": self.network, "weights": self.fingerprint}
        if self.label_dim:
            identity.update(conditioning="class", label_dim=self.label_dim)
        return identity

    def _dtype(self, x: Tensor) -> torch.dtype:
        for tensor in self.net.parameters():
            if tensor.is_floating_point():
                return tensor.dtype
        return x.dtype

    def _class_labels(self, cond: Any, batch: int, device: torch.device) -> Tensor | None:
        """One-hot ``(B, label_dim)`` labels of a condition (``None`` for unconditional models)."""
        if not self.label_dim:
            if cond is not None:
                raise ConfigError("this EDM model is unconditional; pass cond=None")
            return None
        if isinstance(cond, dict):
            cond = cond.get("class_labels")
        if cond is None:
            raise ConfigError(
                f"this class-conditional EDM model ({self.label_dim} classes) needs cond: "
                "class labels, a (B,) int64 tensor"
            )
        cond = torch.as_tensor(cond, device=device)
        if cond.dim() == 1 and not cond.is_floating_point():
            if cond.numel() and (int(cond.min()) < 0 or int(cond.max()) >= self.label_dim):
                raise ConfigError(f"class labels must be in [0, {self.label_dim})")
            cond = torch.nn.functional.one_hot(cond.long(), self.label_dim)
        if cond.dim() != 2 or cond.shape != (batch, self.label_dim):
            raise ConfigError(
                f"cond has shape {tuple(cond.shape)}; expected ({batch},) labels or "
                f"({batch}, {self.label_dim}) one-hot rows"
            )
        return cond.float()


def vp_betas(
    sigma_min: float = 0.0, sigma_max: float = math.inf, t_eps: float = 1e-3
) -> tuple[float, float]:
    """``(β_min, β_d)`` of the linear VP schedule fitted to a denoiser's noise range.

    GAS ``EDMModel.setup_net_params`` (spec §1), after EDM ``generate.py``'s ablation sampler:
    with the default VP σ(t) = √(exp(½·19.9 t² + 0.1 t) − 1), take
    ``σ_lo = max(σ(t_eps), sigma_min)`` and ``σ_hi = min(σ(1), sigma_max)``, then solve
    ``σ(t_eps) = σ_lo``, ``σ(1) = σ_hi`` for the line: ``β_d = 2(log(σ_lo²+1)/t_eps −
    log(σ_hi²+1))/(t_eps − 1)``, ``β_min = log(σ_hi²+1) − ½β_d``. When the denoiser covers the
    default range this is the default (0.1, 19.9) itself, returned exactly.
    """
    beta_min, beta_d = DEFAULT_VP

    def sigma(t: float) -> float:
        return math.sqrt(math.expm1(0.5 * beta_d * t**2 + beta_min * t))

    if sigma_min <= sigma(t_eps) and sigma_max >= sigma(1.0):
        return beta_min, beta_d
    lo, hi = max(sigma(t_eps), sigma_min), min(sigma(1.0), sigma_max)
    fitted_d = 2 * (math.log1p(lo**2) / t_eps - math.log1p(hi**2)) / (t_eps - 1)
    return math.log1p(hi**2) - 0.5 * fitted_d, fitted_d


def vp_schedule_for(net: nn.Module, t_eps: float = 1e-3) -> LinearVPSchedule:
    """The linear VP schedule of a denoiser: a VP one's own ``beta_min``/``beta_d`` (so ``t`` is
    exactly the time the network was trained at); otherwise :func:`vp_betas` of its
    ``sigma_min``/``sigma_max``. EDM's VP checkpoints give β₀ = 0.1, β₁ = 20 either way."""
    beta_min, beta_d = getattr(net, "beta_min", None), getattr(net, "beta_d", None)
    if beta_min is None or beta_d is None:
        sigma_min = float(getattr(net, "sigma_min", 0.0) or 0.0)
        sigma_max = float(getattr(net, "sigma_max", math.inf) or math.inf)
        beta_min, beta_d = vp_betas(sigma_min, sigma_max, t_eps)
    return LinearVPSchedule(float(beta_min), float(beta_min) + float(beta_d), t_eps=t_eps)


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


def fingerprint(net: nn.Module) -> str:
    """SHA-256 (16 hex digits) of the state dict: names, dtypes, shapes and bytes, in order."""
    digest = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # no copy
    return digest.hexdigest()[:16]


def load_edm_pickle(path: str | Path) -> Precond:
    """The ``ema`` network of an EDM pickle as our :class:`Precond`, nothing from the file run."""
    source = str(path)
    record = _network_record(read_edm_pickle(path), source)
    name, kwargs = precond_kwargs(record, source)
    return build_precond(name, kwargs, captured_state_dict(record), source)


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


# -- entry points -----------------------------------------------------------------------------------
def is_edm_source(source: str) -> bool:
    """An ``.pkl`` path (existing or not: a missing one gets a helpful error), or a folder with
    ``edm.json`` (or with ``model.safetensors`` and no diffusers ``unet/``)."""
    path = Path(source)
    if path.is_dir():
        return (path / EDM_JSON).is_file() or (
            (path / EDM_WEIGHTS).is_file() and not (path / "unet").is_dir()
        )
    return path.suffix == ".pkl"


def load_edm_model(source: str | Path) -> EDMModel:
    """An :class:`EDMModel` from an EDM pickle or a converted folder (see the module docstring)."""
    path = Path(source)
    net = load_edm_folder(path) if path.is_dir() else load_edm_pickle(path)
    network = f"{type(net).__name__}/{net.model_type}"
    shape = (net.img_channels, net.img_resolution, net.img_resolution)
    log.info("EDM model %s: %s, %s", path, network, "x".join(map(str, shape)))
    return EDMModel(net, shape, net.label_dim, fingerprint=fingerprint(net), network=network)


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
        require(not Path(self.out).is_file(), "out", f"{self.out} is a file, not a folder")


def convert_edm(config: ConvertEDMConfig) -> str:
    """Convert ``config.pkl`` into the safe folder ``config.out``; returns a one-line summary."""
    net = load_edm_pickle(config.pkl)
    folder = save_edm_folder(net, config.out, converted_from=Path(config.pkl).name)
    count = sum(p.numel() for p in net.parameters())
    return (
        f"{folder} ({type(net).__name__}/{net.model_type}, {count / 1e6:.2f}M parameters, "
        f"{net.img_channels}x{net.img_resolution}x{net.img_resolution}); "
        f"load it with --model {folder}"
    )
