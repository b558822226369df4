"""Stable Diffusion XL pipelines behind the model contract.

A folder written by ``StableDiffusionXLPipeline.save_pretrained``::

    folder/
      model_index.json          _class_name StableDiffusionXLPipeline, force_zeros_for_empty_prompt
      unet/                     UNet2DConditionModel, addition_embed_type "text_time"
      scheduler/                any DDPM-family scheduler config (SDXL: EulerDiscreteScheduler)
      vae/                      AutoencoderKL
      text_encoder/, tokenizer/      CLIPTextModel (CLIP-L) + CLIPTokenizer
      text_encoder_2/, tokenizer_2/  CLIPTextModelWithProjection (OpenCLIP-G) + CLIPTokenizer

is a :class:`DiffusersSDXLModel` (:func:`load_sdxl_model`; :func:`is_sdxl_folder` tells it apart,
and :func:`~gas_solver.models.diffusers_folder.load_diffusers_model` hands such folders here).
Every part is needed: a missing one is refused in one line naming it. Nothing is downloaded.

It is a :class:`~gas_solver.models.diffusers.DiffusersUNetModel` (the scheduler's DDPM schedule
and ``prediction_type``, epsilon or v, converted by the contract; classifier-free guidance in one
UNet batch of 2B, one NFE; the VAE's latents) whose conditions are SDXL's:

* **prompts** go through the pipeline's own ``encode_prompt`` (both encoders: the penultimate
  hidden states of each, concatenated, and the pooled projection of the second), so a condition is
  ``{"encoder_hidden_states": (B, L, D), "text_embeds": (B, P)}`` (SDXL: L = 77, D = 2048,
  P = 1280; about 0.63 MB per teacher item at float32), with ``negative_encoder_hidden_states``
  and ``negative_text_embeds`` when a negative prompt is given;
* the **micro-conditioning** ``time_ids`` are built from the sample shape as the pipeline builds
  them by default: original size = target size = the image size ``(H, W)`` in pixels, crop
  ``(0, 0)``; the image size is the pipeline's default (``unet.config.sample_size ×
  vae_scale_factor``: SDXL 1024 × 1024) or ``height``/``width`` given to :func:`load_sdxl_model`;
* **guidance** ``ε = ε_u + s (ε_c − ε_u)`` with the unconditional half ``[negative, positive]``
  as the pipeline orders it; without a negative prompt the unconditional embeddings are the
  pipeline's own: zeros when ``force_zeros_for_empty_prompt`` (SDXL's default), else the encoded
  empty prompt. ``guidance_rescale`` is not applied (the pipeline's default, 0).

Latents decode as the pipeline does: ``vae.decode(z / scaling_factor)``, or
``z · latents_std / scaling_factor + latents_mean`` when the VAE config has both.
:meth:`DiffusersSDXLModel.feature_encoder` reads the UNet's down and mid blocks with the
unconditional embeddings, so GAS's ``model-features`` discriminator and distance work on it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..errors import ConfigError, MissingAssetError
from .base import cond_tensors
from .diffusers import DiffusersUNetModel
from .diffusers_flow import FLOW_SCHEDULERS
from .weights_fingerprint import ALL_WEIGHTS, weights_fingerprint

SDXL_PIPELINE = "StableDiffusionXLPipeline"
SDXL_PARTS = {  # subfolder → (the file that shows it is there, what it holds)
    "unet": ("config.json", "UNet2DConditionModel"),
    "scheduler": ("scheduler_config.json", "the scheduler config"),
    "vae": ("config.json", "AutoencoderKL"),
    "text_encoder": ("config.json", "CLIPTextModel"),
    "tokenizer": ("tokenizer_config.json", "CLIPTokenizer"),
    "text_encoder_2": ("config.json", "CLIPTextModelWithProjection"),
    "tokenizer_2": ("tokenizer_config.json", "CLIPTokenizer"),
}


# -- which folders ----------------------------------------------------------------------------------
def is_sdxl_folder(folder: str | Path) -> bool:
    """A pipeline folder whose ``model_index.json`` names ``StableDiffusionXLPipeline``, or whose
    UNet has SDXL's added ``text_time`` embedding (cheap: reads two small JSON files)."""
    folder = Path(folder)
    index = _read_json(folder / "model_index.json")
    if index.get("_class_name") == SDXL_PIPELINE:
        return True
    return _read_json(folder / "unet" / "config.json").get("addition_embed_type") == "text_time"


