"""The classic solver extension point: a solver registered at run time, from this file alone,
samples and is compared through the real CLI, takes its own option in specs, ``sample()`` and
``--help``, and is the GS that ``from_classic`` makes of it."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from gas_solver import GaussianMixtureModel
from gas_solver.cli import main
from gas_solver.errors import ConfigError
from gas_solver.models.base import DiffusionModel
from gas_solver.sampling import sample
from gas_solver.solvers import (
    SOLVERS,
    ClassicSolver,
    GeneralizedSolver,
    SolverOption,
    SolverSpec,
    parse_solver_spec,
    register_classic_solver,
)
from gas_solver.solvers._common import Callback, check_grid, report, vp_terms
from gas_solver.solvers.registry import classic_solvers_help, option_names

NAME = "toy"


def toy_ddim(
    model: DiffusionModel,
    x: Tensor,
    grid: Tensor,
    cond: Any = None,
    *,
    form: str = "data",
    callback: Callback | None = None,
) -> Tensor:
    """DDIM (η = 0) written in the data or the noise prediction (the same method):

    * ``data``: ``x_{i+1} = (σ_{i+1}/σ_i) x_i + (α_{i+1} − α_i σ_{i+1}/σ_i) D_i``
    * ``noise``: ``x_{i+1} = (α_{i+1}/α_i) x_i + (σ_{i+1} − α_{i+1} σ_i/α_i) ε_i``

    Song, Meng & Ermon (2021), *Denoising Diffusion Implicit Models*, eq. 12 with σ_t = 0.
    """
    grid = check_grid(grid, model.schedule)
    alpha, sigma, _ = vp_terms(model.schedule, grid)
    for i in range(grid.numel() - 1):
        if form == "data":
            d = model.data_prediction(x, grid[i], cond)
            report(callback, i, grid[i], x, d)
            ratio = sigma[i + 1] / sigma[i]
            x = ratio.to(x) * x + (alpha[i + 1] - alpha[i] * ratio).to(x) * d
        else:
            eps = model.noise_prediction(x, grid[i], cond)
            report(callback, i, grid[i], x, (x - sigma[i].to(x) * eps) / alpha[i].to(x))
            ratio = alpha[i + 1] / alpha[i]
            x = ratio.to(x) * x + (sigma[i + 1] - sigma[i] * ratio).to(x) * eps
    return x


TOY = ClassicSolver(
    toy_ddim,
    "DDIM in the data or the noise prediction (tests)",
    (SolverOption("form", ("data", "noise"), "data"),),
)


@pytest.fixture
def toy():
    register_classic_solver(NAME, TOY)
    try:
        yield
    finally:
        SOLVERS.pop(NAME)


def test_the_toy_is_a_spec_with_its_own_option(toy):
    spec = parse_solver_spec("toy:nfe=4,form=noise")
    assert spec == SolverSpec(NAME, nfe=4, form="noise")
    assert (spec.form, spec.order, spec.options()) == ("noise", None, {"form": "noise"})
    assert spec.to_string() == "toy:nfe=4,grid=logsnr,grid_unit=t,form=noise,rho=7.0"
    assert spec.label == "toy:nfe=4,form=noise"
    assert parse_solver_spec(spec.to_string()) == spec == SolverSpec.from_dict(spec.to_dict())
    assert option_names() == ["order", "variant", "lower_order_final", "form"]
    assert "toy = DDIM in the data or the noise prediction (tests): form=data|noise" in (
        classic_solvers_help()
    )
    with pytest.raises(ConfigError, match="form: toy supports"):
        parse_solver_spec("toy:nfe=4,form=eps")
    with pytest.raises(ConfigError, match="unknown key 'order'"):
        parse_solver_spec("toy:nfe=4,order=2")
    with pytest.raises(ConfigError, match="form: unknown option of unipc"):
        SolverSpec("unipc", nfe=4, form="data")


def test_the_toy_samples_like_ddim_and_is_a_gs(toy):
    model = GaussianMixtureModel.ring().double()
    noise = torch.randn(8, 2, dtype=torch.float64)
    expected = sample(model, noise, "ddim", nfe=4)
    for form in ("data", "noise"):
        torch.testing.assert_close(sample(model, noise, NAME, nfe=4, form=form), expected)
    with pytest.raises(ConfigError, match="eta: unknown option of toy"):
        sample(model, noise, NAME, nfe=4, eta=0.0)
    spec = parse_solver_spec("toy:nfe=4,form=noise,grid=uniform")
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # GS parameters in float64, as in test_start.py
    try:
        gs = GeneralizedSolver.from_classic(spec, model.schedule)
        with torch.no_grad():
            out = gs(model, noise)
    finally:
        torch.set_default_dtype(before)
    torch.testing.assert_close(out, spec(model, noise), rtol=1e-10, atol=1e-10)


def test_a_solver_registered_at_run_time_samples_and_compares_through_the_cli(
    toy, tmp_path, capsys
):
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    assert "toy = DDIM" in capsys.readouterr().out
    runs = {}
    for text in ("toy:nfe=4", "toy:nfe=4,form=noise", "ddim:nfe=4"):
        out = tmp_path / text.replace(":", "_").replace(",", "_").replace("=", "-")
        args = ["sample", "--model", "gmm-ring", "--solver", text, "--seeds", "0-3"]
        assert main([*args, "--out", str(out), "--device", "cpu"]) == 0
        runs[text] = out
    samples = {text: np.load(out / "samples.npz")["samples"] for text, out in runs.items()}
    np.testing.assert_allclose(samples["toy:nfe=4"], samples["ddim:nfe=4"], atol=1e-5)
    np.testing.assert_allclose(samples["toy:nfe=4,form=noise"], samples["ddim:nfe=4"], atol=1e-5)
    described = json.loads((runs["toy:nfe=4,form=noise"] / "sample.json").read_text())["solver"]
    assert (described["solver"], described["form"], described["order"]) == (NAME, "noise", None)

    out = tmp_path / "compare"
    assert main([
        "compare", "--model", "gmm-ring", "--solvers", "toy:nfe=4;toy:nfe=4,form=noise;ddim:nfe=4",
        "--teacher", "unipc:nfe=8", "--seeds", "50000-50015", "--device", "cpu",
        "--out", str(out),
    ]) == 0  # fmt: skip
    rows = {row["label"]: row for row in json.loads((out / "compare.json").read_text())["rows"]}
    toy_row, ddim_row = rows["toy:nfe=4"], rows["ddim:nfe=4"]
    assert toy_row["kind"] == "classic" and toy_row["nfe"] == 4
    assert toy_row["spec"] == "toy:nfe=4,grid=logsnr,grid_unit=t,form=data,rho=7.0"
    assert rows["toy:nfe=4,form=noise"]["l1"] == pytest.approx(ddim_row["l1"], rel=1e-4)
    assert toy_row["l1"] == pytest.approx(ddim_row["l1"], rel=1e-4)
    assert toy_row["grid"] == ddim_row["grid"]

    bad = ["sample", "--model", "gmm-ring", "--solver", "toy:nfe=4,form=eps"]
    assert main([*bad, "--out", str(tmp_path / "bad")]) == 2
    assert "form: toy supports ('data', 'noise'), got 'eps'" in capsys.readouterr().err


def test_an_unregistered_solver_is_unknown(tmp_path, capsys):
    assert NAME not in SOLVERS
    args = ["sample", "--model", "gmm-ring", "--solver", "toy:nfe=4", "--out", str(tmp_path)]
    assert main(args) == 2
    assert "unknown solver 'toy'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="taken"):
        register_classic_solver("ddim", TOY)
