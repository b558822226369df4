"""`gas-solver demo` end to end at toy sizes on a real (tiny) diffusers model, from the CLI."""

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("diffusers")

from gas_solver.config import load_config  # noqa: E402
from gas_solver.evaluation import Row  # noqa: E402
from gas_solver.evaluation.report import gap_closed  # noqa: E402
from gas_solver.metrics.fid_statistics import FIDStatistics  # noqa: E402
from gas_solver.training.denoiser import DenoiserConfig, train_denoiser  # noqa: E402


def test_demo_writes_report_table_and_pictures(tmp_path):
    model = train_denoiser(
        load_config(
            DenoiserConfig,
            overrides={
                "dataset": "digits",
                "out": str(tmp_path / "m"),
                "channels": "8,16",
                "iterations": 4,
                "batch_size": 8,
                "device": "cpu",
            },
        ),
        progress=False,
    )
    # A made-up reference keeps the test fast: the Inception still runs on every sample.
    FIDStatistics(
        torch.zeros(2048, dtype=torch.float64).numpy(), torch.eye(2048, dtype=torch.float64).numpy()
    ).save(tmp_path / "ref.npz")
    result = subprocess.run(
        [sys.executable, "-m", "gas_solver.cli", "demo", "--model", str(model), "--out", "demo",
         "--train-size", "12", "--val-size", "4", "--iterations", "3", "--batch-size", "4",
         "--eval-seeds", "50000-50003", "--fid-ref", "ref.npz", "--disc-warmup", "2", "--gas-iterations", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "demo" / "report.md").read_text()
    for solver in ("teacher", "GS-4", "GAS-4", "ddim", "dpmpp", "unipc", "ipndm"):
        assert solver in report
    assert "gas-solver demo --model" in report
    start = json.loads((tmp_path / "demo" / "demo.json").read_text())["gs_start"]
    assert f"The GS started as `{start['solver']}` (of 56 classic solvers" in report
    gas = json.loads((tmp_path / "demo" / "gas4" / "solver.json").read_text())["training"]
    assert gas["iteration"] == 2 and gas["config"]["init_solver"].endswith("gs4/solver.safetensors")
    rows = json.loads((tmp_path / "demo" / "demo.json").read_text())["rows"]
    assert all(row["n_samples"] == 4 and row["fid"] is not None for row in rows)
    assert (tmp_path / "demo" / "compare" / "comparison.png").is_file()


def _row(kind: str, label: str, fid: float) -> Row:
    return Row(
        label=label, kind=kind, solver=kind, nfe=4, spec=None, checkpoint=None, n_samples=4,
        fid=fid, l1=0.0, l1_std=0.0, rmse=0.0, rmse_std=0.0, psnr=0.0, psnr_std=0.0,
        fidelity_space="pixels", seconds=0.0, grid=[], picture=None, description={},
    )  # fmt: skip


def test_gap_closed_share():
    rows = [
        _row("teacher", "teacher", 10.0),
        _row("gs", "GS-4", 14.0),
        _row("classic", "ddim", 50.0),
        _row("classic", "unipc", 30.0),
    ]
    assert gap_closed((r.label, r.kind, r.fid) for r in rows) == {"GS-4": pytest.approx(0.8)}
    assert gap_closed((r.label, r.kind, None) for r in rows) is None
    assert (
        gap_closed([("teacher", "teacher", 10.0), ("GS-4", "gs", 9.0), ("ddim", "classic", 9.5)])
        is None
    )
