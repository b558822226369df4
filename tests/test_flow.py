"""Flow-matching (rectified-flow) models: the schedule's exact maps, the velocity conversion, and
the classic solvers against diffusers' own flow schedulers on a tiny random SD3 transformer."""

import math

import pytest
import torch

from gas_solver import (
    FlowSchedule,
    FunctionModel,
    LinearVPSchedule,
    explicit_grid,
    sample,
    time_grid,
)
from gas_solver.errors import ConfigError
from gas_solver.models.loading import load_model

diffusers = pytest.importorskip("diffusers")

N_TRAIN = 1000


def test_flow_schedule_maps_are_exact_and_inverse():
    for shift in (1.0, 3.0, 0.5):
        schedule = FlowSchedule(shift)
        t = torch.linspace(1e-4, 1 - 1e-4, 101, dtype=torch.float64)
        s = shift * t / (1 + (shift - 1) * t)
        torch.testing.assert_close(schedule.sigma(t), s, rtol=1e-14, atol=0)
        torch.testing.assert_close(schedule.alpha(t) + schedule.sigma(t), torch.ones_like(t))
        torch.testing.assert_close(
            schedule.lambda_(t), torch.log((1 - s) / s), rtol=1e-12, atol=1e-12
        )
        torch.testing.assert_close(
            schedule.inverse_lambda(schedule.lambda_(t)), t, rtol=1e-12, atol=0
        )
        torch.testing.assert_close(schedule.t_from_flow_sigma(s), t, rtol=1e-13, atol=0)
        torch.testing.assert_close(schedule.timestep(t), N_TRAIN * s)
    ends = FlowSchedule(3.0).lambda_(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert ends.tolist() == [math.inf, -math.inf]


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_uniform_grid_is_diffusers_flow_sigma_grid(shift):
    """`uniform` from t_max = 1 − 1/N to 0 is the grid of DPMSolverMultistepScheduler and
    UniPCMultistepScheduler with use_flow_sigmas (σ = 0.99967 first for shift 3)."""
    reference = diffusers.DPMSolverMultistepScheduler(
        use_flow_sigmas=True, flow_shift=shift, prediction_type="flow_prediction"
    )
    reference.set_timesteps(6)
    schedule = FlowSchedule(shift)
    ours = schedule.sigma(time_grid(schedule, 6, "uniform", t_eps=0.0))
    torch.testing.assert_close(ours.float(), reference.sigmas, rtol=1e-6, atol=1e-7)


def test_grids_refuse_an_infinite_log_snr_and_units_are_named():
    schedule = FlowSchedule(3.0)
    with pytest.raises(ConfigError, match="finite log-SNR"):
        time_grid(schedule, 4, "logsnr", t_eps=0.0)
    grid = time_grid(schedule, 4, "logsnr")  # t_eps = 1e-3 by default: finite
    assert float(grid[0]) == schedule.t_max and float(grid[-1]) == 1e-3
    sigmas = explicit_grid(schedule, [1.0, 0.5, 0.0], unit="flow_sigma")
    torch.testing.assert_close(schedule.sigma(sigmas), torch.tensor([1.0, 0.5, 0.0]).double())
    with pytest.raises(ConfigError, match="flow_sigma"):
        explicit_grid(LinearVPSchedule(), [0.5, 0.1], unit="flow_sigma")


@pytest.fixture(scope="module")
def transformer():
    """A tiny random SD3 transformer (2 joint blocks), weights perturbed so no layer is zero."""
    torch.manual_seed(0)
    net = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
        caption_projection_dim=16, pooled_projection_dim=8, pos_embed_max_size=8,
    ).eval()  # fmt: skip
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def flow_network(transformer, scheduler=None):
    """The transformer as diffusers' pipelines call it. With ``scheduler``: the network time is
    that scheduler's timestep at the same σ — DPM-Solver++ and UniPC pass ``int(N·σ)`` (their
    ``timesteps`` are int64) while their updates use the exact σ, like GS's time offsets."""
    text = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(1))
    pooled = torch.randn(1, 8, generator=torch.Generator().manual_seed(2))

    def network(x, timestep, cond=None):
        if scheduler is not None:
            at = (N_TRAIN * scheduler.sigmas[:-1].double() - timestep[:1]).abs().argmin()
            timestep = scheduler.timesteps[at].double().expand(x.shape[0])
        batch = x.shape[0]
        return transformer(
            hidden_states=x, timestep=timestep.float(), encoder_hidden_states=text.expand(batch, -1, -1),
            pooled_projections=pooled.expand(batch, -1),
        ).sample  # fmt: skip

    return network


def run_diffusers(scheduler, network, x):
    """diffusers' sampling loop (as StableDiffusion3Pipeline runs it, without guidance)."""
    with torch.no_grad():
        for timestep in scheduler.timesteps:
            out = network(x, timestep.expand(x.shape[0]).double())
            x = scheduler.step(out, timestep, x).prev_sample
    return x


