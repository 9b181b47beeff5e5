"""Refinement methods (twin-guided, CMA-ES), the least-squares readout at the end of training,
scenario calibrations, and the refusal of bad sizes before anything is created."""

from __future__ import annotations

import numpy as np
import pytest

import calibration
from calibration.scale import fitting_scale
from sim_backend.device import TwinDevice
from tc_hw.refine import RefineConfig, gap_closed, refine
from tc_hw.model.runlog import read_log
from tc_hw.train.direct import train_cos_direct

SMALL = dict(points=16, samples=200, final_points=50, final_samples=500, seed=3, twin_samples=16, twin_dt=2e-2)


@pytest.fixture(scope="module")
def program():
    # a program that computes cos (twin loss ~0.015), so that an analog gap is visible above the noise
    params, _ = train_cos_direct(iterations=500, points=16, samples=16, bound=3.0, eval_samples=200, restarts=2,
                                 progress=False)
    return params.rescaled(fitting_scale(params, TwinDevice().channel_map))


def stale_calibration(channel_map, spread: float = 0.08, seed: int = 1):
    """Nominal curves whose gains are off by up to ``spread`` (a calibration that no longer fits:
    on the twin backend, whose elements are exactly nominal, this makes a real analog gap)."""
    cal = calibration.nominal(channel_map)
    rng = np.random.default_rng(seed)
    for f in cal.fits:
        f.coef = f.coef * (1.0 + rng.uniform(-spread, spread))
    return cal


def test_twin_guided_improves_a_stale_upload_and_resumes_exactly(program, tmp_path):
    dev = TwinDevice()
    cal = stale_calibration(dev.channel_map)
    cfg = RefineConfig(method="twin-guided", generations=3, **SMALL)
    full = refine(TwinDevice(), program, cal, tmp_path / "a.h5", cfg, progress=False)
    # the method's program measures better than the start (calibrated upload) on the common final
    # measurement, both read out with the readout fitted to that measurement.  Gain-only errors are
    # mostly absorbed by that readout, so the gain left (~0.002 here) is below the keep test's
    # threshold at 50 x 500 readings (se ~0.002), and the start with the fitted readout may be kept; never worse
    assert full["keep_test"]["difference"] > 0
    assert full["kept"] in ("twin-guided", "readout fit") and full["refined_loss"] <= full["start_loss"]
    assert full["readings"] > 0 and full["final_readings"] == 2 * 50 * 500
    # killed after one iteration, resumed: the same populations, losses and result
    refine(TwinDevice(), program, cal, tmp_path / "b.h5", RefineConfig(method="twin-guided", generations=1, **SMALL),
           progress=False)
    resumed = refine(TwinDevice(), program, cal, tmp_path / "b.h5", cfg, resume=True, progress=False)
    a, b = read_log(tmp_path / "a.h5"), read_log(tmp_path / "b.h5")
    np.testing.assert_array_equal(a["population"], b["population"])
    np.testing.assert_array_equal(a["losses"], b["losses"])
    assert resumed["refined_loss"] == full["refined_loss"] and resumed["best_readout"] == full["best_readout"]
    cmap = dev.channel_map
    volts = np.array(full["best_volts"])
    assert np.all(volts >= cmap.vmin) and np.all(volts <= cmap.vmax)


def test_cma_resumes_bitwise_by_replay(program, tmp_path):
    cal = calibration.nominal(TwinDevice().channel_map)
    sizes = dict(population=6, elites=2, points=6, samples=10, final_points=20, final_samples=20, seed=3)
    full = refine(TwinDevice(), program, cal, tmp_path / "a.h5", RefineConfig(method="cma", generations=3, **sizes),
                  progress=False)
    refine(TwinDevice(), program, cal, tmp_path / "b.h5", RefineConfig(method="cma", generations=1, **sizes),
           progress=False)
    resumed = refine(TwinDevice(), program, cal, tmp_path / "b.h5", RefineConfig(method="cma", generations=3, **sizes),
                     resume=True, progress=False)
    a, b = read_log(tmp_path / "a.h5"), read_log(tmp_path / "b.h5")
    np.testing.assert_array_equal(a["population"], b["population"])
    assert resumed["method_best_loss"] == full["method_best_loss"]
    # CMA-ES moved the analog elements, never the fitted readout (sigma 0 there)
    k = program.readout.shape[1]
    assert np.ptp(a["population"][:, :, :-k], axis=1).max() > 0
    assert np.ptp(a["population"][:, :, -k:], axis=1).max() == 0


def test_cma_checkpoint_replays_the_global_generator_state(tmp_path):
    from tc_hw.train.cmaes import CMAES

    a = CMAES(np.zeros(4), np.array([1.0, 1.0, 0.0, 0.5]), population=6, seed=2, max_generations=5)
    for _ in range(2):
        a.tell(np.sum(a.ask() ** 2, axis=1))
    a.save(tmp_path / "c.h5")
    np.random.seed(123)  # whatever else uses the global generator must not change the run
    b = CMAES.load(tmp_path / "c.h5")
    for _ in range(2):
        pa, pb = a.ask(), b.ask()
        np.testing.assert_array_equal(pa, pb)
        assert np.all(pa[:, 2] == 0)
        a.tell(np.sum(pa ** 2, axis=1))
        b.tell(np.sum(pb ** 2, axis=1))


