"""`--resume` reads `checkpoint.pt` without running code from it, and refuses a corrupted one.

A checkpoint is sealed (`runtime.save_checkpoint_file`): a SHA-256 over its payload, both layers
read by torch's restricted unpickler. The attacks are planted as real files and the commands run
as a user would run them (subprocess); the payload would create a marker file if it ever ran.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from gas_solver.errors import CheckpointMismatchError
from gas_solver.runtime import load_checkpoint_file, save_checkpoint_file


class _Payload:
    """Pickles as a call to ``os.system``: unpickling it with a plain ``pickle.load`` runs it."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _gas(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "gas_solver.cli", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def _plant(path, marker) -> None:
    """Replace ``path`` with a pickle that runs a command when loaded (as `torch.save` writes it)."""
    torch.save({"iteration": 1, "step": 1, "solver": _Payload(marker)}, path)


def test_round_trip_keeps_every_value(tmp_path) -> None:
    state = {
        "w": torch.arange(5.0),
        "rng": torch.get_rng_state(),
        "n": 3,
        "cfg": {"lr": 1e-3, "x": None},
    }
    loaded = load_checkpoint_file(save_checkpoint_file(tmp_path / "c.pt", state))
    assert torch.equal(loaded["w"], state["w"]) and torch.equal(loaded["rng"], state["rng"])
    assert (loaded["n"], loaded["cfg"]) == (3, {"lr": 1e-3, "x": None})


def test_planted_payload_is_refused_and_never_runs(tmp_path) -> None:
    marker = tmp_path / "pwned"
    _plant(tmp_path / "c.pt", marker)
    with pytest.raises(CheckpointMismatchError, match="c.pt"):
        load_checkpoint_file(tmp_path / "c.pt")
    assert not marker.exists()


def test_payload_with_a_valid_seal_is_refused_and_never_runs(tmp_path) -> None:
    """The seal checks integrity, not trust: a payload sealed by an attacker still cannot run."""
    import hashlib
    import io

    from gas_solver.runtime import CHECKPOINT_MAGIC

    marker, buffer = tmp_path / "pwned", io.BytesIO()
    torch.save({"solver": _Payload(marker)}, buffer)
    data = buffer.getvalue()
    seal = CHECKPOINT_MAGIC + hashlib.sha256(data).hexdigest().encode() + b"\n"
    (tmp_path / "c.pt").write_bytes(seal + data)
    with pytest.raises(CheckpointMismatchError, match="unreadable payload"):
        load_checkpoint_file(tmp_path / "c.pt")
    assert not marker.exists()


@pytest.mark.parametrize("where", ["header", "middle", "end", "truncate"])
def test_corrupted_checkpoint_is_refused_with_its_path(tmp_path, where) -> None:
    path = save_checkpoint_file(tmp_path / "c.pt", {"w": torch.randn(1000)})
    data = bytearray(path.read_bytes())
    if where == "truncate":
        data = data[: len(data) // 2]
    else:
        at = {"header": 40, "middle": len(data) // 2, "end": len(data) - 200}[where]
        data[at] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointMismatchError, match=str(path)):
        load_checkpoint_file(path)


TRAIN = ["train", "--teacher", "teacher", "--nfe", 2, "--iterations", 4, "--batch-size", 8,
         "--train-size", 40, "--val-size", 20, "--val-every", 0, "--out", "run"]  # fmt: skip
TRAIN_MODEL = ["train-model", "--dataset", "digits", "--channels", "8,16", "--iterations", 2,
               "--batch-size", 4, "--lr-decay", "none", "--device", "cpu", "--out", "run"]  # fmt: skip


@pytest.mark.parametrize("args", [TRAIN, TRAIN_MODEL], ids=["train", "train-model"])
def test_resume_refuses_a_planted_checkpoint(tmp_path, args) -> None:
    if args is TRAIN:
        made = _gas(
            "teacher", "--model", "gmm-ring", "--seeds", "0-59", "--out", "teacher", cwd=tmp_path
        )
        assert made.returncode == 0, made.stderr
    assert _gas(*args, cwd=tmp_path).returncode == 0
    marker = tmp_path / "pwned"
    _plant(tmp_path / "run" / "checkpoint.pt", marker)
    resumed = _gas(*args, "--iterations", 8, "--resume", cwd=tmp_path)
    assert resumed.returncode == 2 and not marker.exists()
    assert "Traceback" not in resumed.stderr and "checkpoint.pt" in resumed.stderr
