"""FLUX.1 (diffusers ``FluxPipeline``) behind the model contract.

A folder written by ``FluxPipeline.save_pretrained`` (its layout and loading:
:mod:`gas_solver.models.diffusers_folder`) becomes a :class:`DiffusersFluxModel`: a rectified
flow (``prediction_type = "flow_prediction"``, ``v = ε − x₀``) on a
:class:`~gas_solver.schedules.FlowSchedule` whose shift is fixed by the sample resolution.

**The time shift belongs to the resolution.** ``FluxPipeline`` shifts its noise levels by ``mu``,
a linear function of the number of image tokens (the pipeline's ``calculate_shift`` with the
scheduler config's ``base_image_seq_len``, ``max_image_seq_len``, ``base_shift``, ``max_shift``),
and the scheduler applies ``σ = e^mu / (e^mu + 1/s − 1)`` (``time_shift_type`` exponential), which
is :class:`FlowSchedule` with ``shift = e^mu`` (linear: ``shift = mu``). A model is loaded at one
resolution (``folder:height=H,width=W``, in pixels; default the pipeline's own 128 × the VAE
factor), so its schedule is fixed, and its :meth:`~DiffusersFluxModel.identity` records the
resolution and ``mu`` (:func:`flux_time_shift`): a solver's learned times belong to that shift, so
one trained at one resolution is refused at another. A scheduler config without
``use_dynamic_shifting`` (FLUX.1-schnell: shift 1) is followed: its fixed ``shift``, no ``mu``.

**The state is the unpacked latent** ``(C, H/f, W/f)`` (``C = in_channels / 4``, ``f`` the VAE
factor), packed into 2×2 patches, ``(B, H/2f · W/2f, 4C)``, only for each transformer call, with
the pipeline's own ``_pack_latents`` / ``_unpack_latents`` and image position ids
(``_prepare_latent_image_ids``). Packing is a permutation of the numbers, so every solver step (a
linear combination per element) is the same in either layout; unpacked, a seed's noise is the
pipeline's (``FluxPipeline`` draws ``randn`` in this shape and packs it), the latents are images to
the discriminators, pictures and exports (ComfyUI's FLUX latents are unpacked too), and
``decode`` is a VAE decode as for every latent model.

**Conditions** are ``{"encoder_hidden_states": (B, L, D) T5, "pooled_projections": (B, P)
pooled CLIP}``, made from prompts by the pipeline's ``encode_prompt`` (text ids are zeros, as
there). **Guidance**: a guidance-distilled transformer (``guidance_embeds=True``, FLUX.1-dev)
takes the guidance value as its ``guidance`` input (``folder:guidance=S``, default 3.5 as the
pipeline), one call per step and no negative batch; an un-guided one (FLUX.1-schnell) takes none.
The transformer sees ``timestep / 1000`` with the timestep ``N·σ`` of the scheduler, as the
pipeline passes it. **Latents** decode as the pipeline does: ``vae.decode(z / scaling_factor +
shift_factor)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..schedules import FlowSchedule
from .base import DiffusionModel, cond_tensors

FLUX_PIPELINES = ("FluxPipeline",)
FLUX_TRANSFORMERS = ("FluxTransformer2DModel",)
DEFAULT_GUIDANCE = 3.5
"""``FluxPipeline.__call__``'s default ``guidance_scale`` (the guidance embedding of FLUX.1-dev)."""
DEFAULT_SAMPLE_SIZE = 128
"""``FluxPipeline.default_sample_size``: the default resolution is this × the VAE factor."""
TIME_SHIFT_DEFAULTS = {
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "base_shift": 0.5,
    "max_shift": 1.15,
}
"""What ``FluxPipeline`` reads from the scheduler config (``config.get(key, default)``)."""


