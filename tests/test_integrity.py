"""Files the project writes and later trusts are checked on read (issue: reliability item 2):
teacher shards against the manifest's checksums, manifests for their layout, trained solvers
against the checksum in their header and for finite parameters."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from gas_solver.commands.train import TrainConfig, run_train
from gas_solver.config import load_config
from gas_solver.data.teacher import TeacherSet, shard_name
from gas_solver.errors import CheckpointMismatchError, GasSolverError, MissingAssetError
from gas_solver.solvers.generalized import GeneralizedSolver
from teacher_files import copy_files, edit_manifest


@pytest.fixture(scope="module")
def solver_file(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return run_train(_train_config(teacher, out), progress=False)


def _train_config(teacher, out, **overrides):
    base = dict(teacher=str(teacher), out=str(out), nfe=2, iterations=2, batch_size=8,
                train_size=40, val_size=20, val_every=0, checkpoint_every=2, device="cpu")  # fmt: skip
    return load_config(TrainConfig, overrides={**base, **overrides})


def _flip(path, position):
    data = bytearray(path.read_bytes())
    data[position] ^= 0x01
    path.write_bytes(bytes(data))


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "gas_solver.cli", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def test_train_refuses_a_shard_with_a_flipped_bit(teacher, tmp_path):
    copy = copy_files(teacher, tmp_path)
    _flip(copy / shard_name(1), -5)  # tensor data: the file still parses, same size
    with pytest.raises(GasSolverError, match=rf"{shard_name(1)} does not match its sha256 in"):
        run_train(_train_config(copy, tmp_path / "run"), progress=False)
    assert not (tmp_path / "run" / "solver.safetensors").exists()


def test_a_missing_shard_is_refused_before_any_row_is_read(teacher, tmp_path):
    copy = copy_files(teacher, tmp_path)
    (copy / shard_name(2)).unlink()
    with pytest.raises(MissingAssetError, match=shard_name(2)):
        _ = TeacherSet(copy).noise


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["shards"].pop(1), r"lists shards \[0, 2\] of 3 \(missing \[1\]\)"),
        (lambda m: m["shards"][1].update(start=25), "shard entry 1 .* is not shard 1"),
        (lambda m: m["shards"][1].update(count=19), "shard entry 1 .* is not shard 1"),
        (lambda m: m["shards"][1].update(file="../escape.safetensors"), "is not shard 1"),
        (lambda m: m.pop("shard_size"), "key 'shard_size' is missing"),
        (lambda m: m["shards"][0].pop("sha256"), r"'shards\[0\]\.sha256' is missing"),
        (lambda m: m.update(num_samples="60"), "key 'num_samples' must be an integer"),
    ],
    ids=["missing", "shifted", "short", "escapes", "no-shard-size", "no-sha256", "mistyped"],
)
def test_a_damaged_manifest_is_refused_naming_it(teacher, tmp_path, change, message):
    copy = copy_files(teacher, tmp_path)
    edit_manifest(copy, change)
    with pytest.raises(GasSolverError, match=message) as caught:
        TeacherSet(copy)
    assert "manifest.json" in str(caught.value)


def test_cli_reports_a_damaged_manifest_in_one_line(teacher, tmp_path):
    copy = copy_files(teacher, tmp_path)
    edit_manifest(copy, lambda m: m.pop("seeds"))
    result = _cli("train", "--teacher", copy, "--out", "run", "--nfe", 2, "--iterations", 2,
                  "--train-size", 40, "--val-size", 20, "--device", "cpu", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "manifest.json" in result.stderr


@pytest.mark.parametrize("where", ["data", "metadata"])
def test_a_changed_solver_file_is_refused_naming_it(solver_file, tmp_path, where):
    path = tmp_path / "solver.safetensors"
    path.write_bytes(solver_file.read_bytes())
    if where == "data":
        _flip(path, -3)  # a parameter's last byte: the file still parses
    else:
        data = path.read_bytes()
        path.write_bytes(data.replace(b'\\"nfe\\": 2', b'\\"nfe\\": 3', 1))
        assert path.read_bytes() != data
    with pytest.raises(CheckpointMismatchError, match=rf"{path} fails its checksum"):
        GeneralizedSolver.load(path)


def test_a_solver_without_checksum_or_with_nan_is_refused(solver_file, tmp_path):
    tensors = load_file(solver_file)
    from safetensors import safe_open

    with safe_open(str(solver_file), framework="pt") as f:
        header = f.metadata()
    unsealed = tmp_path / "unsealed.safetensors"
    save_file(tensors, str(unsealed), metadata={"gas_solver": header["gas_solver"]})
    with pytest.raises(CheckpointMismatchError, match="has no checksum"):
        GeneralizedSolver.load(unsealed)
    solver = GeneralizedSolver.load(solver_file)
    with torch.no_grad():
        solver.mu_logit[0] = float("nan")
    nan_file = solver.save(tmp_path / "nan.safetensors", solver.metadata)
    with pytest.raises(CheckpointMismatchError, match="mu_logit holds NaN"):
        GeneralizedSolver.load(nan_file)


def test_sample_refuses_a_corrupted_solver_in_one_line(solver_file, tmp_path):
    path = tmp_path / "solver.safetensors"
    path.write_bytes(solver_file.read_bytes())
    _flip(path, -3)
    result = _cli("sample", "--solver", path, "--seeds", "50000-50003", "--out", "s",
                  "--device", "cpu", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and str(path) in result.stderr
    assert "Traceback" not in result.stderr
