"""IEEE 488.2 definite-length binary blocks and the little-endian array formats of the board.

A block is ``#<d><len><bytes>``: one ASCII digit ``d`` (1..9) giving the number of length
digits, ``len`` in ``d`` ASCII digits, then exactly ``len`` payload bytes.  On the wire the board
follows every block with ``\\n``; that terminator is *not* part of the block.  Payload bytes may
contain ``\\n`` (0x0A), which is why blocks are always read by length, never by line.

The board's payloads are little-endian IEEE float32 (DAC voltages, input signals) and int16 (ADC
codes).  Nothing here clamps, rounds or silently converts: a value that cannot be represented, a
payload whose length is not a whole number of items, or a header that is not a definite-length
block raises :class:`BlockFormatError` (a :class:`ValueError`).

>>> encode_block(b"ab\\ncd")
b'#15ab\\ncd'
>>> decode_block(b'#15ab\\ncd\\n')
b'ab\\ncd'
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = [
    "BlockFormatError",
    "MAX_BLOCK_BYTES",
    "encode_block",
    "decode_block",
    "block_length_from_header",
    "read_block",
    "pack_float32",
    "unpack_float32",
    "pack_int16",
    "unpack_int16",
]

#: Largest payload a definite-length header can describe (9 length digits).
MAX_BLOCK_BYTES = 10**9 - 1

_F32 = np.dtype("<f4")
_I16 = np.dtype("<i2")


class BlockFormatError(ValueError):
    """Bytes that should be an IEEE 488.2 definite-length block are not one (garbled or truncated)."""


def encode_block(payload: bytes) -> bytes:
    """Wrap ``payload`` in a definite-length header ``#<d><len>``; no terminator is appended."""
    payload = bytes(payload)
    n = len(payload)
    if n > MAX_BLOCK_BYTES:
        raise BlockFormatError(f"payload of {n} bytes is too long for a definite-length block (max {MAX_BLOCK_BYTES})")
    digits = str(n).encode("ascii")
    return b"#" + str(len(digits)).encode("ascii") + digits + payload


def _show(raw: bytes, limit: int = 24) -> str:
    text = repr(bytes(raw[:limit]))
    return text + ("..." if len(raw) > limit else "")


def _ndigits(head: bytes) -> int:
    """Validate the two-byte start ``#<d>`` and return ``d``."""
    if len(head) < 2:
        raise BlockFormatError(f"truncated block header {_show(head)}: expected '#<d>'")
    if head[0:1] != b"#":
        raise BlockFormatError(f"garbled block header {_show(head)}: a block must start with '#'")
    d = head[1:2]
    if d == b"0":
        raise BlockFormatError(
            "indefinite-length block ('#0') received: the board manual only allows definite-length blocks"
        )
    if not (b"1" <= d <= b"9"):
        raise BlockFormatError(f"garbled block header {_show(head)}: '#' must be followed by a digit 1-9")
    return int(d)


def _length(digits: bytes, head: bytes = b"") -> int:
    if not digits.isdigit() or not digits.isascii():
        raise BlockFormatError(f"garbled block header {_show(head + digits)}: length field {digits!r} is not all digits")
    return int(digits)


def block_length_from_header(header: bytes) -> tuple[int, int]:
    """Parse a complete header ``#<d><len>`` and return ``(header_size, payload_length)``.

    ``header`` may be longer than the header itself (e.g. a whole reply); only the header is
    examined.
    """
    d = _ndigits(header[:2])
    if len(header) < 2 + d:
        raise BlockFormatError(f"truncated block header {_show(header)}: expected {d} length digits")
    return 2 + d, _length(header[2 : 2 + d], header[:2])


