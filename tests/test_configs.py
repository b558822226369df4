"""Every preset in configs/ loads into its command's config and passes validation."""

from pathlib import Path

import pytest

from gas_solver.config import load_config
from gas_solver.pipeline import TeacherConfig
from gas_solver.training.trainer import TrainConfig

PRESETS = sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_is_valid(path):
    if "teacher" in path.name:
        config = load_config(TeacherConfig, path, {"model": "gmm-ring"})
        assert config.solver.startswith("unipc")
    else:
        config = load_config(TrainConfig, path, {"teacher": "t"})
        assert config.nfe >= 1
        assert config.loss == ("gas" if "gas" in path.name else "gs")


def test_there_are_presets():
    assert len(PRESETS) >= 8