CASES = {
    "euler": (
        lambda shift: diffusers.FlowMatchEulerDiscreteScheduler(shift=shift),
        {"solver": "ddim"}, False,  # (float timesteps N·σ: our own convention)
    ),
    "dpmpp-2m": (
        lambda shift: diffusers.DPMSolverMultistepScheduler(
            use_flow_sigmas=True, flow_shift=shift, prediction_type="flow_prediction", solver_order=2
        ),
        {"solver": "dpmpp", "order": 2, "lower_order_final": True}, True,
    ),
    "dpmpp-3m": (
        lambda shift: diffusers.DPMSolverMultistepScheduler(
            use_flow_sigmas=True, flow_shift=shift, prediction_type="flow_prediction", solver_order=3
        ),
        {"solver": "dpmpp", "order": 3, "lower_order_final": True}, True,
    ),
    "unipc-bh2": (
        lambda shift: diffusers.UniPCMultistepScheduler(
            use_flow_sigmas=True, flow_shift=shift, prediction_type="flow_prediction",
            solver_order=3, solver_type="bh2",
        ),
        {"solver": "unipc", "order": 3, "variant": "bh2"}, True,
    ),
}  # fmt: skip


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("case", list(CASES))
def test_classic_solvers_match_diffusers_flow_schedulers(transformer, case, shift):
    """Our solvers on the scheduler's own sigmas (ending at σ = 0) reproduce its samples."""
    make_scheduler, options, integer_timesteps = CASES[case]
    scheduler = make_scheduler(shift)
    scheduler.set_timesteps(6)
    network = flow_network(transformer, scheduler if integer_timesteps else None)
    model = FunctionModel(network, FlowSchedule(shift), (4, 8, 8), "flow_prediction")
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    expected = run_diffusers(scheduler, network, noise.clone())
    sigmas = scheduler.sigmas.double()
    assert float(sigmas[-1]) == 0.0
    with torch.no_grad():
        got = sample(model, noise, grid=sigmas, grid_unit="flow_sigma", **options)
    assert expected.std() > 0.1 and torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_flow_model_samples_with_every_grid_kind_it_supports(transformer):
    model = FunctionModel(
        flow_network(transformer), FlowSchedule(3.0), (4, 8, 8), "flow_prediction"
    )
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for solver, grid in (
            ("unipc", "logsnr"),
            ("dpmpp", "quadratic"),
            ("ipndm", "edm"),
            ("heun", "uniform"),
        ):
            out = sample(model, noise, solver, nfe=6, grid=grid)
            assert torch.isfinite(out).all(), (solver, grid)


def test_gs_trains_and_samples_on_an_exact_flow_model_end_to_end(tmp_path):
    """teacher → train → sample through the CLI on the exact mixture under a shift-3 flow
    schedule; the trained 3-call GS beats its own initialisation, and its k-diffusion export (const
    sampling, shift 3) samples what it samples."""
    from gas_solver.cli import main
    from gas_solver.solvers.generalized import GeneralizedSolver

    def run(*args):
        return main([str(a) for a in args])

    assert (
        run("teacher", "--model", "gmm-ring-flow", "--seeds", "0-299", "--out", tmp_path / "t") == 0
    )
    assert run("train", "--teacher", tmp_path / "t", "--nfe", 3, "--iterations", 150, "--batch-size", 32,
               "--train-size", 250, "--val-size", 50, "--val-every", 0,
               "--out", tmp_path / "gs") == 0  # fmt: skip
    assert (
        run(
            "sample", "--solver", tmp_path / "gs", "--seeds", "50000-50031", "--out", tmp_path / "s"
        )
        == 0
    )
    model = load_model("gmm-ring-flow")
    trained = GeneralizedSolver.load(tmp_path / "gs", model=model)
    untrained = GeneralizedSolver(3, model.schedule, init_grid="uniform")
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    with torch.no_grad():
        reference = sample(model, noise, "unipc", nfe=40, grid="logsnr")
        errors = [(s.double()(model, noise) - reference).abs().mean() for s in (trained, untrained)]
    assert errors[0] < 0.7 * errors[1]
    assert run("export", "--solver", tmp_path / "gs", "--format", "k-diffusion",
               "--out", tmp_path / "gs.json") == 0  # fmt: skip
    from gas_solver.export import load_k_diffusion_solver, read_k_diffusion_solver

    assert (read_k_diffusion_solver(tmp_path / "gs.json").shift) == 3.0
    sigmas, sampler = load_k_diffusion_solver(tmp_path / "gs.json")

    def denoiser(x, sigma):  # ComfyUI's CONST convention: D(x; σ) at the shifted flow level σ
        return model.data_prediction(x, model.schedule.t_from_flow_sigma(sigma.double()))

    with torch.no_grad():
        ours = trained.double()(model, noise)
    exported = sampler(denoiser, noise, sigmas.double(), disable=True)
    assert ((exported - ours).norm() / ours.norm()).item() < 1e-6  # float32 sigmas in the file


def test_bundled_default_mnist32_is_a_flow_model():
    from gas_solver.models.diffusers import DiffusersUNetModel

    model = load_model("mnist32")
    assert isinstance(model, DiffusersUNetModel) and isinstance(model.schedule, FlowSchedule)
    assert model.sample_shape == (1, 32, 32) and model.prediction_type == "flow_prediction"
    assert model.schedule.shift == 1.0
    assert sum(p.numel() for p in model.unet.parameters()) == 1506337  # the card's count
    with torch.no_grad():
        out = sample(model, torch.randn(2, 1, 32, 32), solver="unipc", nfe=4)
    assert out.shape == (2, 1, 32, 32) and torch.isfinite(out).all()
    with pytest.raises(ConfigError, match="no longer bundled.*--model mnist32"):
        load_model("mnist32-flow")
