"""The diffusers adapter on real folders: a tiny model trained by `train-model`, saved in the
pipeline layout, loaded back through `load_model`, sampled by our solvers."""

import pytest
import torch

pytest.importorskip("diffusers")

from gas_solver.config import load_config  # noqa: E402
from gas_solver.errors import CheckpointMismatchError, MissingAssetError  # noqa: E402
from gas_solver.models.diffusers import DiffusersUNetModel  # noqa: E402
from gas_solver.models.loading import load_model  # noqa: E402
from gas_solver.runtime import load_checkpoint_file  # noqa: E402
from gas_solver.sampling import sample  # noqa: E402
from gas_solver.training.denoiser import DenoiserConfig, train_denoiser  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("denoiser")
    config = load_config(
        DenoiserConfig,
        overrides={
            "dataset": "digits",
            "out": str(out),
            "channels": "8,16",
            "iterations": 6,
            "batch_size": 8,
            "save_every": 3,
            "device": "cpu",
        },
    )
    return train_denoiser(config, progress=False)


def test_folder_round_trips_through_the_adapter(tiny_model_dir):
    from diffusers import DDPMPipeline

    model = load_model(str(tiny_model_dir))
    assert isinstance(model, DiffusersUNetModel)
    assert model.sample_shape == (1, 8, 8) and model.prediction_type == "v_prediction"
    assert model.source == str(tiny_model_dir)
    pipe = DDPMPipeline.from_pretrained(tiny_model_dir)
    x = torch.randn(3, 1, 8, 8)
    t = torch.tensor(0.4)  # DDPM timestep 399
    alpha, sigma = (
        pipe.scheduler.alphas_cumprod[399].sqrt(),
        (1 - pipe.scheduler.alphas_cumprod[399]).sqrt(),
    )
    with torch.no_grad():
        v = pipe.unet(x, torch.full((3,), 399.0)).sample
        torch.testing.assert_close(model.noise_prediction(x, t), sigma * x + alpha * v)
    assert model.identity() == load_model(str(tiny_model_dir)).identity()


def test_float16_weights_halve_the_file_and_load_as_float32(tiny_model_dir, tmp_path):
    """``--save-dtype float16`` stores the EMA weights rounded to float16; the adapter loads them
    as float32 and predicts exactly what the float32 model does with those rounded weights."""
    from safetensors.torch import load_file

    config = load_config(
        DenoiserConfig,
        overrides={"dataset": "digits", "out": str(tmp_path), "channels": "8,16", "iterations": 6,
                   "batch_size": 8, "save_every": 3, "device": "cpu", "save_dtype": "float16"},
    )  # fmt: skip
    folder = train_denoiser(config, progress=False)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    full = tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors"
    assert {t.dtype for t in load_file(weights).values()} == {torch.float16}
    assert weights.stat().st_size < 0.6 * full.stat().st_size
    half, single = load_model(str(folder)), load_model(str(tiny_model_dir))
    assert next(half.unet.parameters()).dtype == torch.float32
    rounded = {k: v.half().float() for k, v in load_file(full).items()}
    assert all(torch.equal(load_file(weights)[k].float(), rounded[k]) for k in rounded)
    single.unet.load_state_dict(rounded)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor(0.3)
    with torch.no_grad():
        torch.testing.assert_close(half.noise_prediction(x, t), single.noise_prediction(x, t))


def test_training_batches_follow_the_recipe():
    """v targets satisfy x₀ = α x_t − σ v and ε = σ x_t + α v; log-normal levels have the asked
    moments of ln σ̃; the uniform recipe draws DDPM's integer timesteps with ε targets."""
    from gas_solver.schedules import DiscreteVPSchedule
    from gas_solver.training.denoiser import build_scheduler, noisy_batch

    schedule = DiscreteVPSchedule(build_scheduler().alphas_cumprod)
    x0 = torch.rand(4000, 1, 2, 2) * 2 - 1
    config = DenoiserConfig(p_mean=-1.0, p_std=0.8)
    x_t, timestep, v = noisy_batch(config, schedule, x0, torch.Generator().manual_seed(0))
    t = schedule.t_from_timestep(timestep.double())
    alpha = schedule.alpha(t).float().view(-1, 1, 1, 1)
    sigma = schedule.sigma(t).float().view(-1, 1, 1, 1)
    torch.testing.assert_close(alpha * x_t - sigma * v, x0, atol=1e-5, rtol=0)
    log_level = schedule.edm_sigma(t).log()
    assert abs(log_level.mean() + 1.0) < 0.05 and abs(log_level.std() - 0.8) < 0.05

    uniform = DenoiserConfig(prediction="epsilon", noise_sampling="uniform")
    x_t, timestep, eps = noisy_batch(uniform, schedule, x0, torch.Generator().manual_seed(0))
    assert torch.equal(timestep, timestep.round()) and 0 <= timestep.min() < timestep.max() <= 999
    abar = build_scheduler().alphas_cumprod[timestep.long()].view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, abar.sqrt() * x0 + (1 - abar).sqrt() * eps, atol=1e-5, rtol=0)


