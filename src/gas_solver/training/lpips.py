"""LPIPS-VGG, the paper's distillation loss for pixel models, offline and without torchvision.

The metric is lpips 0.1.4 with ``net='vgg'``, ``version='0.1'`` (Zhang et al. 2018), rebuilt here
in plain torch so that neither torchvision nor ``import lpips`` is needed:

1. (the paper's preprocessing, arXiv 2510.17699 §3.1) both images are resized bilinearly to
   224×224 (``align_corners=False``), then clipped to [−1, 1]; grayscale is repeated to 3 channels;
2. lpips' ``ScalingLayer``: ``(x − shift) / scale`` with shift = (−.030, −.088, −.188) and
   scale = (.458, .448, .450), i.e. [−1, 1] mapped to roughly ImageNet-normalised RGB;
3. VGG16's convolutional trunk, read out after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3;
4. per layer: features divided by their channel-wise L2 norm (+1e-10), squared difference,
   a 1×1 linear head with non-negative weights (lpips' ``NetLinLayer``; its dropout is inactive at
   evaluation and left out here), average over space;
5. sum over the five layers → one distance per sample ``(B,)``.

Weights come from two files, neither downloaded at run time:

- the VGG16 ImageNet backbone: torchvision's ``vgg16-397923af.pth`` (``IMAGENET1K_V1``), supplied
  by the user (:func:`set_vgg16_path`, the ``GAS_SOLVER_VGG16`` environment variable, or
  torchvision's own cache ``$TORCH_HOME/hub/checkpoints``); its keys ``features.N.weight`` load
  directly, and the classifier keys are ignored;
- the linear heads ``lpips/weights/v0.1/vgg.pth`` from the lpips 0.1.4 wheel
  (``pip install --no-deps lpips==0.1.4``), found without importing lpips (keys
  ``lin0.model.1.weight`` … ``lin4.model.1.weight``, shapes ``(1, C, 1, 1)``).

:func:`lpips_loss` is the per-sample loss registered as ``"lpips"`` in
:data:`~gas_solver.training.losses.DISTILLATION_LOSSES`; it loads the weights on first use, on the
device and in the dtype of its input, and keeps them for later calls.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.datasets import package_file
from ..errors import CheckpointMismatchError, ConfigError, MissingAssetError

__all__ = [
    "HEADS_FILE",
    "LPIPS",
    "LPIPS_PIP",
    "VGG16_ENV",
    "VGG16_FILE",
    "VGG16_URL",
    "VGG16Features",
    "heads_path",
    "lpips_loss",
    "set_vgg16_path",
    "vgg16_path",
]

VGG16_FILE = "vgg16-397923af.pth"
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILE}"
VGG16_ENV = "GAS_SOLVER_VGG16"
HEADS_FILE = "weights/v0.1/vgg.pth"  # inside the lpips package
LPIPS_PIP = "pip install --no-deps lpips==0.1.4"

#: torchvision's VGG16 ("configuration D") trunk: output channels of each 3×3 conv, "M" = max-pool.
VGG16_LAYERS: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
)  # fmt: skip
#: Indices in ``features`` of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (lpips' five slices).
TAPS = (3, 8, 15, 22, 29)
CHANNELS = (64, 128, 256, 512, 512)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)

_vgg16_override: Path | None = None


# ---------------------------------------------------------------------------------------------
# Where the weights are


def set_vgg16_path(path: str | os.PathLike | None) -> None:
    """Use ``path`` as the VGG16 weights (torchvision's ``vgg16-397923af.pth``) for LPIPS.

    Takes precedence over ``$GAS_SOLVER_VGG16``; ``None`` goes back to the default lookup. The file
    is checked when LPIPS is first used (or by :func:`vgg16_path`).
    """
    global _vgg16_override
    _vgg16_override = None if path is None else Path(path).expanduser()


def vgg16_path() -> Path:
    """Path of the VGG16 ImageNet weights, from the first of these that is set.

    1. :func:`set_vgg16_path`;
    2. the environment variable ``GAS_SOLVER_VGG16``;
    3. torchvision's download cache, ``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth``.

    Raises:
        MissingAssetError: the file does not exist; the message says where to download it.
    """
    if _vgg16_override is not None:
        path, origin = _vgg16_override, "set_vgg16_path()"
    elif os.environ.get(VGG16_ENV):
        path, origin = Path(os.environ[VGG16_ENV]).expanduser(), f"${VGG16_ENV}"
    else:
        path = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE
        origin = f"torchvision's cache (${VGG16_ENV} is not set)"
    if path.is_file():
        return path
    raise MissingAssetError(
        f"LPIPS needs the VGG16 ImageNet weights {VGG16_FILE} (torchvision IMAGENET1K_V1, 528 MB); "
        f"not found at {path} (from {origin}). Download {VGG16_URL} on a machine with internet "
        f"and give its path with `export {VGG16_ENV}=/path/to/{VGG16_FILE}` (or "
        "gas_solver.training.lpips.set_vgg16_path())"
    )


def heads_path() -> Path:
    """Path of lpips' linear heads ``lpips/weights/v0.1/vgg.pth`` (lpips is not imported).

    Raises:
        MissingAssetError: lpips 0.1.4 is not installed (names the pip command).
    """
    return package_file("lpips", HEADS_FILE, LPIPS_PIP)


def _load_state_dict(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise CheckpointMismatchError(
            f"cannot read {path} as a torch state dict: {error}"
        ) from error
    if not isinstance(state, dict):
        raise CheckpointMismatchError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


# ---------------------------------------------------------------------------------------------
# The network


class VGG16Features(nn.Module):
    """torchvision's ``vgg16().features`` up to relu5_3, returning lpips' five feature maps.

    ``features`` has torchvision's layout (conv/ReLU/max-pool at the same indices), so the
    ``features.*`` entries of ``vgg16-397923af.pth`` load as they are. The ReLUs are not in-place,
    so the tapped features stay intact for autograd.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for spec in VGG16_LAYERS:
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(spec), kernel_size=3, padding=1), nn.ReLU()]
                channels = int(spec)
        self.features = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x: (B, 3, H, W)`` → relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 activations."""
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in TAPS:
                taps.append(x)
        return taps


class _Head(nn.Module):
    """lpips' ``NetLinLayer`` (a 1×1 conv to one channel, no bias); index 0 held its dropout."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """LPIPS-VGG distance, per sample: ``LPIPS(x, y) → (B,)``.

    Args:
        resize: side of the square both images are resized to (bilinear, ``align_corners=False``)
            before clipping; 224 as in the paper, ``None`` keeps the input size (it must be at
            least 16×16 for the five VGG stages).
        clip: clip the (resized) images to [−1, 1], as the paper does.

    Build with :meth:`from_files` (or load the two state dicts into ``net`` and ``lin0..lin4``).
    Parameters are frozen (``requires_grad=False``); gradients flow to the images.
    """

    def __init__(self, resize: int | None = 224, clip: bool = True) -> None:
        super().__init__()
        if resize is not None and resize < 16:
            raise ConfigError(f"resize: LPIPS-VGG needs at least 16×16 images, got {resize}")
        self.resize = resize
        self.clip = clip
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.net = VGG16Features()
        self.lin0, self.lin1, self.lin2, self.lin3, self.lin4 = (_Head(c) for c in CHANNELS)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_files(
        cls,
        vgg16: str | os.PathLike | None = None,
        heads: str | os.PathLike | None = None,
        resize: int | None = 224,
        clip: bool = True,
    ) -> LPIPS:
        """Load the VGG16 trunk and the linear heads on CPU in float32.

        Args:
            vgg16: torchvision's ``vgg16-397923af.pth``; default :func:`vgg16_path`.
            heads: lpips' ``weights/v0.1/vgg.pth``; default :func:`heads_path`.
            resize, clip: as in :class:`LPIPS`.

        Raises:
            MissingAssetError: a file is missing (the message says where to get it).
            CheckpointMismatchError: a file lacks the expected keys or shapes.
        """
        model = cls(resize=resize, clip=clip)
        vgg16 = vgg16_path() if vgg16 is None else Path(vgg16)
        heads = heads_path() if heads is None else Path(heads)
        for path in (vgg16, heads):
            if not path.is_file():
                raise MissingAssetError(f"LPIPS weights not found: {path}")
        trunk = {k: v for k, v in _load_state_dict(vgg16).items() if k.startswith("features.")}
        try:
            model.net.load_state_dict(trunk)
        except RuntimeError as error:
            raise CheckpointMismatchError(
                f"{vgg16} is not torchvision's VGG16 state dict ({VGG16_FILE}): {error}"
            ) from error
        head_state = {k: v for k, v in _load_state_dict(heads).items() if k.startswith("lin")}
        try:
            model.load_state_dict(head_state, strict=False)
        except RuntimeError as error:
            raise CheckpointMismatchError(
                f"{heads} is not lpips' VGG heads ({HEADS_FILE}): {error}"
            ) from error
        missing = [f"lin{k}.model.1.weight" for k in range(5)]
        missing = [key for key in missing if key not in head_state]
        if missing:
            raise CheckpointMismatchError(f"{heads} lacks the LPIPS heads {missing}")
        return model

    def preprocess(self, x: Tensor) -> Tensor:
        """Images ``(B, 1 or 3, H, W)`` in [−1, 1] → resized, clipped, scaled ``(B, 3, H', W')``."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ConfigError(
                f"LPIPS needs images (B, 1 or 3, H, W), got shape {tuple(x.shape)}; "
                "for latents use the 'l1' loss"
            )
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if self.resize is not None and tuple(x.shape[-2:]) != (self.resize, self.resize):
            x = F.interpolate(
                x, size=(self.resize, self.resize), mode="bilinear", align_corners=False
            )
        if self.clip:
            x = x.clamp(-1.0, 1.0)
        return (x - self.shift) / self.scale

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """``x, y: (B, C, H, W)`` in [−1, 1], C = 1 or 3 → distance ``(B,)``."""
        if x.shape != y.shape:
            raise ConfigError(f"LPIPS: shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}")
        heads = (self.lin0, self.lin1, self.lin2, self.lin3, self.lin4)
        total = x.new_zeros(x.shape[0])
        for head, fx, fy in zip(
            heads, self.net(self.preprocess(x)), self.net(self.preprocess(y)), strict=True
        ):
            diff = (_unit_channels(fx) - _unit_channels(fy)).square()
            total = total + head(diff).mean(dim=(1, 2, 3))
        return total


