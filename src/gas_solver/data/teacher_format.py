"""The teacher set's on-disk format: manifest, shards, and the checks that trust neither.

On disk (format version 1)::

    out_dir/
      manifest.json            what the set is and which shards are finished (see below)
      shard-00000.safetensors  items 0 … shard_size−1
      shard-00001.safetensors  …

Each shard is a safetensors file with one row per item, in seed-list order:

* ``seed``: ``(n,)`` int64,
* ``noise``: ``(n, *sample_shape)`` the initial noise x_T (:func:`gas_solver.seeds.seeded_noise`),
* ``target``: ``(n, *sample_shape)`` the teacher's output for that noise,
* ``cond``: ``(n, …)`` the condition, when ``cond_fn`` returns a tensor, or ``cond.<name>`` for
  each entry when it returns a dict of tensors; absent for unconditional models.

``manifest.json`` holds ``format``/``format_version``, ``complete``, the identity of the set
(``model``: ``model.identity()``, ``solver``: the solver spec, ``seeds``: EDM-style text,
``shard_size``, ``dtype``), ``num_samples``, ``sample_shape``, ``fields`` (per-item shape and dtype
of every tensor above, and ``cond_kind``: ``none`` | ``tensor`` | ``dict``), ``shards`` (file,
index, first item ``start``, ``count``, ``seeds``, ``sha256``, ``bytes``), the times ``created``
and ``completed``, ``gas_solver_version``, ``torch_version``, ``python``, ``command`` (the latest
one), and ``runs`` (one entry per invocation: start time, command, device, batch size, processes,
shards made). Shards carry one safetensors metadata entry, ``gas_solver``: ``{"format",
"format_version", "shard"}`` as JSON.

The manifest is written atomically (temporary file, fsync, ``os.replace``). :func:`read_manifest`
refuses a manifest with a missing or mistyped key or a shard entry out of place (so every row comes
from a listed shard, and no entry names a file outside its folder); :func:`shard_problem` checks a
shard's size and sha256.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError, GasSolverError
from ..runtime import atomic_write

FORMAT = "gas-solver-teacher-set"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
IDENTITY_KEYS = ("model", "solver", "seeds", "shard_size", "dtype")


def shard_name(index: int) -> str:
    """File name of shard ``index``: ``shard-00000.safetensors``."""
    return f"shard-{index:05d}.safetensors"


def shard_metadata(index: int) -> dict[str, str]:
    """The safetensors metadata of shard ``index``."""
    # One key only: safetensors writes several metadata keys in a varying order, and shard bytes
    # must be reproducible.
    info = {"format": FORMAT, "format_version": FORMAT_VERSION, "shard": index}
    return {"gas_solver": json.dumps(info, sort_keys=True)}


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest at ``path``, or a :class:`GasSolverError` saying why it cannot be used."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GasSolverError(f"cannot read teacher set manifest {path}: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise GasSolverError(f"{path} is not a gas-solver teacher set manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise GasSolverError(
            f"{path} has teacher-set format version {version}; this gas-solver reads version "
            f"{FORMAT_VERSION}"
        )
    problem = _manifest_problem(manifest)
    if problem is not None:
        raise GasSolverError(
            f"{path} is damaged ({problem}); make the set again (same call with --overwrite)"
        )
    return manifest


_MANIFEST_TYPES: dict[str, type | tuple[type, ...]] = {
    "complete": bool, "num_samples": int, "shard_size": int, "seeds": str, "sample_shape": list,
    "fields": (dict, type(None)), "shards": list, "model": dict, "solver": dict,
}  # fmt: skip
_SHARD_TYPES: dict[str, type] = {
    "index": int, "file": str, "start": int, "count": int, "seeds": str, "sha256": str, "bytes": int,
}  # fmt: skip


def _manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What makes a manifest unusable (a missing or mistyped key, a shard entry that is not
    where the layout puts it), or ``None``. Entries must name their own file, so a manifest
    cannot point outside its folder."""
    for key, kind in _MANIFEST_TYPES.items():
        if not _has_type(manifest.get(key), kind):
            return f"key {key!r} is missing or has the wrong type"
    size, total = manifest["shard_size"], manifest["num_samples"]
    if size < 1 or total < 1:
        return "shard_size and num_samples must be positive"
    seen = set()
    for entry in manifest["shards"]:
        if not isinstance(entry, dict):
            return "a shard entry is not a mapping"
        for key, kind in _SHARD_TYPES.items():
            if not _has_type(entry.get(key), kind):
                return f"a shard entry's {key!r} is missing or not a {kind.__name__}"
        index = entry["index"]
        expected_count = min(size, total - index * size)
        if (
            index in seen
            or not 0 <= index < math.ceil(total / size)
            or entry["file"] != shard_name(index)
            or entry["start"] != index * size
            or entry["count"] != expected_count
        ):
            return (
                f"shard entry {index} ({entry['file']}, start {entry['start']}, count "
                f"{entry['count']}) is not shard {index} of {size} items out of {total}"
            )
        seen.add(index)
    return None


def _has_type(value: Any, kind: type | tuple[type, ...]) -> bool:
    """``isinstance``, except that a JSON ``true`` is not an int."""
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Stamp ``updated`` and write ``out/manifest.json`` atomically."""
    manifest["updated"] = now_utc()
    text = json.dumps(manifest, indent=2) + "\n"
    atomic_write(out / MANIFEST_NAME, lambda tmp: tmp.write_text(text))


def shard_problem(root: Path, entry: dict[str, Any]) -> str | None:
    """``None`` if the shard file exists with the manifest's size and sha256, else why not."""
    path = root / entry["file"]
    if not path.is_file():
        return f"teacher set shard missing: {path}"
    if path.stat().st_size != entry["bytes"]:
        return (
            f"teacher set shard {path} has {path.stat().st_size} bytes, but {root / MANIFEST_NAME} "
            f"says {entry['bytes']}: the shard or the manifest is damaged"
        )
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    if digest.hexdigest() != entry["sha256"]:
        return (
            f"teacher set shard {path} does not match its sha256 in {root / MANIFEST_NAME}: the "
            "shard or the manifest is damaged"
        )
    return None


def field_spec(tensor: Tensor) -> dict[str, Any]:
    """The per-item shape and dtype of a shard tensor, as the manifest's ``fields`` hold them."""
    return {"shape": list(tensor.shape[1:]), "dtype": dtype_name(tensor.dtype)}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` → ``"float32"``."""
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    """``"float32"`` → ``torch.float32``; an unknown name is a damaged manifest."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise GasSolverError(f"unknown dtype {name!r} in a teacher set manifest")
    return dtype


def jsonable(value: Any, what: str) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), or a clear ConfigError."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{what} must be JSON-serialisable: {err}") from err


def short(value: Any, limit: int = 80) -> str:
    """``value`` as text of at most ``limit`` characters, for error messages."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def now_utc() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
