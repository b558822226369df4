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

Nothing is downloaded: only local folders are accepted. The weights are named in ``identity()``
by a cheap fingerprint of their files (:func:`_fingerprint`).

In a model source string the guidance scale is an option after the folder, in the solver-spec
style: ``path/to/ldm:guidance=2`` (see :func:`split_source`), so checkpoints and teacher sets that
record ``model.source`` load the same guided model again.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from ..errors import ConfigError, MissingAssetError
from .diffusers import DiffusersUNetModel
from .diffusers_flow import FLOW_SCHEDULERS, DiffusersFlowModel, flow_schedule_from_config

UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")
VAE_FOLDERS = ("vae", "vqvae")
VAE_CLASSES = ("AutoencoderKL", "VQModel")
SOURCE_OPTIONS = {"guidance": float}


# -- source strings -------------------------------------------------------------------------------
def split_source(source: str) -> tuple[str, dict[str, Any]]:
    """``"folder:guidance=2"`` → ``("folder", {"guidance": 2.0})``; a plain folder has no options."""
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
    return match.group(1), options


def is_diffusers_source(source: str) -> bool:
    """A local folder, optionally with ``:key=value`` options (see :func:`split_source`)."""
    return Path(split_source(source)[0]).is_dir()


# -- which pipeline, which adapter ----------------------------------------------------------------
def load_diffusers_model(
    folder: str | Path,
    guidance_scale: float | None = None,
    null_class: int | None = None,
) -> DiffusersUNetModel | DiffusersFlowModel:
    """Load a diffusers pipeline folder (see the module docstring).

    Args:
        folder: the folder, or a source string ``folder:guidance=S``.
        guidance_scale: overrides the source's ``guidance`` option (default 1, no guidance).
        null_class: the unconditional label (default: the last class embedding).
    """
    folder, options = split_source(str(folder))
    if guidance_scale is None:
        guidance_scale = options.get("guidance", 1.0)
    folder = Path(folder)
    if is_flow_pipeline_folder(folder):  # transformer/ + a flow scheduler (SD3 layout)
        return load_diffusers_flow_model(folder, guidance_scale)
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
    return DiffusersUNetModel(
        unet, scheduler, vae, text_encoder, tokenizer,
        guidance_scale=guidance_scale, null_class=null_class, fingerprint=_fingerprint(*weights),
    )  # fmt: skip


def is_flow_pipeline_folder(folder: Path) -> bool:
    """A pipeline folder with a ``transformer/`` (the SD3 layout)."""
    return (folder / "transformer" / "config.json").is_file()


def load_diffusers_flow_model(folder: Path, guidance_scale: float) -> DiffusersFlowModel:
    """Load an SD3-layout folder (see the module docstring); nothing is downloaded."""
    import diffusers

    scheduler_config = folder / "scheduler" / "scheduler_config.json"
    if not scheduler_config.is_file():
        raise MissingAssetError(f"{scheduler_config} not found: a flow pipeline needs scheduler/")
    config = json.loads(scheduler_config.read_text())
    if config.get("_class_name") not in FLOW_SCHEDULERS:
        raise ConfigError(
            f"{scheduler_config}: a transformer pipeline needs a flow scheduler "
            f"{FLOW_SCHEDULERS}, got {config.get('_class_name')}"
        )
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
    return DiffusersFlowModel(
        transformer, schedule, vae, pipeline, guidance_scale, _fingerprint(*weights)
    )


# -- reading the folder ---------------------------------------------------------------------------
def _class_name(config_path: Path, default: str, key: str = "_class_name") -> str:
    value = json.loads(config_path.read_text()).get(key, default)
    return value[0] if isinstance(value, list) else value


def _fingerprint(*dirs: Path) -> str:
    """A cheap identity of the weights: size plus SHA-256 of the first and last MiB of each file."""
    digest = hashlib.sha256()
    for folder in dirs:
        for path in sorted(folder.glob("diffusion_pytorch_model*")):
            size = path.stat().st_size
            with open(path, "rb") as f:
                digest.update(f"{path.name}:{size}".encode())
                digest.update(f.read(1 << 20))
                f.seek(max(size - (1 << 20), 0))
                digest.update(f.read(1 << 20))
    return digest.hexdigest()[:16]
