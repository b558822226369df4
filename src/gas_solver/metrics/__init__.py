"""Evaluation: FID with the offline EDM/NVIDIA Inception, and fidelity to the teacher."""

from .fid import compute_fid
from .fid_reference import load_statistics, reference_statistics
from .fid_statistics import FIDStatistics, compute_statistics
from .fidelity import Fidelity, FidelitySummary, per_sample_fidelity, summarize_fidelity
from .frechet import frechet_distance
from .inception import InceptionFeatures, inception_features, load_inception

__all__ = [
    "FIDStatistics",
    "Fidelity",
    "FidelitySummary",
    "InceptionFeatures",
    "compute_fid",
    "compute_statistics",
    "frechet_distance",
    "inception_features",
    "load_inception",
    "load_statistics",
    "per_sample_fidelity",
    "reference_statistics",
    "summarize_fidelity",
]
