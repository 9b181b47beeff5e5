"""Calibration on element curves that are not polynomials: learned shapes (cross-validated choice
among polynomials, cubic B-splines and harmonics), calibrated spans (partial validity instead of
loss), record format 2, per-node mobilities.

The fits are pure functions tested on synthetic data of the calibration's own design (7 sweep
levels over the safe range plus helper voltages near zero, a few points per voltage, Gaussian
errors of a stated sigma), against curves whose formulas the calibration never sees."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

import calibration
from calibration.curves import CurveError, fit_curve, select_model, candidates, measured_span
from calibration.mapping import MappingError
from sim_backend.device import TwinDevice
from tc_hw import Params
from tc_hw.model.device import Channel

B = Channel(5, "B", 0, 0, -5.0, 5.0, 4.0, 0.0)
R = Channel(51, "R", 3, 3, 0.0, 5.0, 4.0, 0.0)
C_JJ = Channel(7, "C", 0, 1, -5.0, 5.0, 8.0, 12.0)


def _saturating(v):  # 20 tanh(v / 4.5) + offset: mean slope 3.5/V, flattens by 30 % at the ends
    return 22.0 * np.tanh((v + 0.2) / 4.5)


def _exponential(v):  # slope 2.3/V .. 5.9/V: mean 3.4/V
    return 4.0 * (np.exp((v + 0.3) / 4.0) - 1.0) + 2.0 * v


def _kinked(v):  # piecewise linear, slope 3/V below +1 V and 5/V above (one kink)
    return np.where(v < 1.0, 3.0 * (v - 1.0), 5.0 * (v - 1.0)) + 2.0


def _zero_crossing_r(v):  # an R element that crosses zero at +0.6 V inside its safe range [0, 5] V
    return 4.2 * (v - 0.6) * (1.0 + 0.04 * v)


def _jj_skewed(v):  # periodic, not a pure sine: second and third harmonics
    th = 2 * np.pi * (v + 0.25) / 12.0
    return 8.6 * 12.0 / (2 * np.pi) * (np.sin(th) + 0.08 * np.sin(2 * th) - 0.03 * np.sin(3 * th))


def _design_volts(ch, levels=7, helpers=(0.0, 0.15, -0.2, 0.4), reps=4):
    sweep = np.linspace(ch.vmin, ch.vmax, levels)
    extra = np.array([h for h in helpers if ch.vmin <= h <= ch.vmax])
    return np.repeat(np.concatenate([sweep, extra]), reps)


def _data(f, v, sigma, seed):
    rng = np.random.default_rng(seed)
    return f(v) + rng.normal(0.0, sigma, len(v)), np.full(len(v), sigma)


def _err_fs(fit, f, ch):
    """Median and max |fit - truth| over the calibrated branch (the span, or for a periodic
    element its monotonic part: what the mapping uses), fractions of full scale."""
    grid = np.linspace(fit.branch[0], fit.branch[1], 201)
    full = np.abs(f(np.linspace(ch.vmin, ch.vmax, 201))).max()
    e = np.abs(fit.raw_value(grid) - f(grid)) / full
    return float(np.median(e)), float(np.max(e))


# sigma 0.02 on values of full scale ~20: 0.1 % of full scale per point, as in the default calibration
@pytest.mark.parametrize("name,f,ch", [("saturating", _saturating, B), ("exponential", _exponential, B),
                                        ("kinked", _kinked, B), ("periodic", _jj_skewed, C_JJ)])
def test_learned_shape_recovers_non_polynomial_curves(name, f, ch):
    """Median error < 0.3 % of full scale on each of 6 noise draws (the target of issue 13), and
    the fixed cubic misses at least one of these curves by more (so the test can fail)."""
    meds, cubic_meds = [], []
    for seed in range(6):
        v = _design_volts(ch, levels=8 if ch.period else 7)  # the design's sweep levels of each kind
        y, s = _data(f, v, 0.02, seed)
        fit = fit_curve(ch, v, y, s)
        assert fit.ok, (name, fit.reason)
        assert fit.span == (ch.vmin, ch.vmax)
        meds.append(_err_fs(fit, f, ch)[0])
        assert math.isfinite(fit.cv_rms) and fit.cv_rms > 0
        old = fit_curve(ch, v, y, s, shape="poly")
        cubic_meds.append(_err_fs(old, f, ch)[0] if old.ok else 1.0)
    assert max(meds) < 0.003, (name, meds)
    if name != "periodic":  # the fixed families: a cubic is worse on every non-polynomial curve here
        assert np.median(cubic_meds) > np.median(meds), (name, meds, cubic_meds)


def test_cubic_fails_where_learned_holds():
    """On the saturating and kinked curves the fixed cubic's median error exceeds the 0.3 % target
    (the error a non-polynomial board showed), the learned fit's does not."""
    for f in (_saturating, _kinked):
        v = _design_volts(B)
        y, s = _data(f, v, 0.02, 11)
        assert _err_fs(fit_curve(B, v, y, s, shape="poly"), f, B)[0] > 0.003 or not fit_curve(B, v, y, s,
                                                                                               shape="poly").ok
        assert _err_fs(fit_curve(B, v, y, s), f, B)[0] < 0.003


