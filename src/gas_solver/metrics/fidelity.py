"""Fidelity of a few-step solver to its teacher: per-sample L1, RMSE and PSNR.

Both solvers start from the same noise, so each output has a paired teacher output. Images are
compared as they are (no clipping, no quantisation), in the data range [−1, 1], i.e. a
peak-to-peak range of 2: ``PSNR = 20 log10(2 / RMSE)`` dB (``inf`` for identical images).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ..errors import ConfigError

__all__ = ["Fidelity", "FidelitySummary", "per_sample_fidelity", "summarize_fidelity"]

DATA_RANGE = 2.0


class Fidelity(NamedTuple):
    """Per-sample metrics, each ``(B,)`` float64 on the CPU."""

    l1: Tensor
    rmse: Tensor
    psnr: Tensor


def per_sample_fidelity(
    output: Tensor, target: Tensor, *, data_range: float = DATA_RANGE
) -> Fidelity:
    """Per-sample distances between a solver's ``output`` and the teacher's ``target``.

    Args:
        output, target: ``(B, ...)``, same shape, same noise per row.
        data_range: peak-to-peak range of the data (2 for [−1, 1]).

    Returns:
        :class:`Fidelity` with ``l1`` = mean |output − target|, ``rmse`` = √mean (output − target)²
        and ``psnr`` = 20 log10(data_range / rmse) dB, each ``(B,)``.
    """
    if output.shape != target.shape:
        raise ConfigError(
            f"solver output {tuple(output.shape)} and teacher output {tuple(target.shape)} "
            "differ in shape"
        )
    if output.ndim < 1 or output.shape[0] == 0:
        raise ConfigError(f"need a batch (B, ...) with B >= 1, got shape {tuple(output.shape)}")
    if data_range <= 0:
        raise ConfigError(f"data_range must be positive, got {data_range}")
    diff = output.detach().to("cpu", torch.float64) - target.detach().to("cpu", torch.float64)
    diff = diff.reshape(diff.shape[0], -1)
    l1 = diff.abs().mean(1)
    rmse = diff.square().mean(1).sqrt()
    psnr = 20 * torch.log10(data_range / rmse)  # rmse = 0 → +inf
    return Fidelity(l1, rmse, psnr)


@dataclass(frozen=True)
class FidelitySummary:
    """Mean and (population) standard deviation of each per-sample metric."""

    num_samples: int
    l1_mean: float
    l1_std: float
    rmse_mean: float
    rmse_std: float
    psnr_mean: float
    psnr_std: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"L1 {self.l1_mean:.4f} ± {self.l1_std:.4f} | RMSE {self.rmse_mean:.4f} ± "
            f"{self.rmse_std:.4f} | PSNR {self.psnr_mean:.2f} ± {self.psnr_std:.2f} dB "
            f"(n={self.num_samples})"
        )


def _mean_std(x: Tensor) -> tuple[float, float]:
    mean = float(x.mean())
    if math.isinf(mean):  # some identical pairs: PSNR is +inf, its spread undefined
        return mean, float("nan")
    return mean, float(x.std(correction=0))


def summarize_fidelity(metrics: Fidelity | Iterable[Fidelity]) -> FidelitySummary:
    """Mean ± std over all samples of one :class:`Fidelity` or of several batches of them."""
    batches = [metrics] if isinstance(metrics, Fidelity) else list(metrics)
    if not batches:
        raise ConfigError("no fidelity metrics to summarise")
    l1, rmse, psnr = (torch.cat([getattr(b, k) for b in batches]) for k in Fidelity._fields)
    if l1.numel() == 0:
        raise ConfigError("no fidelity metrics to summarise")
    (l1_m, l1_s), (rmse_m, rmse_s), (psnr_m, psnr_s) = map(_mean_std, (l1, rmse, psnr))
    return FidelitySummary(l1.numel(), l1_m, l1_s, rmse_m, rmse_s, psnr_m, psnr_s)
