"""SCPI plumbing, free of sockets and of board physics.

* :class:`Scanner` turns a byte stream into program messages (lines) of :class:`Command`; it
  reads IEEE 488.2 definite-length blocks ``#<d><len><bytes>`` *by length*, so block bytes may be
  ``\\n`` or ``;``.
* :class:`HeaderTable` matches headers against SCPI mnemonics (``SYSTem:ERRor[:NEXT]?`` accepts
  ``SYST:ERR?``, ``system:error:next?``...).
* :class:`ErrorQueue` is the 32-entry error queue (newest entry becomes ``-350`` on overflow).
* :class:`ScpiError` and the argument converters (:func:`arg_float`, :func:`arg_int`,
  :func:`arg_block`, :func:`arg_keyword`, :func:`expect_args`) give the manual's error codes.

Parsing rules: commands are separated by ``;`` and lines end with ``\\n`` (a trailing ``\\r`` is
ignored); headers are case-insensitive, a leading ``:`` is allowed, and every header is absolute.
A line whose text cannot be scanned (an unterminated quote, a malformed ``#`` block header) yields
a ``-102`` command at the point of the problem and the rest of that line is discarded.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from dataclasses import dataclass, field

__all__ = [
    "ScpiError",
    "Command",
    "Scanner",
    "HeaderTable",
    "ErrorQueue",
    "ERROR_TEXT",
    "block",
    "arg_float",
    "arg_int",
    "arg_block",
    "arg_keyword",
    "expect_args",
]

ERROR_TEXT = {
    0: "No error",
    -100: "Command error",
    -102: "Syntax error",
    -108: "Parameter not allowed",
    -109: "Missing parameter",
    -113: "Undefined header",
    -200: "Execution error",
    -221: "Settings conflict",
    -222: "Data out of range",
    -230: "Data corrupt or stale",
    -350: "Queue overflow",
}


class ScpiError(Exception):
    """An SCPI error: ``code`` from :data:`ERROR_TEXT` and an optional ``detail``."""

    def __init__(self, code: int, detail: str = ""):
        super().__init__(code, detail)
        self.code = code
        self.detail = detail

    def reply_text(self) -> str:
        """``<code>,"<text>[; detail]"`` (double quotes in the detail become single quotes)."""
        text = ERROR_TEXT.get(self.code, "Error")
        if self.detail:
            text += "; " + self.detail.replace('"', "'").replace("\n", " ")
        return f'{self.code},"{text}"'


@dataclass
class Command:
    """One command of a program message.

    ``header`` as received (case preserved); ``args`` a list of ``str`` (stripped text) and
    ``bytes`` (block payloads); ``error`` a code when the command was malformed at scan time.
    """

    header: str
    args: list = field(default_factory=list)
    error: int | None = None
    detail: str = ""


def block(payload: bytes) -> bytes:
    """IEEE 488.2 definite-length block ``#<d><len><payload>`` (no terminator)."""
    n = str(len(payload)).encode()
    if len(n) > 9:
        raise ValueError("block too long for a definite-length header")
    return b"#" + str(len(n)).encode() + n + payload


# ----------------------------------------------------------------------------- scanning
_SPECIAL = re.compile(rb'[\n;#"\']')


class _Malformed(Exception):
    pass


