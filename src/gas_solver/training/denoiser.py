"""Training a small diffusion model (the bundled default) on a bundled data set.

A diffusers ``UNet2DModel`` learns ε-prediction under a DDPM linear-β schedule (Ho et al. 2020,
β from 1e-4 to 0.02 over 1000 steps) with the simple loss ``E‖ε − ε_θ(√ᾱ_i x₀ + √(1−ᾱ_i) ε, i)‖²``,
i uniform in 0…999. Adam with a linear warm-up, gradient clipping, and an EMA of the weights (the
EMA weights are what is saved). The result is a folder in the diffusers pipeline layout
(``unet/`` + ``scheduler/``), loadable with :func:`gas_solver.models.load_model` like any user model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import option, require
from ..data.datasets import dataset_names, load_dataset
from ..runtime import (
    load_checkpoint_file,
    resolve_device,
    run_metadata,
    save_checkpoint_file,
    write_json,
)
from .ema import EMA

log = logging.getLogger(__name__)


@dataclasses.dataclass
class DenoiserConfig:
    """``gas-solver train-model``: a small ε-prediction UNet on a bundled data set."""

    dataset: str = option("mnist", "bundled data set", choices=dataset_names())
    out: str = option("runs/mnist32", "output folder (model/ holds the diffusers pipeline folder)")
    channels: str = option("32,64,64", "UNet block widths, one per resolution")
    layers_per_block: int = option(1, "ResNet layers per UNet block")
    iterations: int = option(20000, "optimizer steps")
    batch_size: int = option(64, "images per step")
    lr: float = option(1e-3, "Adam learning rate (after a linear warm-up)")
    warmup: int = option(200, "warm-up steps")
    ema_decay: float = option(0.999, "EMA decay of the saved weights")
    seed: int = option(0, "seed of the initialisation, batches and noise")
    save_every: int = option(500, "steps between checkpoints")
    max_minutes: float | None = option(None, "stop (and save) after this much wall time")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    resume: bool = option(False, "continue from OUT/checkpoint.pt")

    def validate(self) -> None:
        require(len(self.widths) >= 2, "channels", "give at least two comma-separated widths")
        require(all(w % 8 == 0 for w in self.widths), "channels", "widths must be multiples of 8")
        for name in ("iterations", "batch_size", "layers_per_block", "save_every"):
            require(getattr(self, name) >= 1, name, "must be >= 1")
        require(self.lr > 0, "lr", "must be > 0")
        require(0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1)")

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


def build_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear"
    )


def train_denoiser(config: DenoiserConfig, progress: bool = True) -> Path:
    """Train and save; returns the pipeline folder ``OUT/model``."""
    from diffusers import DDPMPipeline

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    images = load_dataset(config.dataset).images
    unet = build_unet(config, images.shape[-1], images.shape[1]).to(device)
    scheduler = build_scheduler()
    alphas_cumprod = scheduler.alphas_cumprod.to(device)
    optimizer = torch.optim.Adam(unet.parameters(), lr=config.lr)
    warmup = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(config.warmup, 1))
    )
    ema = EMA(unet.parameters(), config.ema_decay)
    generator = torch.Generator().manual_seed(config.seed)
    step, history = 0, []
    if config.resume:
        state = load_checkpoint_file(out / "checkpoint.pt", map_location=device)
        unet.load_state_dict(state["unet"])
        optimizer.load_state_dict(state["optimizer"])
        warmup.load_state_dict(state["lr_schedule"])
        ema.load_state_dict(state["ema"])
        generator.set_state(state["generator"])
        step, history = state["step"], state["history"]

    def save() -> Path:
        save_checkpoint_file(out / "checkpoint.pt", {
            "unet": unet.state_dict(), "optimizer": optimizer.state_dict(), "lr_schedule": warmup.state_dict(),
            "ema": ema.state_dict(), "generator": generator.get_state(), "step": step, "history": history,
        })  # fmt: skip
        raw = [p.detach().clone() for p in unet.parameters()]
        ema.copy_to(unet.parameters())
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(out / "model")
        with torch.no_grad():
            for p, r in zip(unet.parameters(), raw, strict=True):
                p.copy_(r)
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
        x0 = images[idx].to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        level = torch.randint(1000, (config.batch_size,), generator=generator).to(device)
        a = alphas_cumprod[level].view(-1, 1, 1, 1)
        loss = (unet(a.sqrt() * x0 + (1 - a).sqrt() * noise, level).sample - noise).pow(2).mean()
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
        if out_of_time:
            log.warning("stopping at step %d: --max-minutes %s reached", step, config.max_minutes)
            break
    bar.close()
    return save()
