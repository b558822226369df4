"""What the ``teacher`` and ``sample`` commands do, as library functions with validated configs."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .config import option, require
from .data.teacher import CondFn, TeacherSet, generate_teacher_set
from .distributed import (
    all_gather,
    gather_ordered,
    is_main,
    main_lock,
    owned,
    rank,
    show_progress,
    world_size,
)
from .errors import ConfigError
from .models.base import DiffusionModel
from .models.loading import load_model
from .runtime import (
    atomic_write,
    folder_lock,
    remove_outputs,
    resolve_device,
    run_metadata,
    write_json,
)
from .schedules import LinearVPSchedule
from .seeds import EVAL_SEEDS, parse_seeds, seeded_noise
from .solvers.registry import SolverSpec, parse_solver_spec
from .solvers.resolve import TrainedSolver, resolve_solver
from .visualize import save_image_grid, save_scatter, to_uint8

log = logging.getLogger(__name__)

Sampler = Callable[[DiffusionModel, Tensor, Any], Tensor]

PIXEL_TEACHER_T_EPS = 1e-4
"""Teacher t_eps for continuous-time pixel (EDM) models, as in the paper (spec §1, Table 17)."""


@dataclasses.dataclass
class TeacherConfig:
    """``gas-solver teacher``: run a many-step solver on seeded noise and store the pairs."""

    model: str = option("", "model name or path (`gas-solver models` lists built-ins)")
    out: str = option("runs/teacher", "output folder of the teacher set")
    seeds: str = option("0-2399", "teacher seeds, EDM style ranges (train first, validate last)")
    solver: str = option(
        "unipc:nfe=20,order=3,variant=bh1,grid=logsnr",
        "teacher solver spec NAME[:KEY=VALUE,...] (the paper's UniPC-3, NFE 20, logSNR grid)",
    )
    batch_size: int = option(64, "samples per model call batch")
    shard_size: int = option(1000, "samples per shard file")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    overwrite: bool = option(False, "replace an existing teacher set of other settings")
    prompts: str | None = option(
        None, "text models: a file of prompts, one a line; seed s gets prompt s mod count"
    )

    def validate(self) -> None:
        require(bool(self.model), "model", "a model name or path is required")
        if self.prompts is not None:
            require(Path(self.prompts).is_file(), "prompts", f"{self.prompts} is not a file")
        parse_seeds(self.seeds)
        parse_solver_spec(self.solver)
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.shard_size >= 1, "shard_size", "must be >= 1")


@dataclasses.dataclass
class SampleConfig:
    """``gas-solver sample``: samples of a trained GS or a classic solver for a seed range."""

    solver: str = option("unipc:nfe=4", "a GS checkpoint (.safetensors) or a classic solver spec")
    model: str | None = option(None, "model name or path (default: the checkpoint's model)")
    seeds: str = option("50000-50063", "evaluation seeds (disjoint from teacher seeds)")
    out: str = option("runs/sample", "output folder")
    batch_size: int = option(64, "samples per batch")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    prompts: str | None = option(
        None, "text models: a file of prompts, one a line; seed s gets prompt s mod count"
    )
    png: bool = option(True, "write one PNG per sample (image models)")
    npz: bool = option(True, "write samples.npz (float32 samples and their seeds)")

    def validate(self) -> None:
        parse_seeds(self.seeds)
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(not Path(self.out).is_file(), "out", f"{self.out} is a file, not a folder")
        if isinstance(resolve_solver(self.solver), SolverSpec):
            require(bool(self.model), "model", "required with a classic solver")


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Atomic ``np.savez`` (through a file object, so no ``.npz`` suffix is appended)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)


def teacher_spec(text: str, model: DiffusionModel) -> SolverSpec:
    """Parse a teacher spec; continuous pixel models default to the paper's t_eps = 1e-4."""
    spec = parse_solver_spec(text)
    if (
        spec.t_eps is None
        and isinstance(spec.grid, str)
        and isinstance(model.schedule, LinearVPSchedule)
    ):
        spec = dataclasses.replace(spec, t_eps=PIXEL_TEACHER_T_EPS)
    return spec


