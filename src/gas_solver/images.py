"""Samples → images: which models make pictures, and a latent model's samples decoded into
images in bounded batches."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from .distributed import all_gather, rank, world_size
from .errors import ConfigError
from .models.base import DiffusionModel


def makes_images(model: DiffusionModel) -> bool:
    """Whether the model's samples are pictures: a latent model (its decoded samples), or a
    pixel model of samples ``(C, H, W)`` with C = 1 or 3."""
    shape = tuple(model.sample_shape)
    return model.is_latent or (len(shape) == 3 and shape[0] in (1, 3))


def image_batches(
    model: DiffusionModel, samples: Tensor, batch_size: int = 64, shared: bool = False
) -> Iterator[Tensor]:
    """Model outputs → images in [−1, 1], one batch at a time (float32, on the CPU).

    The one place that turns what a sampler returns into pictures: latent models are decoded
    (``model.decode``, without gradient, ``batch_size`` latents per call, so the decoder's memory
    stays bounded), pixel models' samples are passed through unchanged. Lazy, so a consumer such
    as the FID never holds all decoded images at once.

    Args:
        model: the model that made ``samples``.
        samples: ``(N, *model.sample_shape)``, e.g. latents ``(N, 4, 64, 64)`` of SD.
        batch_size: samples per decoder call.
        shared: under torchrun, every rank passes the same ``samples`` and iterates to the end;
            the decoding is shared out, one batch per rank and round, and every rank gets every
            batch in order (at most K decoded batches are held at a time).

    Yields:
        ``(b, C, H, W)`` images; for latent models the decoder's resolution and channels.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size: must be >= 1, got {batch_size}")
    chunks = samples.split(batch_size)
    if not model.is_latent:
        yield from chunks
        return
    k, me = (world_size(), rank()) if shared else (1, 0)
    for first in range(0, len(chunks), k):
        images = None
        if first + me < len(chunks):
            with torch.no_grad():
                images = model.decode(chunks[first + me]).float().cpu()
        this_round = all_gather(images) if shared else [images]
        yield from (part for part in this_round if part is not None)


def to_images(model: DiffusionModel, samples: Tensor, batch_size: int = 64) -> Tensor:
    """All of :func:`image_batches` in one tensor ``(N, C, H, W)``; ``samples`` itself for pixel
    models. Meant for a few pictures (grids); stream :func:`image_batches` for many."""
    if not model.is_latent:
        return samples
    return torch.cat(list(image_batches(model, samples, batch_size)))


__all__ = ["image_batches", "makes_images", "to_images"]
