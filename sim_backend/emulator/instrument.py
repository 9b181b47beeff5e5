"""The emulated board's firmware: state, command handlers, acquisition state machine.

:class:`Instrument` executes lines of :class:`~sim_backend.emulator.scpi.Command` and returns the
reply bytes (``None`` when the line produced no reply).  It has no sockets and is safe to call
from several transport threads: each command runs under one lock, and ``*OPC?`` / ``*WAI`` wait
for a running acquisition without holding it.

Errors: a command that errors changes nothing, queues its error and (for a query) sends no
reply; the other commands of the same line still run, and the replies of the queries that
succeeded are joined by ``;``.

Acquisition states (``ACQ:STAT?``): ``IDLE`` -> ``INIT`` -> ``RUNNING`` -> ``DONE`` (data fetchable
with ``FETC?`` until the next ``INIT`` or ``*RST``); ``*RST`` aborts a running acquisition.

Commands beyond the manual (harmless, SCPI-conventional): the queries ``ACQ:MODE?``,
``ACQ:TIME?``, ``ACQ:COUNT?``, ``ACQ:NODES?``, ``CAL:REF?``, ``INP:BLOCK?``, ``SYST:ERR:COUNT?``,
``*WAI``, ``ABORt``, and ``INP:COUNT <P>`` for boards without input lines (K = 0).

Emulator diagnostics (not in the manual; a real board need not have them):
``FORMat[:DATA] ASCii|INTeger`` (and ``FORM?``) switches ``FETC?`` between the manual's int16
block (``INT``, the default, restored by ``*RST``) and one line of comma-separated codes (``ASC``,
used only as the slow baseline of ``benchmarks/acquire_overhead.py``); ``DIAGnostic:COMPute?``
gives the seconds the emulator has spent computing acquisitions since it started, so a client can
split its wall time into board compute and everything else.

Limits: ``ACQ:TIME`` must lie in (0, 1e5 tau]; ``ACQ:COUNT`` in 1..10^7; an acquisition may hold
at most 2^28 codes (otherwise ``INIT`` gives -200).  Capacity (the manual's rule): ``ACQ:CAP?``
answers the board's ``capacity_readings``; ``INIT`` is refused with ``-221`` "acquisition too
large: ... exceeds ..." when ``P*M*n_digitized`` exceeds it, or when ``P*M*n_steps*n_channels``
(element-steps) exceeds the board's ``work_limit_element_steps`` (hidden; unlimited by default).
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np

from .acquire import Request, Worker, time_step
from .board import Board, quantize
from .scpi import (
    Command,
    ErrorQueue,
    HeaderTable,
    ScpiError,
    arg_block,
    arg_float,
    arg_int,
    arg_keyword,
    block,
    expect_args,
)

__all__ = ["Instrument", "MAX_TIME_TAU", "MAX_COUNT", "MAX_CODES"]

MAX_TIME_TAU = 1e5
MAX_COUNT = 10_000_000
MAX_CODES = 1 << 28
CAL_REF_LIMIT_V = 5.0
_NOISE_STREAM = 0xAD0C


def _fmt(v: float) -> bytes:
    return repr(float(v)).encode()


class Instrument:
    """SCPI command set of the board manual over a :class:`~sim_backend.emulator.board.Board`.

    Parameters
    ----------
    board : Board
    clock : callable returning seconds (default ``time.monotonic``); board temperature follows it.
    """

    def __init__(self, board: Board, clock=time.monotonic):
        self.board = board
        self.desc = board.desc
        self._clock = clock
        self._t_start = clock() - 3600.0 * float(getattr(board.desc, "age_h", 0.0))  # the board's clock
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self.errors = ErrorQueue()
        self._closing = False
        self._acq_counter = 0
        self._current: int | None = None  # ident of the running acquisition
        self._worker = Worker()
        self._compute_s = 0.0  # seconds spent in run_acquisition since start (DIAG:COMP?)
        self._table = self._build_table()
        self._reset_state()

    # ------------------------------------------------------------------ public API
    def execute(self, commands: list[Command]) -> bytes | None:
        """Run one line of commands; return its reply (joined by ``;``, ending ``\\n``) or ``None``."""
        replies = []
        for cmd in commands:
            try:
                if cmd.error is not None:
                    raise ScpiError(cmd.error, cmd.detail)
                handler, is_query = self._table.lookup(cmd.header)
                if handler in (self._opc_q, self._wai):
                    out = handler(cmd.args)  # waits without holding the lock
                else:
                    with self._lock:
                        out = handler(cmd.args)
                if is_query and out is not None:
                    replies.append(out)
            except ScpiError as e:
                self.errors.push(e)
        if not replies:
            return None
        return b";".join(replies) + b"\n"

    def close(self) -> None:
        """Abort any acquisition, wake waiters, stop the worker."""
        with self._cond:
            self._closing = True
            self._current = None
            self._cond.notify_all()
        self._worker.stop(timeout=5.0)

    @property
    def state(self) -> str:
        return self._state

    def elapsed_s(self) -> float:
        return self._clock() - self._t_start

    # ------------------------------------------------------------------ state
    def _reset_state(self) -> None:
        n_ch = self.board.n_channels
        self._applied = np.zeros(n_ch)  # quantised volts actually applied
        self._output_on = False
        self._inputs: np.ndarray | None = None  # (P, K) float64
        self._mode = "RESET"
        self._time_s = self.desc.tau_s
        self._count = 100
        self._nodes: np.ndarray | None = None  # None: ALL
        self._cal_ref: float | None = None
        self._state = "IDLE"
        self._data: np.ndarray | None = None
        self._current = None
        self._ascii = False  # FORM ASC: FETC? as text (emulator diagnostic)

    def _refuse_while_running(self) -> None:
        if self._state == "RUNNING":
            raise ScpiError(-221, "an acquisition is running")

    def _build_table(self) -> HeaderTable:
        t = HeaderTable()
        for pattern, handler in [
            ("*IDN?", self._idn_q),
            ("*RST", self._rst),
            ("*CLS", self._cls),
            ("*OPC?", self._opc_q),
            ("*WAI", self._wai),
            ("SYSTem:ERRor[:NEXT]?", self._err_q),
            ("SYSTem:ERRor:COUNt?", self._err_count_q),
            ("SYSTem:TEMPerature?", self._temp_q),
            ("BOARD:TECHnology?", self._tech_q),
            ("BOARD:NODES?", self._nodes_q),
            ("BOARD:INPUTS?", self._inputs_q),
            ("BOARD:CHANnels?", self._chan_q),
            ("BOARD:TAU?", self._tau_q),
            ("BOARD:MAP?", self._map_q),
            ("DAC:VOLTage", self._dac_volt),
            ("DAC:VOLTage?", self._dac_volt_q),
            ("DAC:BLOCK", self._dac_block),
            ("DAC:BLOCK?", self._dac_block_q),
            ("INPut:BLOCK", self._inp_block),
            ("INPut:BLOCK?", self._inp_block_q),
            ("INPut:COUNT?", self._inp_count_q),
            ("INPut:COUNT", self._inp_count),
            ("OUTPut[:STATe]", self._outp),
            ("OUTPut[:STATe]?", self._outp_q),
            ("ACQuire:MODE", self._acq_mode),
            ("ACQuire:MODE?", self._acq_mode_q),
            ("ACQuire:TIME", self._acq_time),
            ("ACQuire:TIME?", self._acq_time_q),
            ("ACQuire:COUNT", self._acq_count),
            ("ACQuire:COUNT?", self._acq_count_q),
            ("ACQuire:NODES", self._acq_nodes),
            ("ACQuire:NODES?", self._acq_nodes_q),
            ("ACQuire:RANGE?", self._acq_range_q),
            ("ACQuire:CAPacity?", self._acq_cap_q),
            ("ACQuire:STATus?", self._acq_stat_q),
            ("INITiate[:IMMediate]", self._init),
            ("ABORt", self._abort),
            ("FETCh?", self._fetch_q),
            ("CALibration:REFerence", self._cal_ref),
            ("CALibration:REFerence?", self._cal_ref_q),
            ("FORMat[:DATA]", self._form),
            ("FORMat[:DATA]?", self._form_q),
            ("DIAGnostic:COMPute?", self._compute_q),
        ]:
            t.add(pattern, handler)
        return t

    # ------------------------------------------------------------------ common commands
    def _idn_q(self, args):
        expect_args(args, 0)
        d = self.desc
        return f"TCLAB,{d.model},{d.serial},{d.firmware}".encode()

    def _rst(self, args):
        expect_args(args, 0)
        self._reset_state()  # also forgets the running acquisition: its result is discarded
        self._cond.notify_all()

    def _cls(self, args):
        expect_args(args, 0)
        self.errors.clear()

    def _wait_complete(self) -> None:
        with self._cond:
            while self._state == "RUNNING" and not self._closing:
                self._cond.wait(0.25)

    def _opc_q(self, args):
        expect_args(args, 0)
        self._wait_complete()
        return b"1"

    def _wai(self, args):
        expect_args(args, 0)
        self._wait_complete()

    def _err_q(self, args):
        expect_args(args, 0)
        return self.errors.pop().encode()

    def _err_count_q(self, args):
        expect_args(args, 0)
        return str(len(self.errors)).encode()

    def _temp_q(self, args):
        expect_args(args, 0)
        return f"{self.board.temperature(self.elapsed_s()):.4f}".encode()

    # ------------------------------------------------------------------ board
    def _tech_q(self, args):
        expect_args(args, 0)
        return self.desc.technology.encode()

    def _nodes_q(self, args):
        expect_args(args, 0)
        return str(self.board.network.n_nodes).encode()

    def _inputs_q(self, args):
        expect_args(args, 0)
        return str(self.board.network.n_inputs).encode()

    def _chan_q(self, args):
        expect_args(args, 0)
        return str(self.board.n_channels).encode()

    def _tau_q(self, args):
        expect_args(args, 0)
        return _fmt(self.desc.tau_s)

    def _map_q(self, args):
        expect_args(args, 0)
        return block(self.board.layout.map_csv().encode("utf-8"))

    # ------------------------------------------------------------------ DAC
    def _check_channels(self, start: int, volts: np.ndarray) -> None:
        """-222 unless channels start..start+n-1 exist and every value is finite and safe."""
        n_ch = self.board.n_channels
        if start < 0 or start + len(volts) > n_ch:
            raise ScpiError(-222, f"channels {start}..{start + len(volts) - 1} do not exist (board has {n_ch})")
        bad_nan = np.flatnonzero(~np.isfinite(volts))
        if len(bad_nan):
            raise ScpiError(-222, f"non-finite voltage for channels {(start + bad_nan[:5]).tolist()}")
        lay = self.board.layout
        lo = lay.vmin[start : start + len(volts)]
        hi = lay.vmax[start : start + len(volts)]
        bad = np.flatnonzero((volts < lo) | (volts > hi))
        if len(bad):
            parts = [
                f"ch {start + i} ({lay.kind[start + i]}) {volts[i]:+.6g} V outside [{lo[i]:+.6g}, {hi[i]:+.6g}] V"
                for i in bad[:5]
            ]
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise ScpiError(-222, "refused: " + ", ".join(parts) + more)

    def _dac_volt(self, args):
        expect_args(args, 2)
        self._refuse_while_running()
        ch = arg_int(args[0], "channel")
        v = np.array([arg_float(args[1], "voltage")])
        self._check_channels(ch, v)
        self._applied[ch] = quantize(v)[0]

    def _dac_volt_q(self, args):
        expect_args(args, 1)
        ch = arg_int(args[0], "channel")
        if not 0 <= ch < self.board.n_channels:
            raise ScpiError(-222, f"channel {ch} does not exist (board has {self.board.n_channels})")
        return _fmt(self._applied[ch])

    def _dac_block(self, args):
        expect_args(args, 2)
        self._refuse_while_running()
        start = arg_int(args[0], "start channel")
        payload = arg_block(args[1])
        if len(payload) % 4:
            raise ScpiError(-222, f"block of {len(payload)} bytes is not a whole number of float32")
        v = np.frombuffer(payload, "<f4").astype(np.float64)
        self._check_channels(start, v)
        self._applied[start : start + len(v)] = quantize(v)

    def _dac_block_q(self, args):
        expect_args(args, 2)
        start = arg_int(args[0], "start channel")
        n = arg_int(args[1], "count")
        n_ch = self.board.n_channels
        if start < 0 or n < 0 or start + n > n_ch:
            raise ScpiError(-222, f"channels {start}..{start + n - 1} do not exist (board has {n_ch})")
        return block(self._applied[start : start + n].astype("<f4").tobytes())

    # ------------------------------------------------------------------ inputs
    def _inp_block(self, args):
        expect_args(args, 1)
        self._refuse_while_running()
        payload = arg_block(args[0])
        k = self.board.network.n_inputs
        if k == 0:
            raise ScpiError(-221, "the board has no input lines; set the batch size with INP:COUNT <P>")
        if len(payload) == 0 or len(payload) % (4 * k):
            raise ScpiError(-222, f"block of {len(payload)} bytes is not a positive multiple of 4 K = {4 * k}")
        i = np.frombuffer(payload, "<f4").astype(np.float64).reshape(-1, k)
        bad = np.flatnonzero(~np.isfinite(i).all(1))
        if len(bad):
            raise ScpiError(-222, f"non-finite inputs in vectors {bad[:5].tolist()}")
        self._inputs = i

    def _inp_block_q(self, args):
        expect_args(args, 0)
        if self._inputs is None:
            return block(b"")
        return block(self._inputs.astype("<f4").tobytes())

    def _inp_count(self, args):
        expect_args(args, 1)
        self._refuse_while_running()
        if self.board.network.n_inputs != 0:
            raise ScpiError(-221, "INP:COUNT <P> is for boards without input lines; send INP:BLOCK")
        p = arg_int(args[0], "count")
        if not 1 <= p <= MAX_COUNT:
            raise ScpiError(-222, f"count {p} outside 1..{MAX_COUNT}")
        self._inputs = np.zeros((p, 0))

    def _inp_count_q(self, args):
        expect_args(args, 0)
        return str(0 if self._inputs is None else len(self._inputs)).encode()

    # ------------------------------------------------------------------ output
    def _outp(self, args):
        expect_args(args, 1)
        self._refuse_while_running()
        self._output_on = arg_keyword(args[0], {"ON": True, "1": True, "OFF": False, "0": False})

    def _outp_q(self, args):
        expect_args(args, 0)
        return b"1" if self._output_on else b"0"

    # ------------------------------------------------------------------ acquisition settings
    def _acq_mode(self, args):
        expect_args(args, 1)
        self._refuse_while_running()
        self._mode = arg_keyword(args[0], {"RESET": "RESET", "RES": "RESET", "SERIAL": "SERIAL", "SER": "SERIAL"})

    def _acq_mode_q(self, args):
        expect_args(args, 0)
        return self._mode.encode()

    def _acq_time(self, args):
        expect_args(args, 1)
        self._refuse_while_running()
        t = arg_float(args[0], "time")
        tau = self.desc.tau_s
        if not (math.isfinite(t) and 0 < t <= MAX_TIME_TAU * tau):
            raise ScpiError(-222, f"time {t!r} s outside (0, {MAX_TIME_TAU * tau:g}] s")
        self._time_s = t

    def _acq_time_q(self, args):
        expect_args(args, 0)
        return _fmt(self._time_s)

    def _acq_count(self, args):
        expect_args(args, 1)
        self._refuse_while_running()
        m = arg_int(args[0], "count")
        if not 1 <= m <= MAX_COUNT:
            raise ScpiError(-222, f"count {m} outside 1..{MAX_COUNT}")
        self._count = m

    def _acq_count_q(self, args):
        expect_args(args, 0)
        return str(self._count).encode()

    def _acq_nodes(self, args):
        expect_args(args, 1, 1 << 20)
        self._refuse_while_running()
        if len(args) == 1 and isinstance(args[0], str) and args[0].upper() == "ALL":
            self._nodes = None
            return
        n = self.board.network.n_nodes
        nodes = [arg_int(a, "node") for a in args]
        bad = [i for i in nodes if not 0 <= i < n]
        if bad:
            raise ScpiError(-222, f"nodes {bad[:5]} do not exist (board has {n})")
        if len(set(nodes)) != len(nodes):
            dup = sorted({i for i in nodes if nodes.count(i) > 1})
            raise ScpiError(-222, f"repeated nodes {dup[:5]}")
        self._nodes = np.asarray(nodes, np.int64)

    def _acq_nodes_q(self, args):
        expect_args(args, 0)
        if self._nodes is None:
            return b"ALL"
        return ",".join(str(i) for i in self._nodes.tolist()).encode()

    def _acq_range_q(self, args):
        expect_args(args, 0)
        return _fmt(self.desc.adc_range_v)

    def _acq_cap_q(self, args):
        expect_args(args, 0)
        return str(int(self.desc.capacity_readings)).encode()

    def _check_capacity(self, p: int, m: int, n_digitized: int) -> None:
        """-221 "acquisition too large" when ``P*M*n_digitized`` exceeds ``ACQ:CAP?``, or the
        integration work ``P*M*n_steps*n_channels`` (element-steps; ``n_steps`` = ACQ:TIME over
        the emulator's step, see :func:`~sim_backend.emulator.acquire.time_step`) exceeds the
        board's hidden work limit.  CAL:REF acquisitions integrate nothing and have no work."""
        readings = p * m * n_digitized
        cap = int(self.desc.capacity_readings)
        if readings > cap:
            raise ScpiError(-221, f"acquisition too large: {readings} readings (P {p} x M {m} x {n_digitized} "
                                  f"nodes) exceeds the capacity {cap} (ACQ:CAP?)")
        limit = self.desc.work_limit_element_steps
        if limit is None or self._cal_ref is not None:
            return
        t_tau = self._time_s / self.desc.tau_s
        n_steps = max(1, round(t_tau / time_step(t_tau)))
        work = float(p) * m * n_steps * self.board.n_channels
        if work > limit:
            raise ScpiError(-221, f"acquisition too large: {work:.3g} element-steps (P {p} x M {m} x {n_steps} "
                                  f"steps x {self.board.n_channels} channels) exceeds {limit:.3g}")

    def _acq_stat_q(self, args):
        expect_args(args, 0)
        return self._state.encode()

    def _cal_ref(self, args):
        expect_args(args, 1)
        self._refuse_while_running()
        if isinstance(args[0], str) and args[0].upper() == "OFF":
            self._cal_ref = None
            return
        v = arg_float(args[0], "reference")
        if not (math.isfinite(v) and -CAL_REF_LIMIT_V <= v <= CAL_REF_LIMIT_V):
            raise ScpiError(-222, f"reference {v!r} V outside [-5, 5] V")
        self._cal_ref = v

    def _cal_ref_q(self, args):
        expect_args(args, 0)
        return b"OFF" if self._cal_ref is None else _fmt(self._cal_ref)

    # ------------------------------------------------------------------ acquisition
    def _seeds(self, counter: int) -> tuple[int, int]:
        ss = np.random.SeedSequence([self.desc.seed, counter])
        twin_seed, noise = ss.generate_state(2, np.uint64)
        return int(twin_seed), int(noise) ^ _NOISE_STREAM

    def _init(self, args):
        expect_args(args, 0)
        self._refuse_while_running()
        if not self._output_on:
            raise ScpiError(-200, "outputs are off (send OUTP ON)")
        if self._inputs is None:
            raise ScpiError(-200, "no input batch (send INP:BLOCK)")
        n = self.board.network.n_nodes
        nodes = np.arange(n) if self._nodes is None else self._nodes.copy()
        self._check_capacity(len(self._inputs), self._count, len(nodes))
        size = len(self._inputs) * self._count * len(nodes)
        if size > MAX_CODES:
            raise ScpiError(-200, f"acquisition of {size} codes exceeds {MAX_CODES}")
        self._acq_counter += 1
        ident = self._acq_counter
        elapsed = self.elapsed_s()
        temp = self.board.temperature(elapsed)
        twin_seed, noise_seed = self._seeds(ident)
        params = None if self._cal_ref is not None else self.board.params(self._applied, temp, elapsed)
        req = Request(
            ident=ident,
            mode=self._mode,
            time_tau=self._time_s / self.desc.tau_s,
            count=self._count,
            nodes=nodes,
            inputs=self._inputs.copy(),
            params=params,
            cal_ref_v=self._cal_ref,
            rail_v=self.desc.rail_v,
            adc=self.board.truth["adc"],
            seed=twin_seed,
            noise_seed=noise_seed,
        )
        self._state = "RUNNING"
        self._data = None
        self._current = ident
        self._worker.submit(req, lambda: self._current != ident or self._closing, self._finished)

    def _finished(self, req: Request, codes, error, seconds: float = 0.0) -> None:
        with self._cond:
            self._compute_s += seconds
            if self._current != req.ident or self._state != "RUNNING":
                return  # aborted: discard
            self._current = None
            if codes is not None:
                self._data = codes
                self._state = "DONE"
            else:
                self._state = "IDLE"
                self.errors.push(ScpiError(-200, f"acquisition failed: {error}"))
            self._cond.notify_all()

    def _abort(self, args):
        expect_args(args, 0)
        if self._state == "RUNNING":
            self._state = "IDLE"
            self._current = None
            self._cond.notify_all()

    def _fetch_q(self, args):
        expect_args(args, 0)
        if self._state != "DONE" or self._data is None:
            raise ScpiError(-230, f"no data (acquisition state {self._state})")
        if self._ascii:
            return ",".join(map(str, self._data.reshape(-1).tolist())).encode()
        return block(self._data.astype("<i2").tobytes())

    # ------------------------------------------------------------------ emulator diagnostics
    def _form(self, args):
        expect_args(args, 1)
        self._ascii = arg_keyword(args[0], {"ASC": True, "ASCII": True, "INT": False, "INTEGER": False})

    def _form_q(self, args):
        expect_args(args, 0)
        return b"ASC" if self._ascii else b"INT"

    def _compute_q(self, args):
        expect_args(args, 0)
        return _fmt(self._compute_s)
