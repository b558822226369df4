"""``gas-solver compare``: several solvers on the same seeds against a many-step teacher; the
table, JSON and pictures in ``--out`` (:func:`gas_solver.evaluation.compare`)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from ..config import option, require
from ..data.teacher_format import MANIFEST_NAME, identity_value, read_manifest
from ..distributed import main_lock
from ..errors import ConfigError
from ..evaluation.compare import COMPARE_SEEDS, compare, resolve_solvers
from ..evaluation.report import Comparison
from ..metrics.frechet import FID_METHODS
from ..models.base import COMPILE_HELP, COMPUTE_DTYPES, DTYPE_HELP, prepare_network
from ..models.loading import load_model
from ..outputs import check_output
from ..runtime import resolve_device
from ..seeds import parse_seeds
from ..solvers.registry import classic_solvers_help
from ..solvers.spec_text import parse_solver_spec
from ..solvers.teacher import DEFAULT_TEACHER

log = logging.getLogger(__name__)


@dataclasses.dataclass
class CompareConfig:
    """``gas-solver compare``: several solvers on the same seeds, against a many-step teacher."""

    solvers: str = option(
        "",
        lambda: (
            "solvers separated by ';' (classic specs contain commas): GS/GAS checkpoints "
            "and/or classic specs, e.g. 'unipc:nfe=4;dpmpp:nfe=4,order=2;runs/train/solver.safetensors'"
            f". Classic solvers: {classic_solvers_help()}"
        ),
    )
    model: str | None = option(None, "model name or path; none: the model of the first checkpoint")
    nfe: int | None = option(None, "NFE of classic specs that give none")
    teacher: str = option(
        DEFAULT_TEACHER, "teacher solver spec: the reference of L1/RMSE/PSNR, and a row itself"
    )
    seeds: str = option(COMPARE_SEEDS, "evaluation seeds (256 by default: quick on a CPU)")
    prompts: str | None = option(
        None, "text models: a file of prompts, one a line; seed s gets prompt s mod count"
    )
    teacher_set: str | None = option(
        None,
        "the teacher set the solvers were trained on: the evaluation seeds must not overlap its "
        "seeds (checkpoints' recorded teacher sets are checked too)",
    )
    allow_seed_overlap: bool = option(
        False, "only warn when evaluation seeds overlap teacher-set seeds (default: refuse)"
    )
    fid_ref: str | None = option(
        None,
        "FID reference (image models only; latent models: of decoded images): a bundled data "
        "set (mnist, digits), an EDM/ADM .npz, or a folder of images; none: no FID",
    )
    fid_ref_num: int | None = option(
        None, "use only the first FID_REF_NUM reference images; none: all"
    )
    fid_method: str = option(
        "sqrtm", "FID matrix square root: sqrtm (as EDM) or eigh", choices=list(FID_METHODS)
    )
    reference: str | None = option(
        None,
        "a converged solve of the same ODE, e.g. 'unipc:nfe=200,order=3,grid=uniform' (auto: the "
        "teacher's solver with 10x its calls): adds each row's L1/PSNR to it and FID against its "
        "samples, and a row of its own; none: no reference",
    )
    cache: bool = option(
        True,
        "reuse the teacher's and the reference's samples and FID statistics of an earlier "
        "comparison on the same model, spec, seeds and conditions ($GAS_SOLVER_SAMPLES, default "
        "$GAS_SOLVER_CACHE/samples)",
    )
    batch_size: int = option(64, "samples per batch (and images per Inception call)")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    dtype: str = option(
        "float32",
        DTYPE_HELP + "; every row, the teacher's included, and compare.json records it",
        choices=list(COMPUTE_DTYPES),
    )
    compile: bool = option(False, COMPILE_HELP)
    out: str = option("runs/compare", "output folder")

    def validate(self) -> None:
        check_output(self.out, "folder")
        require(self.nfe is None or self.nfe >= 1, "nfe", f"must be >= 1, got {self.nfe}")
        solvers = resolve_solvers(self.solvers, self.nfe)
        parse_solver_spec(self.teacher)
        if self.reference not in (None, "auto"):
            parse_solver_spec(self.reference)
        require(
            bool(self.model) or any(s.checkpoint is not None for s in solvers),
            "model",
            "required unless a solver checkpoint names its model",
        )
        seeds = parse_seeds(self.seeds)
        require(not self.fid_ref or len(seeds) >= 2, "seeds", "FID needs at least 2 seeds")
        if self.teacher_set:
            path = Path(self.teacher_set)
            require(
                (path / "manifest.json").is_file() or path.name == "manifest.json",
                "teacher_set",
                f"{self.teacher_set} is not a teacher set (no manifest.json); make one with "
                "`gas-solver teacher`",
            )
        require(
            self.fid_ref_num is None or self.fid_ref_num >= 2, "fid_ref_num", "needs >= 2 images"
        )
        require(self.fid_method in FID_METHODS, "fid_method", f"must be one of {FID_METHODS}")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        if self.prompts is not None:
            require(Path(self.prompts).is_file(), "prompts", f"{self.prompts} is not a file")


def run_compare(config: CompareConfig, progress: bool = True) -> Comparison:
    """Load the model (or the first checkpoint's), run :func:`compare`, write ``config.out``."""
    device = resolve_device(config.device)
    solvers = resolve_solvers(config.solvers, config.nfe)
    source = config.model
    if not source:
        first = next(s for s in solvers if s.checkpoint is not None)
        source = first.model_source
        if not source:
            raise ConfigError(f"model: {first.checkpoint} does not name its model; pass --model")
    if config.teacher_set:
        _say_teacher_dtype(config.teacher_set, config.dtype)
    with main_lock(config.out, fresh=True):  # one comparison per folder; refused before any work
        model = load_model(source, device)
        prepare_network(model, config.dtype, config.compile)
        return compare(
            model, solvers, config.seeds, nfe=config.nfe,
            teacher=config.teacher, teacher_set=config.teacher_set,
            allow_seed_overlap=config.allow_seed_overlap, prompts=config.prompts,
            fid_ref=config.fid_ref, fid_ref_num=config.fid_ref_num, fid_method=config.fid_method,
            reference=config.reference, cache=config.cache, out=config.out,
            batch_size=config.batch_size, device=device, progress=progress,
        )  # fmt: skip


def _say_teacher_dtype(teacher_set: str, dtype: str) -> None:
    """The teacher row is sampled here, in ``--dtype``: say so when the teacher set the solvers
    learnt from was made with the network in another dtype."""
    path = Path(teacher_set)
    manifest = read_manifest(path if path.name == MANIFEST_NAME else path / MANIFEST_NAME)
    made_in = identity_value(manifest, "compute_dtype")
    if made_in != dtype:
        log.warning(
            "compare: the teacher row runs the network in %s (--dtype), as every row does; the "
            "teacher set %s was made in %s (pass --dtype %s to compare in its dtype)",
            dtype, teacher_set, made_in, made_in,
        )  # fmt: skip
