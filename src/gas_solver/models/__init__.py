"""Models behind the one contract: :class:`DiffusionModel` and its adapters."""

from .analytic import GaussianMixtureModel
from .base import PREDICTION_TYPES, DiffusionModel, convert_prediction

__all__ = ["PREDICTION_TYPES", "DiffusionModel", "GaussianMixtureModel", "convert_prediction"]
