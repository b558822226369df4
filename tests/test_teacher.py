"""Seeds and teacher sets: determinism by seed, shards, resume after interruption, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from gas_solver.data.teacher import TeacherSet, generate_teacher_set, shard_name
from gas_solver.errors import (
    CheckpointMismatchError,
    ConfigError,
    GasSolverError,
    MissingAssetError,
)
from gas_solver.models import GaussianMixtureModel
from gas_solver.schedules import time_grid
from gas_solver.seeds import check_disjoint, format_seeds, parse_seeds, seeded_noise

SPEC = {"kind": "test-ddim", "steps": 4}
SEEDS = "0-22"  # 23 items: shards of 10, 10 and 3


def ddim(model, x, cond=None, steps=4):
    """Deterministic DDIM (first-order DPM-Solver), a stand-in for the classic solvers."""
    grid = time_grid(model.schedule, steps, "logsnr").to(x.dtype)
    sched = model.schedule
    for t, s in zip(grid[:-1], grid[1:], strict=True):
        eps = model.noise_prediction(x, t, cond)
        x0 = (x - sched.sigma(t) * eps) / sched.alpha(t)
        x = sched.alpha(s) * x0 + sched.sigma(s) * eps
    return x


def teacher_solver():
    """The real DPM-Solver++ when it exists, else the DDIM above."""
    try:
        from gas_solver.solvers.dpm_solver import dpm_solver_pp
    except ImportError:
        return lambda model, x, cond: ddim(model, x, cond)

    def run(model, x, cond):
        grid = time_grid(model.schedule, 4, "logsnr")
        return dpm_solver_pp(model, x, grid, cond, order=2)

    return run


@pytest.fixture
def model():
    return GaussianMixtureModel(means=torch.randn(3, 4, generator=torch.Generator().manual_seed(1)))


class Counting:
    """A run_solver that records the seeds it ran on (via the noise) and can fail after k calls."""

    def __init__(self, fail_after=None):
        self.calls, self.items, self.fail_after = 0, 0, fail_after
        self.solver = teacher_solver()

    def __call__(self, model, noise, cond):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.items += noise.shape[0]
        return self.solver(model, noise, cond)


def make(model, out, run_solver=None, **kwargs):
    kwargs.setdefault("shard_size", 10)
    kwargs.setdefault("progress", False)
    kwargs.setdefault("cond_fn", lambda s: s % 3)
    seeds = kwargs.pop("seeds", SEEDS)
    spec = kwargs.pop("spec", SPEC)
    return generate_teacher_set(model, out, seeds, run_solver or Counting(), spec, **kwargs)


def shard_bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.glob("shard-*.safetensors"))}


# -- seeds -------------------------------------------------------------------------------------


def test_parse_seeds_ranges_order_and_roundtrip():
    assert parse_seeds("0-3, 10,12 - 13") == [0, 1, 2, 3, 10, 12, 13]
    assert parse_seeds("7,2-3") == [7, 2, 3]  # order as written
    assert parse_seeds(5) == [5]
    assert parse_seeds(range(3)) == parse_seeds(torch.arange(3)) == [0, 1, 2]
    assert format_seeds([0, 1, 2, 7, 5, 6]) == "0-2,7,5-6"
    assert parse_seeds(format_seeds([9, 3, 4, 5, 0])) == [9, 3, 4, 5, 0]
    assert len(parse_seeds("0-49999")) == 50000


@pytest.mark.parametrize("bad", ["", " ", "1,,2", "3,", "5-3", "-1", "a", "1.5", "1,1", "0-3,2"])
def test_parse_seeds_rejects_bad_text(bad):
    with pytest.raises(ConfigError, match="seeds"):
        parse_seeds(bad)


@pytest.mark.parametrize("bad", [[], [1.5], [True], [-1], [2**63], torch.tensor([1.0])])
def test_parse_seeds_rejects_bad_values(bad):
    with pytest.raises(ConfigError, match="seeds"):
        parse_seeds(bad)


def test_check_disjoint():
    check_disjoint(parse_seeds("0-9"), parse_seeds("10-19"))
    with pytest.raises(ConfigError, match="overlap"):
        check_disjoint(parse_seeds("0-9"), parse_seeds("9-19"))


def test_seeded_noise_is_per_seed():
    seeds = [5, 0, 17, 3, 99]
    batch = seeded_noise(seeds, (2, 3))
    assert batch.shape == (5, 2, 3) and batch.dtype == torch.float32
    for i, seed in enumerate(seeds):  # one at a time, in any order, same bits
        assert torch.equal(seeded_noise([seed], (2, 3))[0], batch[i])
    assert torch.equal(seeded_noise(seeds[::-1], (2, 3)), batch.flip(0))
    assert torch.equal(seeded_noise(seeds, [2, 3], dtype=torch.float64), batch.double())
    assert torch.equal(seeded_noise("5,0,17,3,99", (2, 3), device="cpu"), batch)
    assert torch.equal(
        seeded_noise([5], (2, 3))[0], torch.randn(2, 3, generator=torch.Generator().manual_seed(5))
    )
    assert not torch.equal(batch[0], batch[1])


# -- teacher sets ------------------------------------------------------------------------------


def test_generate_and_read(model, tmp_path):
    solver = Counting()
    ts = make(
        model,
        tmp_path / "t",
        solver,
        batch_size=4,
        command=["gas-solver", "teacher", "--seeds=0-22"],
    )
    assert solver.items == 23
    assert len(ts) == 23 and ts.sample_shape == (4,)
    assert ts.seeds.tolist() == list(range(23))
    assert torch.equal(ts.noise, seeded_noise(range(23), (4,)))
    assert torch.equal(ts.cond, torch.arange(23) % 3)
    assert torch.equal(ts.target, teacher_solver()(model, ts.noise, None))  # one batch of 23
    m = ts.manifest
    assert m["complete"] and m["num_samples"] == 23 and m["seeds"] == "0-22"
    assert m["model"] == json.loads(json.dumps(model.identity())) and m["solver"] == SPEC
    assert [s["file"] for s in m["shards"]] == [shard_name(i) for i in range(3)]
    assert [s["seeds"] for s in m["shards"]] == ["0-9", "10-19", "20-22"]
    assert m["fields"]["target"] == {"shape": [4], "dtype": "float32"}
    assert m["fields"]["cond"] == {"shape": [], "dtype": "int64"} and m["cond_kind"] == "tensor"
    assert m["command"] == "gas-solver teacher --seeds=0-22" and m["gas_solver_version"]
    assert sorted(os.listdir(tmp_path / "t")) == [
        "manifest.json",
        *(shard_name(i) for i in range(3)),
    ]
    ts.verify()
    ts.check_model(model)
    # A finished set is not made again.
    again = Counting()
    make(model, tmp_path / "t", again)
    assert again.calls == 0


def test_batch_size_does_not_change_shards(model, tmp_path):
    one = make(model, tmp_path / "b1", batch_size=1)
    seven = make(model, tmp_path / "b7", batch_size=7)
    assert shard_bytes(one.path) == shard_bytes(seven.path)
    assert [s["sha256"] for s in one.manifest["shards"]] == [
        s["sha256"] for s in seven.manifest["shards"]
    ]
    assert torch.equal(one.target, seven.target) and torch.equal(one.noise, seven.noise)


def test_resume_after_interruption(model, tmp_path):
    reference = make(model, tmp_path / "ref", batch_size=3)
    out = tmp_path / "run"
    # 10 items per shard at batch 3 = 4 calls; fail during the second shard.
    with pytest.raises(KeyboardInterrupt):
        make(model, out, Counting(fail_after=6), batch_size=3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and [s["index"] for s in manifest["shards"]] == [0]
    with pytest.raises(GasSolverError, match="unfinished"):
        TeacherSet(out)
    # Leftovers of a kill: a temporary file and a half-written, unlisted shard.
    (out / ".shard-00001.safetensors.123.tmp").write_bytes(b"partial")
    (out / shard_name(1)).write_bytes(b"garbage")
    first = (out / shard_name(0)).stat().st_mtime_ns
    resume = Counting()
    ts = make(model, out, resume, batch_size=5)  # another batch size is fine
    assert resume.items == 13  # only shards 1 and 2
    assert (out / shard_name(0)).stat().st_mtime_ns == first
    assert shard_bytes(out) == shard_bytes(reference.path)
    assert torch.equal(ts.target, reference.target)
    assert not list(out.glob(".*.tmp"))
    assert [r["shards_made"] for r in ts.manifest["runs"]] == [1, 2]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_resume_after_sigkill(model, tmp_path):
    """A process killed (no cleanup at all) after its second shard is finished by a re-run."""
    out = tmp_path / "killed"
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        from gas_solver.data.teacher import generate_teacher_set
        from gas_solver.models import GaussianMixtureModel
        model = GaussianMixtureModel(means=torch.randn(3, 4, generator=torch.Generator().manual_seed(1)))
        calls = 0
        def run(model, noise, cond):
            global calls
            calls += 1
            if calls == 3:  # shards 0 and 1 are written (batch 10 = one call per shard)
                os.kill(os.getpid(), signal.SIGKILL)
            return noise * 0.5
        generate_teacher_set(model, {str(out)!r}, "0-22", run, {{"kind": "half"}},
                             batch_size=10, shard_size=10, progress=False)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["index"] for s in manifest["shards"]] == [0, 1]
    calls = []

    def run(model, noise, cond):
        calls.append(noise.shape[0])
        return noise * 0.5

    ts = generate_teacher_set(
        model, out, "0-22", run, {"kind": "half"}, shard_size=10, progress=False
    )
    assert calls == [3]
    assert torch.equal(ts.target, seeded_noise(range(23), (4,)) * 0.5)
    ts.verify()


def test_corruption_is_detected_and_repaired(model, tmp_path):
    ts = make(model, tmp_path / "c")
    good = shard_bytes(ts.path)
    path = ts.path / shard_name(1)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(GasSolverError, match=shard_name(1)):
        ts.verify()
    repair = Counting()
    make(model, ts.path, repair)  # re-running remakes only the corrupt shard
    assert repair.items == 10 and shard_bytes(ts.path) == good
    (ts.path / shard_name(2)).unlink()
    with pytest.raises(MissingAssetError, match=shard_name(2)):
        TeacherSet(ts.path).verify()
    with pytest.raises(MissingAssetError, match=shard_name(2)):
        _ = TeacherSet(ts.path).target
    (ts.path / shard_name(2)).write_bytes(b"not a safetensors file")
    with pytest.raises(GasSolverError, match=shard_name(2)):
        _ = TeacherSet(ts.path).noise


def test_mismatch_errors_and_overwrite(model, tmp_path):
    out = tmp_path / "m"
    make(model, out)
    with pytest.raises(CheckpointMismatchError, match="solver differs"):
        make(model, out, spec={"kind": "test-ddim", "steps": 8})
    with pytest.raises(CheckpointMismatchError, match="seeds differ"):
        make(model, out, seeds="0-23")
    with pytest.raises(CheckpointMismatchError, match="shard_size"):
        make(model, out, shard_size=5)
    other = GaussianMixtureModel(means=torch.randn(2, 4))
    with pytest.raises(CheckpointMismatchError, match="model differs"):
        make(other, out)
    with pytest.raises(CheckpointMismatchError, match="different model"):
        TeacherSet(out).check_model(other)
    (out / "notes.txt").write_text("keep me")
    ts = make(other, out, seeds="0-4", overwrite=True)
    assert len(ts) == 5 and (out / "notes.txt").exists()
    assert sorted(p.name for p in out.glob("shard-*")) == [shard_name(0)]
    ts.check_model(other)


def test_bad_inputs(model, tmp_path):
    with pytest.raises(MissingAssetError, match="manifest.json"):
        TeacherSet(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    with pytest.raises(GasSolverError, match="manifest.json"):
        TeacherSet(tmp_path / "bad")
    with pytest.raises(GasSolverError, match="manifest.json"):
        make(model, tmp_path / "bad")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "data.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match="not empty"):
        make(model, tmp_path / "foreign")
    with pytest.raises(ConfigError, match="solver_spec"):
        make(model, tmp_path / "x", spec={"fn": print})
    with pytest.raises(ConfigError, match="batch_size"):
        make(model, tmp_path / "x", batch_size=0)
    with pytest.raises(ConfigError, match="run_solver returned"):
        make(model, tmp_path / "y", run_solver=lambda m, x, c: x[:, :2])
    with pytest.raises(ConfigError, match="cond_fn"):
        make(model, tmp_path / "z", cond_fn=lambda s: s[:1])


def test_dict_and_no_conditions(model, tmp_path):
    ts = make(
        model, tmp_path / "d", cond_fn=lambda s: {"label": s % 5, "scale": s.double()[:, None]}
    )
    assert set(ts.cond) == {"label", "scale"}
    assert torch.equal(ts.cond["label"], torch.arange(23) % 5)
    assert ts.cond["scale"].shape == (23, 1)
    plain = make(model, tmp_path / "n", cond_fn=None, seeds="3,1,2")
    assert plain.cond is None and plain.seeds.tolist() == [3, 1, 2]
    assert "cond" not in plain.manifest["fields"]


def test_split_first_train_last_val(model, tmp_path):
    ts = make(model, tmp_path / "s", run_solver=lambda m, x, c: x, seeds="100-119")
    train, val = ts.split(14, 4)
    assert train.tolist() == list(range(14)) and val.tolist() == [16, 17, 18, 19]
    assert ts.seeds[val].tolist() == [116, 117, 118, 119]
    train, val = ts.split(20, 0)
    assert len(train) == 20 and len(val) == 0
    with pytest.raises(ConfigError, match="overlap"):
        ts.split(17, 4)
    for bad in [(0, 4), (-1, 4), (4, -1), (2.5, 1)]:
        with pytest.raises(ConfigError):
            ts.split(*bad)
