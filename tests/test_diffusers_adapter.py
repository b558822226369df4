"""The diffusers adapter on real folders: a tiny model trained by `train-model`, saved in the
pipeline layout, loaded back through `load_model`, sampled by our solvers."""

import pytest
import torch

pytest.importorskip("diffusers")

from gas_solver.config import load_config  # noqa: E402
from gas_solver.errors import MissingAssetError  # noqa: E402
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
    assert model.sample_shape == (1, 8, 8) and model.prediction_type == "epsilon"
    assert model.source == str(tiny_model_dir)
    pipe = DDPMPipeline.from_pretrained(tiny_model_dir)
    x = torch.randn(3, 1, 8, 8)
    t = torch.tensor(0.4)  # DDPM timestep 399
    with torch.no_grad():
        expected = pipe.unet(x, torch.full((3,), 399.0)).sample
        torch.testing.assert_close(model.noise_prediction(x, t), expected)
    assert model.identity() == load_model(str(tiny_model_dir)).identity()


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


def test_incomplete_folder_names_the_missing_file(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(MissingAssetError, match="config.json"):
        load_model(str(tmp_path))


def test_bundled_mnist32_loads_through_the_adapter():
    model = load_model("mnist32")
    assert isinstance(model, DiffusersUNetModel)
    assert model.sample_shape == (1, 32, 32) and model.prediction_type == "epsilon"
    assert sum(p.numel() for p in model.unet.parameters()) == 636465
    with torch.no_grad():
        out = sample(model, torch.randn(2, 1, 32, 32), solver="ddim", nfe=2)
    assert out.shape == (2, 1, 32, 32) and torch.isfinite(out).all()
