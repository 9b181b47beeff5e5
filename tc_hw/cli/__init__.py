"""The ``tc-hw`` command line.

Every subcommand prints a human summary by default and one JSON object with ``--json``.
Exit codes: 0 success, 2 bad input (arguments, files, parameters, a run log another process
writes), 3 device fault (connection, timeout, board error, a board another process controls);
anything else is a bug and ends with its traceback (exit 1) - see :func:`exit_code_of`.  Each module here holds one group of subcommands and
its ``add_parsers(sub)``; the work itself lives in the packages (the CLI only parses and prints).
"""

from __future__ import annotations

import argparse
import sys

from ..evaluation import MNIST_DEFAULTS, evaluate_mnist  # noqa: F401  (public re-export)
from ..model import provenance
from ..model.device import DeviceError
from ..model.params import ParamsError
from ..model.safeio import LockedError
from . import board, demo, hardware, run, train, twin
from ._common import EXIT_BAD_INPUT, EXIT_DEVICE, EXIT_ERROR, EXIT_OK  # noqa: F401

__all__ = ["main", "build_parser", "evaluate_mnist", "exit_code_of"]


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
    except Exception as e:
        code = exit_code_of(e)
        if code is None:
            raise  # a bug (KeyError, IndexError, ...): shown with its traceback, exit 1
        what = "device fault: " if code == EXIT_DEVICE else ""
        print(f"tc-hw: {what}{e}", file=sys.stderr)
        return code


def exit_code_of(e: BaseException) -> int | None:
    """The exit code for an exception that is a user-facing failure, or None for a bug.

    3: the device or board failed or is held by another process (``DeviceError``, connection
    and timeout errors, ``BoardBusyError``); 2: bad input - arguments, files, parameters,
    calibration records, run logs (``ValueError``, ``ParamsError``, file-system errors such
    as a missing file, an existing output, a folder where a file was expected, no permission).
    Everything else (``KeyError``, ``IndexError``, ``TypeError``, ...) is a bug, not bad input.
    """
    if isinstance(e, (DeviceError, ConnectionError, TimeoutError)):
        return EXIT_DEVICE
    if isinstance(e, LockedError):
        return EXIT_BAD_INPUT if isinstance(e, ValueError) else EXIT_DEVICE
    if isinstance(e, (ParamsError, ValueError, OSError, RecursionError)):
        return EXIT_BAD_INPUT
    return None
