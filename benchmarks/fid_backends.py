"""The FID Inception on TorchScript against its ONNX Runtime copy, side by side in one process.

    python benchmarks/fid_backends.py [--threads 1 2] [--images 96] [--rounds 3]

For each thread count the backends are loaded fresh, then timed in alternating rounds on the same
real 32×32 MNIST digits (EDM preprocessing, 8 images per network call, one warm-up call each), so
that load from other jobs falls on all alike; the table gives the median images/s of each and
their ratio to TorchScript. It also prints the largest feature difference and the FID of the
digits against their noised copies by each backend (they must agree to 1e-4 relative).

With ``openvino`` installed a third candidate runs the same cached ONNX file in OpenVINO
(f32 inference, the same thread count): measured only, not a backend of the library, which
keeps what measures best.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gas_solver.data.datasets import load_dataset
from gas_solver.metrics import inception
from gas_solver.metrics.fid_statistics import compute_statistics
from gas_solver.metrics.inception_onnx import onnx_path


def openvino_detector(onnx: inception.InceptionFeatures, threads: int):
    """The ONNX Runtime detector with its session swapped for OpenVINO on the same ONNX file."""
    try:
        import openvino
    except ImportError:
        return None
    compiled = openvino.Core().compile_model(
        str(onnx_path(inception.INCEPTION_SHA1)), "CPU",
        {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"},
    )  # fmt: skip

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(compiled(x.contiguous().numpy())[0].copy())

    return inception.InceptionFeatures(onnx.net, runner=run)


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
    names = {"torch": "TorchScript", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
    for threads in args.threads:
        torch.set_num_threads(threads)
        inception._INCEPTION_CACHE.clear()  # the ONNX session takes the thread count at load
        detectors = {name: inception.load_inception(backend=name) for name in list(names)[:2]}
        if detectors["onnxruntime"].runner is None:
            raise SystemExit("onnxruntime is not available: pip install 'gas-solver[fast-fid]'")
        if (candidate := openvino_detector(detectors["onnxruntime"], threads)) is not None:
            detectors["openvino"] = candidate
        if threads == args.threads[0]:
            print("| threads | " + " | ".join(f"{names[n]} images/s" for n in detectors) + " |")
            print("|---:|" + "---:|" * len(detectors))
        speeds: dict[str, list[float]] = {name: [] for name in detectors}
        with torch.inference_mode():
            for detector in detectors.values():
                detector(real[:8])  # warm-up (TorchScript profiles the first shape)
            for _ in range(args.rounds):
                for name, detector in detectors.items():
                    speeds[name].append(images_per_second(detector, real))
        median = {name: statistics.median(v) for name, v in speeds.items()}
        cells = [
            f"{v:.2f}" + ("" if n == "torch" else f" ({v / median['torch']:.2f}×)")
            for n, v in median.items()
        ]
        print(f"| {threads} | " + " | ".join(cells) + " |", flush=True)
    with torch.inference_mode():
        features = {name: d(torch.cat([real, noised])).double() for name, d in detectors.items()}
    reference = features["torch"]
    fids = {}
    for name, f in features.items():
        a, b = (compute_statistics(part, features=True) for part in f.split(len(real)))
        fids[name] = a.frechet_distance(b, "eigh")
        difference = float((f - reference).abs().max() / reference.abs().max())
        print(
            f"{names[name]}: max feature difference / max feature {difference:.2e}; "
            f"FID digits vs noised digits {fids[name]:.6f} "
            f"({abs(fids[name] - fids['torch']) / fids['torch']:.1e} relative)"
        )


if __name__ == "__main__":
    main()
