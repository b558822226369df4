"""Reading a finished teacher set (:class:`TeacherSet`; the format is in :mod:`.teacher_format`).

Reading trusts nothing: the manifest is validated when the set is opened, and every shard's size
and sha256 are checked once, before the first tensor is read. The protocol follows the paper
(spec §3.3–3.4): training on the *first* ``train_size`` items and validation on the *last*
``val_size`` (:meth:`TeacherSet.split`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from ..errors import CheckpointMismatchError, ConfigError, GasSolverError, MissingAssetError
from ..models.base import DiffusionModel
from ..seeds import parse_seeds
from .teacher_format import (
    MANIFEST_NAME,
    dtype_from_name,
    jsonable,
    read_manifest,
    shard_problem,
    short,
)


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
        if indices != list(range(total)) or not isinstance(self.manifest["fields"], dict):
            missing = sorted(set(range(total)) - set(indices))
            raise GasSolverError(
                f"{manifest_path} says the set is complete but lists shards {indices} of "
                f"{total} (missing {missing}) or no fields; the manifest is damaged: make the set "
                "again (same call with --overwrite)"
            )
        self._cache: dict[str, Tensor] = {}
        self._verified = False

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

        As in the paper's code (spec §3.3), training uses the head of the set and validation its
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
        """Check every shard's size and sha256 against the manifest.

        Reading a field does this once per :class:`TeacherSet` (on the first field read), so
        a damaged shard is never used; call it directly to check a set without loading it.

        Raises:
            MissingAssetError: a shard file is missing (its path is named).
            GasSolverError: a shard's size or checksum differs (its path is named).
        """
        for entry in self.manifest["shards"]:
            problem = shard_problem(self.path, entry)
            if problem is not None:
                path = self.path / entry["file"]
                error = MissingAssetError if not path.exists() else GasSolverError
                raise error(f"{problem}; make the set again (same call with overwrite=True)")
        self._verified = True

    def check_model(self, model: DiffusionModel) -> None:
        """Raise :class:`CheckpointMismatchError` if the set was made with another model."""
        stored, given = self.manifest["model"], jsonable(model.identity(), "model.identity()")
        if stored != given:
            keys = sorted(k for k in set(stored) | set(given) if stored.get(k) != given.get(k))
            details = "; ".join(
                f"{k}: set {short(stored.get(k))}, model {short(given.get(k))}" for k in keys
            )
            raise CheckpointMismatchError(
                f"teacher set {self.path} was made with a different model ({details})"
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
