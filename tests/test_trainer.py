"""GS and GAS training on exact Gaussian mixtures: GS must beat its initialisation and the classic
solvers at the same NFE; GAS (on an image-shaped mixture) must move the solver and the
discriminator; a resumed run must equal an uninterrupted one bit for bit."""

import contextlib
import json
import math

import pytest
import torch

from gas_solver.config import load_config
from gas_solver.data.teacher import TeacherSet, generate_teacher_set
from gas_solver.errors import CheckpointMismatchError, ConfigError, GasSolverError
from gas_solver.models import GaussianMixtureModel
from gas_solver.sampling import load_sampler
from gas_solver.schedules import time_grid
from gas_solver.seeds import seeded_noise
from gas_solver.solvers.dpm_solver import ddim, dpm_solver_pp
from gas_solver.solvers.generalized import GeneralizedSolver
from gas_solver.solvers.ipndm import ipndm
from gas_solver.solvers.unipc import unipc
from gas_solver.training.ema import EMA
from gas_solver.training.trainer import Trainer, TrainSettings


def _model() -> GaussianMixtureModel:
    model = GaussianMixtureModel.ring(modes=6, radius=1.0, std=0.1)
    return model.requires_grad_(False)


def _teacher(model, path, seeds="0-399") -> TeacherSet:
    def run(model, noise, cond):  # many-step DPM-Solver++(3M): a near-exact ODE solution
        return dpm_solver_pp(model, noise, time_grid(model.schedule, 64, "logsnr"), order=3)

    return generate_teacher_set(
        model, path, seeds, run, {"name": "dpmpp3", "nfe": 64}, progress=False
    )


def _config(tmp_path, **kw) -> TrainSettings:
    base = dict(
        teacher=str(tmp_path / "teacher"), out=str(tmp_path / "run"), nfe=4, train_size=300,
        val_size=100, batch_size=24, iterations=300, init_grid="logsnr", val_every=0, checkpoint_every=100,
        log_every=10, device="cpu",
    )  # fmt: skip
    return load_config(TrainSettings, overrides={**base, **kw})


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


class _Stop(Exception):
    """Stands in for a kill right after a checkpoint."""


@pytest.mark.parametrize(
    "lr_decay, stop",
    [("constant", "extend"), ("constant", "interrupt"), ("cosine", "interrupt")],
)
def test_resume_is_bit_exact(teacher_dir, tmp_path, lr_decay, stop):
    """A run stopped at its checkpoint of iteration 20 and resumed ends where an uninterrupted
    40-iteration run ends; under the constant schedule also a 20-iteration run extended to 40
    (under the cosine one, extending changes the schedule, and resume says so)."""
    model = _model()
    (tmp_path / "teacher").symlink_to(teacher_dir)

    def trainer(out: str, iterations: int, **kw) -> Trainer:
        config = _config(tmp_path, out=str(tmp_path / out), iterations=iterations,
                         checkpoint_every=20, lr_decay=lr_decay, **kw)  # fmt: skip
        return Trainer(config, model, TeacherSet(teacher_dir))

    straight = trainer("a", 40)
    straight.run(progress=False)
    first = trainer("b", 20 if stop == "extend" else 40)
    if stop == "interrupt":
        step = first.train_step

        def step_until_20() -> dict:
            if first.iteration == 20:
                raise _Stop
            return step()

        first.train_step = step_until_20
    with contextlib.suppress(_Stop):
        first.run(progress=False)
    resumed = trainer("b", 40, resume=True)
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


def test_snapshots_are_the_ema_solver_at_their_iteration(teacher_dir, tmp_path):
    model = _model()
    for name, iterations in (("a", 40), ("b", 20)):
        config = _config(  # constant: run "a" at iteration 20 is run "b" at its end
            tmp_path, out=str(tmp_path / name), iterations=iterations, snapshot_every=20,
            lr_decay="constant",
        )  # fmt: skip
        Trainer(config, model, TeacherSet(teacher_dir)).run(progress=False)
    snapshots = sorted(p.name for p in (tmp_path / "a" / "snapshots").iterdir())
    assert snapshots == ["iter-000020", "iter-000040"]
    for snapshot, final in (("iter-000020", "b"), ("iter-000040", "a")):
        ours = GeneralizedSolver.load(tmp_path / "a" / "snapshots" / snapshot, model=model)
        theirs = GeneralizedSolver.load(tmp_path / final, model=model)
        for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
            assert torch.equal(p, q)
        assert ours.metadata["training"]["iteration"] == int(snapshot[5:])


