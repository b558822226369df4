"""Fault matrix: what the commands that write files do when things go wrong around them.

For every command that writes (``teacher``, ``train`` (a GS and a GAS run), ``sample``,
``compare``, ``sweep``, ``export``, ``fid --out``), on the exact mixture of 8×8 digits
(``gmm-digits``, no weights to load), it tries:

* **SIGKILL and SIGINT at a random point**: the command runs in its own process, is killed (or
  interrupted, as Ctrl-C does) at a random time after it took its output folder's lock (up to the
  work time of an uninterrupted run), then the same command runs again (``train``: with
  ``--resume`` when a checkpoint was written). Survived: the result equals the uninterrupted run's
  (teacher: shard bytes; train: the solver's tensors; sample: the samples and PNG bytes; compare,
  sweep, export: their JSON without timings and dates) and no temporary file is left; after SIGINT
  also exit code 130 and one line saying it was interrupted, no traceback.
* **hostile contents with valid checksums**: solver metadata re-sealed with ill-typed or absurd
  fields or 200000-deep JSON, teacher manifests that claim other seeds, 10^13 items or negative
  shapes, a cut or edited ``sweep.json``. Survived: exit 2, one line naming the file, nothing
  allocated or written.
* **outputs that cannot be written**: for each command, its output is a file where a folder is
  wanted (a folder where a file is), a link to nothing, a FIFO, a link to the user's own file.
  Survived: exit 2, one line naming the output, and the thing under that name is as it was.
* **corruption**: each file kind the project writes and later trusts (teacher ``manifest.json``
  and shard, ``checkpoint.pt``, ``solver.safetensors``, ``samples.npz``, a sample PNG) is
  truncated at a random length, has a random bit of its first 8 bytes flipped (header) or a random
  bit of its data flipped (tensor/array/pixel bytes; in the manifest a shard's checksum, size or
  count); then the command that reads it runs (``train``, ``train --resume``, ``sample``, ``fid``).
  Survived: exit code 2, one error line naming the damaged file, no traceback.
* **two writers**: a run is stopped (SIGSTOP) while it holds its folder, the same command starts
  on that folder, then the first run continues. Survived: the second exits 2 naming the holder's
  PID and changes nothing, and the first run's result equals an uninterrupted run's.
* **full disk**, two ways. (a) The n-th atomic write (n random among the run's writes) fails
  with ENOSPC after writing half its bytes (``os.fsync`` patched inside
  :func:`gas_solver.outputs.atomic_write`; runs anywhere). (b) Where this process may mount (root
  with the capability), the output folder is a tmpfs of 10-90 % of the output's size, so the
  disk fills wherever the writing happens to be; then it is remounted larger. Survived: exit 2
  with one line naming a file in the output folder and "No space left on device", no temporary
  left behind, and running the command again gives the uninterrupted result.

Reference runs, corruption consumers, second writers and full-disk runs are in-process calls of
``gas_solver.cli.main``; killed and stopped runs are forked child processes running the same
``main`` (torch is imported once, so a random kill lands in the command's work, not in its
imports).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/fault_matrix.py            # 5 trials each, docs table
    OMP_NUM_THREADS=1 python benchmarks/fault_matrix.py --quick    # CI: 1 trial each, small

It prints the table (scenario / tried / survived / lost) and, unless ``--quick`` or
``--no-doc``, writes it into ``docs/RELIABILITY.md``; the exit code is 1 if anything was lost.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from gas_solver import outputs, runtime
from gas_solver.cli import main as cli_main
from gas_solver.outputs import LOCK_FILE

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "RELIABILITY.md"
BEGIN, END = "<!-- fault-matrix:begin -->", "<!-- fault-matrix:end -->"


@dataclasses.dataclass
class Sizes:
    """How big each run is: big enough that random kills land in the middle of writing."""

    teacher_seeds: str
    shard_size: int
    gs_iterations: int
    gas_iterations: int
    train_size: int
    val_size: int
    sample_seeds: str


FULL = Sizes("0-1199", 100, 100, 30, 1000, 100, "50000-50499")
QUICK = Sizes("0-199", 50, 8, 4, 150, 50, "50000-50049")

COMMANDS = ("teacher", "train GS", "train GAS", "sample", "compare", "sweep", "export")
"""The commands of the kill and interrupt scenarios (and of the full disk, with ``fid``)."""
FILE_OUTPUTS = ("export", "fid")
"""Commands whose output is one file (no folder lock: one atomic rename)."""


@dataclasses.dataclass
class Row:
    scenario: str
    tried: int = 0
    survived: int = 0
    harmless: int = 0  # corruption the reader could not see: it read the original values
    notes: list[str] = dataclasses.field(default_factory=list)

    def add(self, ok: bool, why: str = "") -> None:
        self.tried += 1
        self.survived += ok
        if not ok:
            self.notes.append(why)
            print(f"  LOST: {self.scenario}: {why}", flush=True)


# -- the commands ---------------------------------------------------------------------------
class Commands:
    """The four runs and their uninterrupted results (made once, in ``work/reference``)."""

    def __init__(self, work: Path, sizes: Sizes) -> None:
        self.work, self.sizes = work, sizes
        self.ref = work / "reference"
        self.work_seconds: dict[str, float] = {}
        self.writes: dict[str, int] = {}

    def argv(self, name: str, out: Path, teacher: Path | None = None) -> list[str]:
        s = self.sizes
        teacher = teacher or self.ref / "teacher"
        train = ["train", "--teacher", str(teacher), "--out", str(out), "--nfe", "4",
                 "--batch-size", "16", "--train-size", str(s.train_size), "--val-size",
                 str(s.val_size), "--device", "cpu"]  # fmt: skip
        return {
            "teacher": ["teacher", "--model", "gmm-digits", "--seeds", s.teacher_seeds,
                        "--shard-size", str(s.shard_size), "--batch-size", str(s.shard_size),
                        "--out", str(out), "--device", "cpu"],
            "train GS": [*train, "--iterations", str(s.gs_iterations), "--checkpoint-every",
                         str(max(1, s.gs_iterations // 5)), "--val-every",
                         str(max(1, s.gs_iterations // 2))],
            "train GAS": [*train, "--loss", "gas", "--iterations", str(s.gas_iterations),
                          "--checkpoint-every", str(max(1, s.gas_iterations // 4)),
                          "--val-every", str(max(1, s.gas_iterations // 2))],
            "sample": ["sample", "--solver", str(self.ref / "train GS" / "solver.safetensors"),
                       "--seeds", s.sample_seeds, "--batch-size", "25", "--out", str(out),
                       "--device", "cpu"],
            "compare": ["compare", "--solvers", f"{self.ref / 'train GS'};ddim:nfe=4",
                        "--seeds", s.sample_seeds, "--batch-size", "25", "--no-cache",
                        "--out", str(out), "--device", "cpu"],
            "sweep": ["sweep", "--model", "gmm-digits", "--nfes", "2,3", "--classic", "ddim;unipc",
                      "--grids", "uniform,logsnr", "--no-logsnr-rows", "--learned", "gs",
                      "--teacher-seeds", s.teacher_seeds, "--train-size", str(s.train_size),
                      "--val-size", str(s.val_size), "--iterations", str(s.gas_iterations),
                      "--train-batch-size", "16", "--init-solver", "dpmpp3m", "--timesteps-grid", "uniform",
                      "--seeds", s.sample_seeds, "--grid-seeds", "60000-60031", "--fid-ref", "none",
                      "--batch-size", "25", "--out", str(out), "--device", "cpu"],
            "export": ["export", "--solver", str(self.ref / "train GS"), "--format",
                       "k-diffusion", "--out", str(out / "solver.json")],
            "fid": ["fid", "--images", str(self.ref / "sample"), "--ref", "digits", "--ref-num",
                    "16", "--num-images", "16", "--method", "eigh", "--out", str(out / "fid.json"),
                    "--device", "cpu"],
        }[name]  # fmt: skip

    def make_references(self, names: tuple[str, ...]) -> None:
        for name in names:
            with count_atomic_writes(self.ref / name) as counter:
                start = time.perf_counter()
                code, err = run_in_process(self.argv(name, self.ref / name))
                self.work_seconds[name] = time.perf_counter() - start
            if code != 0:
                raise SystemExit(f"the uninterrupted {name} run failed:\n{err}")
            self.writes[name] = counter[0]
            print(f"reference {name}: {self.work_seconds[name]:.1f} s, {counter[0]} atomic "
                  "writes", flush=True)  # fmt: skip

    def rerun(self, name: str, out: Path) -> tuple[int, str]:
        """The same command again (train: resuming when there is a checkpoint)."""
        resume = name.startswith("train") and (out / "checkpoint.pt").is_file()
        return run_in_process(self.argv(name, out) + (["--resume"] if resume else []))

    def same_result(self, name: str, out: Path) -> str | None:
        """``None`` if ``out`` holds what the uninterrupted run made, else what differs."""
        ref = self.ref / name
        if name in JSON_RESULTS:
            file = JSON_RESULTS[name]
            if not (out / file).is_file():
                return f"no {file}"
            mine, theirs = (
                _untimed(json.loads((f / file).read_text().replace(str(f), "OUT")))
                for f in (out, ref)
            )  # the same, wherever the run wrote it
            return None if mine == theirs else f"{file} differs"
        if name == "teacher":
            for shard in sorted(ref.glob("shard-*.safetensors")):
                mine = out / shard.name
                if not mine.is_file() or mine.read_bytes() != shard.read_bytes():
                    return f"{shard.name} differs"
            return None
        if name.startswith("train"):
            mine, theirs = (
                load_file(out / "solver.safetensors"),
                load_file(ref / "solver.safetensors"),
            )
            if mine.keys() != theirs.keys() or not all(
                torch.equal(mine[k], theirs[k]) for k in mine
            ):
                return "the solver's tensors differ"
            return None
        with np.load(out / "samples.npz") as a, np.load(ref / "samples.npz") as b:
            if not all(np.array_equal(a[k], b[k]) for k in b.files):
                return "samples.npz differs"
        pngs = sorted(p.name for p in (ref / "images").iterdir())
        if sorted(p.name for p in (out / "images").iterdir()) != pngs or any(
            (out / "images" / n).read_bytes() != (ref / "images" / n).read_bytes() for n in pngs
        ):
            return "the PNGs differ"
        return None


JSON_RESULTS = {"compare": "compare.json", "sweep": "sweep.json", "export": "solver.json",
                "fid": "fid.json"}  # fmt: skip
"""The result file of the commands whose result is a JSON (compared without timings and dates)."""
_TIMED = {"seconds", "train_seconds", "run", "exported", "created", "command", "timing",
          "ms_per_sample", "model_share", "solver_share", "warmup_seconds", "timed_samples"}  # fmt: skip


def _untimed(value: object) -> object:
    """A JSON value without its timings, dates and command lines (which differ run to run)."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k not in _TIMED}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


