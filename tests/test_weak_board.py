"""Weak boards (elements a tenth of the default's relative to kT): the weak-board plan and the
variable-projection trainer get the cos(2 pi z) computer off the loss-1/2 plateau, and the twin
predicts the board with the board's own per-node time constants."""

import math

import numpy as np
import pytest

from calibration.mapping import on_board_mobility
from tc_hw import Network, Params
from tc_hw.demo import board_computer, plan_for_board, plan_for_weak_board, _is_weak, _read_every_node
from tc_hw.model.device import Channel, ChannelMap
from tc_hw.model.network import layered


def weak_channel_map(width=8, depth=4, gain=0.42):
    """The nominal channel map of a layered board with gains ``gain`` per volt (default 4: a tenth)."""
    net = layered(width, depth, 1)
    spans = {"Q": (-2.5, 5.0), "R": (0.0, 5.0), "B": (-5.0, 5.0), "C": (-5.0, 5.0), "W": (-5.0, 5.0)}
    rows = [("Q", i, -1) for i in range(net.n_nodes)] + [("R", i, -1) for i in range(net.n_nodes)]
    rows += [("B", i, -1) for i in range(net.n_nodes)] + [("C", int(a), int(b)) for a, b in net.edges]
    rows += [("W", int(k), int(j)) for k, j in net.crossbar]
    return ChannelMap(tuple(Channel(i, k, a, b, *spans[k], gain, 0.0) for i, (k, a, b) in enumerate(rows)))


def test_a_weak_board_gets_the_weak_plan_with_quartic_wells():
    cmap = weak_channel_map()
    base, nodes = board_computer(cmap)
    assert _is_weak(plan_for_board(base, nodes, cmap))  # the default plan is at its smallest scale
    base2, nodes2 = board_computer(cmap, depth=2)
    plan = plan_for_weak_board(base2, nodes2, cmap)
    # quadratic terms switched off, quartic terms 0.97 of the reach (0.9 margin) at the top: R = 0.42 * 5 V
    r_board = plan.quartic * plan.scale**4 / base2.kT
    assert np.allclose(plan.quadratic, 0) and np.allclose(r_board, 0.97 * 0.9 * 0.42 * 5.0)
    assert plan.scale == pytest.approx((0.97 * 0.9 * 2.1 * 0.1) ** 0.25)
    # bounds: what each kind's reach leaves at lam, in program units (B, W: lam; C: lam^2), input line 4 z
    assert plan.bound["bias"] == pytest.approx(0.97 * 0.9 * 2.1 * 0.1 / plan.scale)
    assert plan.bound["coupling"] == pytest.approx(0.97 * 0.9 * 2.1 * 0.1 / plan.scale**2)
    assert plan.bound["crossbar"] == pytest.approx(4 * plan.bound["bias"]) and plan.input_scale == 4.0
    # per-element bounds: here every channel has the same reach, so they are the kind's bounds
    lo, hi = plan.element_bounds["coupling"]
    assert lo.shape == hi.shape == (base2.network.n_edges,) and np.allclose(hi, plan.bound["coupling"])
    assert np.allclose(lo, -hi) and np.allclose(plan.element_bounds["crossbar"][1], plan.bound["crossbar"])


def test_per_element_bounds_follow_each_channels_own_reach():
    """One bias channel with an offset (reach [-0.2, 2.1] instead of +-2.1) narrows that element only."""
    from dataclasses import replace

    cmap = weak_channel_map()
    base, nodes = board_computer(cmap, depth=2)
    j = nodes[3]
    ch = next(c for c in cmap if c.kind == "B" and c.a == j)
    chans = list(cmap.channels)
    chans[ch.index] = replace(ch, vmin=-0.2 / 0.42)
    plan = plan_for_weak_board(base, nodes, ChannelMap(tuple(chans)))
    lo, hi = plan.element_bounds["bias"]
    factor = 0.97 * 0.1 / plan.scale
    assert lo[3] == pytest.approx(-0.2 * 0.9 * factor) and hi[3] == pytest.approx(2.1 * 0.9 * factor)
    others = np.delete(np.arange(len(lo)), 3)
    assert np.allclose(lo[others], -2.1 * 0.9 * factor) and plan.bound["bias"] == pytest.approx(0.2 * 0.9 * factor)


