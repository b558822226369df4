"""Runs own their output folders: one writer at a time, nothing stale left to be trusted, strict
JSON, resumes that refuse changed settings (issue: reliability items 3, 4, 5, 7, 8)."""

from __future__ import annotations

import json
import math
import os
import re
import stat
import subprocess
import sys

import pytest
import torch

from gas_solver.commands.sample import SampleConfig, run_sample
from gas_solver.commands.teacher import TeacherConfig, run_teacher
from gas_solver.commands.train import TrainConfig, run_train
from gas_solver.config import load_config
from gas_solver.data.teacher import generate_teacher_set
from gas_solver.errors import CheckpointMismatchError, ConfigError, GasSolverError
from gas_solver.models import GaussianMixtureModel
from gas_solver.outputs import atomic_write, folder_lock, write_json
from gas_solver.training.trainer import train


def _gas(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "gas_solver.cli", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("ring") / "teacher"
    run_teacher(
        load_config(
            TeacherConfig, overrides={"model": "gmm-ring", "seeds": "0-59", "out": str(out)}
        ),
        progress=False,
    )
    return out


def _train_config(teacher, out, **overrides):
    base = dict(teacher=str(teacher), out=str(out), nfe=2, iterations=4, batch_size=8, train_size=40,
                val_size=20, val_every=0, checkpoint_every=2, device="cpu")  # fmt: skip
    return load_config(TrainConfig, overrides={**base, **overrides})


def test_resume_refuses_changed_settings_and_names_them(teacher, tmp_path, caplog):
    run_train(_train_config(teacher, tmp_path / "run"), progress=False)
    with pytest.raises(CheckpointMismatchError, match=r"lr: stored 0.002, given 0.003"):
        run_train(_train_config(teacher, tmp_path / "run", lr=3e-3, resume=True), progress=False)
    with pytest.raises(CheckpointMismatchError, match=r"t_eps: stored None, given 0.01"):
        run_train(_train_config(teacher, tmp_path / "run", t_eps=0.01, resume=True), progress=False)
    # more iterations is what resuming is for; the cosine decay (the default) then says it jumps
    run_train(_train_config(teacher, tmp_path / "run", iterations=6, resume=True), progress=False)
    assert "the cosine decay now spans 6 iterations" in caplog.text


def test_a_second_writer_is_refused_with_the_holders_pid(teacher, tmp_path):
    with folder_lock(tmp_path / "run"):
        result = _gas("train", "--teacher", teacher, "--out", "run", "--nfe", 2, "--iterations", 2,
                      "--train-size", 40, "--val-size", 20, cwd=tmp_path)  # fmt: skip
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"in use by another gas-solver run (PID {os.getpid()})" in result.stderr
        sampled = _gas(
            "sample",
            "--model",
            "gmm-ring",
            "--solver",
            "ddim:nfe=2",
            "--seeds",
            "0-3",
            "--out",
            "run",
            cwd=tmp_path,
        )
        assert sampled.returncode == 2 and "in use by another" in sampled.stderr
    with folder_lock(tmp_path / "run"):  # released: the lock does not outlive its holder
        pass


def test_a_fresh_run_leaves_nothing_of_an_earlier_one(teacher, tmp_path):
    out = tmp_path / "samples"
    run_sample(
        load_config(
            SampleConfig,
            overrides=dict(model="gmm-digits", solver="ddim:nfe=2", seeds="0-3", out=str(out)),
        ),
        progress=False,
    )
    assert (out / "samples.npz").is_file() and len(list((out / "images").iterdir())) == 4
    run_sample(
        load_config(
            SampleConfig,
            overrides=dict(
                model="gmm-digits", solver="ddim:nfe=2", seeds="10-11", out=str(out), npz=False
            ),
        ),
        progress=False,
    )
    assert not (out / "samples.npz").exists()  # the old seeds' samples are gone, not kept
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000010.png", "000011.png"]
    assert not any(p.name.endswith(".tmp") for p in out.rglob("*"))

    run = tmp_path / "run"
    run_train(_train_config(teacher, run), progress=False)
    (run / "summary.json").write_text("{stale}")
    (run / "solver.json").write_text("{stale}")
    run_train(_train_config(teacher, run, iterations=2), progress=False)
    assert json.loads((run / "summary.json").read_text())["final_validation"] is not None


def test_json_is_strict_and_files_get_ordinary_permissions(tmp_path):
    path = write_json(tmp_path / "a.json", {"loss": math.nan, "list": [math.inf, 1.0]})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}")) == {
        "loss": None,
        "list": [None, 1.0],
    }
    from safetensors.torch import save_file

    mask = os.umask(0o022)
    os.umask(mask)
    written = atomic_write(
        tmp_path / "s.safetensors", lambda tmp: save_file({"a": torch.zeros(1)}, str(tmp))
    )
    assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~mask


