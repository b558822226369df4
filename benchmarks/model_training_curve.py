"""FID of a `train-model` run's EMA snapshots: where the bundled model's training plateaus.

    python benchmarks/model_training_curve.py --run runs/mnist32-flow-v2 --seeds 50000-50999 \
        --out docs/results/mnist32-training-curve.json --figure docs/figures/mnist32-training-curve.png

Each snapshot (`train-model --snapshot-every K` writes OUT/snapshots/step-N) is sampled with the
paper's teacher solver (UniPC-3, 20 calls, logSNR grid) on the evaluation seeds and scored against
the bundled MNIST reference statistics (`eigh`). Snapshots already in the JSON are not recomputed,
so the script can run while training goes on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gas_solver.commands.fid import FIDConfig, run_fid
from gas_solver.outputs import write_json
from gas_solver.solvers.teacher import DEFAULT_TEACHER
from gas_solver.visualize import save_curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a train-model output folder")
    parser.add_argument("--seeds", default="50000-50999")
    parser.add_argument("--solver", default=DEFAULT_TEACHER)
    parser.add_argument("--out", required=True, help="JSON of the curve (read first: resumable)")
    parser.add_argument("--figure", help="also draw the curve to this PNG")
    args = parser.parse_args()

    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if out.is_file() else []
    done = {row["step"] for row in rows}
    training = json.loads((Path(args.run) / "training.json").read_text())
    for snapshot in sorted((Path(args.run) / "snapshots").glob("step-*")):
        step = int(snapshot.name.split("-")[1])
        if step in done:
            continue
        config = FIDConfig(solver=args.solver, model=str(snapshot), seeds=args.seeds, ref="mnist",
                           method="eigh", device="cpu")  # fmt: skip
        config.validate()
        result = run_fid(config)
        rows.append({"step": step, "fid": result["fid"], "n_samples": result["num_images"]})
        rows.sort(key=lambda row: row["step"])
        write_json(out, {"run": args.run, "solver": args.solver, "seeds": args.seeds,
                         "train_model_config": training["config"], "rows": rows})  # fmt: skip
        print(f"step {step}: FID {result['fid']:.2f} (N={result['num_images']})", flush=True)
    if args.figure:
        save_curve(
            [row["step"] for row in rows], [row["fid"] for row in rows], args.figure,
            xlabel="training step", ylabel=f"FID (N={rows[0]['n_samples']})", log_y=True,
            title=f"{Path(args.run).name}: teacher FID vs training step",
        )  # fmt: skip


if __name__ == "__main__":
    main()
