"""The full calibration routine: acquire -> fit -> report -> record, and refits from stored data.

:func:`calibrate` measures (ADC, then every element at many settings, then node time
constants), writing each acquisition's sufficient statistics to a new record entry as it goes;
:func:`analyse` turns measured material (fresh, or read back from a record) into points, curve
fits and node results; :func:`refit` redoes the analysis of a stored entry and appends the result
as a new entry.  The same :func:`analyse` serves both, so a stored calibration can always be
reproduced from its record alone.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tc_hw.model.device import armed
from tc_hw.model.jsonsafe import json_safe

from . import adc as adc_mod
from . import design, second_pass, stein
from .curves import CurveFit, fit_curve
from .elements import acquire_config, acquire_tau, estimate_config, tau_from
from .record import RecordWriter, load, read_material

__all__ = ["calibrate", "analyse", "refit", "combine", "Analysis", "DEFAULTS"]

#: Default options of :func:`calibrate` (all overridable by keyword).
DEFAULTS = dict(
    chains=256,  # independent serial chains per acquisition (the emulator simulates 128 per core block)
    samples=512,  # readings per chain and acquisition
    interval_tau=0.1,  # sampling interval, units of the nominal tau
    burn_tau=5.0,  # discarded start of every chain, units of tau
    groups=16,  # jackknife groups of chains
    repeats_zero=2,
    repeats_self=1,
    repeats_edge=1,
    self_levels=13,  # levels of each self-term sweep (Q, R, B with W): 3 acquisitions per level (7 before format 2)
    edge_levels=None,  # None: 6 (RLC) or 8 (periodic elements)
    max_matchings=None,  # limit the edge stage (tests)
    channels=None,  # restrict fits (and the edge stage) to these channels
    q_confine=3.0,  # design: confining Q and R (board units, kT = 1)
    r_confine=1.5,
    input_amplitude=None,  # None: 15 / (largest nominal |W|) so that W I stays moderate
    adc_levels=adc_mod.DEFAULT_LEVELS,
    adc_samples=64,
    tau_interval_tau=0.005,
    tau_samples=512,
    tau_repeats=4,
    integrator_dt_tau="auto",  # Euler-Maruyama step of a simulated board, units of tau; "auto": see _integrator_dt
    chi2_max=5.0,
    degree=3,  # curve_shape="poly" only
    curve_shape="learned",  # "learned": shape chosen by cross-validation (calibration.curves); "poly": fixed degree
    keep_raw_chains=2,
    plots=True,
    extra_levels_max=20,  # residual-driven second pass: most extra acquisitions (0: none; calibration.second_pass)
    flag_score=second_pass.FLAG_SCORE,  # held-out score that flags a channel for extra levels
)


@dataclass
class Analysis:
    """Result of :func:`analyse`: ``points`` (dict of arrays), ``fits`` (CurveFit per channel),
    ``nodes`` (dict of per-node arrays), ``adc`` (AdcFit), ``estimates`` (per acquisition)."""

    points: dict
    fits: list
    nodes: dict
    adc: object
    estimates: list = field(default_factory=list)
    warnings: list = field(default_factory=list)


def _log(progress, msg):
    if progress:
        print(f"[calibrate] {msg}", file=sys.stderr, flush=True)


def _channels_touching(graph: stein.Graph, nodes) -> np.ndarray:
    nodes = np.asarray(list(nodes), np.int64)
    if not len(nodes):
        return np.zeros(0, np.int64)
    out = [graph.q[nodes], graph.r[nodes], graph.b[nodes]]
    if len(graph.edges):
        hit = np.isin(graph.edges, nodes).any(1)
        out.append(graph.edge_ch[hit])
    if len(graph.w):
        out.append(graph.w_ch[np.isin(graph.w[:, 1], nodes)])
    return np.unique(np.concatenate(out))


def _points_of(est, data, graph, bad_nodes, k, selected):
    value, sigma = est.value, est.sigma
    ch = np.flatnonzero(np.isfinite(value) & np.isfinite(sigma) & (sigma > 0))
    bad = set(_channels_touching(graph, bad_nodes).tolist())
    used = np.array([(c not in bad) and (selected is None or c in selected) for c in ch], bool)
    return dict(channel=ch, volts=data.applied[ch], value=value[ch], sigma=sigma[ch],
                temp_k=np.full(len(ch), data.temperature_k), acq=np.full(len(ch), k), used=used)


def _cat(parts):
    if not parts:
        return dict(channel=np.zeros(0, np.int64), volts=np.zeros(0), value=np.zeros(0), sigma=np.zeros(0),
                    temp_k=np.zeros(0), acq=np.zeros(0, np.int64), used=np.zeros(0, bool))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _node_temperatures(estimates, graph, min_snr=8.0):
    """Relative node temperatures from couplings seen at both ends (C/kT_a vs C/kT_b)."""
    n = graph.n_nodes
    rows, ys, ws = [], [], []
    for est in estimates:
        if est is None or not len(graph.edges):
            continue
        ca, cb = est.per_end[:, 0], est.per_end[:, 1]
        sa, sb = est.per_end_sigma[:, 0], est.per_end_sigma[:, 1]
        ok = np.isfinite(ca + cb + sa + sb) & (np.abs(ca) > min_snr * sa) & (np.abs(cb) > min_snr * sb) & (ca * cb > 0)
        for e in np.flatnonzero(ok):
            a, b = graph.edges[e]
            rows.append((a, b))
            ys.append(math.log(cb[e] / ca[e]))
            ws.append(1.0 / ((sa[e] / ca[e]) ** 2 + (sb[e] / cb[e]) ** 2))
    if len(rows) < n:
        return np.ones(n), np.full(n, np.nan), 0
    a = np.zeros((len(rows) + 1, n))
    for r, (i, j) in enumerate(rows):
        a[r, i] = 1.0
        a[r, j] = -1.0
    a[-1, :] = 1.0
    y = np.array(ys + [0.0])
    w = np.array(ws + [max(ws) * 1e3])
    m = a.T @ (a * w[:, None])
    cov = np.linalg.pinv(m)
    logk = cov @ (a.T @ (w * y))
    kt = np.exp(logk)
    return kt, kt * np.sqrt(np.maximum(np.diag(cov), 0)), len(rows)


def _stiffness(configs, estimates, graph, adc_fit):
    """``<d_i^2 V> = 2 Q_i + 12 R_i <x_i^2>`` per node at the setting of the tau acquisition (the
    acquisition named ``tau-zero``; records without one: the ``zero`` setting), from that
    setting's own estimate and moments; None if unavailable."""
    names = [d.name for d in configs]
    want = "tau-zero" if "tau-zero" in names else "zero"
    for data, est in zip(configs, estimates):
        if data.name == want and est is not None:
            t = adc_fit.transform(graph.n_inputs)
            tot = data.total if data.total is not None else data.sums.sum(0)
            my = t @ (tot / data.counts.sum()) @ t.T
            n, k = graph.n_nodes, graph.n_inputs
            x2 = my[0, 1 + k + n + np.arange(n)]
            return 2 * est.value[graph.q] + 12 * est.value[graph.r] * x2
    return None


