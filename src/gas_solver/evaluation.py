"""What the ``fid`` and ``compare`` commands do, as library functions with validated configs.

``fid`` (:class:`FIDConfig`, :func:`run_fid`): the FID of one set of images against reference
statistics, with :mod:`gas_solver.metrics.fid` (EDM's detector and preprocessing). The images come
from a folder, an ``.npz`` (``gas-solver sample``'s ``samples.npz``, or ``images``/``arr_0``), a
bundled data set, or straight from a solver (``--solver`` with ``--model``/``--seeds``).
``--save-ref`` writes the statistics of those images as an EDM-style ``.npz`` (``mu``, ``sigma``)
that later runs take as ``--ref``.

``compare`` (:class:`CompareConfig`, :func:`compare`): one model, several solvers (classic specs
and trained GS/GAS checkpoints) and a many-step teacher, all on the same evaluation seeds, so every
sample has a paired teacher sample from the same noise. One row per solver, the teacher's first:
FID (image models, when a reference is given; its N is the number of seeds), L1/RMSE/PSNR to the
teacher (:mod:`gas_solver.metrics.fidelity`), the model calls per sample (counted, not declared)
and the wall-clock seconds of sampling alone. Written to ``out/``:

* ``compare.md``: the table, with the model, seeds, teacher and FID reference above it;
* ``compare.json``: ``rows`` (the dicts :func:`compare` returns) and how the run was made; the
  teacher's PSNR (+∞) and any other non-finite number is written as ``null``;
* image models: ``grid_<label>.png`` per solver (the first 64 seeds, 8 per row, seed ``i`` in
  cell ``i`` for every solver) and ``comparison.png`` (teacher and each solver on the first 8
  seeds, one row each); other models: ``scatter.png`` (all solvers) and ``scatter_<label>.png``
  (each solver over the teacher);
* ``time_grids.png``: each solver's time grid (GS/GAS: the learned ``timesteps()``).

Solvers are listed in one string separated by ``;`` (:data:`SOLVER_SEPARATOR`), because classic
specs contain commas: ``"unipc:nfe=4;dpmpp:nfe=4,order=2;runs/train/solver.safetensors"``.

**Latent models** (LDM, SD: ``model.is_latent``) sample latents, and each space is used where the
paper uses it (spec §3.1, §3.4–3.5):

* FID, the pictures (grids, ``comparison.png``) and ``fid --solver`` use the **decoded images**
  in [−1, 1] (:func:`gas_solver.pipeline.image_batches`: decoded in batches, streamed to the
  Inception, never all held at once). The teacher row is decoded the same way.
* L1/RMSE/PSNR to the teacher are computed on the **latents**, the space the paper trains in
  (per-sample L1 of latents) and logs (L2 of latents), and the space teacher sets store. PSNR
  keeps the pixel convention (peak-to-peak range 2), so on latents it is a relative number for
  ranking solvers, not an image PSNR. The table header and ``fidelity_space`` in the rows and
  ``compare.json`` name the space (``latents``; ``pixels`` for pixel image models, ``samples``
  for others). Pixel models are unchanged: everything on their samples.
* ``fid --images`` on a ``sample`` output of a latent model reads its decoded ``images``, not
  its ``samples`` (the latents).

**Seeds** (DESIGN principle 4): evaluation seeds must not overlap the seeds of the teacher set a
solver learnt from, or it is scored on its own training noise. :func:`compare` checks the seeds
of ``teacher_set`` (when given) and of the teacher set each GS/GAS checkpoint records, and
refuses an overlap with a :class:`~gas_solver.errors.ConfigError` unless
``allow_seed_overlap`` (then it logs a warning).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .config import option, require
from .data.teacher import MANIFEST_NAME, TeacherSet
from .errors import ConfigError, GasSolverError, MissingAssetError
from .models.base import DiffusionModel
from .models.loading import load_model
from .pipeline import (
    Sampler,
    generate,
    image_batches,
    is_checkpoint,
    is_latent,
    load_sampler,
    makes_images,
    seed_cond_fn,
    teacher_spec,
    to_images,
)
from .runtime import resolve_device, run_metadata, write_json
from .seeds import EVAL_SEEDS, TEACHER_SEEDS, format_seeds, parse_seeds
from .solvers.generalized import load_metadata
from .solvers.registry import SolverSpec, parse_solver_spec
from .visualize import plot_time_grids, save_comparison_grid, save_image_grid, save_scatter

log = logging.getLogger(__name__)

SOLVER_SEPARATOR = ";"
DEFAULT_TEACHER = "unipc:nfe=20,order=3,variant=bh1,grid=logsnr"
COMPARE_SEEDS = "50000-50255"
"""256 evaluation seeds: minutes on a CPU for the bundled MNIST model. FID from 256 images is
biased upwards and only comparable at equal N; use ``50000-99999`` for the paper's protocol."""
FID_METHODS = ("sqrtm", "eigh")
GRID_IMAGES = 64  # images per solver grid, 8 per row
COMPARISON_IMAGES = 8  # seeds per row of comparison.png
SCATTER_POINTS = 2000  # points per solver in the scatter plots


