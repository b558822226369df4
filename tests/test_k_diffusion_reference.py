"""The k-diffusion export against k-diffusion itself (the PyPI package ``k-diffusion`` 0.1.1,
installed without its dependencies by ``make test``).

Its ``sampling.py`` and ``external.py`` are loaded without the package's ``__init__`` (which imports
training code, torchvision and CLIP); ``utils.py``, which both import, imports torchvision's image
transforms at module level and never uses them in what runs here, so an empty module stands in
for torchvision (PyPI's torchvision does not import beside this torch).

* ``eps``: the bundled DDPM-schedule model ``mnist32-vp`` behind k-diffusion's own
  ``DiscreteVDDPMDenoiser``: an untrained GS made equal to DDIM (resp. DPM-Solver++(2M)) and
  exported samples what ``sample_euler`` (resp. ``sample_dpmpp_2m``) samples on the same sigmas;
  the wrapper's denoiser is the project's data prediction at the training timesteps.
* ``const``: the bundled flow model ``mnist32`` as a CONST denoiser (``D = x − σ·v`` at timestep
  ``1000·σ``, as ComfyUI's ``CONST`` and ``ModelSamplingDiscreteFlow`` make it): the DDIM-started GS
  samples what k-diffusion's ``sample_euler`` samples (Euler in σ on a flow model is DDIM).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest
import torch

pytest.importorskip("torchsde", reason="k-diffusion's sampling.py imports torchsde")
pytest.importorskip("torchdiffeq", reason="k-diffusion's sampling.py imports torchdiffeq")
if importlib.util.find_spec("k_diffusion") is None:
    pytest.skip("k-diffusion is not installed (make test installs it)", allow_module_level=True)

from gas_solver.export import KDiffusionSolver, sample_gs, solver_table  # noqa: E402
from gas_solver.models.loading import load_model  # noqa: E402
from gas_solver.solvers.generalized import GeneralizedSolver  # noqa: E402
from gas_solver.solvers.spec_text import parse_solver_spec  # noqa: E402
from solver_checks import relative_error  # noqa: E402

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def kd():
    """k-diffusion's ``sampling`` and ``external`` modules (see the module docstring)."""
    root = importlib.util.find_spec("k_diffusion").submodule_search_locations[0]
    package = types.ModuleType("k_diffusion")
    package.__path__ = [root]
    stand_ins = {name: types.ModuleType(name) for name in
                 ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")}  # fmt: skip
    stand_ins["torchvision.transforms"].functional = stand_ins["torchvision.transforms.functional"]
    with pytest.MonkeyPatch.context() as patch:
        for name, module in {"k_diffusion": package, **stand_ins}.items():
            patch.setitem(sys.modules, name, module)
        modules = {name: importlib.import_module(f"k_diffusion.{name}") for name in
                   ("utils", "sampling", "external")}  # fmt: skip
        for name in modules:
            patch.delitem(sys.modules, f"k_diffusion.{name}")
    return types.SimpleNamespace(**modules)


def exported(start: str, nfe: int, model) -> KDiffusionSolver:
    """The untrained GS equal to the classic solver ``start`` on the time-uniform grid."""
    spec = parse_solver_spec(start, nfe=nfe, grid="uniform")
    return KDiffusionSolver.from_table(
        solver_table(GeneralizedSolver.from_classic(spec, model.schedule), model)
    )


@pytest.fixture(scope="module")
def vp(kd):
    model = load_model("mnist32-vp")
    unet = model.unet
    denoiser = kd.external.DiscreteVDDPMDenoiser(
        lambda x, t: unet(x, t).sample, model.schedule.alphas_cumprod.float(), quantize=False
    )
    return model, denoiser


@pytest.mark.parametrize(
    ("start", "reference"),
    [("ddim", "sample_euler"), ("dpmpp:order=2,lower_order_final=false", "sample_dpmpp_2m")],
)
def test_eps_export_samples_what_k_diffusion_samples(kd, vp, start, reference):
    model, denoiser = vp
    solver = exported(start, 5, model)
    assert solver.sampling == "eps"
    sigmas = torch.tensor(solver.sigmas)
    x = torch.randn(2, *model.sample_shape, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    with torch.no_grad():
        theirs = getattr(kd.sampling, reference)(denoiser, x, sigmas, disable=True)
        ours = sample_gs(denoiser, x, sigmas, disable=True, solver=solver)
    assert relative_error(ours, theirs) < TOLERANCE


def test_k_diffusions_wrapper_is_the_projects_data_prediction_at_training_timesteps(vp):
    """Between training timesteps k-diffusion interpolates log σ̃ and the project log α (both
    continuous extensions of the same discrete schedule); on them the two must agree."""
    model, denoiser = vp
    steps = torch.tensor([999, 700, 350, 60])
    t = (steps + 1).double() / model.schedule.num_train_timesteps
    alpha, sigma = model.schedule.alpha(t), model.schedule.sigma(t)
    y = torch.randn(4, *model.sample_shape, generator=torch.Generator().manual_seed(1))
    a = alpha.float().view(-1, 1, 1, 1)
    with torch.no_grad():
        ours = model.data_prediction(y, t)
        theirs = denoiser(y / a, (sigma / alpha).float())
    assert relative_error(theirs, ours) < TOLERANCE


def test_const_export_samples_what_k_diffusions_euler_samples(kd):
    model = load_model("mnist32")
    unet = model.unet

    def denoiser(x, sigma):  # ComfyUI's CONST: x − σ·v, the network at timestep 1000·σ
        return x - sigma.view(-1, 1, 1, 1) * unet(x, 1000 * sigma).sample

    solver = exported("ddim", 5, model)
    assert (solver.sampling, solver.shift) == ("const", 1.0)
    sigmas = torch.tensor(solver.sigmas)
    x = torch.randn(2, *model.sample_shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = kd.sampling.sample_euler(denoiser, x, sigmas, disable=True)
        ours = sample_gs(denoiser, x, sigmas, disable=True, solver=solver)
    assert relative_error(ours, theirs) < TOLERANCE
