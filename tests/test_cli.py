"""The command line end to end (subprocess): teacher → train → sample on the analytic model."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch


def gas(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "gas_solver.cli", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def test_help_lists_every_subcommand(tmp_path):
    result = gas("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("teacher", "train", "sample", "fid", "compare", "export", "demo", "models"):
        assert command in result.stdout


def test_teacher_train_sample(tmp_path):
    teacher = gas(
        "teacher", "--model", "gmm-ring", "--seeds", "0-239", "--out", "teacher", cwd=tmp_path
    )
    assert teacher.returncode == 0, teacher.stderr
    manifest = json.loads((tmp_path / "teacher" / "manifest.json").read_text())
    assert manifest["solver"]["name"] == "unipc" and manifest["solver"]["t_eps"] == 1e-4

    config = tmp_path / "train.yaml"
    config.write_text("nfe: 3\niterations: 30\ntrain_size: 200\nval_size: 40\nbatch_size: 16\n")
    train = gas(
        "train", "--config", config, "--teacher", "teacher", "--out", "run",
        "--iterations", 20, "--checkpoint-every", 10, cwd=tmp_path,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    assert (tmp_path / "run" / "solver.safetensors").is_file()
    saved = json.loads((tmp_path / "run" / "solver.json").read_text())
    assert saved["nfe"] == 3 and saved["training"]["iteration"] == 20  # flags beat the file
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert any("val_loss" in r for r in records)

    gas_on_2d = gas("train", "--teacher", "teacher", "--loss", "gas", "--out", "g", cwd=tmp_path)
    assert gas_on_2d.returncode == 2 and "Traceback" not in gas_on_2d.stderr
    assert "image-shaped samples" in gas_on_2d.stderr and not (tmp_path / "g").exists()

    sample = gas(
        "sample",
        "--solver",
        "run/solver.safetensors",
        "--seeds",
        "50000-50009",
        "--out",
        "s",
        cwd=tmp_path,
    )
    assert sample.returncode == 0, sample.stderr
    data = np.load(tmp_path / "s" / "samples.npz")
    assert data["samples"].shape == (10, 2) and list(data["seeds"]) == list(range(50000, 50010))
    assert (tmp_path / "s" / "scatter.png").is_file()

    classic = gas(
        "sample",
        "--solver",
        "dpmpp:nfe=3",
        "--model",
        "gmm-ring",
        "--seeds",
        "50000-50009",
        "--out",
        "c",
        cwd=tmp_path,
    )
    assert classic.returncode == 0, classic.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--teacher", "missing", "--nfe", "0"], "nfe"),
        (["train", "--teacher", "t", "--loss", "l2"], "--loss"),
        (["teacher", "--model", "nope", "--out", "t"], "neither a built-in model"),
        (["sample", "--solver", "unipc:order=9,nfe=4", "--model", "gmm-ring"], "order"),
        (["teacher", "--model", "gmm-ring", "--seeds", "5-1"], "seeds"),
    ],
)
def test_user_errors_are_one_line_messages(tmp_path, args, message):
    result = gas(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert message in result.stderr


def test_train_killed_and_resumed_equals_uninterrupted(tmp_path):
    import signal
    import time

    from safetensors.torch import load_file

    assert (
        gas(
            "teacher", "--model", "gmm-ring", "--seeds", "0-99", "--out", "teacher", cwd=tmp_path
        ).returncode
        == 0
    )
    common = ["train", "--teacher", "teacher", "--nfe", 3, "--iterations", 200, "--batch-size", 8,
              "--train-size", 80, "--val-size", 20, "--val-every", 0, "--checkpoint-every", 10]  # fmt: skip
    assert gas(*common, "--out", "straight", cwd=tmp_path).returncode == 0

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "gas_solver.cli", *map(str, common), "--out", "killed"]
    proc = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be interrupted"

    resumed = gas(*common, "--out", "killed", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(tmp_path / "straight" / "solver.safetensors")
    b = load_file(tmp_path / "killed" / "solver.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [
        [
            json.loads(line).get("loss")
            for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()
        ]
        for d in ("straight", "killed")
    ]
    assert losses[0] == losses[1]


def test_gas_training_from_the_cli_on_an_image_model(tmp_path):
    assert (
        gas(
            "teacher", "--model", "gmm-digits", "--seeds", "0-39", "--out", "teacher", cwd=tmp_path
        ).returncode
        == 0
    )
    train = gas(
        "train", "--teacher", "teacher", "--out", "gas", "--loss", "gas", "--disc-preset", "tiny",
        "--nfe", 3, "--iterations", 3, "--batch-size", 4, "--train-size", 32, "--val-size", 8, "--log-every", 1,
        cwd=tmp_path,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    saved = json.loads((tmp_path / "gas" / "solver.json").read_text())
    assert saved["training"]["config"]["loss"] == "gas"
    records = [
        json.loads(line) for line in (tmp_path / "gas" / "metrics.jsonl").read_text().splitlines()
    ]
    assert sum("disc_loss" in r and "r1" in r for r in records) == 3