def flux_time_shift(config: Mapping[str, Any], image_seq_len: int) -> dict[str, Any]:
    """The time shift ``FluxPipeline`` gives its scheduler for ``image_seq_len`` image tokens.

    Returns a JSON-able description: ``use_dynamic_shifting``, ``image_seq_len``, ``mu`` (the
    pipeline's ``calculate_shift``; ``None`` without dynamic shifting), ``shift`` (the
    :class:`FlowSchedule` shift: ``e^mu``, ``mu`` for ``time_shift_type`` linear, or the config's
    fixed ``shift``), ``time_shift_type`` and the four ``calculate_shift`` settings as the pipeline
    reads them.
    """
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    settings = {key: config.get(key, default) for key, default in TIME_SHIFT_DEFAULTS.items()}
    kind = config.get("time_shift_type", "exponential")
    dynamic = bool(config.get("use_dynamic_shifting", False))
    mu = None
    if dynamic:
        mu = float(
            calculate_shift(
                image_seq_len, settings["base_image_seq_len"], settings["max_image_seq_len"],
                settings["base_shift"], settings["max_shift"],
            )
        )  # fmt: skip
        if kind not in ("exponential", "linear"):
            raise ConfigError(f"scheduler: unknown time_shift_type {kind!r}")
        shift = shift_of_mu(mu, kind)
    else:
        shift = float(config.get("shift", 1.0))
    if not shift > 0:
        raise ConfigError(f"scheduler: the time shift must be > 0, got {shift} (mu={mu})")
    return {
        "use_dynamic_shifting": dynamic,
        "image_seq_len": int(image_seq_len),
        "mu": mu,
        "shift": shift,
        "time_shift_type": kind,
        **settings,
    }