def test_variable_projection_escapes_the_plateau_on_a_weak_board():
    """Small sizes (10-30 s here, depending on the load): the weak-board computer trained by variable
    projection reaches a twin loss far below the plateau's 0.5 (a constant output).  The loss is
    measured on 50 inputs x 1000 runs (dt 1e-2, the training's): its sampling noise adds about
    var(y) / 1000 < 0.02 and its standard error is below 0.02, so 0.3 is over ten standard errors
    below the plateau (a trainer that stays on it fails)."""
    from tc_hw.train.cos import readout_lstsq, train_cos_varpro, twin_cos_loss

    cmap = weak_channel_map()
    base, nodes = _read_every_node(*board_computer(cmap, depth=2))
    plan = plan_for_weak_board(base, nodes, cmap)
    params, metrics = train_cos_varpro(plan.apply(base, nodes), bound=plan.element_bounds, iterations=150, points=24,
                                       samples=32, seed=3)
    params = readout_lstsq(params, points=50, samples=1000, dt=1e-2, seed=11)
    loss = twin_cos_loss(params, points=50, samples=1000, dt=1e-2, seed=12)
    assert loss < 0.3, loss
    assert metrics["iterations"] == 150 and len(metrics["history"]) == 150
    assert np.mean(metrics["history"][-30:]) < np.mean(metrics["history"][:10])  # it descends


def test_per_node_mobility_reaches_the_twin_prediction():
    """Two uncoupled harmonic nodes (Q = 1, bias 0.5, kT 0.1) from x = 0: the mean at t = 1 is the
    Ornstein-Uhlenbeck ``(b / 2Q)(1 - exp(-2 Q mu t))`` with each node's own mobility ``mu``: the
    calibrated per-node factors (1 and 0.05) reach the twin; with all factors 1 the program is
    returned unchanged (scalar mobility, bitwise the same runs)."""
    from sim_backend.twin import sample_reset

    net = Network(2, np.zeros((0, 2), int), 1, [(0, 0), (0, 1)], [0, 1])
    prog = Params(net, np.ones(2), np.zeros(2), np.zeros(2), np.full(2, 0.5), np.zeros(0), np.zeros(2), kT=0.1,
                  readout=np.ones((1, 2)))

    class Cal:
        def __init__(self, factors):
            self.factors = np.asarray(factors, float)

        def node_mobility(self, mobility=1.0):
            return mobility * self.factors

    assert on_board_mobility(prog, Cal([1.0, 1.0, 1.0])) is prog  # another board size: unchanged
    assert on_board_mobility(prog, Cal([1.0, 1.0])) is prog and on_board_mobility(prog, None) is prog
    board = on_board_mobility(prog, Cal([0.3, 1.0, 0.05]), nodes=[1, 2])  # computer nodes on board nodes 1, 2
    assert np.array_equal(board.mobility, [1.0, 0.05])
    m = 4000
    x = sample_reset(board, np.zeros((1, 1)), 1.0, m, dt=1e-3, seed=5).x[0, :, -1, :]
    expect = [0.25 * (1 - math.exp(-2 * mu)) for mu in (1.0, 0.05)]
    se = x.std(0) / math.sqrt(m)
    assert np.all(np.abs(x.mean(0) - expect) < 4 * se), (x.mean(0), expect, se)
    assert abs(x.mean(0)[1] - 0.25 * (1 - math.exp(-2))) > 20 * se[1]  # the scalar mobility would be far off


def test_weak_readings_last_long_enough_for_the_equilibrium_response():
    """A quartic well ``x^4 - h x`` at kT 0.1 (the weak-board computer's nodes), reset at ``x = 0``:
    at the weak-board mobility (:func:`tc_hw.demo.weak_mobility`) the mean at ``t_f = 1`` is within
    10 % of the Boltzmann mean (quadrature, an independent reference); at mobility 1 (the old
    readings, about 1.3 relaxation times) it is 27-36 % short, so the readout sees a nearly linear,
    shrunken response.  4000 runs per field: standard error about 0.005, 2-4 % of the means, so
    both bounds hold at over 4 standard errors (measured ratios 0.92-0.98 against 0.64-0.73)."""
    from scipy.integrate import quad

    from sim_backend.twin import sample_reset
    from tc_hw.demo import quartic_relaxation_time, weak_mobility

    kt = 0.1
    # the relaxation time's Boltzmann <x^2> against quadrature
    x2 = quad(lambda x: x * x * math.exp(-x**4 / kt), -3, 3)[0] / quad(lambda x: math.exp(-x**4 / kt), -3, 3)[0]
    assert quartic_relaxation_time(1.0, kt) == pytest.approx(1 / (12 * x2), rel=1e-6)
    assert weak_mobility(kT=kt) == pytest.approx(6.0 * quartic_relaxation_time(1.0, kt))
    net = Network(1, np.zeros((0, 2), int), 1, [(0, 0)], [0])
    for h in (0.1, 0.2, 0.4):
        z = quad(lambda x: math.exp(-(x**4 - h * x) / kt), -3, 3)[0]
        eq = quad(lambda x: x * math.exp(-(x**4 - h * x) / kt), -3, 3)[0] / z
        ratio = {}
        for mob in (1.0, weak_mobility(kT=kt)):
            p = Params(net, np.zeros(1), np.zeros(1), np.ones(1), np.full(1, h), np.zeros(0), np.zeros(1), kT=kt,
                       readout=np.ones((1, 1)), mobility=mob)
            ratio[mob] = sample_reset(p, np.zeros((1, 1)), 1.0, 4000, dt=1e-3, seed=5).x[0, :, -1, 0].mean() / eq
        short, weak = ratio[1.0], ratio[weak_mobility(kT=kt)]
        assert 0.9 < weak < 1.05 and short < 0.8, (h, ratio)