@pytest.mark.parametrize("learn", ["timesteps", "no-offsets", "no-corrections"])
def test_learn_trains_only_its_parameters(teacher_dir, tmp_path, learn):
    """--learn (ablations): the named parameters move, the others keep their initial values in
    the solver and its EMA; the saved solver reloads with them."""
    from gas_solver.solvers.generalized import GeneralizedSolver
    from gas_solver.training.trainer import LEARNED

    (tmp_path / "teacher").symlink_to(teacher_dir)
    trainer = Trainer(
        _config(tmp_path, out=str(tmp_path / learn), iterations=5, learn=learn),
        _model(),
        TeacherSet(teacher_dir),
    )
    initial = {n: p.detach().clone() for n, p in trainer.solver.named_parameters()}
    trainer.run(progress=False)
    saved = GeneralizedSolver.load(tmp_path / learn)
    for name, param in trainer.solver.named_parameters():
        moved = not torch.equal(param, initial[name])
        assert moved == (name in LEARNED[learn]), name
        assert torch.equal(getattr(saved, name).to(initial[name]), initial[name]) != moved, name


def test_lr_times_and_the_cosine_schedule(teacher_dir, tmp_path):
    """--lr-times sets the step of the logits and offsets alone; --lr-decay cosine scales every
    group by ½(1 + cos(π i/I)) at iteration i (a pure function of it: resumes step alike)."""
    (tmp_path / "teacher").symlink_to(teacher_dir)
    config = _config(tmp_path, iterations=5, lr_times=1e-12, lr_decay="cosine")
    trainer = Trainer(config, _model(), TeacherSet(teacher_dir))
    initial = {n: p.detach().clone() for n, p in trainer.solver.named_parameters()}
    trainer.run(progress=False)
    moved = {n: (p - initial[n]).abs().max().item() for n, p in trainer.solver.named_parameters()}
    assert moved["mu_logit"] < 1e-9 and moved["t_couple"] < 1e-9
    assert moved["a_hat"] > 1e-4 and moved["c_hat"] > 1e-4
    factor = 0.5 * (1 + math.cos(math.pi * 4 / 5))  # the last step, iteration 4 of 5
    times, coefficients = (group["lr"] for group in trainer.optimizer.param_groups)
    assert math.isclose(times, 1e-12 * factor) and math.isclose(coefficients, 2e-3 * factor)


def test_init_solver_continues_from_a_trained_solver(teacher_dir, tmp_path):
    """--init-solver: the new run starts (solver and EMA) from the saved EMA parameters, so its
    error to the teacher starts where the first run ended; another NFE or t_eps is refused."""
    (tmp_path / "teacher").symlink_to(teacher_dir)
    model, teacher = _model(), TeacherSet(teacher_dir)
    first = Trainer(_config(tmp_path, out=str(tmp_path / "a"), iterations=60), model, teacher)
    path = first.run(progress=False)
    saved = GeneralizedSolver.load(path, model=model)

    second = Trainer(
        _config(tmp_path, out=str(tmp_path / "b"), init_solver=str(path)), model, teacher
    )
    for name, param in second.solver.named_parameters():
        assert torch.equal(param, getattr(saved, name)), name
    for param, shadow in zip(second.solver.parameters(), second.ema.shadow, strict=True):
        assert torch.equal(param, shadow)
    fresh = Trainer(_config(tmp_path, out=str(tmp_path / "c")), model, teacher)
    val = second.val_idx
    started = _error_to_teacher(lambda z: second.solver(model, z), teacher, val)
    ended = _error_to_teacher(lambda z: saved(model, z), teacher, val)
    assert started == ended < _error_to_teacher(lambda z: fresh.solver(model, z), teacher, val)

    with pytest.raises(CheckpointMismatchError, match="nfe=4"):
        Trainer(
            _config(tmp_path, out=str(tmp_path / "d"), nfe=5, init_solver=str(path)), model, teacher
        )
    with pytest.raises(ConfigError, match="t_eps"):
        Trainer(
            _config(tmp_path, out=str(tmp_path / "e"), t_eps=0.01, init_solver=str(path)),
            model,
            teacher,
        )
    with pytest.raises(ConfigError, match="theory=True"):  # the base of the coefficients differs
        Trainer(
            _config(tmp_path, out=str(tmp_path / "f"), theory=False, init_solver=str(path)),
            model,
            teacher,
        )


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
        ("loss", "l1", "distillation: l1"),
        ("distillation", "lpips2", "distillation"),
        ("texture_weight", -0.5, "texture_weight"),
        ("adv_weight", -1.0, "adv_weight"),
        ("disc_lr", 0.0, "disc_lr"),
        ("r1_gamma", -0.1, "r1_gamma"),
        ("disc_preset", "huge", "disc_preset"),
        ("batch_size", "x", "batch_size"),
        ("bogus", 1, "unknown field"),
    ],
)
def test_bad_config_names_the_field(tmp_path, field, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TrainSettings, overrides={"teacher": "t", field: value})


