"""Shared test settings: one torch thread (tests use tiny tensors; CI has 2 cores), fixed seed."""

import pytest
import torch

torch.set_num_threads(1)  # tiny tensors: a second thread costs more than it gives


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
