"""The model contract: prediction-type conversion, NFE counting, the exact Gaussian mixture."""

import pytest
import torch

from gas_solver.models import DiffusionModel, GaussianMixtureModel, convert_prediction
from gas_solver.schedules import DiscreteVPSchedule, LinearVPSchedule


def test_conversions_agree_on_a_known_decomposition():
    x0, eps = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    alpha = torch.rand(5, 1, dtype=torch.float64) * 0.9 + 0.05
    sigma = (1 - alpha**2).sqrt()
    x = alpha * x0 + sigma * eps
    v = alpha * eps - sigma * x0
    outputs = {"epsilon": eps, "sample": x0, "v_prediction": v}
    for source, out in outputs.items():
        for target, expected in outputs.items():
            if target == "v_prediction":
                continue
            got = convert_prediction(out, x, alpha, sigma, source, target)
            torch.testing.assert_close(got, expected, msg=f"{source} -> {target}")


def test_flow_velocity_converts_on_a_flow_schedule_even_at_pure_noise():
    """x = (1 − s) x₀ + s ε with v = ε − x₀ (rectified flow): x₀ and ε come back exactly, also
    at s = 1 where α = 0 and x₀ = (x − σ ε)/α would be 0/0."""
    x0, eps = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    s = torch.tensor([1.0, 0.999, 0.7, 0.3, 1e-3, 0.0], dtype=torch.float64)[:, None]
    x, v = (1 - s) * x0 + s * eps, eps - x0
    torch.testing.assert_close(convert_prediction(v, x, 1 - s, s, "flow_prediction", "sample"), x0)
    torch.testing.assert_close(
        convert_prediction(v, x, 1 - s, s, "flow_prediction", "epsilon"), eps
    )


def test_unknown_prediction_type():
    with pytest.raises(ValueError, match="prediction type"):
        convert_prediction(
            torch.zeros(1), torch.zeros(1), torch.ones(1), torch.ones(1), "x", "epsilon"
        )


class _XStartModel(DiffusionModel):
    """An x₀-predictor built from the exact mixture, to test the contract's conversion."""

    def __init__(self, mixture: GaussianMixtureModel) -> None:
        super().__init__(mixture.schedule, mixture.sample_shape, "sample")
        self.mixture = mixture

    def network_output(self, x, t, cond=None):
        return self.mixture.data_prediction(x, t)


def test_contract_converts_and_counts_nfe():
    mixture = GaussianMixtureModel(torch.randn(3, 4), stds=0.3)
    model = _XStartModel(mixture)
    x, t = torch.randn(6, 4, dtype=torch.float64), torch.full((6,), 0.4, dtype=torch.float64)
    torch.testing.assert_close(model.noise_prediction(x, t), mixture.noise_prediction(x, t))
    assert model.nfe == 1 and mixture.nfe == 2
    model.reset_nfe()
    assert model.nfe == 0
    with pytest.raises(ValueError, match="sample shape"):
        model.noise_prediction(torch.randn(2, 5, dtype=torch.float64), 0.5)


@pytest.mark.parametrize(
    "schedule", [LinearVPSchedule(), DiscreteVPSchedule.from_beta_range(1e-4, 0.02, 1000, "linear")]
)
def test_mixture_noise_prediction_is_minus_sigma_times_score(schedule):
    model = GaussianMixtureModel(torch.randn(4, 3), stds=[0.1, 0.2, 0.3, 0.4], schedule=schedule)
    x = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(0.35, dtype=torch.float64)
    a, s = schedule.alpha(t), schedule.sigma(t)
    var = a**2 * model.stds**2 + s**2
    log_components = (
        model.log_weights
        - 1.5 * var.log()
        - 0.5 * (x[:, None] - a * model.means).pow(2).sum(-1) / var
    )
    (score,) = torch.autograd.grad(torch.logsumexp(log_components, 1).sum(), x)
    torch.testing.assert_close(model.noise_prediction(x.detach(), t), -s * score)


def test_reference_solution_transports_noise_to_the_data():
    model = GaussianMixtureModel.ring(modes=4, radius=1.0, std=0.05)
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = model.reference_solution(noise)
    radius = out.norm(dim=1)
    assert (radius - 1).abs().max() < 0.3  # every ODE endpoint lands on the ring
    assert out.std(0).min() > 0.5  # spread over the modes, not collapsed onto one
    torch.testing.assert_close(model.reference_solution(noise), out)
