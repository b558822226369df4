"""Reading a finished teacher set (:class:`TeacherSet`; the format is in :mod:`.teacher_format`).

Reading trusts nothing. When the set is opened, the manifest is validated
(:data:`~.teacher_format.MANIFEST_SCHEMA`) and checked against the shards' safetensors headers
(every field's rows, per-item shape and dtype) and their stored seeds, before anything is
allocated. Once, before the first tensor is read, every shard's size and sha256 are checked and
its floating-point tensors are checked for NaN and infinity (:meth:`TeacherSet.verify`). The protocol follows the paper
(paper App. D.2, D.4): training on the *first* ``train_size`` items and validation on the *last*
``val_size`` (:meth:`TeacherSet.split`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from ..errors import CheckpointMismatchError, ConfigError, GasSolverError, MissingAssetError
from ..models.base import DiffusionModel
from ..seeds import format_seeds, parse_seeds
from ..validation import quote
from .teacher_format import (
    DEFAULT_COMPUTE_DTYPE,
    IDENTITY_KEYS,
    MANIFEST_NAME,
    SAFETENSORS_DTYPES,
    dtype_from_name,
    identity_value,
    jsonable,
    read_manifest,
    shard_problem,
    short,
)

log = logging.getLogger(__name__)


class TeacherSet:
    """A finished teacher set on disk (the format: :mod:`.teacher_format`).

    Tensors are loaded lazily, one field at a time, and concatenated in seed-list order:

    * :attr:`seeds` ``(N,)`` int64, :attr:`noise` and :attr:`target` ``(N, *sample_shape)``,
    * :attr:`cond`: ``None``, a ``(N, …)`` tensor, or a dict of them.

    Args:
        path: the set's directory (or its ``manifest.json``).

    Raises:
        MissingAssetError: no manifest at ``path``.
        GasSolverError: an unreadable, foreign, newer-format or unfinished manifest.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        path = Path(path)
        self.path = path.parent if path.name == MANIFEST_NAME else path
        manifest_path = self.path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise MissingAssetError(
                f"teacher set not found: {manifest_path} does not exist; make it with "
                "`gas-solver teacher` (gas_solver.data.teacher.generate_teacher_set)"
            )
        self.manifest: dict[str, Any] = read_manifest(manifest_path)
        made = len(self.manifest["shards"])
        total = math.ceil(self.manifest["num_samples"] / self.manifest["shard_size"])
        if not self.manifest["complete"]:
            raise GasSolverError(
                f"teacher set {self.path} is unfinished ({made} of {total} shards); run the "
                "same generation again to complete it"
            )
        indices = [entry["index"] for entry in self.manifest["shards"]]
        if (
            len(indices) != total
            or indices != list(range(total))
            or not isinstance(self.manifest["fields"], dict)
        ):
            missing = sorted(set(range(min(total, len(indices) + 10))) - set(indices))
            raise GasSolverError(
                f"{manifest_path} says the set is complete but lists shards {quote(indices)} of "
                f"{total} (missing {quote(missing)}) or no fields; the manifest is damaged: make the set "
                "again (same call with --overwrite)"
            )
        self._cache: dict[str, Tensor] = {}
        self._verified = False
        self._check_shards()

    def __len__(self) -> int:
        return int(self.manifest["num_samples"])

    def __repr__(self) -> str:
        return (
            f"TeacherSet({str(self.path)!r}, items={len(self)}, "
            f"sample_shape={tuple(self.sample_shape)}, cond={self.manifest['cond_kind']})"
        )

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["sample_shape"])

    @property
    def model_source(self) -> str | None:
        """The name or path the model was loaded from (``model.source``), if it had one."""
        return self.manifest.get("model_source")

    @property
    def solver_spec(self) -> dict[str, Any]:
        return self.manifest["solver"]

    @property
    def compute_dtype(self) -> str:
        """The dtype the network ran in when the set was made (``--dtype``; float32 for sets
        made before it was recorded)."""
        return identity_value(self.manifest, "compute_dtype")

    def check_compute_dtype(self, dtype: str, allow: bool = False) -> None:
        """Refuse to train with the network in ``dtype`` on a set made in another one (the
        student would learn the difference between the two), or with ``allow`` only warn.

        Raises:
            CheckpointMismatchError: one line saying what to do.
        """
        if dtype == self.compute_dtype:
            return
        what = (
            f"teacher set {self.path} was made with the network in {self.compute_dtype}, and "
            f"this run calls it in {dtype}"
        )
        if allow:
            log.warning("%s (--allow-dtype-mismatch)", what)
            return
        raise CheckpointMismatchError(
            f"{what}: pass --dtype {self.compute_dtype}, make the teacher set again with "
            f"--dtype {dtype}, or pass --allow-dtype-mismatch to use it anyway"
        )

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the set's identity (model, solver, seeds, shard size, dtype, and the
        network's dtype unless float32, so float32 sets keep the digest they had before it was
        recorded) and of every shard's sha256: equal digests, equal data (the shards are checked
        against their sha256 before use)."""
        identity = {key: self.manifest.get(key) for key in IDENTITY_KEYS if key != "compute_dtype"}
        if self.compute_dtype != DEFAULT_COMPUTE_DTYPE:
            identity["compute_dtype"] = self.compute_dtype
        text = json.dumps(identity, sort_keys=True) + "".join(
            "\n" + entry["sha256"] for entry in self.manifest["shards"]
        )
        return hashlib.sha256(text.encode()).hexdigest()

    def provenance(self) -> dict[str, Any]:
        """What a solver trained on this set records of it: ``path``, ``solver``, ``seeds`` (so
        evaluation seeds can avoid them), ``compute_dtype`` and ``sha256`` (:attr:`digest`)."""
        return {
            "path": str(self.path),
            "solver": self.manifest.get("solver"),
            "seeds": self.manifest.get("seeds"),
            "compute_dtype": self.compute_dtype,
            "sha256": self.digest,
        }

    @property
    def seeds(self) -> Tensor:
        """``(N,)`` int64, checked against the manifest's seed list."""
        checked = "seed" in self._cache
        seeds = self._field("seed")
        if not checked and seeds.tolist() != parse_seeds(self.manifest["seeds"]):
            del self._cache["seed"]
            raise GasSolverError(
                f"teacher set {self.path}: the seeds in the shards do not match {MANIFEST_NAME}"
            )
        return seeds

    @property
    def noise(self) -> Tensor:
        """``(N, *sample_shape)`` initial noise x_T."""
        return self._field("noise")

    @property
    def target(self) -> Tensor:
        """``(N, *sample_shape)`` teacher outputs."""
        return self._field("target")

    @property
    def cond(self) -> Tensor | dict[str, Tensor] | None:
        """``None``, a ``(N, …)`` tensor, or a dict ``name -> (N, …)`` tensor."""
        kind = self.manifest["cond_kind"]
        if kind == "tensor":
            return self._field("cond")
        if kind == "dict":
            keys = sorted(k for k in self.manifest["fields"] if k.startswith("cond."))
            return {key.removeprefix("cond."): self._field(key) for key in keys}
        return None

    def split(self, train_size: int, val_size: int) -> tuple[Tensor, Tensor]:
        """Item indices ``(train, val)``: the first ``train_size`` and the last ``val_size``.

        As in the paper's code (its ``training.py``), training uses the head of the set and validation its
        tail, so a set made with more seeds keeps the same validation items only if it has the
        same length. Both are ``int64`` tensors in increasing order.

        Raises:
            ConfigError: negative sizes, ``train_size < 1``, or the two parts overlapping
                (``train_size + val_size > len(self)``).
        """
        for name, value in (("train_size", train_size), ("val_size", val_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        if train_size < 1:
            raise ConfigError("train_size must be at least 1")
        n = len(self)
        if train_size + val_size > n:
            raise ConfigError(
                f"train_size + val_size = {train_size} + {val_size} exceeds the {n} items of "
                f"teacher set {self.path}: training takes the first items and validation the "
                "last, and they must not overlap"
            )
        return torch.arange(train_size), torch.arange(n - val_size, n)

    def verify(self) -> None:
        """Check every shard's size and sha256 against the manifest, and every floating-point
        value in it for NaN and infinity (each shard hashed in blocks, then its fields read one
        at a time: two reads of the file, the second mostly from the page cache).

        Reading a field does this once per :class:`TeacherSet` (on the first field read), so
        a damaged shard, or an item a diverged teacher left non-finite, is never used; call it
        directly to check a set without loading it.

        Raises:
            MissingAssetError: a shard file is missing (its path is named).
            GasSolverError: a shard's size or checksum differs, or it holds a non-finite value
                (the shard, field, item and seed are named).
        """
        for entry in self.manifest["shards"]:
            problem = shard_problem(self.path, entry)
            if problem is not None:
                path = self.path / entry["file"]
                error = MissingAssetError if not path.exists() else GasSolverError
                raise error(f"{problem}; make the set again (same call with overwrite=True)")
            self._check_finite(entry)
        self._verified = True

    def _check_finite(self, entry: dict[str, Any]) -> None:
        path = self.path / entry["file"]
        with safe_open(str(path), framework="pt") as f:
            for key in sorted(self.manifest["fields"]):
                value = f.get_tensor(key)
                if not value.is_floating_point():
                    continue
                bad = ~torch.isfinite(value.reshape(len(value), -1)).all(dim=1)
                if bool(bad.any()):
                    row = int(bad.nonzero()[0])
                    seed = int(f.get_tensor("seed")[row])
                    raise GasSolverError(
                        f"teacher set shard {path}: {key!r} of item {entry['start'] + row} "
                        f"(seed {seed}; {int(bad.sum())} item(s) in this shard) is NaN or "
                        "infinite: the teacher solver diverged there. Make the set again with "
                        "a more stable teacher (--solver) or without those seeds"
                    )

    def _check_shards(self) -> None:
        """The shards hold what the manifest says, read from their safetensors headers (no
        tensor data but the seeds): exactly the ``fields``, each with ``count`` rows of its
        per-item shape and dtype, and the seeds of the entry's ``seeds``, which in shard order
        are the manifest's ``seeds``.

        Raises:
            MissingAssetError: a shard file is missing.
            GasSolverError: a shard that cannot be read or does not match (file and field named).
        """
        manifest_path, fields = self.path / MANIFEST_NAME, self.manifest["fields"]
        stored = []
        for entry in self.manifest["shards"]:
            path = self.path / entry["file"]
            if not path.is_file():
                raise MissingAssetError(
                    f"teacher set shard missing: {path}; make the set again (same call with "
                    "--overwrite)"
                )
            try:
                with safe_open(str(path), framework="pt") as f:
                    layout = {
                        key: (f.get_slice(key).get_shape(), f.get_slice(key).get_dtype())
                        for key in f.keys()  # noqa: SIM118 (not a dict)
                    }
                    expected = {
                        key: ([entry["count"], *spec["shape"]], SAFETENSORS_DTYPES[spec["dtype"]])
                        for key, spec in fields.items()
                    }
                    if layout != expected:
                        key = next(
                            k for k in sorted(set(layout) | set(expected))
                            if layout.get(k) != expected.get(k)
                        )  # fmt: skip
                        raise GasSolverError(
                            f"teacher set shard {path}: {key!r} is {_show(layout.get(key))}, "
                            f"but {manifest_path} (fields, shards[{entry['index']}].count) says "
                            f"{_show(expected.get(key))}: the shard or the manifest is damaged; "
                            "make the set again (same call with --overwrite)"
                        )
                    seeds = f.get_tensor("seed").tolist()
            except (SafetensorError, OSError, ValueError) as err:
                raise GasSolverError(
                    f"teacher set shard {path} cannot be read ({quote(str(err))}); make the set "
                    "again (same call with --overwrite)"
                ) from err
            if format_seeds(seeds) != entry["seeds"]:
                raise GasSolverError(
                    f"{manifest_path}: key 'shards[{entry['index']}].seeds' says "
                    f"{quote(entry['seeds'])}, but {path} holds seeds {quote(format_seeds(seeds))}"
                    ": the manifest or the shard is damaged; make the set again"
                )
            stored += seeds
        if format_seeds(stored) != self.manifest["seeds"]:
            raise GasSolverError(
                f"{manifest_path}: key 'seeds' says {quote(self.manifest['seeds'])}, but the "
                f"shards hold seeds {quote(format_seeds(stored))}: the manifest was changed or "
                "is damaged; make the set again (same call with --overwrite)"
            )

    def check_model(self, model: DiffusionModel) -> None:
        """Raise :class:`CheckpointMismatchError` if the set was made with another model."""
        stored, given = self.manifest["model"], jsonable(model.identity(), "model.identity()")
        if stored != given:
            keys = sorted(k for k in set(stored) | set(given) if stored.get(k) != given.get(k))
            details = "; ".join(
                f"{k}: set {short(stored.get(k))}, model {short(given.get(k))}" for k in keys
            )
            hint = model.mismatch_hint(stored)
            raise CheckpointMismatchError(
                f"teacher set {self.path} was made with a different model"
                + (f": {hint}" if hint else "")
                + f" ({details})"
            )

    def _field(self, key: str) -> Tensor:
        if key in self._cache:
            return self._cache[key]
        if not self._verified:
            self.verify()
        spec = self.manifest["fields"].get(key)
        if spec is None:
            raise GasSolverError(f"teacher set {self.path} has no field {key!r}")
        dtype = dtype_from_name(spec["dtype"])
        out = torch.empty((len(self), *spec["shape"]), dtype=dtype)  # the shards cover every row
        for entry in self.manifest["shards"]:
            path = self.path / entry["file"]
            if not path.is_file():
                raise MissingAssetError(f"teacher set shard missing: {path}")
            try:
                with safe_open(str(path), framework="pt") as f:
                    value = f.get_tensor(key)
            except (SafetensorError, OSError, ValueError) as err:
                raise GasSolverError(
                    f"cannot read {key!r} from teacher set shard {path}: {err}; "
                    "TeacherSet.verify() checks every shard"
                ) from err
            expected = (entry["count"], *spec["shape"])
            if tuple(value.shape) != expected or value.dtype != dtype:
                raise GasSolverError(
                    f"teacher set shard {path}: {key!r} is {tuple(value.shape)} {value.dtype}, "
                    f"the manifest says {expected} {dtype}"
                )
            out[entry["start"] : entry["start"] + entry["count"]] = value
        self._cache[key] = out
        return out


def _show(layout: tuple[list[int], str] | None) -> str:
    """A tensor's ``(shape, safetensors dtype)`` for a message: ``[20, 2] F32`` or ``absent``."""
    return "absent" if layout is None else quote(layout[0], 80) + f" {layout[1]}"
