"""A board that aged since its calibration (board-file key ``age_h``), training any task with its
exact readout projected out, and the demo's account of what each step of the loop closed."""

from __future__ import annotations

import numpy as np
import pytest

from sim_backend.emulator.board import DEFAULT_BOARD_TOML, Board, BoardFileError, parse_board
from sim_backend.emulator.instrument import Instrument
from sim_backend.emulator.nonideal import element_values
from tc_hw.demo import gap_steps
from tc_hw.model.network import all_to_all
from tc_hw.model.params import Params
from tc_hw.model.tasks import Task
from tc_hw.train.task import readout_gradient, train_task_varpro


class _Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def _with_age(age_h):
    return f"age_h = {age_h}\n" + DEFAULT_BOARD_TOML


# ----------------------------------------------------------------------------- age_h
def test_age_h_is_optional_and_refused_when_negative():
    assert parse_board(DEFAULT_BOARD_TOML).age_h == 0.0
    assert parse_board(_with_age(6.5)).age_h == 6.5
    with pytest.raises(BoardFileError, match="age_h"):
        parse_board(_with_age(-1))


def test_an_aged_board_starts_its_clock_age_h_on_and_its_elements_have_drifted():
    text = DEFAULT_BOARD_TOML.replace("adc_noise_spread = 0.25\n", "adc_noise_spread = 0.25\ndrift_per_hour = 0.02\n")
    fresh, aged = Board(parse_board(text)), Board(parse_board("age_h = 6.0\n" + text))
    clock = _Clock()
    i_fresh, i_aged = Instrument(fresh, clock=clock), Instrument(aged, clock=clock)
    try:
        clock.t += 10.0
        assert i_fresh.elapsed_s() == 10.0
        assert i_aged.elapsed_s() == pytest.approx(6 * 3600 + 10.0)
    finally:
        i_fresh.close()
        i_aged.close()
    # the same hidden truth (same seed); the values differ by the drift of 6 h, per channel
    np.testing.assert_array_equal(fresh.truth["channels"]["gain_factor"], aged.truth["channels"]["gain_factor"])
    volts = np.full(fresh.n_channels, 1.0)
    v0 = element_values(fresh.truth, volts, 300.0, 0.0)
    v6 = element_values(aged.truth, volts, 300.0, 6 * 3600.0)
    d = np.asarray(fresh.truth["channels"]["drift_per_s"])
    np.testing.assert_allclose(v6, v0 * (1 + d * 6 * 3600.0), rtol=1e-12, atol=1e-12)
    assert np.max(np.abs(v6 / np.where(v0 != 0, v0, 1) - 1)[v0 != 0]) > 0.05  # up to 12 % after 6 h at 2 %/h


def test_age_h_zero_leaves_the_board_unchanged():
    a, b = Board(parse_board(DEFAULT_BOARD_TOML)), Board(parse_board(_with_age(0)))
    clock = _Clock(5.0)
    ia, ib = Instrument(a, clock=clock), Instrument(b, clock=clock)
    try:
        assert ia.elapsed_s() == ib.elapsed_s() == 0.0
    finally:
        ia.close()
        ib.close()
    np.testing.assert_array_equal(a.truth["channels"]["gain_factor"], b.truth["channels"]["gain_factor"])


# ----------------------------------------------------------------------------- training a task
def _task(n=64, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, (3, 4))
    labels = rng.integers(0, 3, n)
    return Task("c3", centres[labels] + 0.5 * rng.normal(size=(n, 4)), "cross-entropy", labels=labels)


@pytest.mark.parametrize("loss", ["cross-entropy", "mse"])
def test_readout_gradient_matches_finite_differences(loss):
    rng = np.random.default_rng(3)
    t = _task(12)
    if loss == "mse":
        t = Task("m", t.inputs, "mse", targets=rng.normal(size=(12, 2)))
    xbar = rng.normal(size=(12, 3))
    f = rng.normal(size=(t.n_outputs, 3))
    g = readout_gradient(t, xbar, f)
    h = 1e-6
    for p, k in [(0, 0), (5, 2), (11, 1)]:
        e = np.zeros_like(xbar)
        e[p, k] = h
        num = (t.score((xbar + e) @ f.T) - t.score((xbar - e) @ f.T)) / (2 * h)
        assert g[p, k] == pytest.approx(num, rel=1e-5, abs=1e-9)


