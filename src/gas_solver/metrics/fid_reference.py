"""Which statistics an FID reference means: a statistics or image ``.npz``, a bundled data set,
a folder of images, images, or statistics as they are.

Reference statistics are EDM-style ``.npz`` files (``mu``, ``sigma``); ADM's reference batches
(``VIRTUAL_*.npz``) carry the same keys (from the same TF Inception) and are read as is, and an
``.npz`` that holds only images (ADM's ``arr_0``, NHWC uint8) gets its statistics computed.
Statistics of the bundled data sets are shipped in the package for the counts in
``assets/fid-stats`` (:data:`SHIPPED_STATS`) and otherwise cached under
``$GAS_SOLVER_CACHE/fid-stats`` (default ``~/.cache/gas-solver/fid-stats``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..distributed import is_main
from ..errors import ConfigError, MissingAssetError
from ..outputs import cache_dir
from ..runtime import reading
from .fid_statistics import FIDStatistics, compute_statistics, unpack_compact
from .image_source import ImageSource, check_count, npz_images
from .inception import INCEPTION_SHA1, InceptionFeatures

__all__ = ["SHIPPED_STATS", "load_statistics", "reference_statistics"]

logger = logging.getLogger(__name__)

#: Reference statistics shipped inside the package (compact form, see :class:`FIDStatistics`).
SHIPPED_STATS = Path(__file__).resolve().parents[1] / "assets" / "fid-stats"


def load_statistics(
    path: str | os.PathLike,
    *,
    num_images: int | None = None,
    model: InceptionFeatures | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> FIDStatistics:
    """Read reference statistics from an ``.npz``: EDM (``mu``, ``sigma``) or ADM (``VIRTUAL_*``).

    An ``.npz`` with ``mu`` and ``sigma`` is read as is (ADM's extra ``mu_s``/``sigma_s``/``arr_0``
    are ignored); one with only images (``images`` or ADM's ``arr_0``, NHWC uint8) gets its
    statistics computed with the detector, from the first ``num_images`` if given.

    Raises:
        MissingAssetError: the file does not exist.
        ConfigError: the file holds neither statistics nor images, or its statistics were made
            from a different number of images than ``num_images``.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingAssetError(
            f"FID reference statistics {path} not found; make them with "
            f"`gas_solver.metrics.reference_statistics` (EDM-style .npz with 'mu' and 'sigma')"
        )
    with reading(path, "an .npz archive"), np.load(path, allow_pickle=False) as data:
        if "mu" in data.files and ("sigma" in data.files or "sigma_triu" in data.files):
            count = int(data["num_images"]) if "num_images" in data.files else None
            if num_images is not None and count is not None and count != num_images:
                raise ConfigError(
                    f"{path} holds statistics of {count} images, not the {num_images} requested"
                )
            if "sigma" in data.files:
                return FIDStatistics(data["mu"], data["sigma"], count)
            return FIDStatistics(*unpack_compact(data["mu"], data["sigma_triu"]), count)
    return compute_statistics(
        npz_images(path),
        num_images=num_images,
        model=model,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )


def reference_statistics(
    source: ImageSource | FIDStatistics,
    *,
    num_images: int | None = None,
    model: InceptionFeatures | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    use_cache: bool = True,
    progress: bool = True,
) -> FIDStatistics:
    """Reference statistics from whatever the user has.

    Args:
        source: :class:`FIDStatistics` (returned as is); a bundled data set name (``"mnist"``,
            ``"digits"``: the statistics shipped in the package when they exist for that count
            (``assets/fid-stats/<name>-<count>-<detector>.npz``, compact form), else computed
            once and cached as ``<cache_dir>/fid-stats/<name>-<count>-<detector>.npz``);
            an ``.npz`` of statistics or images (:func:`load_statistics`); a folder of images;
            images as a tensor or array.
        num_images: use the first ``num_images`` images (default: all).
        use_cache: read shipped statistics and read/write the cache for bundled data sets (only
            with the default detector).
        model, batch_size, device, progress: as :func:`inception_features`.
    """
    if isinstance(source, FIDStatistics):
        return source
    kwargs = dict(model=model, batch_size=batch_size, device=device, progress=progress)
    if isinstance(source, str):
        from ..data.datasets import DATASETS, load_dataset

        if source in DATASETS:
            images = load_dataset(source).images
            count = len(images) if num_images is None else num_images
            check_count(len(images), count, f"dataset {source!r}")
            name = f"{source}-{count}-{INCEPTION_SHA1[:8]}.npz"
            cached = cache_dir() / "fid-stats" / name
            use_cache = use_cache and model is None
            if use_cache and (SHIPPED_STATS / name).is_file():
                logger.info("reading shipped FID statistics %s", SHIPPED_STATS / name)
                return load_statistics(SHIPPED_STATS / name)
            if use_cache and cached.is_file():
                logger.info("reading cached FID statistics %s", cached)
                return load_statistics(cached)
            stats = compute_statistics(images, num_images=count, **kwargs)
            if use_cache and is_main():  # torchrun: one writer
                stats.save(cached, cache=True)
            return stats
        if not Path(source).exists():
            from ..data.datasets import dataset_names

            raise MissingAssetError(
                f"FID reference {source!r} is neither a file, a folder, nor a bundled data set "
                f"({', '.join(dataset_names())})"
            )
    if isinstance(source, (str, os.PathLike)) and Path(source).is_file():
        return load_statistics(source, num_images=num_images, **kwargs)
    return compute_statistics(source, num_images=num_images, **kwargs)
