"""A tiny random Stable Diffusion 3 pipeline, saved and loaded through `load_model`: our solvers
with text and classifier-free guidance reproduce the pipeline's own sampling loop."""

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from gas_solver import FlowSchedule, load_model, sample  # noqa: E402
from gas_solver.errors import ConfigError  # noqa: E402
from gas_solver.models.diffusers import prompt_cond_fn  # noqa: E402
from gas_solver.models.diffusers_flow import DiffusersFlowModel  # noqa: E402
from tiny_text import clip_text_parts  # noqa: E402

PROMPTS = ["a digit", "two cats"]


def clip_with_projection(root, seed):
    """A tiny CLIP tokenizer and a one-layer CLIPTextModelWithProjection (8 features, 4 pooled)."""
    import transformers

    tokenizer, plain = clip_text_parts(root, hidden_size=8, seed=seed)
    config = transformers.CLIPTextConfig(**{**plain.config.to_dict(), "projection_dim": 4})
    torch.manual_seed(seed)
    return tokenizer, transformers.CLIPTextModelWithProjection(config).eval()


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory):
    import diffusers

    root = tmp_path_factory.mktemp("sd3")
    torch.manual_seed(0)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
        caption_projection_dim=16, pooled_projection_dim=8, pos_embed_max_size=8,
    )  # fmt: skip
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,),
        norm_num_groups=4, layers_per_block=1, scaling_factor=1.5, shift_factor=0.1,
    )  # fmt: skip
    tokenizer, text_encoder = clip_with_projection(root / "tok1", seed=1)
    tokenizer_2, text_encoder_2 = clip_with_projection(root / "tok2", seed=2)
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, text_encoder_3=None, tokenizer_3=None,
    )  # fmt: skip
    pipe.save_pretrained(root / "pipe")
    return root / "pipe"


def test_folder_loads_as_a_flow_model(sd3_folder):
    model = load_model(str(sd3_folder))
    assert isinstance(model, DiffusersFlowModel) and model.is_latent
    assert isinstance(model.schedule, FlowSchedule) and model.schedule.shift == 3.0
    assert model.prediction_type == "flow_prediction" and model.sample_shape == (4, 8, 8)
    assert load_model(f"{sd3_folder}:guidance=2").identity()["guidance_scale"] == 2.0
    with pytest.raises(ConfigError, match="prompts"):
        model.default_cond(torch.arange(2))


@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_euler_with_text_and_guidance_matches_the_pipeline(sd3_folder, guidance):
    """StableDiffusion3Pipeline (FlowMatchEuler, shift 3, 5 steps) vs DDIM (= Euler on a flow)
    on the scheduler's sigmas, through our loader, prompt embeddings and guidance; then the
    decoded images of the pipeline's VAE path."""
    import diffusers

    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(
        sd3_folder, text_encoder_3=None, tokenizer_3=None
    )
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = pipe(
            prompt=PROMPTS, num_inference_steps=5, guidance_scale=guidance, latents=noise.clone(),
            output_type="latent",
        ).images  # fmt: skip
        images = pipe(
            prompt=PROMPTS, num_inference_steps=5, guidance_scale=guidance, latents=noise.clone(),
            output_type="pt",
        ).images  # fmt: skip
    model = load_model(f"{sd3_folder}:guidance={guidance}")
    cond = prompt_cond_fn(model, PROMPTS)(torch.arange(2))
    pipe.scheduler.set_timesteps(5)
    with torch.no_grad():
        got = sample(
            model, noise, "ddim", grid=pipe.scheduler.sigmas.double(), grid_unit="flow_sigma",
            cond=cond,
        )  # fmt: skip
        decoded = model.decode(got)
    assert expected.std() > 0.1
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    torch.testing.assert_close((decoded + 1) / 2, images.float(), rtol=1e-4, atol=1e-4)


def test_guidance_needs_negatives_without_text_encoders(sd3_folder, tmp_path):
    """Without text encoders, embeddings come in cond, and guidance takes negative_*."""
    import shutil

    bare = tmp_path / "bare"
    for part in ("transformer", "scheduler"):
        shutil.copytree(sd3_folder / part, bare / part)
    model = load_model(f"{bare}:guidance=2")
    assert not model.is_latent and not model.takes_prompts
    states, pooled = torch.randn(1, 7, 16), torch.randn(1, 8)
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ConfigError, match="no text encoders"):
        model.data_prediction(
            x, 0.5, {"encoder_hidden_states": states, "pooled_projections": pooled}
        )
    negatives = {
        "negative_encoder_hidden_states": 0 * states,
        "negative_pooled_projections": 0 * pooled,
    }
    out = model.data_prediction(
        x, 0.5, {"encoder_hidden_states": states, "pooled_projections": pooled, **negatives}
    )
    assert torch.isfinite(out).all()


def test_another_resolution_matches_the_pipeline_at_that_size(sd3_folder):
    """``folder:height=H,width=W`` (pixels) samples what the pipeline samples at that size; sizes
    the pipeline cannot make are refused naming what to pass."""
    import diffusers

    model = load_model(f"{sd3_folder}:height=16,width=12")
    assert model.sample_shape == (4, 16, 12)
    assert load_model(str(sd3_folder)).sample_shape == (4, 8, 8)  # the default is unchanged
    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(
        sd3_folder, text_encoder_3=None, tokenizer_3=None
    )
    noise = torch.randn(2, 4, 16, 12, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = pipe(
            prompt=PROMPTS, num_inference_steps=4, guidance_scale=1.0, latents=noise.clone(),
            height=16, width=12, output_type="latent",
        ).images  # fmt: skip
        cond = prompt_cond_fn(model, PROMPTS)(torch.arange(2))
        got = sample(
            model, noise, "ddim", grid=pipe.scheduler.sigmas.double(), grid_unit="flow_sigma",
            cond=cond,
        )  # fmt: skip
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    with pytest.raises(ConfigError, match="width=13 is not a positive multiple of 2"):
        load_model(f"{sd3_folder}:width=13")
    with pytest.raises(ConfigError, match="position embedding.*at most 16"):
        load_model(f"{sd3_folder}:height=20")
