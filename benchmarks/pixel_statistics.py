"""What the samples of each solver look like in numbers FID is sensitive to, beside the teacher's
and the real digits': the share of black pixels (those that quantise to 0, the background), of
mid-tones (10 < value < 245 of 255: haze and stroke edges), and the mean intensity.

    python benchmarks/pixel_statistics.py --solvers "runs/gs6;unipc:nfe=6,order=3,grid=uniform" \
        --seeds 50000-50499 --json docs/results/mnist32-pixel-statistics-nfe6.json

A solver closer to the teacher in L1 can still be further from the data in FID when its errors
move these shares the other way (a faint haze on the background reads as mid-tones to Inception,
while real digits have clean black backgrounds).
"""

from __future__ import annotations

import argparse

import torch

from gas_solver.data.datasets import load_dataset
from gas_solver.evaluation.compare import resolve_solvers
from gas_solver.models.loading import load_model
from gas_solver.outputs import write_json
from gas_solver.runtime import run_metadata
from gas_solver.sampling import generate
from gas_solver.seeds import parse_seeds
from gas_solver.solvers.teacher import DEFAULT_TEACHER, teacher_spec


def statistics(images: torch.Tensor) -> dict[str, float]:
    """``images`` in [−1, 1] → the shares and the mean on the 0–255 scale FID reads."""
    values = ((images.clamp(-1, 1) + 1) * 127.5).round()
    return {
        "black": float((values == 0).float().mean()),
        "mid_tones": float(((values > 10) & (values < 245)).float().mean()),
        "mean": float(values.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mnist32")
    parser.add_argument("--solvers", required=True, help="';'-separated specs and checkpoints")
    parser.add_argument("--teacher", default=DEFAULT_TEACHER)
    parser.add_argument("--seeds", default="50000-50499")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    model = load_model(args.model, torch.device("cpu"))
    seeds = parse_seeds(args.seeds)
    real = load_dataset("mnist").images[: len(seeds)]
    rows = {"real digits": statistics(real)}
    solvers = {"teacher": teacher_spec(args.teacher, model)}
    solvers.update({s.label: s for s in resolve_solvers(args.solvers)})
    for label, solver in solvers.items():
        sampler = solver.build(model) if hasattr(solver, "build") else solver
        with torch.no_grad():
            rows[label] = statistics(generate(model, sampler, seeds, 100, progress=False))
    print("| samples | black pixels | mid-tones | mean (0–255) |\n|---|---:|---:|---:|")
    for label, row in rows.items():
        print(f"| {label} | {row['black']:.1%} | {row['mid_tones']:.2%} | {row['mean']:.1f} |")
    if args.json:
        write_json(args.json, {"rows": rows, "args": vars(args), "run": run_metadata()})


if __name__ == "__main__":
    main()