def test_flow_objective_batches_and_folder(tmp_path):
    """--objective flow: x_s = (1 − s) x₀ + s ε, target v = ε − x₀, timestep 1000·s, logit(s)
    normal with the asked moments (SD3's logit-normal = EDM's log-normal in σ̃ = s/(1 − s)); the
    saved folder loads as a flow-matching UNet whose solvers run."""
    from gas_solver.schedules import FlowSchedule
    from gas_solver.training.denoiser import noisy_batch, training_schedule

    config = DenoiserConfig(objective="flow", p_mean=0.0, p_std=1.0)
    schedule = training_schedule(config)
    x0 = torch.rand(4000, 1, 2, 2) * 2 - 1
    x_t, timestep, v = noisy_batch(config, schedule, x0, torch.Generator().manual_seed(0))
    s = (timestep.double() / 1000).float().view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t - s * v, x0, atol=1e-5, rtol=0)  # x₀ = x − s v
    logit = torch.logit(s.flatten().double())
    assert abs(logit.mean()) < 0.05 and abs(logit.std() - 1.0) < 0.05
    uniform = DenoiserConfig(objective="flow", noise_sampling="uniform")
    _, timestep, _ = noisy_batch(uniform, schedule, x0, torch.Generator().manual_seed(0))
    assert abs(float(timestep.mean()) - 500) < 15 and float(timestep.std()) > 250

    folder = train_denoiser(
        load_config(DenoiserConfig, overrides={
            "dataset": "digits", "out": str(tmp_path), "channels": "8,16", "iterations": 3,
            "batch_size": 8, "save_every": 3, "device": "cpu", "objective": "flow",
        }),
        progress=False,
    )  # fmt: skip
    model = load_model(str(folder))
    assert isinstance(model.schedule, FlowSchedule) and model.prediction_type == "flow_prediction"
    with torch.no_grad():
        out = sample(model, torch.randn(2, 1, 8, 8), "unipc", nfe=4)
    assert torch.isfinite(out).all()


def test_classic_and_learned_solvers_run_on_it(tiny_model_dir):
    from gas_solver.solvers.generalized import GeneralizedSolver

    model = load_model(str(tiny_model_dir))
    noise = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        out = sample(model, noise, solver="unipc", nfe=3)
        gs = sample(model, noise, solver=GeneralizedSolver(3, model.schedule))
    assert out.shape == gs.shape == (2, 1, 8, 8)
    assert model.nfe == 6


def test_resume_continues_the_same_run(tiny_model_dir, tmp_path):
    base = {
        "dataset": "digits",
        "channels": "8,16",
        "batch_size": 8,
        "save_every": 3,
        "device": "cpu",
        "lr_decay": "none",  # a cosine schedule is fixed by --iterations (checked below)
    }
    straight = load_config(
        DenoiserConfig, overrides={**base, "out": str(tmp_path / "a"), "iterations": 6}
    )
    train_denoiser(straight, progress=False)
    half = load_config(
        DenoiserConfig, overrides={**base, "out": str(tmp_path / "b"), "iterations": 3}
    )
    train_denoiser(half, progress=False)
    rest = load_config(
        DenoiserConfig,
        overrides={**base, "out": str(tmp_path / "b"), "iterations": 6, "resume": True},
    )
    train_denoiser(rest, progress=False)
    a = load_checkpoint_file(tmp_path / "a" / "checkpoint.pt")["unet"]
    b = load_checkpoint_file(tmp_path / "b" / "checkpoint.pt")["unet"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    cosine = {**base, "lr_decay": "cosine", "out": str(tmp_path / "c")}
    train_denoiser(
        load_config(DenoiserConfig, overrides={**cosine, "iterations": 3}), progress=False
    )
    longer = load_config(DenoiserConfig, overrides={**cosine, "iterations": 6, "resume": True})
    with pytest.raises(CheckpointMismatchError, match="iterations: stored 3, given 6"):
        train_denoiser(longer, progress=False)


def test_incomplete_folder_names_the_missing_file(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(MissingAssetError, match="config.json"):
        load_model(str(tmp_path))


def test_bundled_mnist32_vp_loads_through_the_adapter():
    model = load_model("mnist32-vp")
    assert isinstance(model, DiffusersUNetModel)
    assert model.sample_shape == (1, 32, 32) and model.prediction_type == "v_prediction"
    assert sum(p.numel() for p in model.unet.parameters()) == 1506337  # the card's count
    with torch.no_grad():
        out = sample(model, torch.randn(2, 1, 32, 32), solver="ddim", nfe=2)
    assert out.shape == (2, 1, 32, 32) and torch.isfinite(out).all()
