"""Classic solvers, their registry and ``sample``: convergence order on an exact model, NFE, errors.

The convergence tests integrate the probability-flow ODE of a 2-D Gaussian mixture (exact ε̂) from
t = 1 to t_eps = 1e-3 on logSNR grids and compare with an 8th-order adaptive reference
(DOP853, rtol 1e-10). The slope of log(error) against log(NFE) must be within 0.3 of the
expected order, which is:

* DDIM 1, DPM-Solver++(2M) 2, Heun 2, iPNDM (variable step) its order;
* UniPC-p: p + 1 (the corrector adds one order, Zhao et al. 2023), run without
  lower_order_final (a first-order last step would cap every solver at order 2);
* DPM-Solver++(3M): **2**. Its update (DPM-Solver reference code, diffusers, GAS base solver)
  estimates ``E₂ ≈ h² D''/2`` but weights it with the coefficient of ``h² D''``, so a D quadratic
  in λ is not integrated exactly; doubling that term gives order 3. We keep the reference formula
  (it must equal diffusers and the GAS initialisation) and test what it really does.
* iPNDM with the fixed (uniform-step) weights of the AMED/GITS code, orders 2–4: **2** on a
  non-uniform grid. The same weights are checked separately against the variable-step ones on a
  grid uniform in σ̃, where they coincide.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gas_solver.errors import ConfigError
from gas_solver.models import DiffusionModel, GaussianMixtureModel
from gas_solver.sampling import sample
from gas_solver.schedules import LinearVPSchedule, explicit_grid, time_grid
from gas_solver.solvers import (
    SOLVERS,
    SolverSpec,
    ddim,
    dpm_solver_pp,
    heun,
    ipndm,
    parse_solver_spec,
    unipc,
)
from gas_solver.solvers.ipndm import AB_WEIGHTS, adams_bashforth_weights

T_EPS = 1e-3


@pytest.fixture(scope="module")
def gmm() -> GaussianMixtureModel:
    means = [[1.0, 0.5], [-1.0, 0.0], [0.3, -1.2]]
    return GaussianMixtureModel(means, stds=[0.5, 0.4, 0.6])


@pytest.fixture(scope="module")
def start_and_reference(gmm: GaussianMixtureModel) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return x, gmm.reference_solution(x, 1.0, T_EPS)


# Most cases reach their asymptotic slope by NFE 32–96; the 4th-order ones (and variable-step
# iPNDM, whose σ̃ range is wide) need 96–256.
COARSE, FINE = (32, 48, 64, 96), (96, 128, 192, 256)
CONVERGENCE_CASES = [
    # id, solver, options, NFE range, expected order
    ("ddim", ddim, {}, COARSE, 1),
    ("dpmpp-2m", dpm_solver_pp, {"order": 2}, COARSE, 2),
    ("dpmpp-3m", dpm_solver_pp, {"order": 3}, COARSE, 2),
    ("unipc-1-bh1", unipc, {"order": 1, "lower_order_final": False}, COARSE, 2),
    ("unipc-2-bh1", unipc, {"order": 2, "lower_order_final": False}, COARSE, 3),
    ("unipc-2-bh2", unipc, {"order": 2, "variant": "bh2", "lower_order_final": False}, COARSE, 3),
    ("unipc-3-bh1", unipc, {"order": 3, "lower_order_final": False}, FINE, 4),
    ("unipc-3-bh2", unipc, {"order": 3, "variant": "bh2", "lower_order_final": False}, FINE, 4),
    ("ipndm-1", ipndm, {"order": 1}, COARSE, 1),
    ("ipndm-2", ipndm, {"order": 2}, COARSE, 2),
    ("ipndm-4-fixed", ipndm, {"order": 4}, COARSE, 2),
    ("ipndm-3-variable", ipndm, {"order": 3, "variant": "variable"}, FINE, 3),
    ("ipndm-4-variable", ipndm, {"order": 4, "variant": "variable"}, FINE, 4),
    ("heun", heun, {}, COARSE, 2),
]


@pytest.mark.parametrize(
    ("solver", "options", "nfes", "expected"),
    [case[1:] for case in CONVERGENCE_CASES],
    ids=[case[0] for case in CONVERGENCE_CASES],
)
def test_convergence_order(gmm, start_and_reference, solver, options, nfes, expected) -> None:
    x, reference = start_and_reference
    errors = []
    for nfe in nfes:
        steps = nfe // 2 if solver is heun else nfe
        grid = time_grid(gmm.schedule, steps, "logsnr", t_eps=T_EPS)
        errors.append((solver(gmm, x, grid, **options) - reference).norm(dim=1).max().item())
    slope = -np.polyfit(np.log(nfes), np.log(errors), 1)[0]
    assert abs(slope - expected) < 0.3, f"slope {slope:.2f}, errors {errors}"


def test_dpmpp_3m_steps_are_exact_for_data_prediction_linear_in_lambda() -> None:
    """With ``D(λ) = a + bλ`` (independent of x) the exponential integrator is exact,
    ``x_t = (σ_t/σ_s) x_s + σ_t [e^λ (a + bλ − b)]_{λ_s}^{λ_t}``; the 3M steps (from the third on)
    reproduce it on any grid. (The first two warm-up steps, DDIM and the 2M "midpoint" form, are
    not exact for linear D, and neither is 3M for quadratic D.)"""
    a, b = 0.3, -0.7

    class LinearInLambda(DiffusionModel):
        def network_output(self, x, t, cond=None):
            return (a + b * self.schedule.lambda_(t)).view(-1, 1).expand_as(x)

    model = LinearInLambda(LinearVPSchedule(), (1,), prediction_type="sample")
    grid = time_grid(model.schedule, 7, "edm", t_eps=T_EPS)  # non-uniform in λ
    lam, sigma = model.schedule.lambda_(grid), model.schedule.sigma(grid)
    antiderivative = lambda l: torch.exp(l) * (a + b * l - b)  # noqa: E731
    x0 = torch.tensor([[0.4]], dtype=torch.float64)
    x2 = dpm_solver_pp(model, x0, grid[:3], order=3)  # the two warm-up steps
    exact = sigma[-1] / sigma[2] * x2 + sigma[-1] * (
        antiderivative(lam[-1]) - antiderivative(lam[2])
    )
    torch.testing.assert_close(
        dpm_solver_pp(model, x0, grid, order=3), exact, rtol=1e-12, atol=1e-12
    )
    assert (dpm_solver_pp(model, x0, grid, order=2) - exact).abs().item() > 1e-4


def test_adams_bashforth_weights() -> None:
    uniform = torch.arange(5.0, -1.0, -1.0, dtype=torch.float64)  # 5, 4, …, 0
    for k in range(1, 5):
        weights = adams_bashforth_weights(uniform[5 - k :]).tolist()
        assert weights == pytest.approx(AB_WEIGHTS[k], abs=1e-12)
    nodes = torch.tensor([6.0, 3.5, 2.6, 1.1, 0.4], dtype=torch.float64)  # exact for cubics
    weights = adams_bashforth_weights(nodes)
    past = nodes[:-1].flip(0)
    for power in range(4):
        quadrature = (nodes[-1] - nodes[-2]) * (weights * past**power).sum()
        exact = (nodes[-1] ** (power + 1) - nodes[-2] ** (power + 1)) / (power + 1)
        assert quadrature.item() == pytest.approx(exact.item(), rel=1e-12)


def test_ipndm_fixed_equals_variable_on_uniform_sigma_grid(gmm, start_and_reference) -> None:
    x = start_and_reference[0]
    sigma_tilde = torch.linspace(9.0, 0.5, 9, dtype=torch.float64)
    start = gmm.schedule.t_from_edm_sigma(sigma_tilde[:1])
    x_start = gmm.reference_solution(x, 1.0, start.item())
    grid = explicit_grid(gmm.schedule, sigma_tilde, unit="sigma")
    fixed = ipndm(gmm, x_start, grid, order=4, variant="fixed")
    variable = ipndm(gmm, x_start, grid, order=4, variant="variable")
    torch.testing.assert_close(fixed, variable, rtol=1e-10, atol=1e-10)


def test_ipndm_order_one_is_ddim(gmm, start_and_reference) -> None:
    x = start_and_reference[0]
    grid = time_grid(gmm.schedule, 6, "edm")
    torch.testing.assert_close(ipndm(gmm, x, grid, order=1), ddim(gmm, x, grid))


# -- NFE, dtype, gradients -----------------------------------------------------------------------

NFE_CASES = [
    ("ddim", {}),
    ("dpmpp", {"order": 3}),
    ("dpmpp", {"order": 2, "lower_order_final": True}),
    ("unipc", {"order": 3, "variant": "bh2"}),
    ("unipc", {"order": 1}),
    ("ipndm", {"order": 4}),
    ("ipndm", {"order": 3, "variant": "variable"}),
    ("heun", {}),
]


@pytest.mark.parametrize(("name", "options"), NFE_CASES)
@pytest.mark.parametrize("nfe", [2, 4, 7])
def test_nfe_counter_equals_stated_nfe(gmm, name, options, nfe) -> None:
    if name == "heun" and nfe % 2:
        nfe += 1
    noise = torch.randn(3, 2, dtype=torch.float64)
    gmm.reset_nfe()
    out = sample(gmm, noise, name, nfe=nfe, **options)
    assert gmm.nfe == nfe
    assert out.shape == noise.shape and torch.isfinite(out).all()


def test_single_step_solvers(gmm) -> None:
    noise = torch.randn(3, 2, dtype=torch.float64)
    for name in ("ddim", "dpmpp", "unipc", "ipndm"):
        gmm.reset_nfe()
        sample(gmm, noise, name, nfe=1)
        assert gmm.nfe == 1


@pytest.mark.parametrize("name", list(SOLVERS))
def test_float32_and_gradients(gmm, name) -> None:
    noise = torch.randn(4, 2, dtype=torch.float32, requires_grad=True)
    grid = time_grid(gmm.schedule, 4, "logsnr").requires_grad_(True)
    out = sample(gmm, noise, name, grid=grid)
    assert out.dtype == torch.float32
    out.square().sum().backward()
    assert noise.grad is not None and torch.isfinite(noise.grad).all()
    assert grid.grad is not None and torch.isfinite(grid.grad).all()
    assert grid.grad[1:-1].abs().sum() > 0  # the interior times are trainable


# -- sample() dispatch -----------------------------------------------------------------------------


def test_sample_dispatches_to_the_solver_functions(gmm) -> None:
    noise = torch.randn(5, 2, dtype=torch.float64)
    grid = time_grid(gmm.schedule, 6, "logsnr")
    expected = dpm_solver_pp(gmm, noise, grid, order=2, lower_order_final=True)
    out = sample(gmm, noise, "dpmpp", nfe=6, order=2, lower_order_final=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(
        sample(gmm, noise, "dpmpp", grid=grid, order=2, lower_order_final=True),
        expected,
        rtol=0,
        atol=0,
    )
    edm = time_grid(gmm.schedule, 4, "edm", t_eps=1e-4, rho=5.0)
    out = sample(gmm, noise, "heun", nfe=8, grid="edm", t_eps=1e-4, rho=5.0)
    torch.testing.assert_close(out, heun(gmm, noise, edm), rtol=0, atol=0)
    # the default solver is UniPC-3 bh1 with lower_order_final
    out = sample(gmm, noise, nfe=6)
    torch.testing.assert_close(out, unipc(gmm, noise, grid), rtol=0, atol=0)


def test_sample_with_explicit_grid_units(gmm) -> None:
    noise = torch.randn(2, 2, dtype=torch.float64)
    sigmas = torch.tensor([50.0, 5.0, 1.0, 0.2, 0.02], dtype=torch.float64)
    grid_t = explicit_grid(gmm.schedule, sigmas, unit="sigma")
    out = sample(gmm, noise, "ipndm", grid=sigmas, grid_unit="sigma")
    torch.testing.assert_close(out, ipndm(gmm, noise, grid_t), rtol=0, atol=0)
    out = sample(gmm, noise, "ddim", grid=[1.0, 0.5, 0.1, 0.01], nfe=3)
    assert out.shape == noise.shape


def test_sample_with_a_callable_solver(gmm) -> None:
    class Learned(nn.Module):
        nfe = 2

        def forward(self, model, noise, cond=None):
            self.seen = cond
            return ddim(model, noise, time_grid(model.schedule, 2), cond)

    solver, noise = Learned(), torch.randn(3, 2, dtype=torch.float64)
    out = sample(gmm, noise, solver, cond="c", nfe=2)
    assert solver.seen == "c"
    torch.testing.assert_close(out, ddim(gmm, noise, time_grid(gmm.schedule, 2)))
    spec = SolverSpec("unipc", nfe=5)
    torch.testing.assert_close(sample(gmm, noise, spec), spec(gmm, noise))
    with pytest.raises(ConfigError, match="order"):
        sample(gmm, noise, solver, order=2)
    with pytest.raises(ConfigError, match="nfe"):
        sample(gmm, noise, solver, nfe=3)


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"solver": "dpmpp", "nfe": 0}, ConfigError, "nfe"),
        ({"solver": "dpmpp", "nfe": 2.5}, ConfigError, "nfe"),
        ({"solver": "dpmpp"}, ConfigError, "nfe: required"),
        ({"solver": "dpmpp", "nfe": 4, "order": 4}, ConfigError, "order"),
        ({"solver": "ipndm", "nfe": 4, "order": 5}, ConfigError, "order"),
        ({"solver": "heun", "nfe": 4, "order": 3}, ConfigError, "order"),
        ({"solver": "heun", "nfe": 5}, ConfigError, "multiple of 2"),
        ({"solver": "euler", "nfe": 4}, ConfigError, "unknown solver"),
        ({"solver": "unipc", "nfe": 4, "variant": "bh3"}, ConfigError, "variant"),
        ({"solver": "ddim", "nfe": 4, "variant": "bh1"}, ConfigError, "variant"),
        (
            {"solver": "ipndm", "nfe": 4, "lower_order_final": True},
            ConfigError,
            "lower_order_final",
        ),
        (
            {"solver": "unipc", "nfe": 4, "lower_order_final": "yes"},
            ConfigError,
            "lower_order_final",
        ),
        ({"solver": "unipc", "nfe": 4, "grid": "cosine"}, ConfigError, "grid"),
        ({"solver": "unipc", "nfe": 4, "t_eps": 0.0}, ConfigError, "t_eps"),
        ({"solver": "unipc", "nfe": 4, "t_eps": 2.0}, ConfigError, "t_eps"),
        ({"solver": "unipc", "nfe": 4, "rho": -1.0}, ConfigError, "rho"),
        ({"solver": "unipc", "nfe": 4, "eta": 1.0}, ConfigError, "unknown option"),
        ({"solver": "ddim", "nfe": 4, "grid": [1.0, 0.5, 0.1]}, ConfigError, "nfe"),
        ({"solver": "ddim", "grid": [1.0, 0.5, 0.1], "t_eps": 0.1}, ConfigError, "t_eps"),
        ({"solver": "ddim", "grid": [1.0, 0.1, 0.5]}, ValueError, "strictly decreasing"),
        ({"solver": "ddim", "grid": [1.5, 0.5, 0.1]}, ValueError, "must lie in"),
        ({"solver": "ddim", "grid": [1.0, 0.5, 0.0]}, ValueError, "must lie in"),
        ({"solver": "ddim", "grid": [1.0]}, ConfigError, "at least 2"),
    ],
)
def test_bad_input_raises_a_clear_error(gmm, kwargs, error, match) -> None:
    noise = torch.randn(2, 2, dtype=torch.float64)
    with pytest.raises(error, match=match):
        sample(gmm, noise, **kwargs)


def test_bad_noise_and_solver_arguments(gmm) -> None:
    grid = time_grid(gmm.schedule, 3)
    with pytest.raises(ConfigError, match="noise: shape"):
        sample(gmm, torch.randn(2, 3, dtype=torch.float64), "ddim", nfe=3)
    with pytest.raises(ConfigError, match="noise: shape"):
        sample(gmm, torch.randn(2, dtype=torch.float64), "ddim", nfe=3)
    x = torch.randn(2, 2, dtype=torch.float64)
    with pytest.raises(ConfigError, match="order"):
        dpm_solver_pp(gmm, x, grid, order=4)
    with pytest.raises(ConfigError, match="order"):
        unipc(gmm, x, grid, order=True)
    with pytest.raises(ConfigError, match="variant"):
        unipc(gmm, x, grid, variant="bh3")
    with pytest.raises(ConfigError, match="variant"):
        ipndm(gmm, x, grid, variant="adaptive")
    with pytest.raises(ValueError, match="strictly decreasing"):
        heun(gmm, x, grid.flip(0))
    with pytest.raises(ConfigError, match="needs 4 times"):
        SolverSpec("ddim", nfe=3).run(gmm, x, time_grid(gmm.schedule, 4))


# -- SolverSpec and its text syntax ---------------------------------------------------------------


def test_solver_spec_defaults_and_round_trips() -> None:
    spec = SolverSpec("unipc", nfe=8)
    assert (spec.order, spec.variant, spec.lower_order_final) == (3, "bh1", True)
    assert SolverSpec("dpmpp", nfe=8).lower_order_final is False
    assert SolverSpec("ipndm", nfe=8).variant == "fixed"
    assert SolverSpec("heun", nfe=8).steps == 4
    assert SolverSpec("ddim", grid=[1.0, 0.5, 0.001]).nfe == 2
    assert SolverSpec("heun", grid=[1.0, 0.5, 0.001]).nfe == 4
    for spec in (
        SolverSpec("unipc", nfe=8, variant="bh2", t_eps=1e-4),
        SolverSpec("ddim", grid=[999, 500, 0], grid_unit="timestep"),
        SolverSpec("heun", nfe=6, grid="edm", rho=5.0),
    ):
        assert SolverSpec.from_dict(spec.to_dict()) == spec
        assert parse_solver_spec(spec.to_string()) == spec
    with pytest.raises(ConfigError, match="unknown field"):
        SolverSpec.from_dict({"name": "ddim", "nfe": 4, "steps": 4})


def test_parse_solver_spec() -> None:
    spec = parse_solver_spec("unipc:order=3, variant=bh2, grid=logsnr, nfe=8")
    assert spec == SolverSpec("unipc", nfe=8, order=3, variant="bh2", grid="logsnr")
    spec = parse_solver_spec("dpmpp:order=2,lower_order_final=true,t_eps=1e-4", nfe=10)
    assert (spec.nfe, spec.order, spec.lower_order_final, spec.t_eps) == (10, 2, True, 1e-4)
    assert parse_solver_spec("dpmpp:nfe=6", nfe=10).nfe == 6  # the text wins over defaults
    spec = parse_solver_spec("ddim:grid=[999,666,333,0],grid_unit=timestep")
    assert spec.grid == (999.0, 666.0, 333.0, 0.0) and spec.nfe == 3
    assert parse_solver_spec("heun", nfe=4) == SolverSpec("heun", nfe=4)
    for text, match in [
        ("unipc:nfe=8,foo=1", "unknown key 'foo'"),
        ("unipc:nfe=eight", "bad value for nfe"),
        ("unipc:nfe=8,nfe=9", "nfe given twice"),
        ("unipc:nfe=8,lower_order_final=maybe", "bad value for lower_order_final"),
        ("unipc:nfe", "expected KEY=VALUE"),
        (":nfe=8", "missing solver name"),
        ("ddim:grid=[1,0.5", "bad value for grid"),
        ("unipc:order=3", "nfe: required"),
    ]:
        with pytest.raises(ConfigError, match=match):
            parse_solver_spec(text)


def test_spec_grid_matches_time_grid(gmm) -> None:
    spec = SolverSpec("heun", nfe=10, grid="edm", t_eps=1e-4)
    expected = time_grid(gmm.schedule, 5, "edm", t_eps=1e-4)
    torch.testing.assert_close(spec.make_grid(gmm.schedule), expected)
    assert math.isclose(spec.make_grid(gmm.schedule)[-1].item(), 1e-4)


# -- one calling shape: the callback ------------------------------------------------------------------
CALLBACK_CASES = [
    "ddim:nfe=5", "dpmpp:nfe=5,order=2", "dpmpp:nfe=5,order=3", "unipc:nfe=5",
    "unipc:nfe=5,variant=bh2", "ipndm:nfe=5", "ipndm:nfe=5,variant=variable", "heun:nfe=6",
]  # fmt: skip


@pytest.mark.parametrize("text", CALLBACK_CASES)
def test_callback_sees_every_call_and_the_solvers_own_data_prediction(text):
    from gas_solver.sampling import sample
    from gas_solver.solvers.spec_text import parse_solver_spec

    model = GaussianMixtureModel.ring().double()
    spec = parse_solver_spec(text)
    seen = []
    noise = torch.randn(4, 2, dtype=torch.float64)
    model.reset_nfe()
    with torch.no_grad():
        out = sample(model, noise, solver=spec, callback=seen.append)
        assert [c["i"] for c in seen] == list(range(spec.nfe)) and model.nfe == spec.nfe
        for c in seen:
            torch.testing.assert_close(c["denoised"], model.data_prediction(c["x"], c["t"]))
    assert torch.equal(out, spec(model, noise))  # the callback changes nothing


def test_callback_of_the_generalized_solver_reports_its_shifted_calls():
    from gas_solver.solvers.generalized import GeneralizedSolver

    model = GaussianMixtureModel.ring().double()
    gs = GeneralizedSolver(4, model.schedule, init_grid="logsnr").double()
    with torch.no_grad():
        gs.t_couple.copy_(torch.tensor([-0.01, 0.004, -0.002, 0.001]))
        gs.c_hat.add_(0.01)
    seen = []
    with torch.no_grad():
        gs(model, torch.randn(3, 2, dtype=torch.float64), callback=seen.append)
        grid, query = gs.timesteps(), gs.evaluation_times()
        assert [c["i"] for c in seen] == [0, 1, 2, 3]
        for c, t, tau in zip(seen, grid, query, strict=False):
            eps = model.noise_prediction(c["x"], tau)  # queried at t + ξ, converted at t
            expected = (c["x"] - model.schedule.sigma(t) * eps) / model.schedule.alpha(t)
            torch.testing.assert_close(c["t"], t)
            torch.testing.assert_close(c["denoised"], expected)
