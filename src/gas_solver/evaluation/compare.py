"""The ``gas-solver compare`` command: several solvers against a teacher on the same noise.

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

Seeds are checked against teacher sets by :mod:`.seed_checks`.
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

import torch
from torch import Tensor

from ..config import option, require
from ..data.teacher import TeacherSet
from ..distributed import all_sum, is_main, on_main, own_batches
from ..errors import ConfigError, GasSolverError
from ..metrics.fid import FID_METHODS
from ..models.base import DiffusionModel
from ..models.loading import load_model
from ..pipeline import (
    Sampler,
    generate,
    image_batches,
    makes_images,
    seed_cond_fn,
    teacher_spec,
    to_images,
)
from ..runtime import json_safe, resolve_device, run_metadata, write_json
from ..seeds import format_seeds, parse_seeds
from ..solvers.registry import SolverSpec, parse_solver_spec
from ..solvers.resolve import TrainedSolver, resolve_solver
from ..visualize import plot_time_grids, save_comparison_grid, save_image_grid, save_scatter
from .seed_checks import check_seed_overlap, teacher_seed_sets

log = logging.getLogger(__name__)

SOLVER_SEPARATOR = ";"
DEFAULT_TEACHER = "unipc:nfe=20,order=3,variant=bh1,grid=logsnr"
COMPARE_SEEDS = "50000-50255"
"""256 evaluation seeds: minutes on a CPU for the bundled MNIST model. FID from 256 images is
biased upwards and only comparable at equal N; use ``50000-99999`` for the paper's protocol."""
GRID_IMAGES = 64  # images per solver grid, 8 per row
COMPARISON_IMAGES = 8  # seeds per row of comparison.png
SCATTER_POINTS = 2000  # points per solver in the scatter plots


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
        require(self.nfe is None or self.nfe >= 1, "nfe", f"must be >= 1, got {self.nfe}")
        solvers = resolve_solvers(self.solvers, self.nfe)
        parse_solver_spec(self.teacher)
        require(
            bool(self.model) or any(isinstance(s, TrainedSolver) for s in solvers),
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


def resolve_solvers(
    solvers: str | Sequence[str | SolverSpec | TrainedSolver], nfe: int | None = None
) -> list[SolverSpec | TrainedSolver]:
    """Solvers as text (``;``-separated or a list, see :func:`split_solvers`) or already resolved
    → resolved (:func:`~gas_solver.solvers.resolve.resolve_solver`; ``nfe`` for classic specs
    that give none)."""
    if isinstance(solvers, str):
        solvers = split_solvers(solvers)
    elif not solvers:
        split_solvers([])  # the same message for an empty list
    return [resolve_solver(s, nfe) if isinstance(s, str) else s for s in solvers]


def _entries(
    model: DiffusionModel,
    solvers: Sequence[SolverSpec | TrainedSolver],
    teacher: str,
    device: torch.device,
) -> list[_Entry]:
    spec = teacher_spec(teacher, model)
    entries = [
        _Entry(
            "teacher", "teacher", spec, spec.nfe, _grid(spec, model),
            {"solver": spec.name, **spec.to_dict()}, spec=spec.to_string(),
        )
    ]  # fmt: skip
    for solver in solvers:
        if isinstance(solver, TrainedSolver):
            gs = solver.build(model, device)
            with torch.no_grad():
                grid = gs.timesteps().double().cpu().tolist()
            entries.append(
                _Entry(
                    solver.label, solver.kind, gs, gs.nfe, grid, solver.describe(),
                    checkpoint=solver.path,
                )
            )  # fmt: skip
        else:
            entries.append(
                _Entry(
                    solver.label, "classic", solver, solver.nfe, _grid(solver, model),
                    solver.describe(), spec=solver.to_string(),
                )
            )  # fmt: skip
    labels = [e.label for e in entries]
    dup = next((label for label in labels if labels.count(label) > 1), None)
    if dup is not None:
        raise ConfigError(f"solvers: {dup!r} is listed twice")
    return entries


def _grid(spec: SolverSpec, model: DiffusionModel) -> list[float]:
    return spec.make_grid(model.schedule).double().cpu().tolist()


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
    solvers: str | Sequence[str | SolverSpec | TrainedSolver],
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
    from ..metrics.fid import compute_statistics, reference_statistics
    from ..metrics.fidelity import per_sample_fidelity, summarize_fidelity

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
    solver_list = resolve_solvers(solvers, nfe)
    check_seed_overlap(
        seed_list, teacher_seed_sets(solver_list, teacher_set), allow=allow_seed_overlap
    )
    entries = _entries(model, solver_list, teacher, device)
    if teacher_set is not None:
        _check_teacher_solver(entries[0], teacher_set)
    is_image = makes_images(model)
    latent = model.is_latent
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
        calls = all_sum(torch.tensor(float(model.nfe))).item() / n_batches  # torchrun: all ranks
        if calls != entry.nfe:
            log.warning("%s: %g model calls per sample, expected %d", entry.label, calls, entry.nfe)
        if reference is None:
            reference = samples
        # fidelity where the paper measures it: the samples themselves (latents for LDM/SD)
        summary = summarize_fidelity(per_sample_fidelity(samples, reference))
        fid_value = None
        if ref_stats is not None:  # latent models: decoded batch by batch into the Inception
            mine = own_batches(samples, batch_size)  # torchrun: each decodes and scores its own
            images = image_batches(model, mine, batch_size) if latent else mine
            stats = compute_statistics(
                images, batch_size=batch_size, device=device, progress=progress, split=False
            )
            fid_value = on_main(stats.frechet_distance, ref_stats, method=fid_method)
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
    if out is not None and is_main():  # torchrun: every rank has the rows, rank 0 writes
        context = {
            "model": model.source or type(model).__name__,
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
    write_json(out / "compare.json", json_safe({**context, "rows": rows, "run": run_metadata()}))
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


def run_compare(config: CompareConfig, progress: bool = True) -> list[dict[str, Any]]:
    """``gas-solver compare``: load the model, run :func:`compare`, write ``config.out``."""
    device = resolve_device(config.device)
    solvers = resolve_solvers(config.solvers, config.nfe)
    source = config.model
    if not source:
        first = next(s for s in solvers if isinstance(s, TrainedSolver))
        source = first.model_source
        if not source:
            raise ConfigError(f"model: {first.path} does not name its model; pass --model")
    return compare(
        load_model(source, device), solvers, config.seeds, nfe=config.nfe, teacher=config.teacher,
        teacher_set=config.teacher_set, allow_seed_overlap=config.allow_seed_overlap,
        prompts=config.prompts,
        fid_ref=config.fid_ref, fid_ref_num=config.fid_ref_num, fid_method=config.fid_method,
        out=config.out, batch_size=config.batch_size, device=device, progress=progress,
    )  # fmt: skip
