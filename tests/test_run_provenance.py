"""`tc-hw run` (twin and an emulated board over PyVISA), run files that survive a kill, the
provenance block of every file tc-hw writes, `tc-hw report FILE`, and NeXus layouts read by an
independent reader (nexusformat)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from sim_backend.device import TwinDevice
from tc_hw import load_params, save_params
from tc_hw.model import provenance
from tc_hw.run import read_run
from tc_hw.train.cos import cos_network
from tests.emulator_process import emulator  # noqa: F401  (module-scoped fixture)
from tests.test_calibration import _write_entry

NXLOAD = pytest.importorskip("nexusformat.nexus").nxload


def tc_hw(*args, timeout=300, cwd=None):
    return subprocess.run([sys.executable, "-m", "tc_hw.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def _program():
    """The paper's 8x4 cos computer (the default board's graph) with fixed weights that fit the
    default board's ranges unscaled: its loss is poor, but its output rises with z (by about 0.11
    over [0, 1], reading spread 0.3) and every element is non-zero where the board has a channel."""
    p = cos_network()
    return p.copy(coupling=np.full(p.network.n_edges, -0.2), crossbar=np.full(p.network.n_crossbar, -1.0),
                  readout=np.full((1, 8), 0.4))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    save_params(_program(), d / "cos.h5")
    np.save(d / "inputs.npy", np.linspace(0.0, 1.0, 5))
    return d


def _loss_from_file(path) -> float:
    """Loss (14) recomputed from the file alone: readout of the stored node means vs cos(2 pi z)."""
    with h5py.File(path, "r") as f:
        z = f["entry/inputs"][:, 0]
        x = f["entry/samples/node_units"][()]
    f_out = _program().readout[0]
    return float(np.mean((x.mean(axis=1) @ f_out - np.cos(2 * np.pi * z)) ** 2))


# ------------------------------------------------------------------------------------ hashes
def test_program_hash_is_format_independent_and_sensitive(tmp_path):
    p = _program()
    h = provenance.program_sha256(p)
    assert len(h) == 64
    assert provenance.program_sha256(load_params(save_params(p, tmp_path / "p.h5"))) == h
    assert provenance.program_sha256(load_params(save_params(p, tmp_path / "p.json"))) == h
    bias = p.bias.copy()
    bias[3] = np.nextafter(bias[3], 1.0)  # one ulp
    assert provenance.program_sha256(p.copy(bias=bias)) != h
    assert provenance.program_sha256(p.copy(readout=None)) != h
    with h5py.File(tmp_path / "p.h5", "r") as f:
        block = f["entry/provenance"].attrs
        assert block["program_sha256"] == h and block["schema"] == provenance.SCHEMA
    assert json.loads((tmp_path / "p.json").read_text())["tc_hw_provenance"]["program_sha256"] == h
    assert provenance.read(tmp_path / "p.json")["blocks"]["tc_hw_provenance"]["program_sha256"] == h


def test_calibration_hash_is_of_the_entry_content(tmp_path):
    dev = TwinDevice()
    path = tmp_path / "cal.h5"
    first = _write_entry(path, dev, 1.0)
    second = _write_entry(path, dev, 1.05)
    h1, h2 = provenance.calibration_sha256(path, first), provenance.calibration_sha256(path, second)
    assert h1 != h2  # different fits
    size = path.stat().st_size
    _write_entry(path, dev, 2.0)  # appending changes the file's bytes ...
    assert path.stat().st_size != size
    assert provenance.calibration_sha256(path, first) == h1  # ... not the content of the entry used
    blocks = provenance.read(path)["blocks"]
    assert blocks[f"/entries/{first}/provenance"]["board_identity"] == dev.identity
    assert len(blocks) == 3 and provenance.read(path)["kind"] == "calibration"


def test_source_commit_never_fails_without_git(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    provenance.source_commit.cache_clear()  # looked up once per process
    try:
        assert provenance.source_commit() == ("", None)
        assert provenance.collect()["source_commit"] == ""
    finally:
        provenance.source_commit.cache_clear()


# ------------------------------------------------------------------------------------ tc-hw run
def test_run_on_the_twin_with_a_task(files):
    out = tc_hw("run", "--resource", "twin", "--params", "cos.h5", "--task", "cos", "--points", "25",
                "--samples", "200", "--batch", "10", "--out", "run.h5", "--json", cwd=files)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    for k in ("loss", "twin_loss", "inputs", "samples", "seconds"):
        assert k in r
    assert r["inputs"] == 25 and r["samples"] == 200 and r["acquisitions"] == 3
    run = read_run(files / "run.h5")
    assert run["complete"] and run["completed_inputs"] == 25
    assert run["volts"].shape == (25, 200, 8) and np.all(run["nodes"] == np.arange(24, 32))
    assert np.array_equal(run["node_units"], run["volts"])  # the twin: ideal ADC, node units = volts
    assert np.all(np.abs(run["channel_volts"] - run["requested_volts"]) <= 20 / 65536 / 2)
    assert np.all(run["temperature_k"] == 300.0) and len(run["temperature_k"]) == 3
    assert r["loss"] == pytest.approx(_loss_from_file(files / "run.h5"), rel=1e-12)
    # The board path (mapping, DAC grid, time scale, device) against the program simulated in its own
    # units (twin_loss, another code path): independent estimates, so they differ by noise only.
    # sigma: delta-method spread of each loss from the stored standard errors; 5 sigma (false alarm
    # < 1e-6) plus the finite-sample bias mean(sem^2) of each.
    y, sem = run["mean"], run["mean_errors"]
    resid = y - np.cos(2 * np.pi * run["inputs"][:, 0])
    sigma = np.sqrt(2 * np.sum(4 * resid**2 * sem**2)) / len(y)
    assert abs(r["loss"] - r["twin_loss"]) < 5 * sigma + 2 * np.mean(sem**2), (r["loss"], r["twin_loss"], sigma)
    # The outputs input by input against the program simulated in its own units (sim_backend.twin,
    # its own seed): chi-square over the 25 inputs, 25 degrees of freedom, refused above the 0.999
    # quantile 52.6. Power: a factor-2 error of the board time scale gives chi2 ~ 190 (t / 2) to
    # ~ 1600 (2 t); a 30 % error of the input scale (chi2 ~ 27) is NOT detectable at this size.
    from sim_backend import twin

    p = _program()
    ref = twin.sample_reset(p, run["inputs"], 1.0, 2000, dt=1e-3, seed=7, nodes=p.network.outputs).x[:, :, 0, :]
    ref = ref @ p.readout[0]
    d = (y - ref.mean(axis=1)) / np.sqrt(sem**2 + ref.var(axis=1, ddof=1) / ref.shape[1])
    assert np.sum(d**2) < 52.6, np.sum(d**2)
    rep = tc_hw("report", "run.h5", "--json", cwd=files)
    assert rep.returncode == 0, rep.stderr
    block = json.loads(rep.stdout)["provenance"]["/entry/provenance"]
    assert block["board_identity"].startswith("TWIN") and block["tc_hw_version"]
    assert block["program_sha256"] == provenance.program_sha256(load_params(files / "cos.h5"))
    assert block["command_line"].startswith("tc-hw run --resource twin")
    assert block["arguments"]["samples"] == 200 and block["seeds"]["seed"] == 0


def test_run_on_arbitrary_inputs_without_a_task(files):
    out = tc_hw("run", "--resource", "twin", "--params", "cos.h5", "--inputs", "inputs.npy", "--samples", "50",
                "--out", "run2.h5", "--json", cwd=files)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["loss"] is None and r["twin_loss"] is None and r["inputs"] == 5
    run = read_run(files / "run2.h5")
    assert np.allclose(run["inputs"][:, 0], np.linspace(0, 1, 5)) and run["mean"].shape == (5,)
    assert np.allclose(run["mean"], run["node_units"].mean(axis=1) @ _program().readout[0])
    with h5py.File(files / "inputs.h5", "w") as f:  # HDF5 inputs; a run file's inputs run again too
        f["inputs"] = np.array([[0.1], [0.9]])
    for source in ("inputs.h5", "run2.h5"):
        out = tc_hw("run", "--resource", "twin", "--params", "cos.h5", "--inputs", source, "--samples", "5",
                    "--out", f"again_{source}", "--json", cwd=files)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["inputs"] == (2 if source == "inputs.h5" else 5)


@pytest.mark.parametrize("extra, message", [
    (["--samples", "0"], "--samples"),
    (["--time", "-1"], "--time"),
    (["--inputs", "missing.npy"], "no inputs file"),
    (["--task", "cos", "--inputs", "inputs.npy"], "exactly one"),
    (["--task", "nope"], "unknown task"),
    (["--scale", "-2"], "--scale"),
])
def test_bad_arguments_are_refused_before_any_file_is_made(files, extra, message):
    args = ["run", "--resource", "twin", "--params", "cos.h5", "--out", "bad.h5"]
    if "--samples" not in extra:
        args += ["--samples", "10"]
    if not any(a in extra for a in ("--inputs", "--task")):
        args += ["--inputs", "inputs.npy"]
    out = tc_hw(*args, *extra, cwd=files)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert not (files / "bad.h5").exists()


def test_existing_file_is_kept_unless_overwrite(files):
    (files / "keep.h5").write_bytes(b"precious")
    args = ("run", "--resource", "twin", "--params", "cos.h5", "--inputs", "inputs.npy", "--samples", "5",
            "--out", "keep.h5")
    out = tc_hw(*args, cwd=files)
    assert out.returncode == 2 and "exists" in out.stderr
    assert (files / "keep.h5").read_bytes() == b"precious"
    assert tc_hw(*args, "--overwrite", cwd=files).returncode == 0
    assert read_run(files / "keep.h5")["complete"]


def test_a_killed_run_leaves_a_readable_file_marked_incomplete(files):
    """SIGKILL during the second acquisition: the first batch is in the file, the run says incomplete."""
    script = textwrap.dedent(f"""
        import os, signal
        import calibration
        from sim_backend.device import TwinDevice
        from tc_hw import load_params
        from tc_hw.run import run_program

        class Dying(TwinDevice):
            calls = 0
            def acquire(self, *a, **k):
                Dying.calls += 1
                if Dying.calls == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
                return super().acquire(*a, **k)

        dev = Dying()
        run_program(dev, load_params({str(files / 'cos.h5')!r}), calibration.nominal(dev.channel_map),
                    [[0.0], [0.25], [0.5], [0.75], [1.0]], {str(files / 'killed.h5')!r}, samples=20, batch=2)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode == -9, proc.stderr
    run = read_run(files / "killed.h5")
    assert not run["complete"] and run["completed_inputs"] == 2
    assert np.isfinite(run["volts"]).all() and run["volts"].shape == (2, 20, 8)
    rep = tc_hw("report", "killed.h5", cwd=files)
    assert rep.returncode == 0 and "INCOMPLETE" in rep.stdout, rep.stdout + rep.stderr


