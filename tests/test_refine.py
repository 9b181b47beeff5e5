"""Refinement on a device: safe candidates, a log that resumes exactly, report plots."""

from __future__ import annotations

import numpy as np
import pytest

import calibration
from calibration.scale import fitting_scale
from sim_backend.device import TwinDevice
from tc_hw.refine import RefineConfig, refine
from tc_hw.report import report
from tc_hw.model.runlog import read_log
from tc_hw.train.direct import train_cos_direct

CFG = dict(population=6, elites=2, points=6, samples=10, final_points=20, final_samples=20, seed=3)


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    params, _ = train_cos_direct(iterations=60, points=8, samples=4, bound=3.0, eval_samples=10, restarts=1,
                                 progress=False)
    dev = TwinDevice()
    return params.rescaled(fitting_scale(params, dev.channel_map))


def test_refine_logs_resumes_exactly_and_stays_safe(program, tmp_path):
    cal = calibration.nominal(TwinDevice().channel_map)
    full = refine(TwinDevice(), program, cal, tmp_path / "a.h5", RefineConfig(generations=4, **CFG), progress=False)
    refine(TwinDevice(), program, cal, tmp_path / "b.h5", RefineConfig(generations=2, **CFG), progress=False)
    resumed = refine(TwinDevice(), program, cal, tmp_path / "b.h5", RefineConfig(generations=4, **CFG), resume=True,
                     progress=False)
    a, b = read_log(tmp_path / "a.h5"), read_log(tmp_path / "b.h5")
    assert a["completed_generations"] == b["completed_generations"] == 4
    np.testing.assert_array_equal(a["losses"], b["losses"])
    assert resumed["refined_loss"] == full["refined_loss"] and resumed["best_readout"] == full["best_readout"]
    assert resumed["readings"] == full["readings"]  # the resumed run counts the first session's readings
    cmap = TwinDevice().channel_map
    volts = np.array(full["best_volts"])
    assert np.all(volts >= cmap.vmin) and np.all(volts <= cmap.vmax)
    plots = report(tmp_path / "a.h5")["plots"]
    assert len(plots) == 3 and all(p.endswith(".png") for p in plots)


def test_refine_refuses_an_existing_log_without_resume(program, tmp_path):
    cal = calibration.nominal(TwinDevice().channel_map)
    refine(TwinDevice(), program, cal, tmp_path / "c.h5", RefineConfig(generations=1, **CFG), progress=False)
    with pytest.raises(FileExistsError, match="resume"):
        refine(TwinDevice(), program, cal, tmp_path / "c.h5", RefineConfig(generations=1, **CFG), progress=False)


def test_refined_program_is_the_best_of_one_final_measurement(program, tmp_path):
    from tc_hw.refine import read_final

    cal = calibration.nominal(TwinDevice().channel_map)
    r = refine(TwinDevice(), program, cal, tmp_path / "d.h5", RefineConfig(generations=2, **CFG), progress=False)
    cands = {"start": r["uploaded_loss"], "readout fit": r["readout_fit_loss"], "ga": r["ga_best_loss"]}
    test = r["keep_test"]  # the GA's program is kept only where it beats the start significantly
    assert test["keep"] == (test["difference"] > test["threshold"] > 0)
    assert test["difference"] == pytest.approx(r["readout_fit_loss"] - r["ga_best_loss"])
    assert r["kept"] == ("ga" if test["keep"] else min(("start", "readout fit"), key=cands.get))
    assert r["refined_loss"] == cands[r["kept"]]
    final = read_final(tmp_path / "d.h5")
    assert final["kept"] == r["kept"] and final["refined_loss"] == r["refined_loss"]
    np.testing.assert_array_equal(final["readout"], r["best_readout"])
    config = read_log(tmp_path / "d.h5")["config"]
    assert len(config["readout_fit"]) == program.readout.shape[1]
    # the GA mutated only the analog elements; every candidate carries the least-squares readout
    # of its own measurement (so it is not the start's fit, and differs between candidates)
    log = read_log(tmp_path / "d.h5")
    k = program.readout.shape[1]
    pop = log["population"]
    assert np.ptp(pop[:, :, -k:], axis=1).max() > 0
    assert not np.allclose(pop[0, 0, -k:], config["readout_fit"])


def test_logs_from_before_the_noise_settings_resume_as_they_were_made():
    from dataclasses import asdict

    from tc_hw.refine import _stored_config

    old = {k: v for k, v in asdict(RefineConfig()).items() if k not in ("debias", "common_noise", "readout_fit")}
    cfg = _stored_config(old, RefineConfig(generations=50))
    assert not (cfg.debias or cfg.common_noise or cfg.readout_fit) and cfg.generations == 50


def test_debiased_candidate_losses_remove_the_finite_sample_bias(program):
    from tc_hw.refine import _Problem
    from tc_hw.model.tasks import cos_task

    dev = TwinDevice()
    cal = calibration.nominal(dev.channel_map)
    z, y = cos_task(25)
    prob = _Problem(dev, program, cal, RefineConfig(final_samples=1000))
    raw = _Problem(dev, program, cal, RefineConfig(debias=False))
    xbar, var = prob.means(prob.x0[None, :], z, [5], 8)
    f = prob.readout0
    assert np.mean(var) > 0
    # E[(ybar_8 - y)^2] = (mu - y)^2 + var / 8: the estimate of the loss at 1000 readings per input
    # subtracts var / 8 and adds var / 1000
    assert prob.losses(prob.x0[None, :], z, [5], 8)[0][0] == pytest.approx(
        np.mean((xbar[0] @ f - y) ** 2) - np.mean(var) * (1 / 8 - 1 / 1000))
    assert raw.losses(raw.x0[None, :], z, [5], 8)[0][0] == pytest.approx(np.mean((xbar[0] @ f - y) ** 2))
    # the final measurement itself (final_samples readings) is never corrected
    assert prob.losses(prob.x0[None, :], z, [5], 1000)[0][0] == raw.losses(raw.x0[None, :], z, [5], 1000)[0][0]


def test_a_readings_budget_stops_the_ga_before_it_is_passed(program, tmp_path):
    """Halving (3 rungs: 6, 3, 2 rows at 1, 2, 4 units of 6 x 10 readings) costs 20 units a
    generation at base factor 1; the start measurement 20 x 20.  A budget of 400 + 2.5
    generations' readings stops after two generations (or fewer if the base factor grew)."""
    cal = calibration.nominal(TwinDevice().channel_map)
    budget = 20 * 20 + int(2.5 * 20 * 6 * 10)
    r = refine(TwinDevice(), program, cal, tmp_path / "e.h5",
               RefineConfig(generations=50, max_readings=budget, **CFG), progress=False)
    assert r["stop"] == "readings" and 1 <= r["generations"] <= 2
    assert r["readings"] <= budget
    log = read_log(tmp_path / "e.h5")
    assert log["completed_generations"] == r["generations"]
