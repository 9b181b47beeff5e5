"""What every subcommand shares: exit codes, output, argument help."""

from __future__ import annotations

import argparse as _argparse
import math as _math

from ..model.jsonsafe import dumps

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_DEVICE = 0, 1, 2, 3

RESOURCE_HELP = ("board: a name from the station file (tc-hw-station.toml), or a resource: "
                 "TCPIP0::127.0.0.1::5025::SOCKET, ASRL/dev/pts/N::INSTR, /dev/ttyX, or twin")


def emit(args, result: dict, human: str) -> None:
    """Print ``result`` as one JSON line with ``--json``, else the ``human`` text."""
    if getattr(args, "json", False):
        print(dumps(result, default=str))  # non-finite floats as null: tc_hw.model.jsonsafe
    else:
        print(human)


def add_json(p) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


# ---------------------------------------------------------------- argument types (argparse type=)
# Each refuses a bad value at parse time (argparse prints the message and exits 2), so nothing is
# created, loaded or sent for it.


def _number(text: str, kind):
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise _argparse.ArgumentTypeError(f"{text!r} is not a {'whole number' if kind is int else 'number'}") from None


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    v = _number(text, int)
    if v < 1:
        raise _argparse.ArgumentTypeError(f"{v} is not allowed: must be at least 1")
    return v


def nonnegative_int(text: str) -> int:
    """A whole number >= 0."""
    v = _number(text, int)
    if v < 0:
        raise _argparse.ArgumentTypeError(f"{v} is not allowed: must be 0 or more")
    return v


def positive_float(text: str) -> float:
    """A finite number > 0."""
    v = _number(text, float)
    if not (_math.isfinite(v) and v > 0):
        raise _argparse.ArgumentTypeError(f"{text!r} is not allowed: must be a finite number > 0")
    return v


def finite_float(text: str) -> float:
    """Any finite number."""
    v = _number(text, float)
    if not _math.isfinite(v):
        raise _argparse.ArgumentTypeError(f"{text!r} is not allowed: must be a finite number")
    return v
