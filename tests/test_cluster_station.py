"""Boards of a station as Ray actors: ``tc-hw calibrate --station --cluster local`` and
``tc-hw refine --station`` against two emulator processes on 127.0.0.1."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from sim_backend.emulator.process import running_emulator

ray = pytest.importorskip("ray")

#: calibration settings small enough for CI (the accuracy is test_calibration's business)
TINY_CAL = dict(chains=32, samples=64, burn_tau=4.0, groups=8, self_levels=5, max_matchings=1, edge_levels=5,
                integrator_dt_tau=1e-3, adc_samples=16, tau_samples=128, tau_repeats=2, plots=False)


@pytest.fixture(scope="module")
def two_boards(tmp_path_factory):
    """Two emulator processes (default board), each its own TCP port on 127.0.0.1."""
    work = tmp_path_factory.mktemp("boards")
    with running_emulator(truth=False, workdir=work / "a") as a, running_emulator(truth=False, workdir=work / "b") as b:
        yield {"bench_a": a, "bench_b": b}


def station_file(path, boards, *, cal=None, cluster=None) -> str:
    lines = []
    if cluster:
        lines += ["[cluster]", f'address = "{cluster}"', ""]
    lines += ["[calibrate]"] + [f"{k} = {json.dumps(v)}" for k, v in TINY_CAL.items()] + [""]
    for name, emu in boards.items():
        lines += [f"[board.{name}]", f'resource = "{emu.tcp}"']
        if cal:
            lines.append(f'calibration = "{cal[name]}"')
        lines.append("")
    path.write_text("\n".join(lines))
    return str(path)


def test_station_file_cluster_and_calibrate_tables(tmp_path):
    from tc_hw.station import boards, calibrate_options, cluster_address

    st = station_file(tmp_path / "s.toml", {}, cluster="local")
    assert cluster_address(st) == "local" and boards(st) == {}
    assert calibrate_options(st)["chains"] == TINY_CAL["chains"]
    (tmp_path / "bad.toml").write_text("[cluster]\naddress = 5\n")
    with pytest.raises(ValueError, match="address"):
        cluster_address(tmp_path / "bad.toml")


def test_calibrate_station_refuses_unknown_options_and_empty_stations(tmp_path, capsys):
    from tc_hw.cli import main

    st = tmp_path / "s.toml"
    st.write_text('[calibrate]\nchainz = 3\n[board.x]\nresource = "twin"\n')
    assert main(["calibrate", "--station", str(st)]) == 2
    assert "chainz" in capsys.readouterr().err
    st.write_text("[calibrate]\nchains = 3\n")
    assert main(["calibrate", "--station", str(st), "--cluster", "local"]) == 2
    assert "names no boards" in capsys.readouterr().err
    assert main(["calibrate", "--station", str(st), "--resource", "twin", "--out", str(tmp_path / "c.h5")]) == 2
    assert main(["calibrate", "--resource", "twin", "--out", str(tmp_path / "c.h5"), "--cluster", "local"]) == 2
    assert "--station" in capsys.readouterr().err and not (tmp_path / "c.h5").exists()


def test_calibrate_two_boards_at_once_one_record_each(two_boards, tmp_path, capsys):
    import calibration
    from tc_hw.cli import main

    st = station_file(tmp_path / "station.toml", two_boards)
    rc = main(["calibrate", "--station", st, "--cluster", "local", "--out", str(tmp_path / "cal"), "--json"])
    r = json.loads(capsys.readouterr().out)
    assert rc == 0, r["errors"]
    assert r["errors"] == {} and sorted(r["boards"]) == ["bench_a", "bench_b"]
    for name, s in r["boards"].items():
        assert s["out"] == str((tmp_path / "cal" / f"{name}.h5").resolve())
        assert s["resource"] == two_boards[name].tcp
        cal = calibration.load(s["out"])
        assert cal.ok.sum() == s["channels_ok"] > 0  # fits and their quality: test_calibration's business
        assert len(calibration.entries(s["out"])) == 1
    assert r["boards"]["bench_a"]["worker_pid"] != r["boards"]["bench_b"]["worker_pid"] != os.getpid()


def test_refine_on_both_boards_of_a_station(two_boards, tmp_path, capsys):
    from tc_hw.cli import main
    from tc_hw.model.runlog import read_log

    prog = _program(tmp_path)
    st = station_file(tmp_path / "station.toml", two_boards, cluster="local")  # the station names the cluster
    log = tmp_path / "run.h5"
    rc = main(["refine", "--station", st, "--params", prog, "--generations", "1",
               "--population", "4", "--points", "3", "--samples", "4", "--final-samples", "4", "--log", str(log),
               "--json"])
    r = json.loads(capsys.readouterr().out)
    assert rc == 0, r["errors"]
    assert r["cluster"] == "local" and sorted(r["boards"]) == ["bench_a", "bench_b"]
    for name, res in r["boards"].items():
        board_log = tmp_path / f"run_{name}.h5"
        assert res["log"] == str(board_log.resolve()) or os.path.samefile(res["log"], board_log)
        assert read_log(board_log)["completed_generations"] == 1
        assert np.isfinite(res["refined_loss"]) and res["resource"] == two_boards[name].tcp


def test_a_board_actor_killed_mid_refine_is_restarted_and_resumes_its_log(two_boards, tmp_path, capsys):
    import signal
    import threading
    import time

    from tc_hw import cluster
    from tc_hw.cli import main
    from tc_hw.model.runlog import read_log

    prog = _program(tmp_path)
    st = station_file(tmp_path / "station.toml", two_boards)
    log = tmp_path / "run.h5"
    killed = []

    def kill_when_a_generation_is_logged():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            for name in two_boards:
                try:
                    done = read_log(tmp_path / f"run_{name}.h5")["completed_generations"]
                except (OSError, ValueError, KeyError):
                    continue
                pids = cluster.worker_pids("_Board.refine")
                if done >= 1 and pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
                    return
            time.sleep(0.05)

    t = threading.Thread(target=kill_when_a_generation_is_logged, daemon=True)
    t.start()
    rc = main(["refine", "--station", st, "--cluster", "local", "--params", prog, "--generations", "3",
               "--population", "4", "--points", "3", "--samples", "4", "--final-samples", "4", "--log", str(log),
               "--json"])
    t.join()
    r = json.loads(capsys.readouterr().out)
    assert killed, "no board actor was caught refining"
    assert rc == 0, r["errors"]
    assert len(r["restarts"]) == 1 and r["restarts"][0]["error"] in ("ActorDiedError", "ActorUnavailableError", "RayActorError")
    assert "resumed" in r["restarts"][0]["action"]
    for name in two_boards:
        assert read_log(tmp_path / f"run_{name}.h5")["completed_generations"] == 3
        assert np.isfinite(r["boards"][name]["refined_loss"])


def _program(tmp_path) -> str:
    """A cos program (aligned start, small readout) scaled to fit the default board; its path."""
    from calibration.scale import fitting_scale
    from sim_backend.device import TwinDevice
    from tc_hw.model.files import save_params
    from tc_hw.train.cos import cos_network, start_vector

    base = cos_network()
    p = base.with_vector(start_vector(base)).copy(readout=np.full((1, 8), 0.1))
    p = p.rescaled(fitting_scale(p, TwinDevice().channel_map))
    save_params(p, tmp_path / "p.h5", {"task": "cos"})
    return str(tmp_path / "p.h5")
