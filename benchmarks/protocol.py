"""The training protocol of the published mnist32 tables, shared by the benchmarks that retrain it
(``ablations.py``, ``training_cost_curve.py``); ``gas-solver sweep``'s defaults are the same.

GS: batch 16 on teacher pairs 0–999 (validation: the last 100), ``train``'s distance (``auto``:
``l1-texture`` on the bundled models since 2026-12-07; the tables measured before it used L1, which
``--distillation l1`` restores), data-order seed 42, one validation at the end; the start is
``train``'s (``auto``: the best classic solver) unless a script adds :data:`PAPER_START`
(DPM-Solver++(3M) on the logSNR grid, the published tables' start). GAS: from that GS, the
``model-features`` discriminator at learning rate 1e-4 with Adam betas (0, 0.99), 100
discriminator-only warm-up steps, weight 0.3, the solver at lr 1e-3 constant
(:data:`~gas_solver.training.settings.GAS_FINE_TUNE`).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from gas_solver.training.discriminators import FEATURE_PRESET
from gas_solver.training.settings import GAS_FINE_TUNE, R3GAN_BETAS

GS_FLAGS = (
    "--batch-size", "16", "--train-size", "1000", "--val-size", "100",
    "--val-every", "0", "--seed", "42", "--device", "cpu",
)  # fmt: skip
PAPER_START = ("--init-solver", "dpmpp3m", "--init-grid", "logsnr")
"""The start of the published tables before train's default became ``auto``."""
DISCRIMINATOR_FLAGS = (
    "--disc-preset", FEATURE_PRESET, "--disc-lr", "1e-4",
    "--disc-beta1", str(R3GAN_BETAS["disc_beta1"]), "--disc-beta2", str(R3GAN_BETAS["disc_beta2"]),
)  # fmt: skip
ADV_WEIGHT = "0.3"
DISC_WARMUP = 100


def gas_flags(weight: str = ADV_WEIGHT, warmup: int = DISC_WARMUP) -> list[str]:
    """``train`` flags that turn a GS run of the protocol into its GAS fine-tuning."""
    return [
        "--loss", "gas", *DISCRIMINATOR_FLAGS, "--disc-warmup", str(warmup), "--adv-weight", weight,
        "--lr", str(GAS_FINE_TUNE["lr"]), "--lr-decay", GAS_FINE_TUNE["lr_decay"],
    ]  # fmt: skip


def gas_solver(*args: str, launcher: str = "") -> None:
    """Run the command line (under ``launcher``, e.g. ``"torchrun --nproc_per_node=2"``)."""
    prefix = shlex.split(launcher) if launcher else [sys.executable]
    subprocess.run([*prefix, "-m", "gas_solver.cli", *map(str, args)], check=True)


def train_flags(
    teacher: str, nfe: int, iterations: int, out: Path, start: tuple[str, ...] = PAPER_START
) -> list[str]:
    """``train`` flags of the GS protocol for one run (later flags override them); ``start``: the
    published tables' (default) or ``()`` for ``train``'s own."""
    return [
        "train", "--teacher", teacher, "--nfe", str(nfe), "--iterations", str(iterations),
        *GS_FLAGS, *start, "--checkpoint-every", str(iterations), "--out", str(out),
    ]  # fmt: skip


def train_unless_done(
    teacher: str,
    nfe: int,
    iterations: int,
    out: Path,
    *extra: str,
    start: tuple[str, ...] = PAPER_START,
    launcher: str = "",
) -> None:
    """Train one run of the protocol (``extra``: flags on top) into ``out``, unless a finished
    run (its ``summary.json``) is there."""
    if not (out / "summary.json").is_file():
        flags = train_flags(teacher, nfe, iterations, out, start=start)
        gas_solver(*flags, *extra, launcher=launcher)
