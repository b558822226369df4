"""Classic solvers by name, and :class:`SolverSpec`: one validated, serialisable solver choice.

A spec names a solver and everything needed to run it on any model: NFE, the time grid (a kind of
:func:`~gas_solver.schedules.time_grid` or explicit values), order and options. It is what
configurations, checkpoints' metadata and the CLI store.

Text syntax (:func:`parse_solver_spec`, :meth:`SolverSpec.to_string`)::

    NAME[:KEY=VALUE[,KEY=VALUE]...]

    unipc:nfe=8,order=3,variant=bh2,grid=logsnr
    dpmpp:nfe=10,order=2,lower_order_final=true,t_eps=1e-4
    heun:nfe=18,grid=edm,rho=7
    ddim:grid=[1,0.6,0.3,0.001]          # explicit grid in t; NFE follows from its length
    ddim:grid=[999,666,333,0],grid_unit=timestep

Keys are the fields of :class:`SolverSpec`; booleans are ``true``/``false``; an explicit grid is a
bracketed, comma-separated list. Spaces are ignored.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..config import excerpt
from ..errors import ConfigError
from ..models.base import DiffusionModel
from ..schedules import (
    GRID_KINDS,
    GRID_UNITS,
    LinearVPSchedule,
    NoiseSchedule,
    explicit_grid,
    time_grid,
)
from ._common import Callback
from .dpm_solver import ddim, dpm_solver_pp
from .heun import heun
from .ipndm import IPNDM_VARIANTS, ipndm
from .unipc import UNIPC_VARIANTS, unipc

MAX_NFE = 10_000
"""Most model calls a solver may make: ten times a 1000-step DDPM chain, far above any teacher,
and low enough that a mistyped NFE fails at once instead of allocating its time grid."""


@dataclass(frozen=True)
class ClassicSolver:
    """What the registry knows about a classic solver function.

    Attributes:
        fn: the solver, ``fn(model, x, grid, cond, *, callback, **options) -> Tensor``.
        orders: supported ``order`` values; the function takes ``order`` only if there are several.
        default_order: used when a spec gives none.
        calls_per_step: model calls per grid step (NFE = steps · calls_per_step).
        variants: supported ``variant`` values (empty: the function takes no ``variant``).
        lower_order_final: its default, or ``None`` if the function takes no such option.
    """

    fn: Callable[..., Tensor]
    orders: tuple[int, ...]
    default_order: int
    calls_per_step: int = 1
    variants: tuple[str, ...] = ()
    lower_order_final: bool | None = None


SOLVERS: dict[str, ClassicSolver] = {
    "ddim": ClassicSolver(ddim, (1,), 1),
    "dpmpp": ClassicSolver(dpm_solver_pp, (1, 2, 3), 3, lower_order_final=False),
    "unipc": ClassicSolver(unipc, (1, 2, 3), 3, variants=UNIPC_VARIANTS, lower_order_final=True),
    "ipndm": ClassicSolver(ipndm, (1, 2, 3, 4), 4, variants=IPNDM_VARIANTS),
    "heun": ClassicSolver(heun, (2,), 2, calls_per_step=2),
}


@dataclass(frozen=True)
class SolverSpec:
    """A classic solver with its NFE, grid and options; validated on construction.

    Unset options take the solver's defaults and are stored resolved, so :meth:`to_dict` is
    explicit. ``t_eps=None`` means the schedule's default.

    Attributes:
        name: a key of :data:`SOLVERS` (``ddim``, ``dpmpp``, ``unipc``, ``ipndm``, ``heun``).
        nfe: number of model calls. Optional with an explicit grid (it follows from its length).
        grid: a grid kind (``uniform``, ``logsnr``, ``quadratic``, ``edm``) or explicit values,
            strictly decreasing, ``nfe / calls_per_step + 1`` of them.
        grid_unit: unit of explicit values: ``t``, ``sigma`` (EDM σ̃), ``flow_sigma`` (a flow
            model's σ) or ``timestep`` (the network's).
        order: solver order (default per solver: dpmpp 3, unipc 3, ipndm 4, ddim 1, heun 2).
        variant: ``bh1``/``bh2`` for unipc (default bh1), ``fixed``/``variable`` for ipndm.
        lower_order_final: dpmpp (default False) and unipc (default True) only.
        t_eps: last time of a grid kind; ``None`` = the schedule's ``t_eps``.
        rho: exponent of the ``edm`` grid kind.
    """

    name: str = "unipc"
    nfe: int | None = None
    grid: str | tuple[float, ...] = "logsnr"
    grid_unit: str = "t"
    order: int | None = None
    variant: str | None = None
    lower_order_final: bool | None = None
    t_eps: float | None = None
    rho: float = 7.0

    def __post_init__(self) -> None:
        info = SOLVERS.get(self.name) if isinstance(self.name, str) else None
        if info is None:
            raise ConfigError(
                f"solver: unknown solver {excerpt(self.name)}, choose one of {list(SOLVERS)}"
            )
        set_ = self._set
        grid = self.grid
        if isinstance(grid, Tensor):
            grid = grid.detach().double().cpu().flatten().tolist()
        if isinstance(grid, str):
            if grid not in GRID_KINDS:
                raise ConfigError(
                    f"grid: must be one of {GRID_KINDS} or a list of times, got {excerpt(grid)}"
                )
            if self.grid_unit != "t":
                raise ConfigError("grid_unit: applies only to an explicit grid, not to a grid kind")
        elif isinstance(grid, Sequence) and all(_is_number(v) for v in grid):
            if len(grid) < 2:
                raise ConfigError(
                    f"grid: an explicit grid needs at least 2 values, got {excerpt(list(grid))}"
                )
            set_("grid", tuple(float(v) for v in grid))
            if self.t_eps is not None:
                raise ConfigError(
                    "t_eps: applies only to a grid kind; an explicit grid has its own end"
                )
            steps = len(grid) - 1
            if self.nfe is None:
                set_("nfe", steps * info.calls_per_step)
            elif _is_int(self.nfe) and self.nfe != steps * info.calls_per_step:
                raise ConfigError(
                    f"nfe: {self.name} with an explicit grid of {len(grid)} points makes "
                    f"{steps * info.calls_per_step} model calls, but nfe={self.nfe}"
                )
        else:
            raise ConfigError(
                f"grid: must be a grid kind or a list of numbers, got {excerpt(grid)}"
            )
        if self.grid_unit not in GRID_UNITS:
            raise ConfigError(
                f"grid_unit: must be one of {GRID_UNITS}, got {excerpt(self.grid_unit)}"
            )
        if self.nfe is None:
            raise ConfigError(f"nfe: required for {self.name} with grid kind {excerpt(self.grid)}")
        if not _is_int(self.nfe) or not 1 <= self.nfe <= MAX_NFE:
            raise ConfigError(
                f"nfe: must be an integer from 1 to {MAX_NFE}, got {excerpt(self.nfe)}"
            )
        set_("nfe", int(self.nfe))
        if self.nfe % info.calls_per_step:
            raise ConfigError(
                f"nfe: {self.name} makes {info.calls_per_step} model calls per step, so nfe "
                f"must be a multiple of {info.calls_per_step}, got {self.nfe}"
            )
        order = info.default_order if self.order is None else self.order
        if not _is_int(order) or order not in info.orders:
            raise ConfigError(
                f"order: {self.name} supports orders {info.orders}, got {excerpt(order)}"
            )
        set_("order", int(order))
        if info.variants:
            variant = info.variants[0] if self.variant is None else self.variant
            if variant not in info.variants:
                raise ConfigError(
                    f"variant: {self.name} supports {info.variants}, got {excerpt(variant)}"
                )
            set_("variant", variant)
        elif self.variant is not None:
            raise ConfigError(f"variant: {self.name} has no variants, got {excerpt(self.variant)}")
        if info.lower_order_final is None:
            if self.lower_order_final is not None:
                raise ConfigError(f"lower_order_final: not an option of {self.name}")
        else:
            lof = (
                info.lower_order_final if self.lower_order_final is None else self.lower_order_final
            )
            if not isinstance(lof, bool):
                raise ConfigError(f"lower_order_final: must be true or false, got {excerpt(lof)}")
            set_("lower_order_final", lof)
        if self.t_eps is not None and not (_is_number(self.t_eps) and 0 < self.t_eps < 1):
            raise ConfigError(f"t_eps: must be a number in (0, 1), got {excerpt(self.t_eps)}")
        if not (_is_number(self.rho) and 0 < self.rho < math.inf):
            raise ConfigError(f"rho: must be a positive number, got {excerpt(self.rho)}")
        set_("rho", float(self.rho))
        if self.t_eps is not None:
            set_("t_eps", float(self.t_eps))

    def _set(self, field: str, value: Any) -> None:
        object.__setattr__(self, field, value)  # resolving defaults of a frozen dataclass

    # -- running ----------------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        """Number of grid intervals: ``nfe / calls_per_step``."""
        return self.nfe // SOLVERS[self.name].calls_per_step

    def options(self) -> dict[str, Any]:
        """The keyword options passed to the solver function."""
        info = SOLVERS[self.name]
        opts: dict[str, Any] = {}
        if len(info.orders) > 1:
            opts["order"] = self.order
        if info.variants:
            opts["variant"] = self.variant
        if info.lower_order_final is not None:
            opts["lower_order_final"] = self.lower_order_final
        return opts

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

    # -- as a resolved solver (see resolve.resolve_solver) -----------------------------------------
    kind = "classic"

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

    def describe(self) -> dict[str, Any]:
        return {"solver": self.name, **self.to_dict()}

    # -- serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (an explicit grid as a list)."""
        out = dataclasses.asdict(self)
        if isinstance(self.grid, tuple):
            out["grid"] = list(self.grid)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SolverSpec:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError`."""
        fields = {f.name for f in dataclasses.fields(cls)}
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


def parse_solver_spec(text: str, **defaults: Any) -> SolverSpec:
    """Parse ``NAME[:KEY=VALUE,...]`` (see the module docstring) into a :class:`SolverSpec`.

    ``defaults`` (e.g. ``nfe=8`` from a separate CLI flag) apply where the text gives no value;
    ``nfe`` also not when the text gives an explicit grid (its length fixes the NFE).
    """
    text = "".join(str(text).split())
    name, _, rest = text.partition(":")
    if not name:
        raise ConfigError(f"solver spec {excerpt(text)}: missing solver name, e.g. 'unipc:nfe=8'")
    keys = {f.name for f in dataclasses.fields(SolverSpec)} - {"name"}
    values: dict[str, Any] = {}
    for item in _split_top_level(rest) if rest else []:
        key, eq, raw = item.partition("=")
        if not eq or not key or not raw:
            raise ConfigError(
                f"solver spec {excerpt(text)}: expected KEY=VALUE, got {excerpt(item)}"
            )
        if key not in keys:
            raise ConfigError(
                f"solver spec {excerpt(text)}: unknown key {excerpt(key)}, known: {sorted(keys)}"
            )
        if key in values:
            raise ConfigError(f"solver spec {excerpt(text)}: {key} given twice")
        values[key] = _parse_value(key, raw, text)
    if isinstance(values.get("grid"), tuple):
        defaults = {k: v for k, v in defaults.items() if k != "nfe"}
    return SolverSpec(name=name, **{**defaults, **values})


DEFAULT_TEACHER = "unipc:nfe=20,order=3,variant=bh1,grid=logsnr"
"""The paper's teacher solver: UniPC-3 (variant bh1), 20 model calls, logSNR grid."""
PIXEL_TEACHER_T_EPS = 1e-4
"""Teacher t_eps for continuous-time pixel (EDM) models, as in the paper (App. D.2, Table 17)."""


def teacher_spec(text: str, model: DiffusionModel) -> SolverSpec:
    """Parse a teacher spec; continuous pixel models default to the paper's t_eps = 1e-4."""
    spec = parse_solver_spec(text)
    if (
        spec.t_eps is None
        and isinstance(spec.grid, str)
        and isinstance(model.schedule, LinearVPSchedule)
    ):
        spec = dataclasses.replace(spec, t_eps=PIXEL_TEACHER_T_EPS)
    return spec


def check_noise(model: DiffusionModel, noise: Tensor) -> None:
    """Raise :class:`ConfigError` unless ``noise`` is a float tensor ``(B, *sample_shape)``."""
    if not isinstance(noise, Tensor) or not noise.is_floating_point():
        raise ConfigError(f"noise: must be a floating-point tensor, got {type(noise).__name__}")
    if noise.dim() != len(model.sample_shape) + 1 or tuple(noise.shape[1:]) != model.sample_shape:
        raise ConfigError(
            f"noise: shape {tuple(noise.shape)} does not match (B, *sample_shape) with "
            f"sample_shape={model.sample_shape}"
        )


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return items


def _parse_value(key: str, raw: str, text: str) -> Any:
    try:
        if not raw.isascii():
            raise ValueError(raw)
        if key in ("nfe", "order"):
            return int(raw)
        if key in ("t_eps", "rho"):
            return float(raw)
        if key == "lower_order_final":
            return {"true": True, "false": False}[raw.lower()]
        if key == "grid" and raw.startswith("["):
            if not raw.endswith("]"):
                raise ValueError(raw)
            return tuple(float(v) for v in raw[1:-1].split(","))
    except (ValueError, KeyError):
        raise ConfigError(
            f"solver spec {excerpt(text)}: bad value for {key}: {excerpt(raw)}"
        ) from None
    return raw


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


__all__ = [
    "DEFAULT_TEACHER",
    "GRID_UNITS",
    "MAX_NFE",
    "PIXEL_TEACHER_T_EPS",
    "SOLVERS",
    "ClassicSolver",
    "SolverSpec",
    "check_noise",
    "parse_solver_spec",
    "teacher_spec",
]
