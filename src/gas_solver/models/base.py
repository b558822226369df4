"""The one model contract every solver uses.

A :class:`DiffusionModel` wraps a frozen network together with its noise schedule. Solvers see
only this contract, in continuous time ``t`` (see :mod:`gas_solver.schedules`):

* ``noise_prediction(x, t, cond)`` → ε̂(x, t),
* ``data_prediction(x, t, cond)`` → x̂₀(x, t) = (x − σ(t) ε̂) / α(t),

whatever the network natively predicts (ε, x₀, v or a flow velocity). :func:`convert_prediction`
is the single place where prediction types are converted. Every network call increments
:attr:`DiffusionModel.nfe`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..schedules import NoiseSchedule

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow_prediction")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
"""What ``--dtype`` offers for the network's calls (:meth:`DiffusionModel.set_precision`)."""
TARGETS = ("epsilon", "sample")


def convert_prediction(
    output: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor, source: str, target: str
) -> Tensor:
    """Convert a network output to ε or x₀ at one noise level.

    With ``x = α x₀ + σ ε``: ``ε = (x − α x₀)/σ`` and ``x₀ = (x − σ ε)/α``. Velocities:

    * ``v_prediction`` (Salimans & Ho 2022, VP models, α² + σ² = 1): ``v = α ε − σ x₀``, so
      ``ε = σ x + α v``;
    * ``flow_prediction`` (rectified flow, Liu et al. 2022; diffusers' name): ``v = ε − x₀``, so
      ``x = (α + σ) x₀ + σ v`` and ``x₀ = (x − σ v)/(α + σ)``, ``ε = (x + α v)/(α + σ)``
      (``α + σ = 1`` on a flow schedule: ``x₀ = x − σ v``, finite even at ``α = 0``).

    Args:
        output: the prediction, shape ``(B, ...)``.
        x: the noisy input, shape ``(B, ...)``.
        alpha, sigma: shape ``(B, 1, ..., 1)`` (broadcastable to ``x``).
        source: one of ``PREDICTION_TYPES``; target: ``epsilon`` | ``sample``.
    """
    if source not in PREDICTION_TYPES:
        raise ConfigError(f"prediction type must be one of {PREDICTION_TYPES}, got {source!r}")
    if target not in TARGETS:
        raise ConfigError(f"conversion target must be one of {TARGETS}, got {target!r}")
    if source == target:
        return output
    if source == "flow_prediction":
        if target == "sample":
            return (x - sigma * output) / (alpha + sigma)
        return (x + alpha * output) / (alpha + sigma)
    if source == "v_prediction":
        eps = sigma * x + alpha * output
    elif source == "sample":
        eps = (x - alpha * output) / sigma
    else:
        eps = output
    return eps if target == "epsilon" else (x - sigma * eps) / alpha


