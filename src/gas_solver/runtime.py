"""Run-time plumbing shared by every command: devices, atomic writes, run metadata."""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import math
import os
import pickle
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointMismatchError, ConfigError, GasSolverError
from .version import __version__

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


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask can only be read by setting it


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, fsync it, then rename it into
    place: a crash leaves either the old file or the complete new one. The file gets the
    permissions a plain ``open`` would give it (``mkstemp`` makes it owner-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # after writing: some writers replace the file
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def json_safe(value: Any) -> Any:
    """Non-finite floats → ``None`` (strict JSON has no NaN or infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | Path, data: Any) -> Path:
    """Strict JSON (non-finite numbers become ``null``, see :func:`json_safe`), atomically."""
    text = json.dumps(json_safe(data), indent=2, sort_keys=False, default=str, allow_nan=False)
    text += "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


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


LOCK_FILE = ".gas-solver.lock"


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold an exclusive advisory lock on an output folder for the duration of a run.

    A second run on the same folder is refused at once with the holder's PID, instead of both
    writing into it. The lock (``fcntl.flock`` on ``FOLDER/.gas-solver.lock``) goes with the
    process, so a killed run leaves no stale lock; the small file itself stays.

    Raises:
        GasSolverError: another process holds the folder.
    """
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise GasSolverError(
                f"{folder} is in use by another gas-solver run (PID {holder}); wait for it to "
                "finish or choose another output folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield folder
    finally:
        os.close(fd)  # releases the lock


def remove_outputs(folder: str | Path, names: Iterable[str]) -> None:
    """Delete the named files and folders of an earlier run in ``folder`` (a run owns them)."""
    for name in names:
        path = Path(folder) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def run_metadata() -> dict[str, Any]:
    """Who made an artefact, when, and with what: stored next to every output."""
    return {
        "gas_solver_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }
