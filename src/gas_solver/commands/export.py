"""``gas-solver export``: a trained solver → a file or folder another tool reads.

The formats are the targets of :data:`gas_solver.export.targets.EXPORT_TARGETS`; this command
checks the output, loads the solver and its model, asks the target whether it can take them, and
lets it write the solver's table.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..config import excerpt, option, require
from ..errors import ConfigError
from ..export.table import solver_table
from ..export.targets import EXPORT_TARGETS, outputs_help, targets_help
from ..models.loading import load_model
from ..outputs import check_output
from ..runtime import run_metadata
from ..sampling import load_sampler
from ..solvers.resolve import resolve_solver


@dataclasses.dataclass
class ExportConfig:
    """``gas-solver export``: a trained GS/GAS for use outside gas-solver."""

    solver: str = option("", "a trained solver: solver.safetensors or its training run folder")
    format: str = option("diffusers", targets_help, choices=EXPORT_TARGETS)
    out: str = option("", outputs_help)
    model: str | None = option(None, "model name or path (default: the solver's own model)")

    def validate(self) -> None:
        require(bool(self.solver), "solver", "the trained solver to export is required")
        require(bool(self.out), "out", "an output path is required")
        target = EXPORT_TARGETS.get(self.format)
        require(
            target is not None,
            "format",
            f"one of {', '.join(EXPORT_TARGETS)}, got {excerpt(self.format)}",
        )
        # a classic solver is not exported: the tools exported to have their own (diffusers'
        # DPMSolverMultistepScheduler, k-diffusion's sample_dpmpp_2m, …). `checkpoint`, not
        # `kind`, tells it: a checkpoint's `kind` reads its file, which waits for the output check
        require(
            resolve_solver(self.solver).checkpoint is not None,
            "solver",
            f"{excerpt(self.solver)} is a classic solver; export takes a trained GS/GAS "
            "(solver.safetensors or its training run folder): the tools exported to have "
            "their own classic solvers",
        )
        if target.suffix:
            require(
                self.out.endswith(target.suffix),
                "out",
                f"a {target.name} export is a {target.suffix} file",
            )
        check_output(self.out, target.output_kind)


def run_export(config: ExportConfig) -> str:
    """Write the export; returns the line to print."""
    target = EXPORT_TARGETS[config.format]
    model = load_model(config.model, "cpu") if config.model else None
    model, solver, description = load_sampler(config.solver, model=model)
    reason = target.supports(solver, model)
    if reason is not None:
        raise ConfigError(f"format: {reason}")
    meta = solver.metadata
    provenance: dict[str, Any] = {
        "solver": description["solver"],
        "checkpoint": str(config.solver),
        "model": meta.get("model"),
        "model_source": meta.get("model_source"),
        "teacher": meta.get("teacher"),
        "training_iterations": meta.get("training", {}).get("iteration"),
        "exported": run_metadata(),
    }
    return target.write(solver, model, solver_table(solver, model, provenance), config.out)
