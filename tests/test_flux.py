"""Tiny random FLUX.1 pipelines (guidance-distilled "dev" and un-guided "schnell" variants), saved
with ``save_pretrained`` and loaded through ``load_model``: our solvers reproduce ``FluxPipeline``'s
own sampling loop with its resolution-dependent time shift, the exported GS scheduler runs inside
``FluxPipeline``, and the whole method runs from the command line."""

from __future__ import annotations

import json
import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from gas_solver import FlowSchedule, sample  # noqa: E402
from gas_solver.errors import ConfigError  # noqa: E402
from gas_solver.export import GeneralizedSolverScheduler, solver_table, use_in_pipeline  # noqa: E402
from gas_solver.models.diffusers import prompt_cond_fn  # noqa: E402
from gas_solver.models.diffusers_flux import DiffusersFluxModel  # noqa: E402
from gas_solver.models.loading import load_model  # noqa: E402
from gas_solver.solvers.dpm_solver import dpm_solver_pp  # noqa: E402
from gas_solver.solvers.generalized import GeneralizedSolver  # noqa: E402
from solver_checks import relative_error, trained_looking  # noqa: E402
from tiny_text import clip_text_parts  # noqa: E402

PROMPTS = ["a digit", "two cats"]
SHIFTING = {
    "base_image_seq_len": 16,
    "max_image_seq_len": 256,
    "base_shift": 0.5,
    "max_shift": 1.15,
}
"""A tiny scheduler's dynamic shift: FLUX.1-dev's base and max shift over small token counts, so
that the tiny resolutions here get clearly different shifts."""


def t5_parts(root, seed: int = 3):
    """An offline T5 tokenizer (a unigram vocabulary of single characters, written under ``root``)
    and a one-layer T5EncoderModel with 16 features."""
    import string

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [(c, -2.0) for c in string.ascii_lowercase + string.digits]
    tokenizer = transformers.T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)
    tokenizer.save_pretrained(root)
    torch.manual_seed(seed)
    config = transformers.T5Config(
        vocab_size=len(pieces), d_model=16, d_kv=4, d_ff=16, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, dropout_rate=0.0, decoder_start_token_id=0,
    )  # fmt: skip
    return transformers.T5TokenizerFast.from_pretrained(root), transformers.T5EncoderModel(config)


def flux_pipeline(root, guided: bool):
    """A tiny random FluxPipeline: FLUX.1-dev style (guidance embedding, dynamic shift) when
    ``guided``, else FLUX.1-schnell style (no guidance, fixed shift 1)."""
    torch.manual_seed(0 if guided else 1)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8,
        guidance_embeds=guided, axes_dims_rope=(2, 2, 4),
    )  # fmt: skip
    with torch.no_grad():  # zero-initialised parts would hide a wrong input
        for p in transformer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=4, scaling_factor=1.5, shift_factor=0.1,
    )  # fmt: skip
    tokenizer, text_encoder = clip_text_parts(root / "clip", hidden_size=8, seed=1)
    tokenizer_2, text_encoder_2 = t5_parts(root / "t5")
    if guided:
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, **SHIFTING
        )
    else:
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0)
    pipe = diffusers.FluxPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer,
    )  # fmt: skip
    pipe.save_pretrained(root / "pipe")
    return root / "pipe"


@pytest.fixture(scope="module")
def flux_dev(tmp_path_factory):
    return flux_pipeline(tmp_path_factory.mktemp("flux-dev"), guided=True)


@pytest.fixture(scope="module")
def flux_schnell(tmp_path_factory):
    return flux_pipeline(tmp_path_factory.mktemp("flux-schnell"), guided=False)


@pytest.fixture(scope="module")
def variants(flux_dev, flux_schnell):
    return {"dev": flux_dev, "schnell": flux_schnell}


def pack(latents):
    b, c, h, w = latents.shape
    return diffusers.FluxPipeline._pack_latents(latents, b, c, h, w)


def unpack(packed, height, width):
    return diffusers.FluxPipeline._unpack_latents(packed, height, width, 2)


