"""How long a row of a comparison takes to sample, and where that time goes.

A row's wall time mixes what the row costs with what the process pays once: the first batch of
the first row sampled meets a cold device (CUDA context, cuDNN autotuning, ``torch.compile``,
allocator growth, a solver's first-call set-up), and one demo run showed a GS row 16× slower than
UniPC at the same model calls for that alone. So each row is timed as follows:

* **warm-up**: the row's first batch (on each process, under torchrun) is its warm-up and is
  left out of the per-sample time; its samples are kept. A batch of a shape the row has not run
  yet (the last, smaller batch; the one batch of a row that has a single one) is first run once
  more, untimed and discarded (its model calls not counted), as its warm-up: a compiled network
  compiles again for a new shape, and cuDNN tunes anew.
* **ms per sample**: the wall time of the timed batches (the sampler's calls, the device
  synchronised on CUDA before and after each) over their number of samples; under torchrun the
  times and samples of all processes are summed (the cost of a sample on one process).
* **model share**: the part of that time spent inside the network's calls: the model's
  ``_network_output`` (the network, under autocast when ``compute_dtype`` is not float32) is
  timed on the instance for the row's duration, the device synchronised before and after each
  call on CUDA only (so solver kernels still queued are not counted as the network's, and the
  network's are not counted as the solver's). The rest, the **solver share**, is the solver's
  arithmetic between calls (its history, coefficients, the prediction-type conversion) and
  Python.
* **seconds**: the whole wall time of the row's sampling, warm-up included, as before.

The synchronisation around every call costs a CUDA row the overlap of the CPU's launches with the
GPU's work; on the CPU nothing changes (the calls run synchronously).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from ..distributed import all_sum
from ..models.base import DiffusionModel
from ..sampling import Sampler

MEASURED = "measured"
CACHED = "cached"
"""A row's ``timing``: sampled and timed in this run, or read from the sample cache (not timed)."""


@dataclasses.dataclass(frozen=True)
class SamplingTime:
    """A row's timing (the timing fields of :class:`~gas_solver.evaluation.report.Row`).

    Attributes:
        seconds: the whole wall time of sampling the row, warm-up included (a cached row: the
            time recorded when its samples were made).
        timing: :data:`MEASURED` or :data:`CACHED` (read from the sample cache, not timed here:
            the other fields are ``None``).
        ms_per_sample: wall milliseconds per sample after the warm-up batch.
        model_share: the share of that time inside the network's calls, in [0, 1];
            ``solver_share`` the rest (the solver's arithmetic).
        warmup_seconds: the warm-up batches' time (mean over processes under torchrun).
        timed_samples: the samples ``ms_per_sample`` is measured on (all processes).
    """

    seconds: float
    timing: str = MEASURED
    ms_per_sample: float | None = None
    model_share: float | None = None
    solver_share: float | None = None
    warmup_seconds: float | None = None
    timed_samples: int | None = None

    @classmethod
    def cached(cls, seconds: float) -> SamplingTime:
        """A row read from the sample cache: its recorded seconds, nothing timed in this run."""
        return cls(seconds, CACHED)

    def fields(self) -> dict[str, Any]:
        """The row fields (``seconds``, ``timing``, ``ms_per_sample``, …)."""
        return dataclasses.asdict(self)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA only: the CPU runs synchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SamplingClock:
    """Times one row: the sampler's batches (:meth:`sampler`) and, inside them, the model's
    network calls (:meth:`watching`); :meth:`result` sums them over processes.

    ``single_batch``: this process samples one batch only, which is then run once more before,
    untimed, as the warm-up (see the module docstring); otherwise the first batch is the
    warm-up, and each later batch of a new shape is run once more before, untimed.
    """

    def __init__(self, model: DiffusionModel, single_batch: bool = False) -> None:
        self.model = model
        self.device = model.device
        self.single_batch = single_batch
        self.warmup_seconds: float | None = None
        self.timed_seconds = 0.0
        self.timed_samples = 0
        self.model_seconds = 0.0  # inside the network, in the timed batches only
        self._network_seconds = 0.0  # inside the network, all batches
        self._last_network = 0.0  # inside the network, in the last batch
        self._shapes: set[tuple[int, ...]] = set()  # the batch shapes run (warmed up) so far

    def sampler(self, sampler: Sampler) -> Sampler:
        """``sampler`` with each call (one batch) timed, after its warm-up (module docstring)."""

        def timed(model: DiffusionModel, noise: Tensor, cond: Any) -> Tensor:
            shape = tuple(noise.shape)
            first = self.warmup_seconds is None
            if shape not in self._shapes and not (first and not self.single_batch):
                calls = model.nfe  # an untimed run of this batch, discarded: the warm-up
                self._warm_up(self._call(sampler, model, noise, cond)[1])
                model.nfe = calls  # its model calls are not the row's
            self._shapes.add(shape)
            samples, seconds = self._call(sampler, model, noise, cond)
            if first and not self.single_batch:  # the row's first batch is its warm-up
                self._warm_up(seconds)
            else:
                self.timed_seconds += seconds
                self.timed_samples += shape[0]
                self.model_seconds += self._last_network
            return samples

        return timed

    def _warm_up(self, seconds: float) -> None:
        self.warmup_seconds = (self.warmup_seconds or 0.0) + seconds

    def _call(
        self, sampler: Sampler, model: DiffusionModel, noise: Tensor, cond: Any
    ) -> tuple[Tensor, float]:
        synchronize(self.device)
        network = self._network_seconds
        start = time.perf_counter()
        samples = sampler(model, noise, cond)
        synchronize(self.device)
        seconds = time.perf_counter() - start
        self._last_network = self._network_seconds - network
        return samples, seconds

    @contextlib.contextmanager
    def watching(self) -> Iterator[SamplingClock]:
        """Time the model's network calls (its ``_network_output``, on this instance only) until
        the block ends; the model is left as it was."""
        model = self.model
        had = "_network_output" in vars(model)
        previous = vars(model).get("_network_output")
        inner = model._network_output

        def network_output(x: Tensor, t: Tensor, cond: Any) -> Tensor:
            synchronize(self.device)
            start = time.perf_counter()
            try:
                output = inner(x, t, cond)
                synchronize(self.device)
                return output
            finally:
                self._network_seconds += time.perf_counter() - start

        object.__setattr__(model, "_network_output", network_output)
        try:
            yield self
        finally:
            if had:
                object.__setattr__(model, "_network_output", previous)
            else:
                del vars(model)["_network_output"]

    def result(self, seconds: float) -> SamplingTime:
        """The row's :class:`SamplingTime`, ``seconds`` its whole wall time on this process;
        the batch times are summed over processes (every rank must call it)."""
        warmed = self.warmup_seconds is not None
        totals = all_sum(torch.tensor([
            self.timed_seconds, float(self.timed_samples), self.model_seconds,
            self.warmup_seconds or 0.0, float(warmed),
        ], dtype=torch.float64)).tolist()  # fmt: skip
        timed_seconds, samples, model_seconds, warmup, processes = totals
        if samples == 0 or timed_seconds <= 0:
            ms = share = None
        else:
            ms = 1e3 * timed_seconds / samples
            share = min(max(model_seconds / timed_seconds, 0.0), 1.0)
        return SamplingTime(
            seconds=seconds,
            timing=MEASURED,
            ms_per_sample=ms,
            model_share=share,
            solver_share=None if share is None else 1.0 - share,
            warmup_seconds=warmup / processes if processes else None,
            timed_samples=int(samples),
        )


__all__ = ["CACHED", "MEASURED", "SamplingClock", "SamplingTime", "synchronize"]