def test_seeded_noise_used_by_teacher_is_the_trainers_input(teacher_dir):
    teacher = TeacherSet(teacher_dir)
    torch.testing.assert_close(teacher.noise[:5], seeded_noise(range(5), (2,)))


# -- GAS --------------------------------------------------------------------------------------


def _image_model() -> GaussianMixtureModel:
    """An exact mixture whose samples are 1×8×8 images: four smooth patterns."""
    ramp = torch.linspace(-1, 1, 8)
    patterns = [ramp[:, None] * ramp[None, :], ramp[:, None].expand(8, 8), ramp.expand(8, 8)]
    means = torch.stack([*patterns, -patterns[0]])[:, None]
    return GaussianMixtureModel(means, 0.2).requires_grad_(False)


@pytest.fixture(scope="module")
def image_teacher_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gmm-image") / "teacher"
    _teacher(_image_model(), path, seeds="0-119")
    return path


def _gas_config(tmp_path, teacher_dir, **kw) -> TrainSettings:
    base = dict(
        teacher=str(teacher_dir), out=str(tmp_path / "gas"), loss="gas", nfe=3, train_size=100,
        val_size=20, batch_size=8, iterations=6, val_every=0, checkpoint_every=3, log_every=1,
        device="cpu", disc_preset="tiny", disc_lr=1e-3,
        lr_decay="constant",  # a run extended from 3 to 6 iterations steps as one of 6
    )  # fmt: skip
    return load_config(TrainSettings, overrides={**base, **kw})


