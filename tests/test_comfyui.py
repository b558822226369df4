"""The ComfyUI node's logic (``gas_solver.export.comfyui``) and its one ComfyUI-facing file.

ComfyUI is not installable here, so the few ComfyUI formulas the node meets are re-implemented
below, each citing its ComfyUI file and function (commit ``a125cd8``, 2025-10-12), and a GS file
is driven exactly as ``SamplerCustom`` drives a ``KSAMPLER``: start ``noise_scaling``, a
``model_k(x, sigma, denoise_mask, model_options, seed)`` that is the model's data prediction in
ComfyUI's convention, the result through ``inverse_noise_scaling``. That result must be the
project's own GS sample from the same noise (≤ 1e-5 relative, float32) on the bundled flow model
``mnist32`` (shift 1), the exact flow mixture ``gmm-ring-flow`` (shift 3), an EDM VP network and
the bundled DDPM model ``mnist32-vp``. The node file itself is checked by parsing it and by
importing it over stand-ins of ``comfy``, ``folder_paths`` and ``comfy_api.latest``.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import json
import logging
import math
import sys
import types
from pathlib import Path

import pytest
import torch

from gas_solver.errors import ConfigError, CorruptFileError, MissingAssetError
from gas_solver.export import KDiffusionSolver, solver_table
from gas_solver.export.comfyui import (
    ComfyUISolver,
    check_sigmas,
    describe,
    load_for_comfyui,
    read_model_sampling,
    resolve_solver_file,
    solver_file_fingerprint,
)
from gas_solver.models.edm import EDMModel
from gas_solver.models.edm_networks import VPPrecond
from gas_solver.models.loading import load_model
from gas_solver.schedules import DiscreteVPSchedule
from gas_solver.version import __version__
from solver_checks import relative_error, trained_looking  # noqa: E402

TOLERANCE = 1e-5
NODE_DIR = Path(__file__).resolve().parents[1] / "comfyui" / "gas_solver_nodes"


# -- ComfyUI, re-implemented where the node meets it --------------------------------------------
def reshape_sigma(sigma, noise_dim):  # comfy/model_sampling.py::reshape_sigma
    if sigma.nelement() == 1:
        return sigma.view(())
    return sigma.view(sigma.shape[:1] + (1,) * (noise_dim - 1))


class EPS:  # comfy/model_sampling.py::EPS (noise_scaling, inverse_noise_scaling)
    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        sigma = reshape_sigma(sigma, noise.ndim)
        noise = noise * torch.sqrt(1.0 + sigma**2.0) if max_denoise else noise * sigma
        noise += latent_image
        return noise

    def inverse_noise_scaling(self, sigma, latent):
        return latent


class V_PREDICTION(EPS):  # comfy/model_sampling.py::V_PREDICTION: EPS's noise scaling
    pass


class CONST:  # comfy/model_sampling.py::CONST
    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        sigma = reshape_sigma(sigma, noise.ndim)
        return sigma * noise + (1.0 - sigma) * latent_image

    def inverse_noise_scaling(self, sigma, latent):
        sigma = reshape_sigma(sigma, latent.ndim)
        return latent / (1.0 - sigma)


class COSMOS_RFLOW:  # comfy/model_sampling.py::COSMOS_RFLOW: neither family
    pass


def time_snr_shift(alpha, t):  # comfy/model_sampling.py::time_snr_shift
    if alpha == 1.0:
        return t
    return alpha * t / (1 + (alpha - 1) * t)


def flux_time_shift(mu, sigma, t):  # comfy/model_sampling.py::flux_time_shift
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)


class ModelSamplingDiscreteFlow(torch.nn.Module):  # comfy/model_sampling.py (set_parameters)
    def __init__(self, shift=1.0, timesteps=1000, multiplier=1000):
        super().__init__()
        self.shift, self.multiplier = shift, multiplier
        self.register_buffer(
            "sigmas", self.sigma(torch.arange(1, timesteps + 1, 1) / timesteps * multiplier)
        )

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        return sigma * self.multiplier

    def sigma(self, timestep):
        return time_snr_shift(self.shift, timestep / self.multiplier)

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return time_snr_shift(self.shift, 1.0 - percent)


class ModelSamplingFlux(torch.nn.Module):  # comfy/model_sampling.py::ModelSamplingFlux
    def __init__(self, shift=1.15, timesteps=10000):
        super().__init__()
        self.shift = shift
        self.register_buffer("sigmas", self.sigma(torch.arange(1, timesteps + 1, 1) / timesteps))

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def sigma(self, timestep):
        return flux_time_shift(self.shift, 1.0, timestep)

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return flux_time_shift(self.shift, 1.0, 1.0 - percent)


class ModelSamplingDiscrete(torch.nn.Module):  # comfy/model_sampling.py::_register_schedule
    def __init__(self, alphas_cumprod):
        super().__init__()
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.register_buffer("sigmas", sigmas.float())

    @property
    def sigma_max(self):
        return self.sigmas[-1]


class ModelSamplingContinuousEDM(torch.nn.Module):  # comfy/model_sampling.py::set_parameters
    def __init__(self, sigma_min, sigma_max):
        super().__init__()
        sigmas = torch.linspace(math.log(sigma_min), math.log(sigma_max), 1000).exp()
        self.register_buffer("sigmas", sigmas)

    @property
    def sigma_max(self):
        return self.sigmas[-1]


def model_sampling(s, c, *args):  # comfy/model_base.py::model_sampling: class ModelSampling(s, c)
    class ModelSampling(s, c):
        pass

    return ModelSampling(*args)


def max_denoise(model_sampling, sigmas):  # comfy/samplers.py::Sampler.max_denoise
    max_sigma = float(model_sampling.sigma_max)
    sigma = float(sigmas[0])
    return math.isclose(max_sigma, sigma, rel_tol=1e-05) or sigma > max_sigma


class BaseModel:
    """comfy/model_base.py::BaseModel as the sampler sees it: ``model_sampling``, and
    ``apply_model`` = ``calculate_denoised`` of the network at ``calculate_input``: the data
    prediction at noise level ``sigma`` of ``x`` (EPS: x = x₀ + σ·ε; CONST: (1 − σ)·x₀ + σ·ε)."""

    def __init__(self, model_sampling, data_prediction):
        self.model_sampling, self.data_prediction = model_sampling, data_prediction


class CFGGuider:  # comfy/samplers.py::CFGGuider: inner_model (set in outer_sample), cfg
    def __init__(self, base, cfg=1.0):
        self.inner_model, self.cfg = base, cfg

    def __call__(self, x, timestep, model_options=None, seed=None):
        assert isinstance(model_options, dict)
        return self.inner_model.data_prediction(x, timestep)


class KSamplerX0Inpaint:  # comfy/samplers.py::KSamplerX0Inpaint (no mask)
    def __init__(self, model, sigmas):
        self.inner_model, self.sigmas = model, sigmas

    def __call__(self, x, sigma, denoise_mask, model_options=None, seed=None):
        assert denoise_mask is None
        return self.inner_model(x, sigma, model_options=model_options, seed=seed)


def ksampler_sample(sampler_function, guider, sigmas, noise, latent_image):
    """comfy/samplers.py::KSAMPLER.sample with CFGGuider.inner_sample's extra_args; the steps
    ComfyUI's callback got."""
    extra_args = {"model_options": {"transformer_options": {}}, "seed": 0}
    extra_args["denoise_mask"] = None
    model_k = KSamplerX0Inpaint(guider, sigmas)
    ms = guider.inner_model.model_sampling
    noise = ms.noise_scaling(sigmas[0], noise, latent_image, max_denoise(ms, sigmas))
    steps, total_steps = [], len(sigmas) - 1
    k_callback = lambda x: steps.append((x["i"], x["denoised"], x["x"], total_steps))  # noqa: E731
    samples = sampler_function(
        model_k, noise, sigmas, extra_args=extra_args, callback=k_callback, disable=True
    )
    return ms.inverse_noise_scaling(sigmas[-1], samples), steps


