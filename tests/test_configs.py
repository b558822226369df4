"""The presets in configs/: each loads into its command's config and validates, and the paper's
presets (configs/paper/<setting>/) carry the values the paper states (arXiv 2510.17699, App. D,
Tables 2 and 17; spec §3.3-3.5)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
import yaml

from gas_solver.commands.compare import CompareConfig
from gas_solver.commands.fid import FIDConfig
from gas_solver.commands.sample import SampleConfig
from gas_solver.commands.teacher import TeacherConfig
from gas_solver.commands.train import TrainConfig
from gas_solver.config import load_config
from gas_solver.errors import ConfigError
from gas_solver.schedules import DiscreteVPSchedule
from gas_solver.seeds import parse_seeds
from gas_solver.solvers.spec_text import parse_solver_spec
from gas_solver.training.discriminator_arch import preset_arch

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "configs"
PAPER = CONFIGS / "paper"
PRESETS = sorted(CONFIGS.rglob("*.yaml"))
COMMANDS = {
    "teacher": TeacherConfig,
    "train": TrainConfig,
    "sample": SampleConfig,
    "fid": FIDConfig,
    "compare": CompareConfig,
}


def command_of(path: Path) -> str:
    """The command a preset is for: the first word of its file name (``train-gas`` → train)."""
    return path.stem.split("-")[0]


def raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def load_preset(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Load a preset as the CLI would, in a folder where the files it names exist.

    Presets name user-supplied files (checkpoints, prompts) by relative paths. Validation checks
    only that a prompts file exists, so one is created; ``fid`` and ``sample`` presets leave the
    solver (or images) to the command line, so a GS checkpoint name is given as that flag would.
    """
    data = raw(path)
    monkeypatch.chdir(tmp_path)
    if data.get("prompts"):
        prompts = tmp_path / data["prompts"]
        prompts.parent.mkdir(parents=True, exist_ok=True)
        prompts.write_text("a photo of a cat\n")
    overrides = {}
    kind = command_of(path)
    if kind in ("fid", "sample") and not (data.get("solver") or data.get("images")):
        overrides["solver"] = "runs/x/solver.safetensors"
    return load_config(COMMANDS[kind], path, overrides)


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_preset_loads_and_validates(path, tmp_path, monkeypatch):
    assert command_of(path) in COMMANDS, f"{path.name}: name it after its command {list(COMMANDS)}"
    config = load_preset(path, tmp_path, monkeypatch)
    assert isinstance(config, COMMANDS[command_of(path)])
    if command_of(path) == "train":
        assert config.loss == ("gas" if "gas" in path.stem else "gs")


def test_there_are_presets():
    assert len(PRESETS) >= 30
    assert not list(PAPER.glob("*.yaml")), "paper presets live in one folder per setting"


# ---------------------------------------------------------------------------------------------
# What the paper states, per setting


@dataclasses.dataclass(frozen=True)
class Setting:
    teacher: dict  # the teacher solver spec's fields (paper App. D.2, Table 17)
    shape: tuple[int, int, int]  # the samples the solver and the discriminator see
    t_eps: float  # student's last time (authors' configs, spec §1)
    iterations: tuple[int, int]  # GS, GAS (App. D.4)
    batch_size: int
    train_size: tuple[int, int]  # GS, GAS (App. D.4, Table 12)
    val_size: int
    distillation: str  # LPIPS for pixels, L1 on latents (§3.2, §4)
    adv_weight: float  # 0.1 CIFAR-10, 1.0 elsewhere (App. D.4)
    disc_preset: str
    ref: str  # FID reference statistics file (App. D.4)
    eval_seeds: str  # evaluation seeds (App. D.4)
    guidance: float | None = None  # classifier-free guidance scale


UNIPC_EDM = dict(
    name="unipc", nfe=20, order=3, variant="bh1", grid="logsnr", lower_order_final=True, t_eps=1e-4
)
EDM = dict(iterations=(10000, 10000), batch_size=24, val_size=1000, distillation="lpips")
LDM = dict(
    shape=(3, 64, 64),
    t_eps=1e-3,
    iterations=(30000, 30000),
    batch_size=8,
    train_size=(1400, 5000),
    val_size=1000,
    distillation="l1",
    adv_weight=1.0,
    disc_preset="r3gan-64",
    eval_seeds="50000-99999",
)
SETTINGS = {
    "cifar10": Setting(
        teacher=UNIPC_EDM, shape=(3, 32, 32), t_eps=1e-3, train_size=(1400, 1400), adv_weight=0.1,
        disc_preset="r3gan-32", ref="cifar10-32x32.npz", eval_seeds="50000-99999", **EDM,
    ),
    "ffhq64": Setting(
        teacher=UNIPC_EDM, shape=(3, 64, 64), t_eps=1e-4, train_size=(1400, 5000), adv_weight=1.0,
        disc_preset="r3gan-64", ref="ffhq-64x64.npz", eval_seeds="50000-99999", **EDM,
    ),
    "afhqv2-64": Setting(
        teacher=UNIPC_EDM, shape=(3, 64, 64), t_eps=1e-4, train_size=(1400, 5000), adv_weight=1.0,
        disc_preset="r3gan-64", ref="afhqv2-64x64.npz", eval_seeds="50000-99999", **EDM,
    ),
    "lsun-bedroom256": Setting(
        teacher=dict(name="unipc", nfe=20, order=3, variant="bh2", grid="uniform",
                     lower_order_final=True, t_eps=1e-3),
        ref="VIRTUAL_lsun_bedroom256.npz", **LDM,
    ),
    "imagenet256": Setting(
        teacher=dict(name="unipc", nfe=10, order=3, variant="bh2", grid="quadratic",
                     lower_order_final=True, t_eps=1e-3),
        ref="VIRTUAL_imagenet256_labeled.npz", guidance=2.0, **LDM,
    ),
    "sd15-coco": Setting(
        teacher=dict(name="ipndm", order=2, grid_unit="sigma"),  # NFE and grid: per student NFE
        shape=(4, 64, 64), t_eps=1e-3, iterations=(1000, 2000), batch_size=4,
        train_size=(1400, 5000), val_size=128, distillation="l1", adv_weight=1.0,
        disc_preset="r3gan-64", ref="COCO_30k.npz", eval_seeds="30000-59999", guidance=7.5,
    ),
}  # fmt: skip

