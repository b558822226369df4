"""Teacher-set throughput under torchrun: 1, 2, … processes of one thread each on this machine.

For each process count K the script runs

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=K -m gas_solver.cli teacher \\
        --model mnist32 --seeds SEEDS --batch-size B --shard-size S --device DEVICE --out OUT/kK

(the paper's teacher, UniPC-3 with 20 calls on the logSNR grid, unless ``--solver`` says
otherwise), times the whole command (start-up and model loading included) and the generation
alone (that time less the time of the same command on the finished set, which only starts,
loads the model, checks the shards and stops), and checks that the shards are the same bytes for
every K. Shards are the unit of work: choose ``--seeds`` and
``--shard-size`` so that every process gets the same number of shards.

Usage::

    python benchmarks/distributed_teacher.py [--procs 1 2] [--seeds 0-511] [--batch-size 16]
                                             [--shard-size 64] [--device cpu|cuda]
                                             [--out runs/bench-dist] [--json out.json]

On GPUs (one per process) e.g. ``--procs 1 2 4 8 --device cuda --seeds 0-9999 --batch-size 250
--shard-size 250``.

Run it on a quiet machine: with other jobs on the cores the numbers measure them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from gas_solver.seeds import parse_seeds


def run_teacher(procs: int, args: argparse.Namespace, out: Path) -> dict:
    """One timed ``teacher`` run under torchrun with ``procs`` processes of one thread each."""
    shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={procs}", "-m", "gas_solver.cli", "teacher", "--model", args.model,
        "--seeds", args.seeds, "--solver", args.solver, "--batch-size", str(args.batch_size),
        "--shard-size", str(args.shard_size), "--device", args.device, "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    seconds = []
    for _ in range(2):  # the second run finds the set complete: start-up, loading, checks only
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True, text=True)
        seconds.append(time.perf_counter() - start)
    manifest = json.loads((out / "manifest.json").read_text())
    shards = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(out.glob("shard-*.safetensors"))
    }
    return {
        "processes": procs,
        "processes_recorded": manifest["runs"][-1]["processes"],
        "samples": manifest["num_samples"],
        "wall_seconds": seconds[0],
        "overhead_seconds": seconds[1],
        "generation_seconds": seconds[0] - seconds[1],
        "shards": shards,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model", default="mnist32")
    parser.add_argument("--seeds", default="0-511")
    parser.add_argument("--solver", default="unipc:nfe=20,order=3,variant=bh1,grid=logsnr")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: one GPU per process")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-distributed-teacher"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    count = len(parse_seeds(args.seeds))
    rows = [run_teacher(k, args, args.out / f"k{k}") for k in args.procs]
    base = rows[0]
    print(
        f"{args.model}, {count} samples, {args.solver}, batch {args.batch_size}, shards of "
        f"{args.shard_size}, device {args.device}; one thread per process; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores\n"
    )
    print("| processes | wall s | start-up s | generation s | samples/s (generation) | "
          "speed-up (generation) | shards = first row |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|:---:|")
    for row in rows:
        gen = max(row["generation_seconds"], 1e-9)
        print(
            f"| {row['processes']} | {row['wall_seconds']:.1f} | {row['overhead_seconds']:.1f} | "
            f"{row['generation_seconds']:.1f} | "
            f"{row['samples'] / gen:.2f} | {base['generation_seconds'] / gen:.2f}x | "
            f"{'yes' if row['shards'] == base['shards'] else 'NO'} |"
        )
    if args.json:
        settings = {key: str(value) for key, value in vars(args).items()}
        args.json.write_text(json.dumps({"args": settings, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
