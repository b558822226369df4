"""Making teacher sets: seeds, noises, conditions and the many-step outputs a student learns from.

:func:`generate_teacher_set` runs a (classic, many-step) solver on the noise of every seed and
writes the results to a directory (format: :mod:`.teacher_format`); :class:`.TeacherSet` reads it
back. The protocol follows the paper (App. D.2, D.4): teacher seeds 0–49999 by default (evaluation
uses 50000+).

Shards and the manifest are written atomically and the manifest is rewritten after every shard, so
an interrupted run loses at most the shard it was making: running the same call again keeps the
finished shards whose checksum still matches and makes only the rest. Under ``torchrun``
(:mod:`gas_solver.distributed`) the shards still to make are dealt out in rounds, one per process
(rank r makes the r-th of each round); after each round rank 0 records the round's shards in the
one manifest, so a killed run loses at most one round and resumes with the same or another number
of processes. Shard bytes contain no time stamps, so the same seeds, model and solver give
byte-identical shards (and checksums) whatever the batch size or the interruptions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_save
from torch import Tensor
from tqdm.auto import tqdm

from ..distributed import all_gather, barrier, broadcast, is_main, rank, show_progress, world_size
from ..errors import CheckpointMismatchError, ConfigError, GasSolverError
from ..models.base import DiffusionModel
from ..outputs import LOCK_FILE, RUN_RECORD, atomic_write
from ..runtime import resolve_device, run_metadata
from ..sampling import CondFn, Sampler, cond_to
from ..seeds import format_seeds, parse_seeds, seeded_noise
from .teacher_format import (
    FORMAT,
    FORMAT_VERSION,
    IDENTITY_KEYS,
    MANIFEST_NAME,
    dtype_name,
    field_spec,
    identity_value,
    jsonable,
    now_utc,
    read_manifest,
    shard_metadata,
    shard_name,
    shard_problem,
    short,
    write_manifest,
)
from .teacher_set import TeacherSet

__all__ = ["MANIFEST_NAME", "TeacherSet", "generate_teacher_set", "shard_name"]

logger = logging.getLogger(__name__)


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
        model: the frozen model, passed on to ``run_solver``; ``model.identity()`` is recorded,
            and the dtype its network runs in (``model.compute_dtype``, part of the identity).
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
            shard size, dtype or network dtype (and ``overwrite`` is false).
    """
    seed_list = parse_seeds(seeds)
    identity = _identity(model, seed_list, solver_spec, batch_size, shard_size, dtype)
    device = _resolve_device(model, device)
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
    run = {
        "started": now_utc(),
        "command": _command_line(command),
        "device": str(device),
        "batch_size": batch_size,
        "processes": world_size(),
        "shards_made": 0,
    }
    manifest["runs"].append(run)
    manifest["command"] = run["command"]
    logger.info(
        "teacher set %s: %d items in %d shards, %d finished, making %d (batch %d, device %s, "
        "%d process(es))",
        out, len(seed_list), len(plan), len(done), len(todo), batch_size, device, world_size(),
    )  # fmt: skip
    if is_main():
        write_manifest(out, manifest)
    maker = _ShardMaker(model, run_solver, cond_fn, batch_size, device, dtype)
    with torch.no_grad(), tqdm(
        total=len(seed_list), initial=sum(entry["count"] for entry in manifest["shards"]),
        unit="sample", desc="teacher", disable=not show_progress(progress),
    ) as bar:  # fmt: skip
        _make_shards(out, manifest, run, todo, maker, bar)
    manifest["complete"] = True
    manifest["completed"] = now_utc()
    if is_main():
        write_manifest(out, manifest)
    barrier()  # every rank returns the finished set
    logger.info("teacher set %s complete: %d items", out, len(seed_list))
    return TeacherSet(out)


