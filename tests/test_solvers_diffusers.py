"""Cross-check of the classic solvers against the diffusers schedulers on a real (tiny) UNet.

A random ``UNet2DModel`` is saved with ``save_pretrained`` and loaded back. Both sides use the same
DDPM linear-β schedule and the same integer timesteps (taken from the diffusers scheduler after
``set_timesteps``); our grid is those timesteps plus a final timestep 0 (t = 1/N, diffusers'
``final_sigmas_type="sigma_min"``). Results must agree to 1e-4 relative error (diffusers works
in float32).

Conventions matched, and deliberate differences:

* DDIM: ``DDIMScheduler(set_alpha_to_one=False, timestep_spacing="trailing", clip_sample=False)``.
  Its last step goes to ᾱ₀ (our timestep 0). It steps to ``t − N/n`` rather than to the next
  listed timestep, so the two agree only when n divides N (checked with n = 5, 8).
* DPM-Solver++: ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++",
  final_sigmas_type="sigma_min")`` with the default ``solver_type="midpoint"`` (our 2M form).
  diffusers applies ``lower_order_final`` only below 15 steps; ours applies whenever set, so at
  16 steps diffusers' ``lower_order_final=True`` equals ours with ``False``.
* UniPC: ``UniPCMultistepScheduler(predict_x0=True, final_sigmas_type="sigma_min")``; its
  ``lower_order_final`` applies at any step count, like ours, and it corrects every step but the
  last (``disable_corrector=[]``), like ours.
* Heun: ``HeunDiscreteScheduler`` with the same custom timesteps ends with an Euler step to σ̃ = 0;
  our grids end at t_eps > 0 and correct the last step too. So the states are compared after the
  first n − 1 (two-evaluation) steps, which both compute alike.
* iPNDM is not compared: diffusers' ``IPNDMScheduler`` uses its own fixed cosine-like schedule.
"""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from gas_solver.models import DiffusionModel  # noqa: E402
from gas_solver.schedules import DiscreteVPSchedule, explicit_grid  # noqa: E402
from gas_solver.solvers import ddim, dpm_solver_pp, heun, unipc  # noqa: E402
from solver_checks import relative_error  # noqa: E402

BETAS = {
    "beta_start": 1e-4,
    "beta_end": 2e-2,
    "beta_schedule": "linear",
    "num_train_timesteps": 1000,
}
TOLERANCE = 1e-4


class UNetEpsModel(DiffusionModel):
    """A diffusers ε-prediction UNet behind the model contract (input timestep = N·t − 1)."""

    def __init__(self, unet, schedule: DiscreteVPSchedule) -> None:
        config = unet.config
        super().__init__(schedule, (config.in_channels, config.sample_size, config.sample_size))
        self.unet = unet

    def network_output(self, x, t, cond=None):
        return self.unet(x, self.schedule.timestep(t)).sample


@pytest.fixture(scope="module")
def unet(tmp_path_factory):
    torch.manual_seed(0)
    model = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=2,
        out_channels=2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    path = tmp_path_factory.mktemp("unet")
    model.save_pretrained(path)
    return diffusers.UNet2DModel.from_pretrained(path).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def noise() -> torch.Tensor:
    return torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(1))


def make_model(unet, scheduler) -> UNetEpsModel:
    return UNetEpsModel(unet, DiscreteVPSchedule.from_betas(scheduler.betas))


def our_grid(model: UNetEpsModel, timesteps: torch.Tensor) -> torch.Tensor:
    values = [*timesteps.tolist(), 0]  # final timestep 0, i.e. t = 1/N ("sigma_min")
    return explicit_grid(model.schedule, values, unit="timestep")


def run_diffusers(unet, scheduler, noise: torch.Tensor) -> torch.Tensor:
    x = noise * scheduler.init_noise_sigma
    for timestep in scheduler.timesteps:
        eps = unet(scheduler.scale_model_input(x, timestep), timestep).sample
        x = scheduler.step(eps, timestep, x).prev_sample
    return x


