"""The ``gas-solver`` command line: argument parsing and dispatch to :mod:`gas_solver.commands`.

Each command is a validated config dataclass (its fields are the flags and the YAML keys, see
:mod:`gas_solver.config`) and an action that takes the config and returns the line to print.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from . import distributed
from .config import add_config_arguments, config_from_args
from .errors import ConfigError, GasSolverError
from .version import __version__

Action = Callable[[Any], str]

DISTRIBUTED_COMMANDS = frozenset({"teacher", "train", "sample", "fid", "compare", "sweep"})
"""The commands that split their work over the processes of ``torchrun`` (:mod:`.distributed`);
under torchrun only rank 0 prints their result."""


def _list_models(_: Any) -> str:
    from .models.loading import BUILTIN_MODELS

    return "\n".join(f"{name:20s} {text}" for name, (_, text) in BUILTIN_MODELS.items())


def commands() -> dict[str, tuple[str, type | None, Action]]:
    """name → (help, config class, action)."""
    from .commands.compare import CompareConfig, run_compare
    from .commands.convert_edm import ConvertEDMConfig, run_convert_edm
    from .commands.demo import DemoConfig, run_demo
    from .commands.export import ExportConfig, run_export
    from .commands.fid import FIDConfig, format_fid, run_fid
    from .commands.info import InfoConfig, run_info
    from .commands.sample import SampleConfig, run_sample
    from .commands.sweep import SweepConfig, run_sweep
    from .commands.teacher import TeacherConfig, run_teacher
    from .commands.train import TrainConfig, run_train
    from .commands.train_model import TrainModelConfig, run_train_model

    def teacher(config: TeacherConfig) -> str:
        made = run_teacher(config)
        return f"teacher set: {made.path} ({len(made)} samples)"

    def compare(config: CompareConfig) -> str:
        comparison = run_compare(config)
        if not distributed.is_main():  # torchrun: rank 0 wrote the table and prints it
            return ""
        return f"{comparison.table()}comparison (table, JSON, pictures): {config.out}"

    def sweep(config: SweepConfig) -> str:
        report = run_sweep(config)
        if not distributed.is_main():  # torchrun: rank 0 wrote the table and prints it
            return ""
        return f"{report.read_text()}sweep (table, JSON, plot, runs): {config.out}"

    return {
        "models": ("list the built-in models", None, _list_models),
        "train-model": (
            "train a small diffusion model (the bundled default) on a bundled data set",
            TrainModelConfig,
            lambda c: f"model: {run_train_model(c)}",
        ),
        "teacher": ("generate a teacher set (noise → many-step solver target) in shards", TeacherConfig, teacher),
        "train": (
            "train a Generalized Solver on a teacher set: GS (--loss gs) or GAS (--loss gas)",
            TrainConfig,
            lambda c: f"trained solver: {run_train(c)}",
        ),
        "sample": (
            "sample with a trained solver or a classic one, to PNGs / .npz and a grid",
            SampleConfig,
            lambda c: f"samples: {run_sample(c)}",
        ),
        "fid": ("Fréchet Inception Distance of images against reference statistics", FIDConfig, lambda c: format_fid(run_fid(c))),
        "demo": ("the whole method on one model: teacher → GS and GAS → comparison → report", DemoConfig, lambda c: f"report: {run_demo(c)}"),
        "compare": ("run several solvers on the same seeds and tabulate FID and teacher fidelity", CompareConfig, compare),
        "sweep": (
            "quality against NFE: classic solvers on their best grids, learned solvers, the teacher (resumable)",
            SweepConfig,
            sweep,
        ),
        "export": (
            "export a trained solver for another tool (the targets: see --format)",
            ExportConfig,
            run_export,
        ),
        "info": ("say what a solver file is and what it fits (trained solver, k-diffusion file, diffusers scheduler folder)", InfoConfig, run_info),
        "convert-edm": (
            "convert an NVIDIA EDM network pickle into a safe folder (edm.json + model.safetensors) without running its code",
            ConvertEDMConfig,
            lambda c: f"converted: {run_convert_edm(c)}",
        ),
    }  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, like every other user error: exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gas-solver",
        description="Learned few-step ODE solvers (GS/GAS, arXiv 2510.17699) for frozen diffusion "
        "models: teacher data, training, sampling, evaluation, export.",
    )
    parser.add_argument("--version", action="version", version=f"gas-solver {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, config_class, action) in commands().items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if config_class is not None:
            add_config_arguments(command, config_class)
        command.set_defaults(config_class=config_class, action=action)
    return parser


RESUME_HINTS = {
    "teacher": "the finished shards are kept: run the same command again to make the rest",
    "sweep": "the finished rows are kept: run the same command again to resume",
    "demo": "the finished steps' files are kept: run the same command again",
    "train": "the last checkpoint is kept: run the same command with --resume to continue",
    "train-model": "the last checkpoint is kept: run the same command with --resume to continue",
}
"""What an interrupted command kept and how to go on (other commands: run them again)."""


def _interrupted(signum: int, _frame: Any) -> NoReturn:
    raise KeyboardInterrupt(signum)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While a command runs, SIGTERM stops it as Ctrl-C does (the same clean-up, one line)."""
    if threading.current_thread() is not threading.main_thread():  # only there can it be set
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    if args.command is None:
        parser.print_help()
        return 0
    try:
        config = config_from_args(args.config_class, args) if args.config_class else None
        if distributed.launched() and args.command not in DISTRIBUTED_COMMANDS:
            raise ConfigError(
                f"{args.command} runs in one process; start it without torchrun (these split "
                f"their work over processes: {', '.join(sorted(DISTRIBUTED_COMMANDS))})"
            )
        distributed.init()
        with _sigterm_as_interrupt():
            result = args.action(config)
        # torchrun: no process leaves the group while another still works (rank 0 writing its
        # outputs); a peer closing its connections early can abort Gloo's threads at exit
        distributed.barrier()
        if distributed.is_main():
            print(result)
        return 0
    except GasSolverError as err:
        _say(args.command, f"error: {' '.join(str(err).splitlines())}")  # one line, always
        return 2
    except KeyboardInterrupt as err:  # every file is written atomically: nothing torn is left
        signum = err.args[0] if err.args else signal.SIGINT
        hint = RESUME_HINTS.get(args.command, "nothing half-written was left: run it again")
        _say(args.command, f"interrupted; {hint}")
        return 128 + signum
    except (MemoryError, RecursionError) as err:  # an input too large or too deep for a check
        if args.verbose:
            raise
        what = "out of memory" if isinstance(err, MemoryError) else "an input nested too deeply"
        _say(
            args.command,
            f"error: {what}; check the sizes in the command and its files (-v: traceback)",
        )
        return 2
    finally:
        distributed.close()


def _say(command: str, message: str) -> None:
    """The one line on stderr that ends a command that did not finish (with its rank under torchrun)."""
    where = f" (rank {distributed.rank()})" if distributed.world_size() > 1 else ""
    print(f"gas-solver {command}{where}: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
