"""Transports: a TCP socket server on loopback and a pseudo-terminal, both speaking the manual.

Each TCP connection (any number, one after another or at once) and the pty get their own
:class:`~sim_backend.emulator.scpi.Scanner`; all share one
:class:`~sim_backend.emulator.instrument.Instrument`.  Replies pass through the
:class:`~sim_backend.emulator.faults.FaultInjector`.

Only loopback addresses (127.0.0.0/8, ::1) are ever bound: :func:`check_loopback` refuses the
rest.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import select
import socket
import termios
import threading
import time
import tty

from .faults import FaultInjector
from .instrument import Instrument
from .scpi import Scanner

__all__ = ["check_loopback", "TcpServer", "PtyServer"]

log = logging.getLogger(__name__)

_RECV = 1 << 16


def check_loopback(host: str) -> str:
    """Return ``host`` as a literal loopback address, or raise ``ValueError``.

    ``localhost`` maps to ``127.0.0.1``; nothing is resolved through DNS.
    """
    h = "127.0.0.1" if host == "localhost" else host.strip("[]")
    try:
        addr = ipaddress.ip_address(h)
    except ValueError:
        raise ValueError(f"--host must be a loopback IP address (127.0.0.0/8 or ::1), got {host!r}") from None
    if not addr.is_loopback:
        raise ValueError(f"refusing to bind {host!r}: only loopback addresses (127.0.0.0/8, ::1) are allowed")
    return str(addr)


class TcpServer:
    """Serve the instrument on ``host:port`` (port 0: a free port, see :attr:`port`)."""

    def __init__(self, instrument: Instrument, faults: FaultInjector, host: str = "127.0.0.1", port: int = 5025):
        self.instrument = instrument
        self.faults = faults
        self.host = check_loopback(host)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((self.host, port))
        self._sock.listen(8)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._accept_thread = threading.Thread(target=self._accept_loop, name="tcp-accept", daemon=True)

    @property
    def resource(self) -> str:
        """VISA resource string, e.g. ``TCPIP0::127.0.0.1::5025::SOCKET``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"TCPIP0::{host}::{self.port}::SOCKET"

    def start(self) -> None:
        self._accept_thread.start()

    def close(self) -> None:
        """Stop accepting, close every connection, wait briefly for the threads."""
        self._stop.set()
        try:
            self._sock.close()
        except OSError:
            pass
        with self._conns_lock:
            conns = list(self._conns)
        for c in conns:
            _hard_close(c)
        self._accept_thread.join(2.0)
        for t in self._threads:
            t.join(1.0)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, addr = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._conns_lock:
                self._conns.add(conn)
            t = threading.Thread(target=self._serve, args=(conn, addr), name=f"tcp-{addr[1]}", daemon=True)
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
            t.start()

    def _serve(self, conn: socket.socket, addr) -> None:
        log.info("connection from %s", addr)
        scanner = Scanner()
        try:
            while not self._stop.is_set():
                try:
                    data = conn.recv(_RECV)
                except OSError:
                    break
                if not data:
                    break
                for line in scanner.feed(data):
                    reply = self.instrument.execute(line)
                    if reply is not None and not self._send(conn, reply):
                        return
        finally:
            with self._conns_lock:
                self._conns.discard(conn)
            _hard_close(conn)
            log.info("connection from %s closed", addr)

    def _send(self, conn: socket.socket, reply: bytes) -> bool:
        """Send a reply through the fault injector; False when the connection is to be closed."""
        fault = self.faults.draw(len(reply))
        try:
            if fault is None:
                conn.sendall(reply)
                return True
            log.info("fault injected: %s", fault)
            if fault.kind == "delay":
                if self._stop.wait(fault.delay_s):
                    return False
                conn.sendall(reply)
                return True
            if fault.kind == "truncate" and fault.keep:
                conn.sendall(reply[: fault.keep])
        except OSError:
            pass
        return False


def _hard_close(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        conn.close()
    except OSError:
        pass


class PtyServer:
    """Serve the instrument on the master side of a pseudo-terminal pair (raw mode).

    :attr:`path` is the slave device (e.g. ``/dev/pts/7``); clients open it as a serial port
    (``ASRL/dev/pts/7::INSTR``).  The slave stays open here too, so the master never sees EOF
    when a client closes and a new client can open the path again.  A dropped/truncated reply
    (fault injection) simply loses the rest of that reply.
    """

    #: Seconds without progress after which an unread reply is dropped.
    write_timeout_s = 5.0

    def __init__(self, instrument: Instrument, faults: FaultInjector):
        self.instrument = instrument
        self.faults = faults
        self._master, self._slave = os.openpty()
        for fd in (self._slave, self._master):
            tty.setraw(fd)
            attrs = termios.tcgetattr(fd)
            attrs[4] = attrs[5] = termios.B115200  # ispeed, ospeed (cosmetic on a pty)
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
        self.path = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pty", daemon=True)

    @property
    def resource(self) -> str:
        return f"ASRL{self.path}::INSTR"

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def _loop(self) -> None:
        scanner = Scanner()
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([self._master], [], [], 0.2)
                if not r:
                    continue
                data = os.read(self._master, _RECV)
            except OSError:
                time.sleep(0.05)
                continue
            if not data:
                continue
            for line in scanner.feed(data):
                reply = self.instrument.execute(line)
                if reply is not None:
                    self._send(reply)

    def _send(self, reply: bytes) -> None:
        fault = self.faults.draw(len(reply))
        if fault is not None:
            log.info("fault injected (pty): %s", fault)
            if fault.kind == "delay":
                if self._stop.wait(fault.delay_s):
                    return
            elif fault.kind == "truncate":
                reply = reply[: fault.keep]
            else:
                return
        view = memoryview(reply)
        deadline = time.monotonic() + self.write_timeout_s
        while view and not self._stop.is_set():
            try:
                _, w, _ = select.select([], [self._master], [], 0.2)
                if not w:
                    if time.monotonic() > deadline:
                        # Nobody reads the line: the rest of the reply is lost, as on a real wire.
                        log.warning("pty: no reader for %.0f s, %d reply bytes dropped", self.write_timeout_s, len(view))
                        termios.tcflush(self._master, termios.TCOFLUSH)
                        return
                    continue
                k = os.write(self._master, view)
            except OSError:
                return
            view = view[k:]
            deadline = time.monotonic() + self.write_timeout_s
