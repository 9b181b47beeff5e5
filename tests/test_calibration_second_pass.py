"""The residual-driven second pass (calibration.second_pass): which channels are flagged, where
the extra levels go, and which settings are acquired first.  Pure functions on synthetic points
of the calibration's own edge design (6 levels over the safe range plus many points at the
coupling's zero), Gaussian errors of a stated sigma, against curves the pass never sees."""

from __future__ import annotations

import numpy as np
import pytest

from calibration import design, second_pass
from calibration.second_pass import flag_channel, midpoints, plan_requests
from tc_hw.model.device import Channel

C = Channel(72, "C", 0, 1, -4.4, 4.4, 0.5, 0.0)
STEP = 0.2  # 6 edge levels


def _edge_points(f, sigma, seed, levels=6, zero_points=60):
    rng = np.random.default_rng(seed)
    v = np.concatenate([np.linspace(C.vmin, C.vmax, levels), np.full(zero_points, 0.05)])
    return v, f(v) + rng.normal(0.0, sigma, len(v)), np.full(len(v), sigma)


def _kinked(v):  # slope 0.3/V below +1.3 V, 0.75/V above: a kink between the levels at 0.88 and 2.64 V
    return np.where(v < 1.3, 0.3 * (v - 1.3), 0.75 * (v - 1.3)) + 0.4


def _smooth(v):  # mildly saturating (slope 0.37/V at 0 V, 0.26/V at the ends), no kink
    return 2.2 * np.tanh(v / 6.0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_kink_between_levels_is_flagged_and_bracketed(seed):
    v, y, s = _edge_points(_kinked, 0.01, seed)
    flag = flag_channel(C, v, y, s, STEP)
    assert flag is not None and flag.channel == 72 and flag.score > second_pass.FLAG_SCORE
    kink = (1.3 - C.vmin) / (C.vmax - C.vmin)
    # the kink's interval between two levels gets a midpoint (0.7: levels 0.6 and 0.8 around 0.648)
    assert min(abs(np.array(flag.fractions) - kink)) <= STEP / 2 + 1e-9
    assert 0.7 in flag.fractions
    assert all(0.0 < f < 1.0 for f in flag.fractions) and list(flag.fractions) == sorted(set(flag.fractions))


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_a_smooth_curve_is_not_flagged(seed):
    """Power: with 6 seeds a false-flag rate above ~40 % would fail this with probability > 95 %."""
    v, y, s = _edge_points(_smooth, 0.01, seed)
    assert flag_channel(C, v, y, s, STEP) is None


def test_the_extra_levels_resolve_the_kink():
    """With the midpoints the pass asks for added, the fitted curve's error on the kinked
    element drops (the point of the pass), at the same noise."""
    v, y, s = _edge_points(_kinked, 0.01, seed=4)
    flag = flag_channel(C, v, y, s, STEP)
    from calibration.curves import fit_curve

    grid = np.linspace(C.vmin, C.vmax, 201)
    full = np.abs(_kinked(grid)).max()
    before = np.median(np.abs(fit_curve(C, v, y, s).raw_value(grid) - _kinked(grid))) / full
    extra = np.array([C.vmin + f * (C.vmax - C.vmin) for f in flag.fractions])
    rng = np.random.default_rng(9)
    v2 = np.concatenate([v, extra])
    y2 = np.concatenate([y, _kinked(extra) + rng.normal(0, 0.01, len(extra))])
    after = np.median(np.abs(fit_curve(C, v2, y2, np.full(len(v2), 0.01)).raw_value(grid) - _kinked(grid))) / full
    assert after < 0.7 * before, (before, after)


def test_midpoints_stay_inside_the_range():
    assert midpoints(C, C.vmin + 0.05, STEP) == (0.106,)
    assert midpoints(C, 0.0, STEP) == (0.4, 0.6)


def test_requests_most_wanted_first_within_the_budget():
    wanted = {("Q",): [0.375, 0.375, 0.5], ("edge", 2): [0.3, 0.5, 0.3, 0.3], ("edge", 0): [0.7]}
    plan = plan_requests(wanted, 3)
    assert plan[0] == (("edge", 2), 0.3) and plan[1] == (("Q",), 0.375) and len(plan) == 3
    assert plan_requests(wanted, 0) == []
    assert len(plan_requests(wanted, 100)) == 5


def test_self_at_matches_the_planned_sweep():
    """An extra self-term level at a grid fraction is the planned setting of that level."""
    from calibration import stein
    from sim_backend.device import TwinDevice

    d = TwinDevice()
    cm = d.channel_map
    g = stein.Graph.from_map(cm, d.n_nodes, d.n_inputs)
    know = design.Knowledge(cm)
    plan = design.plan_self(cm, g, know, 3.0, 1.5, 13)
    assert np.array_equal(design.self_at(cm, g, know, "Q", 4 / 12).volts, plan[4].volts)
    assert np.array_equal(design.self_at(cm, g, know, "R", 0.0).volts, plan[13].volts)
    fb, fw = design.bw_pairs(13)[5]
    assert np.array_equal(design.self_at(cm, g, know, "BW", (fb / 12, fw / 12)).volts, plan[26 + 5].volts)
    with pytest.raises(ValueError, match="sweep"):
        design.self_at(cm, g, know, "C", 0.5)


def test_second_pass_settings_put_the_flagged_kind_at_the_fraction():
    """The routine's second-pass settings (calibration.routine._Session._extra_config): a self-term
    request moves that kind of every node to the fraction; a B request pairs it with W half a range
    away (and the reverse for W); an edge request moves that matching's couplings only."""
    from calibration import routine, stein
    from calibration.design import level_volts
    from sim_backend.device import TwinDevice

    d = TwinDevice()
    cm = d.channel_map
    g = stein.Graph.from_map(cm, d.n_nodes, d.n_inputs)
    opts = routine._options({})
    s = routine._Session(d, None, opts, False, g, None, None, design.Knowledge(cm))
    for kind, chans in (("Q", g.q), ("R", g.r), ("B", g.b), ("W", g.w_ch)):
        cfg = s._extra_config((kind,), 0.375, [])
        assert cfg.name == f"extra-{kind}@0.375"
        assert all(np.isclose(cfg.volts[c], level_volts(cm[int(c)], 0.375)) for c in chans)
    cfg = s._extra_config(("B",), 0.375, [])
    assert all(np.isclose(cfg.volts[c], level_volts(cm[int(c)], 0.875)) for c in g.w_ch)
    matchings = design.edge_colouring(g.edges, g.n_nodes)
    cfg = s._extra_config(("edge", 1), 0.3, matchings)
    moved = {int(g.edge_ch[e]) for e in matchings[1]}
    assert all(np.isclose(cfg.volts[c], level_volts(cm[c], 0.3)) for c in moved)
    others = [int(c) for c in g.edge_ch if int(c) not in moved]
    assert not any(np.isclose(cfg.volts[c], level_volts(cm[c], 0.3)) for c in others)
    assert all(cm[c].vmin <= cfg.volts[c] <= cm[c].vmax for c in range(len(cm)))
