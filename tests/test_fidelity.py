"""Fidelity to the teacher: per-sample L1, RMSE, PSNR (data range 2) and their summary."""

import math

import pytest
import torch

from gas_solver.errors import ConfigError
from gas_solver.metrics import Fidelity, per_sample_fidelity, summarize_fidelity


def test_per_sample_values_by_hand() -> None:
    target = torch.zeros(3, 1, 2, 2)
    output = target.clone()
    output[0] += 0.2  # uniform error 0.2
    output[1, 0, 0, 0] = 1.0  # one pixel off by 1 of 4
    m = per_sample_fidelity(output, target)
    assert m.l1.tolist() == pytest.approx([0.2, 0.25, 0.0])
    assert m.rmse.tolist() == pytest.approx([0.2, 0.5, 0.0])
    # PSNR = 20 log10(2 / RMSE) for data in [-1, 1]
    assert m.psnr[:2].tolist() == pytest.approx([20 * math.log10(10), 20 * math.log10(4)])
    assert math.isinf(m.psnr[2]) and m.psnr[2] > 0
    assert m.l1.dtype == torch.float64


def test_summary_over_batches() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.rand(10, 3, 4, 4, generator=g) * 2 - 1
    output = target + 0.1 * torch.randn(target.shape, generator=g)
    whole = per_sample_fidelity(output, target)
    parts = [
        per_sample_fidelity(o, t) for o, t in zip(output.split(4), target.split(4), strict=True)
    ]
    s = summarize_fidelity(parts)
    assert s == summarize_fidelity(whole)
    assert s.num_samples == 10
    assert s.psnr_mean == pytest.approx(float(whole.psnr.mean()))
    assert s.rmse_std == pytest.approx(float(whole.rmse.std(correction=0)))
    assert set(s.as_dict()) >= {"l1_mean", "rmse_std", "psnr_mean"}
    assert "PSNR" in str(s) and "±" in str(s)


def test_identical_pairs_and_errors() -> None:
    x = torch.zeros(2, 4)
    s = summarize_fidelity(per_sample_fidelity(x, x))
    assert s.l1_mean == 0 and math.isinf(s.psnr_mean) and math.isnan(s.psnr_std)
    with pytest.raises(ConfigError, match="differ in shape"):
        per_sample_fidelity(torch.zeros(2, 4), torch.zeros(2, 5))
    with pytest.raises(ConfigError, match="no fidelity"):
        summarize_fidelity([])
    assert isinstance(per_sample_fidelity(x, x + 1), Fidelity)
