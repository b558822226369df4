"""Fréchet Inception Distance as EDM computes it: generated images against a reference.

1. images → Inception features (:mod:`gas_solver.metrics.inception`, EDM's preprocessing; what
   images can be read from: :mod:`gas_solver.metrics.image_source`);
2. features → float64 statistics ``mu``, ``sigma`` (:mod:`gas_solver.metrics.fid_statistics`);
   the reference's from whatever names it (:mod:`gas_solver.metrics.fid_reference`);
3. ``FID = |mu₁ − mu₂|² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½)`` (:mod:`gas_solver.metrics.frechet`).
"""

from __future__ import annotations

from typing import Literal

import torch

from .fid_reference import reference_statistics
from .fid_statistics import FIDStatistics, compute_statistics
from .image_source import ImageSource
from .inception import InceptionFeatures

__all__ = ["compute_fid"]


def compute_fid(
    images: ImageSource | FIDStatistics,
    reference: ImageSource | FIDStatistics,
    *,
    num_images: int | None = None,
    num_reference: int | None = None,
    model: InceptionFeatures | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    method: Literal["sqrtm", "eigh"] = "sqrtm",
    progress: bool = True,
) -> float:
    """FID between generated images and a reference.

    Args:
        images: generated images (an :data:`ImageSource`, float in [−1, 1] or uint8) or their
            :class:`FIDStatistics`.
        reference: anything :func:`reference_statistics` takes: statistics, a ``.npz`` (EDM or
            ADM), a bundled data set name, a folder, images.
        num_images, num_reference: use only the first so many of each.
        model, batch_size, device, progress: as :func:`inception_features`.
        method: see :func:`frechet_distance`.
    """
    kwargs = dict(model=model, batch_size=batch_size, device=device, progress=progress)
    ref = reference_statistics(reference, num_images=num_reference, **kwargs)
    if isinstance(images, FIDStatistics):
        stats = images
    else:
        stats = compute_statistics(images, num_images=num_images, **kwargs)
    return stats.frechet_distance(ref, method=method)