# -- running ----------------------------------------------------------------------------------
def run_in_process(argv: list[str]) -> tuple[int, str]:
    """``gas-solver ARGV`` in this process: (exit code, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli_main(argv)
        except SystemExit as exit_:
            code = exit_.code
        except BaseException as exc:  # noqa: BLE001 - a crash is a result here
            traceback.print_exc(file=err)
            code = f"crash ({type(exc).__name__})"
    return code, err.getvalue()


class Child:
    """``gas-solver ARGV`` in a forked child process (torch is already imported, so it starts
    in milliseconds and a random kill lands in the command's work), its stderr into ``log``."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.args, self.returncode = argv, None
        self.pid = os.fork()
        if self.pid == 0:  # the child: run the command, never return into the parent's code
            code = 1
            # Ctrl-C as at a terminal (a script run in the background has SIGINT ignored)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            try:
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 2)
                os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
                code = cli_main(argv)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException:  # noqa: BLE001
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)


def start(argv: list[str], log: Path) -> Child:
    return Child(argv, log)


def wait_for_lock(proc: Child, out: Path, timeout: float = 120) -> bool:
    """Wait until ``proc`` holds ``out``'s lock (its PID in the lock file); False if it ended.
    A single-file output (``export``) takes no lock: its work starts at once."""
    if out.suffix == ".json" or out.name in FILE_OUTPUTS:
        return proc.poll() is None
    deadline = time.monotonic() + timeout
    lock = out / LOCK_FILE
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(OSError):
            if lock.read_text().strip() == str(proc.pid):
                return True
        time.sleep(0.005)
    raise SystemExit(f"{proc.args} did not take its lock within {timeout} s")


