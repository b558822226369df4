"""Shared test settings: one torch thread (tests use tiny tensors; CI has 2 cores), fixed seed."""

import pytest
import torch

torch.set_num_threads(1)  # tiny tensors: a second thread costs more than it gives


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _own_sample_cache(tmp_path, monkeypatch) -> None:
    """Each test (and every process it starts) caches teacher and reference samples in a folder
    of its own: a comparison never reads what another test, or an earlier run, made."""
    monkeypatch.setenv("GAS_SOLVER_SAMPLES", str(tmp_path / "sample-cache"))
