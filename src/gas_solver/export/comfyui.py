"""A trained GS in ComfyUI: everything the ``GAS Solver Loader`` node decides, without ComfyUI.

The node (``comfyui/gas_solver_nodes/__init__.py``, the one file that imports ComfyUI) reads a
file written by ``gas-solver export --format k-diffusion`` and gives ``SamplerCustom`` (or
``SamplerCustomAdvanced``) a ``SAMPLER``, ``comfy.samplers.KSAMPLER(loaded.sample)``, and the
``SIGMAS`` the GS was trained on, :attr:`ComfyUISolver.sigmas`. A GS learns its coefficients and
the offsets of its model calls for exactly those noise levels, so anything else is refused.

What ComfyUI does around a ``KSAMPLER`` (read from ComfyUI's source, commit ``a125cd8`` of
2025-10-12; ``ms`` is the model's ``model_sampling``):

* ``comfy/samplers.py``, ``KSAMPLER.sample``: the sampler function is called as
  ``sampler_function(model_k, noise, sigmas, extra_args=extra_args, callback=k_callback,
  disable=disable_pbar)`` with ``noise = ms.noise_scaling(sigmas[0], noise, latent_image,
  max_denoise)`` and its result is returned as ``ms.inverse_noise_scaling(sigmas[-1], samples)``;
  ``Sampler.max_denoise``: ``isclose(ms.sigma_max, sigmas[0], rel_tol=1e-5) or sigmas[0] >
  ms.sigma_max``.
* ``comfy/model_sampling.py``: ``EPS.noise_scaling`` (and so ``V_PREDICTION``, ``EDM``, ``X0``):
  ``noise·√(1 + σ²) + latent`` with ``max_denoise``, ``noise·σ + latent`` without;
  ``EPS.inverse_noise_scaling``: the identity. ``CONST.noise_scaling`` (flow matching):
  ``σ·noise + (1 − σ)·latent``; ``CONST.inverse_noise_scaling``: ``latent / (1 − σ)``.
* ``model_k(x, sigma, **extra_args)`` (``KSamplerX0Inpaint`` → ``CFGGuider`` →
  ``BaseModel._apply_model`` in ``comfy/model_base.py``) is the guided data prediction ``x̂₀`` at
  noise level ``sigma`` of ``x``: the network sees ``ms.calculate_input(σ, x)`` (EPS:
  ``x/√(σ² + σ_data²)``; CONST: ``x``) at ``ms.timestep(σ)`` and ``ms.calculate_denoised`` turns
  its output into ``x̂₀``. So ``x = x₀ + σ·ε`` for the EPS family and ``x = (1 − σ)·x₀ + σ·ε``
  for CONST: the ``eps`` and ``const`` conventions of the export
  (:mod:`~gas_solver.export.k_diffusion`).
* The ``sigma`` of a flow model is its noise level ``s``; ``ModelSamplingDiscreteFlow.sigma(T) =
  time_snr_shift(shift, T/multiplier)`` with ``time_snr_shift(k, t) = k·t/(1 + (k − 1)·t)``,
  ``timestep(s) = s·multiplier``; ``ModelSamplingFlux.sigma(t) = flux_time_shift(shift, 1, t)``,
  which is ``time_snr_shift(e^shift, t)``; both ``percent_to_sigma(p) = time_snr_shift(k, 1 −
  p)``. That ``s(t)`` is :meth:`~gas_solver.schedules.FlowSchedule.flow_sigma`, so a ``const``
  file's sigmas are already ComfyUI's sigmas (checked per model: :func:`check_model_sampling`).
* A node reads a ``MODEL``'s sampling as ``model.get_model_object("model_sampling")`` (what
  ``BasicScheduler`` does; ``ModelSamplingSD3`` and ``ModelSamplingFlux`` patch it); inside the
  sampler the same object is ``model_k.inner_model.inner_model.model_sampling``.

The GS starts from the noise itself (``y₀ = ε`` at its first time) and ends with its state ``y_N``
at its last time (:meth:`~gas_solver.solvers.generalized.GeneralizedSolver.forward`). So
:meth:`ComfyUISolver.sample` divides ComfyUI's start by the noise factor ComfyUI applied (asking
the model's own ``noise_scaling``) and hands ComfyUI a result that its ``inverse_noise_scaling``
turns into ``y_N``: ComfyUI's latent is then the project's own GS sample from the same noise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError, MissingAssetError
from .k_diffusion import KDiffusionSolver, read_k_diffusion_solver, sample_gs, vp_levels

log = logging.getLogger(__name__)

NODE_ID = "GASSolverLoader"
DISPLAY_NAME = "GAS Solver Loader"
CATEGORY = "sampling/custom_sampling/samplers"
DESCRIPTION = (
    "A trained Generalized Solver (GS/GAS) from a file of `gas-solver export --format "
    "k-diffusion`: connect sampler and sigmas to SamplerCustom, unchanged (the GS is trained for "
    "exactly these noise levels)."
)
SOLVER_FOLDER = "gas_solvers"
"""The folder under ComfyUI's ``models/`` the node looks solver files up in."""
SIGMA_REL_TOL = 1e-4
"""The sigmas given back must be the solver's own to this (ComfyUI holds them in float32)."""
SHIFT_REL_TOL = 1e-4
EXPORT_HINT = "gas-solver export --solver RUN --format k-diffusion --out NAME.json"


