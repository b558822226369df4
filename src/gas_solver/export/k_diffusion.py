"""A trained Generalized Solver as a k-diffusion-style sampler: Karras (VP) and flow denoisers.

k-diffusion, EDM's code, ComfyUI and A1111 call a denoiser ``model(x, sigma, **extra_args)`` that
returns the data prediction ``x̂₀`` at the noise level ``sigma`` of ``x``, and run samplers
``sample_*(model, x, sigmas, extra_args, callback, disable)``. :func:`sample_gs` is the GS in that
form::

    sigmas, sampler = load_k_diffusion_solver("gs4.json")
    x = torch.randn(shape) * sigmas[0]
    samples = sampler(denoiser, x, sigmas, extra_args={"cond": cond})

The file is written by ``gas-solver export SOLVER --format k-diffusion --out FILE.json``. Two
conventions of what ``x`` and ``sigma`` are (the file's ``sampling``, named as ComfyUI names them):

* ``eps`` (VP diffusion models; Karras et al. 2022): ``x = x₀ + σ̃·ε``. The GS state ``y`` of the VP
  ODE is ``y = α·x`` with ``α = 1/√(1 + σ̃²)``, ``σ = σ̃·α``;
* ``const`` (flow matching: SD3, FLUX, the bundled ``mnist32``; ComfyUI's ``CONST``):
  ``x = (1 − σ)·x₀ + σ·ε`` with ``σ`` the (shifted) flow time, the GS state itself: ``y = x``,
  ``α = 1 − σ``. The sigmas are those of the model's shift, which the file records.

In both, ``y = c(σ)·x`` (``c = α`` for eps, ``1`` for const), the denoiser is queried at the learned
times, ``D̂_k = model(y_k/c(σ_q), σ_q)`` with ``σ_q`` the level at ``τ_k``, and (paper eq. 12, the
weights of :mod:`~gas_solver.export.table`; ``α, σ`` the schedule's at ``t_k``, ``α_q, σ_q`` at
``τ_k``)

    D_k = (1 − σ/σ_q)/α·y_k + σ·α_q/(σ_q·α)·D̂_k      (ε̂ from D̂ at τ_k, D_k from ε̂ at t_k),
    y_{k+1} = Σ_j W[k][j]·y_j + Σ_j V[k][j]·D_j.

The sampler starts from the state the given ``x`` stands for (``y_0 = c(σ_0)·x``): with ``x`` at
``sigmas[0]`` as the caller scales it, which is what its own samplers start from. The last sigma is
that of ``t_eps`` > 0, not 0: the GS ends at its last grid time, as it was trained.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import trange

from ..errors import ConfigError, CorruptFileError, MissingAssetError
from ..outputs import write_json
from ..solvers.solver_file import MAX_NFE
from ..validation import choice, list_of, mapping, nullable, number, parse_json, validate
from .table import SolverTable

FILE_FORMAT = "gas-solver-k-diffusion"
FILE_VERSION = 2
"""Version 2 adds ``sampling`` (version 1 files, all ``eps``, are read as such) and the fields a
person or a UI reads: ``nfe``, ``schedule``, ``shift``, ``guidance_scale``, ``model``."""
SAMPLINGS = ("eps", "const")
BIG_SIGMA = 1e6
"""Above any model's largest noise level (EDM: 80; SD's σ̃ at t = 1: 14.6)."""


def vp_levels(sigma: float, sampling: str) -> tuple[float, float, float]:
    """``(α, σ, c)`` of the noise level ``sigma`` in convention ``sampling`` (module docstring):
    the schedule's ``α``, ``σ`` and the scale ``c`` of the GS state ``y = c·x``."""
    if sampling == "const":
        return 1.0 - sigma, sigma, 1.0
    alpha = 1.0 / math.sqrt(1.0 + sigma**2)
    return alpha, sigma * alpha, alpha


