"""Acquisitions that fit the board (issue 13, item 3): ``ACQ:CAP?``, the ``-221`` "acquisition too
large" refusals of ``INIT``, and the driver's splitting and joining, through real PyVISA against
the emulator as its own process.

The board of these tests is ideal (every element value = nominal gain x volts) with a capacity of
3300 readings and a work limit of 1e8 element-steps: at ACQ:TIME = 2 tau (2000 steps) and 296
channels one INIT may integrate at most 168 samples, so P = 6 x M = 200 on 8 nodes (9600
readings) is split by the capacity (2 vectors per INIT), refused at INIT by the work limit and
split further (1 vector x 100 samples per INIT).
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest

from drivers import BoardError, TCBoard, open_visa
from sim_backend.emulator.board import BoardFileError, parse_board
from tc_hw.model.device import DeviceError, armed
from tests.emulator_process import running_emulator

CAP, WORK = 3300, 1e8
BOARD = (f"capacity_readings = {CAP}\nwork_limit_element_steps = {WORK:g}\n"
         "[topology]\nlayered = { width = 8, depth = 4, inputs = 1 }\n[nonideal]\nideal = true\n")
TIME_S = 2e-6  # 2 tau: 2000 emulator steps per sample
NODES = list(range(8))  # layer 0: fed by input line 0


@pytest.fixture(scope="module")
def cap_board(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("capacity")
    (tmp / "board.toml").write_text(BOARD)
    with running_emulator(board=tmp / "board.toml", truth=False, workdir=tmp / "emu") as emu:
        yield emu


def _program(b: TCBoard) -> None:
    """Q = 10 on every node and W = 10 on the input line: each node's mean follows its input."""
    v = np.zeros(b.n_channels)
    for c in b.channel_map:
        if c.kind in ("Q", "W"):
            v[c.index] = 2.5
    b.set_channels(v)


def test_board_file_keys_and_defaults():
    d = parse_board("")
    assert d.capacity_readings == 2**27 and d.work_limit_element_steps is None
    d = parse_board("capacity_readings = 1000\nwork_limit_element_steps = 4e9\n")
    assert d.capacity_readings == 1000 and d.work_limit_element_steps == 4e9
    for bad in ("capacity_readings = 0", "capacity_readings = 2.5", "work_limit_element_steps = -1"):
        with pytest.raises(BoardFileError, match=bad.split(" ")[0]):
            parse_board(bad + "\n")


def test_init_refused_naming_the_quantity(cap_board):
    with open_visa(cap_board.tcp) as b:
        b.reset()
        assert b.session.query("ACQ:CAP?", int) == CAP and b.capacity() == CAP
        _program(b)
        b.arm()
        b.set_inputs(np.zeros((6, 1)))
        b.session.write("ACQ:MODE RESET;ACQ:TIME 1e-7;ACQ:COUNT 100;ACQ:NODES ALL")  # 6*100*32 readings
        with pytest.raises(BoardError) as e:
            b.session.write("INIT")
        assert e.value.code == -221 and "too large: 19200 readings" in e.value.text
        assert f"capacity {CAP}" in e.value.text
        b.session.write(f"ACQ:TIME {TIME_S!r};ACQ:COUNT 10;ACQ:NODES 0")  # 60 readings, 3.55e7 steps: fits
        b.session.write("INIT")
        assert b.session.query("*OPC?") == "1" and b.acquisition_status() == "DONE"
        b.session.write("ACQ:COUNT 100")  # 600 readings fit, 3.55e8 element-steps do not
        with pytest.raises(BoardError) as e:
            b.session.write("INIT")
        assert "too large: 3.55e+08 element-steps" in e.value.text and "exceeds 1e+08" in e.value.text
        b.arm(False)


