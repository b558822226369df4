"""The FID Inception on TorchScript against its ONNX Runtime copy, side by side in one process.

    python benchmarks/fid_backends.py [--threads 1 2] [--images 96] [--rounds 3]

For each thread count both backends are loaded fresh, then timed in alternating rounds on the same
real 32×32 MNIST digits (EDM preprocessing, 8 images per network call, one warm-up call each), so
that load from other jobs falls on both alike; the table gives the median images/s of each and
their ratio. It also prints the largest feature difference and the FID of the digits against their
noised copies by each backend (they must agree to 1e-4 relative).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gas_solver.data.datasets import load_dataset
from gas_solver.metrics import inception
from gas_solver.metrics.fid import compute_statistics


def images_per_second(detector: inception.InceptionFeatures, images: torch.Tensor) -> float:
    start = time.perf_counter()
    detector(images)
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    real = load_dataset("mnist").images[: args.images]
    noised = (
        real + 0.5 * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))
    ).clamp(-1, 1)
    print("| threads | TorchScript images/s | ONNX Runtime images/s | ratio |")
    print("|---:|---:|---:|---:|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        inception._INCEPTION_CACHE.clear()  # the ONNX session takes the thread count at load
        detectors = {
            name: inception.load_inception(backend=name) for name in ("torch", "onnxruntime")
        }
        if detectors["onnxruntime"].runner is None:
            raise SystemExit("onnxruntime is not available: pip install 'gas-solver[fast-fid]'")
        speeds: dict[str, list[float]] = {name: [] for name in detectors}
        with torch.inference_mode():
            for detector in detectors.values():
                detector(real[:8])  # warm-up (TorchScript profiles the first shape)
            for _ in range(args.rounds):
                for name, detector in detectors.items():
                    speeds[name].append(images_per_second(detector, real))
        torch_speed, onnx_speed = (statistics.median(speeds[name]) for name in detectors)
        print(
            f"| {threads} | {torch_speed:.2f} | {onnx_speed:.2f} | {onnx_speed / torch_speed:.2f} |",
            flush=True,
        )
    with torch.inference_mode():
        features = {name: d(torch.cat([real, noised])).double() for name, d in detectors.items()}
    difference = (features["onnxruntime"] - features["torch"]).abs().max() / features[
        "torch"
    ].abs().max()
    fids = {}
    for name, f in features.items():
        a, b = (compute_statistics(part, features=True) for part in f.split(len(real)))
        fids[name] = a.frechet_distance(b, "eigh")
    print(f"\nmax feature difference / max feature: {float(difference):.2e}")
    print(
        f"FID digits vs noised digits: TorchScript {fids['torch']:.6f}, ONNX Runtime {fids['onnxruntime']:.6f}"
    )


if __name__ == "__main__":
    main()
