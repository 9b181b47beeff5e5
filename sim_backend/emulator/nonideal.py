"""Hidden non-idealities of an emulated board: their sizes, their seeded draw, their evaluation.

This is the one module that knows how a board deviates from its nominal map.  Three pieces:

:class:`NonIdeal`
    The *sizes* of every non-ideality, as read from the ``[nonideal]`` table of a board file.
    Every size may be 0; with all of them 0 (``ideal = true``) an element's value is exactly
    ``nominal gain * applied volts`` (RLC) and the ADC only quantises.
:func:`draw_truth`
    Draws the hidden per-channel / per-node parameters from those sizes with a seeded generator
    (the same board seed always gives the same board).  The result is a plain dict of arrays (the
    "truth", see :mod:`sim_backend.emulator.truth` for its JSON form).
:func:`element_values` and :func:`adc_read`
    Evaluate the truth: element values from control voltages and board temperature, and ADC
    readings (volts and int16 codes) from node values.

Element curves (per channel ``c``; ``v`` the applied control voltage in volts, ``T`` kelvin)::

    g(T) = gain_nominal * gain_factor * (1 + tempco_per_k * (T - t0_k))
    RLC (period == 0):  value = g(T) * (v + offset_v + nonlin * s(v))
        s(v) = span * (3 sqrt(3) / 2) * (u - u^3),  u = (v - center) / (span / 2)
        (|s| <= span on the safe range, so ``nonlin`` is the deviation in fractions of full scale;
        the curve is monotonic on the safe range for |nonlin| < 1 / (6 sqrt 3) ~ 0.096)
    periodic (JJ flux elements, period > 0):
        theta = 2 pi (v + offset_v) / period
        value = g(T) * period / (2 pi) * (sin(theta) + nonlin / 2 * sin(2 theta))
        (slope g at v = -offset_v; monotonic branch |theta| < ~pi/2)

Other curve families (per channel ``shape``; off unless the board's sizes ask for them, see
:func:`_family_curves`): saturating ``tanh``, exponential, piecewise linear with two kinks.  A DAC
integral nonlinearity bends the programmed volts before any curve (:func:`_dac_inl`).

ADC (per node ``i``; ``x`` node volts)::

    reading = adc_gain_i * x + adc_offset_v_i + adc_inl_i * range * s(x / range)
              + adc_noise_v_i * N(0, 1)
    code = clip(rint(reading * 32768 / range_v), -32768, 32767)      (int16)

Board temperature: ``T(t) = t0_k + temp_drift_k * sin(2 pi t / temp_period_s + temp_phase)``, ``t``
seconds since the emulator started.

Beyond the static curve (both default 0, i.e. off; the twin models neither, and calibration
assumes neither -- they exist for work that has to live with them)::

    crosstalk (DAC lines): value_c += g_c * (xtalk_prev_c * v_(c-1) + xtalk_next_c * v_(c+1))
        g_c = gain_nominal * gain_factor; xtalk_* ~ U(-1, 1) * crosstalk (fraction of a
        neighbouring channel's volts, channel-index neighbours, none past the ends)
    slow drift (ageing): value_c *= 1 + drift_per_s_c * elapsed_s
        drift_per_s_c ~ U(-1, 1) * drift_per_hour / 3600 (relative change per hour)

Adding a non-ideality (e.g. crosstalk, slow element drift)
----------------------------------------------------------
1. add its size to :class:`NonIdeal` (default, and 0 under ``ideal = true`` comes for free);
2. draw its hidden parameters in :func:`draw_truth` -- *append* the draw at the end so the
   parameters of existing boards stay the same for a given seed;
3. write a stage ``stage(values, volts, temp_k, elapsed_s, truth) -> values`` and append it to
   :data:`ELEMENT_STAGES` (element-side effects) or extend :func:`adc_read` (readout effects).
:func:`element_values` runs the stages in order, so ``truth.element_value`` and the board's
physics use the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np

__all__ = [
    "NonIdeal",
    "draw_truth",
    "element_curve",
    "element_values",
    "adc_read",
    "adc_codes",
    "board_temperature",
    "ELEMENT_STAGES",
    "RLC_NONLIN_LIMIT",
]

#: Largest |nonlinearity| that keeps an RLC curve monotonic on its safe range (with margin).
RLC_NONLIN_LIMIT = 0.09

#: Stream id mixed into the board seed for the hidden-parameter draw.
_TRUTH_STREAM = 0x7C0B0A2D

_S_NORM = 3.0 * math.sqrt(3.0) / 2.0  # makes max |u - u^3| on [-1, 1] equal to 1


@dataclass(frozen=True)
class NonIdeal:
    """Sizes of the non-idealities (the ``[nonideal]`` table of a board file).

    Element curves (drawn uniformly in ``[-size, +size]`` per channel):

    gain_spread : fraction, gain factor ``1 + U(-1, 1) * gain_spread`` (manual: up to 0.20)
    offset : fraction of the channel's span ``vmax - vmin``; offset in volts (manual: up to 0.05)
    nonlinearity : fraction of full scale (a few %; RLC limited to ``RLC_NONLIN_LIMIT``)
    tempco_per_k : relative change per kelvin (manual: up to 0.005)

    Board temperature:

    temp_drift_k : amplitude of the slow sinusoidal drift, kelvin
    temp_period_s : its period, seconds

    ADC (per node):

    adc_gain_spread : fraction, ADC gain ``1 + U(-1, 1) * adc_gain_spread`` (manual: +-0.03)
    adc_offset_v : volts, offset ``U(-1, 1) * adc_offset_v`` (manual: up to 0.020)
    adc_noise_v : volts rms of additive Gaussian readout noise
    adc_noise_spread : fraction, per-node noise ``adc_noise_v * (1 + U(-1, 1) * spread)``

    Beyond the static curve (0 = off):

    crosstalk : fraction of each neighbouring DAC channel's volts added to a channel's own
    crosstalk_min : smallest crosstalk magnitude (fraction); each coupling is then
        ``sign(u) (crosstalk_min + (crosstalk - crosstalk_min) |u|)``, i.e. 1-3 % with 0.01 and 0.03
    crosstalk_same_sign : 1 for leakage that always adds (capacitive coupling of neighbouring DAC
        lines: ``|u|`` instead of ``u``), 0 for random signs
    drift_per_hour : relative element drift per hour since start (per channel, uniform sign)

    Curve families other than the polynomial (0 = off; see :func:`element_curve`):

    saturating, exponential, kinked : probability that a non-periodic channel's curve is of that
        family (the rest keep the polynomial curve; the three must sum to at most 1)
    shape_strength : largest curvature ``k`` of the saturating / exponential families and largest
        relative slope change at a kink (dimensionless; the zoo uses up to about 1.5 and 0.5)
    adc_inl : ADC integral nonlinearity, fraction of the ADC range (per node, uniform sign)
    dac_inl_v : DAC integral nonlinearity, volts at the worst point of the +-10 V scale (per channel)
    """

    gain_spread: float = 0.20
    offset: float = 0.05
    nonlinearity: float = 0.03
    tempco_per_k: float = 0.005
    temp_drift_k: float = 0.5
    temp_period_s: float = 900.0
    adc_gain_spread: float = 0.03
    adc_offset_v: float = 0.020
    adc_noise_v: float = 0.001
    adc_noise_spread: float = 0.25
    crosstalk: float = 0.0
    crosstalk_min: float = 0.0
    crosstalk_same_sign: float = 0.0
    drift_per_hour: float = 0.0
    saturating: float = 0.0
    exponential: float = 0.0
    kinked: float = 0.0
    shape_strength: float = 0.0
    adc_inl: float = 0.0
    dac_inl_v: float = 0.0

    @classmethod
    def ideal(cls) -> "NonIdeal":
        """All sizes zero (``temp_period_s`` keeps its default; it is irrelevant at zero drift)."""
        return cls(**{f.name: 0.0 for f in fields(cls) if f.name != "temp_period_s"})

    @classmethod
    def from_table(cls, table: dict, where: str = "[nonideal]") -> "NonIdeal":
        """Build from a TOML table; ``ideal = true`` starts from all zeros, other keys override.

        Raises ``ValueError`` naming unknown keys, non-numbers and negative sizes."""
        table = dict(table)
        ideal = table.pop("ideal", False)
        if not isinstance(ideal, bool):
            raise ValueError(f"{where}: ideal must be true or false, got {ideal!r}")
        base = cls.ideal() if ideal else cls()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(known | {'ideal'})}")
        values = {}
        for key, value in table.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{where}: {key} must be a finite number, got {value!r}")
            if value < 0:
                raise ValueError(f"{where}: {key} must be >= 0, got {value!r}")
            values[key] = float(value)
        out = replace(base, **values)
        if out.temp_period_s <= 0:
            raise ValueError(f"{where}: temp_period_s must be > 0, got {out.temp_period_s}")
        if out.saturating + out.exponential + out.kinked > 1.0 + 1e-12:
            raise ValueError(f"{where}: saturating + exponential + kinked must be <= 1 (they are probabilities)")
        return out

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _crosstalk(ni: NonIdeal, u) -> np.ndarray:
    """Crosstalk fractions from uniform draws ``u`` in (-1, 1): ``crosstalk * u`` when
    ``crosstalk_min`` is 0, else magnitudes spread over ``crosstalk_min``..``crosstalk``, sign of ``u``."""
    u = np.asarray(u, np.float64)
    if ni.crosstalk_same_sign:
        u = np.abs(u)
    if ni.crosstalk_min <= 0.0:
        return ni.crosstalk * u
    return np.sign(u) * (ni.crosstalk_min + (ni.crosstalk - ni.crosstalk_min) * np.abs(u))


def draw_truth(layout, nonideal: NonIdeal, *, seed: int, t0_k: float, technology: str) -> dict:
    """Draw the hidden parameters of one board.

    Parameters
    ----------
    layout : :class:`sim_backend.emulator.board.Layout`
        Channel arrays (kind, a, b, vmin, vmax, gain, period) and ``n_nodes``.
    nonideal : NonIdeal
        Sizes.
    seed : int
        Board seed (non-negative).
    t0_k : float
        Reference temperature of the tempco (kelvin); also the mean board temperature.
    technology : str
        ``"RLC"`` or ``"JJ"`` (recorded only; the curve type follows each channel's period).

    Returns
    -------
    dict
        ``channels``: per-channel arrays, shape (n_channels,); ``adc``: per-node arrays, shape
        (N,); ``temperature``: scalars.  See :mod:`sim_backend.emulator.truth`.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _TRUTH_STREAM]))
    n_ch = layout.n_channels
    n = layout.n_nodes
    span = layout.vmax - layout.vmin
    ni = nonideal
    # Draw order is part of the board's identity: append new draws at the end.
    u_gain = rng.uniform(-1.0, 1.0, n_ch)
    u_off = rng.uniform(-1.0, 1.0, n_ch)
    u_nl = rng.uniform(-1.0, 1.0, n_ch)
    u_tc = rng.uniform(-1.0, 1.0, n_ch)
    u_adc_gain = rng.uniform(-1.0, 1.0, n)
    u_adc_off = rng.uniform(-1.0, 1.0, n)
    u_adc_noise = rng.uniform(-1.0, 1.0, n)
    temp_phase = float(rng.uniform(0.0, 2.0 * math.pi))
    # appended later (crosstalk, drift): drawn after everything above, so older boards are unchanged
    u_xprev = rng.uniform(-1.0, 1.0, n_ch)
    u_xnext = rng.uniform(-1.0, 1.0, n_ch)
    u_drift = rng.uniform(-1.0, 1.0, n_ch)
    shapes = _draw_shapes(rng, layout, ni)  # appended later (curve families, INL): same rule
    u_adc_inl = rng.uniform(-1.0, 1.0, n)
    u_dac_inl = rng.uniform(-1.0, 1.0, n_ch)
    channels = {
        "kind": np.asarray(layout.kind).copy(),
        "a": layout.a.copy(),
        "b": layout.b.copy(),
        "vmin": layout.vmin.copy(),
        "vmax": layout.vmax.copy(),
        "gain_nominal": layout.gain.copy(),
        "period": layout.period.copy(),
        "gain_factor": 1.0 + ni.gain_spread * u_gain,
        "offset_v": ni.offset * span * u_off,
        "nonlin": ni.nonlinearity * u_nl,
        "tempco_per_k": ni.tempco_per_k * u_tc,
        "xtalk_prev": _crosstalk(ni, u_xprev) * (np.arange(n_ch) > 0),
        "xtalk_next": _crosstalk(ni, u_xnext) * (np.arange(n_ch) < n_ch - 1),
        "drift_per_s": ni.drift_per_hour / 3600.0 * u_drift,
        "dac_inl_v": ni.dac_inl_v * u_dac_inl,
        **shapes,
    }
    adc = {
        "gain": 1.0 + ni.adc_gain_spread * u_adc_gain,
        "offset_v": ni.adc_offset_v * u_adc_off,
        "noise_v": ni.adc_noise_v * (1.0 + ni.adc_noise_spread * u_adc_noise),
        "inl": ni.adc_inl * u_adc_inl,
    }
    temperature = {
        "t0_k": float(t0_k),
        "drift_k": ni.temp_drift_k,
        "period_s": ni.temp_period_s,
        "phase": temp_phase,
    }
    return {
        "technology": technology,
        "seed": int(seed),
        "nonideal": ni.as_dict(),
        "channels": channels,
        "adc": adc,
        "temperature": temperature,
    }


#: Curve family codes of the truth's ``channels["shape"]``.
SHAPE_POLYNOMIAL, SHAPE_SATURATING, SHAPE_EXPONENTIAL, SHAPE_KINKED = 0, 1, 2, 3
SHAPE_NAMES = {0: "polynomial", 1: "saturating", 2: "exponential", 3: "kinked"}


def _draw_shapes(rng: np.random.Generator, layout, ni: NonIdeal) -> dict:
    """Per-channel curve family and its parameters (all arrays of shape (n_channels,)).

    ``shape`` (int code, :data:`SHAPE_NAMES`; periodic channels stay 0), ``shape_k`` (curvature,
    signed for the exponential), ``kink_hi_v``/``kink_hi_slope`` and ``kink_lo_v``/``kink_lo_slope``
    (a kink inside the upper / lower part of the safe range and the relative slope change beyond
    it, in ``[-shape_strength, +shape_strength]``, capped at 0.9 so the curve stays monotonic).
    The same number of values is drawn whatever the sizes, so a board's other draws never move."""
    n_ch = layout.n_channels
    u_family = rng.uniform(0.0, 1.0, n_ch)
    u_k = rng.uniform(0.3, 1.0, n_ch)
    u_sign = rng.uniform(-1.0, 1.0, n_ch)
    u_kinks = rng.uniform(0.0, 1.0, (4, n_ch))
    edges = np.cumsum([ni.saturating, ni.exponential, ni.kinked])
    shape = np.where(u_family < edges[0], SHAPE_SATURATING,
                     np.where(u_family < edges[1], SHAPE_EXPONENTIAL,
                              np.where(u_family < edges[2], SHAPE_KINKED, SHAPE_POLYNOMIAL)))
    shape = np.where(layout.period > 0, SHAPE_POLYNOMIAL, shape).astype(np.int64)
    centre = (layout.vmin + layout.vmax) / 2.0
    half = (layout.vmax - layout.vmin) / 2.0
    slope_cap = min(ni.shape_strength, 0.9)
    kinked = shape == SHAPE_KINKED
    return {
        "shape": shape,
        "shape_k": ni.shape_strength * u_k * np.where(u_sign < 0, -1.0, 1.0) * (shape != SHAPE_POLYNOMIAL),
        "kink_hi_v": centre + half * (0.1 + 0.7 * u_kinks[0]),
        "kink_hi_slope": np.where(kinked, slope_cap * (2.0 * u_kinks[1] - 1.0), 0.0),
        "kink_lo_v": centre - half * (0.1 + 0.7 * u_kinks[2]),
        "kink_lo_slope": np.where(kinked, slope_cap * (2.0 * u_kinks[3] - 1.0), 0.0),
    }


