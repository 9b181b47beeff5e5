"""Byte transports for TC boards: PyVISA (pyvisa-py) sockets and serial lines, or plain pyserial.

A transport moves bytes and nothing else; SCPI, blocks and error handling live in
:mod:`drivers.scpi`.  The interface (:class:`Transport`) is deliberately tiny:

* ``write(data)`` - send raw bytes (the caller appends ``\\n``);
* ``read_line()`` - one reply line, terminator stripped;
* ``read_exact(n)`` - exactly ``n`` bytes, whatever they contain (binary blocks hold ``\\n``);
* ``timeout`` - seconds, for every read call as a whole;
* ``close()``, ``reopen()``, ``clear_input()``.

Failures are reported with two exception types only, so that the session can decide what to do:
:class:`TransportTimeout` (a :class:`TimeoutError`: nothing, or not enough, arrived in time) and
:class:`TransportClosed` (a :class:`ConnectionError`: the peer went away or the line failed).

Resource strings (:func:`open_transport`):

=====================================  ==============================================
``TCPIP0::127.0.0.1::5025::SOCKET``    :class:`VisaTransport`, pyvisa-py TCP socket
``ASRL/dev/pts/3::INSTR``              :class:`VisaTransport`, pyvisa-py serial line
``/dev/pts/3``, ``serial:///dev/pts/3`` :class:`SerialTransport` (pyserial)
=====================================  ==============================================

Other pyserial URLs (``loop://``, ``socket://``, ``rfc2217://``, ...) are refused by
:func:`classify_resource`, as by the ``tc-hw`` command line: a board is a TCP socket or a serial
line.  Reads are bounded: a reply line longer than :data:`MAX_LINE_BYTES` raises
:class:`TransportClosed` (a misbehaving peer) instead of growing without limit.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import time
from typing import Protocol, runtime_checkable

import pyvisa
import serial
from pyvisa import constants, errors

__all__ = [
    "Transport",
    "TransportTimeout",
    "TransportClosed",
    "VisaTransport",
    "SerialTransport",
    "open_transport",
    "classify_resource",
    "BAUD_RATE",
    "MAX_LINE_BYTES",
]

log = logging.getLogger("tc_hw.drivers")

#: Serial line settings of the board manual: 115200 8N1, no flow control.
BAUD_RATE = 115200
#: Longest reply line accepted (bytes, terminator excluded).  The longest legitimate text reply
#: is a few joined numbers (``ACQ:STAT?;INP:COUNT?;OUTP?``) or an error text; 64 KiB is far
#: beyond it.  Binary data is read by length (:meth:`Transport.read_exact`), never as a line.
MAX_LINE_BYTES = 1 << 16


class TransportTimeout(TimeoutError):
    """No (complete) reply arrived within the transport timeout."""


class TransportClosed(ConnectionError):
    """The connection was dropped by the peer, or the line failed."""


@runtime_checkable
class Transport(Protocol):
    """What :class:`drivers.scpi.ScpiSession` needs from a connection."""

    resource: str
    #: Rough sustained throughput in bytes per second, used to size timeouts of bulk reads.
    bytes_per_second: float

    @property
    def timeout(self) -> float:
        """Read timeout in seconds (applies to one ``read_line``/``read_exact`` call)."""

    @timeout.setter
    def timeout(self, seconds: float) -> None: ...

    def write(self, data: bytes) -> None:
        """Send ``data`` as is."""

    def read_line(self) -> bytes:
        """Read up to and including ``\\n``; return the line without the terminator."""

    def read_exact(self, n: int) -> bytes:
        """Read exactly ``n`` bytes."""

    def clear_input(self) -> None:
        """Discard whatever has been received and not read yet."""

    def close(self) -> None:
        """Release the connection (idempotent)."""

    def reopen(self) -> None:
        """Close and open the same resource again."""


def _check_line_length(transport, n: int) -> None:
    """Refuse a reply line that grew past :data:`MAX_LINE_BYTES` without a terminator."""
    if n > MAX_LINE_BYTES:
        transport.clear_input()
        raise TransportClosed(f"{transport.resource}: reply line longer than {MAX_LINE_BYTES} bytes without a "
                              "terminator: the board is misbehaving (input discarded)")


def _check_timeout(seconds: float) -> float:
    seconds = float(seconds)
    if not (seconds > 0) or seconds != seconds:
        raise ValueError(f"timeout must be a positive number of seconds, got {seconds!r}")
    return seconds


# --------------------------------------------------------------------------------------------
# PyVISA


_RM = None


def _resource_manager():
    """The shared pyvisa-py resource manager (``ResourceManager('@py')``)."""
    global _RM
    if _RM is None:
        _RM = pyvisa.ResourceManager("@py")
    return _RM


class VisaTransport:
    """A PyVISA message-based resource on the pyvisa-py backend.

    ``TCPIP0::<host>::<port>::SOCKET`` and ``ASRL<port>::INSTR`` resources.  Read and write
    termination are ``\\n``; binary data is read by length with ``read_bytes`` so blocks that
    contain ``\\n`` are never cut.  Serial lines are configured 115200 8N1 without flow control.

    For TCP sockets the transport additionally watches the underlying socket of the pyvisa-py
    session (when that backend is in use) so that a connection closed by the board is reported
    at once as :class:`TransportClosed`, instead of after a full timeout, and reads only what
    has arrived (no blind waits inside pyvisa-py).
    """

    def __init__(self, resource: str, timeout_s: float = 5.0, *, open_timeout_s: float = 5.0):
        self.resource = resource
        self._timeout = _check_timeout(timeout_s)
        self._open_timeout = _check_timeout(open_timeout_s)
        self.is_socket = resource.upper().endswith("::SOCKET")
        self.bytes_per_second = 20e6 if self.is_socket else BAUD_RATE / 10.0
        self._res = None
        self._sock: socket.socket | None = None
        self._pyvisa_session = None
        self._buf = bytearray()
        self._open()

    # -- lifecycle -----------------------------------------------------------------------
    def _open(self) -> None:
        rm = _resource_manager()
        try:
            res = rm.open_resource(self.resource, open_timeout=int(self._open_timeout * 1000))
        except pyvisa.errors.VisaIOError as e:
            raise TransportClosed(f"cannot open {self.resource}: {e}; is the board (or emulator) running?") from e
        except Exception as e:  # pyvisa-py raises a bare Exception on a refused connection
            raise TransportClosed(f"cannot open {self.resource}: {e}; is the board (or emulator) running?") from e
        self._res = res
        res.read_termination = "\n"
        res.write_termination = "\n"
        res.chunk_size = 1 << 20
        if self.is_socket:
            self._attach_socket()
            if self._sock is not None:
                # pyvisa-py connects without blocking and does not notice a refused connection
                err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self.close()
                    raise TransportClosed(
                        f"cannot connect to {self.resource}: {os.strerror(err)}; is the board (or emulator) running?"
                    )
        else:
            res.baud_rate = BAUD_RATE
            res.data_bits = 8
            res.parity = constants.Parity.none
            res.stop_bits = constants.StopBits.one
            res.flow_control = constants.ControlFlow.none
            res.end_input = constants.SerialTermination.termination_char
            res.end_output = constants.SerialTermination.none
        self.timeout = self._timeout
        self._buf.clear()
        log.debug("opened %s", self.resource)

    def _attach_socket(self) -> None:
        """Find the socket of the pyvisa-py session (best effort; other backends: no watching)."""
        self._sock = None
        self._pyvisa_session = None
        try:
            sess = self._res.visalib.sessions[self._res.session]
            sock = getattr(sess, "interface", None)
            if isinstance(sock, socket.socket) and hasattr(sess, "_pending_buffer"):
                self._sock = sock
                self._pyvisa_session = sess
                # Lines are split here; VISA itself must not stop at 0x0A inside binary data.

                self._res.set_visa_attribute(constants.VI_ATTR_TERMCHAR_EN, constants.VI_FALSE)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except Exception:  # pragma: no cover - non pyvisa-py backend
            log.debug("socket of %s not accessible; using plain VISA reads", self.resource)

    def close(self) -> None:
        res, self._res = self._res, None
        self._sock = None
        self._pyvisa_session = None
        self._buf.clear()
        if res is not None:
            try:
                res.close()
            except Exception as e:  # already dead: nothing more to release
                log.debug("closing %s: %s", self.resource, e)

    def reopen(self) -> None:
        self.close()
        self._open()

    @property
    def is_open(self) -> bool:
        return self._res is not None

    # -- settings ------------------------------------------------------------------------
    @property
    def timeout(self) -> float:
        return self._timeout

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        self._timeout = _check_timeout(seconds)
        if self._res is not None:
            self._res.timeout = max(1, int(round(self._timeout * 1000)))

    # -- I/O -----------------------------------------------------------------------------
    def _require(self):
        if self._res is None:
            raise TransportClosed(f"{self.resource} is closed")
        return self._res

    def _visa_errors(self, e: Exception, what: str) -> Exception:
        if isinstance(e, errors.VisaIOError) and e.error_code == constants.StatusCode.error_timeout:
            return TransportTimeout(f"{self.resource}: {what} timed out after {self._timeout:.3g} s")
        return TransportClosed(f"{self.resource}: {what} failed: {e}")

    def write(self, data: bytes) -> None:
        res = self._require()
        slow = not self.is_socket and len(data) > 0.5 * self._timeout * self.bytes_per_second
        try:
            if slow:  # a big block on a serial line: allow for the baud rate
                res.timeout = int(1000 * (self._timeout + 2.0 * len(data) / self.bytes_per_second))
            res.write_raw(bytes(data))
        except Exception as e:
            raise self._visa_errors(e, "write") from e
        finally:
            if slow and self._res is not None:
                self.timeout = self._timeout

    def clear_input(self) -> None:
        self._buf.clear()
        if self._res is None:
            return
        if self._sock is not None:
            self._pyvisa_session._pending_buffer.clear()
            try:
                while select.select([self._sock], [], [], 0)[0]:
                    if not self._sock.recv(1 << 16):
                        break
            except OSError:
                pass
        else:
            try:
                self._res.flush(_discard_read_mask())
            except Exception as e:
                log.debug("flush of %s: %s", self.resource, e)

    def _fill(self, deadline: float) -> None:
        """Socket path: move at least one newly arrived byte into ``self._buf`` or raise."""
        sess = self._pyvisa_session
        pending = len(sess._pending_buffer)
        try:
            if not pending:
                wait = deadline - time.monotonic()
                if wait <= 0 or not select.select([self._sock], [], [], wait)[0]:
                    raise TransportTimeout(f"{self.resource}: no reply within {self._timeout:.3g} s")
                peek = self._sock.recv(1 << 20, socket.MSG_PEEK)
                if not peek:
                    raise TransportClosed(f"{self.resource}: connection closed by the board")
                avail = len(peek)
            else:
                avail = pending
                if select.select([self._sock], [], [], 0)[0]:
                    avail += len(self._sock.recv(1 << 20, socket.MSG_PEEK))
        except (TransportTimeout, TransportClosed):
            raise
        except OSError as e:
            raise TransportClosed(f"{self.resource}: {e}") from e
        try:
            self._buf += self._res.read_bytes(avail)
        except Exception as e:
            raise self._visa_errors(e, "read") from e

    def read_line(self) -> bytes:
        res = self._require()
        if self._sock is None:
            try:
                line = res.read_raw()
            except Exception as e:
                raise self._visa_errors(e, "read") from e
            return line[:-1] if line.endswith(b"\n") else line
        deadline = time.monotonic() + self._timeout
        start = 0
        while True:
            i = self._buf.find(b"\n", start)
            if i >= 0:
                line = bytes(self._buf[:i])
                del self._buf[: i + 1]
                return line
            start = len(self._buf)
            _check_line_length(self, start)
            self._fill(deadline)

    def read_exact(self, n: int) -> bytes:
        res = self._require()
        if n <= 0:
            return b""
        if self._sock is None:
            try:
                data = res.read_bytes(n)
            except Exception as e:
                raise self._visa_errors(e, f"read of {n} bytes") from e
            if len(data) != n:
                raise TransportClosed(f"{self.resource}: short read ({len(data)} of {n} bytes)")
            return data
        deadline = time.monotonic() + self._timeout
        while len(self._buf) < n:
            self._fill(deadline)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def __repr__(self) -> str:
        return f"VisaTransport({self.resource!r}, timeout_s={self._timeout:g})"


def _discard_read_mask():
    return constants.BufferOperation.discard_read_buffer


# --------------------------------------------------------------------------------------------
# pyserial


class SerialTransport:
    """A serial line opened with pyserial (115200 8N1, no flow control).

    ``port`` is a device path (``/dev/pts/3``, ``COM3``) or ``serial://<path>``, opened with
    pyserial's ``serial_for_url``; the driver accepts no other URL scheme (see :func:`classify_resource`).
    """

    def __init__(self, port: str, timeout_s: float = 5.0, *, baudrate: int = BAUD_RATE):
        self.resource = port
        self.port = port[len("serial://") :] if port.startswith("serial://") else port
        self.baudrate = int(baudrate)
        self.bytes_per_second = self.baudrate / 10.0
        self._timeout = _check_timeout(timeout_s)
        self._ser = None
        self._buf = bytearray()
        self._open()

    def _open(self) -> None:
        try:
            self._ser = serial.serial_for_url(
                self.port,
                baudrate=self.baudrate,
                bytesize=serial.EIGHTBITS,
                parity=serial.PARITY_NONE,
                stopbits=serial.STOPBITS_ONE,
                xonxoff=False,
                rtscts=False,
                dsrdtr=False,
                timeout=self._poll_s(),
                write_timeout=self._timeout,
            )
        except (serial.SerialException, OSError, ValueError) as e:
            raise TransportClosed(f"cannot open serial line {self.port}: {e}") from e
        self._buf.clear()
        log.debug("opened serial line %s", self.port)

    def _poll_s(self) -> float:
        # reads wait at most this long per call and loop until the deadline, so the timeout can
        # change without reconfiguring the port (pyserial re-runs tcsetattr on every change)
        return min(0.05, self._timeout)

    def close(self) -> None:
        ser, self._ser = self._ser, None
        self._buf.clear()
        if ser is not None:
            try:
                ser.close()
            except Exception as e:
                log.debug("closing %s: %s", self.port, e)

    def reopen(self) -> None:
        self.close()
        self._open()

    @property
    def is_open(self) -> bool:
        return self._ser is not None

    @property
    def timeout(self) -> float:
        return self._timeout

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        self._timeout = _check_timeout(seconds)

    def _require(self):
        if self._ser is None:
            raise TransportClosed(f"serial line {self.port} is closed")
        return self._ser

    def write(self, data: bytes) -> None:
        ser = self._require()
        need = self._timeout + 2.0 * len(data) / self.bytes_per_second  # big blocks on a slow line
        try:
            if ser.write_timeout is None or ser.write_timeout < need:
                ser.write_timeout = need
            ser.write(bytes(data))
            ser.flush()
        except serial.SerialTimeoutException as e:
            raise TransportTimeout(f"{self.port}: write timed out after {self._timeout:.3g} s") from e
        except (serial.SerialException, OSError) as e:
            raise TransportClosed(f"{self.port}: write failed: {e}") from e

    def clear_input(self) -> None:
        self._buf.clear()
        if self._ser is not None:
            try:
                self._ser.reset_input_buffer()
            except Exception as e:
                log.debug("reset_input_buffer on %s: %s", self.port, e)

    def _fill(self, deadline: float) -> None:
        ser = self._require()
        while True:
            try:
                chunk = ser.read(max(1, ser.in_waiting))
            except (serial.SerialException, OSError) as e:
                raise TransportClosed(f"{self.port}: read failed: {e}") from e
            if chunk:
                self._buf += chunk
                return
            if time.monotonic() >= deadline:
                raise TransportTimeout(f"{self.port}: no (complete) reply within {self._timeout:.3g} s")

    def read_line(self) -> bytes:
        deadline = time.monotonic() + self._timeout
        start = 0
        while True:
            i = self._buf.find(b"\n", start)
            if i >= 0:
                line = bytes(self._buf[:i])
                del self._buf[: i + 1]
                return line
            start = len(self._buf)
            _check_line_length(self, start)
            self._fill(deadline)

    def read_exact(self, n: int) -> bytes:
        deadline = time.monotonic() + self._timeout
        while len(self._buf) < n:
            self._fill(deadline)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def __repr__(self) -> str:
        return f"SerialTransport({self.resource!r}, timeout_s={self._timeout:g})"


# --------------------------------------------------------------------------------------------


def classify_resource(resource: str) -> str:
    """``"visa"`` or ``"serial"`` for a resource string; raises ``ValueError`` for unsupported ones."""
    r = resource.strip()
    u = r.upper()
    if u.startswith("TCPIP"):
        if u.endswith("::SOCKET"):
            return "visa"
        raise ValueError(
            f"{resource!r}: TC boards speak raw SCPI on a socket; use 'TCPIP0::<host>::5025::SOCKET' (not VXI-11/HiSLIP)"
        )
    if u.startswith("ASRL"):
        if not u.endswith("::INSTR"):
            raise ValueError(f"{resource!r}: serial VISA resources look like 'ASRL/dev/ttyUSB0::INSTR'")
        return "visa"
    if "://" in r and not r.startswith("serial://"):
        raise ValueError(f"{resource!r}: only serial:// URLs are supported (a board is a TCP socket resource "
                         "'TCPIP0::<host>::5025::SOCKET' or a serial line such as '/dev/ttyUSB0')")
    if r.startswith(("/", "serial://")) or u.startswith("COM"):
        return "serial"
    raise ValueError(
        f"unrecognised resource {resource!r}: use 'TCPIP0::<host>::5025::SOCKET', 'ASRL<port>::INSTR', "
        "a serial device path such as '/dev/ttyUSB0', or 'serial:///dev/ttyUSB0'"
    )


def open_transport(resource: str, timeout_s: float = 5.0) -> Transport:
    """Open ``resource`` with the transport its form calls for (see the module docstring)."""
    kind = classify_resource(resource)
    if kind == "visa":
        return VisaTransport(resource.strip(), timeout_s)
    return SerialTransport(resource.strip(), timeout_s)
