"""diffusers UNets behind the model contract: class labels, text, guidance and VAEs.

A :class:`DiffusersUNetModel` wraps a ``UNet2DModel`` or ``UNet2DConditionModel`` with its
scheduler (and optional VAE and CLIP text encoder), as :mod:`gas_solver.models.diffusers_folder`
loads them from a local pipeline folder. The schedule is the scheduler's ``alphas_cumprod`` (built
from its betas exactly as diffusers does, :class:`~gas_solver.schedules.DiscreteVPSchedule`,
t_i = (i+1)/N); the UNet is queried at the continuous timestep ``N·t − 1`` (integer on the
training grid); its ``prediction_type`` (``epsilon``, ``v_prediction`` or ``sample``) is converted
by the contract. A ``FlowMatchEulerDiscreteScheduler`` makes it a flow-matching UNet
(:class:`~gas_solver.schedules.FlowSchedule` with the scheduler's ``shift``, velocity
``flow_prediction``, timestep ``N·σ``). Transformer pipelines (Stable Diffusion 3) are
:mod:`gas_solver.models.diffusers_flow`'s.

**Latent models.** With a ``vae/`` (or ``vqvae/``) folder, solvers work in latent space:
``sample_shape`` is the UNet's latent shape and :meth:`DiffusersUNetModel.decode` turns latents into
images in [−1, 1] (``vae.decode(z / scaling_factor)``, as the LDM and SD pipelines do).

**Conditions** (the ``cond`` argument of every solver) are tensors or dicts of tensors, so teacher
sets can store and replay them:

* class labels: a ``(B,)`` int64 tensor, or ``{"class_labels": (B,)}``;
* text: ``{"input_ids": (B, L)}`` token ids (run through the text encoder; :meth:`tokenize` and
  :func:`prompt_cond_fn` make them from prompts) or ``{"encoder_hidden_states": (B, L, D)}``
  embeddings; a bare ``(B, L)`` int tensor or ``(B, L, D)`` float tensor is read the same way.
  ``{"negative_encoder_hidden_states": (B, L, D)}`` (or ``negative_input_ids``) overrides the
  unconditional embedding, which is otherwise the text encoder's embedding of the empty prompt.

**Classifier-free guidance** (Ho & Salimans 2022): ``ε = ε_u + s (ε_c − ε_u)`` with ``s = guidance_scale``.
The conditional and unconditional halves go through the UNet as one batch of 2B, and the guided
evaluation counts as **one** NFE. The unconditional input is the null class (``null_class``,
by default the last class embedding, e.g. 1000 for the ImageNet LDM) or the empty prompt. Guidance
is applied to the native prediction: ε, x₀ and v are affine in one another with coefficients that
do not depend on the condition, and the guidance weights sum to one, so this equals guidance in
ε-space exactly. ``guidance_scale = 1`` makes a single conditional call.

The scale is part of ``identity()``; in a model source string it is an option after the folder
(``path/to/ldm:guidance=2``, :func:`~gas_solver.models.diffusers_folder.split_source`).

Gradient checkpointing around each UNet call: ``GeneralizedSolver.forward(checkpoint=True)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..schedules import DiscreteVPSchedule, NoiseSchedule
from .base import DiffusionModel
from .diffusers_flow import FLOW_SCHEDULERS, flow_schedule_from_config
from .unet_encoder import UNetEncoder


class DiffusersUNetModel(DiffusionModel):
    """A diffusers UNet (optionally class- or text-conditional, optionally latent) as a model.

    Args:
        unet: a ``UNet2DModel`` or ``UNet2DConditionModel``.
        scheduler: a diffusers scheduler; only ``alphas_cumprod`` and ``config.prediction_type``
            are used.
        vae: optional ``AutoencoderKL`` or ``VQModel``; makes this a latent model.
        text_encoder, tokenizer: optional CLIP text encoder and tokenizer (transformers).
        guidance_scale: classifier-free guidance scale ``s``; 1 means no guidance.
        null_class: the label of the unconditional class for guidance; by default the last one
            (``num_class_embeds − 1``) for class-conditional UNets.
        fingerprint: a cheap identity of the weights (see
            :func:`~gas_solver.models.diffusers_folder.load_diffusers_model`).

    Attributes:
        conditioning: ``none`` | ``class`` | ``text`` | ``class+text`` (``uses_class``,
            ``uses_text``).
        num_classes: real classes (``null_class`` when there is one), for :meth:`default_cond`.
        nfe: guided evaluations count once each; :attr:`unet_batches` counts UNet forward calls.
    """

    def __init__(
        self,
        unet: nn.Module,
        scheduler: Any,
        vae: nn.Module | None = None,
        text_encoder: nn.Module | None = None,
        tokenizer: Any = None,
        guidance_scale: float = 1.0,
        null_class: int | None = None,
        fingerprint: str = "",
    ) -> None:
        config = unet.config
        size = config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        schedule, prediction_type = scheduler_schedule(scheduler)
        super().__init__(schedule, (config.in_channels, *size), prediction_type)
        self.unet = unet.eval().requires_grad_(False)
        self.vae = None if vae is None else vae.eval().requires_grad_(False)
        self.text_encoder = (
            None if text_encoder is None else text_encoder.eval().requires_grad_(False)
        )
        self.tokenizer = tokenizer
        self.fingerprint = fingerprint
        self.guidance_scale = float(guidance_scale)
        self.unet_batches = 0
        self._text_cache: tuple[Tensor, Tensor] | None = None
        self._null_text: Tensor | None = None

        self.uses_text = type(unet).__name__ == "UNet2DConditionModel"
        num_class_embeds = getattr(config, "num_class_embeds", None) or 0
        self.uses_class = num_class_embeds > 0
        self.null_class, self.num_classes = None, 0
        if self.uses_class:
            self.null_class = num_class_embeds - 1 if null_class is None else int(null_class)
            if not 0 <= self.null_class < num_class_embeds:
                raise ConfigError(
                    f"null_class must be in [0, {num_class_embeds}), got {self.null_class}"
                )
            self.num_classes = self.null_class
        kinds = [k for k, used in (("class", self.uses_class), ("text", self.uses_text)) if used]
        self.conditioning = "+".join(kinds) or "none"
        if self.guidance_scale != 1.0 and self.conditioning == "none":
            raise ConfigError("guidance_scale != 1 needs a class- or text-conditional UNet")

    # -- the contract -----------------------------------------------------------------------------
    def network_output(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        timestep = self.schedule.timestep(t)
        kwargs = self._unet_inputs(cond, x.shape[0], x.device)
        if self.guidance_scale == 1.0 or not kwargs:
            return self._unet(x, timestep, kwargs)
        null = self._null_inputs(cond, kwargs, x.shape[0], x.device)
        both = {key: torch.cat([null[key], kwargs[key]]) for key in kwargs}
        out_u, out_c = self._unet(torch.cat([x, x]), torch.cat([timestep, timestep]), both).chunk(2)
        return out_u + self.guidance_scale * (out_c - out_u)

    def _unet(self, x: Tensor, timestep: Tensor, kwargs: dict[str, Tensor]) -> Tensor:
        self.unet_batches += 1
        if "encoder_hidden_states" in kwargs:
            kwargs = {
                **kwargs,
                "encoder_hidden_states": kwargs["encoder_hidden_states"].to(x.dtype),
            }
        return self.unet(x, timestep, **kwargs).sample

    def _unet_inputs(self, cond: Any, batch: int, device: torch.device) -> dict[str, Tensor]:
        """The UNet keyword arguments of a condition (``{}`` for unconditional models)."""
        if self.conditioning == "none":
            if cond is not None:
                raise ConfigError("this diffusers model is unconditional; pass cond=None")
            return {}
        if cond is None:
            hint = (
                "class labels, a (B,) int64 tensor"
                if self.conditioning == "class"
                else "{'input_ids': (B, L)} or {'encoder_hidden_states': (B, L, D)}"
                + (" and 'class_labels'" if self.uses_class else "")
            )
            raise ConfigError(f"this {self.conditioning}-conditional model needs cond: {hint}")
        cond = _as_dict(cond)
        kwargs = {}
        if self.uses_class:
            labels = cond.get("class_labels")
            if labels is None:
                raise ConfigError(
                    f"class-conditional model: cond has no class_labels ({list(cond)})"
                )
            kwargs["class_labels"] = _check_batch(labels, batch, "class_labels").to(device).long()
        if self.uses_text:
            kwargs["encoder_hidden_states"] = self._text_states(cond, batch, device, "")
        return kwargs

    def _null_inputs(
        self, cond: Any, kwargs: dict[str, Tensor], batch: int, device: torch.device
    ) -> dict[str, Tensor]:
        null = {}
        if self.uses_class:
            null["class_labels"] = torch.full_like(kwargs["class_labels"], self.null_class)
        if self.uses_text:
            cond = _as_dict(cond)
            if "negative_encoder_hidden_states" in cond or "negative_input_ids" in cond:
                states = self._text_states(cond, batch, device, "negative_")
            else:
                states = self.null_text_embedding(device).expand(batch, -1, -1)
            null["encoder_hidden_states"] = states
        return null

    def _text_states(self, cond: dict[str, Tensor], batch: int, device: torch.device, prefix: str):
        states = cond.get(f"{prefix}encoder_hidden_states")
        if states is not None:
            return _check_batch(states, batch, f"{prefix}encoder_hidden_states").to(device)
        ids = cond.get(f"{prefix}input_ids")
        if ids is None:
            raise ConfigError(
                f"text-conditional model: cond needs {prefix}input_ids or "
                f"{prefix}encoder_hidden_states, got {list(cond)}"
            )
        return self.encode_text(_check_batch(ids, batch, f"{prefix}input_ids").to(device))

    # -- text -------------------------------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str]) -> Tensor:
        """Token ids ``(B, L)`` int64 of prompts, padded to the tokenizer's ``model_max_length``."""
        if self.tokenizer is None:
            raise ConfigError("this model has no tokenizer/ folder: pass encoder_hidden_states")
        return self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    @torch.no_grad()
    def encode_text(self, input_ids: Tensor) -> Tensor:
        """Text-encoder hidden states ``(B, L, D)`` of token ids; the last result is reused."""
        if self.text_encoder is None:
            raise ConfigError("this model has no text_encoder/ folder: pass encoder_hidden_states")
        cached = self._text_cache
        if cached is not None and cached[0] is input_ids:
            return cached[1]
        states = self.text_encoder(input_ids.to(self.device))[0]
        self._text_cache = (input_ids, states)
        return states

    def null_text_embedding(self, device: torch.device | None = None) -> Tensor:
        """The unconditional embedding ``(1, L, D)``: the empty prompt, encoded once."""
        if self._null_text is None:
            if self.text_encoder is None or self.tokenizer is None:
                raise ConfigError(
                    "guidance on a text model without text_encoder/ and tokenizer/ needs "
                    "cond['negative_encoder_hidden_states']"
                )
            self._null_text = self.encode_text(self.tokenize([""]))
            self._text_cache = None
        return self._null_text.to(device or self.device)

    @property
    def takes_prompts(self) -> bool:
        return self.uses_text and self.tokenizer is not None

    def prompt_table(self, prompts: list[str]) -> dict[str, Tensor]:
        """Prompts as ``{"input_ids": (P, L)}``: token ids are stored in teacher sets and replayed
        through the text encoder in training."""
        return {"input_ids": self.tokenize(prompts)}

    # -- conditions for seeds ---------------------------------------------------------------------
    def default_cond(self, seeds: Tensor) -> Tensor | None:
        """The paper's conditions for seeds (paper App. D.2): ``label = seed mod num_classes``.

        ``None`` for unconditional models; text models need prompts (:func:`prompt_cond_fn`).
        """
        if self.conditioning == "none":
            return None
        if self.conditioning == "class":
            return class_cond_fn(self.num_classes)(seeds)
        raise ConfigError(
            "text-conditional models need prompts: use prompt_cond_fn(model, prompts)"
        )

    # -- latents ----------------------------------------------------------------------------------
    @property
    def is_latent(self) -> bool:
        return self.vae is not None

    @property
    def scaling_factor(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 1.0)) if self.vae else 1.0

    def decode(self, latents: Tensor) -> Tensor:
        """Images in [−1, 1] of (scaled) latents; the identity for pixel models."""
        if self.vae is None:
            return latents
        latents = latents.to(self.device, next(self.vae.parameters()).dtype)
        return self.vae.decode(latents / self.scaling_factor).sample.clamp(-1.0, 1.0)

    def encode(self, images: Tensor) -> Tensor:
        """Scaled latents of images in [−1, 1] (the VAE posterior's mean or VQ's pre-quantization)."""
        if self.vae is None:
            return images
        encoded = self.vae.encode(images.to(self.device))
        latents = encoded.latent_dist.mean if hasattr(encoded, "latent_dist") else encoded.latents
        return latents * self.scaling_factor

    # -- features ---------------------------------------------------------------------------------
    def feature_encoder(self) -> nn.Module | None:
        """The encoder of an unconditional ``UNet2DModel`` (:class:`.unet_encoder.UNetEncoder`);
        ``None`` for conditional UNets."""
        if type(self.unet).__name__ != "UNet2DModel" or self.unet.class_embedding is not None:
            return None
        return UNetEncoder(self.unet)

    # -- bookkeeping ------------------------------------------------------------------------------
    def reset_nfe(self) -> None:
        super().reset_nfe()
        self.unet_batches = 0

    def network_modules(self) -> list[nn.Module]:
        return [self.unet]

    def identity(self) -> dict[str, Any]:
        identity = {
            **super().identity(),
            "network": type(self.unet).__name__,
            "weights": self.fingerprint,
        }
        if self.conditioning != "none":
            identity.update(conditioning=self.conditioning, guidance_scale=self.guidance_scale)
        if self.uses_class:
            identity["null_class"] = self.null_class
        if self.vae is not None:
            identity.update(vae=type(self.vae).__name__, scaling_factor=self.scaling_factor)
        return identity


