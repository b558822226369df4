"""Run-time plumbing shared by every command: devices, sealed checkpoints, run metadata."""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import logging
import pickle
import platform
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import (
    CheckpointMismatchError,
    ConfigError,
    CorruptFileError,
    GasSolverError,
)
from .outputs import atomic_write
from .version import __version__

logger = logging.getLogger(__name__)

DEVICES = "cpu, cuda, cuda:N, mps or auto"


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; else ``cpu``, ``cuda``, ``cuda:N`` or ``mps``,
    which must be present on this machine.

    Raises:
        ConfigError: any other name (``meta`` computes no values), or a device this machine
            lacks.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name) if isinstance(name, str) and name.isascii() else None
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps") or name != name.strip():
        raise ConfigError(f"device: {name!r} is not a device gas-solver runs on; use {DEVICES}")
    if device.type == "cpu" and device.index not in (None, 0):
        raise ConfigError(f"device: {name!r}: there is one CPU device; use cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device: CUDA was requested but is not available on this machine")
        if (device.index or 0) >= torch.cuda.device_count():
            raise ConfigError(
                f"device: {name!r}, but this machine has {torch.cuda.device_count()} CUDA "
                f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device: mps was requested but is not available on this machine")
    return device


@contextlib.contextmanager
def reading(path: str | Path, what: str) -> Iterator[None]:
    """Turn a failure to read ``path`` (damaged, truncated, not that kind of file) into a
    :class:`CorruptFileError` naming it; the project's own errors pass unchanged."""
    try:
        yield
    except GasSolverError:
        raise
    except (OSError, ValueError, EOFError, KeyError, RuntimeError, NotImplementedError,
            zipfile.BadZipFile, SyntaxError) as err:  # fmt: skip
        reason = " ".join(str(err).split()) or type(err).__name__
        raise CorruptFileError(
            f"{path}: cannot be read as {what} ({reason}); it is damaged or not such a file"
        ) from None


CHECKPOINT_MAGIC = b"gas-solver checkpoint v1\n"


def save_checkpoint_file(path: str | Path, state: dict[str, Any]) -> Path:
    """Write a training state atomically, sealed so that every byte of the file is checked on read.

    Layout: the line ``gas-solver checkpoint v1``, the SHA-256 (hex) of the payload on the next
    line, then the payload: the ``torch.save`` bytes of ``state``.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    seal = CHECKPOINT_MAGIC + hashlib.sha256(data).hexdigest().encode() + b"\n"
    return atomic_write(path, lambda tmp: tmp.write_bytes(seal + data))


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a file written by :func:`save_checkpoint_file`; no code in the file can run.

    The payload is unpickled only after its SHA-256 matches, and then only by torch's restricted
    unpickler (``weights_only=True``: tensors, numbers, strings, plain containers). A file that is
    not such a checkpoint, is truncated or has any byte changed raises
    :class:`CheckpointMismatchError` naming the path.
    """
    path = Path(path)

    def refuse(why: str) -> CheckpointMismatchError:
        return CheckpointMismatchError(f"{path}: {why}; it cannot be used as a checkpoint")

    try:
        raw = path.read_bytes()
    except OSError as err:
        raise refuse(f"unreadable ({err.strerror})") from None
    if not raw.startswith(CHECKPOINT_MAGIC):
        raise refuse("not a gas-solver checkpoint")
    digest, _, data = raw[len(CHECKPOINT_MAGIC) :].partition(b"\n")
    if hashlib.sha256(data).hexdigest().encode() != digest:
        raise refuse("checksum mismatch: the file is corrupted or truncated")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise refuse(f"unreadable payload ({str(err).splitlines()[0]})") from None


def tensors_digest(text: str, tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of a metadata text and named tensors: names, dtypes, shapes and bytes.

    What a safetensors file written by this project stores next to its tensors, so that reading
    it can tell whether any value or the metadata changed since it was written.
    """
    digest = hashlib.sha256(text.encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"\n{name}:{tensor.dtype}:{list(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_resumed_config(
    stored: dict[str, Any],
    given: dict[str, Any],
    path: Path,
    may_change: frozenset[str],
) -> None:
    """Refuse to resume ``path`` with settings that differ from those it was trained with.

    Raises:
        CheckpointMismatchError: naming each differing field with its stored and given values.
    """
    changed = [
        f"{name}: stored {stored.get(name)!r}, given {value!r}"
        for name, value in given.items()
        if name not in may_change and name in stored and stored[name] != value
    ]
    if changed:
        raise CheckpointMismatchError(
            f"--resume: {path} was trained with other settings ({'; '.join(changed)}); resume with "
            "the stored values or start a new run in another --out"
        )


def run_metadata() -> dict[str, Any]:
    """Who made an artefact, when, and with what: stored next to every output."""
    return {
        "gas_solver_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }
