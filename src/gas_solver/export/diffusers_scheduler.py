"""A trained Generalized Solver as a diffusers scheduler.

``GeneralizedSolverScheduler`` replaces the scheduler of any diffusers pipeline that calls
``scheduler.set_timesteps`` and ``scheduler.step`` (``DDPMPipeline``, ``StableDiffusionPipeline``,
…) on a model with the discrete DDPM noise schedule the solver was trained on::

    from gas_solver.export import GeneralizedSolverScheduler

    scheduler = GeneralizedSolverScheduler.from_pretrained("exported/gs4")
    scheduler.check_model_schedule(pipe.scheduler)   # refuses another model's schedule
    pipe.scheduler = scheduler
    images = pipe(num_inference_steps=scheduler.config.num_inference_steps).images

(:func:`use_in_pipeline` does the last three lines.) The folder is written by
``gas-solver export SOLVER --format diffusers --out DIR``; its ``scheduler_config.json`` holds the
learned evaluation times, the schedule's α and σ there and on the grid, and the effective history
weights of :mod:`gas_solver.export.table`, with the solver's provenance. The update is the GS's
(paper eq. 12); ``step`` keeps the whole history of states and data predictions.

**FLUX** (``FluxPipeline``): the pipeline calls ``set_timesteps(sigmas=linspace(1, 1/N, N),
device=…, mu=…)`` with no step count, then ``set_begin_index(0)``, and computes ``mu`` from this
scheduler's config (``base_image_seq_len``, ``max_image_seq_len``, ``base_shift``, ``max_shift``),
which holds the trained model's values. The number of sigmas is the step count; the sigmas
themselves must be the pipeline's default (the GS has its own times); ``mu`` must give the shift
the solver was trained at (``e^mu``, the time shift of the trained resolution: another resolution
is refused, naming the trained ``height`` and ``width``). Without ``use_dynamic_shifting``
(FLUX.1-schnell) ``mu`` is ignored, as ``FlowMatchEulerDiscreteScheduler`` ignores it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
from torch import Tensor

from ..models.base import PREDICTION_TYPES, convert_prediction
from ..models.diffusers import scheduler_schedule
from ..models.diffusers_flow import FLOW_SCHEDULERS
from ..models.diffusers_flux import TIME_SHIFT_DEFAULTS, flux_time_shift, shift_of_mu
from ..schedules import FlowSchedule
from .table import SolverTable

log = logging.getLogger(__name__)


class GeneralizedSolverScheduler(SchedulerMixin, ConfigMixin):
    """The Generalized Solver (GS/GAS, arXiv 2510.17699) with its learned parameters, as a
    diffusers scheduler. It makes exactly ``num_inference_steps`` model calls, the count it was
    trained for, and no other.

    Args:
        num_inference_steps: N, the number of model calls (the trained NFE).
        model_timesteps: ``(N,)`` the times the model is called at, in its timestep units
            (``num_train_timesteps·τ − 1``, fractional: the learned offsets ξ move them off the
            training grid).
        alphas: ``(N+1,)`` α at the grid times ``t_0 = 1 … t_N = t_eps``.
        sigmas: ``(N+1,)`` σ at the grid times.
        query_alphas: ``(N,)`` α at the model-call times τ_k (to read the model's output).
        query_sigmas: ``(N,)`` σ at τ_k.
        state_weights: row ``k−1`` holds the k weights of the states ``y_0 … y_{k−1}`` in step k.
        pred_weights: row ``k−1`` holds the k weights of the data predictions ``D_0 … D_{k−1}``.
        prediction_type: what the model predicts: ``epsilon``, ``v_prediction``, ``sample`` or
            ``flow_prediction`` (the velocity ``ε − x₀`` of a flow-matching model).
        num_train_timesteps: the model's training timesteps (its schedule's length).
        schedule: the description of the model's noise schedule the numbers were computed for
            (checked by :meth:`check_model_schedule`).
        guidance_scale: the classifier-free guidance scale the solver was trained with (``None``
            for unconditional models); :func:`use_in_pipeline` warns when another is used.
        provenance: where the solver comes from: model identity, teacher, training summary.
        use_dynamic_shifting: whether the model's schedule is a resolution-dependent time shift
            (FLUX.1-dev); the next five are what ``FluxPipeline`` computes ``mu`` from (the
            trained model's scheduler config, or ``FlowMatchEulerDiscreteScheduler``'s defaults).
        base_image_seq_len, max_image_seq_len, base_shift, max_shift, time_shift_type: as in
            ``FlowMatchEulerDiscreteScheduler``.
        mu: the time shift the solver was trained at (``None``: a fixed shift).
        image_seq_len: image tokens at the trained resolution (FLUX; ``None`` otherwise).
        resolution: ``[height, width]`` in pixels the solver was trained at (FLUX).
    """

    order = 1
    _compatibles: list[str] = []

    @register_to_config
    def __init__(
        self,
        num_inference_steps: int = 1,
        model_timesteps: list[float] | None = None,
        alphas: list[float] | None = None,
        sigmas: list[float] | None = None,
        query_alphas: list[float] | None = None,
        query_sigmas: list[float] | None = None,
        state_weights: list[list[float]] | None = None,
        pred_weights: list[list[float]] | None = None,
        prediction_type: str = "epsilon",
        num_train_timesteps: int = 1000,
        schedule: dict[str, Any] | None = None,
        guidance_scale: float | None = None,
        provenance: dict[str, Any] | None = None,
        use_dynamic_shifting: bool = False,
        base_image_seq_len: int = TIME_SHIFT_DEFAULTS["base_image_seq_len"],
        max_image_seq_len: int = TIME_SHIFT_DEFAULTS["max_image_seq_len"],
        base_shift: float = TIME_SHIFT_DEFAULTS["base_shift"],
        max_shift: float = TIME_SHIFT_DEFAULTS["max_shift"],
        time_shift_type: str = "exponential",
        mu: float | None = None,
        image_seq_len: int | None = None,
        resolution: list[int] | None = None,
    ) -> None:
        n = num_inference_steps
        lengths = {
            "model_timesteps": (model_timesteps, n), "alphas": (alphas, n + 1),
            "sigmas": (sigmas, n + 1), "query_alphas": (query_alphas, n),
            "query_sigmas": (query_sigmas, n), "state_weights": (state_weights, n),
            "pred_weights": (pred_weights, n),
        }  # fmt: skip
        for name, (value, length) in lengths.items():
            if value is None or len(value) != length:
                raise ValueError(
                    f"GeneralizedSolverScheduler: {name} needs {length} entries for "
                    f"num_inference_steps={n}; write the folder with `gas-solver export`"
                )
        for k, (w, v) in enumerate(zip(state_weights, pred_weights, strict=True), start=1):
            if len(w) != k or len(v) != k:
                raise ValueError(f"GeneralizedSolverScheduler: step {k} needs {k} weights each")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}")
        self.init_noise_sigma = 1.0
        self.timesteps = torch.tensor(model_timesteps, dtype=torch.float32)
        self.num_inference_steps = n
        self._history: tuple[list[Tensor], list[Tensor]] = ([], [])
        self._step_index = 0

    @classmethod
    def from_table(
        cls,
        table: SolverTable,
        prediction_type: str,
        guidance_scale: float | None = None,
        model_identity: dict[str, Any] | None = None,
    ) -> GeneralizedSolverScheduler:
        """The scheduler of a :class:`~gas_solver.export.table.SolverTable`.

        ``model_identity`` (default: the table's ``provenance["model"]``, which ``gas-solver
        export`` records) gives a FLUX model's time shift and resolution (its ``time_shift`` and
        ``resolution``), which the scheduler checks ``FluxPipeline``'s ``mu`` against.
        """
        if model_identity is None:
            model_identity = table.provenance.get("model")
        shift = (model_identity or {}).get("time_shift") or {}
        keys = (*TIME_SHIFT_DEFAULTS, "use_dynamic_shifting", "time_shift_type", "mu")
        flux = {key: shift[key] for key in keys if key in shift}
        if shift:
            flux["image_seq_len"] = shift.get("image_seq_len")
            flux["resolution"] = model_identity.get("resolution")
        return cls(
            num_inference_steps=table.nfe, model_timesteps=table.model_timesteps,
            alphas=table.alphas, sigmas=table.sigmas, query_alphas=table.query_alphas,
            query_sigmas=table.query_sigmas, state_weights=table.state_weights,
            pred_weights=table.pred_weights, prediction_type=prediction_type,
            num_train_timesteps=table.schedule.get("num_train_timesteps", 1000),
            schedule=table.schedule, guidance_scale=guidance_scale, provenance=table.provenance,
            **flux,
        )  # fmt: skip

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        mu: float | None = None,
        **_: Any,
    ) -> None:
        """Prepare one sampling run of exactly the trained number of steps.

        ``sigmas`` are accepted as ``FluxPipeline`` passes them, its default
        ``linspace(1, 1/N, N)``: their number is the step count. ``mu`` (``FluxPipeline``,
        SD3-family pipelines with dynamic shifting) must give the trained shift when the solver
        was trained on a resolution-dependent shift, and is ignored otherwise (as
        ``FlowMatchEulerDiscreteScheduler`` does); without ``mu`` (a loop of one's own) nothing
        is checked.

        Raises:
            ValueError: another step count, custom ``timesteps`` or other ``sigmas`` (the learned
                coefficients belong to the learned times and count), or a ``mu`` of another
                resolution (the learned times belong to the trained time shift).
        """
        trained = self.config.num_inference_steps
        custom = ValueError(
            "GeneralizedSolverScheduler: custom timesteps or sigmas cannot be used; the "
            f"solver's {trained} times were learned together with its coefficients"
        )
        if timesteps is not None:
            raise custom
        if sigmas is not None:  # FluxPipeline: its default sigmas, no step count
            if num_inference_steps not in (None, len(sigmas)):
                raise custom
            num_inference_steps = len(sigmas)
        if num_inference_steps != trained:
            raise ValueError(
                f"GeneralizedSolverScheduler: this solver was trained for {trained} steps; call "
                f"the pipeline with num_inference_steps={trained} (got {num_inference_steps}). "
                "Train and export another solver for another count"
            )
        if sigmas is not None:  # the GS has its own times: only the default stands for them
            default = torch.linspace(1.0, 1.0 / trained, trained, dtype=torch.float64)
            given = torch.as_tensor(sigmas, dtype=torch.float64).cpu().flatten()
            if not torch.allclose(given, default, rtol=1e-6, atol=1e-7):
                raise custom
        if mu is not None and self.config.use_dynamic_shifting:
            self._check_mu(float(mu))
        self.timesteps = torch.tensor(
            self.config.model_timesteps, dtype=torch.float32, device=device
        )
        self._history, self._step_index = ([], []), 0

    def _check_mu(self, mu: float) -> None:
        """Refuse a pipeline's ``mu`` whose time shift is not the trained one."""
        cfg = self.config
        shift, trained = shift_of_mu(mu, cfg.time_shift_type), float(cfg.schedule["shift"])
        if math.isclose(shift, trained, rel_tol=1e-6):
            return
        at = "" if cfg.mu is None else f"{cfg.mu:.4f}"
        size, call = "", ""
        if cfg.resolution:
            height, width = cfg.resolution
            size = f" ({height}x{width} pixels)"
            call = f"call the pipeline with height={height}, width={width}, or "
        raise ValueError(
            f"GeneralizedSolverScheduler: the pipeline passes the time shift mu={mu:.4f} (another "
            f"image size), but this solver was trained at mu={at}{size} and its learned "
            f"times belong to that shift; {call}train and export a solver at this image size"
        )

    def set_begin_index(self, begin_index: int = 0) -> None:
        """``FluxPipeline`` calls this with 0; a later start (image-to-image ``strength`` below 1)
        is refused: the solver's steps are one method from the noise to the end."""
        if begin_index != 0:
            raise ValueError(
                f"GeneralizedSolverScheduler: cannot start at step {begin_index}; a GS runs all "
                "of its trained steps from pure noise (use strength=1 or another scheduler)"
            )

    def scale_model_input(self, sample: Tensor, timestep: Any = None) -> Tensor:
        """The model sees the state itself (VP: ``init_noise_sigma = 1``)."""
        return sample

    def step(
        self,
        model_output: Tensor,
        timestep: float | Tensor,
        sample: Tensor,
        return_dict: bool = True,
        **_: Any,
    ) -> SchedulerOutput | tuple[Tensor]:
        """One GS step: ``y_{k+1} = Σ_j W[k][j] y_j + Σ_j V[k][j] D_j`` over the whole history.

        With the model output ``o`` at the call time ``τ_k`` (``α = α(τ_k)``, ``σ = σ(τ_k)``),
        the data prediction there is ``D̂`` (:func:`~gas_solver.models.base.convert_prediction`:
        ``(y_k − σ·o)/α`` for epsilon, ``α·y_k − σ·o`` for v_prediction, ``o`` for sample,
        ``(y_k − σ·o)/(α + σ)`` for flow_prediction), and
        ``D_k = (y_k − σ(t_k)·ε̂)/α(t_k)`` (paper §2.4: the grid time converts), computed as
        ``(1 − σ(t_k)/σ)/α(t_k)·y_k + σ(t_k)α/(σ·α(t_k))·D̂`` (no cancellation at small α).
        """
        k, cfg = self._step_index, self.config
        if k >= cfg.num_inference_steps:
            raise ValueError(
                "GeneralizedSolverScheduler: all steps are done; call set_timesteps to start again"
            )
        expected = cfg.model_timesteps[k]
        if not math.isclose(float(timestep), expected, rel_tol=1e-5, abs_tol=1e-3):
            raise ValueError(
                f"GeneralizedSolverScheduler: step {k} expects timestep {expected:.4f}, got "
                f"{float(timestep):.4f}; use the scheduler's own timesteps, in order"
            )
        y, out = sample.float(), model_output.float()
        a, s = cfg.query_alphas[k], cfg.query_sigmas[k]
        denoised = convert_prediction(out, y, a, s, cfg.prediction_type, "sample")
        states, preds = self._history
        states.append(y)
        alpha_t, sigma_t = cfg.alphas[k], cfg.sigmas[k]
        preds.append((1 - sigma_t / s) / alpha_t * y + sigma_t * a / (s * alpha_t) * denoised)
        w, v = cfg.state_weights[k], cfg.pred_weights[k]
        prev = w[k] * states[k]
        for j in range(k):
            prev = prev + w[j] * states[j]
        for j in range(k + 1):
            prev = prev + v[j] * preds[j]
        self._step_index += 1
        prev = prev.to(sample.dtype)
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def check_model_schedule(self, scheduler: Any) -> None:
        """Raise ``ValueError`` unless ``scheduler`` (the pipeline's own: any DDPM-family diffusers
        scheduler, or a flow-matching one) has the noise schedule and prediction type this solver
        was trained for. A flow scheduler with ``use_dynamic_shifting`` (FLUX) is read at the
        trained resolution: the shift its config gives for the trained number of image tokens."""
        cfg = self.config
        config = dict(scheduler.config)
        if type(scheduler).__name__ in FLOW_SCHEDULERS and config.get("use_dynamic_shifting"):
            if not cfg.use_dynamic_shifting or cfg.image_seq_len is None:
                raise ValueError(
                    "GeneralizedSolverScheduler: the pipeline's scheduler shifts its times with "
                    "the image size (use_dynamic_shifting, FLUX); this solver was trained on a "
                    f"fixed schedule {cfg.schedule}"
                )
            shift = flux_time_shift(config, cfg.image_seq_len)["shift"]
            steps = int(config.get("num_train_timesteps", 1000))
            schedule, prediction = FlowSchedule(shift, steps), "flow_prediction"
        else:
            schedule, prediction = scheduler_schedule(scheduler)
        ours = cfg.schedule or {}
        if not schedule.matches(ours):
            raise ValueError(
                f"GeneralizedSolverScheduler: the pipeline's noise schedule {schedule.to_dict()} "
                f"is not the one this solver was trained for {ours}"
            )
        if prediction != self.config.prediction_type:
            raise ValueError(
                f"GeneralizedSolverScheduler: the pipeline's model predicts {prediction!r}, the "
                f"solver was trained on a model predicting {self.config.prediction_type!r}"
            )


def use_in_pipeline(
    pipe: Any, folder: str | Path, guidance_scale: float | None = None
) -> GeneralizedSolverScheduler:
    """Load an exported solver, check it against ``pipe``'s scheduler, and install it.

    Args:
        pipe: a diffusers pipeline whose current scheduler describes its model's schedule.
        folder: written by ``gas-solver export --format diffusers``.
        guidance_scale: the scale you will call the pipeline with; a warning is logged when it
            differs from the one the solver was trained with.
    """
    scheduler = GeneralizedSolverScheduler.from_pretrained(folder)
    scheduler.check_model_schedule(pipe.scheduler)
    trained = scheduler.config.guidance_scale
    if guidance_scale is not None and trained is not None and guidance_scale != trained:
        log.warning(
            "the solver in %s was trained with guidance scale %s; sampling with %s leaves the "
            "distribution it was trained to match",
            folder,
            trained,
            guidance_scale,
        )
    pipe.scheduler = scheduler
    return scheduler
