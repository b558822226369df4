"""``gas-solver sweep``: quality against the number of model calls, every method on one model.

For each NFE of the sweep, on the same evaluation seeds and against the same teacher:

1. each classic solver on every grid kind of ``--grids``, scored by L1 to the teacher on a few
   separate seeds (``--grid-seeds``); the best grid is kept, and logSNR (the common default) too;
2. the learned solvers, trained on one teacher set: ``timesteps`` (the GS grid alone on
   DPM-Solver++(3M) coefficients, an LD3-style baseline: ``train --learn timesteps``, from the
   grid that solver found best), ``gs`` (from ``--init-solver``, by default the best classic
   solver), ``gs-3m`` (from the paper's DPM-Solver++(3M)) and ``gas``/``gas-3m`` (each
   fine-tunes the GS row of its start, as the demo does);
3. one :func:`~gas_solver.evaluation.compare` of all of them: FID (N = the evaluation
   seeds), L1 and PSNR to the teacher, seconds.

Everything lands in ``OUT``: the teacher set, each NFE's trainings and comparison, and
``sweep.json`` (the configuration, the grids chosen and every row), ``sweep.md`` (FID and L1 per
method and NFE) and ``sweep.png`` (FID against NFE, one line per method, log scale). A rerun of
the same command resumes: grid choices, trainings and measured rows are not recomputed (a row in
the table is not trained again even when its run folder is gone, e.g. on another machine; a
training counts as done when its ``summary.json`` is there and its solver loads, else it is run
again); ``sweep.json`` is checked against :data:`STATE_SCHEMA` when it is read back; a rerun
with other ``--nfes``, ``--learned`` or ``--logsnr-rows`` adds those NFEs and rows to the same
table (one comparison of the missing rows, beside a fresh teacher row).

Under ``torchrun`` every part splits its work as its own command does (teacher shards, the
global training batch, sampling and Inception batches); rank 0 writes the sweep's files.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import option, require, validated
from ..data.teacher_set import TeacherSet
from ..distributed import barrier, is_main, main_lock
from ..errors import ConfigError, CorruptFileError, GasSolverError
from ..evaluation.compare import compare, split_solvers
from ..evaluation.report import gap_closed
from ..models.base import COMPILE_HELP, COMPUTE_DTYPES, DTYPE_HELP
from ..models.loading import load_model
from ..outputs import check_output, write_json, write_text
from ..runtime import reading, resolve_device, run_metadata
from ..schedules import GRID_KINDS
from ..seeds import parse_seeds
from ..solvers.generalized import SOLVER_FILE, load_metadata
from ..solvers.spec_text import parse_solver_spec
from ..solvers.teacher import DEFAULT_TEACHER
from ..training.discriminators import CHOICES as DISCRIMINATOR_CHOICES
from ..training.discriminators import FEATURE_PRESET
from ..training.settings import GAS_FINE_TUNE, R3GAN_BETAS
from ..training.start import PAPER
from ..training.trainer import train
from ..validation import (
    BIG,
    dict_of,
    integer,
    list_of,
    mapping,
    nullable,
    number,
    parse_json,
    rule,
    text,
    validate,
)
from ..visualize import save_series
from .teacher import TeacherConfig, make_teacher_set
from .train import TrainConfig

log = logging.getLogger(__name__)

LEARNED_METHODS = {
    "timesteps": ("gs", "timesteps"),
    "gs": ("gs", "all"),
    "gas": ("gas", "all"),
    "gs-3m": ("gs", "all"),
    "gas-3m": ("gas", "all"),
}
"""Learned rows: name → (``train --loss``, ``train --learn``). ``gs`` starts from
``--init-solver`` (default: the best classic solver), ``gs-3m`` from the paper's DPM-Solver++(3M)
on ``--init-grid``; each ``gas`` row fine-tunes the ``gs`` row of its start."""
START_ROW = "start of gs"
"""The row of the classic solver the ``gs`` row started from (``auto``: the best by the
distillation loss on the validation pairs)."""
RESUME_MAY_CHANGE = {"out", "device", "compile", "batch_size", "nfes", "learned", "logsnr_rows"}
"""Settings a resumed sweep may change: where and how it runs, and which NFEs and rows it adds
(rows already measured are kept; a row no longer asked for leaves the table)."""
RECORDED_LATER = {"dtype": "float32"}
"""Settings that sweeps made before they existed do not record, with the value those had."""
ROW_FIELDS = (
    "label", "kind", "nfe", "fid", "l1", "psnr", "seconds", "n_samples",
    "reference_l1", "reference_psnr", "reference_fid",
)  # fmt: skip
THEORY_SPEC = "dpmpp:order=3"
"""The classic solver whose coefficients the ``timesteps`` row keeps (the GS's theory)."""


@dataclasses.dataclass
class SweepConfig:
    """``gas-solver sweep``: classic solvers on their best grid, learned solvers and the teacher,
    at several NFEs (FID, L1/PSNR to the teacher, time); resumable."""

    model: str = option("mnist32", "model name or path")
    nfes: str = option("4,6,8,10", "numbers of model calls, comma-separated")
    classic: str = option(
        "ddim;dpmpp:order=3;unipc:order=3;ipndm",
        "classic solvers without nfe or grid, separated by ';'",
    )
    grids: str = option(
        "logsnr,uniform,quadratic,edm", "grid kinds tried for each classic solver and NFE"
    )
    logsnr_rows: bool = option(
        True, "also a row on the logSNR grid for each classic solver whose best grid is another"
    )
    learned: str = option(
        "timesteps,gs,gas,gs-3m,gas-3m",
        "learned rows: timesteps (grid only), gs and gas (from --init-solver), gs-3m and gas-3m "
        "(from the paper's DPM-Solver++(3M) on --init-grid)",
    )
    teacher: str = option(DEFAULT_TEACHER, "teacher solver spec")
    teacher_seeds: str = option("0-1099", "seeds of the teacher set (training pairs)")
    train_size: int = option(1000, "training pairs (the first of the teacher set)")
    val_size: int = option(100, "validation pairs (the last of the teacher set)")
    iterations: int = option(400, "training iterations of each learned solver")
    train_batch_size: int = option(16, "teacher pairs per training iteration")
    train_seed: int = option(42, "seed of the trainings' data order")
    init_solver: str = option(
        "auto", "start of the gs and gas rows (see `train --help`): auto or a classic solver"
    )
    init_grid: str = option("logsnr", "initial grid of the gs-3m and gas-3m rows")
    timesteps_grid: str = option(
        "best",
        "initial grid of the timesteps row: a grid kind, or best (the best grid of "
        f"{THEORY_SPEC} at that NFE, whose coefficients the row keeps)",
    )
    adv_weight: float = option(
        0.1, "gas: adversarial weight (on mnist32 0.1 beat 0.3 at NFE 3-6, docs/BENCHMARKS.md)"
    )
    disc_preset: str = option(
        FEATURE_PRESET, "gas: discriminator (see `train --help`)", choices=DISCRIMINATOR_CHOICES
    )
    disc_lr: float = option(1e-4, "gas: discriminator learning rate")
    disc_warmup: int = option(100, "gas: iterations before the adversarial loss starts")
    gas_iterations: int = option(
        200, "gas: iterations after the GS row of the same NFE it starts from"
    )
    seeds: str = option("50000-51999", "evaluation seeds (FID over all of them)")
    grid_seeds: str = option("60000-60127", "seeds that choose each classic solver's grid (L1)")
    fid_ref: str | None = option("mnist", "FID reference (see `compare --help`); none: no FID")
    fid_ref_num: int | None = option(None, "use only the first FID_REF_NUM reference images")
    fid_method: str = option("eigh", "FID matrix square root: sqrtm or eigh")
    reference: str | None = option(
        None,
        "a converged solve (see `compare --help`, e.g. auto): each row's L1/PSNR to it and FID "
        "against its samples, in a table of their own",
    )
    batch_size: int = option(64, "samples per batch")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    dtype: str = option(
        "float32", DTYPE_HELP + "; every step (teacher, trainings, comparisons)",
        choices=list(COMPUTE_DTYPES),
    )  # fmt: skip
    compile: bool = option(False, COMPILE_HELP)
    out: str = option("runs/sweep", "output folder (resumed when it holds a sweep.json)")

    def validate(self) -> None:
        check_output(self.out, "folder")
        require(len(self.nfe_list) >= 1, "nfes", "give at least one NFE")
        require(all(1 <= n <= 100 for n in self.nfe_list), "nfes", "each must be in 1..100")
        unknown_grids = sorted(set(self.grid_list) - set(GRID_KINDS))
        require(
            bool(self.grid_list) and not unknown_grids, "grids", f"grid kinds from {GRID_KINDS}"
        )
        for spec in split_solvers(self.classic):
            parse_solver_spec(with_calls(spec, self.nfe_list[0], self.grid_list[0]))
        require(
            self.timesteps_grid in GRID_KINDS
            or (self.timesteps_grid == "best" and THEORY_SPEC in split_solvers(self.classic)),
            "timesteps_grid",
            f"a grid kind from {GRID_KINDS}, or best (needs {THEORY_SPEC} among --classic)",
        )
        unknown = sorted(set(self.learned_list) - set(LEARNED_METHODS))
        require(not unknown, "learned", f"unknown {unknown}; choose from {list(LEARNED_METHODS)}")
        evaluation, grid_seeds = set(parse_seeds(self.seeds)), set(parse_seeds(self.grid_seeds))
        teacher = set(parse_seeds(self.teacher_seeds))
        require(
            not (evaluation | grid_seeds) & teacher,
            "seeds",
            "evaluation and grid seeds must not be teacher seeds",
        )
        require(
            self.train_size + self.val_size <= len(teacher),
            "train_size",
            "more than the teacher seeds",
        )

    @property
    def nfe_list(self) -> list[int]:
        try:
            return [int(n) for n in self.nfes.split(",") if n.strip()]
        except ValueError:
            raise ConfigError(f"nfes: comma-separated integers, got {self.nfes!r}") from None

    @property
    def grid_list(self) -> list[str]:
        return [g.strip() for g in self.grids.split(",") if g.strip()]

    @property
    def learned_list(self) -> list[str]:
        return [m.strip() for m in self.learned.split(",") if m.strip()]


def with_calls(spec: str, nfe: int, grid: str) -> str:
    """``"dpmpp:order=3"`` → ``"dpmpp:order=3,nfe=4,grid=logsnr"``."""
    return f"{spec}{',' if ':' in spec else ':'}nfe={nfe},grid={grid}"


def run_sweep(config: SweepConfig, progress: bool = True) -> Path:
    """Run (or resume) the sweep; returns the path of ``sweep.md``."""
    with main_lock(config.out) as out:
        return _sweep(config, out, progress)


def _sweep(config: SweepConfig, out: Path, progress: bool) -> Path:
    state_path = out / "sweep.json"
    state = _resumed_state(state_path, config)
    teacher_config = validated(TeacherConfig(
        model=config.model, out=str(out / "teacher"), solver=config.teacher,
        seeds=config.teacher_seeds, device=config.device, dtype=config.dtype,
        compile=config.compile,
    ))  # fmt: skip
    some_grids = {spec: config.grid_list[0] for spec in split_solvers(config.classic)}
    for method in config.learned_list:  # every row's settings checked before any work
        _train_settings(config, out / "teacher", config.nfe_list[0], some_grids, method)
    device = resolve_device(config.device)
    model = load_model(config.model, device)
    teacher = make_teacher_set(teacher_config, model, device, progress)

    def save() -> None:
        if is_main():
            write_json(state_path, {**state, "run": run_metadata()})

    for nfe in config.nfe_list:
        key = str(nfe)
        if key not in state["grids"]:
            state["grid_l1"][key] = _grid_l1(model, nfe, config, teacher, device, progress)
            state["grids"][key] = {
                s: min(l1, key=l1.get) for s, l1 in state["grid_l1"][key].items()
            }
            save()
        grids = state["grids"][key]
        classic = {  # row name → spec text
            f"{spec} ({grid})": with_calls(spec, nfe, grid)
            for spec in split_solvers(config.classic)
            for grid in dict.fromkeys(
                [grids[spec], "logsnr"] if config.logsnr_rows else [grids[spec]]
            )
        }
        done = {row["name"]: row for row in state["rows"].get(key, [])}
        missing = {  # row name → solver (the folder of a run trained only now, or spec text)
            name: str(_trained(config, model, teacher, nfe, grids, name, progress))
            for name in config.learned_list
            if name not in done
        }
        if "gs" in config.learned_list:
            classic.update(_gs_start(out / f"nfe{nfe}" / "gs", done))
        names = [*config.learned_list, *classic]
        missing.update({name: classic[name] for name in classic if name not in done})
        if missing or "teacher" not in done or (config.reference and "reference" not in done):
            folder = _free_folder(out / f"nfe{nfe}" / "compare")
            barrier()  # torchrun: every rank has named the folder before rank 0 makes it
            rows = compare(
                model, list(missing.values()), config.seeds, teacher=config.teacher,
                teacher_set=teacher, fid_ref=config.fid_ref, fid_ref_num=config.fid_ref_num,
                fid_method=config.fid_method, reference=config.reference, out=folder,
                batch_size=config.batch_size, device=device, progress=progress,
            ).rows  # fmt: skip
            measured = ["teacher", *missing, *(["reference"] if config.reference else [])]
            for name, row in zip(measured, rows, strict=True):
                done[name] = {"name": name, **{k: getattr(row, k) for k in ROW_FIELDS}}
        extra = ["reference"] if "reference" in done else []
        state["rows"][key] = [done[name] for name in ["teacher", *names, *extra]]
        save()
    for key, rows in state["rows"].items():  # the learned rows' training time, from their runs
        for row in rows:
            summary = out / f"nfe{key}" / row["name"] / "summary.json"
            if row["name"] in LEARNED_METHODS and summary.is_file():
                seconds = _train_seconds(summary)
                if seconds is not None:
                    row["train_seconds"] = seconds
    save()
    report = out / "sweep.md"
    if is_main():
        write_text(report, format_sweep(state))
        _plot(state, out / "sweep.png")
    return report


_NUMBER = number()
_ROW = mapping(
    {
        "name": text(200),
        "label": text(),
        "kind": text(64),
        "nfe": number(0, BIG),
        "n_samples": integer(0, BIG),
        "fid": nullable(_NUMBER),
        "l1": _NUMBER,
        "seconds": _NUMBER,
        "reference_l1?": nullable(_NUMBER),
        "reference_psnr?": nullable(_NUMBER),
        "reference_fid?": nullable(_NUMBER),
        "train_seconds?": _NUMBER,
    }
)
_NFE_KEY = rule(lambda key: [] if key.isdigit() and len(key) <= 3 else [("", "must be an NFE")])
STATE_SCHEMA = mapping({
    "config": mapping(),
    "grids": dict_of(dict_of(text(64)), keys=_NFE_KEY),
    "grid_l1?": dict_of(dict_of(dict_of(nullable(_NUMBER))), keys=_NFE_KEY),
    "rows": dict_of(list_of(_ROW), keys=_NFE_KEY),
})  # fmt: skip
"""``sweep.json`` as a rerun reads it: the grid choices and every measured row with the fields
the table (``sweep.md``) and the plot use."""


def read_state(path: Path) -> dict[str, Any]:
    """The sweep state in ``path``, checked against :data:`STATE_SCHEMA`.

    Raises:
        CorruptFileError: naming the file (and the field); delete it to start the sweep afresh.
    """
    with reading(path, "a sweep state"):
        text = path.read_bytes()
    try:
        state = parse_json(text, path, max_bytes=64 << 20)
        validate(state, STATE_SCHEMA, path)
    except CorruptFileError as err:
        raise CorruptFileError(
            f"{err}; delete it to run the sweep afresh (the trained rows in their folders are kept)"
        ) from None
    return state


def _train_seconds(summary: Path) -> float | None:
    """The training seconds that ``summary.json`` (a file for people) records, if readable."""
    try:
        seconds = parse_json(summary.read_bytes(), summary).get("seconds")
    except (OSError, CorruptFileError, AttributeError):
        seconds = None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        log.warning("%s records no training seconds; the table leaves them out", summary)
        return None
    return float(seconds)


def _gs_start(folder: Path, done: dict[str, Any]) -> dict[str, str]:
    """``{START_ROW: spec}`` when the ``gs`` row in ``folder`` started from a classic solver
    (``auto``'s pick, usually none of the listed ones), so the table shows what training added
    to it; ``{}`` for other starts. A measured start row keeps its spec (its run may be gone)."""
    if START_ROW in done:
        return {START_ROW: done[START_ROW]["label"]}
    start = load_metadata(folder / SOLVER_FILE).get("training", {}).get("start", {})
    try:
        return {START_ROW: parse_solver_spec(start.get("solver", "")).label}
    except ConfigError:
        return {}


def _finished(folder: Path) -> bool:
    """A learned row's run is finished when it wrote its summary and its solver loads (the
    checksum and the metadata check out); a run killed or damaged is trained again."""
    if not (folder / "summary.json").is_file():
        return False
    try:
        load_metadata(folder / SOLVER_FILE)
    except GasSolverError as err:
        log.warning("sweep: %s; training it again", err)
        return False
    return True


def _resumed_state(path: Path, config: SweepConfig) -> dict[str, Any]:
    settings = dataclasses.asdict(config)
    if not path.is_file():
        return {"config": settings, "grids": {}, "grid_l1": {}, "rows": {}}
    state = read_state(path)
    stored = {**RECORDED_LATER, **state["config"]}
    changed = [
        f"{k}: stored {stored.get(k)!r}, given {v!r}"
        for k, v in settings.items()
        if k not in RESUME_MAY_CHANGE and stored.get(k) != v
    ]
    if changed:
        raise ConfigError(
            f"{path} holds a sweep with other settings ({'; '.join(changed)}); use the same "
            "settings to resume it, or another --out"
        )
    return {**state, "config": settings}


def _free_folder(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, … (the first without a finished comparison): a
    comparison of rows added later does not overwrite the first one's report and pictures, and a
    killed one's folder is made again rather than left beside the next."""
    index = 1
    while (
        (found := path if index == 1 else path.with_name(f"{path.name}-{index}"))
        .joinpath("compare.json")
        .exists()
    ):
        index += 1
    return found


def _grid_l1(model, nfe: int, config: SweepConfig, teacher, device, progress) -> dict:
    """Each classic solver's L1 to the teacher on the grid seeds for each grid kind (one
    comparison of every solver on every grid, no FID); the lowest is the solver's best grid."""
    specs, grids = split_solvers(config.classic), config.grid_list
    candidates = [with_calls(spec, nfe, grid) for spec in specs for grid in grids]
    l1 = [row.l1 for row in compare(
        model, candidates, config.grid_seeds, teacher=config.teacher, teacher_set=teacher,
        batch_size=config.batch_size, device=device, progress=progress,
    ).rows[1:]]  # fmt: skip
    per_spec = len(grids)
    scores = {
        spec: dict(zip(grids, l1[i * per_spec : (i + 1) * per_spec], strict=True))
        for i, spec in enumerate(specs)
    }
    for spec, by_grid in scores.items():
        log.info("sweep: %s at NFE %d: best grid %s", spec, nfe, min(by_grid, key=by_grid.get))
    return scores


def _trained(
    config, model, teacher: TeacherSet, nfe: int, grids: dict, method: str, progress: bool
) -> Path:
    """The learned solver of one row, trained unless a finished run is in its folder (a GAS row
    first trains the GS row it fine-tunes, if that is not done)."""
    folder = Path(config.out) / f"nfe{nfe}" / method
    if _finished(folder):
        return folder
    if LEARNED_METHODS[method][0] == "gas":
        _trained(config, model, teacher, nfe, grids, method.replace("gas", "gs"), progress)
    train(_train_settings(config, teacher.path, nfe, grids, method), model, teacher, progress)
    barrier()  # torchrun: rank 0 has written the solver before any rank looks for it
    return folder


def _train_settings(
    config: SweepConfig, teacher: Path, nfe: int, grids: dict, method: str
) -> TrainConfig:
    """The checked ``train`` settings of one learned row. The ``timesteps`` row starts from its
    ``--timesteps-grid`` (by default the grid the classic DPM-Solver++(3M) row found best: a
    grid-only learner that starts where its solver is best), ``gs`` from ``--init-solver``,
    ``gs-3m`` from DPM-Solver++(3M) on ``--init-grid``, and a GAS row from the GS row of its
    start (its run folder)."""
    loss, learn = LEARNED_METHODS[method]
    init_solver, init_grid = config.init_solver, None
    if method.endswith("-3m"):
        init_solver, init_grid = PAPER, config.init_grid
    if method == "timesteps":
        init_solver = PAPER
        init_grid = grids[THEORY_SPEC] if config.timesteps_grid == "best" else config.timesteps_grid
    settings = TrainConfig(
        teacher=str(teacher), out=str(Path(config.out) / f"nfe{nfe}" / method), nfe=nfe,
        loss=loss, learn=learn, init_solver=init_solver, init_grid=init_grid,
        iterations=config.iterations, batch_size=config.train_batch_size,
        train_size=config.train_size, val_size=config.val_size, val_every=0,
        checkpoint_every=config.iterations, seed=config.train_seed, device=config.device,
        dtype=config.dtype, compile=config.compile,
    )  # fmt: skip
    if loss == "gas":  # fine-tunes the GS of this NFE
        settings = dataclasses.replace(
            settings, adv_weight=config.adv_weight, disc_preset=config.disc_preset,
            disc_lr=config.disc_lr, **R3GAN_BETAS, **GAS_FINE_TUNE,
            disc_warmup=config.disc_warmup,
            iterations=config.gas_iterations, checkpoint_every=config.gas_iterations,
            init_grid=None,
            init_solver=str(Path(config.out) / f"nfe{nfe}" / method.replace("gas", "gs")),
        )  # fmt: skip
    return validated(settings)


def format_sweep(state: dict[str, Any]) -> str:
    """Markdown: one row per method, one column per NFE with ``FID (L1)``; then, in the same
    layout, each row against the reference (when there is one), the learned rows against the best
    classic solver (:func:`learned_standing`), where the paper's start wins on data FID only
    (:func:`start_disagreements`), the seconds of sampling the evaluation seeds (and of training,
    for learned rows), and each classic solver's grid choice."""
    nfes = sorted(state["rows"], key=int)
    cells = {(row["name"], key): row for key in nfes for row in state["rows"][key]}
    config = state["config"]
    n = next((row["n_samples"] for key in nfes for row in state["rows"][key]), 0)

    def table(text: Callable[[dict[str, Any]], str], source: dict = cells) -> list[str]:
        """A method × NFE table whose cells are ``text(source[method, NFE])`` (empty where a
        method has none)."""
        out = [
            "| method | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
            "|---|" + "---:|" * len(nfes),
        ]
        for name in dict.fromkeys(name for name, _ in source):
            row = [source.get((name, key)) for key in nfes]
            out.append(
                f"| {name} | " + " | ".join("" if c is None else text(c) for c in row) + " |"
            )
        return out

    def fid_l1(cell: dict[str, Any]) -> str:
        return ("–" if cell["fid"] is None else f"{cell['fid']:.2f}") + f" ({cell['l1']:.4f})"

    def seconds(cell: dict[str, Any]) -> str:
        trained = f" ({cell['train_seconds']:.0f})" if "train_seconds" in cell else ""
        return f"{cell['seconds']:.0f}{trained}"

    def to_reference(cell: dict[str, Any]) -> str:
        if cell.get("reference_l1") is None:
            return "–"
        fid = cell.get("reference_fid")
        return ("–" if fid is None else f"{fid:.2f}") + f" ({cell['reference_l1']:.4f})"

    lines = [
        f"FID (N = {n}, {config['fid_ref']}, {config['fid_method']}) and, in brackets, L1 to the "
        f"teacher ({config['teacher']}); model {config['model']}.",
        "",
        *table(fid_l1),
        "",
    ]  # fmt: skip
    if config.get("reference"):
        lines += [
            f"Against the converged reference ({config['reference']}): FID against its samples "
            "and, in brackets, L1 to them (the teacher's row is the teacher's own error):",
            "",
            *table(to_reference),
            "",
        ]
    standing = {
        (name, key): ratios
        for key in nfes
        for name, ratios in learned_standing(state["rows"][key]).items()
    }
    if standing:
        lines += [
            "The learned rows against the best classic solver of their NFE (`start of gs` "
            "included): L1 to the teacher as a multiple of the lowest classic L1, then the share "
            "of the data-FID gap from the best classic solver to the teacher that the row closes "
            "(1: the teacher's FID; below 0: worse than the classic solver)"
            + (", then FID against the reference's samples as a multiple of the lowest classic "
               "one" if config.get("reference") else "")
            + ":",
            "",
            *table(_standing_text, standing),
            "",
        ]  # fmt: skip
    disagreements = [line for key in nfes for line in start_disagreements(key, state["rows"][key])]
    if disagreements:
        lines += [
            "Where the two starts disagree: the paper's DPM-Solver++(3M) start (`-3m`) has the "
            "lower data FID, the best classic start the lower L1 to the teacher. A lower data FID "
            "from a solver farther from the teacher is an error FID happens to like, not a better "
            "solve (docs/BENCHMARKS.md): use the classic start to follow the model, and judge the "
            "`-3m` row by its samples.",
            "",
            *disagreements,
            "",
        ]
    lines += [
        "Seconds to sample the N images and, in brackets, to train (GAS: after its GS):",
        "",
        *table(seconds),
    ]  # fmt: skip
    grids, grid_l1 = state["grids"], state.get("grid_l1", {})
    lines += ["", "Best grid per classic solver (by L1 on the grid seeds; each grid's L1):", ""]
    for k in nfes:
        lines.append(f"- NFE {k}: " + "; ".join(
            f"{s}: **{g}**" + (" (" + ", ".join(f"{kind} {v:.4f}" for kind, v in grid_l1[k][s].items()) + ")" if k in grid_l1 else "")
            for s, g in grids[k].items()
        ))  # fmt: skip
    return "\n".join(lines) + "\n"


def learned_standing(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Each learned row of one NFE against that NFE's classic rows: ``l1`` = its L1 to the
    teacher / the lowest classic L1; ``gap`` = the share of the data-FID gap from the best classic
    solver to the teacher that it closes (:func:`~gas_solver.evaluation.report.gap_closed`);
    ``reference_fid`` = its FID against the reference's samples / the lowest classic one. None
    where a measure is missing (no FID, no reference, no gap to close)."""
    classic = [row for row in rows if row["kind"] == "classic"]

    def best(field: str) -> float | None:
        return min((row[field] for row in classic if row.get(field) is not None), default=None)

    best_l1, best_reference = best("l1"), best("reference_fid")
    gaps = gap_closed((row["name"], row["kind"], row["fid"]) for row in rows) or {}
    return {
        row["name"]: {
            "l1": row["l1"] / best_l1 if best_l1 else None,
            "gap": gaps.get(row["name"]),
            "reference_fid": (
                row["reference_fid"] / best_reference
                if best_reference and row.get("reference_fid") is not None
                else None
            ),
        }
        for row in rows
        if row["kind"] in ("gs", "gas")
    }


def start_disagreements(nfe: str, rows: list[dict[str, Any]]) -> list[str]:
    """One line per learned method (``gs``, ``gas``) of one NFE whose paper-start twin
    (``gs-3m``, ``gas-3m``) has the lower FID against the data while it has the lower L1 to the
    teacher; the FID against the reference's samples is quoted where both rows have one."""
    by_name = {row["name"]: row for row in rows}
    lines = []
    for name in ("gs", "gas"):
        ours, paper = by_name.get(name), by_name.get(f"{name}-3m")
        if ours is None or paper is None or None in (ours["fid"], paper["fid"]):
            continue
        if not (paper["fid"] < ours["fid"] and ours["l1"] < paper["l1"]):
            continue
        reference = ""
        if None not in (ours.get("reference_fid"), paper.get("reference_fid")):
            reference = (
                f"; FID against the reference's samples `{name}` {ours['reference_fid']:.2f}, "
                f"`{name}-3m` {paper['reference_fid']:.2f}"
            )
        lines.append(
            f"- NFE {nfe}: data FID `{name}-3m` {paper['fid']:.2f}, `{name}` {ours['fid']:.2f}; "
            f"L1 to the teacher `{name}` {ours['l1']:.4f}, `{name}-3m` {paper['l1']:.4f}"
            f"{reference}."
        )
    return lines


def _standing_text(ratios: dict[str, float | None]) -> str:
    l1, gap, reference = ratios["l1"], ratios["gap"], ratios["reference_fid"]
    parts = [
        "–" if l1 is None else f"{l1:.2f}×",
        "–" if gap is None else f"{gap:+.2f}",
        *([] if reference is None else [f"{reference:.2f}×"]),
    ]
    return " · ".join(parts)


def _plot(state: dict[str, Any], path: Path) -> None:
    nfes = sorted(state["rows"], key=int)
    series: dict[str, tuple[list[int], list[float]]] = {}
    for key in nfes:
        for row in state["rows"][key]:
            if row["fid"] is not None:
                xs, ys = series.setdefault(row["name"], ([], []))
                xs.append(int(key))
                ys.append(row["fid"])
    if series:
        save_series(series, path, xlabel="model calls (NFE)", ylabel="FID", log_y=True,
                    title=f"{state['config']['model']}: FID against NFE")  # fmt: skip


__all__ = ["LEARNED_METHODS", "SweepConfig", "format_sweep", "run_sweep", "with_calls"]
