"""The diffusers adapter with conditions, guidance and VAEs, on tiny random models.

Each model is saved in the pipeline layout with ``save_pretrained`` and loaded back through
``load_model(folder)``. Guidance is checked against hand-written loops around the same UNet that
use the scheduler's ``alphas_cumprod`` directly (DDIM) or diffusers' own DPM-Solver++ scheduler,
with CFG written out as ``eps_u + s (eps_c − eps_u)`` in ε-space.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from gas_solver.config import load_config  # noqa: E402
from gas_solver.data.teacher import generate_teacher_set  # noqa: E402
from gas_solver.errors import ConfigError  # noqa: E402
from gas_solver.models.diffusers import (  # noqa: E402
    DiffusersUNetModel,
    class_cond_fn,
    prompt_cond_fn,
)
from gas_solver.models.diffusers_folder import split_source  # noqa: E402
from gas_solver.models.loading import load_model  # noqa: E402
from gas_solver.schedules import explicit_grid  # noqa: E402
from gas_solver.seeds import seeded_noise  # noqa: E402
from gas_solver.solvers import ddim, dpm_solver_pp  # noqa: E402
from gas_solver.solvers.spec_text import parse_solver_spec  # noqa: E402
from gas_solver.training.trainer import Trainer, TrainSettings  # noqa: E402
from solver_checks import relative_error  # noqa: E402
from tiny_text import clip_text_parts  # noqa: E402

CLASSES = 4  # + the null class 4
SCHEDULER = {  # the LDM ImageNet betas (spec §1)
    "beta_start": 0.0015,
    "beta_end": 0.0195,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
}
TIMESTEPS = [999, 799, 599, 399, 199, 0]
TOLERANCE = 1e-4
SMALL_UNET = dict(
    sample_size=8, in_channels=2, out_channels=2, block_out_channels=(8, 16),
    layers_per_block=1, norm_num_groups=4,
)  # fmt: skip


def save_pipeline(folder, unet, prediction_type="epsilon", **parts):
    unet.save_pretrained(folder / "unet")
    diffusers.DDIMScheduler(**SCHEDULER, prediction_type=prediction_type).save_pretrained(
        folder / "scheduler"
    )
    for name, part in parts.items():
        part.save_pretrained(folder / name)
    return folder


@pytest.fixture(scope="module")
def class_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        **SMALL_UNET, num_class_embeds=CLASSES + 1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()  # fmt: skip


@pytest.fixture(scope="module")
def class_dirs(tmp_path_factory, class_unet):
    root = tmp_path_factory.mktemp("class")
    return {
        kind: save_pipeline(root / kind, class_unet, kind)
        for kind in ("epsilon", "v_prediction", "sample")
    }


@pytest.fixture(scope="module")
def cross_unet():
    torch.manual_seed(1)
    return diffusers.UNet2DConditionModel(
        **SMALL_UNET, cross_attention_dim=12, attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ).eval()  # fmt: skip


@pytest.fixture(scope="module")
def noise():
    return torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(2))


def to_eps(output, x, a, prediction_type):
    """ε from a native prediction at ᾱ = a (written out here, independently of the library)."""
    if prediction_type == "v_prediction":
        return (1 - a).sqrt() * x + a.sqrt() * output
    if prediction_type == "sample":
        return (x - a.sqrt() * output) / (1 - a).sqrt()
    return output


def hand_ddim(guided_eps, x, alphas_cumprod):
    """DDIM (η = 0) on TIMESTEPS with a guided ε(x, timestep, ᾱ)."""
    for i, j in zip(TIMESTEPS[:-1], TIMESTEPS[1:], strict=True):
        a, b = alphas_cumprod[i].float(), alphas_cumprod[j].float()
        eps = guided_eps(x, i, a)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x = b.sqrt() * x0 + (1 - b).sqrt() * eps
    return x


# -- class labels ---------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_with_class_guidance_equals_a_hand_written_cfg_loop(
    class_dirs, class_unet, noise, prediction_type
):
    scale = 2.5
    model = load_model(f"{class_dirs[prediction_type]}:guidance={scale}")
    assert isinstance(model, DiffusersUNetModel)
    assert (model.conditioning, model.num_classes, model.null_class) == ("class", 4, 4)
    assert model.prediction_type == prediction_type and model.guidance_scale == scale
    ac = diffusers.DDIMScheduler(**SCHEDULER).alphas_cumprod.double()
    torch.testing.assert_close(model.schedule.alphas_cumprod, ac)
    labels = torch.tensor([0, 3, 1])

    def guided_eps(x, timestep, a):
        ts = torch.full((x.shape[0],), float(timestep))
        out_c = class_unet(x, ts, class_labels=labels).sample
        out_u = class_unet(x, ts, class_labels=torch.full_like(labels, CLASSES)).sample
        eps_c, eps_u = (to_eps(o, x, a, prediction_type) for o in (out_c, out_u))
        return eps_u + scale * (eps_c - eps_u)

    with torch.no_grad():
        ours = ddim(model, noise, explicit_grid(model.schedule, TIMESTEPS, unit="timestep"), labels)
        theirs = hand_ddim(guided_eps, noise, ac)
        unguided = ddim(
            load_model(str(class_dirs[prediction_type])), noise,
            explicit_grid(model.schedule, TIMESTEPS, unit="timestep"), labels,
        )  # fmt: skip
    assert relative_error(ours, theirs) < TOLERANCE
    assert relative_error(unguided, theirs) > 100 * TOLERANCE  # guidance makes a difference
    # one NFE per guided call, made as one UNet batch of 2B
    assert model.nfe == model.unet_batches == len(TIMESTEPS) - 1


def test_dpm_solver_pp_with_guidance_equals_diffusers_with_hand_written_cfg(
    class_dirs, class_unet, noise
):
    scale = 3.0
    model = load_model(f"{class_dirs['epsilon']}:guidance={scale}")
    scheduler = diffusers.DPMSolverMultistepScheduler.from_pretrained(
        class_dirs["epsilon"] / "scheduler",
        algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="sigma_min",
        lower_order_final=True,
    )  # fmt: skip
    scheduler.set_timesteps(6)
    labels = torch.tensor([2, 2, 0])
    null = torch.full_like(labels, CLASSES)
    sizes = []
    hook = model.unet.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    with torch.no_grad():
        x = noise.clone()
        for timestep in scheduler.timesteps:
            eps_u = class_unet(x, timestep, class_labels=null).sample
            eps_c = class_unet(x, timestep, class_labels=labels).sample
            x = scheduler.step(eps_u + scale * (eps_c - eps_u), timestep, x).prev_sample
        grid = explicit_grid(model.schedule, [*scheduler.timesteps.tolist(), 0], unit="timestep")
        ours = dpm_solver_pp(model, noise, grid, labels, order=2, lower_order_final=True)
    hook.remove()
    assert relative_error(ours, x) < TOLERANCE
    assert model.nfe == 6 and sizes == [6] * 6  # cond and uncond batched together


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_guided_wrapper_equals_the_built_in_guidance(
    class_dirs, class_unet, noise, prediction_type
):
    """Guided(unguided model, s, null class) == the adapter's own guidance (same 2B batch, bit
    for bit), on a class UNet; and around a FunctionModel of the bare UNet, the hand-written loop."""
    from gas_solver import FunctionModel, Guided

    scale, labels = 2.5, torch.tensor([0, 3, 1])
    grid = explicit_grid(
        load_model(str(class_dirs[prediction_type])).schedule, TIMESTEPS, "timestep"
    )
    built_in = load_model(f"{class_dirs[prediction_type]}:guidance={scale}")
    wrapped = Guided(load_model(str(class_dirs[prediction_type])), scale, torch.tensor([CLASSES]))
    bare = FunctionModel(
        lambda x, timestep, cond: class_unet(x, timestep, class_labels=cond).sample,
        built_in.schedule, built_in.sample_shape, prediction_type,
    )  # fmt: skip
    with torch.no_grad():
        expected = ddim(built_in, noise, grid, labels)
        assert torch.equal(ddim(wrapped, noise, grid, labels), expected)
        around_bare = ddim(Guided(bare, scale, torch.tensor([CLASSES])), noise, grid, labels)
    assert relative_error(around_bare, expected) < TOLERANCE
    assert wrapped.nfe == len(TIMESTEPS) - 1 and wrapped.identity()["guidance_scale"] == scale


def test_conditions_are_checked(class_dirs, noise):
    model = load_model(str(class_dirs["epsilon"]))
    with pytest.raises(ConfigError, match="needs cond"):
        model.noise_prediction(noise, 0.5)
    with pytest.raises(ConfigError, match="batch of 3"):
        model.noise_prediction(noise, 0.5, torch.tensor([0, 1]))
    same = model.noise_prediction(noise, 0.5, {"class_labels": torch.tensor([0, 1, 2])})
    torch.testing.assert_close(same, model.noise_prediction(noise, 0.5, torch.tensor([0, 1, 2])))
    with pytest.raises(ConfigError, match="unknown option"):
        load_model(f"{class_dirs['epsilon']}:guide=2")
    assert split_source("no/such/dir:guidance=2") == ("no/such/dir:guidance=2", {})
    guided = load_model(f"{class_dirs['epsilon']}:guidance=2")
    assert guided.identity() != model.identity()  # teacher sets and checkpoints tell them apart
    assert guided.source.endswith(":guidance=2")


def test_unconditional_model_rejects_guidance(tmp_path):
    unet = diffusers.UNet2DModel(
        **SMALL_UNET, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2
    )
    folder = save_pipeline(tmp_path, unet)
    assert load_model(str(folder)).conditioning == "none"
    with pytest.raises(ConfigError, match="guidance_scale"):
        load_model(f"{folder}:guidance=2")


# -- encoder hidden states and text -------------------------------------------------------------
def test_cross_attention_unet_with_given_embeddings(tmp_path, cross_unet, noise):
    scale = 4.0
    model = load_model(f"{save_pipeline(tmp_path, cross_unet)}:guidance={scale}")
    assert model.conditioning == "text"
    gen = torch.Generator().manual_seed(3)
    states, negative = torch.randn(2, 3, 5, 12, generator=gen)
    cond = {"encoder_hidden_states": states, "negative_encoder_hidden_states": negative}
    ac = model.schedule.alphas_cumprod

    def guided_eps(x, timestep, a):
        ts = torch.full((x.shape[0],), float(timestep))
        eps_c = cross_unet(x, ts, encoder_hidden_states=states).sample
        eps_u = cross_unet(x, ts, encoder_hidden_states=negative).sample
        return eps_u + scale * (eps_c - eps_u)

    with torch.no_grad():
        ours = ddim(model, noise, explicit_grid(model.schedule, TIMESTEPS, unit="timestep"), cond)
        theirs = hand_ddim(guided_eps, noise, ac)
    assert relative_error(ours, theirs) < TOLERANCE
    with pytest.raises(ConfigError, match="negative_encoder_hidden_states"):
        model.noise_prediction(noise, 0.5, {"encoder_hidden_states": states})


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory, cross_unet):
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("text")
    tokenizer, encoder = clip_text_parts(root)
    return save_pipeline(root / "pipe", cross_unet, text_encoder=encoder, tokenizer=tokenizer)


def test_text_prompts_with_guidance(text_dir, cross_unet, noise):
    import transformers

    scale = 5.0
    model = load_model(f"{text_dir}:guidance={scale}")
    prompts = ["a cat", "a dog", "tea"]
    cond_fn = prompt_cond_fn(model, prompts)
    cond = cond_fn(torch.tensor([4, 0, 2]))  # prompts 1, 0, 2
    tokenizer = transformers.AutoTokenizer.from_pretrained(text_dir / "tokenizer")
    encoder = transformers.CLIPTextModel.from_pretrained(text_dir / "text_encoder").eval()

    def encode(texts):
        ids = tokenizer(texts, padding="max_length", max_length=10, return_tensors="pt").input_ids
        return encoder(ids)[0]

    with torch.no_grad():
        states = encode(["a dog", "a cat", "tea"])
        empty = encode([""] * 3)

    def guided_eps(x, timestep, a):
        ts = torch.full((x.shape[0],), float(timestep))
        eps_c = cross_unet(x, ts, encoder_hidden_states=states).sample
        eps_u = cross_unet(x, ts, encoder_hidden_states=empty).sample
        return eps_u + scale * (eps_c - eps_u)

    with torch.no_grad():
        ours = ddim(model, noise, explicit_grid(model.schedule, TIMESTEPS, unit="timestep"), cond)
        theirs = hand_ddim(guided_eps, noise, model.schedule.alphas_cumprod)
    assert cond["input_ids"].dtype == torch.int64 and cond["input_ids"].shape == (3, 10)
    assert relative_error(ours, theirs) < TOLERANCE
    assert model.nfe == len(TIMESTEPS) - 1


# -- latent models ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["AutoencoderKL", "VQModel"])
def test_latent_model_decodes_to_images(tmp_path, class_unet, noise, kind):
    common = dict(
        in_channels=3, out_channels=3, latent_channels=2, block_out_channels=(8, 8),
        layers_per_block=1, norm_num_groups=4, scaling_factor=0.5,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )  # fmt: skip
    torch.manual_seed(5)
    if kind == "VQModel":
        vae = diffusers.VQModel(**common, num_vq_embeddings=16, vq_embed_dim=2)
        folder = save_pipeline(tmp_path, class_unet, vqvae=vae)
    else:
        vae = diffusers.AutoencoderKL(**common, sample_size=16)
        folder = save_pipeline(tmp_path, class_unet, vae=vae)
    model = load_model(f"{folder}:guidance=2")
    assert model.is_latent and model.sample_shape == (2, 8, 8) and model.scaling_factor == 0.5
    assert model.identity()["vae"] == kind
    with torch.no_grad():
        latents = ddim(model, noise, explicit_grid(model.schedule, TIMESTEPS[::2], unit="timestep"),
                       torch.tensor([0, 1, 2]))  # fmt: skip
        images = model.decode(latents * 20)  # large values: the clamp shows
        expected = vae.eval().decode(latents * 20 / 0.5).sample.clamp(-1, 1)
        round_trip = model.encode(images)
    assert images.shape == (3, 3, 16, 16)
    assert images.min() >= -1 and images.max() <= 1
    torch.testing.assert_close(images, expected)
    assert round_trip.shape == latents.shape


# -- teacher sets and training ----------------------------------------------------------------------
def test_teacher_set_with_labels_trains_a_gs(tmp_path, class_dirs):
    model = load_model(f"{class_dirs['epsilon']}:guidance=2")
    spec = parse_solver_spec("dpmpp:nfe=4,order=2")
    teacher = generate_teacher_set(
        model, tmp_path / "teacher", "0-11", spec, spec.to_dict(),
        batch_size=4, cond_fn=model.default_cond, progress=False,
    )  # fmt: skip
    assert teacher.manifest["cond_kind"] == "tensor"
    torch.testing.assert_close(teacher.cond, torch.arange(12) % CLASSES)
    torch.testing.assert_close(teacher.cond, class_cond_fn(CLASSES)(torch.arange(12)))
    config = load_config(
        TrainSettings,
        overrides=dict(
            teacher=str(tmp_path / "teacher"), out=str(tmp_path / "run"), nfe=2, train_size=8,
            val_size=4, batch_size=4, iterations=2, val_every=0, checkpoint_every=2,
            device="cpu", grad_checkpoint=True,
        ),
    )  # fmt: skip
    trainer = Trainer(config, model, teacher)
    seen = []
    hook = model.unet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["class_labels"].clone()), with_kwargs=True
    )
    before = [p.detach().clone() for p in trainer.solver.parameters()]
    stats = trainer.train_step()
    hook.remove()
    labels = teacher.cond[trainer.batch_indices(0)]
    expected = torch.cat([torch.full_like(labels, CLASSES), labels])  # uncond half, cond half
    assert seen and all(torch.equal(s, expected) for s in seen)  # the stored labels replayed
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in stats.values())
    changed = [
        not torch.equal(a, b) for a, b in zip(before, trainer.solver.parameters(), strict=True)
    ]
    assert any(changed)


# -- the teacher and sample commands ----------------------------------------------------------------
def test_run_teacher_stores_labels_and_run_sample_decodes_latents(tmp_path, class_unet):
    from PIL import Image

    from gas_solver.commands.sample import SampleConfig, run_sample
    from gas_solver.commands.teacher import TeacherConfig, run_teacher

    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=2, block_out_channels=(8, 8),
        layers_per_block=1, norm_num_groups=4, sample_size=16,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )  # fmt: skip
    source = f"{save_pipeline(tmp_path / 'ldm', class_unet, vae=vae)}:guidance=1.5"
    config = load_config(
        TeacherConfig,
        overrides=dict(
            model=source, out=str(tmp_path / "teacher"), seeds="3-8", solver="ddim:nfe=3",
            batch_size=4, device="cpu",
        ),
    )  # fmt: skip
    teacher = run_teacher(config, progress=False)
    torch.testing.assert_close(teacher.cond, torch.arange(3, 9) % CLASSES)
    assert teacher.model_source == source and teacher.sample_shape == (2, 8, 8)
    config = load_config(
        SampleConfig,
        overrides=dict(
            solver="ddim:nfe=2", model=source, seeds="50000-50002", out=str(tmp_path / "s"),
            device="cpu",
        ),
    )  # fmt: skip
    out = run_sample(config, progress=False)
    arrays = np.load(out / "samples.npz")
    assert arrays["samples"].shape == (3, 2, 8, 8) and arrays["images"].shape == (3, 3, 16, 16)
    assert Image.open(out / "images" / "050001.png").size == (16, 16)


def test_run_teacher_with_a_prompt_file(tmp_path, text_dir):
    from gas_solver.commands.teacher import TeacherConfig, run_teacher

    (tmp_path / "prompts.txt").write_text("a cat\n\na dog\n")
    config = load_config(
        TeacherConfig,
        overrides=dict(
            model=f"{text_dir}:guidance=2", out=str(tmp_path / "teacher"), seeds="0-2",
            solver="ddim:nfe=2", device="cpu", prompts=str(tmp_path / "prompts.txt"),
        ),
    )  # fmt: skip
    teacher = run_teacher(config, progress=False)
    ids = teacher.cond["input_ids"]
    assert ids.shape == (3, 10) and torch.equal(ids[0], ids[2]) and not torch.equal(ids[0], ids[1])


# -- GAS and validation pictures on a latent model --------------------------------------------------
@pytest.fixture(scope="module")
def sd_like_dir(tmp_path_factory):
    """An SD-shaped latent model: a UNet on 4×8×8 latents and an AutoencoderKL to 3×16×16."""
    torch.manual_seed(6)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
    )  # fmt: skip
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
        layers_per_block=1, norm_num_groups=4, sample_size=16, scaling_factor=0.5,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )  # fmt: skip
    return save_pipeline(tmp_path_factory.mktemp("sd-like"), unet, vae=vae)


def test_gas_trains_on_latents_and_draws_decoded_validation_pictures(
    tmp_path, sd_like_dir, monkeypatch
):
    import gas_solver.training.trainer as trainer_module

    model = load_model(str(sd_like_dir))
    assert model.is_latent and model.sample_shape == (4, 8, 8)
    spec = parse_solver_spec("ddim:nfe=3")
    teacher = generate_teacher_set(
        model, tmp_path / "teacher", "0-11", spec, spec.to_dict(), batch_size=6, progress=False
    )
    assert teacher.target.shape == (12, 4, 8, 8)  # the teacher set stores latents
    pictures = []
    monkeypatch.setattr(
        trainer_module, "save_comparison_grid", lambda rows, path: pictures.append((rows, path))
    )
    config = load_config(
        TrainSettings,
        overrides=dict(
            teacher=str(tmp_path / "teacher"), out=str(tmp_path / "run"), loss="gas", nfe=2,
            train_size=8, val_size=4, batch_size=4, iterations=3, val_every=0,
            checkpoint_every=3, log_every=1, device="cpu", disc_preset="tiny", disc_lr=1e-3,
        ),
    )  # fmt: skip
    trainer = Trainer(config, model, teacher)
    disc = trainer.adversary.discriminator
    assert (disc.arch.in_channels, disc.arch.resolution) == (4, 8)  # latents, not pixels
    seen = []
    hook = disc.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    before = [p.detach().clone() for p in disc.parameters()]
    trainer.run(progress=False)
    hook.remove()
    assert seen and all(shape[1:] == (4, 8, 8) for shape in seen)  # reals and fakes: latents
    assert any(not torch.equal(a, b) for a, b in zip(before, disc.parameters(), strict=True))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    steps = [r for r in records if "disc_loss" in r]
    assert len(steps) == 3
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["adversarial"]) for r in steps)

    # validation pictures (at the start and the end) show decoded images of the same items
    assert [path.name for _, path in pictures] == ["iter_000000.png", "iter_000003.png"]
    rows = pictures[-1][0]
    assert list(rows) == ["teacher", "GAS (EMA) @3"]
    assert all(images.shape == (4, 3, 16, 16) for images in rows.values())
    val = teacher.target[trainer.val_idx]
    with torch.no_grad():
        torch.testing.assert_close(rows["teacher"], model.decode(val).float())


def test_compare_a_text_model_with_a_prompt_file(tmp_path, text_dir):
    from gas_solver.evaluation import compare

    model = load_model(f"{text_dir}:guidance=2")
    (tmp_path / "prompts.txt").write_text("a cat\na dog\n")
    with pytest.raises(ConfigError, match="prompts"):
        compare(model, "ddim:nfe=2", "50000-50002", teacher="ddim:nfe=3", progress=False)
    rows = compare(
        model, "ddim:nfe=2", "50000-50002", teacher="ddim:nfe=3",
        prompts=tmp_path / "prompts.txt", progress=False,
    ).rows  # fmt: skip
    noise = seeded_noise(range(50000, 50003), model.sample_shape)
    cond = prompt_cond_fn(model, ["a cat", "a dog"])(torch.arange(50000, 50003))
    with torch.no_grad():
        target = parse_solver_spec("ddim:nfe=3")(model, noise, cond)
        output = parse_solver_spec("ddim:nfe=2")(model, noise, cond)
    assert rows[1].l1 == pytest.approx((output - target).abs().mean().item(), rel=1e-5)
