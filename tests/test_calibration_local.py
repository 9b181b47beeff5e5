"""The local pass (calibration.local): a program's channels measured at the program's own
voltages with the calibration's designs, and each curve shifted through the blended value
(calibration.local.blend_with_curve).

The board is the in-process twin (:class:`sim_backend.device.TwinDevice`), whose elements are
exactly their nominal curves, so :func:`calibration.nominal` is its true calibration; a
calibration that misses on some channels is made from it by shifting those curves (as a quick
calibration's curve misses where the true curve kinks between its levels)."""

from __future__ import annotations

import numpy as np
import pytest

import calibration
from calibration import stein
from calibration.local import (
    ShiftedCurve,
    blend_with_curve,
    corrected,
    local_configs,
    measure_local,
)
from sim_backend.device import TwinDevice

SMALL = dict(chains=128, samples=256, repeats=1, burn_tau=3.0, groups=8)


def _volts(dev, rng):
    """Program-like volts: every channel somewhere inside 10-90 % of its safe range."""
    return np.array([c.vmin + rng.uniform(0.1, 0.9) * (c.vmax - c.vmin) for c in dev.channel_map])


def _with_misses(cal, misses: dict):
    fits = list(cal.fits)
    for ch, shift in misses.items():
        fits[ch] = ShiftedCurve.of(fits[ch], shift, 0.0)
    return calibration.Calibration(fits, cal.adc, cal.nodes, cal.channel_map, identity=cal.identity,
                                   technology=cal.technology, entry="missing")


def test_blend_with_curve_weights_by_variance_and_trusts_the_local_value_where_the_curve_misses():
    # agreement within the noise: inverse-variance weights (curve sigma 0.01, local 0.02 -> w = 0.2)
    best, w = blend_with_curve(1.0, 0.01, 1.001, 0.02)
    assert w == pytest.approx(0.2) and best == pytest.approx(1.0002)
    # a miss of 25 curve sigmas: the curve's variance is at least the miss, the local value wins
    best, w = blend_with_curve(1.0, 0.01, 1.25, 0.02)
    assert w > 0.99 and abs(best - 1.25) < 0.003
    # an exact curve (sigma 0) that agrees keeps its value
    best, w = blend_with_curve(2.0, 0.0, 2.0, 0.05)
    assert w == 0.0 and best == 2.0


def test_shifted_curve_moves_values_and_inverse_together():
    dev = TwinDevice()
    nom = calibration.nominal(dev.channel_map)
    c = nom.curve(100)
    s = ShiftedCurve.of(c, 0.3, 1.0)
    v = np.array([-1.0, 0.5, 2.0])
    assert np.allclose(s.value(v), c.value(v) + 0.3)
    assert np.allclose(s.inverse(s.value(v)), v, atol=1e-9)
    assert s.branch == c.branch and s.span == c.span and np.allclose(s.sigma(v), c.sigma(v))
    assert ShiftedCurve.of(s, -0.1, 1.0).shift == pytest.approx(0.2)  # shifts add


def test_local_settings_put_the_asked_channels_at_the_program_volts():
    dev = TwinDevice()
    cmap = dev.channel_map
    g = stein.Graph.from_map(cmap, dev.n_nodes, dev.n_inputs)
    volts = _volts(dev, np.random.default_rng(1))
    match0 = {int(g.edge_ch[e]) for e in calibration.design.edge_colouring(g.edges, dev.n_nodes)[0]}
    asked = [int(g.q[0]), int(g.r[3]), int(g.b[5]), int(g.w_ch[0])] + sorted(match0)[:3]
    configs = local_configs(calibration.nominal(cmap), g, volts, asked)
    assert [cfg.name for cfg, _ in configs] == ["local-Q", "local-R", "local-BW", "local-edge-0"]
    grid = calibration.design.on_dac_grid(cmap, volts)
    for cfg, mine in configs:
        assert set(mine) <= set(asked)
        assert np.allclose(cfg.volts[mine], grid[mine])
        cmap.check(cfg.volts)  # every setting inside the safe ranges
    # the couplings of the edge setting's matching are at the program's volts, the others near 0
    edge_cfg = configs[-1][0]
    others = [int(ch) for ch in g.edge_ch if int(ch) not in match0]
    nominal_zero = np.array([cmap[ch].gain * edge_cfg.volts[ch] for ch in others])
    assert np.max(np.abs(nominal_zero)) < 0.05


