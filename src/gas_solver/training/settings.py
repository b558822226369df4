"""The settings of a GS/GAS training run (:class:`TrainSettings`, the flags of ``gas-solver train``)
and the rules on them: which solver parameters each ``--learn`` choice trains, and what a resumed run
may change."""

from __future__ import annotations

import dataclasses

from ..config import option, require
from ..models.base import COMPUTE_DTYPES
from ..outputs import check_output
from ..schedules import GRID_KINDS
from .discriminators import CHOICES as DISCRIMINATOR_CHOICES
from .discriminators import discriminator_help
from .feature_distance import MODEL_FEATURES
from .losses import DISTILLATION_LOSSES, TEXTURE_WEIGHT
from .start import THEORIES

LOSSES = ("gs", "gas")
AUTO_DISTANCE = "auto"
DISTANCES = [AUTO_DISTANCE, *sorted(DISTILLATION_LOSSES), MODEL_FEATURES]
"""``--distillation``: the model's default (:func:`~.losses.default_distance`), the per-sample
losses, and the distance in the model's own features."""
LR_SCHEDULES = ("constant", "cosine")
MAX_GS_NFE = 100
"""Most model calls of a learned solver: it has ``nfe·(nfe+1)`` coefficients, and the paper's
range is 4-10 calls."""


LEARNED = {
    "all": ("mu_logit", "t_couple", "a_hat", "c_hat"),
    "timesteps": ("mu_logit",),  # the grid alone: DPM-Solver++(3M) on learned times (LD3-like)
    "no-offsets": ("mu_logit", "a_hat", "c_hat"),  # ξ stays 0: the network sees the grid times
    "no-corrections": ("mu_logit", "t_couple"),  # â, ĉ stay 0: DPM-Solver++(3M) coefficients
}
"""``--learn``: the :class:`GeneralizedSolver` parameters each choice trains."""

R3GAN_BETAS = {"disc_beta1": 0.0, "disc_beta2": 0.99}
"""The discriminator's Adam betas as R3GAN trains it (the paper's defaults are (0.9, 0.999)): the
GAS recipe of ``demo``, ``sweep`` and ``benchmarks/protocol.py`` on the bundled model."""
GAS_FINE_TUNE = {"lr": 1e-3, "lr_decay": "constant"}
"""The solver's optimizer when ``demo`` and ``sweep`` fine-tune a trained GS into a GAS: the
paper's constant 1e-3. At ``train``'s default 2e-3 with the cosine decay the GAS ended further
from the teacher than the GS it started from in 3 runs of 3 on ``mnist32`` (NFE 4, two seeds and
the demo), at 1e-3 constant level with it or closer (``docs/BENCHMARKS.md``)."""