# ---------------------------------------------------------------------------------------------
# gas-solver fid


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
    num: int | None = option(None, "use only the first NUM images; none: all")
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
    out: str | None = option(None, "also write the result to this JSON file")

    def validate(self) -> None:
        require(
            bool(self.images) != bool(self.solver),
            "images",
            "give exactly one of --images and --solver",
        )
        require(bool(self.ref or self.save_ref), "ref", "give --ref, --save-ref or both")
        require(self.num is None or self.num >= 2, "num", "FID needs at least 2 images")
        require(self.ref_num is None or self.ref_num >= 2, "ref_num", "needs at least 2 images")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.method in FID_METHODS, "method", f"must be one of {FID_METHODS}")
        require(
            self.save_ref is None or self.save_ref.endswith(".npz"),
            "save_ref",
            f"must be an .npz path, got {self.save_ref!r}",
        )
        if self.prompts is not None:
            require(Path(self.prompts).is_file(), "prompts", f"{self.prompts} is not a file")
        if self.solver:
            parse_seeds(self.seeds)
            if not is_checkpoint(self.solver):
                parse_solver_spec(self.solver)
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
    from .data.datasets import DATASETS, dataset_names, load_dataset

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
        with np.load(path, allow_pickle=False) as data:
            if "samples" in data.files:
                # `sample` of a latent model: samples are latents, images their decoded pictures
                key = "images" if "images" in data.files else "samples"
                samples = data[key]
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
    with np.load(path, allow_pickle=False) as data:
        return "samples" in data.files


def run_fid(config: FIDConfig, progress: bool = True) -> dict[str, Any]:
    """Compute what ``config`` asks for; returns the result (also written to ``config.out``).

    The result has ``fid`` (``None`` without ``--ref``), ``num_images``, ``reference`` and
    ``reference_num_images``, ``method``, ``images`` (the source), ``saved_reference``.

    With ``--solver`` on a latent model the samples (latents) are decoded in batches of
    ``batch_size`` and the decoded images, in [−1, 1], go to the Inception
    (``images.decoded`` is then ``True``).
    """
    from .metrics.fid import INCEPTION_SHA1, compute_statistics, reference_statistics

    device = resolve_device(config.device)
    kwargs = dict(batch_size=config.batch_size, device=device, progress=progress)
    images: Tensor | str | None = None
    if config.solver:
        model = load_model(config.model, device) if config.model else None
        model, sampler, description = load_sampler(config.solver, model, device)
        if not makes_images(model):
            raise ConfigError(f"model: samples of shape {model.sample_shape} are not images")
        seeds = parse_seeds(config.seeds)[: config.num]
        source: Any = {
            "solver": description,
            "seeds": format_seeds(seeds),
            "decoded": is_latent(model),
        }
    else:
        images = load_images(config.images, config.num)
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
        images = image_batches(model, samples, config.batch_size) if is_latent(model) else samples
    stats = compute_statistics(images, num_images=config.num, **kwargs)
    if config.save_ref:
        stats.save(config.save_ref)
        log.info("wrote FID statistics of %d images to %s", stats.num_images, config.save_ref)
    result = {
        "fid": None if ref is None else stats.frechet_distance(ref, method=config.method),
        "num_images": stats.num_images,
        "images": source,
        "reference": config.ref,
        "reference_num_images": None if ref is None else ref.num_images,
        "method": config.method,
        "detector_sha1": INCEPTION_SHA1,
        "saved_reference": config.save_ref,
        "run": run_metadata(),
    }
    if config.out:
        write_json(config.out, _json_safe(result))
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


