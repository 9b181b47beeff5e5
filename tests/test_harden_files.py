"""Issue 15 reproductions for files: run logs (items 1, 2, 7, 13), loaders (8, 11, 12).

Each test here failed before the fix it names (a hang, a traceback, a silent overwrite).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from tc_hw.model.runlog import LogBusyError, RunLog, lock_path_of, read_log
from tc_hw.model.safeio import hdf5_problem

HOLDER = """
import sys, time, numpy as np
from tc_hw.model.runlog import RunLog
log = RunLog.reopen(sys.argv[1]) if sys.argv[2] == "reopen" else RunLog.create(
    sys.argv[1], {"task": "cos"}, population=4, n_params=3, elites=2)
g = log.completed
log.append(g, {"population": np.full((4, 3), g), "losses": np.arange(4.0), "elite_losses": [0, 1],
               "best_loss": g, "best": np.full(3, g), "temperature_k": [300, 300], "wall_s": 1, "retries": 0,
               "paused_s": 0})
print("ready", flush=True)
time.sleep(60)
"""


def _row(g):
    return {"population": np.full((4, 3), g, float), "losses": np.arange(4.0) + g, "elite_losses": [g, g + 1],
            "best_loss": g, "best": np.full(3, g), "temperature_k": [300, 301], "wall_s": 1.0, "retries": 0,
            "paused_s": 0.0}


def _holder(path, how):
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), how], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert p.stdout.readline().strip() == "ready"
    return p


def _make_log(path, generations=3):
    with RunLog.create(path, {"task": "cos"}, population=4, n_params=3, elites=2) as log:
        for g in range(generations):
            log.append(g, _row(g))


def test_item1_second_writer_on_a_live_log_is_refused_naming_the_pid(tmp_path):
    path = tmp_path / "run.h5"
    _make_log(path, 2)
    before = path.read_bytes()
    p = _holder(path, "reopen")  # a live writer: generation 2 committed, still running
    try:
        with pytest.raises(LogBusyError, match=rf"process {p.pid}\b"):
            RunLog.reopen(path)
        with pytest.raises((LogBusyError, FileExistsError)):
            RunLog.create(path, {}, population=4, n_params=3, elites=2)
        assert read_log(path)["completed_generations"] == 3  # nothing rewritten under the writer
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert len(before)  # the killed writer's lock is gone with it: resuming works, nothing lost
    with RunLog.reopen(path) as log:
        assert log.completed == 3
        log.append(3, _row(3))
    np.testing.assert_array_equal(read_log(path)["best_loss"], [0, 1, 2, 3])


def test_item1_killed_creator_leaves_no_held_lock(tmp_path):
    path = tmp_path / "run.h5"
    p = _holder(path, "create")
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert lock_path_of(path).exists()  # the file stays; the kernel dropped the flock
    with RunLog.reopen(path) as log:
        assert log.completed == 1


@pytest.mark.parametrize("keep", [100, 2000, 9000, 0.87, -1])
def test_item2_truncated_log_is_refused_at_once(tmp_path, keep):
    path, cut = tmp_path / "run.h5", tmp_path / "t.h5"
    _make_log(path)
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (len(data) + keep if keep < 0 else keep)
    cut.write_bytes(data[:n])
    t = time.monotonic()
    with pytest.raises(ValueError, match="truncated"):
        read_log(cut)
    with pytest.raises(ValueError, match="truncated"):
        RunLog.reopen(cut)
    assert time.monotonic() - t < 5


def test_item2_report_on_a_truncated_log_exits_2_quickly(tmp_path, capsys):
    from tc_hw.cli import main

    path, cut = tmp_path / "run.h5", tmp_path / "t.h5"
    _make_log(path)
    cut.write_bytes(path.read_bytes()[:2000])
    t = time.monotonic()
    assert main(["report", str(cut), "--folder", str(tmp_path / "rep")]) == 2
    assert "truncated" in capsys.readouterr().err and time.monotonic() - t < 10


def test_item7_dangling_log_symlink_is_not_followed(tmp_path):
    target, link = tmp_path / "elsewhere.h5", tmp_path / "run.h5"
    link.symlink_to(target)
    with pytest.raises((ValueError, FileExistsError), match="symlink"):
        RunLog.create(link, {}, population=4, n_params=3, elites=2)
    assert not target.exists()


def test_item7_rewrite_uses_no_fixed_temporary_name(tmp_path):
    path = tmp_path / "run.h5"
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / "run.h5.rewrite").symlink_to(victim)
    p = _holder(path, "create")
    p.send_signal(signal.SIGKILL)  # superblock left marked open: reopen copies the file clean
    p.wait()
    with RunLog.reopen(path) as log:
        assert log.completed == 1
    assert victim.read_text() == "keep me"


def test_log_sizes_are_checked_before_the_file_is_created(tmp_path):
    path = tmp_path / "run.h5"
    for bad in ({"population": 0}, {"n_params": -5}, {"elites": 9}):
        kw = {"population": 4, "n_params": 3, "elites": 2, **bad}
        with pytest.raises(ValueError):
            RunLog.create(path, {}, **kw)
        assert not path.exists()


def _craft(path, mutate):
    _make_log(path)
    with h5py.File(path, "r+") as f:
        mutate(f)


@pytest.mark.parametrize("mutate", [
    lambda f: f["entry/completed_generations"].__setitem__(0, 99),
    lambda f: f["entry/completed_generations"].__setitem__(0, -3),
    lambda f: f["entry"].attrs.__setitem__("format_version", 99),
    lambda f: f["entry"].attrs.__setitem__("format_version", "x"),
    lambda f: f["entry/config"].__delitem__ if False else f.__delitem__("entry/config"),
    lambda f: (f.__delitem__("entry/config"), f["entry"].create_dataset("config", data="[1, 2]")),
    lambda f: f.__delitem__("entry/generations/best_loss"),
    lambda f: (f.__delitem__("entry/generations/best"), f["entry/generations"].create_group("best")),
    lambda f: (f.__delitem__("entry/instrument"), f["entry"].create_dataset("instrument", data=1)),
], ids=["count-high", "count-negative", "version-99", "version-text", "no-config", "config-list",
        "no-best-loss", "best-is-group", "instrument-dataset"])
def test_item13_crafted_logs_are_clear_errors(tmp_path, mutate, capsys):
    from tc_hw.cli import main

    path = tmp_path / "run.h5"
    _craft(path, mutate)
    with pytest.raises(ValueError):
        read_log(path)
    assert main(["report", str(path), "--folder", str(tmp_path / "rep")]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_hdf5_problem_names_folders_and_empty_files(tmp_path):
    (tmp_path / "e.h5").write_bytes(b"")
    assert "signature" in hdf5_problem(tmp_path / "e.h5")
    assert "folder" in hdf5_problem(tmp_path)
    assert hdf5_problem(tmp_path / "none.h5") == "no such file"


# ------------------------------------------------------------------ parameter files (items 6, 8, 11)
from tc_hw.model.files import load_params, save_params  # noqa: E402
from tc_hw.model.network import layered  # noqa: E402
from tc_hw.model.params import Params, ParamsError  # noqa: E402


def small_params():
    return Params.uniform(layered(2, 2), bias=0.1, coupling=0.2, crossbar=0.3)


def _json_file(tmp_path, doc, name="p.json"):
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return p


def _good_json(tmp_path):
    return json.loads(save_params(small_params(), tmp_path / "good.json").read_text())


@pytest.mark.parametrize("mutate", [
    lambda d: [], lambda d: None, lambda d: 42, lambda d: {**d, "network": None}, lambda d: {**d, "kT": None},
    lambda d: {**d, "kT": -1}, lambda d: {**d, "params": []}, lambda d: {**d, "format_version": 99},
    lambda d: {**d, "format_version": "1"}, lambda d: {**d, "network": {**d["network"], "edges": [[0, 1, 2]]}},
    lambda d: {**d, "params": {**d["params"], "bias": "x"}},
], ids=["list", "null", "int", "network-null", "kT-null", "kT-negative", "params-list", "version-99",
        "version-text", "edges-3", "bias-text"])
def test_item8_item11_bad_json_params_are_params_errors(tmp_path, mutate):
    p = _json_file(tmp_path, mutate(_good_json(tmp_path)))
    with pytest.raises(ParamsError):
        load_params(p)


def test_item11_deep_nesting_is_a_params_error(tmp_path):
    p = _json_file(tmp_path, '{"format": "tc-hw/params", "format_version": 1, "network": ' + "[" * 100000
                   + "]" * 100000 + "}")
    with pytest.raises(ParamsError):
        load_params(p)


def test_item8_hdf5_version_and_item11_soft_link_loop(tmp_path):
    p = save_params(small_params(), tmp_path / "p.h5")
    assert load_params(p).network.n_nodes == 4
    with h5py.File(p, "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(ParamsError, match="format_version"):
        load_params(p)
    q = save_params(small_params(), tmp_path / "q.h5")
    with h5py.File(q, "r+") as f:
        del f["network/edges"]
        f["network/edges"] = h5py.SoftLink("/network/loop")
        f["network/loop"] = h5py.SoftLink("/network/edges")
    with pytest.raises(ParamsError):
        load_params(q)


def test_item6_writing_parameters_over_a_calibration_record_is_refused(tmp_path):
    cal = tmp_path / "cal.h5"
    with h5py.File(cal, "w") as f:
        f.attrs.update(format="tc-hw/calibration", format_version=1)
        f.create_group("entries")
    before = cal.read_bytes()
    with pytest.raises(ValueError, match="calibration"):
        save_params(small_params(), cal)
    assert cal.read_bytes() == before
    log = tmp_path / "run.h5"
    _make_log(log, 1)
    with pytest.raises(ValueError, match="run-log"):
        save_params(small_params(), log)
    (tmp_path / "notes.h5").write_text("my notes")
    with pytest.raises(ValueError, match="not an HDF5"):
        save_params(small_params(), tmp_path / "notes.h5")


def test_item7_parameter_json_is_not_written_through_a_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (tmp_path / "p.json").symlink_to(victim)
    with pytest.raises(ValueError, match="symlink"):
        save_params(small_params(), tmp_path / "p.json")
    assert victim.read_text() == "keep"


def test_item7_ga_checkpoint_has_no_fixed_temporary_name(tmp_path):
    from tc_hw.train.ga import GeneticAlgorithm

    victim = tmp_path / "victim"
    victim.write_text("keep me")
    ckpt = tmp_path / "run.h5.ga.h5"
    (tmp_path / "run.h5.ga.h5.tmp").symlink_to(victim)  # the old fixed name, pre-placed
    ga = GeneticAlgorithm(np.zeros(3), np.ones(3), population=4, elites=2, seed=0)
    ga.save(ckpt)
    assert victim.read_text() == "keep me"
    assert GeneticAlgorithm.load(ckpt).generation == ga.generation
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.h5.ga.h5")]  # no leftovers
    ckpt.write_bytes(ckpt.read_bytes()[:500])
    with pytest.raises(ValueError, match="truncated"):
        GeneticAlgorithm.load(ckpt)


@pytest.mark.slow
def test_item1_cli_resume_of_a_live_refine_is_refused_and_nothing_is_lost(tmp_path, capsys):
    """The issue's reproduction, end to end: `tc-hw refine` running, a second `--resume`."""
    from tc_hw.cli import main
    from tests.test_refine import program as _program_fixture

    params = _program_fixture.__wrapped__(None) if hasattr(_program_fixture, "__wrapped__") else None
    if params is None:
        pytest.skip("program fixture not callable here")
    prog = save_params(params, tmp_path / "cos.h5")
    log = tmp_path / "tw4.h5"
    argv = ["refine", "--resource", "twin", "--params", str(prog), "--generations", "25", "--population", "6",
            "--points", "5", "--samples", "10", "--final-samples", "20", "--log", str(log)]
    p = subprocess.Popen([sys.executable, "-m", "tc_hw.cli", *argv, "--json"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if read_log(log)["completed_generations"] >= 2:
                    break
            except ValueError:
                pass
            time.sleep(0.2)
        assert main([*argv, "--resume"]) == 2
        assert f"process {p.pid}" in capsys.readouterr().err
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    before = read_log(log)
    n = before["completed_generations"]
    assert n >= 2
    assert main([*argv, "--resume", "--json"]) == 0
    after = read_log(log)
    assert after["completed_generations"] == 25  # resumed to the end, the first n kept as they were
    np.testing.assert_array_equal(after["losses"][:n], before["losses"])


KILLED = """
import os, sys, numpy as np
from tc_hw.model.runlog import RunLog
log = RunLog.create(sys.argv[1], {"task": "cos"}, population=4, n_params=3, elites=2)
for g in range(3):
    log.append(g, {"population": np.full((4, 3), g), "losses": np.arange(4.0), "elite_losses": [g, g],
                   "best_loss": g, "best": np.full(3, g), "temperature_k": [300, 300], "wall_s": 0.0,
                   "retries": 0, "paused_s": 0.0})
os._exit(0)
"""


@pytest.mark.parametrize("where", [0.1, 0.5, 0.7])
def test_item2_damaged_log_of_a_killed_writer_fails_fast(tmp_path, where):
    """A SWMR-marked file with a damaged byte: h5py's SWMR reader retried for hours before."""
    path = tmp_path / "k.h5"
    subprocess.run([sys.executable, "-c", KILLED, str(path)], check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    data = bytearray(path.read_bytes())
    data[int(where * len(data))] ^= 0x55
    path.write_bytes(bytes(data))
    t = time.monotonic()
    try:
        read_log(path)
    except ValueError:
        pass
    assert time.monotonic() - t < 5


def test_item2_a_global_heap_hdf5_would_parse_forever_is_refused_at_once(tmp_path):
    """One byte of a calibration record's string heap set to 0 made h5py spin forever (fuzz find)."""
    import calibration
    from tc_hw.model.safeio import hdf5_problem
    from tests.fuzzlib import Corpus

    c = Corpus(tmp_path / "c")
    data = bytearray(c.bytes["cal"])
    pos = data.find(b"GCOL")
    assert pos > 0
    # the collection's last object is its free space (index 0): give it size 0
    size = int.from_bytes(data[pos + 8:pos + 16], "little")
    p, end = pos + 16, pos + size
    while p + 16 <= end:
        idx, osize = int.from_bytes(data[p:p + 2], "little"), int.from_bytes(data[p + 8:p + 16], "little")
        if idx == 0:
            data[p + 8:p + 16] = bytes(8)
            break
        p += 16 + (osize + 7) // 8 * 8
    else:
        pytest.skip("no free-space object in this heap")
    bad = tmp_path / "cal.h5"
    bad.write_bytes(bytes(data))
    t = time.monotonic()
    assert "global heap" in hdf5_problem(bad)
    with pytest.raises(calibration.CalibrationError, match="global heap"):
        calibration.load(bad)
    assert time.monotonic() - t < 5


def test_fuzz_find_a_damaged_unused_string_attribute_does_not_hang_the_loader():
    """benchmarks/fuzz.py found it (1 case in 10115): 12 spliced bytes in the root group's
    software_version attribute made HDF5 spin converting it; the loader now reads only what it
    needs.  (The same damage in an attribute it needs would still spin inside HDF5.)"""
    from pathlib import Path

    from tests.fuzzlib import _in_child, _load_outcome, _load_params

    path = Path(__file__).parent / "data" / "fuzz_hang_params_attr.h5"
    outcome = _in_child(lambda: _load_outcome(_load_params, path), 5.0)  # a forked child: CI never hangs
    assert outcome == "", "no result within 5 s" if outcome is None else outcome