def _family_curves(ch: dict, w, v, span) -> np.ndarray | None:
    """``value / g`` of the non-polynomial families (volts), or None when every channel is
    polynomial.  ``w = v + offset``; ``z = w / span``; slope 1 at ``w = 0`` for all families::

        saturating   span * tanh(k z) / |k|
        exponential  span * (exp(k z) - 1) / k                       (k signed)
        kinked       w + a_hi * relu(v - v_hi) + a_lo * relu(v_lo - v)  (slopes 1 + a beyond)
    """
    if "shape" not in ch:
        return None
    shape = np.asarray(ch["shape"])
    if not np.any(shape):
        return None
    k = np.asarray(ch["shape_k"], float)
    k_safe = np.where(k != 0, k, 1.0)
    z = w / np.where(span > 0, span, 1.0)
    sat = span * np.tanh(np.abs(k_safe) * z) / np.abs(k_safe)
    expo = span * np.expm1(k_safe * z) / k_safe
    kink = (w + np.asarray(ch["kink_hi_slope"], float) * np.maximum(v - np.asarray(ch["kink_hi_v"], float), 0.0)
            - np.asarray(ch["kink_lo_slope"], float) * np.maximum(np.asarray(ch["kink_lo_v"], float) - v, 0.0))
    return np.where(shape == SHAPE_SATURATING, sat, np.where(shape == SHAPE_EXPONENTIAL, expo, kink))


