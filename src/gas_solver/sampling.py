"""From noise to samples: :func:`sample` integrates one batch of noise with any solver;
:func:`generate` samples a list of seeds (each from its own noise, batched, shared out under
torchrun) with a solver resolved by :func:`load_sampler` and the seeds' conditions
(:func:`seed_cond_fn`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .distributed import gather_ordered, owned, show_progress
from .errors import ConfigError
from .models.base import DiffusionModel
from .models.loading import load_model
from .schedules import explicit_grid
from .seeds import seeded_noise
from .solvers._common import Callback
from .solvers.resolve import resolve_solver
from .solvers.spec import SolverSpec, check_noise

Sampler = Callable[[DiffusionModel, Tensor, Any], Tensor]
"""``sampler(model, noise, cond) -> samples``, noise ``(B, *model.sample_shape)`` on the model's
device: a :class:`~gas_solver.solvers.SolverSpec`, a ``GeneralizedSolver``, or any such callable."""
CondFn = Callable[[Tensor], "Tensor | dict[str, Tensor] | None"]
"""``cond_fn(seeds) -> cond``: seeds ``(B,)`` int64 on the CPU; a function of the seeds alone."""


def sample(
    model: DiffusionModel,
    noise: Tensor,
    solver: str | SolverSpec | Callable[..., Tensor] = "unipc",
    nfe: int | None = None,
    grid: str | Tensor | Sequence[float] = "logsnr",
    order: int | None = None,
    cond: Any = None,
    t_eps: float | None = None,
    callback: Callback | None = None,
    **options: Any,
) -> Tensor:
    """Integrate the probability-flow ODE of ``model`` from ``noise`` (at t = 1) to the grid's end.

    The caller decides on ``torch.no_grad()``; nothing here disables gradients.

    Args:
        model: the diffusion model.
        noise: ``(B, *model.sample_shape)`` initial state, normally ``N(0, I)`` (no rescaling).
        solver: a classic solver name (a key of :data:`~gas_solver.solvers.registry.SOLVERS`), a
            :class:`~gas_solver.solvers.SolverSpec`, or any callable
            ``solver(model, noise, cond, *, callback)``
            such as the learned ``GeneralizedSolver`` (then ``grid``, ``order``, ``t_eps`` and
            options must be left at their defaults; ``nfe``, if given, is checked against the
            solver's ``nfe`` attribute when it has one).
        nfe: number of model calls; required with a grid kind, implied by an explicit grid.
        grid: a grid kind (``uniform``, ``logsnr``, ``quadratic``, ``edm``) or explicit,
            strictly decreasing times in [t_min, 1] (a tensor stays differentiable).
        order: solver order (default per solver, see :class:`~gas_solver.solvers.SolverSpec`).
        cond: conditioning passed to the model.
        t_eps: last time of a grid kind (default: the schedule's ``t_eps``).
        callback: called after each model call with ``{"i", "t", "x", "denoised"}`` (every
            solver, classic or learned, k-diffusion's convention).
        **options: ``rho``, ``grid_unit`` and the options the solver declares (as in its spec
            text: ``variant``, ``lower_order_final``, …), checked by
            :class:`~gas_solver.solvers.SolverSpec`.

    Returns:
        ``(B, *model.sample_shape)`` samples at the last grid time.

    Raises:
        ConfigError (a ``ValueError``): unknown solver or option, NFE < 1, unsupported order,
        noise of the wrong shape; ``ValueError`` for a grid that is not strictly decreasing or
        leaves [t_min, 1].
    """
    if callable(solver) and not isinstance(solver, str):
        given = [name for name, value in (("order", order), ("t_eps", t_eps)) if value is not None]
        if not (isinstance(grid, str) and grid == "logsnr"):
            given.append("grid")
        given += sorted(options)
        if given:
            raise ConfigError(
                f"{', '.join(given)}: only apply to classic solvers named by a string, "
                f"not to {type(solver).__name__}"
            )
        expected = getattr(solver, "nfe", None)
        if nfe is not None and isinstance(expected, int) and expected != nfe:
            raise ConfigError(f"nfe: the solver makes {expected} model calls, but nfe={nfe}")
        check_noise(model, noise)
        if callback is None:  # a callable of the older shape (model, noise, cond) still fits
            return solver(model, noise, cond)
        return solver(model, noise, cond, callback=callback)
    if isinstance(grid, str):
        spec = SolverSpec(solver, nfe, grid, order=order, t_eps=t_eps, **options)
        return spec(model, noise, cond, callback=callback)
    values = torch.as_tensor(grid, dtype=torch.float64)
    spec = SolverSpec(solver, nfe, values, order=order, t_eps=t_eps, **options)
    times = explicit_grid(model.schedule, values, unit=spec.grid_unit)
    return spec.run(model, noise, times.to(noise.device), cond, callback=callback)


def cond_to(cond: Any, device: torch.device) -> Any:
    """A condition (none, a tensor, or a dict of tensors, as :data:`CondFn` gives) on ``device``."""
    if isinstance(cond, Tensor):
        return cond.to(device)
    if isinstance(cond, dict):
        return {key: value.to(device) for key, value in cond.items()}
    return cond


def seed_cond_fn(model: DiffusionModel, prompts: str | None = None) -> CondFn | None:
    """The conditions of seeds: prompts from a file (one a line, seed s gets prompt s mod count)
    for text models, else the model's ``default_cond`` (class models: label = seed mod classes,
    paper App. D.2), else none (unconditional models)."""
    if prompts is not None:
        if not model.takes_prompts:
            model.prompt_cond_fn([])  # raises: "takes no text prompts", naming the model
        try:
            text = Path(prompts).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"prompts: cannot read {prompts} as UTF-8 text ({err})") from None
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return model.prompt_cond_fn(lines)
    return model.default_cond


def load_sampler(
    solver: str, model: DiffusionModel | None = None, device: str | torch.device = "cpu"
) -> tuple[DiffusionModel, Sampler, dict[str, Any]]:
    """Resolve a solver string to ``(model, sampler, description)``.

    ``solver`` is a GS checkpoint path or a classic spec (``unipc:nfe=4``). A checkpoint knows its
    model (``model_source`` in its metadata), so ``model`` may then be omitted. The description's
    ``solver`` is ``gs`` or ``gas`` for a checkpoint (how it was trained), else the spec's name.
    """
    resolved = resolve_solver(solver)
    if model is None:
        source = resolved.model_source
        if not source:
            raise ConfigError(f"model: required to run {solver!r}; pass --model")
        model = load_model(source, device)
    return model, resolved.build(model, device), resolved.describe()


@torch.no_grad()
def generate(
    model: DiffusionModel,
    sampler: Sampler,
    seeds: list[int],
    batch_size: int,
    progress: bool = True,
    cond_fn: CondFn | None = None,
) -> Tensor:
    """Samples for ``seeds`` (each from its own seeded noise), on the model's device, in order.

    ``cond_fn(seeds)`` gives the conditions; by default the model's (:func:`seed_cond_fn`).
    Under torchrun each rank samples the batches ``i`` with ``i mod K = rank`` and every rank gets
    all samples back (:func:`~gas_solver.distributed.gather_ordered`): the batches are those of
    one process, so the samples are the same bit for bit.
    """
    device = model.device
    cond_fn = cond_fn or seed_cond_fn(model)
    chunks = {}
    batches = owned(list(enumerate(range(0, len(seeds), batch_size))))
    for number, start in tqdm(
        batches, desc="sample", unit="batch", disable=not show_progress(progress)
    ):
        batch = seeds[start : start + batch_size]
        noise = seeded_noise(batch, model.sample_shape, device=device)
        cond = None if cond_fn is None else cond_fn(torch.tensor(batch, dtype=torch.int64))
        chunks[number] = sampler(model, noise, cond_to(cond, device)).float().cpu()
    return torch.cat(gather_ordered(chunks))


__all__ = ["CondFn", "Sampler", "cond_to", "generate", "load_sampler", "sample", "seed_cond_fn"]
