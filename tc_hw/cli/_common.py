"""What every subcommand shares: exit codes, output, argument help."""

from __future__ import annotations

import argparse as _argparse
import math as _math
from pathlib import Path

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


def positive_float(text: str) -> float:
    """A finite number > 0."""
    v = _number(text, float)
    if not (_math.isfinite(v) and v > 0):
        raise _argparse.ArgumentTypeError(f"{text!r} is not allowed: must be a finite number > 0")
    return v


# ---------------------------------------------------------------- file options, checked before a device opens


def check_input_file(path, option: str) -> None:
    """Refuse (ValueError) a missing input, or a folder, before any device is opened."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{option} {path}: no such file")
    if not p.is_file():
        raise ValueError(f"{option} {path}: is a folder or special file, not a file")


def check_output_file(path, option: str) -> None:
    """Refuse (ValueError) an output path that is a symlink, a folder, or lies under a file."""
    p = Path(path)
    if p.is_symlink():
        raise ValueError(f"{option} {path} is a symlink: give the real path")
    if p.exists() and not p.is_file():
        raise ValueError(f"{option} {path} is a folder, not a file")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option} {path}: {parent} is a file, not a folder")
            break


def parse_scale(scale) -> float | str | None:
    """``--scale``: None/"1"/"none" (no rescaling), "auto", or a finite number > 0 (ValueError else)."""
    if scale is None or scale in ("1", "none", "auto"):
        return scale
    try:
        lam = float(scale)
    except ValueError:
        raise ValueError(f"--scale {scale!r}: expected 'auto', 'none' or a number > 0") from None
    if not (_math.isfinite(lam) and lam > 0):
        raise ValueError(f"--scale {scale!r}: the coordinate scale must be a finite number > 0")
    return lam
