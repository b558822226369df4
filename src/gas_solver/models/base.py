"""The one model contract every solver uses.

A :class:`DiffusionModel` wraps a frozen network together with its noise schedule. Solvers see
only this contract, in continuous time ``t`` (see :mod:`gas_solver.schedules`):

* ``noise_prediction(x, t, cond)`` → ε̂(x, t),
* ``data_prediction(x, t, cond)`` → x̂₀(x, t) = (x − σ(t) ε̂) / α(t),

whatever the network natively predicts (ε, x₀, v or a flow velocity). :func:`convert_prediction`
is the single place where prediction types are converted. Every network call increments
:attr:`DiffusionModel.nfe`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..schedules import NoiseSchedule

log = logging.getLogger(__name__)

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow_prediction")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
"""What ``--dtype`` offers for the network's calls (:meth:`DiffusionModel.set_precision`)."""
DTYPE_HELP = (
    "the dtype of the network's calls (autocast): float32, bfloat16 (GPUs since Ampere), float16 "
    "(older GPUs); the solvers' arithmetic stays float32/float64"
)
COMPILE_HELP = (
    "torch.compile the network (its first calls compile; where torch cannot, a warning and it "
    "runs uncompiled)"
)
COMPILE_MODE = "default"
"""The ``torch.compile`` mode of :meth:`DiffusionModel.compile_network` (``--compile``). Measured
on the bundled ``mnist32`` UNet on a CPU (README, "Precision and speed"): ``default`` and
``max-autotune-no-cudagraphs`` ran equally fast once compiled and the latter compiled longer;
``reduce-overhead`` (CUDA graphs) is the same as ``default`` on a CPU and keeps static input
buffers on a GPU that the solvers' histories would have to copy."""
TARGETS = ("epsilon", "sample")


def convert_prediction(
    output: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor, source: str, target: str
) -> Tensor:
    """Convert a network output to ε or x₀ at one noise level.

    With ``x = α x₀ + σ ε``: ``ε = (x − α x₀)/σ`` and ``x₀ = (x − σ ε)/α``. Velocities:

    * ``v_prediction`` (Salimans & Ho 2022, VP models, α² + σ² = 1): ``v = α ε − σ x₀``, so
      ``ε = σ x + α v``;
    * ``flow_prediction`` (rectified flow, Liu et al. 2022; diffusers' name): ``v = ε − x₀``, so
      ``x = (α + σ) x₀ + σ v`` and ``x₀ = (x − σ v)/(α + σ)``, ``ε = (x + α v)/(α + σ)``
      (``α + σ = 1`` on a flow schedule: ``x₀ = x − σ v``, finite even at ``α = 0``).

    Args:
        output: the prediction, shape ``(B, ...)``.
        x: the noisy input, shape ``(B, ...)``.
        alpha, sigma: shape ``(B, 1, ..., 1)`` (broadcastable to ``x``).
        source: one of ``PREDICTION_TYPES``; target: ``epsilon`` | ``sample``.
    """
    if source not in PREDICTION_TYPES:
        raise ConfigError(f"prediction type must be one of {PREDICTION_TYPES}, got {source!r}")
    if target not in TARGETS:
        raise ConfigError(f"conversion target must be one of {TARGETS}, got {target!r}")
    if source == target:
        return output
    if source == "flow_prediction":
        if target == "sample":
            return (x - sigma * output) / (alpha + sigma)
        return (x + alpha * output) / (alpha + sigma)
    if source == "v_prediction":
        eps = sigma * x + alpha * output
    elif source == "sample":
        eps = (x - alpha * output) / sigma
    else:
        eps = output
    return eps if target == "epsilon" else (x - sigma * eps) / alpha


def cond_by_seed(table: dict[str, Tensor]) -> Callable[[Tensor], dict[str, Tensor]]:
    """``cond_fn(seeds)`` of a table of prompt conditions (``(P, …)`` tensors, a row per prompt):
    seed ``s`` gets row ``s mod P`` of every entry (how ``--prompts`` files are read)."""
    count = len(next(iter(table.values())))

    def cond_fn(seeds: Tensor) -> dict[str, Tensor]:
        pick = torch.as_tensor(seeds).long() % count
        return {key: value[pick.to(value.device)] for key, value in table.items()}

    return cond_fn


