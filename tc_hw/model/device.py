"""The one interface that every backend (the twin, a VISA board, a serial board) satisfies.

In the spirit of Bluesky's device protocols this is a :class:`typing.Protocol`, not a base
class: a backend is anything with these attributes and methods.  Backends are found by name
through the ``tc_hw.backends`` entry-point group (see :mod:`tc_hw.backends`), so the core never
imports a backend module.

Units: volts for channels and node readings, seconds for times, kelvin for temperature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

__all__ = [
    "Channel",
    "ChannelMap",
    "Acquisition",
    "Device",
    "DeviceError",
    "UnsafeVoltageError",
    "armed",
    "Seedable",
    "CalibrationReference",
    "ReconnectCounter",
    "reconnect_count",
]

#: Element kinds of the board manual, in channel-map order.
KINDS = ("Q", "R", "B", "C", "W")


class DeviceError(RuntimeError):
    """A backend reported a fault (board error, lost connection, timeout)."""


class UnsafeVoltageError(ValueError):
    """A requested voltage lies outside a channel's safe range; nothing was sent."""


def _volts(x) -> str:
    """A signed voltage with every digit needed to tell it from its neighbours (shortest repr)."""
    x = float(x)
    return ("+" if x >= 0 else "") + repr(x)


@dataclass(frozen=True)
class Channel:
    """One DAC channel of the board map (``BOARD:MAP?`` row).

    ``kind`` is ``Q``, ``R``, ``B`` (node ``a``; ``b == -1``), ``C`` (nodes ``a < b``) or ``W``
    (input line ``a``, node ``b``).  ``vmin..vmax`` is the safe range in volts, ``gain`` the
    nominal element value per volt, ``period`` the nominal period in volts (0: not periodic).
    """

    index: int
    kind: str
    a: int
    b: int
    vmin: float
    vmax: float
    gain: float
    period: float = 0.0


@dataclass(frozen=True)
class ChannelMap:
    """All channels of a board, in channel order."""

    channels: tuple

    def __len__(self) -> int:
        return len(self.channels)

    def __getitem__(self, i) -> Channel:
        return self.channels[i]

    def __iter__(self):
        return iter(self.channels)

    @property
    def vmin(self) -> np.ndarray:
        """Lower safe bounds, shape (n_channels,)."""
        return np.array([c.vmin for c in self.channels])

    @property
    def vmax(self) -> np.ndarray:
        """Upper safe bounds, shape (n_channels,)."""
        return np.array([c.vmax for c in self.channels])

    @property
    def gain(self) -> np.ndarray:
        """Nominal gains (element value per volt), shape (n_channels,)."""
        return np.array([c.gain for c in self.channels])

    def of_kind(self, kind: str) -> list:
        """Channels of one kind (``Q``, ``R``, ``B``, ``C`` or ``W``)."""
        return [c for c in self.channels if c.kind == kind]

    def check(self, volts, start: int = 0) -> np.ndarray:
        """Return ``volts`` as float64 if all lie in their safe range, else raise.

        Raises :class:`UnsafeVoltageError` naming every offending channel, its value and its
        limits; raises ``ValueError`` for NaN or a block that runs past the last channel.
        Nothing is ever clamped.
        """
        v = np.asarray(volts, dtype=np.float64).reshape(-1)
        if start < 0 or start + len(v) > len(self.channels):
            raise ValueError(f"channels {start}..{start + len(v) - 1} do not exist (board has {len(self.channels)})")
        if np.isnan(v).any():
            raise ValueError(f"NaN voltage for channels {(start + np.flatnonzero(np.isnan(v))).tolist()}")
        lo = self.vmin[start : start + len(v)]
        hi = self.vmax[start : start + len(v)]
        bad = np.flatnonzero((v < lo) | (v > hi))
        if len(bad):
            parts = [
                f"ch {start + i} ({self.channels[start + i].kind}): {_volts(v[i])} V outside "
                f"[{_volts(lo[i])}, {_volts(hi[i])}] V"
                for i in bad[:20]
            ]
            more = f" and {len(bad) - 20} more" if len(bad) > 20 else ""
            raise UnsafeVoltageError("refused, nothing sent: " + "; ".join(parts) + more)
        return v


@dataclass
class Acquisition:
    """Samples from one acquisition.

    ``volts`` has shape (P, M, n): P input vectors, M samples each, n digitised nodes (in the
    order of ``nodes``).  ``mode`` is ``"reset"`` or ``"serial"``; ``time_s`` the observation
    time (reset) or sampling interval (serial).
    """

    volts: np.ndarray
    nodes: np.ndarray
    mode: str
    time_s: float
    inputs: np.ndarray
    temperature_k: float = float("nan")
    codes: np.ndarray | None = None
    volts_per_code: float | None = None
    meta: dict = field(default_factory=dict)


@runtime_checkable
class Device(Protocol):
    """What tc-hw needs from a thermodynamic computer."""

    identity: str  #: ``*IDN?`` reply or the twin's description
    technology: str  #: ``RLC`` or ``JJ``
    n_nodes: int
    n_inputs: int
    n_channels: int
    channel_map: ChannelMap
    tau_s: float  #: nominal node time constant, seconds

    def temperature(self) -> float:
        """Board temperature, kelvin."""

    def set_channels(self, volts, start: int = 0) -> None:
        """Apply channel voltages (bulk); refuses unsafe values before anything is sent."""

    def get_channels(self, start: int = 0, n: int | None = None) -> np.ndarray:
        """The voltages actually applied (after DAC quantisation), shape (n,)."""

    def set_inputs(self, inputs) -> None:
        """Set the input batch, shape (P, K) in the units of the input lines."""

    def acquire(
        self,
        mode: str,
        time_s: float,
        samples: int,
        nodes: Sequence[int] | None = None,
    ) -> Acquisition:
        """Acquire ``samples`` readings per input vector; returns volts of shape (P, M, n)."""

    def arm(self, on: bool = True) -> None:
        """Arm (``OUTP ON``) or disarm the elements."""

    def close(self) -> None:
        """Disarm and release the connection."""


# --- optional capabilities: small protocols a backend may also satisfy (check with isinstance) ---


@runtime_checkable
class Seedable(Protocol):
    """A backend whose noise can be seeded (the twin; a board's bath cannot be)."""

    def reseed(self, seed: int) -> None:
        """Seed of the next acquisition: the same seed and settings give the same samples."""


@runtime_checkable
class CalibrationReference(Protocol):
    """A backend that can route a reference voltage to every ADC input (``CAL:REF``)."""

    def cal_ref(self, volts: float | None) -> None:
        """Read ``volts`` (-5..5 V) on every ADC input instead of the nodes; ``None``: the nodes
        again (``CAL:REF OFF``).  Out-of-range values are refused (ValueError), nothing sent."""


@runtime_checkable
class ReconnectCounter(Protocol):
    """A backend that counts the reconnections of its link since it was opened."""

    reconnects: int  #: reconnections so far


def reconnect_count(device) -> int:
    """``device.reconnects`` for a :class:`ReconnectCounter`, else 0 (a link that never drops)."""
    return int(device.reconnects) if isinstance(device, ReconnectCounter) else 0


class armed:
    """Context manager that arms a device and always leaves it disarmed (``OUTP OFF``).

    >>> with armed(dev):
    ...     dev.acquire("reset", 1e-6, 100)
    """

    def __init__(self, device: Device):
        self.device = device

    def __enter__(self) -> Device:
        self.device.arm(True)
        return self.device

    def __exit__(self, *exc) -> None:
        self.device.arm(False)
