"""Refinement scenarios (tc_hw/scenarios.py): the board files, the zoo scenario's names, and the gap's
sign on a quick twin check (the board's true equation at the calibrated volts against the twin)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from tc_hw.model.files import load_params

#: A cos program (8 x 4 layered, 3 read-out nodes, direct training then the observation-time fit):
#: twin loss about 0.0023 on 250 x 1000 readings, 0.0009 of it without the sampling term.
PROGRAM = Path(__file__).parent / "data" / "cos_program.h5"


@pytest.fixture(scope="module")
def program():
    return load_params(PROGRAM)


def test_zoo_scenario_names_and_board_file(tmp_path):
    from sim_backend.emulator.board import load_board
    from tc_hw.scenarios import ZOO_SEED, write_zoo_board, zoo_seed

    assert zoo_seed("zoo") == ZOO_SEED and zoo_seed("zoo:880019") == 880019
    assert zoo_seed("aged") is None
    with pytest.raises(ValueError, match="non-negative integer"):
        zoo_seed("zoo:-3")
    desc = load_board(write_zoo_board(880019, tmp_path))
    assert desc.zoo_seed == 880019


def test_scenario_board_seed_draws_another_board_with_the_same_sizes():
    from tc_hw.scenarios import board_toml, scenario_board

    doc = tomllib.loads(board_toml("crosstalk", seed=7))
    assert doc["seed"] == 7 and doc["nonideal"]["crosstalk"] == 0.03
    a = scenario_board("crosstalk").truth["channels"]
    b = scenario_board("crosstalk", seed=7).truth["channels"]
    assert not np.allclose(a["gain_factor"], b["gain_factor"])
    np.testing.assert_array_equal(a["xtalk_next"], b["xtalk_next"])  # 3 % on every line but the last
    assert set(np.unique(a["xtalk_next"])) == {0.0, 0.03}
    assert board_toml("crosstalk") == board_toml("crosstalk", seed=None)


def test_gap_check_sees_the_aged_gap_and_no_gap_on_the_control(program):
    """The aged board's calibrated upload is far worse than the twin; a board calibrated now (the
    control) is not.  Power: with 60 inputs x 300 runs and common noise, the excess ``board - twin``
    measured over noise seeds 5, 6, 7 was +0.0011, -0.0003, -0.0005 (control) and +0.0108, +0.0085,
    +0.0093 (aged): spread about 0.0008, so both limits below are 3-4 spreads from either mean."""
    from tc_hw.scenarios import gap_check

    aged = gap_check("aged", program, points=60, samples=300, seed=5)
    control = gap_check("control", program, points=60, samples=300, seed=5)
    assert aged["board_loss"] - aged["twin_loss"] > 0.005, aged
    assert abs(control["board_loss"] - control["twin_loss"]) < 0.003, control
    assert aged["twin_loss"] == pytest.approx(control["twin_loss"])  # the same program, the same noise


def test_refine_methods_refuses_unknown_scenarios_and_methods_with_exit_2(capsys):
    from benchmarks.refine_methods import main

    for argv in (["--scenarios", "aged,nope"], ["--scenarios", "zoo:x"], ["--methods", "newton"]):
        assert main(argv) == 2
        assert "unknown" in capsys.readouterr().err


def test_fit_observation_time_keeps_the_computer_and_refits_the_readout(program):
    """Only the mobility (observation time) and the readout change; the factor with the lowest loss is
    kept.  A program already at its best time keeps factor 1 against 0.7 and 1.6 (40 inputs x 200
    runs, noise seeds 3 and 4: 0.0033 and 0.0018 against 0.011-0.013 and 0.016-0.017)."""
    from tc_hw.scenarios import fit_observation_time

    q, table = fit_observation_time(program, (0.7, 1.0, 1.6), points=40, samples=200, seed=3)
    assert min(table, key=table.get) == 1.0 and q.mobility == program.mobility
    np.testing.assert_array_equal(q.crossbar, program.crossbar)
    np.testing.assert_array_equal(q.coupling, program.coupling)
    assert q.readout.shape == program.readout.shape and not np.array_equal(q.readout, program.readout)


def test_refine_methods_knows_every_scenario():
    from benchmarks.refine_methods import SCENARIO_NAMES, _known
    from tc_hw.scenarios import SCENARIOS

    assert all(_known(n) for n in (*SCENARIOS, *SCENARIO_NAMES, "zoo:880019"))
    assert not _known("zoo:") and not _known("old")