def error_line(err: str, path: Path | str, *words: str) -> str | None:
    """``None`` if ``err`` holds one error line naming ``path`` (and ``words``), no traceback."""
    if "Traceback" in err:
        return "a traceback: " + err.strip().splitlines()[-1][:200]
    lines = [line for line in err.splitlines() if re.match(r"gas-solver [\w-]+.*: error: ", line)]
    if len(lines) != 1:
        return f"{len(lines)} error lines: {err.strip()[-300:]!r}"
    for word in (str(path), *words):
        if word not in lines[0]:
            return f"the error does not name {word!r}: {lines[0][:300]}"
    return None


def temporaries(out: Path) -> list[str]:
    return [str(p) for p in out.rglob("*") if p.name.endswith(".tmp")]


def _output_write(fd: int, out: Path) -> bool:
    """Whether an fsync of ``fd`` is an atomic write (:func:`gas_solver.outputs.atomic_write`) under
    ``out`` (not a cache: those only warn when they cannot be written)."""
    return sys._getframe(2).f_code is outputs._put_in_place.__code__ and os.readlink(
        f"/proc/self/fd/{fd}"
    ).startswith(str(out))


@contextlib.contextmanager
def count_atomic_writes(out: Path) -> Iterator[list[int]]:
    """Count the files :func:`gas_solver.outputs.atomic_write` writes under ``out``."""
    counter = [0]
    real = os.fsync

    def fsync(fd: int) -> None:
        counter[0] += _output_write(fd, out)
        real(fd)

    os.fsync = fsync
    try:
        yield counter
    finally:
        os.fsync = real


