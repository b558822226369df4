"""The discriminator extension point: a discriminator registered at run time, from this file
alone, trains a GAS through the real CLI and resumes from its checkpoint bit for bit."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from gas_solver.cli import main
from gas_solver.errors import ConfigError
from gas_solver.runtime import load_checkpoint_file
from gas_solver.training.discriminators import DISCRIMINATORS, register_discriminator
from gas_solver.training.gas_discriminator import GasDiscriminator

NAME = "toy-mlp"


@dataclasses.dataclass(frozen=True)
class ToyArch:
    inputs: int
    hidden: int

    def to_dict(self) -> dict[str, Any]:
        return {"kind": NAME, **dataclasses.asdict(self)}


class ToyMLP(GasDiscriminator):
    """A two-layer MLP on flattened samples of any shape (the 2-D ring included)."""

    def __init__(self, inputs: int, hidden: int = 16, seed: int = 0) -> None:
        super().__init__()
        self.arch = ToyArch(inputs, hidden)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(inputs, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    @classmethod
    def from_settings(cls, settings, model) -> ToyMLP:
        return cls(math.prod(model.sample_shape), seed=settings.seed)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1)).squeeze(1)


@pytest.fixture
def toy():
    register_discriminator(NAME, ToyMLP, "a toy MLP on flattened samples (tests)")
    try:
        yield
    finally:
        DISCRIMINATORS.pop(NAME)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("ring") / "teacher"
    assert main(["teacher", "--model", "gmm-ring", "--seeds", "0-31", "--out", str(path)]) == 0
    return path


def _train(teacher, out, *extra: object) -> int:
    return main([
        "train", "--teacher", str(teacher), "--out", str(out),
        "--loss", "gas", "--disc-preset", NAME, "--disc-lr", "1e-3", "--disc-warmup", "1",
        "--nfe", "3", "--init-solver", "dpmpp3m", "--iterations", "4", "--batch-size", "4",
        "--train-size", "24", "--val-size", "8", "--val-every", "0", "--checkpoint-every", "2",
        "--log-every", "1", "--device", "cpu",
        "--lr-decay", "constant",  # a run extended from 2 to 4 iterations steps as one of 4
        *map(str, extra),
    ])  # fmt: skip


def _losses(path) -> list[Any]:
    lines = (path / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in r.items() if k != "it_per_s"} for r in map(json.loads, lines)]


def test_a_registered_discriminator_trains_a_gas_and_resumes_exactly(toy, teacher, tmp_path):
    assert _train(teacher, tmp_path / "straight") == 0
    assert _train(teacher, tmp_path / "resumed", "--iterations", "2") == 0
    assert _train(teacher, tmp_path / "resumed", "--resume") == 0

    a, b = (load_file(tmp_path / d / "solver.safetensors") for d in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [[r for r in _losses(tmp_path / d) if "loss" in r] for d in ("straight", "resumed")]
    assert steps[0] == steps[1] and len(steps[0]) == 4 and "disc_loss" in steps[0][0]
    saved = [load_checkpoint_file(tmp_path / d / "checkpoint.pt") for d in ("straight", "resumed")]
    assert saved[0]["discriminator"]["architecture"] == {"kind": NAME, "inputs": 2, "hidden": 16}
    for key, value in saved[0]["discriminator"]["state"].items():
        assert torch.equal(value, saved[1]["discriminator"]["state"][key]), key


def test_it_is_one_of_the_choices_while_registered(toy, teacher, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert NAME in capsys.readouterr().out
    with pytest.raises(ConfigError, match="taken"):
        register_discriminator(NAME, ToyMLP, "again")
    checkpoint = tmp_path / "d.pt"  # a file it does not read: refused before any work, one line
    checkpoint.touch()
    assert _train(teacher, tmp_path / "refused", "--disc-checkpoint", checkpoint) == 2
    assert "disc_checkpoint: not used with disc_preset 'toy-mlp'" in capsys.readouterr().err


def test_unregistered_it_is_refused(teacher, tmp_path):
    assert NAME not in DISCRIMINATORS
    with pytest.raises(SystemExit, match="2"):
        _train(teacher, tmp_path / "unknown")