def test_simple_curves_keep_simple_shapes():
    """A straight line keeps a polynomial shape of degree <= 3 (the default cubic unless
    cross-validation finds it significantly worse, then the simplest): no spurious spline or
    high-degree polynomial on polynomial data."""
    shapes = []
    for seed in range(8):
        v = _design_volts(B)
        y, s = _data(lambda x: 4.1 * (x + 0.1), v, 0.02, seed)
        fit = fit_curve(B, v, y, s)
        assert fit.ok
        shapes.append(fit.extra["shape"])
    assert sum(sh in ("poly1", "poly2", "poly3") for sh in shapes) >= 7, shapes


def test_candidates_need_clusters_and_selection_orders_them():
    v = np.repeat(np.linspace(-5, 5, 5), 3)
    cands = candidates(B, v, measured_span(B, v))
    assert {c.label for c in cands} == {"poly1", "poly2", "poly3"}  # 5 voltages: at most 4 coefficients
    y = 4 * v
    order = select_model(cands, B, v, y + np.random.default_rng(0).normal(0, 0.01, len(v)), np.full(len(v), 1e4))
    assert order[0].label == "poly3"  # the default shape, within 25 % of the best score
    assert {c.label for c in order[:3]} == {"poly1", "poly2", "poly3"}


# ------------------------------------------------------------------------------ partial validity
def _partial_r_fit(seed=0):
    v = np.repeat(np.r_[np.linspace(0.833, 5.0, 6), 1.1], 4)  # the low end could not be sampled
    y, s = _data(_zero_crossing_r, v, 0.02, seed)
    return fit_curve(R, v, y, s)


def test_partial_channel_keeps_its_measured_span():
    fit = _partial_r_fit()
    assert fit.ok, fit.reason
    assert fit.partial and fit.span == pytest.approx((0.833, 5.0))
    assert fit.branch == pytest.approx((0.833, 5.0))
    med, worst = _err_fs(fit, _zero_crossing_r, R)
    assert med < 0.003 and worst < 0.01
    lo, hi = fit.value_range()
    assert lo == pytest.approx(_zero_crossing_r(0.833), abs=0.05) and hi == pytest.approx(_zero_crossing_r(5.0), abs=0.1)
    # inside: exact inverse on the span
    y = np.array([1.5, 8.0, 15.0])
    assert np.allclose(fit.value(fit.inverse(y)), y, atol=1e-8)
    # outside: refused, naming the channel and its calibrated span; nothing clamped
    with pytest.raises(CurveError, match=r"channel 51 \(R\).*calibrated span \[\+0\.833, \+5\] V of the safe range "
                                         r"\[\+0, \+5\] V"):
        fit.value(0.4)
    with pytest.raises(CurveError, match=r"channel 51.*reachable range.*calibrated span \[\+0\.833, \+5\] V"):
        fit.inverse(0.2)


