"""Stable Diffusion XL on a tiny random-weight ``StableDiffusionXLPipeline`` built here offline
(real classes, small configs: a ``text_time`` UNet2DConditionModel, CLIPTextModel +
CLIPTextModelWithProjection, AutoencoderKL, SDXL's EulerDiscreteScheduler settings), saved with
``save_pretrained`` and loaded through ``load_model``:

* our DDIM and DPM-Solver++(2M), with guidance 1 and 5 and a negative prompt, equal the pipeline's
  own loop with ``DDIMScheduler`` / ``DPMSolverMultistepScheduler`` (latents and decoded images),
  for an epsilon and a v-prediction variant;
* the exported GS scheduler installed in the pipeline equals the project's GS; an untrained GS
  equals DPM-Solver++(3M) in float64;
* teacher → train (GS and GAS on the model's own features) → sample → compare → export through
  the CLI, the exported scheduler reproducing ``sample``'s latents in the pipeline;
* an incomplete folder is one line, exit 2.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from gas_solver import sample  # noqa: E402
from gas_solver.cli import main  # noqa: E402
from gas_solver.errors import ConfigError, MissingAssetError  # noqa: E402
from gas_solver.export import GeneralizedSolverScheduler, solver_table, use_in_pipeline  # noqa: E402
from gas_solver.models.diffusers_sdxl import (  # noqa: E402
    DiffusersSDXLModel,
    is_sdxl_folder,
    load_sdxl_model,
)
from gas_solver.models.loading import load_model  # noqa: E402
from gas_solver.seeds import seeded_noise  # noqa: E402
from gas_solver.solvers import dpm_solver_pp  # noqa: E402
from gas_solver.solvers.generalized import GeneralizedSolver  # noqa: E402
from solver_checks import relative_error, trained_looking  # noqa: E402
from tiny_text import clip_text_parts  # noqa: E402

PROMPTS = ["a cat", "two dogs"]
NEGATIVE = "blurry"
SDXL_SCHEDULER = dict(  # SDXL base's scheduler settings
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
    timestep_spacing="leading",
)  # fmt: skip
TOLERANCE = 1e-4
STEPS = 5
PREDICTIONS = ["epsilon", "v_prediction"]


def clip_encoder(root, seed, projection=None):
    """A tiny offline CLIP tokenizer and a two-layer CLIP text encoder (8 features; with
    ``projection``: CLIPTextModelWithProjection with that many pooled features)."""
    tokenizer, plain = clip_text_parts(root, hidden_size=8, seed=seed)
    config = transformers.CLIPTextConfig(
        **{**plain.config.to_dict(), "num_hidden_layers": 2, "projection_dim": projection or 8}
    )
    torch.manual_seed(seed)
    if projection is None:
        return tokenizer, transformers.CLIPTextModel(config).eval()
    return tokenizer, transformers.CLIPTextModelWithProjection(config).eval()


@pytest.fixture(scope="module")
def sdxl_dirs(tmp_path_factory):
    """``{prediction_type: folder}``: one tiny SDXL pipeline (latents 4×8×8, images 3×16×16),
    saved with an epsilon and a v-prediction scheduler."""
    root = tmp_path_factory.mktemp("sdxl")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=4, cross_attention_dim=16, attention_head_dim=(2, 4),
        use_linear_projection=True, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), addition_embed_type="text_time",
        addition_time_embed_dim=4, projection_class_embeddings_input_dim=6 * 4 + 4,
    )  # fmt: skip  # cross attention 16 = 8 + 8 (both encoders), 28 = 6 time ids × 4 + pooled 4
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
        layers_per_block=1, norm_num_groups=4, sample_size=16, scaling_factor=0.5,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )  # fmt: skip
    tokenizer, text_encoder = clip_encoder(root / "tok1", seed=1)
    tokenizer_2, text_encoder_2 = clip_encoder(root / "tok2", seed=2, projection=4)
    dirs = {}
    for prediction_type in PREDICTIONS:
        pipe = diffusers.StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
            tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, add_watermarker=False,
            scheduler=diffusers.EulerDiscreteScheduler(
                **SDXL_SCHEDULER, prediction_type=prediction_type
            ),
        )  # fmt: skip
        pipe.save_pretrained(root / prediction_type)
        dirs[prediction_type] = root / prediction_type
    return dirs


@pytest.fixture(scope="module")
def pipes(sdxl_dirs):
    """The saved pipelines loaded by diffusers itself (the references)."""
    return {
        kind: diffusers.StableDiffusionXLPipeline.from_pretrained(folder, add_watermarker=False)
        for kind, folder in sdxl_dirs.items()
    }


@pytest.fixture(scope="module")
def noise():
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))


def run_pipeline(pipe, scheduler, noise, scale, negative, nfe=STEPS):
    """The pipeline's own loop with ``scheduler``: latents and decoded images in [0, 1]."""
    pipe.scheduler = scheduler
    outputs = []
    for output_type in ("latent", "pt"):
        with torch.no_grad():
            outputs.append(
                pipe(
                    prompt=PROMPTS,
                    negative_prompt=negative,
                    num_inference_steps=nfe,
                    guidance_scale=scale,
                    latents=noise.clone(),
                    output_type=output_type,
                ).images
            )
    return outputs


