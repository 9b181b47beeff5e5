"""ADC readout calibration: per-node gain and offset from ``CAL:REF`` sweeps.

With ``CAL:REF <v>`` every ADC input reads the reference ``v`` instead of its node, so the
readings of node ``i`` are ``r_i(v) + noise``.  :func:`measure` steps the reference over
``levels`` volts, acquires ``samples`` readings per input vector at each, and keeps per-level
means, variances and counts (plus a few raw codes); :func:`fit` is a weighted polynomial per
node: a straight line ``gain_i * v + offset_i`` when it fits, else (an ADC with integral
nonlinearity) degree 3, then 5, the first whose reduced chi-square passes.  ``gain``/``offset``
are then the tangent at 0 V, and ``inverse`` (N, 4) the cubic ``x = sum_k a_k r^k`` that maps
readings back to node volts on +-:data:`INVERSE_RANGE_V` (for a straight line, exactly
``(r - offset) / gain``).

``CAL:REF`` is the optional capability :class:`tc_hw.model.device.CalibrationReference` (the board
driver has it); a backend without it (the ideal twin) has an ideal readout, and :func:`measure`
returns ``None``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tc_hw.model.device import CalibrationReference, armed

__all__ = ["AdcData", "AdcFit", "measure", "fit", "ideal", "supports_cal_ref", "set_cal_ref", "DEFAULT_LEVELS"]

#: Reference levels (volts): inside the +-5 V CAL:REF limit and the ADC full scale with margin.
DEFAULT_LEVELS = tuple(np.linspace(-3.5, 3.5, 8).round(6))
#: Node volts over which the inverse readout polynomial is fitted (nodes stay well inside).
INVERSE_RANGE_V = 4.0


@dataclass
class AdcData:
    """Raw material of the ADC fit: ``levels`` (L,), ``mean``/``var`` (L, N) of readings in volts,
    ``count`` (L,), ``raw`` (L, m, N) int16 codes of the first input vector, ``volts_per_code``,
    ``saturated`` (L, N) fraction of codes at full scale, ``temperature_k`` (L,)."""

    levels: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    count: np.ndarray
    raw: np.ndarray
    volts_per_code: float
    saturated: np.ndarray
    temperature_k: np.ndarray


@dataclass
class AdcFit:
    """Per-node ``gain``/``offset`` (volts) with one-sigma errors and reduced chi-square."""

    gain: np.ndarray
    offset: np.ndarray
    gain_sd: np.ndarray
    offset_sd: np.ndarray
    chi2_red: np.ndarray
    ok: np.ndarray
    measured: bool = True
    reason: list = field(default_factory=list)
    inverse: np.ndarray | None = None  # (N, 4): x = a0 + a1 r + a2 r^2 + a3 r^3; None: linear

    def inverse_coefficients(self) -> np.ndarray:
        """(N, 4) coefficients of ``x(r)``: the stored cubic, or the straight line's."""
        if self.inverse is not None:
            return np.asarray(self.inverse, np.float64)
        g = np.asarray(self.gain, np.float64)
        o = np.asarray(self.offset, np.float64)
        z = np.zeros_like(g)
        return np.stack([-o / g, 1.0 / g, z, z], 1)

    def correct(self, readings, nodes=None) -> np.ndarray:
        """Node volts from raw readings (volts, nodes on the last axis)."""
        idx = slice(None) if nodes is None else np.asarray(nodes)
        r = np.asarray(readings, np.float64)
        if self.inverse is None:
            return (r - self.offset[idx]) / self.gain[idx]
        a = self.inverse_coefficients()[idx]
        return a[..., 0] + r * (a[..., 1] + r * (a[..., 2] + r * a[..., 3]))

    def transform(self, n_inputs: int) -> np.ndarray:
        """The matrix ``T`` of :func:`calibration.stein.adc_transform` for this readout."""
        from .stein import adc_transform

        return adc_transform(self.gain, self.offset, n_inputs, inverse=self.inverse)


def ideal(n_nodes: int) -> AdcFit:
    """Identity readout (for backends without ``CAL:REF``)."""
    z = np.zeros(n_nodes)
    return AdcFit(np.ones(n_nodes), z.copy(), z.copy(), z.copy(), np.full(n_nodes, np.nan),
                  np.ones(n_nodes, bool), measured=False, reason=["backend has no CAL:REF: readout assumed ideal"])


def supports_cal_ref(device) -> bool:
    """Whether the backend offers ``CAL:REF`` (:class:`tc_hw.model.device.CalibrationReference`)."""
    return isinstance(device, CalibrationReference)


def set_cal_ref(device, volts: float | None) -> None:
    """Route ``volts`` to every ADC input (``None``: ``CAL:REF OFF``)."""
    if not isinstance(device, CalibrationReference):
        raise NotImplementedError(f"{type(device).__name__} has no CAL:REF")
    device.cal_ref(volts)