# -- models and solvers --------------------------------------------------------------------------


def flow_prediction(model):
    """ComfyUI's CONST denoiser D(x; σ): the data prediction at flow level σ (the network sees
    ``timestep(σ) = σ·1000``, gas-solver's ``N·s``)."""
    schedule = model.schedule
    return lambda x, sigma: model.data_prediction(x, schedule.t_from_flow_sigma(sigma.double()))


def vp_prediction(model):
    """ComfyUI's EPS-family denoiser D(x; σ̃), x = x₀ + σ̃·ε: the data prediction of the state
    ``α·x`` at the time of σ̃."""
    schedule = model.schedule

    def predict(x, sigma):
        sigma = sigma.double()
        alpha = (1 / torch.sqrt(1 + sigma**2)).to(x.dtype).view(-1, *[1] * (x.dim() - 1))
        return model.data_prediction(alpha * x, schedule.t_from_edm_sigma(sigma))

    return predict


@pytest.fixture(scope="module")
def edm_model():
    torch.manual_seed(8)
    net = VPPrecond(
        img_resolution=8, img_channels=3, model_type="SongUNet", model_channels=16,
        channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # EDM zero-initialises output layers, which would hide bugs
        for p in net.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return EDMModel(net.eval(), (3, 8, 8))


def exported(tmp_path, model, nfe=4, seed=0, guidance=None, batch=2):
    """``(file, the GS's own samples, the noise)`` of a trained-looking GS for ``model``."""
    gs = trained_looking(nfe, model.schedule, seed=seed)
    noise = torch.randn(batch, *model.sample_shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = gs(model, noise)
    path = tmp_path / "gs.json"
    KDiffusionSolver.from_table(solver_table(gs, model), guidance).save(path)
    return path, ours, noise


def run_like_comfyui(path, ms, prediction, noise, cfg=1.0, load_ms=None):
    """The node's SAMPLER and SIGMAS through SamplerCustom: empty latent, the given noise."""
    loaded = load_for_comfyui(path, ms if load_ms is None else load_ms)
    guider = CFGGuider(BaseModel(ms, prediction), cfg)
    latent = torch.zeros_like(noise)  # EmptyLatentImage
    return ksampler_sample(loaded.sample, guider, loaded.sigmas, noise, latent)


# -- the sampler gives the project's own GS samples -----------------------------------------------
@pytest.mark.parametrize("name", ["mnist32", "gmm-ring-flow"])
@pytest.mark.parametrize("sampling_class", ["ModelSamplingDiscreteFlow", "ModelSamplingFlux"])
def test_flow_solver_in_comfyui_gives_the_gs_samples(tmp_path, name, sampling_class):
    model = load_model(name)
    path, ours, noise = exported(tmp_path, model, seed=1)
    shift = model.schedule.shift
    if sampling_class == "ModelSamplingFlux":  # FLUX's shift is mu, k = e^mu
        ms = model_sampling(ModelSamplingFlux, CONST, math.log(shift))
    else:  # ModelSamplingSD3(shift) patches this one in
        ms = model_sampling(ModelSamplingDiscreteFlow, CONST, shift)
    out, steps = run_like_comfyui(path, ms, flow_prediction(model), noise)
    assert relative_error(out, ours) < TOLERANCE
    assert [(i, total) for i, *_, total in steps] == [(i, 4) for i in range(4)]


def test_flow_sigmas_are_comfyuis_sigmas(tmp_path):
    """ComfyUI's sigma of a flow model at the GS's (unshifted) times is the solver's sigma:
    ``ModelSamplingDiscreteFlow.sigma(t·1000) = time_snr_shift(k, t) = FlowSchedule.flow_sigma``."""
    model = load_model("gmm-ring-flow")
    gs = trained_looking(4, model.schedule, seed=2)
    KDiffusionSolver.from_table(solver_table(gs, model)).save(tmp_path / "gs.json")
    loaded = load_for_comfyui(tmp_path / "gs.json")
    ms = model_sampling(ModelSamplingDiscreteFlow, CONST, model.schedule.shift)
    times = gs.timesteps().double()
    assert torch.allclose(ms.sigma(times * 1000), loaded.sigmas.double(), rtol=1e-6)
    assert torch.allclose(ms.sigma(times * 1000), model.schedule.flow_sigma(times), rtol=1e-12)
    assert read_model_sampling(ms).shift == pytest.approx(3.0, rel=1e-12)


@pytest.mark.parametrize("start", ["max_denoise", "below_sigma_max"])
def test_vp_solver_in_comfyui_gives_the_gs_samples(tmp_path, edm_model, start):
    """EPS family: ComfyUI starts from noise·√(1 + σ₀²) when σ₀ is the model's largest sigma
    (``max_denoise``) and from noise·σ₀ below it; both are taken back to the GS's start."""
    path, ours, noise = exported(tmp_path, edm_model, seed=4)
    sigma0 = read_first_sigma(path)
    top = sigma0 if start == "max_denoise" else 2 * sigma0
    ms = model_sampling(ModelSamplingContinuousEDM, EPS, 0.002, top)
    assert max_denoise(ms, [sigma0]) == (start == "max_denoise")
    out, _ = run_like_comfyui(path, ms, vp_prediction(edm_model), noise)
    assert relative_error(out, ours) < TOLERANCE


def test_ddpm_solver_in_comfyui_gives_the_gs_samples(tmp_path):
    """``mnist32-vp`` (DDPM schedule, v-prediction) as ComfyUI builds SD-style models:
    ``ModelSamplingDiscrete`` + ``V_PREDICTION``, σ_max = σ̃ at the last training step."""
    model = load_model("mnist32-vp")
    path, ours, noise = exported(tmp_path, model, seed=6)
    ms = model_sampling(ModelSamplingDiscrete, V_PREDICTION, model.schedule.alphas_cumprod)
    out, _ = run_like_comfyui(path, ms, vp_prediction(model), noise)
    assert relative_error(out, ours) < TOLERANCE


def read_first_sigma(path) -> float:
    return json.loads(Path(path).read_text())["sigmas"][0]


# -- refusals -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flow_file(tmp_path_factory):
    """A GS-4 file of ``gmm-ring-flow`` (shift 3), its model and the GS's samples."""
    model = load_model("gmm-ring-flow")
    path, ours, noise = exported(tmp_path_factory.mktemp("flow"), model, seed=7, guidance=4.5)
    return path, model, ours, noise


def flow_sampling(shift=3.0):
    return model_sampling(ModelSamplingDiscreteFlow, CONST, shift)


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (lambda s: s[2:], r"got 2 of its 4 steps .*partial denoise is not supported"),  # denoise<1
        (lambda s: s[:3], r"got 2 of its 4 steps .*partial denoise"),  # SplitSigmas' high part
        (
            lambda s: torch.linspace(1, 0, 11),
            r"got 11 sigmas \(10 steps\), it takes exactly its own 5",
        ),  # fmt: skip
        (lambda s: torch.cat([s, s.new_zeros(1)]), r"got 6 sigmas .*exactly its own 5"),
        (lambda s: s * 0.98, r"got other sigmas .*another scheduler, shift or model"),
    ],
)
def test_other_sigmas_are_refused_saying_what_to_do(flow_file, cut, message):
    path, model, _, noise = flow_file
    loaded = load_for_comfyui(path, flow_sampling())
    with pytest.raises(ConfigError, match=message) as err:
        loaded.sample(flow_prediction(model), noise, cut(loaded.sigmas))
    assert "connect the GAS Solver Loader's sigmas output" in str(err.value)