def test_acquisition_larger_than_the_capacity_split_joined_in_order(cap_board, caplog):
    z = np.linspace(-0.75, 0.75, 6)[::-1][[0, 3, 1, 5, 2, 4]][:, None]  # distinct, not sorted
    with open_visa(cap_board.tcp) as b:
        b.reset()
        _program(b)
        refs = []
        with armed(b):
            for q in range(len(z)):  # each input alone, small enough for one INIT: the reference
                b.set_inputs(z[q : q + 1])
                r = b.acquire("reset", TIME_S, 100, nodes=NODES)
                assert r.meta["calls"] == 1 and r.meta["refused_too_large"] == 0
                refs.append(r.volts[0])
    with open_visa(cap_board.tcp) as b, caplog.at_level(logging.INFO, "tc_hw.drivers"):  # a fresh session
        _program(b)
        b.set_inputs(z)
        with armed(b):
            a = b.acquire("reset", TIME_S, 200, nodes=NODES)
            assert b.session.query("INP:COUNT?", int) == 6  # the user's batch is back on the board
            again = b.acquire("reset", TIME_S, 200, nodes=NODES)
    assert len(z) * 200 * len(NODES) > CAP
    assert a.volts.shape == (6, 200, 8) and a.codes.shape == (6, 200, 8) and np.allclose(a.inputs, z, atol=1e-7)
    # capacity: 2 vectors per INIT; work limit: refused at 2 x 200 and 1 x 200, then 1 x 100 per INIT
    assert a.meta["calls"] == 12 and a.meta["refused_too_large"] == 2
    assert "refused as too large" in caplog.text
    # the session remembers the refused work: the next acquisition is split without a refusal
    assert again.meta["calls"] == 12 and again.meta["refused_too_large"] == 0
    # every vector's readings come from its own input: the per-vector means reproduce the references
    ref_mean = np.array([r.mean(axis=0) for r in refs])  # (6, 8)
    ref_se = np.array([r.std(axis=0) / np.sqrt(len(r)) for r in refs])
    for x in (a.volts, again.volts):
        se = np.hypot(ref_se, x.std(axis=1) / np.sqrt(x.shape[1]))
        assert np.all(np.abs(x.mean(axis=1) - ref_mean) < 5 * se)  # 48 comparisons at 5 sigma
    # ... and the inputs are told apart: any two vectors' means differ by > 10 sigma on average
    node_avg = ref_mean.mean(axis=1)
    gaps = np.abs(node_avg[:, None] - node_avg[None, :])[~np.eye(6, dtype=bool)]
    assert gaps.min() > 10 * ref_se.mean() / np.sqrt(8)
    # nothing lost or read twice: both halves of each vector's samples hold fresh readings
    assert not np.array_equal(a.codes[:, :100], a.codes[:, 100:])
    assert not np.array_equal(a.codes, again.codes)


def test_serial_runs_split_over_vectors_only(cap_board):
    with open_visa(cap_board.tcp) as b:
        b.reset()
        _program(b)
        b.set_inputs(np.linspace(-0.5, 0.5, 4)[:, None])
        with armed(b):
            s = b.acquire("serial", 1e-7, 120, nodes=NODES)  # 3840 readings: 3 vectors, then 1
            assert s.volts.shape == (4, 120, 8) and s.meta["calls"] == 2
            with pytest.raises(DeviceError, match="serial run of 200 samples.*too large"):
                b.acquire("serial", TIME_S, 200, nodes=[0])  # one run past the work limit
            with pytest.raises(ValueError, match="serial runs cannot be split"):
                b.acquire("serial", 1e-7, 500, nodes=NODES)  # 4000 readings for one vector


def test_board_without_acq_cap_is_unlimited_with_a_log_line(caplog):
    def query(cmd, parse=str, **kw):
        raise BoardError(-113, 'Undefined header; header "ACQ:CAP?"', cmd)

    b = TCBoard.__new__(TCBoard)
    b.session = SimpleNamespace(query=query, transport=SimpleNamespace(resource="TCPIP0::127.0.0.1::1::SOCKET"))
    b.max_samples_per_call, b._capacity_read, b._capacity, b._refused_work = 1000, False, None, None
    with caplog.at_level(logging.INFO, "tc_hw.drivers"):
        assert b.capacity() is None and b.readings_per_call() == 1000
    assert "does not answer ACQ:CAP?" in caplog.text and "unlimited" in caplog.text