def analyse(material: dict, options: dict, *, progress: bool = False) -> Analysis:
    """Points, curves and node results from measured material (see :func:`read_material`)."""
    cmap = material["channel_map"]
    meta = material["meta"]
    n_nodes, n_inputs = int(meta["n_nodes"]), int(meta["n_inputs"])
    graph = stein.Graph.from_map(cmap, n_nodes, n_inputs)
    n_ch = len(cmap)
    warnings = []
    adc_data = material["adc"]
    if adc_data is not None:
        adc_fit = adc_mod.fit(adc_data)
        if not adc_fit.ok.all():
            warnings += adc_fit.reason
    else:
        adc_fit = adc_mod.ideal(n_nodes)
        warnings += adc_fit.reason
    adc_bad = set(np.flatnonzero(~adc_fit.ok).tolist())
    for i in adc_bad:  # keep a usable transform; the node's channels are not used anyway
        adc_fit.gain[i], adc_fit.offset[i] = 1.0, 0.0
        if adc_fit.inverse is not None:
            adc_fit.inverse[i] = (0.0, 1.0, 0.0, 0.0)
    dt = float(options.get("integrator_dt_tau") or 0.0)
    selected = options.get("channels")
    selected = None if selected is None else set(int(c) for c in selected)
    parts, estimates = [], []
    for k, data in enumerate(material["configs"]):
        try:
            est = estimate_config(data, graph, adc_fit, n_ch, dt)
        except np.linalg.LinAlgError as e:
            warnings.append(f"acquisition {data.name}: singular system ({e}); not used")
            estimates.append(None)
            continue
        bad = set(data.bad_nodes.tolist()) | adc_bad
        if data.bad_nodes.size:
            warnings.append(f"acquisition {data.name}: nodes {sorted(data.bad_nodes.tolist())} near the rails or "
                            "clipping; their equations are not used")
        parts.append(_points_of(est, data, graph, bad, k, selected))
        estimates.append(est)
    points = _cat(parts)
    fits = []
    for c in cmap:
        if selected is not None and c.index not in selected:
            fits.append(CurveFit(c.index, c.kind, "poly" if c.period == 0 else "periodic", np.zeros(1),
                                 np.zeros((1, 1)), c.vmin, c.vmax, c.gain, c.period, ok=False,
                                 reason="not calibrated (not in the requested channel set)"))
            continue
        m = (points["channel"] == c.index) & points["used"]
        fits.append(fit_curve(c, points["volts"][m], points["value"][m], points["sigma"][m], points["temp_k"][m],
                              degree=options.get("degree", 3), chi2_max=float(options.get("chi2_max", 5.0)),
                              shape=options.get("curve_shape", "learned")))
    kt, kt_sd, n_ratio = _node_temperatures(estimates, graph)
    nodes = {"kT": kt, "kT_sd": kt_sd}
    tau = material.get("tau")
    if tau is not None:
        noise = None
        if adc_data is not None:
            noise = adc_data.var.mean(0) / adc_fit.gain**2
        d, d_sd = tau_from(tau, noise)
        if dt:
            curv = _stiffness(material["configs"], estimates, graph, adc_fit)
            if curv is not None:  # coarse lags of an Euler-Maruyama chain see D (1 + dt <d_i^2 V>)
                d, d_sd = d / (1.0 + dt * curv), d_sd / (1.0 + dt * curv)
                nodes["stiffness"] = curv
        nodes.update(diffusion=d, diffusion_sd=d_sd, tau_s=kt / d,
                     tau_sd=(kt / d) * np.sqrt((d_sd / d) ** 2 + np.nan_to_num(kt_sd / kt) ** 2))
    return Analysis(points, fits, nodes, adc_fit, estimates, warnings)


