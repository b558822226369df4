"""What each ingredient of the GS and GAS buys: one trainer flag per row, one comparison.

    python benchmarks/ablations.py --teacher runs/s16/teacher --out runs/ablations \
        --reuse gs=runs/s16/nfe4/gs --reuse timesteps=runs/s16/nfe4/timesteps-logsnr \
        --reuse gas-w0.3=runs/s16/nfe4/gas --seeds 50000-50999 \
        --launcher "torchrun --standalone --nproc_per_node=2" \
        --json docs/results/mnist32-ablations-nfe4.json

Every row is the protocol of the published NFE-4 table (GS: 400 iterations at batch 16 on teacher
pairs 0–999, logSNR initial grid, L1, seed 42; GAS: that GS + 100 discriminator warm-up steps + 200
adversarial iterations, ``model-features``, D lr 1e-4) with one thing changed (:data:`GS_ROWS`,
:data:`GAS_ROWS`; ``gas-w0`` is the GS trained the same 200 iterations more without the
adversarial term; ``train-1400`` and ``train-5000`` need a teacher set of 5100 pairs and run only
when ``--rows`` names them). Runs already in ``--out`` (or given with ``--reuse NAME=FOLDER``) are not
trained again. Then one ``gas-solver compare`` of the teacher and every row on ``--seeds``: FID
against the bundled digits, L1 and PSNR to the teacher. Writes the JSON and prints a markdown table
with each row's FID against its base (:func:`base_of`) and its training seconds (from the run's
``summary.json``: a rerun prints the same table without training or comparing anything).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gas_solver.outputs import write_json
from gas_solver.runtime import run_metadata
from protocol import gas_flags, gas_solver, train_unless_done

GS_ROWS = {
    "gs": ("the GS (400 iterations)", []),
    "no-theory": ("coefficients not following the timesteps (Table 5)", ["--no-theory"]),
    "no-corrections": ("no history corrections â, ĉ (DPM-Solver++ terms only)", ["--learn", "no-corrections"]),
    "no-offsets": ("no evaluation offsets ξ", ["--learn", "no-offsets"]),
    "timesteps": ("timesteps only (LD3-style)", ["--learn", "timesteps"]),
    "train-200": ("200 training pairs instead of 1000 (Table 12)", ["--train-size", "200"]),
    "train-1400": ("1400 training pairs instead of 1000 (Table 12)", ["--train-size", "1400"]),
    "train-5000": ("5000 training pairs instead of 1000 (Table 12)", ["--train-size", "5000"]),
    "l2": ("L2 distillation instead of L1", ["--distillation", "l2"]),
    "init-uniform": ("initial grid uniform in t instead of logSNR", ["--init-grid", "uniform"]),
}  # fmt: skip
"""name → (what changes, ``train`` flags on top of the GS protocol)."""
GAS_ROWS = {f"gas-w{w}": w for w in ("0", "0.1", "0.3", "0.5", "1")}
"""name → adversarial weight, each from the ``gs`` row (w = 0: no discriminator at all)."""
LARGE_TEACHER_ROWS = ("train-1400", "train-5000")
"""Rows that need a teacher set of more than 1100 pairs (5100: seeds 0–5099); not run by default."""


def train(args, folder: Path, iterations: int, *extra: str) -> None:
    """Train into ``folder`` unless a finished run is there."""
    train_unless_done(args.teacher, args.nfe, iterations, folder, *extra, launcher=args.launcher)


def base_of(name: str, names: list[str]) -> str | None:
    """The row whose FID a row is measured against: for the GAS rows with w > 0, ``gas-w0`` (the GS
    trained as many iterations more, without a discriminator) when it was run; else ``gs``."""
    if name == "gs":
        return None
    if name in GAS_ROWS and name != "gas-w0" and "gas-w0" in names:
        return "gas-w0"
    return "gs" if "gs" in names else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="teacher set of the GS protocol")
    parser.add_argument("--out", required=True, help="folder of the runs and the comparison")
    parser.add_argument("--model", default="mnist32")
    parser.add_argument("--nfe", type=int, default=4)
    parser.add_argument("--seeds", default="50000-50999", help="evaluation seeds (FID N)")
    every = [name for name in [*GS_ROWS, *GAS_ROWS] if name not in LARGE_TEACHER_ROWS]
    parser.add_argument(
        "--rows", default=",".join(every), help="rows to run (default: %(default)s)"
    )
    parser.add_argument("--reuse", action="append", default=[], help="NAME=FOLDER: a finished run")
    parser.add_argument(
        "--launcher", default="", help='e.g. "torchrun --standalone --nproc_per_node=2"'
    )
    parser.add_argument("--compare-out", help="folder of the comparison (default: OUT/compare)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    out = Path(args.out)
    folders = {name: out / name for name in [*GS_ROWS, *GAS_ROWS]}
    folders.update({k: Path(v) for k, v in (item.split("=", 1) for item in args.reuse)})
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    for name in names:
        if name in GS_ROWS:
            train(args, folders[name], 400, *GS_ROWS[name][1])
        else:
            weight = GAS_ROWS[name]
            train(args, folders["gs"], 400)
            extra = gas_flags(weight) if weight != "0" else []
            train(args, folders[name], 200, "--init-solver", str(folders["gs"]), *extra)
    comparison = Path(args.compare_out) if args.compare_out else out / "compare"
    if not (comparison / "compare.json").is_file():
        gas_solver(
            "compare", "--model", args.model, "--seeds", args.seeds,
            "--solvers", ";".join(str(folders[n]) for n in names), "--teacher-set", args.teacher,
            "--fid-ref", "mnist", "--fid-method", "eigh", "--device", "cpu", "--out", str(comparison),
            launcher=args.launcher,
        )  # fmt: skip
    compared = json.loads((comparison / "compare.json").read_text())["rows"]
    fids = {name: row["fid"] for name, row in zip(names, compared[1:], strict=True)}
    rows = [{"name": "teacher", "change": "the teacher", **_scores(compared[0])}]
    for name, row in zip(names, compared[1:], strict=True):
        change = (
            GS_ROWS[name][0] if name in GS_ROWS else f"GAS, adversarial weight {GAS_ROWS[name]}"
        )
        base = base_of(name, names)
        summary = json.loads((folders[name] / "summary.json").read_text())
        rows.append({"name": name, "change": change, "solver": str(folders[name]),
                     "base": base, "vs_base": None if base is None else row["fid"] - fids[base],
                     "train_seconds": summary["seconds"], **_scores(row)})  # fmt: skip
    print(
        f"| row | what changes | FID (N = {rows[0]['n_samples']}) | vs its base | L1 to teacher "
        "| PSNR | train s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        psnr = "–" if row["psnr"] is None else f"{row['psnr']:.2f}"
        delta = "" if row.get("vs_base") is None else f"{row['vs_base']:+.2f} ({row['base']})"
        trained = "" if row.get("train_seconds") is None else f"{row['train_seconds']:.0f}"
        print(
            f"| {row['name']} | {row['change']} | {row['fid']:.2f} | {delta} | {row['l1']:.4f} "
            f"| {psnr} | {trained} |"
        )
    if args.json:
        write_json(args.json, {"model": args.model, "nfe": args.nfe, "seeds": args.seeds,
                               "rows": rows, "command": " ".join(sys.argv), "run": run_metadata()})  # fmt: skip


def _scores(row: dict) -> dict:
    return {k: row[k] for k in ("fid", "l1", "psnr", "n_samples")}


if __name__ == "__main__":
    main()