def test_mapping_refuses_outside_the_calibrated_span_and_maps_inside():
    dev = TwinDevice()
    cmap = dev.channel_map
    cal = calibration.nominal(cmap)
    r_ch = [c for c in cmap if c.kind == "R"][3]
    part = _partial_r_fit()
    part.channel, part.gain_nominal = r_ch.index, r_ch.gain
    cal.fits[r_ch.index] = part
    net = dev.network
    n = net.n_nodes
    quartic = np.full(n, 2.0)
    p = Params(net, np.full(n, 5.0), np.zeros(n), quartic, np.zeros(n), np.zeros(net.n_edges),
               np.zeros(net.n_crossbar))
    volts = calibration.map_params(p, cal, cmap)
    assert part.span[0] <= volts[r_ch.index] <= part.span[1]
    cal.check_volts(volts)
    low = p.copy(quartic=np.where(np.arange(n) == 3, 0.5, 2.0))  # below what the span reaches
    with pytest.raises(MappingError, match=rf"ch {r_ch.index}, R node 3.*calibrated span \[\+0\.833, \+5\] V"):
        calibration.map_params(low, cal, cmap)
    bad = volts.copy()
    bad[r_ch.index] = 0.5
    with pytest.raises(CurveError, match=rf"channel {r_ch.index} \(R\): \+0\.5 V is outside its calibrated span"):
        cal.check_volts(bad)
    assert cal.partial_channels() == [r_ch.index]


def test_a_channel_is_lost_only_when_nothing_is_measurable():
    one = fit_curve(R, [2.0] * 5, [5.6] * 5, [0.02] * 5)
    assert not one.ok and "nothing measurable" in one.reason
    none = fit_curve(R, [], [], [])
    assert not none.ok and "nothing measurable" in none.reason
    v = np.repeat([4.0, 4.5, 5.0], 3)  # a tenth of the range, three voltages: kept
    y, s = _data(_zero_crossing_r, v, 0.02, 3)
    small = fit_curve(R, v, y, s)
    assert small.ok and small.span == pytest.approx((4.0, 5.0))


# ------------------------------------------------------------------------------ record format 2
def _write(path, fits, nodes):
    from calibration.adc import ideal
    from calibration.record import RecordWriter
    from calibration.routine import Analysis

    dev = TwinDevice()
    w = RecordWriter.begin(path, identity=dev.identity, technology=dev.technology, n_nodes=dev.n_nodes,
                           n_inputs=dev.n_inputs, channel_map=dev.channel_map, tau_nominal_s=1e-6, options={})
    pts = dict(channel=np.zeros(0, np.int64), volts=np.zeros(0), value=np.zeros(0), sigma=np.zeros(0),
               temp_k=np.zeros(0), acq=np.zeros(0, np.int64), used=np.zeros(0, bool))
    w.finish(Analysis(pts, fits, nodes, ideal(dev.n_nodes)), {}, 1.0, adc_fit=ideal(dev.n_nodes))
    return w.name


def test_record_v2_stores_spline_knots_span_and_old_entries_load(tmp_path):
    dev = TwinDevice()
    cmap = dev.channel_map
    fits = calibration.nominal(cmap).fits
    v = _design_volts(B)
    y, s = _data(_kinked, v, 0.02, 0)
    b_ch = [c for c in cmap if c.kind == "B"][0].index
    kink = fit_curve(cmap[b_ch], v, y, s)
    assert kink.model == "spline" and kink.ok
    part = _partial_r_fit()
    r_ch = [c for c in cmap if c.kind == "R"][0]
    part.channel, part.gain_nominal = r_ch.index, r_ch.gain
    fits[b_ch], fits[r_ch.index] = kink, part
    tau = np.linspace(0.9e-6, 1.1e-6, dev.n_nodes)
    path = tmp_path / "cal.h5"
    name = _write(path, fits, {"tau_s": tau, "kT": np.ones(dev.n_nodes)})
    cal = calibration.load(path)
    grid = np.linspace(-5, 5, 41)
    assert np.allclose(cal.element_value(b_ch, grid), kink.value(grid), rtol=1e-12, atol=1e-12)
    assert cal.span(r_ch.index) == pytest.approx((0.833, 5.0))
    assert cal.curve(b_ch).extra["shape"] == kink.extra["shape"]
    assert cal.curve(b_ch).cv_rms == pytest.approx(kink.cv_rms)
    # per-node mobility for the twin: nominal tau / measured tau
    assert np.allclose(cal.node_mobility(2.0), 2.0 * 1e-6 / tau)
    assert np.allclose(cal.node_temperatures(), 1.0)
    # a version-1 entry (no knots, span or per-entry version) still loads, with span = safe range
    with h5py.File(path, "a") as f:
        g = f["entries"][name]
        for k in ("knots", "span", "cv_rms", "shape"):
            del g["fits"][k]
        del g.attrs["format_version"]
        g["fits"]["model"][b_ch] = "poly"  # version 1 had no splines
        g["fits"]["coef"][b_ch] = np.r_[0.0, 4.0, np.full(14, np.nan)]
    old = calibration.load(path)
    assert old.span(r_ch.index) == (r_ch.vmin, r_ch.vmax)
    assert old.element_value(b_ch, 1.0) == pytest.approx(4.0 * (1.0 - 0.0) / 5.0)  # u = v / 5
    # a newer format is refused with both versions named
    with h5py.File(path, "a") as f:
        f["entries"][name].attrs["format_version"] = 9
    with pytest.raises(calibration.CalibrationError, match="format version 9.*versions 1..2"):
        calibration.load(path)


def test_refit_with_fixed_poly_shape_is_still_available():
    v = _design_volts(B)
    y, s = _data(lambda x: 4.0 * x + 0.01 * x**3, v, 0.02, 5)
    fixed = fit_curve(B, v, y, s, shape="poly", degree=3)
    assert fixed.model == "poly" and len(fixed.coef) == 4 and fixed.ok
    with pytest.raises(ValueError, match="unknown curve shape"):
        fit_curve(B, v, y, s, shape="magic")


def test_design_volts_go_on_the_dac_grid_inside_the_safe_range():
    """A safe-range end that is not a DAC code (4.4 V, as on stretched boards) is sent as the last
    code inside it; float32 of it stays inside; nothing moves by a step or more."""
    from calibration.design import DAC_LSB_V, on_dac_grid

    cmap = [Channel(0, "R", 0, 0, 0.0, 4.4, 4.0), Channel(1, "B", 0, 0, -4.4, 4.4, 4.0)]
    v = np.array([4.4, -4.4])
    g = on_dac_grid(cmap, v)
    assert np.all(np.abs(g - v) < DAC_LSB_V)
    assert 0.0 <= np.float32(g[0]) <= 4.4 and -4.4 <= np.float32(g[1]) <= 4.4
    assert np.allclose(np.rint(g / DAC_LSB_V) * DAC_LSB_V, g, rtol=0, atol=1e-15)
    inside = np.array([1.23456, -0.5])
    assert np.all(np.abs(on_dac_grid(cmap, inside) - inside) <= DAC_LSB_V / 2 + 1e-15)


# ------------------------------------------------------------------------------ ADC, node tau
def _inl_adc_data(gain, offset, inl, range_v=10.0, noise_v=1e-3, count=16384):
    """CAL:REF material of an ADC whose readings bow by ``inl * range * s(v / range)`` with the
    cubic bow ``s(u) = (3 sqrt 3 / 2)(u - u^3)`` (an independent model: the fit never sees it)."""
    from calibration.adc import DEFAULT_LEVELS, AdcData

    levels = np.asarray(DEFAULT_LEVELS)
    s = lambda u: 1.5 * math.sqrt(3) * (u - u**3)  # noqa: E731
    fwd = lambda v: gain * v + offset + inl * range_v * s(v / range_v)  # noqa: E731
    rng = np.random.default_rng(7)
    mean = fwd(levels[:, None]) + rng.normal(0, noise_v / math.sqrt(count), (len(levels), len(gain)))
    var = np.full_like(mean, noise_v**2)
    z = np.zeros_like(mean)
    return AdcData(levels, mean, var, np.full(len(levels), count), np.zeros((len(levels), 1, len(gain)), np.int16),
                   20.0 / 65536, z, np.full(len(levels), 300.0)), fwd


