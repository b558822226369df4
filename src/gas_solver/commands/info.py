"""``gas-solver info FILE``: what a solver file is and what it fits, read without running it.

Three kinds of file are known: a trained solver (``solver.safetensors`` or its training run folder,
checked as ``sample`` checks it), a k-diffusion-style export (``.json``) and a diffusers scheduler
folder written by ``gas-solver export``. Anything else, or a damaged file, is one line and exit 2.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..config import excerpt, option, require
from ..errors import ConfigError, MissingAssetError
from ..export.k_diffusion import read_k_diffusion_solver
from ..solvers.solver_file import SOLVER_FILE, load_metadata
from ..solvers.spec import SolverSpec
from ..validation import parse_json

SCHEDULER_CLASS = "GeneralizedSolverScheduler"


@dataclasses.dataclass
class InfoConfig:
    """``gas-solver info``: describe a solver file."""

    file: str = option(
        "",
        "a trained solver (solver.safetensors or its run folder), a k-diffusion export (.json) "
        "or a diffusers scheduler folder written by `gas-solver export`",
        positional=True,
    )

    def validate(self) -> None:
        require(bool(self.file), "file", "the solver file to describe is required")


def _numbers(values: list[float], unit: str = "") -> str:
    return ", ".join(f"{v:.4g}" for v in values) + (f" ({unit})" if unit else "")


def _schedule(schedule: dict[str, Any] | None) -> str:
    if not schedule:
        return "not recorded"
    rest = ", ".join(f"{k} {v}" for k, v in schedule.items() if k != "kind")
    return f"{schedule.get('kind')} ({rest})" if rest else str(schedule.get("kind"))


def _guidance(scale: float | None, model: dict[str, Any] | None) -> str:
    """The guidance a solver was trained at: classifier-free (two predictions per call) or, for a
    guidance-distilled model (FLUX.1-dev: ``guidance_kind`` ``embedding``), an input of the
    network."""
    if scale is None:
        return "none (unguided)"
    if (model or {}).get("guidance_kind") == "embedding":
        return f"{scale:g} (the network's guidance embedding; no classifier-free guidance)"
    return f"{scale:g} (classifier-free)"


def _trained_solver(path: str) -> list[tuple[str, str]]:
    meta = load_metadata(Path(path) / SOLVER_FILE if Path(path).is_dir() else path)
    training = meta.get("training") or {}
    config = training.get("config") or {}
    start = training.get("start") or {}
    teacher = meta.get("teacher") or {}
    model = meta.get("model") or {}
    solver = meta.get("solver") or {}
    kind = "GAS" if config.get("loss") == "gas" else "GS"
    source = meta.get("model_source") or "(a model given to train --model)"
    return [
        ("file", f"{path}: a trained {kind} (gas-solver solver file, checksum and fields checked)"),
        ("model calls (NFE)", str(meta.get("nfe"))),
        ("model", f"{source}: {model.get('class')}, predicts {model.get('prediction_type')}"),
        ("noise schedule", _schedule(meta.get("schedule"))),
        ("guidance", _guidance(model.get("guidance_scale"), model)),
        (
            "teacher",
            f"{SolverSpec.from_dict(teacher['solver']).label} on seeds {teacher.get('seeds')}"
            if teacher.get("solver")
            else "not recorded",
        ),  # fmt: skip
        (
            "training",
            f"{training.get('iteration')} iterations, loss {config.get('loss')} "
            f"({config.get('distillation')}), start {start.get('solver')}",
        ),  # fmt: skip
        ("grid (t)", _numbers(solver.get("grid") or [])),
        ("evaluation times (t)", _numbers(solver.get("evaluation_times") or [])),
        (
            "fits",
            f"the model it was trained for ({source}): `gas-solver sample --solver {path}`; "
            "`gas-solver export` makes a diffusers scheduler or a k-diffusion file of it",
        ),  # fmt: skip
    ]


def _k_diffusion(path: str) -> list[tuple[str, str]]:
    solver = read_k_diffusion_solver(path)
    model = solver.model or {}
    source = model.get("model_source") or "the model it was exported with"
    if solver.sampling == "const":
        convention = f"const: flow matching, x = (1 − σ)·x₀ + σ·ε, at shift {solver.shift}"
    else:
        convention = "eps: a Karras denoiser D(x; σ), x = x₀ + σ·ε (VP models)"
    return [
        ("file", f"{path}: a k-diffusion-style GS sampler (gas-solver export)"),
        ("model calls (NFE)", str(solver.nfe)),
        ("sampling", convention),
        ("noise schedule", _schedule(solver.schedule)),
        ("sigmas", _numbers(solver.sigmas)),
        ("query sigmas", _numbers(solver.query_sigmas)),
        ("guidance", _guidance(solver.guidance_scale, model.get("model"))),
        ("trained as", f"{str(solver.provenance.get('solver', 'gs')).upper()}, for {source}"),
        (
            "fits",
            f"{source} with exactly these {solver.nfe + 1} sigmas: "
            "gas_solver.export.load_k_diffusion_solver, or the ComfyUI node",
        ),  # fmt: skip
    ]


def _scheduler_folder(path: str, config: dict[str, Any]) -> list[tuple[str, str]]:
    provenance = config.get("provenance") or {}
    source = provenance.get("model_source") or "the model it was exported with"
    steps = config.get("num_inference_steps")
    return [
        ("file", f"{path}: a diffusers {SCHEDULER_CLASS} folder (gas-solver export)"),
        ("model calls (NFE)", str(steps)),
        ("model", f"{source}, predicts {config.get('prediction_type')}"),
        ("noise schedule", _schedule(config.get("schedule"))),
        ("timesteps", _numbers(config.get("model_timesteps") or [], "the network's")),
        ("guidance", _guidance(config.get("guidance_scale"), provenance.get("model"))),
        (
            "fits",
            f"a diffusers pipeline of {source}: `pipe.scheduler = "
            f"{SCHEDULER_CLASS}.from_pretrained({path!r})`, num_inference_steps={steps}",
        ),  # fmt: skip
    ]


def solver_file_info(path: str) -> list[tuple[str, str]]:
    """``(field, text)`` lines that say what the solver file at ``path`` is and what it fits.

    Raises:
        MissingAssetError: nothing at ``path``.
        ConfigError: not a solver file gas-solver writes.
        CorruptFileError, CheckpointMismatchError: a damaged one, or a JSON of another kind.
    """
    where = Path(path)
    if not where.exists():
        raise MissingAssetError(f"{path}: no such file or folder")
    scheduler_config = where / "scheduler_config.json"
    if where.is_dir() and scheduler_config.is_file():
        config = parse_json(scheduler_config.read_bytes(), scheduler_config)
        if isinstance(config, dict) and config.get("_class_name") == SCHEDULER_CLASS:
            return _scheduler_folder(path, config)
        raise ConfigError(f"{path}: a diffusers scheduler folder, but not a {SCHEDULER_CLASS}")
    if where.suffix == ".safetensors" or (where / SOLVER_FILE).is_file():
        return _trained_solver(path)
    if where.suffix == ".json" and where.is_file():
        return _k_diffusion(path)
    raise ConfigError(
        f"{excerpt(path)}: not a solver file gas-solver knows (a solver.safetensors or its run "
        "folder, a k-diffusion .json, a diffusers scheduler folder)"
    )


def format_info(lines: list[tuple[str, str]]) -> str:
    width = max(len(field) for field, _ in lines)
    return "\n".join(f"{field:>{width}}: {text}" for field, text in lines)


def run_info(config: InfoConfig) -> str:
    return format_info(solver_file_info(config.file))


__all__ = ["InfoConfig", "format_info", "run_info", "solver_file_info"]
