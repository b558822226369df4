"""A whole ``gas-solver fid`` run on the CPU: TorchScript or ONNX Runtime, one process or two.

    OMP_NUM_THREADS=1 python benchmarks/fid_processes.py [--images 1000] [--rounds 1]

Times the real command, start-up included, on the first N bundled MNIST digits against the
shipped statistics of all 5000: ``gas-solver fid --images mnist --num-images N --ref mnist --method
eigh``, in four set-ups that use both cores of a 2-core machine:

* one process at 2 threads, TorchScript (``GAS_SOLVER_INCEPTION=torch``: the plain PyTorch path);
* one process at 2 threads, ONNX Runtime (the default on the CPU);
* ``torchrun --nproc_per_node=2`` at 1 thread each, TorchScript, and the same with ONNX Runtime.

The set-ups run in turn, ``--rounds`` times, so that load from other jobs falls on all alike; the
table gives the median wall time, images per second, the speed-up over the plain path and each
FID's relative difference from it (the goal: ≤ 1e-4).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETUPS = {  # name: (processes, threads per process, Inception backend)
    "TorchScript, 1 process × 2 threads": (1, 2, "torch"),
    "ONNX Runtime, 1 process × 2 threads": (1, 2, "onnxruntime"),
    "TorchScript, torchrun 2 processes × 1 thread": (2, 1, "torch"),
    "ONNX Runtime, torchrun 2 processes × 1 thread": (2, 1, "onnxruntime"),
}


def run_fid(processes: int, threads: int, backend: str, images: int, out: Path) -> float:
    """Run the command once; returns its wall time in seconds (the FID goes to ``out``)."""
    command = [
        "fid", "--images", "mnist", "--num-images", str(images), "--ref", "mnist", "--method", "eigh",
        "--device", "cpu", "--out", str(out),
    ]  # fmt: skip
    if processes == 1:
        launcher = [sys.executable, "-m", "gas_solver.cli"]
    else:
        launcher = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={processes}", "-m", "gas_solver.cli",
        ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GAS_SOLVER_INCEPTION": backend}
    start = time.perf_counter()
    subprocess.run([*launcher, *command], env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {name: [] for name in SETUPS}
    fids: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "fid.json"  # each run's result is read at once, then overwritten
        for _ in range(args.rounds):
            for name, (processes, threads, backend) in SETUPS.items():
                seconds[name].append(run_fid(processes, threads, backend, args.images, out))
                fids[name] = json.loads(out.read_text())["fid"]
                print(f"{name}: {seconds[name][-1]:.1f} s, FID {fids[name]:.6f}", flush=True)
    plain = next(iter(SETUPS))
    base = statistics.median(seconds[plain])
    print(f"\nN = {args.images} digits, median of {args.rounds} round(s)\n")
    print("| set-up | wall s | images/s | speed-up | FID | FID difference (relative) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in SETUPS:
        wall = statistics.median(seconds[name])
        difference = abs(fids[name] - fids[plain]) / fids[plain]
        print(
            f"| {name} | {wall:.1f} | {args.images / wall:.2f} | {base / wall:.2f}× | "
            f"{fids[name]:.6f} | {difference:.1e} |"
        )


if __name__ == "__main__":
    main()
