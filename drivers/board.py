"""``TCBoard``: a TC board (real or emulated) behind VISA or a serial line, as a ``tc_hw`` Device.

>>> from drivers import open_visa
>>> with open_visa("TCPIP0::127.0.0.1::5025::SOCKET") as board:   # doctest: +SKIP
...     board.set_channels(v)              # refuses unsafe values, sends nothing then
...     board.set_inputs(np.zeros((4, board.n_inputs)))
...     with armed(board):
...         acq = board.acquire("reset", 2e-6, 1000)   # acq.volts: (4, 1000, N)

Safety: every DAC write goes through one choke point, :meth:`TCBoard._send_dac`, which checks
the requested volts against the channel map (and again after rounding to float32, the format on
the wire) before any byte is sent.  Nothing is ever clamped.

Capacity (board manual, "Capacity"): :meth:`TCBoard.acquire` reads ``ACQ:CAP?`` once per session
(a board that does not know it counts as unlimited, logged once) and splits an acquisition into
runs of at most ``min(ACQ:CAP?, max_samples_per_call)`` readings: over input vectors, and in reset
mode over samples when one vector alone does not fit.  A run refused at ``INIT`` with ``-221``
"acquisition too large" (a work limit the board does not publish) is halved and retried; the
least refused work (vectors x samples x ``ACQ:TIME``/tau) is remembered for the session, so later
runs are split before they are sent.  Runs are joined in place: the result has the shape
``(P, M, n)`` and order of one acquisition, every reading taken once.  ``meta["calls"]`` counts the
runs, ``meta["refused_too_large"]`` the refusals; ``temperature_k`` of a split acquisition is the
mean of readings before the first and after the last run (``meta["temperature_range_k"]``).
Seeds: an emulated board draws each ``INIT``'s noise from its board seed and an ``INIT`` counter,
so a split acquisition is reproducible for the same session history, and statistically (not
bitwise) equal to an unsplit one.

Robustness: the SCPI session (:mod:`drivers.scpi`) reads the error queue after every command,
and on a dropped or garbled connection reopens it and calls :meth:`TCBoard._restore`, which
reads back ``DAC:BLOCK?`` and re-sends the channels that differ from what this driver set,
re-sends the input batch if the board lost it, the acquisition settings and the output state.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Sequence

import numpy as np

from tc_hw.model.device import KINDS, Acquisition, Channel, ChannelMap, DeviceError, UnsafeVoltageError

from .blocks import pack_float32, unpack_float32, unpack_int16
from .lock import acquire_board_lock
from .scpi import BoardError, ConnectionLost, ProtocolError, ScpiSession
from .transport import SerialTransport, Transport, TransportClosed, VisaTransport, classify_resource, open_transport

__all__ = ["TCBoard", "open_visa", "open_serial", "open_board", "parse_channel_map", "MapError", "DAC_LSB_V"]

CAL_REF_LIMIT_V = 5.0  #: |CAL:REF| limit of the board manual, volts

log = logging.getLogger("tc_hw.drivers")

#: DAC step: 16-bit two's complement over +-10 V (board manual).
DAC_LSB_V = 20.0 / 65536
#: The DAC's span (board manual: 16-bit over +-10 V).  A map claiming a safe range beyond it is
#: refused, and no write outside it is ever sent, whatever the map says.
DAC_SPAN_V = (-10.0, 10.0)
#: Bounds on what a board may announce (reads are sized from them, never from the reply):
#: channels/nodes/inputs per board, and bytes per ``BOARD:MAP?`` row (8 short CSV fields).
MAX_CHANNELS = 1 << 20
MAP_ROW_BYTES = 256
#: Default largest acquisition (P * M * n values) fetched by one INIT/FETC? cycle.
MAX_SAMPLES_PER_CALL = 4 * 2**20


class MapError(DeviceError):
    """``BOARD:MAP?`` does not follow the board manual."""


def _int(s: str) -> int:
    return int(s.strip())


def _float(s: str) -> float:
    v = float(s.strip())
    if not math.isfinite(v):
        raise ValueError(f"non-finite number {s!r}")
    return v


def _opc(s: str) -> bool:
    if s.strip() != "1":
        raise ValueError(f"*OPC? must answer 1, got {s!r}")
    return True


def parse_channel_map(payload: bytes, n_channels: int, n_nodes: int, n_inputs: int) -> ChannelMap:
    """Parse the UTF-8 CSV of ``BOARD:MAP?`` into a :class:`ChannelMap`, checking the manual's rules.

    Rows ``ch,kind,a,b,vmin,vmax,gain,period``, no header, one per channel in channel order
    (all Q, all R, all B, then C, then W), each ending in ``\\n``.  Raises :class:`MapError`
    naming the first offending row.
    """
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MapError(f"BOARD:MAP? is not UTF-8: {e}") from e
    if text and not text.endswith("\n"):
        raise MapError("BOARD:MAP?: the last row does not end in '\\n' (truncated map?)")
    rows = text.split("\n")[:-1] if text else []
    if len(rows) != n_channels:
        raise MapError(f"BOARD:MAP? has {len(rows)} rows but BOARD:CHAN? says {n_channels} channels")
    chans = []
    order = {k: i for i, k in enumerate(KINDS)}
    last_kind = 0
    count = dict.fromkeys(KINDS, 0)
    for i, row in enumerate(rows):
        f = [x.strip() for x in row.split(",")]
        if len(f) != 8:
            raise MapError(f"BOARD:MAP? row {i} {row!r}: expected 8 fields ch,kind,a,b,vmin,vmax,gain,period")
        try:
            ch, a, b = int(f[0]), int(f[2]), int(f[3])
            vmin, vmax, gain, period = (float(x) for x in f[4:])
        except ValueError as e:
            raise MapError(f"BOARD:MAP? row {i} {row!r}: {e}") from e
        kind = f[1].upper()
        where = f"BOARD:MAP? row {i} {row!r}"
        if ch != i:
            raise MapError(f"{where}: channel number {ch}, expected {i} (rows must be in channel order)")
        if kind not in order:
            raise MapError(f"{where}: kind {f[1]!r} is not one of {', '.join(KINDS)}")
        if order[kind] < last_kind:
            raise MapError(f"{where}: {kind} after {KINDS[last_kind]} (order must be Q, R, B, C, W)")
        last_kind = order[kind]
        if not all(math.isfinite(x) for x in (vmin, vmax, gain, period)):
            raise MapError(f"{where}: non-finite number")
        if vmin > vmax:
            raise MapError(f"{where}: safe range vmin {vmin} > vmax {vmax}")
        if vmin < DAC_SPAN_V[0] or vmax > DAC_SPAN_V[1]:
            raise MapError(f"{where}: safe range [{vmin!r}, {vmax!r}] V exceeds the DAC span "
                           f"[{DAC_SPAN_V[0]:+g}, {DAC_SPAN_V[1]:+g}] V of the board manual: the map is wrong")
        if period < 0:
            raise MapError(f"{where}: negative period {period}")
        if kind in "QRB":
            if b != -1 or a != count[kind]:
                raise MapError(f"{where}: {kind} channel for node {count[kind]} must read a={count[kind]}, b=-1")
        elif kind == "C":
            if not (0 <= a < b < n_nodes):
                raise MapError(f"{where}: C channel needs nodes 0 <= a < b < {n_nodes}")
        elif not (0 <= a < n_inputs and 0 <= b < n_nodes):
            raise MapError(f"{where}: W channel needs input line 0..{n_inputs - 1} and node 0..{n_nodes - 1}")
        count[kind] += 1
        chans.append(Channel(i, kind, a, b, vmin, vmax, gain, period))
    for k in "QRB":
        if count[k] != n_nodes:
            raise MapError(f"BOARD:MAP? has {count[k]} {k} channels, expected one per node ({n_nodes})")
    return ChannelMap(tuple(chans))


def _quantize(v: np.ndarray) -> np.ndarray:
    """Voltages the DAC applies for requested ``v`` (16-bit, +-10 V), for comparisons only."""
    codes = np.clip(np.rint(np.asarray(v, dtype=np.float64) / DAC_LSB_V), -32768, 32767)
    return codes * DAC_LSB_V


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` runs of True in ``mask``."""
    idx = np.flatnonzero(mask)
    if not len(idx):
        return []
    breaks = np.flatnonzero(np.diff(idx) > 1)
    starts = np.r_[idx[0], idx[breaks + 1]]
    stops = np.r_[idx[breaks] + 1, idx[-1] + 1]
    return list(zip(starts.tolist(), stops.tolist()))


