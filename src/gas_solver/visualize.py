"""Pictures: image grids of samples, and plots of solver time grids."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .runtime import atomic_write


def to_uint8(images: Tensor) -> np.ndarray:
    """``(B, C, H, W)`` in [−1, 1] → ``(B, H, W, C)`` uint8, EDM's quantisation ``x·127.5 + 128``."""
    images = (images.detach().float().cpu() * 127.5 + 128).clip(0, 255).to(torch.uint8)
    return images.permute(0, 2, 3, 1).numpy()


def image_grid(images: Tensor, nrow: int | None = None, pad: int = 1) -> Image.Image:
    """Tile ``(B, C, H, W)`` images in [−1, 1] into one picture, ``nrow`` images per row."""
    pixels = to_uint8(images)
    count, height, width, channels = pixels.shape
    nrow = nrow or math.ceil(math.sqrt(count))
    rows = math.ceil(count / nrow)
    canvas = np.full(
        (rows * (height + pad) + pad, nrow * (width + pad) + pad, channels), 255, np.uint8
    )
    for i, img in enumerate(pixels):
        r, c = divmod(i, nrow)
        y, x = pad + r * (height + pad), pad + c * (width + pad)
        canvas[y : y + height, x : x + width] = img
    return Image.fromarray(canvas[..., 0] if channels == 1 else canvas)


def save_image_grid(images: Tensor, path: str | Path, nrow: int | None = None) -> Path:
    grid = image_grid(images, nrow)
    return atomic_write(path, lambda tmp: grid.save(tmp, format="PNG"))


def save_comparison_grid(rows: Mapping[str, Tensor], path: str | Path, scale: int = 2) -> Path:
    """One row of images per named set (same noise in the same column), labelled on the left."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, axes = plt.subplots(len(names), 1, figsize=(10, 1.0 + 0.9 * len(names) * scale / 2))
    for ax, name in zip(np.atleast_1d(axes), names, strict=True):
        images = rows[name]
        ax.imshow(image_grid(images, nrow=images.shape[0]), cmap="gray", interpolation="nearest")
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return _save_figure(fig, path)


def plot_time_grids(
    grids: Mapping[str, Sequence[float]], path: str | Path, title: str = ""
) -> Path:
    """Each solver's time grid as a row of markers on a log-t axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.45 * len(grids)))
    for row, (name, times) in enumerate(grids.items()):
        ax.plot(list(times), [row] * len(times), "o-", markersize=5, label=name)
    ax.set_yticks(range(len(grids)), list(grids))
    ax.set_xscale("log")
    ax.set_xlabel("t (log scale; sampling runs from t = 1 down to t_eps)")
    ax.invert_xaxis()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save_figure(fig, path)


def save_scatter(points: Mapping[str, Tensor], path: str | Path, title: str = "") -> Path:
    """2-D samples of several solvers in one scatter plot (for 2-D analytic models)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, xy in points.items():
        xy = xy.detach().double().cpu().reshape(xy.shape[0], -1)[:, :2]
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.6, label=name)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save_figure(fig, path)


def _save_figure(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    finally:
        plt.close(fig)
