"""``--dtype`` and ``--compile``: the network's calls in bfloat16 or float16 (autocast) and compiled,
the solvers' arithmetic, weights and EMA untouched; the choice recorded and checked.

Tolerances, measured on this CPU (the bundled ``mnist32`` UNet, seeds 0-7, UniPC NFE 4 on the
uniform grid, samples of RMS ≈ 1): bfloat16 differs from float32 by at most 0.079 (mean 0.0023),
float16 by at most 0.0078 (mean 0.00025); the tests allow about four times that
(:data:`SAMPLE_TOLERANCE`). The exact mixture ``gmm-ring`` has no matrix product or convolution,
so autocast leaves all of it in float32: 0 measured, 1e-6 allowed. A compiled call of it differs
from the uncompiled one by 0 (1e-5 allowed).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from gas_solver.cli import main
from gas_solver.commands.teacher import TeacherConfig, make_teacher_set
from gas_solver.config import validated
from gas_solver.data.teacher_set import TeacherSet
from gas_solver.errors import CheckpointMismatchError, ConfigError
from gas_solver.models.base import COMPUTE_DTYPES
from gas_solver.models.loading import load_model
from gas_solver.sampling import sample
from gas_solver.seeds import seeded_noise
from gas_solver.training.trainer import Trainer, TrainSettings

SAMPLE_TOLERANCE = {"bfloat16": (0.3, 0.01), "float16": (0.03, 0.001)}
"""``--dtype`` → (largest, mean) absolute difference to float32 allowed on ``mnist32``."""
VAL_LOSS_MARGIN = 0.02
"""Relative difference of a bfloat16 GS's validation loss to float32's allowed on ``mnist32``
(measured: 0.4 % after 4 iterations, which lowered it by 5 %)."""


def _samples(model, dtype: str, seeds=range(8)) -> torch.Tensor:
    model.set_precision(dtype)
    noise = seeded_noise(list(seeds), model.sample_shape)
    with torch.no_grad():
        return sample(model, noise, "unipc", nfe=4, grid="uniform")


def test_every_dtype_on_the_exact_mixture():
    model = load_model("gmm-ring")
    reference = _samples(model, "float32")
    for dtype in COMPUTE_DTYPES:
        out = _samples(model, dtype)
        assert out.dtype == torch.float32 and (out - reference).abs().max() <= 1e-6


@pytest.fixture(scope="module")
def mnist():
    return load_model("mnist32")


def test_every_dtype_on_mnist32_is_close_to_float32(mnist):
    reference = _samples(mnist, "float32")
    for dtype, (largest, mean) in SAMPLE_TOLERANCE.items():
        out = _samples(mnist, dtype)
        error = (out - reference).abs()
        assert out.dtype == torch.float32, dtype  # the solver's arithmetic stays float32
        assert 0 < error.max() <= largest and error.mean() <= mean, (dtype, error.max())
    mnist.set_precision("float32")
    assert torch.equal(_samples(mnist, "float32"), reference)  # channels_last undone: bit-exact
    with pytest.raises(ConfigError, match="dtype"):
        mnist.set_precision("float64")


def _run(*args: str, capsys) -> tuple[int, str]:
    code = main([*args, "--device", "cpu"])
    return code, capsys.readouterr().err


def test_dtype_recorded_and_a_teacher_set_of_another_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _ = _run("teacher", "--model", "gmm-ring", "--seeds", "0-59", "--out", "t",
                   "--dtype", "bfloat16", capsys=capsys)  # fmt: skip
    assert code == 0
    assert json.loads((tmp_path / "t" / "manifest.json").read_text())["compute_dtype"] == "bfloat16"
    train = ("train", "--teacher", "t", "--nfe", "2", "--iterations", "2", "--train-size", "40",
             "--val-size", "20", "--batch-size", "8", "--init-solver", "dpmpp3m")  # fmt: skip

    code, err = _run(*train, "--out", "f32", capsys=capsys)
    lines = [line for line in err.splitlines() if line.startswith("gas-solver")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert "made with the network in bfloat16" in lines[0] and "--allow-dtype-mismatch" in lines[0]
    assert "--dtype bfloat16" in lines[0] and not (tmp_path / "f32").exists()

    code, _ = _run(*train, "--out", "f32", "--allow-dtype-mismatch", capsys=capsys)
    assert code == 0
    code, _ = _run(*train, "--out", "bf16", "--dtype", "bfloat16", capsys=capsys)
    assert code == 0
    meta = json.loads((tmp_path / "bf16" / "solver.json").read_text())
    assert meta["training"]["config"]["dtype"] == "bfloat16"
    assert meta["teacher"]["compute_dtype"] == "bfloat16"

    code, err = _run(*train, "--out", "bf16", "--resume", "--iterations", "3",
                     "--allow-dtype-mismatch", capsys=capsys)  # fmt: skip
    assert code == 2 and "dtype: stored 'bfloat16', given 'float32'" in err

    code, _ = _run("sample", "--solver", "bf16", "--seeds", "50000-50003", "--out", "s",
                   "--dtype", "float16", capsys=capsys)  # fmt: skip
    assert code == 0
    record = json.loads((tmp_path / "s" / "sample.json").read_text())
    assert record["compute_dtype"] == "float16" and record["compiled"] is False
    assert record["solver"]["trained_dtype"] == "bfloat16"


def test_a_set_without_compute_dtype_is_float32(teacher):
    manifest = teacher / "manifest.json"
    data = json.loads(manifest.read_text())
    assert data["compute_dtype"] == "float32"
    digest = TeacherSet(teacher).digest
    del data["compute_dtype"]  # as written before --dtype
    manifest.write_text(json.dumps(data))
    old = TeacherSet(teacher)
    assert old.compute_dtype == "float32" and old.digest == digest  # float32: digest unchanged
    old.check_compute_dtype("float32")
    with pytest.raises(CheckpointMismatchError, match="--allow-dtype-mismatch"):
        old.check_compute_dtype("float16")


@pytest.fixture(scope="module")
def mnist_teacher(tmp_path_factory, mnist):
    out = tmp_path_factory.mktemp("mnist") / "teacher"
    config = TeacherConfig(model="mnist32", out=str(out), seeds="0-23", solver="unipc:nfe=6",
                           batch_size=24, device="cpu")  # fmt: skip
    return make_teacher_set(validated(config), mnist, torch.device("cpu"), progress=False)


def _trainer(mnist, teacher, out, dtype) -> Trainer:
    settings = TrainSettings(
        teacher=str(teacher.path), out=str(out), nfe=3, init_solver="dpmpp3m", iterations=4,
        batch_size=4, train_size=16, val_size=8, val_every=0, checkpoint_every=4, log_every=1,
        device="cpu", dtype=dtype, allow_dtype_mismatch=True,
    )  # fmt: skip
    return Trainer(validated(settings), mnist, teacher, progress=False)


def test_float16_training_scales_the_gradients_through_the_network(mnist, mnist_teacher, tmp_path):
    trainer = _trainer(mnist, mnist_teacher, tmp_path / "f16", "float16")
    assert trainer.scaler is not None and mnist.compute_dtype == "float16"
    inputs_with_grad = []
    hook = mnist.unet.register_forward_hook(
        lambda module, args, out: inputs_with_grad.append(args[0].requires_grad)
    )
    try:
        trainer.train_step()  # the loss backpropagates through the network's calls
    finally:
        hook.remove()
    assert any(inputs_with_grad)
    trainer.run(progress=False)
    records = [json.loads(line) for line in (tmp_path / "f16" / "metrics.jsonl").open()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert all(p.dtype in (torch.float32, torch.float64) for p in trainer.solver.parameters())
    assert all(s.dtype in (torch.float32, torch.float64) for s in trainer.ema.shadow)
    assert trainer.scaler.get_scale() > 0


def test_bfloat16_training_validates_as_float32(mnist, mnist_teacher, tmp_path):
    losses = {}
    for dtype in ("float32", "bfloat16"):
        trainer = _trainer(mnist, mnist_teacher, tmp_path / dtype, dtype)
        assert trainer.scaler is None  # bfloat16 has float32's range: no scaler
        trainer.run(progress=False)
        losses[dtype] = trainer.last_validation["val_loss"]
    assert abs(losses["bfloat16"] - losses["float32"]) <= VAL_LOSS_MARGIN * losses["float32"]


def test_compiled_network_samples_as_uncompiled():
    model = load_model("gmm-ring")
    reference = _samples(model, "float32")
    assert model.compile_network() is None and model.compiled
    assert (_samples(model, "float32") - reference).abs().max() <= 1e-5
    assert model.compiled  # the first call compiled


def test_compile_without_a_cxx_compiler_runs_uncompiled(tmp_path):
    """No C++ compiler for the inductor (``CXX`` names none; a fresh compile cache, so nothing
    compiled earlier is reused): the command warns in one line and samples uncompiled."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CXX": str(tmp_path / "no-such-compiler"),
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "gas_solver.cli", "sample", "--model", "gmm-ring", "--solver",
         "unipc:nfe=2", "--seeds", "0-3", "--out", "s", "--compile", "--device", "cpu"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "--compile" in line]
    assert len(warnings) == 1 and "runs uncompiled" in warnings[0], result.stderr
    assert json.loads((tmp_path / "s" / "sample.json").read_text())["compiled"] is False