class DiffusionModel(nn.Module):
    """A frozen diffusion model seen through continuous time.

    Subclasses implement :meth:`network_output`, returning the network's native prediction
    (``self.prediction_type``) for a batch at per-sample times ``t: (B,)``.

    Attributes:
        schedule: the model's :class:`~gas_solver.schedules.NoiseSchedule`.
        sample_shape: shape of one sample (without batch), e.g. ``(3, 32, 32)``.
        prediction_type: one of ``PREDICTION_TYPES``.
        nfe: number of network evaluations since construction or :meth:`reset_nfe`.
        source: the name or path the model was loaded from (``None`` if built in code); teacher
            sets and checkpoints record it so later commands load the same model.
        conditioning: what the network is conditioned on: ``none`` (the default), ``class``,
            ``text`` or ``class+text``; conditional adapters set it.
        guidance_scale: the classifier-free guidance scale the model applies itself (``None``:
            none built in, the default); exports record it for conditional models.

    The rest of the contract has defaults that adapters override: :attr:`is_latent` and
    :meth:`decode` (latent models), :meth:`default_cond` (the conditions of seeds),
    :attr:`takes_prompts` and :meth:`prompt_cond_fn` (text models), :meth:`feature_encoder`
    (features of the network's encoder), :meth:`mismatch_hint` (what to do when a solver was
    made for another model), :attr:`teacher_t_eps` (where a teacher stops), :attr:`device`.
    """

    source: str | None = None
    conditioning: str = "none"
    guidance_scale: float | None = None
    compute_dtype: str = "float32"
    """The dtype the network runs in (:meth:`set_precision`); the solvers' arithmetic, their
    times and weights stay in the samples' dtype (float32 or float64)."""

    def __init__(
        self,
        schedule: NoiseSchedule,
        sample_shape: tuple[int, ...],
        prediction_type: str = "epsilon",
    ) -> None:
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ConfigError(
                f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}"
            )
        self.schedule = schedule
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.prediction_type = prediction_type
        self.nfe = 0

    # -- to implement -------------------------------------------------------------------------
    def network_output(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """The network's native prediction for ``x: (B, *sample_shape)`` at times ``t: (B,)``."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """JSON-able description used to match checkpoints and teacher sets to this model."""
        return {
            "class": type(self).__name__,
            "schedule": self.schedule.to_dict(),
            "sample_shape": list(self.sample_shape),
            "prediction_type": self.prediction_type,
        }

    # -- the contract ---------------------------------------------------------------------------
    def noise_prediction(self, x: Tensor, t: Tensor | float, cond: Any = None) -> Tensor:
        """ε̂(x, t). ``t`` is a scalar or a ``(B,)`` tensor of continuous times."""
        return self._predict(x, t, cond, "epsilon")

    def data_prediction(self, x: Tensor, t: Tensor | float, cond: Any = None) -> Tensor:
        """x̂₀(x, t) = (x − σ(t) ε̂(x, t)) / α(t)."""
        return self._predict(x, t, cond, "sample")

    def reset_nfe(self) -> None:
        self.nfe = 0

    # -- defaults adapters override ---------------------------------------------------------------
    @property
    def is_latent(self) -> bool:
        """Whether samples are latents that :meth:`decode` turns into images (LDM, SD)."""
        return False

    def decode(self, samples: Tensor) -> Tensor:
        """Images in [−1, 1] of samples: the identity for pixel models."""
        return samples

    def default_cond(self, seeds: Tensor) -> Any:
        """The condition of each seed (class models: ``seed mod classes``); ``None`` here."""
        return None

    @property
    def takes_prompts(self) -> bool:
        """Whether :meth:`prompt_cond_fn` can turn text prompts into conditions."""
        return False

    def prompt_cond_fn(self, prompts: list[str]) -> Callable[[Tensor], Any]:
        """``cond_fn(seeds)``: the condition of ``prompts[seed mod len(prompts)]``."""
        raise ConfigError(
            f"prompts: the model {self.source or type(self).__name__} takes no text prompts; "
            "leave --prompts out"
        )

    def feature_encoder(self) -> nn.Module | None:
        """The frozen network's encoder as features, or ``None`` (the default: no features).

        A module ``encoder(x, timestep) → [h_1, …, h_L]``: feature maps ``(B, C_l, H_l, W_l)`` of
        samples ``x: (B, *sample_shape)`` at the network timestep ``timestep: (1,)``
        (``schedule.timestep(t)``), differentiable twice in ``x``, with ``encoder.widths`` the
        ``C_l``. The ``model-features`` discriminator and distillation distance read it.
        """
        return None

    def mismatch_hint(self, stored: dict[str, Any]) -> str | None:
        """Why a solver or teacher set made for the model ``stored`` (its :meth:`identity`) does
        not fit this one and what to do, when the differing fields alone do not say it (FLUX:
        another resolution); ``None`` here."""
        return None

    @property
    def teacher_t_eps(self) -> float | None:
        """The last time of a teacher solver's named grid when its spec gives no ``t_eps``
        (``None``: the solver's default); the schedule's ``teacher_t_eps`` here (the paper's 1e-4
        on the continuous linear VP schedule of EDM pixel models, else ``None``)."""
        return self.schedule.teacher_t_eps

    @property
    def device(self) -> torch.device:
        """Where the network's weights are (the CPU for weightless models)."""
        tensor = next(itertools.chain(self.parameters(), self.buffers()), None)
        return torch.device("cpu") if tensor is None else tensor.device

    def set_precision(self, dtype: str = "float32") -> None:
        """Run the network in ``dtype`` (one of :data:`COMPUTE_DTYPES`) under
        :func:`torch.autocast` on the samples' device: its matrix products and convolutions
        in ``dtype``, its output returned in the samples' dtype. ``float32``: as built."""
        if dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"dtype: must be one of {COMPUTE_DTYPES}, got {dtype!r}")
        self.compute_dtype = dtype

    def _network_output(self, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        if self.compute_dtype == "float32":
            return self.network_output(x, t, cond)
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[self.compute_dtype]
        with torch.autocast(device_type=x.device.type, dtype=dtype):
            return self.network_output(x, t, cond)

    def _predict(self, x: Tensor, t: Tensor | float, cond: Any, target: str) -> Tensor:
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(
                f"x has sample shape {tuple(x.shape[1:])}, the model expects {self.sample_shape}"
            )
        t = torch.as_tensor(t, device=x.device)
        if t.dtype != torch.float64:  # float64 times stay exact (a float32 DDPM timestep near
            t = t.to(x.dtype)  # 999 is only good to 6e-5); anything else follows the samples
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        output = self._network_output(x, t, cond).to(x.dtype)
        self.nfe += 1
        if self.prediction_type == target:
            return output
        view = (-1,) + (1,) * (x.dim() - 1)
        alpha = self.schedule.alpha(t).to(x.dtype).view(view)
        sigma = self.schedule.sigma(t).to(x.dtype).view(view)
        return convert_prediction(output, x, alpha, sigma, self.prediction_type, target)
