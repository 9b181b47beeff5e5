"""The board zoo and per-node time constants on the emulator: reproducible draws, the truth dump,
a zoo board served over PyVISA, and node relaxation at each node's own time constant."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from drivers import open_visa
from sim_backend.emulator import nonideal as ni
from sim_backend.emulator.acquire import Request, run_acquisition
from sim_backend.emulator.board import Board, BoardFileError, board_from_name_or_path, parse_board
from sim_backend.emulator.process import REPO_ROOT
from sim_backend.emulator.truth import adc_volts, dump_truth, element_value, load_truth, node_tau_s
from sim_backend.emulator.zoo import draw_board

from tests.emulator_process import running_emulator


def _same_desc(a, b) -> bool:
    return a.network.same_as(b.network) and replace(a, network=None) == replace(b, network=None)


def _same_truth(a: dict, b: dict) -> bool:
    return all(np.array_equal(np.asarray(a["channels"][k]), np.asarray(b["channels"][k])) for k in a["channels"]) and all(
        np.array_equal(a["adc"][k], b["adc"][k]) for k in ("gain", "offset_v", "noise_v", "inl"))


# ----------------------------------------------------------------------------- the draw
def test_same_seed_same_board_different_seeds_differ():
    a, b = Board(draw_board(11)), Board(draw_board(11))
    assert _same_desc(a.desc, b.desc) and _same_truth(a.truth, b.truth)
    others = [Board(draw_board(s)) for s in (12, 13)]
    for o in others:
        assert o.desc.seed != a.desc.seed
        same_size = o.n_channels == a.n_channels
        assert not same_size or not _same_truth(o.truth, a.truth)
        assert o.desc.tau_node_factors != a.desc.tau_node_factors


def test_zoo_covers_the_families_the_issue_asks_for():
    """Over 24 seeds: every curve family, JJ and RLC, weak and strong boards, 16-32 nodes with
    couplings and an input line, R elements that cross zero inside their safe range, tau spread,
    capacities in 2^22..2^26, and every non-periodic curve monotonic on its safe range."""
    shapes, techs, gains = set(), set(), []
    crossing_r = 0
    for seed in range(24):
        d = draw_board(seed)
        b = Board(d)
        net = d.network
        assert 16 <= net.n_nodes <= 32 and net.n_edges > 0 and net.n_inputs >= 1 and net.n_crossbar > 0
        assert 2**22 <= d.capacity_readings <= 2**26 and d.work_limit_element_steps >= 2e9
        f = np.asarray(d.tau_node_factors)
        assert f.shape == (net.n_nodes,) and 0.8 < f.min() < f.max() < 1.2 and f.max() / f.min() > 1.05
        ch = b.truth["channels"]
        shapes |= set(np.asarray(ch["shape"]).tolist())
        techs.add(d.technology)
        gains.append(d.kinds["Q"].gain / 4.0)
        v = b.truth["curves"]["value"]
        periodic = np.asarray(ch["period"]) > 0
        dv = np.diff(v[~periodic], axis=1)
        assert np.all(dv > 0), f"seed {seed}: a non-periodic curve is not increasing"
        r = v[b.layout.slices["R"]]
        crossing_r += int(((r[:, 0] < 0) & (r[:, -1] > 0)).sum())
        assert np.any(b.truth["adc"]["inl"]) and np.any(ch["dac_inl_v"]) and np.any(ch["xtalk_prev"])
    assert shapes == {0, 1, 2, 3} and techs == {"RLC", "JJ"}
    assert min(gains) < 0.2 and max(gains) > 0.7
    assert crossing_r > 50


def test_default_board_has_no_zoo_physics():
    b = Board(board_from_name_or_path(None))
    ch = b.truth["channels"]
    assert not np.any(ch["shape"]) and not np.any(ch["dac_inl_v"]) and not np.any(b.truth["adc"]["inl"])
    assert b.desc.tau_node_factors is None and b.params(np.zeros(b.n_channels), 300.0).mobility == 1.0
    assert b.desc.capacity_readings == 2**27 and b.desc.work_limit_element_steps is None


def test_family_formulas_against_hand_evaluation():
    """Each family evaluated by hand at one voltage (independent of the vectorised code)."""
    ch = {"gain_nominal": np.array([2.0] * 4), "gain_factor": np.array([1.1] * 4), "tempco_per_k": np.zeros(4),
          "offset_v": np.array([0.3] * 4), "nonlin": np.zeros(4), "period": np.zeros(4), "vmin": np.zeros(4),
          "vmax": np.full(4, 5.0), "shape": np.array([0, 1, 2, 3]), "shape_k": np.array([0.0, 0.8, -0.6, 0.0]),
          "kink_hi_v": np.full(4, 4.0), "kink_hi_slope": np.array([0, 0, 0, 0.5]),
          "kink_lo_v": np.full(4, 1.0), "kink_lo_slope": np.array([0, 0, 0, -0.4]), "dac_inl_v": np.zeros(4)}
    g, w = 2.2, 4.5 + 0.3
    got = ni.element_curve(ch, 4.5, 300.0, 300.0)
    want = [g * w, g * 5 * np.tanh(0.8 * w / 5) / 0.8, g * 5 * (np.exp(-0.6 * w / 5) - 1) / -0.6, g * (w + 0.5 * 0.5)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    got_lo = ni.element_curve(ch, 0.25, 300.0, 300.0)[3]
    assert got_lo == pytest.approx(g * (0.55 - (-0.4) * 0.75))


# ----------------------------------------------------------------------------- board files, truth
def test_board_file_zoo_key_and_tau_node_factors(tmp_path):
    d = parse_board("zoo = 5\nname = \"bench\"\n")
    ref = draw_board(5)
    assert d.name == "bench" and d.network.same_as(ref.network) and d.tau_node_factors == ref.tau_node_factors
    with pytest.raises(BoardFileError, match="zoo"):
        parse_board("zoo = 5\ntau_s = 1e-6\n")
    text = "[topology]\nnodes = 2\nedges = [[0, 1]]\ninputs = 1\ncrossbar = [[0, 0]]\noutputs = [1]\n"
    d2 = parse_board("tau_node_factors = [0.5, 2.0]\n" + text)
    b2 = Board(d2)
    np.testing.assert_array_equal(b2.params(np.zeros(b2.n_channels), 300.0).mobility, [2.0, 0.5])
    for bad in ("[1.0]", "[1.0, -1.0]", "[1.0, true]", "3"):
        with pytest.raises(BoardFileError, match="tau_node_factors"):
            parse_board(f"tau_node_factors = {bad}\n" + text)


def test_truth_dump_round_trip(tmp_path):
    b = Board(draw_board(3))
    dump_truth(b.truth, tmp_path / "t.json")
    t = load_truth(tmp_path / "t.json")
    assert t["zoo_seed"] == 3 and t["kT"] == 1.0 and t["capacity_readings"] == b.desc.capacity_readings
    np.testing.assert_allclose(node_tau_s(t), b.desc.tau_s * np.asarray(b.desc.tau_node_factors), rtol=1e-15)
    # the stored grid is the static curve that element_value evaluates
    ch = np.arange(b.n_channels)[:, None]
    np.testing.assert_allclose(element_value(t, ch, t["curves"]["volts"]), t["curves"]["value"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(t["curves"]["volts"][:, [0, -1]], np.c_[b.layout.vmin, b.layout.vmax])
    # the board's physics (no crosstalk at these volts: all channels at the same grid point would
    # mix neighbours, so compare the static stage alone) and the truth agree
    v = np.asarray(t["curves"]["volts"])[:, 40]
    np.testing.assert_allclose(ni.element_curve(b.truth["channels"], v, 300.5, 300.0), element_value(t, np.arange(b.n_channels), v, 300.5))
    x = np.linspace(-1.5, 1.5, 7)[:, None]
    np.testing.assert_allclose(adc_volts(t, np.arange(b.network.n_nodes), x), ni.adc_read(b.truth["adc"], x), rtol=1e-12)
    assert np.abs(adc_volts(t, 0, 1.0) - (t["adc"]["gain"][0] + t["adc"]["offset_v"][0])) > 0  # INL included


# ----------------------------------------------------------------------------- physics
def test_each_node_relaxes_with_its_own_time_constant():
    """Isolated quadratic nodes (Q = 4, B = 8, kT = 1): mean(t) = B/(2Q) (1 - exp(-2 Q t / f_i)),
    t in units of tau, f_i the node's factor.  With 4000 samples the standard error of a mean is
    about 0.005 V; nodes with f = 0.7 and 1.4 differ from f = 1 by more than 0.1 V at t = 0.15,
    i.e. by over 20 standard errors, so a board ignoring the factors fails the 4.5-sigma check."""
    text = """
