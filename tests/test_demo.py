"""The demo on boards other than the default: its computer on the board's graph, bounds, refusals."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from sim_backend.emulator.board import PRESETS, parse_board
from tc_hw.demo import DemoError, board_computer, embed, plan_for_board
from tc_hw.model.device import Channel, ChannelMap
from tc_hw.train.cos import cos_network

LAYERED = '[topology]\nlayered = {{ width = {w}, depth = {d}, inputs = {k} }}\n'


def channel_map(toml: str) -> ChannelMap:
    lay = parse_board(toml).layout()
    return ChannelMap(tuple(Channel(i, str(lay.kind[i]), int(lay.a[i]), int(lay.b[i]), float(lay.vmin[i]),
                                    float(lay.vmax[i]), float(lay.gain[i]), float(lay.period[i]))
                            for i in range(lay.n_channels)))


def test_default_board_gets_the_papers_computer():
    cmap = channel_map(PRESETS["default"])
    base, nodes = board_computer(cmap)
    assert base.network.same_as(cos_network().network) and nodes == list(range(32))
    assert embed(base, nodes, cmap) is base
    plan = plan_for_board(base, nodes, cmap)
    assert plan.bound == 3.0 and plan.scale == pytest.approx(0.97 * 0.6) and plan.input_scale == 1.0
    assert not plan.raised


@pytest.mark.parametrize("toml, layers", [
    ('[topology]\nall_to_all = { hidden = 24, outputs = 8, inputs = 1 }\n', [8, 8, 8, 8]),
    (LAYERED.format(w=24, d=4, k=2), [8, 8, 8, 8]),   # a bigger board, two input lines
    (LAYERED.format(w=16, d=2, k=1), [8, 8, 8, 8]),  # zigzags through the two board layers
    ('[topology]\nnodes = 32\ninputs = 1\ncrossbar = [[0, 0], [0, 1]]\n'
     'edges = ' + str([[i, i + 1] for i in range(31)]) + '\n', [2, 1, 1, 1]),  # a chain
])
def test_computer_on_other_graphs_uses_board_elements_only(toml, layers):
    cmap = channel_map(toml)
    base, nodes = board_computer(cmap)
    assert [len(layer) for layer in base.network.layers] == layers
    rng = np.random.default_rng(0)
    net = base.network
    trained = base.copy(coupling=rng.normal(size=net.n_edges), crossbar=rng.normal(size=net.n_crossbar),
                        bias=rng.normal(size=net.n_nodes), readout=rng.normal(size=(1, len(net.outputs))))
    full = embed(trained, nodes, cmap)
    from calibration.mapping import channel_values

    values, src = channel_values(full, cmap)  # raises if the program needs an element the board lacks
    n_board = sum(c.kind == "Q" for c in cmap)
    assert full.network.n_nodes == n_board and len(full.network.outputs) == layers[-1]
    # every trained value lands on the board node it was meant for
    m = np.asarray(nodes)
    np.testing.assert_array_equal(full.bias[m], trained.bias)
    assert set(np.flatnonzero(full.bias)) <= set(m.tolist())
    assert np.isclose(np.sort(np.abs(full.coupling)), np.sort(np.abs(trained.coupling))).all()
    np.testing.assert_array_equal(full.network.outputs, m[net.outputs])


def test_boards_that_cannot_run_the_demo_are_refused_with_the_reason():
    with pytest.raises(DemoError, match="at least 8 nodes.*has 4"):
        board_computer(channel_map(LAYERED.format(w=2, d=2, k=1)))
    base, nodes = board_computer(channel_map(LAYERED.format(w=4, d=4, k=1)))  # 16 nodes: a 4 x 4 computer
    assert [len(layer) for layer in base.network.layers] == [4, 4, 4, 4] and len(nodes) == 16
    with pytest.raises(DemoError, match="no input line"):
        board_computer(channel_map('[topology]\nnodes = 32\ninputs = 0\nedges = [[0, 1]]\n'))
    with pytest.raises(DemoError, match="none of them is coupled"):
        board_computer(channel_map('[topology]\nnodes = 32\ninputs = 1\ncrossbar = [[0, 3]]\nedges = [[0, 1]]\n'))


def test_plan_follows_narrow_channels_and_raises_quartic_floors():
    toml = LAYERED.format(w=8, d=4, k=1) + ('[channels]\nB = { vmin = -3.0, vmax = 3.0, gain = 4.0 }\n'
                                            'W = { vmin = -2.0, vmax = 2.0, gain = 5.0 }\n')
    cmap = channel_map(toml)
    base, nodes = board_computer(cmap)
    plan = plan_for_board(base, nodes, cmap)
    reach_b, reach_w = 12 * 0.9, 10 * 0.9
    lam = 0.97 * reach_b * 0.1 / 3.0  # narrow biases: a smaller scale (3 % inside), the same bound
    assert plan.bound == 3.0 and plan.scale == pytest.approx(lam)
    # crossbar weights of the same bound need an input amplitude above 1 at that scale
    assert plan.input_scale == pytest.approx(3.0 / (0.97 * reach_w * 0.1 / lam))

    class Cal:  # a calibrated reach where node 5's quartic element cannot go below 1.5 (an offset)
        def curve(self, ch):
            return type("Curve", (), {"ok": True})()

        def value_range(self, ch):
            c = cmap[ch]
            lo, hi = sorted((c.gain * c.vmin, c.gain * c.vmax))
            return (1.5, hi) if (c.kind, c.a) == ("R", 5) else (lo, hi)

    plan = plan_for_board(base, nodes, cmap, Cal())
    assert plan.scale == pytest.approx(lam) and plan.raised == [5]
    assert plan.quartic[5] == pytest.approx(1.5 / 0.9 * 0.1 / lam ** 4 / 0.97) and plan.quartic[4] == 1.0
    assert plan.apply(base, nodes).quartic[5] == plan.quartic[5]
    # a board so narrow that the scale would make readings too slow: smaller bounds instead
    tiny = channel_map(LAYERED.format(w=8, d=4, k=1) + '[channels]\nB = { vmin = -1.0, vmax = 1.0, gain = 4.0 }\n')
    plan = plan_for_board(*board_computer(tiny), tiny)
    assert plan.scale == 0.3 and plan.bound["bias"] == pytest.approx(0.97 * 4 * 0.9 * 0.1 / 0.3)
    # a trainable element that cannot be 0 is refused with its channel
    class Offset(Cal):
        def value_range(self, ch):
            c = cmap[ch]
            return (0.5, 20.0) if (c.kind, c.a) == ("B", 3) else super().value_range(ch)

    with pytest.raises(DemoError, match="B channel 67 .*not 0"):
        plan_for_board(base, nodes, cmap, Offset())


def test_demo_refuses_a_small_board_with_exit_code_2(tmp_path):
    from sim_backend.emulator.process import running_emulator

    board = tmp_path / "small.toml"
    board.write_text(LAYERED.format(w=2, d=2, k=1))
    with running_emulator(board=board, truth=False, extra_args=["--no-warmup"], workdir=tmp_path / "emu") as emu:
        out = subprocess.run([sys.executable, "-m", "tc_hw.cli", "demo", "--resource", emu.tcp, "--json",
                              "--out", str(tmp_path / "demo")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "at least 8 nodes" in out.stderr and not (tmp_path / "demo" / "cal.h5").exists()


@pytest.mark.slow
def test_demo_on_a_non_default_board_through_resource(tmp_path):
    """The whole loop on a Josephson board with a seed of its own: periodic elements, tau = 1 ns, and
    quartic offsets that raise some nodes' terms (about 5 minutes here)."""
    from sim_backend.emulator.process import running_emulator

    board = tmp_path / "board.toml"
    board.write_text('name = "other"\ntechnology = "JJ"\nseed = 777\n'
                     '[topology]\nlayered = { width = 8, depth = 4, inputs = 1 }\n')
    with running_emulator(board=board, truth=False, workdir=tmp_path / "emu") as emu:
        out = subprocess.run([sys.executable, "-m", "tc_hw.cli", "demo", "--resource", emu.tcp, "--json",
                              "--out", str(tmp_path / "demo")], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    s = json.loads(out.stdout)
    for key in ("twin_loss", "nominal_upload_loss", "calibrated_upload_loss", "refined_loss",
                "energy_per_inference_kT", "report"):
        assert key in s
    assert s["technology"] == "JJ" and s["computer"]["nodes"] == 32 and s["calibration"]["failed_count"] == 0
    assert s["refined_loss"] <= s["start_loss"] and s["refined_loss"] < s["calibrated_upload_loss"] < 0.1
    assert s["seconds"]["total_s"] < 600


def test_a_program_that_did_not_learn_is_an_error_not_a_result(tmp_path):
    from tc_hw.demo import LEARNED_LOSS, BoardPlan, NotLearnedError, _check_board_learned, _check_twin_learned

    plan = BoardPlan({"bias": 0.43, "coupling": 1.3, "crossbar": 1.7}, 0.3, np.ones(32), np.ones(32), [], 4.0)
    _check_twin_learned(0.03, plan, 0.39, 0.7, tmp_path)  # learned: nothing happens
    message = r"did not learn cos.*loss is 0\.5023.*bias 0\.43.*nothing was uploaded"
    with pytest.raises(NotLearnedError, match=message) as e:
        _check_twin_learned(0.5023, plan, 0.39, 0.7, tmp_path)  # the linear plateau
    assert e.value.exit_code == 2 and e.value.figures["twin_loss"] == 0.5023
    assert json.loads((tmp_path / "failure.json").read_text())["coordinate_scale"] == 0.39
    with pytest.raises(NotLearnedError, match=r"on the twin \(loss 0\.03\) but not on the board.*0\.45.*0\.3") as e:
        _check_board_learned(0.03, 0.5, 0.45, {"refined_loss": 0.3, "kept": "ga"}, tmp_path)
    assert e.value.exit_code == 3
    _check_board_learned(0.03, 0.5, 0.45, {"refined_loss": LEARNED_LOSS * 0.9, "kept": "ga"}, tmp_path)


def test_cli_demo_exits_nonzero_with_the_message_when_nothing_was_learned(monkeypatch, capsys):
    from tc_hw import demo
    from tc_hw.cli import main

    def plateau(*a, **k):
        raise demo.NotLearnedError("the program trained on the twin did not learn cos(2 pi z): its loss is 0.502", 2,
                                   {"twin_loss": 0.502})

    monkeypatch.setattr(demo, "run_demo", plateau)
    assert main(["demo", "--resource", "TCPIP0::127.0.0.1::5025::SOCKET", "--json"]) == 2
    out, err = capsys.readouterr()
    s = json.loads(out)
    assert s["exit_code"] == 2 and s["twin_loss"] == 0.502 and "did not learn" in s["error"] and "did not learn" in err
    assert "refined_loss" not in s


@pytest.mark.parametrize("extent_at_unit_scale, learned_at", [(0.3, True), (0.5, None)])
def test_weak_boards_train_at_smaller_scales_until_the_rails(monkeypatch, tmp_path, extent_at_unit_scale, learned_at):
    """A program that did not learn is trained again at smaller coordinate scales (x 0.8 each) while its nodes
    stay within the safe range; it learns below scale 0.15 here, and its nodes reach extent / scale volts."""
    from tc_hw import demo
    from tc_hw.demo import training  # where _learn_at_smaller_scales looks its helpers up

    cmap = channel_map(PRESETS["default"])
    base, nodes = board_computer(cmap)
    monkeypatch.setattr(training, "plan_for_board", lambda *a, min_scale=0.3, **k: demo.BoardPlan(
        1.0, min_scale, np.ones(32), np.ones(32), [], 1.0))

    def train(plan, *a):  # a stand-in for the twin training: learns only at small scales
        loss = 0.05 if plan.scale < 0.15 else 0.5
        return "params", {"loss": loss}, "program", plan.scale, extent_at_unit_scale

    monkeypatch.setattr(training, "_train_for", train)
    plan0 = demo.BoardPlan(1.0, 0.3, np.ones(32), np.ones(32), [], 1.0)
    trainings = []
    found = demo._learn_at_smaller_scales(plan0, train(plan0), base, nodes, cmap, None, tmp_path, 0, False, 2.7,
                                          trainings)
    scales = [t["scale"] for t in trainings]
    assert scales[0] == 0.3 and np.allclose(np.diff(np.log(scales)), np.log(0.8))
    if learned_at is None:  # nodes beyond 2.7 V before it learns: nothing found, the caller refuses
        assert found is None and trainings[-1]["node_extent_v"] > 2.7 and trainings[-1]["twin_loss_training"] == 0.5
        with pytest.raises(demo.NotLearnedError, match=r"tried scale 0\.300: loss 0\.5.*beyond the safe node range"):
            demo._check_twin_learned(0.5, plan0, 0.3, 0.5, tmp_path, trainings, 2.7)
    else:
        plan, out, trained = found
        assert plan.scale == pytest.approx(0.3 * 0.8 ** 4) and plan.scale < 0.15 and trained[1]["loss"] < 0.1
        assert out.name == "cos_scale4.h5" and trainings[-1]["node_extent_v"] <= 2.7


WEAK_BOARD = ('name = "weak"\nseed = 1313\ncapacity_readings = 4000000\nwork_limit_element_steps = 4e9\n'
              + LAYERED.format(w=8, d=4, k=1) + "[channels]\n"
              + "".join(f"{k} = {{ vmin = {lo}, vmax = {hi}, gain = 0.4 }}\n"  # a tenth of the default's gains
                        for k, lo, hi in [("Q", -2.5, 5.0), ("R", 0.0, 5.0), ("B", -5.0, 5.0), ("C", -5.0, 5.0),
                                          ("W", -5.0, 5.0)]))


@pytest.mark.slow
def test_demo_on_a_weak_board_is_refused_not_reported(tmp_path):
    """Gains a tenth of the default's (Q up to 2 kT), a work limit that refuses the demo's measurements
    whole: the driver splits them, and the planner's smaller scales either learn within the safe node
    range or the demo stops with exit 2 naming its attempts; never a plateau program as a result
    (about 5 minutes here)."""
    from sim_backend.emulator.process import running_emulator

    board = tmp_path / "weak.toml"
    board.write_text(WEAK_BOARD)
    with running_emulator(board=board, truth=False, workdir=tmp_path / "emu") as emu:
        out = subprocess.run([sys.executable, "-m", "tc_hw.cli", "demo", "--resource", emu.tcp, "--json",
                              "--out", str(tmp_path / "demo")], capture_output=True, text=True, timeout=900)
    s = json.loads(out.stdout)
    if out.returncode == 0:  # a program that learned: the must-show figures
        assert s["twin_loss"] < 0.1 and s["calibrated_upload_loss"] < 1.5 * s["twin_loss"]
    else:
        assert out.returncode == 2 and "did not learn cos" in out.stderr and "tried scale" in out.stderr
        assert s["twin_loss"] >= 0.1 and len(s["trainings"]) >= 2 and "calibrated_upload_loss" not in s
        assert s["trainings"][-1]["node_extent_v"] > s["safe_v"]