@pytest.mark.parametrize("steps", [5, 8])
def test_ddim_matches_diffusers(unet, noise, steps) -> None:
    scheduler = diffusers.DDIMScheduler(
        **BETAS, clip_sample=False, set_alpha_to_one=False, timestep_spacing="trailing"
    )
    scheduler.set_timesteps(steps)
    model = make_model(unet, scheduler)
    with torch.no_grad():
        ours = ddim(model, noise, our_grid(model, scheduler.timesteps))
        theirs = run_diffusers(unet, scheduler, noise)
    assert model.nfe == steps
    assert relative_error(ours, theirs) < TOLERANCE


@pytest.mark.parametrize("lower_order_final", [False, True])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpm_solver_pp_matches_diffusers(unet, noise, order, lower_order_final) -> None:
    scheduler = diffusers.DPMSolverMultistepScheduler(
        **BETAS,
        algorithm_type="dpmsolver++",
        solver_order=order,
        lower_order_final=lower_order_final,
        final_sigmas_type="sigma_min",
    )
    scheduler.set_timesteps(7)
    model = make_model(unet, scheduler)
    grid = our_grid(model, scheduler.timesteps)
    with torch.no_grad():
        ours = dpm_solver_pp(model, noise, grid, order=order, lower_order_final=lower_order_final)
        theirs = run_diffusers(unet, scheduler, noise)
    assert relative_error(ours, theirs) < TOLERANCE
    if order == 3:  # the options make a difference here, so the check can fail
        other = dpm_solver_pp(model, noise, grid, order=3, lower_order_final=not lower_order_final)
        assert relative_error(other, theirs) > 10 * TOLERANCE


def test_dpm_solver_pp_lower_order_final_from_15_steps(unet, noise) -> None:
    """diffusers ignores lower_order_final from 15 steps on; ours does not (documented)."""
    scheduler = diffusers.DPMSolverMultistepScheduler(
        **BETAS, algorithm_type="dpmsolver++", solver_order=3, final_sigmas_type="sigma_min"
    )
    scheduler.set_timesteps(16)
    model = make_model(unet, scheduler)
    with torch.no_grad():
        ours = dpm_solver_pp(model, noise, our_grid(model, scheduler.timesteps), order=3)
        theirs = run_diffusers(unet, scheduler, noise)
    assert scheduler.config.lower_order_final
    assert relative_error(ours, theirs) < TOLERANCE


@pytest.mark.parametrize("lower_order_final", [False, True])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_matches_diffusers(unet, noise, order, variant, lower_order_final) -> None:
    scheduler = diffusers.UniPCMultistepScheduler(
        **BETAS,
        predict_x0=True,
        solver_type=variant,
        solver_order=order,
        lower_order_final=lower_order_final,
        final_sigmas_type="sigma_min",
    )
    scheduler.set_timesteps(7)
    model = make_model(unet, scheduler)
    grid = our_grid(model, scheduler.timesteps)
    with torch.no_grad():
        ours = unipc(
            model, noise, grid, order=order, variant=variant, lower_order_final=lower_order_final
        )
        theirs = run_diffusers(unet, scheduler, noise)
    assert model.nfe == 7
    assert relative_error(ours, theirs) < TOLERANCE
    if order == 2:  # bh1 and bh2 differ where the order-2 predictor weight ½ is used
        other = "bh2" if variant == "bh1" else "bh1"
        with torch.no_grad():
            ours_other = unipc(model, noise, grid, order=2, variant=other)
        assert relative_error(ours_other, theirs) > 10 * TOLERANCE


def test_heun_matches_diffusers_before_its_final_euler_step(unet, noise) -> None:
    scheduler = diffusers.HeunDiscreteScheduler(**BETAS)
    timesteps = [999, 799, 599, 399, 199, 99]
    scheduler.set_timesteps(timesteps=timesteps)
    model = make_model(unet, scheduler)
    grid = explicit_grid(model.schedule, timesteps, unit="timestep")
    with torch.no_grad():
        ours = heun(model, noise, grid)
        x = noise / model.schedule.alpha(grid[0]).float()  # diffusers' state is x/α
        for timestep in scheduler.timesteps[: 2 * (len(timesteps) - 1)]:
            eps = unet(scheduler.scale_model_input(x, timestep), timestep).sample
            x = scheduler.step(eps, timestep, x).prev_sample
    theirs = x * model.schedule.alpha(grid[-1]).float()
    assert model.nfe == 2 * (len(timesteps) - 1)
    assert relative_error(ours, theirs) < TOLERANCE