def test_acquire_out_writes_a_run_file(files):
    out = tc_hw("acquire", "--resource", "twin", "--samples", "30", "--set", "0=1.0", "--out", "acq.h5", "--json",
                cwd=files)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    run = read_run(files / "acq.h5")
    assert run["complete"] and run["volts"].shape == (1, 30, 32)
    assert np.allclose(run["volts"][0].mean(axis=0), r["mean_v"])
    assert run["channel_volts"][0] == pytest.approx(1.0, abs=20 / 65536)


# ------------------------------------------------------------------------------------ an emulated board
def test_run_on_an_emulated_board_through_a_calibration(files, emulator):  # noqa: F811
    """PyVISA over TCP to the emulator process; a (nominal-curve) calibration record of that board."""
    from drivers.board import open_visa

    dev = open_visa(emulator.tcp)
    try:
        entry = _write_entry(files / "cal.h5", dev, 1.0)
    finally:
        dev.close()
    out = tc_hw("run", "--resource", emulator.tcp, "--params", "cos.h5", "--task", "cos", "--samples", "10",
                "--out", "nocal.h5", cwd=files)
    assert out.returncode == 2 and "needs --cal" in out.stderr and not (files / "nocal.h5").exists()
    out = tc_hw("run", "--resource", emulator.tcp, "--params", "cos.h5", "--cal", "cal.h5", "--task", "cos",
                "--points", "20", "--samples", "100", "--out", "board.h5", "--json", cwd=files)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["identity"].startswith("TCLAB") and np.isfinite(r["loss"]) and np.isfinite(r["twin_loss"])
    run = read_run(files / "board.h5")
    assert run["complete"] and run["volts"].shape == (20, 100, 8)
    assert 250 < run["temperature_k"][0] < 350
    with h5py.File(files / "board.h5", "r") as f:
        assert f["entry/samples/volts"].attrs["units"] == "V"
    rep = tc_hw("report", "board.h5", "--json", cwd=files)
    block = json.loads(rep.stdout)["provenance"]["/entry/provenance"]
    assert block["board_identity"] == r["identity"] and block["board_technology"] == "RLC"
    assert block["calibration_entry"] == entry
    assert block["calibration_sha256"] == provenance.calibration_sha256(files / "cal.h5", entry)
    assert block["program_sha256"] == provenance.program_sha256(load_params(files / "cos.h5"))
    assert block["tc_hw_version"]


