"""The Fréchet distance between two Gaussians, in float64, as EDM's ``fid.py`` computes it.

``FID = |mu₁ − mu₂|² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½)`` with ``scipy.linalg.sqrtm`` (EDM) or the
equal symmetric-eigenvalue form (``method="eigh"``, faster).
"""

from __future__ import annotations

import logging
import warnings
from typing import Literal

import numpy as np
import scipy
import scipy.linalg

from ..errors import ConfigError

__all__ = ["FID_METHODS", "frechet_distance", "psd_sqrt"]

logger = logging.getLogger(__name__)

FID_METHODS = ("sqrtm", "eigh")  # how the matrix square root is taken, see frechet_distance


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """``scipy.linalg.sqrtm`` without its ``disp`` print (deprecated in SciPy 1.16, gone in 1.18).

    Its "matrix is singular" warning is expected (fewer images than feature dimensions give a
    product with many zero eigenvalues) and is logged at debug level; non-finite and complex
    results are dealt with by the caller.
    """
    version = tuple(int(p) for p in scipy.__version__.split(".")[:2] if p.isdigit())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", scipy.linalg.LinAlgWarning)
        if version >= (1, 16):
            root = scipy.linalg.sqrtm(a)
        else:
            root, _ = scipy.linalg.sqrtm(a, disp=False)
    for w in caught:
        if issubclass(w.category, scipy.linalg.LinAlgWarning):
            logger.debug("FID: scipy.linalg.sqrtm: %s", w.message)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return root


def psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix from its eigenvalues (negative round-off → 0)."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _trace_sqrt_product(
    sigma1: np.ndarray, sigma2: np.ndarray, method: str, sqrt_sigma1: np.ndarray | None = None
) -> float:
    """``tr((Σ₁ Σ₂)^½)`` by ``scipy.linalg.sqrtm`` (EDM) or by symmetric eigenvalues."""
    if method == "eigh":
        # tr((Σ₁Σ₂)^½) = Σ √λ(Σ₁^½ Σ₂ Σ₁^½): a symmetric PSD matrix with the same eigenvalues.
        if sqrt_sigma1 is None:
            sqrt_sigma1 = psd_sqrt(sigma1)
        m = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
        eig = np.linalg.eigvalsh((m + m.T) / 2)
        return float(np.sqrt(np.clip(eig, 0, None)).sum())
    covmean = _sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        eps = 1e-6
        logger.warning(
            "FID: sqrtm(sigma1 @ sigma2) is not finite (singular product); adding %g to the "
            "diagonal of both covariances",
            eps,
        )
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
    trace = np.trace(covmean)
    if np.iscomplexobj(covmean):
        # Round-off puts small imaginary parts on eigenvalues near 0; they cancel in the trace.
        if abs(trace.imag) > 1e-3 * max(1.0, abs(trace.real)):
            logger.warning(
                "FID: sqrtm has a large imaginary trace %.3g (real %.6g); using the real part. "
                "Too few images for %d-d features?",
                trace.imag,
                trace.real,
                sigma1.shape[0],
            )
        trace = trace.real
    return float(trace)


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    method: Literal["sqrtm", "eigh"] = "sqrtm",
    sqrt_sigma1: np.ndarray | None = None,
) -> float:
    """Fréchet distance ``|mu₁ − mu₂|² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½)`` in float64.

    Args:
        mu1, mu2: means ``(D,)``; sigma1, sigma2: covariances ``(D, D)``.
        method: ``"sqrtm"`` = ``scipy.linalg.sqrtm`` of the product, as EDM's fid.py (a
            non-finite result is retried with 1e-6 added to the diagonals; a complex result
            contributes its real part, with a warning if the imaginary part of the trace is not
            negligible); ``"eigh"`` = the same trace from the eigenvalues of the symmetric
            ``Σ₁^½ Σ₂ Σ₁^½`` (exact for PSD inputs, never complex, several times faster on CPU).
        sqrt_sigma1: ``Σ₁^½`` if already known (``"eigh"`` only).

    Returns the distance, never below 0: equal statistics give 0, not a round-off ``-6e-7``.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[-1] if mu1.ndim else 0
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ConfigError(
            f"FID statistics do not match: mu {mu1.shape} vs {mu2.shape}, "
            f"sigma {sigma1.shape} vs {sigma2.shape}"
        )
    if method not in FID_METHODS:
        raise ConfigError(f"method must be 'sqrtm' or 'eigh', got {method!r}")
    diff = mu1 - mu2
    trace_root = _trace_sqrt_product(sigma1, sigma2, method, sqrt_sigma1)
    distance = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_root)
    return max(distance, 0.0)  # a squared distance: below 0 only by round-off (equal statistics)
