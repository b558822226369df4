"""Run-time plumbing shared by every command: devices, atomic writes, run metadata."""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import io
import json
import logging
import math
import os
import pickle
import platform
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import (
    CheckpointMismatchError,
    ConfigError,
    CorruptFileError,
    GasSolverError,
    OutputError,
)
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


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask can only be read by setting it


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, fsync it, then rename it into
    place: a crash leaves either the old file or the complete new one (and at most a temporary
    ``.NAME.XXXXXXXX.tmp``, which :func:`folder_lock` removes on the next run). The file gets the
    permissions a plain ``open`` would give it (``mkstemp`` makes it owner-only).

    Raises:
        OutputError: the file could not be written (a full disk, no permission), naming it.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # after writing: some writers replace the file
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {_os_reason(err)}") from err
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def append_line(path: str | Path, line: str) -> None:
    """Append one line to a log file (``metrics.jsonl``).

    Raises:
        OutputError: the line could not be written, naming the file.
    """
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError as err:
        raise OutputError(f"cannot write {path}: {_os_reason(err)}") from err


def _os_reason(err: OSError) -> str:
    """Why a write failed, and what to do, in words."""
    reason = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{reason}; free some space and run the same command again"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{reason}; choose a folder you may write to"
    return reason


_TEMPORARY = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")
"""Names :func:`atomic_write` gives its temporaries (``mkstemp``: ``.NAME.XXXXXXXX.tmp``)."""


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete what interrupted :func:`atomic_write` calls left in ``folder`` and its direct
    subfolders; only safe while holding :func:`folder_lock` (no other writer is at work)."""
    folder = Path(folder)
    found = [
        path
        for parent in (folder, *(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()))
        for path in parent.iterdir()
        if _TEMPORARY.fullmatch(path.name) and path.is_file()
    ]
    for path in found:
        path.unlink(missing_ok=True)
    return found


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


def save_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Atomic ``np.savez`` (through a file object, so no ``.npz`` suffix is appended)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)


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
    writing into it. Once the lock is held, the temporaries of interrupted writes are removed
    (:func:`remove_temporaries`). The lock (``fcntl.flock`` on ``FOLDER/.gas-solver.lock``) goes
    with the process, so a killed run leaves no stale lock; the small file itself stays.

    Raises:
        GasSolverError: another process holds the folder.
        OutputError: the folder cannot be made or written to.
    """
    import fcntl

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    except OSError as err:
        raise OutputError(f"cannot write in {folder}: {_os_reason(err)}") from err
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
        for path in remove_temporaries(folder):
            logger.info("removed %s, left by an interrupted run", path)
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