# ------------------------------------------------------------------------------------ NeXus
def test_nexus_readers_plot_the_intended_data(files, tmp_path):
    from tc_hw.model.runlog import RunLog

    if not (files / "run.h5").exists():
        test_run_on_the_twin_with_a_task(files)
    data = NXLOAD(str(files / "run.h5"), "r").plottable_data
    assert data.nxpath == "/entry/outputs" and data.nxsignal.nxname == "mean"
    assert data.nxsignal.shape == (25,) and [a.nxname for a in data.nxaxes] == ["input"]
    log = tmp_path / "log.h5"
    with RunLog.create(log, {"task": "cos"}, population=3, n_params=2, elites=1,
                       instrument={"identity": "TEST,1", "technology": "RLC"}) as rl:
        for g in range(2):
            rl.append(g, {"population": np.zeros((3, 2)), "losses": np.ones(3), "elite_losses": [1.0],
                          "best_loss": 1.0 / (g + 1), "best": [0.0, 0.0], "temperature_k": [300, 300],
                          "wall_s": 1.0, "retries": 0, "paused_s": 0.0})
    data = NXLOAD(str(log), "r").plottable_data
    assert data.nxpath == "/entry/generations" and data.nxsignal.nxname == "best_loss"
    assert np.allclose(data.nxsignal.nxvalue, [1.0, 0.5])
    block = provenance.read(log)["blocks"]["/entry/provenance"]
    assert block["board_identity"] == "TEST,1" and block["writer"] == "run-log"