def check_flux_resolution(resolution: tuple[int, int], vae_scale_factor: int) -> int:
    """The number of image tokens ``FluxPipeline`` makes at ``resolution`` (pixels); a size it
    would round (not a multiple of twice the VAE factor) is refused."""
    height, width = (int(v) for v in resolution)
    step = 2 * vae_scale_factor
    if height <= 0 or width <= 0 or height % step or width % step:
        raise ConfigError(
            f"FLUX resolution {height}x{width}: height and width must be positive multiples of "
            f"{step} (the VAE's factor {vae_scale_factor} times the 2x2 packing); pass height=,"
            f"width= multiples of {step}"
        )
    return (height // step) * (width // step)


def shift_of_mu(mu: float, time_shift_type: str = "exponential") -> float:
    """The :class:`FlowSchedule` shift the scheduler's time shift with ``mu`` amounts to."""
    return math.exp(mu) if time_shift_type == "exponential" else float(mu)


class DiffusersFluxModel(DiffusionModel):
    """A FLUX.1 transformer as a model (see the module docstring).

    Args:
        transformer: a ``FluxTransformer2DModel``.
        schedule: its :class:`FlowSchedule` at this resolution (shift from :func:`flux_time_shift`).
        resolution: ``(height, width)`` in pixels.
        vae_scale_factor: pixels per latent (the pipeline's ``2 ** (len(block_out_channels) − 1)``,
            8 without a VAE).
        time_shift: :func:`flux_time_shift` at this resolution (recorded in :meth:`identity`).
        vae: optional ``AutoencoderKL``; makes this a latent model.
        pipeline: the ``FluxPipeline`` whose ``encode_prompt`` encodes prompts (optional: without
            it, conditions must be embeddings).
        guidance: the guidance embedding's value (transformers with ``guidance_embeds`` only).
        fingerprint: a cheap identity of the weights (transformer, VAE, text encoders).
    """

    max_sequence_length = 512
    """T5 tokens per prompt, ``FluxPipeline.__call__``'s default."""

    def __init__(
        self,
        transformer: nn.Module,
        schedule: FlowSchedule,
        resolution: tuple[int, int],
        vae_scale_factor: int,
        time_shift: dict[str, Any],
        vae: nn.Module | None = None,
        pipeline: Any = None,
        guidance: float | None = None,
        fingerprint: str = "",
    ) -> None:
        from diffusers import FluxPipeline

        config = transformer.config
        check_flux_resolution(resolution, vae_scale_factor)
        height, width = (int(v) for v in resolution)
        if config.in_channels % 4:
            raise ConfigError(f"FLUX transformer: in_channels {config.in_channels} is not 4·C")
        shape = (config.in_channels // 4, height // vae_scale_factor, width // vae_scale_factor)
        super().__init__(schedule, shape, "flow_prediction")
        self.transformer = transformer.eval().requires_grad_(False)
        self.vae = None if vae is None else vae.eval().requires_grad_(False)
        self.pipeline = pipeline
        self.resolution = (height, width)
        self.vae_scale_factor = int(vae_scale_factor)
        self.time_shift = dict(time_shift)
        self.guidance_embeds = bool(getattr(config, "guidance_embeds", False))
        if self.guidance_embeds:
            self.guidance_scale = float(DEFAULT_GUIDANCE if guidance is None else guidance)
        elif guidance is not None:
            raise ConfigError(
                "guidance: this FLUX transformer has no guidance embedding (guidance_embeds is "
                "false, as FLUX.1-schnell) and takes no guidance; leave guidance= out"
            )
        self.fingerprint = fingerprint
        self.conditioning = "text"
        self._flux = FluxPipeline  # its static _pack_latents, _unpack_latents, image ids

    # -- the contract -----------------------------------------------------------------------------
    def network_output(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        batch, channels, h, w = x.shape
        states, pooled = self._text(cond, batch)
        dtype = next(self.transformer.parameters()).dtype
        packed = self._flux._pack_latents(x.to(dtype), batch, channels, h, w)
        image_ids = self._flux._prepare_latent_image_ids(batch, h // 2, w // 2, x.device, dtype)
        text_ids = torch.zeros(states.shape[1], 3, device=x.device, dtype=dtype)
        timestep = self.schedule.timestep(t).to(dtype) / 1000  # as FluxPipeline: timestep / 1000
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full((batch,), self.guidance_scale, device=x.device)
        out = self.transformer(
            hidden_states=packed, timestep=timestep, guidance=guidance,
            pooled_projections=pooled.to(x.device, dtype),
            encoder_hidden_states=states.to(x.device, dtype),
            txt_ids=text_ids, img_ids=image_ids, return_dict=False,
        )[0]  # fmt: skip
        height, width = self.resolution
        return self._flux._unpack_latents(out, height, width, self.vae_scale_factor)

    def _text(self, cond: Any, batch: int) -> tuple[Tensor, Tensor]:
        states, pooled = cond_tensors(
            cond, ("encoder_hidden_states", "pooled_projections"), batch,
            "this FLUX model needs cond = {'encoder_hidden_states': (B, L, D), "
            "'pooled_projections': (B, P)}: make it from prompts with prompt_cond_fn"
        )  # fmt: skip
        return states, pooled

    # -- text -------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``(encoder_hidden_states (P, L, D), pooled_projections (P, P'))`` of prompts, by the
        pipeline's own ``encode_prompt`` (T5 states, pooled CLIP; the same prompt to both)."""
        if self.pipeline is None:
            raise ConfigError(
                "this FLUX model has no text encoders: pass encoder_hidden_states and "
                "pooled_projections"
            )
        device = next(self.transformer.parameters()).device
        states, pooled, _ = self.pipeline.encode_prompt(
            list(prompts), None, device=device, max_sequence_length=self.max_sequence_length
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
        """Images in [−1, 1] of (unpacked) latents: ``vae.decode(z / scaling_factor +
        shift_factor)``, as ``FluxPipeline`` after ``_unpack_latents``."""
        if self.vae is None:
            return latents
        config = self.vae.config
        scale, shift = float(config.scaling_factor), float(getattr(config, "shift_factor", 0) or 0)
        latents = latents.to(next(self.vae.parameters()))
        return self.vae.decode(latents / scale + shift).sample.clamp(-1.0, 1.0)

    # -- identity ---------------------------------------------------------------------------------
    def network_modules(self) -> list[nn.Module]:
        return [self.transformer]

    def identity(self) -> dict[str, Any]:
        return {
            **super().identity(),
            "network": type(self.transformer).__name__,
            "weights": self.fingerprint,
            "conditioning": self.conditioning,
            "guidance_scale": self.guidance_scale,
            **({"guidance_kind": "embedding"} if self.guidance_scale is not None else {}),
            "resolution": list(self.resolution),
            "time_shift": self.time_shift,
            **({"vae": type(self.vae).__name__} if self.vae is not None else {}),
        }

    def mismatch_hint(self, stored: dict[str, Any]) -> str | None:
        """Why a solver or teacher set made at another resolution does not fit, and what to do."""
        theirs = stored.get("resolution")
        if (
            stored.get("network") not in FLUX_TRANSFORMERS
            or not isinstance(theirs, list)
            or len(theirs) != 2
            or theirs == list(self.resolution)
        ):
            return None
        here, there = "x".join(map(str, self.resolution)), "x".join(map(str, theirs))
        mu = (stored.get("time_shift") or {}).get("mu")
        shift = f" (time shift mu={mu:.4f})" if isinstance(mu, float) else ""
        return (
            f"it was made at {there} pixels{shift} and the model is loaded at {here}: the "
            "learned times belong to the time shift of their resolution; load the model with "
            f"height={theirs[0]},width={theirs[1]} (folder:height={theirs[0]},width={theirs[1]}), "
            f"or make a teacher set and train a solver at {here}"
        )


__all__ = [
    "DEFAULT_GUIDANCE",
    "DEFAULT_SAMPLE_SIZE",
    "FLUX_PIPELINES",
    "FLUX_TRANSFORMERS",
    "DiffusersFluxModel",
    "check_flux_resolution",
    "flux_time_shift",
    "shift_of_mu",
]