# ---------------------------------------------------------------------------------------------
# gas-solver compare


@dataclasses.dataclass
class CompareConfig:
    """``gas-solver compare``: several solvers on the same seeds, against a many-step teacher."""

    solvers: str = option(
        "",
        "solvers separated by ';' (classic specs contain commas): GS/GAS checkpoints and/or "
        "classic specs, e.g. 'unipc:nfe=4;dpmpp:nfe=4,order=2;runs/train/solver.safetensors'",
    )
    model: str | None = option(None, "model name or path; none: the model of the first checkpoint")
    nfe: int | None = option(None, "NFE of classic specs that give none")
    teacher: str = option(
        DEFAULT_TEACHER, "teacher solver spec: the reference of L1/RMSE/PSNR, and a row itself"
    )
    seeds: str = option(COMPARE_SEEDS, "evaluation seeds (256 by default: quick on a CPU)")
    prompts: str | None = option(
        None, "text models: a file of prompts, one a line; seed s gets prompt s mod count"
    )
    teacher_set: str | None = option(
        None,
        "the teacher set the solvers were trained on: the evaluation seeds must not overlap its "
        "seeds (checkpoints' recorded teacher sets are checked too)",
    )
    allow_seed_overlap: bool = option(
        False, "only warn when evaluation seeds overlap teacher-set seeds (default: refuse)"
    )
    fid_ref: str | None = option(
        None,
        "FID reference (image models only; latent models: of decoded images): a bundled data "
        "set (mnist, digits), an EDM/ADM .npz, or a folder of images; none: no FID",
    )
    fid_ref_num: int | None = option(
        None, "use only the first FID_REF_NUM reference images; none: all"
    )
    fid_method: str = option(
        "sqrtm", "FID matrix square root: sqrtm (as EDM) or eigh", choices=list(FID_METHODS)
    )
    batch_size: int = option(64, "samples per batch (and images per Inception call)")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    out: str = option("runs/compare", "output folder")

    def validate(self) -> None:
        solvers = split_solvers(self.solvers)
        require(self.nfe is None or self.nfe >= 1, "nfe", f"must be >= 1, got {self.nfe}")
        for text in solvers:
            if not is_checkpoint(text):
                classic_spec(text, self.nfe)
        parse_solver_spec(self.teacher)
        require(
            bool(self.model) or any(is_checkpoint(text) for text in solvers),
            "model",
            "required unless a solver checkpoint names its model",
        )
        seeds = parse_seeds(self.seeds)
        require(not self.fid_ref or len(seeds) >= 2, "seeds", "FID needs at least 2 seeds")
        if self.teacher_set:
            path = Path(self.teacher_set)
            require(
                (path / "manifest.json").is_file() or path.name == "manifest.json",
                "teacher_set",
                f"{self.teacher_set} is not a teacher set (no manifest.json); make one with "
                "`gas-solver teacher`",
            )
        require(
            self.fid_ref_num is None or self.fid_ref_num >= 2, "fid_ref_num", "needs >= 2 images"
        )
        require(self.fid_method in FID_METHODS, "fid_method", f"must be one of {FID_METHODS}")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        if self.prompts is not None:
            require(Path(self.prompts).is_file(), "prompts", f"{self.prompts} is not a file")


def split_solvers(solvers: str | Sequence[str]) -> list[str]:
    """``"a;b;c"`` (or a list) → ``["a", "b", "c"]``, stripped; empty items are dropped.

    Raises:
        ConfigError: no solver at all, or one listed twice.
    """
    items = solvers.split(SOLVER_SEPARATOR) if isinstance(solvers, str) else list(solvers)
    items = [str(item).strip() for item in items if str(item).strip()]
    if not items:
        raise ConfigError(
            "solvers: give at least one solver; separate several with ';', e.g. "
            "'unipc:nfe=4;dpmpp:nfe=4,order=2;runs/train/solver.safetensors'"
        )
    dup = next((item for item in items if items.count(item) > 1), None)
    if dup is not None:
        raise ConfigError(f"solvers: {dup!r} is listed twice")
    return items


def classic_spec(text: str, nfe: int | None = None) -> SolverSpec:
    """Parse a classic spec; ``nfe`` applies only if it gives neither ``nfe`` nor an explicit grid."""
    compact = "".join(text.split())
    keys = {item.partition("=")[0] for item in re.split(r"[:,]", compact)}
    explicit_grid = "grid=[" in compact
    if nfe is None or "nfe" in keys or explicit_grid:
        return parse_solver_spec(text)
    return parse_solver_spec(text, nfe=nfe)


@dataclasses.dataclass
class _Entry:
    """One row to run: a solver with its label and description."""

    label: str
    kind: str  # teacher | classic | gs | gas
    sampler: Sampler
    nfe: int
    grid: list[float]
    description: dict[str, Any]
    spec: str | None = None
    checkpoint: str | None = None


def _entries(
    model: DiffusionModel,
    solvers: Sequence[str],
    teacher: str,
    nfe: int | None,
    device: torch.device,
) -> list[_Entry]:
    spec = teacher_spec(teacher, model)
    entries = [
        _Entry(
            "teacher", "teacher", spec, spec.nfe, _grid(spec, model),
            {"solver": spec.name, **spec.to_dict()}, spec=spec.to_string(),
        )
    ]  # fmt: skip
    for text in solvers:
        if is_checkpoint(text):
            _, gs, description = load_sampler(text, model, device)
            training = load_metadata(text).get("training", {}).get("config", {})
            kind = "gas" if training.get("loss") == "gas" or training.get("adversarial") else "gs"
            with torch.no_grad():
                grid = gs.timesteps().double().cpu().tolist()
            entries.append(
                _Entry(
                    f"{kind.upper()}-{gs.nfe} {text}", kind, gs, gs.nfe, grid, description,
                    checkpoint=str(text),
                )
            )  # fmt: skip
        else:
            spec = classic_spec(text, nfe)
            label = "".join(text.split())
            if "nfe=" not in label and "grid=[" not in label:
                label += f"{',' if ':' in label else ':'}nfe={spec.nfe}"
            entries.append(
                _Entry(
                    label, "classic", spec, spec.nfe, _grid(spec, model),
                    {"solver": spec.name, **spec.to_dict()}, spec=spec.to_string(),
                )
            )  # fmt: skip
    labels = [e.label for e in entries]
    dup = next((label for label in labels if labels.count(label) > 1), None)
    if dup is not None:
        raise ConfigError(f"solvers: {dup!r} is listed twice")
    return entries


def _grid(spec: SolverSpec, model: DiffusionModel) -> list[float]:
    return spec.make_grid(model.schedule).double().cpu().tolist()


def teacher_seed_sets(
    solvers: Sequence[str], teacher_set: str | Path | None = None
) -> list[tuple[str, list[int]]]:
    """The teacher-set seeds that evaluation seeds must avoid, each with what it comes from.

    Args:
        solvers: the compared solvers; for each GS/GAS checkpoint among them, the teacher set
            its metadata records: the seed list stored with it (``teacher.seeds``), or for
            checkpoints without one the manifest at the recorded path, if it still exists.
        teacher_set: a teacher set folder (or its ``manifest.json``) given by the user.

    Returns:
        ``[(description, seeds), ...]``, one per distinct teacher set.

    Raises:
        MissingAssetError, GasSolverError: ``teacher_set`` is not a readable, finished set.
    """
    found: dict[str, tuple[str, list[int]]] = {}
    if teacher_set is not None:
        made = TeacherSet(teacher_set)
        found[_path_key(made.path)] = (
            f"teacher set {made.path}",
            parse_seeds(made.manifest["seeds"]),
        )
    for text in solvers:
        if not is_checkpoint(text):
            continue
        recorded = load_metadata(text).get("teacher") or {}
        path = recorded.get("path")
        key = _path_key(path) if path else f"checkpoint:{text}"
        if key in found:
            continue
        name = f"the teacher set {path} of {text}" if path else f"the teacher set of {text}"
        if recorded.get("seeds"):
            found[key] = (name, parse_seeds(recorded["seeds"]))
        elif path and (Path(path) / MANIFEST_NAME).is_file():
            found[key] = (name, parse_seeds(TeacherSet(path).manifest["seeds"]))
        else:
            log.info(
                "%s records no teacher seeds and its teacher set %s is not here; its seeds "
                "cannot be checked against the evaluation seeds (pass --teacher-set)",
                text,
                path,
            )
    return list(found.values())