def test_adc_with_integral_nonlinearity_is_fitted_and_inverted():
    """A readout bowed by 0.2 % of its range is not refused (the straight line is, chi-square in the
    thousands); the inverse maps readings back to node volts within 20 uV over +-3 V, and the
    moment transform reproduces <x>, <x^2>, <x^3> of node samples to 5e-4 relative."""
    from calibration import adc, stein

    gain = np.array([1.02, 0.985, 1.0])
    offset = np.array([0.012, -0.008, 0.0])
    inl = np.array([0.002, -0.0015, 0.0])
    data, fwd = _inl_adc_data(gain, offset, inl)
    line = adc.fit(data, degrees=(1,))
    assert not line.ok[:2].any() and line.ok[2]  # the old straight line refuses the bowed nodes
    fit = adc.fit(data)
    assert fit.ok.all() and fit.inverse is not None
    x = np.linspace(-3, 3, 61)[:, None]
    assert np.max(np.abs(fit.correct(fwd(x)) - x)) < 2e-5
    # moments through the transform (what the Stein estimator uses)
    rng = np.random.default_rng(8)
    xs = rng.normal(0.4, 0.8, (64, 200, 3))
    r = fwd(xs)
    inputs = np.zeros((64, 1))
    sums, counts = stein.moments(r, inputs, 4)
    t = fit.transform(1)
    m = t @ (sums.sum(0) / counts.sum()) @ t.T
    n = 3
    for p, off in ((1, 2), (2, 2 + n), (3, 2 + 2 * n)):
        want = np.mean(xs**p, axis=(0, 1))
        got = m[0, off:off + n]
        assert np.allclose(got, want, rtol=5e-4, atol=2e-5), (p, got, want)


def test_tau_of_nodes_at_the_rails_is_not_measured():
    from calibration.elements import RAIL_FRACTION_MAX, TauData, tau_from

    rng = np.random.default_rng(9)
    g, n = 8, 3
    h = 0.005
    q1 = np.full((g, n), 1000 * 2 * h) * (1 + 0.01 * rng.standard_normal((g, n)))
    q2 = np.full((g, n), 1000 * 4 * h)
    q1[:, 2], q2[:, 2] = 1e-9, 1e-9  # a node stuck at a rail barely moves
    data = TauData(h, q1, q2, np.full(g, 1000.0), np.full(g, 1000.0), 300.0, np.zeros(5), np.zeros((0, 1, n)),
                   np.array([0.0, 0.0, 0.3]))
    d, sd = tau_from(data)
    assert np.all(np.isfinite(d[:2])) and np.allclose(d[:2], 1.0, rtol=0.05)
    assert np.isnan(d[2]) and np.isnan(sd[2])
    data.rail_fraction = np.array([0.0, 2 * RAIL_FRACTION_MAX, 0.0])
    data.q2[:, 2] = 1e-8  # lag-2 increments larger than diffusion allows: D < 0
    d, _ = tau_from(data)
    assert np.isnan(d[1]) and np.isnan(d[2])  # rails, and a non-positive D


def test_a_kink_near_the_end_is_not_excused_by_its_fold_spread():
    """A slope change of +90 % beyond +4.4 V (near the end of [-5.5, +5.5] V): the held-out score
    of a straight line is dominated by one fold, whose spread must not make it adequate.  The
    chosen shape stays within 2 % of full scale at the kink and 0.3 % in median (13 sweep
    levels), where a straight line is off by more than 1 % in median."""
    ch = Channel(41, "B", 0, 0, -5.5, 5.5, 2.5, 0.0)
    f = lambda v: 2.5 * (v + 0.3) + 2.25 * np.maximum(v - 4.4, 0.0)  # noqa: E731
    for seed in range(4):
        v = _design_volts(ch, levels=13)
        y, s = _data(f, v, 0.03, seed)
        fit = fit_curve(ch, v, y, s)
        assert fit.ok and fit.extra["shape"] != "poly1", fit.extra
        med, worst = _err_fs(fit, f, ch)
        assert med < 0.003 and worst < 0.02, (fit.extra["shape"], med, worst)
        assert _err_fs(fit_curve(ch, v, y, s, shape="poly", degree=1, chi2_max=1e9), f, ch)[0] > 0.01