def cond_tensors(cond: Any, names: tuple[str, ...], batch: int, needs: str) -> list[Tensor]:
    """The tensors ``cond[name]`` of a text-conditioned model's condition dict, each checked to
    have a batch of ``batch``; ``needs`` says what the model wants when ``cond`` is no dict."""
    if not isinstance(cond, dict):
        raise ConfigError(needs)
    found = []
    for name in names:
        value = cond.get(name)
        if not isinstance(value, Tensor) or value.shape[0] != batch:
            raise ConfigError(f"cond {name}: expected a tensor with a batch of {batch}")
        found.append(value)
    return found


class DiffusionModel(nn.Module):
    """A frozen diffusion model seen through continuous time.

    Subclasses implement :meth:`network_output`, returning the network's native prediction
    (``self.prediction_type``) for a batch at per-sample times ``t: (B,)``.

    Attributes:
        schedule: the model's :class:`~gas_solver.schedules.NoiseSchedule`.
        sample_shape: shape of one sample (without batch), e.g. ``(3, 32, 32)``.
        prediction_type: one of ``PREDICTION_TYPES``.
        nfe: number of network evaluations since construction or :meth:`reset_nfe`.
        source: the name or path the model was loaded from (``None`` if built in code); teacher
            sets and checkpoints record it so later commands load the same model.
        conditioning: what the network is conditioned on: ``none`` (the default), ``class``,
            ``text`` or ``class+text``; conditional adapters set it.
        guidance_scale: the classifier-free guidance scale the model applies itself (``None``:
            none built in, the default); exports record it for conditional models.

    The rest of the contract has defaults that adapters override: :attr:`is_latent` and
    :meth:`decode` (latent models), :meth:`default_cond` (the conditions of seeds),
    :attr:`takes_prompts` and :meth:`prompt_cond_fn` (text models), :meth:`feature_encoder`
    (features of the network's encoder), :meth:`mismatch_hint` (what to do when a solver was
    made for another model), :attr:`teacher_t_eps` (where a teacher stops), :attr:`device`.
    """

    source: str | None = None
    conditioning: str = "none"
    guidance_scale: float | None = None
    compute_dtype: str = "float32"
    """The dtype the network runs in (:meth:`set_precision`); the solvers' arithmetic, their
    times and weights stay in the samples' dtype (float32 or float64)."""
    compiled: bool = False
    """Whether the network's calls run compiled (:meth:`compile_network`)."""
    _compiled_output: Callable[..., Tensor] | None = None
    _compile_proven: bool = False

    def __init__(
        self,
        schedule: NoiseSchedule,
        sample_shape: tuple[int, ...],
        prediction_type: str = "epsilon",
    ) -> None:
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ConfigError(
                f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}"
            )
        self.schedule = schedule
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.prediction_type = prediction_type
        self.nfe = 0

    # -- to implement -------------------------------------------------------------------------
    def network_output(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """The network's native prediction for ``x: (B, *sample_shape)`` at times ``t: (B,)``."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """JSON-able description used to match checkpoints and teacher sets to this model."""
        return {
            "class": type(self).__name__,
            "schedule": self.schedule.to_dict(),
            "sample_shape": list(self.sample_shape),
            "prediction_type": self.prediction_type,
        }

    # -- the contract ---------------------------------------------------------------------------
    def noise_prediction(self, x: Tensor, t: Tensor | float, cond: Any = None) -> Tensor:
        """ε̂(x, t). ``t`` is a scalar or a ``(B,)`` tensor of continuous times."""
        return self._predict(x, t, cond, "epsilon")

    def data_prediction(self, x: Tensor, t: Tensor | float, cond: Any = None) -> Tensor:
        """x̂₀(x, t) = (x − σ(t) ε̂(x, t)) / α(t)."""
        return self._predict(x, t, cond, "sample")

    def reset_nfe(self) -> None:
        self.nfe = 0

    # -- defaults adapters override ---------------------------------------------------------------
    @property
    def is_latent(self) -> bool:
        """Whether samples are latents that :meth:`decode` turns into images (LDM, SD)."""
        return False

    def decode(self, samples: Tensor) -> Tensor:
        """Images in [−1, 1] of samples: the identity for pixel models."""
        return samples

    def default_cond(self, seeds: Tensor) -> Any:
        """The condition of each seed (class models: ``seed mod classes``); ``None`` here."""
        return None

    @property
    def takes_prompts(self) -> bool:
        """Whether :meth:`prompt_cond_fn` can turn text prompts into conditions."""
        return False

    def prompt_cond_fn(self, prompts: list[str], **options: Any) -> Callable[[Tensor], Any]:
        """``cond_fn(seeds)``: the condition of ``prompts[seed mod len(prompts)]``: row
        ``seed mod P`` of every entry of :meth:`prompt_table` (``options`` go to it)."""
        if not self.takes_prompts:
            raise ConfigError(
                f"prompts: the model {self.source or type(self).__name__} takes no text prompts; "
                "leave --prompts out"
            )
        if not prompts:
            raise ConfigError("prompt_cond_fn needs at least one prompt")
        return cond_by_seed(self.prompt_table(list(prompts), **options))

    def prompt_table(self, prompts: list[str]) -> dict[str, Tensor]:
        """The conditions of prompts, one ``(P, …)`` tensor per entry of the model's condition
        dict (text models implement it, with :attr:`takes_prompts` true)."""
        raise NotImplementedError

    def feature_encoder(self) -> nn.Module | None:
        """The frozen network's encoder as features, or ``None`` (the default: no features).

        A module ``encoder(x, timestep) → [h_1, …, h_L]``: feature maps ``(B, C_l, H_l, W_l)`` of
        samples ``x: (B, *sample_shape)`` at the network timestep ``timestep: (1,)``
        (``schedule.timestep(t)``), differentiable twice in ``x``, with ``encoder.widths`` the
        ``C_l``. The ``model-features`` discriminator and distillation distance read it.
        """
        return None

    def mismatch_hint(self, stored: dict[str, Any]) -> str | None:
        """Why a solver or teacher set made for the model ``stored`` (its :meth:`identity`) does
        not fit this one and what to do, when the differing fields alone do not say it (FLUX:
        another resolution); ``None`` here."""
        return None

    @property
    def teacher_t_eps(self) -> float | None:
        """The last time of a teacher solver's named grid when its spec gives no ``t_eps``
        (``None``: the solver's default); the schedule's ``teacher_t_eps`` here (the paper's 1e-4
        on the continuous linear VP schedule of EDM pixel models, else ``None``)."""
        return self.schedule.teacher_t_eps

    @property
    def device(self) -> torch.device:
        """Where the network's weights are (the CPU for weightless models)."""
        tensor = next(itertools.chain(self.parameters(), self.buffers()), None)
        return torch.device("cpu") if tensor is None else tensor.device

    def network_modules(self) -> list[nn.Module]:
        """The networks :meth:`network_output` runs on every call (a UNet, a transformer), which
        :meth:`compile_network` compiles in place; ``[]`` here: no network module, so
        :meth:`network_output` itself is compiled (a pure function of its inputs, as the exact
        mixtures' is)."""
        return []

    def set_precision(self, dtype: str = "float32") -> None:
        """Run the network in ``dtype`` (one of :data:`COMPUTE_DTYPES`) under
        :func:`torch.autocast` on the samples' device: its matrix products and convolutions
        in ``dtype``, its output returned in the samples' dtype. ``float32``: as built.

        bfloat16 and float16 also put the convolution weights of :meth:`network_modules` in
        ``channels_last`` memory format (what tensor cores read); float32 leaves them as built,
        so float32 results stay bit for bit those of earlier runs."""
        if dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"dtype: must be one of {COMPUTE_DTYPES}, got {dtype!r}")
        if (dtype == "float32") != (self.compute_dtype == "float32"):
            layout = torch.contiguous_format if dtype == "float32" else torch.channels_last
            for module in self.network_modules():
                module.to(memory_format=layout)
        self.compute_dtype = dtype

    def compile_network(self, mode: str = COMPILE_MODE) -> str | None:
        """Run the network's calls through :func:`torch.compile` (``mode``): each module of
        :meth:`network_modules` compiled in place (``nn.Module.compile``: its parameters, state
        dict and identity unchanged), or :meth:`network_output` when there is none. Compiling
        happens at the first call (and again for a new batch shape).

        Where torch cannot compile (no TorchDynamo on this Python or platform, no C++ compiler
        for the inductor on a CPU, ...), the network runs uncompiled and a one-line warning says
        why: here when TorchDynamo is missing, else at the first call that fails to compile.
        Returns that reason, or ``None`` (compiled, or compiled already)."""
        if self.compiled:
            return None
        import torch._dynamo

        if not torch._dynamo.is_dynamo_supported():
            reason = "torch.compile is not supported on this Python or platform"
            log.warning("--compile: %s; the network runs uncompiled", reason)
            return reason
        modules = self.network_modules()
        for module in modules:
            module.compile(mode=mode)
        self._compiled_output = None if modules else torch.compile(self.network_output, mode=mode)
        self.compiled, self._compile_proven = True, False
        return None

    def _uncompile(self) -> None:
        for module in self.network_modules():
            module._compiled_call_impl = None  # what nn.Module.compile set
        self._compiled_output, self.compiled = None, False

    def _network_output(self, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        if not self.compiled or self._compile_proven:
            return self._network_call(x, t, cond)
        import torch._dynamo.exc

        try:  # the first compiled call compiles: where torch cannot, run uncompiled
            output = self._network_call(x, t, cond)
        except torch._dynamo.exc.TorchDynamoException as err:
            reason = next(iter(str(err).strip().splitlines()), type(err).__name__)
            log.warning("--compile: torch cannot compile the network here (%s); it runs "
                        "uncompiled", reason)  # fmt: skip
            self._uncompile()
            return self._network_call(x, t, cond)
        self._compile_proven = True
        return output

    def _network_call(self, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        """The network's call: compiled or not, under autocast unless float32."""
        run = self._compiled_output or self.network_output
        if self.compute_dtype == "float32":
            return run(x, t, cond)
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[self.compute_dtype]
        with torch.autocast(device_type=x.device.type, dtype=dtype):
            return run(x, t, cond)

    def _predict(self, x: Tensor, t: Tensor | float, cond: Any, target: str) -> Tensor:
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(
                f"x has sample shape {tuple(x.shape[1:])}, the model expects {self.sample_shape}"
            )
        t = torch.as_tensor(t, device=x.device)
        if t.dtype != torch.float64:  # float64 times stay exact (a float32 DDPM timestep near
            t = t.to(x.dtype)  # 999 is only good to 6e-5); anything else follows the samples
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        output = self._network_output(x, t, cond).to(x.dtype)
        self.nfe += 1
        if self.prediction_type == target:
            return output
        view = (-1,) + (1,) * (x.dim() - 1)
        alpha = self.schedule.alpha(t).to(x.dtype).view(view)
        sigma = self.schedule.sigma(t).to(x.dtype).view(view)
        return convert_prediction(output, x, alpha, sigma, self.prediction_type, target)


def prepare_network(
    model: DiffusionModel,
    dtype: str = "float32",
    compile: bool = False,  # noqa: A002 - the flag's name
) -> None:
    """What ``--dtype`` and ``--compile`` ask of a loaded model:
    :meth:`~DiffusionModel.set_precision` and, with ``compile``,
    :meth:`~DiffusionModel.compile_network`."""
    model.set_precision(dtype)
    if compile:
        model.compile_network()
