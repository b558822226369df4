"""Bounded inputs and guarded parsing (issue #29, third pass; docs/RELIABILITY.md "Bad inputs").

Flags and configuration files are refused with one line and exit code 2 before anything is
allocated from them: seed ranges are counted, not expanded; numbers are measured before ``int()``
reads them; YAML files have a size and a depth limit, no anchors or aliases and no key twice;
messages quote a short excerpt of any value. Text that is a solver spec is not mistaken for a
file name it cannot be.

The inputs that would exhaust memory run in a subprocess under ``RLIMIT_AS`` (2.5 GB).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import pytest

from gas_solver import cli
from gas_solver.commands.sample import SampleConfig
from gas_solver.config import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, load_config, read_config_file
from gas_solver.errors import ConfigError
from gas_solver.seeds import MAX_SEEDS, count_seeds, parse_seeds
from gas_solver.solvers.resolve import is_checkpoint, resolve_solver

CAP = 2_500 * 2**20
"""Address-space limit of the subprocesses (bytes)."""
NINES = "9" * 5000
GRID = [float(t) for t in np.linspace(1.0, 0.001, 21)]  # full precision, as a program writes it
LONG_SPEC = "ddim:grid=[" + ",".join(repr(t) for t in GRID) + "]"
"""A valid explicit grid of 21 times: longer than a file name may be (NAME_MAX = 255)."""
SAMPLE = ["sample", "--model", "gmm-ring", "--solver", "ddim:nfe=2", "--device", "cpu"]


def _assert_one_line(code: int, err: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and "error:" in err and "Traceback" not in err, err
    assert len(err.encode()) < 1024, f"{len(err)} characters on stderr"


def _cli(capsys, argv: list[str]) -> str:
    """stderr of ``gas-solver ARGV`` run in this process, checked to be one short error line."""
    code = cli.main(argv)
    err = capsys.readouterr().err
    _assert_one_line(code, err)
    return err


def _capped(argv: list[str], cwd) -> str:
    """stderr of ``gas-solver ARGV`` in a subprocess limited to :data:`CAP` bytes of memory,
    checked to be one short error line, well before an input expanded in memory or time would
    end (the memory cap is the check; 30 s leaves room for a busy box's interpreter start)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))

    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "gas_solver.cli", *argv], cwd=cwd, capture_output=True, text=True,
        timeout=120, preexec_fn=limit, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    seconds = time.monotonic() - start
    _assert_one_line(result.returncode, result.stderr)
    assert seconds < 30, f"took {seconds:.1f} s"
    return result.stderr


# -- seeds -----------------------------------------------------------------------------------------
def test_seed_text_is_counted_without_expanding_it():
    assert count_seeds("0-9, 20-29,40") == 21
    with pytest.raises(ConfigError, match="more than the 10,000,000"):
        count_seeds("0-999999999")
    with pytest.raises(ConfigError, match="more than the"):
        count_seeds("0-4999999,5000000-10000000")  # the sum of the ranges counts


def test_the_seed_limit_is_inclusive(monkeypatch):
    monkeypatch.setattr("gas_solver.seeds.MAX_SEEDS", 10)
    assert parse_seeds("0-4,10-14") == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]
    with pytest.raises(ConfigError, match="11 seeds"):
        parse_seeds("0-10")