def test_another_flow_shift_is_refused_naming_both(flow_file):
    path, model, _, noise = flow_file
    with pytest.raises(ConfigError, match=r"trained at flow shift 3, the model samples at shift 1"):
        load_for_comfyui(path, flow_sampling(1.0))
    with pytest.raises(ConfigError, match="ModelSamplingSD3"):
        load_for_comfyui(path, model_sampling(ModelSamplingFlux, CONST, 1.15))
    # checked again against the model SamplerCustom runs (another one than the loader's)
    with pytest.raises(ConfigError, match="shift 3, the model samples at shift 2"):
        run_like_comfyui(
            path, flow_sampling(2.0), flow_prediction(model), noise, load_ms=flow_sampling()
        )


def test_a_flow_sampling_of_another_unit_is_refused(flow_file):
    """A CONST model whose sigmas are not time_snr_shift of its time (same k at t = ½)."""

    class OtherFlow(ModelSamplingDiscreteFlow):
        def percent_to_sigma(self, percent):
            t = 1.0 - percent
            return time_snr_shift(self.shift, t) + 0.01 * math.sin(2 * math.pi * t)

    with pytest.raises(ConfigError, match="not the shifted flow sigmas"):
        load_for_comfyui(flow_file[0], model_sampling(OtherFlow, CONST, 3.0))


