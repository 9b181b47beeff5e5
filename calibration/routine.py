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

from . import adc as adc_mod
from . import design, stein
from .curves import CurveFit, fit_curve
from .elements import acquire_config, acquire_tau, estimate_config, tau_from
from .record import Calibration, RecordWriter, _jsonable, load, read_material

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
        "nodes": {k: [float(np.nanmin(v)), float(np.nanmedian(v)), float(np.nanmax(v))]
                  for k, v in analysis.nodes.items() if np.isfinite(v).any()},
        "tempco": (f"fitted on {sum(f.tempco_known for f in analysis.fits)} channels"
                   if any(f.tempco_known for f in analysis.fits) else
                   "unknown: the temperature spread does not determine it (combine calibrations made at "
                   "different board temperatures with calibration.combine)"),
        "warnings": analysis.warnings[:50],
        "plots": [str(p) for p in plots],
    }
    return _jsonable(out)


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
    board (d = 16, 6 levels, 13 self levels) that is 137 acquisitions.

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
    opts = _options(options)
    opts["integrator_dt_tau"] = _integrator_dt(device, opts["integrator_dt_tau"])
    t0 = time.monotonic()
    cmap = device.channel_map
    n, k_in = device.n_nodes, device.n_inputs
    graph = stein.Graph.from_map(cmap, n, k_in)
    tau = float(device.tau_s)
    edge_levels = opts["edge_levels"] or (8 if any(c.period > 0 for c in cmap) else 6)
    w_nom = max([abs(c.gain) * max(abs(c.vmin), abs(c.vmax)) for c in cmap.of_kind("W")] or [1.0])
    amp = opts["input_amplitude"] or 15.0 / w_nom
    opts["input_amplitude"] = amp
    opts["edge_levels"] = edge_levels
    writer = RecordWriter.begin(out_path, identity=device.identity, technology=device.technology, n_nodes=n,
                                n_inputs=k_in, channel_map=cmap, tau_nominal_s=tau, options=opts)
    _log(progress, f"{device.identity}: {n} nodes, {len(cmap)} channels -> {out_path} entry {writer.name}")
    saved = np.asarray(device.get_channels(0, len(cmap)), np.float64)

    # ADC first: everything else is read through it.
    adc_data = adc_mod.measure(device, opts["adc_levels"], samples=opts["adc_samples"], chains=opts["chains"])
    adc_fit = adc_mod.fit(adc_data) if adc_data is not None else adc_mod.ideal(n)
    writer.add_adc(adc_data, adc_fit)
    _log(progress, f"ADC: gain {np.nanmin(adc_fit.gain):.4f}..{np.nanmax(adc_fit.gain):.4f}, offset "
                   f"{1e3 * np.nanmin(adc_fit.offset):+.1f}..{1e3 * np.nanmax(adc_fit.offset):+.1f} mV"
                   if adc_data is not None else "ADC: backend has no CAL:REF, readout taken as ideal")
    use_fit = adc_fit
    if not adc_fit.ok.all():
        inv = None if adc_fit.inverse is None else np.where(adc_fit.ok[:, None], adc_fit.inverse, [[0.0, 1.0, 0.0, 0.0]])
        use_fit = adc_mod.AdcFit(np.where(adc_fit.ok, adc_fit.gain, 1.0), np.where(adc_fit.ok, adc_fit.offset, 0.0),
                                 adc_fit.gain_sd, adc_fit.offset_sd, adc_fit.chi2_red, adc_fit.ok, inverse=inv)

    inputs = design.input_batch(opts["chains"], k_in, amp)
    device.set_inputs(inputs)
    writer.add_inputs(inputs)
    know = design.Knowledge(cmap)
    interval = opts["interval_tau"] * tau
    burn = int(math.ceil(opts["burn_tau"] / opts["interval_tau"]))
    if burn >= opts["samples"]:
        raise ValueError(f"burn-in of {burn} samples leaves nothing of samples={opts['samples']}")
    dt = float(opts["integrator_dt_tau"] or 0.0)
    common = dict(interval_s=interval, samples=opts["samples"], burn=burn, groups=opts["groups"],
                  integrator_dt_tau=dt, keep_raw_chains=opts["keep_raw_chains"])
    selected = None if opts["channels"] is None else set(opts["channels"])
    count = [0]

    def run(cfg, repeats):
        data = acquire_config(device, cfg, graph, use_fit, inputs, repeats=repeats, **common)
        writer.add_config(data)
        est = estimate_config(data, graph, use_fit, len(cmap), dt)
        ok = np.isfinite(est.value) & np.isfinite(est.sigma)
        bad = set(_channels_touching(graph, data.bad_nodes).tolist())
        ch = np.array([c for c in np.flatnonzero(ok) if c not in bad], np.int64)
        know.add(ch, data.applied[ch], est.value[ch], est.sigma[ch])
        count[0] += 1
        _log(progress, f"{count[0]:4d} {cfg.name:<14s} {data.wall_s:5.1f} s  T={data.temperature_k:.3f} K"
                       + (f"  rails/clip at nodes {data.bad_nodes.tolist()}" if data.bad_nodes.size else ""))
        return data

    tau_data = None
    try:
        with armed(device):
            zero = design.plan_zero(cmap, graph, know, opts["q_confine"], opts["r_confine"])
            run(zero, opts["repeats_zero"])
            # planned one acquisition at a time, so that each one's helper settings use everything
            # measured before it (a node whose zero-stage equations were lost to the rails, e.g. with
            # a large quartic offset, would otherwise keep nominal helpers through the whole sweep)
            lv = int(opts["self_levels"])
            n_self = len(design.plan_self(cmap, graph, know, opts["q_confine"], opts["r_confine"], lv))
            for i in range(n_self):
                run(design.plan_self(cmap, graph, know, opts["q_confine"], opts["r_confine"], lv)[i],
                    opts["repeats_self"])
            # node time constants at the confining setting planned from the measured self terms (the
            # first, nominal zero setting can leave nodes at the rails on a board whose Q or R is
            # offset); that setting is also acquired for its stiffness (integrator correction)
            tau_cfg = design.plan_zero(cmap, graph, know, opts["q_confine"], opts["r_confine"])
            tau_cfg.name, tau_cfg.stage = "tau-zero", "zero"
            tau_cfg.volts = design.on_dac_grid(cmap, tau_cfg.volts)
            tau_data = acquire_tau(device, tau_cfg.volts, use_fit, interval_s=opts["tau_interval_tau"] * tau,
                                   samples=opts["tau_samples"], groups=opts["groups"], repeats=opts["tau_repeats"])
            writer.add_tau(tau_data)
            run(tau_cfg, 1)
            matchings = design.edge_colouring(graph.edges, n) if len(graph.edges) else []
            if selected is not None:
                want = set(int(e) for e in np.flatnonzero(np.isin(graph.edge_ch, list(selected))))
                matchings = [m for m in matchings if want & set(m.tolist())]
            if opts["max_matchings"] is not None:
                matchings = matchings[: int(opts["max_matchings"])]
            _log(progress, f"edge stage: {len(matchings)} matchings x {edge_levels} levels")
            fractions = np.linspace(0.0, 1.0, edge_levels)
            for m, match in enumerate(matchings):
                for li in range(edge_levels):
                    cfg = design.plan_edges(cmap, graph, know, [match], edge_levels, opts["q_confine"],
                                            opts["r_confine"])[li]
                    cfg.name = f"edge-{m}-{li}"
                    cfg.meta["fraction"] = float(fractions[li])
                    run(cfg, opts["repeats_edge"])
    finally:
        try:
            cmap.check(saved)
            device.set_channels(saved, 0)
        except ValueError:
            pass  # the previous state was not a safe one to restore; leave the last calibration setting

    material = read_material(out_path, writer.name, allow_incomplete=True)
    analysis = analyse(material, opts, progress=progress)
    seconds = time.monotonic() - t0
    plots = []
    if opts["plots"]:
        from .plots import plot_all

        plots = plot_all(analysis, cmap, Path(out_path), writer.name)
    summary = summarise(analysis, cmap, material["meta"], seconds, writer.name, out_path, plots)
    writer.finish(analysis, summary, seconds)
    _log(progress, f"done in {seconds:.0f} s: {summary['channels_ok']}/{summary['channels']} channels ok")
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