def test_training_a_classifier_lowers_its_loss_and_ends_with_its_exact_readout():
    t = _task()
    net = all_to_all(4, 3, 4)
    rng = np.random.default_rng(0)
    n = net.n_nodes
    start = Params(net, np.ones(n), np.zeros(n), np.ones(n), np.zeros(n), rng.normal(0, 0.1, net.n_edges),
                   rng.normal(0, 0.1, net.n_crossbar), kT=0.5, readout=np.zeros((3, 3)))
    trained, m = train_task_varpro(start, t, bound=2.0, iterations=40, batch=32, samples=4, final_samples=64,
                                   dt_final=1e-2, seed=1)
    assert trained.readout.shape == (3, 3)
    assert max(np.abs(trained.crossbar).max(), np.abs(trained.coupling).max(), np.abs(trained.bias).max()) <= 2.0
    # the near-zero start computes almost nothing; trained, the classes separate (chance: ln 3 = 1.10)
    assert m["start_loss"] > 0.8
    assert m["loss"] < 0.6 * m["start_loss"]
    assert m["accuracy"] > m["start_accuracy"] + 0.15


# ----------------------------------------------------------------------------- the demo's gap
def test_gap_steps_split_the_gap_among_the_steps():
    refined = {"uploaded_loss": 0.010, "readout_fit_loss": 0.006, "refined_loss": 0.004, "kept": "ga",
               "method": "ga"}
    g = gap_steps(0.002, 0.5, 0.011, refined)
    assert g["calibration"] == pytest.approx((0.5 - 0.011) / (0.5 - 0.002))
    assert g["readout_fit"] == pytest.approx(0.004 / 0.008)
    assert g["analog_refinement"] == pytest.approx(0.002 / 0.008)
    assert g["left"] == pytest.approx(0.25)
    assert g["readout_fit"] + g["analog_refinement"] + g["left"] == pytest.approx(1.0)
    # the method's program not kept: refinement closed nothing on top of the readout fit
    g = gap_steps(0.002, None, 0.011, {**refined, "kept": "readout fit", "refined_loss": 0.006})
    assert g["analog_refinement"] == 0.0 and g["calibration"] is None
    # no gap: nothing to split
    g = gap_steps(0.02, 0.5, 0.011, refined)
    assert g["readout_fit"] is None and g["left"] is None


def test_the_demos_board_is_the_same_board_age_h_later(tmp_path):
    """The embedded demo board, restarted after the calibration, is the same board (identity, hidden
    truth) on a clock ``age_h`` on: its temperature follows the truth's cycle at that clock."""
    from sim_backend.emulator.nonideal import board_temperature
    from tc_hw.backends import open_device
    from tc_hw.demo import _EmbeddedBoard

    age_h = 225.0 / 3600.0  # a quarter of the 900 s temperature cycle: the temperature moved
    session = _EmbeddedBoard(tmp_path, seed=3, age_h=age_h)
    try:
        dev = open_device(session.resource)
        ident, truth0 = dev.identity, session._emu.truth()
        dev = session.after_calibration(dev, progress=False)
        try:
            temp = dev.temperature()
            truth1 = session._emu.truth()
            assert dev.identity == ident
        finally:
            dev.close()
    finally:
        session.stop()
    np.testing.assert_array_equal(truth0["channels"]["gain_factor"], truth1["channels"]["gain_factor"])
    np.testing.assert_array_equal(truth0["channels"]["drift_per_s"], truth1["channels"]["drift_per_s"])
    assert np.max(np.abs(truth1["channels"]["drift_per_s"])) > 0  # the demo board drifts
    # the aged board's clock is age_h on (plus at most a minute since its start: the cycle is slow)
    expected = [board_temperature(truth1, age_h * 3600.0 + s) for s in np.linspace(0.0, 60.0, 61)]
    assert min(expected) - 1e-3 <= temp <= max(expected) + 1e-3
    fresh = [board_temperature(truth1, s) for s in np.linspace(0.0, 60.0, 61)]
    assert not min(fresh) - 1e-3 <= temp <= max(fresh) + 1e-3  # a fresh clock would read otherwise