@contextlib.contextmanager
def disk_full_at(n: int, out: Path) -> Iterator[None]:
    """The n-th atomic write under ``out`` finds the disk full: half its bytes are on disk, then
    ENOSPC."""
    real, seen = os.fsync, [0]

    def fsync(fd: int) -> None:
        if _output_write(fd, out):
            seen[0] += 1
            if seen[0] == n:
                path = os.readlink(f"/proc/self/fd/{fd}")
                os.truncate(path, os.path.getsize(path) // 2)
                raise OSError(28, os.strerror(28), path)
        real(fd)

    os.fsync = fsync
    try:
        yield
    finally:
        os.fsync = real


# -- scenarios --------------------------------------------------------------------------------
def kills(
    commands: Commands, name: str, trials: int, rng: random.Random, sig: int = signal.SIGKILL
) -> Row:
    """``sig`` (SIGKILL, or SIGINT as Ctrl-C) at random points of ``name``, then its rerun."""
    kind = "SIGKILL" if sig == signal.SIGKILL else "SIGINT (Ctrl-C)"
    row = Row(f"{kind} at a random point, then the same command: {name}")
    stopped = -signal.SIGKILL if sig == signal.SIGKILL else 128 + signal.SIGINT
    for trial in range(trials):
        for attempt in range(5):  # a kill that comes after the end is tried again, earlier
            tag = f"{kind.split()[0]}-{name}-{trial}-{attempt}"
            out, log = commands.work / tag / name, commands.work / f"{tag}.log"
            proc = start(commands.argv(name, out), log)
            if not wait_for_lock(proc, out):
                raise SystemExit(f"{name} ended before taking its lock: {log.read_text()}")
            time.sleep(rng.uniform(0, 0.9 * commands.work_seconds[name] / (attempt + 1)))
            proc.send_signal(sig)
            proc.wait()
            if proc.returncode == stopped:
                break
        else:
            row.add(False, "every kill came after the run ended")
            continue
        said = log.read_text(errors="replace")
        if sig != signal.SIGKILL and ("Traceback" in said or "interrupted; " not in said):
            row.add(False, f"after SIGINT: {said.strip()[-300:]!r}")
            continue
        code, err = commands.rerun(name, out)
        why = (
            f"the rerun exited {code}: {err.strip()[-300:]}" if code != 0
            else commands.same_result(name, out) or (
                f"temporaries left: {temporaries(out)}" if temporaries(out) else None)
        )  # fmt: skip
        row.add(why is None, why or "")
    return row


def _data_region(path: Path) -> tuple[int, int]:
    """Byte range ``[start, stop)`` of the values a file carries (not its framing)."""
    data = path.read_bytes()
    if path.suffix == ".safetensors":
        return 8 + int.from_bytes(data[:8], "little"), len(data)
    if path.name == "checkpoint.pt":
        return data.index(b"\n", len(runtime.CHECKPOINT_MAGIC)) + 1, len(data)
    if path.suffix == ".npz":
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("samples.npy")
        local = info.header_offset  # the local header: 30 bytes, then name and extra field
        start = local + 30 + sum(int.from_bytes(data[local + i : local + i + 2], "little")
                                 for i in (26, 28))  # fmt: skip
        return start + 128, start + info.compress_size  # after the .npy header: the values
    if path.suffix == ".png":
        at = data.index(b"IDAT") + 4
        return at, at + int.from_bytes(data[at - 8 : at - 4], "big")
    raise ValueError(path)


def _manifest_positions(path: Path) -> list[int]:
    """Positions of the characters of the shards' checksums, sizes and counts in a manifest."""
    text = path.read_text()
    return [
        m.start(2) + i
        for m in re.finditer(r'"(sha256|bytes|count)": "?([0-9a-f]+)', text)
        for i in range(len(m.group(2)))
    ]


def damage(path: Path, mode: str, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    if mode == "truncate":
        del data[rng.randrange(len(data)) :]
    else:
        if mode == "header flip":
            at = rng.randrange(8)
        elif path.name == "manifest.json":
            at = rng.choice(_manifest_positions(path))
        else:
            at = rng.randrange(*_data_region(path))
        data[at] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))


