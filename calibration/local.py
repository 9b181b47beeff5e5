"""Element values measured where a program puts them: an opt-in local pass after calibration.

A calibration fits each channel's curve to a few voltage levels across its safe range
(:mod:`calibration.routine`).  Between levels the curve is the fit's guess: where the true curve
bends or kinks between two levels, the fit can miss by several times its own one-sigma
uncertainty, and a program that happens to sit there is uploaded with element values off by
that much.  On zoo board 880007 (quick calibration, 128 chains x 256 readings) the four channels
of the demo's program whose curve missed the truth by more than 3 sigma (kinked curves) carried
over half of the gap between the twin's loss and the calibrated upload's, and the fourteen
beyond 2 sigma about 85 %; errors of the size the calibration states, drawn at random, add
little (its stated uncertainties are right elsewhere).

This module measures the channels a program uses *at the program's own voltages*, with the
calibration's own acquisition designs (:mod:`calibration.design`: the same confining helpers,
inputs and estimator, :mod:`calibration.stein`), and blends each local value with the curve's:

* :func:`local_configs`: the settings: every node's Q at its program voltage (one setting), every
  node's R (one), every bias and crossbar weight (one), and one setting per matching of the
  couplings (couplings of a matching share no node); helpers (confinement, couplings at zero)
  from the calibrated curves;
* :func:`measure_local`: acquire them and return :class:`LocalPoints` (applied volts, value,
  one-sigma error per channel);
* :func:`corrected`: a new :class:`~calibration.record.Calibration` whose measured channels are
  shifted by a constant so that each curve passes through the blended value at the program's
  voltage (see :func:`blend_with_curve`); every other channel is the calibration's own curve.

The shift is constant along the curve (slope, branch, span and monotonicity unchanged): it is
meant for uploads at or near the measured voltages (a program, its refinement); far from them the
calibration's curve is as good as it was.  Nothing here reads the emulator's truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np

from tc_hw.model.device import armed

from . import design, stein
from .curves import CurveFit
from .elements import acquire_config, estimate_config
from .record import Calibration
from .routine import _integrator_dt

__all__ = [
    "LOCAL_DEFAULTS",
    "LocalPoints",
    "ShiftedCurve",
    "blend_with_curve",
    "corrected",
    "local_configs",
    "local_pass",
    "measure_local",
]

#: Acquisition sizes of the local pass: per setting ``chains`` x ``samples`` readings, ``repeats``
#: times (the routine's other settings: sampling interval 0.1 tau, burn-in 5 tau, 16 jackknife groups).
LOCAL_DEFAULTS = dict(chains=256, samples=1024, repeats=2, interval_tau=0.1, burn_tau=5.0, groups=16,
                      q_confine=3.0, r_confine=1.5)


@dataclass
class LocalPoints:
    """Local element values: per measured channel (arrays of shape (n,)) its index, the applied
    volts, the value (board units, kT = 1), its one-sigma error, and the setting's board
    temperature (kelvin)."""

    channels: np.ndarray
    volts: np.ndarray
    value: np.ndarray
    sigma: np.ndarray
    temperature_k: np.ndarray
    settings: int = 0  #: acquisitions (settings) it took


@dataclass
class ShiftedCurve(CurveFit):
    """A calibrated curve plus a constant ``shift`` (board units) measured at ``shift_volts``:
    ``raw_value(v) = curve(v) + shift``; slope, branch, span and uncertainty model unchanged."""

    shift: float = 0.0
    shift_volts: float = math.nan

    def raw_value(self, v) -> np.ndarray:
        return super().raw_value(v) + self.shift

    @classmethod
    def of(cls, curve: CurveFit, shift: float, volts: float) -> ShiftedCurve:
        """``curve`` (itself possibly shifted: the shifts add) shifted by ``shift`` measured at ``volts``."""
        kw = {f.name: getattr(curve, f.name) for f in fields(CurveFit)}
        return cls(**kw, shift=float(getattr(curve, "shift", 0.0) + shift), shift_volts=float(volts))


def _helpers(cal: Calibration) -> design.Knowledge:
    """A :class:`design.Knowledge` fed from the calibrated curves (9 points per usable channel), so
    that the design's helper settings (confinement, zero) come from the calibration."""
    know = design.Knowledge(cal.channel_map)
    for c in cal.channel_map:
        curve = cal.curve(c.index)
        if not curve.ok:
            continue
        lo, hi = curve.branch
        v = np.linspace(max(lo, c.vmin), min(hi, c.vmax), 9)
        know.add(np.full(len(v), c.index), v, curve.raw_value(v), np.maximum(curve.sigma(v), 1e-6))
    return know