def summarise(analysis: Analysis, cmap, meta: dict, seconds: float, entry: str, path, plots=()) -> dict:
    """The JSON summary: per-kind fit quality, failures, ADC, nodes, timing."""
    kinds = {}
    for kind in ("Q", "R", "B", "C", "W"):
        fs = [f for f in analysis.fits if f.kind == kind]
        if not fs:
            continue
        ok = [f for f in fs if f.ok]
        chi = np.array([f.chi2_red for f in fs if math.isfinite(f.chi2_red)])
        sig = []
        for f in ok:
            grid = np.linspace(f.branch[0], f.branch[1], 21)
            fs_val = float(np.max(np.abs(f.raw_value(grid)))) or 1.0
            sig.append(float(np.median(f.sigma(grid))) / fs_val)
        kinds[kind] = {
            "channels": len(fs), "ok": len(ok),
            "chi2_red_median": float(np.median(chi)) if len(chi) else None,
            "chi2_red_max": float(chi.max()) if len(chi) else None,
            "sigma_median_pct_fs": 100 * float(np.median(sig)) if sig else None,
            "slope_ratio_range": [float(min(f.extra.get("slope_ratio", np.nan) for f in ok)),
                                  float(max(f.extra.get("slope_ratio", np.nan) for f in ok))] if ok else None,
            "partial": sum(1 for f in ok if f.partial),
            "shapes": {k: sum(1 for f in ok if f.extra.get("shape", f.model) == k)
                       for k in sorted({str(f.extra.get("shape", f.model)) for f in ok})},
        }
    failed = [{"channel": f.channel, "kind": f.kind, "reason": f.reason} for f in analysis.fits if not f.ok]
    a = analysis.adc
    temps = analysis.points["temp_k"]
    out = {
        "entry": entry, "path": str(path), "identity": meta.get("identity"), "technology": meta.get("technology"),
        "seconds": round(float(seconds), 2), "acquisitions": len(analysis.estimates),
        "temperature_k": {"mean": float(np.nanmean(temps)) if len(temps) else None,
                          "min": float(np.nanmin(temps)) if len(temps) else None,
                          "max": float(np.nanmax(temps)) if len(temps) else None},
        "adc": {"measured": bool(a.measured), "ok": int(np.sum(a.ok)),
                "gain_range": [float(np.nanmin(a.gain)), float(np.nanmax(a.gain))],
                "offset_range_v": [float(np.nanmin(a.offset)), float(np.nanmax(a.offset))],
                "gain_sd_max": float(np.nanmax(a.gain_sd)) if a.measured else None},
        "kinds": kinds,
        "channels_ok": int(sum(f.ok for f in analysis.fits)), "channels": len(analysis.fits),
        "failed": failed[:50], "failed_count": len(failed),
        "partial": [{"channel": f.channel, "kind": f.kind, "span_v": [float(f.span[0]), float(f.span[1])],
                     "safe_v": [float(f.vmin), float(f.vmax)]} for f in analysis.fits if f.ok and f.partial][:50],
        "partial_count": int(sum(1 for f in analysis.fits if f.ok and f.partial)),
        "poor_fit": [{"channel": f.channel, "kind": f.kind, "reason": f.reason}
                     for f in analysis.fits if f.ok and f.extra.get("poor_fit")][:50],
        "nodes": {k: [float(np.nanmin(v)), float(np.nanmedian(v)), float(np.nanmax(v))]
                  for k, v in analysis.nodes.items() if np.isfinite(v).any()},
        "tempco": (f"fitted on {sum(f.tempco_known for f in analysis.fits)} channels"
                   if any(f.tempco_known for f in analysis.fits) else
                   "unknown: the temperature spread does not determine it (combine calibrations made at "
                   "different board temperatures with calibration.combine)"),
        "warnings": analysis.warnings[:50],
        "plots": [str(p) for p in plots],
    }
    return json_safe(out)


#: Step (units of tau) of the simulated boards of this project (the twin and the emulator).
SIMULATED_DT_TAU = 1e-3


def _integrator_dt(device, value) -> float:
    """``"auto"``: ``SIMULATED_DT_TAU`` for the twin (identity ``TWIN,...``) and the emulator
    (firmware field ``emu-...``), which integrate the board equation by Euler-Maruyama; 0 for
    anything else (a physical board has no integrator)."""
    if value != "auto":
        return float(value or 0.0)
    parts = [p.strip().lower() for p in str(getattr(device, "identity", "")).split(",")]
    simulated = parts[0] == "twin" or (len(parts) >= 4 and parts[3].startswith("emu"))
    return SIMULATED_DT_TAU if simulated else 0.0


def _options(kw: dict) -> dict:
    unknown = sorted(set(kw) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"unknown calibrate() options {unknown}; known: {sorted(DEFAULTS)}")
    opts = dict(DEFAULTS)
    opts.update(kw)
    if opts["channels"] is not None:
        opts["channels"] = sorted(int(c) for c in opts["channels"])
    return opts


def calibrate(device, out_path, progress: bool = True, **options):
    """Calibrate every channel of ``device`` and append the result to the record ``out_path``.

    Parameters
    ----------
    device : tc_hw.model.device.Device
        Any backend; ``CAL:REF`` is used when the backend offers it (see :mod:`calibration.adc`).
    out_path : path
        HDF5 calibration record; created if missing, otherwise a new entry is appended.
    progress : bool
        One line per acquisition on stderr.
    **options
        See :data:`DEFAULTS` (chains, samples, interval_tau, edge_levels, channels, ...).

    Plan (board of N nodes, coupling graph of maximum degree d): the ADC (CAL:REF at 8 levels);
    one ``zero`` setting; 3 x ``self_levels`` self-term settings (Q, R, B with W, all nodes at
    once); a confining ``tau-zero`` setting planned from the measured self terms, with
    short-interval increments for the node time constants; ``d x edge_levels`` coupling settings
    (one matching at a time, :mod:`calibration.design`).  Each setting is one or more serial
    acquisitions of ``chains`` chains x ``samples`` readings every ``interval_tau`` tau; every
    acquisition estimates every element (:mod:`calibration.stein`).  On the default emulated
    board (d = 16, 6 levels, 13 self levels) that is 137 acquisitions.  Then a residual-driven
    second pass (:mod:`calibration.second_pass`): channels whose cross-validated curve misses a
    held-out voltage get midpoint levels, at most ``extra_levels_max`` acquisitions (listed in
    ``summary["second_pass"]``).

    ``integrator_dt_tau``: simulated boards sample the Euler-Maruyama chain of step ``dt``, whose
    stationary law differs from the Gibbs one by ``O(dt V'')``; the first-order correction is
    applied with this step (``"auto"``: 1e-3 for the twin and the emulator, 0 for hardware).

    Returns
    -------
    (Calibration, dict)
        The loaded new entry and its JSON-ready summary (also stored in the entry).  Curves that
        fail their quality checks are in the record with ``ok = False`` and a reason; they are
        listed under ``summary["failed"]`` and never used by :func:`calibration.map_params`.
    """
    t0 = time.monotonic()
    opts = _resolve(device, _options(options))
    writer = _begin(device, out_path, opts, progress)
    session = _Session.open(device, writer, opts, progress)
    session.acquire_all()
    material = read_material(out_path, writer.name, allow_incomplete=True)
    analysis = analyse(material, opts, progress=progress)
    summary = _report(analysis, material, out_path, writer.name, opts, time.monotonic() - t0)
    return _update(out_path, writer, analysis, summary, progress)


