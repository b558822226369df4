"""Training a small diffusion model (the bundled default) on a bundled data set.

A diffusers ``UNet2DModel`` on the DDPM linear-β schedule (Ho et al. 2020, β from 1e-4 to 0.02 over
1000 steps, made continuous by :class:`~gas_solver.schedules.DiscreteVPSchedule`), with
``x_t = α_t x₀ + σ_t ε``. Two recipes:

* ``--prediction v_prediction --noise-sampling lognormal`` (the default): the network predicts
  ``v = α ε − σ x₀`` (Salimans & Ho 2022) at noise levels ``σ̃ = σ/α`` drawn log-normally,
  ``ln σ̃ ~ N(P_mean, P_std²)`` (Karras et al. 2022, EDM §5), at the continuous timestep of that
  level. With ``α² + σ² = 1`` the plain loss ``‖v̂ − v‖² = ‖x̂₀ − x₀‖²/σ²`` is EDM's weighted loss
  ``λ(σ̃)‖D − x₀‖²``, ``λ = (σ̃² + σ_d²)/(σ̃ σ_d)²``, for ``σ_d = 1``, and the v-parameterisation is
  EDM's preconditioning for that ``σ_d`` (``c_in = α``, ``c_skip = α²``, ``c_out = −σ``).
* ``--prediction epsilon --noise-sampling uniform``: DDPM's simple loss
  ``E‖ε − ε_θ(x_i, i)‖²``, ``i`` uniform in 0…999.
* ``--objective flow``: rectified flow (Liu et al. 2022; SD3, Esser et al. 2024):
  ``x_s = (1 − s) x₀ + s ε``, the network predicts the velocity ``v = ε − x₀`` at the timestep
  ``1000·s`` (diffusers' flow convention), loss ``‖v̂ − v‖²``. ``lognormal`` draws
  ``logit(s) ~ N(P_mean, P_std²)``: SD3's logit-normal sampling, which is the same law as EDM's
  log-normal one since ``σ̃ = σ/α = s/(1 − s)`` (SD3 used ``P_mean = 0``, ``P_std = 1``);
  ``uniform`` draws ``s ~ U(0, 1)``. Saved with a ``FlowMatchEulerDiscreteScheduler`` (shift 1).

Adam with a linear warm-up and an optional cosine decay, gradient clipping, and an EMA of the
weights (the EMA weights are what is saved). The result is a folder in the diffusers pipeline
layout (``unet/`` + ``scheduler/``), loadable with :func:`gas_solver.models.load_model` like any
user model; ``--snapshot-every`` also keeps the EMA weights at those steps (training curves).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..config import option, require
from ..data.datasets import dataset_names, load_dataset
from ..outputs import check_output, clear_earlier_run, folder_lock, write_files, write_json
from ..runtime import (
    check_resumed_config,
    load_checkpoint_file,
    resolve_device,
    run_metadata,
    save_checkpoint_file,
)
from ..schedules import DiscreteVPSchedule, FlowSchedule, NoiseSchedule
from .ema import EMA

log = logging.getLogger(__name__)


@dataclasses.dataclass
class DenoiserConfig:
    """The settings of :func:`train_denoiser` (the flags of ``gas-solver train-model``): a small
    diffusion or flow-matching UNet on a bundled data set."""

    dataset: str = option("mnist", "bundled data set", choices=dataset_names())
    out: str = option("runs/mnist32", "output folder (model/ holds the diffusers pipeline folder)")
    channels: str = option("16,32,64,64", "UNet block widths, one per resolution")
    layers_per_block: int = option(1, "ResNet layers per UNet block")
    iterations: int = option(20000, "optimizer steps")
    batch_size: int = option(64, "images per step")
    objective: str = option(
        "diffusion", "DDPM-schedule diffusion, or rectified flow (velocity; FlowMatch scheduler)",
        choices=("diffusion", "flow"),
    )  # fmt: skip
    prediction: str = option(
        "v_prediction", "diffusion: what the UNet predicts", choices=("v_prediction", "epsilon")
    )
    noise_sampling: str = option(
        "lognormal", "training noise levels: EDM log-normal (flow: logit-normal) or uniform",
        choices=("lognormal", "uniform"),
    )  # fmt: skip
    p_mean: float = option(-1.2, "lognormal: mean of ln(sigma/alpha)")
    p_std: float = option(1.2, "lognormal: standard deviation of ln(sigma/alpha)")
    lr: float = option(1e-3, "Adam learning rate (after a linear warm-up)")
    warmup: int = option(200, "warm-up steps")
    lr_decay: str = option(
        "cosine", "after the warm-up: cosine decay to 0 at --iterations, or none",
        choices=("cosine", "none"),
    )  # fmt: skip
    ema_decay: float = option(0.999, "EMA decay of the saved weights")
    save_dtype: str = option(
        "float32", "dtype of the saved model weights (float16 halves the file; loads as float32)",
        choices=("float32", "float16"),
    )  # fmt: skip
    seed: int = option(0, "seed of the initialisation, batches and noise")
    save_every: int = option(500, "steps between checkpoints")
    snapshot_every: int | None = option(
        None, "also keep the EMA model at every multiple of this step (OUT/snapshots/step-N)"
    )
    max_minutes: float | None = option(None, "stop (and save) after this much wall time")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    resume: bool = option(False, "continue from OUT/checkpoint.pt")

    def validate(self) -> None:
        check_output(self.out, "folder")
        require(len(self.widths) >= 2, "channels", "give at least two comma-separated widths")
        require(all(w % 8 == 0 for w in self.widths), "channels", "widths must be multiples of 8")
        for name in ("iterations", "batch_size", "layers_per_block", "save_every"):
            require(getattr(self, name) >= 1, name, "must be >= 1")
        require(self.lr > 0, "lr", "must be > 0")
        require(0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1)")
        require(self.p_std > 0, "p_std", "must be > 0")
        require(
            self.snapshot_every is None or self.snapshot_every >= 1,
            "snapshot_every",
            "must be >= 1",
        )

    @property
    def widths(self) -> tuple[int, ...]:
        try:
            return tuple(int(w) for w in self.channels.split(","))
        except ValueError:
            return ()


def build_unet(config: DenoiserConfig, sample_size: int, channels: int):
    from diffusers import UNet2DModel

    depth = len(config.widths)
    return UNet2DModel(
        sample_size=sample_size, in_channels=channels, out_channels=channels,
        block_out_channels=config.widths, layers_per_block=config.layers_per_block,
        down_block_types=("DownBlock2D",) * depth, up_block_types=("UpBlock2D",) * depth,
        norm_num_groups=8, add_attention=True,
    )  # fmt: skip


def build_scheduler(prediction: str = "epsilon", objective: str = "diffusion"):
    """The scheduler saved with the model: DDPM's linear β, or a flow-matching one (shift 1)."""
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    if objective == "flow":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        prediction_type=prediction,
    )  # fmt: skip