def unchanged(damaged: Path, original: Path) -> bool:
    """Whether a damaged array or image file still reads as exactly the original values."""
    try:
        if damaged.suffix == ".npz":
            with np.load(damaged) as a, np.load(original) as b:
                return a.files == b.files and all(np.array_equal(a[k], b[k]) for k in b.files)
        if damaged.suffix == ".png":
            from PIL import Image

            with Image.open(damaged) as a, Image.open(original) as b:
                return np.array_equal(np.asarray(a), np.asarray(b))
    except Exception:  # noqa: BLE001 - unreadable is not unchanged
        return False
    return False


MODES = ("truncate", "header flip", "data flip")


def corruption(
    commands: Commands, trials: int, rng: random.Random, every_mode: bool = True
) -> list[Row]:
    """Each file kind damaged in each way (``every_mode=False``: one way per kind, in turn)."""
    ref, work = commands.ref, commands.work
    first_png = sorted((ref / "sample" / "images").iterdir())[0].name
    # kind: (folder to copy, file in it, the command that reads it, run on the copy)
    kinds: dict[str, tuple[Path, str, Callable[[Path], list[str]]]] = {
        "teacher manifest.json (read by train)": (
            ref / "teacher", "manifest.json",
            lambda copy: commands.argv("train GS", work / "scratch-run", teacher=copy)),
        "teacher shard (read by train)": (
            ref / "teacher", "shard-00001.safetensors",
            lambda copy: commands.argv("train GS", work / "scratch-run", teacher=copy)),
        "checkpoint.pt (read by train --resume)": (
            ref / "train GS", "checkpoint.pt",
            lambda copy: [*commands.argv("train GS", copy), "--resume"]),
        "solver.safetensors (read by sample)": (
            ref / "train GS", "solver.safetensors",
            lambda copy: ["sample", "--solver", str(copy / "solver.safetensors"), "--seeds",
                          "50000-50003", "--out", str(work / "scratch-sample"), "--device", "cpu"]),
        "samples.npz (read by fid)": (
            ref / "sample", "samples.npz",
            lambda copy: ["fid", "--images", str(copy), "--save-ref",
                          str(work / "scratch-ref.npz"), "--num-images", "2", "--device", "cpu"]),
        "sample PNG (read by fid)": (
            ref / "sample", f"images/{first_png}",
            lambda copy: ["fid", "--images", str(copy / "images"), "--save-ref",
                          str(work / "scratch-ref.npz"), "--num-images", "2", "--device", "cpu"]),
    }  # fmt: skip
    rows = []
    for kind, (folder, name, consumer) in kinds.items():
        row = Row(f"corruption (truncate, header flip, data flip): {kind}")
        modes = MODES if every_mode else MODES[len(rows) % 3 : len(rows) % 3 + 1]
        for mode in modes:
            for trial in range(trials):
                copy = work / f"corrupt-{len(rows)}-{mode.replace(' ', '-')}-{trial}"
                shutil.copytree(folder, copy)
                damage(copy / name, mode, rng)
                code, err = run_in_process(consumer(copy))
                if code == 0 and unchanged(copy / name, folder / name):
                    why = None  # the flip hit framing the reader ignores: it read the same data
                    row.harmless += 1
                else:
                    why = f"exit {code}" if code != 2 else error_line(err, copy / name)
                row.add(why is None, f"{mode}: {why}")
        rows.append(row)
    return rows


