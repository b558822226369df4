"""Export targets: where ``gas-solver export --format NAME`` writes a trained solver.

An :class:`ExportTarget` is a name, a one-line help, the kind of output it writes (a folder or a
file, checked before any work by :func:`gas_solver.outputs.check_output`), a check of whether it
can take a given solver and model, and the writer. :data:`EXPORT_TARGETS` is the one table of
them: ``gas-solver export``'s ``--format`` choices and help are read from it when the parser is
built, so a target added there (in code, or at run time before the CLI runs) is a new format.
"""

from __future__ import annotations

from typing import Literal, Protocol

from ..models.base import DiffusionModel
from ..outputs import clear_earlier_run, folder_lock, write_files
from ..solvers.generalized import GeneralizedSolver
from .k_diffusion import KDiffusionSolver
from .table import SolverTable

OutputKind = Literal["folder", "file"]


class ExportTarget(Protocol):
    """One export format.

    Attributes:
        name: the ``--format`` value.
        help: one line for ``--help``: what is written, for which tool.
        output_kind: ``folder`` or ``file``, what ``--out`` must be.
        suffix: what a file output's name must end with (``""``: anything).
    """

    name: str
    help: str
    output_kind: OutputKind
    suffix: str

    def supports(self, solver: GeneralizedSolver, model: DiffusionModel) -> str | None:
        """``None``, or the one-line reason this target cannot take ``solver`` for ``model``."""
        ...

    def write(
        self, solver: GeneralizedSolver, model: DiffusionModel, table: SolverTable, out: str
    ) -> str:
        """Write ``table`` (``solver`` as numbers for ``model``) to ``out``; the line to print.

        ``table.provenance["solver"]`` is ``gs`` or ``gas``: how the solver was trained.
        """
        ...


def solver_label(table: SolverTable) -> str:
    """``GS-4`` or ``GAS-4``: how a solver is named in the line an export prints."""
    return f"{table.provenance.get('solver', 'gs').upper()}-{table.nfe}"


class DiffusersTarget:
    """A diffusers scheduler folder (:class:`~gas_solver.export.GeneralizedSolverScheduler`)."""

    name = "diffusers"
    help = "a diffusers scheduler folder, for pipelines of discrete DDPM or flow-matching models"
    output_kind: OutputKind = "folder"
    suffix = ""

    def supports(self, solver: GeneralizedSolver, model: DiffusionModel) -> str | None:
        kind = model.schedule.kind
        if kind in ("discrete_vp", "flow"):
            return None
        return (
            "a diffusers scheduler needs a diffusers model (discrete DDPM or flow-matching "
            f"schedule); this solver's model has a {kind} schedule: use --format k-diffusion"
        )

    def write(
        self, solver: GeneralizedSolver, model: DiffusionModel, table: SolverTable, out: str
    ) -> str:
        from .diffusers_scheduler import GeneralizedSolverScheduler  # imports diffusers

        guidance = model.guidance_scale if model.conditioning != "none" else None
        scheduler = GeneralizedSolverScheduler.from_table(table, model.prediction_type, guidance)
        with folder_lock(out) as folder:  # the folder is replaced file by file
            clear_earlier_run(folder)
            write_files(folder, scheduler.save_pretrained)
        return (
            f"{out}: {solver_label(table)} as a diffusers scheduler; "
            f"pipe.scheduler = GeneralizedSolverScheduler.from_pretrained({out!r}), then call "
            f"the pipeline with num_inference_steps={table.nfe}"
        )


class KDiffusionTarget:
    """A k-diffusion-style sampler file (:func:`~gas_solver.export.load_k_diffusion_solver`)."""

    name = "k-diffusion"
    help = (
        "a k-diffusion-style sampler (JSON file) for denoisers D(x; sigma): Karras VP (eps) or "
        "flow matching (const), for k-diffusion loops and ComfyUI"
    )
    output_kind: OutputKind = "file"
    suffix = ".json"

    def supports(self, solver: GeneralizedSolver, model: DiffusionModel) -> str | None:
        return None  # every schedule has a convention: eps (VP, continuous or discrete), const

    def write(
        self, solver: GeneralizedSolver, model: DiffusionModel, table: SolverTable, out: str
    ) -> str:
        guidance = model.guidance_scale if model.conditioning != "none" else None
        path = KDiffusionSolver.from_table(table, guidance).save(out)
        return (
            f"{path}: {solver_label(table)}; in Python: "
            f"sigmas, sampler = gas_solver.export.load_k_diffusion_solver({str(path)!r}); "
            f"`gas-solver info {path}` says what it fits"
        )


EXPORT_TARGETS: dict[str, ExportTarget] = {
    target.name: target for target in (DiffusersTarget(), KDiffusionTarget())
}
"""``--format`` name → target; add an entry to add a format."""


def targets_help() -> str:
    """The ``--format`` help: each target's name and line."""
    return "; ".join(f"{name}: {target.help}" for name, target in EXPORT_TARGETS.items())


def outputs_help() -> str:
    """The ``--out`` help: what each target writes."""
    written = (
        f"{name}: a {t.suffix + ' ' if t.suffix else ''}{t.output_kind}"
        for name, t in EXPORT_TARGETS.items()
    )
    return f"output ({'; '.join(written)})"


__all__ = [
    "EXPORT_TARGETS",
    "DiffusersTarget",
    "ExportTarget",
    "KDiffusionTarget",
    "outputs_help",
    "solver_label",
    "targets_help",
]