# ------------------------------------------------------------------ calibrate, one job per function
def _resolve(device, opts: dict) -> dict:
    """Options with the board-dependent defaults filled in: integrator step, edge levels, input
    amplitude (``15 / largest nominal |W|`` so that ``W I`` stays moderate)."""
    cmap = device.channel_map
    opts["integrator_dt_tau"] = _integrator_dt(device, opts["integrator_dt_tau"])
    opts["edge_levels"] = opts["edge_levels"] or (8 if any(c.period > 0 for c in cmap) else 6)
    opts["input_amplitude"] = opts["input_amplitude"] or design.input_amplitude(cmap)
    burn = int(math.ceil(opts["burn_tau"] / opts["interval_tau"]))
    if burn >= opts["samples"]:
        raise ValueError(f"burn-in of {burn} samples leaves nothing of samples={opts['samples']}")
    return opts


def _begin(device, out_path, opts: dict, progress) -> RecordWriter:
    """A new (incomplete) record entry for this board and these options."""
    cmap = device.channel_map
    writer = RecordWriter.begin(out_path, identity=device.identity, technology=device.technology,
                                n_nodes=device.n_nodes, n_inputs=device.n_inputs, channel_map=cmap,
                                tau_nominal_s=float(device.tau_s), options=opts)
    _log(progress, f"{device.identity}: {device.n_nodes} nodes, {len(cmap)} channels -> {out_path} entry {writer.name}")
    return writer


def _measure_adc(device, writer, opts: dict, progress):
    """Acquisition of the ADC (CAL:REF), stored; returns the fit to read everything else through
    (nodes whose ADC fit failed read as ideal; their channels are not used)."""
    n = device.n_nodes
    adc_data = adc_mod.measure(device, opts["adc_levels"], samples=opts["adc_samples"], chains=opts["chains"])
    adc_fit = adc_mod.fit(adc_data) if adc_data is not None else adc_mod.ideal(n)
    writer.add_adc(adc_data, adc_fit)
    _log(progress, f"ADC: gain {np.nanmin(adc_fit.gain):.4f}..{np.nanmax(adc_fit.gain):.4f}, offset "
                   f"{1e3 * np.nanmin(adc_fit.offset):+.1f}..{1e3 * np.nanmax(adc_fit.offset):+.1f} mV"
                   if adc_data is not None else "ADC: backend has no CAL:REF, readout taken as ideal")
    if adc_fit.ok.all():
        return adc_fit
    inv = None if adc_fit.inverse is None else np.where(adc_fit.ok[:, None], adc_fit.inverse, [[0.0, 1.0, 0.0, 0.0]])
    return adc_mod.AdcFit(np.where(adc_fit.ok, adc_fit.gain, 1.0), np.where(adc_fit.ok, adc_fit.offset, 0.0),
                          adc_fit.gain_sd, adc_fit.offset_sd, adc_fit.chi2_red, adc_fit.ok, inverse=inv)