@dataclasses.dataclass(frozen=True)
class ModelSamplingInfo:
    """What the node reads of a ComfyUI ``model_sampling`` object.

    Attributes:
        sampling: ``eps`` (ComfyUI's EPS family: eps, v-prediction, EDM, x0) or ``const``.
        name: its classes, for messages (``ModelSamplingDiscreteFlow+CONST``).
        sigma_max: ``ms.sigma_max``.
        shift: a flow model's ``k`` of ``s(t) = k·t/(1 + (k − 1)·t)`` (``None`` otherwise).
    """

    sampling: str
    name: str
    sigma_max: float
    shift: float | None


def _class_names(model_sampling: Any) -> list[str]:
    return [cls.__name__ for cls in type(model_sampling).__mro__]


def read_model_sampling(model_sampling: Any) -> ModelSamplingInfo:
    """The convention, largest sigma and flow shift of a ComfyUI ``model_sampling``.

    ``comfy/model_base.py::model_sampling`` builds it as ``class ModelSampling(s, c)``: ``s`` the
    schedule (``ModelSamplingDiscrete``, ``ModelSamplingDiscreteFlow``, ``ModelSamplingFlux``, …),
    ``c`` the prediction (``EPS``, ``V_PREDICTION``, ``EDM``, ``X0`` derive ``EPS``; ``CONST``).

    Raises:
        ConfigError: neither EPS-family nor CONST (e.g. ``COSMOS_RFLOW``).
    """
    names = _class_names(model_sampling)
    bases = type(model_sampling).__bases__
    name = "+".join(b.__name__ for b in bases) if bases != (object,) else names[0]
    if "CONST" in names:
        sampling = "const"
    elif "EPS" in names:
        sampling = "eps"
    else:
        raise ConfigError(
            f"the model's sampling ({name}) is neither ComfyUI's EPS family (eps, v-prediction, "
            "EDM) nor CONST (flow matching): a GS export runs on those only"
        )
    shift = _flow_shift(model_sampling) if sampling == "const" else None
    return ModelSamplingInfo(sampling, name, float(model_sampling.sigma_max), shift)


def _flow_shift(model_sampling: Any) -> float:
    """``k`` from ``percent_to_sigma(½) = time_snr_shift(k, ½) = k/(k + 1)`` (the same for
    ``ModelSamplingDiscreteFlow`` and, with ``k = e^shift``, ``ModelSamplingFlux``)."""
    half = float(model_sampling.percent_to_sigma(0.5))
    return half / (1.0 - half)


def _comfy_sigma_of_flow_level(model_sampling: Any, s: float, shift: float) -> float:
    """ComfyUI's sigma at the unshifted time ``t`` whose shifted level (shift ``shift``) is ``s``."""
    t = s / (shift - (shift - 1.0) * s)  # FlowSchedule.t_from_flow_sigma
    return float(model_sampling.percent_to_sigma(1.0 - t))