def test_periodic_element_with_a_large_offset_keeps_its_branch():
    """A periodic element whose offset (2.4 V, a fifth of its period) moves the steepest point off
    0 V: the slope check uses the branch's steepest slope, so the channel is kept (the mean slope
    of the nominal, centred sine over the branch [-4.3, +0.6] V would call it 1.69 x too steep and
    refuse it), fitted by harmonics, and its branch contains the true steepest point (-2.4 V)."""
    ch = Channel(185, "W", 0, 3, -4.3, 4.3, 0.39, 12.0)
    f = lambda v: 0.39 * 12.0 / (2 * np.pi) * np.sin(2 * np.pi * (v + 2.4) / 12.0)  # noqa: E731
    v = _design_volts(ch, levels=8)
    y, s = _data(f, v, 0.002, 4)
    fit = fit_curve(ch, v, y, s)
    assert fit.ok, fit.reason
    assert fit.model == "periodic"
    assert fit.branch[0] < -2.4 < fit.branch[1]
    assert abs(fit.extra["slope_ratio"] - 1.0) < 0.05
    med, _ = _err_fs(fit, f, ch)
    assert med < 0.003


def test_a_fit_that_turns_at_a_flat_end_keeps_its_monotonic_run():
    """A strongly saturating element (slope 3 % of its centre slope at -5 V): noise can make a fit
    turn over at the flat end.  The channel is kept with its longest monotonic run (>= 80 % of the
    span) as the branch; inverses stay on it; it is refused only when no run is that long."""
    from calibration.curves import CurveFit, _judge

    ch = Channel(183, "W", 0, 3, -5.0, 5.0, 2.0, 0.0)
    # a cubic that turns over below -4.5 V (as a noisy fit of a saturating curve does)
    coef = np.array([0.0, 10.0, 0.0, -10.0 / (3 * 0.81)])  # f = 10 u - a u^3 turns at |u| = 0.9
    fit = CurveFit(ch.index, ch.kind, "poly", coef, np.zeros((4, 4)), ch.vmin, ch.vmax, ch.gain, chi2_red=1.0)
    v = np.linspace(-5, 5, 11)
    _judge(fit, ch, v, 5.0, 3.0, False)
    d = fit.derivative(np.linspace(-5, 5, 1001))
    assert (d <= 0).any()  # the fit does turn
    assert fit.ok, fit.reason
    lo, hi = fit.branch
    assert hi - lo >= 0.8 * 10.0 and np.all(fit.derivative(np.linspace(lo, hi, 201)) > 0)
    y = fit.value(np.array([lo, hi]))
    assert np.allclose(fit.value(fit.inverse(y)), y, atol=1e-8)
    steep = CurveFit(ch.index, ch.kind, "poly", np.array([0.0, 10.0, 0.0, -12.0]), np.zeros((4, 4)), ch.vmin,
                     ch.vmax, ch.gain, chi2_red=1.0)  # turns at |u| > 0.53: monotonic on half the span
    _judge(steep, ch, v, 5.0, 3.0, False)
    assert not steep.ok and "not monotonic" in steep.reason


def test_a_curve_steeper_than_nominal_keeps_its_curvature():
    """An exponential R element whose true mean slope is 1.6 x the nominal gain (a zoo board with a
    strong curvature): the curved shape must win, not a straight line that passes a too-tight
    slope check.  The old +-50 % check refused every curved shape here and kept the line, whose
    error is several times the curved fit's (measured on zoo board 3305277407: R p95 1.46 % of
    full scale -> 0.39 %)."""
    ch = Channel(27, "R", 3, 3, 0.0, 5.2, 0.48, 0.0)

    def steep(v):  # mean slope 0.79/V = 1.65 x nominal; slope 0.5/V at 0 V .. 1.3/V at 5.2 V
        return 0.085 + 0.55 * (np.exp(v / 2.8) - 1.0) + 0.16 * v

    v = _design_volts(ch, levels=13, helpers=(1.46, 2.2), reps=3)
    y, s = _data(steep, v, 0.004, seed=7)
    fit = fit_curve(ch, v, y, s)
    assert fit.ok, fit.reason
    assert fit.extra["shape"] != "poly1"
    grid = np.linspace(ch.vmin, ch.vmax, 201)
    full = np.abs(steep(grid)).max()
    err = np.median(np.abs(fit.raw_value(grid) - steep(grid))) / full
    line = np.polyval(np.polyfit(v, y, 1), grid)
    err_line = np.median(np.abs(line - steep(grid))) / full
    assert err < 0.003 and err < err_line / 3, (err, err_line)
    assert 1.5 < fit.extra["slope_ratio"] < 1.8


