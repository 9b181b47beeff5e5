"""Run logs: SWMR HDF5 that a reader can follow live and that survives SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from tc_hw.model.runlog import RunLog, read_log

WRITER = """
import sys, numpy as np
from tc_hw.model.runlog import RunLog
log = RunLog.create(sys.argv[1], {"task": "cos"}, population=8, n_params=30, elites=2, codes_shape=(4, 5, 3),
                    volts_per_code=1e-4)
rng = np.random.default_rng(0)
for g in range(10**6):
    log.append(g, {"population": rng.normal(size=(8, 30)), "losses": rng.random(8), "elite_losses": [0.1, 0.2],
                   "best_loss": 0.1, "best": np.full(30, g), "temperature_k": [300, 300.1], "wall_s": 0.01,
                   "retries": 0, "paused_s": 0, "codes": rng.integers(-9, 9, (4, 5, 3))})
"""


def _row(g, n=30, p=8):
    return {"population": np.full((p, n), g, float), "losses": np.arange(p) + g, "elite_losses": [g, g + 1],
            "best_loss": g, "best": np.full(n, g), "temperature_k": [300, 301], "wall_s": 1.0, "retries": g % 2,
            "paused_s": 0.0}


def test_create_append_read_and_resume(tmp_path):
    path = tmp_path / "run.h5"
    with RunLog.create(path, {"task": "cos", "seed": 3}, population=8, n_params=30, elites=2,
                       instrument={"identity": "TCLAB,X,1,1"}) as log:
        for g in range(3):
            log.append(g, _row(g))
        with pytest.raises(ValueError, match="does not follow"):
            log.append(5, _row(5))
    r = read_log(path)
    assert r["completed_generations"] == 3 and r["config"]["seed"] == 3
    assert r["instrument"]["identity"] == "TCLAB,X,1,1" and r["attrs"]["NX_class"] == "NXentry"
    np.testing.assert_array_equal(r["best_loss"], [0, 1, 2])
    assert r["population"].shape == (3, 8, 30) and r["retries"].tolist() == [0, 1, 0]
    with RunLog.reopen(path) as log:
        log.truncate(2)  # generation 2 is redone
        log.append(2, _row(7))
        log.append(3, _row(8))
    np.testing.assert_array_equal(read_log(path)["best_loss"], [0, 1, 7, 8])
    with pytest.raises(FileExistsError, match="resume"):
        RunLog.create(path, {}, population=8, n_params=30, elites=2)


def test_not_a_run_log_is_refused(tmp_path):
    bad = tmp_path / "x.h5"
    with h5py.File(bad, "w") as f:
        f["a"] = 1
    with pytest.raises(ValueError, match="not a tc-hw run log"):
        read_log(bad)
    (tmp_path / "t.h5").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable HDF5"):
        read_log(tmp_path / "t.h5")


def test_live_reader_and_sigkill_leave_a_readable_file(tmp_path):
    path = tmp_path / "live.h5"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
    try:
        seen = []
        deadline = time.monotonic() + 60
        while len(seen) < 5 and time.monotonic() < deadline:  # another process follows the run
            try:
                seen.append(read_log(path)["completed_generations"])
            except (ValueError, OSError):
                pass  # not created yet
            time.sleep(0.05)
        assert len(seen) == 5 and seen == sorted(seen)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    r = read_log(path)
    n = r["completed_generations"]
    assert n >= seen[-1] and r["codes"].shape == (n, 4, 5, 3) and r["volts_per_code"] == 1e-4
    np.testing.assert_array_equal(r["best"][:, 0], np.arange(n))  # every counted row complete
    assert np.isfinite(r["losses"]).all()


def test_a_killed_log_can_be_reopened_and_appended(tmp_path):
    path = tmp_path / "k.h5"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if read_log(path)["completed_generations"] >= 3:
                break
        except (ValueError, OSError):
            pass
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n = read_log(path)["completed_generations"]
    with RunLog.reopen(path) as log:
        assert log.completed == n
        log.append(n, {**_row(n), "codes": np.zeros((4, 5, 3))})
    r = read_log(path)
    assert r["completed_generations"] == n + 1 and r["best_loss"][-1] == n