def _dac_inl(ch: dict, v) -> np.ndarray:
    """Volts the DAC really puts out for programmed ``v``: ``v + dac_inl_v * s(v / 10 V)`` with
    the bow ``s(u) = (3 sqrt 3 / 2)(u - u^3)`` (|s| <= 1 on the +-10 V scale)."""
    if "dac_inl_v" not in ch:
        return v
    inl = np.asarray(ch["dac_inl_v"], float)
    if not np.any(inl):
        return v
    u = v / 10.0
    return v + inl * _S_NORM * (u - u**3)


# ----------------------------------------------------------------------------- elements
def element_curve(ch: dict, volts, temp_k, t0_k: float) -> np.ndarray:
    """The static curve of channels ``ch`` (a dict of equally shaped parameter arrays).

    ``volts`` broadcasts against the parameter arrays; returns element values (energy units of
    the board equation) as float64.  See the module docstring for the formulas.
    """
    v = _dac_inl(ch, np.asarray(volts, dtype=np.float64))
    gain = np.asarray(ch["gain_nominal"], float) * np.asarray(ch["gain_factor"], float)
    g = gain * (1.0 + np.asarray(ch["tempco_per_k"], float) * (np.asarray(temp_k, float) - t0_k))
    off = np.asarray(ch["offset_v"], float)
    nl = np.asarray(ch["nonlin"], float)
    period = np.asarray(ch["period"], float)
    vmin = np.asarray(ch["vmin"], float)
    vmax = np.asarray(ch["vmax"], float)
    span = vmax - vmin
    half = np.where(span > 0, span / 2.0, 1.0)
    u = (v - (vmin + vmax) / 2.0) / half
    smooth = span * _S_NORM * (u - u**3)
    linear = g * (v + off + nl * smooth)
    safe_period = np.where(period > 0, period, 1.0)
    theta = 2.0 * np.pi * (v + off) / safe_period
    periodic = g * safe_period / (2.0 * np.pi) * (np.sin(theta) + 0.5 * nl * np.sin(2.0 * theta))
    family = _family_curves(ch, v + off, v, span)
    if family is not None:
        linear = np.where(np.asarray(ch["shape"]) == SHAPE_POLYNOMIAL, linear, g * family)
    return np.where(period > 0, periodic, linear)