def test_eps_and_const_do_not_mix(tmp_path, flow_file, edm_model):
    with pytest.raises(ConfigError, match=r"flow-matching \(CONST\) model, this one is an EPS"):
        load_for_comfyui(flow_file[0], model_sampling(ModelSamplingDiscrete, EPS, torch.linspace(0.99, 0.01, 1000)))  # fmt: skip
    path, _, _ = exported(tmp_path, edm_model)
    with pytest.raises(ConfigError, match=r"VP \(EPS-family\) model, this one is a flow-matching"):
        load_for_comfyui(path, flow_sampling())
    with pytest.raises(ConfigError, match="neither ComfyUI's EPS family .* nor CONST"):
        load_for_comfyui(path, model_sampling(ModelSamplingContinuousEDM, COSMOS_RFLOW, 0.002, 80))


def test_a_ddpm_solver_refuses_another_ddpm_schedule(tmp_path):
    model = load_model("mnist32-vp")
    path, _, _ = exported(tmp_path, model)
    other = DiscreteVPSchedule.from_beta_range().alphas_cumprod  # SD's scaled_linear betas
    with pytest.raises(ConfigError, match="trained on a DDPM schedule of 1000 steps"):
        load_for_comfyui(path, model_sampling(ModelSamplingDiscrete, EPS, other))


