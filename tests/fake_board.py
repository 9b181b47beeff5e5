"""A small, deliberately misbehaving TC board on 127.0.0.1 for the robustness tests and the fuzz run.

:class:`FakeBoard` speaks just enough of the board manual (identity, sizes, ``BOARD:MAP?``,
``DAC:BLOCK``/``DAC:BLOCK?``, ``OUTP``, ``SYST:ERR?``) for :class:`drivers.board.TCBoard` to open
it, and misbehaves in one ``mode`` (see :data:`MODES`) when the driver sends the ``trigger``
command.  It checks every DAC write it receives against its own map *and* the DAC's +-10 V span:
``unsafe_writes`` counts writes outside either (the driver must never send one).

A 2-node, 1-input board: channels Q0 Q1 R0 R1 B0 B1 C(0,1) W(0,0) W(0,1).
"""

from __future__ import annotations

import random
import re
import socket
import struct
import threading
import time

__all__ = ["FakeBoard", "MODES", "MAP_ROWS"]

MAP_ROWS = [
    (0, "Q", 0, -1, -2.5, 5.0, 4.0, 0), (1, "Q", 1, -1, -2.5, 5.0, 4.0, 0),
    (2, "R", 0, -1, 0.0, 5.0, 1.0, 0), (3, "R", 1, -1, 0.0, 5.0, 1.0, 0),
    (4, "B", 0, -1, -5.0, 5.0, 1.0, 0), (5, "B", 1, -1, -5.0, 5.0, 1.0, 0),
    (6, "C", 0, 1, -5.0, 5.0, 1.0, 0), (7, "W", 0, 0, -5.0, 5.0, 1.0, 0), (8, "W", 0, 1, -5.0, 5.0, 1.0, 0),
]

#: mode -> what the board does when the trigger command arrives
MODES = {
    "good": "answers correctly",
    "huge_header": "answers a block query with the header #9999999999 and then a trickle of bytes",
    "endless_line": "answers with a line that never ends (bytes keep coming)",
    "garbage": "answers with random bytes",
    "short_block": "announces more block bytes than it sends, then goes quiet",
    "long_block": "sends more block bytes than it announces",
    "silence": "never answers",
    "disconnect": "closes the connection",
    "error_storm": "SYST:ERR? never reports an empty queue",
    "wrong_count": "answers BOARD:CHAN? with a count that does not match the map",
    "lying_map": "a map whose safe ranges exceed the DAC's +-10 V span",
    "huge_size": "claims 10**12 channels",
    "nan": "answers numbers with NaN",
    "bad_idn": "is not a TCLAB board",
}

_BLOCK_CMD = re.compile(rb"^(DAC:BLOCK|INP:BLOCK)\s+(\d+,)?#(\d)")


def _block(payload: bytes) -> bytes:
    n = str(len(payload)).encode()
    return b"#" + str(len(n)).encode() + n + payload


