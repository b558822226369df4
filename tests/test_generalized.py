"""GeneralizedSolver: DPM-Solver++(3M) at init, the timestep map, gradients, ξ, checkpoints."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gas_solver import (
    CheckpointMismatchError,
    ConfigError,
    DiscreteVPSchedule,
    FlowSchedule,
    GaussianMixtureModel,
    LinearVPSchedule,
    MissingAssetError,
    time_grid,
)
from gas_solver.solvers.dpm_solver import dpm_solver_pp
from gas_solver.solvers.generalized import (
    MU_EPS,
    GeneralizedSolver,
    grid_from_logits,
    logits_from_grid,
)

SCHEDULES = {
    "linear": LinearVPSchedule,
    "discrete": lambda: DiscreteVPSchedule.from_beta_range(0.00085, 0.012),
    "flow": lambda: FlowSchedule(shift=3.0),  # α + σ = 1; grids from t_max = 0.999
}


def mixture(schedule=None) -> GaussianMixtureModel:
    means = torch.tensor([[1.0, 0.5, -0.3], [-0.8, 0.2, 0.9], [0.1, -1.0, 0.4]])
    return GaussianMixtureModel(means, stds=0.2, schedule=schedule or LinearVPSchedule())


def randomise(solver: GeneralizedSolver, scale: float = 0.02) -> GeneralizedSolver:
    """Move every parameter off its init (a small random step, as after some training)."""
    with torch.no_grad():
        for p in solver.parameters():
            p.add_(scale * torch.randn_like(p))
    return solver


# -- DPM-Solver++(3M) at init -------------------------------------------------------------------


@pytest.mark.parametrize("theory", [True, False])
@pytest.mark.parametrize("init_grid", ["uniform", "logsnr"])
@pytest.mark.parametrize("kind", SCHEDULES)
def test_untrained_is_dpm_solver_pp_3m(kind: str, init_grid: str, theory: bool) -> None:
    schedule = SCHEDULES[kind]()
    model = mixture(schedule)
    noise = torch.randn(4, 3, dtype=torch.float64)
    for nfe in range(1, 9):
        solver = GeneralizedSolver(nfe, schedule, init_grid=init_grid, theory=theory).double()
        model.reset_nfe()
        with torch.no_grad():
            out = solver(model, noise)
        assert model.nfe == nfe
        grid = solver.timesteps().detach()
        ref = dpm_solver_pp(model, noise, grid, order=3, lower_order_final=False)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12, msg=f"nfe={nfe}")


def test_without_theory_the_coefficients_stay_those_of_the_initial_grid() -> None:
    """theory=False (Table 5's ablation): with the middle time moved and no corrections, the 2-call
    GS is DPM-Solver++(2M)'s update with A, B, r0 of the initial grid, applied to data
    predictions made at the moved time (spec §2.2, k = 1, 2, written out here)."""
    schedule = LinearVPSchedule()
    model = mixture(schedule)
    noise = torch.randn(4, 3, dtype=torch.float64)
    solver = GeneralizedSolver(2, schedule, init_grid="logsnr", theory=False).double()
    with torch.no_grad():
        solver.mu_logit.add_(0.7)
        out = solver(model, noise)
    t, t0 = solver.timesteps().detach(), solver.initial_grid
    assert abs(float(t[1] - t0[1])) > 1e-2
    alpha, sigma, lam = schedule.alpha(t0), schedule.sigma(t0), schedule.lambda_(t0)
    h = lam.diff()

    def data(y, k):  # D_k at the moved grid
        return (y - schedule.sigma(t[k]) * model.noise_prediction(y, t[k])) / schedule.alpha(t[k])

    d0 = data(noise, 0)
    y1 = sigma[1] / sigma[0] * noise - alpha[1] * torch.expm1(-h[0]) * d0
    d1 = data(y1, 1)
    b2 = alpha[2] * torch.expm1(-h[1])
    y2 = sigma[2] / sigma[1] * y1 - b2 * d1 - 0.5 * b2 * (d1 - d0) / (h[0] / h[1])
    torch.testing.assert_close(out, y2, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # the default recomputes them at the moved grid: another output
        solver.theory = True
        assert (solver(model, noise) - out).abs().max() > 1e-4


def test_output_keeps_noise_dtype() -> None:
    model = mixture()
    out = GeneralizedSolver(3, model.schedule)(model, torch.randn(2, 3))
    assert out.dtype == torch.float32 and out.shape == (2, 3)


def test_forward_refuses_other_schedule() -> None:
    solver = GeneralizedSolver(3, LinearVPSchedule())
    with pytest.raises(ConfigError, match="schedule"):
        solver(mixture(LinearVPSchedule(beta_1=10.0)), torch.randn(2, 3))


# -- timestep parameterisation (spec §2.3) ------------------------------------------------------


def test_spec_example_n4() -> None:
    solver = GeneralizedSolver(4, LinearVPSchedule(), t_eps=1e-3)
    mu = MU_EPS + (1 - 2 * MU_EPS) * torch.sigmoid(solver.mu_logit.detach().double())
    torch.testing.assert_close(mu, torch.tensor([0.75, 2 / 3, 0.5], dtype=torch.float64))
    torch.testing.assert_close(
        solver.mu_logit.detach(), torch.tensor([1.0986, 0.6932, 0.0]), atol=1e-4, rtol=0
    )
    expected = torch.tensor([1.0, 0.75025, 0.5005, 0.25075, 0.001], dtype=torch.float64)
    torch.testing.assert_close(
        grid_from_logits(logits_from_grid(expected), 1e-3), expected, rtol=0, atol=1e-15
    )
    torch.testing.assert_close(solver.timesteps().double(), expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("kind", ["uniform", "logsnr", "edm", "quadratic"])
@pytest.mark.parametrize("t_eps", [1e-3, 1e-4])
def test_grid_round_trip(kind: str, t_eps: float) -> None:
    schedule = LinearVPSchedule()
    for nfe in (1, 2, 5, 10):
        grid = time_grid(schedule, nfe, kind, t_eps)
        logits = logits_from_grid(grid)
        assert logits.shape == (nfe - 1,)
        torch.testing.assert_close(grid_from_logits(logits, t_eps), grid, rtol=1e-12, atol=1e-14)
        solver = GeneralizedSolver(nfe, schedule, t_eps=t_eps, init_grid=kind)
        torch.testing.assert_close(solver.timesteps().double(), grid, rtol=1e-6, atol=1e-7)


def test_logits_round_trip() -> None:
    logits = 3.0 * torch.randn(9, dtype=torch.float64)
    grid = grid_from_logits(logits, 1e-3)
    torch.testing.assert_close(logits_from_grid(grid), logits, rtol=1e-8, atol=1e-8)


def test_explicit_init_grid() -> None:
    grid = torch.tensor([1.0, 0.6, 0.3, 0.1, 0.02, 1e-3], dtype=torch.float64)
    solver = GeneralizedSolver(5, LinearVPSchedule(), init_grid=grid)
    assert solver.t_eps == 1e-3 and solver.init_grid == grid.tolist()
    torch.testing.assert_close(solver.timesteps().double(), grid, rtol=1e-6, atol=1e-7)
    with pytest.raises(ConfigError, match="nfe"):
        GeneralizedSolver(4, LinearVPSchedule(), init_grid=grid)
    with pytest.raises(ConfigError, match="from 1"):
        GeneralizedSolver(5, LinearVPSchedule(), init_grid=grid * 0.9)
    with pytest.raises(ConfigError):
        GeneralizedSolver(0, LinearVPSchedule())


def test_grid_monotone_and_in_range_under_large_logits() -> None:
    t_eps = 1e-3
    for nfe in range(2, 11):
        for scale in (3.0, 30.0):
            grid = grid_from_logits(scale * torch.randn(nfe - 1, dtype=torch.float64), t_eps)
            assert grid[0] == 1.0 and grid[-1] == t_eps
            assert bool(((grid >= t_eps) & (grid <= 1.0)).all())
            # Non-increasing always; strictly decreasing unless 1 − Π μ rounds to 1 (saturated).
            assert bool((grid.diff() <= 0).all())
            if scale == 3.0:
                assert bool((grid.diff() < 0).all()), grid
    # Every logit saturated at either bound (μ = 1e-5 or 1 − 1e-5): still strictly decreasing.
    signs = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0], dtype=torch.float64)] * 3)
    for sign in signs:
        grid = grid_from_logits(50.0 * sign, t_eps)
        assert bool((grid.diff() < 0).all()), grid


# -- parameters and gradients -------------------------------------------------------------------


@pytest.mark.parametrize("nfe", [1, 2, 3, 5])
def test_every_parameter_is_used_and_gets_a_gradient(nfe: int) -> None:
    model = mixture()
    solver = GeneralizedSolver(nfe, model.schedule).double()
    counts = {name: p.numel() for name, p in solver.named_parameters()}
    assert counts == {
        "mu_logit": nfe - 1,
        "t_couple": nfe,
        "a_hat": nfe * (nfe + 1) // 2,
        "c_hat": nfe * (nfe + 1) // 2,
    }
    assert solver.learned_values()["num_parameters"] == nfe * (nfe + 1) + (nfe - 1) + nfe
    noise = torch.randn(6, 3, dtype=torch.float64)
    loss = (solver(model, noise) - torch.randn_like(noise)).pow(2).sum()
    loss.backward()
    for name, p in solver.named_parameters():
        assert p.grad is not None and bool((p.grad != 0).all()), (name, p.grad)


def test_correction_index_maps() -> None:
    """â_i / ĉ_i at the last step multiply y_{N−i} / D_{N−i}: check i = N against y_0, D_0."""
    model = mixture()
    noise = torch.randn(3, 3, dtype=torch.float64)
    d0 = model.data_prediction(noise, 1.0)
    for nfe in (1, 2, 3, 5):
        solver = GeneralizedSolver(nfe, model.schedule).double()
        base = solver(model, noise).detach()
        a, c = solver.corrections(nfe)
        assert a.shape == c.shape == (nfe,)
        with torch.no_grad():
            a[nfe - 1] = 0.1
        torch.testing.assert_close(solver(model, noise) - base, 0.1 * noise)
        with torch.no_grad():
            a[nfe - 1] = 0.0
            c[nfe - 1] = 0.1
        sign = -1.0 if nfe == 1 else 1.0  # ĉ_1 adds to B = α φ1, which enters with a minus sign
        if nfe in (1, 5):  # for N = 2, 3, ĉ_N corrects a finite-difference term, not D_0 itself
            torch.testing.assert_close(solver(model, noise) - base, sign * 0.1 * d0)


def test_offsets_query_shifted_time_but_use_grid_time() -> None:
    """First step by hand (spec §2.4): D_0 = (y_0 − σ(t_0) ε̂(y_0, t_0 + ξ_0)) / α(t_0)."""
    model = mixture()
    sched = model.schedule
    solver = GeneralizedSolver(1, sched).double()
    with torch.no_grad():
        solver.t_couple.fill_(0.05)  # t_0 + ξ_0 = 1.05 > 1: no clamp
    noise = torch.randn(5, 3, dtype=torch.float64)
    t0, t1 = (torch.tensor(t, dtype=torch.float64) for t in (1.0, solver.t_eps))
    eps = model.noise_prediction(noise, t0 + 0.05)
    d0 = (noise - sched.sigma(t0) * eps) / sched.alpha(t0)
    h = sched.lambda_(t1) - sched.lambda_(t0)
    expected = sched.sigma(t1) / sched.sigma(t0) * noise - sched.alpha(t1) * torch.expm1(-h) * d0
    torch.testing.assert_close(solver(model, noise), expected, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(d0, model.data_prediction(noise, t0 + 0.05))
    torch.testing.assert_close(solver.evaluation_times(), torch.tensor([1.05], dtype=torch.float64))


def test_checkpointing_gives_same_output_and_gradients() -> None:
    model = mixture()
    solver = randomise(GeneralizedSolver(4, model.schedule).double())
    noise = torch.randn(6, 3, dtype=torch.float64)
    target = torch.randn_like(noise)
    results = []
    for checkpoint in (False, True):
        solver.zero_grad()
        out = solver(model, noise, checkpoint=checkpoint)
        (out - target).pow(2).sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in solver.parameters()]))
    (out0, grads0), (out1, grads1) = results
    torch.testing.assert_close(out1, out0, rtol=1e-14, atol=1e-14)
    for g0, g1 in zip(grads0, grads1, strict=True):
        torch.testing.assert_close(g1, g0, rtol=1e-12, atol=1e-14)


# -- learned values, save and load---------------------------------------------------------------


def test_learned_values_are_json() -> None:
    solver = GeneralizedSolver(3, LinearVPSchedule())
    info = json.loads(json.dumps(solver.learned_values()))
    assert info["nfe"] == 3 and len(info["grid"]) == 4 and len(info["offsets"]) == 3
    assert [len(step["a"]) for step in info["corrections"]] == [1, 2, 3]
    assert info["num_parameters"] == 3 * 4 + 2 + 3


def test_save_load_round_trip(tmp_path) -> None:
    model = mixture()
    solver = randomise(GeneralizedSolver(4, model.schedule, t_eps=1e-3, init_grid="logsnr"))
    path = solver.save(
        tmp_path / "gs.safetensors",
        {"model": model.identity(), "teacher": {"solver": "unipc", "nfe": 20}, "steps": 7},
    )
    loaded = GeneralizedSolver.load(path, model=model, nfe=4)
    noise = torch.randn(5, 3)
    assert torch.equal(loaded(model, noise), solver(model, noise))
    meta = loaded.metadata
    assert meta["teacher"] == {"solver": "unipc", "nfe": 20} and meta["steps"] == 7
    assert meta["nfe"] == 4 and meta["t_eps"] == 1e-3 and meta["init_grid"] == "logsnr"
    assert meta["schedule"] == model.schedule.to_dict() and "created" in meta["run"]
    assert meta["model"] == json.loads(json.dumps(model.identity()))
    assert json.loads((tmp_path / "gs.json").read_text()) == meta
    with safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == ["a_hat", "c_hat", "mu_logit", "t_couple"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gs.json", "gs.safetensors"]
    # Without a model the linear schedule is rebuilt from the metadata.
    assert torch.equal(GeneralizedSolver.load(path)(model, noise), solver(model, noise))
    assert loaded.theory and meta["theory"] is True
    frozen = randomise(GeneralizedSolver(4, model.schedule, init_grid="logsnr", theory=False))
    path = frozen.save(tmp_path / "frozen.safetensors", {"model": model.identity()})
    loaded = GeneralizedSolver.load(path, model=model)
    assert not loaded.theory and loaded.metadata["theory"] is False
    assert torch.equal(loaded(model, noise), frozen(model, noise))


def test_load_explicit_grid_and_discrete_schedule(tmp_path) -> None:
    model = mixture(SCHEDULES["discrete"]())
    grid = torch.tensor([1.0, 0.5, 0.2, 1e-3], dtype=torch.float64)
    solver = randomise(GeneralizedSolver(3, model.schedule, init_grid=grid).double())
    path = solver.save(tmp_path / "gs.safetensors", {"model": model.identity()})
    loaded = GeneralizedSolver.load(path, model=model)
    assert loaded.mu_logit.dtype == torch.float64 and loaded.init_grid == grid.tolist()
    noise = torch.randn(2, 3, dtype=torch.float64)
    assert torch.equal(loaded(model, noise), solver(model, noise))
    with pytest.raises(ConfigError, match="model="):
        GeneralizedSolver.load(path)


def test_load_refuses_mismatches(tmp_path) -> None:
    model = mixture()
    path = GeneralizedSolver(4, model.schedule).save(
        tmp_path / "gs.safetensors", {"model": model.identity()}
    )
    with pytest.raises(CheckpointMismatchError, match="nfe=4.*nfe=5"):
        GeneralizedSolver.load(path, model=model, nfe=5)
    with pytest.raises(CheckpointMismatchError, match=r"model\.schedule\.beta_1"):
        GeneralizedSolver.load(path, model=mixture(LinearVPSchedule(beta_1=10.0)))
    other = GaussianMixtureModel(torch.zeros(2, 3), stds=0.2)
    with pytest.raises(CheckpointMismatchError, match=r"model\.modes"):
        GeneralizedSolver.load(path, model=other)
    with pytest.raises(MissingAssetError, match="missing.safetensors"):
        GeneralizedSolver.load(tmp_path / "missing.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="not a GeneralizedSolver"):
        GeneralizedSolver.load(tmp_path / "other.safetensors")
    with pytest.raises(ConfigError, match="model"):
        GeneralizedSolver(4, model.schedule).save(tmp_path / "x.safetensors", {})