def _self_setting(cmap, graph, know, kind: str, volts, opts) -> design.Config:
    """Every node's ``kind`` channel(s) at ``volts`` (n_channels,) with the helpers of
    :func:`calibration.design.self_at` (``kind`` ``"Q"``, ``"R"`` or ``"BW"``)."""
    cfg = design.self_at(cmap, graph, know, kind, None, opts["q_confine"], opts["r_confine"], volts=volts)
    return replace(cfg, name=f"local-{kind}", stage="local", meta={"sweep": kind})


def _edge_setting(cmap, graph, know, match, volts, m: int, opts) -> design.Config:
    """The couplings of matching ``match`` at ``volts``, helpers as :func:`calibration.design.edge_config`."""
    cfg = design.edge_config(cmap, graph, know, match, 0.0, opts["q_confine"], opts["r_confine"], volts=volts)
    return replace(cfg, name=f"local-edge-{m}", stage="local",
                   meta={"matching": int(m), "edges": np.asarray(match).tolist()})


def local_configs(cal: Calibration, graph: stein.Graph, volts, channels, opts: dict | None = None) -> list:
    """The settings of the local pass: ``(config, channels it measures)`` pairs for ``channels``
    (indices) at ``volts`` (n_channels,): one Q, one R, one B-and-W setting where any such channel
    is asked for, and one setting per matching that holds an asked-for coupling."""
    o = {**LOCAL_DEFAULTS, **(opts or {})}
    cmap = cal.channel_map
    want = {int(c) for c in channels}
    know = _helpers(cal)
    v = design.on_dac_grid(cmap, volts)
    out = []
    for kind, chans in (("Q", graph.q), ("R", graph.r), ("BW", np.concatenate([graph.b, graph.w_ch]))):
        mine = [int(c) for c in chans if int(c) in want]
        if mine:
            out.append((_self_setting(cmap, graph, know, kind, v, o), mine))
    if len(graph.edges):
        for m, match in enumerate(design.edge_colouring(graph.edges, graph.n_nodes)):
            mine = [int(graph.edge_ch[e]) for e in match if int(graph.edge_ch[e]) in want]
            if mine:
                out.append((_edge_setting(cmap, graph, know, match, v, m, o), mine))
    return out