def measure(device, levels=DEFAULT_LEVELS, samples: int = 64, chains: int = 256, keep_raw: int = 32) -> AdcData | None:
    """Acquire ``samples`` x ``chains`` readings of every node at each reference level.

    Needs nothing of the elements (the reference replaces the nodes); the device is armed only
    for the duration and ``CAL:REF`` is always switched off again.  Returns ``None`` when the
    backend has no ``CAL:REF``.
    """
    if not supports_cal_ref(device):
        return None
    n = device.n_nodes
    levels = np.asarray(levels, np.float64)
    device.set_inputs(np.zeros((chains, device.n_inputs)))
    mean = np.zeros((len(levels), n))
    var = np.zeros((len(levels), n))
    sat = np.zeros((len(levels), n))
    count = np.zeros(len(levels))
    temps = np.zeros(len(levels))
    raw = np.zeros((len(levels), min(keep_raw, samples), n), np.int16)
    vpc = math.nan
    try:
        with armed(device):
            for k, ref in enumerate(levels):
                set_cal_ref(device, float(ref))
                acq = device.acquire("reset", device.tau_s, samples)
                r = acq.volts.reshape(-1, n)
                mean[k] = r.mean(0)
                var[k] = r.var(0, ddof=1)
                count[k] = len(r)
                temps[k] = acq.temperature_k
                codes = acq.codes if acq.codes is not None else np.zeros(acq.volts.shape, np.int16)
                sat[k] = ((codes <= -32768) | (codes >= 32767)).reshape(-1, n).mean(0)
                raw[k] = codes[0, : raw.shape[1]]
                vpc = acq.volts_per_code if acq.volts_per_code is not None else math.nan
    finally:
        set_cal_ref(device, None)
    return AdcData(levels, mean, var, count, raw, float(vpc), sat, temps)


def _wpoly(x, y, w, degree):
    a = np.stack([x**k for k in range(degree + 1)], 1)
    m = a.T @ (a * w[:, None])
    cov = np.linalg.inv(m)
    c = cov @ (a.T @ (w * y))
    res = y - a @ c
    dof = len(x) - degree - 1
    return c, cov, float((w * res * res).sum() / dof) if dof > 0 else math.nan


def _inverse_cubic(c: np.ndarray) -> np.ndarray:
    """Cubic ``x(r)`` fitted to the forward polynomial ``r(x) = sum c_k x^k`` on +-INVERSE_RANGE_V."""
    x = np.linspace(-INVERSE_RANGE_V, INVERSE_RANGE_V, 801)
    r = np.polynomial.polynomial.polyval(x, c)
    a = np.stack([r**k for k in range(4)], 1)
    return np.linalg.lstsq(a, x, rcond=None)[0]


def fit(data: AdcData, chi2_max: float = 10.0, degrees=(1, 3, 5)) -> AdcFit:
    """Weighted polynomial ``mean = sum_k c_k level^k`` per node, of the first degree in
    ``degrees`` whose reduced chi-square is at most ``chi2_max`` (1: a linear readout; 3, 5: an
    ADC with integral nonlinearity).  ``gain``/``offset`` are its tangent at 0 V; ``inverse`` holds
    the cubic ``x(r)`` (rows of linear nodes are exact).

    Levels with saturated codes are dropped.  A node is refused (``ok`` False) with fewer than
    3 usable levels, when no degree passes, or when the readout is not increasing on the levels.
    """
    n = data.mean.shape[1]
    gain = np.full(n, np.nan)
    off = np.full(n, np.nan)
    gsd = np.full(n, np.nan)
    osd = np.full(n, np.nan)
    chi = np.full(n, np.nan)
    ok = np.zeros(n, bool)
    inv = np.tile(np.array([0.0, 1.0, 0.0, 0.0]), (n, 1))
    nonlinear = False
    reasons = []
    q = (data.volts_per_code**2 / 12.0) if math.isfinite(data.volts_per_code) else 0.0
    for i in range(n):
        use = data.saturated[:, i] == 0
        x = data.levels[use]
        y = data.mean[use, i]
        s2 = np.maximum(data.var[use, i], q) / data.count[use]
        if len(x) < 3:
            reasons.append(f"node {i}: only {len(x)} unsaturated reference levels")
            continue
        w = 1.0 / s2
        for deg in [d for d in degrees if d + 2 <= len(x)] or [1]:
            c, cov, chi[i] = _wpoly(x, y, w, deg)
            if chi[i] <= chi2_max:
                break
        scale = max(1.0, chi[i]) if math.isfinite(chi[i]) else 1.0
        off[i], gain[i] = c[0], c[1]
        osd[i], gsd[i] = np.sqrt(np.diag(cov)[:2] * scale)
        slope = np.polynomial.polynomial.polyval(np.linspace(x.min(), x.max(), 101),
                                                 np.polynomial.polynomial.polyder(c))
        ok[i] = chi[i] <= chi2_max and bool(np.all(slope > 0))
        if len(c) > 2:
            inv[i] = _inverse_cubic(c)
            nonlinear = True
        else:
            inv[i] = [-c[0] / c[1], 1.0 / c[1], 0.0, 0.0] if c[1] != 0 else [0.0, 1.0, 0.0, 0.0]
        if not ok[i]:
            reasons.append(f"node {i}: reduced chi-square {chi[i]:.3g} with a degree-{len(c) - 1} readout, or "
                           "not increasing (non-linear readout?)")
    return AdcFit(gain, off, gsd, osd, chi, ok, True, reasons, inverse=inv if nonlinear else None)
