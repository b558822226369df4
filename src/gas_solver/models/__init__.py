"""Models behind the one contract: :class:`DiffusionModel` and its adapters."""

from .analytic import GaussianMixtureModel
from .base import PREDICTION_TYPES, DiffusionModel, convert_prediction
from .function import FunctionModel
from .guided import Guided

__all__ = [
    "PREDICTION_TYPES",
    "DiffusionModel",
    "FunctionModel",
    "GaussianMixtureModel",
    "Guided",
    "convert_prediction",
]
