"""The notebooks in notebooks/ run top to bottom and report sensible numbers.

Each notebook is executed with nbclient in a fresh ``python3`` kernel, with its small-size switch
on (``TC_HW_NOTEBOOK_SMALL=1``) and its working folder and temporary files in ``tmp_path``, so
nothing is written into the repository.  A cell that raises fails the test with that cell's
error.  The notebooks check their own physics (twin against quadrature, exact OU and an ODE
solver); here we check what they print, in particular the ``SUMMARY {json}`` line of the last
cell.  In small mode the three take about 2-3 minutes together on 2 cores.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CELL_TIMEOUT_S = 600


def _stdout(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                   if o.get("output_type") == "stream" and o.get("name") == "stdout")


def _summary(nb) -> dict:
    lines = [line for line in _stdout(nb).splitlines() if line.startswith("SUMMARY ")]
    assert lines, "the notebook printed no SUMMARY line"
    return json.loads(lines[-1][len("SUMMARY "):])


def _stop_leftover_emulator(nb) -> bool:
    """Stop the emulator a notebook started if it is still running (True if one was)."""
    m = re.search(r"emulator pid (\d+)", _stdout(nb))
    if not m:
        return False
    pid = int(m.group(1))
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False  # gone (or no /proc): nothing to stop
    if b"sim_backend.emulator" not in cmdline:
        return False  # the pid now belongs to another process
    os.kill(pid, signal.SIGTERM)
    return True


def run_notebook(name: str, tmp_path: Path, monkeypatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("TC_HW_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's tempfile folders go here too
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except CellExecutionError as e:
        _stop_leftover_emulator(nb)
        pytest.fail(f"{name}: a cell raised\n{e}", pytrace=False)
    assert not _stop_leftover_emulator(nb), f"{name} left its emulator running"
    return nb


def test_notebooks_are_committed_without_outputs():
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == ["01_thermodynamic_neuron.ipynb", "02_training.ipynb", "03_hardware_loop.ipynb"]
    for name in names:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has outputs"
        assert "TC_HW_NOTEBOOK_SMALL" in code[0].source, f"{name}: the size switch must be in the first code cell"


def test_thermodynamic_neuron(tmp_path, monkeypatch):
    out = _stdout(run_notebook("01_thermodynamic_neuron.ipynb", tmp_path, monkeypatch))
    assert "small mode: True" in out
    for check in ("twin vs quadrature, equilibrium activation", "twin vs quadrature, variance",
                  "twin vs exact OU", "twin vs ODE solver", "all checks passed"):
        assert check in out, check
    # the finite-time activation is nearly linear at t_f = 0.05 and clearly nonlinear at t_f = 1
    nonlin = {float(t): float(v) for t, v in re.findall(r"t_f = ([\d.]+): nonlinearity\s+([\d.]+)%", out)}
    assert nonlin[0.05] < 1.0 and nonlin[1.0] > 10.0, nonlin


def test_training(tmp_path, monkeypatch):
    s = _summary(run_notebook("02_training.ipynb", tmp_path, monkeypatch))
    assert s["small"] is True
    # a short GA: finite, and no worse than a constant output (loss 1/2) plus sampling noise
    assert math.isfinite(s["cos_loss"]) and s["cos_loss"] < 0.6, s
    assert s["mnist_test_digits"] == 1000
    assert 0.75 < s["mnist_top1"] <= s["mnist_top2"] <= 1.0, s
    assert 0 <= s["om_action_excess"] < 0.5, s  # Adam approaches the exact minimum of the convex action


def test_hardware_loop(tmp_path, monkeypatch):
    s = _summary(run_notebook("03_hardware_loop.ipynb", tmp_path, monkeypatch))
    assert s["small"] is True
    assert s["calibrated_channels"] == s["channels"] == 296, s
    err = s["calibration_error"]
    assert err["calibrated"] < 0.05 and err["calibrated"] < err["nominal"] / 3, err
    assert 0 < s["coordinate_scale"] <= 1
    assert s["calibrated_loss"] < s["nominal_loss"], s  # the calibration pays off on the board
    for key in ("twin_loss", "calibrated_loss", "start_loss", "refined_loss"):
        assert math.isfinite(s[key]) and s[key] < 0.6, (key, s)
    assert s["generations"] == len(s["log_best_loss"]) == 8
    assert all(math.isfinite(v) for v in s["log_best_loss"])
    assert list(tmp_path.glob("tc-hw-notebook-*/run.h5")), "the run log was not written under tmp_path"
