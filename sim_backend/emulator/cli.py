"""Command line of the board emulator: ``python -m sim_backend.emulator`` / ``tc-hw emulate``.

::

    python -m sim_backend.emulator [--board FILE.toml|default|ideal|jj|layered96 | --zoo SEED] [--port 5025]
        [--host 127.0.0.1] [--pty] [--ready-file PATH] [--seed N] [--fault-rate F]
        [--truth-file PATH] [--no-warmup] [--print-board] [-v]

On start it prints one line to stdout, flushed::

    READY {"tcp": "TCPIP0::127.0.0.1::5025::SOCKET", "host": "127.0.0.1", "port": 5025,
           "pty": "/dev/pts/7" | null, "asrl": "ASRL/dev/pts/7::INSTR" | null, "pid": 1234,
           "board": "default", "nodes": 32, "channels": 352}

(one line) and writes the same JSON object to ``--ready-file`` (atomically; removed again on a
clean exit).  SIGTERM or SIGINT: stop accepting, close connections, exit 0.  Exit status 2 for a
bad board file or argument (e.g. a non-loopback ``--host``), 1 if the port cannot be bound.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

from .acquire import warm_up
from .board import PRESETS, Board, BoardFileError, board_from_name_or_path
from .faults import FaultInjector
from .instrument import Instrument
from .server import PtyServer, TcpServer, check_loopback
from .truth import dump_truth
from .zoo import draw_board, zoo_board_toml

__all__ = ["main", "build_parser"]

log = logging.getLogger("sim_backend.emulator")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tc-hw emulate",
        description="Emulate a TC board (board manual rev. 1) over TCP on loopback and optionally a pty.",
    )
    p.add_argument("--board", help="board file (TOML) or preset name: default, ideal, jj, layered96 (default: default)")
    p.add_argument("--zoo", type=int, metavar="SEED",
                   help="serve the zoo board drawn from SEED (sim_backend.emulator.zoo: element curves of several "
                        "shapes, weak gains, per-node time constants, ADC/DAC errors, a capacity); the same as a "
                        "board file holding `zoo = SEED`. Not with --board")
    p.add_argument("--port", type=int, default=5025, help="TCP port (0: pick a free one; default 5025)")
    p.add_argument("--host", default="127.0.0.1", help="loopback address to bind (127.0.0.0/8 or ::1 only)")
    p.add_argument("--pty", action="store_true", help="also serve on a pseudo-terminal (serial line)")
    p.add_argument("--ready-file", help="write the ready JSON here once serving")
    p.add_argument("--seed", type=int, help="override the board seed (hidden truth and acquisition noise)")
    p.add_argument("--fault-rate", type=float, help="probability per reply of an injected fault (default: board file, 0)")
    p.add_argument("--truth-file", help="write the hidden truth (JSON) here")
    p.add_argument("--parent-pid", type=int,
                   help="exit when the process with this pid ends (launchers pass their own pid, so that an "
                        "emulator never outlives a killed notebook or test run)")
    p.add_argument("--no-warmup", action="store_true", help="do not load the twin kernel before READY")
    p.add_argument("--print-board", action="store_true",
                   help="print the board file TOML of a preset (or of --zoo SEED) and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="log connections and faults to stderr")
    return p


def _write_json_atomic(path: Path, obj: dict) -> None:
    """Write ``obj`` as JSON through a unique temporary file beside ``path`` (never a fixed name)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(obj) + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _output_problem(path: str, option: str) -> str | None:
    """Why ``path`` cannot be written (checked before the emulator starts), or None."""
    p = Path(path)
    if p.is_symlink():
        return f"{option} {path} is a symlink: give the real path"
    if p.exists() and not p.is_file():
        return f"{option} {path} is a folder or special file, not a file"
    parent = p.parent
    if not parent.is_dir():
        return f"{option} {path}: its folder {parent} does not exist (or is a file)"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{option} {path}: its folder {parent} is not writable"
    return None