def test_readout_lstsq_is_the_least_squares_optimum_on_fresh_noise(program):
    from tc_hw.train.cos import readout_lstsq, twin_cos_loss

    bad = program.copy(readout=program.readout * 1.7 + 0.05)
    fitted = readout_lstsq(bad, points=60, samples=200, dt=1e-2, seed=11)
    loss = lambda p: twin_cos_loss(p, points=60, samples=200, dt=1e-2, seed=12)  # noqa: E731  other noise
    assert loss(fitted) < 0.8 * loss(bad)
    # no small change of the fitted readout does better on independent noise (beyond the noise)
    for d in (np.eye(fitted.readout.shape[1])[0] * 0.05, -np.eye(fitted.readout.shape[1])[-1] * 0.05):
        assert loss(fitted) <= loss(fitted.copy(readout=fitted.readout + d)) + 2e-3


def test_gap_closed():
    assert gap_closed(0.01, 0.05, 0.02) == pytest.approx(0.75)
    assert gap_closed(0.05, 0.04, 0.01) is None


@pytest.mark.parametrize("bad, match", [(dict(population=0), "population"), (dict(samples=1), "samples"),
                                        (dict(points=0), "points"), (dict(method="sgd"), "method"),
                                        (dict(temp_band=(310.0, 290.0)), "temp_band"),
                                        (dict(temp_band=(float("nan"), 300.0)), "temp_band"),
                                        (dict(population=4, elites=5), "elites")])
def test_config_refuses_bad_sizes(bad, match):
    with pytest.raises(ValueError, match=match):
        RefineConfig(**bad)


@pytest.mark.parametrize("argv, what", [(["--population", "0"], "--population"), (["--samples", "1"], "--samples"),
                                         (["--points", "0"], "--points"),
                                         (["--temp-band", "310", "290"], "--temp-band"),
                                         (["--temp-band", "nan", "300"], "--temp-band"),
                                         (["--temp-band", "1", "1e9"], "--temp-band")])
def test_cli_refuses_bad_sizes_before_creating_the_log(tmp_path, capsys, argv, what):
    from tc_hw.cli import main

    log = tmp_path / "run.h5"
    rc = main(["refine", "--resource", "twin", "--params", str(tmp_path / "missing.h5"), "--log", str(log)] + argv)
    assert rc == 2 and not log.exists()
    assert what in capsys.readouterr().err


def test_truth_calibration_is_the_board_curve_at_calibration_time():
    from sim_backend.emulator.board import Board, parse_board
    from sim_backend.emulator.nonideal import element_values
    from tc_hw.scenarios import board_toml, truth_calibration

    board = Board(parse_board(board_toml("aged"), "aged"))
    dev = TwinDevice()
    cal = truth_calibration(board.truth, dev.channel_map, age_h=6.0, temp_step_k=2.0)
    lo = np.array([max(c.vmin, -2.0) for c in dev.channel_map])  # inside each channel's safe range
    hi = np.array([min(c.vmax, 2.0) for c in dev.channel_map])
    v = np.random.default_rng(0).uniform(lo, hi)
    t_cal = board.truth["temperature"]["t0_k"] - 2.0
    truth_then = element_values(board.truth, v, t_cal, elapsed_s=-6.0 * 3600)
    ours = np.array([cal.curve(i).value(np.array([v[i]]))[0] for i in range(len(v))])
    # exact up to the second-order drift x tempco cross term (both below 10 %)
    np.testing.assert_allclose(ours, truth_then, rtol=2e-3, atol=1e-9)
    # and it is stale: today's board differs by per cents
    today = element_values(board.truth, v, t_cal + 2.0, elapsed_s=0.0)
    assert np.max(np.abs(today / np.where(ours == 0, 1, ours) - 1)[np.abs(ours) > 1]) > 0.03


def test_drift_report_advises_recalibration_when_the_board_left_the_calibration_temperature(program, tmp_path):
    sizes = dict(population=4, elites=1, points=6, samples=10, final_points=30, final_samples=200, seed=3,
                 sensitivity_sigma=False)
    cal = calibration.nominal(TwinDevice().channel_map)
    r = refine(TwinDevice(), program, cal, tmp_path / "a.h5", RefineConfig(generations=1, **sizes), progress=False)
    assert r["drift"]["recalibrate"] is False  # nominal: no calibration temperature, same board throughout
    cal.temperature_k = 296.5  # calibrated 3.5 K below the twin board's 300 K (inside the +-5 K band)
    r = refine(TwinDevice(), program, cal, tmp_path / "b.h5", RefineConfig(generations=1, **sizes), progress=False)
    d = r["drift"]
    assert d["recalibrate"] is True and "3.5 K from its calibration" in d["advice"]
    assert d["temperature_k_start"] == pytest.approx(300.0) and d["max_temperature_offset_k"] == pytest.approx(3.5)


def test_cli_refine_twin_guided_json_has_the_figures(program, tmp_path, capsys):
    import json

    from tc_hw.cli import main
    from tc_hw.model.files import save_params

    save_params(program, tmp_path / "p.h5", {"task": "cos"})
    rc = main(["refine", "--resource", "twin", "--params", str(tmp_path / "p.h5"), "--method", "twin-guided",
               "--generations", "1", "--points", "8", "--samples", "20", "--final-samples", "20",
               "--log", str(tmp_path / "run.h5"), "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert {"twin_loss", "start_loss", "refined_loss", "gap_closed", "readings", "kept"} <= set(r)
    assert r["method"] == "twin-guided" and r["readings"] == 250 * 20 + 8 * 20 + 5 * 8 * 20
    assert r["refined_loss"] <= r["start_loss"]