def check_model_sampling(solver: KDiffusionSolver, model_sampling: Any) -> ModelSamplingInfo:
    """Refuse a model whose ComfyUI sampling is not the one ``solver`` was trained for.

    * the convention: a ``const`` (flow) solver needs a CONST model, an ``eps`` one an EPS-family
      model;
    * flow: the model's shift (``ModelSamplingSD3``'s ``shift``; FLUX: ``e^shift``) must be the
      solver's, and ComfyUI's sigma at each of the solver's times must be the solver's sigma (the
      same unit);
    * a DDPM-schedule (``discrete_vp``) solver: the model's discrete table must be the same
      schedule (``ᾱ = 1/(1 + σ²)`` at its ends, the number of steps).

    Raises:
        ConfigError: naming both sides and what to do.
    """
    info = read_model_sampling(model_sampling)
    label = solver_label(solver)
    if info.sampling != solver.sampling:
        ours = "a flow-matching (CONST)" if solver.sampling == "const" else "a VP (EPS-family)"
        theirs = "a flow-matching (CONST)" if info.sampling == "const" else "an EPS-family"
        raise ConfigError(
            f"{label} was trained for {ours} model, this one is {theirs} model ({info.name}): "
            "load the model it was trained for, or export a solver trained on this one"
        )
    if info.sampling == "const":
        _check_flow(solver, model_sampling, info)
    elif solver.schedule.get("kind") == "discrete_vp":
        _check_discrete_vp(solver, model_sampling, info)
    return info


def _check_flow(solver: KDiffusionSolver, model_sampling: Any, info: ModelSamplingInfo) -> None:
    label = solver_label(solver)
    if solver.shift is None:
        raise ConfigError(f"{label}: its file records no flow shift; export it again")
    shift = float(solver.shift)
    assert info.shift is not None
    if not math.isclose(info.shift, shift, rel_tol=SHIFT_REL_TOL):
        raise ConfigError(
            f"{label} was trained at flow shift {shift:g}, the model samples at shift "
            f"{info.shift:g} ({info.name}): set shift {shift:g} with ModelSamplingSD3 (FLUX: "
            f"ModelSamplingFlux at the resolution it was trained at), or use a solver trained "
            f"at shift {info.shift:g}"
        )
    for s in solver.sigmas:
        theirs = _comfy_sigma_of_flow_level(model_sampling, s, shift)
        if not math.isclose(theirs, s, rel_tol=1e-5):
            raise ConfigError(
                f"{label}: ComfyUI's noise levels of this model ({info.name}) are not the "
                f"shifted flow sigmas k·t/(1 + (k − 1)·t) the solver was trained on (at its "
                f"sigma {s:.6g} ComfyUI has {theirs:.6g}): a flow model of another schedule"
            )


def _check_discrete_vp(
    solver: KDiffusionSolver, model_sampling: Any, info: ModelSamplingInfo
) -> None:
    table = getattr(model_sampling, "sigmas", None)
    first_last = solver.schedule.get("alphas_cumprod_first_last")
    steps = solver.schedule.get("num_train_timesteps")
    if table is None or first_last is None or steps is None:
        return
    table = torch.as_tensor(table, dtype=torch.float64).flatten()
    if len(table) < 2:
        return
    theirs = [float(1.0 / (1.0 + table[0] ** 2)), float(1.0 / (1.0 + table[-1] ** 2))]
    same = len(table) == steps and all(
        math.isclose(a, b, rel_tol=1e-4) for a, b in zip(theirs, first_last, strict=True)
    )
    if not same:
        raise ConfigError(
            f"{solver_label(solver)} was trained on a DDPM schedule of {steps} steps with ᾱ from "
            f"{first_last[0]:.6g} to {first_last[1]:.6g}; this model ({info.name}) has "
            f"{len(table)} steps with ᾱ from {theirs[0]:.6g} to {theirs[1]:.6g}: load the model "
            "it was trained for"
        )


def solver_label(solver: KDiffusionSolver) -> str:
    """``GS-4`` or ``GAS-4``."""
    return f"{str(solver.provenance.get('solver') or 'gs').upper()}-{solver.nfe}"