def training_schedule(config: DenoiserConfig) -> NoiseSchedule:
    """The continuous schedule of the saved scheduler (what the samplers will see)."""
    if config.objective == "flow":
        return FlowSchedule(shift=1.0)
    return DiscreteVPSchedule(build_scheduler(config.prediction).alphas_cumprod)


def learning_rate_factor(config: DenoiserConfig, step: int) -> float:
    """Linear warm-up over ``warmup`` steps, then 1 or a cosine decay reaching 0 at ``iterations``."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    if config.lr_decay == "none":
        return 1.0
    progress = (step - config.warmup) / max(config.iterations - config.warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def noisy_batch(
    config: DenoiserConfig, schedule: NoiseSchedule, x0: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """``(x_t, timestep, target)`` for a batch of clean images ``x0: (B, C, H, W)``.

    The timesteps are the network's (``schedule.timestep``): continuous DDPM timesteps in
    ``[0, N−1]`` (integers for ``uniform``), or ``N·s`` for flow; α and σ come from the same
    continuous schedule the samplers use, so training and sampling agree.
    """
    batch = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator)
    if config.noise_sampling == "uniform" and config.objective == "flow":
        t = torch.rand(batch, generator=generator, dtype=torch.float64)
    elif config.noise_sampling == "uniform":
        timestep = torch.randint(schedule.num_train_timesteps, (batch,), generator=generator)
        t = schedule.t_from_timestep(timestep.double())
    else:
        edm_sigma = (config.p_mean + config.p_std * torch.randn(batch, generator=generator)).exp()
        t = schedule.t_from_edm_sigma(edm_sigma.double()).clamp(schedule.t_min, 1.0)
    alpha = schedule.alpha(t).float().view(-1, 1, 1, 1)
    sigma = schedule.sigma(t).float().view(-1, 1, 1, 1)
    if config.objective == "flow":
        target = noise - x0
    elif config.prediction == "epsilon":
        target = noise
    else:
        target = alpha * noise - sigma * x0
    return alpha * x0 + sigma * noise, schedule.timestep(t).float(), target


def train_denoiser(config: DenoiserConfig, progress: bool = True) -> Path:
    """Train and save (the output folder locked); returns the pipeline folder ``OUT/model``."""
    with folder_lock(config.out) as out:
        if not config.resume:
            clear_earlier_run(out)
        return _train(config, out, progress)


def _train(config: DenoiserConfig, out: Path, progress: bool) -> Path:
    from diffusers import DDPMPipeline

    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    images = load_dataset(config.dataset).images
    unet = build_unet(config, images.shape[-1], images.shape[1]).to(device)
    scheduler = build_scheduler(config.prediction, config.objective)
    schedule = training_schedule(config)
    optimizer = torch.optim.Adam(unet.parameters(), lr=config.lr)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate_factor(config, s))
    ema = EMA(unet.parameters(), config.ema_decay)
    generator = torch.Generator().manual_seed(config.seed)
    step, history = 0, []
    if config.resume:
        state = load_checkpoint_file(out / "checkpoint.pt", map_location=device)
        may_change = {
            "resume",
            "out",
            "device",
            "save_every",
            "snapshot_every",
            "max_minutes",
            "save_dtype",
        }
        if config.lr_decay == "none":  # a cosine schedule is fixed by its length
            may_change.add("iterations")
        check_resumed_config(
            state.get("config", {}),
            dataclasses.asdict(config),
            out / "checkpoint.pt",
            frozenset(may_change),
        )
        unet.load_state_dict(state["unet"])
        optimizer.load_state_dict(state["optimizer"])
        warmup.load_state_dict(state["lr_schedule"])
        ema.load_state_dict(state["ema"])
        generator.set_state(state["generator"])
        step, history = state["step"], state["history"]

    def save_ema_pipeline(folder: Path) -> None:
        saved = copy.deepcopy(unet)
        ema.copy_to(saved.parameters())
        for param in saved.parameters():  # (diffusers' own .to(dtype) warns about nothing here)
            param.data = param.data.to(getattr(torch, config.save_dtype))
        write_files(folder, DDPMPipeline(unet=saved, scheduler=scheduler).save_pretrained)

    def save() -> Path:
        save_checkpoint_file(out / "checkpoint.pt", {
            "unet": unet.state_dict(), "optimizer": optimizer.state_dict(), "lr_schedule": warmup.state_dict(),
            "ema": ema.state_dict(), "generator": generator.get_state(), "step": step, "history": history,
            "config": dataclasses.asdict(config),
        })  # fmt: skip
        save_ema_pipeline(out / "model")
        write_json(out / "training.json", {
            "config": dataclasses.asdict(config), "steps": step, "parameters": sum(p.numel() for p in unet.parameters()),
            "seconds": history[-1]["seconds"] if history else 0.0, "loss_every_100": history, "run": run_metadata(),
        })  # fmt: skip
        return out / "model"

    start, running = time.perf_counter() - (history[-1]["seconds"] if history else 0.0), 0.0
    unet.train()
    bar = tqdm(
        total=config.iterations, initial=step, desc="train model", unit="step", disable=not progress
    )
    while step < config.iterations:
        idx = torch.randint(len(images), (config.batch_size,), generator=generator)
        x_t, timestep, target = noisy_batch(config, schedule, images[idx], generator)
        output = unet(x_t.to(device), timestep.to(device)).sample
        loss = (output - target.to(device)).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        warmup.step()
        ema.update()
        step += 1
        running += loss.item()
        bar.update(1)
        if step % 100 == 0:
            history.append(
                {"step": step, "loss": running / 100, "seconds": time.perf_counter() - start}
            )
            bar.set_postfix(loss=f"{running / 100:.4f}")
            log.debug(json.dumps(history[-1]))
            running = 0.0
        out_of_time = (
            config.max_minutes is not None and time.perf_counter() - start > 60 * config.max_minutes
        )
        if step % config.save_every == 0 or step == config.iterations or out_of_time:
            save()
        if config.snapshot_every and step % config.snapshot_every == 0:
            save_ema_pipeline(out / "snapshots" / f"step-{step:06d}")
        if out_of_time:
            log.warning("stopping at step %d: --max-minutes %s reached", step, config.max_minutes)
            break
    bar.close()
    return save()