def _strict_json(text):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))


def test_nan_targets_are_refused_when_the_set_is_opened_before_any_training(tmp_path):
    model = GaussianMixtureModel.ring(modes=4, radius=1.0, std=0.1).requires_grad_(False)

    calls = []

    def run(model, noise, cond):  # the last batch, items 40-59 (validation), gets NaN targets
        calls.append(1)
        return noise * (math.nan if len(calls) == 3 else 0.5)

    teacher = generate_teacher_set(model, tmp_path / "t", "0-59", run, {"kind": "half"},
                                   batch_size=20, shard_size=20, progress=False)  # fmt: skip
    with pytest.raises(GasSolverError, match=r"shard-00002.safetensors: 'target' of item 40"):
        train(_train_config(tmp_path / "t", tmp_path / "run"), model, teacher, progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    assert not (tmp_path / "run" / "solver.safetensors").exists()


def test_a_non_finite_loss_names_only_a_checkpoint_that_exists(teacher, tmp_path):
    with pytest.raises(GasSolverError, match="no checkpoint was written yet") as caught:
        run_train(_train_config(teacher, tmp_path / "run", lr=1e30), progress=False)
    assert "checkpoint.pt" not in str(caught.value)


def test_resume_drops_a_torn_metrics_line_and_refuses_a_corrupt_one(teacher, tmp_path):
    run = tmp_path / "run"
    run_train(_train_config(teacher, run), progress=False)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 5, "lo')  # what a kill during a write leaves
    run_train(_train_config(teacher, run, iterations=6, resume=True), progress=False)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [_strict_json(line)["iteration"] for line in lines][-1] == 6
    (run / "metrics.jsonl").write_text("not json\n" + "\n".join(lines) + "\n")
    with pytest.raises(GasSolverError, match=r"metrics.jsonl line 1 is not a metrics record"):
        run_train(_train_config(teacher, run, iterations=8, resume=True), progress=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "meta"], "device: 'meta' is not a device gas-solver runs on"),
        (["--device", "mps"], "device: mps was requested but is not available"),
        (["--device", "cuda:x"], "device: 'cuda:x' is not a device"),
        (["--prompts", "prompts.txt"], "prompts: the model gmm-ring takes no text prompts"),
        (["--solver", "ddim:nfe=100000000000"], "nfe: must be an integer from 1 to 10000"),
        (["--batch-size", "100000000"], "batch_size: must be from 1 to 4096"),
        (["--seeds", "\u0663-\u0665"], "seeds: cannot read"),
        (["--seeds", "1e3"], "seeds: cannot read"),
    ],
)
def test_bad_sample_inputs_are_one_line_and_write_nothing(tmp_path, args, message):
    (tmp_path / "prompts.txt").write_text("a cat\n")
    base = {"--model": "gmm-ring", "--solver": "ddim:nfe=2", "--seeds": "0-3", "--out": "out",
            "--device": "cpu"}  # fmt: skip
    base.update(zip(args[::2], args[1::2], strict=True))
    result = _gas("sample", *(item for pair in base.items() for item in pair), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("nfe: true", "nfe: expected an integer, got True"),
        ("out: {a: 1}", "out: expected text, got {'a': 1}"),
        ("model: [mnist32]", "model: expected text"),
        ("lr: .nan", "lr: expected a finite number, got nan"),
        ("iterations: 1.5", "iterations: expected an integer, got 1.5"),
        ("seed: 100000000000000000000", "seed: expected an integer"),
        ("grad_checkpoint: 1", "grad_checkpoint: expected true or false, got 1"),
        ("nfe: 1000", "nfe: must be from 1 to 100"),
    ],
)
def test_yaml_values_are_not_coerced(tmp_path, yaml_text, message):
    (tmp_path / "c.yaml").write_text(f"teacher: t\n{yaml_text}\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(TrainConfig, tmp_path / "c.yaml")


def test_a_full_disk_while_saving_a_solver_names_the_file(tmp_path, monkeypatch):
    import errno
    import pathlib

    from gas_solver.errors import OutputError
    from gas_solver.solvers.generalized import GeneralizedSolver

    model = GaussianMixtureModel.ring(modes=4, radius=1.0, std=0.1)
    solver = GeneralizedSolver(2, model.schedule)

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    with pytest.raises(OutputError, match=r"cannot write .*s\.safetensors: No space left"):
        solver.save(tmp_path / "s.safetensors", {"model": model.identity()})
    assert list(tmp_path.iterdir()) == []  # no temporary, no half file
