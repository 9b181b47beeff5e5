"""The twin backend and an ideal emulated board are the same device.

One program is run on :class:`sim_backend.device.TwinDevice` (in process) and on the emulator
with the ``ideal`` board (own process, real PyVISA over TCP).  Their per-node means and variances
must agree within sampling error: a z-test on the mean and on the variance of every node, with a
Bonferroni-sized bound so the test fails only for a real difference.
"""

from __future__ import annotations

import numpy as np
import pytest

from drivers.board import open_visa
from sim_backend.device import TwinDevice
from sim_backend.emulator.process import running_emulator
from tc_hw.model.device import armed

M = 4000
TIME_S = 1e-6  # one time constant: out of equilibrium, where a wrong time scale would show


def _program(cmap, rng) -> np.ndarray:
    """Safe random voltages: confining self terms, moderate couplings, biases and crossbar."""
    volts = np.zeros(len(cmap))
    for c in cmap:
        if c.kind in ("Q", "R"):
            volts[c.index] = rng.uniform(0.1, 0.4)
        else:
            volts[c.index] = rng.uniform(-0.2, 0.2)
    return volts


def _moments(dev, volts, inputs):
    dev.set_channels(volts)
    dev.set_inputs(inputs)
    with armed(dev):
        v = dev.acquire("reset", TIME_S, M).volts  # (P, M, n)
    return v.mean(axis=1), v.var(axis=1, ddof=1), dev.get_channels()


@pytest.fixture(scope="module")
def ideal_board(tmp_path_factory):
    with running_emulator(board="ideal", truth=False, workdir=tmp_path_factory.mktemp("ideal")) as emu:
        with open_visa(emu.tcp, timeout_s=30) as board:
            yield board


def test_twin_device_and_ideal_emulator_agree(ideal_board):
    twin = TwinDevice("ideal", seed=3)
    assert twin.n_nodes == ideal_board.n_nodes and twin.n_channels == ideal_board.n_channels
    assert [c.kind for c in twin.channel_map] == [c.kind for c in ideal_board.channel_map]
    rng = np.random.default_rng(0)
    volts = _program(ideal_board.channel_map, rng)
    inputs = rng.uniform(-1, 1, (2, ideal_board.n_inputs))
    mean_t, var_t, applied_t = _moments(twin, volts, inputs)
    mean_b, var_b, applied_b = _moments(ideal_board, volts, inputs)
    np.testing.assert_allclose(applied_t, applied_b, atol=1e-6)  # same DAC quantization
    # the mean's standard error; the variance's, for near-Gaussian samples: var * sqrt(2/(M-1))
    se_mean = np.sqrt((var_t + var_b) / M)
    se_var = np.sqrt(2.0 / (M - 1) * (var_t**2 + var_b**2))
    z_bound = 4.5  # ~1e-5 two-sided per node, Bonferroni over 2 x P x n = 128 tests: p ~ 1e-3
    assert np.all(var_t > 1e-4), "the program must fluctuate, or the test proves nothing"
    assert np.max(np.abs(mean_t - mean_b) / se_mean) < z_bound
    assert np.max(np.abs(var_t - var_b) / se_var) < z_bound


def test_a_different_program_is_detected(ideal_board):
    """The same comparison sees a 20 % change of the self terms: the test has power."""
    twin = TwinDevice("ideal", seed=4)
    rng = np.random.default_rng(1)
    volts = _program(ideal_board.channel_map, rng)
    inputs = rng.uniform(-1, 1, (2, ideal_board.n_inputs))
    kinds = np.array([c.kind for c in ideal_board.channel_map])
    other = volts.copy()
    other[kinds == "Q"] *= 1.2
    _, var_t, _ = _moments(twin, other, inputs)
    _, var_b, _ = _moments(ideal_board, volts, inputs)
    se_var = np.sqrt(2.0 / (M - 1) * (var_t**2 + var_b**2))
    assert np.max(np.abs(var_t - var_b) / se_var) > 4.5