def test_the_local_pass_finds_and_removes_a_curve_that_misses():
    """Three channels (a bias, a crossbar weight, a coupling) are calibrated 1.5-2 kT off (about 5 %
    of their full scale, more than 5 times the local pass's one-sigma error here); after the pass
    each is within 4 local sigmas of the truth at the program's voltage, and channels whose curve
    was right stay within 4 sigmas (about 1 in 16000 per channel for an unbiased pass).  A pass
    that changed nothing fails the first check."""
    dev = TwinDevice(seed=11)
    cmap = dev.channel_map
    g = stein.Graph.from_map(cmap, dev.n_nodes, dev.n_inputs)
    truth = calibration.nominal(cmap)
    volts = calibration.design.on_dac_grid(cmap, _volts(dev, np.random.default_rng(2)))
    match0 = [int(g.edge_ch[e]) for e in calibration.design.edge_colouring(g.edges, dev.n_nodes)[0]]
    b, w, c = int(g.b[2]), int(g.w_ch[4]), match0[1]
    misses = {b: 2.0, w: -1.5, c: 2.0}
    cal = _with_misses(truth, misses)
    asked = [int(x) for x in g.b[:8]] + [int(x) for x in g.w_ch[:8]] + match0[:8]
    pts = measure_local(dev, cal, volts, asked, **SMALL)
    assert sorted(pts.channels.tolist()) == sorted(asked) and pts.settings == 2
    new, rep = corrected(cal, pts)
    for ch, v, s in zip(pts.channels, pts.volts, pts.sigma):
        true = float(truth.curve(ch).value(v))
        err_before = abs(float(cal.curve(ch).value(v)) - true)
        err_after = abs(float(new.curve(ch).value(v)) - true)
        assert err_after < 4 * s, (ch, err_before, err_after, s)
        if ch in misses:
            assert err_before > 5 * s  # the miss was large against the pass's error
    assert rep["B"]["beyond_3_sigma"] >= 1 and rep["W"]["beyond_3_sigma"] >= 1 and rep["C"]["beyond_3_sigma"] >= 1
    # uploads go through the corrected curves: the volts that give a value move by the shift
    y = float(truth.curve(b).value(volts[b]))
    assert abs(new.volts_for(b, y) - volts[b]) < 4 * float(pts.sigma[pts.channels == b][0]) / abs(cmap[b].gain)


# ------------------------------------------------------------------------------ the demo's use of it
def _program(dev, bias):
    from tc_hw.model.params import Params

    net = dev.network
    n = net.n_nodes
    return Params(net, np.full(n, 5.0), np.zeros(n), np.full(n, 2.0), bias, np.full(net.n_edges, 3.0),
                  np.full(net.n_crossbar, -2.0))


def test_demo_rescales_least_where_a_shifted_curve_reaches_less_and_falls_back_where_none_fits():
    from types import SimpleNamespace

    from tc_hw.demo import Trained, _through_local

    dev = TwinDevice()
    cmap = dev.channel_map
    g = stein.Graph.from_map(cmap, dev.n_nodes, dev.n_inputs)
    curves = calibration.nominal(cmap)
    prog = _program(dev, np.linspace(-3, 3, dev.n_nodes))
    tr = Trained(prog, {}, prog, 1.0, 1.0)
    # node 0's quartic channel now reaches 1 % less far than the program's value (2 kT)
    r0 = int(g.r[0])
    top = curves.value_range(r0)[1]
    local = {}
    cal, program = _through_local(SimpleNamespace(channel_map=cmap), tr, _with_misses(curves, {r0: 1.98 - top}),
                                  curves, local, False)
    assert cal.entry == "missing" and "not_used" not in local
    assert (0.999 * 1.98 / 2.0) ** 0.25 - 1e-9 <= local["coordinate_scale"] < 1.0  # the least smaller scale
    calibration.map_params(program, cal, cmap)  # fits now
    # a bias the program needs at 0 that the shifted curve cannot reach: the curves alone, said so
    bias = np.linspace(-3, 3, dev.n_nodes)
    bias[5] = 0.0
    prog = _program(dev, bias)
    b5 = int(g.b[5])
    lo = curves.value_range(b5)[0]
    local = {}
    cal, program = _through_local(SimpleNamespace(channel_map=cmap), Trained(prog, {}, prog, 1.0, 1.0),
                                  _with_misses(curves, {b5: -lo + 0.5}), curves, local, False)
    assert cal is curves and local["coordinate_scale"] == 1.0 and f"ch {b5}" in local["not_used"]
