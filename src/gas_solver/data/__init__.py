"""Bundled data sets (MNIST-5k, sklearn digits) read from installed packages."""

from .datasets import DATASETS, LabeledImages, dataset_names, load_dataset, load_digits, load_mnist

__all__ = [
    "DATASETS",
    "LabeledImages",
    "dataset_names",
    "load_dataset",
    "load_digits",
    "load_mnist",
]