def describe(solver: KDiffusionSolver) -> str:
    """One line for the node's UI: ``GAS-4, flow (shift 3), trained at guidance 4.5, model …``."""
    if solver.sampling == "const":
        convention = f"flow (shift {solver.shift:g})" if solver.shift else "flow"
    else:
        convention = "VP (eps)"
    guidance = solver.guidance_scale
    trained = "unguided" if guidance is None else f"trained at guidance {guidance:g}"
    model = solver.model.get("model") or solver.model.get("model_source") or "unknown"
    sigmas = f"{solver.nfe + 1} sigmas {solver.sigmas[0]:.4g} → {solver.sigmas[-1]:.4g}"
    return f"{solver_label(solver)}, {convention}, {trained}, model {model}; {sigmas}"


def _short(values: Sequence[float], limit: int = 12) -> str:
    shown = [round(v, 4) for v in values[:limit]]
    return f"{shown}{' …' if len(values) > limit else ''}"


def _close(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=SIGMA_REL_TOL) for x, y in zip(a, b, strict=True)
    )


def check_sigmas(solver: KDiffusionSolver, sigmas: Tensor | Sequence[float]) -> None:
    """Refuse sigmas that are not the solver's own, saying what they look like and what to do.

    Raises:
        ConfigError: part of the solver's sigmas (partial denoise: ``denoise`` < 1,
            ``SplitSigmas``, a start step), another number of steps, or other noise levels
            (another scheduler, shift or model).
    """
    given = torch.as_tensor(sigmas).detach().to("cpu", torch.float64).flatten().tolist()
    own = solver.sigmas
    if _close(given, own):
        return
    label, n = solver_label(solver), len(own)
    fix = (
        "connect the GAS Solver Loader's sigmas output to the sampler's sigmas input unchanged "
        "(no denoise < 1, no SplitSigmas or other scheduler between them)"
    )
    if 0 < len(given) < n and (
        _close(given, own[-len(given) :]) or _close(given, own[: len(given)])
    ):
        raise ConfigError(
            f"{label} got {len(given) - 1} of its {n - 1} steps (sigmas {_short(given)}): partial "
            f"denoise is not supported, a GS's coefficients are learned for its whole trajectory "
            f"from pure noise; {fix}. For img2img at denoise < 1 use another sampler"
        )
    if len(given) != n:
        raise ConfigError(
            f"{label} got {len(given)} sigmas ({max(len(given) - 1, 0)} steps), it takes exactly "
            f"its own {n} ({n - 1} steps, {solver.nfe} model calls) {_short(own)}; {fix}"
        )
    raise ConfigError(
        f"{label} got other sigmas {_short(given)} than the {n} it was trained on {_short(own)} "
        f"(another scheduler, shift or model); {fix}"
    )


def comfy_max_denoise(sigma_max: float, sigma0: float) -> bool:
    """``comfy/samplers.py::Sampler.max_denoise``: the start is pure noise when ``sigmas[0]`` is
    the model's largest sigma (to ``1e-5``) or above it."""
    return math.isclose(sigma_max, sigma0, rel_tol=1e-05) or sigma0 > sigma_max


def _scalar(value: float) -> Tensor:
    return torch.tensor(value, dtype=torch.float64)


def noise_factor(model_sampling: Any, sigmas: Tensor | Sequence[float]) -> float:
    """What ComfyUI's ``KSAMPLER.sample`` multiplied the noise by before calling the sampler:
    ``ms.noise_scaling(sigmas[0], noise, latent_image, max_denoise)`` at ``noise = 1``,
    ``latent_image = 0`` (EPS: ``√(1 + σ₀²)`` or ``σ₀``; CONST: ``σ₀``)."""
    sigma0 = float(torch.as_tensor(sigmas).flatten()[0])
    max_denoise = comfy_max_denoise(float(model_sampling.sigma_max), sigma0)
    scaled = model_sampling.noise_scaling(_scalar(sigma0), _scalar(1.0), _scalar(0.0), max_denoise)
    return float(scaled)


def inverse_factor(model_sampling: Any, sigmas: Tensor | Sequence[float]) -> float:
    """What ComfyUI's ``KSAMPLER.sample`` multiplies the sampler's result by:
    ``ms.inverse_noise_scaling(sigmas[-1], samples)`` at ``samples = 1`` (EPS: 1; CONST:
    ``1/(1 − σ_N)``)."""
    sigma_last = float(torch.as_tensor(sigmas).flatten()[-1])
    return float(model_sampling.inverse_noise_scaling(_scalar(sigma_last), _scalar(1.0)))