def _resealed_solver(source: Path, target: Path, edit: Callable[[dict], object]) -> None:
    """``source``'s solver with its metadata edited and the checksum made valid again: what any
    writer can produce, so the schema, not the checksum, must refuse it."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as f:
        meta = json.loads(f.metadata()["gas_solver"])
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    edited = edit(meta)
    text = edited if isinstance(edited, str) else json.dumps(meta)
    header = {"gas_solver": text, "gas_solver_sha256": runtime.tensors_digest(text, tensors)}
    save_file(tensors, str(target), metadata=header)


HOSTILE_SOLVERS = {
    "nfe 10^12": lambda m: m.update(nfe=10**12),
    "t_eps a word": lambda m: m.update(t_eps="small"),
    "training a string": lambda m: m.update(training="x"),
    "model_source a number": lambda m: m.update(model_source=5),
    "200000-deep JSON": lambda m: "[" * 200_000 + "]" * 200_000,
}
HOSTILE_MANIFESTS = {
    "seeds of other items": lambda m: m.update(seeds="1000000-1001199"),
    "10^13 items": lambda m: m.update(num_samples=10**13, shard_size=10**13),
    "a negative shape": lambda m: m["fields"]["target"].update(shape=[-5]),
}


def hostile_files(commands: Commands) -> list[Row]:
    """Files with valid checksums and hostile contents, read by the command that uses them."""
    ref, work = commands.ref, commands.work
    rows = [Row("hostile content, checksum valid: solver metadata (read by sample)"),
            Row("hostile content: teacher manifest (read by train)"),
            Row("hostile content: sweep.json (read by sweep)")]  # fmt: skip
    for case, edit in HOSTILE_SOLVERS.items():
        bad = work / f"hostile-{case.replace(' ', '-')}.safetensors"
        _resealed_solver(ref / "train GS" / "solver.safetensors", bad, edit)
        out = work / f"hostile-sample-{len(rows[0].notes)}-{rows[0].tried}"
        code, err = run_in_process(
            ["sample", "--solver", str(bad), "--seeds", "0-3", "--out", str(out)]
        )
        why = f"exit {code}" if code != 2 else error_line(err, bad)
        rows[0].add(why is None and not (out / "samples.npz").exists(), f"{case}: {why}")
    for case, edit in HOSTILE_MANIFESTS.items():
        copy = work / f"hostile-teacher-{case.replace(' ', '-')}"
        shutil.copytree(ref / "teacher", copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        edit(manifest)
        (copy / "manifest.json").write_text(json.dumps(manifest))
        code, err = run_in_process(
            commands.argv("train GS", work / f"{copy.name}-run", teacher=copy)
        )
        why = f"exit {code}" if code != 2 else error_line(err, copy)
        rows[1].add(why is None, f"{case}: {why}")
    for case, damage_state in {"cut short": lambda t: t[: len(t) // 2],
                               "a row without its L1": lambda t: t.replace('"l1"', '"l0"', 1)}.items():  # fmt: skip
        copy = work / f"hostile-sweep-{case.replace(' ', '-')}"
        shutil.copytree(ref / "sweep", copy)
        state = copy / "sweep.json"
        state.write_text(damage_state(state.read_text()))
        code, err = run_in_process(commands.argv("sweep", copy))
        why = f"exit {code}" if code != 2 else error_line(err, state)
        rows[2].add(why is None, f"{case}: {why}")
    return rows


def two_writers(commands: Commands, name: str) -> Row:
    row = Row(f"two writers on one folder (the second refused, the first intact): {name}")
    out, log = commands.work / f"writers-{name}", commands.work / f"writers-{name}.log"
    proc = start(commands.argv(name, out), log)
    if not wait_for_lock(proc, out):
        raise SystemExit(f"{name} ended before taking its lock")
    proc.send_signal(signal.SIGSTOP)
    try:
        wait_until_stopped(proc.pid)
        before = _listing(out)
        code, err = run_in_process(commands.argv(name, out))
        changed = _listing(out) != before
    finally:
        proc.send_signal(signal.SIGCONT)
    proc.wait()
    stderr = log.read_text(errors="replace")
    why = (
        f"the second writer exited {code}" if code != 2
        else error_line(err, out, f"PID {proc.pid}") or (
            "the second writer changed the folder" if changed else None)
    )  # fmt: skip
    row.add(why is None, why or "")
    why = (
        f"the first writer exited {proc.returncode}: {stderr.strip()[-300:]}"
        if proc.returncode != 0 else commands.same_result(name, out)
    )  # fmt: skip
    row.add(why is None, why or "")
    return row


def unwritable_outputs(commands: Commands, name: str) -> Row:
    """The output of ``name`` is something gas-solver must not write over or into."""
    row = Row(
        f"output not writable (a file or folder in the way, dangling link, FIFO, link): {name}"
    )
    base = commands.work / f"outputs-{name}"
    base.mkdir()
    mine = base / "mine"
    mine.write_text("the user's own file")

    def file_in_the_way(path: Path) -> None:
        path.mkdir() if name in FILE_OUTPUTS else path.write_text("x")

    cases = {
        "in the way": file_in_the_way,
        "dangling link": lambda path: path.symlink_to(base / "nowhere"),
        "FIFO": os.mkfifo,
        "link to a file": lambda path: path.symlink_to(mine),
    }
    for case, make in cases.items():
        if case in ("FIFO", "link to a file") and name not in FILE_OUTPUTS:
            continue  # a folder output: the first two cases are the ones that apply
        out = base / case.replace(" ", "-")
        argv = commands.argv(name, out)
        target = Path(argv[argv.index("--out") + 1])
        target.parent.mkdir(parents=True, exist_ok=True)
        make(target)
        before = (os.lstat(target).st_mode, _listing(base), mine.read_text())
        code, err = run_in_process(argv)
        after = (os.lstat(target).st_mode, _listing(base), mine.read_text())
        why = f"{case}: exit {code}" if code != 2 else error_line(err, target)
        row.add(why is None and before == after, f"{case}: {why or 'changed'}")
    return row


def wait_until_stopped(pid: int, timeout: float = 10) -> None:
    """Return once every thread of ``pid`` is stopped. ``kill(SIGSTOP)`` returns before the target
    stops, so a thread still running may write after the caller has listed the folder; Linux shows
    the state in ``/proc/PID/task/*/stat`` (``T``). Elsewhere, a short grace period."""
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():
        time.sleep(0.5)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = []
        for stat in tasks.glob("*/stat"):
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
        if states and all(state in "Tt" for state in states):
            return
        time.sleep(0.005)
    raise SystemExit(f"PID {pid} did not stop within {timeout} s of SIGSTOP")


