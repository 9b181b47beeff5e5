"""Issue 15 reproductions for the driver: bounded reads (3), one process per board (4), the
manual's DAC span (9), the emulator's output files (17), resource strings (18), and a fake board
misbehaving in every mode of :mod:`tests.fake_board` (clear errors, bounded time and memory)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest

from drivers.board import open_visa
from drivers.lock import BoardBusyError
from drivers.transport import classify_resource
from tc_hw.model.device import DeviceError, UnsafeVoltageError
from tests.fake_board import MODES, FakeBoard


@pytest.fixture(autouse=True)
def _private_lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TC_HW_LOCK_DIR", str(tmp_path / "locks"))


def _exercise(resource: str) -> str:
    """Open, write safe and unsafe channels, read back, close; returns 'ok' or raises."""
    with open_visa(resource, timeout_s=1.0, retries=1, reconnect_attempts=1) as b:
        b.set_channels(np.zeros(b.n_channels))
        v = np.zeros(b.n_channels)
        v[4] = 500.0
        with pytest.raises(UnsafeVoltageError):
            b.set_channels(v)
        assert np.all(b.get_channels() == 0)
    return "ok"


@pytest.mark.parametrize("mode", sorted(MODES))
def test_fake_board_every_mode_is_a_clear_error_in_bounded_time_and_memory(mode):
    with FakeBoard(mode) as fb:
        tracemalloc.start()
        t = time.monotonic()
        try:
            if mode == "good":
                assert _exercise(fb.resource) == "ok"
            else:
                with pytest.raises(DeviceError) as e:
                    _exercise(fb.resource)
                assert fb.resource.split("::")[2] in str(e.value) or len(str(e.value)) > 20
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert time.monotonic() - t < 15, "a misbehaving board must fail within the timeouts"
        assert peak < 64e6, f"{peak / 1e6:.0f} MB read from a misbehaving board"
        assert fb.unsafe_writes == 0


@pytest.mark.parametrize("mode", ["huge_header", "endless_line"])
def test_item3_reads_are_bounded_before_the_timeout(mode):
    with FakeBoard(mode) as fb:
        tracemalloc.start()
        t = time.monotonic()
        with pytest.raises(DeviceError, match="more than|longer than|lost|garbled"):
            open_visa(fb.resource, timeout_s=5.0, retries=0, reconnect_attempts=1)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert time.monotonic() - t < 4.0  # refused at the header / line bound, not by the 5 s timeout
        assert peak < 16e6


def test_item9_a_map_beyond_the_dac_span_is_refused():
    with FakeBoard("lying_map") as fb:
        with pytest.raises(DeviceError, match="DAC span"):
            open_visa(fb.resource, timeout_s=1.0)
        assert fb.writes == 0 and fb.unsafe_writes == 0


HOLDER = """
import sys, time
from drivers.board import open_visa
b = open_visa(sys.argv[1], timeout_s=2.0)
b.arm(True)
print("ready", flush=True)
time.sleep(60)
"""


def test_item4_one_process_per_board_and_readers_send_nothing():
    with FakeBoard("good") as fb:
        p = subprocess.Popen([sys.executable, "-c", HOLDER, fb.resource], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.getcwd()})
        try:
            assert p.stdout.readline().strip() == "ready"
            with pytest.raises(BoardBusyError, match=rf"process {p.pid}\b"):
                open_visa(fb.resource, timeout_s=1.0)
            off_before = fb.outp_off_received
            with open_visa(fb.resource, timeout_s=1.0, read_only=True) as r:  # reading is allowed
                assert r.n_channels == 9
                with pytest.raises(DeviceError, match="read-only"):
                    r.set_channels(np.zeros(9))
            assert fb.outp_off_received == off_before and fb.outp == 1  # the holder's run goes on
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait()
        with open_visa(fb.resource, timeout_s=1.0) as b:  # a killed holder leaves no lock behind
            b.arm(True)
        assert fb.outp == 0  # closed by its holder: disarmed


def test_item4_the_cli_reports_a_busy_board_with_exit_3(capsys):
    from tc_hw.cli import main

    with FakeBoard("good") as fb:
        p = subprocess.Popen([sys.executable, "-c", HOLDER, fb.resource], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.getcwd()})
        try:
            assert p.stdout.readline().strip() == "ready"
            assert main(["acquire", "--resource", fb.resource, "--samples", "2"]) == 3
            assert f"process {p.pid}" in capsys.readouterr().err
            assert main(["info", "--resource", fb.resource, "--json"]) == 0  # info only reads
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait()


def test_item17_emulator_output_files_and_empty_board(tmp_path, capsys):
    from sim_backend.emulator.cli import main as emulate

    (tmp_path / "empty.toml").write_text("  \n")
    assert emulate(["--board", str(tmp_path / "empty.toml"), "--port", "0", "--no-warmup"]) == 2
    assert "empty" in capsys.readouterr().err
    missing = tmp_path / "no" / "such" / "ready.json"
    assert emulate(["--ready-file", str(missing), "--port", "0", "--no-warmup"]) == 2
    assert emulate(["--truth-file", str(tmp_path), "--port", "0", "--no-warmup"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--ready-file" in err and "--truth-file" in err


@pytest.mark.parametrize("resource", ["loop://", "socket://127.0.0.1:5025", "rfc2217://x:1"])
def test_item18_urls_other_than_serial_are_refused_consistently(resource, capsys):
    from tc_hw.cli import main

    with pytest.raises(ValueError, match="serial://"):
        classify_resource(resource)
    assert main(["info", "--resource", resource]) == 2
    assert "Traceback" not in capsys.readouterr().err
