"""A GS can start as any one-call-per-step classic solver, exactly, and ``train`` starts from the
best of them: the untrained GS samples equal the classic solver's own (mixtures in float64, the
bundled ``mnist32`` in float32), ``auto`` finds a planted best, and training never hands back a
solver worse than its start."""

import json

import pytest
import torch

from gas_solver import DiscreteVPSchedule, FlowSchedule, GaussianMixtureModel, LinearVPSchedule
from gas_solver.config import load_config
from gas_solver.data.teacher import TeacherSet, generate_teacher_set
from gas_solver.errors import ConfigError
from gas_solver.models.loading import load_model
from gas_solver.solvers.generalized import GeneralizedSolver
from gas_solver.solvers.linear_form import classic_history
from gas_solver.solvers.registry import auto_candidates
from gas_solver.solvers.spec_text import parse_solver_spec
from gas_solver.training.start import FINALISTS
from gas_solver.training.trainer import Trainer, TrainSettings

SCHEDULES = {
    "linear": LinearVPSchedule,
    "discrete": lambda: DiscreteVPSchedule.from_beta_range(0.00085, 0.012),
    "flow": lambda: FlowSchedule(shift=3.0),
}
KINDS = ("ddim", "dpmpp:order=1", *auto_candidates(), "unipc:order=3,lower_order_final=false")
GRIDS = ("uniform", "logsnr", "quadratic", "edm")


def mixture(schedule) -> GaussianMixtureModel:
    means = torch.tensor([[1.0, 0.5, -0.3], [-0.8, 0.2, 0.9], [0.1, -1.0, 0.4]])
    return GaussianMixtureModel(means, stds=0.2, schedule=schedule).requires_grad_(False)