# -- the folder -----------------------------------------------------------------------------------
def test_folder_loads_as_an_sdxl_model(sdxl_dirs, tmp_path):
    folder = sdxl_dirs["epsilon"]
    assert is_sdxl_folder(folder)
    model = load_model(f"{folder}:guidance=5")
    assert isinstance(model, DiffusersSDXLModel) and model.is_latent and model.takes_prompts
    assert model.sample_shape == (4, 8, 8) and model.image_size == (16, 16)
    assert model.time_ids.tolist() == [16, 16, 0, 0, 16, 16]
    assert model.prediction_type == "epsilon" and model.conditioning == "text"
    assert model.guidance_scale == 5.0
    identity = model.identity()
    assert identity["pipeline"] == "StableDiffusionXLPipeline"
    assert identity["force_zeros_for_empty_prompt"] is True
    assert load_model(str(sdxl_dirs["v_prediction"])).prediction_type == "v_prediction"
    with pytest.raises(ConfigError, match="prompts"):
        model.default_cond(torch.arange(2))

    # another image size: the latent shape and the micro-conditioning follow it
    wide = load_model(f"{folder}:height=24,width=32")  # source options, as FLUX's
    assert wide.sample_shape == (4, 12, 16) and wide.time_ids.tolist() == [24, 32, 0, 0, 24, 32]
    assert wide.identity() != load_sdxl_model(folder).identity()
    with pytest.raises(
        ConfigError, match="height must be a positive multiple of the VAE's scale factor 2"
    ):
        load_model(f"{folder}:height=15")

    # the identity names both text encoders' weights too
    copy = tmp_path / "other-encoder"
    shutil.copytree(folder, copy)
    encoder = transformers.CLIPTextModelWithProjection.from_pretrained(copy / "text_encoder_2")
    with torch.no_grad():
        encoder.text_projection.weight.mul_(2)
    encoder.save_pretrained(copy / "text_encoder_2")
    weights = [load_model(str(path)).identity()["weights"] for path in (folder, copy)]
    assert weights[0] != weights[1]