def _board_file_problem(board: str | None) -> str | None:
    """An existing ``--board`` file that is empty (or blank) is refused, not read as the defaults."""
    if board is None or not os.path.isfile(board):
        return None
    try:
        if not Path(board).read_text(encoding="utf-8").strip():
            return f"--board {board} is empty: a board file needs at least its [board] table"
    except (OSError, UnicodeDecodeError) as e:
        return f"--board {board}: cannot read it as UTF-8 TOML ({e})"
    return None


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (and is not our reparented-to init)."""
    if os.getppid() != pid:  # our parent died and we were adopted
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True


def main(argv=None) -> int:
    """Run the emulator until SIGTERM/SIGINT; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="emulator: %(levelname)s %(message)s")

    if args.zoo is not None and args.board is not None:
        print("emulator: give --board or --zoo, not both", file=sys.stderr)
        return 2
    if args.zoo is not None and args.zoo < 0:
        print(f"emulator: --zoo must be a non-negative integer, got {args.zoo}", file=sys.stderr)
        return 2
    if args.print_board and args.zoo is not None:
        sys.stdout.write(zoo_board_toml(args.zoo))
        return 0
    if args.print_board:
        name = args.board or "default"
        if name not in PRESETS:
            print(f"emulator: no preset {name!r}; presets: {sorted(PRESETS)}", file=sys.stderr)
            return 2
        sys.stdout.write(PRESETS[name])
        return 0
    try:
        host = check_loopback(args.host)
    except ValueError as e:
        print(f"emulator: {e}", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print(f"emulator: --port must be 0..65535, got {args.port}", file=sys.stderr)
        return 2
    problems = [_board_file_problem(args.board)] + [
        _output_problem(path, option) for path, option in ((args.ready_file, "--ready-file"),
                                                           (args.truth_file, "--truth-file")) if path]
    for problem in problems:
        if problem:
            print(f"emulator: {problem}", file=sys.stderr)
            return 2
    try:
        if args.zoo is not None:
            desc = draw_board(args.zoo)
        else:
            desc = board_from_name_or_path(args.board)
        if args.seed is not None:
            if args.seed < 0:
                raise BoardFileError(f"--seed must be >= 0, got {args.seed}")
            desc = replace(desc, seed=args.seed)
        if args.fault_rate is not None:
            desc = replace(desc, faults=replace(desc.faults, rate=args.fault_rate).validated("--fault-rate"))
    except (OSError, ValueError) as e:
        print(f"emulator: {e}", file=sys.stderr)
        return 2

    board = Board(desc)
    if args.truth_file:
        try:
            dump_truth(board.truth, args.truth_file)
        except OSError as e:
            print(f"emulator: cannot write --truth-file {args.truth_file}: {e.strerror or e}", file=sys.stderr)
            return 2
    if not args.no_warmup:
        warm_up(board.params(board.truth["channels"]["vmin"] * 0.0, desc.temperature_k))

    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())

    instrument = Instrument(board)
    faults = FaultInjector(desc.faults, desc.seed)
    try:
        tcp = TcpServer(instrument, faults, host, args.port)
    except OSError as e:
        print(f"emulator: cannot listen on {host}:{args.port}: {e}", file=sys.stderr)
        instrument.close()
        return 1
    pty = PtyServer(instrument, faults) if args.pty else None
    tcp.start()
    if pty:
        pty.start()

    ready = {
        "tcp": tcp.resource,
        "host": host,
        "port": tcp.port,
        "pty": pty.path if pty else None,
        "asrl": pty.resource if pty else None,
        "pid": os.getpid(),
        "board": desc.name,
        "nodes": board.network.n_nodes,
        "channels": board.n_channels,
    }
    ready_file = Path(args.ready_file) if args.ready_file else None
    if ready_file:
        try:
            _write_json_atomic(ready_file, ready)
        except OSError as e:
            print(f"emulator: cannot write --ready-file {ready_file}: {e.strerror or e}", file=sys.stderr)
            tcp.close()
            if pty:
                pty.close()
            instrument.close()
            return 2
    sys.stdout.write("READY " + json.dumps(ready) + "\n")
    sys.stdout.flush()

    try:
        while not stop.wait(0.5):
            if args.parent_pid is not None and not _alive(args.parent_pid):
                log.info("parent process %d is gone", args.parent_pid)
                break
    finally:
        log.info("shutting down")
        tcp.close()
        if pty:
            pty.close()
        instrument.close()
        if ready_file:
            try:
                ready_file.unlink()
            except OSError:
                pass
    return 0