def measure_local(device, cal: Calibration, volts, channels, *, progress=None, **options) -> LocalPoints:
    """Acquire the local settings (:func:`local_configs`) on ``device`` and estimate every asked-for
    channel at its applied voltage.  ``options``: :data:`LOCAL_DEFAULTS`.  Channels of nodes that
    reached the rails in their setting are left out.  The board's channel settings and inputs
    are left as the last setting put them (upload the program again afterwards)."""
    o = {**LOCAL_DEFAULTS, **options}
    unknown = sorted(set(options) - set(LOCAL_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown local-pass options {unknown}; known: {sorted(LOCAL_DEFAULTS)}")
    cmap = device.channel_map
    graph = stein.Graph.from_map(cmap, device.n_nodes, device.n_inputs)
    dt = float(_integrator_dt(device, "auto") or 0.0)
    inputs = design.input_batch(int(o["chains"]), device.n_inputs, design.input_amplitude(cmap))
    common = dict(interval_s=o["interval_tau"] * float(device.tau_s), samples=int(o["samples"]),
                  burn=int(math.ceil(o["burn_tau"] / o["interval_tau"])), repeats=int(o["repeats"]),
                  groups=int(o["groups"]), integrator_dt_tau=dt, keep_raw_chains=0)
    rows = []
    configs = local_configs(cal, graph, volts, channels, o)
    device.set_inputs(inputs)
    with armed(device):
        for cfg, mine in configs:
            data = acquire_config(device, cfg, graph, cal.adc, inputs, **common)
            est = estimate_config(data, graph, cal.adc, len(cmap), dt)
            bad = set(data.bad_nodes.tolist())
            for ch in mine:
                c = cmap[ch]
                touches = {c.a} if c.kind in "QRB" else ({c.a, c.b} if c.kind == "C" else {c.b})
                if touches & bad or not (np.isfinite(est.value[ch]) and np.isfinite(est.sigma[ch])):
                    continue
                rows.append((ch, data.applied[ch], est.value[ch], est.sigma[ch], data.temperature_k))
            if progress:
                progress(f"local {cfg.name}: {len(mine)} channels, {data.wall_s:.1f} s")
    arr = np.array(rows, np.float64).reshape(-1, 5)
    return LocalPoints(arr[:, 0].astype(np.int64), arr[:, 1], arr[:, 2], arr[:, 3], arr[:, 4], len(configs))


def blend_with_curve(curve_value, curve_sigma, local_value, local_sigma) -> tuple[np.ndarray, np.ndarray]:
    """Blended value of a channel at one voltage, and the weight of the local value (arrays broadcast).

    Not to be confused with :func:`calibration.combine`, which pools a record's entries.

    Inverse-variance weighting, with the curve's variance at that voltage taken as at least what
    the two disagree by beyond the local noise, ``max(sigma_c^2, d^2 - sigma_l^2)`` (``d`` the
    difference): where the curve misses by many of its own sigmas (a kink between its levels),
    the local value wins; where the two agree, the curve's smaller error keeps its weight."""
    yc, sc, yl, sl = (np.asarray(a, np.float64) for a in (curve_value, curve_sigma, local_value, local_sigma))
    d = yl - yc
    var_c = np.maximum(sc**2, d**2 - sl**2)
    w = var_c / np.maximum(var_c + sl**2, 1e-300)
    return yc + w * d, w


def corrected(cal: Calibration, points: LocalPoints) -> tuple[Calibration, dict]:
    """``cal`` with each measured channel's curve shifted through its blended value (:func:`blend_with_curve`
    at the applied volts, the calibration's reference temperature).  Returns the new calibration
    (same ADC, nodes and map; entry ``<entry>+local``) and a report: per kind the channels, the rms
    and largest |shift| (board units) and the number whose local value differs from the curve
    by more than 3 sigmas (the two errors in quadrature)."""
    fits = list(cal.fits)
    rep: dict = {}
    for ch, v, y, s, t in zip(points.channels, points.volts, points.value, points.sigma, points.temperature_k):
        curve = cal.curve(int(ch))
        if not curve.ok:
            continue
        factor = float(curve._temp_factor(t))  # 1 unless the temperature coefficient is known
        y, s = y / factor, s / abs(factor)
        yc, sc = float(curve.raw_value(v)), float(curve.sigma(v))
        best, _ = blend_with_curve(yc, sc, y, s)
        fits[int(ch)] = ShiftedCurve.of(curve, float(best) - yc, float(v))
        r = rep.setdefault(curve.kind, {"channels": 0, "shift": [], "beyond_3_sigma": 0})
        r["channels"] += 1
        r["shift"].append(float(best) - yc)
        r["beyond_3_sigma"] += int(abs(y - yc) > 3 * math.hypot(sc, s))
    for r in rep.values():
        sh = np.asarray(r.pop("shift"))
        r["rms_shift"], r["max_shift"] = float(np.sqrt(np.mean(sh**2))), float(np.max(np.abs(sh)))
    new = Calibration(fits, cal.adc, cal.nodes, cal.channel_map, identity=cal.identity, technology=cal.technology,
                      temperature_k=cal.temperature_k, entry=f"{cal.entry}+local", path=cal.path,
                      summary=cal.summary, created=cal.created, tau_nominal_s=cal.tau_nominal_s)
    return new, rep


def local_pass(device, cal: Calibration, volts, channels, *, progress=None, **options) -> tuple[Calibration, dict]:
    """:func:`measure_local` then :func:`corrected`: the calibration to upload a program at ``volts``
    through, and the report (``kinds``, plus ``settings``, ``readings`` and ``points``: per measured
    channel its volts, local value, sigma and the curve's shift)."""
    pts = measure_local(device, cal, volts, channels, progress=progress, **options)
    new, rep = corrected(cal, pts)
    o = {**LOCAL_DEFAULTS, **options}
    return new, {"kinds": rep, "settings": pts.settings, "channels": len(pts.channels),
                 "readings": pts.settings * int(o["chains"]) * int(o["samples"]) * int(o["repeats"]),
                 "points": {"channel": pts.channels.tolist(), "volts": pts.volts.tolist(), "value": pts.value.tolist(),
                            "sigma": pts.sigma.tolist(),
                            "shift": [float(getattr(new.curve(int(c)), "shift", 0.0)) for c in pts.channels]}}
