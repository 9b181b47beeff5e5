"""SCPI sessions over a :mod:`drivers.transport`: error queue, binary blocks, reconnect and retry.

Error handling follows the board manual: errors go to a queue read with ``SYST:ERR?``, and *a
query that errors sends no reply*.  A driver that simply waits for the reply would wait for the
whole timeout, so every operation here is followed, in the same write, by ``SYST:ERR?``:

* ``write(cmd)`` sends ``cmd\\nSYST:ERR?\\n`` and reads one error line;
* ``query(cmd)`` sends ``cmd\\nSYST:ERR?\\n``; the first line back is either the reply (then the
  error line follows) or, if the query failed, already the error line.  Failed queries are
  therefore reported at once, as :class:`BoardError`, with no blind wait;
* a non-zero error drains the queue (``SYST:ERR?`` until ``0,...``) and raises
  :class:`BoardError` for the first error, carrying all of them.

Transport trouble - a dropped connection, a garbled reply (bad block header, a number that does
not parse, an error line that is not one), or a reply that does not arrive - makes the session
*recover*: reopen the transport, check ``*IDN?`` is the same board, ``*CLS``, call the ``restore``
callback (the board re-sends whatever state differs) and retry the operation, at most
``retries`` times, logging each attempt on the ``tc_hw.drivers`` logger.  Board errors are never
retried: the board understood and refused.
"""

from __future__ import annotations

import logging
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

from tc_hw.model.device import DeviceError

from .blocks import BlockFormatError, encode_block, read_block
from .transport import Transport, TransportClosed, TransportTimeout

__all__ = [
    "ScpiSession",
    "BoardError",
    "ProtocolError",
    "ConnectionLost",
    "ReplyTimeout",
    "ScpiErrorEntry",
    "parse_error_line",
    "bounded_reader",
]

log = logging.getLogger("tc_hw.drivers")

T = TypeVar("T")

_ERR_RE = re.compile(rb'^\s*([+-]?\d+)\s*,\s*"(.*)"\s*$', re.S)
#: ``<reply>;<code>,"<text>"``: a query joined with ``SYST:ERR?`` on one line
_JOINED_RE = re.compile(rb'^(.*);(\s*[+-]?\d+\s*,\s*"[^"]*"\s*)$', re.S)


@dataclass(frozen=True)
class ScpiErrorEntry:
    """One ``SYST:ERR?`` entry."""

    code: int
    text: str

    def __str__(self) -> str:
        return f'{self.code},"{self.text}"'


class BoardError(DeviceError):
    """The board reported an error for ``command`` (SCPI ``code`` and ``text``).

    ``errors`` holds every entry that was in the queue, oldest first (``errors[0]`` is the one
    described by ``code``/``text``).  The board changed nothing for the refused command.
    """

    def __init__(self, code: int, text: str, command: str, errors: tuple = ()):
        self.code = int(code)
        self.text = str(text)
        self.command = command
        self.errors = tuple(errors) or (ScpiErrorEntry(self.code, self.text),)
        more = ""
        if len(self.errors) > 1:
            more = "; also queued: " + ", ".join(str(e) for e in self.errors[1:])
        super().__init__(f'board refused {command!r}: {self.code},"{self.text}"{more}{_advice(self.code)}')


def _advice(code: int) -> str:
    return {
        -100: " (check the command against the board manual)",
        -102: " (syntax: check the command spelling and the block format)",
        -108: " (the command takes no such parameter)",
        -109: " (a parameter is missing)",
        -113: " (unknown command: check the board manual and firmware revision)",
        -200: " (e.g. INIT needs OUTP ON and an input batch)",
        -221: " (not allowed now: e.g. an acquisition is running)",
        -222: " (a value, index or count is out of range)",
        -230: " (nothing acquired: run INIT and wait for DONE first)",
        -350: " (error queue overflowed: earlier errors were lost)",
    }.get(code, "")


class ProtocolError(DeviceError):
    """A reply did not have the expected form (garbled or out of step); the session recovers."""


