"""The ``tc-hw`` command line.

Every subcommand prints a human summary by default and one JSON object with ``--json``.
Exit codes: 0 success, 2 bad input (arguments, files, parameters), 3 device fault (connection,
timeout, board error), 1 anything else.  Each module here holds one group of subcommands and
its ``add_parsers(sub)``; the work itself lives in the packages (the CLI only parses and prints).
"""

from __future__ import annotations

import argparse
import sys

from ..evaluation import MNIST_DEFAULTS, evaluate_mnist  # noqa: F401  (public re-export)
from . import board, demo, hardware, run, train, twin
from ._common import EXIT_BAD_INPUT, EXIT_DEVICE, EXIT_ERROR, EXIT_OK  # noqa: F401

__all__ = ["main", "build_parser", "evaluate_mnist"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tc-hw",
        description="Control stack for analog thermodynamic computers: numerical twin, boards, calibration, training.",
        epilog="Run `tc-hw COMMAND --help` for each command's options and examples.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in (demo, twin, train, board, hardware, run):
        group.add_parsers(sub)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``tc-hw`` console command; returns the exit code."""
    from .. import provenance
    from ..device import DeviceError
    from ..params import ParamsError

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["emulate"]:  # everything after `emulate` belongs to the emulator
        return board.cmd_emulate(argparse.Namespace(emulator_args=argv[1:]))
    args = parser.parse_args(argv)
    provenance.begin(argv=argv, args=args)  # every file this command writes records it
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return args.func(args)
    except (DeviceError, ConnectionError, TimeoutError) as e:
        print(f"tc-hw: device fault: {e}", file=sys.stderr)
        return EXIT_DEVICE
    except (ParamsError, ValueError, FileNotFoundError, KeyError) as e:
        print(f"tc-hw: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