class TCBoard:
    """A TC board speaking the board manual, implementing :class:`tc_hw.model.device.Device`.

    Parameters
    ----------
    transport:
        An open :class:`~drivers.transport.Transport` (see :func:`open_visa`, :func:`open_serial`).
    retries:
        Reconnect-and-retry attempts per operation (default 3).
    reconnect_attempts:
        Attempts at one reconnect (reopen, ``*IDN?``, ``*CLS``, restore) before giving up (default 5).
    max_samples_per_call:
        Largest ``P * M * n`` fetched by one ``INIT``/``FETC?`` (``ACQ:CAP?`` lowers it); bigger
        acquisitions are split over input vectors (and, in reset mode, over samples) and joined.
    acq_timeout_floor_s:
        Least time allowed for one acquisition to finish (``*OPC?``); the actual timeout grows
        with the expected duration (physical time plus the board's measured speed).
    read_only:
        Only query the board: no per-resource lock is taken (:mod:`drivers.lock`), every command
        that changes the board (DAC, inputs, outputs, acquisition settings, ``*RST``) raises
        :class:`~tc_hw.model.device.DeviceError`, and :meth:`close` sends nothing.  Otherwise the
        board's lock is held until :meth:`close`; a board controlled by another process raises
        :class:`drivers.lock.BoardBusyError` naming that process.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        retries: int = 3,
        reconnect_attempts: int = 5,
        max_samples_per_call: int = MAX_SAMPLES_PER_CALL,
        acq_timeout_floor_s: float = 30.0,
        read_only: bool = False,
    ):
        if max_samples_per_call < 1:
            raise ValueError("max_samples_per_call must be >= 1")
        self.read_only = bool(read_only)
        self._lock = None
        if not self.read_only:
            try:
                self._lock = acquire_board_lock(transport.resource)
            except BaseException:
                transport.close()
                raise
        self.session = ScpiSession(
            transport, retries=retries, reconnect_attempts=reconnect_attempts,
            restore=None if self.read_only else self._restore,
        )
        self.max_samples_per_call = int(max_samples_per_call)
        self.acq_timeout_floor_s = float(acq_timeout_floor_s)
        self._closed = False
        # state this driver has put on the board (for restore after a reconnect)
        self._dac = None  # requested float32 volts per channel (float64 array)
        self._dac_known = None  # bool mask: channels this driver has set
        self._inputs: np.ndarray | None = None  # user-level input batch (P, K)
        self._board_inputs: np.ndarray | None = None  # batch currently on the board
        self._acq: dict[str, str] = {}  # ACQ setting -> value as sent
        self._armed: bool | None = None
        self._sec_per_work: float | None = None  # measured acquisition speed
        self._capacity: int | None = None  # ACQ:CAP? (readings per INIT), read once per session
        self._capacity_read = False
        self._refused_work: float | None = None  # least work (P*M*steps) refused as too large
        try:
            self._identify()
        except BaseException:
            self.session.close()
            self._release_lock()
            raise

    def _release_lock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    def _require_control(self, what: str) -> None:
        if self.read_only:
            raise DeviceError(f"{self.resource} was opened read-only: {what} refused, nothing sent")

    # -- opening ------------------------------------------------------------------------
    def _identify(self) -> None:
        s = self.session
        s.transport.clear_input()
        idn = s.query("*IDN?", str.strip)
        if not idn.upper().startswith("TCLAB"):
            raise DeviceError(
                f"{s.transport.resource} answers *IDN? with {idn!r}: not a TC board (manufacturer must be TCLAB); "
                "check the resource string"
            )
        self.identity = idn
        s.identity = idn
        s.write("*CLS")
        tech = s.query("BOARD:TECH?", str.strip).upper()
        if tech not in ("RLC", "JJ"):
            raise DeviceError(f"BOARD:TECH? answered {tech!r}; expected RLC or JJ")
        self.technology = tech
        self.n_nodes = s.query("BOARD:NODES?", _int)
        self.n_inputs = s.query("BOARD:INPUTS?", _int)
        self.n_channels = s.query("BOARD:CHAN?", _int)
        self.tau_s = s.query("BOARD:TAU?", _float)
        if not (0 < self.n_channels <= MAX_CHANNELS and 0 < self.n_nodes <= MAX_CHANNELS
                and 0 <= self.n_inputs <= MAX_CHANNELS):
            raise DeviceError(f"{s.transport.resource}: implausible size (nodes {self.n_nodes}, inputs "
                              f"{self.n_inputs}, channels {self.n_channels}; at most {MAX_CHANNELS} each)")
        s.max_block_bytes = max(s.max_block_bytes, 2 * self.max_samples_per_call + 64)
        raw = s.query_block("BOARD:MAP?", max_bytes=MAP_ROW_BYTES * self.n_channels)
        self.channel_map = parse_channel_map(raw, self.n_channels, self.n_nodes, self.n_inputs)
        self.adc_range_v = s.query("ACQ:RANGE?", _float)
        if not self.adc_range_v > 0:
            raise DeviceError(f"ACQ:RANGE? answered {self.adc_range_v}; expected a positive full scale")
        self._armed = s.query("OUTP?", _int) == 1
        self._dac = np.zeros(self.n_channels)
        self._dac_known = np.zeros(self.n_channels, dtype=bool)
        log.info(
            "opened %s: %s, %s, %d nodes, %d inputs, %d channels",
            s.transport.resource,
            idn,
            tech,
            self.n_nodes,
            self.n_inputs,
            self.n_channels,
        )

    @property
    def resource(self) -> str:
        return self.session.transport.resource

    @property
    def volts_per_code(self) -> float:
        """ADC volts per int16 code: ``ACQ:RANGE? / 32768``."""
        return self.adc_range_v / 32768.0

    def reset(self) -> None:
        """``*RST`` and ``*CLS``: all channels 0 V, outputs off, default acquisition settings,
        no input batch; this driver's record of the board state is reset to match."""
        self._require_control("*RST")
        self.session.write("*RST;*CLS")
        self._dac = np.zeros(self.n_channels)
        self._dac_known = np.ones(self.n_channels, dtype=bool)  # *RST put every channel at 0 V
        self._inputs = None
        self._board_inputs = None
        self._acq = {}
        self._armed = False

    # -- simple queries ------------------------------------------------------------------
    def temperature(self) -> float:
        """Board temperature (``SYST:TEMP?``), kelvin."""
        return self.session.query("SYST:TEMP?", _float)

    def acquisition_status(self) -> str:
        """``IDLE``, ``RUNNING`` or ``DONE``."""
        return self.session.query("ACQ:STAT?", _status)

    # -- DAC -----------------------------------------------------------------------------
    def _check_float32(self, v: np.ndarray, start: int) -> np.ndarray:
        """``v`` as the float32 values that will be sent, refusing any that rounding made unsafe."""
        v32 = np.asarray(v, dtype=np.float64).astype(np.float32).astype(np.float64)
        lo = self.channel_map.vmin[start : start + len(v)]
        hi = self.channel_map.vmax[start : start + len(v)]
        bad = np.flatnonzero((v32 < lo) | (v32 > hi))
        if len(bad):
            parts = [
                f"ch {start + i}: {float(v[i])!r} V becomes {float(v32[i])!r} V in float32, outside [{lo[i]:+.9g}, {hi[i]:+.9g}] V"
                for i in bad[:20]
            ]
            raise UnsafeVoltageError(
                "refused, nothing sent: " + "; ".join(parts) + " (request a value one float32 step inside the bound)"
            )
        return v32

    def _send_dac(self, volts, start: int) -> np.ndarray:
        """The one place DAC voltages are sent: check, then ``DAC:BLOCK``; returns what was sent."""
        self._require_control("DAC write")
        v = self.channel_map.check(volts, start)  # raises UnsafeVoltageError / ValueError; nothing sent
        v32 = self._check_float32(v, start)
        span = np.flatnonzero((v32 < DAC_SPAN_V[0]) | (v32 > DAC_SPAN_V[1]))
        if len(span):  # a map that was changed after parsing: the manual's span still holds
            raise UnsafeVoltageError(f"refused, nothing sent: ch {start + int(span[0])}: {float(v32[span[0]])!r} V "
                                     f"outside the DAC span [{DAC_SPAN_V[0]:+g}, {DAC_SPAN_V[1]:+g}] V")
        if len(v32) == 0:
            return v32
        self.session.write_block(f"DAC:BLOCK {start},", pack_float32(v32))
        return v32

    def set_channels(self, volts, start: int = 0) -> None:
        """Apply voltages to channels ``start .. start+len(volts)-1`` (volts, shape ``(n,)``).

        Every value is checked against its channel's safe range first; an unsafe request raises
        :class:`~tc_hw.model.device.UnsafeVoltageError` naming the channels, values and limits, and
        nothing is sent.  Board refusals raise :class:`~drivers.scpi.BoardError`.
        """
        start = int(start)
        v32 = self._send_dac(volts, start)
        self._dac[start : start + len(v32)] = v32
        self._dac_known[start : start + len(v32)] = True

    def get_channels(self, start: int = 0, n: int | None = None) -> np.ndarray:
        """Voltages actually applied (after 16-bit quantisation), volts, shape ``(n,)``."""
        start = int(start)
        n = self.n_channels - start if n is None else int(n)
        if start < 0 or n < 0 or start + n > self.n_channels:
            raise ValueError(f"channels {start}..{start + n - 1} do not exist (board has {self.n_channels})")
        if n == 0:
            return np.zeros(0)
        raw = self.session.query_block(f"DAC:BLOCK? {start},{n}", max_bytes=4 * max(int(n), 0))
        try:
            return unpack_float32(raw, n)
        except ValueError as e:
            raise ProtocolError(f"DAC:BLOCK? {start},{n}: {e}") from e

    # -- inputs --------------------------------------------------------------------------
    def _check_inputs(self, inputs) -> np.ndarray:
        x = np.asarray(inputs, dtype=np.float64)
        if x.ndim == 1 and self.n_inputs == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[1] != self.n_inputs or x.shape[0] < 1:
            raise ValueError(f"inputs must have shape (P, {self.n_inputs}) with P >= 1, got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("inputs contain NaN or inf; nothing sent")
        return x.astype(np.float32).astype(np.float64)

    def _send_inputs(self, x: np.ndarray) -> None:
        self._require_control("input batch")
        self.session.write_block("INP:BLOCK ", pack_float32(x))
        self._board_inputs = x

    def set_inputs(self, inputs) -> None:
        """Set the input batch: ``P`` vectors of ``K`` signals, shape ``(P, K)`` (float32 on the wire)."""
        x = self._check_inputs(inputs)
        self._send_inputs(x)
        self._inputs = x

    # -- outputs -------------------------------------------------------------------------
    def arm(self, on: bool = True) -> None:
        """``OUTP ON`` (arm the elements) or ``OUTP OFF``."""
        self._require_control("OUTP")
        self.session.write("OUTP ON" if on else "OUTP OFF")
        self._armed = bool(on)

    # -- acquisitions --------------------------------------------------------------------
    def _set_acq(self, **settings: str) -> None:
        """Send all ``ACQ:<KEY> <value>`` settings on one line (cheap, and never stale)."""
        self._require_control("acquisition")
        self.session.write(";".join(f"ACQ:{k} {v}" for k, v in settings.items()))
        self._acq = dict(settings)

    def acquisition_timeout(self, p: int, m: int, time_s: float) -> float:
        """Seconds to allow one ``INIT`` of ``p`` vectors x ``m`` samples to finish.

        Physical duration ``p*m*time_s`` plus the board's measured wall time per unit of work
        (``p*m*time_s/tau``), with a factor 5 margin, and never less than ``acq_timeout_floor_s``.
        """
        physical = p * m * time_s
        est = 0.0
        if self._sec_per_work is not None:
            est = self._sec_per_work * p * m * max(1.0, time_s / self.tau_s)
        return max(self.acq_timeout_floor_s, 2.0 * physical + 5.0 * est + 2.0)

    def fetch_timeout(self, nbytes: int) -> float:
        """Seconds to allow a block of ``nbytes`` to arrive (transport throughput, x4 margin)."""
        return max(self.session.timeout, 5.0 + 4.0 * nbytes / self.session.transport.bytes_per_second)

    def capacity(self) -> int | None:
        """``ACQ:CAP?``: the most readings (``P x M x n``) one acquisition may hold, read once per
        session; ``None`` (unlimited) for a board that does not know the query (logged once)."""
        if not self._capacity_read:
            try:
                cap = self.session.query("ACQ:CAP?", _int)
            except BoardError as e:
                log.info("%s does not answer ACQ:CAP? (%s): treating its capacity as unlimited; acquisitions "
                         "are split at max_samples_per_call=%d and on 'too large' refusals",
                         self.resource, e, self.max_samples_per_call)
                cap = None
            else:
                if cap < 1:
                    raise DeviceError(f"ACQ:CAP? answered {cap}; expected a positive number of readings")
            self._capacity, self._capacity_read = cap, True
        return self._capacity

    def readings_per_call(self) -> int:
        """Largest ``P x M x n`` one ``INIT`` may hold: ``max_samples_per_call`` or ``ACQ:CAP?``."""
        cap = self.capacity()
        return self.max_samples_per_call if cap is None else min(self.max_samples_per_call, cap)

    def _work(self, p: int, m: int, time_s: float) -> float:
        """Integration work of one run, in sample-taus: ``p * m * time_s / tau`` (a board's work limit
        is proportional to it for a given program)."""
        return p * m * time_s / self.tau_s

    def _plan(self, p: int, m: int, n: int, mode: str, time_s: float = 0.0) -> list[tuple[int, int, int, int]]:
        """Chunks ``(p0, p1, m0, m1)`` covering the acquisition in order, each within the readings
        per call (:meth:`readings_per_call`) and below any work a board refused this session."""
        lim = self.readings_per_call()
        per_sample = self._work(1, 1, time_s)
        if self._refused_work is not None:  # the largest count of samples the board may integrate
            lim = min(lim, max(1, int(self._refused_work / 2 / per_sample)) * n)
        if m * n <= lim:
            pv = max(1, lim // (m * n))
            return [(p0, min(p, p0 + pv), 0, m) for p0 in range(0, p, pv)]
        if mode == "SERIAL":
            raise ValueError(
                f"a serial acquisition of {m} samples x {n} nodes ({m * n} values per input vector) exceeds "
                f"the {lim} readings one acquisition of this board may hold (ACQ:CAP?, max_samples_per_call, "
                "or a work limit the board refused); serial runs cannot be split over samples without "
                "restarting from x = 0: digitise fewer nodes, take fewer samples, or raise max_samples_per_call"
            )
        ms = max(1, lim // n)
        return [(q, q + 1, m0, min(m, m0 + ms)) for q in range(p) for m0 in range(0, m, ms)]

    def acquire(
        self,
        mode: str,
        time_s: float,
        samples: int,
        nodes: Sequence[int] | None = None,
    ) -> Acquisition:
        """Acquire ``samples`` readings per input vector of the current input batch.

        ``mode`` is ``"reset"`` (each sample from x = 0, read after ``time_s`` seconds) or
        ``"serial"`` (one run per input vector, read every ``time_s`` seconds).  ``nodes``
        selects the digitised nodes, in that order (default all).  Returns an
        :class:`~tc_hw.model.device.Acquisition` with ``volts`` of shape ``(P, M, n)`` (volts =
        code * ACQ:RANGE? / 32768), the raw int16 ``codes`` and ``volts_per_code``.  Needs an
        input batch (:meth:`set_inputs`) and armed outputs (:meth:`arm`).
        """
        mode_u = str(mode).strip().upper()
        if mode_u not in ("RESET", "SERIAL"):
            raise ValueError(f"mode must be 'reset' or 'serial', got {mode!r}")
        time_s = float(time_s)
        if not (math.isfinite(time_s) and time_s > 0):
            raise ValueError(f"time_s must be a positive number of seconds, got {time_s!r}")
        if int(samples) != samples or samples < 1:
            raise ValueError(f"samples must be a positive integer, got {samples!r}")
        m = int(samples)
        if nodes is None:
            node_arr = np.arange(self.n_nodes)
            nodes_arg = "ALL"
        else:
            node_arr = np.asarray(list(nodes), dtype=int).reshape(-1)
            if len(node_arr) == 0:
                raise ValueError("nodes must name at least one node (or be None for all)")
            if len(set(node_arr.tolist())) != len(node_arr):
                raise ValueError(f"nodes {node_arr.tolist()} contain a repeated node")
            if node_arr.min() < 0 or node_arr.max() >= self.n_nodes:
                raise ValueError(f"nodes {node_arr.tolist()} out of range 0..{self.n_nodes - 1}")
            nodes_arg = ",".join(str(i) for i in node_arr.tolist())
        if self._inputs is None:
            raise DeviceError("no input batch: call set_inputs(inputs of shape (P, K)) before acquire()")
        if self._armed is False:
            raise DeviceError("outputs are off: call arm() (or use tc_hw.model.device.armed(board)) before acquire()")
        inputs = self._inputs
        p, n = inputs.shape[0], len(node_arr)
        plan = self._plan(p, m, n, mode_u, time_s)

        t0 = time.monotonic()
        temperature = self.temperature()
        codes = np.empty((p, m, n), dtype=np.int16)
        reconnects0 = self.session.reconnects
        runs = [0, 0]  # INITs carried out, INITs refused as too large
        for p0, p1, m0, m1 in plan:
            self._acquire_part(codes, p0, p1, m0, m1, mode_u, time_s, nodes_arg, runs)
        if runs[0] > 1:
            self._send_inputs(inputs)  # leave the user's batch on the board
            t_end = self.temperature()  # a split acquisition spans time: report the mean of its ends
            temps = (temperature, t_end)
            temperature = 0.5 * (temperature + t_end)
        else:
            temps = (temperature, temperature)
        vpc = self.volts_per_code
        return Acquisition(
            volts=codes.astype(np.float64) * vpc,
            nodes=node_arr,
            mode=mode_u.lower(),
            time_s=time_s,
            inputs=inputs.copy(),
            temperature_k=temperature,
            codes=codes,
            volts_per_code=vpc,
            meta={
                "identity": self.identity,
                "resource": self.resource,
                "calls": runs[0],
                "refused_too_large": runs[1],
                "temperature_range_k": (min(temps), max(temps)),
                "wall_s": time.monotonic() - t0,
                "reconnects": self.session.reconnects - reconnects0,
            },
        )

    def _acquire_part(self, codes: np.ndarray, p0: int, p1: int, m0: int, m1: int, mode: str, time_s: float,
                      nodes_arg: str, runs: list) -> None:
        """Fill ``codes[p0:p1, m0:m1]`` with one INIT; on a ``-221`` "too large" refusal, halve the
        part (input vectors first, then, in reset mode, samples) and acquire the halves in order."""
        work = self._work(p1 - p0, m1 - m0, time_s)
        parts = _halves(p0, p1, m0, m1, mode)
        refusal = None
        if parts and self._refused_work is not None and work >= self._refused_work:
            pass  # as large as a part already refused in this session: split without asking
        else:
            chunk = self._inputs[p0:p1]
            if self._board_inputs is None or not np.array_equal(self._board_inputs, chunk):
                self._send_inputs(chunk)
            self._set_acq(MODE=mode, TIME=repr(time_s), COUNT=str(m1 - m0), NODES=nodes_arg)
            try:
                codes[p0:p1, m0:m1] = self._run_once(p1 - p0, m1 - m0, codes.shape[2], time_s)
                runs[0] += 1
                return
            except BoardError as e:
                if not _too_large(e):
                    raise
                refusal = e
            runs[1] += 1
            self._refused_work = work if self._refused_work is None else min(self._refused_work, work)
        if not parts:
            what = "one sample of one input vector" if m1 - m0 == 1 else (
                f"a serial run of {m1 - m0} samples (serial runs cannot be split over samples)")
            raise DeviceError(f"the board refuses even {what} as too large ({refusal}); shorten ACQ:TIME "
                              "or digitise fewer nodes") from refusal
        if refusal is not None:
            log.info("INIT refused as too large (%d vectors x %d samples): splitting in two", p1 - p0, m1 - m0)
        for part in parts:
            self._acquire_part(codes, *part, mode, time_s, nodes_arg, runs)

    def _run_once(self, p: int, m: int, n: int, time_s: float, _redo: int = 2) -> np.ndarray:
        """One ``INIT`` -> ``*OPC?`` -> ``FETC?`` cycle; int16 codes of shape ``(p, m, n)``."""
        s = self.session
        pre = self.acquisition_status()

        def init_needed() -> bool:  # after a reconnect: was our INIT carried out?
            st = self.acquisition_status()
            return not (st == "RUNNING" or (st == "DONE" and pre != "DONE"))

        t0 = time.monotonic()
        reconnects0 = s.reconnects
        s.write("INIT", reissue_if=init_needed)
        s.query("*OPC?", _opc, timeout_s=self.acquisition_timeout(p, m, time_s))
        wall = time.monotonic() - t0
        if s.reconnects == reconnects0:
            work = p * m * max(1.0, time_s / self.tau_s)
            rate = wall / work
            self._sec_per_work = rate if self._sec_per_work is None else max(rate, 0.5 * self._sec_per_work)
        nbytes = 2 * p * m * n
        try:
            raw = s.query_block("FETC?", timeout_s=self.fetch_timeout(nbytes))
        except BoardError as e:
            # data lost with a reconnect (the board was reset): acquire again, a bounded number of times
            if e.code == -230 and s.reconnects > reconnects0 and _redo > 0:
                log.warning("FETC? after a reconnect found no data (%s); acquiring again", e)
                return self._run_once(p, m, n, time_s, _redo - 1)
            raise
        try:
            return unpack_int16(raw, p * m * n).reshape(p, m, n)
        except ValueError as e:
            raise ProtocolError(f"FETC?: {e} (expected shape ({p}, {m}, {n}))") from e

    # -- recovery ------------------------------------------------------------------------
    def _restore(self) -> None:
        """After a reconnect: bring the board back to the state this driver set.

        Waits for a running acquisition, reads back ``DAC:BLOCK?`` and re-sends channels whose
        applied value differs from what was set, re-sends the input batch if ``INP:COUNT?``
        differs, re-sends the acquisition settings and restores ``OUTP``.
        """
        s = self.session
        status, count, outp = s.query("ACQ:STAT?;INP:COUNT?;OUTP?", _status_tuple)
        if status == "RUNNING":
            s.query("*OPC?", _opc, timeout_s=max(60.0, 10 * self.acq_timeout_floor_s))
        acq = ";".join(f"ACQ:{k} {v}" for k, v in self._acq.items())
        if self._dac_known is not None and self._dac_known.any():
            # the acquisition settings travel on the line of the read-back (one reply fewer)
            cmd = (acq + ";" if acq else "") + f"DAC:BLOCK? 0,{self.n_channels}"
            try:
                applied = unpack_float32(s.query_block(cmd, max_bytes=4 * self.n_channels), self.n_channels)
            except ValueError as e:
                raise ProtocolError(f"DAC:BLOCK? 0,{self.n_channels}: {e}") from e
            differs = self._dac_known & (np.abs(applied - _quantize(self._dac)) > 1.01 * DAC_LSB_V)
            for a, b in _runs(differs):
                log.warning("restoring DAC channels %d..%d after reconnect", a, b - 1)
                self._send_dac(self._dac[a:b], a)
        elif acq:
            s.write(acq)
        if self._board_inputs is not None and count != len(self._board_inputs):
            log.warning("restoring the input batch after reconnect (board has %d vectors)", count)
            self._send_inputs(self._board_inputs)
        if self._armed is not None:
            on = outp == 1
            if on != self._armed:
                log.warning("restoring OUTP %s after reconnect", "ON" if self._armed else "OFF")
                s.write("OUTP ON" if self._armed else "OUTP OFF")

    # -- closing -------------------------------------------------------------------------
    def close(self) -> None:
        """Disarm (``OUTP OFF``) and release the connection and the board's lock; safe to call
        twice.  A read-only handle sends nothing (it does not control the board)."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self.read_only:
                self.arm(False)
        except DeviceError as e:
            log.warning("could not disarm %s on close: %s", self.resource, e)
        finally:
            try:
                self.session.close()
            finally:
                self._release_lock()

    # -- capabilities (tc_hw.model.device.CalibrationReference, ReconnectCounter) ---------------
    def cal_ref(self, volts: float | None) -> None:
        """``CAL:REF <volts>``: every ADC input reads ``volts`` (-5..5 V) instead of its node;
        ``None``: ``CAL:REF OFF``.  Out-of-range or NaN values are refused, nothing sent."""
        if volts is None:
            self.session.write("CAL:REF OFF")
            return
        v = float(volts)
        if not (math.isfinite(v) and -CAL_REF_LIMIT_V <= v <= CAL_REF_LIMIT_V):
            raise UnsafeVoltageError(f"refused, nothing sent: CAL:REF {v:+.6g} V outside [-{CAL_REF_LIMIT_V}, +{CAL_REF_LIMIT_V}] V")
        self.session.write(f"CAL:REF {v:.6f}")

    @property
    def reconnects(self) -> int:
        """Reconnections of the link since it was opened."""
        return self.session.reconnects

    def __enter__(self) -> "TCBoard":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TCBoard({self.resource!r}, {getattr(self, 'identity', '?')!r})"


def _halves(p0: int, p1: int, m0: int, m1: int, mode: str) -> list[tuple[int, int, int, int]]:
    """A part ``(p0, p1, m0, m1)`` halved in order: over input vectors, else (reset mode) over
    samples; ``[]`` when it cannot be split (one vector of one sample, or one serial run)."""
    if p1 - p0 > 1:
        mid = (p0 + p1) // 2
        return [(p0, mid, m0, m1), (mid, p1, m0, m1)]
    if m1 - m0 > 1 and mode == "RESET":
        mid = (m0 + m1) // 2
        return [(p0, p1, m0, mid), (p0, p1, mid, m1)]
    return []


def _too_large(e: BoardError) -> bool:
    """Whether a board error is the manual's capacity refusal: ``-221`` "acquisition too large"."""
    return e.code == -221 and "too large" in e.text.lower() and e.command.strip().upper().startswith("INIT")


def _status_tuple(s: str) -> tuple[str, int, int]:
    parts = s.split(";")
    if len(parts) != 3:
        raise ValueError(f"expected 3 replies joined by ';', got {s!r}")
    return _status(parts[0]), _int(parts[1]), _int(parts[2])


def _status(s: str) -> str:
    st = s.strip().upper()
    if st not in ("IDLE", "RUNNING", "DONE"):
        raise ValueError(f"ACQ:STAT? answered {s!r}")
    return st


def open_visa(resource: str, *, timeout_s: float = 5.0, **kw) -> TCBoard:
    """Open a board through PyVISA (pyvisa-py): ``TCPIP0::host::5025::SOCKET`` or ``ASRL...::INSTR``.

    Keyword arguments go to :class:`TCBoard` (``retries``, ``max_samples_per_call``, ...).
    """
    if classify_resource(resource) != "visa":
        raise ValueError(f"{resource!r} is not a VISA resource; use open_serial() for plain serial lines")
    return TCBoard(_opened(VisaTransport, resource, timeout_s), **kw)


def open_serial(resource: str, *, timeout_s: float = 5.0, **kw) -> TCBoard:
    """Open a board on a plain serial line with pyserial: ``/dev/ttyUSB0``, ``serial:///dev/pts/3``.

    An ``ASRL<path>::INSTR`` string is accepted too and opened with pyserial.
    """
    r = resource.strip()
    if r.upper().startswith("ASRL") and r.upper().endswith("::INSTR"):
        r = r[4:-7]
    if classify_resource(r) != "serial":
        raise ValueError(f"{resource!r} is not a serial line; use open_visa() for TCPIP resources")
    return TCBoard(_opened(SerialTransport, r, timeout_s), **kw)


def open_board(resource: str, *, timeout_s: float = 5.0, **kw) -> TCBoard:
    """Open ``resource`` with the transport its form calls for (:func:`drivers.transport.open_transport`)."""
    return TCBoard(_opened(open_transport, resource, timeout_s), **kw)


def _opened(factory, resource: str, timeout_s: float) -> Transport:
    try:
        return factory(resource, timeout_s)
    except TransportClosed as e:
        raise ConnectionLost(str(e)) from e
