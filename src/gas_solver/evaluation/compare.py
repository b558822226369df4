"""Several solvers against a teacher on the same noise: rows → scores → report.

:func:`compare` takes one model, several solvers (classic specs and trained GS/GAS checkpoints)
and a many-step teacher, and runs them all on the same evaluation seeds, so every sample has a
paired teacher sample from the same noise. Each solver becomes a :class:`Row` with its scores,
the teacher's first: FID (image models, when a reference is given; its N is the number of seeds),
L1/RMSE/PSNR to the teacher (:mod:`gas_solver.metrics.fidelity`), the model calls per sample
(counted, not declared) and the time of sampling alone: milliseconds per sample after a warm-up
batch, with the share spent inside the network's calls, on the device and in the dtype the
context names (:mod:`.timing`; rows read from the sample cache say so and are not timed), and the
whole wall-clock seconds. The rows and how they were
made (:attr:`Comparison.context`) are the report, as data (:mod:`.report`);
:func:`~gas_solver.evaluation.report.format_table` renders it, and with ``out`` these are written
to ``out/``:

* ``compare.md``: the table, with the model, seeds, teacher and FID reference above it;
* ``compare.json``: the context and ``rows`` (:meth:`Row.to_dict`) and how the run was made; the
  teacher's PSNR (+∞) and any other non-finite number is written as ``null``;
* image models: ``grid_<label>.png`` per solver (the first 64 seeds, 8 per row, seed ``i`` in
  cell ``i`` for every solver) and ``comparison.png`` (teacher and each solver on the first 8
  seeds, one row each); other models: ``scatter.png`` (all solvers) and ``scatter_<label>.png``
  (each solver over the teacher);
* ``time_grids.png``: each solver's time grid (GS/GAS: the learned ``timesteps()``).

Solvers are listed in one string separated by ``;`` (:data:`SOLVER_SEPARATOR`), because classic
specs contain commas: ``"unipc:nfe=4;dpmpp:nfe=4,order=2;runs/train/solver.safetensors"``.

**Latent models** (LDM, SD: ``model.is_latent``) sample latents, and each space is used where the
paper uses it (paper §3.2 and App. D.2, D.4):

* FID, the pictures (grids, ``comparison.png``) and ``fid --solver`` use the **decoded images**
  in [−1, 1] (:func:`gas_solver.images.image_batches`: decoded in batches, streamed to the
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
import hashlib
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data.teacher_set import TeacherSet
from ..distributed import all_sum, is_main, on_main, own_batches, owned
from ..errors import ConfigError, GasSolverError
from ..images import image_batches, makes_images, to_images
from ..metrics.frechet import FID_METHODS
from ..models.base import DiffusionModel
from ..models.loading import load_model
from ..runtime import resolve_device
from ..sampling import Sampler, generate, seed_cond_fn
from ..seeds import format_seeds, parse_seeds
from ..solvers.resolve import ResolvedSolver, resolve_solver
from ..solvers.spec import SolverSpec
from ..solvers.teacher import DEFAULT_TEACHER, teacher_spec
from .report import GRID_IMAGES, SCATTER_POINTS, Comparison, Row, write_report
from .sample_cache import (
    CachedSamples,
    load_sample_statistics,
    load_samples,
    sample_key,
    save_sample_statistics,
    save_samples,
)
from .seed_checks import check_seed_overlap, teacher_seed_sets
from .timing import SamplingClock, SamplingTime, synchronize

log = logging.getLogger(__name__)

SOLVER_SEPARATOR = ";"
COMPARE_SEEDS = "50000-50255"
"""256 evaluation seeds: minutes on a CPU for the bundled MNIST model. FID from 256 images is
biased upwards and only comparable at equal N; use ``50000-99999`` for the paper's protocol."""


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
    solvers: str | Sequence[str | ResolvedSolver], nfe: int | None = None
) -> list[ResolvedSolver]:
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
    solvers: Sequence[ResolvedSolver],
    teacher: str,
    device: torch.device,
) -> list[_Entry]:
    entries = [_entry(teacher_spec(teacher, model), model, device, "teacher", "teacher")]
    entries += [_entry(solver, model, device) for solver in solvers]
    labels = [e.label for e in entries]
    dup = next((label for label in labels if labels.count(label) > 1), None)
    if dup is not None:
        raise ConfigError(f"solvers: {dup!r} is listed twice")
    return entries