def seed_cond_fn(model: DiffusionModel, prompts: str | None = None) -> CondFn | None:
    """The conditions of seeds: prompts from a file (one a line, seed s gets prompt s mod count)
    for text models, else the model's ``default_cond`` (class models: label = seed mod classes,
    spec §3.4), else none (unconditional models)."""
    if prompts is not None:
        if not model.takes_prompts:
            model.prompt_cond_fn([])  # raises: "takes no text prompts", naming the model
        try:
            text = Path(prompts).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"prompts: cannot read {prompts} as UTF-8 text ({err})") from None
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return model.prompt_cond_fn(lines)
    return model.default_cond


def make_teacher(config: TeacherConfig, progress: bool = True) -> TeacherSet:
    device = resolve_device(config.device)
    model = load_model(config.model, device)
    spec = teacher_spec(config.solver, model)
    cond_fn = seed_cond_fn(model, config.prompts)  # a bad --prompts is refused before writing
    with main_lock(config.out):
        return generate_teacher_set(
            model, config.out, config.seeds, spec, spec.to_dict(),
            batch_size=config.batch_size, shard_size=config.shard_size, device=device,
            overwrite=config.overwrite, progress=progress, cond_fn=cond_fn,
        )  # fmt: skip


def load_sampler(
    solver: str, model: DiffusionModel | None = None, device: str | torch.device = "cpu"
) -> tuple[DiffusionModel, Sampler, dict[str, Any]]:
    """Resolve a solver string to ``(model, sampler, description)``.

    ``solver`` is a GS checkpoint path or a classic spec (``unipc:nfe=4``). A checkpoint knows its
    model (``model_source`` in its metadata), so ``model`` may then be omitted. The description's
    ``solver`` is ``gs`` or ``gas`` for a checkpoint (how it was trained), else the spec's name.
    """
    resolved = resolve_solver(solver)
    if model is None:
        source = resolved.model_source if isinstance(resolved, TrainedSolver) else None
        if not source:
            raise ConfigError(f"model: required to run {solver!r}; pass --model")
        model = load_model(source, device)
    return model, resolved.build(model, device), resolved.describe()


@torch.no_grad()
def generate(
    model: DiffusionModel,
    sampler: Sampler,
    seeds: list[int],
    batch_size: int,
    progress: bool = True,
    cond_fn: CondFn | None = None,
) -> Tensor:
    """Samples for ``seeds`` (each from its own seeded noise), on the model's device, in order.

    ``cond_fn(seeds)`` gives the conditions; by default the model's (:func:`seed_cond_fn`).
    Under torchrun each rank samples the batches ``i`` with ``i mod K = rank`` and every rank gets
    all samples back (:func:`~gas_solver.distributed.gather_ordered`): the batches are those of
    one process, so the samples are the same bit for bit.
    """
    device = next((b.device for b in model.buffers()), torch.device("cpu"))
    cond_fn = cond_fn or seed_cond_fn(model)
    chunks = {}
    batches = owned(list(enumerate(range(0, len(seeds), batch_size))))
    for number, start in tqdm(
        batches, desc="sample", unit="batch", disable=not show_progress(progress)
    ):
        batch = seeds[start : start + batch_size]
        noise = seeded_noise(batch, model.sample_shape, device=device)
        cond = None if cond_fn is None else cond_fn(torch.tensor(batch, dtype=torch.int64))
        if isinstance(cond, Tensor):
            cond = cond.to(device)
        elif isinstance(cond, dict):
            cond = {key: value.to(device) for key, value in cond.items()}
        chunks[number] = sampler(model, noise, cond).float().cpu()
    return torch.cat(gather_ordered(chunks))


def makes_images(model: DiffusionModel) -> bool:
    """Whether the model's samples are pictures: a latent model (its decoded samples), or a
    pixel model of samples ``(C, H, W)`` with C = 1 or 3."""
    shape = tuple(model.sample_shape)
    return model.is_latent or (len(shape) == 3 and shape[0] in (1, 3))