def test_the_sampler_needs_a_model_sampling(flow_file):
    path, model, _, noise = flow_file
    loaded = load_for_comfyui(path)  # no model given, and a plain denoiser: nothing to read
    with pytest.raises(ConfigError, match="no model_sampling"):
        loaded.sample(flow_prediction(model), noise, loaded.sigmas)
    plain = ComfyUISolver(loaded.solver, loaded.path, flow_sampling())  # the loader's is used
    assert plain.sample(flow_prediction(model), noise, loaded.sigmas).shape == noise.shape


def test_another_cfg_than_trained_is_warned_about(flow_file, caplog):
    path, model, ours, noise = flow_file
    with caplog.at_level(logging.WARNING, logger="gas_solver.export.comfyui"):
        for quiet in (4.5, 1.0):  # the trained scale; no CFG (FLUX.1-dev: FluxGuidance)
            run_like_comfyui(path, flow_sampling(), flow_prediction(model), noise, cfg=quiet)
        assert not caplog.records
        out, _ = run_like_comfyui(path, flow_sampling(), flow_prediction(model), noise, cfg=7.0)
    assert "trained at guidance 4.5, the sampler runs at cfg 7" in caplog.text
    assert relative_error(out, ours) < TOLERANCE  # the stand-in model ignores cfg


@pytest.mark.parametrize(
    ("write", "error", "message"),
    [
        (lambda p: p.write_text('{"format": "gas-solver-k-diff'), CorruptFileError, r"gs\.json"),
        (lambda p: p.write_text("{}"), CorruptFileError, "not a gas-solver k-diffusion solver"),
        (lambda p: p.write_bytes(b"\x00\xff" * 8), CorruptFileError, r"gs\.json"),
    ],
)
def test_a_damaged_file_is_one_clear_error(flow_file, tmp_path, write, error, message):
    path = tmp_path / "gs.json"
    write(path)
    with pytest.raises(error, match=message):
        load_for_comfyui(path, flow_sampling())
    data = json.loads(flow_file[0].read_text())
    data["state_weights"] = data["state_weights"][:2]
    path.write_text(json.dumps(data))
    with pytest.raises(CorruptFileError, match=r"gs\.json: state_weights"):
        load_for_comfyui(path, flow_sampling())


def test_not_a_solver_file_says_what_to_give(tmp_path):
    (tmp_path / "solver.safetensors").write_bytes(b"x")
    with pytest.raises(ConfigError, match="trained solver checkpoint: export it .* k-diffusion"):
        load_for_comfyui(tmp_path / "solver.safetensors")
    with pytest.raises(ConfigError, match="is a folder"):
        load_for_comfyui(tmp_path)
    with pytest.raises(MissingAssetError, match="gas-solver export"):
        load_for_comfyui(tmp_path / "missing.json")


# -- the file the node's text names, its cache key, its label -------------------------------------
def test_solver_file_is_found_by_name_or_path(flow_file, tmp_path):
    folder = tmp_path / "models" / "gas_solvers"
    (folder / "flux").mkdir(parents=True)
    target = folder / "flux" / "gs4.json"
    target.write_bytes(flow_file[0].read_bytes())
    assert resolve_solver_file("flux/gs4", [folder]) == target
    assert resolve_solver_file(" flux/gs4.json ", [folder]) == target
    assert resolve_solver_file(f'"{target}"', []) == target  # a pasted, quoted path
    with pytest.raises(
        MissingAssetError, match=r"gs5: no such solver file .*flux/gs4\.json are there"
    ):
        resolve_solver_file("gs5", [folder])
    with pytest.raises(ConfigError, match="solver_file is empty"):
        resolve_solver_file("  ", [folder])


