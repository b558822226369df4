"""Teacher sets: the seeds, noises, conditions and many-step solver outputs a student learns from.

:func:`generate_teacher_set` runs a (classic, many-step) solver on the noise of every seed and
writes the results to a directory; :class:`TeacherSet` reads it back. The protocol follows the
paper (spec §3.3–3.4): teacher seeds 0–49999 by default (evaluation uses 50000+), training on the
*first* ``train_size`` items and validation on the *last* ``val_size`` (:meth:`TeacherSet.split`).

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

Shards and the manifest are written atomically (temporary file, fsync, ``os.replace``) and the
manifest is rewritten after every shard, so an interrupted run loses at most the shard it was
making: running the same call again keeps the finished shards whose checksum still matches and
makes only the rest. Under ``torchrun`` (:mod:`gas_solver.distributed`) the shards still to make
are dealt out in rounds, one per process (rank r makes the r-th of each round); after each round
rank 0 records the round's shards in the one manifest, so a killed run loses at most one round and
resumes with the same or another number of processes. Reading trusts nothing: :class:`TeacherSet`
refuses a manifest with a missing or mistyped key or a shard entry out of place (so every row comes
from a listed shard), and checks every shard's size and sha256 once, before the first tensor is
read. Shard bytes contain no time stamps, so the same seeds, model and solver give byte-identical
shards (and checksums) whatever the batch size or the interruptions.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_save
from torch import Tensor
from tqdm.auto import tqdm

from ..distributed import all_gather, barrier, broadcast, is_main, rank, show_progress, world_size
from ..errors import CheckpointMismatchError, ConfigError, GasSolverError, MissingAssetError
from ..models.base import DiffusionModel
from ..runtime import LOCK_FILE, atomic_write, resolve_device, run_metadata
from ..sampling import CondFn, Sampler, cond_to
from ..seeds import format_seeds, parse_seeds, seeded_noise

logger = logging.getLogger(__name__)

FORMAT = "gas-solver-teacher-set"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
IDENTITY_KEYS = ("model", "solver", "seeds", "shard_size", "dtype")


def shard_name(index: int) -> str:
    """File name of shard ``index``: ``shard-00000.safetensors``."""
    return f"shard-{index:05d}.safetensors"


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


def generate_teacher_set(
    model: DiffusionModel,
    out_dir: str | os.PathLike,
    seeds: str | Iterable[int],
    run_solver: Sampler,
    solver_spec: dict[str, Any],
    *,
    batch_size: int = 64,
    shard_size: int = 1000,
    cond_fn: CondFn | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
    progress: bool = True,
    command: str | Sequence[str] | None = None,
) -> TeacherSet:
    """Run ``run_solver`` on the noise of every seed and store a teacher set in ``out_dir``.

    Args:
        model: the frozen model, passed on to ``run_solver``; ``model.identity()`` is recorded.
        out_dir: the set's directory (created if needed).
        seeds: EDM-style text (``"0-49999"``) or integers; the order of the list is the order
            of the items (and so decides what :meth:`TeacherSet.split` calls first and last).
        run_solver: ``run_solver(model, noise, cond) -> target`` with ``noise: (B, *sample_shape)``
            on ``device`` (a copy: it may be changed in place) and ``target`` of the same shape.
            It is called under ``torch.no_grad()``.
        solver_spec: JSON-able description of the solver (kind, steps, order, grid, …); it is
            part of the set's identity.
        batch_size: items per ``run_solver`` call. Batches never cross shards and do not change
            the noise; the targets are identical as long as the model is batch-invariant.
        shard_size: items per shard file (part of the set's layout, hence of its identity).
        cond_fn: ``cond_fn(seeds) -> cond`` for conditional models, e.g. ImageNet labels
            ``lambda s: s % 1000``; returns a ``(B, …)`` tensor, a dict of them, or ``None``.
        device: where the noise and conditions go; by default the model's device. The model
            itself is not moved.
        dtype: dtype of the noise given to the solver (noise is drawn in float32, then cast).
        overwrite: replace an existing set with a different identity (only this module's files
            are deleted) instead of raising :class:`CheckpointMismatchError`.
        progress: show a tqdm bar over the items.
        command: the command line that asked for this set, recorded in the manifest
            (default: this process's ``sys.argv``).

    Returns:
        The finished :class:`TeacherSet`.

    Raises:
        ConfigError: bad arguments, a non-JSON-able ``solver_spec``, a ``run_solver`` or
            ``cond_fn`` result of the wrong type or shape, a non-empty ``out_dir`` that is not a
            teacher set.
        CheckpointMismatchError: ``out_dir`` holds a set of another model, solver, seed list,
            shard size or dtype (and ``overwrite`` is false).
    """
    seed_list = parse_seeds(seeds)
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    device = _resolve_device(model, device)
    identity = {
        "model": _jsonable(model.identity(), "model.identity()"),
        "solver": _jsonable(solver_spec, "solver_spec"),
        "seeds": format_seeds(seed_list),
        "shard_size": shard_size,
        "dtype": _dtype_name(dtype),
    }
    if isinstance(command, (list, tuple)):
        command = shlex.join(str(c) for c in command)
    elif command is None:
        command = run_metadata()["command"]  # this process's sys.argv
    out = Path(out_dir)
    # rank 0 opens (and checks) the folder; every rank then plans from the same manifest
    manifest = _open_or_start(out, identity, seed_list, model, overwrite) if is_main() else None
    manifest = broadcast(manifest)
    plan = [
        (index, start, seed_list[start : start + shard_size])
        for index, start in enumerate(range(0, len(seed_list), shard_size))
    ]
    done = {entry["index"] for entry in manifest["shards"]}
    todo = [item for item in plan if item[0] not in done]
    if not todo and manifest["complete"]:
        logger.info("teacher set %s is already complete (%d items)", out, len(seed_list))
        return TeacherSet(out)
    processes = world_size()
    run = {
        "started": _now(),
        "command": command,
        "device": str(device),
        "batch_size": batch_size,
        "processes": processes,
        "shards_made": 0,
    }
    manifest["runs"].append(run)
    manifest["command"] = command
    logger.info(
        "teacher set %s: %d items in %d shards, %d finished, making %d (batch %d, device %s, "
        "%d process(es))",
        out, len(seed_list), len(plan), len(done), len(todo), batch_size, device, processes,
    )  # fmt: skip
    if is_main():
        _write_manifest(out, manifest)

    done_items = sum(entry["count"] for entry in manifest["shards"])
    with (
        torch.no_grad(),
        tqdm(
            total=len(seed_list),
            initial=done_items,
            unit="sample",
            desc="teacher",
            disable=not show_progress(progress),
        ) as bar,
    ):
        # rounds of one shard per process; after each, rank 0 records every rank's shards
        for first in range(0, len(todo), processes):
            this_round = todo[first : first + processes]
            made = None
            if rank() < len(this_round):
                index, start, shard_seeds = this_round[rank()]
                tensors = _make_shard(
                    model, shard_seeds, run_solver, cond_fn, batch_size, device, dtype, bar
                )
                fields = {k: _field_spec(t) for k, t in tensors.items()}
                _check_fields(manifest, fields, out)
                made = (_write_shard(out, index, start, shard_seeds, tensors), fields)
            for entry, fields in filter(None, all_gather(made)):
                _check_fields(manifest, fields, out)
                manifest["shards"].append(entry)
                run["shards_made"] += 1
                if made is None or entry["index"] != made[0]["index"]:
                    bar.update(entry["count"])  # another rank's items
            manifest["shards"].sort(key=lambda entry: entry["index"])
            if is_main():
                _write_manifest(out, manifest)

    manifest["complete"] = True
    manifest["completed"] = _now()
    if is_main():
        _write_manifest(out, manifest)
    barrier()  # every rank returns the finished set
    logger.info("teacher set %s complete: %d items", out, len(seed_list))
    return TeacherSet(out)


def _write_shard(
    out: Path, index: int, start: int, seeds: list[int], tensors: dict[str, Tensor]
) -> dict[str, Any]:
    """Write shard ``index`` atomically; returns its manifest entry."""
    data = safetensors_save(tensors, metadata=_shard_metadata(index))
    atomic_write(out / shard_name(index), lambda tmp: tmp.write_bytes(data))
    logger.debug("wrote %s (%d items)", shard_name(index), len(seeds))
    return {
        "index": index,
        "file": shard_name(index),
        "start": start,
        "count": len(seeds),
        "seeds": format_seeds(seeds),
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
    }


def _make_shard(
    model: DiffusionModel,
    seeds: list[int],
    run_solver: Sampler,
    cond_fn: CondFn | None,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    bar: tqdm,
) -> dict[str, Tensor]:
    """All tensors of one shard, computed batch by batch (batches never cross shards)."""
    parts: dict[str, list[Tensor]] = {}
    for begin in range(0, len(seeds), batch_size):
        batch = seeds[begin : begin + batch_size]
        seed_tensor = torch.tensor(batch, dtype=torch.int64)
        noise = seeded_noise(batch, model.sample_shape, dtype=dtype)
        cond = cond_fn(seed_tensor.clone()) if cond_fn is not None else None
        stored_cond = _flatten_cond(cond, len(batch))
        target = run_solver(model, noise.to(device, copy=True), cond_to(cond, device))
        expected = (len(batch), *model.sample_shape)
        if not isinstance(target, Tensor) or tuple(target.shape) != expected:
            got = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
            raise ConfigError(f"run_solver returned {got}, expected a tensor of shape {expected}")
        target = target.detach().to("cpu").contiguous()
        if not bool(torch.isfinite(target).all()):
            logger.warning("run_solver gave non-finite values for seeds %s", format_seeds(batch))
        row = {"seed": seed_tensor, "noise": noise, "target": target, **stored_cond}
        if parts and set(row) != set(parts):
            raise ConfigError("cond_fn must return the same kind of condition for every batch")
        for key, value in row.items():
            parts.setdefault(key, []).append(value)
        bar.update(len(batch))
    return {key: torch.cat(values).contiguous() for key, values in parts.items()}


def _flatten_cond(cond: Any, batch: int) -> dict[str, Tensor]:
    """The shard tensors of a condition: ``{}``, ``{"cond": t}`` or ``{"cond.<name>": t, …}``."""
    if cond is None:
        return {}
    items = {"cond": cond} if isinstance(cond, Tensor) else None
    if isinstance(cond, dict) and cond:
        for name in cond:
            if not isinstance(name, str) or not name or "." in name:
                raise ConfigError(
                    f"cond_fn dict keys must be non-empty names without '.', got {name!r}"
                )
        items = {f"cond.{name}": value for name, value in cond.items()}
    if items is None or not all(isinstance(v, Tensor) for v in items.values()):
        raise ConfigError(
            "cond_fn must return None, a tensor or a non-empty dict of tensors "
            f"(other conditions, e.g. text, are not supported yet), got {type(cond).__name__}"
        )
    out = {}
    for key, value in items.items():
        if value.dim() == 0 or value.shape[0] != batch:
            raise ConfigError(
                f"cond_fn gave {key} of shape {tuple(value.shape)} for {batch} seeds; "
                "the first dimension must be the batch"
            )
        out[key] = value.detach().to("cpu", copy=True).contiguous()  # run_solver may edit cond
    return out


def _check_fields(manifest: dict[str, Any], fields: dict[str, dict], out: Path) -> None:
    """Record the per-item layout on the first shard; later shards must have the same one."""
    if manifest.get("fields") is None:
        manifest["fields"] = fields
        manifest["cond_kind"] = "none"
        if "cond" in fields:
            manifest["cond_kind"] = "tensor"
        elif any(key.startswith("cond.") for key in fields):
            manifest["cond_kind"] = "dict"
        return
    if manifest["fields"] != fields:
        raise CheckpointMismatchError(
            f"the teacher set in {out} stores {manifest['fields']} per item but this run "
            f"produces {fields}; cond_fn or run_solver changed. Use the original ones, or pass "
            "overwrite=True (--overwrite) to start the set again"
        )


def _open_or_start(
    out: Path,
    identity: dict[str, Any],
    seeds: list[int],
    model: DiffusionModel,
    overwrite: bool,
) -> dict[str, Any]:
    """The manifest to continue (finished shards verified) or a fresh one."""
    manifest_path = out / MANIFEST_NAME
    if out.exists() and not out.is_dir():
        raise ConfigError(f"teacher set output {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    _remove_temporaries(out)
    existing = None
    if manifest_path.exists():
        try:
            existing = _read_manifest(manifest_path)
        except GasSolverError:
            if not overwrite:
                raise
            logger.warning("overwrite: replacing the unreadable %s", manifest_path)
            _remove_set_files(out)
    elif any(p.name != LOCK_FILE for p in out.iterdir()):  # the command's lock may be there
        raise ConfigError(
            f"{out} is not empty and has no {MANIFEST_NAME}, so it is not a teacher set; "
            "choose an empty or new directory"
        )
    if existing is not None:
        diff = _identity_diff(existing, identity)
        if diff and overwrite:
            logger.warning("overwrite: replacing the teacher set in %s (%s)", out, "; ".join(diff))
            _remove_set_files(out)
            existing = None
        elif diff:
            raise CheckpointMismatchError(
                f"{manifest_path} belongs to a different teacher set: {'; '.join(diff)}. "
                "Pass overwrite=True (--overwrite) to replace it, or choose another directory"
            )
    if existing is not None:
        kept = []
        for entry in existing["shards"]:
            problem = _shard_problem(out, entry)
            if problem is None:
                kept.append(entry)
            else:
                logger.warning("%s; it will be made again", problem)
        if len(kept) < len(existing["shards"]):
            existing["complete"] = False
        existing["shards"] = kept
        if not kept:
            existing["fields"] = None
        return existing
    meta = run_metadata()
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "complete": False,
        **identity,
        "model_source": model.source,
        "num_samples": len(seeds),
        "sample_shape": list(model.sample_shape),
        "fields": None,
        "cond_kind": None,
        "shards": [],
        "created": meta["created"],
        "completed": None,
        "gas_solver_version": meta["gas_solver_version"],
        "torch_version": meta["torch_version"],
        "python": meta["python"],
        "command": meta["command"],
        "runs": [],
    }


def _identity_diff(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    diff = []
    for key in IDENTITY_KEYS:
        old, new = stored.get(key), wanted[key]
        if old == new:
            continue
        if key == "seeds":
            n_old = len(parse_seeds(old)) if isinstance(old, str) and old else 0
            diff.append(
                f"seeds differ (stored {n_old}: {_short(old)}; asked "
                f"{len(parse_seeds(new))}: {_short(new)})"
            )
        else:
            diff.append(f"{key} differs (stored {_short(old)}; asked {_short(new)})")
    return diff


def _remove_temporaries(out: Path) -> None:
    for path in out.glob(".*.tmp"):
        if path.name.startswith((".shard-", f".{MANIFEST_NAME}.")):
            logger.debug("removing leftover %s", path)
            path.unlink(missing_ok=True)


def _remove_set_files(out: Path) -> None:
    """Delete this module's files only (shards, manifest), never anything else in ``out``."""
    for path in out.glob("shard-*.safetensors"):
        path.unlink()
    (out / MANIFEST_NAME).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


class TeacherSet:
    """A finished teacher set on disk (see the module docstring for the format).

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
        self.manifest: dict[str, Any] = _read_manifest(manifest_path)
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
            problem = _shard_problem(self.path, entry)
            if problem is not None:
                path = self.path / entry["file"]
                error = MissingAssetError if not path.exists() else GasSolverError
                raise error(f"{problem}; make the set again (same call with overwrite=True)")
        self._verified = True

    def check_model(self, model: DiffusionModel) -> None:
        """Raise :class:`CheckpointMismatchError` if the set was made with another model."""
        stored, given = self.manifest["model"], _jsonable(model.identity(), "model.identity()")
        if stored != given:
            keys = sorted(k for k in set(stored) | set(given) if stored.get(k) != given.get(k))
            details = "; ".join(
                f"{k}: set {_short(stored.get(k))}, model {_short(given.get(k))}" for k in keys
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
        dtype = _dtype_from_name(spec["dtype"])
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


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _shard_metadata(index: int) -> dict[str, str]:
    # One key only: safetensors writes several metadata keys in a varying order, and shard bytes
    # must be reproducible.
    info = {"format": FORMAT, "format_version": FORMAT_VERSION, "shard": index}
    return {"gas_solver": json.dumps(info, sort_keys=True)}


def _read_manifest(path: Path) -> dict[str, Any]:
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


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    manifest["updated"] = _now()
    text = json.dumps(manifest, indent=2) + "\n"
    atomic_write(out / MANIFEST_NAME, lambda tmp: tmp.write_text(text))


def _shard_problem(root: Path, entry: dict[str, Any]) -> str | None:
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


def _resolve_device(model: DiffusionModel, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return resolve_device(str(device))
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _field_spec(tensor: Tensor) -> dict[str, Any]:
    return {"shape": list(tensor.shape[1:]), "dtype": _dtype_name(tensor.dtype)}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise GasSolverError(f"unknown dtype {name!r} in a teacher set manifest")
    return dtype


def _jsonable(value: Any, what: str) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), or a clear ConfigError."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{what} must be JSON-serialisable: {err}") from err


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
