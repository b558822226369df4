"""The short form of ``benchmarks/fault_matrix.py`` (issue: reliability): one SIGKILL per
training/teacher/sample command, one SIGINT of a comparison, one damaged file of each kind, two
writers on a training and a comparison folder, one full disk and the unwritable outputs of every
command that writes, on small runs. Everything must survive: identical results after a rerun, refused corrupt files, a
refused second writer, one-line errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fault_matrix.py"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the matrix forks its killed runs")
def test_quick_fault_matrix_loses_nothing(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--work", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "LOST" not in result.stdout and ", 0 lost," in result.stdout, result.stdout
    for scenario in (
        "SIGKILL",
        "SIGINT",
        "corruption",
        "hostile",
        "two writers",
        "full disk",
        "not writable",
    ):
        assert scenario in result.stdout