@dataclasses.dataclass(frozen=True)
class KDiffusionSolver:
    """What :func:`sample_gs` needs, and what a person or a UI reads about the solver.

    Attributes:
        sampling: ``eps`` (Karras VP denoisers) or ``const`` (flow matching).
        sigmas: the levels at the grid times, ``N+1`` values from ``t = 1`` down to ``t_eps``.
        query_sigmas: the ``N`` levels the denoiser is called at (the learned offsets applied).
        state_weights, pred_weights: ``W`` and ``V`` (row ``k`` has ``k+1`` entries).
        schedule: the model's noise schedule the solver was trained on.
        guidance_scale: the classifier-free guidance it was trained at (``None``: unguided).
        model: the model it was trained for (its name or source, and identity).
        provenance: where the solver comes from (training run, teacher, export).
    """

    sampling: str
    sigmas: list[float]
    query_sigmas: list[float]
    state_weights: list[list[float]]
    pred_weights: list[list[float]]
    schedule: dict[str, Any] = dataclasses.field(default_factory=dict)
    guidance_scale: float | None = None
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.query_sigmas)
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if n < 1 or len(self.sigmas) != n + 1:
            raise ValueError(f"{len(self.sigmas)} sigmas for {n} model calls (needs {n + 1})")
        for name in ("state_weights", "pred_weights"):
            if [len(row) for row in getattr(self, name)] != list(range(1, n + 1)):
                raise ValueError(f"{name}: row k must hold k + 1 weights, for {n} rows")

    @classmethod
    def from_table(
        cls, table: SolverTable, guidance_scale: float | None = None
    ) -> KDiffusionSolver:
        flow = table.schedule.get("kind") == "flow"
        provenance = dict(table.provenance)
        model = {key: provenance.pop(key, None) for key in ("model", "model_source")}
        return cls(
            sampling="const" if flow else "eps",
            sigmas=table.sigmas if flow else table.edm_sigmas,
            query_sigmas=table.query_sigmas if flow else table.query_edm_sigmas,
            state_weights=table.state_weights,
            pred_weights=table.pred_weights,
            schedule=table.schedule,
            guidance_scale=guidance_scale,
            model=model,
            provenance=provenance,
        )

    @property
    def nfe(self) -> int:
        return len(self.query_sigmas)

    @property
    def shift(self) -> float | None:
        """The flow schedule's shift the sigmas belong to (``None`` for a VP model)."""
        return self.schedule.get("shift") if self.sampling == "const" else None

    def save(self, path: str | Path) -> Path:
        fields = dataclasses.asdict(self)
        head = {"format": FILE_FORMAT, "version": FILE_VERSION, "nfe": self.nfe,
                "sampling": self.sampling, "shift": self.shift}  # fmt: skip
        return write_json(path, {**head, **fields})


