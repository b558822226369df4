"""A cheap identity of a model folder's weight files, for teacher sets and checkpoints to be
matched to the model they were made with (reading whole multi-GB files would take minutes)."""

from __future__ import annotations

import hashlib
from pathlib import Path

DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model*", "model*.safetensors")
"""diffusers' weight files and transformers' safetensors (text encoders)."""
ALL_WEIGHTS = (*DIFFUSERS_WEIGHTS, "pytorch_model*.bin")
"""The above and transformers' older ``pytorch_model*.bin``."""


def weights_fingerprint(
    *dirs: Path, patterns: tuple[str, ...] = DIFFUSERS_WEIGHTS, name_folders: bool = False
) -> str:
    """Size plus SHA-256 of the first and last MiB of each weight file (``patterns``) in
    ``dirs``; with ``name_folders`` the folder's name is hashed too, so that two encoders with
    like files are told apart (SDXL). Each adapter keeps its setting: changing it would change
    the identity of every model already used."""
    digest = hashlib.sha256()
    for folder in dirs:
        for path in sorted({path for pattern in patterns for path in folder.glob(pattern)}):
            size = path.stat().st_size
            name = f"{folder.name}/{path.name}" if name_folders else path.name
            with open(path, "rb") as f:
                digest.update(f"{name}:{size}".encode())
                digest.update(f.read(1 << 20))
                f.seek(max(size - (1 << 20), 0))
                digest.update(f.read(1 << 20))
    return digest.hexdigest()[:16]