@pytest.fixture
def float64():
    """Solver parameters in float64 (a float32 logit moves the grid by ~1e-7)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def relative(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("own_theory", [True, False])
def test_untrained_gs_equals_every_classic_solver_in_float64(schedule, own_theory, float64):
    sched = SCHEDULES[schedule]()
    model = mixture(sched).double()
    noise = torch.randn(6, 3, dtype=torch.float64)
    for kind in KINDS:
        for grid in GRIDS:
            for nfe in (1, 2, 3, 6):
                spec = parse_solver_spec(kind, nfe=nfe, grid=grid)
                gs = GeneralizedSolver.from_classic(spec, sched, own_theory=own_theory)
                with torch.no_grad():
                    error = relative(gs(model, noise), spec(model, noise))
                assert error < 1e-10, f"{spec.label}: {error:.2e}"


@pytest.mark.parametrize("name", ["mnist32", "mnist32-vp"])
def test_untrained_gs_equals_classic_solvers_on_the_bundled_model_in_float32(name):
    """Against the classic solver's exact (float64) samples on the GS's grid (its float32 logits
    move times near t_eps by ~1e-6 relative): within 1e-5, or, where the classic solver itself
    is further off in float32 (iPNDM's ε̂ route on the flow model's first step, α = 1e-3: 3e-5;
    UniPC-3 on mnist32-vp's logSNR grid: 1.1e-5), no further off than it."""
    model = load_model(name)
    noise = torch.randn(3, *model.sample_shape, generator=torch.Generator().manual_seed(0))

    def distance(ours, exact):
        return ((ours.double() - exact).norm() / exact.norm()).item()

    for kind in ("ddim", "dpmpp:order=2", "unipc:order=3", "unipc:order=2,variant=bh2", "ipndm"):
        for grid in ("uniform", "logsnr", "quadratic"):
            spec = parse_solver_spec(kind, nfe=4, grid=grid)
            solvers = [GeneralizedSolver.from_classic(spec, model.schedule, own_theory=own)
                       for own in (True, False)]  # fmt: skip
            grid_t = solvers[0].initial_grid  # the same for both theories
            with torch.no_grad():
                ours = [gs(model, noise) for gs in solvers]
                theirs = spec.run(model, noise, grid_t)
                exact = spec.run(model.double(), noise.double(), grid_t)
            model.float()
            bound = max(1e-5, 1.2 * distance(theirs, exact))
            for gs, sample in zip(solvers, ours, strict=True):
                assert torch.equal(gs.initial_grid, grid_t)
                error = distance(sample, exact)
                assert error < bound, f"{name} {spec.label} {gs.theory_label}: {error:.2e}"


def test_own_theory_follows_the_grid_and_frozen_theory_does_not(float64):
    sched = FlowSchedule(shift=3.0)
    model = mixture(sched).double()
    noise = torch.randn(6, 3, dtype=torch.float64)
    spec = parse_solver_spec("unipc:order=3,grid=uniform", nfe=5)
    for theory in (True, False):
        gs = GeneralizedSolver.from_classic(spec, sched, theory=theory)
        with torch.no_grad():
            gs.mu_logit.add_(torch.tensor([0.3, -0.2, 0.1, 0.25], dtype=torch.float64))
            moved = gs.timesteps()
            out = gs(model, noise)
        on_moved = spec.run(model, noise, moved)
        assert (relative(out, on_moved) < 1e-10) == theory


def test_classic_weights_are_differentiable_in_the_grid():
    sched = LinearVPSchedule()
    spec = parse_solver_spec("unipc:order=3,grid=logsnr", nfe=4)
    grid = spec.make_grid(sched).requires_grad_(True)

    def output_weights(g):
        return classic_history(spec, sched, g)[-1]

    jacobian = torch.autograd.functional.jacobian(output_weights, grid)
    eps = 1e-6
    bumped = grid.detach().clone()
    bumped[2] += eps
    numeric = (output_weights(bumped) - output_weights(grid.detach())) / eps
    torch.testing.assert_close(jacobian[:, 2], numeric, rtol=1e-4, atol=1e-7)


def test_a_solver_the_gs_cannot_represent_is_refused_in_one_line():
    spec = parse_solver_spec("heun:nfe=4,grid=edm")
    with pytest.raises(ConfigError, match="heun makes 2 model calls per step") as err:
        GeneralizedSolver.from_classic(spec, LinearVPSchedule())
    assert "\n" not in str(err.value)


# -- train: --init-solver SPEC / auto, and no silent regression ---------------------------------

PLANTED = "ipndm:nfe=3,grid=quadratic,order=3,variant=variable"


@pytest.fixture(scope="module")
def planted_teacher(tmp_path_factory) -> TeacherSet:
    """A teacher set made by one of the candidates: ``auto`` must find it (its loss is 0)."""
    model = GaussianMixtureModel.ring(modes=6, radius=1.0, std=0.1).requires_grad_(False)
    spec = parse_solver_spec(PLANTED)
    path = tmp_path_factory.mktemp("planted") / "teacher"
    return generate_teacher_set(
        model, path, "0-119", lambda m, z, c: spec(m, z, c), spec.to_dict(), progress=False
    )


def _settings(teacher: TeacherSet, out, **kw) -> TrainSettings:
    base = dict(
        teacher=str(teacher.path), out=str(out), nfe=3, train_size=80, val_size=40,
        batch_size=16, iterations=0, val_every=0, checkpoint_every=10, device="cpu",
    )  # fmt: skip
    return load_config(TrainSettings, overrides={**base, **kw})


def _ring():
    return GaussianMixtureModel.ring(modes=6, radius=1.0, std=0.1).requires_grad_(False)


def test_auto_starts_from_the_planted_best_and_records_it(planted_teacher, tmp_path):
    model = _ring()
    path = Trainer(_settings(planted_teacher, tmp_path / "run"), model, planted_teacher).run(False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    start = summary["start"]
    assert start["solver"] == parse_solver_spec(PLANTED).label
    assert start["loss"] == min(start["candidates"].values()) < 1e-6
    assert len(start["screened"]) == len(auto_candidates()) * len(GRIDS)
    assert len(start["candidates"]) == FINALISTS
    assert GeneralizedSolver.load(path).metadata["training"]["start"]["solver"] == start["solver"]


def test_iterations_0_writes_the_classic_solver_itself(planted_teacher, tmp_path):
    model = _ring().double()
    spec = parse_solver_spec("unipc:order=2,variant=bh2,grid=edm", nfe=3)
    settings = _settings(planted_teacher, tmp_path / "run", init_solver=spec.to_string())
    path = Trainer(settings, model, planted_teacher).run(progress=False)
    gs = GeneralizedSolver.load(path, model=model).double()
    noise = torch.randn(16, 2, dtype=torch.float64)
    with torch.no_grad():
        assert relative(gs(model, noise), spec(model, noise)) < 1e-5  # float32 parameters


def test_a_run_that_makes_its_start_worse_keeps_the_start(planted_teacher, tmp_path, caplog):
    model = _ring()
    settings = _settings(planted_teacher, tmp_path / "run", iterations=20, lr=0.3, ema_decay=0.0)
    trainer = Trainer(settings, model, planted_teacher)
    start = {name: p.detach().clone() for name, p in trainer.solver.named_parameters()}
    with caplog.at_level("WARNING"):
        path = trainer.run(progress=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["kept"] == "start" and "keeping the start" in caplog.text
    assert summary["final_validation"] == summary["initial_validation"]
    assert summary["trained_validation"]["val_loss"] > summary["initial_validation"]["val_loss"]
    saved = GeneralizedSolver.load(path, model=model)
    for name, value in saved.named_parameters():
        torch.testing.assert_close(value, start[name], rtol=0, atol=0)


def test_init_solver_names_its_own_nfe_or_is_refused(planted_teacher, tmp_path):
    settings = _settings(planted_teacher, tmp_path / "run", init_solver="ddim:nfe=5")
    with pytest.raises(ConfigError, match="makes 5 model calls, the run --nfe 3"):
        Trainer(settings, _ring(), planted_teacher)


def test_readme_python_api_snippet_runs():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    snippet = text.split("## Python API\n", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(snippet.replace("callback=print", "callback=None"), namespace)
    model, noise = namespace["model"], namespace["noise"]
    with torch.no_grad():
        ours = namespace["gs_unipc"](model, noise)
    assert relative(ours, namespace["unipc"](model, noise)) < 1e-5
