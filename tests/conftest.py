"""Shared test settings: one torch thread (tests use tiny tensors; CI has 2 cores), fixed seed."""

import pytest
import torch

from gas_solver.commands.teacher import TeacherConfig, run_teacher
from gas_solver.config import load_config

torch.set_num_threads(1)  # tiny tensors: a second thread costs more than it gives


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _own_sample_cache(tmp_path, monkeypatch) -> None:
    """Each test (and every process it starts) caches teacher and reference samples in a folder
    of its own: a comparison never reads what another test, or an earlier run, made."""
    monkeypatch.setenv("GAS_SOLVER_SAMPLES", str(tmp_path / "sample-cache"))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A small teacher set of the exact ring mixture (seeds 0-59 in shards of 20), made once per
    test module; modules that need another define their own ``teacher``."""
    out = tmp_path_factory.mktemp("ring") / "teacher"
    config = {"model": "gmm-ring", "seeds": "0-59", "out": str(out), "shard_size": 20}
    run_teacher(load_config(TeacherConfig, overrides=config), progress=False)
    return out
