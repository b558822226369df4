"""Training a Generalized Solver by distillation from a teacher set (arXiv 2510.17699 §3.2–3.3).

Two methods share this loop: **GS** (``loss: gs``) minimises the per-sample distillation distance
to the teacher; **GAS** (``loss: gas``) adds ``w·adversarial`` per sample, with one step of a
discriminator per iteration before the solver's step (:mod:`.adversarial`; the discriminators by
name: :mod:`.discriminators`).

One Adam over all solver parameters (timestep logits θ, coefficient corrections φ, offsets ξ),
gradient-norm clipping (solver only), an EMA of the parameters with warm-up (the EMA weights are
what is validated, saved and sampled with). The frozen model is differentiated through, never
updated.

Latent models (LDM, SD) are trained on latents throughout, as in the paper (§3.2 and eq. 10–11): the
distillation distance, the validation L1/L2 and the GAS discriminator's reals (teacher targets)
and fakes are all latents ``(C, H, W)``, e.g. 4×64×64 for SD. Only the validation pictures
(``val/iter_*.png``: teacher and EMA student on the first validation items) are decoded images.

Data order is a pure function of (seed, iteration): sample position ``p`` of the endless stream is
``perm(p // n)[p % n]`` with ``perm(e)`` a seeded permutation of the ``n`` training items. A resumed
run therefore needs no data-loader state and continues bit-exactly. GAS draws the fakes' fresh
noise from its own ``torch.Generator``, whose state is checkpointed with the discriminator and its
optimizer.

Under torchrun (:mod:`gas_solver.distributed`) ``batch_size`` is the global batch: rank ``r`` of
``K`` takes the contiguous slice ``[r·B/K, (r+1)·B/K)`` of each iteration's indices (and of the
GAS fakes' fresh noise, drawn for the whole batch), and the solver's and the discriminator's
gradients are averaged over ranks before clipping and Adam. Every loss term is a per-sample mean,
so K processes step like one with the whole batch; every rank holds the same parameters, EMA and
generators, and rank 0 alone writes logs, pictures, checkpoints and the solver. A checkpoint holds
only global state, so a run resumes with any number of processes that divides the batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor
from tqdm.auto import tqdm

from ..data.teacher_format import short
from ..data.teacher_set import TeacherSet
from ..distributed import (
    all_mean,
    all_sum,
    average_gradients,
    is_main,
    local_slice,
    main_lock,
    mean_stats,
    owns,
    per_rank,
    show_progress,
)
from ..errors import CheckpointMismatchError, GasSolverError
from ..images import makes_images, to_images
from ..models.base import DiffusionModel
from ..outputs import (
    append_line,
    atomic_write,
    clear_earlier_run,
    json_safe,
    record_output,
    write_json,
)
from ..runtime import (
    check_resumed_config,
    load_checkpoint_file,
    resolve_device,
    run_metadata,
    save_checkpoint_file,
)
from ..schedules import GRID_KINDS
from ..solvers.generalized import SOLVER_FILE, GeneralizedSolver
from ..solvers.spec import SolverSpec
from ..solvers.spec_text import parse_solver_spec
from ..visualize import save_comparison_grid, save_scatter
from .adversarial import Adversary, NonFiniteLossError
from .discriminators import make_discriminator
from .ema import EMA
from .feature_distance import MODEL_FEATURES, ModelFeatureDistance
from .losses import DISTILLATION_LOSSES, default_distance, get_loss
from .settings import (
    AUTO_DISTANCE,
    LEARNED,
    RECORDED_LATER,
    RESUME_MAY_CHANGE,
    TrainSettings,
)
from .start import (
    AUTO,
    PAPER,
    Start,
    candidate_specs,
    choose_classic,
    classic_start,
    parse_start,
    trained_start,
)

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
TIME_PARAMETERS = ("mu_logit", "t_couple")
"""The solver parameters that ``--lr-times`` sets the learning rate of: where it calls the model."""


class Trainer:
    """Owns the solver, its optimizer and EMA (GAS: the :class:`Adversary`), and the loop; see
    :func:`train`."""

    def __init__(
        self,
        config: TrainSettings,
        model: DiffusionModel,
        teacher: TeacherSet,
        progress: bool = True,
    ) -> None:
        if config.distillation == AUTO_DISTANCE:  # recorded as what it resolved to
            distance = default_distance(model.is_latent, model.sample_shape)
            config = dataclasses.replace(config, distillation=distance)
        self.config = config
        self.progress = progress
        self.out = Path(config.out)
        self.device = resolve_device(config.device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        model.set_precision(config.dtype)
        if config.compile:
            model.compile_network()
        self.teacher = teacher
        teacher.check_model(model)
        teacher.check_compute_dtype(config.dtype, allow=config.allow_dtype_mismatch)
        # float16: the loss scaled before it backpropagates through the network's calls (their
        # gradients would underflow in float16), unscaled before clipping; bfloat16 needs none
        self.scaler = torch.amp.GradScaler(self.device.type) if config.dtype == "float16" else None
        self.train_idx, self.val_idx = teacher.split(config.train_size, config.val_size)
        per_rank(config.batch_size)  # torchrun: the global batch must split evenly
        self.loss_fn = (
            ModelFeatureDistance(self.model)
            if config.distillation == MODEL_FEATURES
            else get_loss(config.distillation, config.texture_weight)
        )
        self.adversary: Adversary | None = None
        if config.loss == "gas":  # checked against the data before anything is trained
            disc = make_discriminator(config, model)
            betas = (config.disc_beta1, config.disc_beta2)
            self.adversary = Adversary(disc.to(self.device), config.disc_lr, config.r1_gamma, betas)
            # fresh noise of the fakes: its own generator, checkpointed (bit-exact resume)
            self.fake_noise = torch.Generator().manual_seed(config.seed * 1_000_003 + 777_767)
        self.noise, self.target, self.cond = teacher.noise, teacher.target, teacher.cond
        self.start = self._start()
        self.solver = self.start.solver.to(self.device)
        for name, param in self.solver.named_parameters():  # the others keep their initial value
            param.requires_grad_(name in LEARNED[config.learn])
        times = [p for n, p in self.solver.named_parameters() if n in TIME_PARAMETERS]
        coefficients = [p for n, p in self.solver.named_parameters() if n not in TIME_PARAMETERS]
        self.optimizer = torch.optim.Adam(
            [
                {"params": times, "lr": config.lr if config.lr_times is None else config.lr_times},
                {"params": coefficients, "lr": config.lr},
            ],
            betas=(0.9, 0.999),
        )
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.ema = EMA(self.solver.parameters(), config.ema_decay)
        self.iteration = 0
        self.initial = {name: p.detach().clone() for name, p in self.solver.named_parameters()}
        self.initial_validation: dict[str, float] = {}
        self.last_validation: dict[str, float] = {}
        self._writer = None

    def _start(self) -> Start:
        """The initial solver of ``--init-solver`` (see :mod:`.start`); a resumed ``auto`` run
        takes the choice its checkpoint recorded instead of ranking the candidates again."""
        config, schedule = self.config, self.model.schedule
        start = parse_start(config.init_solver, config.nfe, config.t_eps)
        if start == AUTO and config.resume and (self.out / CHECKPOINT).is_file():
            record = load_checkpoint_file(self.out / CHECKPOINT).get("start")
            if record:
                spec = parse_solver_spec(record["solver"])
                solver = classic_start(spec, self.model, config.theory_solver, config.theory)
                return Start(
                    solver,
                    record["solver"],
                    record.get("candidates", {}),
                    record.get("screened", {}),
                )
        if isinstance(start, SolverSpec):  # a spec, not a named start (str): the GS is made from it
            return Start(classic_start(start, self.model, config.theory_solver, config.theory),
                         start.to_string())  # fmt: skip
        if start == AUTO:
            return self._best_classic()
        if start == PAPER:
            solver = GeneralizedSolver(
                config.nfe, schedule, t_eps=config.t_eps, init_grid=config.init_grid or "uniform",
                theory=config.theory,
            )  # fmt: skip
            return Start(solver, f"{PAPER}:grid={solver.init_grid}")
        return Start(
            trained_start(start, self.model, config.nfe, config.t_eps, config.theory), start
        )

    def _best_classic(self) -> Start:
        """``auto``: the candidate classic solvers on the first ``init_pairs`` validation pairs
        (training pairs if there is no validation split); the lowest distillation loss wins."""
        config = self.config
        pairs = (self.val_idx if len(self.val_idx) else self.train_idx)[: config.init_pairs]
        grids = [config.init_grid] if config.init_grid else list(GRID_KINDS)
        specs = candidate_specs(config.nfe, grids, config.t_eps)
        noise, target, cond = self.batch(pairs)
        best, losses, screened = choose_classic(
            self.model, specs, noise, target, cond, self.loss_fn, self.progress
        )
        log.info("init_solver auto: %s (loss %.4g on %d pairs)", best.label, losses[best.label],
                 len(pairs))  # fmt: skip
        solver = classic_start(best, self.model, config.theory_solver, config.theory)
        return Start(solver, best.label, losses, screened)

    # -- data ---------------------------------------------------------------------------------
    def batch_indices(self, iteration: int) -> Tensor:
        """Teacher indices of one iteration's batch (stateless, see the module docstring)."""
        n, size = len(self.train_idx), self.config.batch_size
        positions = range(iteration * size, (iteration + 1) * size)
        epochs = {p // n for p in positions}
        perms = {
            e: torch.randperm(
                n, generator=torch.Generator().manual_seed(self.config.seed * 1_000_003 + e)
            )
            for e in epochs
        }
        return self.train_idx[torch.stack([perms[p // n][p % n] for p in positions])]

    def batch(self, indices: Tensor) -> tuple[Tensor, Tensor, Any]:
        """Noise, target and condition (none, a tensor, or a dict of tensors) of ``indices``."""
        cond = self.cond
        if isinstance(cond, dict):
            cond = {key: value[indices].to(self.device) for key, value in cond.items()}
        elif cond is not None:
            cond = cond[indices].to(self.device)
        return self.noise[indices].to(self.device), self.target[indices].to(self.device), cond

    # -- steps --------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        try:
            return self._train_step()
        except NonFiniteLossError as err:
            path = self.out / CHECKPOINT
            last = (
                f"the last good checkpoint is {path} (resume it with other settings in a new "
                "run, or lower --lr / --disc-lr)"
                if path.is_file()
                else "no checkpoint was written yet (lower --lr / --disc-lr)"
            )
            raise GasSolverError(
                f"{err} at iteration {self.iteration}; training stopped: {last}, or check the "
                "teacher set"
            ) from None

    def _train_step(self) -> dict[str, float]:
        noise, target, cond = self.batch(local_slice(self.batch_indices(self.iteration)))
        stats: dict[str, float] = {}
        if self.adversary is not None:
            stats.update(self._discriminator_step(noise, target, cond))
        student = self.solver(self.model, noise, cond, checkpoint=self.config.grad_checkpoint)
        per_sample = self.loss_fn(student, target)
        if self.adversary is not None:
            distillation = per_sample
            adversarial = self.adversary.generator_loss(student, target)
            per_sample = self.config.adv_weight * adversarial.to(per_sample.dtype) + distillation
            stats["distillation"] = distillation.mean().item()
            stats["adversarial"] = adversarial.mean().item()
        loss = per_sample.mean()
        if not torch.isfinite(all_mean(loss)):  # torchrun: every rank stops, or none
            raise NonFiniteLossError("non-finite loss")
        self.optimizer.zero_grad(set_to_none=True)
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        average_gradients(self.solver.parameters())  # torchrun: the global batch's gradient
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        clip = self.config.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.solver.parameters(), clip if clip > 0 else math.inf
        )
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * self._lr_factor()
        if self.scaler is None:
            self.optimizer.step()
        else:  # a step whose gradients overflowed is skipped, and the scale lowered
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.ema.update()
        self.iteration += 1
        return mean_stats({"loss": loss.item(), "grad_norm": float(grad_norm), **stats})

    def _lr_factor(self) -> float:
        """The schedule's factor on the learning rates at this iteration (a pure function of
        it, so a resumed run steps as an uninterrupted one): 1, or cosine
        ``½(1 + cos(π·i/I))`` over ``I = --iterations``."""
        if self.config.lr_decay == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * self.iteration / max(self.config.iterations, 1)))

    def _discriminator_step(self, noise: Tensor, target: Tensor, cond: Any) -> dict[str, float]:
        """Fakes from fresh noise (same conditions, no gradient) against the batch's targets."""
        assert self.adversary is not None
        shape = (self.config.batch_size, *noise.shape[1:])  # drawn for the global batch
        fresh = local_slice(torch.randn(shape, generator=self.fake_noise, dtype=noise.dtype))
        with torch.no_grad():
            fake = self.solver(self.model, fresh.to(self.device), cond)
        return self.adversary.discriminator_step(target, fake)

    def warm_up_discriminator(self, progress: bool = True) -> None:
        """GAS: ``disc_warmup`` discriminator steps before the solver sees the adversarial term,
        on the batches of iterations 0, 1, … and fakes of the initial solver, so the first
        adversarial gradients come from a discriminator that already tells the two apart."""
        if self.adversary is None or not self.config.disc_warmup:
            return
        warm_up = range(self.config.disc_warmup)
        for step in tqdm(warm_up, desc="warm up D", disable=not show_progress(progress)):
            noise, target, cond = self.batch(local_slice(self.batch_indices(step)))
            try:
                stats = mean_stats(self._discriminator_step(noise, target, cond))
            except NonFiniteLossError as err:
                raise GasSolverError(f"{err} in discriminator warm-up step {step}") from None
            if self.config.log_every and (step + 1) % self.config.log_every == 0:
                self.log({"disc_warmup": step + 1, **stats})

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[GeneralizedSolver]:
        """Temporarily load the EMA weights into the solver."""
        raw = [p.detach().clone() for p in self.solver.parameters()]
        self.ema.copy_to(self.solver.parameters())
        try:
            yield self.solver
        finally:
            with torch.no_grad():
                for p, r in zip(self.solver.parameters(), raw, strict=True):
                    p.copy_(r)

    @torch.no_grad()
    def validate(self, picture: bool = True) -> dict[str, float]:
        """Distillation loss (and L1/L2) of the EMA solver on the validation split.

        Under torchrun each rank takes the chunks ``i mod K = rank`` and the sums are added
        over ranks; rank 0 (chunk 0) draws the picture.
        """
        if len(self.val_idx) == 0:
            return {}
        totals = {"val_loss": 0.0, "val_l1": 0.0, "val_l2": 0.0}
        first = None
        with self.ema_weights() as solver:
            for number, chunk in enumerate(self.val_idx.split(max(self.config.batch_size, 64))):
                if not owns(number):
                    continue
                noise, target, cond = self.batch(chunk)
                student = solver(self.model, noise, cond)
                totals["val_loss"] += self.loss_fn(student, target).sum().item()
                totals["val_l1"] += DISTILLATION_LOSSES["l1"](student, target).sum().item()
                totals["val_l2"] += DISTILLATION_LOSSES["l2"](student, target).sum().item()
                if first is None:
                    label = f"{self.config.loss_label} (EMA) @{self.iteration}"
                    first = {"teacher": target.cpu(), label: student.cpu()}
        if picture and first is not None and is_main():
            self._save_picture(first)
        summed = all_sum(torch.tensor(list(totals.values()), dtype=torch.float64)).tolist()
        return {k: v / len(self.val_idx) for k, v in zip(totals, summed, strict=True)}

    def _save_picture(self, rows: dict[str, Tensor]) -> None:
        """Teacher vs student on the first validation items: image rows (latent models: the
        decoded images), or a 2-D scatter; other sample shapes get no picture."""
        path = self.out / "val" / f"iter_{self.iteration:06d}.png"
        if makes_images(self.model):
            images = {name: to_images(self.model, x[:8]) for name, x in rows.items()}
            save_comparison_grid(images, path)
        elif self.model.sample_shape == (2,):
            save_scatter(rows, path, title=f"validation: teacher vs {self.config.loss_label}")

    # -- persistence --------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Rank 0 writes ``checkpoint.pt`` (everything is the same on every rank) and the solver."""
        if not is_main():
            return
        state = {
            "iteration": self.iteration,
            "loss": self.config.loss,
            "solver": self.solver.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "config": dataclasses.asdict(self.config),
            "start": self.start.record(),
            "initial": self.initial,
            "initial_validation": self.initial_validation,
            "teacher": self.teacher.provenance(),
        }
        if self.adversary is not None:
            state["adversary"] = self.adversary.state_dict()
            state["discriminator"] = state["adversary"]["discriminator"]  # for --disc-checkpoint
            state["fake_noise_rng"] = self.fake_noise.get_state()
        if self.scaler is not None:
            state["grad_scaler"] = self.scaler.state_dict()
        save_checkpoint_file(self.out / CHECKPOINT, state)
        self.save_solver()

    def load_checkpoint(self) -> None:
        path = self.out / CHECKPOINT
        if not path.is_file():
            raise GasSolverError(f"--resume: no checkpoint at {path}")
        state = load_checkpoint_file(path, map_location=self.device)
        loss = state.get("loss", state.get("method", "gs"))  # "method" before 2026-12-07
        if loss != self.config.loss:
            raise CheckpointMismatchError(
                f"--resume: {path} was trained with --loss {loss}, not --loss {self.config.loss}"
            )
        stored = {**RECORDED_LATER, **state.get("config", {})}
        check_resumed_config(stored, dataclasses.asdict(self.config), path, RESUME_MAY_CHANGE)
        self._check_same_teacher(state.get("teacher"), path)
        if self.adversary is not None:
            saved = state["adversary"]["discriminator"]["architecture"]
            if saved != self.adversary.discriminator.arch.to_dict():
                raise CheckpointMismatchError(
                    f"--resume: the discriminator in {path} has another architecture ({saved}) "
                    "than the one configured (disc_preset / disc_checkpoint)"
                )
            self.adversary.load_state_dict(state["adversary"])
            self.fake_noise.set_state(state["fake_noise_rng"].cpu())
        self.solver.load_state_dict(state["solver"])
        self.initial = state.get("initial", self.initial)
        self.initial_validation = state.get("initial_validation", {})
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
        torch.set_rng_state(state["torch_rng"].cpu())
        self.iteration = state["iteration"]
        if self.config.lr_decay == "cosine" and stored.get("iterations") != self.config.iterations:
            log.warning(
                "--resume with --iterations %d (trained for %s): the cosine decay now spans %d "
                "iterations, so the learning rate goes on at %.3g x --lr, not where it was",
                self.config.iterations, stored.get("iterations"), self.config.iterations,
                self._lr_factor(),
            )  # fmt: skip
        if is_main():
            self._truncate_metrics(self.iteration)
        log.info("resumed from %s at iteration %d", path, self.iteration)

    def _check_same_teacher(self, stored: dict[str, Any] | None, path: Path) -> None:
        """Refuse to resume on a teacher set other than the checkpoint's: its record (path,
        solver, seeds, :attr:`~gas_solver.data.teacher_set.TeacherSet.digest`) must match the
        set given now. A checkpoint from before the record resumes unchecked."""
        if not isinstance(stored, dict) or "sha256" not in stored:
            log.info("%s records no teacher set digest; its teacher set is not checked", path)
            return
        given = self.teacher.provenance()
        if stored["sha256"] == given["sha256"]:
            return
        changed = [
            f"{key}: checkpoint {short(stored.get(key))}, now {short(given[key])}"
            for key in ("path", "seeds", "solver")
            if stored.get(key) != given[key]
        ] or [
            f"the shards' contents (sha256 {stored['sha256'][:12]}…, now {given['sha256'][:12]}…)"
        ]
        raise CheckpointMismatchError(
            f"--resume: {path} was trained on another teacher set than {self.teacher.path} "
            f"holds now ({'; '.join(changed)}); resume with the set it was trained on, or "
            "train afresh without --resume"
        )

    def save_solver(
        self, summary: dict[str, Any] | None = None, folder: Path | None = None
    ) -> Path:
        """Write the EMA solver with everything needed to trace and re-run it, into ``folder``
        (default: the run's folder)."""
        with self.ema_weights() as solver:
            metadata = {
                "model": self.model.identity(),
                "model_source": self.model.source,
                # seeds: evaluation must avoid them (compare checks); sha256: which data exactly
                "teacher": self.teacher.provenance(),
                "training": {
                    "iteration": self.iteration,
                    "config": dataclasses.asdict(self.config),
                    **(summary or {}),
                },
                "run": run_metadata(),
            }
            path = (folder or self.out) / SOLVER_FILE
            solver.save(path, metadata)
        return path

    # -- logging ------------------------------------------------------------------------------
    def log(self, record: dict[str, Any]) -> None:
        """One strict-JSON line in ``metrics.jsonl`` (a non-finite value is ``null``); rank 0."""
        if not is_main():
            return
        record = {"iteration": self.iteration, **record}
        append_line(self.out / "metrics.jsonl", json.dumps(json_safe(record), allow_nan=False))
        if self._writer is not None:
            for key, value in record.items():
                if key != "iteration":
                    self._writer.add_scalar(key, value, self.iteration)

    def _truncate_metrics(self, iteration: int) -> None:
        """Keep the log lines up to the resumed checkpoint's iteration.

        A last line without its newline is what a killed run leaves half-written (it is newer
        than any checkpoint) and is dropped; any other line that is not a JSON record with an
        ``iteration`` is refused, naming the file and line.
        """
        path = self.out / "metrics.jsonl"
        if not path.is_file():
            return
        text = path.read_bytes().decode("utf-8", errors="replace")
        lines = text.split("\n")
        keep = []
        for number, line in enumerate(lines[:-1], start=1):  # lines[-1]: after the last newline
            try:
                record = json.loads(line)
                step = record["iteration"]
                if isinstance(step, bool) or not isinstance(step, int):
                    raise TypeError(step)
            except (json.JSONDecodeError, KeyError, TypeError):
                raise GasSolverError(
                    f"--resume: {path} line {number} is not a metrics record; repair or delete "
                    "that file (it is a log: training does not need it)"
                ) from None
            if step <= iteration:
                keep.append(line + "\n")
        atomic_write(path, lambda tmp: tmp.write_text("".join(keep)))

    def _open_tensorboard(self) -> None:
        if not is_main():
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.info("tensorboard is not installed; logging to metrics.jsonl only")
            return
        self._writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=self.iteration + 1)
        record_output(self.out / "tensorboard")  # the events file it opened

    # -- the loop -----------------------------------------------------------------------------
    def run(self, progress: bool = True) -> Path:
        """Train (resuming if asked) with the output folder locked; returns the solver's path."""
        with main_lock(self.out):
            return self._run(progress)

    def _run(self, progress: bool) -> Path:
        cfg = self.config
        began = time.perf_counter()  # snapshots count from here: warm-up and validation included
        if cfg.resume:
            self.load_checkpoint()
        elif is_main():  # a fresh run owns its folder: nothing of an earlier one passes as its own
            clear_earlier_run(self.out)
            text = yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
            atomic_write(self.out / "config.yaml", lambda tmp: tmp.write_text(text))
        self._open_tensorboard()
        if self.iteration == 0:
            self.initial_validation = self.validate(picture=True)
            self.log({"initial": 1, **self.initial_validation})
            self.warm_up_discriminator(progress)
        start, last = time.perf_counter(), self.iteration
        bar = tqdm(
            total=cfg.iterations,
            initial=self.iteration,
            desc=f"train {cfg.loss_label}",
            disable=not show_progress(progress),
            unit="it",
        )
        try:
            while self.iteration < cfg.iterations:
                stats = self.train_step()
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.4g}")
                done = self.iteration == cfg.iterations
                if cfg.log_every and self.iteration % cfg.log_every == 0:
                    its = (self.iteration - last) / max(time.perf_counter() - start, 1e-9)
                    self.log({**stats, "it_per_s": its})
                if done or (cfg.val_every and self.iteration % cfg.val_every == 0):
                    self.last_validation = self.validate()
                    self.log(self.last_validation)
                if done or (cfg.checkpoint_every and self.iteration % cfg.checkpoint_every == 0):
                    self.save_checkpoint()
                if cfg.snapshot_every and self.iteration % cfg.snapshot_every == 0 and is_main():
                    folder = self.out / "snapshots" / f"iter-{self.iteration:06d}"
                    folder.mkdir(parents=True, exist_ok=True)
                    self.save_solver({"seconds": time.perf_counter() - began}, folder)
        finally:
            bar.close()
            if self._writer is not None:
                self._writer.close()
        summary = {
            "start": self.start.record(),
            "distillation": self.config.distillation,
            "initial_validation": self.initial_validation,
            "final_validation": self.last_validation or self.validate(picture=False),
            "seconds": time.perf_counter() - start,
        }
        summary["kept"] = self._keep_the_better(summary)
        path = self.out / SOLVER_FILE
        if is_main():
            write_json(self.out / "summary.json", {**summary, "timesteps": self._ema_timesteps()})
            self.save_solver(summary)
        bad = sorted(k for k, v in summary["final_validation"].items() if not math.isfinite(v))
        if bad:
            raise GasSolverError(
                f"the final validation is not finite ({', '.join(bad)}: null in "
                f"{self.out / 'summary.json'}): the teacher set's validation targets or the "
                f"solver's outputs hold NaN or infinity; check the teacher set before using {path}"
            )
        return path

    def _keep_the_better(self, summary: dict[str, Any]) -> str:
        """No silent regression: if the trained (EMA) GS validates worse than its start, the start
        is what is saved. A GAS is kept as trained (its objective trades some distillation loss
        for the adversarial term; a worse validation is reported). Returns ``trained``, ``start``
        or ``trained (not checked)``."""
        before = self.initial_validation.get("val_loss", math.nan)
        after = summary["final_validation"].get("val_loss", math.nan)
        if not (math.isfinite(before) and math.isfinite(after)):
            return "trained (not checked)"
        if after <= before:
            return "trained"
        if self.adversary is not None:
            log.warning(
                "the GAS validates worse than its start in distillation loss (%.5g > %.5g); kept: "
                "the adversarial term trades fidelity to the teacher for what the discriminator "
                "sees, so compare them by FID",
                after, before,
            )  # fmt: skip
            return "trained"
        log.warning(
            "the trained solver validates worse than its start (%s: loss %.5g > %.5g); keeping "
            "the start. Lower --lr, or train longer with more pairs.",
            self.start.label, after, before,
        )  # fmt: skip
        with torch.no_grad():
            for shadow, (name, _) in zip(
                self.ema.shadow, self.solver.named_parameters(), strict=True
            ):
                shadow.copy_(self.initial[name])
        summary["trained_validation"] = summary["final_validation"]
        summary["final_validation"] = dict(self.initial_validation)
        return "start"

    def _ema_timesteps(self) -> list[float]:
        with self.ema_weights() as solver, torch.no_grad():
            return solver.timesteps().tolist()


def train(
    config: TrainSettings, model: DiffusionModel, teacher: TeacherSet, progress: bool = True
) -> Path:
    """Train a GS or GAS on ``teacher`` for ``model``; returns the path of the saved EMA solver."""
    return Trainer(config, model, teacher, progress).run(progress=progress)
