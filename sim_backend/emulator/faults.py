"""Seeded fault injection on replies: delays, truncated replies, dropped connections.

Faults only ever touch the *transport* of a reply (the bytes a query produced); the command
has already run, so the board's state is never corrupted.  Each reply independently suffers a
fault with probability ``rate``; the kind is drawn uniformly from ``kinds``:

``delay``
    the whole reply is sent after ``U(delay_s[0], delay_s[1])`` seconds;
``truncate``
    a strict prefix of the reply (at least 1 byte short of it, possibly empty) is sent, then the
    connection is closed (on a serial line: the rest is simply lost);
``drop``
    nothing is sent and the connection is closed (serial: the reply is lost).
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass

__all__ = ["FaultSpec", "Fault", "FaultInjector", "FAULT_KINDS"]

FAULT_KINDS = ("delay", "truncate", "drop")


@dataclass(frozen=True)
class FaultSpec:
    """The ``[faults]`` table of a board file (``--fault-rate`` overrides ``rate``)."""

    rate: float = 0.0
    kinds: tuple = FAULT_KINDS
    delay_s: tuple = (0.2, 1.0)

    @classmethod
    def from_table(cls, table: dict, where: str = "[faults]") -> "FaultSpec":
        table = dict(table)
        unknown = sorted(set(table) - {"rate", "kinds", "delay_s"})
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; known: ['delay_s', 'kinds', 'rate']")
        spec = cls()
        rate = table.get("rate", spec.rate)
        kinds = tuple(table.get("kinds", spec.kinds))
        delay = tuple(table.get("delay_s", spec.delay_s))
        return cls(rate, kinds, delay).validated(where)

    def validated(self, where: str = "faults") -> "FaultSpec":
        """Return self, or raise ``ValueError`` on a bad rate, kind or delay range."""
        r = self.rate
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not (0.0 <= r <= 1.0):
            raise ValueError(f"{where}: rate must be a number in [0, 1], got {r!r}")
        bad = [k for k in self.kinds if k not in FAULT_KINDS]
        if bad or not self.kinds:
            raise ValueError(f"{where}: kinds must be a non-empty subset of {list(FAULT_KINDS)}, got {list(self.kinds)}")
        d = self.delay_s
        if (
            len(d) != 2
            or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in d)
            or not (0 <= d[0] <= d[1])
        ):
            raise ValueError(f"{where}: delay_s must be [min, max] seconds with 0 <= min <= max, got {list(d)}")
        return FaultSpec(float(r), tuple(self.kinds), (float(d[0]), float(d[1])))


@dataclass(frozen=True)
class Fault:
    """One injected fault: ``kind`` with its ``delay_s`` (delay) or ``keep`` bytes (truncate)."""

    kind: str
    delay_s: float = 0.0
    keep: int = 0


class FaultInjector:
    """Draws faults for replies from a seeded stream (thread-safe)."""

    def __init__(self, spec: FaultSpec, seed: int):
        self.spec = spec
        self._rng = random.Random(int(seed) * 1_000_003 + 0xFA17)
        self._lock = threading.Lock()

    def draw(self, reply_len: int) -> Fault | None:
        """The fault for a reply of ``reply_len`` bytes, or ``None`` (most of the time)."""
        if self.spec.rate <= 0:
            return None
        with self._lock:
            if self._rng.random() >= self.spec.rate:
                return None
            kind = self._rng.choice(self.spec.kinds)
            if kind == "delay":
                return Fault("delay", delay_s=self._rng.uniform(*self.spec.delay_s))
            if kind == "truncate":
                return Fault("truncate", keep=self._rng.randrange(0, max(1, reply_len)))
            return Fault("drop")
