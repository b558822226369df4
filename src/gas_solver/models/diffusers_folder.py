"""What a local diffusers pipeline folder holds, and which adapter loads it.

A folder in the diffusers pipeline layout (``save_pretrained`` of a pipeline) is one of

* a UNet pipeline, loaded as a :class:`~gas_solver.models.diffusers.DiffusersUNetModel`::

    folder/
      unet/config.json, unet/diffusion_pytorch_model.safetensors   UNet2DModel or UNet2DConditionModel
      scheduler/scheduler_config.json                             any DDPM-family scheduler config,
                                                                  or FlowMatchEulerDiscreteScheduler
      vae/ or vqvae/          (optional) AutoencoderKL or VQModel: a latent model
      text_encoder/, tokenizer/  (optional) CLIPTextModel + CLIPTokenizer (needs transformers)

* an SD3-layout flow pipeline (a ``transformer/`` and a flow scheduler), loaded as a
  :class:`~gas_solver.models.diffusers_flow.DiffusersFlowModel`::

    folder/
      transformer/   SD3Transformer2DModel            the velocity network
      scheduler/     FlowMatchEulerDiscreteScheduler  its ``shift`` (SD3: 3.0) sets the schedule
      vae/           AutoencoderKL (optional)          latents → images
      text_encoder/, text_encoder_2/ (+ tokenizers)    CLIP-L and CLIP-G; text_encoder_3/ T5 optional

* a FLUX.1 pipeline (``model_index.json`` names ``FluxPipeline``, or the transformer is a
  ``FluxTransformer2DModel``), loaded as a
  :class:`~gas_solver.models.diffusers_flux.DiffusersFluxModel`::

    folder/
      transformer/   FluxTransformer2DModel            guidance_embeds: FLUX.1-dev style, else schnell
      scheduler/     FlowMatchEulerDiscreteScheduler  use_dynamic_shifting: the shift is e^mu, mu from
                                                      the resolution (calculate_shift); else its shift
      vae/           AutoencoderKL (optional)          latents → images (scaling and shift factor)
      text_encoder/, text_encoder_2/ (+ tokenizers)    CLIP (pooled) and T5 (states); optional as a pair

A ``model_index.json`` naming a pipeline class not in :data:`KNOWN_PIPELINES` is refused.

Nothing is downloaded: only local folders are accepted. The weights are named in ``identity()``
by a cheap fingerprint of their files (:mod:`.weights_fingerprint`).

In a model source string the guidance scale and the sample resolution (pixels; default the
pipeline's own) are options after the folder, in the solver-spec style:
``path/to/ldm:guidance=2``, ``path/to/flux:guidance=3.5,height=768,width=1024`` (see
:func:`split_source`), so checkpoints and teacher sets that record ``model.source`` load the same
model again.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import ConfigError, MissingAssetError
from ..schedules import FlowSchedule
from .diffusers import DiffusersUNetModel
from .diffusers_flow import FLOW_SCHEDULERS, DiffusersFlowModel, flow_schedule_from_config
from .diffusers_flux import (
    DEFAULT_SAMPLE_SIZE,
    FLUX_PIPELINES,
    FLUX_TRANSFORMERS,
    DiffusersFluxModel,
    check_flux_resolution,
    flux_time_shift,
)
from .diffusers_sdxl import is_sdxl_folder, load_sdxl_model
from .weights_fingerprint import weights_fingerprint

UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")
VAE_FOLDERS = ("vae", "vqvae")
VAE_CLASSES = ("AutoencoderKL", "VQModel")
SOURCE_OPTIONS = {"guidance": float, "height": int, "width": int}
KNOWN_PIPELINES = (
    "DDPMPipeline", "DDIMPipeline", "LDMPipeline", "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline", "StableDiffusionXLPipeline", "StableDiffusion3Pipeline",
    *FLUX_PIPELINES,
)  # fmt: skip
"""Pipeline classes (``model_index.json`` ``_class_name``) whose folders load; others are refused
(a folder without ``model_index.json`` is read by its layout)."""


# -- source strings -------------------------------------------------------------------------------
def split_source(source: str) -> tuple[str, dict[str, Any]]:
    """``"folder:guidance=2,height=512"`` → ``("folder", {"guidance": 2.0, "height": 512})``; a
    plain folder has no options."""
    match = re.fullmatch(r"(.+?):((?:\w+=[^,:]+,?)+)", source)
    if match is None or not Path(match.group(1)).is_dir():
        return source, {}
    options: dict[str, Any] = {}
    for item in filter(None, match.group(2).split(",")):
        key, value = item.split("=", 1)
        if key not in SOURCE_OPTIONS:
            raise ConfigError(
                f"model {source!r}: unknown option {key!r} (known: {', '.join(SOURCE_OPTIONS)})"
            )
        try:
            options[key] = SOURCE_OPTIONS[key](value)
        except ValueError as err:
            raise ConfigError(f"model {source!r}: bad value for {key}: {value!r}") from err
        if key in ("height", "width") and options[key] <= 0:
            raise ConfigError(f"model {source!r}: {key} must be a positive number of pixels")
    return match.group(1), options


def is_diffusers_source(source: str) -> bool:
    """A local folder, optionally with ``:key=value`` options (see :func:`split_source`)."""
    return Path(split_source(source)[0]).is_dir()


# -- which pipeline, which adapter ----------------------------------------------------------------
def load_diffusers_model(
    folder: str | Path,
    guidance_scale: float | None = None,
    null_class: int | None = None,
    height: int | None = None,
    width: int | None = None,
) -> DiffusersUNetModel | DiffusersFlowModel | DiffusersFluxModel:
    """Load a diffusers pipeline folder (see the module docstring).

    Args:
        folder: the folder, or a source string ``folder:guidance=S,height=H,width=W``.
        guidance_scale: overrides the source's ``guidance`` option (default 1, no guidance;
            FLUX: the guidance embedding, default 3.5).
        null_class: the unconditional label (default: the last class embedding).
        height, width: override the source's sample resolution in pixels (default: the
            pipeline's own).
    """
    folder, options = split_source(str(folder))
    height = options.get("height") if height is None else height
    width = options.get("width") if width is None else width
    folder = Path(folder)
    check_pipeline_class(folder)
    if is_flux_pipeline_folder(folder):  # FluxPipeline: its own guidance default
        guidance = options.get("guidance") if guidance_scale is None else guidance_scale
        return load_flux_model(folder, guidance, height=height, width=width)
    if guidance_scale is None:
        guidance_scale = options.get("guidance", 1.0)
    if is_flow_pipeline_folder(folder):  # transformer/ + a flow scheduler (SD3 layout)
        return load_diffusers_flow_model(folder, guidance_scale, height=height, width=width)
    if is_sdxl_folder(folder):  # StableDiffusionXLPipeline: a text_time UNet, two encoders
        return load_sdxl_model(folder, guidance_scale, height=height, width=width)
    unet_dir, scheduler_dir = folder / "unet", folder / "scheduler"
    for needed in (unet_dir / "config.json", scheduler_dir / "scheduler_config.json"):
        if not needed.is_file():
            raise MissingAssetError(
                f"{needed} not found: a diffusers model folder needs unet/ and scheduler/ "
                "subfolders, as written by a pipeline's save_pretrained(folder)"
            )
    try:
        import diffusers
    except ImportError as err:
        raise MissingAssetError(
            "loading diffusers models needs the diffusers package: pip install 'gas-solver[diffusers]'"
        ) from err
    unet_class = _class_name(unet_dir / "config.json", "UNet2DModel")
    if unet_class not in UNET_CLASSES:
        raise ConfigError(f"{unet_dir}: the UNet must be one of {UNET_CLASSES}, got {unet_class}")
    # low_cpu_mem_usage=False: no accelerate needed
    unet = getattr(diffusers, unet_class).from_pretrained(unet_dir, low_cpu_mem_usage=False)
    scheduler_config = json.loads((scheduler_dir / "scheduler_config.json").read_text())
    if scheduler_config.pop("_class_name", None) in FLOW_SCHEDULERS:  # a flow-matching UNet
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    else:  # the betas, hence alphas_cumprod, are built exactly as every DDPM-family scheduler does
        scheduler = diffusers.DDPMScheduler.from_config(scheduler_config)

    vae = None
    for name in VAE_FOLDERS:
        if (folder / name / "config.json").is_file():
            vae_class = _class_name(folder / name / "config.json", "AutoencoderKL")
            if vae_class not in VAE_CLASSES:
                raise ConfigError(f"{folder / name}: the VAE must be one of {VAE_CLASSES}")
            vae = getattr(diffusers, vae_class).from_pretrained(
                folder / name, low_cpu_mem_usage=False
            )
            break

    text_encoder = tokenizer = None
    if (folder / "text_encoder" / "config.json").is_file():
        try:
            import transformers
        except ImportError as err:
            raise MissingAssetError(
                f"{folder / 'text_encoder'}: text-conditional models need the transformers "
                "package: pip install transformers"
            ) from err
        encoder_class = _class_name(
            folder / "text_encoder" / "config.json", "CLIPTextModel", key="architectures"
        )
        text_encoder = getattr(transformers, encoder_class).from_pretrained(folder / "text_encoder")
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder / "tokenizer")

    weights = [unet_dir] + [p for p in (folder / "vae", folder / "vqvae") if p.is_dir()]
    model = DiffusersUNetModel(
        unet, scheduler, vae, text_encoder, tokenizer,
        guidance_scale=guidance_scale, null_class=null_class,
        fingerprint=weights_fingerprint(*weights),
    )  # fmt: skip
    scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    down = 2 ** (len(unet.config.block_out_channels) - 1)
    return _at_resolution(
        model, folder, height, width, scale, scale * down,
        f"the VAE's factor {scale} times the UNet's downsampling {down}",
    )  # fmt: skip


def is_flow_pipeline_folder(folder: Path) -> bool:
    """A pipeline folder with a ``transformer/`` (the SD3 layout)."""
    return (folder / "transformer" / "config.json").is_file()


def load_diffusers_flow_model(
    folder: Path, guidance_scale: float, height: int | None = None, width: int | None = None
) -> DiffusersFlowModel:
    """Load an SD3-layout folder (see the module docstring) at ``height`` × ``width`` pixels
    (default: the pipeline's); nothing is downloaded."""
    import diffusers

    config, scheduler_config = _flow_scheduler_config(folder, "an SD3-style")
    schedule = flow_schedule_from_config(config, str(scheduler_config))
    has_text = (folder / "text_encoder" / "config.json").is_file()
    if has_text:  # the whole pipeline: its encode_prompt is the reference text path
        absent = {  # T5 is optional in SD3 (its embeddings are then zeros)
            name: None for name in ("text_encoder_3", "tokenizer_3") if not (folder / name).is_dir()
        }
        pipeline = diffusers.StableDiffusion3Pipeline.from_pretrained(
            folder, low_cpu_mem_usage=False, **absent
        )
        transformer, vae = pipeline.transformer, pipeline.vae
    else:
        pipeline, vae = None, None
        transformer = diffusers.SD3Transformer2DModel.from_pretrained(
            folder / "transformer", low_cpu_mem_usage=False
        )
        if (folder / "vae" / "config.json").is_file():
            vae = diffusers.AutoencoderKL.from_pretrained(folder / "vae", low_cpu_mem_usage=False)
    weights = [folder / "transformer"] + ([folder / "vae"] if vae is not None else [])
    model = DiffusersFlowModel(
        transformer, schedule, vae, pipeline, guidance_scale, weights_fingerprint(*weights)
    )
    scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
    patch = int(transformer.config.patch_size)
    model = _at_resolution(
        model, folder, height, width, scale, scale * patch,
        f"the VAE's factor {scale} times the patch size {patch}",
    )  # fmt: skip
    most = int(transformer.config.pos_embed_max_size or 0) * patch * scale
    if most and max(model.sample_shape[1:]) * scale > most:
        raise ConfigError(
            f"model {folder}: {model.sample_shape[1] * scale}x{model.sample_shape[2] * scale} "
            f"pixels exceed the transformer's position embedding ({most} pixels a side); pass "
            f"height= and width= of at most {most}"
        )
    return model


def _flow_scheduler_config(folder: Path, kind: str) -> tuple[dict[str, Any], Path]:
    """``scheduler/scheduler_config.json`` of a transformer pipeline (``kind``: "a FLUX"), which
    must name a flow-matching scheduler; the config and its path."""
    path = folder / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        raise MissingAssetError(f"{path} not found: {kind} pipeline needs scheduler/")
    config = json.loads(path.read_text())
    if config.get("_class_name") not in FLOW_SCHEDULERS:
        raise ConfigError(
            f"{path}: {kind} pipeline needs a flow scheduler {FLOW_SCHEDULERS}, got "
            f"{config.get('_class_name')}"
        )
    return config, path


def is_flux_pipeline_folder(folder: Path) -> bool:
    """A ``FluxPipeline`` folder: by ``model_index.json``, or by its transformer's class."""
    for config, key in ((folder / "model_index.json", "_class_name"),
                        (folder / "transformer" / "config.json", "_class_name")):  # fmt: skip
        if config.is_file() and _class_name(config, "", key) in FLUX_PIPELINES + FLUX_TRANSFORMERS:
            return True
    return False


def load_flux_model(
    folder: Path,
    guidance: float | None = None,
    height: int | None = None,
    width: int | None = None,
) -> DiffusersFluxModel:
    """Load a FLUX.1 folder (see the module docstring) at ``height`` × ``width`` pixels (default:
    the pipeline's, 128 × the VAE factor), its time shift fixed by that resolution
    (:func:`~gas_solver.models.diffusers_flux.flux_time_shift`); nothing is downloaded."""
    import diffusers

    config, scheduler_config = _flow_scheduler_config(folder, "a FLUX")
    encoders = [folder / name for name in ("text_encoder", "text_encoder_2")]
    present = [(path / "config.json").is_file() for path in encoders]
    if any(present) and not all(present):
        raise MissingAssetError(
            f"{folder}: a FLUX pipeline needs both text_encoder/ (CLIP) and text_encoder_2/ (T5), "
            "or neither (conditions given as embeddings)"
        )
    if all(present):  # the whole pipeline: its encode_prompt is the reference text path
        pipeline = diffusers.FluxPipeline.from_pretrained(folder, low_cpu_mem_usage=False)
        transformer, vae = pipeline.transformer, pipeline.vae
    else:
        pipeline, vae = None, None
        transformer = diffusers.FluxTransformer2DModel.from_pretrained(
            folder / "transformer", low_cpu_mem_usage=False
        )
        if (folder / "vae" / "config.json").is_file():
            vae = diffusers.AutoencoderKL.from_pretrained(folder / "vae", low_cpu_mem_usage=False)
    scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
    size = DEFAULT_SAMPLE_SIZE * scale
    resolution = (size if height is None else height, size if width is None else width)
    tokens = check_flux_resolution(resolution, scale)
    time_shift = flux_time_shift(config, tokens)
    schedule = FlowSchedule(time_shift["shift"], int(config.get("num_train_timesteps", 1000)))
    weights = [folder / "transformer"] + [p for p in (folder / "vae", *encoders) if p.is_dir()]
    return DiffusersFluxModel(
        transformer, schedule, resolution, scale, time_shift, vae, pipeline, guidance,
        weights_fingerprint(*weights),
    )  # fmt: skip


def check_pipeline_class(folder: Path) -> None:
    """Refuse a folder whose ``model_index.json`` names a pipeline not in :data:`KNOWN_PIPELINES`."""
    index = folder / "model_index.json"
    if not index.is_file():
        return
    try:
        name = _class_name(index, "")
    except (OSError, ValueError) as err:
        raise ConfigError(f"{index}: not a readable pipeline index ({err})") from None
    if name and name not in KNOWN_PIPELINES:
        raise ConfigError(
            f"{index}: {name} is a pipeline gas-solver does not load (it loads "
            f"{', '.join(KNOWN_PIPELINES)}); a new kind of model is a model family, see "
            "docs/ARCHITECTURE.md 'How to add a model family'"
        )


def _at_resolution(
    model: Any,
    folder: Path,
    height: int | None,
    width: int | None,
    scale: int,
    multiple: int,
    why: str,
) -> Any:
    """``model`` with ``sample_shape`` for ``height`` × ``width`` pixels (``None``: the model's
    own size, unchanged), latents ``pixels / scale``; sizes not multiples of ``multiple`` are
    refused."""
    if height is None and width is None:
        return model
    channels, rows, cols = model.sample_shape
    pixels = {"height": rows * scale if height is None else height,
              "width": cols * scale if width is None else width}  # fmt: skip
    for name, value in pixels.items():
        if value <= 0 or value % multiple:
            raise ConfigError(
                f"model {folder}: {name}={value} is not a positive multiple of {multiple} ({why}); "
                f"pass height= and width= multiples of {multiple}"
            )
    model.sample_shape = (channels, pixels["height"] // scale, pixels["width"] // scale)
    return model


# -- reading the folder ---------------------------------------------------------------------------
def _class_name(config_path: Path, default: str, key: str = "_class_name") -> str:
    value = json.loads(config_path.read_text()).get(key, default)
    return value[0] if isinstance(value, list) else value