def test_report_reads_every_kind_of_tc_hw_file(files, tmp_path):
    from tc_hw.model.runlog import RunLog

    dev = TwinDevice()
    entry = _write_entry(tmp_path / "cal.h5", dev, 1.0)
    log = tmp_path / "log.h5"
    with RunLog.create(log, {"task": "cos"}, population=2, n_params=1, elites=1, instrument={"identity": "X"}) as rl:
        rl.append(0, {"population": np.zeros((2, 1)), "losses": [1.0, 2.0], "elite_losses": [1.0], "best_loss": 1.0,
                      "best": [0.0], "temperature_k": [300, 300], "wall_s": 1.0, "retries": 0, "paused_s": 0.0})
    cases = {files / "cos.h5": ("params", "/entry/provenance"),
             tmp_path / "cal.h5": ("calibration", f"/entries/{entry}/provenance"),
             log: ("run-log", "/entry/provenance")}
    for path, (kind, where) in cases.items():
        out = tc_hw("report", str(path), "--folder", str(tmp_path), "--json")
        assert out.returncode == 0, out.stderr
        r = json.loads(out.stdout)
        assert r["kind"] == kind and r["provenance"][where]["tc_hw_version"], r
    assert r["generations"] == 1 and len(r["plots"]) == 3  # a run log still gets its plots
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    out = tc_hw("report", str(tmp_path / "junk.h5"))
    assert out.returncode == 2 and "not a readable HDF5" in out.stderr