def test_folders_load_as_flux_models_with_the_shift_of_their_resolution(flux_dev, flux_schnell):
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    model = load_model(str(flux_dev))  # the pipeline's default size: 128 x the VAE factor 2
    assert isinstance(model, DiffusersFluxModel) and model.is_latent and model.takes_prompts
    assert model.sample_shape == (4, 128, 128) and model.prediction_type == "flow_prediction"
    mu = calculate_shift(64 * 64, **{k.replace("image_", ""): v for k, v in SHIFTING.items()})
    assert isinstance(model.schedule, FlowSchedule)
    assert model.schedule.shift == pytest.approx(math.exp(mu), rel=1e-12)
    assert model.guidance_scale == 3.5  # FluxPipeline's default
    small = load_model(f"{flux_dev}:guidance=2,height=16,width=32")
    identity = small.identity()
    assert small.sample_shape == (4, 8, 16) and identity["resolution"] == [16, 32]
    assert identity["time_shift"]["image_seq_len"] == 32 and identity["guidance_scale"] == 2.0
    assert identity["weights"] == model.identity()["weights"]

    schnell = load_model(f"{flux_schnell}:height=16,width=16")
    assert schnell.schedule.shift == 1.0 and schnell.guidance_scale is None
    assert schnell.identity()["time_shift"]["mu"] is None
    with pytest.raises(ConfigError, match="no guidance embedding.*leave guidance= out"):
        load_model(f"{flux_schnell}:guidance=3.5")
    with pytest.raises(ConfigError, match="multiples of 4"):
        load_model(f"{flux_dev}:height=18,width=16")
    with pytest.raises(ConfigError, match="height must be a positive number of pixels"):
        load_model(f"{flux_dev}:height=0")
    with pytest.raises(ConfigError, match="prompts"):
        model.default_cond(torch.arange(2))


def test_a_seeds_noise_is_the_pipelines(flux_dev):
    """The unpacked state: packed, a seed's noise is what FluxPipeline draws from that seed."""
    from gas_solver.seeds import seeded_noise

    pipe = diffusers.FluxPipeline.from_pretrained(flux_dev)
    generator = torch.Generator().manual_seed(7)
    drawn, ids = pipe.prepare_latents(1, 4, 32, 16, torch.float32, "cpu", generator)
    assert torch.equal(pack(seeded_noise([7], (4, 16, 8))), drawn) and ids.shape == (32, 3)


def test_a_bare_transformer_folder_takes_embeddings(flux_dev, tmp_path):
    """Without model_index.json and text encoders, the transformer's class says FLUX; conditions
    are then embeddings, and without a VAE the pipeline's factor 8 sets the latent size."""
    import shutil

    for part in ("transformer", "scheduler"):
        shutil.copytree(flux_dev / part, tmp_path / "bare" / part)
    model = load_model(f"{tmp_path / 'bare'}:height=32,width=16")
    assert isinstance(model, DiffusersFluxModel) and not model.is_latent
    assert not model.takes_prompts and model.sample_shape == (4, 4, 2)
    cond = {"encoder_hidden_states": torch.randn(1, 5, 16), "pooled_projections": torch.randn(1, 8)}
    assert torch.isfinite(model.data_prediction(torch.randn(1, 4, 4, 2), 0.5, cond)).all()
    with pytest.raises(ConfigError, match="takes no text prompts"):
        model.prompt_cond_fn(["a cat"])