def _listing(folder: Path) -> list[tuple[str, int, int]]:
    stats = ((p, os.lstat(p)) for p in folder.rglob("*"))
    return sorted((str(p), info.st_size, info.st_mtime_ns) for p, info in stats)


def disk_full(commands: Commands, name: str, trials: int, rng: random.Random) -> Row:
    row = Row(f"full disk (ENOSPC) at a random write, then the same command: {name}")
    for trial in range(trials):
        out = commands.work / f"enospc-{name}-{trial}"
        with disk_full_at(rng.randint(1, commands.writes[name]), out):
            code, err = run_in_process(commands.argv(name, out))
        why = f"exit {code}" if code != 2 else error_line(err, out, "No space left on device")
        if why is None and temporaries(out):
            why = f"temporaries left: {temporaries(out)}"
        if why is None:
            code, err = commands.rerun(name, out)
            why = (f"the rerun exited {code}: {err.strip()[-300:]}" if code != 0
                   else commands.same_result(name, out))  # fmt: skip
        row.add(why is None, why or "")
    return row


def can_mount() -> bool:
    """Whether this process may mount a tmpfs (root in a privileged environment)."""
    with tempfile.TemporaryDirectory() as point:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", point],
                                 capture_output=True).returncode == 0  # fmt: skip
        if mounted:
            subprocess.run(["umount", point], check=True)
        return mounted


@contextlib.contextmanager
def tmpfs(point: Path, size: int) -> Iterator[Path]:
    point.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], check=True)
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=True)


def small_disk(commands: Commands, name: str, trials: int, rng: random.Random) -> Row:
    """The output folder on a tmpfs smaller than the output: the disk fills at a random point of
    whatever is being written; then the disk grows (remount) and the same command runs again."""
    row = Row(f"full disk (a tmpfs smaller than the output), then the same command: {name}")
    needed = sum(p.stat().st_size for p in (commands.ref / name).rglob("*") if p.is_file())
    for trial in range(trials):
        size = max(4096, int(needed * rng.uniform(0.1, 0.9)))
        with tmpfs(commands.work / f"tmpfs-{name}-{trial}", size) as point:
            out = point / "out"
            code, err = run_in_process(commands.argv(name, out))
            why = f"exit {code}" if code != 2 else error_line(err, out, "No space left on device")
            if why is None and temporaries(out):
                why = f"temporaries left: {temporaries(out)}"
            if why is None:
                opts = f"remount,size={64 << 20}"  # tmpfs takes a page per small file
                subprocess.run(["mount", "-o", opts, str(point)], check=True)
                code, err = commands.rerun(name, out)
                why = (f"the rerun exited {code}: {err.strip()[-300:]}" if code != 0
                       else commands.same_result(name, out) or (
                           f"temporaries left: {temporaries(out)}" if temporaries(out) else None))  # fmt: skip
        row.add(why is None, f"{size} bytes: {why}" if why else "")
    return row


