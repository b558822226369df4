"""Evaluation seeds against teacher seeds.

**Seeds** (determinism by seed, :mod:`gas_solver.seeds`): evaluation seeds must not overlap the seeds of the teacher set a
solver learnt from, or it is scored on its own training noise. :func:`compare` checks the seeds
of ``teacher_set`` (when given) and of the teacher set each GS/GAS checkpoint records, and
refuses an overlap with a :class:`~gas_solver.errors.ConfigError` unless
``allow_seed_overlap`` (then it logs a warning).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ..data.teacher_format import MANIFEST_NAME
from ..data.teacher_set import TeacherSet
from ..errors import ConfigError
from ..seeds import EVAL_SEEDS, TEACHER_SEEDS, parse_seeds
from ..solvers.resolve import ResolvedSolver

log = logging.getLogger(__name__)


def teacher_seed_sets(
    solvers: Sequence[ResolvedSolver],
    teacher_set: str | Path | TeacherSet | None = None,
) -> list[tuple[str, list[int]]]:
    """The teacher-set seeds that evaluation seeds must avoid, each with what it comes from.

    Args:
        solvers: the compared solvers; for each GS/GAS checkpoint among them, the teacher set
            its metadata records: the seed list stored with it (``teacher.seeds``), or for
            checkpoints without one the manifest at the recorded path, if it still exists.
        teacher_set: a teacher set given by the user: its folder (or ``manifest.json``), or the
            open set.

    Returns:
        ``[(description, seeds), ...]``, one per distinct teacher set.

    Raises:
        MissingAssetError, GasSolverError: ``teacher_set`` is not a readable, finished set.
    """
    found: dict[str, tuple[str, list[int]]] = {}
    if teacher_set is not None:
        made = teacher_set if isinstance(teacher_set, TeacherSet) else TeacherSet(teacher_set)
        found[_path_key(made.path)] = (
            f"teacher set {made.path}",
            parse_seeds(made.manifest["seeds"]),
        )
    for solver in solvers:
        recorded = solver.trained_on
        if recorded is None:  # a classic solver learnt from no teacher set
            continue
        text = solver.checkpoint
        path = recorded.get("path")
        key = _path_key(path) if path else f"checkpoint:{text}"
        if key in found:
            continue
        name = f"the teacher set {path} of {text}" if path else f"the teacher set of {text}"
        if recorded.get("seeds"):
            found[key] = (name, parse_seeds(recorded["seeds"]))
        elif path and (Path(path) / MANIFEST_NAME).is_file():
            found[key] = (name, parse_seeds(TeacherSet(path).manifest["seeds"]))
        else:
            log.info(
                "%s records no teacher seeds and its teacher set %s is not here; its seeds "
                "cannot be checked against the evaluation seeds (pass --teacher-set)",
                text,
                path,
            )
    return list(found.values())


def check_seed_overlap(
    seeds: Sequence[int],
    teacher_seeds: Sequence[tuple[str, Sequence[int]]],
    allow: bool = False,
) -> None:
    """Refuse evaluation seeds shared with a teacher set (:mod:`gas_solver.seeds`).

    A solver scored on the noise it was trained on looks better than it is, so this raises
    unless ``allow``, in which case it logs a warning per overlapping set.

    Args:
        seeds: the evaluation seeds.
        teacher_seeds: ``(description, seeds)`` per teacher set (:func:`teacher_seed_sets`).
        allow: warn instead of raising.

    Raises:
        ConfigError: some evaluation seeds are seeds of a teacher set (and not ``allow``).
    """
    wanted = set(seeds)
    for name, taught in teacher_seeds:
        common = wanted.intersection(taught)
        if not common:
            continue
        message = (
            f"seeds: {len(common)} of the {len(wanted)} evaluation seeds (e.g. {min(common)}) "
            f"are seeds of {name}, so a solver trained on it would be scored on its own training "
            f"noise. Teacher and evaluation seeds never overlap (defaults: teacher "
            f"{TEACHER_SEEDS}, evaluation {EVAL_SEEDS}); pick other --seeds"
        )
        if not allow:
            raise ConfigError(message + ", or pass --allow-seed-overlap to only warn")
        log.warning("%s (allowed by --allow-seed-overlap: the scores are optimistic)", message)


def _path_key(path: str | Path) -> str:
    """A teacher set's folder as a comparable key (its manifest path names the same set)."""
    path = Path(path)
    if path.name == MANIFEST_NAME:
        path = path.parent
    return str(path.resolve())
