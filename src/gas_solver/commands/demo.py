"""``gas-solver demo``: the whole method on one model, from nothing to a report.

1. a teacher set (the paper's teacher: UniPC-3, 20 model calls, logSNR grid) on seeds 0…;
2. a GS trained on it at ``nfe`` model calls, then a GAS that starts from that GS and adds the
   adversarial term for ``gas_iterations`` more (``--no-gas``: the GS only);
3. :func:`~gas_solver.evaluation.compare` of the learned solver(s) against DDIM,
   DPM-Solver++(3M), UniPC-3 and iPNDM at the same NFE (each on its best grid for the default
   model, :data:`CLASSIC`), and the teacher, on evaluation seeds
   50000… (FID with its N, fidelity to the teacher, ms per sample, pictures);
4. ``report.md``: the table, the share of the FID gap the GS closes,
   ``(FID_best classic − FID_GS) / (FID_best classic − FID_teacher)`` (the paper reaches
   0.85–0.94 at 4 calls), the pictures and the commands that reproduce every step.

Defaults fit a laptop CPU; every size has a flag to scale it up.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import option, require, validated
from ..evaluation.compare import compare, split_solvers
from ..evaluation.report import Row, format_table, gap_closed
from ..models.base import COMPILE_HELP, COMPUTE_DTYPES, DTYPE_HELP
from ..models.loading import load_model
from ..outputs import check_output, folder_lock, write_json, write_text
from ..runtime import resolve_device, run_metadata
from ..solvers.generalized import SOLVER_FILE
from ..solvers.teacher import DEFAULT_TEACHER
from ..training.discriminators import CHOICES as DISCRIMINATOR_CHOICES
from ..training.discriminators import FEATURE_PRESET
from ..training.settings import DISTANCES, GAS_FINE_TUNE, R3GAN_BETAS
from ..training.trainer import train
from .teacher import TeacherConfig, make_teacher_set
from .train import TrainConfig

CLASSIC = (
    "ddim:grid=uniform;dpmpp:order=3,grid=quadratic;unipc:order=3,grid=uniform;"
    "ipndm:order=4,grid=uniform"
)
"""Each classic solver on its best built-in grid for ``mnist32`` at 4 calls (L1 to the teacher,
docs/BENCHMARKS.md, ``docs/results/mnist32-classic-grids-nfe4.json``): time-uniform for DDIM,
UniPC-3 and iPNDM, time-quadratic for DPM-Solver++(3M); on the logSNR grid UniPC-3 and 3M are far
off."""


@dataclasses.dataclass
class DemoConfig:
    """``gas-solver demo``: teacher → GS (and GAS) → comparison → report."""

    model: str = option("mnist32", "model name or path")
    out: str = option("runs/demo", "output folder (teacher/, gs<NFE>/, compare/, report.md)")
    nfe: int = option(4, "model calls of the learned and the classic solvers")
    teacher: str = option(DEFAULT_TEACHER, "teacher solver spec")
    train_size: int = option(360, "teacher pairs to train on (seeds 0…)")
    val_size: int = option(40, "teacher pairs to validate on (the seeds after them)")
    iterations: int = option(140, "GS training iterations")
    batch_size: int = option(16, "teacher pairs per iteration")
    lr: float = option(
        2e-3,
        "GS learning rate, with train's cosine decay (train's default; from the best classic "
        "start 3e-3 constant made the GS worse than its start at NFE 4 and 6)",
    )
    distillation: str = option(
        "auto", "per-sample distillation distance (see `train --help`)", choices=DISTANCES
    )
    init_solver: str = option(
        "auto", "where the GS starts (see `train --help`): auto, dpmpp3m or a classic solver"
    )
    init_grid: str | None = option(None, "grid kind of the start (auto: the only grid tried)")
    classic: str = option(CLASSIC, "classic solvers to compare with, ';'-separated (NFE added)")
    gas: bool = option(True, "also train a GAS (adversarial, starting from the GS) and add its row")
    gas_iterations: int = option(80, "GAS: iterations after the GS it starts from")
    disc_preset: str = option(
        FEATURE_PRESET,
        "GAS discriminator: heads on the model's own UNet encoder (model-features, ~2x a GS "
        "iteration), or an R3GAN preset (the paper's r3gan-32 takes ~100 s per iteration on a "
        "2-core CPU, small ~3 s)",
        choices=DISCRIMINATOR_CHOICES,
    )
    adv_weight: float = option(0.1, "GAS: weight of the adversarial term (as the sweep's)")
    disc_lr: float = option(
        1e-4, "GAS: discriminator learning rate (Adam betas (0, 0.99), as R3GAN)"
    )
    disc_warmup: int = option(
        40, "GAS: discriminator-only steps (teacher vs the GS's samples) before the solver trains"
    )
    eval_seeds: str = option("50000-50199", "evaluation seeds (N of every FID)")
    fid_ref: str | None = option("mnist", "FID reference: a bundled data set, an .npz, or none")
    fid_method: str = option("eigh", "FID matrix square root: eigh (fast) or sqrtm (EDM)")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    dtype: str = option(
        "float32", DTYPE_HELP + "; every step (teacher, trainings, comparison)",
        choices=list(COMPUTE_DTYPES),
    )  # fmt: skip
    compile: bool = option(False, COMPILE_HELP)

    def validate(self) -> None:
        check_output(self.out, "folder")
        require(self.nfe >= 1, "nfe", "must be >= 1")
        require(
            self.train_size >= 1 and self.val_size >= 1,
            "train_size",
            "train and val sizes must be >= 1",
        )
        require(self.iterations >= 1, "iterations", "must be >= 1")
        require(self.gas_iterations >= 1, "gas_iterations", "must be >= 1")
        require(self.lr > 0, "lr", "must be > 0")


def run_demo(config: DemoConfig, progress: bool = True) -> Path:
    """Run every step (the output folder locked); returns the path of ``report.md``."""
    with folder_lock(config.out) as out:
        return _demo(config, out, progress)


def _demo(config: DemoConfig, out: Path, progress: bool) -> Path:
    teacher_config = validated(TeacherConfig(  # every step's settings checked before any work
        model=config.model, out=str(out / "teacher"), solver=config.teacher,
        seeds=f"0-{config.train_size + config.val_size - 1}", device=config.device,
        dtype=config.dtype, compile=config.compile,
    ))  # fmt: skip
    methods = ("gs", "gas") if config.gas else ("gs",)
    train_configs = [_train_config(config, out, method) for method in methods]
    device = resolve_device(config.device)
    model = load_model(config.model, device)
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    teacher = make_teacher_set(teacher_config, model, device, progress)
    seconds["teacher set"] = time.perf_counter() - start

    learned: list[str] = []
    for train_config in train_configs:
        start = time.perf_counter()
        learned.append(str(train(train_config, model, teacher, progress)))
        seconds[f"{train_config.loss.upper()} training"] = time.perf_counter() - start
    gs_summary = json.loads((out / f"gs{config.nfe}" / "summary.json").read_text())

    start = time.perf_counter()
    solvers = [*learned, *split_solvers(config.classic)]
    comparison = compare(
        model, solvers, config.eval_seeds, nfe=config.nfe, teacher=config.teacher, fid_ref=config.fid_ref,
        fid_method=config.fid_method, teacher_set=teacher, out=out / "compare", device=device,
        progress=progress,
    )  # fmt: skip
    seconds["comparison"] = time.perf_counter() - start
    rows = comparison.rows
    summary = {
        "rows": [row.to_dict() for row in rows],
        "gap_closed": gap_closed((row.label, row.kind, row.fid) for row in rows),
        "gs_start": gs_summary["start"],
        "gs_kept": gs_summary["kept"],
        "seconds": seconds,
        "config": dataclasses.asdict(config),
        "run": run_metadata(),
    }
    write_json(out / "demo.json", summary)
    report = out / "report.md"
    table = format_table(rows, comparison.context)
    text = format_report(config, rows, table, summary["gap_closed"], seconds, gs_summary)
    return write_text(report, text)


def _train_config(config: DemoConfig, out: Path, method: str) -> TrainConfig:
    """The ``train`` settings of the demo's GS step, or of its GAS step (which fine-tunes the GS:
    its start is the GS's solver file)."""
    iterations = config.iterations if method == "gs" else config.gas_iterations
    gs_solver = str(out / f"gs{config.nfe}" / SOLVER_FILE)
    return validated(TrainConfig(
        teacher=str(out / "teacher"), out=str(out / f"{method}{config.nfe}"), nfe=config.nfe,
        loss=method, distillation=config.distillation, init_grid=config.init_grid,
        init_solver=config.init_solver if method == "gs" else gs_solver,
        iterations=iterations, batch_size=config.batch_size,
        **({"lr": config.lr} if method == "gs" else GAS_FINE_TUNE),
        train_size=config.train_size, val_size=config.val_size, val_every=0,
        checkpoint_every=iterations, disc_preset=config.disc_preset,
        adv_weight=config.adv_weight, disc_lr=config.disc_lr, **R3GAN_BETAS,
        disc_warmup=config.disc_warmup, device=config.device, dtype=config.dtype,
        compile=config.compile,
    ))  # fmt: skip


