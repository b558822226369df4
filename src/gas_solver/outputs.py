"""Where gas-solver writes: one layer that every command's outputs go through.

- **Checked before any work** (:func:`check_output`): a name the file system cannot hold, a file
  where a folder is wanted (or the reverse), a dangling link, a special file, no permission, a
  read-only or full file system: one line naming the path, before a model is loaded.
- **Written atomically** (:func:`atomic_write`, :func:`write_files`): a temporary next to the
  target, fsynced, renamed into place, so a crash leaves the old file or the new one, never a torn
  one. A failed write is the one-line :class:`~gas_solver.errors.OutputError`.
- **Only regular files are replaced.** A symbolic link, FIFO, device or socket under an output's
  name is refused, never replaced or written through (a link to a *folder* given as an output
  folder is followed: that is where the user wants the outputs).
- **One writer per folder** (:func:`folder_lock`), and **a run record** of what it wrote
  (``FOLDER/.gas-solver-run``, one relative path per line, written before the file it names).
  A fresh run deletes only what run records list (:func:`clear_earlier_run`) and refuses a folder
  that holds anything else, so a user's own files are never removed.
- **Caches are best effort** (:func:`write_cache`): a cache that cannot be written is a warning.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import GasSolverError, OutputError

logger = logging.getLogger(__name__)

LOCK_FILE = ".gas-solver.lock"
RUN_RECORD = ".gas-solver-run"
"""The run record: the relative path of every file gas-solver runs wrote in a folder, one per line."""
NAME_MAX = 255
"""Longest file name (bytes) on the file systems gas-solver writes to (ext4, xfs, tmpfs, APFS)."""

_TEMPORARY = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")
"""Names of this module's temporaries (``mkstemp``/``mkdtemp``: ``.NAME.XXXXXXXX.tmp``)."""


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask can only be read by setting it


def _os_reason(err: OSError) -> str:
    """Why a write failed, and what to do, in words."""
    reason = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{reason}; free some space and run the same command again"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{reason}; choose a folder you may write to"
    return reason


def _shown(path: Path | str) -> str:
    """A path as messages quote it: at most ~200 characters."""
    text = str(path)
    return text if len(text) <= 200 else f"{text[:120]}…{text[-60:]}"


# -- checks before any work -------------------------------------------------------------------