def load_sdxl_model(
    folder: str | Path,
    guidance_scale: float = 1.0,
    height: int | None = None,
    width: int | None = None,
) -> DiffusersSDXLModel:
    """Load an SDXL pipeline folder (see the module docstring); nothing is downloaded.

    Args:
        folder: the pipeline folder (``save_pretrained`` of a ``StableDiffusionXLPipeline``).
        guidance_scale: classifier-free guidance scale; 1 means none.
        height, width: the image size in pixels (multiples of the VAE's scale factor); ``None``:
            the pipeline's default, ``unet.config.sample_size × vae_scale_factor``.

    Raises:
        MissingAssetError: a part of the pipeline is missing, or diffusers/transformers are not
            installed.
        ConfigError: a part of another class, a flow-matching scheduler, a size the VAE cannot
            make, or a UNet whose added embedding does not fit the encoders.
    """
    folder = Path(folder)
    missing = [f"{name}/ ({what})" for name, (marker, what) in SDXL_PARTS.items()
               if not (folder / name / marker).is_file()]  # fmt: skip
    if missing:
        raise MissingAssetError(
            f"{folder}: an SDXL pipeline folder lacks {', '.join(missing)}; write the whole "
            "StableDiffusionXLPipeline with pipe.save_pretrained(folder)"
        )
    try:
        import diffusers
        import transformers
    except ImportError as err:
        raise MissingAssetError(
            "SDXL models need the diffusers and transformers packages: "
            "pip install 'gas-solver[diffusers]' transformers"
        ) from err
    for name, attribute, expected in (
        ("unet", "_class_name", "UNet2DConditionModel"),
        ("vae", "_class_name", "AutoencoderKL"),
        ("text_encoder", "architectures", "CLIPTextModel"),
        ("text_encoder_2", "architectures", "CLIPTextModelWithProjection"),
    ):
        found = _read_json(folder / name / "config.json").get(attribute)
        found = found[0] if isinstance(found, list) and found else found
        if found != expected:
            raise ConfigError(f"{folder / name}: an SDXL pipeline needs a {expected}, got {found}")
    scheduler_config = _read_json(folder / "scheduler" / "scheduler_config.json")
    if "num_train_timesteps" not in scheduler_config:  # not defaults in place of the model's betas
        raise ConfigError(
            f"{folder / 'scheduler' / 'scheduler_config.json'}: not a readable scheduler config "
            "(a JSON object with the model's betas and num_train_timesteps)"
        )
    if scheduler_config.pop("_class_name", None) in FLOW_SCHEDULERS:
        raise ConfigError(
            f"{folder / 'scheduler'}: a flow-matching scheduler on an SDXL UNet is not supported; "
            "SDXL models use a DDPM-family scheduler (EulerDiscreteScheduler)"
        )

    # low_cpu_mem_usage=False: no accelerate needed
    unet = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet", low_cpu_mem_usage=False)
    vae = diffusers.AutoencoderKL.from_pretrained(folder / "vae", low_cpu_mem_usage=False)
    text_encoder = transformers.CLIPTextModel.from_pretrained(folder / "text_encoder")
    text_encoder_2 = transformers.CLIPTextModelWithProjection.from_pretrained(
        folder / "text_encoder_2"
    )
    # the betas, hence alphas_cumprod, are built exactly as every DDPM-family scheduler does
    scheduler = diffusers.DDPMScheduler.from_config(scheduler_config)
    pipeline = diffusers.StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        tokenizer_2=transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer_2"),
        unet=unet, scheduler=scheduler, add_watermarker=False,
        force_zeros_for_empty_prompt=bool(
            _read_json(folder / "model_index.json").get("force_zeros_for_empty_prompt", True)
        ),
    )  # fmt: skip
    weights = [folder / name for name in ("unet", "vae", "text_encoder", "text_encoder_2")]
    return DiffusersSDXLModel(
        pipeline,
        scheduler,
        guidance_scale,
        height,
        width,
        weights_fingerprint(*weights, patterns=ALL_WEIGHTS, name_folders=True),
        str(folder),
    )