def test_the_identity_names_the_text_encoders_weights(flux_dev, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(flux_dev, copy)
    encoder = transformers.T5EncoderModel.from_pretrained(copy / "text_encoder_2")
    with torch.no_grad():
        encoder.shared.weight.mul_(2)
    encoder.save_pretrained(copy / "text_encoder_2")
    ours = load_model(f"{flux_dev}:height=16,width=16").identity()["weights"]
    assert load_model(f"{copy}:height=16,width=16").identity()["weights"] != ours


@pytest.mark.parametrize(
    ("variant", "guidance", "size"),
    [("dev", 3.5, (16, 16)), ("dev", 2.0, (32, 24)), ("schnell", None, (16, 32))],
)
def test_euler_matches_the_pipeline(variants, variant, guidance, size):
    """FluxPipeline (its FlowMatchEuler scheduler, 4 steps, its shift for the size) against DDIM
    (= Euler on a flow) on the pipeline's sigmas, through our loader, prompts and guidance; the
    latents (caught at the last step) and the decoded images."""
    folder = variants[variant]
    height, width = size
    pipe = diffusers.FluxPipeline.from_pretrained(folder)
    noise = torch.randn(2, 4, height // 2, width // 2, generator=torch.Generator().manual_seed(5))
    caught = {}

    def catch(pipe, i, t, tensors):
        caught["latents"] = tensors["latents"]
        return tensors

    kwargs = {} if guidance is None else {"guidance_scale": guidance}
    with torch.no_grad():
        images = pipe(
            prompt=PROMPTS, height=height, width=width, num_inference_steps=4,
            latents=pack(noise), output_type="pt", callback_on_step_end=catch, **kwargs,
        ).images  # fmt: skip
    expected = unpack(caught["latents"], height, width)
    source = f"{folder}:height={height},width={width}"
    model = load_model(source if guidance is None else f"{source},guidance={guidance}")
    cond = prompt_cond_fn(model, PROMPTS)(torch.arange(2))
    with torch.no_grad():
        got = sample(
            model, noise, "ddim", grid=pipe.scheduler.sigmas.double(), grid_unit="flow_sigma",
            cond=cond,
        )  # fmt: skip
        decoded = model.decode(got)
    if variant == "dev":  # the pipeline's grid is the linear one under the model's shift
        sigmas = torch.linspace(1, 0.25, 4, dtype=torch.float64)
        shift = model.schedule.shift
        assert shift > 1.5
        shifted = shift * sigmas / (1 + (shift - 1) * sigmas)
        torch.testing.assert_close(pipe.scheduler.sigmas[:-1].double(), shifted, rtol=1e-6, atol=0)
    assert expected.std() > 0.1
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    torch.testing.assert_close((decoded + 1) / 2, images.float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", ["dev", "schnell"])
def test_the_exported_scheduler_in_flux_pipeline_equals_gs(variants, variant, tmp_path):
    folder = variants[variant]
    model = load_model(f"{folder}:height=32,width=16")
    gs = trained_looking(4, model.schedule, seed=7)
    cond = prompt_cond_fn(model, PROMPTS)(torch.arange(2))
    noise = torch.randn(2, 4, 16, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = gs(model, noise, cond)

    table = solver_table(gs, model, {"model": model.identity()})
    GeneralizedSolverScheduler.from_table(
        table, model.prediction_type, model.guidance_scale
    ).save_pretrained(tmp_path / "gs")
    pipe = diffusers.FluxPipeline.from_pretrained(folder)
    installed = use_in_pipeline(pipe, tmp_path / "gs", guidance_scale=model.guidance_scale)
    assert installed.config.use_dynamic_shifting == (variant == "dev")
    kwargs = {"prompt": PROMPTS, "latents": pack(noise), "output_type": "latent"}
    latents = pipe(height=32, width=16, num_inference_steps=4, **kwargs).images
    assert relative_error(unpack(latents, 32, 16), ours) < 1e-5

    with pytest.raises(ValueError, match="trained for 4 steps; call the pipeline with num_inf"):
        pipe(height=32, width=16, num_inference_steps=5, **kwargs)
    other = {"latents": pack(torch.randn(2, 4, 8, 8)), "height": 16, "width": 16}
    if variant == "dev":  # another size is another time shift
        with pytest.raises(ValueError, match="call the pipeline with height=32, width=16"):
            pipe(**{**kwargs, **other}, num_inference_steps=4)
    with pytest.raises(ValueError, match="custom timesteps or sigmas"):
        pipe(height=32, width=16, num_inference_steps=4, sigmas=[1.0, 0.7, 0.4, 0.1], **kwargs)
    with pytest.raises(ValueError, match="cannot start at step 2"):
        installed.set_begin_index(2)


def test_the_scheduler_checks_the_pipelines_dynamic_shift(flux_dev, tmp_path):
    model = load_model(f"{flux_dev}:height=16,width=16")
    table = solver_table(trained_looking(3, model.schedule), model, {"model": model.identity()})
    scheduler = GeneralizedSolverScheduler.from_table(table, model.prediction_type)
    assert scheduler.config.resolution == [16, 16] and scheduler.config.image_seq_len == 16
    own = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(flux_dev / "scheduler")
    scheduler.check_model_schedule(own)
    moved = diffusers.FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, **{**SHIFTING, "base_shift": 0.7}
    )
    with pytest.raises(ValueError, match="noise schedule"):
        scheduler.check_model_schedule(moved)
    fixed = GeneralizedSolverScheduler.from_table(
        solver_table(trained_looking(3, FlowSchedule(3.0)), load_model("gmm-ring-flow")),
        "flow_prediction",
    )
    with pytest.raises(ValueError, match="use_dynamic_shifting"):
        fixed.check_model_schedule(own)


def test_untrained_gs_is_dpm_solver_pp_3m(flux_dev):
    model = load_model(f"{flux_dev}:height=16,width=16,guidance=4").double()
    cond = prompt_cond_fn(model, PROMPTS)(torch.arange(2))
    cond = {key: value.double() for key, value in cond.items()}
    noise = torch.randn(2, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    gs = GeneralizedSolver(4, model.schedule, init_grid="logsnr").double()
    with torch.no_grad():
        ours = gs(model, noise, cond)
        reference = dpm_solver_pp(
            model, noise, gs.timesteps().detach(), cond, order=3, lower_order_final=False
        )
    assert relative_error(ours, reference) < 1e-6


# -- the command line -------------------------------------------------------------------------------
def test_teacher_train_sample_export_through_the_cli(flux_dev, tmp_path, capsys):
    import subprocess
    import sys

    from gas_solver.cli import main

    def run(*args):
        return main([str(a) for a in args])

    (tmp_path / "prompts.txt").write_text("a digit\ntwo cats\n")
    source = f"{flux_dev}:height=16,width=16"
    assert run("teacher", "--model", source, "--seeds", "0-11", "--prompts", tmp_path / "prompts.txt",
               "--solver", "unipc:nfe=6", "--out", tmp_path / "t") == 0  # fmt: skip
    assert run("train", "--teacher", tmp_path / "t", "--nfe", 3, "--iterations", 2, "--batch-size", 4,
               "--train-size", 8, "--val-size", 4, "--val-every", 0, "--init-solver", "dpmpp3m",
               "--out", tmp_path / "gs") == 0  # fmt: skip
    assert run("sample", "--solver", tmp_path / "gs", "--seeds", "100-101", "--prompts",
               tmp_path / "prompts.txt", "--out", tmp_path / "s") == 0  # fmt: skip
    assert run("export", "--solver", tmp_path / "gs", "--format", "diffusers",
               "--out", tmp_path / "sched") == 0  # fmt: skip
    config = json.loads((tmp_path / "sched" / "scheduler_config.json").read_text())
    assert config["resolution"] == [16, 16] and config["use_dynamic_shifting"]
    assert config["mu"] == pytest.approx(0.5) and config["guidance_scale"] == 3.5
    # the export in FluxPipeline, with a generator per seed and prompt (seed mod 2), samples
    # what `sample` sampled
    import numpy as np

    pipe = diffusers.FluxPipeline.from_pretrained(flux_dev)
    use_in_pipeline(pipe, tmp_path / "sched", guidance_scale=3.5)
    latents = pipe(
        prompt=PROMPTS, height=16, width=16, num_inference_steps=3, output_type="latent",
        generator=[torch.Generator().manual_seed(seed) for seed in (100, 101)],
    ).images  # fmt: skip
    sampled = torch.from_numpy(np.load(tmp_path / "s" / "samples.npz")["samples"])
    assert relative_error(unpack(latents, 16, 16), sampled) < 1e-5
    capsys.readouterr()

    # another resolution: one line, exit 2, naming the trained size
    wrong = run("sample", "--solver", tmp_path / "gs", "--model", f"{flux_dev}:height=32,width=16",
                "--seeds", "0", "--prompts", tmp_path / "prompts.txt", "--out", tmp_path / "w")  # fmt: skip
    err = capsys.readouterr().err  # above it: the libraries' loading progress bars
    errors = [line for line in err.splitlines() if "error" in line]
    assert wrong == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert "height=16,width=16" in errors[0] and "train a solver at 32x16" in errors[0]

    # a teacher set of another resolution: the same advice
    wrong = run("train", "--teacher", tmp_path / "t", "--model", f"{flux_dev}:height=32,width=16",
                "--nfe", 3, "--iterations", 1, "--out", tmp_path / "w2")  # fmt: skip
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert wrong == 2 and len(errors) == 1 and "height=16,width=16" in errors[0], errors

    # a pipeline this tool does not know: one line, exit 2, from `python -m gas_solver.cli`
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    refused = subprocess.run(
        [sys.executable, "-m", "gas_solver.cli", "sample", "--model", str(unknown), "--solver",
         "ddim:nfe=2", "--seeds", "0", "--out", str(tmp_path / "u")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert "WanPipeline is a pipeline gas-solver does not load" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