def _identity(
    model: DiffusionModel,
    seeds: list[int],
    solver_spec: dict[str, Any],
    batch_size: int,
    shard_size: int,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """What makes a teacher set this one (model, solver, seeds, layout, dtype), after checking
    the arguments."""
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    return {
        "model": jsonable(model.identity(), "model.identity()"),
        "solver": jsonable(solver_spec, "solver_spec"),
        "seeds": format_seeds(seeds),
        "shard_size": shard_size,
        "dtype": dtype_name(dtype),
        "compute_dtype": model.compute_dtype,
    }


def _command_line(command: str | Sequence[str] | None) -> str:
    """The command recorded in the manifest (default: this process's ``sys.argv``)."""
    if isinstance(command, (list, tuple)):
        return shlex.join(str(c) for c in command)
    return run_metadata()["command"] if command is None else str(command)


@dataclasses.dataclass
class _ShardMaker:
    """How one shard's items are made: the solver on the seeds' noise and conditions."""

    model: DiffusionModel
    run_solver: Sampler
    cond_fn: CondFn | None
    batch_size: int
    device: torch.device
    dtype: torch.dtype

    def make(self, seeds: list[int], bar: tqdm) -> dict[str, Tensor]:
        """All tensors of one shard, computed batch by batch (batches never cross shards)."""
        parts: dict[str, list[Tensor]] = {}
        for begin in range(0, len(seeds), self.batch_size):
            batch = seeds[begin : begin + self.batch_size]
            seed_tensor = torch.tensor(batch, dtype=torch.int64)
            noise = seeded_noise(batch, self.model.sample_shape, dtype=self.dtype)
            cond = self.cond_fn(seed_tensor.clone()) if self.cond_fn is not None else None
            stored_cond = _flatten_cond(cond, len(batch))
            noise_here, cond_here = noise.to(self.device, copy=True), cond_to(cond, self.device)
            target = self.run_solver(self.model, noise_here, cond_here)
            expected = (len(batch), *self.model.sample_shape)
            if not isinstance(target, Tensor) or tuple(target.shape) != expected:
                got = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
                raise ConfigError(
                    f"run_solver returned {got}, expected a tensor of shape {expected}"
                )
            target = target.detach().to("cpu").contiguous()
            if not bool(torch.isfinite(target).all()):
                logger.warning(
                    "run_solver gave non-finite values for seeds %s", format_seeds(batch)
                )
            row = {"seed": seed_tensor, "noise": noise, "target": target, **stored_cond}
            if parts and set(row) != set(parts):
                raise ConfigError("cond_fn must return the same kind of condition for every batch")
            for key, value in row.items():
                parts.setdefault(key, []).append(value)
            bar.update(len(batch))
        return {key: torch.cat(values).contiguous() for key, values in parts.items()}


def _make_shards(
    out: Path,
    manifest: dict[str, Any],
    run: dict[str, Any],
    todo: list[tuple[int, int, list[int]]],
    maker: _ShardMaker,
    bar: tqdm,
) -> None:
    """Make the missing shards in rounds of one per process; after each round rank 0 records
    every rank's shards in the manifest (so a killed run keeps every finished round)."""
    processes = world_size()
    for first in range(0, len(todo), processes):
        this_round = todo[first : first + processes]
        made = None
        if rank() < len(this_round):
            index, start, shard_seeds = this_round[rank()]
            tensors = maker.make(shard_seeds, bar)
            fields = {k: field_spec(t) for k, t in tensors.items()}
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
            write_manifest(out, manifest)


def _write_shard(
    out: Path, index: int, start: int, seeds: list[int], tensors: dict[str, Tensor]
) -> dict[str, Any]:
    """Write shard ``index`` atomically; returns its manifest entry."""
    data = safetensors_save(tensors, metadata=shard_metadata(index))
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
            existing = read_manifest(manifest_path)
        except GasSolverError:
            if not overwrite:
                raise
            logger.warning("overwrite: replacing the unreadable %s", manifest_path)
            _remove_set_files(out)
    elif any(p.name not in (LOCK_FILE, RUN_RECORD) for p in out.iterdir()):  # the command's own
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
            problem = shard_problem(out, entry)
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
        old, new = identity_value(stored, key), wanted[key]
        if old == new:
            continue
        if key == "seeds":
            n_old = len(parse_seeds(old)) if isinstance(old, str) and old else 0
            diff.append(
                f"seeds differ (stored {n_old}: {short(old)}; asked "
                f"{len(parse_seeds(new))}: {short(new)})"
            )
        else:
            diff.append(f"{key} differs (stored {short(old)}; asked {short(new)})")
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


def _resolve_device(model: DiffusionModel, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return resolve_device(str(device))
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")