class ConnectionLost(DeviceError, ConnectionError):
    """The connection failed and could not be recovered within the retry budget."""


class ReplyTimeout(DeviceError, TimeoutError):
    """The board did not answer in time and reported no error; recovery did not help."""


def parse_error_line(line: bytes) -> ScpiErrorEntry:
    """Parse a ``SYST:ERR?`` reply ``<code>,"<text>"``; raises :class:`ProtocolError` otherwise."""
    m = _ERR_RE.match(line)
    if not m:
        raise ProtocolError(f"expected a SYST:ERR? reply '<code>,\"<text>\"', got {line[:80]!r}")
    return ScpiErrorEntry(int(m.group(1)), m.group(2).decode("utf-8", "replace"))


def _is_error_line(line: bytes) -> bool:
    return _ERR_RE.match(line) is not None


def bounded_reader(read_exact: Callable[[int], bytes], limit: int, desc: str) -> Callable[[int], bytes]:
    """``read_exact`` (n -> n bytes) that refuses, with :class:`ProtocolError` naming ``desc``, any
    single read longer than ``limit`` bytes (the header's at most 9 digits and the payload are read
    in separate calls, so this bounds the payload)."""

    def read(n: int) -> bytes:
        if n > max(limit, 16):
            raise ProtocolError(f"{desc}: the board announces a block of {n} bytes, more than the {limit} bytes "
                                "this reply can hold; not read")
        return read_exact(n)

    return read


def _describe(cmd: str, payload: bytes | None = None) -> str:
    if payload is None:
        return cmd if len(cmd) <= 120 else cmd[:117] + "..."
    return f"{cmd}<block of {len(payload)} bytes>"


_TRANSIENT = (TransportClosed, TransportTimeout, ProtocolError, BlockFormatError)

#: Largest binary block a session accepts unless told otherwise (bytes).  A block header is
#: checked against it (and against a per-query bound) *before* any payload byte is read, so a
#: board announcing ``#9999999999`` costs nothing.  :class:`drivers.board.TCBoard` narrows it
#: to what the board's size allows.
DEFAULT_MAX_BLOCK_BYTES = 1 << 26


