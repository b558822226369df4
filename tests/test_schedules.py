"""Schedules: closed forms, inverses, diffusers' alphas_cumprod, and grid construction."""

import math

import pytest
import torch

from gas_solver.schedules import (
    DiscreteVPSchedule,
    LinearVPSchedule,
    explicit_grid,
    interp_linear,
    time_grid,
    validate_grid,
)

T = torch.linspace(1e-3, 1.0, 101, dtype=torch.float64)


def schedules():
    return [
        LinearVPSchedule(),
        DiscreteVPSchedule.from_beta_range(1e-4, 2e-2, 1000, "linear"),
        DiscreteVPSchedule.from_beta_range(0.00085, 0.012, 1000, "scaled_linear"),
    ]


def test_linear_vp_matches_edm_sigma_formula():
    # EDM VP: σ̃(t) = sqrt(exp(½ β_d t² + β_min t) − 1) with β_d = 19.9, β_min = 0.1.
    s = LinearVPSchedule(0.1, 20.0)
    expected = torch.sqrt(torch.exp(0.5 * 19.9 * T**2 + 0.1 * T) - 1)
    torch.testing.assert_close(s.edm_sigma(T), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("schedule", schedules(), ids=lambda s: s.kind)
def test_vp_identity_and_monotone_lambda(schedule):
    a, s = schedule.alpha(T), schedule.sigma(T)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(T))
    lam = schedule.lambda_(T)
    assert bool((lam[1:] < lam[:-1]).all())
    torch.testing.assert_close(lam, torch.log(a / s))


@pytest.mark.parametrize("schedule", schedules(), ids=lambda s: s.kind)
def test_inverse_lambda_and_edm_sigma_round_trip(schedule):
    torch.testing.assert_close(schedule.inverse_lambda(schedule.lambda_(T)), T, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        schedule.t_from_edm_sigma(schedule.edm_sigma(T)), T, rtol=0, atol=1e-12
    )


def test_discrete_schedule_hits_diffusers_alphas_cumprod():
    diffusers = pytest.importorskip("diffusers")
    ddpm = diffusers.DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )
    s = DiscreteVPSchedule(ddpm.alphas_cumprod)
    steps = torch.arange(1000, dtype=torch.float64)
    t = s.t_from_timestep(steps)
    torch.testing.assert_close(s.alpha(t) ** 2, ddpm.alphas_cumprod.double(), rtol=1e-12, atol=0)
    # Our own betas → cumprod runs in float64; diffusers' in float32 (≈1e-6 apart).
    ours = DiscreteVPSchedule.from_betas(ddpm.betas).alphas_cumprod
    torch.testing.assert_close(ours, ddpm.alphas_cumprod.double(), rtol=1e-5, atol=0)
    torch.testing.assert_close(s.timestep(t), steps)


def test_discrete_schedule_is_differentiable_and_piecewise_linear():
    s = DiscreteVPSchedule.from_beta_range(1e-4, 2e-2, 1000, "linear")
    t = torch.tensor([0.3004, 0.5], dtype=torch.float64, requires_grad=True)
    s.log_alpha(t).sum().backward()
    i = 299  # t=0.3004 lies between t_299 = 0.300 and t_300 = 0.301
    slope = (s.log_alpha_table[i + 1] - s.log_alpha_table[i]) * 1000
    torch.testing.assert_close(t.grad[0], slope)


def test_interp_linear_extrapolates_end_segments():
    xp = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    fp = torch.tensor([0.0, 2.0, 3.0], dtype=torch.float64)
    x = torch.tensor([-1.0, 0.5, 1.5, 3.0], dtype=torch.float64)
    torch.testing.assert_close(
        interp_linear(x, xp, fp), torch.tensor([-2.0, 1.0, 2.5, 4.0]).double()
    )


@pytest.mark.parametrize("kind", ["uniform", "logsnr", "quadratic", "edm"])
@pytest.mark.parametrize("schedule", schedules(), ids=lambda s: s.kind)
def test_grids(schedule, kind):
    grid = time_grid(schedule, 6, kind, t_eps=2e-3)
    assert grid.shape == (7,) and grid.dtype == torch.float64
    assert grid[0] == 1.0 and grid[-1] == 2e-3
    assert bool((grid[1:] < grid[:-1]).all())
    if kind == "logsnr":
        gaps = schedule.lambda_(grid).diff()
        torch.testing.assert_close(gaps, gaps.mean().expand(6))
    if kind == "edm":
        gaps = (schedule.edm_sigma(grid) ** (1 / 7)).diff()
        torch.testing.assert_close(gaps, gaps.mean().expand(6))
    if kind == "quadratic":
        gaps = grid.sqrt().diff()
        torch.testing.assert_close(gaps, gaps.mean().expand(6))


def test_explicit_grids_in_each_unit():
    s = DiscreteVPSchedule.from_beta_range(1e-4, 2e-2, 1000, "linear")
    by_step = explicit_grid(s, [999, 499, 0], unit="timestep")
    torch.testing.assert_close(by_step, torch.tensor([1.0, 0.5, 0.001], dtype=torch.float64))
    by_sigma = explicit_grid(s, s.edm_sigma(by_step).tolist(), unit="sigma")
    torch.testing.assert_close(by_sigma, by_step)


@pytest.mark.parametrize(
    "values, message",
    [
        ([0.5, 0.7, 0.1], "strictly decreasing"),
        ([1.2, 0.5, 0.1], "must lie in"),
        ([1.0, 0.5, 1e-5], "must lie in"),
        ([1.0], "at least 2 points"),
        ([1.0, math.nan], "non-finite"),
    ],
)
def test_bad_grids_are_refused_with_a_reason(values, message):
    s = DiscreteVPSchedule.from_beta_range(1e-4, 2e-2, 1000, "linear")
    with pytest.raises(ValueError, match=message):
        validate_grid(torch.tensor(values, dtype=torch.float64), s)


def test_bad_grid_arguments():
    s = LinearVPSchedule()
    with pytest.raises(ValueError, match="steps"):
        time_grid(s, 0)
    with pytest.raises(ValueError, match="grid kind"):
        time_grid(s, 4, "cosine")
    with pytest.raises(ValueError, match="unit"):
        explicit_grid(s, [1.0, 0.1], unit="seconds")
