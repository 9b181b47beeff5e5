"""What every subcommand shares: exit codes, output, argument help."""

from __future__ import annotations

import json

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_DEVICE = 0, 1, 2, 3

RESOURCE_HELP = ("board: a name from the station file (tc-hw-station.toml), or a resource: "
                 "TCPIP0::127.0.0.1::5025::SOCKET, ASRL/dev/pts/N::INSTR, /dev/ttyX, or twin")


def emit(args, result: dict, human: str) -> None:
    """Print ``result`` as one JSON line with ``--json``, else the ``human`` text."""
    if getattr(args, "json", False):
        print(json.dumps(result))
    else:
        print(human)


def add_json(p) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
