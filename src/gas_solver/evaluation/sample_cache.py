"""Samples of many-step solvers, made once: the teacher and reference rows of ``compare``.

A teacher or reference row is a pure function of the model, the solver, the seeds, their
conditions and the device kind, and it is the costliest row of a comparison (20 to 200 model calls
a sample). :func:`~gas_solver.evaluation.compare` keeps its samples, with how long they took, in
``<cache_dir>/samples/<key>.safetensors`` and their Inception statistics in ``<key>.npz``
(``cache_dir``: ``$GAS_SOLVER_CACHE`` or ``~/.cache/gas-solver``; the folder itself can be set
with ``$GAS_SOLVER_SAMPLES``), where ``key`` is the SHA-256
of those five things; the next comparison on the same seeds (another NFE of a sweep, a resumed
sweep, a compare of new rows) reads them back instead.

The cache is disposable: files are written atomically by rank 0, and a file that does not hold
its key, whose samples and metadata do not match their checksum, or that has another shape or a non-finite value
is ignored with a warning (and made again); deleting the folder is always safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file
from torch import Tensor

from ..distributed import is_main
from ..errors import GasSolverError
from ..metrics.fid_reference import load_statistics
from ..metrics.fid_statistics import FIDStatistics
from ..outputs import cache_dir, write_cache
from ..runtime import tensors_digest

log = logging.getLogger(__name__)


@dataclass
class CachedSamples:
    """A cached row: its samples ``(N, *sample_shape)`` (CPU, float32), the seconds they took and
    the model calls per sample they made."""

    samples: Tensor
    seconds: float
    calls: float


def sample_key(
    identity: dict[str, Any],
    spec: str,
    seeds: list[int],
    conditions: str,
    device: str,
    compute_dtype: str = "float32",
) -> str:
    """The SHA-256 (hex) naming a row's samples: model identity, solver spec text, seeds, a text
    standing for their conditions (e.g. the prompts' SHA-256), device kind, and the dtype the
    network ran in (``model.compute_dtype``; float32 adds nothing, so the keys of rows cached
    before it stay valid)."""
    key = {"model": identity, "solver": spec, "seeds": seeds, "cond": conditions, "device": device}
    if compute_dtype != "float32":
        key["compute_dtype"] = compute_dtype
    text = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


SAMPLES_ENV = "GAS_SOLVER_SAMPLES"


def samples_dir() -> Path:
    """Where cached rows live: ``$GAS_SOLVER_SAMPLES`` (e.g. a larger disk for latent models), else
    ``<cache_dir>/samples``."""
    folder = os.environ.get(SAMPLES_ENV)
    return Path(folder).expanduser() if folder else cache_dir() / "samples"


def _path(key: str) -> Path:
    return samples_dir() / f"{key}.safetensors"


def _checksum(meta: dict[str, str], samples: Tensor) -> str:
    """The project's checksum of a safetensors file (:func:`~gas_solver.runtime.tensors_digest`)
    over the metadata other than the checksum itself and the samples."""
    text = json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True)
    return tensors_digest(text, {"samples": samples})


def load_samples(key: str, shape: tuple[int, ...]) -> CachedSamples | None:
    """The cached row of ``key`` if a valid one of ``shape`` is there, else ``None``."""
    path = _path(key)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta, samples = f.metadata() or {}, f.get_tensor("samples")
        problem = (
            "another key" if meta.get("key") != key
            else f"shape {tuple(samples.shape)}, not {shape}" if tuple(samples.shape) != shape
            else "a checksum that does not match" if meta.get("sha256") != _checksum(meta, samples)
            else "non-finite values" if not bool(torch.isfinite(samples).all())
            else None
        )  # fmt: skip
        if problem is None:
            log.info("samples of %s… read from the cache %s", key[:12], path)
            return CachedSamples(samples, float(meta["seconds"]), float(meta["calls"]))
    except (OSError, SafetensorError, KeyError, ValueError, RuntimeError) as err:
        problem = f"an unreadable file ({err})"
    log.warning("ignoring the cached samples %s: %s; making them again", path, problem)
    return None


def save_samples(key: str, row: CachedSamples) -> None:
    """Cache a row's samples (rank 0; a failed write only warns: the cache is optional)."""
    if not is_main():
        return
    samples = row.samples.detach().float().cpu().contiguous()
    meta = {"key": key, "seconds": repr(row.seconds), "calls": repr(row.calls)}
    meta["sha256"] = _checksum(meta, samples)
    write_cache(_path(key), lambda tmp: save_file({"samples": samples}, str(tmp), meta), "samples")


def load_sample_statistics(key: str) -> FIDStatistics | None:
    """The cached Inception statistics of ``key``'s samples, if any (a bad file: ``None``)."""
    path = _path(key).with_suffix(".npz")
    if not path.is_file():
        return None
    try:
        return load_statistics(path)
    except (GasSolverError, OSError, ValueError, KeyError) as err:
        log.warning("ignoring the cached statistics %s: %s", path, err)
        return None


def save_sample_statistics(key: str, stats: FIDStatistics) -> None:
    """Cache the Inception statistics of ``key``'s samples (rank 0)."""
    if is_main():
        stats.save(_path(key).with_suffix(".npz"), cache=True)


__all__ = [
    "SAMPLES_ENV",
    "CachedSamples",
    "load_sample_statistics",
    "load_samples",
    "sample_key",
    "save_sample_statistics",
    "save_samples",
    "samples_dir",
]
