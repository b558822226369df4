"""GS training on the exact Gaussian mixture: it must beat its initialisation and the classic
solvers at the same NFE, and a resumed run must equal an uninterrupted one bit for bit."""

import json

import pytest
import torch

from gas_solver.config import load_config
from gas_solver.data.teacher import TeacherSet, generate_teacher_set
from gas_solver.errors import ConfigError
from gas_solver.models import GaussianMixtureModel
from gas_solver.schedules import time_grid
from gas_solver.seeds import seeded_noise
from gas_solver.solvers.dpm_solver import ddim, dpm_solver_pp
from gas_solver.solvers.generalized import GeneralizedSolver
from gas_solver.solvers.ipndm import ipndm
from gas_solver.solvers.unipc import unipc
from gas_solver.training.ema import EMA
from gas_solver.training.trainer import TrainConfig, Trainer


def _model() -> GaussianMixtureModel:
    model = GaussianMixtureModel.ring(modes=6, radius=1.0, std=0.1)
    return model.requires_grad_(False)


def _teacher(model, path, seeds="0-399") -> TeacherSet:
    def run(model, noise, cond):  # many-step DPM-Solver++(3M): a near-exact ODE solution
        return dpm_solver_pp(model, noise, time_grid(model.schedule, 64, "logsnr"), order=3)

    return generate_teacher_set(
        model, path, seeds, run, {"name": "dpmpp3", "nfe": 64}, progress=False
    )


def _config(tmp_path, **kw) -> TrainConfig:
    base = dict(
        teacher=str(tmp_path / "teacher"), out=str(tmp_path / "run"), nfe=4, train_size=300,
        val_size=100, batch_size=24, iterations=300, init_grid="logsnr", val_every=0, checkpoint_every=100,
        log_every=10, device="cpu",
    )  # fmt: skip
    return load_config(TrainConfig, overrides={**base, **kw})


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gmm") / "teacher"
    _teacher(_model(), path)
    return path


def _error_to_teacher(sample_fn, teacher: TeacherSet, val_idx) -> float:
    with torch.no_grad():
        out = sample_fn(teacher.noise[val_idx])
    return (out - teacher.target[val_idx]).abs().mean().item()


def test_gs_training_beats_its_init_and_every_classic_solver(teacher_dir, tmp_path):
    model = _model()
    teacher = TeacherSet(teacher_dir)
    (tmp_path / "teacher").symlink_to(teacher_dir)
    trainer = Trainer(_config(tmp_path), model, teacher)
    _, val_idx = trainer.train_idx, trainer.val_idx
    init = _error_to_teacher(lambda z: trainer.solver(model, z), teacher, val_idx)
    path = trainer.run(progress=False)
    trained = GeneralizedSolver.load(path, model=model, nfe=4)
    learned = _error_to_teacher(lambda z: trained(model, z), teacher, val_idx)

    classic = {}
    for kind in ("logsnr", "uniform", "edm", "quadratic"):
        grid = time_grid(model.schedule, 4, kind)
        classic[f"ddim/{kind}"] = lambda z, g=grid: ddim(model, z, g)
        classic[f"dpmpp3/{kind}"] = lambda z, g=grid: dpm_solver_pp(model, z, g, order=3)
        classic[f"unipc3/{kind}"] = lambda z, g=grid: unipc(model, z, g, order=3)
        classic[f"ipndm/{kind}"] = lambda z, g=grid: ipndm(model, z, g, order=4)
    errors = {name: _error_to_teacher(fn, teacher, val_idx) for name, fn in classic.items()}
    best = min(errors, key=errors.get)
    assert learned * 2 <= init, (learned, init)
    assert learned < errors[best], (learned, best, errors[best])


def test_resume_is_bit_exact(teacher_dir, tmp_path):
    model = _model()
    (tmp_path / "teacher").symlink_to(teacher_dir)
    straight = Trainer(
        _config(tmp_path, out=str(tmp_path / "a"), iterations=40, checkpoint_every=20),
        model,
        TeacherSet(teacher_dir),
    )
    straight.run(progress=False)

    first = Trainer(
        _config(tmp_path, out=str(tmp_path / "b"), iterations=20, checkpoint_every=20),
        model,
        TeacherSet(teacher_dir),
    )
    first.run(progress=False)
    resumed = Trainer(
        _config(tmp_path, out=str(tmp_path / "b"), iterations=40, checkpoint_every=20, resume=True),
        model,
        TeacherSet(teacher_dir),
    )
    resumed.run(progress=False)

    for p, q in zip(straight.solver.parameters(), resumed.solver.parameters(), strict=True):
        assert torch.equal(p, q)
    for p, q in zip(straight.ema.shadow, resumed.ema.shadow, strict=True):
        assert torch.equal(p, q)
    losses = [
        [
            r["loss"]
            for r in map(json.loads, (tmp_path / d / "metrics.jsonl").read_text().splitlines())
            if "loss" in r
        ]
        for d in ("a", "b")
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 4


def test_batches_cover_each_epoch_once(teacher_dir, tmp_path):
    (tmp_path / "teacher").symlink_to(teacher_dir)
    trainer = Trainer(
        _config(tmp_path, train_size=48, batch_size=8), _model(), TeacherSet(teacher_dir)
    )
    epoch = torch.cat([trainer.batch_indices(i) for i in range(6)])
    assert sorted(epoch.tolist()) == list(range(48))
    assert torch.equal(trainer.batch_indices(3), trainer.batch_indices(3))


def test_ema_warmup_matches_formula():
    p = torch.nn.Parameter(torch.zeros(1))
    ema = EMA([p], decay=0.999)
    expected = 0.0
    for n in range(1, 30):
        with torch.no_grad():
            p.fill_(float(n))
        ema.update()
        d = min(0.999, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * n
        assert ema.shadow[0].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("nfe", 0, "nfe"),
        ("lr", -1.0, "lr"),
        ("loss", "lpips2", "loss"),
        ("batch_size", "x", "batch_size"),
        ("bogus", 1, "unknown field"),
    ],
)
def test_bad_config_names_the_field(tmp_path, field, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, overrides={"teacher": "t", field: value})


def test_seeded_noise_used_by_teacher_is_the_trainers_input(teacher_dir):
    teacher = TeacherSet(teacher_dir)
    torch.testing.assert_close(teacher.noise[:5], seeded_noise(range(5), (2,)))