class ScpiSession:
    """SCPI over a :class:`~drivers.transport.Transport`, with error checks and recovery.

    Parameters
    ----------
    transport:
        An open transport.
    retries:
        How many times one operation is retried after recovering the connection (default 3).
    reconnect_attempts:
        How many times one recovery (reopen, identify, restore) is attempted before giving up
        (default 5).  At most ``retries * reconnect_attempts`` reopens per operation.
    restore:
        Called (with no arguments) after a reconnect, once ``*IDN?`` and ``*CLS`` succeeded; it
        must bring the board back to the state the caller expects (see :class:`drivers.board.TCBoard`).
        It runs with recovery disabled: any transport error in it counts as a failed attempt.
    backoff_s:
        Pause before the first reopen; doubled on each further attempt (at most 2 s).
    """

    def __init__(
        self,
        transport: Transport,
        *,
        retries: int = 3,
        reconnect_attempts: int = 5,
        restore: Callable[[], None] | None = None,
        backoff_s: float = 0.05,
    ):
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if reconnect_attempts < 1:
            raise ValueError(f"reconnect_attempts must be >= 1, got {reconnect_attempts}")
        self.transport = transport
        self.retries = int(retries)
        self.reconnect_attempts = int(reconnect_attempts)
        self.restore = restore
        self.backoff_s = float(backoff_s)
        self.identity: str | None = None
        #: Bound on any reply block (bytes); see :data:`DEFAULT_MAX_BLOCK_BYTES`.
        self.max_block_bytes = DEFAULT_MAX_BLOCK_BYTES
        #: Number of successful recoveries (reopen + restore) so far.
        self.reconnects = 0
        self._recovering = False

    # -- timeouts ------------------------------------------------------------------------
    @property
    def timeout(self) -> float:
        """Default read timeout in seconds."""
        return self.transport.timeout

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        self.transport.timeout = seconds

    @contextmanager
    def timeout_for(self, seconds: float | None) -> Iterator[None]:
        """Temporarily use ``seconds`` as the read timeout (``None``: leave it)."""
        if seconds is None:
            yield
            return
        old = self.transport.timeout
        self.transport.timeout = seconds
        try:
            yield
        finally:
            try:
                self.transport.timeout = old
            except Exception:  # transport closed meanwhile
                pass

    # -- raw line level (no checks, no recovery) -------------------------------------------
    def send(self, text: str, payload: bytes | None = None) -> None:
        """Send ``text`` (+ a binary block of ``payload``) and ``\\n``; no error check."""
        data = text.encode("ascii")
        if payload is not None:
            data += encode_block(payload)
        self.transport.write(data + b"\n")

    def read_line(self) -> str:
        """Read one reply line (no checks, no recovery)."""
        return self.transport.read_line().decode("ascii", "replace")

    # -- error queue ---------------------------------------------------------------------
    def _read_error(self) -> ScpiErrorEntry:
        return parse_error_line(self.transport.read_line())

    def _drain(self, first: ScpiErrorEntry, command: str) -> None:
        """``first`` is non-zero: read the rest of the queue and raise :class:`BoardError`."""
        errors = [first]
        for _ in range(40):  # the queue holds at most 32 entries
            self.transport.write(b"SYST:ERR?\n")
            e = self._read_error()
            if e.code == 0:
                break
            errors.append(e)
        else:
            raise ProtocolError("SYST:ERR? never reported an empty queue")
        raise BoardError(first.code, first.text, command, tuple(errors))

    def check_errors(self, command: str = "(previous commands)") -> None:
        """Read ``SYST:ERR?`` until ``0,...``; raise :class:`BoardError` for the first error."""

        def op():
            self.transport.write(b"SYST:ERR?\n")
            e = self._read_error()
            if e.code:
                self._drain(e, command)

        self._with_recovery(op, "SYST:ERR?")

    # -- checked operations --------------------------------------------------------------
    def write(self, cmd: str, *, check: bool = True, reissue_if: Callable[[], bool] | None = None) -> None:
        """Send one command and (``check=True``) read the error queue after it.

        ``reissue_if`` is for commands that must not simply be repeated (``INIT``): after a
        reconnect it is asked whether the command still has to be sent; ``False`` means the
        board already carried it out.  Without it, commands are assumed idempotent.
        """
        if "?" in cmd:
            raise ValueError(f"{cmd!r} is a query: use query() or query_block(), which read its reply")
        desc = _describe(cmd)
        if not check:
            self._with_recovery(lambda: self.send(cmd), desc)
            return

        def op():
            self.transport.write(cmd.encode("ascii") + b"\nSYST:ERR?\n")
            e = self._read_error()
            if e.code:
                self._drain(e, desc)

        self._with_recovery(op, desc, reissue_if=reissue_if)

    def write_block(self, cmd_prefix: str, payload: bytes, *, check: bool = True) -> None:
        """Send ``cmd_prefix`` immediately followed by a definite-length block of ``payload``.

        The prefix carries its own separator (``"DAC:BLOCK 0,"``, ``"INP:BLOCK "``).
        """
        desc = _describe(cmd_prefix, payload)
        data = cmd_prefix.encode("ascii") + encode_block(payload) + b"\n"

        def op():
            if not check:
                self.transport.write(data)
                return
            self.transport.write(data + b"SYST:ERR?\n")
            e = self._read_error()
            if e.code:
                self._drain(e, desc)

        self._with_recovery(op, desc)

    def query(self, cmd: str, parse: Callable[[str], T] = str, *, timeout_s: float | None = None) -> T:
        """Send a query and return its reply line, converted with ``parse``.

        The query travels as ``cmd;SYST:ERR?``: the board answers ``<reply>;<code>,"<text>"``,
        or only ``<code>,"<text>"`` when the query failed (a failed query sends no reply), so a
        failure raises :class:`BoardError` at once.  A failing ``parse`` (``ValueError``)
        counts as a garbled reply and is retried after recovery.  ``timeout_s`` overrides the
        read timeout (e.g. ``*OPC?`` after a long ``INIT``).
        """
        desc = _describe(cmd)
        if cmd.strip().upper() in ("SYST:ERR?", "SYSTEM:ERROR?", "SYST:ERR:NEXT?"):
            return self._with_recovery(lambda: parse(self._raw_query(cmd)), desc)

        def op():
            with self.timeout_for(timeout_s):
                self.transport.write(cmd.encode("ascii") + b";SYST:ERR?\n")
                line = self.transport.read_line()
            m = _JOINED_RE.match(line)
            if m is None:
                if _is_error_line(line):  # the query failed: only SYST:ERR? answered
                    e = parse_error_line(line)
                    if e.code:
                        self._drain(e, desc)
                    raise ProtocolError(f"{desc}: no reply, and the error queue is empty")
                raise ProtocolError(f"{desc}: garbled reply {line[:80]!r} (expected '<reply>;<code>,\"<text>\"')")
            reply, err = m.group(1), parse_error_line(m.group(2))
            if err.code:
                self._drain(err, f"{desc} (or an earlier command)")
            try:
                return parse(reply.decode("ascii"))
            except (ValueError, UnicodeDecodeError) as x:
                raise ProtocolError(f"{desc}: cannot parse reply {reply[:80]!r}: {x}") from x

        return self._with_recovery(op, desc)

    def _raw_query(self, cmd: str) -> str:
        self.transport.write(cmd.encode("ascii") + b"\n")
        line = self.transport.read_line()
        try:
            return line.decode("ascii")
        except UnicodeDecodeError as e:
            raise ProtocolError(f"{cmd}: reply {line[:80]!r} is not ASCII") from e

    def query_block(self, cmd: str, *, timeout_s: float | None = None, max_bytes: int | None = None) -> bytes:
        """Send a query whose reply is a binary block; return the payload bytes.

        As :meth:`query`, the reply is ``#<d><len><bytes>;<code>,"<text>"`` (or only the error).
        The block is read by its length, so payload bytes may be ``\n``.  ``timeout_s`` bounds
        each read (size it from the expected block length).  ``max_bytes`` (default
        :attr:`max_block_bytes`) bounds the announced length: a longer header is a garbled
        reply (:class:`ProtocolError`, recovered like one) and no payload is read.
        """
        desc = _describe(cmd)
        limit = self.max_block_bytes if max_bytes is None else min(int(max_bytes), self.max_block_bytes)

        def op():
            with self.timeout_for(timeout_s):
                self.transport.write(cmd.encode("ascii") + b";SYST:ERR?\n")
                first = self.transport.read_exact(1)
                if first != b"#":
                    line = first + self.transport.read_line()
                    if _is_error_line(line):
                        e = parse_error_line(line)
                        if e.code:
                            self._drain(e, desc)
                    raise ProtocolError(f"{desc}: expected a binary block, got {line[:80]!r}")
                payload = read_block(bounded_reader(self.transport.read_exact, limit, desc), first=first, terminator=None)
                tail = self.transport.read_line()
            if not tail.startswith(b";"):
                raise ProtocolError(f"{desc}: block of {len(payload)} bytes followed by {tail[:40]!r}, expected ';'")
            err = parse_error_line(tail[1:])
            if err.code:
                self._drain(err, f"{desc} (or an earlier command)")
            return payload

        return self._with_recovery(op, desc)

    # -- recovery ------------------------------------------------------------------------
    def _with_recovery(self, op: Callable[[], T], desc: str, *, reissue_if: Callable[[], bool] | None = None) -> T:
        if self._recovering:
            return op()
        attempt = 0
        while True:
            try:
                return op()
            except _TRANSIENT as e:
                if isinstance(e, TransportTimeout):
                    self._probe_errors(desc)  # a queued error explains the silence: BoardError
                if attempt >= self.retries:
                    raise self._final_error(e, desc, f"after {attempt} retr{'y' if attempt == 1 else 'ies'}") from e
                attempt += 1
                log.warning(
                    "%s: %s: %s; reconnecting (attempt %d of %d)",
                    desc,
                    type(e).__name__,
                    e,
                    attempt,
                    self.retries,
                )
                self._recover_until_ok(attempt, e, desc)
                if reissue_if is not None and not reissue_if():
                    log.warning("%s: the board already carried it out; not sending it again", desc)
                    return None  # type: ignore[return-value]

    def _probe_errors(self, desc: str) -> None:
        """After a timeout: ask ``SYST:ERR?`` once; raise :class:`BoardError` if an error is queued.

        Silence with an empty queue (or no answer to the probe either) returns, and the caller
        recovers the connection.
        """
        try:
            self.transport.clear_input()  # drop any partial reply, so it cannot merge with ours
            with self.timeout_for(min(self.transport.timeout, 2.0)):
                self.transport.write(b"SYST:ERR?\n")
                e = parse_error_line(self.transport.read_line())
        except (*_TRANSIENT, DeviceError) as x:
            log.debug("SYST:ERR? probe after a timeout of %s failed: %s", desc, x)
            return
        if e.code:
            self._drain(e, desc)

    def _final_error(self, e: Exception, desc: str, tail: str) -> DeviceError:
        where = self.transport.resource
        if isinstance(e, TransportTimeout):
            return ReplyTimeout(
                f"{desc}: no reply from {where} {tail} ({e}); the board reported no error: check that it is "
                "powered and connected, or raise the timeout if the operation is long"
            )
        if isinstance(e, TransportClosed):
            return ConnectionLost(f"{desc}: connection to {where} lost {tail} ({e}); check the cable/network and the board")
        return ProtocolError(f"{desc}: garbled or out-of-step replies from {where} {tail} ({e})")

    def _recover_until_ok(self, attempt: int, cause: Exception, desc: str) -> None:
        """Reopen and restore; if that itself fails, try again, ``reconnect_attempts`` times in all."""
        for k in range(1, self.reconnect_attempts + 1):
            try:
                self.recover(k)
                return
            except _TRANSIENT as e:
                if k >= self.reconnect_attempts:
                    raise self._final_error(
                        e, f"{desc} (reconnecting after {type(cause).__name__})", f"in {k} reconnect attempt(s)"
                    ) from e
                log.warning(
                    "reconnect failed: %s: %s; trying again (%d of %d)",
                    type(e).__name__,
                    e,
                    k + 1,
                    self.reconnect_attempts,
                )

    def recover(self, attempt: int = 1) -> None:
        """Reopen the transport, ``*IDN?`` (same board?), ``*CLS``, run ``restore``; raises on failure."""
        time.sleep(min(2.0, self.backoff_s * 2 ** (attempt - 1)))
        self._recovering = True
        try:
            self.transport.reopen()
            self.transport.clear_input()
            # *CLS travels with *IDN?: its completion is implied by the next reply
            idn = self._resync_identity(b"*IDN?\n*CLS\n")
            if self.identity is not None and idn != self.identity:
                raise DeviceError(
                    f"after reconnecting, {self.transport.resource} answers *IDN? with {idn!r}, "
                    f"not {self.identity!r}: a different board is connected; refusing to continue"
                )
            if self.restore is not None:
                self.restore()
        finally:
            self._recovering = False
        self.reconnects += 1
        log.warning("reconnected to %s (%d reconnect(s) so far)", self.transport.resource, self.reconnects)

    def _resync_identity(self, request: bytes = b"*IDN?\n") -> str:
        """Send ``*IDN?`` and skip stale lines until an identity line arrives."""
        self.transport.write(request)
        for _ in range(8):
            line = self.transport.read_line().decode("ascii", "replace").strip()
            if line.upper().startswith("TCLAB"):
                return line
            log.debug("discarding stale line %r while resynchronising", line[:80])
        raise ProtocolError("no *IDN? reply while resynchronising")

    def close(self) -> None:
        self.transport.close()
