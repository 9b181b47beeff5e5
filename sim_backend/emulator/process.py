"""Start the board emulator as its own process and wait until it listens.

>>> with running_emulator(board="layered96", pty=True) as emu:          # doctest: +SKIP
...     emu.tcp, emu.asrl, emu.port, emu.truth()

Used by the demo, the benchmarks and the tests: the emulator always runs as a separate
``python -m sim_backend.emulator`` process on 127.0.0.1, exactly as an operator would start it,
so everything that talks to it goes through real sockets or a real pty.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sim_backend.emulator.truth import load_truth

__all__ = ["EmulatorProcess", "running_emulator", "start_emulator"]

#: the folder that holds the ``sim_backend`` package (put on the child's PYTHONPATH)
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class EmulatorProcess:
    """A running emulator.

    ``tcp`` VISA resource (``TCPIP0::127.0.0.1::<port>::SOCKET``), ``host``, ``port``, ``pty``
    (slave path or None), ``asrl`` (``ASRL<pty>::INSTR`` or None), ``proc`` (Popen),
    ``truth_file`` (Path or None), ``ready`` (the full ready JSON), ``log_file`` (its stderr).
    """

    proc: subprocess.Popen
    ready: dict
    truth_file: Path | None
    log_file: Path
    stdout_lines: list = field(default_factory=list)

    @property
    def tcp(self) -> str:
        return self.ready["tcp"]

    @property
    def host(self) -> str:
        return self.ready["host"]

    @property
    def port(self) -> int:
        return int(self.ready["port"])

    @property
    def pty(self) -> str | None:
        return self.ready["pty"]

    @property
    def asrl(self) -> str | None:
        return self.ready["asrl"]

    @property
    def pid(self) -> int:
        return int(self.ready["pid"])

    def truth(self) -> dict:
        """The hidden truth (see :mod:`sim_backend.emulator.truth`)."""
        if self.truth_file is None:
            raise RuntimeError("this emulator was started without a truth file")
        return load_truth(self.truth_file)

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait ``timeout`` s, then SIGKILL; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def start_emulator(
    *,
    board: str | os.PathLike | None = None,
    pty: bool = False,
    truth: bool = True,
    extra_args=(),
    workdir: str | os.PathLike | None = None,
    timeout: float = 60.0,
) -> EmulatorProcess:
    """Start ``python -m sim_backend.emulator --port 0 ...`` and wait for its READY line.

    ``board`` is a board file or preset name; ``workdir`` holds the ready, truth and log files
    (default: a new temporary directory).  Raises ``RuntimeError`` (with the emulator's stderr)
    if it exits or is not ready within ``timeout`` seconds (the twin kernel may compile first).
    """
    work = Path(workdir).resolve() if workdir is not None else Path(tempfile.mkdtemp(prefix="tc-emu-"))
    work.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    ready_file = work / f"ready-{tag}.json"
    truth_file = work / f"truth-{tag}.json" if truth else None
    log_file = work / f"emulator-{tag}.log"
    cmd = [sys.executable, "-m", "sim_backend.emulator", "--port", "0", "--ready-file", str(ready_file),
           "--parent-pid", str(os.getpid())]
    if board is not None:  # a preset name, or a board file (made absolute: the child runs in workdir)
        cmd += ["--board", str(Path(board).resolve()) if Path(board).exists() else str(board)]
    if pty:
        cmd.append("--pty")
    if truth_file is not None:
        cmd += ["--truth-file", str(truth_file)]
    cmd += [str(a) for a in extra_args]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    log = open(log_file, "wb")
    try:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
    finally:
        log.close()
    lines: list[str] = []
    got_ready = threading.Event()

    def drain():
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            lines.append(line)
            if line.startswith("READY "):
                got_ready.set()

    threading.Thread(target=drain, name="emulator-stdout", daemon=True).start()
    deadline = time.monotonic() + timeout
    while not got_ready.wait(0.05):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            err = log_file.read_text(errors="replace") if log_file.exists() else ""
            raise RuntimeError(
                f"emulator {'exited with status ' + str(proc.returncode) if proc.returncode is not None else 'not ready'}"
                f" (command: {' '.join(cmd)}); stderr:\n{err[-4000:]}"
            )
    ready_line = next(l for l in lines if l.startswith("READY "))
    ready = json.loads(ready_line[len("READY ") :])
    return EmulatorProcess(proc, ready, truth_file, log_file, lines)


@contextmanager
def running_emulator(**kwargs):
    """Context manager around :func:`start_emulator`; stops the process (SIGTERM, then kill)."""
    emu = start_emulator(**kwargs)
    try:
        yield emu
    finally:
        emu.stop()
