"""What the samples of each solver look like in numbers FID is sensitive to, beside the teacher's
and the real digits': the share of black pixels (those that quantise to 0, the background), of
faint ones (0 < value < 16 of 255: haze), of mid-tones (10 < value < 245: haze and stroke
edges), the mean intensity, the edge
strength (mean |∇| between neighbouring pixels, 0–255 scale: sharp strokes score high, blur and
haze low) and the background roughness (the same, between neighbours both below 16: speckle
that a few-step solver leaves in flat dark areas). With ``--fid``, each solver's FID against the data split into its two terms,
``|μ − μ_data|²`` (a shift that all samples share) and the covariance term (spread and
diversity), and the FID of the same samples with the background floored (every pixel below
``--floor`` of 255 set to black): an intervention that shows how much of the gap the faint
background alone makes.

    python benchmarks/pixel_statistics.py --solvers "runs/gs6;unipc:nfe=6,order=3,grid=uniform" \
        --seeds 50000-50499 --json docs/results/mnist32-pixel-statistics-nfe6.json

A solver closer to the teacher in L1 can still be further from the data in FID when its errors
move these numbers the other way (a faint haze on the background reads as mid-tones to
Inception, while real digits have clean black backgrounds).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from gas_solver.data.datasets import load_dataset
from gas_solver.evaluation.compare import resolve_solvers
from gas_solver.metrics.fid_reference import reference_statistics
from gas_solver.metrics.fid_statistics import compute_statistics
from gas_solver.metrics.frechet import frechet_distance
from gas_solver.models.loading import load_model
from gas_solver.outputs import write_json
from gas_solver.runtime import run_metadata
from gas_solver.sampling import generate
from gas_solver.seeds import parse_seeds
from gas_solver.solvers.teacher import DEFAULT_TEACHER, teacher_spec


def on_255(images: torch.Tensor) -> torch.Tensor:
    """``images`` in [−1, 1] → the integer 0–255 values FID reads."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round()


def statistics(images: torch.Tensor) -> dict[str, float]:
    """The shares, the mean, the edge strength and the background roughness on the 0–255 scale
    FID reads."""
    values = on_255(images)
    low = values < 16
    steps, dark = [], []
    for dim in (-1, -2):
        steps.append(values.diff(dim=dim).abs().flatten(1))
        size = low.shape[dim] - 1
        dark.append((low.narrow(dim, 1, size) & low.narrow(dim, 0, size)).flatten(1))
    edges, dark_pairs = torch.cat(steps, dim=1), torch.cat(dark, dim=1)
    return {
        "black": float((values == 0).float().mean()),
        "faint": float(((values > 0) & (values < 16)).float().mean()),
        "mid_tones": float(((values > 10) & (values < 245)).float().mean()),
        "mean": float(values.mean()),
        "edge": float(edges.mean()),
        "background_roughness": float(edges[dark_pairs].mean()),
    }


def fid_terms(images: torch.Tensor, data) -> dict[str, float]:
    """FID against ``data`` statistics and its mean and covariance terms (``eigh``)."""
    stats = compute_statistics(images, progress=False)
    fid = frechet_distance(stats.mu, stats.sigma, data.mu, data.sigma, method="eigh")
    mean_term = float(np.sum((stats.mu - data.mu) ** 2))
    return {"fid": fid, "fid_mean_term": mean_term, "fid_cov_term": fid - mean_term}


def floored(images: torch.Tensor, floor: int) -> torch.Tensor:
    """The images with every pixel below ``floor`` of 255 set to black (−1)."""
    return torch.where(on_255(images) < floor, torch.full_like(images, -1.0), images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mnist32")
    parser.add_argument("--solvers", required=True, help="';'-separated specs and checkpoints")
    parser.add_argument("--teacher", default=DEFAULT_TEACHER)
    parser.add_argument("--seeds", default="50000-50499")
    parser.add_argument("--fid", action="store_true", help="FID against the data, in two terms")
    parser.add_argument("--floor", type=int, default=16, help="with --fid: the background floor")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    model = load_model(args.model, torch.device("cpu"))
    seeds = parse_seeds(args.seeds)
    dataset = load_dataset("mnist").images
    rows = {"real digits": statistics(dataset[: len(seeds)])}
    data = reference_statistics("mnist", progress=False) if args.fid else None
    solvers = {"teacher": teacher_spec(args.teacher, model)}
    solvers.update({s.label: s for s in resolve_solvers(args.solvers)})
    for label, solver in solvers.items():
        sampler = solver.build(model) if hasattr(solver, "build") else solver
        with torch.no_grad():
            samples = generate(model, sampler, seeds, 100, progress=False)
        rows[label] = statistics(samples)
        if data is not None:
            rows[label] |= fid_terms(samples, data)
            rows[label]["fid_floored"] = fid_terms(floored(samples, args.floor), data)["fid"]
        print(label, {k: round(v, 4) for k, v in rows[label].items()}, flush=True)
    head = "| samples | black pixels | faint (1–15) | mid-tones | mean (0–255) | edge (0–255) |"
    head += " background roughness |"
    if data is not None:
        head += f" FID | mean term | covariance term | FID, floored at {args.floor} |"
    print(head + "\n|---" + "|---:" * (head.count("|") - 2) + "|")
    for label, row in rows.items():
        cells = [f"{row[k]:.1%}" for k in ("black", "faint")]
        cells += [f"{row['mid_tones']:.2%}", f"{row['mean']:.1f}"]
        cells += [f"{row['edge']:.2f}", f"{row['background_roughness']:.3f}"]
        if "fid" in row:
            cells += [f"{row[k]:.2f}" for k in ("fid", "fid_mean_term", "fid_cov_term")]
            cells.append(f"{row['fid_floored']:.2f}")
        elif data is not None:
            cells += [""] * 4
        print(f"| {label} | " + " | ".join(cells) + " |")
    if args.json:
        write_json(args.json, {"rows": rows, "args": vars(args), "run": run_metadata()})


if __name__ == "__main__":
    main()
