"""Any callable network behind the model contract (bring your own model in three lines).

    from gas_solver import FlowSchedule, FunctionModel, sample
    model = FunctionModel(lambda x, timestep, cond: net(x, timestep), FlowSchedule(shift=3.0),
                          sample_shape=(4, 32, 32), prediction_type="flow_prediction")
    latents = sample(model, torch.randn(16, 4, 32, 32), "unipc", nfe=8)

The callable receives the state ``x: (B, *sample_shape)``, the network's own timestep
``schedule.timestep(t): (B,)`` (DDPM's ``N·t − 1`` on VP schedules, ``N·σ`` on flow schedules:
what diffusers passes its UNets and transformers) and the solver's ``cond``; it returns its native
prediction. As k-diffusion's ``external.py`` and DPM-Solver's ``model_wrapper`` do, the adapter only
fixes the time convention and the prediction type; the contract converts the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from ..schedules import NoiseSchedule
from .base import DiffusionModel

Network = Callable[[Tensor, Tensor, Any], Tensor]


class FunctionModel(DiffusionModel):
    """A callable ``fn(x, timestep, cond) → prediction`` as a :class:`DiffusionModel`.

    Args:
        fn: the network; an ``nn.Module`` is registered as a submodule (it follows ``.to()``).
        schedule: the noise schedule the network was trained on.
        sample_shape: one sample's shape, e.g. ``(3, 32, 32)``.
        prediction_type: one of :data:`~gas_solver.models.base.PREDICTION_TYPES`.
        name: recorded as the model's ``source`` (teacher sets and checkpoints name it).
    """

    def __init__(
        self,
        fn: Network,
        schedule: NoiseSchedule,
        sample_shape: tuple[int, ...],
        prediction_type: str = "epsilon",
        name: str | None = None,
    ) -> None:
        super().__init__(schedule, sample_shape, prediction_type)
        self.fn = fn
        self.source = name

    def network_output(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self.fn(x, self.schedule.timestep(t), cond)

    def network_modules(self) -> list[nn.Module]:
        return [self.fn] if isinstance(self.fn, nn.Module) else []


__all__ = ["FunctionModel", "Network"]
