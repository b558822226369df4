"""Each row of a comparison timed after a warm-up: ms per sample, the model-call share, the device
and dtype in the table, and rows read from the sample cache marked as read, not timed; and the
``benchmarks/gpu.py`` command (its help, and one small section on the CPU)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gas_solver.evaluation import compare, format_table
from gas_solver.models.analytic import GaussianMixtureModel

ROOT = Path(__file__).resolve().parents[1]
COLD = 0.3  # seconds of the first network call of each row (a cold device)
WARM = 0.004  # seconds of every other network call


class ColdStart(GaussianMixtureModel):
    """The exact ring mixture behind a network that sleeps: ``COLD`` s in the first call of each
    row (a cold device: what the warm-up must keep out of the per-sample time), ``WARM`` s in
    every other (a network that costs more than the solver's arithmetic)."""

    cold = True

    def reset_nfe(self) -> None:  # compare resets the counter before each row it samples
        super().reset_nfe()
        self.cold = True

    def network_output(self, x, t, cond=None):
        time.sleep(COLD if self.cold else WARM)
        self.cold = False
        return super().network_output(x, t, cond)


def test_rows_are_timed_after_a_warm_up_batch(tmp_path):
    model = ColdStart.ring()
    out = tmp_path / "cmp"
    rows = compare(
        model, "ddim:nfe=3;unipc:nfe=3", "50000-50009", teacher="ddim:nfe=4", batch_size=4,
        out=out, progress=False,
    ).rows  # fmt: skip
    assert [row.nfe for row in rows] == [4, 3, 3]  # the warm-up runs are not counted
    for row in rows:  # batches 4, 4, 2: the first is the warm-up, the 2 warmed up once more
        assert row.timing == "measured" and row.timed_samples == 6
        assert row.warmup_seconds >= COLD and row.seconds >= row.warmup_seconds
        assert 0 < row.ms_per_sample < 1e3 * COLD / 10  # the cold call is not in it
        assert 0.5 < row.model_share <= 1 and row.solver_share == pytest.approx(1 - row.model_share)
    assert "_network_output" not in vars(model)  # the clock leaves the model as it was

    saved = json.loads((out / "compare.json").read_text())
    assert saved["model_device"] == "cpu" and saved["compute_dtype"] == "float32"
    for row, kept in zip(rows, saved["rows"], strict=True):
        assert kept["seconds"] == row.seconds and kept["ms_per_sample"] == row.ms_per_sample
        assert kept["model_share"] == row.model_share and kept["timing"] == "measured"
        assert kept["warmup_seconds"] == row.warmup_seconds and kept["timed_samples"] == 6
    table = (out / "compare.md").read_text()
    assert "- time: on `cpu`, network in float32;" in table
    assert "| ms/sample (model %) |" in table and "| seconds |" not in table
    assert f"({100 * rows[1].model_share:.0f} %) |" in table


def test_a_single_batch_row_is_warmed_up_first():
    rows = compare(ColdStart.ring(), "ddim:nfe=3", "50000-50003", teacher="ddim:nfe=4",
                   batch_size=8, cache=False, progress=False).rows  # fmt: skip
    for row in rows:  # its one batch run twice: the untimed warm-up, then the timed run
        assert row.timed_samples == 4 and row.warmup_seconds >= COLD
        assert 0 < row.ms_per_sample < 1e3 * COLD / 4
    assert [row.nfe for row in rows] == [4, 3]


def test_a_cached_row_says_it_was_read_not_timed(tmp_path):
    def run(out):
        return compare("gmm-ring", "ddim:nfe=3", "50000-50005", teacher="unipc:nfe=8",
                       out=out, progress=False)  # fmt: skip

    first, again = run(tmp_path / "a"), run(tmp_path / "b")
    assert first.rows[0].timing == "measured" and first.rows[0].ms_per_sample > 0
    teacher = again.rows[0]
    assert teacher.timing == "cached" and teacher.seconds == first.rows[0].seconds
    assert teacher.ms_per_sample is None and teacher.model_share is None
    assert again.rows[1].timing == "measured"  # the solver itself is sampled again
    table = (tmp_path / "b" / "compare.md").read_text()
    assert "| teacher | 8 |" in table and table.split("| teacher |")[1].split("\n")[0].endswith(
        "| cached |"
    )
    assert "`cached` = samples read from the sample cache, not timed" in table
    saved = json.loads((tmp_path / "b" / "compare.json").read_text())["rows"][0]
    assert saved["timing"] == "cached" and saved["ms_per_sample"] is None


def test_the_table_names_the_device_and_the_dtype():
    model = GaussianMixtureModel.ring()
    model.set_precision("bfloat16")
    comparison = compare(model, "ddim:nfe=3", "50000-50003", teacher="ddim:nfe=4",
                         cache=False, progress=False)  # fmt: skip
    assert comparison.context["compute_dtype"] == "bfloat16"
    assert "- time: on `cpu`, network in bfloat16;" in comparison.table()
    context = {**comparison.context, "model_device": "cuda:0", "compiled": True}
    assert "- time: on `cuda:0`, network in bfloat16, compiled;" in format_table(
        comparison.rows, context
    )


def gpu_benchmark(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), *args], capture_output=True,
        text=True, timeout=300, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def test_gpu_benchmark_help_and_one_section_on_the_cpu(tmp_path):
    result = gpu_benchmark("--help")
    assert result.returncode == 0, result.stderr
    for flag in ("--budget-seconds", "--device", "--compile", "--only", "--models"):
        assert flag in result.stdout
    result = gpu_benchmark("--device", "cpu", "--budget-seconds", "15", "--only", "sampling",
                           "--models", "mnist32", "--json", str(tmp_path / "gpu.json"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "| mnist32 | sampling GS-4 (img/s) |" in result.stdout, result.stdout
    assert "GS / UniPC images/s" in result.stdout
    saved = json.loads((tmp_path / "gpu.json").read_text())
    assert saved["device"] == "cpu" and saved["variants"] == ["fp32", "bf16"]
    row = next(r for r in saved["rows"] if r["measure"] == "sampling UniPC-4")
    assert row["fp32"] > 0 and row["bf16"] > 0
    assert gpu_benchmark("--only", "nothing").returncode == 2