@dataclass
class _Session:
    """The acquisition stage of :func:`calibrate`: the board, the record being written, what is
    known so far (:class:`design.Knowledge`, fed by every acquisition) and the common settings.
    Each stage method plans its settings from what is known when it runs, acquires, stores."""

    device: object
    writer: RecordWriter
    opts: dict
    progress: bool
    graph: stein.Graph
    adc_fit: object
    inputs: np.ndarray
    know: design.Knowledge
    count: int = 0

    @classmethod
    def open(cls, device, writer, opts, progress) -> "_Session":
        """Measure the ADC, then load the calibration's input batch (stored with the entry)."""
        graph = stein.Graph.from_map(device.channel_map, device.n_nodes, device.n_inputs)
        adc_fit = _measure_adc(device, writer, opts, progress)
        inputs = design.input_batch(opts["chains"], device.n_inputs, opts["input_amplitude"])
        device.set_inputs(inputs)
        writer.add_inputs(inputs)
        return cls(device, writer, opts, progress, graph, adc_fit, inputs, design.Knowledge(device.channel_map))

    @property
    def cmap(self):
        return self.device.channel_map

    def common(self) -> dict:
        o = self.opts
        return dict(interval_s=o["interval_tau"] * float(self.device.tau_s), samples=o["samples"],
                    burn=int(math.ceil(o["burn_tau"] / o["interval_tau"])), groups=o["groups"],
                    integrator_dt_tau=float(o["integrator_dt_tau"] or 0.0), keep_raw_chains=o["keep_raw_chains"])

    def acquire_all(self) -> None:
        """Every stage in order, armed; the board's channel settings are restored afterwards
        (when they were a safe state)."""
        saved = np.asarray(self.device.get_channels(0, len(self.cmap)), np.float64)
        try:
            with armed(self.device):
                self.zero_stage()
                self.self_stage()
                self.tau_stage()
                self.edge_stage()
                self.extra_levels()
        finally:
            try:
                self.cmap.check(saved)
                self.device.set_channels(saved, 0)
            except ValueError:
                pass  # the previous state was not a safe one to restore; leave the last calibration setting

    def run(self, cfg, repeats: int):
        """Acquire one setting, store it, and feed its estimates (nodes off the rails) to ``know``."""
        dt = float(self.opts["integrator_dt_tau"] or 0.0)
        data = acquire_config(self.device, cfg, self.graph, self.adc_fit, self.inputs, repeats=repeats, **self.common())
        self.writer.add_config(data)
        est = estimate_config(data, self.graph, self.adc_fit, len(self.cmap), dt)
        ok = np.isfinite(est.value) & np.isfinite(est.sigma)
        bad = set(_channels_touching(self.graph, data.bad_nodes).tolist())
        ch = np.array([c for c in np.flatnonzero(ok) if c not in bad], np.int64)
        self.know.add(ch, data.applied[ch], est.value[ch], est.sigma[ch])
        self.count += 1
        _log(self.progress, f"{self.count:4d} {cfg.name:<14s} {data.wall_s:5.1f} s  T={data.temperature_k:.3f} K"
                            + (f"  rails/clip at nodes {data.bad_nodes.tolist()}" if data.bad_nodes.size else ""))
        return data

    def _confining(self, name="zero"):
        o = self.opts
        cfg = design.plan_zero(self.cmap, self.graph, self.know, o["q_confine"], o["r_confine"])
        cfg.name = name
        return cfg

    def zero_stage(self) -> None:
        self.run(self._confining(), self.opts["repeats_zero"])

    def self_stage(self) -> None:
        """Q, R, B/W sweeps, each setting planned just before it is acquired, so that its helper
        settings use everything measured so far (a node whose zero-stage equations were lost to
        the rails, e.g. with a large quartic offset, would otherwise keep nominal helpers)."""
        o = self.opts
        levels = int(o["self_levels"])
        for i in range(3 * levels):
            cfg = design.self_config(self.cmap, self.graph, self.know, i, o["q_confine"], o["r_confine"], levels)
            self.run(cfg, o["repeats_self"])

    def tau_stage(self) -> None:
        """Node time constants at the confining setting planned from the measured self terms (the
        first, nominal zero setting can leave nodes at the rails on a board whose Q or R is
        offset); that setting is also acquired for its stiffness (integrator correction)."""
        o = self.opts
        cfg = self._confining("tau-zero")
        cfg.volts = design.on_dac_grid(self.cmap, cfg.volts)
        interval_s = o["tau_interval_tau"] * float(self.device.tau_s)
        tau_data = acquire_tau(self.device, cfg.volts, self.adc_fit, interval_s=interval_s,
                               samples=o["tau_samples"], groups=o["groups"], repeats=o["tau_repeats"])
        self.writer.add_tau(tau_data)
        self.run(cfg, 1)

    def matchings(self) -> list:
        """The edge colouring, limited to matchings that hold a requested channel and to ``max_matchings``."""
        graph, o = self.graph, self.opts
        out = design.edge_colouring(graph.edges, graph.n_nodes) if len(graph.edges) else []
        if o["channels"] is not None:
            want = set(int(e) for e in np.flatnonzero(np.isin(graph.edge_ch, list(o["channels"]))))
            out = [m for m in out if want & set(m.tolist())]
        if o["max_matchings"] is not None:
            out = out[: int(o["max_matchings"])]
        return out

    def edge_stage(self) -> None:
        o = self.opts
        levels = int(o["edge_levels"])
        matchings = self.matchings()
        _log(self.progress, f"edge stage: {len(matchings)} matchings x {levels} levels")
        for m, match in enumerate(matchings):
            for li, f in enumerate(np.linspace(0.0, 1.0, levels)):
                cfg = design.edge_config(self.cmap, self.graph, self.know, match, float(f), o["q_confine"],
                                         o["r_confine"], name=f"edge-{m}-{li}", matching=m)
                self.run(cfg, o["repeats_edge"])


    def _flags(self, channels, step: float) -> list:
        """Flags (:func:`second_pass.flag_channel`) of ``channels`` from the points so far."""
        out = []
        for ch in channels:
            v, y, s = self.know.points(int(ch))
            if len(v) >= 4:
                flag = second_pass.flag_channel(self.cmap[int(ch)], v, y, s, step, float(self.opts["flag_score"]))
                if flag is not None:
                    out.append(flag)
        return out

    def extra_levels(self) -> None:
        """The residual-driven second pass (:mod:`calibration.second_pass`): midpoints around the
        worst held-out voltage of every flagged channel, pooled per self-term sweep and per
        matching, at most ``extra_levels_max`` acquisitions, the most-wanted first."""
        o, graph = self.opts, self.graph
        budget = int(o["extra_levels_max"] or 0)
        if budget <= 0:
            return
        wanted: dict = {}
        self_step = 1.0 / max(int(o["self_levels"]) - 1, 1)
        for kind, chans in (("Q", graph.q), ("R", graph.r), ("B", graph.b), ("W", graph.w_ch)):
            for flag in self._flags(self._selected(chans), self_step):
                wanted.setdefault((kind,), []).extend(flag.fractions)
        edge_step = 1.0 / max(int(o["edge_levels"]) - 1, 1)
        matchings = self.matchings()
        for m, match in enumerate(matchings):
            for flag in self._flags(self._selected(graph.edge_ch[np.asarray(match, np.int64)]), edge_step):
                wanted.setdefault(("edge", m), []).extend(flag.fractions)
        plan = second_pass.plan_requests(wanted, budget)
        _log(self.progress, f"second pass: {sum(len(v) for v in wanted.values())} requests, {len(plan)} acquisitions")
        for key, f in plan:
            repeats = o["repeats_edge"] if key[0] == "edge" else o["repeats_self"]
            self.run(self._extra_config(key, f, matchings), repeats)

    def _selected(self, chans) -> list:
        chans = [int(c) for c in np.asarray(chans).ravel()]
        sel = self.opts["channels"]
        return chans if sel is None else [c for c in chans if c in set(sel)]

    def _extra_config(self, key, fraction: float, matchings):
        """The setting of one second-pass request (``key`` from :meth:`extra_levels`)."""
        o = self.opts
        if key[0] == "edge":
            m = int(key[1])
            return design.edge_config(self.cmap, self.graph, self.know, matchings[m], fraction, o["q_confine"],
                                      o["r_confine"], name=f"extra-edge-{m}@{fraction:.3f}", matching=m)
        kind = key[0]
        if kind in ("B", "W"):  # a large bias with a small crossbar weight and the reverse, as the BW sweep
            other = (fraction + 0.5) % 1.0
            pair = (fraction, other) if kind == "B" else (other, fraction)
            return design.self_at(self.cmap, self.graph, self.know, "BW", pair, o["q_confine"], o["r_confine"],
                                  name=f"extra-{kind}@{fraction:.3f}")
        return design.self_at(self.cmap, self.graph, self.know, kind, fraction, o["q_confine"], o["r_confine"],
                              name=f"extra-{kind}@{fraction:.3f}")