def _along_inner_models(model: Any) -> Iterable[Any]:
    """``model_k``, its ``inner_model`` (``CFGGuider``), that one's (``BaseModel``), …"""
    for _ in range(8):
        if model is None:
            return
        yield model
        model = getattr(model, "inner_model", None)


def find_model_sampling(model: Any) -> Any | None:
    """The ``model_sampling`` ``KSAMPLER.sample`` used (``model_wrap.inner_model.model_sampling``),
    found from the ``model_k`` a sampler function gets; ``None`` for a plain denoiser."""
    for obj in _along_inner_models(model):
        found = getattr(obj, "model_sampling", None)
        if found is not None:
            return found
    return None


def find_cfg(model: Any) -> float | None:
    """The guidance scale of the ``CFGGuider`` behind ``model_k`` (``None`` if there is none)."""
    for obj in _along_inner_models(model):
        cfg = getattr(obj, "cfg", None)
        if isinstance(cfg, (int, float)):
            return float(cfg)
    return None


@dataclasses.dataclass(frozen=True)
class ComfyUISolver:
    """A solver file, read and checked, as the node hands it to ComfyUI.

    Attributes:
        solver: the file's solver.
        path: the file.
        model_sampling: the model's ``model_sampling`` the node was given (``None``: none yet);
            the sampler uses the one it finds on its ``model`` first.
    """

    solver: KDiffusionSolver
    path: Path
    model_sampling: Any = None

    @property
    def sigmas(self) -> Tensor:
        """The ``SIGMAS`` output: the solver's ``N+1`` noise levels (float32, on the CPU, as
        ComfyUI's schedulers give them), ending at its last time (> 0, not 0)."""
        return torch.tensor(self.solver.sigmas, dtype=torch.float32)

    @property
    def label(self) -> str:
        return describe(self.solver)

    @torch.no_grad()
    def sample(
        self,
        model: Callable[..., Tensor],
        x: Tensor,
        sigmas: Tensor,
        extra_args: dict[str, Any] | None = None,
        callback: Callable[[dict[str, Any]], None] | None = None,
        disable: bool | None = None,
    ) -> Tensor:
        """The ``KSAMPLER`` sampler function: the GS from ComfyUI's start to what ComfyUI's
        ``inverse_noise_scaling`` turns into the GS's sample (module docstring).

        Args:
            model: ``model_k``, the data prediction ``model(x, sigma, **extra_args)``.
            x: ``noise_scaling(sigmas[0], noise, latent, max_denoise)``, as ``KSAMPLER`` made it.
            sigmas: the solver's own (:meth:`sigmas`); anything else is refused.
            extra_args, callback, disable: as ComfyUI passes them (to every model call, after
                each call, the progress bar).

        Raises:
            ConfigError: other sigmas; a model of another convention, shift or schedule; no
                ``model_sampling`` to read ComfyUI's noise scaling from.
        """
        model_sampling = find_model_sampling(model) or self.model_sampling
        if model_sampling is None:
            raise ConfigError(
                f"{solver_label(self.solver)}: no model_sampling to read ComfyUI's noise scaling "
                "from: give the model's (load_for_comfyui(path, model_sampling=…))"
            )
        check_model_sampling(self.solver, model_sampling)
        check_sigmas(self.solver, sigmas)
        self._check_guidance(find_cfg(model))
        sampling = self.solver.sampling
        c_first = vp_levels(self.solver.sigmas[0], sampling)[2]
        c_last = vp_levels(self.solver.sigmas[-1], sampling)[2]
        # ComfyUI's start is noise·m (+ latent): the GS starts from y₀ = noise = c·x_gs
        x = x / (noise_factor(model_sampling, sigmas) * c_first)
        out = sample_gs(model, x, sigmas, extra_args, callback, disable, solver=self.solver)
        # sample_gs gives x at the last sigma; the GS's sample is y_N = c·x, which ComfyUI's
        # inverse_noise_scaling must give back
        return out * (c_last / inverse_factor(model_sampling, sigmas))

    def _check_guidance(self, cfg: float | None) -> None:
        """Warn when CFG runs at another scale than the solver was trained at. ``cfg`` 1 (no CFG)
        is not warned about: a guidance-distilled model (FLUX.1-dev) records its guidance
        embedding as its guidance and takes it from ``FluxGuidance``, with ``cfg`` 1."""
        trained = self.solver.guidance_scale
        if cfg is None or trained is None or cfg == 1.0 or math.isclose(cfg, trained):
            return
        log.warning(
            "%s was trained at guidance %g, the sampler runs at cfg %g: set cfg %g for the "
            "results it was trained for",
            solver_label(self.solver),
            trained,
            cfg,
            trained,
        )


