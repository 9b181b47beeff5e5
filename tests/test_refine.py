"""Refinement on a device: safe candidates, a log that resumes exactly, report plots."""

from __future__ import annotations

import numpy as np
import pytest

import calibration
from calibration.scale import fitting_scale
from sim_backend.device import TwinDevice
from tc_hw.refine import RefineConfig, refine
from tc_hw.report import report
from tc_hw.runlog import read_log
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
