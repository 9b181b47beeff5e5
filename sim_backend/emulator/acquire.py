"""One acquisition: the twin integrates the board equation, the ADC model digitises it.

:func:`run_acquisition` is pure (given a :class:`Request` it always returns the same codes) and
cancellable between chunks; :class:`Worker` runs requests one at a time on a background thread,
so that the SCPI side stays responsive and two twin calls never overlap.

Time is in units of ``tau``: ``t = ACQ:TIME / tau``, step ``dt = t / max(1, round(t / 1e-3))``
(so that ``t`` is an exact multiple of ``dt``, about 1e-3 tau).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from tc_hw.model.params import Params
from sim_backend import twin

from . import nonideal as ni

__all__ = ["Request", "run_acquisition", "Worker", "time_step", "warm_up", "CHUNK_WORK"]

log = logging.getLogger(__name__)

#: Work per twin call in node-steps (trajectories x steps x nodes, about 0.1-0.3 s of CPU);
#: an acquisition can be aborted (``*RST``, shutdown) between calls.
CHUNK_WORK = 1 << 27


@dataclass(frozen=True)
class Request:
    """Everything one acquisition needs, frozen at ``INIT``.

    mode : ``"RESET"`` or ``"SERIAL"``
    time_tau : observation time (reset) or sampling interval (serial), in units of tau
    count : M, samples per input vector
    nodes : int64 array (n,), digitised nodes in column order
    inputs : float64 array (P, K)
    params : board equation at INIT (``None`` for CAL:REF acquisitions)
    cal_ref_v : reference volts routed to every ADC input, or ``None``
    rail_v : node rails, volts
    adc : the truth's ``adc`` dict (gain, offset_v, noise_v arrays of shape (N,), range_v)
    seed : twin seed;  noise_seed : seed of the ADC readout noise
    """

    ident: int
    mode: str
    time_tau: float
    count: int
    nodes: np.ndarray
    inputs: np.ndarray
    params: Params | None
    cal_ref_v: float | None
    rail_v: float
    adc: dict
    seed: int
    noise_seed: int


def time_step(t_tau: float) -> float:
    """``dt`` (units of tau) such that ``t_tau`` is an exact multiple, about 1e-3."""
    return t_tau / max(1, round(t_tau / 1e-3))


class Cancelled(Exception):
    """The acquisition was aborted (``*RST``, a newer ``INIT``, shutdown)."""


def _node_values(req: Request, cancelled: Callable[[], bool]) -> np.ndarray:
    """Node volts, shape (P, M, n), float32."""
    p_count = len(req.inputs)
    m = req.count
    n = len(req.nodes)
    dt = time_step(req.time_tau)
    out = np.empty((p_count, m, n), np.float32)
    n_nodes = req.params.network.n_nodes
    steps = max(1, round(req.time_tau / dt))
    if req.mode == "RESET":
        per_chunk = max(1, CHUNK_WORK // (p_count * steps * n_nodes))
        for m0 in range(0, m, per_chunk):
            if cancelled():
                raise Cancelled
            mc = min(per_chunk, m - m0)
            run = twin.sample_reset(
                req.params, req.inputs, req.time_tau, mc, dt=dt, seed=req.seed, nodes=req.nodes,
                rail=req.rail_v, sample_offset=m0,
            )
            out[:, m0 : m0 + mc, :] = run.x[:, :, 0, :]
    else:
        # Serial: one run per input vector; chunks of input vectors get their own seed, so the
        # result depends only on (seed, P, M), not on timing.
        per_chunk = max(1, CHUNK_WORK // (steps * m * n_nodes))
        for p0 in range(0, p_count, per_chunk):
            if cancelled():
                raise Cancelled
            p1 = min(p_count, p0 + per_chunk)
            seed = int(np.random.SeedSequence([req.seed, p0]).generate_state(1, np.uint64)[0])
            run = twin.sample_serial(
                req.params, req.inputs[p0:p1], req.time_tau, m, dt=dt, seed=seed, nodes=req.nodes,
                rail=req.rail_v,
            )
            out[p0:p1] = run.x[:, :, 0, :]
    return out


def run_acquisition(req: Request, cancelled: Callable[[], bool] = lambda: False) -> np.ndarray:
    """ADC codes, int16 array of shape (P, M, n); raises :class:`Cancelled` when aborted."""
    p_count = len(req.inputs)
    shape = (p_count, req.count, len(req.nodes))
    rng = np.random.default_rng(np.random.SeedSequence([req.noise_seed]))
    codes = np.empty(shape, np.int16)
    if req.cal_ref_v is not None:
        x = np.full(shape, req.cal_ref_v, np.float64)
    else:
        x = _node_values(req, cancelled)
    if cancelled():
        raise Cancelled
    # Digitise per input vector to bound the float64 temporaries.
    for p in range(p_count):
        readings = ni.adc_read(req.adc, x[p], req.nodes, rng)
        codes[p] = ni.adc_codes(readings, req.adc["range_v"])
    return codes


def warm_up(params: Params) -> None:
    """Load (or compile) the twin's kernel before the emulator reports ready."""
    twin.sample_reset(params, np.zeros((1, params.network.n_inputs)), 1e-3, 1, dt=1e-3, seed=0, rail=1.0)


class Worker:
    """Runs acquisitions one at a time on a daemon thread.

    ``submit(req, cancelled, done)`` queues a request; ``done(req, codes, error, seconds)`` is
    called on the worker thread with the codes (or ``None``), ``error`` (``None``, ``"cancelled"``
    or a message) and the seconds the computation took.
    """

    def __init__(self):
        self._q: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="acquisition", daemon=True)
        self._thread.start()

    def submit(self, req: Request, cancelled: Callable[[], bool], done) -> None:
        self._q.put((req, cancelled, done))

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop after the current chunk; True if the thread ended within ``timeout`` seconds."""
        self._q.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            req, cancelled, done = job
            t0 = time.perf_counter()
            try:
                codes = run_acquisition(req, cancelled)
            except Cancelled:
                done(req, None, "cancelled", time.perf_counter() - t0)
            except Exception as e:  # a failure is reported as -200, never kills the worker
                log.exception("acquisition %d failed", req.ident)
                done(req, None, f"{type(e).__name__}: {e}", time.perf_counter() - t0)
            else:
                done(req, codes, None, time.perf_counter() - t0)