def test_overlapping_seed_ranges_are_found_without_expanding_them():
    with pytest.raises(ConfigError, match="seed 5000000 is listed more than once"):
        count_seeds(f"0-{MAX_SEEDS // 2},{MAX_SEEDS // 2}")


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["sample", "--model", "gmm-ring", "--seeds", "0-999999999", "--out", "s"], "seeds"),
        (["teacher", "--model", "gmm-ring", "--seeds", "0-999999999", "--out", "t"], "seeds"),
        (["compare", "--model", "gmm-ring", "--solvers", "ddim:nfe=2", "--seeds",
          "0-99999999999"], "seeds"),
        (["fid", "--solver", "ddim:nfe=2", "--model", "gmm-ring", "--ref", "r.npz", "--seeds",
          "0-99999999999"], "seeds"),
        (["sweep", "--model", "gmm-ring", "--grid-seeds", "60000-99999999999"], "grid_seeds"),
    ],
)  # fmt: skip
def test_huge_seed_ranges_are_refused_before_they_are_expanded(argv, field, tmp_path):
    err = _capped([*argv, "--device", "cpu"], tmp_path)
    assert f"error: {field}: " in err and "more than the 10,000,000" in err
    assert list(tmp_path.iterdir()) == []


# -- numbers longer than int() reads ----------------------------------------------------------------
def test_a_5000_digit_batch_size_gets_the_fields_message(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _cli(capsys, [*SAMPLE, "--out", "s", "--batch-size", NINES])
    assert "batch_size: must be from 1 to 4096, got '99999" in err
    err = _cli(capsys, ["teacher", "--model", "gmm-ring", "--shard-size", f"-{NINES}"])
    assert "shard_size: expected an integer, got '-99999" in err
    assert list(tmp_path.iterdir()) == []
    overrides = {"model": "gmm-ring", "device": "cpu", "batch_size": "0" * 5000 + "64"}
    assert load_config(SampleConfig, overrides=overrides).batch_size == 64  # zeros are not digits


def test_a_5000_digit_seed_gets_the_seed_range_message(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for seeds in (NINES, f"0-{NINES}", f"0,{NINES}-{NINES}"):
        err = _cli(capsys, [*SAMPLE, "--out", "s", "--seeds", seeds])
        assert "seeds: '99999" in err and "out of range (0 to 2**63 - 1)" in err
    assert parse_seeds("0" * 5000 + "7") == [7]  # leading zeros are not digits of the value
    with pytest.raises(ConfigError, match="out of range"):
        parse_seeds(10**5000)  # a library caller's int: no message prints it whole


# -- YAML configuration files ----------------------------------------------------------------------
def _yaml(tmp_path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def _bomb(levels: int = 9, width: int = 9) -> str:
    """Nine levels of nine references: a few hundred bytes that expand to 9**9 strings."""
    nodes = ["&l0 [" + ", ".join(["lol"] * width) + "]"]
    nodes += [f"&l{k} [" + ", ".join([f"*l{k - 1}"] * width) + "]" for k in range(1, levels)]
    return "model: gmm-ring\nout: s\nseeds: [" + ", ".join(nodes) + "]\n"


def test_a_yaml_alias_bomb_is_refused_under_a_memory_limit(tmp_path):
    config = _yaml(tmp_path, _bomb())
    err = _capped(["sample", "--config", config, "--device", "cpu"], tmp_path)
    assert "anchors and aliases" in err and "line 3" in err


def test_yaml_anchors_are_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _yaml(tmp_path, "model: &m gmm-ring\nout: s\n")
    assert "line 1: YAML anchors and aliases" in _cli(capsys, [*SAMPLE, "--config", config])


@pytest.mark.parametrize("flow", [True, False])
def test_deep_yaml_nesting_is_refused(capsys, tmp_path, monkeypatch, flow):
    monkeypatch.chdir(tmp_path)
    if flow:
        text = "out: s\nseeds: " + "[" * 5000 + "]" * 5000 + "\n"
    else:
        text = "out: s\nseeds:\n" + "- " * 5000 + "1\n"  # block sequences, one a column
    err = _cli(capsys, [*SAMPLE, "--config", _yaml(tmp_path, text)])
    assert f"nested deeper than {MAX_CONFIG_DEPTH} levels" in err
    assert list(tmp_path.iterdir()) == [tmp_path / "config.yaml"]


def test_yaml_nesting_up_to_the_limit_is_read(tmp_path):
    depth = MAX_CONFIG_DEPTH - 1  # the document's mapping is one level
    loaded = read_config_file(_yaml(tmp_path, "x: " + "[" * depth + "]" * depth))
    assert isinstance(loaded["x"], list)


def test_a_yaml_key_given_twice_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _yaml(tmp_path, "model: gmm-ring\nout: s\nmodel: gmm-digits\n")
    err = _cli(capsys, [*SAMPLE, "--config", config])
    assert "line 3: key 'model' given twice (first on line 1)" in err
    assert not (tmp_path / "s").exists()
    assert read_config_file(_yaml(tmp_path, "<<: {a: 1}\nb: 2\n")) == {"a": 1, "b": 2}


def test_a_5000_digit_yaml_integer_gets_the_fields_message(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _yaml(tmp_path, f"out: s\nbatch_size: {NINES}\n")
    assert "batch_size: must be from 1 to 4096" in _cli(capsys, [*SAMPLE, "--config", config])
    config = _yaml(tmp_path, f"out: s\nbatch_size: 0x{'f' * 5000}\n")
    assert "batch_size: expected an integer" in _cli(capsys, [*SAMPLE, "--config", config])


def test_a_config_file_over_the_size_limit_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = "model: gmm-ring\nout: s\n# " + "x" * MAX_CONFIG_BYTES + "\n"
    err = _cli(capsys, [*SAMPLE, "--config", _yaml(tmp_path, text)])
    assert f"larger than {MAX_CONFIG_BYTES:,} bytes" in err
    assert not (tmp_path / "s").exists()


def test_messages_quote_a_short_excerpt_of_yaml_values(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    long_key = "x" * 100_000
    err = _cli(capsys, [*SAMPLE, "--config", _yaml(tmp_path, f"? {long_key}\n: 1\n1: 2\n")])
    assert "unknown field(s)" in err
    seeds = json.dumps(list(range(50_000)))
    err = _cli(capsys, [*SAMPLE, "--config", _yaml(tmp_path, f"out: s\nseeds: {seeds}\n")])
    assert "seeds: expected text" in err
    err = _cli(capsys, [*SAMPLE, "--config", _yaml(tmp_path, f"out: !{long_key} s\n")])
    assert "not valid YAML (could not determine a constructor" in err


def test_memory_and_recursion_errors_while_reading_are_config_errors(tmp_path, monkeypatch):
    config = _yaml(tmp_path, "out: s\n")
    for error in (MemoryError, RecursionError):

        def fail(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr("gas_solver.config.yaml.load", fail)
        with pytest.raises(ConfigError, match="too large or too deeply nested"):
            read_config_file(config)


def test_a_config_path_longer_than_a_file_name_is_not_found(capsys):
    err = _cli(capsys, [*SAMPLE, "--config", "c" * 5000 + ".yaml"])
    assert "config file not found" in err


# -- solver specs longer than a file name ----------------------------------------------------------
def test_a_spec_longer_than_a_file_name_is_parsed_as_a_spec():
    assert len(LONG_SPEC) > 255
    assert not is_checkpoint(LONG_SPEC) and not is_checkpoint("x" * 5000)
    spec = resolve_solver(LONG_SPEC)
    assert spec.nfe == 20 and spec.grid == tuple(GRID)


def test_sample_takes_a_21_time_explicit_grid(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["sample", "--model", "gmm-ring", "--solver", LONG_SPEC, "--seeds", "0-3"]
    assert cli.main([*argv, "--out", "s", "--device", "cpu"]) == 0, capsys.readouterr().err
    assert np.load(tmp_path / "s" / "samples.npz")["samples"].shape == (4, 2)


def test_compare_takes_a_21_time_explicit_grid(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["compare", "--model", "gmm-ring", "--solvers", f"{LONG_SPEC};ddim:nfe=4"]
    argv += ["--seeds", "0-3", "--out", "c", "--no-cache", "--device", "cpu"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert "ddim" in capsys.readouterr().out