def image_batches(
    model: DiffusionModel, samples: Tensor, batch_size: int = 64, shared: bool = False
) -> Iterator[Tensor]:
    """Model outputs → images in [−1, 1], one batch at a time (float32, on the CPU).

    The one place that turns what a sampler returns into pictures: latent models are decoded
    (``model.decode``, without gradient, ``batch_size`` latents per call, so the decoder's memory
    stays bounded), pixel models' samples are passed through unchanged. Lazy, so a consumer such
    as the FID never holds all decoded images at once.

    Args:
        model: the model that made ``samples``.
        samples: ``(N, *model.sample_shape)``, e.g. latents ``(N, 4, 64, 64)`` of SD.
        batch_size: samples per decoder call.
        shared: under torchrun, every rank passes the same ``samples`` and iterates to the end;
            the decoding is shared out, one batch per rank and round, and every rank gets every
            batch in order (at most K decoded batches are held at a time).

    Yields:
        ``(b, C, H, W)`` images; for latent models the decoder's resolution and channels.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size: must be >= 1, got {batch_size}")
    chunks = samples.split(batch_size)
    if not model.is_latent:
        yield from chunks
        return
    k, me = (world_size(), rank()) if shared else (1, 0)
    for first in range(0, len(chunks), k):
        images = None
        if first + me < len(chunks):
            with torch.no_grad():
                images = model.decode(chunks[first + me]).float().cpu()
        this_round = all_gather(images) if shared else [images]
        yield from (part for part in this_round if part is not None)


def to_images(model: DiffusionModel, samples: Tensor, batch_size: int = 64) -> Tensor:
    """All of :func:`image_batches` in one tensor ``(N, C, H, W)``; ``samples`` itself for pixel
    models. Meant for a few pictures (grids); stream :func:`image_batches` for many."""
    if not model.is_latent:
        return samples
    return torch.cat(list(image_batches(model, samples, batch_size)))


def run_sample(config: SampleConfig, progress: bool = True) -> Path:
    """Write samples (PNGs, ``samples.npz``), a grid picture and ``sample.json``; returns the folder.

    Image models get one PNG per seed and ``grid.png`` (the first 64); latent models' pictures
    are their decoded images, decoded batch by batch (:func:`image_batches`) and written as they
    come, so only the latents, the grid's images and (with ``npz``) the decoded ``images`` array
    are held. ``samples.npz`` holds ``samples`` (latents for latent models), ``seeds``, and for
    latent models ``images``. 2-D models get ``scatter.png``.
    """
    device = resolve_device(config.device)
    model = load_model(config.model, device) if config.model else None
    model, sampler, description = load_sampler(config.solver, model, device)
    cond_fn = seed_cond_fn(model, config.prompts)
    if not is_main():  # torchrun: the other ranks sample (and decode) their share; rank 0 writes
        samples = generate(
            model, sampler, parse_seeds(config.seeds), config.batch_size, False, cond_fn
        )
        if makes_images(model):
            for _ in image_batches(model, samples, config.batch_size, shared=True):
                pass
        return Path(config.out)
    with folder_lock(config.out) as out:  # only once the model, solver and prompts are good
        return _sample_into(config, out, model, sampler, description, cond_fn, progress)


SAMPLE_OUTPUTS = ("images", "samples.npz", "grid.png", "scatter.png", "sample.json")


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
    remove_outputs(out, SAMPLE_OUTPUTS)  # nothing of an earlier run is left to be read as ours
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
            "run": run_metadata(),
        },
    )
    log.info("wrote %d samples to %s", len(seeds), out)
    return out


__all__ = [
    "EVAL_SEEDS",
    "SampleConfig",
    "TeacherConfig",
    "image_batches",
    "load_sampler",
    "make_teacher",
    "makes_images",
    "run_sample",
    "seed_cond_fn",
    "to_images",
]
