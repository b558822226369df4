"""Exponential moving average of parameters, with the warm-up the GAS code uses.

At the n-th update (n = 1, 2, …) the decay is ``min(decay, (1 + n) / (10 + n))`` (torch-ema's
``use_num_updates=True``, which the authors' GAS training relies on), then ``shadow ← d·shadow + (1 − d)·param``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


class EMA:
    """Shadow copies of ``parameters`` updated by :meth:`update`; :meth:`copy_to` writes them back."""

    def __init__(self, parameters: Iterable[nn.Parameter], decay: float = 0.999) -> None:
        self.parameters = list(parameters)
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow = [p.detach().clone() for p in self.parameters]

    @torch.no_grad()
    def update(self) -> None:
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for shadow, param in zip(self.shadow, self.parameters, strict=True):
            shadow.lerp_(param.detach(), 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, parameters: Iterable[nn.Parameter]) -> None:
        for shadow, param in zip(self.shadow, parameters, strict=True):
            param.copy_(shadow)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay, self.num_updates = state["decay"], state["num_updates"]
        self.shadow = [s.clone() for s in state["shadow"]]
