"""``gas-solver info FILE`` on every kind of solver file the project writes, and on damaged or
foreign ones (one line, exit 2), through the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gas_solver.commands.train import TrainConfig, run_train
from gas_solver.config import load_config


def gas(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "gas_solver.cli", *map(str, args)], cwd=cwd, capture_output=True,
        text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


@pytest.fixture(scope="module")
def run(teacher, tmp_path_factory):
    """A GS trained for 2 iterations on the ring mixture, and its k-diffusion export."""
    out = tmp_path_factory.mktemp("info") / "run"
    config = dict(teacher=str(teacher), out=str(out), nfe=3, iterations=2, batch_size=8,
                  train_size=40, val_size=20, val_every=0)  # fmt: skip
    run_train(load_config(TrainConfig, overrides=config), progress=False)
    exported = gas("export", "--solver", out, "--format", "k-diffusion", "--out", "gs3.json",
                   cwd=out.parent)  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    return out


def test_info_on_a_trained_solver_says_what_it_is_and_fits(run):
    for given in (run, run / "solver.safetensors"):
        shown = gas("info", given, cwd=run.parent)
        assert shown.returncode == 0, shown.stderr
        lines = dict(line.strip().split(": ", 1) for line in shown.stdout.strip().splitlines())
        assert lines["model calls (NFE)"] == "3"
        assert "a trained GS" in lines["file"] and "checksum" in lines["file"]
        assert lines["model"].startswith("gmm-ring:")
        assert lines["guidance"] == "none (unguided)"
        assert lines["training"].startswith("2 iterations, loss gs")
        assert len(lines["grid (t)"].split(", ")) == 4
        assert "gas-solver sample --solver" in lines["fits"]


def test_info_on_a_k_diffusion_export(run):
    shown = gas("info", "gs3.json", cwd=run.parent)
    assert shown.returncode == 0, shown.stderr
    lines = dict(line.strip().split(": ", 1) for line in shown.stdout.strip().splitlines())
    assert lines["sampling"].startswith("eps: a Karras denoiser")
    assert len(lines["sigmas"].split(", ")) == 4 and len(lines["query sigmas"].split(", ")) == 3
    assert lines["trained as"] == "GS, for gmm-ring"
    assert json.loads((run.parent / "gs3.json").read_text())["nfe"] == 3


def test_info_on_a_diffusers_scheduler_folder(tmp_path):
    pytest.importorskip("diffusers")
    from gas_solver.export import GeneralizedSolverScheduler, solver_table
    from gas_solver.models.loading import load_model
    from gas_solver.solvers.generalized import GeneralizedSolver

    model = load_model("mnist32")
    table = solver_table(GeneralizedSolver(4, model.schedule), model, {"model_source": "mnist32"})
    scheduler = GeneralizedSolverScheduler.from_table(table, model.prediction_type)
    scheduler.save_pretrained(tmp_path / "gs4")
    shown = gas("info", "gs4", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "GeneralizedSolverScheduler folder" in shown.stdout
    assert "model: mnist32, predicts flow_prediction" in shown.stdout
    assert "num_inference_steps=4" in shown.stdout


def test_info_refuses_damaged_and_foreign_files_in_one_line(run, tmp_path):
    damaged = tmp_path / "damaged.safetensors"
    data = bytearray((run / "solver.safetensors").read_bytes())
    data[-3] ^= 0xFF  # a tensor byte: the checksum no longer holds
    damaged.write_bytes(bytes(data))
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    (tmp_path / "notes.txt").write_text("hello")
    cases = {
        "damaged.safetensors": "checksum",
        "other.json": "not a gas-solver k-diffusion solver file",
        "notes.txt": "not a solver file gas-solver knows",
        "missing.json": "no such file or folder",
    }
    for name, message in cases.items():
        refused = gas("info", name, cwd=tmp_path)
        assert refused.returncode == 2, (name, refused.stdout)
        assert message in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, name