def _curve_stage(values, volts, temp_k, elapsed_s, truth):
    del values, elapsed_s
    return element_curve(truth["channels"], volts, temp_k, truth["temperature"]["t0_k"])


def _crosstalk_stage(values, volts, temp_k, elapsed_s, truth):
    """``values += g * (xtalk_prev * v[c-1] + xtalk_next * v[c+1])`` (off when all zero)."""
    del temp_k, elapsed_s
    ch = truth["channels"]
    prev = np.asarray(ch.get("xtalk_prev", 0.0), float)
    nxt = np.asarray(ch.get("xtalk_next", 0.0), float)
    if not (np.any(prev) or np.any(nxt)):
        return values
    v = np.asarray(volts, np.float64)
    left = np.concatenate([[0.0], v[:-1]])
    right = np.concatenate([v[1:], [0.0]])
    g = np.asarray(ch["gain_nominal"], float) * np.asarray(ch["gain_factor"], float)
    return values + g * (prev * left + nxt * right)


def _drift_stage(values, volts, temp_k, elapsed_s, truth):
    """``values *= 1 + drift_per_s * elapsed_s`` (off when all zero)."""
    del volts, temp_k
    d = np.asarray(truth["channels"].get("drift_per_s", 0.0), float)
    if not np.any(d):
        return values
    return values * (1.0 + d * float(elapsed_s))