def test_a_slope_far_from_nominal_is_still_refused():
    """The sanity check stays: a curve 4 x steeper than the nominal gain (a wrong channel) is refused."""
    ch = Channel(27, "R", 3, 3, 0.0, 5.0, 0.5, 0.0)
    v = _design_volts(ch)
    y, s = _data(lambda x: 2.0 * x, v, 0.01, seed=3)
    fit = fit_curve(ch, v, y, s)
    assert not fit.ok and "x the nominal" in fit.reason


def test_a_straight_line_is_not_excused_by_many_points_at_one_voltage():
    """Stored points of two zoo-board channels (tests/data/zoo_points_816906886.json: a saturating
    coupling, 6 levels plus ~95 points at its zero; a kinked R element, 13 levels plus helpers)
    with the board's true curve.  A simpler shape's *reduced* chi-square excess is diluted over
    the points at one voltage; its total excess is not.  The likelihood-ratio rule must not keep
    the line / quadratic the old rule kept (channel 98: line 1.34 % of full scale; channel 20:
    quadratic 1.41 %)."""
    import json
    from pathlib import Path

    from calibration.curves import Candidate, _chi2_adequate

    data = json.loads((Path(__file__).parent / "data" / "zoo_points_816906886.json").read_text())["channels"]
    for key, limit in (("98", 0.005), ("20", 0.011)):
        d = data[key]
        ch = Channel(int(key), d["kind"], d["a"], d["b"], d["vmin"], d["vmax"], d["gain"], 0.0)
        fit = fit_curve(ch, d["volts"], d["value"], d["sigma"])
        grid = np.linspace(ch.vmin, ch.vmax, 201)
        true = np.array(d["true_grid"])
        err = np.median(np.abs(fit.raw_value(grid) - true)) / np.abs(true).max()
        assert fit.ok and fit.extra["shape"] not in ("poly1", "poly2") and err < limit, (key, fit.extra["shape"], err)
    # the rule itself: a line 36 above the best of 5 coefficients is out; one 3 above is in
    a, b = Candidate("poly", 2), Candidate("poly", 5)
    a.chi2, b.chi2 = (141 + 36) / 104, 141 / 101
    assert _chi2_adequate([a, b], 106) == [False, True]
    a.chi2 = (141 + 3) / 104
    assert _chi2_adequate([a, b], 106) == [True, True]


def test_a_measurable_channel_that_no_shape_follows_is_kept_as_a_poor_fit():
    """A sharp kink (slope 3/V -> 9/V at +1.3 V, between sweep levels) measured to 0.01 % of full
    scale: no candidate reaches the chi-square limit.  The channel is measurable, so it is kept
    (not lost): flagged in ``reason``, its covariance scaled by the chi-square, and still within
    1 % of full scale in median.  A wrong slope sign is still refused."""
    f = lambda v: np.where(v < 1.3, 3.0 * (v - 1.3), 9.0 * (v - 1.3))  # noqa: E731
    v = _design_volts(B, levels=7)
    y, s = _data(f, v, 0.004, 1)
    fit = fit_curve(B, v, y, s)
    assert fit.ok and fit.extra.get("poor_fit") and "poor fit kept" in fit.reason, fit.reason
    assert fit.chi2_red > 5
    assert _err_fs(fit, f, B)[0] < 0.01
    strict = fit_curve(B, v, y, s, chi2_max=1e9)  # without the limit: the same shape, its plain covariance
    assert strict.ok and not strict.extra.get("poor_fit")
    wrong = fit_curve(B, v, -y, s)  # slope of the wrong sign: no monotonic candidate, refused
    assert not wrong.ok
    bumpy = fit_curve(B, v, 4 * v + 15 * np.sin(v), s)  # a line would miss by a third of the range: refused
    assert not bumpy.ok and "chi-square" in bumpy.reason