def _reference_entry(text: str, teacher: _Entry, model: DiffusionModel) -> _Entry:
    """The converged ``reference`` row: a classic spec, or ``auto`` (the teacher's solver with
    ten times its calls)."""
    if text == "auto":
        spec = dataclasses.replace(teacher.sampler, nfe=10 * teacher.nfe)
    else:
        spec = teacher_spec(text, model)
    return _entry(spec, model, model.device, "reference", "reference")


def _entry(
    solver: ResolvedSolver,
    model: DiffusionModel,
    device: torch.device,
    label: str | None = None,
    kind: str | None = None,
) -> _Entry:
    """The row of ``solver`` on ``model``: its own label and kind, or the teacher's or the
    reference's; a classic spec's text, or a trained solver's checkpoint."""
    return _Entry(
        label or solver.label,
        kind or solver.kind,
        solver.build(model, device),
        solver.nfe,
        solver.time_grid(model).double().cpu().tolist(),
        solver.describe(),
        spec=solver.to_string() if solver.checkpoint is None else None,
        checkpoint=solver.checkpoint,
    )


def _check_teacher_solver(entry: _Entry, teacher_set: TeacherSet) -> None:
    """Warn when the compared teacher is not the solver that made ``teacher_set``."""
    stored = teacher_set.solver_spec
    try:
        same = SolverSpec.from_dict(stored).to_string() == entry.spec
    except (GasSolverError, KeyError, TypeError, ValueError):
        same = False
    if not same:
        log.warning(
            "the teacher of this comparison (%s) is not the solver of teacher set %s (%s): "
            "L1/RMSE/PSNR measure the distance to the former; pass --teacher to change it",
            entry.spec,
            teacher_set.path,
            stored,
        )