class Scanner:
    """Incremental splitter of a byte stream into lines of commands.

    >>> s = Scanner()
    >>> [[c.header for c in line] for line in s.feed(b"*IDN?;BOARD:NODES?\\nDAC:BLO")]
    [['*IDN?', 'BOARD:NODES?']]

    ``max_pending`` bounds the bytes kept for an unfinished line; beyond it the pending data is
    discarded and a ``-102`` line is produced.
    """

    def __init__(self, max_pending: int = 1 << 30):
        self._buf = bytearray()
        self.max_pending = max_pending

    def reset(self) -> None:
        """Drop any partial line (e.g. after a connection was dropped)."""
        self._buf.clear()

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[list[Command]]:
        """Add bytes; return every line completed by them (a list of commands per line)."""
        self._buf += data
        lines = []
        pos = 0
        while True:
            res = self._scan_line(pos)
            if res is None:
                break
            cmds, pos = res
            lines.append(cmds)
        if pos:
            del self._buf[:pos]
        if len(self._buf) > self.max_pending:
            self._buf.clear()
            lines.append([Command("", [], -102, "line too long")])
        return lines

    def _scan_line(self, start: int):
        """Scan one line from ``start``; ``(commands, next_pos)`` or ``None`` if incomplete."""
        buf = self._buf
        n = len(buf)
        pos = start
        cmds: list[Command] = []
        parts: list = []
        text = bytearray()

        def finish():
            nonlocal parts, text
            if text:
                parts.append(bytes(text))
            cmd = _parse_command(parts)
            if cmd is not None:
                cmds.append(cmd)
            parts, text = [], bytearray()

        def bad(detail: str, at: int):
            # The rest of the line cannot be split reliably: report -102 and discard it.
            nl = buf.find(b"\n", at)
            if nl < 0:
                return None
            cmds.append(Command(_header_guess(parts + [bytes(text)]), [], -102, detail))
            return cmds, nl + 1

        while True:
            m = _SPECIAL.search(buf, pos)
            if m is None:
                return None
            i = m.start()
            c = buf[i]
            text += buf[pos:i]
            if c == 0x0A:  # \n
                finish()
                return cmds, i + 1
            if c == 0x3B:  # ;
                finish()
                pos = i + 1
                continue
            if c in (0x22, 0x27):  # quotes: copy through the closing quote
                j = buf.find(bytes([c]), i + 1)
                nl = buf.find(b"\n", i + 1)
                if j < 0 or (0 <= nl < j):
                    return bad("unterminated string", i) if nl >= 0 else None
                text += buf[i : j + 1]
                pos = j + 1
                continue
            # '#': a definite-length block
            if i + 1 >= n:
                return None
            d = buf[i + 1]
            if not (0x31 <= d <= 0x39):  # '1'..'9'
                return bad("malformed block header (only #<d><len> definite-length blocks are accepted)", i)
            d -= 0x30
            if i + 2 + d > n:
                return None
            digits = bytes(buf[i + 2 : i + 2 + d])
            if not digits.isdigit():
                return bad("malformed block length", i)
            end = i + 2 + d + int(digits)
            if end > n:
                return None
            if text:
                parts.append(bytes(text))
                text = bytearray()
            parts.append(_Block(bytes(buf[i + 2 + d : end])))
            pos = end


class _Block(bytes):
    """A block payload inside a command's parts (distinguishes it from text)."""


def _header_guess(parts) -> str:
    if parts and not isinstance(parts[0], _Block):
        words = bytes(parts[0]).decode("ascii", "replace").split()
        if words:
            return words[0]
    return ""


def _split_outside_quotes(s: str) -> list[str]:
    out, cur, quote = [], [], None
    for ch in s:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
            cur.append(ch)
        elif ch == ",":
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def _parse_command(parts) -> Command | None:
    """Header and arguments from scanned parts (text ``bytes`` and ``_Block``); ``None`` if empty."""
    if not parts:
        return None
    if isinstance(parts[0], _Block):
        return Command("", [], -102, "block without a header")
    first = parts[0].decode("ascii", "replace").replace("\r", "")
    stripped = first.lstrip()
    if not stripped:
        if len(parts) == 1:
            return None
        return Command("", [], -102, "block without a header")
    m = re.match(r"\S+", stripped)
    header = m.group(0)
    rest = stripped[m.end() :]
    if not rest and len(parts) > 1:
        return Command(header, [], -102, "missing space between header and block")
    pieces = [rest] + list(parts[1:])
    args: list = []
    cur_text = ""
    cur_block = None
    any_comma = False

    def flush():
        nonlocal cur_text, cur_block
        if cur_block is not None:
            if cur_text.strip():
                raise _Malformed("text after a block")
            args.append(bytes(cur_block))
        else:
            args.append(cur_text.strip())
        cur_text, cur_block = "", None

    try:
        for piece in pieces:
            if isinstance(piece, _Block):
                if cur_block is not None or cur_text.strip():
                    raise _Malformed("block inside another argument")
                cur_block = piece
                cur_text = ""
                continue
            segs = _split_outside_quotes(piece.decode("ascii", "replace").replace("\r", "") if isinstance(piece, bytes) else piece)
            for seg in segs[:-1]:
                cur_text += seg
                flush()
                any_comma = True
            cur_text += segs[-1]
        if cur_block is not None or cur_text.strip() or any_comma:
            flush()
    except _Malformed as e:
        return Command(header, [], -102, str(e))
    return Command(header, args)


# ----------------------------------------------------------------------------- headers
def _mnemonic_forms(node: str) -> tuple[str, str]:
    """(short, long) forms of a mnemonic like ``SYSTem`` (short = the capitals)."""
    if node.startswith("*"):
        return node.upper(), node.upper()
    short = "".join(ch for ch in node if ch.isupper() or ch.isdigit())
    return (short or node.upper()), node.upper()