# SD teachers: student NFE n learns from iPNDM at NFE n+1 on the GITS grid (Table 17, App. D.1).
# The presets give the authors' EDM sigmas; these are the paper's times t for the same grids.
SD_GITS_T = {
    5: [1, 0.7669, 0.4839, 0.2341, 0.0676, 0.001],
    6: [1, 0.7836, 0.5504, 0.3340, 0.1508, 0.0343, 0.001],
    7: [1, 0.8502, 0.6004, 0.4006, 0.2175, 0.0843, 0.0176, 0.001],
    8: [1, 0.8502, 0.6504, 0.4672, 0.3007, 0.1675, 0.0676, 0.0176, 0.001],
}
SD_TEACHER_FILES = {n: f"teacher-nfe{n}.yaml" for n in SD_GITS_T}


def teacher_files(setting: str) -> list[Path]:
    files = sorted((PAPER / setting).glob("teacher*.yaml"))
    assert files, f"{setting}: no teacher preset"
    return files


def guidance_of(model: str) -> float | None:
    match = re.search(r":guidance=([0-9.]+)$", model)
    return float(match.group(1)) if match else None


def test_every_setting_has_its_presets():
    assert sorted(p.name for p in PAPER.iterdir() if p.is_dir()) == sorted(SETTINGS)
    for setting in SETTINGS:
        names = {p.name for p in (PAPER / setting).glob("*.yaml")}
        assert {"train-gs.yaml", "train-gas.yaml", "fid.yaml"} <= names, setting
        if setting == "sd15-coco":
            assert set(SD_TEACHER_FILES.values()) <= names
        else:
            assert "teacher.yaml" in names


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_teacher_presets_carry_the_papers_solver(setting, tmp_path, monkeypatch):
    expected = SETTINGS[setting]
    for path in teacher_files(setting):
        config = load_preset(path, tmp_path, monkeypatch)
        spec = parse_solver_spec(config.solver)
        for key, value in expected.teacher.items():
            assert getattr(spec, key) == value, (path.name, key)
        assert guidance_of(config.model) == expected.guidance, path.name
        seeds = parse_seeds(config.seeds)
        assert seeds[0] == 0  # teacher seeds start at 0 (evaluation seeds follow them)
        # training takes the first items and validation the last: both must fit
        assert len(seeds) >= max(expected.train_size) + expected.val_size
        assert not set(seeds) & set(parse_seeds(expected.eval_seeds)), path.name


def test_sd_teachers_are_ipndm_at_student_nfe_plus_one_on_the_gits_grids(tmp_path, monkeypatch):
    sd = DiscreteVPSchedule.from_beta_range(0.00085, 0.012, 1000, "scaled_linear")
    for nfe, times in SD_GITS_T.items():
        config = load_preset(PAPER / "sd15-coco" / SD_TEACHER_FILES[nfe], tmp_path, monkeypatch)
        spec = parse_solver_spec(config.solver)
        assert spec.nfe == nfe
        assert config.out.endswith(f"teacher-nfe{nfe}")
        grid = spec.make_grid(sd)
        assert torch.allclose(grid, torch.tensor(times, dtype=torch.float64), atol=1e-4)
    # seeds 0-5999: the 6000 items SD students are trained on (spec §3.4)
    assert parse_seeds(config.seeds) == list(range(6000))
    assert config.prompts == "data/coco_captions.txt"


def test_sd_teacher_needs_its_prompts_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/coco_captions.txt here
    with pytest.raises(ConfigError, match="prompts"):
        load_config(TeacherConfig, PAPER / "sd15-coco" / "teacher-nfe5.yaml")