# -- the model ----------------------------------------------------------------------------------
class DiffusersSDXLModel(DiffusersUNetModel):
    """A ``StableDiffusionXLPipeline``'s UNet, encoders and VAE as a model (module docstring).

    Args:
        pipeline: the ``StableDiffusionXLPipeline`` (its ``encode_prompt`` encodes prompts; its
            UNet, VAE and text encoders become this model's submodules, so ``.to(device)`` moves
            them all).
        scheduler: a DDPM-family diffusers scheduler: ``alphas_cumprod`` and ``prediction_type``.
        guidance_scale: classifier-free guidance scale ``s``; 1 means no guidance.
        height, width: the image size in pixels (``None``: the pipeline's default).
        fingerprint: a cheap identity of the UNet, VAE and both text encoders' weights.
        where: the folder, for messages.

    Attributes:
        image_size: ``(H, W)`` in pixels; ``sample_shape`` is the latent ``(C, H/f, W/f)``.
        time_ids: ``(6,)`` SDXL's micro-conditioning ``(H, W, 0, 0, H, W)``.
    """

    def __init__(
        self,
        pipeline: Any,
        scheduler: Any,
        guidance_scale: float = 1.0,
        height: int | None = None,
        width: int | None = None,
        fingerprint: str = "",
        where: str = "SDXL pipeline",
    ) -> None:
        unet, vae = pipeline.unet, pipeline.vae
        super().__init__(
            unet, scheduler, vae, guidance_scale=guidance_scale, fingerprint=fingerprint
        )
        self.pipeline = pipeline
        self.text_encoders = nn.ModuleList(
            [pipeline.text_encoder.eval(), pipeline.text_encoder_2.eval()]
        ).requires_grad_(False)
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        default = int(unet.config.sample_size) * factor  # the pipeline's default_sample_size
        size = []
        for name, value in (("height", height), ("width", width)):
            value = default if value is None else value
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < factor
                or value % factor
            ):
                raise ConfigError(
                    f"{where}: {name} must be a positive multiple of the VAE's scale factor "
                    f"{factor} (pixels), got {value!r}"
                )
            size.append(value)
        self.image_size: tuple[int, int] = (size[0], size[1])
        self.sample_shape = (int(unet.config.in_channels), size[0] // factor, size[1] // factor)
        self.register_buffer(
            "time_ids", torch.tensor([*self.image_size, 0, 0, *self.image_size]).float(), False
        )
        pooled = int(pipeline.text_encoder_2.config.projection_dim)
        time_dim = getattr(unet.config, "addition_time_embed_dim", None) or 0
        expected = unet.add_embedding.linear_1.in_features
        if time_dim * len(self.time_ids) + pooled != expected:
            raise ConfigError(
                f"{where}: the UNet's added embedding takes {expected} features, but "
                f"{len(self.time_ids)} time ids × addition_time_embed_dim {time_dim} + "
                f"text_encoder_2's projection_dim {pooled} make {time_dim * 6 + pooled} "
                "(an SDXL refiner or another pipeline's UNet?)"
            )
        self.force_zeros = bool(pipeline.config.force_zeros_for_empty_prompt)
        self._null: tuple[Tensor, Tensor] | None = None

    # -- UNet inputs (DiffusersUNetModel.network_output batches the guided halves) ---------------
    def _unet(self, x: Tensor, timestep: Tensor, kwargs: dict[str, Tensor]) -> Tensor:
        self.unet_batches += 1
        added = {key: kwargs[key].to(x.dtype) for key in ("text_embeds", "time_ids")}
        states = kwargs["encoder_hidden_states"].to(x.dtype)
        return self.unet(x, timestep, encoder_hidden_states=states, added_cond_kwargs=added).sample

    def _unet_inputs(self, cond: Any, batch: int, device: torch.device) -> dict[str, Tensor]:
        states, pooled = self._text(cond, batch, "")
        return {
            "encoder_hidden_states": states.to(device),
            "text_embeds": pooled.to(device),
            "time_ids": self.time_ids.to(device).expand(batch, -1),
        }

    def _null_inputs(
        self, cond: Any, kwargs: dict[str, Tensor], batch: int, device: torch.device
    ) -> dict[str, Tensor]:
        if "negative_encoder_hidden_states" in cond or "negative_text_embeds" in cond:
            states, pooled = self._text(cond, batch, "negative_")
        else:
            states, pooled = self.null_embeddings()
            states, pooled = states.expand(batch, -1, -1), pooled.expand(batch, -1)
        return {
            "encoder_hidden_states": states.to(device),
            "text_embeds": pooled.to(device),
            "time_ids": kwargs["time_ids"],
        }

    def _text(self, cond: Any, batch: int, prefix: str) -> tuple[Tensor, Tensor]:
        states, pooled = cond_tensors(
            cond, (f"{prefix}encoder_hidden_states", f"{prefix}text_embeds"), batch,
            "this SDXL model needs cond = {'encoder_hidden_states': (B, L, D), "
            "'text_embeds': (B, P)}: make it from prompts (--prompts, prompt_cond_fn)"
        )  # fmt: skip
        return states, pooled

    # -- text -------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(
        self, prompts: Sequence[str], negative_prompts: str | Sequence[str] | None = None
    ) -> dict[str, Tensor]:
        """The pipeline's ``encode_prompt`` of prompts: ``encoder_hidden_states (P, L, D)`` and
        ``text_embeds (P, P')``, plus ``negative_*`` when ``negative_prompts`` is given (one
        string for every prompt, or one per prompt)."""
        prompts = list(prompts)
        negatives = None
        if negative_prompts is not None:
            negatives = (
                [negative_prompts] * len(prompts)
                if isinstance(negative_prompts, str)
                else list(negative_prompts)
            )
            if len(negatives) != len(prompts):
                raise ConfigError(
                    f"negative prompts: one for all, or one per prompt ({len(prompts)}), "
                    f"got {len(negatives)}"
                )
        states, negative, pooled, negative_pooled = self.pipeline.encode_prompt(
            prompts, device=self.device, do_classifier_free_guidance=negatives is not None,
            negative_prompt=negatives,
        )  # fmt: skip
        cond = {"encoder_hidden_states": states, "text_embeds": pooled}
        if negatives is not None:
            cond.update(
                negative_encoder_hidden_states=negative, negative_text_embeds=negative_pooled
            )
        return cond

    @torch.no_grad()
    def null_embeddings(self) -> tuple[Tensor, Tensor]:
        """The unconditional ``(encoder_hidden_states (1, L, D), text_embeds (1, P))`` the
        pipeline uses without a negative prompt: zeros when ``force_zeros_for_empty_prompt``,
        else the encoded empty prompt; made once."""
        if self._null is None:
            _, states, _, pooled = self.pipeline.encode_prompt(
                [""], device=self.device, do_classifier_free_guidance=True
            )
            self._null = (states, pooled)
        states, pooled = self._null
        return states.to(self.device), pooled.to(self.device)

    @property
    def takes_prompts(self) -> bool:
        return True

    def prompt_table(
        self, prompts: list[str], negative_prompts: str | Sequence[str] | None = None
    ) -> dict[str, Tensor]:
        """The embeddings of prompts (and of their negative prompts, kept only when the model
        guides: ``guidance_scale != 1``); ``prompt_cond_fn(prompts, negative_prompts=…)``."""
        if self.guidance_scale == 1.0:
            negative_prompts = None
        return self.encode_prompts(prompts, negative_prompts)

    def default_cond(self, seeds: Tensor) -> None:
        raise ConfigError("text-conditional models need prompts: use --prompts (prompt_cond_fn)")

    # -- latents ----------------------------------------------------------------------------------
    def _latent_stats(self) -> tuple[Tensor, Tensor] | None:
        config = self.vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is None or std is None:
            return None
        view = (1, -1, 1, 1)
        return torch.tensor(mean).view(view), torch.tensor(std).view(view)

    def decode(self, latents: Tensor) -> Tensor:
        """Images in [−1, 1] of latents, as the SDXL pipeline decodes them."""
        vae_param = next(self.vae.parameters())
        latents = latents.to(vae_param)
        stats = self._latent_stats()
        if stats is None:
            latents = latents / self.scaling_factor
        else:
            mean, std = (s.to(latents) for s in stats)
            latents = latents * std / self.scaling_factor + mean
        return self.vae.decode(latents).sample.clamp(-1.0, 1.0)

    def encode(self, images: Tensor) -> Tensor:
        """Latents of images in [−1, 1] (the posterior's mean), the inverse of :meth:`decode`."""
        latents = self.vae.encode(images.to(self.device)).latent_dist.mean
        stats = self._latent_stats()
        if stats is None:
            return latents * self.scaling_factor
        mean, std = (s.to(latents) for s in stats)
        return (latents - mean) * self.scaling_factor / std

    # -- features ---------------------------------------------------------------------------------
    def feature_encoder(self) -> nn.Module:
        """The UNet's down and mid blocks (:class:`SDXLUNetEncoder`) under the unconditional
        embeddings and this model's ``time_ids``."""
        states, pooled = self.null_embeddings()
        return SDXLUNetEncoder(self.unet, states, pooled, self.time_ids)

    # -- bookkeeping ------------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        return {
            **super().identity(),
            "pipeline": SDXL_PIPELINE,
            "image_size": list(self.image_size),
            "force_zeros_for_empty_prompt": self.force_zeros,
        }


