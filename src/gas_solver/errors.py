"""One exception family for everything a user can cause.

The CLI turns a :class:`GasSolverError` into a one-line message and a non-zero exit code. Each
subclass also derives from the matching built-in (``ValueError``, ``FileNotFoundError``) so that
library users can catch either.
"""

from __future__ import annotations


class GasSolverError(Exception):
    """Base class of every error a user can cause (bad input, missing file, mismatch)."""


class ConfigError(GasSolverError, ValueError):
    """An invalid argument or configuration value; the message names the field."""


class MissingAssetError(GasSolverError, FileNotFoundError):
    """A user-supplied file (weights, statistics, data) is missing; says where to get it."""


class CheckpointMismatchError(GasSolverError, ValueError):
    """A checkpoint or data set does not belong to the model/solver it is used with."""


class CorruptFileError(GasSolverError, ValueError):
    """A file that should hold data written earlier cannot be read or fails its check (damaged,
    truncated or changed); the message names it."""


class OutputError(GasSolverError, OSError):
    """An output could not be written (disk full, no permission); nothing half-written is left
    under its name, and the message names it."""