@torch.no_grad()
def sample_gs(
    model: Callable[..., Tensor],
    x: Tensor,
    sigmas: Tensor | list[float],
    extra_args: dict[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    disable: bool | None = None,
    *,
    solver: KDiffusionSolver,
) -> Tensor:
    """Run the GS ``solver`` on a denoiser ``model(x, sigma, **extra_args)`` → ``x̂₀``.

    Args:
        model: the denoiser, in the solver's ``sampling`` convention; ``sigma`` is passed as a
            ``(B,)`` tensor.
        x: ``(B, …)`` the start at ``sigmas[0]``, e.g. ``noise·sigmas[0]``.
        sigmas: the solver's own ``sigmas`` (``N+1`` values; anything else is refused).
        extra_args: passed to every model call.
        callback: called after each model call with ``{"x", "i", "sigma", "sigma_hat",
            "denoised"}`` (``denoised`` the step's data prediction ``D_i``).
        disable: switch the progress bar off.
        solver: the coefficients (see :func:`load_k_diffusion_solver`).

    Returns:
        the sample at ``sigmas[-1]``, in the units of ``x``.
    """
    given = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
    own = torch.tensor(solver.sigmas, dtype=torch.float64)
    if given.shape != own.shape or not torch.allclose(given, own, rtol=1e-4, atol=0):
        raise ConfigError(
            f"sample_gs: sigmas must be the solver's own {len(own)} noise levels "
            f"{[round(s, 4) for s in solver.sigmas]} (learned with its coefficients), got "
            f"{[round(s, 4) for s in given.tolist()]}"
        )
    extra_args = extra_args or {}
    levels = [vp_levels(s, solver.sampling) for s in solver.sigmas]
    batch = x.new_ones([x.shape[0]])
    states, preds = [levels[0][2] * x], []
    for k in trange(solver.nfe, disable=disable):
        y, level = states[k], solver.query_sigmas[k]
        a_q, s_q, c_q = vp_levels(level, solver.sampling)
        denoised = model(y / c_q, batch * level, **extra_args)
        a_t, s_t, c_t = levels[k]
        preds.append((1 - s_t / s_q) / a_t * y + s_t * a_q / (s_q * a_t) * denoised)
        if callback is not None:
            sigma = solver.sigmas[k]
            callback({"x": y / c_t, "i": k, "sigma": sigma, "sigma_hat": sigma,
                      "denoised": preds[k]})  # fmt: skip
        w, v = solver.state_weights[k], solver.pred_weights[k]
        nxt = sum((w[j] * states[j] for j in range(k + 1)), torch.zeros_like(y))
        nxt = nxt + sum((v[j] * preds[j] for j in range(k + 1)), torch.zeros_like(y))
        states.append(nxt)
    return states[-1] / levels[-1][2]


_LEVELS = list_of(number(0, BIG_SIGMA, closed=False), 1, MAX_NFE + 1)
FILE_SCHEMA = mapping(
    {
        "version": choice(1, FILE_VERSION),
        "sampling?": choice(*SAMPLINGS),
        "sigmas": _LEVELS,
        "query_sigmas": _LEVELS,
        "state_weights": list_of(list_of(number()), 1, MAX_NFE),
        "pred_weights": list_of(list_of(number()), 1, MAX_NFE),
        "schedule?": mapping(),
        "guidance_scale?": nullable(number(0)),
        "model?": mapping(),
        "provenance?": mapping(),
    }
)
"""What a reader checks of a solver file (version 1 files have no ``sampling``: all ``eps``)."""


def read_k_diffusion_solver(path: str | Path) -> KDiffusionSolver:
    """The solver of a file written by ``gas-solver export --format k-diffusion``, checked.

    Raises:
        MissingAssetError: no such file (the message says how to write one).
        CorruptFileError: not such a file, damaged, or of another version (naming the field).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingAssetError(
            f"{path} not found: write it with `gas-solver export SOLVER --format k-diffusion "
            f"--out {path}`"
        )
    data = parse_json(path.read_bytes(), path)
    if not isinstance(data, dict) or data.get("format") != FILE_FORMAT:
        raise CorruptFileError(f"{path}: not a gas-solver k-diffusion solver file")
    validate(data, FILE_SCHEMA, path)
    fields = {f.name for f in dataclasses.fields(KDiffusionSolver)}
    try:
        return KDiffusionSolver(
            **{"sampling": "eps", **{k: v for k, v in data.items() if k in fields}}
        )
    except ValueError as err:
        raise CorruptFileError(f"{path}: {err}") from None


def load_k_diffusion_solver(path: str | Path) -> tuple[Tensor, Callable[..., Tensor]]:
    """``(sigmas, sampler)`` of a file written by ``gas-solver export --format k-diffusion``;
    ``sampler(model, x, sigmas, extra_args=None, callback=None, disable=None)``."""
    solver = read_k_diffusion_solver(path)
    return torch.tensor(solver.sigmas), partial(sample_gs, solver=solver)