def reproduce_command(config: DemoConfig) -> str:
    """The ``gas-solver demo`` command line that repeats this run."""
    flags = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{flag[2:]}")
        elif value is not None:
            flags.append(f"{flag} {shlex.quote(str(value))}")
    return "gas-solver demo " + " ".join(flags)


def format_report(
    config: DemoConfig,
    rows: Sequence[Row],
    table: str,
    gaps: dict[str, float] | None,
    seconds: dict[str, float],
    gs_summary: dict[str, Any] | None = None,
) -> str:
    """``report.md``: ``table`` (:func:`~gas_solver.evaluation.format_table` of ``rows``), where
    the GS started (``gs_summary``: its run's ``summary.json``), the share of the FID gap closed,
    the pictures, the time of each stage and the command that repeats it."""
    table = table.split("\n", 2)[2]  # the table and its context, without the title
    lines = [
        f"# gas-solver demo: {config.model} at {config.nfe} model calls",
        "",
        f"A GS trained for {config.iterations} iterations on {config.train_size} teacher pairs"
        + (
            f", and a GAS trained from it for {config.gas_iterations} more with the adversarial term"
            if config.gas
            else ""
        )
        + ", against classic solvers at the same number of model calls and the teacher, on the "
        "same evaluation noise.",
        "",
        table.rstrip(),
        "",
    ]
    if gs_summary and "start" in gs_summary:
        start, kept = gs_summary["start"], gs_summary.get("kept", "trained")
        distance = gs_summary.get("distillation", config.distillation)
        picked = (
            f" (of {len(start['screened'])} classic solvers and grids, the lowest "
            f"{distance} to the teacher on the validation pairs: {start['loss']:.4f})"
            if "screened" in start
            else ""
        )
        lines += [
            f"The GS started as `{start['solver']}`{picked} and trained from there; "
            + (
                "training made it worse on validation, so the start was kept."
                if kept == "start"
                else f"its validation {distance}: "
                f"{gs_summary['initial_validation'].get('val_loss', float('nan')):.4f} → "
                f"{gs_summary['final_validation'].get('val_loss', float('nan')):.4f}."
            ),
            "",
        ]
    if gaps:
        best = min((r for r in rows if r.kind == "classic"), key=lambda r: r.fid)
        lines.append(
            f"Share of the FID gap between the best classic solver (`{best.label}`) and the teacher closed:"
        )
        lines += [f"- `{label}`: {share:.2f}" for label, share in gaps.items()]
        lines += ["", "(the paper reaches 0.85–0.94 at 4 model calls on its models)", ""]
    lines += [
        "## Pictures",
        "",
        "Teacher and every solver on the same noise (one row each):",
        "",
        "![comparison](compare/comparison.png)",
        "",
        "Time grids (learned vs classic):",
        "",
        "![time grids](compare/time_grids.png)",
        "",
        "## Time",
        "",
        "Wall-clock time of each stage (warm-ups and, for the comparison, FID included; what a "
        "sample costs with each solver is the table's ms/sample):",
        "",
        *[f"- {stage}: {value:.0f} s" for stage, value in seconds.items()],
        "",
        "## Reproduce",
        "",
        f"`{reproduce_command(config)}`",
        "",
        "Settings and per-row data: `demo.json`, `compare/compare.json`.",
        "",
    ]
    return "\n".join(lines)