# -- the scheduler's schedule ---------------------------------------------------------------------
def scheduler_schedule(scheduler: Any) -> tuple[NoiseSchedule, str]:
    """The noise schedule and prediction type a diffusers scheduler describes: a flow-matching
    scheduler (its ``shift``; velocity output), or any DDPM-family one (its ``alphas_cumprod``)."""
    if type(scheduler).__name__ in FLOW_SCHEDULERS:
        return flow_schedule_from_config(dict(scheduler.config), "scheduler"), "flow_prediction"
    return DiscreteVPSchedule(scheduler.alphas_cumprod), scheduler.config.prediction_type


# -- condition functions for teacher sets ---------------------------------------------------------
def class_cond_fn(num_classes: int) -> Callable[[Tensor], Tensor]:
    """``cond_fn(seeds) = seeds mod num_classes`` as ``(B,)`` int64 labels (paper App. D.2)."""
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")

    def cond_fn(seeds: Tensor) -> Tensor:
        return torch.as_tensor(seeds).long() % num_classes

    return cond_fn


def prompt_cond_fn(model: DiffusionModel, prompts: Sequence[str]) -> Callable[[Tensor], Any]:
    """``cond_fn(seeds)``: the condition of ``prompts[seed mod len(prompts)]``, as the model makes
    it (:meth:`DiffusersUNetModel.prompt_cond_fn`: token ids;
    :meth:`~gas_solver.models.diffusers_flow.DiffusersFlowModel.prompt_cond_fn`: embeddings)."""
    return model.prompt_cond_fn(list(prompts))


def _as_dict(cond: Any) -> dict[str, Tensor]:
    """Read a bare tensor condition by its dtype and rank (see the module docstring)."""
    if isinstance(cond, dict):
        return cond
    if not isinstance(cond, Tensor):
        raise ConfigError(f"cond must be a tensor or a dict of tensors, got {type(cond).__name__}")
    if cond.is_floating_point():
        return {"encoder_hidden_states": cond}
    return {"class_labels" if cond.dim() == 1 else "input_ids": cond}


def _check_batch(value: Tensor, batch: int, name: str) -> Tensor:
    if not isinstance(value, Tensor) or value.shape[0] != batch:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ConfigError(f"cond {name} has shape {shape}; expected a batch of {batch}")
    return value
