"""FID against training iteration and wall time for GS, and for GAS started from it.

    OMP_NUM_THREADS=1 python benchmarks/training_cost_curve.py --teacher runs/t11/teacher \
        --model mnist32 --out runs/cost --iterations 600 --every 100 --gas-from 400 \
        --gas-iterations 200 --seeds 50000-50499 \
        --json docs/results/mnist32-cost-curve.json --figure docs/figures/mnist32-cost-curve.png

Trains a GS at ``--nfe`` calls with an EMA snapshot every ``--every`` iterations (``train
--snapshot-every``), then a GAS from the GS's snapshot at ``--gas-from`` (the recipe of the
published table: ``model-features`` discriminator, w = 0.3, 100 warm-up steps), and measures the
FID of each snapshot on ``--seeds`` against the bundled digits; iteration 0 is the untrained GS,
which is DPM-Solver++(3M) on the logSNR grid. Reports the wall time at which the GS first reaches
95 % of its final FID gain over iteration 0 (the issue's goal: ≤ 5 minutes on a 2-core CPU).
Existing runs and FIDs in ``--out`` are reused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from protocol import DISC_WARMUP, gas_flags, gas_solver, train_flags


def train(args, out: Path, iterations: int, *extra: str) -> None:
    if (out / "solver.safetensors").is_file():
        return
    gas_solver(
        *train_flags(args.teacher, args.nfe, iterations, out),
        "--snapshot-every",
        str(args.every),
        *extra,
    )


def fid(args, solver: str, out: Path) -> float:
    if not out.is_file():
        gas_solver(
            "fid", "--model", args.model, "--solver", solver, "--seeds", args.seeds, "--ref",
            "mnist", "--method", "eigh", "--device", "cpu", "--out", str(out),
        )  # fmt: skip
    return json.loads(out.read_text())["fid"]


def curve(args, run: Path, offset: int, offset_seconds: float) -> list[dict]:
    """FID and wall time of every snapshot of ``run`` (iterations and seconds shifted by those of
    the run it started from)."""
    points = []
    for snapshot in sorted((run / "snapshots").iterdir()):
        meta = json.loads((snapshot / "solver.json").read_text())["training"]
        points.append({
            "iteration": offset + meta["iteration"],
            "seconds": offset_seconds + meta["seconds"],
            "fid": fid(args, str(snapshot), run / f"fid-{snapshot.name}.json"),
        })  # fmt: skip
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag in ("--teacher", "--out", "--json", "--figure"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--model", default="mnist32")
    parser.add_argument("--nfe", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--gas-from", type=int, default=400)
    parser.add_argument("--gas-iterations", type=int, default=200)
    parser.add_argument("--gas-warmup", type=int, default=DISC_WARMUP, help="D-only steps")
    parser.add_argument("--seeds", default="50000-50499")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    train(args, out / "gs", args.iterations)
    start = out / "gs" / "snapshots" / f"iter-{args.gas_from:06d}"
    gas = gas_flags(warmup=args.gas_warmup)
    train(args, out / "gas", args.gas_iterations, *gas, "--init-solver", str(start))
    initial = fid(args, f"dpmpp:nfe={args.nfe},order=3,grid=logsnr", out / "fid-initial.json")
    gs = [{"iteration": 0, "seconds": 0.0, "fid": initial}, *curve(args, out / "gs", 0, 0.0)]
    start_seconds = next(p["seconds"] for p in gs if p["iteration"] == args.gas_from)
    gas = curve(args, out / "gas", args.gas_from, start_seconds)

    gain = initial - gs[-1]["fid"]
    reached = next(p for p in gs if initial - p["fid"] >= 0.95 * gain)
    result = {
        "model": args.model, "nfe": args.nfe, "seeds": args.seeds, "every": args.every,
        "gas_from": args.gas_from, "gs": gs, "gas": gas,
        "gs_95_percent_of_final_gain": reached,
    }  # fmt: skip
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.figure)
    print("| iteration | GS FID | GS seconds | GAS FID | GAS seconds |")
    print("|---:|---:|---:|---:|---:|")
    by_iteration = {p["iteration"]: p for p in gas}
    for p in gs:
        q = by_iteration.get(p["iteration"])
        more = f"{q['fid']:.2f} | {q['seconds']:.0f}" if q else " | "
        print(f"| {p['iteration']} | {p['fid']:.2f} | {p['seconds']:.0f} | {more} |")
    for q in gas:
        if q["iteration"] > gs[-1]["iteration"]:
            print(f"| {q['iteration']} | | | {q['fid']:.2f} | {q['seconds']:.0f} |")
    print(
        f"\nGS reaches 95 % of its final FID gain ({gain:.2f}) at iteration {reached['iteration']}, "
        f"{reached['seconds']:.0f} s"
    )


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    start = [p for p in result["gs"] if p["iteration"] == result["gas_from"]]
    for name, points in (("gs", result["gs"]), ("gas", start + result["gas"])):
        ax.plot(
            [p["iteration"] for p in points], [p["fid"] for p in points], "o-", label=name.upper()
        )
    ax.set_xlabel("training iteration (batch 16; GAS continues the GS from its start point)")
    ax.set_ylabel(f"FID (seeds {result['seeds']})")
    ax.set_title(f"{result['model']}, NFE {result['nfe']}: FID while training")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
