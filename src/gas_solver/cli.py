"""The ``gas-solver`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import __version__
from .errors import GasSolverError

log = logging.getLogger("gas_solver")

SUBCOMMANDS = {
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
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


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