def _records(path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_gas_changes_solver_and_discriminator_and_resumes_exactly(image_teacher_dir, tmp_path):
    model, teacher = _image_model(), TeacherSet(image_teacher_dir)
    straight = Trainer(
        _gas_config(tmp_path, image_teacher_dir, out=str(tmp_path / "a")), model, teacher
    )
    solver0 = [p.clone() for p in straight.solver.parameters()]
    disc0 = {k: v.clone() for k, v in straight.adversary.discriminator.state_dict().items()}
    straight.run(progress=False)
    assert any(
        not torch.equal(p, q) for p, q in zip(solver0, straight.solver.parameters(), strict=True)
    )
    disc = straight.adversary.discriminator.state_dict()
    assert all(not torch.equal(disc0[k], disc[k]) for k in disc if disc0[k].abs().sum() > 0)
    assert not straight.adversary.discriminator.training

    half = _gas_config(tmp_path, image_teacher_dir, out=str(tmp_path / "b"), iterations=3)
    Trainer(half, model, teacher).run(progress=False)
    rest = _gas_config(tmp_path, image_teacher_dir, out=str(tmp_path / "b"), resume=True)
    resumed = Trainer(rest, model, teacher)
    resumed.run(progress=False)

    for p, q in zip(straight.solver.parameters(), resumed.solver.parameters(), strict=True):
        assert torch.equal(p, q)
    for p, q in zip(straight.ema.shadow, resumed.ema.shadow, strict=True):
        assert torch.equal(p, q)
    a, b = straight.adversary, resumed.adversary
    for (k, p), q in zip(
        a.discriminator.state_dict().items(), b.discriminator.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), k
    for sa, sb in zip(
        a.optimizer.state_dict()["state"].values(),
        b.optimizer.state_dict()["state"].values(),
        strict=True,
    ):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert torch.equal(straight.fake_noise.get_state(), resumed.fake_noise.get_state())

    steps = [
        [
            {k: v for k, v in r.items() if k != "it_per_s"}
            for r in _records(tmp_path / d)
            if "loss" in r
        ]
        for d in ("a", "b")
    ]
    assert steps[0] == steps[1] and len(steps[0]) == 6  # every logged statistic, bit for bit
    step = steps[0][0]
    for key in (
        "disc_loss",
        "r1",
        "r2",
        "sign_real",
        "sign_fake",
        "sign_real_minus_fake",
        "distillation",
        "adversarial",
    ):
        assert key in step, key
    assert step["loss"] == pytest.approx(step["adversarial"] + step["distillation"], rel=1e-5)
    saved = json.loads((tmp_path / "a" / "solver.json").read_text())
    assert saved["training"]["config"]["loss"] == "gas"
    _, _, description = load_sampler(str(tmp_path / "a"), model=model)
    assert description["solver"] == "gas"  # what fid and compare report for this checkpoint


def test_the_automatic_distance_is_l1_texture_on_images_l1_elsewhere_and_recorded(
    image_teacher_dir, teacher_dir, tmp_path
):
    """``--distillation auto`` resolves per model before anything is trained; the resolved name
    is what the run records (config, summary), so a resume with another distance is refused."""
    model, teacher = _image_model(), TeacherSet(image_teacher_dir)
    settings = dict(loss="gs", iterations=2, checkpoint_every=2, texture_weight=3.0)
    trainer = Trainer(_gas_config(tmp_path, image_teacher_dir, **settings), model, teacher)
    assert trainer.config.distillation == "l1-texture"
    assert trainer.loss_fn.keywords == {"weight": 3.0}
    trainer.run(progress=False)
    assert json.loads((tmp_path / "gas" / "summary.json").read_text())["distillation"] == (
        "l1-texture"
    )
    again = _gas_config(tmp_path, image_teacher_dir, **settings, distillation="l1", resume=True)
    with pytest.raises(CheckpointMismatchError, match="distillation: stored 'l1-texture'"):
        Trainer(again, model, teacher).run(progress=False)
    ring = Trainer(_config(tmp_path, teacher=str(teacher_dir)), _model(), TeacherSet(teacher_dir))
    assert ring.config.distillation == "l1"


def test_gas_discriminator_can_start_from_a_checkpoint(image_teacher_dir, tmp_path):
    model, teacher = _image_model(), TeacherSet(image_teacher_dir)
    first = Trainer(_gas_config(tmp_path, image_teacher_dir, iterations=3), model, teacher)
    first.run(progress=False)
    again = Trainer(
        _gas_config(
            tmp_path,
            image_teacher_dir,
            out=str(tmp_path / "c"),
            disc_checkpoint=str(tmp_path / "gas" / "checkpoint.pt"),
        ),
        model,
        teacher,
    )
    for p, q in zip(
        first.adversary.discriminator.parameters(),
        again.adversary.discriminator.parameters(),
        strict=True,
    ):
        assert torch.equal(p, q)


def test_gas_needs_image_samples_that_fit_the_discriminator(
    teacher_dir, image_teacher_dir, tmp_path
):
    with pytest.raises(ConfigError, match="image-shaped"):
        Trainer(_gas_config(tmp_path, teacher_dir), _model(), TeacherSet(teacher_dir))
    with pytest.raises(ConfigError, match="made for 32"):
        Trainer(
            _gas_config(tmp_path, image_teacher_dir, disc_preset="r3gan-32"),
            _image_model(),
            TeacherSet(image_teacher_dir),
        )


def test_resume_refuses_another_method(image_teacher_dir, tmp_path):
    model, teacher = _image_model(), TeacherSet(image_teacher_dir)
    Trainer(_gas_config(tmp_path, image_teacher_dir, loss="gs", iterations=3), model, teacher).run(
        progress=False
    )
    gas = Trainer(_gas_config(tmp_path, image_teacher_dir, resume=True), model, teacher)
    with pytest.raises(CheckpointMismatchError, match="--loss gs"):
        gas.run(progress=False)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(image_teacher_dir, tmp_path):
    model, teacher = _image_model(), TeacherSet(image_teacher_dir)
    Trainer(_gas_config(tmp_path, image_teacher_dir, iterations=3), model, teacher).run(
        progress=False
    )
    good = (tmp_path / "gas" / "checkpoint.pt").read_bytes()
    trainer = Trainer(_gas_config(tmp_path, image_teacher_dir, resume=True), model, teacher)
    load = trainer.load_checkpoint

    def load_then_poison():
        load()
        with torch.no_grad():
            next(trainer.adversary.discriminator.parameters()).fill_(float("nan"))

    trainer.load_checkpoint = load_then_poison
    with pytest.raises(
        GasSolverError, match="non-finite discriminator loss at iteration 3.*checkpoint"
    ):
        trainer.run(progress=False)
    assert (tmp_path / "gas" / "checkpoint.pt").read_bytes() == good


def test_dict_conditions_are_replayed_by_index(tmp_path):
    """Text-style conditions (a dict of tensors) come back for exactly the batch's items."""
    model = _model()

    def run(model, noise, cond):
        return noise * 0.5

    def cond_fn(seeds):
        return {"input_ids": seeds[:, None].repeat(1, 3), "mask": seeds[:, None] % 2}

    teacher = generate_teacher_set(
        model, tmp_path / "teacher", "0-39", run, {"name": "half"}, cond_fn=cond_fn, progress=False
    )
    trainer = Trainer(_config(tmp_path, train_size=32, val_size=8, iterations=2), model, teacher)
    indices = trainer.batch_indices(1)
    _, _, cond = trainer.batch(indices)
    assert torch.equal(cond["input_ids"][:, 0], teacher.seeds[indices])
    assert torch.equal(cond["mask"][:, 0], teacher.seeds[indices] % 2)
    trainer.run(progress=False)