tau_node_factors = [0.7, 1.4, 0.7, 1.4]
[topology]
nodes = 4
edges = [[0, 1]]
inputs = 1
crossbar = [[0, 0]]
outputs = [3]
[nonideal]
ideal = true
"""
    b = Board(parse_board(text))
    s = b.layout.slices
    volts = np.zeros(b.n_channels)
    volts[s["Q"]] = 1.0  # Q = 4 (gain 4 / V)
    volts[s["B"]] = 2.0  # B = 8: equilibrium x = B / 2Q = 1 V
    params = b.params(volts, 300.0)
    t, m = 0.15, 4000
    req = Request(1, "RESET", t, m, np.arange(4), np.zeros((1, 1)), params, None, b.desc.rail_v,
                  b.truth["adc"], seed=4, noise_seed=5)
    x = run_acquisition(req).astype(float)[0] * (b.desc.adc_range_v / 32768)
    f = np.array([0.7, 1.4, 0.7, 1.4])
    mean_ex = 1.0 - np.exp(-8.0 * t / f)
    var_ex = (1 - np.exp(-16.0 * t / f)) / 8.0
    z = (x.mean(0) - mean_ex) / np.sqrt(var_ex / m)
    assert np.abs(z).max() < 4.5, z
    z_flat = (x.mean(0) - (1 - np.exp(-8.0 * t))) / np.sqrt(var_ex / m)
    assert np.abs(z_flat).min() > 10, z_flat


# ----------------------------------------------------------------------------- served boards
def test_zoo_board_served_over_pyvisa(tmp_path):
    d = draw_board(7)
    with running_emulator(truth=True, extra_args=["--zoo", "7", "--no-warmup"], workdir=tmp_path) as emu:
        with open_visa(emu.tcp, timeout_s=10.0) as board:
            idn = board.session.query("*IDN?", str.strip)
            assert idn == board.identity and "TC-" in idn and "ZOO7" in idn
            assert board.technology == d.technology
            assert board.n_nodes == d.network.n_nodes and board.n_inputs == d.network.n_inputs
            cm = board.channel_map
            lay = d.layout()
            np.testing.assert_allclose(cm.vmin, lay.vmin)
            np.testing.assert_allclose(cm.vmax, lay.vmax)
            assert board.tau_s == pytest.approx(d.tau_s)
        t = emu.truth()
        assert t["zoo_seed"] == 7 and t["name"] == "zoo-7"


def test_cli_zoo_arguments():
    env_cmd = [sys.executable, "-m", "sim_backend.emulator"]
    out = subprocess.run(env_cmd + ["--zoo", "3", "--print-board"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 0 and "zoo = 3" in out.stdout
    assert parse_board(out.stdout).zoo_seed == 3
    bad = subprocess.run(env_cmd + ["--zoo", "3", "--board", "default"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert bad.returncode == 2 and "not both" in bad.stderr
