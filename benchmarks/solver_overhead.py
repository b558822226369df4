"""How much time the solvers (classic and GS) spend outside model calls, relative to the model.

A ~1.1M-parameter diffusers ``UNet2DModel`` (random weights, ε-prediction, DDPM linear-β schedule)
samples a batch of 64 with each classic solver at NFE 4, 6, 8 and 10. For every (solver, NFE):

* ``total``: wall time of the solver call;
* ``model``: the summed time of the same model calls (the contract's ``data_prediction`` /
  ``noise_prediction``: network plus prediction-type conversion), timed one by one during that run;
* ``overhead``: the solver run again with the model replaced by the outputs it returned (a model
  that costs nothing), i.e. the solver's own arithmetic, measured directly (fastest of repeats:
  on a shared machine the slower repeats measure other processes, not the solver);
* ``total − model``: the same overhead by difference (noisy when the machine is busy).

Then GS against UniPC-3 at equal NFE: whole sampling runs of the two, interleaved (UniPC, GS,
UniPC, GS, …, so both see the same load), the ratio of their median times is GS's throughput
relative to UniPC's (the paper: GS costs nothing beyond the model calls; goal ≥ 0.98).

Usage::

    python benchmarks/solver_overhead.py [--device cpu|cuda] [--batch 64] [--resolution 16]
                                         [--channels 4] [--nfe 4 6 8 10] [--repeats 5]
                                         [--threads N]

On a shared CPU use ``--threads 1``: with more intra-op threads than free cores, every tensor op
waits for descheduled threads and both model and overhead times become noise. Takes about a
minute on 2 CPU cores (1.1M params, batch 64, 4×16×16, 140 model calls).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Any

import torch
from diffusers import UNet2DModel
from torch import Tensor

from gas_solver.models import DiffusionModel
from gas_solver.schedules import DiscreteVPSchedule
from gas_solver.solvers import SolverSpec
from gas_solver.solvers.generalized import GeneralizedSolver

SOLVERS = [
    ("ddim", {}),
    ("dpmpp", {"order": 3}),
    ("unipc", {"order": 3, "variant": "bh1"}),
    ("ipndm", {"order": 4}),
    ("heun", {}),
    ("gs", {}),  # the learned solver; its cost does not depend on the parameters' values
]


def sampler(name: str, options: dict[str, Any], nfe: int, schedule: DiscreteVPSchedule, device):
    """``run(model, noise)`` for one row: a classic solver on its default grid, or a GS."""
    if name == "gs":
        solver = GeneralizedSolver(nfe, schedule, init_grid="logsnr").to(device)
        return lambda model, noise: solver(model, noise)
    spec = SolverSpec(name, nfe=nfe, **options)
    grid = spec.make_grid(schedule).to(device)
    return lambda model, noise: spec.run(model, noise, grid)


def seconds(run: Any, model: DiffusionModel, noise: Tensor, sync: Any) -> float:
    """Wall time of one whole sampling run."""
    sync()
    start = time.perf_counter()
    run(model, noise)
    sync()
    return time.perf_counter() - start


class UNetModel(DiffusionModel):
    """A diffusers ε-prediction UNet behind the model contract (input timestep = N·t − 1)."""

    def __init__(self, unet: UNet2DModel, schedule: DiscreteVPSchedule) -> None:
        size, channels = unet.config.sample_size, unet.config.in_channels
        super().__init__(schedule, (channels, size, size), "epsilon")
        self.unet = unet

    def network_output(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self.unet(x, self.schedule.timestep(t)).sample


class TimedModel(DiffusionModel):
    """Delegates to ``inner``, timing every call and keeping its output."""

    def __init__(self, inner: DiffusionModel, sync: Any) -> None:
        super().__init__(inner.schedule, inner.sample_shape, inner.prediction_type)
        self.inner, self.sync = inner, sync
        self.seconds, self.outputs = 0.0, []

    def _call(self, method: str, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        self.sync()
        start = time.perf_counter()
        out = getattr(self.inner, method)(x, t, cond)
        self.sync()
        self.seconds += time.perf_counter() - start
        self.outputs.append(out)
        self.nfe += 1
        return out

    def noise_prediction(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self._call("noise_prediction", x, t, cond)

    def data_prediction(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self._call("data_prediction", x, t, cond)


class CachedModel(DiffusionModel):
    """Returns recorded outputs in call order: a model that costs nothing."""

    def __init__(self, inner: DiffusionModel, outputs: list[Tensor]) -> None:
        super().__init__(inner.schedule, inner.sample_shape, inner.prediction_type)
        self.outputs, self.index = outputs, 0

    def _next(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        out = self.outputs[self.index]
        self.index += 1
        return out

    noise_prediction = data_prediction = _next


def make_unet(channels: int, resolution: int) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=resolution,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=16,
        attention_head_dim=32,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--resolution", type=int, default=16)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--nfe", type=int, nargs="+", default=[4, 6, 8, 10])
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the cached-model run")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (1 is steadier on a busy machine)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    unet = make_unet(args.channels, args.resolution).to(device).eval().requires_grad_(False)
    schedule = DiscreteVPSchedule.from_beta_range(1e-4, 2e-2, 1000, "linear").to(device)
    model = UNetModel(unet, schedule)
    noise = torch.randn(args.batch, *model.sample_shape, generator=torch.Generator().manual_seed(0))
    noise = noise.to(device)
    params = sum(p.numel() for p in unet.parameters())
    print(
        f"UNet2DModel {params / 1e6:.2f}M params, batch {args.batch}, "
        f"{args.channels}x{args.resolution}x{args.resolution}, device {device}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), {platform.processor()}"
    )
    print()
    print(
        "| solver | NFE | total ms | model ms | overhead ms | overhead / model "
        "| (total − model) / model |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    with torch.no_grad():
        SolverSpec("ddim", nfe=1)(model, noise)  # warm-up
        for name, options in SOLVERS:
            for nfe in args.nfe:
                run = sampler(name, options, nfe, schedule, device)
                timed = TimedModel(model, sync)
                total = seconds(run, timed, noise, sync)
                overhead = min(
                    seconds(run, CachedModel(model, timed.outputs), noise, sync)
                    for _ in range(args.repeats)
                )
                label = f"{name}({', '.join(f'{k}={v}' for k, v in options.items())})"
                print(
                    f"| {label} | {nfe} | {total * 1e3:.0f} | {timed.seconds * 1e3:.0f} | "
                    f"{overhead * 1e3:.2f} | {overhead / timed.seconds:.2%} | "
                    f"{(total - timed.seconds) / timed.seconds:+.2%} |"
                )
        print()
        print("| NFE | UniPC-3 median ms | GS median ms | GS throughput / UniPC |")
        print("|---:|---:|---:|---:|")
        for nfe in args.nfe:
            unipc = sampler("unipc", {"order": 3, "variant": "bh1"}, nfe, schedule, device)
            gs = sampler("gs", {}, nfe, schedule, device)
            times: dict[str, list[float]] = {"unipc": [], "gs": []}
            for _ in range(args.repeats):
                times["unipc"].append(seconds(unipc, model, noise, sync))
                times["gs"].append(seconds(gs, model, noise, sync))
            t_unipc, t_gs = (statistics.median(times[k]) for k in ("unipc", "gs"))
            print(f"| {nfe} | {t_unipc * 1e3:.0f} | {t_gs * 1e3:.0f} | {t_unipc / t_gs:.3f} |")


if __name__ == "__main__":
    main()