class FakeBoard:
    """A loopback TCP server in a thread; ``resource`` is its VISA resource string.

    ``mode`` is one of :data:`MODES`; ``trigger`` the command (upper-case prefix) whose reply
    misbehaves (default: the first command the mode can spoil).  Use as a context manager.
    """

    def __init__(self, mode: str = "good", trigger: str | None = None, seed: int = 0):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        self.trigger = (trigger or {"huge_header": "BOARD:MAP?", "short_block": "BOARD:MAP?",
                                    "long_block": "BOARD:MAP?", "wrong_count": "BOARD:CHAN?",
                                    "huge_size": "BOARD:CHAN?", "nan": "BOARD:TAU?",
                                    "error_storm": "SYST:ERR?"}.get(mode, "*IDN?")).upper()
        self.rng = random.Random(seed)
        self.dac = [0.0] * len(MAP_ROWS)
        self.outp = 0
        self.writes = 0  # DAC writes received
        self.unsafe_writes = 0  # DAC writes outside the map or +-10 V
        self.outp_off_received = 0
        self._srv = socket.create_server(("127.0.0.1", 0))
        self._srv.settimeout(0.2)
        self.port = self._srv.getsockname()[1]
        self.resource = f"TCPIP0::127.0.0.1::{self.port}::SOCKET"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "FakeBoard":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._srv.close()
        for t in self._threads:
            t.join(timeout=2)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._srv.accept()
            except (socket.timeout, OSError):
                continue
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    # ------------------------------------------------------------------ protocol
    def _map_payload(self) -> bytes:
        rows = MAP_ROWS
        if self.mode == "lying_map":
            rows = [(c, k, a, b, -1000.0, 1000.0, g, p) for (c, k, a, b, _, _, g, p) in rows]
        return "".join(f"{c},{k},{a},{b},{lo},{hi},{g},{p}\n" for (c, k, a, b, lo, hi, g, p) in rows).encode()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        buf = b""
        self._errors: list[str] = []
        try:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(1 << 16)
                except socket.timeout:
                    continue
                if not chunk:
                    return
                buf += chunk
                while True:
                    cmd, rest = self._split(buf)
                    if cmd is None:
                        break
                    buf = rest
                    if self._handle(conn, cmd) == "close":
                        return
        except OSError:
            return
        finally:
            conn.close()

    @staticmethod
    def _split(buf: bytes):
        """One command line (a block's payload may hold ``\\n``) and the rest, or (None, buf)."""
        m = _BLOCK_CMD.match(buf)
        if m:
            d = int(m.group(3))
            start = m.end()
            if len(buf) < start + d:
                return None, buf
            n = int(buf[start:start + d] or b"0")
            end = start + d + n
            if len(buf) < end + 1:
                return None, buf
            return buf[:end], buf[end + 1:]
        i = buf.find(b"\n")
        if i < 0:
            return None, buf
        return buf[:i], buf[i + 1:]

    def _misbehave(self, conn: socket.socket) -> str | None:
        mode = self.mode
        if mode == "silence":
            return "silent"
        if mode == "disconnect":
            return "close"
        if mode == "garbage":
            conn.sendall(bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 300))) + b"\n")
            return "done"
        if mode == "endless_line":
            deadline = time.monotonic() + 30
            try:
                while not self._stop.is_set() and time.monotonic() < deadline:
                    conn.sendall(b"x" * 65536)
            except OSError:
                pass
            return "close"
        if mode == "huge_header":
            try:
                conn.sendall(b"#9999999999")
                for _ in range(50):
                    conn.sendall(b"y" * 1024)
                    time.sleep(0.01)
            except OSError:
                pass
            return "done"
        if mode == "short_block":
            conn.sendall(b"#3900" + b"z" * 10)
            return "done"
        if mode == "long_block":
            conn.sendall(_block(self._map_payload())[:-1] + b"EXTRA;0,\"No error\"\n")
            return "done"
        return None

    def _handle(self, conn: socket.socket, cmd: bytes) -> str | None:
        if _BLOCK_CMD.match(cmd):
            self._block_write(cmd)
            return None
        replies = []
        for part in cmd.decode("ascii", "replace").split(";"):
            q = part.strip().upper()
            if not q:
                continue
            if q.startswith(self.trigger) and self.mode not in ("good", "lying_map", "wrong_count", "huge_size",
                                                                "nan", "bad_idn", "error_storm"):
                r = self._misbehave(conn)
                if r == "close":
                    return "close"
                return None  # silent / done: nothing else on this line
            reply = self._answer(q)
            if reply is not None:
                replies.append(reply)
        if replies:
            conn.sendall(";".join(replies).encode("latin-1") + b"\n")
        return None

    def _answer(self, q: str) -> str | None:
        if q.startswith("SYST:ERR"):
            if self.mode == "error_storm":
                return '-222,"Data out of range"'
            return self._errors.pop(0) if self._errors else '0,"No error"'
        if q == "*IDN?":
            return "ACME,NOTABOARD,1,1" if self.mode == "bad_idn" else "TCLAB,FAKE-2,0001,1.0"
        if q in ("*CLS", "*RST"):
            self._errors.clear()
            return None
        if q == "BOARD:TECH?":
            return "RLC"
        if q == "BOARD:NODES?":
            return "2"
        if q == "BOARD:INPUTS?":
            return "1"
        if q == "BOARD:CHAN?":
            return {"wrong_count": "5", "huge_size": str(10**12)}.get(self.mode, str(len(MAP_ROWS)))
        if q == "BOARD:TAU?":
            return "nan" if self.mode == "nan" else "1e-06"
        if q == "BOARD:MAP?":
            return _block(self._map_payload()).decode()
        if q == "ACQ:RANGE?":
            return "4.0"
        if q == "SYST:TEMP?":
            return "300.0"
        if q == "ACQ:STAT?":
            return "IDLE"
        if q == "INP:COUNT?":
            return "0"
        if q == "ACQ:CAP?":
            return str(1 << 20)
        if q == "OUTP?":
            return str(self.outp)
        if q.startswith("OUTP"):
            self.outp = 1 if q.endswith("ON") else 0
            self.outp_off_received += self.outp == 0
            return None
        if q.startswith("DAC:BLOCK?"):
            m = re.match(r"DAC:BLOCK\?\s*(\d+),(\d+)", q)
            if not m:
                self._errors.append('-109,"Missing parameter"')
                return None
            a, n = int(m.group(1)), int(m.group(2))
            if a + n > len(self.dac):
                self._errors.append('-222,"Data out of range"')
                return None
            return _block(struct.pack(f"<{n}f", *self.dac[a:a + n])).decode("latin-1")
        self._errors.append('-113,"Undefined header"')
        return None

    def _block_write(self, cmd: bytes) -> None:
        m = _BLOCK_CMD.match(cmd)
        if m.group(1) != b"DAC:BLOCK":
            return
        start = int(m.group(2)[:-1])
        d = int(m.group(3))
        payload = cmd[m.end() + d:]
        vals = struct.unpack(f"<{len(payload) // 4}f", payload[: len(payload) // 4 * 4])
        self.writes += 1
        for i, v in enumerate(vals):
            ch = start + i
            lo, hi = MAP_ROWS[ch][4:6] if ch < len(MAP_ROWS) else (0.0, -1.0)
            if not (lo <= v <= hi) or not (-10.0 <= v <= 10.0):
                self.unsafe_writes += 1
                break
        else:
            for i, v in enumerate(vals):
                self.dac[start + i] = v
