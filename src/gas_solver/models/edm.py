"""EDM checkpoints (NVlabs/edm network pickles) behind the model contract, read without running
any code from the file.

Model sources accepted by :func:`~gas_solver.models.loading.load_model`:

* ``path/to/edm-cifar10-32x32-uncond-vp.pkl``: an EDM network pickle as released at
  https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/ (downloaded by the user, never by us); the
  network is its ``ema`` entry.
* ``path/to/folder`` holding ``edm.json`` and ``model.safetensors``: the same network in a safe form,
  written by ``gas-solver convert-edm --pkl FILE --out FOLDER``
  (:func:`~gas_solver.models.edm_folder.convert_edm`).

Both give the same :meth:`EDMModel.identity` (the weights hash is over the tensors, not the file),
so a solver trained on one loads with the other.

**The VP wrapper** (Karras et al. 2022, eq. 4 with s = α; the authors' ``EDMModel``). The denoiser ``D(x̃; σ̃)`` works
in EDM's variables ``x̃ = x/α``, ``σ̃ = σ/α``. On the linear VP schedule
``log α(t) = −¼ β_d t² − ½ β_min t`` (β₀ = β_min, β₁ = β_min + β_d) the model's native output is

    x̂₀(x, t) = D(x / α(t); σ̃(t)),   σ̃(t) = √(exp(½ β_d t² + β_min t) − 1) = σ(t)/α(t),

declared as prediction type ``sample``; the contract turns it into ``ε̂ = (x − α x̂₀)/σ``.

The pickle reader is :mod:`.edm_pickle`, the safe folder format and ``convert-edm``
:mod:`.edm_folder`; the networks are :mod:`.edm_networks`.
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..schedules import LinearVPSchedule, NoiseSchedule
from .base import DiffusionModel
from .edm_folder import EDM_JSON, EDM_WEIGHTS, load_edm_folder
from .edm_pickle import load_edm_pickle

log = logging.getLogger(__name__)

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
        """``D(x/α(t); σ̃(t))`` with ``σ̃(t) = √(expm1(−2 log α(t)))``, i.e. the authors'
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
        """The paper's conditions for seeds (paper App. D.2): ``label = seed mod label_dim``; ``None``
        for unconditional models."""
        if not self.label_dim:
            return None
        return torch.as_tensor(seeds).long() % self.label_dim

    def network_modules(self) -> list[nn.Module]:
        return [self.net]

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

    GAS ``EDMModel.setup_net_params``, after EDM ``generate.py``'s ablation sampler:
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


def fingerprint(net: nn.Module) -> str:
    """SHA-256 (16 hex digits) of the state dict: names, dtypes, shapes and bytes, in order."""
    digest = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # no copy
    return digest.hexdigest()[:16]


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
