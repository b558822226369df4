"""The trained solver's file: ``solver.safetensors`` (parameters, plus the metadata JSON and a
SHA-256 over both in its header) and a ``.json`` side-car for people.

:meth:`GeneralizedSolver.save <gas_solver.solvers.generalized.GeneralizedSolver.save>` and
``load`` build on :func:`write_solver_file` and :func:`read_solver_file`; reading checks the format,
the checksum, the metadata against :data:`METADATA_SCHEMA` (every field a reader uses, with its
type and range), the parameters' names and shapes against the NFE, and that every parameter is
finite, with errors that name the file (and the field).
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

from ..errors import CheckpointMismatchError, CorruptFileError, MissingAssetError
from ..models.base import COMPUTE_DTYPES
from ..outputs import atomic_write, json_safe
from ..runtime import tensors_digest
from ..schedules import GRID_KINDS
from ..validation import (
    BIG,
    all_of,
    anything,
    boolean,
    choice,
    either,
    integer,
    list_of,
    mapping,
    nullable,
    number,
    parse_json,
    quote,
    rule,
    text,
    validate,
)

CHECKPOINT_FORMAT = "gas_solver.GeneralizedSolver/1"
CHECKSUM_KEY = "gas_solver_sha256"
"""Safetensors metadata key of the SHA-256 over the metadata text and the tensors."""
SOLVER_FILE = "solver.safetensors"
"""File name of a trained solver inside a training run folder (what ``gas-solver train`` writes)."""
MAX_NFE = 100
"""The most model calls a learned solver makes (as ``train --nfe`` allows)."""


def parameter_shapes(nfe: int) -> dict[str, list[int]]:
    """The name and shape of every parameter of a GS with ``nfe`` calls (its ``state_dict``)."""
    coefficients = nfe * (nfe + 1) // 2
    return {"mu_logit": [nfe - 1], "t_couple": [nfe], "a_hat": [coefficients],
            "c_hat": [coefficients]}  # fmt: skip


def _grid_fits_nfe(meta: dict[str, Any]) -> list[tuple[str, str]]:
    grid = meta["init_grid"]
    if isinstance(grid, list) and len(grid) != meta["nfe"] + 1:
        return [("init_grid", f"must hold nfe + 1 = {meta['nfe'] + 1} times, got {len(grid)}")]
    return []


METADATA_SCHEMA = all_of(
    mapping({
        "format": choice(CHECKPOINT_FORMAT),
        "nfe": integer(1, MAX_NFE),
        "t_eps": number(0, 1, closed=False),
        "schedule": mapping({"kind": text(64)}),
        "init_grid": either(choice(*GRID_KINDS), list_of(number(0, 1), 2, MAX_NFE + 1)),
        "model": mapping(),
        "theory?": boolean,
        "theory_solver?": text(200),
        "model_source?": nullable(text(4096)),
        "teacher?": nullable(mapping({
            "path?": nullable(text(4096)), "seeds?": nullable(text()), "solver?": anything,
            "sha256?": nullable(text(64)),
        })),
        "training?": mapping({  # readers do .get("training", {}).get(...): an object, not null
            "iteration?": integer(0, BIG),
            "config?": mapping({
                "loss?": nullable(text(64)), "adversarial?": anything,
                "dtype?": choice(*COMPUTE_DTYPES),
            }),
        }),
        "run?": nullable(mapping()),
        "solver?": mapping(),
    }),
    rule(_grid_fits_nfe),
)  # fmt: skip
"""The metadata of ``solver.safetensors``: every field that :meth:`GeneralizedSolver.load
<gas_solver.solvers.generalized.GeneralizedSolver.load>`, the commands (``sample``, ``compare``,
``export``: model source, teacher seeds, training configuration) and :mod:`.resolve` read back,
with its type and range. Other keys (a caller's extra metadata) are kept unchecked."""
METADATA_MAX_BYTES = 4 << 20


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
    meta = parse_json(text, path, what="metadata", max_bytes=METADATA_MAX_BYTES)
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
    validate(meta, METADATA_SCHEMA, path, "metadata")
    shapes = {name: list(tensor.shape) for name, tensor in tensors.items()}
    if shapes != parameter_shapes(meta["nfe"]) or not all(
        tensor.is_floating_point() for tensor in tensors.values()
    ):
        raise CorruptFileError(
            f"{path}: the parameters {quote(shapes)} are not those of a GS with "
            f"nfe={meta['nfe']} ({quote(parameter_shapes(meta['nfe']))}, floating point)"
        )
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
