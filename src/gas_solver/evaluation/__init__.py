"""What the ``fid`` and ``compare`` commands do, as library functions with validated configs.

* :mod:`.fid_command`: the FID of one set of images (a folder, an ``.npz``, a data set or a
  solver's samples) against reference statistics;
* :mod:`.compare`: one model, several solvers and a many-step teacher on the same evaluation
  seeds: FID, fidelity to the teacher, seconds, pictures;
* :mod:`.seed_checks`: evaluation seeds never overlap the teacher sets' seeds.
"""

from .compare import (
    COMPARE_SEEDS,
    DEFAULT_TEACHER,
    CompareConfig,
    compare,
    format_table,
    resolve_solvers,
    run_compare,
    split_solvers,
)
from .fid_command import FIDConfig, format_fid, load_images, run_fid
from .seed_checks import check_seed_overlap, teacher_seed_sets

__all__ = [
    "COMPARE_SEEDS",
    "DEFAULT_TEACHER",
    "CompareConfig",
    "FIDConfig",
    "check_seed_overlap",
    "resolve_solvers",
    "compare",
    "format_fid",
    "format_table",
    "load_images",
    "run_compare",
    "run_fid",
    "split_solvers",
    "teacher_seed_sets",
]
