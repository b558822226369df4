"""Cost of one GS training iteration with a real (small) UNet: time, solver share, peak memory.

What is measured, for each NFE and with/without gradient checkpointing
(``GeneralizedSolver.forward(..., checkpoint=True)``):

* **s/iter**: one training iteration as the trainer does it: GS forward through the frozen
  network from fixed noise, per-sample L1 loss against a fixed random target, mean, backward into
  the GS parameters (the gradient goes through the network into the states and query times),
  Adam step. Warm-up iterations are excluded; the median of ``--iterations`` timed ones is shown.
* **solver share**: the same iteration, same solver, same code path (``DiffusionModel`` adapter,
  checkpoint wrapper, loss, Adam), with the UNet replaced by a stand-in network that costs
  next to nothing (``x · t/1000``, one elementwise product that still depends on ``x`` and on the
  query time ``t``). Its time is everything that is not the UNet, and share = stand-in time /
  real time. This is an *upper bound* on the solver's own arithmetic: it also counts the
  stand-in's product, the adapter's time handling, Python overhead, loss and optimizer. (The
  alternative, real time minus separately timed UNet calls, is a small difference of two large
  noisy numbers on a shared CPU, and can come out negative.)
* **peak MB**: the most tensor memory held at any moment of one iteration (run after the
  timed ones) beyond what existed before it (weights, inputs, optimizer state). On CUDA:
  ``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` before the iteration. On CPU:
  torch has no allocator statistics, so the iteration runs under ``torch.profiler`` with
  ``profile_memory=True`` and the peak is the largest ``total_allocated`` among its allocation
  events (the CPU allocator's running total of bytes allocated during profiling and not yet
  freed). **solver-only peak MB** is the same with the stand-in network: the memory the solver
  itself keeps (its states, data predictions and the intermediates its autograd graph saves).
* **peak RSS Δ MB** (CPU): a cross-check from the operating system. Each configuration runs in
  its own fresh subprocess; this is the process's peak RSS (``ru_maxrss``) minus its RSS after
  model construction, taken before the profiled iteration. It includes what the C allocator
  keeps: with glibc's default (dynamic mmap threshold) freed activation blocks stay on the heap,
  so RSS Δ grows with NFE even where the tensor peak does not; run with
  ``MALLOC_MMAP_THRESHOLD_=131072`` (slower) and it follows the tensor peak plus ~30 MB.

The model: a diffusers ``UNet2DModel`` (~1.1M parameters, 3×32×32, random weights: the cost does
not depend on the weights) wrapped as an ε-prediction :class:`DiffusionModel` on the DDPM linear
discrete schedule (β 1e-4 … 0.02, 1000 steps); the network sees the diffusers timestep
``t·1000 − 1``. Goals (the issue): solver share ≤ 2 %; with checkpointing, peak memory at the
largest NFE ≤ 1.3× that at the smallest.

Usage::

    python benchmarks/train_step.py                      # CPU/CUDA auto, batch 24, NFE 4 6 8 10
    python benchmarks/train_step.py --device cuda --iterations 10 --json train_step.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch
from diffusers import UNet2DModel
from torch import Tensor
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from gas_solver.models.base import DiffusionModel
from gas_solver.runtime import resolve_device, run_metadata
from gas_solver.schedules import DiscreteVPSchedule
from gas_solver.solvers.generalized import GeneralizedSolver
from gas_solver.training.losses import l1_loss

SAMPLE_SHAPE = (3, 32, 32)
MB = 2**20


class EpsilonUNet(DiffusionModel):
    """An ε-prediction UNet (or, with ``unet=None``, the near-zero-cost stand-in) on a DDPM schedule."""

    def __init__(self, schedule: DiscreteVPSchedule, unet: UNet2DModel | None) -> None:
        super().__init__(schedule, SAMPLE_SHAPE, "epsilon")
        self.unet = unet

    def network_output(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        timestep = t * self.schedule.num_train_timesteps - 1.0  # diffusers' discrete timesteps
        if self.unet is None:
            return x * (timestep * 1e-3).view(-1, 1, 1, 1)
        return self.unet(x, timestep, return_dict=False)[0]


def build_unet() -> UNet2DModel:
    """A small diffusers UNet: 3 levels (32, 64, 64 channels), attention at the lowest one."""
    return UNet2DModel(
        sample_size=SAMPLE_SHAPE[1],
        in_channels=SAMPLE_SHAPE[0],
        out_channels=SAMPLE_SHAPE[0],
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
    )


def rss_mb() -> float:
    """Current resident set size (Linux ``/proc``; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB
    except OSError:
        return peak_rss_mb()


def peak_rss_mb() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MB


def profiled_peak_mb(fn: Any) -> float:
    """Peak CPU tensor memory allocated while ``fn()`` runs, from the profiler's allocation events."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    peak, stack = 0, list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation:
            peak = max(peak, event.extra_fields.total_allocated)
    return peak / MB


def measure(nfe: int, checkpoint: bool, args: argparse.Namespace) -> dict[str, Any]:
    """Time and memory of one configuration (meant to run in a fresh process)."""
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    schedule = DiscreteVPSchedule.from_beta_range(1e-4, 0.02, 1000, "linear")
    unet = build_unet()
    noise = torch.randn(args.batch, *SAMPLE_SHAPE).to(device)
    target = torch.randn(args.batch, *SAMPLE_SHAPE).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None

    def run(unet: UNet2DModel | None, iterations: int) -> tuple[list[float], float, float]:
        """Seconds of ``iterations`` timed steps, peak RSS so far, and the peak MB of one more."""
        model = EpsilonUNet(schedule, unet).to(device).eval().requires_grad_(False)
        solver = GeneralizedSolver(nfe, schedule).to(device)
        optimizer = torch.optim.Adam(solver.parameters(), lr=1e-3)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            loss = l1_loss(solver(model, noise, checkpoint=checkpoint), target).mean()
            loss.backward()
            optimizer.step()
            sync()

        for _ in range(args.warmup):
            step()
        times = []
        for _ in range(iterations):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        rss_peak = peak_rss_mb()  # before the profiled step: the profiler's records take memory
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            step()
            peak = (torch.cuda.max_memory_allocated(device) - base) / MB
        else:
            peak = profiled_peak_mb(step)
        return times, peak, rss_peak

    rss_base = rss_mb()
    times, peak, rss_peak = run(unet, args.iterations)
    # The stand-in is cheap: time more iterations of it for a steadier median.
    overhead_times, overhead_peak, _ = run(None, 3 * args.iterations)
    seconds, overhead = statistics.median(times), statistics.median(overhead_times)
    return {
        "nfe": nfe,
        "checkpoint": checkpoint,
        "seconds_per_iter": seconds,
        "seconds_all": times,
        "solver_seconds_per_iter": overhead,
        "solver_share": overhead / seconds,
        "peak_mb": peak,
        "solver_only_peak_mb": overhead_peak,
        "peak_rss_delta_mb": rss_peak - rss_base if device.type == "cpu" else None,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
    }


def run_in_subprocess(nfe: int, checkpoint: bool, argv: list[str]) -> dict[str, Any]:
    """Run :func:`measure` in a fresh interpreter so peak RSS belongs to one configuration."""
    job = json.dumps({"nfe": nfe, "checkpoint": checkpoint})
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--worker", job]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"configuration NFE {nfe}, checkpoint={checkpoint} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--nfe", type=int, nargs="+", default=[4, 6, 8, 10])
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0: torch's default); 1 keeps timings steady on shared machines",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        job = json.loads(args.worker)
        print(json.dumps(measure(job["nfe"], job["checkpoint"], args)))
        return

    argv = [
        *("--device", args.device, "--batch", str(args.batch), "--threads", str(args.threads)),
        *("--iterations", str(args.iterations), "--warmup", str(args.warmup)),
    ]
    started = time.perf_counter()
    results = []
    for checkpoint in (False, True):
        for nfe in args.nfe:
            print(f"NFE {nfe}, checkpointing {checkpoint} ...", file=sys.stderr, flush=True)
            results.append(run_in_subprocess(nfe, checkpoint, argv))
    first = results[0]
    print(
        f"\nGS training iteration: diffusers UNet2DModel ({first['unet_parameters']:,} parameters, "
        f"{'×'.join(map(str, SAMPLE_SHAPE))}, ε-prediction, DDPM linear schedule), "
        f"batch {args.batch}, device {first['device']}, {first['threads']} thread(s), "
        f"median of {args.iterations} iterations after {args.warmup} warm-up\n"
    )
    print(
        "| NFE | checkpointing | s/iter | solver s/iter | solver share % | peak MB "
        "| solver-only peak MB | peak RSS Δ MB |"
    )
    print("|---:|:---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        rss = "n/a" if r["peak_rss_delta_mb"] is None else f"{r['peak_rss_delta_mb']:.0f}"
        print(
            f"| {r['nfe']} | {'yes' if r['checkpoint'] else 'no'} | {r['seconds_per_iter']:.3f} "
            f"| {r['solver_seconds_per_iter']:.4f} | {100 * r['solver_share']:.2f} "
            f"| {r['peak_mb']:.1f} | {r['solver_only_peak_mb']:.2f} | {rss} |"
        )

    lo, hi = min(args.nfe), max(args.nfe)
    ratios = {}
    for checkpoint in (False, True):
        by_nfe = {r["nfe"]: r for r in results if r["checkpoint"] == checkpoint}
        ratios[checkpoint] = by_nfe[hi]["peak_mb"] / by_nfe[lo]["peak_mb"]
        label = "with" if checkpoint else "without"
        print(
            f"\npeak memory NFE {hi} / NFE {lo}, {label} checkpointing: {ratios[checkpoint]:.2f}×"
        )
    worst_share = max(r["solver_share"] for r in results)
    print(
        f"\ngoal solver share ≤ 2 %: {'met' if worst_share <= 0.02 else 'NOT met'} "
        f"(worst {100 * worst_share:.2f} %)\n"
        f"goal checkpointed peak ratio ≤ 1.3×: {'met' if ratios[True] <= 1.3 else 'NOT met'} "
        f"({ratios[True]:.2f}×)"
    )
    elapsed = time.perf_counter() - started
    print(f"\ntotal time {elapsed:.0f} s")
    if args.json:
        report = {
            "run": run_metadata(),
            "settings": {k: v for k, v in vars(args).items() if k != "worker"},
            "results": results,
            "peak_ratio": {"without_checkpoint": ratios[False], "with_checkpoint": ratios[True]},
            "seconds_total": elapsed,
        }
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
