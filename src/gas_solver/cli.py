"""The ``gas-solver`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .config import add_config_arguments, config_from_args
from .errors import ConfigError, GasSolverError

log = logging.getLogger("gas_solver")

SUBCOMMANDS = {
    "models": "list the built-in models",
    "train-model": "train a small diffusion model (the bundled default) on a bundled data set",
    "teacher": "generate a teacher set (noise → many-step solver target) in shards",
    "train": "train a Generalized Solver (GS, or GAS with --loss gas) on a teacher set",
    "sample": "sample with a trained solver or a classic one, to PNGs / .npz and a grid",
    "fid": "Fréchet Inception Distance of images against reference statistics",
    "compare": "run several solvers on the same seeds and tabulate FID and teacher fidelity",
    "export": "export a trained solver (diffusers scheduler, k-diffusion sampler)",
    "demo": "the whole method on the bundled MNIST model, with a report",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gas-solver",
        description="Learned few-step ODE solvers (GS/GAS, arXiv 2510.17699) for frozen diffusion "
        "models: teacher data, training, sampling, evaluation, export.",
    )
    parser.add_argument("--version", action="version", version=f"gas-solver {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in SUBCOMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name in COMMANDS:
            config_class, handler = COMMANDS[name]()
            if config_class is not None:
                add_config_arguments(command, config_class)
            command.set_defaults(handler=handler, config_class=config_class)
    return parser


def _models_command():
    def run(args: argparse.Namespace) -> int:
        from .models.loading import BUILTIN_MODELS

        for name, (_, description) in BUILTIN_MODELS.items():
            print(f"{name:20s} {description}")
        return 0

    return None, run


def _teacher_command():
    from .pipeline import TeacherConfig, make_teacher

    def run(args: argparse.Namespace) -> int:
        teacher = make_teacher(config_from_args(TeacherConfig, args))
        print(f"teacher set: {teacher.path} ({len(teacher)} samples)")
        return 0

    return TeacherConfig, run


def _train_command():
    from .data.teacher import TeacherSet
    from .models.loading import load_model
    from .runtime import resolve_device
    from .training.trainer import TrainConfig, train

    def run(args: argparse.Namespace) -> int:
        config = config_from_args(TrainConfig, args)
        teacher = TeacherSet(config.teacher)
        source = config.model or teacher.model_source
        if not source:
            raise ConfigError("model: the teacher set does not name its model; pass --model")
        model = load_model(source, resolve_device(config.device))
        path = train(config, model, teacher)
        print(f"trained solver: {path}")
        return 0

    return TrainConfig, run


def _sample_command():
    from .pipeline import SampleConfig, run_sample

    def run(args: argparse.Namespace) -> int:
        out = run_sample(config_from_args(SampleConfig, args))
        print(f"samples: {out}")
        return 0

    return SampleConfig, run


def _train_model_command():
    from .training.denoiser import DenoiserConfig, train_denoiser

    def run(args: argparse.Namespace) -> int:
        folder = train_denoiser(config_from_args(DenoiserConfig, args))
        print(f"model: {folder}")
        return 0

    return DenoiserConfig, run


def _fid_command():
    from .evaluation import FIDConfig, format_fid, run_fid

    def run(args: argparse.Namespace) -> int:
        print(format_fid(run_fid(config_from_args(FIDConfig, args))))
        return 0

    return FIDConfig, run


def _compare_command():
    from .evaluation import CompareConfig, run_compare

    def run(args: argparse.Namespace) -> int:
        config = config_from_args(CompareConfig, args)
        run_compare(config)
        print((Path(config.out) / "compare.md").read_text(), end="")
        print(f"comparison (table, JSON, pictures): {config.out}")
        return 0

    return CompareConfig, run


COMMANDS = {
    "train-model": _train_model_command,
    "models": _models_command,
    "teacher": _teacher_command,
    "train": _train_command,
    "sample": _sample_command,
    "fid": _fid_command,
    "compare": _compare_command,
}


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
        handler = getattr(args, "handler", None)
        if handler is None:
            raise GasSolverError(f"'{args.command}' is not available yet in this version")
        return int(handler(args) or 0)
    except GasSolverError as err:
        print(f"gas-solver {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