def check_seed_overlap(
    seeds: Sequence[int],
    teacher_seeds: Sequence[tuple[str, Sequence[int]]],
    allow: bool = False,
) -> None:
    """Refuse evaluation seeds shared with a teacher set (DESIGN principle 4).

    A solver scored on the noise it was trained on looks better than it is, so this raises
    unless ``allow``, in which case it logs a warning per overlapping set.

    Args:
        seeds: the evaluation seeds.
        teacher_seeds: ``(description, seeds)`` per teacher set (:func:`teacher_seed_sets`).
        allow: warn instead of raising.

    Raises:
        ConfigError: some evaluation seeds are seeds of a teacher set (and not ``allow``).
    """
    wanted = set(seeds)
    for name, taught in teacher_seeds:
        common = wanted.intersection(taught)
        if not common:
            continue
        message = (
            f"seeds: {len(common)} of the {len(wanted)} evaluation seeds (e.g. {min(common)}) "
            f"are seeds of {name}, so a solver trained on it would be scored on its own training "
            f"noise. Teacher and evaluation seeds never overlap (defaults: teacher "
            f"{TEACHER_SEEDS}, evaluation {EVAL_SEEDS}); pick other --seeds"
        )
        if not allow:
            raise ConfigError(message + ", or pass --allow-seed-overlap to only warn")
        log.warning("%s (allowed by --allow-seed-overlap: the scores are optimistic)", message)


def _path_key(path: str | Path) -> str:
    """A teacher set's folder as a comparable key (its manifest path names the same set)."""
    path = Path(path)
    if path.name == MANIFEST_NAME:
        path = path.parent
    return str(path.resolve())


def _check_teacher_solver(entry: _Entry, teacher_set: str | Path) -> None:
    """Warn when the compared teacher is not the solver that made ``teacher_set``."""
    stored = TeacherSet(teacher_set).solver_spec
    try:
        same = SolverSpec.from_dict(stored).to_string() == entry.spec
    except (GasSolverError, KeyError, TypeError, ValueError):
        same = False
    if not same:
        log.warning(
            "the teacher of this comparison (%s) is not the solver of teacher set %s (%s): "
            "L1/RMSE/PSNR measure the distance to the former; pass --teacher to change it",
            entry.spec,
            teacher_set,
            stored,
        )