def decode_block(data: bytes, *, terminator: bytes | None = b"\n") -> bytes:
    """Return the payload of a complete block ``data``.

    ``data`` must contain exactly one block, followed by ``terminator`` (default ``\\n``; pass
    ``None`` for a bare block).  Anything missing, extra or malformed raises
    :class:`BlockFormatError`.
    """
    data = bytes(data)
    hsize, n = block_length_from_header(data)
    end = hsize + n
    if len(data) < end:
        raise BlockFormatError(f"truncated block: header announces {n} payload bytes, only {len(data) - hsize} present")
    tail = data[end:]
    want = terminator or b""
    if tail != want:
        raise BlockFormatError(f"block of {n} bytes is followed by {_show(tail)}, expected {want!r}")
    return data[hsize:end]


def read_block(read_exact: Callable[[int], bytes], *, first: bytes = b"", terminator: bytes | None = b"\n") -> bytes:
    """Read one block from a stream and return its payload.

    ``read_exact(n)`` must return exactly ``n`` bytes (or raise).  ``first`` holds bytes of the
    header that were already consumed (e.g. the ``#`` the caller peeked at).  After the payload,
    ``terminator`` is read and checked (``None``: nothing is read).
    """
    head = bytes(first)
    if len(head) < 2:
        head += read_exact(2 - len(head))
    d = _ndigits(head[:2])
    have = head[2:]
    if len(have) < d:
        have += read_exact(d - len(have))
    n = _length(have[:d], head[:2])
    payload = have[d:]
    if len(payload) < n:
        payload += read_exact(n - len(payload))
    elif len(payload) > n:
        raise BlockFormatError("internal: more bytes pre-read than the block holds")
    if terminator:
        tail = read_exact(len(terminator))
        if tail != terminator:
            raise BlockFormatError(f"block of {n} bytes is followed by {_show(tail)}, expected {terminator!r}")
    return payload


def _as_array(values, what: str) -> np.ndarray:
    a = np.asarray(values)
    if a.dtype.kind not in "fiub":
        raise BlockFormatError(f"{what}: expected numbers, got dtype {a.dtype}")
    return a.reshape(-1)


def pack_float32(values) -> bytes:
    """Little-endian float32 bytes of ``values`` (flattened, row-major).

    Finite values whose magnitude exceeds the float32 range raise rather than becoming ``inf``.
    NaN is passed through unchanged (the caller decides whether NaN is allowed).
    """
    a = _as_array(values, "float32 payload").astype(np.float64)
    with np.errstate(over="ignore"):
        f = a.astype(_F32)
    bad = np.isfinite(a) & ~np.isfinite(f)
    if bad.any():
        raise BlockFormatError(f"values {a[bad][:5].tolist()} do not fit in float32")
    return f.tobytes()


def unpack_float32(payload: bytes, count: int | None = None) -> np.ndarray:
    """float32 array (as float64, shape ``(len/4,)``) from little-endian bytes; checks ``count``."""
    return _unpack(payload, _F32, count).astype(np.float64)


def pack_int16(values) -> bytes:
    """Little-endian int16 bytes; values must be integers in -32768..32767 (no wrapping)."""
    a = _as_array(values, "int16 payload")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise BlockFormatError("int16 payload: values must be whole numbers")
    if a.size and (a.min() < -32768 or a.max() > 32767):
        raise BlockFormatError(f"int16 payload: values span {a.min()}..{a.max()}, outside -32768..32767")
    return a.astype(_I16).tobytes()


def unpack_int16(payload: bytes, count: int | None = None) -> np.ndarray:
    """int16 array (shape ``(len/2,)``) from little-endian bytes; checks ``count`` when given."""
    return _unpack(payload, _I16, count).astype(np.int16)


def _unpack(payload: bytes, dtype: np.dtype, count: int | None) -> np.ndarray:
    payload = bytes(payload)
    if len(payload) % dtype.itemsize:
        raise BlockFormatError(
            f"block of {len(payload)} bytes is not a whole number of {dtype.itemsize}-byte {dtype.name} items"
        )
    n = len(payload) // dtype.itemsize
    if count is not None and n != count:
        raise BlockFormatError(f"block holds {n} {dtype.name} items, expected {count}")
    return np.frombuffer(payload, dtype=dtype)
