"""The one model contract every solver uses.

A :class:`DiffusionModel` wraps a frozen network together with its noise schedule. Solvers see
only this contract, in continuous VP time ``t`` (see :mod:`gas_solver.schedules`):

* ``noise_prediction(x, t, cond)`` → ε̂(x, t),
* ``data_prediction(x, t, cond)`` → x̂₀(x, t) = (x − σ(t) ε̂) / α(t),

whatever the network natively predicts (ε, x₀ or v). :func:`convert_prediction` is the single place
where prediction types are converted. Every network call increments :attr:`DiffusionModel.nfe`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..schedules import NoiseSchedule

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def convert_prediction(
    output: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor, source: str, target: str
) -> Tensor:
    """Convert a network output between prediction types at one noise level.

    With ``x = α x₀ + σ ε`` and ``v = α ε − σ x₀`` (Salimans & Ho 2022, VP so α² + σ² = 1):
    ``ε = (x − α x₀)/σ``, ``x₀ = (x − σ ε)/α``, ``ε = σ x + α v``, ``x₀ = α x − σ v``.

    Args:
        output: the prediction, shape ``(B, ...)``.
        x: the noisy input, shape ``(B, ...)``.
        alpha, sigma: shape ``(B, 1, ..., 1)`` (broadcastable to ``x``).
        source, target: ``epsilon`` | ``sample`` | ``v_prediction``.
    """
    for name in (source, target):
        if name not in PREDICTION_TYPES:
            raise ConfigError(f"prediction type must be one of {PREDICTION_TYPES}, got {name!r}")
    if source == target:
        return output
    if source == "v_prediction":
        eps = sigma * x + alpha * output
    elif source == "sample":
        eps = (x - alpha * output) / sigma
    else:
        eps = output
    return eps if target == "epsilon" else (x - sigma * eps) / alpha


class DiffusionModel(nn.Module):
    """A frozen diffusion model seen through continuous VP time.

    Subclasses implement :meth:`network_output`, returning the network's native prediction
    (``self.prediction_type``) for a batch at per-sample times ``t: (B,)``.

    Attributes:
        schedule: the model's :class:`~gas_solver.schedules.NoiseSchedule`.
        sample_shape: shape of one sample (without batch), e.g. ``(3, 32, 32)``.
        prediction_type: ``epsilon`` | ``sample`` | ``v_prediction``.
        nfe: number of network evaluations since construction or :meth:`reset_nfe`.
    """

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
            "schedule": self.schedule.describe(),
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

    def _predict(self, x: Tensor, t: Tensor | float, cond: Any, target: str) -> Tensor:
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(
                f"x has sample shape {tuple(x.shape[1:])}, the model expects {self.sample_shape}"
            )
        t = torch.as_tensor(t, device=x.device)
        if t.dtype != torch.float64:  # float64 times stay exact (a float32 DDPM timestep near
            t = t.to(x.dtype)  # 999 is only good to 6e-5); anything else follows the samples
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        output = self.network_output(x, t, cond).to(x.dtype)
        self.nfe += 1
        if self.prediction_type == target:
            return output
        view = (-1,) + (1,) * (x.dim() - 1)
        alpha = self.schedule.alpha(t).to(x.dtype).view(view)
        sigma = self.schedule.sigma(t).to(x.dtype).view(view)
        return convert_prediction(output, x, alpha, sigma, self.prediction_type, target)
