"""The model-features discriminator: heads on a frozen diffusers UNet encoder (LADD-style)."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from gas_solver.config import load_config  # noqa: E402
from gas_solver.data.teacher import generate_teacher_set  # noqa: E402
from gas_solver.errors import ConfigError  # noqa: E402
from gas_solver.models.loading import load_model  # noqa: E402
from gas_solver.solvers.spec_text import parse_solver_spec  # noqa: E402
from gas_solver.training.adversarial import Adversary  # noqa: E402
from gas_solver.training.feature_discriminator import FeatureDiscriminator  # noqa: E402
from gas_solver.training.trainer import Trainer, TrainSettings  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(3)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("unet")
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(folder)
    return folder


def test_only_the_heads_learn_and_gradients_reach_the_input(model_dir):
    model = load_model(str(model_dir))
    disc = FeatureDiscriminator(model, hidden=4, seed=0)
    unet_before = [p.detach().clone() for p in model.unet.parameters()]
    assert {name.split(".")[0] for name, _ in disc.named_parameters()} == {"heads"}
    assert disc.arch.widths == (8, 16, 16)  # two down blocks, then the mid block
    adversary = Adversary(disc, lr=1e-2)
    real, fake = torch.randn(6, 1, 8, 8), torch.randn(6, 1, 8, 8) * 0.3
    first = adversary.discriminator_step(real, fake)
    for _ in range(20):
        last = adversary.discriminator_step(real, fake)
    assert last["disc_pairing"] < first["disc_pairing"]  # it learns to tell them apart
    assert first["r1"] > 0 and first["r2"] > 0  # the penalties see the frozen encoder
    assert all(torch.equal(a, b) for a, b in zip(unet_before, model.unet.parameters(), strict=True))
    assert not any(p.requires_grad for p in model.unet.parameters())


def _tiny_run(model, tmp_path, **settings) -> tuple[TrainSettings, object]:
    """Three iterations of a 2-call solver on a 12-pair DDIM-3 teacher set of ``model``."""
    spec = parse_solver_spec("ddim:nfe=3")
    teacher = generate_teacher_set(
        model, tmp_path / "teacher", "0-11", spec, spec.to_dict(), progress=False
    )
    config = load_config(TrainSettings, overrides=dict(
        teacher=str(tmp_path / "teacher"), out=str(tmp_path / "run"), nfe=2, train_size=8,
        val_size=4, batch_size=4, iterations=3, val_every=0, checkpoint_every=3, log_every=1,
        device="cpu", **settings,
    ))  # fmt: skip
    return config, teacher


def test_gas_trains_with_it(model_dir, tmp_path):
    model = load_model(str(model_dir))
    config, teacher = _tiny_run(
        model, tmp_path, loss="gas", disc_preset="model-features", disc_lr=1e-3, disc_warmup=2
    )
    Trainer(config, model, teacher).run(progress=False)
    resumed = Trainer(
        load_config(TrainSettings, overrides={**config.__dict__, "iterations": 4, "resume": True}),
        model,
        teacher,
    )
    resumed.run(progress=False)
    assert resumed.iteration == 4


def test_it_refuses_models_without_a_unet_encoder():
    with pytest.raises(ConfigError, match="UNet2DModel"):
        FeatureDiscriminator(load_model("gmm-digits"))


# -- the same features as a distillation distance (--distillation model-features) ---------------


def test_the_feature_distance_is_lpips_shaped_and_differentiable(model_dir):
    """Zero on equal samples, symmetric, positive otherwise, bounded by 4 per level (unit
    vectors), gradients reach the student and never the frozen UNet."""
    from gas_solver.training.feature_distance import ModelFeatureDistance

    model = load_model(str(model_dir))
    distance = ModelFeatureDistance(model)
    target = torch.randn(5, 1, 8, 8)
    student = (target + 0.3 * torch.randn_like(target)).requires_grad_(True)
    d = distance(student, target)
    assert d.shape == (5,) and bool((d > 0).all()) and bool((d <= 4 * 3).all())
    torch.testing.assert_close(distance(target, student.detach()), d.detach())
    assert float(distance(target, target).abs().max()) < 1e-10
    d.sum().backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0
    assert all(p.grad is None for p in model.unet.parameters())
    with pytest.raises(ConfigError, match="UNet2DModel"):
        ModelFeatureDistance(load_model("gmm-digits"))


def test_gs_trains_with_the_feature_distance(model_dir, tmp_path):
    model = load_model(str(model_dir))
    config, teacher = _tiny_run(
        model, tmp_path, distillation="model-features", init_solver="dpmpp3m"
    )
    trainer = Trainer(config, model, teacher)
    before = trainer.solver.a_hat.detach().clone()
    trainer.run(progress=False)
    assert not torch.equal(trainer.solver.a_hat.detach(), before)
