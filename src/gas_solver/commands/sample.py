"""``gas-solver sample``: samples of a trained GS or a classic solver for a seed range, written as
PNGs, ``samples.npz``, a grid picture and ``sample.json``."""

from __future__ import annotations

import dataclasses
import logging
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import option, require
from ..distributed import is_main
from ..images import image_batches, makes_images
from ..models.base import COMPILE_HELP, COMPUTE_DTYPES, DTYPE_HELP, DiffusionModel, prepare_network
from ..models.loading import load_model
from ..outputs import (
    atomic_write,
    check_output,
    clear_earlier_run,
    folder_lock,
    save_npz,
    write_json,
)
from ..runtime import resolve_device, run_metadata
from ..sampling import CondFn, Sampler, generate, load_sampler, seed_cond_fn
from ..seeds import parse_seeds
from ..solvers.registry import classic_solvers_help
from ..solvers.resolve import resolve_solver
from ..visualize import save_image_grid, save_scatter, to_uint8

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SampleConfig:
    """``gas-solver sample``: samples of a trained GS or a classic solver for a seed range."""

    solver: str = option(
        "unipc:nfe=4",
        lambda: (
            "a GS checkpoint (.safetensors) or a classic solver spec NAME[:KEY=VALUE,...]: "
            + classic_solvers_help()
        ),
    )
    model: str | None = option(None, "model name or path (default: the checkpoint's model)")
    seeds: str = option("50000-50063", "evaluation seeds (disjoint from teacher seeds)")
    out: str = option("runs/sample", "output folder")
    batch_size: int = option(64, "samples per batch")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    dtype: str = option("float32", DTYPE_HELP, choices=list(COMPUTE_DTYPES))
    compile: bool = option(False, COMPILE_HELP)
    prompts: str | None = option(
        None, "text models: a file of prompts, one a line; seed s gets prompt s mod count"
    )
    png: bool = option(True, "write one PNG per sample (image models)")
    npz: bool = option(True, "write samples.npz (float32 samples and their seeds)")

    def validate(self) -> None:
        parse_seeds(self.seeds)
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        check_output(self.out, "folder")
        if resolve_solver(self.solver).checkpoint is None:  # a classic spec names no model
            require(bool(self.model), "model", "required with a classic solver")


def run_sample(config: SampleConfig, progress: bool = True) -> Path:
    """Write samples (PNGs, ``samples.npz``), a grid picture and ``sample.json``; returns the folder.

    Image models get one PNG per seed and ``grid.png`` (the first 64); latent models' pictures
    are their decoded images, decoded batch by batch (:func:`~gas_solver.images.image_batches`)
    and written as they come, so only the latents, the grid's images and (with ``npz``) the
    decoded ``images`` array are held. ``samples.npz`` holds ``samples`` (latents for latent
    models), ``seeds``, and for latent models ``images``. 2-D models get ``scatter.png``.
    """
    device = resolve_device(config.device)
    model = load_model(config.model, device) if config.model else None
    model, sampler, description = load_sampler(config.solver, model, device)
    prepare_network(model, config.dtype, config.compile)
    cond_fn = seed_cond_fn(model, config.prompts)
    if not is_main():  # torchrun: the other ranks sample (and decode) their share; rank 0 writes
        samples = generate(
            model, sampler, parse_seeds(config.seeds), config.batch_size, False, cond_fn
        )
        if makes_images(model):
            for _ in image_batches(model, samples, config.batch_size, shared=True):
                pass
        return Path(config.out)
    with folder_lock(config.out, fresh=True) as out:  # once the model, solver and prompts are good
        return _sample_into(config, out, model, sampler, description, cond_fn, progress)


def _sample_into(
    config: SampleConfig,
    out: Path,
    model: DiffusionModel,
    sampler: Sampler,
    description: dict[str, Any],
    cond_fn: CondFn | None,
    progress: bool,
) -> Path:
    seeds = parse_seeds(config.seeds)
    samples = generate(model, sampler, seeds, config.batch_size, progress, cond_fn)
    clear_earlier_run(out)  # nothing of an earlier run is left to be read as ours
    arrays = {"samples": samples.numpy(), "seeds": np.asarray(seeds, dtype=np.int64)}
    if makes_images(model):
        keep_decoded = model.is_latent and config.npz  # latents are stored, and their images
        grid, decoded, done = [], [], 0
        if config.png:
            from PIL import Image

            (out / "images").mkdir(exist_ok=True)
        for images in image_batches(model, samples, config.batch_size, shared=True):
            grid.append(images[: max(0, 64 - done)])
            if keep_decoded:
                decoded.append(images.numpy())
            if config.png:
                for seed, pixels in zip(seeds[done:], to_uint8(images), strict=False):
                    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
                    atomic_write(
                        out / "images" / f"{seed:06d}.png", partial(image.save, format="PNG")
                    )
            done += len(images)
        if keep_decoded:
            arrays["images"] = np.concatenate(decoded)
        save_image_grid(torch.cat(grid), out / "grid.png")
    elif samples[0].numel() == 2:
        save_scatter({description["solver"]: samples}, out / "scatter.png", title=config.solver)
    if config.npz:
        save_npz(out / "samples.npz", arrays)
    write_json(
        out / "sample.json",
        {
            "solver": description,
            "seeds": config.seeds,
            "count": len(seeds),
            "model": model.identity(),
            "compute_dtype": model.compute_dtype,
            "compiled": model.compiled,
            "run": run_metadata(),
        },
    )
    log.info("wrote %d samples to %s", len(seeds), out)
    return out
