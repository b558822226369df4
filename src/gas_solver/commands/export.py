"""``gas-solver export``: a trained solver → a diffusers scheduler folder or a k-diffusion file."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..config import option, require
from ..errors import ConfigError
from ..export.k_diffusion import KDiffusionSolver
from ..export.table import solver_table
from ..models.diffusers import DiffusersUNetModel
from ..models.diffusers_flow import DiffusersFlowModel
from ..models.loading import load_model
from ..outputs import check_output, clear_earlier_run, folder_lock, write_files
from ..runtime import run_metadata
from ..sampling import load_sampler

FORMATS = ("diffusers", "k-diffusion")


@dataclasses.dataclass
class ExportConfig:
    """``gas-solver export``: a trained GS/GAS for use outside gas-solver."""

    solver: str = option("", "a trained solver: solver.safetensors or its training run folder")
    format: str = option(
        "diffusers", "diffusers (scheduler folder) or k-diffusion (JSON file)", choices=FORMATS
    )
    out: str = option("", "output: a folder (diffusers) or a .json file (k-diffusion)")
    model: str | None = option(None, "model name or path (default: the solver's own model)")

    def validate(self) -> None:
        require(bool(self.solver), "solver", "the trained solver to export is required")
        require(bool(self.out), "out", "an output path is required")
        if self.format == "k-diffusion":
            require(self.out.endswith(".json"), "out", "a k-diffusion solver is a .json file")
        check_output(self.out, "folder" if self.format == "diffusers" else "file")


def run_export(config: ExportConfig) -> str:
    """Write the export; returns the line to print."""
    model = load_model(config.model, "cpu") if config.model else None
    model, solver, description = load_sampler(config.solver, model=model)
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
    table = solver_table(solver, model, provenance)
    kind = table.schedule.get("kind")
    if config.format == "k-diffusion":
        if kind == "flow":  # k-diffusion has no flow-matching denoiser convention
            raise ConfigError(
                "format: a k-diffusion file is for Karras denoisers D(x/alpha; sigma/alpha); a "
                "solver of a flow-matching model exports with --format diffusers"
            )
        path = KDiffusionSolver.from_table(table).save(config.out)
        return (
            f"{path}: {description['solver'].upper()}-{solver.nfe}; in Python: "
            f"sigmas, sampler = gas_solver.export.load_k_diffusion_solver({str(path)!r})"
        )
    if kind not in ("discrete_vp", "flow"):
        raise ConfigError(
            "format: a diffusers scheduler needs a diffusers model (discrete DDPM or flow-matching "
            f"schedule); this solver's model has a {kind} schedule: use --format k-diffusion"
        )
    from ..export.diffusers_scheduler import GeneralizedSolverScheduler

    conditional = (
        isinstance(model, (DiffusersUNetModel, DiffusersFlowModel)) and model.conditioning != "none"
    )
    guidance = model.guidance_scale if conditional else None
    scheduler = GeneralizedSolverScheduler.from_table(table, model.prediction_type, guidance)
    with folder_lock(config.out, fresh=True) as out:  # the folder is replaced file by file
        clear_earlier_run(out)
        write_files(out, scheduler.save_pretrained)
    return (
        f"{config.out}: {description['solver'].upper()}-{solver.nfe} as a diffusers scheduler; "
        f"pipe.scheduler = GeneralizedSolverScheduler.from_pretrained({config.out!r}), then call "
        f"the pipeline with num_inference_steps={solver.nfe}"
    )
