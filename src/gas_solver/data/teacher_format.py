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
``shard_size``, ``dtype``: the samples' dtype, ``compute_dtype``: the dtype the network ran in,
:attr:`~gas_solver.models.base.DiffusionModel.compute_dtype`; a manifest without it is from
before ``--dtype`` and was made in float32), ``num_samples``, ``sample_shape``, ``fields`` (per-item shape and dtype
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError, CorruptFileError, GasSolverError
from ..models.base import COMPUTE_DTYPES
from ..outputs import atomic_write
from ..validation import (
    BIG,
    Invalid,
    all_of,
    boolean,
    choice,
    dict_of,
    field_problem,
    integer,
    list_of,
    mapping,
    nullable,
    parse_json,
    quote,
    rule,
    text,
)

FORMAT = "gas-solver-teacher-set"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
IDENTITY_KEYS = ("model", "solver", "seeds", "shard_size", "dtype", "compute_dtype")
DEFAULT_COMPUTE_DTYPE = "float32"
"""The network's dtype of a manifest that records none (made before ``--dtype``)."""


def identity_value(manifest: dict[str, Any], key: str) -> Any:
    """The manifest's value of identity key ``key``; ``compute_dtype`` defaults to
    :data:`DEFAULT_COMPUTE_DTYPE`."""
    if key == "compute_dtype":
        return manifest.get(key, DEFAULT_COMPUTE_DTYPE)
    return manifest.get(key)


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
    """The manifest at ``path``, or a :class:`GasSolverError` saying why it cannot be used: JSON
    read by :func:`~gas_solver.validation.parse_json`, then checked against
    :data:`MANIFEST_SCHEMA`."""
    try:
        text = path.read_bytes()
    except OSError as err:
        raise GasSolverError(f"cannot read teacher set manifest {path}: {err}") from err
    try:
        manifest = parse_json(text, path, max_bytes=MANIFEST_MAX_BYTES)
    except CorruptFileError as err:
        raise CorruptFileError(f"cannot read teacher set manifest {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise GasSolverError(f"{path} is not a gas-solver teacher set manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise GasSolverError(
            f"{path} has teacher-set format version {quote(version)}; this gas-solver reads "
            f"version {FORMAT_VERSION}"
        )
    try:
        MANIFEST_SCHEMA(manifest)
    except Invalid as err:
        raise CorruptFileError(
            f"{path} is damaged ({field_problem(err)}); make the set again (same call with "
            "--overwrite)"
        ) from None
    return manifest


SAFETENSORS_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
    "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
}  # fmt: skip
"""The dtypes a shard may hold: manifest name → the name in a safetensors header."""
MAX_ITEMS = 2**40
"""Far more items than any teacher set holds (the paper's have 50 000)."""
MANIFEST_MAX_BYTES = 64 << 20


def _shards_in_place(manifest: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Each shard entry where the layout puts it: its own file name (so no entry points outside
    the folder), first item and count, no index twice."""
    size, total = manifest["shard_size"], manifest["num_samples"]
    seen = set()
    for number, entry in enumerate(manifest["shards"]):
        index = entry["index"]
        if (
            index in seen
            or index >= math.ceil(total / size)
            or entry["file"] != shard_name(index)
            or entry["start"] != index * size
            or entry["count"] != min(size, total - index * size)
        ):
            yield (
                f"shards[{number}]",
                f"holds shard entry {index} ({quote(entry['file'], 40)}, start {entry['start']}, "
                f"count {entry['count']}), which is not shard {index} of {size} items out of {total}",
            )
        seen.add(index)


def _fields_agree(manifest: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """A finished layout (``fields`` set) has seed, noise and target, noise and target of
    ``sample_shape``, and a ``cond_kind`` that names its condition fields."""
    fields = manifest["fields"]
    if fields is None:
        return
    for key in ("seed", "noise", "target"):
        if key not in fields:
            yield "fields", f"lacks {key!r}"
            return
    if fields["seed"] != {"shape": [], "dtype": "int64"}:
        yield (
            "fields.seed",
            f"must be {{'shape': [], 'dtype': 'int64'}}, got {quote(fields['seed'])}",
        )
    for key in ("noise", "target"):
        if fields[key]["shape"] != manifest["sample_shape"]:
            yield (
                f"fields.{key}.shape",
                f"must equal sample_shape {quote(manifest['sample_shape'])}",
            )
    kind = (
        "tensor"
        if "cond" in fields
        else "dict"
        if any(k.startswith("cond.") for k in fields)
        else "none"
    )
    if manifest.get("cond_kind") != kind:
        yield "cond_kind", f"must be {kind!r} for fields {quote(sorted(fields))}"


_SHAPE = list_of(integer(1, MAX_ITEMS), 0, 8)
MANIFEST_SCHEMA = all_of(
    mapping({
        "complete": boolean,
        "num_samples": integer(1, MAX_ITEMS),
        "shard_size": integer(1, MAX_ITEMS),
        "seeds": text(),
        "sample_shape": _SHAPE,
        "fields": nullable(dict_of(
            mapping({"shape": _SHAPE, "dtype": choice(*SAFETENSORS_DTYPES)}), keys=text(64)
        )),
        "cond_kind?": nullable(choice("none", "tensor", "dict")),
        "shards": list_of(mapping({
            "index": integer(0, MAX_ITEMS), "file": text(64), "start": integer(0, MAX_ITEMS),
            "count": integer(1, MAX_ITEMS), "seeds": text(), "sha256": text(64),
            "bytes": integer(1, BIG),
        })),
        "model": mapping(),
        "solver": mapping(),
        "dtype?": choice("float64", "float32", "float16", "bfloat16"),
        "compute_dtype?": choice(*COMPUTE_DTYPES),
        "model_source?": nullable(text(4096)),
    }),
    rule(_shards_in_place),
    rule(_fields_agree),
)  # fmt: skip
"""What :func:`read_manifest` accepts: every key a reader uses with its type and range, the shard
entries in their places, and a consistent per-item layout (``fields``). That the shards hold
what it says is :class:`~gas_solver.data.teacher_set.TeacherSet`'s check when it opens the set."""


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
    dtype = getattr(torch, name, None) if name in SAFETENSORS_DTYPES else None
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
