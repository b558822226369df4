"""Many processes under ``torchrun``: who am I, which work is mine, and putting results together.

``torchrun --nproc_per_node=K gas-solver COMMAND …`` starts K copies of a command with
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in their environment; :func:`init` joins them into
one ``torch.distributed`` process group (Gloo for CPU tensors, plus NCCL for CUDA tensors when
CUDA is present: the backend string ``"cpu:gloo,cuda:nccl"``). Without that environment, or
with ``WORLD_SIZE=1``, nothing is initialised and every helper here is the single-process
identity, so library code calls them unconditionally.

How work is split (so that the union of the outputs is the single-process output, bit for bit):
work comes in numbered units whose composition does not depend on K (teacher-set shards,
sampling batches, Inception batches); rank ``r`` of ``K`` takes the units ``i`` with
``i mod K = r`` (:func:`owns`), and :func:`gather_ordered` puts every rank's results back in unit
order. Model outputs on a CPU may change at round-off with the batch's composition, which is why
the unit is a whole batch, never a re-split of one. Training splits each global batch into K
contiguous equal slices (:func:`local_slice`) and averages gradients (:func:`average_gradients`).

Only rank 0 logs below WARNING, shows progress bars (:func:`show_progress`) and writes files.
The ``gas-solver`` command calls :func:`init` itself; a Python script started by torchrun calls
it before the library functions (``generate_teacher_set``, ``compare``, ``train``, …).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .errors import ConfigError
from .outputs import folder_lock

log = logging.getLogger(__name__)

T = TypeVar("T")

TIMEOUT = datetime.timedelta(minutes=60)
"""How long a rank waits for the others at a collective (a slow shard or Inception pass)."""


def launched() -> bool:
    """Whether torchrun started this process as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init() -> bool:
    """Join the process group described by torchrun's environment; ``True`` if there is one.

    Does nothing (and returns ``False``) without ``WORLD_SIZE`` or with ``WORLD_SIZE=1``. With
    CUDA present, rank ``LOCAL_RANK`` is bound to ``cuda:LOCAL_RANK`` (so ``--device cuda`` or
    ``auto`` means that GPU). Ranks other than 0 log only warnings and errors.

    Raises:
        ConfigError: a process of a node would have no GPU of its own (``LOCAL_RANK`` ≥ the
            node's GPU count).
    """
    if not launched() or dist.is_initialized():
        return dist.is_initialized()
    backend = "gloo"
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"torchrun: LOCAL_RANK {local_rank}, but this node has "
                f"{torch.cuda.device_count()} GPU(s); use --nproc_per_node <= the GPU count (CPU "
                "processes on a GPU machine: hide the GPUs with CUDA_VISIBLE_DEVICES=)"
            )
        torch.cuda.set_device(local_rank)
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend, timeout=TIMEOUT)
    if not is_main():
        logging.getLogger().setLevel(logging.WARNING)
    log.info("torch.distributed: %d processes (%s)", world_size(), backend)
    return True


def close() -> None:
    """Leave the process group (if any), after the last collective."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this is rank 0, the one that logs, shows progress and writes files."""
    return rank() == 0


def show_progress(progress: bool) -> bool:
    """Whether to draw a progress bar: asked for, and this is rank 0."""
    return progress and is_main()


def owns(index: int) -> bool:
    """Whether unit ``index`` (a shard, a batch) is this rank's: ``index mod K == rank``."""
    return index % world_size() == rank()


def owned(items: Sequence[T]) -> list[T]:
    """This rank's items of a numbered list: ``items[rank::K]``."""
    return list(items[rank() :: world_size()])


def main_lock(
    folder: str | os.PathLike, fresh: bool = False
) -> contextlib.AbstractContextManager[Path]:
    """Rank 0: :func:`~gas_solver.outputs.folder_lock` on ``folder`` (one writer per folder);
    other ranks: no lock, they write nothing there or only what rank 0 dealt them."""
    return folder_lock(folder, fresh) if is_main() else contextlib.nullcontext(Path(folder))


def own_batches(items: Tensor, batch_size: int) -> Tensor:
    """This rank's batches of ``items`` (``rank``, ``rank + K``, … of ``batch_size`` rows each)
    concatenated in order: cut again into ``batch_size`` rows they are the same batches."""
    if world_size() == 1:
        return items
    parts = owned(items.split(batch_size))
    return torch.cat(parts) if parts else items[:0]


def barrier() -> None:
    """Wait until every rank gets here."""
    if dist.is_initialized():
        dist.barrier()


def broadcast(value: T) -> T:
    """Rank 0's ``value`` (any picklable object) on every rank."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(compute: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``compute(*args, **kwargs)`` on rank 0, its result on every rank (the others wait instead
    of repeating what every rank would compute alike, e.g. an FID's matrix square root)."""
    return broadcast(compute(*args, **kwargs) if is_main() else None)


def all_gather(value: T) -> list[T]:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    if not dist.is_initialized():
        return [value]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def gather_ordered(parts: dict[int, T]) -> list[T]:
    """Units computed by all ranks → one list in unit order, on every rank.

    Args:
        parts: this rank's results, keyed by unit index (e.g. batch number).

    Returns:
        The values of all ranks' ``parts`` sorted by index; with one process, ``parts``' values
        sorted by index.
    """
    merged: dict[int, T] = {}
    for each in all_gather(parts):
        merged.update(each)
    return [merged[index] for index in sorted(merged)]


def per_rank(batch_size: int) -> int:
    """The slice of a global batch each rank takes: ``B / K``.

    Raises:
        ConfigError: ``B`` is not a multiple of the number of processes ``K``.
    """
    k = world_size()
    if batch_size % k:
        raise ConfigError(
            f"batch_size: the global batch of {batch_size} does not split evenly over {k} "
            f"processes; use a multiple of {k}"
        )
    return batch_size // k


def local_slice(batch: Tensor) -> Tensor:
    """This rank's contiguous slice of a global batch ``(B, …)``: rows ``[r·B/K, (r+1)·B/K)``."""
    size = per_rank(len(batch))
    return batch[rank() * size : (rank() + 1) * size]


def all_mean(values: Tensor) -> Tensor:
    """The mean over ranks of ``values`` (a detached float64 copy; ``values`` unchanged)."""
    out = values.detach().to(torch.float64, copy=True)
    if dist.is_initialized():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= world_size()
    return out


def all_sum(values: Tensor) -> Tensor:
    """The sum over ranks of ``values`` (a detached float64 copy; ``values`` unchanged)."""
    out = values.detach().to(torch.float64, copy=True)
    if dist.is_initialized():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def mean_stats(stats: dict[str, float]) -> dict[str, float]:
    """Logged numbers averaged over ranks (means over equal slices: the global batch's means)."""
    if world_size() == 1 or not stats:
        return stats
    values = all_mean(torch.tensor(list(stats.values()), dtype=torch.float64))
    return dict(zip(stats, values.tolist(), strict=True))


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Replace each parameter's ``.grad`` by its mean over ranks (one all-reduce, in place).

    Each rank's loss is the mean over its ``B/K`` samples, so the mean of the K gradients is the
    gradient of the mean over the global batch of ``B`` (what one process computes). Parameters
    without a gradient are left alone (as the optimizer leaves them): every rank runs the same
    graph, so they are the same on every rank.
    """
    if not dist.is_initialized():
        return
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n
