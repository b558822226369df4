"""Classifier-free guidance as a wrapper any conditional model can use.

``Guided(model, scale, null_cond)`` is a model whose native prediction is

    out = out_u + s (out_c − out_u),   out_c = model(x, t, cond),   out_u = model(x, t, null_cond)

(Ho & Salimans 2022, with the GAS paper's convention ``s = 1``: no guidance), the two
halves run as one batch of 2B ordered ``[unconditional, conditional]`` as diffusers' pipelines do,
and counted as one NFE. It is applied to the model's native prediction (ε, x₀, v or a flow
velocity): each is affine in the others with coefficients that do not depend on the condition, and
the guidance weights sum to one, so this equals guidance on ε exactly.

The diffusers adapters carry the same guidance built in (``folder:guidance=S``, which also knows
each pipeline's null condition); this wrapper is for models brought as a
:class:`~gas_solver.models.function.FunctionModel` or any other conditional :class:`DiffusionModel`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .base import DiffusionModel


def batch_conditions(null: Any, cond: Any, batch: int) -> Any:
    """``[null; cond]`` along the batch: tensors, or dicts of tensors with the same keys; a
    ``null`` of batch 1 is repeated ``batch`` times."""
    if isinstance(cond, Tensor) and isinstance(null, Tensor):
        return torch.cat([null.to(cond.device).expand(batch, *null.shape[1:]), cond])
    if isinstance(cond, dict) and isinstance(null, dict) and set(cond) == set(null):
        return {key: batch_conditions(null[key], cond[key], batch) for key in cond}
    raise ConfigError(
        "Guided: cond and null_cond must both be tensors or dicts of tensors with the same keys"
    )


class Guided(DiffusionModel):
    """Classifier-free guidance of ``model`` at scale ``scale`` against ``null_cond``.

    Args:
        model: a conditional model; its schedule, shape and prediction type are kept.
        scale: the guidance scale ``s`` (1: the conditional prediction alone, one plain call).
        null_cond: the unconditional condition (e.g. the null class, the empty prompt's
            embedding), batch 1 or the batch of the samples.
    """

    def __init__(self, model: DiffusionModel, scale: float, null_cond: Any) -> None:
        super().__init__(model.schedule, model.sample_shape, model.prediction_type)
        self.model, self.scale, self.null_cond = model, float(scale), null_cond
        self.source = model.source

    def network_output(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        if cond is None:
            raise ConfigError("Guided: the model is conditional; pass cond")
        if self.scale == 1.0:
            return self.model.network_output(x, t, cond)
        both = batch_conditions(self.null_cond, cond, x.shape[0])
        out_u, out_c = self.model.network_output(torch.cat([x, x]), torch.cat([t, t]), both).chunk(
            2
        )
        return out_u + self.scale * (out_c - out_u)

    # -- the rest of the contract is the model's ----------------------------------------------------
    @property
    def is_latent(self) -> bool:
        return self.model.is_latent

    def decode(self, samples: Tensor) -> Tensor:
        return self.model.decode(samples)

    def default_cond(self, seeds: Tensor) -> Any:
        return self.model.default_cond(seeds)

    @property
    def takes_prompts(self) -> bool:
        return self.model.takes_prompts

    def prompt_cond_fn(self, prompts: list[str], **options: Any) -> Callable[[Tensor], Any]:
        return self.model.prompt_cond_fn(prompts, **options)

    def network_modules(self) -> list[nn.Module]:
        return self.model.network_modules()

    def identity(self) -> dict[str, Any]:
        return {**self.model.identity(), "guidance_scale": self.scale}


__all__ = ["Guided", "batch_conditions"]
