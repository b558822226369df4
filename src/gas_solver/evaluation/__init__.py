"""Evaluation as data: several solvers scored against a teacher on the same seeds.

* :mod:`.compare`: one model, several solvers and a many-step teacher on the same evaluation
  seeds: rows → scores (FID, fidelity to the teacher, ms per sample) → report;
* :mod:`.timing`: each row timed after a warm-up batch, its model-call and solver shares;
* :mod:`.report`: the report as data (:class:`Row`, :class:`Comparison`), its table and files;
* :mod:`.seed_checks`: evaluation seeds never overlap the teacher sets' seeds.
"""

from .compare import COMPARE_SEEDS, compare, resolve_solvers, split_solvers
from .report import Comparison, Row, format_table
from .seed_checks import check_seed_overlap, teacher_seed_sets
from .timing import SamplingClock, SamplingTime

__all__ = [
    "COMPARE_SEEDS",
    "Comparison",
    "Row",
    "SamplingClock",
    "SamplingTime",
    "check_seed_overlap",
    "compare",
    "format_table",
    "resolve_solvers",
    "split_solvers",
    "teacher_seed_sets",
]
