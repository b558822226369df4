"""The model-family extension point: a family registered at run time, from this file alone (a
folder holding a JSON mixture, on a noise schedule of a kind registered here too), goes through
the real CLI: teacher → train → sample → compare."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from gas_solver.cli import main
from gas_solver.errors import MissingAssetError
from gas_solver.models.analytic import GaussianMixtureModel
from gas_solver.models.base import DiffusionModel
from gas_solver.models.loading import MODEL_FAMILIES, ModelFamily, load_model
from gas_solver.schedules import SCHEDULES, NoiseSchedule, schedule_from_dict

TOY_JSON = "toy-mixture.json"
MEANS = [[1.0, 0.0], [-0.5, 0.8660254037844386], [-0.5, -0.8660254037844386]]
SCHEDULE = {"kind": "toy_exp_vp", "rate": 4.0, "t_eps": 1e-3}


class ExpVPSchedule(NoiseSchedule):
    """A toy VP schedule of a new kind: ``log α(t) = −r t``, so ``t(λ) = ½ log(1 + e^{−2λ}) / r``."""

    kind = "toy_exp_vp"

    def __init__(self, rate: float, t_eps: float = 1e-3) -> None:
        super().__init__()
        self.rate, self.t_eps = float(rate), float(t_eps)

    def log_alpha(self, t: Tensor) -> Tensor:
        return -self.rate * t

    def inverse_lambda(self, lam: Tensor) -> Tensor:
        return 0.5 * torch.logaddexp(-2.0 * lam, torch.zeros_like(lam)) / self.rate

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "rate": self.rate, "t_eps": self.t_eps}

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> ExpVPSchedule:
        return cls(spec["rate"], spec["t_eps"])


def is_toy_source(source: str) -> bool:
    """A folder holding ``toy-mixture.json``."""
    return (Path(source) / TOY_JSON).is_file()


def load_toy(source: str) -> DiffusionModel:
    """The exact mixture the folder's JSON describes, on the schedule it describes."""
    spec = json.loads((Path(source) / TOY_JSON).read_text())
    return GaussianMixtureModel(
        spec["means"], spec["std"], schedule=schedule_from_dict(spec["schedule"])
    )


@pytest.fixture
def toy(monkeypatch):
    """The toy schedule kind and model family registered for one test (unregistered after it)."""
    monkeypatch.setitem(SCHEDULES, ExpVPSchedule.kind, ExpVPSchedule)
    monkeypatch.setitem(MODEL_FAMILIES, "toy-mixture", ModelFamily(is_toy_source, load_toy))


@pytest.fixture
def folder(tmp_path) -> Path:
    """A plain folder (the diffusers family's fallback would claim it) with the toy's JSON."""
    path = tmp_path / "toy-model"
    path.mkdir()
    (path / TOY_JSON).write_text(json.dumps({"means": MEANS, "std": 0.05, "schedule": SCHEDULE}))
    return path


def test_a_registered_family_loads_the_exact_mixture_its_folder_describes(toy, folder):
    model = load_model(str(folder))
    expected = GaussianMixtureModel(MEANS, 0.05, schedule=ExpVPSchedule(4.0))
    assert model.source == str(folder) and model.identity() == expected.identity()
    assert model.schedule.matches(SCHEDULE) and model.teacher_t_eps is None
    x, t = torch.randn(5, 2, dtype=torch.float64), torch.full((5,), 0.3, dtype=torch.float64)
    torch.testing.assert_close(model.noise_prediction(x, t), expected.noise_prediction(x, t))


def test_a_registered_family_runs_teacher_train_sample_compare_through_the_cli(
    toy, folder, tmp_path
):
    teacher, run = tmp_path / "teacher", tmp_path / "run"
    assert main(["teacher", "--model", str(folder), "--seeds", "0-31", "--out", str(teacher),
                 "--device", "cpu"]) == 0  # fmt: skip
    manifest = json.loads((teacher / "manifest.json").read_text())
    assert json.dumps(SCHEDULE) in json.dumps(manifest)  # the model's identity names its schedule
    assert main([
        "train", "--teacher", str(teacher), "--out", str(run), "--nfe", "3",
        "--init-solver", "dpmpp3m", "--iterations", "4", "--batch-size", "4",
        "--train-size", "24", "--val-size", "8", "--val-every", "0", "--device", "cpu",
    ]) == 0  # fmt: skip
    assert json.loads((run / "solver.json").read_text())["training"]["iteration"] == 4

    # the checkpoint names the folder, which the toy family loads again
    seeds = ["--seeds", "50000-50007", "--device", "cpu"]
    assert main(["sample", "--solver", str(run), "--out", str(tmp_path / "s"), *seeds]) == 0
    samples = np.load(tmp_path / "s" / "samples.npz")["samples"]
    assert samples.shape == (8, 2) and np.isfinite(samples).all()

    assert main(["compare", "--solvers", f"{run};ddim:nfe=3", "--out", str(tmp_path / "c"),
                 *seeds]) == 0  # fmt: skip
    rows = json.loads((tmp_path / "c" / "compare.json").read_text())["rows"]
    assert [row["kind"] for row in rows] == ["teacher", "gs", "classic"]
    assert all(math.isfinite(row["l1"]) for row in rows) and rows[0]["l1"] == 0


def test_without_its_entry_the_folder_is_the_diffusers_fallbacks(folder):
    assert "toy-mixture" not in MODEL_FAMILIES and ExpVPSchedule.kind not in SCHEDULES
    with pytest.raises(MissingAssetError, match="unet/ and scheduler/"):
        load_model(str(folder))