@dataclasses.dataclass
class TrainSettings:
    """Everything a GS/GAS training run needs (the flags of ``gas-solver train``); defaults are
    the paper's EDM settings (§3.2–3.3).

    ``teacher`` and ``model`` name the teacher set and the model the trainer is given; like every
    other setting they are recorded (``config.yaml``, the checkpoint, the solver's metadata), so a
    resumed run on other ones is refused.
    """

    teacher: str = option("", "teacher set folder (made by `gas-solver teacher`)")
    out: str = option("runs/train", "output folder: solver, checkpoints, logs, pictures")
    model: str | None = option(None, "model name or path (default: the teacher set's model)")
    nfe: int = option(4, "number of model calls of the learned solver")
    loss: str = option("gs", "gs (distillation) or gas (+ adversarial)", choices=LOSSES)
    distillation: str = option(
        AUTO_DISTANCE,
        "per-sample distillation distance (auto: l1-texture for pixel models with 1- or "
        "3-channel images, l1 for latent models and other samples; l1-grad: L1 plus L1 of the "
        "error's pixel-to-pixel differences, which charges speckle more; l1-texture: L1 plus "
        "TEXTURE_WEIGHT times the difference in the roughness of the teacher's dark areas, "
        "images in [-1, 1]; model-features: LPIPS-style in the frozen diffusers UNet's own "
        "encoder features)",
        choices=DISTANCES,
    )
    texture_weight: float = option(
        TEXTURE_WEIGHT,
        "l1-texture: weight of the texture term (higher: smoother dark areas and a better data "
        "FID on mnist32, at some L1 to the teacher)",
    )
    init_solver: str = option(
        "auto",
        "where the GS starts: auto (the classic solver with the lowest distillation loss on "
        "held-apart teacher pairs, on INIT_GRID or every grid kind), dpmpp3m (the paper's: "
        "DPM-Solver++(3M) on INIT_GRID, default uniform), a classic solver, e.g. "
        "'unipc:order=3,grid=uniform' (NFE: --nfe), or a trained solver (a solver.safetensors or "
        "its run folder, same model and NFE), e.g. a GAS fine-tuning a GS",
    )
    init_grid: str | None = option(
        None, "grid kind of the start (auto: the only grid tried)", choices=list(GRID_KINDS)
    )
    theory_solver: str = option(
        "start",
        "the theory the corrections are added to as the grid moves: start = the start solver's "
        "own coefficients, dpmpp3m = DPM-Solver++(3M)'s (the paper's)",
        choices=list(THEORIES),
    )
    init_pairs: int = option(
        256, "auto: validation pairs (or training pairs without any) that rank the candidates"
    )
    learn: str = option(
        "all", "which solver parameters train (ablations; timesteps = an LD3-style baseline)",
        choices=list(LEARNED),
    )  # fmt: skip
    theory: bool = option(
        True,
        "coefficients as corrections on the theory (--theory-solver) at the current timesteps "
        "(the paper's theoretical guidance); --no-theory: at the initial grid, frozen (ablation)",
    )
    t_eps: float | None = option(None, "last time of the student grid (default: the schedule's)")
    iterations: int = option(10000, "training iterations")
    batch_size: int = option(24, "teacher pairs per iteration")
    lr: float = option(
        2e-3,
        "Adam learning rate (with the cosine decay: on mnist32 at NFE 4 and 6, two seeds each, "
        "4-7 %% closer to the teacher than the paper's 1e-3 constant, which configs/paper keeps)",
    )
    lr_times: float | None = option(
        None, "learning rate of the timestep logits and the offsets (default: --lr)"
    )
    lr_decay: str = option(
        "cosine",
        "learning-rate schedule over --iterations: cosine (to 0 at the last iteration), or "
        "constant (the paper's)",
        choices=list(LR_SCHEDULES),
    )
    grad_clip: float = option(1.0, "gradient-norm clip on the solver parameters (0 = off)")
    ema_decay: float = option(0.999, "EMA decay (with warm-up (1+n)/(10+n))")
    train_size: int = option(1400, "train on the first TRAIN_SIZE teacher pairs")
    val_size: int = option(1000, "validate on the last VAL_SIZE teacher pairs")
    val_every: int = option(500, "iterations between validations (0 = only at the end)")
    checkpoint_every: int = option(500, "iterations between checkpoints")
    snapshot_every: int = option(
        0, "iterations between EMA solver snapshots in OUT/snapshots/iter-NNNNNN/ (0 = none)"
    )
    log_every: int = option(10, "iterations between log lines in metrics.jsonl")
    seed: int = option(42, "seed of the data order")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    dtype: str = option(
        "float32",
        "the network's calls in this dtype (autocast; float16 adds a gradient scaler); the "
        "solver, its EMA and the losses stay float32/float64. Must be the teacher set's",
        choices=list(COMPUTE_DTYPES),
    )
    allow_dtype_mismatch: bool = option(
        False, "train on a teacher set made with the network in another --dtype (default: refuse)"
    )
    compile: bool = option(
        False, "torch.compile the network (where torch cannot: a warning, and it runs uncompiled)"
    )
    grad_checkpoint: bool = option(False, "recompute each model call in backward (flat memory)")
    resume: bool = option(False, "continue from OUT/checkpoint.pt")
    adv_weight: float = option(
        1.0, "GAS: weight w of the adversarial term (paper: 0.1 on CIFAR-10, 1.0 elsewhere)"
    )
    disc_lr: float = option(1e-5, "GAS: discriminator Adam learning rate")
    disc_beta1: float = option(
        0.9, "GAS: discriminator Adam beta1 (paper 0.9; R3GAN trains with 0)"
    )
    disc_beta2: float = option(0.999, "GAS: discriminator Adam beta2 (paper 0.999; R3GAN 0.9-0.99)")
    disc_warmup: int = option(
        0, "GAS: discriminator-only steps (teacher targets vs the initial solver) before training"
    )
    r1_gamma: float = option(0.2, "GAS: gamma of the penalties gamma/2*(R1 + R2)")
    disc_preset: str = option(
        "auto",
        f"GAS: discriminator (training/discriminators.py): {discriminator_help()}",
        choices=DISCRIMINATOR_CHOICES,
    )
    disc_checkpoint: str | None = option(
        None,
        "GAS: start the discriminator from this file (.safetensors, a GAS checkpoint.pt, or an "
        "R3GAN snapshot .pkl such as network-snapshot-final.pkl of R3GAN-CIFAR10)",
    )

    def validate(self) -> None:
        require(bool(self.teacher), "teacher", "a teacher set folder is required")
        check_output(self.out, "folder")
        require(
            1 <= self.nfe <= MAX_GS_NFE, "nfe", f"must be from 1 to {MAX_GS_NFE}, got {self.nfe}"
        )
        require(self.iterations >= 0, "iterations", f"must be >= 0, got {self.iterations}")
        require(self.init_pairs >= 1, "init_pairs", f"must be >= 1, got {self.init_pairs}")
        require(
            self.theory_solver in THEORIES,
            "theory_solver",
            f"one of {list(THEORIES)}, got {self.theory_solver!r}",
        )
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(
            self.lr_times is None or self.lr_times > 0,
            "lr_times",
            f"must be > 0, got {self.lr_times}",
        )
        require(
            self.lr_decay in LR_SCHEDULES,
            "lr_decay",
            f"one of {list(LR_SCHEDULES)}, got {self.lr_decay!r}",
        )
        require(self.grad_clip >= 0, "grad_clip", f"must be >= 0, got {self.grad_clip}")
        require(0 <= self.ema_decay < 1, "ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        require(self.train_size >= 1, "train_size", f"must be >= 1, got {self.train_size}")
        require(self.val_size >= 0, "val_size", f"must be >= 0, got {self.val_size}")
        for name in ("val_every", "checkpoint_every", "snapshot_every", "log_every"):
            require(getattr(self, name) >= 0, name, "must be >= 0")
        require(self.t_eps is None or 0 < self.t_eps < 1, "t_eps", "must be in (0, 1)")
        require(
            self.loss in LOSSES,
            "loss",
            f"one of {list(LOSSES)}, got {self.loss!r}"
            + (
                f" (the distillation distance is now `distillation: {self.loss}`)"
                if self.loss in DISTILLATION_LOSSES
                else ""
            ),
        )
        require(
            self.distillation in DISTANCES,
            "distillation",
            f"unknown distance {self.distillation!r}; known: {DISTANCES}",
        )
        require(
            self.texture_weight >= 0, "texture_weight", f"must be >= 0, got {self.texture_weight}"
        )
        require(self.adv_weight >= 0, "adv_weight", f"must be >= 0, got {self.adv_weight}")
        require(self.disc_lr > 0, "disc_lr", f"must be > 0, got {self.disc_lr}")
        require(self.r1_gamma >= 0, "r1_gamma", f"must be >= 0, got {self.r1_gamma}")
        for name in ("disc_beta1", "disc_beta2"):
            require(
                0 <= getattr(self, name) < 1, name, f"must be in [0, 1), got {getattr(self, name)}"
            )
        require(self.disc_warmup >= 0, "disc_warmup", f"must be >= 0, got {self.disc_warmup}")
        require(
            self.disc_preset in DISCRIMINATOR_CHOICES,
            "disc_preset",
            f"one of {list(DISCRIMINATOR_CHOICES)}, got {self.disc_preset!r}",
        )

    @property
    def loss_label(self) -> str:
        """``GS`` or ``GAS``, for labels."""
        return self.loss.upper()


RESUME_MAY_CHANGE = frozenset(
    {
        "iterations",
        "resume",
        "out",
        "device",
        "log_every",
        "val_every",
        "checkpoint_every",
        "snapshot_every",
        "grad_checkpoint",
        "compile",
        "allow_dtype_mismatch",
    }
)
"""Settings a resumed run may change; every other one must be the checkpoint's (``dtype``
included: a checkpoint that records none was trained in float32)."""
RECORDED_LATER = {"dtype": "float32"}
"""Settings that checkpoints made before they existed do not record, with the value those runs
had (what a resumed run is checked against)."""