class HeaderTable:
    """Map SCPI header patterns to handlers.

    A pattern is a sequence of mnemonics joined by ``:``, optional trailing nodes in ``[ ]``, and
    ``?`` for queries: ``SYSTem:ERRor[:NEXT]?``.  :meth:`lookup` returns ``(handler, is_query)``
    or raises ``ScpiError(-113)``.
    """

    def __init__(self):
        self._entries: list[tuple[list[tuple[str, str]], bool, object]] = []

    def add(self, pattern: str, handler) -> None:
        query = pattern.endswith("?")
        body = pattern[:-1] if query else pattern
        required, optional = body, []
        while required.endswith("]"):
            k = required.rindex("[")
            optional.insert(0, required[k + 1 : -1].lstrip(":"))
            required = required[:k]
        nodes = [n for n in required.split(":") if n]
        variants = [nodes]
        for i in range(len(optional)):
            variants.append(nodes + optional[: i + 1])
        for v in variants:
            self._entries.append(([_mnemonic_forms(x) for x in v], query, handler))

    def lookup(self, header: str):
        h = header.strip()
        query = h.endswith("?")
        if query:
            h = h[:-1]
        if h.startswith(":"):
            h = h[1:]
        tokens = h.upper().split(":")
        if not h or any(not t for t in tokens):
            raise ScpiError(-113, f"header {header!r}")
        for forms, q, handler in self._entries:
            if q == query and len(forms) == len(tokens) and all(t in f for t, f in zip(tokens, forms)):
                return handler, query
        raise ScpiError(-113, f"header {header!r}")


# ----------------------------------------------------------------------------- errors
class ErrorQueue:
    """The board's error queue: FIFO of ``(code, text)``, 32 entries; when full, the newest
    entry is replaced by ``-350,"Queue overflow"`` (SCPI-1999).  Thread-safe."""

    def __init__(self, capacity: int = 32):
        self.capacity = capacity
        self._q: deque = deque()
        self._lock = threading.Lock()

    def push(self, err: ScpiError) -> None:
        with self._lock:
            if len(self._q) < self.capacity:
                self._q.append(err.reply_text())
            else:
                self._q[-1] = ScpiError(-350).reply_text()

    def pop(self) -> str:
        """Oldest entry as the ``SYST:ERR?`` reply text, or ``0,"No error"``."""
        with self._lock:
            return self._q.popleft() if self._q else '0,"No error"'

    def clear(self) -> None:
        with self._lock:
            self._q.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._q)


# ----------------------------------------------------------------------------- arguments
def expect_args(args: list, n_min: int, n_max: int | None = None) -> None:
    """``-109`` for too few arguments, ``-108`` for too many."""
    n_max = n_min if n_max is None else n_max
    if len(args) < n_min or any(a == "" for a in args[:n_min]):
        raise ScpiError(-109)
    if len(args) > n_max:
        raise ScpiError(-108, f"expected at most {n_max} parameter(s), got {len(args)}")


def _text(arg) -> str:
    if isinstance(arg, bytes):
        raise ScpiError(-102, "a number was expected, got a block")
    if arg == "":
        raise ScpiError(-109)
    return arg


def arg_float(arg, what: str = "value") -> float:
    """A float from a text argument (``-102`` if not numeric; NaN/inf are returned as such)."""
    s = _text(arg)
    try:
        return float(s)
    except ValueError:
        raise ScpiError(-102, f"{what} {s!r} is not a number") from None


def arg_int(arg, what: str = "index") -> int:
    """An integer from a text argument (``-102`` if not numeric, ``-222`` if not integral)."""
    s = _text(arg)
    try:
        return int(s)
    except ValueError:
        pass
    v = arg_float(s, what)
    if not v == v or v in (float("inf"), float("-inf")) or not float(v).is_integer():
        raise ScpiError(-222, f"{what} {s!r} is not an integer")
    return int(v)


def arg_block(arg, what: str = "block") -> bytes:
    """Block payload bytes (``-102`` for a text argument: a malformed block)."""
    if not isinstance(arg, bytes):
        if arg == "":
            raise ScpiError(-109)
        raise ScpiError(-102, f"{what} must be a #<d><len> definite-length block")
    return bytes(arg)


def arg_keyword(arg, choices: dict):
    """Map a keyword (case-insensitive) through ``choices`` (keys upper case); ``-102`` if unknown."""
    s = _text(arg).upper()
    if s not in choices:
        raise ScpiError(-102, f"{s!r} is not one of {sorted(choices)}")
    return choices[s]