def load_for_comfyui(path: str | Path, model_sampling: Any = None) -> ComfyUISolver:
    """Read the solver file at ``path`` for ComfyUI, checked against the model's
    ``model_sampling`` when given (:func:`check_model_sampling`).

    Raises:
        MissingAssetError: no such file.
        CorruptFileError: not a k-diffusion solver file, or damaged (naming the field).
        ConfigError: a folder, a trained-solver checkpoint, or a model it was not trained for.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(
            f"{path} is a folder (a diffusers scheduler export is for diffusers pipelines): the "
            f"node reads the .json file of `{EXPORT_HINT}`"
        )
    if path.suffix == ".safetensors":
        raise ConfigError(
            f"{path} is a trained solver checkpoint: export it for ComfyUI first, "
            f"`gas-solver export --solver {path} --format k-diffusion --out NAME.json`"
        )
    loaded = ComfyUISolver(read_k_diffusion_solver(path), path, model_sampling)
    if model_sampling is not None:
        check_model_sampling(loaded.solver, model_sampling)
    return loaded


def resolve_solver_file(text: str, folders: Iterable[str | Path] = ()) -> Path:
    """The solver file the node's ``solver_file`` text names: an absolute path, or a name (with or
    without ``.json``) in one of ``folders`` (ComfyUI's ``models/gas_solvers``), or a path
    relative to ComfyUI's working directory. Quotes around a pasted path are dropped.

    Raises:
        ConfigError: empty text.
        MissingAssetError: nothing there (listing the solver files the folders hold).
    """
    folders = [Path(f) for f in folders]
    name = text.strip().strip("\"'").strip()
    if not name:
        raise ConfigError(
            f"solver_file is empty: give the path of a solver file ({EXPORT_HINT}) or the name "
            f"of one in {', '.join(map(str, folders)) or 'ComfyUI models/gas_solvers'}"
        )
    path = Path(name).expanduser()
    candidates: list[Path] = []
    if not path.is_absolute():
        candidates = [f / name for f in folders]
        if not name.endswith(".json"):
            candidates += [f / f"{name}.json" for f in folders]
    for candidate in [*candidates, path]:
        if candidate.exists():
            return candidate
    available = sorted(
        str(p.relative_to(f)) for f in folders if f.is_dir() for p in f.rglob("*.json")
    )
    held = f"; {', '.join(available[:10])} are there" if available else ""
    where = f" (looked in {', '.join(map(str, folders))}{held})" if folders else ""
    raise MissingAssetError(f"{name}: no such solver file{where}; write one with `{EXPORT_HINT}`")


def solver_file_fingerprint(text: str, folders: Iterable[str | Path] = ()) -> str:
    """What the node's cache key is (ComfyUI ``fingerprint_inputs`` / ``IS_CHANGED``): the
    SHA-256 of the file ``text`` names, so a rewritten file is read again."""
    try:
        path = resolve_solver_file(text, folders)
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except (OSError, ValueError):
        return f"unreadable: {text}"


__all__ = [
    "CATEGORY",
    "DESCRIPTION",
    "DISPLAY_NAME",
    "NODE_ID",
    "SOLVER_FOLDER",
    "ComfyUISolver",
    "ModelSamplingInfo",
    "check_model_sampling",
    "check_sigmas",
    "comfy_max_denoise",
    "describe",
    "find_cfg",
    "find_model_sampling",
    "inverse_factor",
    "load_for_comfyui",
    "noise_factor",
    "read_model_sampling",
    "resolve_solver_file",
    "solver_file_fingerprint",
]