def _unit_channels(f: Tensor, eps: float = 1e-10) -> Tensor:
    """``f / (‖f‖₂ over channels + eps)`` (lpips' ``normalize_tensor``).

    ``vector_norm`` has the same value as lpips' ``sqrt(sum(f²))`` but a finite gradient (zero)
    where a feature vector is all zero, where the ``sqrt`` form gives NaN.
    """
    return f / (torch.linalg.vector_norm(f, dim=1, keepdim=True) + eps)


# ---------------------------------------------------------------------------------------------
# The registered loss


@functools.lru_cache(maxsize=2)
def _cached_model(vgg16: Path, heads: Path, device: torch.device, dtype: torch.dtype) -> LPIPS:
    return LPIPS.from_files(vgg16, heads).to(device=device, dtype=dtype)


def lpips_loss(student: Tensor, target: Tensor) -> Tensor:
    """LPIPS-VGG per sample with the paper's preprocessing (224×224 bilinear, clip to [−1, 1]).

    ``student, target: (B, 1 or 3, H, W)`` in [−1, 1] → ``(B,)``. The first call loads the weights
    (:func:`vgg16_path`, :func:`heads_path`) onto the input's device and dtype; later calls reuse
    them.

    Raises:
        MissingAssetError: the VGG16 weights or the lpips heads are missing.
    """
    dtype = student.dtype if student.is_floating_point() else torch.float32
    model = _cached_model(vgg16_path(), heads_path(), student.device, dtype)
    return model(student.to(dtype), target.to(dtype))