#: Element-side stages, run in order by :func:`element_values`.  Each is
#: ``stage(values, volts, temp_k, elapsed_s, truth) -> values`` on arrays of shape (n_channels,).
#: The static curve, DAC crosstalk (values += X @ volts), slow drift (values *= 1 + d t).
#: :func:`sim_backend.emulator.truth.element_value` evaluates the static curve alone.
ELEMENT_STAGES = [_curve_stage, _crosstalk_stage, _drift_stage]


def element_values(truth: dict, volts, temp_k: float, elapsed_s: float = 0.0) -> np.ndarray:
    """Values of all elements, shape (n_channels,), from applied volts, shape (n_channels,)."""
    v = np.asarray(volts, dtype=np.float64)
    values = np.zeros_like(v)
    for stage in ELEMENT_STAGES:
        values = stage(values, v, temp_k, elapsed_s, truth)
    return values


def board_temperature(truth: dict, elapsed_s: float) -> float:
    """Board temperature in kelvin, ``elapsed_s`` seconds after the emulator started."""
    t = truth["temperature"]
    return float(t["t0_k"] + t["drift_k"] * math.sin(2.0 * math.pi * elapsed_s / t["period_s"] + t["phase"]))


# ----------------------------------------------------------------------------- ADC
def adc_read(adc: dict, x, nodes=None, rng: np.random.Generator | None = None) -> np.ndarray:
    """ADC readings in volts (before quantisation), same shape as ``x``.

    ``x`` has node values (volts) on its last axis, for ``nodes`` (default all, in order).
    ``rng`` adds the readout noise; ``None`` gives the noiseless reading.
    """
    x = np.asarray(x, dtype=np.float64)
    idx = slice(None) if nodes is None else np.asarray(nodes, np.int64)
    gain = np.asarray(adc["gain"], float)[idx]
    offset = np.asarray(adc["offset_v"], float)[idx]
    out = gain * x + offset
    inl = np.asarray(adc.get("inl", 0.0), float)
    if np.any(inl):
        out = out + _adc_inl(adc, inl[idx] if inl.ndim else inl, x)
    if rng is not None:
        noise = np.asarray(adc["noise_v"], float)[idx]
        if np.any(noise > 0):
            out = out + noise * rng.standard_normal(out.shape)
    return out


def _adc_inl(adc: dict, inl, x) -> np.ndarray:
    """ADC integral nonlinearity (volts): ``inl * range * s(x / range)``, ``s`` the bow of
    :func:`_dac_inl` (|s| <= 1 over the ADC range)."""
    r = float(adc["range_v"])
    u = x / r
    return inl * r * _S_NORM * (u - u**3)


def adc_codes(readings, range_v: float) -> np.ndarray:
    """Quantise ADC readings (volts) to int16 codes: ``rint(v * 32768 / range)``, saturating."""
    c = np.rint(np.asarray(readings, np.float64) * (32768.0 / range_v))
    return np.clip(c, -32768, 32767).astype(np.int16)
