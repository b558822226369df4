"""gas-solver: learned few-step ODE samplers (GS / GAS, arXiv 2510.17699) for frozen diffusion models."""

from .errors import CheckpointMismatchError, ConfigError, GasSolverError, MissingAssetError
from .models import DiffusionModel, FunctionModel, GaussianMixtureModel, Guided
from .models.loading import load_model
from .sampling import sample
from .schedules import (
    DiscreteVPSchedule,
    FlowSchedule,
    LinearVPSchedule,
    NoiseSchedule,
    explicit_grid,
    time_grid,
)
from .solvers import GeneralizedSolver, SolverSpec
from .version import __version__

__all__ = [
    "CheckpointMismatchError",
    "ConfigError",
    "DiffusionModel",
    "DiscreteVPSchedule",
    "FlowSchedule",
    "FunctionModel",
    "GasSolverError",
    "GaussianMixtureModel",
    "GeneralizedSolver",
    "Guided",
    "LinearVPSchedule",
    "MissingAssetError",
    "NoiseSchedule",
    "SolverSpec",
    "__version__",
    "explicit_grid",
    "load_model",
    "sample",
    "time_grid",
]