def test_fingerprint_follows_the_file(flow_file, tmp_path):
    path = tmp_path / "gs.json"
    path.write_bytes(flow_file[0].read_bytes())
    first = solver_file_fingerprint("gs", [tmp_path])
    assert first == solver_file_fingerprint(str(path))
    path.write_text(path.read_text().replace('"nfe": 4', '"nfe":  4'))
    assert solver_file_fingerprint("gs", [tmp_path]) != first
    assert solver_file_fingerprint("absent", [tmp_path]).startswith("unreadable")


def test_label_says_what_the_solver_is(flow_file, tmp_path, edm_model):
    loaded = load_for_comfyui(flow_file[0])
    assert loaded.label.startswith("GS-4, flow (shift 3), trained at guidance 4.5, model ")
    assert "5 sigmas 0.9997 → 0.00" in loaded.label
    path, _, _ = exported(tmp_path, edm_model)
    solver = load_for_comfyui(path).solver
    assert describe(solver).startswith("GS-4, VP (eps), unguided")
    check_sigmas(solver, torch.tensor(solver.sigmas, dtype=torch.float32))  # its own pass


# -- the ComfyUI-facing file ----------------------------------------------------------------------
def test_node_file_defines_both_entry_points_and_imports_only_the_comfyui_module():
    tree = ast.parse((NODE_DIR / "__init__.py").read_text())
    nodes = list(ast.walk(tree))
    functions = {n.name for n in nodes if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assigned = {t.id for n in nodes if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}  # fmt: skip
    assert "comfy_entrypoint" in functions
    assert {"NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"} <= assigned
    classes = [n for n in nodes if isinstance(n, ast.ClassDef)]
    with_get_sigmas = [c.name for c in classes if any(isinstance(f, ast.FunctionDef) and f.name == "get_sigmas" for f in c.body)]  # fmt: skip
    assert with_get_sigmas == ["GASSolverLoader", "GASSolverLoader"]  # the node API's and the old
    imported = set()
    for n in nodes:
        if isinstance(n, ast.Import):
            imported |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            imported |= {f"{n.module}.{a.name}" for a in n.names} if n.module.startswith("gas_solver") else {n.module}  # fmt: skip
    ours = {name for name in imported if name.startswith("gas_solver")}
    assert ours == {"gas_solver.export.comfyui"}
    assert imported - ours - set(sys.stdlib_module_names) - {"__future__"} == {
        "comfy.samplers",
        "comfy_api.latest",
        "folder_paths",
    }


def test_node_folder_is_a_registry_package():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((NODE_DIR / "pyproject.toml").read_text())
    assert config["project"]["version"] == __version__
    assert config["project"]["dependencies"] == ["gas-solver"]
    assert {"PublisherId", "DisplayName"} <= set(config["tool"]["comfy"])


class _Port:
    def __init__(self, id=None, **options):
        self.id, self.options = id, options


def _comfy_type(io_type):
    port = {"io_type": io_type}
    ports = {"Input": type("Input", (_Port,), port), "Output": type("Output", (_Port,), port)}
    return type(io_type, (), {"io_type": io_type, **ports})


class _NodeOutput:  # comfy_api/latest/_io.py::NodeOutput
    def __init__(self, *args, ui=None):
        self.args = args


def import_node_file(monkeypatch, models_dir, node_api: bool):
    """``comfyui/gas_solver_nodes/__init__.py`` over stand-ins of what it imports of ComfyUI;
    ``node_api=False``: a ComfyUI without ``comfy_api.latest``."""
    folders = {}
    folder_paths = types.ModuleType("folder_paths")
    folder_paths.models_dir = str(models_dir)

    def add_model_folder_path(name, path, is_default=False):  # folder_paths.py
        folders.setdefault(name, [])
        folders[name].insert(0, path) if is_default else folders[name].append(path)

    folder_paths.add_model_folder_path = add_model_folder_path
    folder_paths.get_folder_paths = lambda name: list(folders[name])
    samplers = types.ModuleType("comfy.samplers")
    samplers.KSAMPLER = type("KSAMPLER", (), {"__init__": lambda self, fn, extra_options={}, inpaint_options={}: setattr(self, "sampler_function", fn)})  # fmt: skip
    comfy = types.ModuleType("comfy")
    comfy.samplers = samplers
    stand_ins = {"folder_paths": folder_paths, "comfy": comfy, "comfy.samplers": samplers}
    if node_api:
        latest = types.ModuleType("comfy_api.latest")
        latest.ComfyExtension = type("ComfyExtension", (), {})
        latest.io = types.SimpleNamespace(
            ComfyNode=type("ComfyNode", (), {}),
            Schema=lambda **fields: types.SimpleNamespace(**fields),
            NodeOutput=_NodeOutput,
            **{
                name: _comfy_type(t)
                for name, t in [
                    ("Model", "MODEL"),
                    ("String", "STRING"),
                    ("Sampler", "SAMPLER"),
                    ("Sigmas", "SIGMAS"),
                ]
            },  # fmt: skip
        )
        stand_ins |= {"comfy_api": types.ModuleType("comfy_api"), "comfy_api.latest": latest}
    else:
        stand_ins |= {"comfy_api": None, "comfy_api.latest": None}  # import fails
    for name, module in stand_ins.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("gas_solver_nodes", NODE_DIR / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, folders


class ModelPatcher:  # comfy/model_patcher.py::ModelPatcher.get_model_object
    def __init__(self, model_sampling):
        self.model_sampling = model_sampling

    def get_model_object(self, name):
        assert name == "model_sampling"
        return self.model_sampling


@pytest.mark.parametrize("node_api", [True, False])
def test_node_file_gives_sampler_and_sigmas_that_sample_the_gs(monkeypatch, tmp_path, flow_file, node_api):  # fmt: skip
    path, model, ours, noise = flow_file
    nodes, folders = import_node_file(monkeypatch, tmp_path / "models", node_api)
    folder = Path(folders["gas_solvers"][0])
    assert folder == tmp_path / "models" / "gas_solvers"
    folder.mkdir(parents=True)
    (folder / "gs4.json").write_bytes(path.read_bytes())
    patcher = ModelPatcher(flow_sampling())
    if node_api:
        assert not hasattr(nodes, "NODE_CLASS_MAPPINGS")  # else ComfyUI would not ask the API
        extension = asyncio.run(nodes.comfy_entrypoint())
        [node] = asyncio.run(extension.get_node_list())
        schema = node.define_schema()
        assert (schema.node_id, schema.display_name) == ("GASSolverLoader", "GAS Solver Loader")
        assert [p.id for p in schema.inputs] == ["model", "solver_file"]
        assert [p.io_type for p in schema.outputs] == ["SAMPLER", "SIGMAS", "STRING"]
        assert [p.io_type for p in schema.inputs] == ["MODEL", "STRING"]
        sampler, sigmas, label = node.execute(model=patcher, solver_file="gs4").args
        fingerprint = node.fingerprint_inputs(model=patcher, solver_file="gs4")
    else:
        assert not hasattr(nodes, "comfy_entrypoint")
        node = nodes.NODE_CLASS_MAPPINGS["GASSolverLoader"]
        assert nodes.NODE_DISPLAY_NAME_MAPPINGS == {"GASSolverLoader": "GAS Solver Loader"}
        assert list(node.INPUT_TYPES()["required"]) == ["model", "solver_file"]
        assert node.RETURN_TYPES == ("SAMPLER", "SIGMAS", "STRING")
        sampler, sigmas, label = getattr(node(), node.FUNCTION)(model=patcher, solver_file="gs4")
        fingerprint = node.IS_CHANGED(model=patcher, solver_file="gs4")
    assert fingerprint == solver_file_fingerprint(str(folder / "gs4.json"))
    assert torch.equal(node().get_sigmas(patcher, "gs4")[0], sigmas)
    assert label.startswith("GS-4, flow (shift 3)")
    guider = CFGGuider(BaseModel(flow_sampling(), flow_prediction(model)), 4.5)
    out, _ = ksampler_sample(
        sampler.sampler_function, guider, sigmas, noise, torch.zeros_like(noise)
    )
    assert relative_error(out, ours) < TOLERANCE
    with pytest.raises(ConfigError, match="trained at flow shift 3, the model samples at shift 1"):
        node().get_sigmas(ModelPatcher(flow_sampling(1.0)), "gs4")