def _report(analysis, material: dict, out_path, entry: str, opts: dict, seconds: float) -> dict:
    """Plots (when asked) and the JSON summary."""
    plots = []
    if opts["plots"]:
        from .plots import plot_all

        plots = plot_all(analysis, material["channel_map"], Path(out_path), entry)
    summary = summarise(analysis, material["channel_map"], material["meta"], seconds, entry, out_path, plots)
    summary["second_pass"] = sorted(d.name for d in material["configs"] if d.name.startswith("extra-"))
    return summary


def _update(out_path, writer, analysis, summary, progress):
    """Complete the record entry; the loaded entry and the summary."""
    writer.finish(analysis, summary, summary["seconds"])
    _log(progress, f"done in {summary['seconds']:.0f} s: {summary['channels_ok']}/{summary['channels']} channels ok")
    return load(out_path, writer.name), summary


def refit(path, entry: str | None = None, progress: bool = False, **options):
    """Redo the analysis of a stored entry from its stored data alone; append it as a new entry.

    ``options`` override the stored ones (e.g. ``chi2_max``, ``degree``, ``integrator_dt_tau``
    (only when the entry stored correction moments), ``channels``).  Returns ``(Calibration,
    summary)`` like :func:`calibrate`.
    """
    t0 = time.monotonic()
    material = read_material(path, entry)
    meta = material["meta"]
    opts = dict(DEFAULTS)
    opts.update(meta["options"])
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"unknown refit() options {unknown}; known: {sorted(DEFAULTS)}")
    stored_dt = opts.get("integrator_dt_tau")
    opts.update(options)
    if opts.get("integrator_dt_tau") == "auto":
        opts["integrator_dt_tau"] = stored_dt if stored_dt != "auto" else 0.0
    if opts.get("integrator_dt_tau") and any(c.correction is None for c in material["configs"]):
        raise ValueError("this entry stored no integrator-correction moments; refit with integrator_dt_tau=0")
    writer = RecordWriter.begin(path, identity=meta["identity"], technology=meta["technology"],
                                n_nodes=int(meta["n_nodes"]), n_inputs=int(meta["n_inputs"]),
                                channel_map=material["channel_map"], tau_nominal_s=float(meta["tau_nominal_s"]),
                                options=opts, kind="refit", derived_from=meta["name"])
    writer.link_material(meta["name"])
    analysis = analyse(material, opts, progress=progress)
    seconds = time.monotonic() - t0
    summary = summarise(analysis, material["channel_map"], meta, seconds, writer.name, path)
    writer.finish(analysis, summary, seconds, adc_fit=analysis.adc)
    return load(path, writer.name), summary