def test_field_error_penalty_is_the_ornstein_uhlenbeck_response():
    """One harmonic node (Q = 1, kT 0.1, mobility 1) read at t = 1 from x = 0 responds to a field
    error e with exactly g e, g = (1 - exp(-2))/2 (linear dynamics: the same runs with and without
    the error differ by that, with no sampling noise).  Errors drawn N(0, c^2 + z^2 w^2) for 250
    inputs: the penalty g^2 mean(e^2) is c^2 g^2 + w^2 g^2 mean(z^2) within the spread of the mean
    of 250 squared normals (relative sd sqrt(2/250) = 9 %; 30 % is over 3 sd); the field errors
    themselves have that variance; and the penalized readout shrinks as the penalty grows."""
    from tc_hw.train.cos import field_error_penalty, field_errors, readout_lstsq

    net = Network(1, np.zeros((0, 2), int), 1, [(0, 0)], [0])
    prog = Params(net, np.ones(1), np.zeros(1), np.zeros(1), np.zeros(1), np.zeros(0), np.full(1, -1.0), kT=0.1,
                  readout=np.ones((1, 1)))
    g = (1 - math.exp(-2.0)) / 2
    c, w = 0.05, 0.08
    s = field_error_penalty(prog, (np.full(1, c), np.full(1, w)), samples=8, dt=1e-2, seed=4)
    z = np.linspace(0, 1, 250)
    expect = g**2 * (c**2 + w**2 * np.mean(z**2))
    assert s.shape == (1, 1) and abs(s[0, 0] / expect - 1) < 0.3, (s, expect)
    e = field_errors((np.full(1, c), np.full(1, w)), np.full(20000, 0.5), np.random.default_rng(0))
    assert e.shape == (20000, 1) and e.std() == pytest.approx(math.sqrt(c**2 + 0.25 * w**2), rel=0.03)
    f0 = readout_lstsq(prog, points=50, samples=200, dt=1e-2, seed=1).readout[0, 0]
    f1 = readout_lstsq(prog, points=50, samples=200, dt=1e-2, seed=1, penalty=np.full((1, 1), 0.01)).readout[0, 0]
    assert abs(f1) < abs(f0)


def test_weak_field_sigma_adds_bias_coupling_and_crossbar_errors():
    """On a board whose channels all reach the same range, an error of 1 % of each channel's value
    range gives every node the bias error 0.01 * 2 b / (0.97 * 0.9) (b: the bias bound, SLACK and
    margin inside the reach), plus each coupling's error times the Boltzmann rms of its neighbour's
    well (quadrature of exp(-J4 x^4 / kT)); crossbar errors only on the input layer, times z."""
    from scipy.integrate import quad

    from tc_hw.demo import weak_field_sigma

    cmap = weak_channel_map()
    base, nodes = _read_every_node(*board_computer(cmap, depth=2))
    plan = plan_for_weak_board(base, nodes, cmap)
    const, per_z = weak_field_sigma(base, plan, nodes, error=0.01)
    net = base.network
    j4 = float(plan.quartic[nodes[0]])
    x2 = quad(lambda x: x * x * math.exp(-j4 * x**4 / 0.1), -3, 3)[0] / quad(lambda x: math.exp(-j4 * x**4 / 0.1),
                                                                               -3, 3)[0]
    sd = {k: 0.01 * 2 * plan.bound[k] / (0.97 * 0.9) for k in ("bias", "coupling", "crossbar")}
    degree = np.bincount(net.edges.ravel(), minlength=net.n_nodes)
    assert np.allclose(const, np.sqrt(sd["bias"] ** 2 + degree * x2 * sd["coupling"] ** 2), rtol=1e-6)
    fed = np.zeros(net.n_nodes, bool)
    fed[net.crossbar[:, 1]] = True
    assert np.allclose(per_z[fed], sd["crossbar"]) and np.all(per_z[~fed] == 0) and fed.sum() == 8