def test_an_incomplete_folder_is_one_line_and_exit_2(sdxl_dirs, tmp_path, capsys):
    bad = tmp_path / "no-encoder-2"
    shutil.copytree(sdxl_dirs["epsilon"], bad)
    shutil.rmtree(bad / "text_encoder_2")
    with pytest.raises(MissingAssetError, match="text_encoder_2/"):
        load_model(str(bad))
    (tmp_path / "prompts.txt").write_text("a cat\n")
    code = main(
        ["sample", "--model", str(bad), "--solver", "ddim:nfe=2", "--seeds", "0-1",
         "--prompts", str(tmp_path / "prompts.txt"), "--out", str(tmp_path / "s"), "--device", "cpu"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "text_encoder_2/ (CLIPTextModelWithProjection)" in err and "save_pretrained" in err
    assert str(bad) in err
    damaged = tmp_path / "damaged-scheduler"
    shutil.copytree(sdxl_dirs["epsilon"], damaged)
    (damaged / "scheduler" / "scheduler_config.json").write_text("{")
    with pytest.raises(ConfigError, match="not a readable scheduler config"):
        load_model(str(damaged))  # not DDPM's default betas in place of the model's


# -- classic solvers against the pipeline's own loop ----------------------------------------------
@pytest.mark.parametrize(("scale", "negative"), [(1.0, None), (5.0, None), (5.0, NEGATIVE)])
@pytest.mark.parametrize("solver", ["ddim", "dpmpp"])
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_classic_solvers_equal_the_pipeline(
    sdxl_dirs, pipes, noise, prediction_type, solver, scale, negative
):
    """DDIM = DDIMScheduler (η = 0, final ᾱ = ᾱ_0) and DPM-Solver++(2M) with lower-order final =
    DPMSolverMultistepScheduler (final σ = σ_min), on the pipeline's timesteps plus 0."""
    pipe = pipes[prediction_type]
    config = diffusers.EulerDiscreteScheduler.load_config(sdxl_dirs[prediction_type] / "scheduler")
    if solver == "ddim":
        scheduler = diffusers.DDIMScheduler.from_config(
            config, set_alpha_to_one=False, clip_sample=False
        )
        options = {}
    else:
        scheduler = diffusers.DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=2,
            final_sigmas_type="sigma_min", lower_order_final=True,
        )  # fmt: skip
        options = {"order": 2, "lower_order_final": True}
    latents, images = run_pipeline(pipe, scheduler, noise, scale, negative)

    model = load_model(f"{sdxl_dirs[prediction_type]}:guidance={scale}")
    cond = model.prompt_cond_fn(PROMPTS, negative_prompts=negative)(torch.arange(2))
    assert ("negative_text_embeds" in cond) == (negative is not None and scale != 1)
    grid = [*scheduler.timesteps.tolist(), 0]
    with torch.no_grad():
        ours = sample(model, noise, solver, grid=grid, grid_unit="timestep", cond=cond, **options)
        decoded = (model.decode(ours) + 1) / 2
    assert latents.std() > 0.1
    assert relative_error(ours, latents) < TOLERANCE
    assert relative_error(decoded, images) < TOLERANCE
    assert model.nfe == STEPS and model.unet_batches == STEPS  # guided halves in one batch


def test_guidance_negatives_pooled_embeddings_and_time_ids_make_a_difference(sdxl_dirs, noise):
    """What the equalities above rest on shows in the samples: guidance, the negative prompt
    against SDXL's zero embeddings, the pooled embeddings and the micro-conditioning."""
    folder = sdxl_dirs["epsilon"]
    guided = load_model(f"{folder}:guidance=5")
    grid = dict(solver="ddim", grid=[801, 601, 401, 201, 1, 0], grid_unit="timestep")
    cond = guided.prompt_cond_fn(PROMPTS)(torch.arange(2))
    states, pooled = guided.null_embeddings()
    assert not states.any() and not pooled.any()  # force_zeros_for_empty_prompt
    other_size = load_model(f"{folder}:guidance=5")
    other_size.time_ids.copy_(torch.tensor([32.0, 32, 0, 0, 32, 32]))  # another (H, W), same UNet
    with torch.no_grad():
        base = sample(guided, noise, cond=cond, **grid)
        variants = {
            "unguided": sample(load_model(str(folder)), noise, cond=cond, **grid),
            "negative": sample(
                guided, noise, cond=guided.prompt_cond_fn(PROMPTS, negative_prompts=NEGATIVE)(torch.arange(2)), **grid
            ),
            "pooled": sample(guided, noise, cond={**cond, "text_embeds": 0 * cond["text_embeds"]}, **grid),
            "time_ids": sample(other_size, noise, cond=cond, **grid),
        }  # fmt: skip
    for name, other in variants.items():
        assert relative_error(other, base) > 100 * TOLERANCE, name


# -- the exported scheduler in StableDiffusionXLPipeline ------------------------------------------
@pytest.mark.parametrize(("scale", "negative"), [(1.0, None), (5.0, NEGATIVE)])
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_exported_scheduler_in_the_pipeline_equals_gs(
    sdxl_dirs, pipes, noise, tmp_path, prediction_type, scale, negative
):
    nfe = 4
    model = load_model(f"{sdxl_dirs[prediction_type]}:guidance={scale}")
    gs = trained_looking(nfe, model.schedule, seed=30 + nfe)
    cond = model.prompt_cond_fn(PROMPTS, negative_prompts=negative)(torch.arange(2))
    with torch.no_grad():
        ours = gs(model, noise, cond)
        decoded = (model.decode(ours) + 1) / 2
    GeneralizedSolverScheduler.from_table(
        solver_table(gs, model), model.prediction_type, scale
    ).save_pretrained(tmp_path / "gs")
    pipe = pipes[prediction_type]
    original = pipe.scheduler
    try:
        installed = use_in_pipeline(pipe, tmp_path / "gs", guidance_scale=scale)
        latents, images = run_pipeline(pipe, installed, noise, scale, negative, nfe=nfe)
    finally:
        pipe.scheduler = original
    assert relative_error(latents, ours) < 1e-5
    assert relative_error(images, decoded) < 1e-5


def test_untrained_gs_is_dpm_solver_pp_3m_in_float64(sdxl_dirs, noise):
    model = load_model(f"{sdxl_dirs['v_prediction']}:guidance=5").double()
    cond = model.prompt_cond_fn(PROMPTS, negative_prompts=NEGATIVE)(torch.arange(2))
    assert cond["encoder_hidden_states"].dtype == torch.float64
    x = noise.double()
    for nfe in (3, 5):
        gs = GeneralizedSolver(nfe, model.schedule, init_grid="uniform").double()
        with torch.no_grad():
            ours = gs(model, x, cond)
            ref = dpm_solver_pp(model, x, gs.timesteps().detach(), cond, order=3, lower_order_final=False)  # fmt: skip
        assert relative_error(ours, ref) < 1e-6


# -- GAS on the model's own features ----------------------------------------------------------------
def test_feature_encoder_reads_the_unets_own_blocks(sdxl_dirs):
    """The encoder's features are the down and mid blocks' outputs of the UNet's own forward
    under the unconditional embeddings and the model's time ids; differentiable twice."""
    model = load_model(str(sdxl_dirs["epsilon"]))
    encoder = model.feature_encoder()
    x = torch.randn(3, *model.sample_shape, generator=torch.Generator().manual_seed(1))
    timestep = torch.tensor([1.0])
    seen = []
    hooks = [block.register_forward_hook(lambda m, args, out: seen.append(out))
             for block in (*model.unet.down_blocks, model.unet.mid_block)]  # fmt: skip
    states, pooled = model.null_embeddings()
    with torch.no_grad():
        model.unet(
            x, timestep, encoder_hidden_states=states.expand(3, -1, -1),
            added_cond_kwargs={"text_embeds": pooled.expand(3, -1),
                               "time_ids": model.time_ids.expand(3, -1)},
        )  # fmt: skip
        for hook in hooks:
            hook.remove()
        features = encoder(x, timestep)
    expected = [out[0] if isinstance(out, tuple) else out for out in seen]
    assert encoder.widths == (8, 16, 16) and len(features) == len(expected)
    for ours, theirs in zip(features, expected, strict=True):
        torch.testing.assert_close(ours, theirs)
    y = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(
        sum(f.square().sum() for f in encoder(y, timestep)), y, create_graph=True
    )
    grad.square().sum().backward()  # R1-style double backward
    assert y.grad is not None and torch.isfinite(y.grad).all()


# -- the CLI ----------------------------------------------------------------------------------------
def test_teacher_train_sample_compare_export_through_the_cli(sdxl_dirs, pipes, tmp_path):
    folder, scale = sdxl_dirs["epsilon"], 5.0
    source = f"{folder}:guidance={scale}"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")

    def cli(*args):
        device = [] if args[0] == "export" else ["--device", "cpu"]
        assert main([*args, *device]) == 0, args

    cli("teacher", "--model", source, "--out", str(tmp_path / "teacher"), "--seeds", "0-11",
        "--solver", "dpmpp:nfe=8,order=3", "--prompts", str(prompts), "--batch-size", "6")  # fmt: skip
    train = ["--teacher", str(tmp_path / "teacher"), "--nfe", "3", "--iterations", "2",
             "--train-size", "8", "--val-size", "4", "--batch-size", "4", "--val-every", "0",
             "--checkpoint-every", "2", "--init-solver", "dpmpp3m"]  # fmt: skip
    cli("train", *train, "--out", str(tmp_path / "gs"))
    cli("train", *train, "--out", str(tmp_path / "gas"), "--loss", "gas",
        "--disc-preset", "model-features", "--disc-lr", "1e-3")  # fmt: skip
    cli("sample", "--solver", str(tmp_path / "gs"), "--seeds", "100-101", "--prompts", str(prompts),
        "--out", str(tmp_path / "samples"))  # fmt: skip
    cli("compare", "--model", source, "--solvers", f"{tmp_path / 'gs'};{tmp_path / 'gas'};ddim:nfe=3",
        "--teacher", "dpmpp:nfe=8,order=3", "--seeds", "100-101", "--prompts", str(prompts),
        "--fid-ref", "none", "--no-cache", "--out", str(tmp_path / "compare"))  # fmt: skip
    cli("export", "--solver", str(tmp_path / "gs"), "--format", "diffusers",
        "--out", str(tmp_path / "exported"))  # fmt: skip

    report = json.loads((tmp_path / "compare" / "compare.json").read_text())
    assert len(report["rows"]) == 4
    arrays = np.load(tmp_path / "samples" / "samples.npz")
    assert arrays["samples"].shape == (2, 4, 8, 8) and arrays["images"].shape == (2, 3, 16, 16)

    # the exported scheduler in the pipeline makes sample's latents: seed 100 → "a cat"
    pipe = pipes["epsilon"]
    original = pipe.scheduler
    try:
        scheduler = use_in_pipeline(pipe, tmp_path / "exported", guidance_scale=scale)
        with torch.no_grad():
            latents = pipe(
                prompt=PROMPTS, num_inference_steps=scheduler.config.num_inference_steps,
                guidance_scale=scale, latents=seeded_noise([100, 101], (4, 8, 8)),
                output_type="latent",
            ).images  # fmt: skip
    finally:
        pipe.scheduler = original
    assert relative_error(latents, torch.from_numpy(arrays["samples"])) < 1e-5


def test_readme_sdxl_snippet_runs(sdxl_dirs, tmp_path, monkeypatch):
    """README.md, "Your own SDXL model": the Python part, on the tiny pipeline."""
    from pathlib import Path

    shutil.copytree(sdxl_dirs["epsilon"], tmp_path / "checkpoints" / "sdxl-base-1.0")
    model = load_model(f"{sdxl_dirs['epsilon']}:guidance=5")
    GeneralizedSolverScheduler.from_table(
        solver_table(trained_looking(4, model.schedule), model), model.prediction_type, 5.0
    ).save_pretrained(tmp_path / "exported" / "sdxl-gs4")
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("### Your own SDXL model\n", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(snippet, namespace)
    assert namespace["image"].size == (16, 16)
    assert namespace["scheduler"].config.num_inference_steps == 4
