"""Acquire one calibration setting and turn it into element values; node time constants.

:func:`acquire_config` applies a :class:`~calibration.design.Config` (one ``DAC:BLOCK``), reads
the applied volts back, runs ``repeats`` serial acquisitions of ``chains`` independent chains,
drops the burn-in, and keeps what the fit needs: grouped moment sums of the raw readings
(:func:`calibration.stein.moments`), the integrator-correction moments, rail/clip flags, a few
raw codes, the board temperature.  :func:`estimate_config` turns that (stored or fresh) material
into per-channel values and errors.  :func:`acquire_tau` / :func:`tau_from` measure each node's
diffusion constant ``D_i = kT_i / tau_i`` from short-interval increments.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import stein
from .design import on_dac_grid

__all__ = ["ConfigData", "acquire_config", "estimate_config", "TauData", "acquire_tau", "tau_from", "RAIL_GUARD_V"]

#: Node volts beyond which a sample counts as "near the rails" (the rails are "a few volts").
RAIL_GUARD_V = 2.7
#: Largest fraction of near-rail samples per node before its equations are not used.
RAIL_FRACTION_MAX = 1e-4
#: Every how many samples enter the integrator-correction moments (a small first-order term).
CORRECTION_STRIDE = 4


@dataclass
class ConfigData:
    """Stored material of one calibration acquisition (everything :func:`estimate_config` needs)."""

    name: str
    stage: str
    requested: np.ndarray
    applied: np.ndarray
    inputs: np.ndarray
    sums: np.ndarray
    counts: np.ndarray
    correction: np.ndarray | None
    temperature_k: float
    rail_fraction: np.ndarray
    clip_fraction: np.ndarray
    interval_s: float
    samples: int
    burn: int
    repeats: int
    wall_s: float
    raw: np.ndarray
    meta: dict = field(default_factory=dict)
    total: np.ndarray | None = None  #: exact sum of ``sums`` over groups when ``sums`` were stored as float32

    @property
    def bad_nodes(self) -> np.ndarray:
        return np.flatnonzero((self.rail_fraction > RAIL_FRACTION_MAX) | (self.clip_fraction > 0))


def acquire_config(
    device,
    config,
    graph: stein.Graph,
    adc_fit,
    inputs: np.ndarray,
    *,
    interval_s: float,
    samples: int,
    burn: int,
    repeats: int,
    groups: int,
    integrator_dt_tau: float,
    keep_raw_chains: int = 2,
) -> ConfigData:
    """Apply ``config`` and acquire it (the device must be armed and hold ``inputs``)."""
    t0 = time.monotonic()
    device.set_channels(on_dac_grid(device.channel_map, config.volts), 0)
    applied = np.asarray(device.get_channels(0, len(config.volts)), np.float64)
    n = graph.n_nodes
    sums = None
    counts = None
    xs = []
    temps = []
    rail = np.zeros(n)
    clip = np.zeros(n)
    raw = None
    for rep in range(repeats):
        acq = device.acquire("serial", interval_s, samples)
        temps.append(acq.temperature_k)
        r = np.asarray(acq.volts, np.float64)[:, burn:, :]
        with stein.single_thread():
            s, c = stein.moments(r, inputs, groups)
        sums = s if sums is None else sums + s
        counts = c if counts is None else counts + c
        # rails: corrected |x| beyond the guard, tested on the raw readings
        hi = RAIL_GUARD_V * adc_fit.gain + adc_fit.offset
        lo = -RAIL_GUARD_V * adc_fit.gain + adc_fit.offset
        rail += ((r > hi) | (r < lo)).reshape(-1, n).sum(0)
        if integrator_dt_tau:
            xs.append(adc_fit.correct(r[:, ::CORRECTION_STRIDE]))
        if acq.codes is not None:
            codes = acq.codes[:, burn:, :]
            clip += ((codes <= -32768) | (codes >= 32767)).reshape(-1, n).sum(0)
            if raw is None:
                raw = np.asarray(acq.codes[:keep_raw_chains])
        elif raw is None:
            raw = np.zeros((0, samples, n), np.int16)
    total = counts.sum()
    data = ConfigData(
        config.name, config.stage, np.asarray(config.volts, np.float64), applied, inputs, sums, counts, None,
        float(np.nanmean(temps)) if temps else math.nan, rail / total, clip / total, float(interval_s), int(samples),
        int(burn), int(repeats), 0.0, raw, dict(config.meta),
    )
    if integrator_dt_tau:
        first = estimate_config(data, graph, adc_fit, len(applied))
        th = np.where(np.isfinite(first.value), first.value, 0.0)
        x = np.concatenate([v.reshape(-1, n) for v in xs])
        inp = np.concatenate([np.repeat(inputs, v.shape[1], axis=0) for v in xs])
        with stein.single_thread():
            data.correction = stein.correction_moments(x, inp, graph, th)
    data.wall_s = time.monotonic() - t0
    return data


def estimate_config(data: ConfigData, graph: stein.Graph, adc_fit, n_channels: int, integrator_dt_tau: float = 0.0):
    """Element values of one stored acquisition (:class:`calibration.stein.Estimate`)."""
    t = adc_fit.transform(graph.n_inputs)
    corr = data.correction if integrator_dt_tau else None
    with stein.single_thread():
        return stein.estimate(data.sums, data.counts, graph, t, n_channels, correction=corr, dt=integrator_dt_tau,
                              total=data.total)


@dataclass
class TauData:
    """Short-interval increments: per-group sums of squared increments at lags 1 and 2 samples
    (``q1``, ``q2`` of shape (G, N)), their counts (G,), the interval, the temperature."""

    interval_s: float
    q1: np.ndarray
    q2: np.ndarray
    n1: np.ndarray
    n2: np.ndarray
    temperature_k: float
    applied: np.ndarray
    raw: np.ndarray
    rail_fraction: np.ndarray | None = None  # (N,) readings beyond RAIL_GUARD_V; None: not recorded


def acquire_tau(device, volts, adc_fit, *, interval_s: float, samples: int, groups: int, repeats: int = 1) -> TauData:
    """Serial acquisitions at a short interval (the device must be armed and hold an input batch)."""
    device.set_channels(on_dac_grid(device.channel_map, volts), 0)
    applied = np.asarray(device.get_channels(0, len(volts)), np.float64)
    q1 = q2 = n1 = n2 = None
    temps, raw = [], None
    rail, seen = None, 0
    for _ in range(max(1, int(repeats))):
        acq = device.acquire("serial", interval_s, samples)
        temps.append(acq.temperature_k)
        x = adc_fit.correct(np.asarray(acq.volts, np.float64))
        r_now = (np.abs(x) > RAIL_GUARD_V).reshape(-1, x.shape[2]).sum(0)
        rail = r_now if rail is None else rail + r_now
        seen += x.shape[0] * x.shape[1]
        p = x.shape[0]
        g = max(1, min(groups, p))
        bounds = np.linspace(0, p, g + 1).round().astype(int)
        a1 = np.zeros((g, x.shape[2]))
        a2 = np.zeros_like(a1)
        c1 = np.zeros(g)
        c2 = np.zeros(g)
        for k in range(g):
            xx = x[bounds[k] : bounds[k + 1]]
            d1 = xx[:, 1:] - xx[:, :-1]
            d2 = xx[:, 2:] - xx[:, :-2]
            a1[k] = (d1 * d1).reshape(-1, x.shape[2]).sum(0)
            a2[k] = (d2 * d2).reshape(-1, x.shape[2]).sum(0)
            c1[k] = d1.shape[0] * d1.shape[1]
            c2[k] = d2.shape[0] * d2.shape[1]
        q1, q2 = (a1, a2) if q1 is None else (q1 + a1, q2 + a2)
        n1, n2 = (c1, c2) if n1 is None else (n1 + c1, n2 + c2)
        if raw is None:
            raw = np.asarray(acq.codes[:1]) if acq.codes is not None else np.zeros((0, samples, x.shape[2]), np.int16)
    return TauData(float(interval_s), q1, q2, n1, n2, float(np.mean(temps)), applied, raw, rail / max(seen, 1))


def tau_from(data: TauData, noise_var=None) -> tuple[np.ndarray, np.ndarray]:
    """Diffusion constants ``D_i`` (V^2/s) and their jackknife errors.

    ``E[dx^2](h) = 2 D h + a h^2 + 2 s^2`` (``s^2`` readout noise variance of the corrected
    readings): the lag-1/lag-2 combination ``(2 q(h) - q(2h)/2) / (2h)`` removes the ``h^2`` term;
    the noise term is subtracted when ``noise_var`` (N,) is given.  Nodes that sat near the rails
    during the acquisition (``rail_fraction`` above :data:`RAIL_FRACTION_MAX`), or whose ``D`` is
    not positive, get NaN: not measured, rather than a wrong value.
    """
    h = data.interval_s
    s2 = np.zeros(data.q1.shape[1]) if noise_var is None else np.asarray(noise_var, np.float64)

    def d_of(q1, q2, n1, n2):
        return (2 * q1 / n1 - 0.5 * q2 / n2 - 3 * s2) / (2 * h)

    tot = d_of(data.q1.sum(0), data.q2.sum(0), data.n1.sum(), data.n2.sum())
    bad = ~(tot > 0)
    if data.rail_fraction is not None:
        bad |= np.asarray(data.rail_fraction) > RAIL_FRACTION_MAX
    tot = np.where(bad, np.nan, tot)
    g = len(data.n1)
    if g < 2:
        return tot, np.full_like(tot, np.nan)
    reps = np.array([d_of(data.q1.sum(0) - data.q1[k], data.q2.sum(0) - data.q2[k], data.n1.sum() - data.n1[k],
                          data.n2.sum() - data.n2[k]) for k in range(g)])
    sd = np.sqrt((g - 1) / g * ((reps - reps.mean(0)) ** 2).sum(0))
    return tot, np.where(bad, np.nan, sd)