def compare(
    model: DiffusionModel | str,
    solvers: str | Sequence[str],
    seeds: str | Sequence[int] = COMPARE_SEEDS,
    *,
    nfe: int | None = None,
    teacher: str = DEFAULT_TEACHER,
    teacher_set: str | Path | None = None,
    allow_seed_overlap: bool = False,
    prompts: str | Path | None = None,
    fid_ref: Any = None,
    fid_ref_num: int | None = None,
    fid_method: str = "sqrtm",
    out: str | Path | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run the teacher and each solver on the same seeds; tabulate and draw them.

    Args:
        model: a :class:`DiffusionModel`, or a model name/path (loaded on ``device``).
        solvers: GS/GAS checkpoint paths and classic specs, as a list or one ``;``-separated
            string (see :func:`split_solvers`).
        seeds: evaluation seeds, EDM-style text or integers; they must be disjoint from the
            seeds of ``teacher_set`` and of the teacher sets the checkpoints record
            (:func:`check_seed_overlap`).
        nfe: NFE of classic specs that give none.
        teacher: teacher spec (continuous pixel models get the paper's t_eps = 1e-4, as in
            ``gas-solver teacher``); its samples are the reference of L1/RMSE/PSNR.
        teacher_set: the teacher set the solvers learnt from (a folder), for the seed check; a
            warning is logged if ``teacher`` is not the solver that made it.
        allow_seed_overlap: only warn about evaluation seeds that are teacher seeds.
        prompts: text models: a file of prompts, one a line (seed s gets prompt s mod count);
            other models take their default conditions (:func:`~gas_solver.pipeline.seed_cond_fn`).
        fid_ref: FID reference, anything :func:`~gas_solver.metrics.reference_statistics`
            takes (a bundled data set name, an ``.npz``, a folder, :class:`FIDStatistics`);
            ``None``: no FID. Image models only; for latent models the FID (and the pictures)
            use the decoded images, while L1/RMSE/PSNR stay on the latents (module docstring).
        fid_ref_num: use the first so many reference images.
        fid_method: ``sqrtm`` (EDM) or ``eigh``, see :func:`~gas_solver.metrics.frechet_distance`.
        out: folder for the table, JSON and pictures (see the module docstring); ``None``: none.
        batch_size: samples per batch, and images per Inception call.
        device: where the model (when given by name) and the Inception run; default: the
            model's device, else ``auto``.
        progress: show progress bars.

    Returns:
        One dict per row, the teacher's first: ``label``, ``kind`` (teacher, classic, gs, gas),
        ``solver``, ``nfe`` (model calls per sample, counted), ``spec`` (classic, text syntax)
        or ``checkpoint``, ``n_samples``, ``fid`` (``None`` without reference or for non-image
        models), ``l1``/``rmse``/``psnr`` (means over samples, to the teacher) and their
        ``*_std``, ``fidelity_space`` (``latents``, ``pixels`` or ``samples``: where
        L1/RMSE/PSNR were computed), ``seconds`` (wall-clock sampling time), ``grid`` (the time
        grid) and ``picture`` (the grid or scatter file written, or ``None``).

    Raises:
        ConfigError: bad solvers, seeds or options, ``fid_ref`` for a non-image model, or
            evaluation seeds shared with a teacher set (unless ``allow_seed_overlap``).
        MissingAssetError: a missing checkpoint, model, reference or FID detector.
    """
    from .metrics.fid import compute_statistics, reference_statistics
    from .metrics.fidelity import per_sample_fidelity, summarize_fidelity

    if fid_method not in FID_METHODS:
        raise ConfigError(f"fid_method: must be one of {FID_METHODS}, got {fid_method!r}")
    if isinstance(device, str):
        device = resolve_device(device)
    if isinstance(model, str):
        device = device or resolve_device("auto")
        model = load_model(model, device)
    elif device is None:
        device = next((b.device for b in model.buffers()), torch.device("cpu"))
    seed_list = parse_seeds(seeds)
    solver_list = split_solvers(solvers)
    check_seed_overlap(
        seed_list, teacher_seed_sets(solver_list, teacher_set), allow=allow_seed_overlap
    )
    entries = _entries(model, solver_list, teacher, nfe, device)
    if teacher_set is not None:
        _check_teacher_solver(entries[0], teacher_set)
    is_image = makes_images(model)
    latent = is_latent(model)
    fidelity_space = "latents" if latent else ("pixels" if is_image else "samples")
    cond_fn = seed_cond_fn(model, None if prompts is None else str(prompts))
    ref_stats = None
    if fid_ref is not None:
        if not is_image:
            raise ConfigError(
                f"fid_ref: FID needs an image model; this one makes samples of shape "
                f"{model.sample_shape}"
            )
        if len(seed_list) < 2:
            raise ConfigError("seeds: FID needs at least 2 seeds")
        ref_stats = reference_statistics(
            fid_ref, num_images=fid_ref_num, batch_size=batch_size, device=device,
            progress=progress,
        )  # fmt: skip
    n_batches = math.ceil(len(seed_list) / batch_size)
    rows: list[dict[str, Any]] = []
    kept: dict[str, Tensor] = {}  # the first images/points of each solver, for the pictures
    reference: Tensor | None = None
    for entry in entries:
        log.info("compare: %s (%d seeds)", entry.label, len(seed_list))
        model.reset_nfe()
        start = time.perf_counter()
        samples = generate(model, entry.sampler, seed_list, batch_size, progress, cond_fn)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        calls = model.nfe / n_batches
        if calls != entry.nfe:
            log.warning("%s: %g model calls per sample, expected %d", entry.label, calls, entry.nfe)
        if reference is None:
            reference = samples
        # fidelity where the paper measures it: the samples themselves (latents for LDM/SD)
        summary = summarize_fidelity(per_sample_fidelity(samples, reference))
        fid_value = None
        if ref_stats is not None:  # latent models: decoded batch by batch into the Inception
            images = image_batches(model, samples, batch_size) if latent else samples
            stats = compute_statistics(
                images, batch_size=batch_size, device=device, progress=progress
            )
            fid_value = stats.frechet_distance(ref_stats, method=fid_method)
        if out is not None:  # the pictures show images: latent models' decoded samples
            kept[entry.label] = (
                to_images(model, samples[:GRID_IMAGES], batch_size)
                if is_image
                else samples[:SCATTER_POINTS]
            )
        rows.append(
            {
                "label": entry.label,
                "kind": entry.kind,
                "solver": entry.description.get("solver"),
                "nfe": int(calls) if float(calls).is_integer() else calls,
                "spec": entry.spec,
                "checkpoint": entry.checkpoint,
                "n_samples": len(seed_list),
                "fid": fid_value,
                "l1": summary.l1_mean,
                "l1_std": summary.l1_std,
                "rmse": summary.rmse_mean,
                "rmse_std": summary.rmse_std,
                "psnr": summary.psnr_mean,
                "psnr_std": summary.psnr_std,
                "fidelity_space": fidelity_space,
                "seconds": seconds,
                "grid": entry.grid,
                "picture": None,
                "description": entry.description,
            }
        )
    if out is not None:
        context = {
            "model": getattr(model, "source", None) or type(model).__name__,
            "model_identity": model.identity(),
            "seeds": format_seeds(seed_list),
            "n_samples": len(seed_list),
            "teacher": entries[0].spec,
            "teacher_set": None if teacher_set is None else str(teacher_set),
            "fidelity_space": fidelity_space,
            "fid_images": "decoded latents" if latent else ("samples" if is_image else None),
            "fid_reference": None if fid_ref is None else str(fid_ref),
            "fid_reference_num_images": None if ref_stats is None else ref_stats.num_images,
            "fid_method": fid_method,
            "batch_size": batch_size,
            "device": str(device),
        }
        _write_outputs(Path(out), rows, kept, is_image, context)
    return rows


def _write_outputs(
    out: Path,
    rows: list[dict[str, Any]],
    kept: dict[str, Tensor],
    is_image: bool,
    context: dict[str, Any],
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stems = _file_stems([row["label"] for row in rows])
    teacher = kept[rows[0]["label"]]
    if is_image:
        for row, stem in zip(rows, stems, strict=True):
            name = f"grid_{stem}.png"
            save_image_grid(kept[row["label"]][:GRID_IMAGES], out / name, nrow=8)
            row["picture"] = name
        save_comparison_grid(
            {label: images[:COMPARISON_IMAGES] for label, images in kept.items()},
            out / "comparison.png",
        )
    else:
        for row, stem in zip(rows, stems, strict=True):
            if row["kind"] == "teacher":
                continue
            name = f"scatter_{stem}.png"
            save_scatter(
                {"teacher": teacher, row["label"]: kept[row["label"]]},
                out / name,
                title=f"{row['label']} vs teacher (same noise)",
            )
            row["picture"] = name
        save_scatter(kept, out / "scatter.png", title=f"{context['model']}, {len(rows)} solvers")
    plot_time_grids({row["label"]: row["grid"] for row in rows}, out / "time_grids.png")
    (out / "compare.md").write_text(format_table(rows, context))
    write_json(out / "compare.json", _json_safe({**context, "rows": rows, "run": run_metadata()}))
    log.info("wrote the comparison of %d solvers to %s", len(rows), out)


def _file_stems(labels: Sequence[str]) -> list[str]:
    """Labels → distinct file-name-safe stems (``[A-Za-z0-9._=-]``, at most 80 characters)."""
    stems: list[str] = []
    for label in labels:
        stem = re.sub(r"[^A-Za-z0-9._=-]+", "_", label).strip("._")[:80] or "solver"
        base, k = stem, 2
        while stem in stems:
            stem, k = f"{base}-{k}", k + 1
        stems.append(stem)
    return stems


def format_table(rows: Sequence[dict[str, Any]], context: dict[str, Any] | None = None) -> str:
    """The rows of :func:`compare` as a markdown table (with the run's context above it)."""
    lines = ["# Solver comparison", ""]
    if context:
        ref = context.get("fid_reference")
        ref_text = (
            f"{ref} (N={context.get('fid_reference_num_images')}, {context.get('fid_method')})"
            if ref
            else "none"
        )
        lines += [
            f"- model: `{context.get('model')}`",
            f"- seeds: {context.get('seeds')} (N={context.get('n_samples')}, the same noise for "
            "every solver)",
            f"- teacher: `{context.get('teacher')}` (reference of L1, RMSE, PSNR)",
            f"- FID reference: {ref_text}",
            *_space_notes(context),
            "- seconds: wall-clock sampling time, model calls included, FID excluded",
            "",
        ]
    space = (context or {}).get("fidelity_space") or next(
        (row.get("fidelity_space") for row in rows), None
    )
    if space == "latents":  # FID of the decoded images, fidelity of the latents
        columns = "FID (N, decoded) | L1 to teacher (latents) | RMSE (latents) | PSNR (latents, dB)"
    else:
        columns = "FID (N) | L1 to teacher | RMSE | PSNR (dB)"
    lines += [f"| solver | NFE | {columns} | seconds |", "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        fid_value = row.get("fid")
        fid_text = "–" if fid_value is None else f"{fid_value:.2f} ({row['n_samples']})"
        label = row["label"].replace("|", "\\|")
        label = label if row["kind"] == "teacher" else f"`{label}`"
        lines.append(
            f"| {label} | {row['nfe']} | {fid_text} | {row['l1']:.4f} | {row['rmse']:.4f} | "
            f"{_number(row['psnr'], '.2f')} | {row['seconds']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _space_notes(context: dict[str, Any]) -> list[str]:
    """Lines of the table's preamble that say in which space a latent model was measured."""
    if context.get("fidelity_space") != "latents":
        return []
    return [
        "- latent model: FID and pictures on the decoded images; L1, RMSE, PSNR on the latents "
        "(the space the paper trains and logs in; PSNR with the [−1, 1] range 2, a relative "
        "number)",
    ]


def _number(value: float, fmt: str) -> str:
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return "–" if math.isnan(value) else format(value, fmt)


def _json_safe(value: Any) -> Any:
    """Non-finite floats → ``None`` (strict JSON has no NaN or infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def run_compare(config: CompareConfig, progress: bool = True) -> list[dict[str, Any]]:
    """``gas-solver compare``: load the model, run :func:`compare`, write ``config.out``."""
    device = resolve_device(config.device)
    solvers = split_solvers(config.solvers)
    source = config.model
    if not source:
        first = next(text for text in solvers if is_checkpoint(text))
        source = load_metadata(first).get("model_source")
        if not source:
            raise ConfigError(f"model: {first} does not name its model; pass --model")
    return compare(
        load_model(source, device), solvers, config.seeds, nfe=config.nfe, teacher=config.teacher,
        teacher_set=config.teacher_set, allow_seed_overlap=config.allow_seed_overlap,
        prompts=config.prompts,
        fid_ref=config.fid_ref, fid_ref_num=config.fid_ref_num, fid_method=config.fid_method,
        out=config.out, batch_size=config.batch_size, device=device, progress=progress,
    )  # fmt: skip


__all__ = [
    "COMPARE_SEEDS",
    "DEFAULT_TEACHER",
    "SOLVER_SEPARATOR",
    "CompareConfig",
    "FIDConfig",
    "check_seed_overlap",
    "classic_spec",
    "compare",
    "format_fid",
    "format_table",
    "load_images",
    "run_compare",
    "run_fid",
    "split_solvers",
    "teacher_seed_sets",
]
