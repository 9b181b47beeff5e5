"""The command line against the twin and against an emulator process."""

import json
import subprocess
import sys

import pytest

from tests.emulator_process import emulator  # noqa: F401  (module-scoped fixture)


def tc_hw(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "tc_hw.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_info_and_acquire_through_the_emulator(emulator):  # noqa: F811
    out = tc_hw("info", "--resource", emulator.tcp, "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["identity"].startswith("TCLAB") and info["nodes"] == 32 and info["channels"] == 296
    out = tc_hw("acquire", "--resource", emulator.tcp, "--mode", "reset", "--time", "1e-6", "--samples", "200",
                "--set", "0=1.0", "32=1.0", "--json")
    assert out.returncode == 0, out.stderr
    acq = json.loads(out.stdout)
    assert len(acq["mean_v"]) == 32 and len(acq["std_v"]) == 32 and acq["samples"] == 200


def test_unsafe_set_is_refused_with_exit_code_2():
    out = tc_hw("acquire", "--resource", "twin", "--set", "0=9")
    assert out.returncode == 2 and "ch 0" in out.stderr and "outside" in out.stderr


def test_unreachable_board_is_a_device_fault():
    out = tc_hw("info", "--resource", "TCPIP0::127.0.0.1::1::SOCKET", timeout=120)
    assert out.returncode == 3, (out.returncode, out.stderr)


@pytest.mark.slow
def test_demo_runs_and_prints_json(tmp_path):
    """The whole loop (minutes: CI runs it as the README's first command, so it is marked slow here)."""
    out = tc_hw("demo", "--out", str(tmp_path / "demo"), "--json", timeout=1500)
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    for key in ("twin_loss", "nominal_upload_loss", "calibrated_upload_loss", "refined_loss",
                "energy_per_inference_kT", "report"):
        assert key in s
    assert s["calibrated_upload_loss"] < s["nominal_upload_loss"]
    assert s["refined_loss"] <= s["start_loss"] and s["refined_loss"] < s["calibrated_upload_loss"]
    assert s["seconds"]["total_s"] < 600


def test_station_file_names_a_board(tmp_path, monkeypatch):
    from tc_hw.station import boards, resolve

    st = tmp_path / "station.toml"
    st.write_text('[board.bench1]\nresource = "twin"\ncalibration = "cal/b1.h5"\n')
    monkeypatch.setenv("TC_HW_STATION", str(st))
    assert resolve("bench1")[0] == "twin" and resolve("twin:ideal") == ("twin:ideal", {})
    assert boards()["bench1"]["calibration"] == str(tmp_path / "cal" / "b1.h5")
    out = subprocess.run([sys.executable, "-m", "tc_hw.cli", "info", "--resource", "bench1", "--json"],
                         capture_output=True, text=True, timeout=120, env={**__import__("os").environ})
    assert out.returncode == 0 and json.loads(out.stdout)["nodes"] == 32
    st.write_text("[board.x]\nnote = 1\n")
    import pytest

    with pytest.raises(ValueError, match="resource"):
        boards()
