"""The trained solver's file: ``solver.safetensors`` (parameters, plus the metadata JSON and a
SHA-256 over both in its header) and a ``.json`` side-car for people.

:meth:`GeneralizedSolver.save <gas_solver.solvers.generalized.GeneralizedSolver.save>` and
``load`` build on :func:`write_solver_file` and :func:`read_solver_file`; reading checks the format,
the checksum, the required metadata and that every parameter is finite, with errors that name the
file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from ..errors import CheckpointMismatchError, MissingAssetError
from ..runtime import atomic_write, json_safe, tensors_digest

CHECKPOINT_FORMAT = "gas_solver.GeneralizedSolver/1"
CHECKSUM_KEY = "gas_solver_sha256"
"""Safetensors metadata key of the SHA-256 over the metadata text and the tensors."""
SOLVER_FILE = "solver.safetensors"
"""File name of a trained solver inside a training run folder (what ``gas-solver train`` writes)."""


def write_solver_file(path: Path, meta: dict[str, Any], tensors: dict[str, Tensor]) -> Path:
    """Write ``tensors`` with ``meta`` (strict JSON: non-finite numbers become ``null``) and its
    checksum in the header to ``path``, and ``meta`` to ``path`` with suffix ``.json``; both
    atomically. Returns ``path``."""
    text = json.dumps(json_safe(meta), indent=2, allow_nan=False)
    header = {"gas_solver": text, CHECKSUM_KEY: tensors_digest(text, tensors)}
    data = safetensors_bytes(tensors, metadata=header)  # in memory: a failed write is OSError
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    atomic_write(path.with_suffix(".json"), lambda tmp: tmp.write_text(text + "\n"))
    return path


def read_solver_file(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The metadata and tensors of a GS checkpoint (a file, or a run folder holding
    ``solver.safetensors``), with errors that say what is wrong."""
    if path.is_dir() and (path / SOLVER_FILE).is_file():
        path = path / SOLVER_FILE
    if not path.is_file():
        raise MissingAssetError(
            f"solver checkpoint {path} not found; train one with `gas-solver train` or "
            f"pass the path of an existing .safetensors file"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError) as err:
        raise CheckpointMismatchError(f"{path} is not a readable safetensors file: {err}") from err
    text = header.get("gas_solver", "{}")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else "unreadable"
        raise CheckpointMismatchError(
            f"{path} is not a GeneralizedSolver checkpoint (format {found!r}, "
            f"expected {CHECKPOINT_FORMAT!r})"
        )
    if header.get(CHECKSUM_KEY) != tensors_digest(text, tensors):
        why = "has no checksum" if CHECKSUM_KEY not in header else "fails its checksum"
        raise CheckpointMismatchError(
            f"{path} {why}: the file is corrupted (or was written by an older gas-solver); "
            "train the solver again"
        )
    missing = sorted({"nfe", "t_eps", "schedule", "init_grid", "model"} - set(meta))
    if missing:
        raise CheckpointMismatchError(f"{path}: the solver metadata lacks {missing}")
    for name, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointMismatchError(
                f"{path}: parameter {name} holds NaN or infinite values, so every sample would; "
                "train the solver again (e.g. with a lower --lr)"
            )
    return meta, tensors


def load_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a GS checkpoint (e.g. to find its model before :meth:`~gas_solver.solvers.generalized.GeneralizedSolver.load`)."""
    return read_solver_file(Path(path))[0]


def json_differences(stored: Any, expected: Any, prefix: str) -> list[str]:
    """Dotted paths where two JSON values differ, with both values (for error messages)."""
    if isinstance(stored, dict) and isinstance(expected, dict):
        return [
            diff
            for key in sorted(set(stored) | set(expected))
            for diff in json_differences(stored.get(key), expected.get(key), f"{prefix}.{key}")
        ]
    if stored != expected:
        return [f"{prefix}: checkpoint {stored!r}, given {expected!r}"]
    return []