def combine(path, names=None, progress: bool = False, **options):
    """Fit curves to the pooled points of several entries (e.g. calibrations made at different
    board temperatures), which determines the temperature coefficients; append as a new entry.

    ``names`` default to every complete measured entry of the newest entry's board.  Options
    ``chi2_max``, ``degree``.  Node results and the ADC come from the newest entry.  Returns
    ``(Calibration, summary)``; ``summary["tempco"]`` says on how many channels the tempco was
    determined (to 1.5e-3 /K or better).
    """
    from .record import entries as list_entries

    t0 = time.monotonic()
    allowed = {"chi2_max", "degree", "curve_shape"}
    if set(options) - allowed:
        raise TypeError(f"combine() takes only {sorted(allowed)}, got {sorted(set(options) - allowed)}")
    listing = [e for e in list_entries(path) if e["complete"] and e["kind"] == "measured"]
    if not listing:
        raise ValueError(f"{path} holds no complete measured calibration")
    if names is None:
        ident = listing[-1]["identity"]
        names = [e["name"] for e in listing if e["identity"] == ident]
    mats = [read_material(path, n) for n in names]
    cmap = mats[-1]["channel_map"]
    for m in mats:
        if len(m["channel_map"]) != len(cmap) or m["meta"]["identity"] != mats[-1]["meta"]["identity"]:
            raise ValueError(f"entry {m['meta']['name']} is of another board; cannot combine")
    pts = {}
    offset = 0
    for m in mats:
        p = m["points"]
        for k, v in p.items():
            pts.setdefault(k, []).append(v + offset if k == "acq" else v)
        offset += len(m["configs"])
    pts = {k: np.concatenate(v) for k, v in pts.items()}
    opts = dict(DEFAULTS)
    opts.update(mats[-1]["meta"]["options"])
    opts.update(options)
    fits = []
    for c in cmap:
        m = (pts["channel"] == c.index) & pts["used"]
        fits.append(fit_curve(c, pts["volts"][m], pts["value"][m], pts["sigma"][m], pts["temp_k"][m],
                              degree=opts.get("degree", 3), chi2_max=float(opts.get("chi2_max", 5.0)),
                              shape=opts.get("curve_shape", "learned")))
    newest = load(path, names[-1])
    analysis = Analysis(pts, fits, newest.nodes, newest.adc, [None] * offset,
                        [f"combined from entries {', '.join(names)}"])
    meta = mats[-1]["meta"]
    writer = RecordWriter.begin(path, identity=meta["identity"], technology=meta["technology"],
                                n_nodes=int(meta["n_nodes"]), n_inputs=int(meta["n_inputs"]), channel_map=cmap,
                                tau_nominal_s=float(meta["tau_nominal_s"]), options=opts, kind="combined",
                                derived_from=",".join(names))
    writer.link_material(names[-1])
    seconds = time.monotonic() - t0
    summary = summarise(analysis, cmap, meta, seconds, writer.name, path)
    writer.finish(analysis, summary, seconds, adc_fit=newest.adc)
    return load(path, writer.name), summary
