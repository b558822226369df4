"""diffusers flow-matching transformers behind the model contract (Stable Diffusion 3).

A folder written by ``StableDiffusion3Pipeline.save_pretrained`` (its layout and loading:
:mod:`gas_solver.models.diffusers_folder`) becomes a :class:`DiffusersFlowModel`: a
:class:`~gas_solver.schedules.FlowSchedule` with the scheduler's shift, ``prediction_type =
"flow_prediction"`` (``v = ε − x₀``), the transformer queried at the timestep ``N·σ`` as the
pipeline does. Every classic solver, the teacher and GS/GAS then run on it unchanged.

**Conditions** are the pipeline's own text embeddings, ``{"encoder_hidden_states": (B, L, D),
"pooled_projections": (B, P)}``; :meth:`DiffusersFlowModel.prompt_cond_fn` makes them from prompts
with the pipeline's ``encode_prompt`` (CLIP-L + CLIP-G, and T5 when present). Teacher sets store
them as given (for SD3 that is about 1.4 MB per sample at float32: L = 333, D = 4096).

**Classifier-free guidance**: ``v = v_u + s (v_c − v_u)`` on the velocity, the two halves in one
batch of 2B ordered ``[unconditional, conditional]`` exactly as ``StableDiffusion3Pipeline`` runs
them, one NFE per guided call. The unconditional embeddings are the empty prompt's (the
pipeline's default negative prompt) unless ``cond`` carries ``negative_encoder_hidden_states`` and
``negative_pooled_projections``.

**Latents** decode as the pipeline does: ``vae.decode(z / scaling_factor + shift_factor)``.
Schedulers with ``use_dynamic_shifting`` (a shift that depends on the image size) are refused
here with a message; FLUX folders, which have one, are read by
:mod:`gas_solver.models.diffusers_flux`, which fixes the shift per resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..schedules import FlowSchedule
from .base import DiffusionModel, cond_tensors

FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)


def flow_schedule_from_config(config: dict[str, Any], where: str) -> FlowSchedule:
    """The :class:`FlowSchedule` of a diffusers flow scheduler config (its ``shift``)."""
    if config.get("use_dynamic_shifting"):
        raise ConfigError(
            f"{where}: use_dynamic_shifting (a resolution-dependent shift) is supported for "
            "FLUX pipelines only; set a fixed 'shift' in the scheduler config"
        )
    return FlowSchedule(
        float(config.get("shift", 1.0)), int(config.get("num_train_timesteps", 1000))
    )


class DiffusersFlowModel(DiffusionModel):
    """A diffusers flow-matching transformer (SD3 family) as a model (see the module docstring).

    Args:
        transformer: an ``SD3Transformer2DModel``.
        schedule: its :class:`FlowSchedule` (:func:`flow_schedule_from_config`).
        vae: optional ``AutoencoderKL``; makes this a latent model.
        pipeline: the ``StableDiffusion3Pipeline`` whose ``encode_prompt`` encodes prompts
            (optional: without it conditions must be embeddings, and guidance needs negatives).
        guidance_scale: classifier-free guidance scale ``s``; 1 means no guidance.
        fingerprint: a cheap identity of the weights.
    """

    def __init__(
        self,
        transformer: nn.Module,
        schedule: FlowSchedule,
        vae: nn.Module | None = None,
        pipeline: Any = None,
        guidance_scale: float = 1.0,
        fingerprint: str = "",
    ) -> None:
        config = transformer.config
        size = config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        super().__init__(schedule, (config.in_channels, *size), "flow_prediction")
        self.transformer = transformer.eval().requires_grad_(False)
        self.vae = None if vae is None else vae.eval().requires_grad_(False)
        self.pipeline = pipeline
        self.guidance_scale = float(guidance_scale)
        self.fingerprint = fingerprint
        self.conditioning = "text"
        self._null: tuple[Tensor, Tensor] | None = None

    # -- the contract -----------------------------------------------------------------------------
    def network_output(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        states, pooled = self._text(cond, x.shape[0], "")
        timestep = self.schedule.timestep(t)
        if self.guidance_scale == 1.0:
            return self._transformer(x, timestep, states, pooled)
        null_states, null_pooled = self._null_text(cond, x.shape[0])
        out_u, out_c = self._transformer(
            torch.cat([x, x]), torch.cat([timestep, timestep]),
            torch.cat([null_states, states]), torch.cat([null_pooled, pooled]),
        ).chunk(2)  # fmt: skip
        return out_u + self.guidance_scale * (out_c - out_u)

    def _transformer(self, x: Tensor, timestep: Tensor, states: Tensor, pooled: Tensor) -> Tensor:
        dtype = next(self.transformer.parameters()).dtype
        return self.transformer(
            hidden_states=x.to(dtype), timestep=timestep.to(dtype),
            encoder_hidden_states=states.to(x.device, dtype), pooled_projections=pooled.to(x.device, dtype),
        ).sample  # fmt: skip

    def _text(self, cond: Any, batch: int, prefix: str) -> tuple[Tensor, Tensor]:
        states, pooled = cond_tensors(
            cond, (f"{prefix}encoder_hidden_states", f"{prefix}pooled_projections"), batch,
            "this flow (SD3-style) model needs cond = {'encoder_hidden_states': (B, L, D), "
            "'pooled_projections': (B, P)}: make it from prompts with prompt_cond_fn"
        )  # fmt: skip
        return states, pooled

    def _null_text(self, cond: dict[str, Tensor], batch: int) -> tuple[Tensor, Tensor]:
        if "negative_encoder_hidden_states" in cond:
            return self._text(cond, batch, "negative_")
        if self._null is None:
            self._null = self.encode_prompts([""])
        states, pooled = self._null
        return states.expand(batch, -1, -1), pooled.expand(batch, -1)

    # -- text -------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``(encoder_hidden_states (P, L, D), pooled_projections (P, P'))`` of prompts, by the
        pipeline's own ``encode_prompt`` (the same prompt to every text encoder)."""
        if self.pipeline is None:
            raise ConfigError(
                "this flow model has no text encoders: pass encoder_hidden_states and "
                "pooled_projections (and negative_* for guidance)"
            )
        device = next(self.transformer.parameters()).device
        states, _, pooled, _ = self.pipeline.encode_prompt(
            list(prompts), None, None, device=device, do_classifier_free_guidance=False
        )
        return states, pooled

    @property
    def takes_prompts(self) -> bool:
        return self.pipeline is not None

    def prompt_table(self, prompts: list[str]) -> dict[str, Tensor]:
        """The embeddings of prompts (:meth:`encode_prompts`)."""
        states, pooled = self.encode_prompts(prompts)
        return {"encoder_hidden_states": states, "pooled_projections": pooled}

    def default_cond(self, seeds: Tensor) -> None:
        raise ConfigError("text-conditional models need prompts: use --prompts (prompt_cond_fn)")

    # -- latents ----------------------------------------------------------------------------------
    @property
    def is_latent(self) -> bool:
        return self.vae is not None

    def decode(self, latents: Tensor) -> Tensor:
        """Images in [−1, 1] of latents: ``vae.decode(z / scaling_factor + shift_factor)``."""
        if self.vae is None:
            return latents
        config = self.vae.config
        scale, shift = float(config.scaling_factor), float(getattr(config, "shift_factor", 0) or 0)
        latents = latents.to(next(self.vae.parameters()))
        return self.vae.decode(latents / scale + shift).sample.clamp(-1.0, 1.0)

    def network_modules(self) -> list[nn.Module]:
        return [self.transformer]

    def identity(self) -> dict[str, Any]:
        return {
            **super().identity(),
            "network": type(self.transformer).__name__,
            "weights": self.fingerprint,
            "conditioning": self.conditioning,
            "guidance_scale": self.guidance_scale,
            **({"vae": type(self.vae).__name__} if self.vae is not None else {}),
        }


__all__ = [
    "FLOW_SCHEDULERS",
    "DiffusersFlowModel",
    "flow_schedule_from_config",
]
