"""Calibration: curve fits and inverses, periodic branches, refusals, the record, mapping, upload,
and a small end-to-end calibration against a running emulator."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

import calibration
from calibration import design, stein
from calibration.curves import CurveError, fit_curve
from calibration.mapping import DAC_LSB_V, MappingError, UploadError
from calibration.record import RecordWriter
from calibration.routine import Analysis
from sim_backend.device import TwinDevice
from tc_hw import Params
from tc_hw.model.device import Channel
from tests.emulator_process import running_emulator


def _rlc_truth(v, gain=4.4, off=0.3, nl=0.02, vmin=-5.0, vmax=5.0):
    span = vmax - vmin
    u = (v - (vmin + vmax) / 2) / (span / 2)
    return gain * (v + off + nl * span * 3 * math.sqrt(3) / 2 * (u - u**3))


def _jj_truth(v, gain=8.8, off=0.25, nl=0.03, period=12.0):
    th = 2 * np.pi * (v + off) / period
    return gain * period / (2 * np.pi) * (np.sin(th) + 0.5 * nl * np.sin(2 * th))


# ------------------------------------------------------------------------------ curves
def test_poly_fit_inverse_and_uncertainty():
    ch = Channel(100, "C", 0, 8, -5.0, 5.0, 4.0)
    rng = np.random.default_rng(0)
    v = np.repeat(np.linspace(-5, 5, 7), 4)
    y = _rlc_truth(v) + rng.normal(0, 0.05, len(v))
    f = fit_curve(ch, v, y, np.full(len(v), 0.05), np.full(len(v), 300.0))
    assert f.ok, f.reason
    assert 0.3 < f.chi2_red < 3
    grid = np.linspace(-5, 5, 41)
    err = np.abs(f.value(grid) - _rlc_truth(grid))
    assert np.median(err) < 0.05
    assert np.all(err < 5 * f.sigma(grid) + 1e-3)
    target = np.array([-17.0, 0.0, 3.3, 21.0])
    back = f.inverse(target)
    assert np.allclose(f.value(back), target, atol=1e-9)
    lo, hi = f.value_range()
    with pytest.raises(CurveError, match="outside the reachable range"):
        f.inverse(hi + 1.0)
    assert not f.tempco_known  # one temperature: no tempco, no correction
    assert f.value(np.array([1.0]), temp_k=305.0) == pytest.approx(f.value(np.array([1.0]))[0])


def test_tempco_fitted_from_spread_temperatures_and_corrected():
    ch = Channel(7, "Q", 7, -1, -2.5, 5.0, 4.0)
    rng = np.random.default_rng(1)
    v = np.tile(np.linspace(-2.5, 5, 8), 6)
    temps = np.repeat(np.array([298.0, 299.0, 300.0, 301.0, 302.0, 303.0]), 8)
    alpha = 0.004
    y = _rlc_truth(v, vmin=-2.5, vmax=5.0) * (1 + alpha * (temps - 300.5)) + rng.normal(0, 0.01, len(v))
    f = fit_curve(ch, v, y, np.full(len(v), 0.01), temps)
    assert f.ok, f.reason
    assert f.tempco_known and abs(f.tempco - alpha) < 5 * f.tempco_sd + 2e-4
    # correction at upload time: volts_for at another temperature gives the same physical value
    v1 = f.inverse(10.0, temp_k=302.0)
    assert _rlc_truth(v1, vmin=-2.5, vmax=5.0) * (1 + alpha * (302.0 - 300.5)) == pytest.approx(10.0, abs=0.05)


def test_periodic_curve_uses_one_monotonic_branch():
    ch = Channel(200, "C", 1, 9, -5.0, 5.0, 8.0, 12.0)
    rng = np.random.default_rng(2)
    v = np.repeat(np.linspace(-5, 5, 11), 3)
    y = _jj_truth(v) + rng.normal(0, 0.05, len(v))
    f = fit_curve(ch, v, y, np.full(len(v), 0.05))
    assert f.ok, f.reason
    assert f.model == "periodic" and abs(f.period - 12.0) < 0.3
    lo, hi = f.branch
    assert -3.6 < lo < -2.8 and 2.4 < hi < 3.2  # about |v + 0.25| < 3 V
    grid = np.linspace(lo, hi, 50)
    assert np.all(np.diff(f.value(grid)) > 0)
    vals = np.array([-10.0, 0.0, 12.0])
    volts = f.inverse(vals)
    assert np.all((volts >= lo) & (volts <= hi))
    assert np.allclose(f.value(volts), vals, atol=1e-8)
    # a value that the sine reaches only off the branch is refused
    with pytest.raises(CurveError):
        f.inverse(f.value_range()[1] + 0.5)


def test_failed_fits_are_reported_and_never_used():
    ch = Channel(3, "B", 3, -1, -5.0, 5.0, 4.0)
    v = np.linspace(-5, 5, 9)
    bumpy = 4 * v + 15 * np.sin(v)  # not monotonic
    f = fit_curve(ch, v, bumpy, np.full(len(v), 0.05))
    assert not f.ok and ("chi-square" in f.reason or "monotonic" in f.reason)
    with pytest.raises(CurveError, match="refused"):
        f.value(0.0)
    few = fit_curve(ch, [0.0, 1.0], [0.0, 4.0], [0.1, 0.1])
    assert not few.ok and "too few points" in few.reason
    wrong_gain = fit_curve(ch, v, 0.5 * v + np.random.default_rng(0).normal(0, 0.01, 9), np.full(9, 0.01))
    assert not wrong_gain.ok and "nominal" in wrong_gain.reason


# ------------------------------------------------------------------------------ estimator
def test_score_matching_recovers_independent_nodes():
    dev = TwinDevice()
    g = stein.Graph.from_map(dev.channel_map, dev.n_nodes, dev.n_inputs)
    rng = np.random.default_rng(3)
    q = rng.uniform(1.0, 8.0, dev.n_nodes)
    b = rng.uniform(-2, 2, dev.n_nodes)
    # exact Gibbs samples of V = Q x^2 - B x (no quartic, no couplings, no crossbar)
    x = rng.normal(b / (2 * q), np.sqrt(1 / (2 * q)), (64, 400, dev.n_nodes))
    inputs = np.where(np.arange(64) % 2 == 0, 0.5, -0.5)[:, None]
    sums, counts = stein.moments(x, inputs, 16)
    est = stein.estimate(sums, counts, g, stein.adc_transform(np.ones(32), np.zeros(32), 1), len(dev.channel_map))
    zq = (est.value[g.q] - q) / est.sigma[g.q]
    assert np.sqrt(np.mean(zq**2)) < 2.5
    assert np.all(np.abs(est.value[g.r]) < 6 * est.sigma[g.r])
    assert np.all(np.abs(est.value[g.edge_ch]) < 6 * est.sigma[g.edge_ch] + 1e-9)
    # the ADC transform: readings with gain 1.02 and offset 10 mV give the same values
    t = stein.adc_transform(np.full(32, 1.02), np.full(32, 0.01), 1)
    s2, c2 = stein.moments(1.02 * x + 0.01, inputs, 16)
    est2 = stein.estimate(s2, c2, g, t, len(dev.channel_map))
    assert np.allclose(est2.value[g.q], est.value[g.q], rtol=1e-6)


def test_edge_colouring_is_degree_many_matchings():
    dev = TwinDevice()
    g = stein.Graph.from_map(dev.channel_map, dev.n_nodes, dev.n_inputs)
    groups = design.edge_colouring(g.edges, dev.n_nodes)
    assert len(groups) == int(np.bincount(g.edges.ravel()).max())  # bipartite: max degree colours
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(g.edges)))
    for m in groups:
        nodes = g.edges[m].ravel()
        assert len(nodes) == len(set(nodes.tolist()))


# ------------------------------------------------------------------------------ record
def _fake_analysis(cmap, scale=1.0):
    fits = []
    for c in cmap:
        v = np.linspace(c.vmin, c.vmax, 6)
        fits.append(fit_curve(c, v, scale * c.gain * v, np.full(6, 0.01)))
    pts = dict(channel=np.zeros(1, np.int64), volts=np.zeros(1), value=np.zeros(1), sigma=np.ones(1),
               temp_k=np.full(1, 300.0), acq=np.zeros(1, np.int64), used=np.ones(1, bool))
    return Analysis(pts, fits, {"tau_s": np.full(32, 1e-6)}, calibration.adc.ideal(32))


def _write_entry(path, dev, scale=1.0, finish=True):
    w = RecordWriter.begin(path, identity=dev.identity, technology=dev.technology, n_nodes=dev.n_nodes,
                           n_inputs=dev.n_inputs, channel_map=dev.channel_map, tau_nominal_s=dev.tau_s,
                           options={"note": scale})
    an = _fake_analysis(dev.channel_map, scale)
    w.add_adc(None, an.adc)
    if finish:
        w.finish(an, {"scale": scale}, 1.0)
    return w.name


def test_record_is_append_only_and_reloadable(tmp_path):
    dev = TwinDevice()
    path = tmp_path / "cal.h5"
    first = _write_entry(path, dev, 1.0)
    with h5py.File(path, "r") as f:
        coef_before = f["entries"][first]["fits"]["coef"][()].copy()
        attrs_before = dict(f["entries"][first].attrs)
    second = _write_entry(path, dev, 1.05)
    _write_entry(path, dev, 2.0, finish=False)  # interrupted: never loaded
    names = [e["name"] for e in calibration.entries(path)]
    assert names[:2] == [first, second] and len(names) == 3
    with h5py.File(path, "r") as f:
        assert np.array_equal(f["entries"][first]["fits"]["coef"][()], coef_before, equal_nan=True)
        assert dict(f["entries"][first].attrs) == attrs_before
    cal = calibration.load(path)
    assert cal.entry == second
    assert cal.element_value(100, 2.0) == pytest.approx(1.05 * 4.0 * 2.0, rel=1e-9)
    old = calibration.load(path, first)
    assert old.element_value(100, 2.0) == pytest.approx(8.0, rel=1e-9)
    assert old.volts_for(100, 8.0) == pytest.approx(2.0, abs=1e-9)
    with pytest.raises(calibration.CalibrationError, match="incomplete"):
        calibration.load(path, names[2])


# ------------------------------------------------------------------------------ mapping, upload
def _params(dev, coupling=3.0):
    net = dev.network
    n = net.n_nodes
    return Params(net, np.full(n, 5.0), np.zeros(n), np.full(n, 2.0), np.linspace(-3, 3, n),
                  np.full(net.n_edges, coupling), np.full(net.n_crossbar, -2.0))


def test_map_params_quantises_and_refuses_with_a_clear_message():
    dev = TwinDevice()
    nom = calibration.nominal(dev.channel_map)
    p = _params(dev)
    volts = calibration.map_params(p, nom, dev.channel_map)
    assert np.allclose(np.rint(volts / DAC_LSB_V) * DAC_LSB_V, volts)  # on the DAC grid
    dev.channel_map.check(volts)
    target, _ = calibration.mapping.channel_values(p, dev.channel_map)
    assert np.max(np.abs(volts * dev.channel_map.gain - target)) <= 4.0 * DAC_LSB_V / 2 + 1e-12
    big = p.copy(coupling=np.where(np.arange(p.network.n_edges) == 7, 26.0, 3.0))
    with pytest.raises(MappingError) as e:
        calibration.map_params(big, nom, dev.channel_map)
    msg = str(e.value)
    assert "coupling[7]" in msg and "ch 103" in msg and "by 6" in msg and "Suggested" in msg and "s <= 0.769" in msg
    # a refused curve is never used
    bad = calibration.nominal(dev.channel_map)
    bad.fits[5].ok, bad.fits[5].reason = False, "reduced chi-square 9.3 > 5"
    with pytest.raises(MappingError, match="ch 5.*chi-square"):
        calibration.map_params(p, bad, dev.channel_map)


def test_upload_writes_one_block_reads_back_and_verifies():
    dev = TwinDevice()
    nom = calibration.nominal(dev.channel_map)
    p = _params(dev)
    calls = []
    orig = dev.set_channels

    def spy(volts, start=0):
        calls.append((len(volts), start))
        orig(volts, start)

    dev.set_channels = spy
    rep = calibration.upload(dev, p, nom)
    assert calls == [(len(dev.channel_map), 0)]
    assert rep["ok"] and rep["readback_max_error_v"] == 0.0
    assert rep["difference"]["C"]["max_abs"] <= 4.0 * DAC_LSB_V
    assert set(rep["effective"]) == {"Q", "R", "B", "C", "W"}
    eff = calibration.effective_params(p, dev.channel_map, nom.element_value(np.arange(len(dev.channel_map)), dev.get_channels()))
    assert np.allclose(eff.coupling, p.coupling, atol=4 * 4.0 * DAC_LSB_V)

    class Stuck(TwinDevice):  # a board whose channel 9 does not follow
        def get_channels(self, start=0, n=None):
            v = super().get_channels(start, n)
            v[9] += 0.01
            return v

    with pytest.raises(UploadError, match="channels 9"):
        calibration.upload(Stuck(), p, nom)


# ------------------------------------------------------------------------------ end to end
def test_small_calibration_against_the_emulator(tmp_path):
    from sim_backend.emulator.truth import element_value
    from tc_hw.backends import open_device

    with running_emulator(truth=True, workdir=tmp_path) as emu:
        truth = emu.truth()
        dev = open_device(emu.tcp)
        try:
            out = tmp_path / "cal.h5"
            cal, summary = calibration.calibrate(
                dev, out, progress=False, chains=128, samples=160, burn_tau=4.0, groups=8, max_matchings=1,
                edge_levels=5, integrator_dt_tau=1e-3, plots=True, adc_samples=16)
        finally:
            dev.close()
    # ADC
    assert np.max(np.abs(cal.adc.gain / truth["adc"]["gain"] - 1)) < 0.002
    # self-terms of every node and the couplings of the one matching are calibrated
    fits = cal.fits
    for kind in "QRBW":
        ok = [f for f in fits if f.kind == kind and f.ok]
        assert len(ok) >= 0.9 * len([f for f in fits if f.kind == kind]), (kind, summary["failed"][:5])
        errs = []
        for f in ok:
            grid = np.linspace(f.vmin, f.vmax, 41)
            full = np.abs(element_value(truth, f.channel, grid)).max()
            errs.append(np.median(np.abs(f.raw_value(grid) - element_value(truth, f.channel, grid, f.t_ref))) / full)
        assert np.median(errs) < 0.02, (kind, np.median(errs))
    c_ok = [f for f in fits if f.kind == "C" and f.ok]
    assert len(c_ok) >= 8
    assert any("too few points" in f["reason"] for f in summary["failed"])
    assert summary["channels_ok"] == int(cal.ok.sum())
    assert "tau_s" in cal.nodes and np.all(np.abs(cal.nodes["tau_s"] / 1e-6 - 1) < 0.1)
    assert len(summary["plots"]) == 6 and all(p.endswith(".png") for p in summary["plots"])
    # the fit can be redone from the stored data alone
    again, _ = calibration.refit(out)
    assert again.entry != cal.entry
    for a, b in zip(cal.fits, again.fits):
        assert a.ok == b.ok
        if a.ok:
            assert np.allclose(a.coef, b.coef, rtol=1e-6, atol=1e-9)
    assert len(calibration.entries(out)) == 2


def test_combining_calibrations_at_two_temperatures_gives_tempcos(tmp_path):
    dev = TwinDevice()
    cmap = dev.channel_map
    path = tmp_path / "cal.h5"
    rng = np.random.default_rng(4)
    alpha = rng.uniform(-0.005, 0.005, len(cmap))
    for temp in (297.0, 303.0):
        ch, vv, yy = [], [], []
        for c in cmap:
            v = np.linspace(c.vmin, c.vmax, 7)
            ch.append(np.full(7, c.index))
            vv.append(v)
            yy.append(c.gain * v * (1 + alpha[c.index] * (temp - 300.0)))
        n = 7 * len(cmap)
        pts = dict(channel=np.concatenate(ch), volts=np.concatenate(vv),
                   value=np.concatenate(yy) + rng.normal(0, 0.005, n), sigma=np.full(n, 0.005),
                   temp_k=np.full(n, temp), acq=np.zeros(n, np.int64), used=np.ones(n, bool))
        fits = [fit_curve(c, pts["volts"][pts["channel"] == c.index], pts["value"][pts["channel"] == c.index],
                          pts["sigma"][pts["channel"] == c.index], pts["temp_k"][pts["channel"] == c.index])
                for c in cmap]
        w = RecordWriter.begin(path, identity=dev.identity, technology=dev.technology, n_nodes=32, n_inputs=1,
                               channel_map=cmap, tau_nominal_s=dev.tau_s, options={})
        an = Analysis(pts, fits, {}, calibration.adc.ideal(32))
        w.add_adc(None, an.adc)
        w.finish(an, {}, 1.0)
    single = calibration.load(path)
    assert not any(f.tempco_known for f in single.fits)
    cal, summary = calibration.combine(path)
    assert cal.entry == calibration.entries(path)[-1]["name"] and "fitted on" in summary["tempco"]
    tc = np.array([f.tempco for f in cal.fits])
    assert np.all(np.isfinite(tc)) and np.max(np.abs(tc - alpha)) < 5e-4
    # correction at upload time: the same value needs other volts at another temperature
    ch = 150
    v_hot = cal.volts_for(ch, 10.0, temp_k=303.0)
    assert cmap[ch].gain * v_hot * (1 + alpha[ch] * 3.0) == pytest.approx(10.0, abs=0.02)
