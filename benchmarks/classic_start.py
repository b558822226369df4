"""Where the GS starts, and how it trains from there: one ``train`` per row, one comparison.

    python benchmarks/classic_start.py --teacher runs/t/teacher --nfe 6 --out runs/start6 \
        --seeds 50000-50499 --json docs/results/mnist32-start-nfe6.json

Every row is the GS protocol of ``protocol.py`` (400 iterations, batch 16, teacher pairs 0–999,
validation on the last 100, L1, seed 42) with its own start and recipe (:data:`ROWS`): the
classic solver ``auto`` picks, trained with its own coefficients as the theory or with
DPM-Solver++(3M)'s, at other learning rates and schedules, and the paper's start for comparison.
``start`` is that row untrained (``--iterations 0``). Runs already in ``--out`` are not trained
again. Then one ``gas-solver compare`` of the teacher, the rows and ``--classic`` on ``--seeds``
(L1/PSNR to the teacher; FID with ``--fid-ref``; fidelity to a converged solve with
``--reference``; measured once, a rerun reads it back), and a markdown table with each row's L1
against the best classic solver's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gas_solver.outputs import write_json
from gas_solver.runtime import run_metadata
from protocol import PAPER_START, gas_solver, train_unless_done

ROWS = {
    "start": ("the auto start, untrained", ["--iterations", "0"]),
    "gs": ("GS from the auto start, its own theory, lr 1e-3", []),
    "gs-theory-3m": ("the same, DPM-Solver++(3M) as the theory", ["--theory-solver", "dpmpp3m"]),
    "gs-lr5e-4": ("lr 5e-4", ["--lr", "5e-4"]),
    "gs-lr3e-3": ("lr 3e-3", ["--lr", "3e-3"]),
    "gs-lr2e-3-cos": ("lr 2e-3, cosine decay", ["--lr", "2e-3", "--lr-decay", "cosine"]),
    "gs-lr2e-3-t5e-4-cos": (
        "lr 2e-3 (times 5e-4), cosine", ["--lr", "2e-3", "--lr-times", "5e-4", "--lr-decay", "cosine"]
    ),
    "gs-paper": ("the paper's start: DPM-Solver++(3M), logSNR grid", list(PAPER_START)),
}  # fmt: skip
"""name → (what it is, ``train`` flags on top of the GS protocol with ``auto``)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="teacher set of the GS protocol")
    parser.add_argument("--out", required=True, help="folder of the runs and the comparison")
    parser.add_argument("--model", default="mnist32")
    parser.add_argument("--nfe", type=int, default=6)
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--seeds", default="50000-50499", help="evaluation seeds")
    parser.add_argument("--rows", default=",".join(ROWS), help="rows (default: %(default)s)")
    parser.add_argument(
        "--classic", default="unipc:order=3,grid=uniform", help="classic rows, ';'-separated"
    )
    parser.add_argument("--fid-ref", default="none", help="FID reference (none: no FID)")
    parser.add_argument("--reference", default=None, help="a converged solve (compare --help)")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args()

    out, rows = Path(args.out), [r.strip() for r in args.rows.split(",") if r.strip()]
    for name in rows:
        train_unless_done(
            args.teacher, args.nfe, args.iterations, out / name, *ROWS[name][1], start=()
        )
    classic = [f"{spec},nfe={args.nfe}" for spec in args.classic.split(";") if spec.strip()]
    compare = out / "compare"  # measured once: a rerun prints the same table
    if not (compare / "compare.json").is_file():
        gas_solver(
            "compare", "--model", args.model, "--seeds", args.seeds, "--fid-ref", args.fid_ref,
            "--fid-method", "eigh", "--device", "cpu", "--out", compare,
            "--solvers", ";".join([*(str(out / name) for name in rows), *classic]),
            *(["--reference", args.reference] if args.reference else []),
        )  # fmt: skip
    measured = json.loads((compare / "compare.json").read_text())["rows"]
    best = min(row["l1"] for row in measured if row["kind"] == "classic")
    table = [
        "| row | what | start | L1 | L1 / best classic | PSNR | FID | train s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    results = []
    for row in measured:
        name = Path(row["checkpoint"]).name if row["checkpoint"] else row["label"]
        summary_path = out / name / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        start = summary.get("start", {}).get("solver", "")
        what = ROWS.get(name, ("",))[0]
        fid = "–" if row["fid"] is None else f"{row['fid']:.2f}"
        psnr = "∞" if row["psnr"] is None else f"{row['psnr']:.2f}"  # the teacher's: null
        seconds = f"{summary['seconds']:.0f}" if "seconds" in summary else ""
        table.append(
            f"| {name} | {what} | {start} | {row['l1']:.4f} | {row['l1'] / best:.2f} | "
            f"{psnr} | {fid} | {seconds} |"
        )
        results.append({"name": name, "what": what, "start": start, **row, "summary": summary})
    print("\n".join(table))
    if args.json:
        write_json(Path(args.json), {"rows": results, "args": vars(args), "run": run_metadata()})


if __name__ == "__main__":
    main()
