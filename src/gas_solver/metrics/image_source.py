"""What FID reads images from: tensors, numpy arrays, batches, image folders and ``.npz`` files.

An :data:`ImageSource` becomes batches ``(B, C, H, W)`` (:func:`source_batches`), uint8 or float
in [−1, 1] as given, which :mod:`gas_solver.metrics.inception` feeds to the detector. Image files
are read as EDM's loader reads them (grayscale kept as one channel, anything else as RGB), in
sorted order; ``.npz`` files hold ``images`` or ADM's ``arr_0`` (NHWC uint8).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, MissingAssetError
from ..runtime import reading

__all__ = ["IMAGE_SUFFIXES", "ImageSource", "check_count", "npz_images", "source_batches"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

#: What FID can be computed from: images ``(N, C, H, W)`` (float in [−1, 1] or uint8), a numpy
#: array (NHWC uint8 as in ``.npz`` image batches, or NCHW), an iterable of such batches, a folder
#: of images, or an ``.npz`` file of images.
ImageSource = Tensor | np.ndarray | Iterable[Tensor] | str | os.PathLike


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def _read_image(path: Path) -> np.ndarray:
    """One image file → uint8 ``(C, H, W)``, C = 1 for grayscale, else 3 (as EDM's loader)."""
    from PIL import Image

    with reading(path, "an image"), Image.open(path) as img:
        img = img if img.mode == "L" else img.convert("RGB")
        arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _numpy_to_nchw(arr: np.ndarray) -> Tensor:
    """Numpy images: NHWC (as stored in ``.npz`` batches) or NCHW, or (N, H, W) grayscale."""
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    if arr.ndim != 4:
        raise ConfigError(f"image array must be (N, H, W, C) or (N, C, H, W), got {arr.shape}")
    if arr.dtype != np.uint8 and not np.issubdtype(arr.dtype, np.floating):
        raise ConfigError(f"image array must be uint8 or float in [-1, 1], got {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr))


def npz_images(path: Path) -> np.ndarray:
    """The images of an ``.npz`` file: its ``images`` or ADM's ``arr_0`` array."""
    with reading(path, "an .npz archive"), np.load(path, allow_pickle=False) as data:
        for key in ("images", "arr_0"):
            if key in data.files:
                return data[key]
        raise ConfigError(
            f"{path}: no FID statistics ('mu', 'sigma') and no images ('images' or 'arr_0'); "
            f"keys are {data.files}"
        )


def source_batches(
    source: ImageSource, batch_size: int, num_images: int | None
) -> tuple[Iterator[Tensor], int | None]:
    """An image source → (iterator over batches ``(B, C, H, W)``, total count if known)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            files = _image_files(path)
            if not files:
                raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {path}")
            files = files[:num_images] if num_images is not None else files
            check_count(len(files), num_images, str(path))

            def read_files() -> Iterator[Tensor]:
                for start in range(0, len(files), batch_size):
                    arrays = [_read_image(f) for f in files[start : start + batch_size]]
                    if len({a.shape for a in arrays}) > 1:
                        raise ConfigError(
                            f"images in {path} differ in size or channels; FID needs one "
                            f"resolution (first: {arrays[0].shape})"
                        )
                    yield torch.from_numpy(np.stack(arrays))

            return read_files(), len(files)
        if path.suffix == ".npz" and path.is_file():
            return source_batches(npz_images(path), batch_size, num_images)
        raise MissingAssetError(f"image source {path} is neither a folder nor an .npz file")
    if isinstance(source, np.ndarray):
        source = _numpy_to_nchw(source)
    if isinstance(source, Tensor):
        if source.ndim != 4:
            raise ConfigError(f"images must be (N, C, H, W), got shape {tuple(source.shape)}")
        images = source[:num_images] if num_images is not None else source
        check_count(len(images), num_images, "images")
        return iter(images.split(batch_size)), len(images)
    if isinstance(source, Iterable):

        def limited() -> Iterator[Tensor]:
            seen = 0
            for batch in source:
                if num_images is not None:
                    batch = batch[: num_images - seen]
                seen += len(batch)
                if len(batch):
                    yield batch
                if num_images is not None and seen >= num_images:
                    return
            check_count(seen, num_images, "image batches")

        return limited(), num_images
    raise ConfigError(f"cannot read images from a {type(source).__name__}")


def check_count(found: int, wanted: int | None, what: str) -> None:
    """Refuse ``wanted`` images when ``what`` has only ``found``."""
    if wanted is not None and found < wanted:
        raise ConfigError(f"{what}: {wanted} images requested, only {found} available")
