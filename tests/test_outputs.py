"""The output layer (issue #29): every command checks where it writes before any work, writes
atomically, never replaces a link or a special file, deletes only what its runs recorded, takes
the folder lock, and stops on Ctrl-C / SIGTERM with one line."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gas_solver.cli import main
from gas_solver.errors import OutputError
from gas_solver.outputs import (
    RUN_RECORD,
    atomic_write,
    check_output,
    clear_earlier_run,
    folder_lock,
    write_files,
    write_text,
)

SAMPLE = ["sample", "--model", "gmm-digits", "--solver", "ddim:nfe=2", "--seeds", "0-3"]
COMPARE = ["compare", "--model", "gmm-ring", "--solvers", "ddim:nfe=2", "--seeds", "50000-50063"]


def _ctrl_c_as_at_a_terminal() -> None:
    """In the child before it runs: SIGINT as a terminal delivers it (a test run in the background
    inherits SIGINT ignored, and Python keeps an ignored SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _gas(*args, cwd, **popen):
    command = [sys.executable, "-m", "gas_solver.cli", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if popen:
        return subprocess.Popen(
            command, cwd=cwd, env=env, text=True, preexec_fn=_ctrl_c_as_at_a_terminal, **popen
        )
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _one_line_error(capsys, *fragments, alone=True):
    """The error line that ends stderr (``alone``: all of stderr, the refusal came before work)."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines[-1].startswith("gas-solver "), err
    assert len(lines) == 1 or not alone, err
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


@pytest.fixture(scope="module")
def solver(tmp_path_factory):
    """An untrained GS of the discrete-time mixture (exports to both formats)."""
    root = tmp_path_factory.mktemp("solver")
    assert (
        main(
            ["teacher", "--model", "gmm-ring-discrete", "--seeds", "0-39", "--out", str(root / "t")]
        )
        == 0
    )
    assert main([
        "train", "--teacher", str(root / "t"), "--out", str(root / "gs"), "--nfe", "2",
        "--iterations", "0", "--train-size", "30", "--val-size", "10", "--init-solver", "dpmpp3m",
    ]) == 0  # fmt: skip
    return root / "gs"


# -- who owns an output folder -------------------------------------------------------------------


def test_a_run_deletes_its_own_outputs_and_never_the_users(tmp_path, capsys):
    out = tmp_path / "s"
    assert main([*SAMPLE, "--out", str(out)]) == 0
    assert main([*SAMPLE[:-1], "10-11", "--out", str(out)]) == 0  # a fresh run replaces its own
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000010.png", "000011.png"]
    recorded = (out / RUN_RECORD).read_text().split()
    assert "images/000010.png" in recorded and "sample.json" in recorded
    (out / "images" / "holiday.jpg").write_bytes(b"the user's photo")
    capsys.readouterr()
    assert main([*SAMPLE, "--out", str(out)]) == 2
    _one_line_error(capsys, "did not write", "images/holiday.jpg", "move them away")
    assert (out / "images" / "holiday.jpg").read_bytes() == b"the user's photo"
    assert (out / "images" / "000010.png").is_file()  # refused before anything was removed


def test_train_refuses_a_folder_holding_the_users_files(solver, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "val").mkdir(parents=True)
    (out / "val" / "notes.txt").write_text("mine")
    (out / "summary.json").write_text("{}")
    teacher = solver.parent / "t"
    assert main([
        "train", "--teacher", str(teacher), "--out", str(out), "--nfe", "2", "--iterations", "0",
        "--train-size", "30", "--val-size", "10", "--init-solver", "dpmpp3m",
    ]) == 2  # fmt: skip
    _one_line_error(capsys, "summary.json", "val/notes.txt")
    assert (out / "val" / "notes.txt").read_text() == "mine"
    assert (out / "summary.json").read_text() == "{}"


def test_clearing_removes_recorded_files_of_nested_runs_and_empty_folders(tmp_path):
    with folder_lock(tmp_path / "top") as top:
        write_text(top / "a" / "b" / "report.md", "x")
        with folder_lock(top / "inner") as inner:
            write_text(inner / "solver.json", "{}")
        assert (inner / RUN_RECORD).read_text() == "solver.json\n"
        assert (top / RUN_RECORD).read_text() == "a/b/report.md\n"
    with folder_lock(tmp_path / "top", fresh=True) as top:
        clear_earlier_run(top)
        assert sorted(p.name for p in top.iterdir()) == [".gas-solver.lock"]


def test_a_hostile_run_record_deletes_nothing_outside_the_folder(tmp_path):
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.png").write_text("keep me too")
    out = tmp_path / "out"
    out.mkdir()
    (out / "linked").symlink_to(tmp_path / "elsewhere")  # a folder the user linked in
    lines = [str(outside), "../precious.txt", "linked/x.png", "linked"]
    (out / RUN_RECORD).write_text("\n".join(lines) + "\n")
    with folder_lock(out, fresh=True):
        clear_earlier_run(out)
    assert outside.read_text() == "keep me"
    assert (tmp_path / "elsewhere" / "x.png").read_text() == "keep me too"


# -- checked before any work ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, why",
    [
        (lambda p: p.write_text("x"), "not a folder"),
        (lambda p: p.symlink_to(p.parent / "nowhere"), "symbolic link to nothing"),
        (lambda p: None, "longer than file systems allow"),
    ],
    ids=["a file", "a dangling link", "a name too long"],
)
@pytest.mark.parametrize("command", ["compare", "sample", "export"])
def test_output_folders_are_checked_before_any_work(solver, tmp_path, capsys, make, why, command):
    out = tmp_path / ("x" * 300 if "long" in why else "out")
    make(out)
    args = {
        "compare": [*COMPARE, "--out", str(out)],
        "sample": [*SAMPLE, "--out", str(out)],
        "export": ["export", "--solver", str(solver), "--format", "diffusers", "--out", str(out)],
    }[command]
    before = sorted(tmp_path.iterdir())
    started = time.perf_counter()
    assert main(args) == 2
    _one_line_error(capsys, why)
    assert sorted(tmp_path.iterdir()) == before
    assert time.perf_counter() - started < 5  # refused at validation, nothing loaded or sampled


def test_a_file_output_under_a_file_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    args = ["fid", "--images", "digits", "--num-images", "16", "--save-ref"]
    assert main([*args, str(tmp_path / "afile" / "x.npz")]) == 2
    _one_line_error(capsys, "afile", "is not a folder")


def test_read_only_and_full_file_systems_are_refused(tmp_path, monkeypatch):
    if os.geteuid() != 0:  # without root, a folder without write permission stands in
        (tmp_path / "ro").mkdir(mode=0o555)
        with pytest.raises(OutputError, match="Permission denied"):
            check_output(tmp_path / "ro" / "out", "folder")
    real = os.statvfs

    class Full:
        def __init__(self, info, **change):
            self._info, self._change = info, change

        def __getattr__(self, name):
            return self._change.get(name, getattr(self._info, name))

    monkeypatch.setattr(os, "statvfs", lambda p: Full(real(p), f_flag=os.ST_RDONLY))
    with pytest.raises(OutputError, match="Read-only file system; choose a folder"):
        check_output(tmp_path / "c", "folder")
    monkeypatch.setattr(os, "statvfs", lambda p: Full(real(p), f_bavail=0))
    with pytest.raises(OutputError, match="No space left on device; free some space"):
        check_output(tmp_path / "c.json", "file")


# -- links and special files are never replaced --------------------------------------------------


def _special_outputs(tmp_path):
    mine = tmp_path / "mine.json"
    mine.write_text("the user's file")
    os.mkfifo(tmp_path / "fifo.json")
    (tmp_path / "link.json").symlink_to(mine)
    (tmp_path / "dangling.json").symlink_to(tmp_path / "nowhere.json")
    names = ["fifo.json", "link.json", "dangling.json"]
    if os.geteuid() == 0:
        os.mknod(tmp_path / "null.json", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        names.append("null.json")
    return names


def test_links_and_special_files_are_refused_and_left_as_they_are(solver, tmp_path, capsys):
    names = _special_outputs(tmp_path)
    modes = {name: os.lstat(tmp_path / name).st_mode for name in names}
    for name in names:
        out = str(tmp_path / name)
        assert (
            main(["export", "--solver", str(solver), "--format", "k-diffusion", "--out", out]) == 2
        )
        _one_line_error(capsys, name)
        assert (
            main(
                ["fid", "--images", "digits", "--num-images", "16", "--ref", "digits", "--out", out]
            )
            == 2
        )
        _one_line_error(capsys, name)
        with pytest.raises(OutputError, match="replaces only regular files"):
            atomic_write(tmp_path / name, lambda tmp: tmp.write_text("x"))
    assert {name: os.lstat(tmp_path / name).st_mode for name in names} == modes
    assert (tmp_path / "mine.json").read_text() == "the user's file"


# -- atomic reports and folders --------------------------------------------------------------------


def _full_disk_on(monkeypatch, fragment):
    """ENOSPC from ``os.fsync`` of a temporary whose name holds ``fragment`` (a disk that fills
    while that file is written)."""
    real = os.fsync

    def fsync(fd):
        if fragment in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_full_disk_while_writing_the_table_is_one_line_and_leaves_nothing_torn(
    tmp_path, capsys, monkeypatch
):
    _full_disk_on(monkeypatch, "compare.md")
    assert main([*COMPARE, "--out", str(tmp_path / "c")]) == 2
    _one_line_error(capsys, "compare.md: No space left on device; free some space", alone=False)
    assert not (tmp_path / "c" / "compare.md").exists()
    assert not [p for p in (tmp_path / "c").rglob("*.tmp")]
    monkeypatch.undo()
    assert main([*COMPARE, "--out", str(tmp_path / "c")]) == 0  # the same command again
    assert (tmp_path / "c" / "compare.md").stat().st_size > 0


def test_a_diffusers_export_is_whole_or_absent(solver, tmp_path, capsys, monkeypatch):
    out = tmp_path / "sched"
    _full_disk_on(monkeypatch, "scheduler_config.json")
    assert (
        main(["export", "--solver", str(solver), "--format", "diffusers", "--out", str(out)]) == 2
    )
    _one_line_error(capsys, "No space left on device", alone=False)
    assert not out.exists()  # no file, no temporary: the folder it made is gone too
    monkeypatch.undo()
    assert (
        main(["export", "--solver", str(solver), "--format", "diffusers", "--out", str(out)]) == 0
    )
    assert (out / "scheduler_config.json").stat().st_size > 0


def test_write_files_moves_whole_files_and_records_them(tmp_path):
    def save(folder: Path) -> None:
        (folder / "sub").mkdir()
        (folder / "sub" / "w.bin").write_bytes(b"w")
        (folder / "config.json").write_text("{}")

    with folder_lock(tmp_path / "out") as out:
        write_files(out / "model", save)
    assert (tmp_path / "out" / "model" / "sub" / "w.bin").read_bytes() == b"w"
    assert sorted((tmp_path / "out" / RUN_RECORD).read_text().split()) == [
        "model/config.json",
        "model/sub/w.bin",
    ]
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_the_run_that_takes_a_folder_removes_temporaries_anywhere_in_it(tmp_path):
    nested = tmp_path / "sweep" / "nfe3" / "compare"
    nested.mkdir(parents=True)
    planted = [
        nested / ".scatter_ddim.png.a1b2c3d4.tmp",
        tmp_path / "sweep" / ".files.x9y8z7w6.tmp",
    ]
    planted[0].write_bytes(b"half a picture")
    planted[1].mkdir()
    (planted[1] / "scheduler_config.json").write_text("{")
    with folder_lock(tmp_path / "sweep"):
        assert not any(path.exists() for path in planted)


# -- one writer per folder --------------------------------------------------------------------------


def test_a_second_compare_on_the_same_folder_is_refused(tmp_path):
    with folder_lock(tmp_path / "c"):  # a compare at work (this process holds the folder)
        result = _gas(*COMPARE, "--out", "c", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"in use by another gas-solver run (PID {os.getpid()})" in result.stderr
    assert not (tmp_path / "c" / "compare.json").exists()


# -- interrupts ---------------------------------------------------------------------------------------


def _interrupt_when(process, ready, signum=signal.SIGINT, timeout=120.0):
    """Send ``signum`` to ``process`` once ``ready()`` holds; returns its stderr."""
    deadline = time.monotonic() + timeout
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the command finished before it could be interrupted"
    process.send_signal(signum)
    return process.communicate(timeout=120)[1]


def _last_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    return stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_compare_says_so_in_one_line(tmp_path, signum, code):
    seeds = ["--seeds", "50000-2049999", "--batch-size", "4096"]  # minutes of work
    process = _gas(*COMPARE[:-2], *seeds, "--out", "c", "--no-cache", cwd=tmp_path,
                   stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)  # fmt: skip
    stderr = _interrupt_when(
        process, lambda: (tmp_path / "c" / ".gas-solver.lock").exists(), signum
    )
    assert process.returncode == code
    line = _last_line(stderr)
    assert line == "gas-solver compare: interrupted; nothing half-written was left: run it again"


def test_an_interrupted_teacher_resumes_to_the_same_shards(tmp_path):
    args = ["teacher", "--model", "gmm-ring", "--seeds", "0-9999", "--shard-size", "500"]
    process = _gas(
        *args, "--out", "t", cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    stderr = _interrupt_when(process, lambda: (tmp_path / "t" / "shard-00001.safetensors").exists())
    assert process.returncode == 130
    assert "interrupted; the finished shards are kept: run the same command again" in _last_line(
        stderr
    )
    assert _gas(*args, "--out", "t", cwd=tmp_path).returncode == 0
    assert _gas(*args, "--out", "fresh", cwd=tmp_path).returncode == 0
    shards = sorted(p.name for p in (tmp_path / "fresh").glob("shard-*"))
    assert len(shards) == 20
    for name in shards:
        assert (tmp_path / "t" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()


def test_an_interrupted_training_resumes(solver, tmp_path):
    args = ["train", "--teacher", solver.parent / "t", "--out", "run", "--nfe", "2",
            "--train-size", "30", "--val-size", "10", "--init-solver", "dpmpp3m",
            "--batch-size", "4", "--checkpoint-every", "5", "--val-every", "0"]  # fmt: skip
    process = _gas(*args, "--iterations", "100000", cwd=tmp_path,
                   stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)  # fmt: skip
    stderr = _interrupt_when(process, lambda: (tmp_path / "run" / "checkpoint.pt").exists())
    assert process.returncode == 130
    assert "with --resume to continue" in _last_line(stderr)
    resumed = _gas(*args, "--iterations", "20", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr


# -- caches are best effort -----------------------------------------------------------------------


def test_an_unwritable_cache_only_warns(tmp_path, caplog, monkeypatch):
    import numpy as np
    import torch

    from gas_solver.evaluation.sample_cache import CachedSamples, save_samples
    from gas_solver.metrics.fid_statistics import FIDStatistics

    (tmp_path / "afile").write_text("x")
    cache = tmp_path / "afile" / "cache"  # a file where the cache folder should be
    FIDStatistics(np.zeros(3), np.eye(3)).save(cache / "stats.npz", cache=True)
    assert "could not cache the FID statistics" in caplog.text
    monkeypatch.setenv("GAS_SOLVER_SAMPLES", str(cache))
    save_samples("k" * 64, CachedSamples(torch.zeros(2, 2), 1.0, 2.0))
    assert "could not cache samples" in caplog.text


@pytest.mark.parametrize("error", [MemoryError, RecursionError])
def test_memory_and_recursion_errors_are_one_line_and_a_traceback_with_v(
    monkeypatch, capsys, error
):
    from gas_solver import cli

    def fail(config):
        raise error()

    real = cli.commands
    monkeypatch.setattr(
        cli, "commands", lambda: {n: (h, c, fail) for n, (h, c, _) in real().items()}
    )
    assert cli.main(["models"]) == 2
    _one_line_error(capsys, "error: ", "-v: traceback")
    with pytest.raises(error):
        cli.main(["-v", "models"])
