"""The report of a comparison, as data and as files: :class:`Row` (one solver and its scores),
:class:`Comparison` (the rows and how they were made), the markdown table (:func:`format_table`)
and what :func:`~gas_solver.evaluation.compare` writes to its ``out`` folder (:func:`write_report`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from ..outputs import clear_earlier_run, folder_lock, json_safe, write_json, write_text
from ..runtime import run_metadata
from ..visualize import plot_time_grids, save_comparison_grid, save_image_grid, save_scatter

log = logging.getLogger(__name__)

GRID_IMAGES = 64  # images per solver grid, 8 per row
COMPARISON_IMAGES = 8  # seeds per row of comparison.png
SCATTER_POINTS = 2000  # points per solver in the scatter plots


@dataclasses.dataclass(frozen=True)
class Row:
    """One solver of a comparison with its scores (the fields are the keys of ``compare.json``).

    Attributes:
        label: the solver's name in the table; ``kind``: teacher, classic, gs or gas;
            ``solver``: the solver's name (``gs``/``gas`` for a checkpoint).
        nfe: model calls per sample, counted.
        spec: a classic solver's spec (text syntax), else ``None``; ``checkpoint``: a GS/GAS file.
        n_samples: the number of seeds (the N of the FID).
        fid: ``None`` without reference or for non-image models.
        l1, rmse, psnr: means over samples, to the teacher; ``*_std`` their standard deviations;
            ``fidelity_space``: where they were computed (``latents``, ``pixels`` or
            ``samples``).
        seconds: the whole wall-clock time of sampling the row, its warm-up included (a row read
            from the sample cache: the time recorded when its samples were made).
        grid: the time grid; ``picture``: the grid or scatter file written, or ``None``.
        description: how the solver was made (its spec, or the checkpoint's training).
        reference_l1, reference_psnr: with a converged ``reference`` solve, the fidelity to it
            (the ODE's solution, where the teacher is itself an approximation); and
            ``reference_fid`` the FID against its samples (the teacher's distribution without
            the teacher's error), else ``None``.
        timing: ``measured`` (sampled and timed in this run) or ``cached`` (its samples read
            from the sample cache, not timed: the fields below are ``None``).
        ms_per_sample: wall milliseconds per sample after the row's warm-up batch
            (:mod:`.timing`); ``model_share``: the share of it inside the network's calls, in
            [0, 1], ``solver_share`` the rest (the solver's arithmetic); ``warmup_seconds``: the
            warm-up batch's time; ``timed_samples``: the samples ``ms_per_sample`` is measured
            on. ``None`` in rows made without them.
    """

    label: str
    kind: str
    solver: str | None
    nfe: int | float
    spec: str | None
    checkpoint: str | None
    n_samples: int
    fid: float | None
    l1: float
    l1_std: float
    rmse: float
    rmse_std: float
    psnr: float
    psnr_std: float
    fidelity_space: str
    seconds: float
    grid: list[float]
    picture: str | None
    description: dict[str, Any]
    reference_l1: float | None = None
    reference_psnr: float | None = None
    reference_fid: float | None = None
    timing: str = "measured"
    ms_per_sample: float | None = None
    model_share: float | None = None
    solver_share: float | None = None
    warmup_seconds: float | None = None
    timed_samples: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The row as ``compare.json`` and ``demo.json`` hold it."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """What :func:`compare` returns: the rows, the teacher's first, and how they were made
    (``context``: model, seeds, teacher, teacher set, FID reference, ...)."""

    rows: list[Row]
    context: dict[str, Any]

    def table(self) -> str:
        """The markdown table of ``compare.md`` (:func:`format_table`)."""
        return format_table(self.rows, self.context)


def write_report(
    out: Path,
    rows: list[Row],
    kept: dict[str, Tensor],
    is_image: bool,
    context: dict[str, Any],
) -> list[Row]:
    """Write a comparison to ``out``: each solver's picture (image models: ``grid_<label>.png``
    and ``comparison.png``, from ``kept``, each label's first images; others: scatter plots),
    ``time_grids.png``, ``compare.md`` and ``compare.json``; returns the rows with the pictures
    they got."""
    with folder_lock(out):
        clear_earlier_run(out)  # no picture of an earlier comparison passes for this one's
        return _write_report(out, rows, kept, is_image, context)


def _write_report(
    out: Path, rows: list[Row], kept: dict[str, Tensor], is_image: bool, context: dict[str, Any]
) -> list[Row]:
    stems = _file_stems([row.label for row in rows])
    teacher = kept[rows[0].label]
    pictured = []
    if is_image:
        for row, stem in zip(rows, stems, strict=True):
            name = f"grid_{stem}.png"
            save_image_grid(kept[row.label][:GRID_IMAGES], out / name, nrow=8)
            pictured.append(dataclasses.replace(row, picture=name))
        save_comparison_grid(
            {label: images[:COMPARISON_IMAGES] for label, images in kept.items()},
            out / "comparison.png",
        )
    else:
        for row, stem in zip(rows, stems, strict=True):
            if row.kind == "teacher":
                pictured.append(row)
                continue
            name = f"scatter_{stem}.png"
            save_scatter(
                {"teacher": teacher, row.label: kept[row.label]},
                out / name,
                title=f"{row.label} vs teacher (same noise)",
            )
            pictured.append(dataclasses.replace(row, picture=name))
        save_scatter(kept, out / "scatter.png", title=f"{context['model']}, {len(rows)} solvers")
    plot_time_grids({row.label: row.grid for row in pictured}, out / "time_grids.png")
    write_text(out / "compare.md", format_table(pictured, context))
    rows_json = [row.to_dict() for row in pictured]
    write_json(
        out / "compare.json", json_safe({**context, "rows": rows_json, "run": run_metadata()})
    )
    log.info("wrote the comparison of %d solvers to %s", len(pictured), out)
    return pictured


def gap_closed(rows: Iterable[tuple[str, str, float | None]]) -> dict[str, float] | None:
    """The share of the FID gap each learned solver closes (the paper's reading of its tables).

    ``rows`` are ``(label, kind, fid)`` with kind ``teacher``, ``classic``, ``gs`` or ``gas``; the
    share is ``(FID_best classic − FID) / (FID_best classic − FID_teacher)`` for every learned row
    with a FID. ``None`` when there is no teacher or classic FID, or when the best classic solver
    is already at or below the teacher (the gap is not defined).
    """
    rows = [row for row in rows if row[2] is not None]
    classic = [fid for _, kind, fid in rows if kind == "classic"]
    teacher = [fid for _, kind, fid in rows if kind == "teacher"]
    if not classic or not teacher or min(classic) <= teacher[0]:
        return None
    best = min(classic)
    return {
        label: (best - fid) / (best - teacher[0])
        for label, kind, fid in rows
        if kind in ("gs", "gas")
    }


def _file_stems(labels: Sequence[str]) -> list[str]:
    """Labels → distinct file-name-safe stems (``[A-Za-z0-9._=-]``, at most 80 characters)."""
    stems: list[str] = []
    for label in labels:
        stem = re.sub(r"[^A-Za-z0-9._=-]+", "_", label).strip("._")[:80] or "solver"
        base, k = stem, 2
        while stem in stems:
            stem, k = f"{base}-{k}", k + 1
        stems.append(stem)
    return stems


def format_table(rows: Sequence[Row], context: dict[str, Any] | None = None) -> str:
    """The rows of :func:`compare` as a markdown table (with the run's context above it)."""
    lines = ["# Solver comparison", ""]
    if context:
        ref = context.get("fid_reference")
        ref_text = (
            f"{ref} (N={context.get('fid_reference_num_images')}, {context.get('fid_method')})"
            if ref
            else "none"
        )
        lines += [
            f"- model: `{context.get('model')}`",
            f"- seeds: {context.get('seeds')} (N={context.get('n_samples')}, the same noise for "
            "every solver)",
            f"- teacher: `{context.get('teacher')}` (reference of L1, RMSE, PSNR)",
            *(
                [f"- reference: `{context['reference']}` (a converged solve of the same ODE)"]
                if context.get("reference")
                else []
            ),
            f"- FID reference: {ref_text}",
            *_space_notes(context),
            _timing_note(context),
            "",
        ]
    space = (context or {}).get("fidelity_space") or next(
        (row.fidelity_space for row in rows), None
    )
    if space == "latents":  # FID of the decoded images, fidelity of the latents
        columns = "FID (N, decoded) | L1 to teacher (latents) | RMSE (latents) | PSNR (latents, dB)"
    else:
        columns = "FID (N) | L1 to teacher | RMSE | PSNR (dB)"
    referenced = any(row.reference_l1 is not None for row in rows)
    if referenced:
        columns += " | L1 to reference | PSNR to reference (dB) | FID vs reference samples"
    lines += [
        f"| solver | NFE | {columns} | ms/sample (model %) |",
        "|---|" + "---:|" * (9 if referenced else 6),
    ]
    for row in rows:
        fid_text = "–" if row.fid is None else f"{row.fid:.2f} ({row.n_samples})"
        label = row.label.replace("|", "\\|")
        label = label if row.kind in ("teacher", "reference") else f"`{label}`"
        cells = [label, str(row.nfe), fid_text, f"{row.l1:.4f}", f"{row.rmse:.4f}",
                 _number(row.psnr, ".2f")]  # fmt: skip
        if referenced:
            cells += [
                _number(row.reference_l1, ".4f"),
                _number(row.reference_psnr, ".2f"),
                _number(row.reference_fid, ".2f"),
            ]
        lines.append("| " + " | ".join([*cells, time_cell(row)]) + " |")
    return "\n".join(lines) + "\n"


def time_cell(row: Row) -> str:
    """A row's time in the table: ``ms/sample (model %)``, ``cached`` for a row read from the
    sample cache, or the whole seconds for a row without per-sample timing."""
    if row.timing == "cached":
        return "cached"
    if row.ms_per_sample is None:
        return f"{row.seconds:.2f} s"
    share = "" if row.model_share is None else f" ({100 * row.model_share:.0f} %)"
    return _milliseconds(row.ms_per_sample) + share


def _milliseconds(ms: float) -> str:
    """Three significant figures, without an exponent: 1234, 123, 12.3, 1.23, 0.0123."""
    if ms >= 100:
        return f"{ms:.0f}"
    return f"{ms:.3g}" if ms >= 1e-3 else f"{ms:.1e}"


def _timing_note(context: dict[str, Any]) -> str:
    """The preamble's line on the time column: the device, the network's dtype, the rule."""
    device = context.get("model_device") or context.get("device")
    dtype = context.get("compute_dtype") or "float32"
    compiled = ", compiled" if context.get("compiled") else ""
    return (
        f"- time: on `{device}`, network in {dtype}{compiled}; ms/sample = wall time per sample after each "
        "row's warm-up batch (excluded), FID excluded; (model %) = the share inside the "
        "network's calls, the rest is the solver's arithmetic; `cached` = samples read from the "
        "sample cache, not timed in this run"
    )


def _space_notes(context: dict[str, Any]) -> list[str]:
    """Lines of the table's preamble that say in which space a latent model was measured."""
    if context.get("fidelity_space") != "latents":
        return []
    return [
        "- latent model: FID and pictures on the decoded images; L1, RMSE, PSNR on the latents "
        "(the space the paper trains and logs in; PSNR with the [−1, 1] range 2, a relative "
        "number)",
    ]


def _number(value: float | None, fmt: str) -> str:
    if value is None:
        return "–"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return "–" if math.isnan(value) else format(value, fmt)