class SDXLUNetEncoder(nn.Module):
    """``(x, timestep) → [h_1, …, h_L]``: an SDXL UNet's down blocks' and mid block's outputs,
    computed as ``UNet2DConditionModel.forward`` computes them, under fixed conditions (the
    model's unconditional embeddings and ``time_ids``). The UNet stays frozen; gradients flow to
    ``x`` twice over (attention in the math kernel, the one with a double backward).

    Attributes:
        widths: the channels of each feature map, in order.
    """

    def __init__(self, unet: nn.Module, states: Tensor, pooled: Tensor, time_ids: Tensor) -> None:
        super().__init__()
        self.unet = unet
        self._cond = (states.detach(), pooled.detach(), time_ids.detach().reshape(1, -1))
        widths = [int(block.resnets[-1].out_channels) for block in unet.down_blocks]
        if unet.mid_block is not None:
            widths.append(int(unet.mid_block.resnets[-1].out_channels))
        self.widths = tuple(widths)

    def forward(self, x: Tensor, timestep: Tensor) -> list[Tensor]:
        unet, batch = self.unet, x.shape[0]
        states, pooled, time_ids = (c.to(x.device, x.dtype) for c in self._cond)
        states = states.expand(batch, -1, -1)
        added = {"text_embeds": pooled.expand(batch, -1), "time_ids": time_ids.expand(batch, -1)}
        if unet.config.center_input_sample:
            x = 2 * x - 1.0
        emb = unet.time_embedding(unet.get_time_embed(x, timestep.to(x.device).expand(batch)))
        aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=states, added_cond_kwargs=added)
        emb = emb if aug is None else emb + aug
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        states = unet.process_encoder_hidden_states(states, added)
        h, feats = unet.conv_in(x), []
        with sdpa_kernel(SDPBackend.MATH):
            for block in unet.down_blocks:
                if getattr(block, "has_cross_attention", False):
                    h, _ = block(hidden_states=h, temb=emb, encoder_hidden_states=states)
                else:
                    h, _ = block(hidden_states=h, temb=emb)
                feats.append(h)
            mid = unet.mid_block
            if mid is not None:
                if getattr(mid, "has_cross_attention", False):
                    feats.append(mid(h, emb, encoder_hidden_states=states))
                else:
                    feats.append(mid(h, emb))
        return feats


# -- reading the folder ---------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    """A small JSON object file, or ``{}`` when it is absent or not one (detection stays cheap
    and quiet; loading names what it misses)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


__all__ = [
    "SDXL_PIPELINE",
    "DiffusersSDXLModel",
    "SDXLUNetEncoder",
    "is_sdxl_folder",
    "load_sdxl_model",
]
