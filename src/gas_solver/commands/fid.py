"""``gas-solver fid``: the FID of one set of images against reference statistics, with
:mod:`gas_solver.metrics.fid` (EDM's detector and preprocessing).

The images come from a folder, an ``.npz`` (``gas-solver sample``'s ``samples.npz``, or
``images``/``arr_0``), a bundled data set, or straight from a solver (``--solver`` with
``--model``/``--seeds``). ``--save-ref`` writes the statistics of those images as an EDM-style ``.npz`` (``mu``, ``sigma``)
that later runs take as ``--ref``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import option, require
from ..distributed import is_main, on_main, own_batches
from ..errors import ConfigError, MissingAssetError
from ..images import image_batches, makes_images
from ..metrics.frechet import FID_METHODS
from ..models.base import COMPILE_HELP, COMPUTE_DTYPES, DTYPE_HELP, prepare_network
from ..models.loading import load_model
from ..outputs import check_output, json_safe, write_json
from ..runtime import reading, resolve_device, run_metadata
from ..sampling import generate, load_sampler, seed_cond_fn
from ..seeds import EVAL_SEEDS, format_seeds, parse_seeds
from ..solvers.resolve import resolve_solver

log = logging.getLogger(__name__)


@dataclasses.dataclass
class FIDConfig:
    """``gas-solver fid``: FID of images against reference statistics (and/or save statistics)."""

    images: str | None = option(
        None,
        "images: a folder of PNGs, an .npz (`sample`'s samples.npz: latent models' decoded "
        "images; or 'images'/'arr_0' NHWC uint8), a `sample` output folder, or a bundled data "
        "set (mnist, digits)",
    )
    solver: str | None = option(
        None,
        "instead of --images: sample with this GS checkpoint or classic solver spec (latent "
        "models: FID of the decoded images)",
    )
    model: str | None = option(
        None, "with --solver: model name or path; none: the checkpoint's model"
    )
    seeds: str = option(EVAL_SEEDS, "with --solver: evaluation seeds (the paper's 50k)")
    prompts: str | None = option(
        None,
        "with --solver, text models: a file of prompts, one a line; seed s gets prompt s mod count",
    )
    ref: str | None = option(
        None,
        "reference: an EDM/ADM .npz (mu, sigma; or images), a folder of images, or a bundled data "
        "set (mnist, digits; statistics cached)",
    )
    ref_num: int | None = option(None, "use only the first REF_NUM reference images; none: all")
    num_images: int | None = option(None, "use only the first NUM_IMAGES images; none: all")
    save_ref: str | None = option(
        None, "also write the statistics of these images to this .npz (EDM style, a valid --ref)"
    )
    method: str = option(
        "sqrtm",
        "matrix square root: sqrtm (scipy, as EDM) or eigh (same value, several times faster)",
        choices=list(FID_METHODS),
    )
    batch_size: int = option(64, "images per Inception call (and samples per batch with --solver)")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    dtype: str = option(
        "float32", "with --solver: " + DTYPE_HELP + " (the Inception runs in float32)",
        choices=list(COMPUTE_DTYPES),
    )  # fmt: skip
    compile: bool = option(False, "with --solver: " + COMPILE_HELP)
    out: str | None = option(None, "also write the result to this JSON file")

    def validate(self) -> None:
        require(
            bool(self.images) != bool(self.solver),
            "images",
            "give exactly one of --images and --solver",
        )
        require(bool(self.ref or self.save_ref), "ref", "give --ref, --save-ref or both")
        require(
            self.num_images is None or self.num_images >= 2,
            "num_images",
            "FID needs at least 2 images",
        )
        require(self.ref_num is None or self.ref_num >= 2, "ref_num", "needs at least 2 images")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.method in FID_METHODS, "method", f"must be one of {FID_METHODS}")
        require(
            self.save_ref is None or self.save_ref.endswith(".npz"),
            "save_ref",
            f"must be an .npz path, got {self.save_ref!r}",
        )
        for output in (self.save_ref, self.out):
            if output:
                check_output(output, "file")
        if self.prompts is not None:
            require(Path(self.prompts).is_file(), "prompts", f"{self.prompts} is not a file")
        require(
            bool(self.solver) or (self.dtype == "float32" and not self.compile),
            "dtype" if self.dtype != "float32" else "compile",
            "applies to the model's calls of --solver only; leave it out with --images",
        )
        if self.solver:
            parse_seeds(self.seeds)
            if resolve_solver(self.solver).checkpoint is None:  # a classic spec names no model
                require(bool(self.model), "model", "required with a classic solver")


def load_images(source: str, num: int | None = None) -> Tensor | str:
    """An image source named on the command line → what :mod:`gas_solver.metrics.fid` reads.

    Args:
        source: a bundled data set name; an ``.npz`` with ``samples`` (``gas-solver sample``:
            float32 ``(N, C, H, W)`` in [−1, 1]; for a latent model the file also holds the
            decoded ``images``, which are used instead of the latents) or with
            ``images``/``arr_0``; a folder of images; a ``gas-solver sample`` output folder (its
            ``samples.npz`` is used).
        num: keep the first ``num`` (data sets and ``samples`` arrays; paths are capped later).

    Returns:
        Images ``(N, C, H, W)`` as a tensor, or a path for :func:`~gas_solver.metrics.fid`.

    Raises:
        MissingAssetError: nothing exists under that name.
        ConfigError: the ``.npz`` holds samples that are not images (e.g. 2-D points).
    """
    from ..data.datasets import DATASETS, dataset_names, load_dataset

    path = Path(source)
    if source in DATASETS and not path.exists():
        images = load_dataset(source).images
        return images[:num] if num is not None else images
    if path.is_dir() and (path / "samples.npz").is_file() and (path / "sample.json").is_file():
        path = path / "samples.npz"
    if not path.exists():
        raise MissingAssetError(
            f"images {source!r}: no such file or folder, and not a bundled data set "
            f"({', '.join(dataset_names())})"
        )
    if path.is_file() and path.suffix == ".npz":
        with reading(path, "an .npz archive"), np.load(path, allow_pickle=False) as data:
            if "samples" in data.files:
                # `sample` of a latent model: samples are latents, images their decoded pictures
                key = "images" if "images" in data.files else "samples"
                samples = data[key]  # the zip's CRC-32 is checked: a changed byte is refused
                if samples.ndim != 4 or samples.shape[1] not in (1, 3):
                    raise ConfigError(
                        f"{path}: {key} of shape {samples.shape} are not images "
                        "(N, C, H, W) with C = 1 or 3; FID applies to image models only"
                    )
                samples = samples[:num] if num is not None else samples
                return torch.from_numpy(np.ascontiguousarray(samples))
    return str(path)


def _has_samples(path: str) -> bool:
    """Whether ``path`` is an ``.npz`` written by ``gas-solver sample`` (key ``samples``)."""
    if not (path.endswith(".npz") and Path(path).is_file()):
        return False
    with reading(path, "an .npz archive"), np.load(path, allow_pickle=False) as data:
        return "samples" in data.files


def run_fid(config: FIDConfig, progress: bool = True) -> dict[str, Any]:
    """Compute what ``config`` asks for; returns the result (also written to ``config.out``).

    The result has ``fid`` (``None`` without ``--ref``), ``num_images``, ``reference`` and
    ``reference_num_images``, ``method``, ``images`` (the source), ``saved_reference``.

    With ``--solver`` on a latent model the samples (latents) are decoded in batches of
    ``batch_size`` and the decoded images, in [−1, 1], go to the Inception
    (``images.decoded`` is then ``True``).
    """
    from ..metrics.fid_reference import reference_statistics
    from ..metrics.fid_statistics import compute_statistics
    from ..metrics.inception import INCEPTION_SHA1

    device = resolve_device(config.device)
    kwargs = dict(batch_size=config.batch_size, device=device, progress=progress)
    images: Tensor | str | None = None
    if config.solver:
        model = load_model(config.model, device) if config.model else None
        model, sampler, description = load_sampler(config.solver, model, device)
        prepare_network(model, config.dtype, config.compile)
        if not makes_images(model):
            raise ConfigError(f"model: samples of shape {model.sample_shape} are not images")
        seeds = parse_seeds(config.seeds)[: config.num_images]
        if config.num_images is not None and len(seeds) < config.num_images:
            raise ConfigError(
                f"num_images: {config.num_images} images, but --seeds gives only {len(seeds)}"
            )
        source: Any = {
            "solver": description,
            "seeds": format_seeds(seeds),
            "decoded": model.is_latent,
            "compute_dtype": model.compute_dtype,
        }
    else:
        images = load_images(config.images, config.num_images)
        source = config.images
    ref = None
    if config.ref:  # before sampling and the Inception: a bad reference fails early
        ref_source: Any = config.ref
        if _has_samples(ref_source):
            ref_source = load_images(ref_source)
        ref = reference_statistics(ref_source, num_images=config.ref_num, **kwargs)
    if images is None:  # latent models: decoded batch by batch on the way to the Inception
        cond_fn = seed_cond_fn(model, config.prompts)
        samples = generate(model, sampler, seeds, config.batch_size, progress, cond_fn)
        mine = own_batches(samples, config.batch_size)  # torchrun: each decodes and scores its own
        images = image_batches(model, mine, config.batch_size) if model.is_latent else mine
        stats = compute_statistics(images, split=False, **kwargs)
    else:
        stats = compute_statistics(images, num_images=config.num_images, **kwargs)
    if config.save_ref and is_main():  # torchrun: every rank has the statistics, rank 0 writes
        stats.save(config.save_ref)
        log.info("wrote FID statistics of %d images to %s", stats.num_images, config.save_ref)
    result = {
        "fid": None if ref is None else on_main(stats.frechet_distance, ref, config.method),
        "num_images": stats.num_images,
        "images": source,
        "reference": config.ref,
        "reference_num_images": None if ref is None else ref.num_images,
        "method": config.method,
        "detector_sha1": INCEPTION_SHA1,
        "saved_reference": config.save_ref,
        "run": run_metadata(),
    }
    if config.out and is_main():
        write_json(config.out, json_safe(result))
    return result


def format_fid(result: dict[str, Any]) -> str:
    """The one-line summary the ``fid`` command prints."""
    lines = []
    if result["fid"] is not None:
        ref_n = result["reference_num_images"]
        lines.append(
            f"FID {result['fid']:.4f} (N={result['num_images']} images; reference "
            f"{result['reference']}, N={ref_n if ref_n is not None else '?'}; {result['method']})"
        )
    if result["saved_reference"]:
        lines.append(
            f"reference statistics: {result['saved_reference']} (N={result['num_images']})"
        )
    return "\n".join(lines)
