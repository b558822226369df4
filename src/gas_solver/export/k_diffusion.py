"""A trained Generalized Solver as a k-diffusion-style sampler for Karras denoisers.

k-diffusion, EDM's code, ComfyUI and A1111 call a denoiser ``model(x, sigma, **extra_args)`` that
returns the data prediction at the noise level ``σ̃`` of ``x = x₀ + σ̃·ε`` (Karras et al. 2022),
and run samplers ``sample_*(model, x, sigmas, extra_args, callback, disable)`` from
``x = noise·sigmas[0]``. :func:`sample_gs` is the GS in that form::

    sigmas, sampler = load_k_diffusion_solver("gs4.json")
    x = torch.randn(shape) * sigmas[0]
    samples = sampler(denoiser, x, sigmas, extra_args={"cond": cond})

The file is written by ``gas-solver export SOLVER --format k-diffusion --out FILE.json``. The GS
state ``y`` of the VP ODE is ``y = α·x`` with ``α = 1/√(1 + σ̃²)`` and ``σ = σ̃·α``; the
denoiser is queried at the learned times, ``D̃_k = model(y_k/α(τ_k), σ̃(τ_k))``, and

    ε̂_k = (y_k − α(τ_k)·D̃_k)/σ(τ_k),    D_k = (y_k − σ_k·ε̂_k)/α_k,
    y_{k+1} = Σ_j W[k][j]·y_j + Σ_j V[k][j]·D_j          (paper eq. 12, weights of export.table).

The last sigma is σ̃(t_eps) > 0, not 0: the GS ends at its last grid time, as it was trained.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import trange

from ..errors import ConfigError, MissingAssetError
from ..outputs import write_json
from .table import SolverTable

FILE_FORMAT = "gas-solver-k-diffusion"
FILE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class KDiffusionSolver:
    """What :func:`sample_gs` needs: noise levels and the VP history weights.

    Attributes:
        sigmas: ``σ̃`` at the grid times, ``N+1`` values from ``σ̃(1)`` down to ``σ̃(t_eps)``.
        query_sigmas: ``σ̃(τ_k)``, the ``N`` levels the denoiser is called at.
        state_weights, pred_weights: ``W`` and ``V`` (row ``k`` has ``k+1`` entries).
        provenance: where the solver comes from.
    """

    sigmas: list[float]
    query_sigmas: list[float]
    state_weights: list[list[float]]
    pred_weights: list[list[float]]
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_table(cls, table: SolverTable) -> KDiffusionSolver:
        return cls(
            table.edm_sigmas,
            table.query_edm_sigmas,
            table.state_weights,
            table.pred_weights,
            table.provenance,
        )

    @property
    def nfe(self) -> int:
        return len(self.query_sigmas)

    def save(self, path: str | Path) -> Path:
        return write_json(
            path, {"format": FILE_FORMAT, "version": FILE_VERSION, **dataclasses.asdict(self)}
        )


def _alpha(edm_sigma: float) -> float:
    return 1.0 / math.sqrt(1.0 + edm_sigma**2)


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
    """Run the GS ``solver`` on a Karras denoiser ``model(x, sigma, **extra_args)``.

    Args:
        model: the denoiser; ``sigma`` is passed as a ``(B,)`` tensor.
        x: ``(B, …)`` the start, ``noise·sigmas[0]``.
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
    alphas = [_alpha(s) for s in solver.sigmas]
    batch = x.new_ones([x.shape[0]])
    states, preds = [alphas[0] * x], []
    for k in trange(solver.nfe, disable=disable):
        y, level = states[k], solver.query_sigmas[k]
        a_q = _alpha(level)
        denoised = model(y / a_q, batch * level, **extra_args)
        s_q, s_t = level * a_q, alphas[k] * solver.sigmas[k]  # VP σ at τ_k and at t_k
        preds.append((1 - s_t / s_q) / alphas[k] * y + s_t * a_q / (s_q * alphas[k]) * denoised)
        if callback is not None:
            sigma = solver.sigmas[k]
            callback(
                {
                    "x": y / alphas[k],
                    "i": k,
                    "sigma": sigma,
                    "sigma_hat": sigma,
                    "denoised": preds[k],
                }
            )
        w, v = solver.state_weights[k], solver.pred_weights[k]
        nxt = sum((w[j] * states[j] for j in range(k + 1)), torch.zeros_like(y))
        nxt = nxt + sum((v[j] * preds[j] for j in range(k + 1)), torch.zeros_like(y))
        states.append(nxt)
    return states[-1] / alphas[-1]


def load_k_diffusion_solver(path: str | Path) -> tuple[Tensor, Callable[..., Tensor]]:
    """``(sigmas, sampler)`` of a file written by ``gas-solver export --format k-diffusion``;
    ``sampler(model, x, sigmas, extra_args=None, callback=None, disable=None)``."""
    path = Path(path)
    if not path.is_file():
        raise MissingAssetError(
            f"{path} not found: write it with `gas-solver export SOLVER --format k-diffusion "
            f"--out {path}`"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FILE_FORMAT:
        raise ConfigError(f"{path}: not a gas-solver k-diffusion solver file")
    if data.get("version") != FILE_VERSION:
        raise ConfigError(f"{path}: version {data.get('version')!r}, expected {FILE_VERSION}")
    fields = {f.name for f in dataclasses.fields(KDiffusionSolver)}
    try:
        solver = KDiffusionSolver(**{k: v for k, v in data.items() if k in fields})
    except TypeError as err:
        raise ConfigError(f"{path}: {err}") from None
    return torch.tensor(solver.sigmas), partial(sample_gs, solver=solver)
