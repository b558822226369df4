"""Pictures: image grids of samples, and plots of solver time grids.

Everything here takes images in [−1, 1] with 1 or 3 channels; latent models' samples are decoded
first (:func:`gas_solver.images.to_images`). Row and tick labels (solver specs, checkpoint paths)
are wrapped (:func:`wrap_label`) so long ones are never cut off.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .errors import ConfigError
from .outputs import atomic_write

LABEL_WIDTH = 90
"""Characters per line of a row label in :func:`save_comparison_grid` (10-inch figure, 9 pt)."""
TICK_LABEL_WIDTH = 40
"""Characters per line of a solver label on the y axis of :func:`plot_time_grids`."""
LABEL_FONT_SIZE = 9
_BREAK_AFTER = re.compile(r"(?<=[\s/\\,;:=_])")  # a label may break after these characters


def wrap_label(text: str, width: int = LABEL_WIDTH) -> list[str]:
    """Split a label into lines of at most ``width`` characters, never dropping a character.

    Lines break after a space, ``/``, ``\\``, ``,``, ``;``, ``:``, ``=`` or ``_`` where possible
    (solver specs and checkpoint paths have few spaces), else inside a run longer than ``width``.
    Spaces at the ends of lines are dropped; every other character is kept in order, so
    ``"".join(lines)`` is ``text`` without the spaces where it was broken.
    """
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    lines: list[str] = []
    line = ""
    for piece in _BREAK_AFTER.split(text):
        while piece:
            if len(line) + len(piece.rstrip()) <= width:
                line, piece = line + piece, ""
            elif line.strip():
                lines.append(line.rstrip())
                line = ""
                piece = piece.lstrip(" ")
            else:  # a run longer than a line: cut it
                piece = piece.lstrip(" ")
                lines.append(piece[:width])
                line, piece = "", piece[width:]
    if line.strip() or not lines:
        lines.append(line.rstrip())
    return lines


def to_uint8(images: Tensor) -> np.ndarray:
    """``(B, C, H, W)`` in [−1, 1] → ``(B, H, W, C)`` uint8, EDM's quantisation ``x·127.5 + 128``."""
    images = (images.detach().float().cpu() * 127.5 + 128).clip(0, 255).to(torch.uint8)
    return images.permute(0, 2, 3, 1).numpy()


def image_grid(images: Tensor, nrow: int | None = None, pad: int = 1) -> Image.Image:
    """Tile ``(B, C, H, W)`` images in [−1, 1] into one picture, ``nrow`` images per row."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ConfigError(
            f"image grid: images must be (B, C, H, W) with C = 1 or 3, got "
            f"{tuple(images.shape)} (decode latent samples first: gas_solver.images.to_images)"
        )
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


def save_comparison_grid(
    rows: Mapping[str, Tensor], path: str | Path, label_width: int = LABEL_WIDTH
) -> Path:
    """One row of images per named set (same noise in the same column); see
    :func:`comparison_figure`."""
    return _save_figure(comparison_figure(rows, label_width), path)


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (imported when a picture is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def comparison_figure(rows: Mapping[str, Tensor], label_width: int = LABEL_WIDTH):
    """A matplotlib figure with one row of images ``(B, C, H, W)`` in [−1, 1] per named set.

    Each row's name is written above it, left-aligned and wrapped to ``label_width`` characters
    (:func:`wrap_label`), so checkpoint paths and long solver specs are shown whole; the figure
    grows with the number of label lines.
    """
    plt = _pyplot()
    names = list(rows)
    grids = [image_grid(rows[name], nrow=rows[name].shape[0]) for name in names]
    labels = ["\n".join(wrap_label(name, label_width)) for name in names]
    width = 10.0  # inches
    line = LABEL_FONT_SIZE * 1.4 / 72  # inches per label line
    heights = [
        width * grid.height / grid.width + line * (label.count("\n") + 1) + 0.15
        for grid, label in zip(grids, labels, strict=True)
    ]
    fig = plt.figure(figsize=(width, sum(heights) + 0.2))
    spec = fig.add_gridspec(len(names), 1, height_ratios=heights)
    for i, (grid, label) in enumerate(zip(grids, labels, strict=True)):
        ax = fig.add_subplot(spec[i])
        ax.imshow(grid, cmap="gray", interpolation="nearest")
        ax.set_title(label, loc="left", fontsize=LABEL_FONT_SIZE, family="monospace")
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def plot_time_grids(
    grids: Mapping[str, Sequence[float]], path: str | Path, title: str = ""
) -> Path:
    """Each solver's time grid as a row of markers on a log-t axis."""
    plt = _pyplot()
    labels = ["\n".join(wrap_label(name, TICK_LABEL_WIDTH)) for name in grids]
    lines = sum(label.count("\n") + 1 for label in labels)  # a long spec wraps onto many
    fig, ax = plt.subplots(figsize=(8, 0.6 + max(0.45 * len(grids), 0.17 * lines)))
    for row, (name, times) in enumerate(grids.items()):
        ax.plot(list(times), [row] * len(times), "o-", markersize=5, label=name)
    ax.set_yticks(range(len(grids)), labels)
    ax.set_xscale("log")
    ax.set_xlabel("t (log scale; sampling runs from t = 1 down to t_eps)")
    ax.invert_xaxis()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save_figure(fig, path)


def save_scatter(points: Mapping[str, Tensor], path: str | Path, title: str = "") -> Path:
    """2-D samples of several solvers in one scatter plot (for 2-D analytic models)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, xy in points.items():
        xy = xy.detach().double().cpu().reshape(xy.shape[0], -1)[:, :2]
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.6, label="\n".join(wrap_label(name, 40)))
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title("\n".join(wrap_label(title, 60)), fontsize=9)
    fig.tight_layout()
    return _save_figure(fig, path)


def save_curve(
    x: Sequence[float],
    y: Sequence[float],
    path: str | Path,
    xlabel: str,
    ylabel: str,
    title: str = "",
    log_y: bool = False,
) -> Path:
    """One measured curve (e.g. FID vs training step), points marked and labelled."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(x, y, marker="o")
    for xi, yi in zip(x, y, strict=True):
        ax.annotate(
            f"{yi:.1f}",
            (xi, yi),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=8,
        )
    return _finish(fig, ax, path, xlabel, ylabel, title, log_y)


def save_series(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    xlabel: str,
    ylabel: str,
    title: str = "",
    log_y: bool = False,
) -> Path:
    """Several measured curves on one axis (e.g. FID against NFE per method), the legend beside
    the axis; whole-number x values (NFE, iterations) get whole-number ticks."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    colours = len(plt.rcParams["axes.prop_cycle"])  # lines past the colour cycle are dashed
    for index, (label, (x, y)) in enumerate(series.items()):
        ax.plot(x, y, marker="o", label=label, linestyle="-" if index < colours else "--")
    if all(float(v).is_integer() for x, _ in series.values() for v in x):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the curves
    return _finish(fig, ax, path, xlabel, ylabel, title, log_y)


def _finish(fig, ax, path: str | Path, xlabel: str, ylabel: str, title: str, log_y: bool) -> Path:
    """Labels, grid, an optional log y axis with plain numbers, then the PNG (atomically)."""
    if log_y:
        from matplotlib.ticker import ScalarFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
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
