"""The published NFE-4 table of a bundled model: FID against the real digits and against the
teacher's own distribution, with the distance to the teacher, from runs already made.

    python benchmarks/nfe4_table.py [--model mnist32-vp] --rows runs/final/rows.json \
        --fid runs/final/fid --compare runs/final/compare/compare.json \
        --teacher-ref runs/final/fid/teacher-ref.npz --out docs/results/mnist32-nfe4-n2000.json

``rows.json`` lists the rows: ``[{"name", "label", "kind", "solver", "compare_label"?, "nfe"?,
"train_seconds"?}]`` (a row without ``compare_label`` has no L1/PSNR and gives its ``nfe``); for each,
``FID/<name>.json`` and ``FID/<name>.npz`` come from ``gas-solver fid --solver SOLVER --ref mnist
--save-ref FID/<name>.npz --out FID/<name>.json`` (N = 2000, seeds 50000–51999), and the L1 and
PSNR to the teacher from ``gas-solver compare --fid-ref none``. The second FID, against the
statistics of teacher samples (``--teacher-ref``), re-uses the saved statistics: no second
Inception pass. Prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gas_solver.evaluation.report import gap_closed
from gas_solver.metrics.fid_reference import reference_statistics
from gas_solver.models.loading import load_model
from gas_solver.outputs import write_json
from gas_solver.runtime import run_metadata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag in ("--rows", "--fid", "--compare", "--teacher-ref", "--out"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--model", default="mnist32", help="the bundled model of the rows")
    args = parser.parse_args()

    spec = json.loads(Path(args.rows).read_text())
    compared = {row["label"]: row for row in json.loads(Path(args.compare).read_text())["rows"]}
    teacher_ref = reference_statistics(args.teacher_ref)
    rows = []
    for entry in spec:
        # a row left out of the comparison (no "compare_label") has no L1/PSNR: "not run"
        fidelity = compared.get(
            entry.get("compare_label"), {"l1": None, "psnr": None, "n_samples": None}
        )
        row = {
            **{k: entry[k] for k in ("label", "kind", "solver")},
            "nfe": entry.get("nfe", fidelity.get("nfe")), "fid": None, "fid_vs_teacher": None, "n_samples": None,
            "l1": fidelity["l1"], "psnr": fidelity["psnr"], "n_samples_l1": fidelity["n_samples"],
            **({"train_seconds": entry["train_seconds"]} if "train_seconds" in entry else {}),
        }  # fmt: skip
        result = Path(args.fid) / f"{entry['name']}.json"
        if result.is_file():  # a row whose FID was not run stays None: "not run"
            fid = json.loads(result.read_text())
            stats = reference_statistics(result.with_suffix(".npz"))
            row.update(fid=fid["fid"], n_samples=fid["num_images"],
                       fid_vs_teacher=stats.frechet_distance(teacher_ref, method="eigh"))  # fmt: skip
        rows.append(row)
    gaps = gap_closed((row["label"], row["kind"], row["fid"]) for row in rows) or {}
    for row in rows:  # no gap when a classic solver is already at the teacher's FID or below it
        if row["label"] in gaps:
            row["gap_closed"] = gaps[row["label"]]
    write_json(args.out, {
        "model": load_model(args.model).identity(), "seeds": "50000-51999",
        "fid_reference": "mnist (5000 bundled digits), eigh",
        "teacher_reference": args.teacher_ref,
        "rows": rows, "run": run_metadata(),
    })  # fmt: skip
    print(
        "| solver | NFE | FID (N = 2000) | FID vs teacher samples | L1 to teacher | PSNR (dB) | gap closed |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        gap = f"{r['gap_closed']:.2f}" if "gap_closed" in r else ""
        psnr = "∞" if r["kind"] == "teacher" else "–" if r["psnr"] is None else f"{r['psnr']:.2f}"
        l1 = "–" if r["l1"] is None else f"{r['l1']:.4f}"
        fid = "not run" if r["fid"] is None else f"{r['fid']:.2f}"
        vs = "" if r["fid"] is None else f"{max(r['fid_vs_teacher'], 0.0):.2f}"  # round-off
        print(f"| {r['label']} | {r['nfe']} | {fid} | {vs} | {l1} | {psnr} | {gap} |")


if __name__ == "__main__":
    main()
