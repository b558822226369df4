""":class:`SolverSpec`: one classic solver with its NFE, time grid and options, validated on
construction, serialisable (:meth:`SolverSpec.to_dict`, :meth:`SolverSpec.to_string`) and runnable
on any model. It is what configurations, checkpoints' metadata and the CLI store; its text form is
read by :func:`~gas_solver.solvers.spec_text.parse_solver_spec`."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..config import excerpt
from ..errors import ConfigError
from ..models.base import DiffusionModel
from ..schedules import GRID_KINDS, GRID_UNITS, NoiseSchedule, explicit_grid, time_grid
from ._common import Callback
from .classic import is_int
from .registry import GRID_KEYS, SOLVERS, option_names

MAX_NFE = 10_000
"""Most model calls a solver may make: ten times a 1000-step DDPM chain, far above any teacher,
and low enough that a mistyped NFE fails at once instead of allocating its time grid."""


@dataclass(frozen=True, init=False)
class SolverSpec:
    """A classic solver with its NFE, grid and options; validated on construction.

    Unset options take the solver's defaults and are stored resolved, so :meth:`to_dict` is
    explicit. ``t_eps=None`` means the schedule's default. The solver's options (its
    :class:`~gas_solver.solvers.classic.SolverOption` s) are keyword arguments and read as
    attributes: ``SolverSpec("unipc", nfe=8, variant="bh2").order == 3``; an option of another
    solver reads ``None``.

    Attributes:
        name: a key of :data:`SOLVERS` (``ddim``, ``dpmpp``, ``unipc``, ``ipndm``, ``heun``).
        nfe: number of model calls. Optional with an explicit grid (it follows from its length).
        grid: a grid kind (``uniform``, ``logsnr``, ``quadratic``, ``edm``) or explicit values,
            strictly decreasing, ``nfe / calls_per_step + 1`` of them.
        grid_unit: unit of explicit values: ``t``, ``sigma`` (EDM σ̃), ``flow_sigma`` (a flow
            model's σ) or ``timestep`` (the network's).
        t_eps: last time of a grid kind; ``None`` = the schedule's ``t_eps``.
        rho: exponent of the ``edm`` grid kind.
        settings: the solver's options, resolved, as ``(name, value)`` pairs in its order. The
            built-ins': ``order`` (dpmpp 1–3, default 3; unipc 1–3, default 3; ipndm 1–4,
            default 4; ddim 1; heun 2), ``variant`` (unipc ``bh1``/``bh2``, default bh1; ipndm
            ``fixed``/``variable``, default fixed), ``lower_order_final`` (dpmpp, default false;
            unipc, default true).
    """

    name: str
    nfe: int
    grid: str | tuple[float, ...]
    grid_unit: str
    t_eps: float | None
    rho: float
    settings: tuple[tuple[str, Any], ...]

    def __init__(
        self,
        name: str = "unipc",
        nfe: int | None = None,
        grid: str | Sequence[float] | Tensor = "logsnr",
        grid_unit: str = "t",
        *,
        t_eps: float | None = None,
        rho: float = 7.0,
        settings: Sequence[tuple[str, Any]] = (),
        **options: Any,
    ) -> None:
        info = SOLVERS.get(name) if isinstance(name, str) else None
        if info is None:
            raise ConfigError(
                f"solver: unknown solver {excerpt(name)}, choose one of {list(SOLVERS)}"
            )
        set_ = self._set
        set_("name", name)
        set_("grid_unit", grid_unit)
        if isinstance(grid, Tensor):
            grid = grid.detach().double().cpu().flatten().tolist()
        if isinstance(grid, str):
            if grid not in GRID_KINDS:
                raise ConfigError(
                    f"grid: must be one of {GRID_KINDS} or a list of times, got {excerpt(grid)}"
                )
            if grid_unit != "t":
                raise ConfigError("grid_unit: applies only to an explicit grid, not to a grid kind")
        elif isinstance(grid, Sequence) and all(_is_number(v) for v in grid):
            if len(grid) < 2:
                raise ConfigError(
                    f"grid: an explicit grid needs at least 2 values, got {excerpt(list(grid))}"
                )
            grid = tuple(float(v) for v in grid)
            if t_eps is not None:
                raise ConfigError(
                    "t_eps: applies only to a grid kind; an explicit grid has its own end"
                )
            steps = len(grid) - 1
            if nfe is None:
                nfe = steps * info.calls_per_step
            elif is_int(nfe) and nfe != steps * info.calls_per_step:
                raise ConfigError(
                    f"nfe: {name} with an explicit grid of {len(grid)} points makes "
                    f"{steps * info.calls_per_step} model calls, but nfe={nfe}"
                )
        else:
            raise ConfigError(
                f"grid: must be a grid kind or a list of numbers, got {excerpt(grid)}"
            )
        set_("grid", grid)
        if grid_unit not in GRID_UNITS:
            raise ConfigError(f"grid_unit: must be one of {GRID_UNITS}, got {excerpt(grid_unit)}")
        if nfe is None:
            raise ConfigError(f"nfe: required for {name} with grid kind {excerpt(grid)}")
        if not is_int(nfe) or not 1 <= nfe <= MAX_NFE:
            raise ConfigError(f"nfe: must be an integer from 1 to {MAX_NFE}, got {excerpt(nfe)}")
        set_("nfe", int(nfe))
        if nfe % info.calls_per_step:
            raise ConfigError(
                f"nfe: {name} makes {info.calls_per_step} model calls per step, so nfe "
                f"must be a multiple of {info.calls_per_step}, got {nfe}"
            )
        given = {**dict(settings), **options}
        known = option_names()
        for key, value in given.items():  # None: unset, as to_dict writes other solvers' options
            if info.option(key) is None and not (value is None and key in known):
                raise ConfigError(
                    f"{key}: unknown option of {name}, which takes "
                    f"{[option.name for option in info.options] or 'none'}"
                )
        set_("settings", tuple((o.name, o.check(name, given.get(o.name))) for o in info.options))
        if t_eps is not None and not (_is_number(t_eps) and 0 < t_eps < 1):
            raise ConfigError(f"t_eps: must be a number in (0, 1), got {excerpt(t_eps)}")
        set_("t_eps", None if t_eps is None else float(t_eps))
        if not (_is_number(rho) and 0 < rho < math.inf):
            raise ConfigError(f"rho: must be a positive number, got {excerpt(rho)}")
        set_("rho", float(rho))

    def _set(self, field: str, value: Any) -> None:
        object.__setattr__(self, field, value)  # building a frozen dataclass

    def __getattr__(self, key: str) -> Any:
        """An option's value by name (``spec.order``); ``None`` for another solver's option."""
        if key in option_names():
            return dict(self.__dict__.get("settings", ())).get(key)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")

    # -- running ----------------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        """Number of grid intervals: ``nfe / calls_per_step``."""
        return self.nfe // SOLVERS[self.name].calls_per_step

    def options(self) -> dict[str, Any]:
        """The keyword options passed to the solver function (those with several choices)."""
        passed = {option.name for option in SOLVERS[self.name].options if option.passed}
        return {key: value for key, value in self.settings if key in passed}

    def make_grid(self, schedule: NoiseSchedule) -> Tensor:
        """The ``(steps+1,)`` float64 time grid of this spec for ``schedule``."""
        if isinstance(self.grid, str):
            return time_grid(schedule, self.steps, self.grid, t_eps=self.t_eps, rho=self.rho)
        return explicit_grid(schedule, self.grid, unit=self.grid_unit)

    def run(
        self,
        model: DiffusionModel,
        noise: Tensor,
        grid: Tensor,
        cond: Any = None,
        *,
        callback: Callback | None = None,
    ) -> Tensor:
        """Solve from ``noise`` at ``grid[0]`` to ``grid[-1]`` on a given (differentiable) grid."""
        check_noise(model, noise)
        if grid.dim() != 1 or grid.numel() != self.steps + 1:
            raise ConfigError(
                f"grid: {self.name} with nfe={self.nfe} needs {self.steps + 1} times, "
                f"got shape {tuple(grid.shape)}"
            )
        return SOLVERS[self.name].fn(model, noise, grid, cond, callback=callback, **self.options())

    def __call__(
        self,
        model: DiffusionModel,
        noise: Tensor,
        cond: Any = None,
        *,
        callback: Callback | None = None,
    ) -> Tensor:
        """Sample: ``noise`` ``(B, *model.sample_shape)`` at t = 1 → state at the grid's end;
        ``callback`` as in :data:`~gas_solver.solvers._common.Callback`."""
        grid = self.make_grid(model.schedule).to(noise.device)
        return self.run(model, noise, grid, cond, callback=callback)

    # -- as a resolved solver (resolve.ResolvedSolver) --------------------------------------------
    kind = "classic"
    checkpoint = None  # read from no file
    model_source = None  # runs on any model
    trained_on = None  # learnt from no teacher set

    @property
    def label(self) -> str:
        """Short text: the name, ``nfe`` and the fields that differ from the solver's defaults."""
        defaults = SolverSpec(self.name, nfe=self.nfe).to_dict()
        parts = [f"nfe={self.nfe}"]
        for key, value in self.to_dict().items():
            if key not in ("name", "nfe") and value != defaults[key]:
                value = (
                    "[" + ",".join(f"{v:g}" for v in value) + "]"
                    if isinstance(value, list)
                    else value
                )
                parts.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
        return f"{self.name}:{','.join(parts)}"

    def build(self, model: DiffusionModel, device: Any = None) -> SolverSpec:
        """A spec runs on any model as it is."""
        return self

    def time_grid(self, model: DiffusionModel) -> Tensor:
        """Its grid on ``model`` (:meth:`make_grid` of the model's schedule)."""
        return self.make_grid(model.schedule)

    def describe(self) -> dict[str, Any]:
        return {"solver": self.name, **self.to_dict()}

    # -- serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (an explicit grid as a list), every registered option among them
        (``None``: not an option of this solver), so every spec has the same keys."""
        values = dict(self.settings)
        return {
            "name": self.name,
            "nfe": self.nfe,
            "grid": list(self.grid) if isinstance(self.grid, tuple) else self.grid,
            "grid_unit": self.grid_unit,
            **{key: values.get(key) for key in option_names()},
            "t_eps": self.t_eps,
            "rho": self.rho,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SolverSpec:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError`."""
        fields = {"name", *GRID_KEYS, *option_names()}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ConfigError(f"solver spec: unknown field(s) {unknown}, known: {sorted(fields)}")
        return cls(**dict(data))

    def to_string(self) -> str:
        """The spec in the text syntax of :func:`parse_solver_spec` (explicit, round-trips)."""
        parts = []
        for key, value in self.to_dict().items():
            if key == "name" or value is None:
                continue
            if isinstance(value, bool):
                value = str(value).lower()
            elif isinstance(value, list):
                value = "[" + ",".join(repr(v) for v in value) + "]"
            parts.append(f"{key}={value}")
        return f"{self.name}:{','.join(parts)}"


def check_noise(model: DiffusionModel, noise: Tensor) -> None:
    """Raise :class:`ConfigError` unless ``noise`` is a float tensor ``(B, *sample_shape)``."""
    if not isinstance(noise, Tensor) or not noise.is_floating_point():
        raise ConfigError(f"noise: must be a floating-point tensor, got {type(noise).__name__}")
    if noise.dim() != len(model.sample_shape) + 1 or tuple(noise.shape[1:]) != model.sample_shape:
        raise ConfigError(
            f"noise: shape {tuple(noise.shape)} does not match (B, *sample_shape) with "
            f"sample_shape={model.sample_shape}"
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


__all__ = ["MAX_NFE", "SolverSpec", "check_noise"]
