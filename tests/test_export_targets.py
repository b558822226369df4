"""Export targets are an extension point: one entry in ``EXPORT_TARGETS`` is a new ``--format``."""

import csv
import json

import pytest

from gas_solver.cli import main
from gas_solver.export.table import SolverTable, solver_table
from gas_solver.export.targets import EXPORT_TARGETS
from gas_solver.models.base import DiffusionModel
from gas_solver.models.loading import load_model
from gas_solver.outputs import write_text
from gas_solver.solvers.generalized import GeneralizedSolver


class ToyCSVTarget:
    """A throw-away target: the solver's model-call timesteps, one per line of a CSV file."""

    name = "toy-csv"
    help = "the model-call timesteps as CSV (a test's target)"
    output_kind = "file"
    suffix = ".csv"

    def supports(self, solver: GeneralizedSolver, model: DiffusionModel) -> str | None:
        return None if model.conditioning == "none" else "toy-csv takes unconditional models"

    def write(
        self, solver: GeneralizedSolver, model: DiffusionModel, table: SolverTable, out: str
    ) -> str:
        rows = [f"{k},{t!r}" for k, t in enumerate(table.model_timesteps)]
        write_text(out, "\n".join(["step,timestep", *rows]) + "\n")
        return f"{out}: {table.nfe} timesteps"


@pytest.fixture(scope="module")
def solver(tmp_path_factory):
    """An untrained GS of the discrete-time mixture."""
    root = tmp_path_factory.mktemp("solver")
    teacher = ["teacher", "--model", "gmm-ring-discrete", "--seeds", "0-39", "--out"]
    assert main([*teacher, str(root / "t")]) == 0
    assert main([
        "train", "--teacher", str(root / "t"), "--out", str(root / "gs"), "--nfe", "2",
        "--iterations", "0", "--train-size", "30", "--val-size", "10", "--init-solver", "dpmpp3m",
    ]) == 0  # fmt: skip
    return root / "gs"


@pytest.fixture
def toy_target(monkeypatch):
    """``toy-csv`` registered for one test (and unregistered after it)."""
    monkeypatch.setitem(EXPORT_TARGETS, ToyCSVTarget.name, ToyCSVTarget())


def test_a_target_registered_at_run_time_exports_through_the_cli(
    solver, toy_target, tmp_path, capsys
):
    with pytest.raises(SystemExit):  # argparse's --help exits
        main(["export", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert "toy-csv: the model-call timesteps as CSV (a test's target)" in help_text

    out = tmp_path / "steps.csv"
    assert main(["export", "--solver", str(solver), "--format", "toy-csv", "--out", str(out)]) == 0
    assert f"{out}: 2 timesteps" in capsys.readouterr().out
    with open(out) as file:
        rows = list(csv.DictReader(file))
    assert [int(row["step"]) for row in rows] == [0, 1]
    timesteps = [float(row["timestep"]) for row in rows]
    assert timesteps[0] > timesteps[1] > 0  # from the noise end down

    assert main(["export", "--solver", str(solver), "--format", "toy-csv", "--out", "x.json"]) == 2
    assert "out: a toy-csv export is a .csv file" in capsys.readouterr().err


def test_an_unregistered_target_is_no_choice(capsys):
    assert "toy-csv" not in EXPORT_TARGETS
    with pytest.raises(SystemExit) as exited:
        main(["export", "--solver", "x", "--format", "toy-csv", "--out", "x.csv"])
    assert exited.value.code == 2
    assert "invalid choice: 'toy-csv'" in capsys.readouterr().err


@pytest.mark.parametrize("fmt, out", [("k-diffusion", "x.json"), ("diffusers", "sched")])
def test_a_classic_solver_is_refused_in_one_line(fmt, out, tmp_path, capsys):
    out = str(tmp_path / out)
    args = ["export", "--solver", "unipc:nfe=4", "--model", "gmm-ring", "--format", fmt]
    assert main([*args, "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "solver: 'unipc:nfe=4' is a classic solver; export takes a trained GS/GAS" in err
    assert not list(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize("conditioning, recorded", [("none", None), ("class", 3.0)])
def test_the_diffusers_target_records_the_guidance_of_conditional_models(
    solver, tmp_path, conditioning, recorded
):
    """Read from the model contract (``conditioning``, ``guidance_scale``), whatever the class."""
    model = load_model("gmm-ring-discrete")
    model.conditioning, model.guidance_scale = conditioning, 3.0
    gs = GeneralizedSolver.load(solver, model=model)
    target = EXPORT_TARGETS["diffusers"]
    assert target.supports(gs, model) is None
    line = target.write(gs, model, solver_table(gs, model, {"solver": "gas"}), str(tmp_path / "s"))
    assert line.startswith(f"{tmp_path / 's'}: GAS-2 as a diffusers scheduler")
    config = json.loads((tmp_path / "s" / "scheduler_config.json").read_text())
    assert config["guidance_scale"] == recorded