# -- report -----------------------------------------------------------------------------------
def table(rows: list[Row]) -> str:
    lines = ["| scenario | tried | survived | lost |", "|---|---:|---:|---:|"]
    lines += [
        f"| {r.scenario}{f' ({r.harmless} read the original values)' if r.harmless else ''} "
        f"| {r.tried} | {r.survived} | {r.tried - r.survived} |"
        for r in rows
    ]
    total = sum(r.tried for r in rows), sum(r.survived for r in rows)
    lines.append(f"| **all** | **{total[0]}** | **{total[1]}** | **{total[0] - total[1]}** |")
    return "\n".join(lines)


def write_doc(text: str) -> None:
    doc = DOC.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{DOC} has no {BEGIN} … {END} block for the table")
    head, rest = doc.split(BEGIN, 1)
    DOC.write_text(f"{head}{BEGIN}\n{text}\n{END}{rest.split(END, 1)[1]}")


def timed(scenarios: Callable[[], list[Row]]) -> list[Row]:
    start = time.perf_counter()
    rows = scenarios()
    print(f"{rows[0].scenario.split(':')[0]}: {time.perf_counter() - start:.0f} s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small runs, 1 trial each (CI)")
    parser.add_argument("--trials", type=int, help="kills / corruptions / full disks per case")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random points")
    parser.add_argument("--work", help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--no-doc", action="store_true", help=f"do not write {DOC.name}")
    args = parser.parse_args(argv)
    trials = args.trials or (1 if args.quick else 5)
    rng = random.Random(args.seed)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, handlers=[logging.NullHandler()])
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        work = (
            Path(args.work)
            if args.work
            else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        )
        work.mkdir(parents=True, exist_ok=True)
        commands = Commands(work.resolve(), QUICK if args.quick else FULL)
        full = (*COMMANDS, "fid")
        filled = COMMANDS if args.quick else full  # (fid: an Inception run each, in the full run)
        commands.make_references(filled)
        names = COMMANDS[:4] if args.quick else COMMANDS
        rows = timed(lambda: [kills(commands, name, trials, rng) for name in names])
        # (not export: its work takes milliseconds, so a Ctrl-C lands before or after it)
        stops = ("compare",) if args.quick else COMMANDS[:-1]
        rows += timed(lambda: [kills(commands, n, trials, rng, signal.SIGINT) for n in stops])
        rows += timed(lambda: corruption(commands, trials, rng, every_mode=not args.quick))
        rows += timed(lambda: hostile_files(commands))
        writers = ("train GS", "compare") if args.quick else COMMANDS[:-1]
        rows += timed(lambda: [two_writers(commands, name) for name in writers])
        rows += timed(lambda: [disk_full(commands, name, trials, rng) for name in filled])
        rows += timed(lambda: [unwritable_outputs(commands, name) for name in full])
        if not args.quick and can_mount():
            big = [n for n in full if n not in FILE_OUTPUTS]  # (a tmpfs holds one page at least)
            rows += timed(lambda: [small_disk(commands, name, trials, rng) for name in big])
        elif not args.quick:
            print("full disk on a tmpfs: not tried (mounting is not allowed here)")
    seconds = time.perf_counter() - started
    text = table(rows)
    print(text)
    lost = sum(r.tried - r.survived for r in rows)
    command = "OMP_NUM_THREADS=1 python benchmarks/fault_matrix.py" + " ".join(
        ["", *(argv if argv is not None else sys.argv[1:])]
    )
    print(f"{sum(r.tried for r in rows)} tried, {lost} lost, {seconds:.0f} s", flush=True)
    if not (args.quick or args.no_doc):
        write_doc(
            f"Made by `{command.strip()}` ({seconds / 60:.0f} min on a 2-core CPU, "
            f"seed {args.seed}, {trials} trials per case):\n\n{text}"
        )
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