def check_output(path: str | os.PathLike, kind: Literal["folder", "file"]) -> Path:
    """Refuse, before any work, an output that could not be written; returns it as a ``Path``.

    Refused: a path component longer than :data:`NAME_MAX`; for a folder, a file (or a special
    file) in its place or a link to nothing; for a file, a folder, a link or a special file in its
    place; a nearest existing parent that is not a folder, that this user may not write in, on a
    read-only file system or with no space left.

    Raises:
        OutputError: naming the path and the reason.
    """
    path = Path(path)

    def refuse(why: str) -> OutputError:
        return OutputError(f"cannot write {kind} {_shown(path)}: {why}")

    for part in path.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise refuse(
                f"the name {part[:40]!r}… is longer than file systems allow ({NAME_MAX} bytes)"
            )
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # (a file in a parent's place: below)
        mode = None
    except OSError as err:
        raise refuse(_os_reason(err)) from None
    if mode is not None:
        if stat.S_ISLNK(mode) and not path.exists():
            raise refuse("it is a symbolic link to nothing; remove the link or choose another name")
        if kind == "folder" and not path.is_dir():
            raise refuse("something that is not a folder has that name")
        if kind == "file" and stat.S_ISLNK(mode):
            raise refuse(
                "it is a symbolic link; gas-solver replaces only regular files (give the path the link points to)"
            )
        if kind == "file" and not stat.S_ISREG(mode):
            raise refuse("it is not a regular file (a folder, FIFO, device or socket)")
    parent = path if kind == "folder" else path.parent
    while not parent.exists() and parent != parent.parent and not parent.is_symlink():
        parent = parent.parent
    if not parent.is_dir():
        raise refuse(f"{_shown(parent)} is not a folder")
    try:
        info = os.statvfs(parent)
    except OSError as err:
        raise refuse(_os_reason(err)) from None
    if info.f_flag & os.ST_RDONLY:
        raise refuse(_os_reason(OSError(errno.EROFS, os.strerror(errno.EROFS))))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise refuse(_os_reason(OSError(errno.EACCES, os.strerror(errno.EACCES))))
    if info.f_bavail == 0:
        raise refuse(_os_reason(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    return path


def _refuse_special(path: Path) -> None:
    """Refuse to replace anything but a regular file (the atomic rename would replace a link or a
    device node with a file)."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as err:
        raise OutputError(f"cannot write {_shown(path)}: {_os_reason(err)}") from None
    if stat.S_ISLNK(mode) or not stat.S_ISREG(mode):
        what = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
        raise OutputError(
            f"cannot write {_shown(path)}: it is {what}, and gas-solver replaces only regular files"
        )


# -- the run record ----------------------------------------------------------------------------


class _Record:
    """The run record of a folder whose lock this process holds: the names in it, and appending."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / RUN_RECORD
        self.names = _recorded_names(self.path)

    def add(self, name: str) -> None:
        if name not in self.names:
            append_line(self.path, name, record=False)
            self.names.add(name)


_HELD: dict[Path, _Record] = {}
"""Folders whose lock this process holds (real paths) → their run records."""


def _recorded_names(record: Path) -> set[str]:
    try:
        text = record.read_text(errors="replace")
    except FileNotFoundError:
        return set()
    except OSError as err:
        raise OutputError(
            f"cannot read the run record {_shown(record)}: {_os_reason(err)}"
        ) from None
    return {line for line in text.splitlines() if _inside(line)}


def _inside(name: str) -> bool:
    """Whether a record line names a path inside its folder (a damaged or hostile record may
    name ``/etc/passwd`` or ``../x``: such lines are ignored, never deleted)."""
    path = Path(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts


def record_output(path: str | os.PathLike) -> None:
    """Note in the run record of the innermost locked folder holding ``path`` that this run
    writes it (every file under it, for a folder another library wrote). Paths outside any
    locked folder (caches, a single-file output) are not recorded."""
    path = Path(path)
    real = Path(os.path.realpath(path.parent)) / path.name
    owners = [folder for folder in _HELD if real != folder and real.is_relative_to(folder)]
    if not owners:
        return
    owner = max(owners, key=lambda folder: len(folder.parts))
    files = _files_under(real) if real.is_dir() and not real.is_symlink() else [real]
    for file in files:
        _HELD[owner].add(file.relative_to(owner).as_posix())


def _files_under(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            yield Path(root) / name


def _earlier_outputs(folder: Path) -> set[str]:
    """Paths (relative to ``folder``) that run records list: the records in ``folder``'s tree,
    and the entries under ``folder`` of the record of a locked folder above it."""
    found: set[str] = set()
    real = Path(os.path.realpath(folder))
    for owner, record in _HELD.items():
        if real != owner and real.is_relative_to(owner):
            prefix = real.relative_to(owner).as_posix() + "/"
            found |= {n[len(prefix) :] for n in record.names if n.startswith(prefix)}
    for root, _, files in os.walk(folder):
        if RUN_RECORD in files:
            base = Path(root).relative_to(folder)
            names = _recorded_names(Path(root) / RUN_RECORD)
            found |= {(base / name).as_posix() for name in names}
            found |= {(base / RUN_RECORD).as_posix(), (base / LOCK_FILE).as_posix()}
    return found


def _refuse_foreign(folder: Path) -> set[str]:
    """What run records list in ``folder``, after checking that they list everything in it.

    Raises:
        OutputError: naming a few of the files no record lists.
    """
    recorded = _earlier_outputs(folder)
    foreign = sorted(
        rel
        for file in _files_under(folder)
        if (rel := file.relative_to(folder).as_posix()) not in recorded
        and rel not in (LOCK_FILE, RUN_RECORD)
        and not _TEMPORARY.fullmatch(file.name)
    )
    if foreign:
        shown = ", ".join(_shown(name) for name in foreign[:3])
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise OutputError(
            f"{_shown(folder)} holds files gas-solver did not write ({shown}{more}); gas-solver "
            "deletes only its own outputs: move them away or choose another output folder"
        )
    return recorded


def clear_earlier_run(folder: str | os.PathLike) -> None:
    """A fresh run owns its folder: delete every file that run records list in it (and the
    folders that leaves empty), nothing else. Only safe while holding :func:`folder_lock` on
    ``folder`` or a folder above it.

    Raises:
        OutputError: the folder holds files no run record lists (a user's own files, or outputs of
            a gas-solver older than run records); it names a few and deletes nothing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    real = Path(os.path.realpath(folder))
    for rel in sorted(_refuse_foreign(folder), reverse=True):
        path = folder / rel
        if rel in (LOCK_FILE, RUN_RECORD) or not (path.is_symlink() or path.is_file()):
            continue
        if not Path(os.path.realpath(path.parent)).is_relative_to(real):
            continue  # a linked folder on the way: what it leads to is not this run's
        path.unlink()
        with contextlib.suppress(OSError):  # the folders it leaves empty, up to ``folder``
            for parent in path.relative_to(folder).parents:
                if parent != Path("."):
                    (folder / parent).rmdir()
    for owner, record in _HELD.items():
        if real == owner:
            record.path.unlink(missing_ok=True)
            record.names = set()
        elif real.is_relative_to(owner):
            prefix = real.relative_to(owner).as_posix() + "/"
            record.names = {name for name in record.names if not name.startswith(prefix)}


# -- one writer per folder ---------------------------------------------------------------------


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete what interrupted writes left anywhere in ``folder``'s tree (temporary files and
    folders); only safe while holding :func:`folder_lock` (no other writer is at work)."""
    found = []
    for root, dirs, files in os.walk(folder):
        for name in [*files, *dirs]:
            if _TEMPORARY.fullmatch(name):
                found.append(Path(root) / name)
        dirs[:] = [d for d in dirs if not _TEMPORARY.fullmatch(d)]
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, fresh: bool = False) -> Iterator[Path]:
    """Hold an exclusive advisory lock on an output folder for the duration of a run.

    A second run on the same folder is refused at once with the holder's PID, instead of both
    writing into it; within one process the lock is re-entrant (a command's step that locks the
    folder its command holds). Once the lock is held, the temporaries of interrupted writes are removed from
    the whole tree (:func:`remove_temporaries`) and every file this process writes under the folder
    is recorded in its run record. ``fresh``: the run will replace the folder's outputs later
    (:func:`clear_earlier_run` deletes the recorded files when it is ready to write), so a folder
    holding anything no run record lists is refused now, before any work; a run that clears at
    once needs no ``fresh``, the clearing refuses the same folders. The lock
    (``fcntl.flock`` on ``FOLDER/.gas-solver.lock``) goes with the process, so a killed run leaves
    no stale lock; the small file itself stays, unless the run made the folder and wrote nothing.

    Raises:
        GasSolverError: another process holds the folder.
        OutputError: the folder cannot be made or written to, or (``fresh``) holds foreign files.
    """
    import fcntl

    folder = check_output(folder, "folder")
    if Path(os.path.realpath(folder)) in _HELD:  # this process holds it already (an outer step)
        if fresh:
            _refuse_foreign(folder)
        yield folder
        return
    made = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    except OSError as err:
        raise OutputError(f"cannot write in {_shown(folder)}: {_os_reason(err)}") from err
    real = Path(os.path.realpath(folder))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise GasSolverError(
                f"{_shown(folder)} is in use by another gas-solver run (PID {holder}); wait for it "
                "to finish or choose another output folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        for path in remove_temporaries(folder):
            logger.info("removed %s, left by an interrupted run", path)
        _HELD[real] = _Record(folder)
        if fresh:
            _refuse_foreign(folder)
        yield folder
    finally:
        _HELD.pop(real, None)
        if made and os.listdir(folder) == [LOCK_FILE]:  # a run refused before writing: no trace
            os.unlink(folder / LOCK_FILE)
            folder.rmdir()
        os.close(fd)  # releases the lock


# -- writing -----------------------------------------------------------------------------------


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, fsync it, record it
    (:func:`record_output`), then rename it into place: a crash leaves either the old file or the
    complete new one (and at most a temporary ``.NAME.XXXXXXXX.tmp``, which :func:`folder_lock`
    removes on the next run). The file gets the permissions a plain ``open`` would give it
    (``mkstemp`` makes it owner-only).

    Raises:
        OutputError: the file could not be written (a full disk, no permission), or ``path`` is
            a link or a special file (never replaced), naming it.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _refuse_special(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:200]}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(Path(tmp))
        _put_in_place(Path(tmp), path)
    except OSError as err:
        raise OutputError(f"cannot write {_shown(path)}: {_os_reason(err)}") from err
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _put_in_place(tmp: Path, path: Path) -> None:
    """The end of every atomic write: the permissions a plain ``open`` would give (``mkstemp``
    makes files owner-only; set after writing, as some writers replace the file), fsync, the run
    record, then the rename over ``path``."""
    os.chmod(tmp, 0o666 & ~_UMASK)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    record_output(path)
    os.replace(tmp, path)


def write_files(folder: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` (e.g. a diffusers ``save_pretrained``) on a temporary folder inside
    ``folder``, then move each file it made into ``folder`` atomically (fsynced, recorded, renamed);
    a crash leaves whole files only, and the temporary folder for the next run to remove.

    Raises:
        OutputError: as :func:`atomic_write`.
    """
    folder = Path(folder)
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".files.", suffix=".tmp", dir=folder))
        write(tmp)
        for file in sorted(_files_under(tmp)):
            target = folder / file.relative_to(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            _refuse_special(target)
            _put_in_place(file, target)
    except OSError as err:
        raise OutputError(f"cannot write in {_shown(folder)}: {_os_reason(err)}") from err
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def write_text(path: str | os.PathLike, text: str) -> Path:
    """A text file (a report, a table), atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def append_line(path: str | os.PathLike, line: str, record: bool = True) -> None:
    """Append one line to a log file (``metrics.jsonl``), recorded as this run's output.

    Raises:
        OutputError: the line could not be written, naming the file.
    """
    try:
        if record:
            record_output(path)
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    except OSError as err:
        raise OutputError(f"cannot write {_shown(path)}: {_os_reason(err)}") from err


def json_safe(value: Any) -> Any:
    """Non-finite floats → ``None`` (strict JSON has no NaN or infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Strict JSON (non-finite numbers become ``null``, see :func:`json_safe`), atomically."""
    text = json.dumps(json_safe(data), indent=2, sort_keys=False, default=str, allow_nan=False)
    return write_text(path, text + "\n")


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Atomic ``np.savez`` (through a file object, so no ``.npz`` suffix is appended)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)


def cache_dir() -> Path:
    """``$GAS_SOLVER_CACHE`` or ``~/.cache/gas-solver``: where cached reference statistics, the
    ONNX Inception and cached samples live."""
    root = os.environ.get("GAS_SOLVER_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "gas-solver"


def write_cache(path: str | os.PathLike, write: Callable[[Path], None], what: str) -> bool:
    """:func:`atomic_write` for a cache: a failure (a read-only or full cache folder) is a
    warning, never a failed command; returns whether the file was written."""
    try:
        atomic_write(path, write)
    except OutputError as err:
        logger.warning("could not cache %s (%s); it will be computed again next time", what, err)
        return False
    return True