@pytest.mark.parametrize("method", ["gs", "gas"])
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_train_presets_carry_the_papers_values(setting, method):
    expected = SETTINGS[setting]
    config = load_config(TrainConfig, PAPER / setting / f"train-{method}.yaml")
    gas = method == "gas"
    assert config.loss == method
    assert config.nfe == 4
    # the paper's start: DPM-Solver++(3M) on a time-uniform grid (train's own default is auto)
    assert config.init_solver == "dpmpp3m" and config.init_grid == "uniform"
    assert config.t_eps == pytest.approx(expected.t_eps)
    assert config.iterations == expected.iterations[gas]
    assert config.batch_size == expected.batch_size
    assert config.train_size == expected.train_size[gas]
    assert config.val_size == expected.val_size
    assert config.distillation == expected.distillation
    assert (config.lr, config.grad_clip, config.ema_decay) == (1e-3, 1.0, 0.999)
    assert config.out == f"runs/{setting}/{method}-nfe4"
    if gas:
        assert config.adv_weight == pytest.approx(expected.adv_weight)
        assert config.disc_preset == expected.disc_preset
        assert (config.disc_lr, config.r1_gamma) == (1e-5, 0.2)
        preset_arch(config.disc_preset, expected.shape)  # the architecture fits the samples


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_gs_and_gas_presets_differ_only_where_the_paper_does(setting):
    gs, gas = (raw(PAPER / setting / f"train-{m}.yaml") for m in ("gs", "gas"))
    gas_only = {"adv_weight", "disc_preset", "disc_lr", "r1_gamma"}
    pretrained = {
        "cifar10": "r3gan-cifar10",
        "ffhq64": "r3gan-ffhq-64x64",
        "afhqv2-64": "r3gan-ffhq-64x64",
    }
    may_differ = {"out", "loss", "train_size", "iterations"}
    if setting in pretrained:  # the paper's pretrained R3GAN discriminators (App. D.4)
        gas_only.add("disc_checkpoint")
        assert (
            gas["disc_checkpoint"] == f"downloads/{pretrained[setting]}/network-snapshot-final.pkl"
        )
    assert set(gas) - set(gs) == gas_only
    assert {k for k in gs if gs[k] != gas[k]} <= may_differ


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_train_presets_read_what_their_teacher_preset_writes(setting):
    config = load_config(TrainConfig, PAPER / setting / "train-gs.yaml")
    name = SD_TEACHER_FILES[config.nfe + 1] if setting == "sd15-coco" else "teacher.yaml"
    assert config.teacher == raw(PAPER / setting / name)["out"]
    gas = load_config(TrainConfig, PAPER / setting / "train-gas.yaml")
    assert gas.teacher == config.teacher


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_evaluation_presets_follow_the_papers_protocol(setting, tmp_path, monkeypatch):
    expected = SETTINGS[setting]
    fid = load_preset(PAPER / setting / "fid.yaml", tmp_path, monkeypatch)
    assert Path(fid.ref).name == expected.ref
    sample_path = PAPER / setting / "sample.yaml"
    if sample_path.exists():  # latent models: `sample` writes the decoded PNGs, `fid` reads them
        sample = load_preset(sample_path, tmp_path, monkeypatch)
        seeds = sample.seeds
        assert not sample.npz and sample.png
        if setting == "sd15-coco":
            assert sample.prompts == "data/coco_captions.txt"
    else:  # pixel models: `fid --solver` samples the seeds itself
        seeds = fid.seeds
    assert seeds == expected.eval_seeds
    assert len(parse_seeds(seeds)) == (30000 if setting == "sd15-coco" else 50000)


@pytest.mark.parametrize("setting", ["cifar10", "ffhq64", "afhqv2-64"])
def test_compare_presets_match_their_setting(setting):
    teacher = load_config(TeacherConfig, PAPER / setting / "teacher.yaml")
    compare = load_config(CompareConfig, PAPER / setting / "compare.yaml")
    assert compare.model == teacher.model
    assert parse_solver_spec(compare.teacher) == parse_solver_spec(teacher.solver)
    assert not set(parse_seeds(compare.seeds)) & set(parse_seeds(teacher.seeds))
    assert Path(compare.fid_ref).name == SETTINGS[setting].ref


def test_presets_are_documented():
    readme = (CONFIGS / "README.md").read_text()
    guide = (ROOT / "docs" / "reproduce-paper.md").read_text()
    for setting in SETTINGS:
        assert f"paper/{setting}/" in readme, setting
    for path in sorted(PAPER.rglob("*.yaml")):
        assert str(path.relative_to(ROOT)) in guide, (
            f"{path} is not used in docs/reproduce-paper.md"
        )


def test_none_switches_an_optional_setting_off():
    """`--fid-ref none` on the command line, or `fid_ref: none` in YAML, means no FID."""
    base = {"model": "mnist32", "solvers": "ddim:nfe=4"}
    for given, expected in (("none", None), ("NULL", None), ("mnist", "mnist")):
        config = load_config(CompareConfig, overrides={**base, "fid_ref": given})
        assert config.fid_ref == expected
    with pytest.raises(ConfigError, match="nfe"):
        load_config(TrainConfig, overrides={"teacher": "t", "nfe": "none"})