def compare(
    model: DiffusionModel | str,
    solvers: str | Sequence[str | ResolvedSolver],
    seeds: str | Sequence[int] = COMPARE_SEEDS,
    *,
    nfe: int | None = None,
    teacher: str = DEFAULT_TEACHER,
    teacher_set: str | Path | TeacherSet | None = None,
    allow_seed_overlap: bool = False,
    prompts: str | Path | None = None,
    fid_ref: Any = None,
    fid_ref_num: int | None = None,
    fid_method: str = "sqrtm",
    reference: str | None = None,
    cache: bool = True,
    out: str | Path | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Comparison:
    """Run the teacher and each solver on the same seeds; score, tabulate and draw them.

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
        teacher_set: the teacher set the solvers learnt from (a folder or the open set), for the
            seed check; a warning is logged if ``teacher`` is not the solver that made it.
        allow_seed_overlap: only warn about evaluation seeds that are teacher seeds.
        prompts: text models: a file of prompts, one a line (seed s gets prompt s mod count);
            other models take their default conditions (:func:`~gas_solver.sampling.seed_cond_fn`).
        fid_ref: FID reference, anything :func:`~gas_solver.metrics.reference_statistics`
            takes (a bundled data set name, an ``.npz``, a folder, :class:`FIDStatistics`);
            ``None``: no FID. Image models only; for latent models the FID (and the pictures)
            use the decoded images, while L1/RMSE/PSNR stay on the latents (module docstring).
        fid_ref_num: use the first so many reference images.
        fid_method: ``sqrtm`` (EDM) or ``eigh``, see :func:`~gas_solver.metrics.frechet_distance`.
        reference: a converged solve of the same ODE (a classic spec with many calls, e.g.
            ``unipc:nfe=200,order=3,grid=uniform``; ``auto``: the teacher's solver with ten times
            its calls). Every row then also gets its L1/PSNR to the reference's samples and FID
            against them, and the reference is the last row: a solver is better at its job when
            it is closer to the ODE's solution, which the teacher only approximates.
        cache: take the teacher's and the reference's samples (and Inception statistics) from
            an earlier comparison of the same model, solver, seeds and conditions on the same kind
            of device, and keep them for the next (:mod:`.sample_cache`).
        out: folder for the table, JSON and pictures (see the module docstring); ``None``: none.
        batch_size: samples per batch, and images per Inception call.
        device: where the model (when given by name) and the Inception run; default: the
            model's device, else ``auto``.
        progress: show progress bars.

    Returns:
        The :class:`Comparison`: one :class:`Row` per solver, the teacher's first, and the
        context of the run.

    Raises:
        ConfigError: bad solvers, seeds or options, ``fid_ref`` for a non-image model, or
            evaluation seeds shared with a teacher set (unless ``allow_seed_overlap``).
        MissingAssetError: a missing checkpoint, model, reference or FID detector.
    """
    from ..metrics.fid_reference import reference_statistics

    if fid_method not in FID_METHODS:
        raise ConfigError(f"fid_method: must be one of {FID_METHODS}, got {fid_method!r}")
    if isinstance(device, str):
        device = resolve_device(device)
    if isinstance(model, str):
        device = device or resolve_device("auto")
        model = load_model(model, device)
    elif device is None:
        device = model.device
    seed_list = parse_seeds(seeds)
    solver_list = resolve_solvers(solvers, nfe)
    opened = None
    if teacher_set is not None:
        opened = teacher_set if isinstance(teacher_set, TeacherSet) else TeacherSet(teacher_set)
    check_seed_overlap(seed_list, teacher_seed_sets(solver_list, opened), allow=allow_seed_overlap)
    entries = _entries(model, solver_list, teacher, device)
    converged = None if reference is None else _reference_entry(reference, entries[0], model)
    if opened is not None:
        _check_teacher_solver(entries[0], opened)
    is_image = makes_images(model)
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
    runner = _Runner(
        model, seed_list, batch_size, device, progress,
        cond_fn=seed_cond_fn(model, None if prompts is None else str(prompts)),
        conditions="default" if prompts is None else _file_digest(Path(prompts)),
        cache=cache, with_statistics=ref_stats is not None,
    )  # fmt: skip
    context = {
        "model": model.source or type(model).__name__,
        "model_identity": model.identity(),
        "seeds": format_seeds(seed_list),
        "n_samples": len(seed_list),
        "teacher": entries[0].spec,
        "teacher_set": None if opened is None else str(_given_path(teacher_set)),
        "fidelity_space": runner.fidelity_space,
        "fid_images": "decoded latents" if model.is_latent else ("samples" if is_image else None),
        "fid_reference": None if fid_ref is None else str(fid_ref),
        "fid_reference_num_images": None if ref_stats is None else ref_stats.num_images,
        "fid_method": fid_method,
        "reference": None if converged is None else converged.spec,
        "batch_size": batch_size,
        "device": str(device),
        "model_device": str(model.device),
        "compute_dtype": model.compute_dtype,
        "compiled": model.compiled,
    }
    solved = None if converged is None else runner.run(converged)  # samples and statistics
    rows: list[Row] = []
    kept: dict[str, Tensor] = {}  # the first images/points of each solver, for the pictures
    teacher_samples: Tensor | None = None
    for entry in [*entries, *([converged] if converged is not None else [])]:
        run = solved if entry is converged else runner.run(entry)
        if teacher_samples is None:
            teacher_samples = run.samples
        rows.append(runner.row(entry, run, teacher_samples, ref_stats, solved, fid_method))
        if out is not None:  # the pictures show images: latent models' decoded samples
            kept[entry.label] = (
                to_images(model, run.samples[:GRID_IMAGES], batch_size)
                if is_image
                else run.samples[:SCATTER_POINTS]
            )
    if out is not None and is_main():  # torchrun: every rank has the rows, rank 0 writes
        rows = write_report(Path(out), rows, kept, is_image, context)
    return Comparison(rows, context)


@dataclasses.dataclass
class _Run:
    """One solver on the seeds: its samples, Inception statistics (or ``None``), timing and
    model calls per sample."""

    samples: Tensor
    stats: Any
    time: SamplingTime
    calls: float


@dataclasses.dataclass
class _Runner:
    """What every row of a comparison shares: the model, seeds and conditions it samples, and how
    a row is scored."""

    model: DiffusionModel
    seeds: list[int]
    batch_size: int
    device: torch.device
    progress: bool
    cond_fn: Any
    conditions: str
    cache: bool
    with_statistics: bool

    @property
    def fidelity_space(self) -> str:
        """Where L1/RMSE/PSNR are measured: the samples themselves (latents for LDM/SD)."""
        if self.model.is_latent:
            return "latents"
        return "pixels" if makes_images(self.model) else "samples"

    def run(self, entry: _Entry) -> _Run:
        """Sample ``entry`` on the seeds; a teacher or reference row from the cache when it is
        there (:mod:`.sample_cache`)."""
        log.info("compare: %s (%d seeds)", entry.label, len(self.seeds))
        model, batch_size = self.model, self.batch_size
        key = None
        if self.cache and entry.kind in ("teacher", "reference"):
            key = sample_key(model.identity(), entry.spec, self.seeds, self.conditions,
                             self.device.type, model.compute_dtype)  # fmt: skip
        hit = None if key is None else load_samples(key, (len(self.seeds), *model.sample_shape))
        if hit is not None:  # read, not timed: the row says so
            samples, timing, calls = hit.samples, SamplingTime.cached(hit.seconds), hit.calls
        else:
            model.reset_nfe()
            n_batches = math.ceil(len(self.seeds) / batch_size)
            own = len(owned(list(range(n_batches))))  # this process's batches (torchrun)
            clock = SamplingClock(model, single_batch=own == 1)
            start = time.perf_counter()
            with clock.watching():
                samples = generate(model, clock.sampler(entry.sampler), self.seeds, batch_size,
                                   self.progress, self.cond_fn)  # fmt: skip
            synchronize(model.device)
            timing = clock.result(time.perf_counter() - start)
            calls = all_sum(torch.tensor(float(model.nfe))).item() / n_batches  # all ranks
            if key is not None:
                save_samples(key, CachedSamples(samples, timing.seconds, calls))
        if calls != entry.nfe:
            log.warning("%s: %g model calls per sample, expected %d", entry.label, calls, entry.nfe)
        if not self.with_statistics:
            return _Run(samples, None, timing, calls)
        stats = None if key is None else load_sample_statistics(key)
        if stats is None:
            stats = self._statistics(samples)
            if key is not None:
                save_sample_statistics(key, stats)
        return _Run(samples, stats, timing, calls)

    def _statistics(self, samples: Tensor) -> Any:
        """Inception statistics of the samples (latent models: decoded batch by batch)."""
        from ..metrics.fid_statistics import compute_statistics

        mine = own_batches(samples, self.batch_size)  # torchrun: each decodes and scores its own
        images = image_batches(self.model, mine, self.batch_size) if self.model.is_latent else mine
        return compute_statistics(
            images, batch_size=self.batch_size, device=self.device, progress=self.progress,
            split=False,
        )  # fmt: skip

    def row(
        self,
        entry: _Entry,
        run: _Run,
        teacher_samples: Tensor,
        ref_stats: Any,
        solved: _Run | None,
        fid_method: str,
    ) -> Row:
        """The scored row: fidelity to the teacher's samples (and to the converged reference's,
        with FID against its samples), FID against ``ref_stats``."""
        from ..metrics.fidelity import per_sample_fidelity, summarize_fidelity

        def fid(reference: Any) -> float | None:
            if run.stats is None or reference is None:
                return None
            return on_main(run.stats.frechet_distance, reference, method=fid_method)

        summary = summarize_fidelity(per_sample_fidelity(run.samples, teacher_samples))
        to_reference: dict[str, Any] = {}
        if solved is not None:
            fidelity = summarize_fidelity(per_sample_fidelity(run.samples, solved.samples))
            to_reference = {
                "reference_l1": fidelity.l1_mean,
                "reference_psnr": fidelity.psnr_mean,
                "reference_fid": fid(solved.stats),
            }
        return Row(
            label=entry.label,
            kind=entry.kind,
            solver=entry.description.get("solver"),
            nfe=int(run.calls) if float(run.calls).is_integer() else run.calls,
            spec=entry.spec,
            checkpoint=entry.checkpoint,
            n_samples=len(self.seeds),
            fid=fid(ref_stats),
            l1=summary.l1_mean,
            l1_std=summary.l1_std,
            rmse=summary.rmse_mean,
            rmse_std=summary.rmse_std,
            psnr=summary.psnr_mean,
            psnr_std=summary.psnr_std,
            fidelity_space=self.fidelity_space,
            grid=entry.grid,
            picture=None,
            description=entry.description,
            **run.time.fields(),
            **to_reference,
        )


def _file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (the prompts of a comparison, in its cache key)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _given_path(teacher_set: str | Path | TeacherSet) -> str | Path:
    """The teacher set as its caller named it (an open set: its folder)."""
    return teacher_set.path if isinstance(teacher_set, TeacherSet) else teacher_set