def test_run_loss_agrees_with_the_refinement_measurement(tmp_path):
    """`run_program` against `tc_hw.refine.measure_cos_loss` (another code path: refinement's
    problem) on the twin, independent noise: the losses differ by noise only.  sigma is the
    delta-method spread of one estimate from the stored standard errors; 5 x sqrt(2) sigma leaves a
    false alarm below 1e-6.  (On the demo board, 250 x 1000 readings, the two agreed to 1.4e-4
    with sigma = 7e-5.)"""
    import calibration
    from tc_hw.refine import measure_cos_loss, measure_cos_losses
    from tc_hw.run import CosTask, run_program

    dev, p, task = TwinDevice(), _program(), CosTask(25)
    cal = calibration.nominal(dev.channel_map)
    ref = measure_cos_loss(dev, p, cal, points=25, samples=400, seed=11)
    r = run_program(dev, p, cal, task.inputs, tmp_path / "x.h5", samples=400, task=task, seed=5, twin=False)
    run = read_run(tmp_path / "x.h5")
    resid = run["mean"] - np.cos(2 * np.pi * run["inputs"][:, 0])
    sigma = np.sqrt(np.sum(4 * resid**2 * run["mean_errors"] ** 2)) / len(resid)
    assert abs(r["loss"] - ref) < 5 * np.sqrt(2) * sigma, (r["loss"], ref, sigma)
    assert sigma < 0.01  # the check has teeth: the loss is about 0.5
    # the unbiased loss subtracts the variance of each mean answer: the same, within 20 %, as the
    # run's squared standard errors (25 inputs x 400 readings: their mean has a relative error of 1.4 %)
    plain, unbiased = measure_cos_losses(dev, p, cal, points=25, samples=400, seed=11)
    assert plain == ref
    assert plain - unbiased == pytest.approx(np.mean(run["mean_errors"] ** 2), rel=0.2)


def test_a_program_that_would_rail_is_refused_before_anything_is_sent(tmp_path):
    """Rescaled by 0.2 the program's nodes reach about 3.6 V (five times 0.72 V) against the 2.7 V
    guard: refused naming both figures, no file, no volts written; --allow-rails runs it anyway."""
    import calibration
    from tc_hw.run import RunError, CosTask, run_program

    dev, task = TwinDevice(), CosTask(20)
    cal = calibration.nominal(dev.channel_map)
    before = np.asarray(dev.get_channels(0, len(dev.channel_map)))
    railing = _program().rescaled(0.2)
    with pytest.raises(RunError, match=r"reach 3\.\d+ V .*safe: 2\.70 V"):
        run_program(dev, railing, cal, task.inputs, tmp_path / "r.h5", samples=5, task=task)
    assert not (tmp_path / "r.h5").exists()
    assert np.array_equal(np.asarray(dev.get_channels(0, len(dev.channel_map))), before)
    ok = run_program(dev, _program(), cal, task.inputs, tmp_path / "ok.h5", samples=5, task=task, twin=False)
    assert 0.5 < ok["node_extent_v"] < 1.0 and ok["safe_v"] == 2.7
    forced = run_program(dev, railing, cal, task.inputs, tmp_path / "f.h5", samples=5, task=task, twin=False,
                         allow_rails=True)
    assert "node_extent_v" not in forced and read_run(tmp_path / "f.h5")["complete"]
