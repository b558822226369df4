"""`gas-solver sweep` at toy size: every row measured, the files written, a rerun resumes."""

import json
import shutil

import pytest

from gas_solver.cli import main
from gas_solver.commands.sweep import (
    SweepConfig,
    format_sweep,
    learned_standing,
    start_disagreements,
    with_calls,
)
from gas_solver.errors import ConfigError

TOY = [  # 6 images per FID and reference (one Inception batch shape), as tests/test_evaluation.py
    "--model", "gmm-digits", "--nfes", "2,3", "--classic", "ddim;dpmpp:order=3",
    "--grids", "quadratic,uniform", "--learned", "timesteps,gs", "--teacher", "dpmpp:nfe=8,order=3",
    "--teacher-seeds", "0-39", "--train-size", "32", "--val-size", "8", "--iterations", "3",
    "--train-batch-size", "8", "--seeds", "50000-50005", "--grid-seeds", "60000-60007",
    "--fid-ref", "digits", "--fid-ref-num", "6", "--batch-size", "6", "--device", "cpu",
]  # fmt: skip


def test_sweep_at_toy_size_writes_table_json_plot_and_resumes(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", *TOY, "--no-logsnr-rows", "--out", str(out)]) == 0
    state = json.loads((out / "sweep.json").read_text())
    assert sorted(state["rows"]) == ["2", "3"]
    for key, rows in state["rows"].items():
        names = [row["name"] for row in rows]
        grids = state["grids"][key]
        assert set(grids) == {"ddim", "dpmpp:order=3"}
        assert names == [
            "teacher", "timesteps", "gs", f"ddim ({grids['ddim']})",
            f"dpmpp:order=3 ({grids['dpmpp:order=3']})", "start of gs",
        ]  # fmt: skip
        gs = json.loads((out / f"nfe{key}" / "gs" / "summary.json").read_text())
        assert rows[-1]["label"] == gs["start"]["solver"]  # the classic solver auto picked
        assert all(row["fid"] is not None and row["n_samples"] == 6 for row in rows)
        assert all(row["nfe"] == int(key) for row in rows[1:])
        timesteps = json.loads((out / f"nfe{key}" / "timesteps" / "solver.json").read_text())
        assert timesteps["training"]["config"]["init_grid"] == grids["dpmpp:order=3"]
    table = (out / "sweep.md").read_text()
    assert "| timesteps |" in table and "NFE 3" in table
    gs_seconds = json.loads((out / "nfe2" / "gs" / "summary.json").read_text())["seconds"]
    assert state["rows"]["2"][2]["train_seconds"] == gs_seconds
    assert "Seconds to sample" in table and f"({gs_seconds:.0f})" in table
    for key, by_solver in state["grid_l1"].items():  # every grid's L1; the best is the lowest
        assert set(by_solver["ddim"]) == {"quadratic", "uniform"}
        assert state["grids"][key]["ddim"] == min(by_solver["ddim"], key=by_solver["ddim"].get)
        assert f"quadratic {by_solver['ddim']['quadratic']:.4f}" in table
    assert (out / "sweep.png").stat().st_size > 0
    stamp = (out / "nfe2" / "gs" / "solver.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["sweep", *TOY, "--out", str(out)]) == 0  # adds the logSNR rows, nothing else
    assert (out / "nfe2" / "gs" / "solver.safetensors").stat().st_mtime_ns == stamp
    added = json.loads((out / "sweep.json").read_text())

    def scores(rows):  # name → all but the seconds (the teacher row is measured again)
        return {row["name"]: {k: v for k, v in row.items() if k != "seconds"} for row in rows}

    for key, rows in added["rows"].items():
        before, after = scores(state["rows"][key]), scores(rows)
        assert {name: after[name] for name in before} == before
        assert sorted(set(after) - set(before)) == ["ddim (logsnr)", "dpmpp:order=3 (logsnr)"]
    assert (out / "nfe2" / "compare-2" / "compare.json").is_file()
    table = (out / "sweep.md").read_text()
    fewer = [*TOY]
    fewer[fewer.index("--nfes") + 1] = "3"  # another NFE list may resume (and extend) it
    for method in ("timesteps", "gs"):  # a measured row is not trained again without its run
        shutil.rmtree(out / "nfe3" / method)
    assert main(["sweep", *fewer, "--out", str(out)]) == 0
    assert not (out / "nfe3" / "gs").exists()
    assert (out / "nfe2" / "gs" / "solver.safetensors").stat().st_mtime_ns == stamp
    assert (out / "sweep.md").read_text() == table
    assert main(["sweep", *TOY, "--iterations", "4", "--out", str(out)]) == 2
    assert "iterations: stored 3, given 4" in capsys.readouterr().err


def test_sweep_refuses_overlapping_seeds_and_unknown_methods():
    with pytest.raises(ConfigError, match="teacher seeds"):
        SweepConfig(teacher_seeds="0-99", seeds="50-60").validate()
    with pytest.raises(ConfigError, match="unknown"):
        SweepConfig(learned="gs,ld3").validate()
    with pytest.raises(ConfigError, match="timesteps_grid"):  # best: DPM-Solver++(3M)'s grid
        SweepConfig(classic="ddim").validate()
    SweepConfig(classic="ddim", timesteps_grid="uniform").validate()
    assert with_calls("ddim", 4, "edm") == "ddim:nfe=4,grid=edm"


def test_sweep_gas_row_fine_tunes_the_gs_of_its_nfe(tmp_path):
    """The GAS row starts from the GS of the same NFE (trained first when it is not a row), and
    fine-tunes it at the paper's constant 1e-3 (adversarial weight 0.1) while the GS trains at
    train's defaults."""
    toy = [*TOY[: TOY.index("--learned")], *TOY[TOY.index("--learned") + 2 :]]
    toy[toy.index("--nfes") + 1] = "2"
    out = tmp_path / "sweep"
    args = [
        "--learned",
        "gas",
        "--disc-preset",
        "tiny",
        "--gas-iterations",
        "2",
        "--disc-warmup",
        "1",
    ]
    assert main(["sweep", *toy, *args, "--out", str(out)]) == 0
    gas = json.loads((out / "nfe2" / "gas" / "solver.json").read_text())["training"]
    assert gas["iteration"] == 2 and gas["config"]["init_solver"] == str(out / "nfe2" / "gs")
    config = gas["config"]
    assert (config["lr"], config["lr_decay"], config["adv_weight"]) == (1e-3, "constant", 0.1)
    gs = json.loads((out / "nfe2" / "gs" / "solver.json").read_text())["training"]
    assert (gs["config"]["lr"], gs["config"]["lr_decay"]) == (2e-3, "cosine")
    names = [row["name"] for row in json.loads((out / "sweep.json").read_text())["rows"]["2"]]
    assert names[:2] == ["teacher", "gas"]


def test_sweep_with_a_reference_and_both_starts(tmp_path):
    """``--reference``: a row of its own and a table of every row against it; ``gs`` starts from
    the best classic solver, ``gs-3m`` from the paper's DPM-Solver++(3M) on ``--init-grid``."""
    out = tmp_path / "sweep"
    toy = [*TOY]
    toy[toy.index("--nfes") + 1] = "3"
    toy[toy.index("--learned") + 1] = "gs,gs-3m"
    assert main(["sweep", *toy, "--no-logsnr-rows", "--reference", "auto", "--out", str(out)]) == 0
    rows = json.loads((out / "sweep.json").read_text())["rows"]["3"]
    assert [row["name"] for row in rows][-1] == "reference" and rows[-1]["nfe"] == 80
    assert rows[-1]["reference_l1"] == 0 and all(row["reference_l1"] is not None for row in rows)
    assert "Against the converged reference" in (out / "sweep.md").read_text()
    starts = {
        name: json.loads((out / "nfe3" / name / "summary.json").read_text())["start"]["solver"]
        for name in ("gs", "gs-3m")
    }
    assert starts["gs-3m"] == "dpmpp3m:grid=logsnr" and not starts["gs"].startswith("dpmpp3m")


def test_learned_standing_measures_each_learned_row_against_the_best_classic_one():
    """Planted rows: the best classic L1 and reference FID come from different solvers (the
    start row counts as classic), the gap runs from the best classic FID to the teacher's."""

    def row(name, kind, fid, l1, reference_fid=None):
        return {"name": name, "kind": kind, "fid": fid, "l1": l1, "reference_fid": reference_fid}

    rows = [
        row("teacher", "teacher", 20.0, 0.0, 2.0),
        row("gs", "gs", 22.0, 0.03, 9.0),
        row("gas", "gas", None, 0.05),
        row("unipc:order=3 (uniform)", "classic", 26.0, 0.05, 15.0),
        row("start of gs", "classic", 28.0, 0.04, 12.0),
        row("reference", "reference", 17.0, 0.01, 0.0),
    ]
    standing = learned_standing(rows)
    assert set(standing) == {"gs", "gas"}
    assert standing["gs"] == pytest.approx({"l1": 0.75, "gap": 4 / 6, "reference_fid": 0.75})
    assert standing["gas"] == {"l1": pytest.approx(1.25), "gap": None, "reference_fid": None}
    at_teacher = learned_standing(
        [row("teacher", "teacher", 30.0, 0.0), *rows[1:]]
    )  # classic FID 26 < 30
    assert at_teacher["gs"]["gap"] is None
    state = {
        "config": {
            "fid_ref": "mnist",
            "fid_method": "eigh",
            "teacher": "t",
            "model": "m",
            "reference": "auto",
        },
        "grids": {"4": {}},
        "rows": {"4": [{**r, "seconds": 1.0, "n_samples": 8} for r in rows]},
    }
    table = format_sweep(state)
    assert "| gs | 0.75× · +0.67 · 0.75× |" in table and "| gas | 1.25× · – |" in table


def test_sweep_report_says_where_the_paper_start_wins_on_data_fid_only():
    """Planted rows: ``gs-3m`` has the lower data FID but the higher L1 (a line, with the
    reference FIDs); ``gas-3m`` loses on both (no line); a missing FID gives no line."""

    def row(name, fid, l1, reference_fid=None):
        return {"name": name, "fid": fid, "l1": l1, "reference_fid": reference_fid}

    rows = [
        row("gs", 22.0, 0.03, 9.0),
        row("gs-3m", 15.0, 0.06, 12.5),
        row("gas", 21.0, 0.03),
        row("gas-3m", 23.0, 0.05),
    ]
    assert start_disagreements("6", rows) == [
        "- NFE 6: data FID `gs-3m` 15.00, `gs` 22.00; L1 to the teacher `gs` 0.0300, `gs-3m` "
        "0.0600; FID against the reference's samples `gs` 9.00, `gs-3m` 12.50."
    ]
    assert start_disagreements("6", [row("gs", None, 0.03), row("gs-3m", 15.0, 0.06)]) == []
    assert start_disagreements("6", [row("gs", 22.0, 0.07), row("gs-3m", 15.0, 0.06)]) == []
