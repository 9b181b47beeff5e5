"""Board emulator: raw-socket protocol checks against the manual, pty transport, faults, truth,
and the statistical equality of an ideal board with the twin."""

from __future__ import annotations

import os
import select
import socket
import struct
import termios
import time
import tty

import numpy as np
import pytest

from sim_backend.emulator.board import DAC_LSB_V, quantize
from sim_backend.emulator.scpi import Scanner
from sim_backend.emulator.truth import adc_code, element_value
from tc_hw.model.network import layered
from tc_hw.model.params import Params
from sim_backend.twin import sample_reset

from tests.emulator_process import emulator, running_emulator  # noqa: F401  (fixture)


# ----------------------------------------------------------------------------- raw client
class Client:
    """Minimal SCPI-over-socket client (no pyvisa)."""

    def __init__(self, port: int, timeout: float = 30.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def close(self):
        self.sock.close()

    def write(self, data: bytes | str):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data if data.endswith(b"\n") else data + b"\n")

    def _fill(self):
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise EOFError("connection closed")
        self.buf += chunk

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def line(self) -> str:
        while b"\n" not in self.buf:
            self._fill()
        out, self.buf = self.buf.split(b"\n", 1)
        return out.decode()

    def query(self, cmd: str) -> str:
        self.write(cmd)
        return self.line()

    def query_block(self, cmd: str) -> bytes:
        self.write(cmd)
        assert self._take(1) == b"#"
        d = int(self._take(1))
        n = int(self._take(d))
        payload = self._take(n)
        assert self._take(1) == b"\n"
        return payload

    def error(self) -> int:
        return int(self.query("SYST:ERR?").split(",", 1)[0])


def block(payload: bytes) -> bytes:
    n = str(len(payload)).encode()
    return b"#" + str(len(n)).encode() + n + payload


@pytest.fixture
def dev(emulator):
    c = Client(emulator.port)
    c.write("*RST;*CLS")
    yield c
    c.close()


# ----------------------------------------------------------------------------- pure parser
def test_scanner_reads_blocks_by_length_and_across_feeds():
    payload = b"\n;#\x00\n"
    data = b"DAC:BLOCK 3," + block(payload) + b";*IDN?\nBOARD:NODES?\n"
    s = Scanner()
    lines = []
    for i in range(len(data)):  # one byte at a time
        lines += s.feed(data[i : i + 1])
    assert [[c.header for c in line] for line in lines] == [["DAC:BLOCK", "*IDN?"], ["BOARD:NODES?"]]
    assert lines[0][0].args == ["3", payload]
    bad = Scanner().feed(b"INP:BLOCK #0abc;*IDN?\n*IDN?\n")
    assert bad[0][0].error == -102 and len(bad[0]) == 1 and bad[1][0].header == "*IDN?"


# ----------------------------------------------------------------------------- identity and map
def test_idn(dev):
    assert dev.query("*IDN?").startswith("TCLAB,")


def test_map_rows_in_manual_order(dev):
    n_ch = int(dev.query("BOARD:CHAN?"))
    n = int(dev.query("BOARD:NODES?"))
    k = int(dev.query("BOARD:INPUTS?"))
    text = dev.query_block("BOARD:MAP?").decode("utf-8")
    assert text.endswith("\n")
    rows = [r.split(",") for r in text.splitlines()]
    assert len(rows) == n_ch and all(len(r) == 8 for r in rows)
    assert [int(r[0]) for r in rows] == list(range(n_ch))
    net = layered(8, 4, 1)
    assert (n, k) == (net.n_nodes, net.n_inputs)
    expect = [("Q", i, -1) for i in range(n)] + [("R", i, -1) for i in range(n)] + [("B", i, -1) for i in range(n)]
    expect += [("C", int(a), int(b)) for a, b in net.edges] + [("W", int(a), int(b)) for a, b in net.crossbar]
    assert [(r[1], int(r[2]), int(r[3])) for r in rows] == expect
    for r in rows:
        assert float(r[4]) <= float(r[5]) and float(r[6]) > 0 and float(r[7]) == 0.0
    assert dev.query("BOARD:TECH?") == "RLC"
    assert float(dev.query("BOARD:TAU?")) == pytest.approx(1e-6)


# ----------------------------------------------------------------------------- DAC
def test_dac_block_round_trip_with_newline_byte(dev):
    # Values whose float32 encoding contains 0x0A, plus one that needs quantisation.
    exact = [k * DAC_LSB_V for k in range(1, 5000) if b"\n" in struct.pack("<f", k * DAC_LSB_V)][:6]
    volts = np.array(exact + [0.1], np.float32)
    payload = volts.astype("<f4").tobytes()
    assert b"\n" in payload
    dev.write(b"DAC:BLOCK 40," + block(payload))
    back = np.frombuffer(dev.query_block(f"DAC:BLOCK? 40,{len(volts)}"), "<f4")
    np.testing.assert_array_equal(back, quantize(volts.astype(np.float64)).astype(np.float32))
    assert back[-1] != np.float32(0.1) and abs(back[-1] - 0.1) <= DAC_LSB_V / 2
    assert float(dev.query("DAC:VOLT? 40")) == pytest.approx(exact[0], abs=1e-12)
    assert dev.error() == 0


def test_out_of_range_write_refused_whole(dev):
    dev.write(b"DAC:BLOCK 0," + block(np.full(4, 1.0, "<f4").tobytes()))
    before = dev.query_block("DAC:BLOCK? 0,4")
    bad = np.array([2.0, 2.0, 5.5, 2.0], "<f4")  # Q channels: safe range [-2.5, 5] V
    dev.write(b"DAC:BLOCK 0," + block(bad.tobytes()))
    assert dev.query("SYST:ERR?").startswith("-222,")
    assert dev.query_block("DAC:BLOCK? 0,4") == before
    dev.write("DAC:VOLT 1,-3")
    assert dev.error() == -222
    assert float(dev.query("DAC:VOLT? 1")) == pytest.approx(1.0, abs=DAC_LSB_V)
    dev.write("DAC:VOLT 1,5.0")  # bounds inclusive
    assert dev.error() == 0


# ----------------------------------------------------------------------------- errors
def test_erroring_query_sends_no_reply(dev):
    dev.write("DAC:VOLT? 100000")
    dev.write("FOO:BAR?")
    assert dev.query("*IDN?").startswith("TCLAB,")  # the first reply is *IDN?'s
    assert dev.error() == -222
    assert dev.error() == -113
    assert dev.error() == 0
    # several queries on one line: one reply joined by ';', the erroring one left out
    assert dev.query("BOARD:NODES?;FOO?;BOARD:INPUTS?") == "32;1"
    assert dev.error() == -113


def test_error_queue_overflow(dev):
    dev.write(";".join(["NOPE"] * 40))
    codes = [dev.error() for _ in range(33)]
    assert codes == [-113] * 31 + [-350, 0]


def test_init_without_output_and_fetch_before_acquisition(dev):
    dev.write(b"INP:BLOCK " + block(np.zeros(1, "<f4").tobytes()))
    dev.write("INIT")
    assert dev.error() == -200
    assert dev.query("ACQ:STAT?") == "IDLE"
    dev.write("FETC?")
    assert dev.error() == -230
    dev.write("OUTP ON;*RST;INIT")  # *RST clears the batch and disarms
    assert dev.error() == -200


def test_small_reset_acquisition(dev):
    inputs = np.array([[0.0], [0.5]], "<f4")
    dev.write(b"INP:BLOCK " + block(inputs.tobytes()))
    dev.write("ACQ:MODE RESET;ACQ:TIME 1e-6;ACQ:COUNT 50;OUTP ON")
    assert dev.query("INP:COUNT?") == "2"
    dev.write("INIT")
    assert dev.query("ACQ:STAT?") in ("RUNNING", "DONE")
    dev.write("DAC:VOLT 0,1")  # refused while running, or accepted after DONE
    assert dev.query("*OPC?") == "1"
    assert dev.error() in (0, -221)
    assert dev.query("ACQ:STAT?") == "DONE"
    data = dev.query_block("FETC?")
    assert len(data) == 2 * 50 * 32 * 2
    codes = np.frombuffer(data, "<i2").reshape(2, 50, 32)
    assert codes.std() > 0
    assert dev.query_block("FETC?") == data  # fetch again until the next INIT
    dev.write("ACQ:NODES 5,3")
    dev.write("INIT;*WAI")
    assert len(dev.query_block("FETC?")) == 2 * 50 * 2 * 2
    dev.write("*RST")
    dev.write("FETC?")
    assert dev.query("SYST:ERR?").startswith("-230")
    assert dev.error() == 0


def test_ascii_fetch_and_compute_seconds_diagnostics(dev):
    """Emulator diagnostics: ``FORM ASC`` gives the same codes as text; ``DIAG:COMP?`` grows."""
    dev.write(b"INP:BLOCK " + block(np.array([[0.25]], "<f4").tobytes()))
    c0 = float(dev.query("DIAG:COMP?"))
    dev.write("ACQ:TIME 1e-6;ACQ:COUNT 20;OUTP ON;INIT")
    assert dev.query("*OPC?") == "1"
    assert float(dev.query("DIAG:COMP?")) > c0
    codes = np.frombuffer(dev.query_block("FETC?"), "<i2")
    dev.write("FORM ASC")
    assert dev.query("FORM?") == "ASC"
    text = dev.query("FETC?")
    np.testing.assert_array_equal(np.array(text.split(","), dtype=np.int16), codes)
    dev.write("FORM BOGUS")
    assert dev.error() == -102
    dev.write("*RST")
    assert dev.query("FORM?") == "INT"


def test_calibration_reference_reads_true_adc(dev, emulator):
    truth = emulator.truth()
    dev.write(b"INP:BLOCK " + block(np.zeros(1, "<f4").tobytes()))
    dev.write("CAL:REF 1.5;ACQ:COUNT 400;OUTP ON;INIT")
    assert dev.query("*OPC?") == "1"
    codes = np.frombuffer(dev.query_block("FETC?"), "<i2").reshape(1, 400, 32).astype(float)
    expect = adc_code(truth, np.arange(32), 1.5).astype(float)
    noise_codes = truth["adc"]["noise_v"] * 32768 / truth["adc"]["range_v"]
    assert np.all(np.abs(codes.mean((0, 1)) - expect) < 5 * noise_codes / np.sqrt(400) + 1)
    dev.write("ACQ:NODES 5,3;ACQ:COUNT 200;INIT")  # columns in the order given
    assert dev.query("*OPC?") == "1"
    codes = np.frombuffer(dev.query_block("FETC?"), "<i2").reshape(1, 200, 2).astype(float)
    expect = adc_code(truth, [5, 3], 1.5).astype(float)
    assert np.all(np.abs(codes.mean((0, 1)) - expect) < 5 * noise_codes[[5, 3]] / np.sqrt(200) + 1)
    assert dev.error() == 0
    # the truth is a real non-ideal board
    g = truth["channels"]["gain_factor"]
    assert 0.8 <= g.min() < g.max() <= 1.2 and g.std() > 0.05
    v = element_value(truth, 0, [0.0, 1.0, 2.0], 300.0)
    assert np.all(np.diff(v) > 0)


def test_mode_and_settings_refused_while_running(dev):
    dev.write(b"INP:BLOCK " + block(np.zeros(4, "<f4").tobytes()))
    # 4 x 2000 samples x 5000 steps x 32 nodes: seconds of work, aborted after one chunk
    dev.write("ACQ:TIME 5e-6;ACQ:COUNT 2000;OUTP ON;INIT;ACQ:COUNT 3;ACQ:STAT?")
    assert dev.line() == "RUNNING"
    assert dev.error() == -221
    assert dev.query("ACQ:COUNT?") == "2000"
    dev.write("FETC?")
    assert dev.error() == -230
    t0 = time.monotonic()
    dev.write("*RST")  # aborts
    assert dev.query("ACQ:STAT?;*OPC?") == "IDLE;1"
    assert time.monotonic() - t0 < 1.0


def test_serial_acquisition_shape(dev):
    dev.write(b"INP:BLOCK " + block(np.array([0.0, 1.0, -1.0], "<f4").tobytes()))
    dev.write("ACQ:MODE SERIAL;ACQ:TIME 5e-7;ACQ:COUNT 30;ACQ:NODES 0,31,7;OUTP ON;INIT")
    assert dev.query("*OPC?;ACQ:MODE?") == "1;SERIAL"
    codes = np.frombuffer(dev.query_block("FETC?"), "<i2").reshape(3, 30, 3)
    assert np.all(codes.std(1) > 0)
    assert dev.error() == 0


def test_non_ideal_physics_follows_truth(dev, emulator):
    """Twin + truth (element curves, ADC gain/offset/noise) reproduce the non-ideal board."""
    truth = emulator.truth()
    n_ch, n, m = 296, 32, 1500
    volts = np.zeros(n_ch)
    volts[: 2 * n] = 0.5  # Q, R about 2
    volts[2 * n : 3 * n] = np.linspace(-0.3, 0.3, n)  # biases
    volts[3 * n : 3 * n + 64] = 0.1  # some couplings (layer 0 - layer 1)
    volts[-8:] = 0.2  # crossbar
    dev.write(b"DAC:BLOCK 0," + block(volts.astype("<f4").tobytes()))
    applied = np.frombuffer(dev.query_block(f"DAC:BLOCK? 0,{n_ch}"), "<f4").astype(np.float64)
    inputs = np.array([[0.7]])
    dev.write(b"INP:BLOCK " + block(inputs.astype("<f4").tobytes()))
    temp = float(dev.query("SYST:TEMP?"))
    assert abs(temp - truth["temperature"]["t0_k"]) <= truth["temperature"]["drift_k"] + 1e-3
    dev.write(f"ACQ:MODE RESET;ACQ:TIME 2e-6;ACQ:COUNT {m};OUTP ON;INIT")
    assert dev.query("*OPC?") == "1"
    x_emu = np.frombuffer(dev.query_block("FETC?"), "<i2").reshape(m, n) * truth["adc"]["range_v"] / 32768
    v = element_value(truth, np.arange(n_ch), applied, temp)
    net = layered(8, 4, 1)
    params = Params(net, v[:n], np.zeros(n), v[n : 2 * n], v[2 * n : 3 * n], v[3 * n : 3 * n + net.n_edges],
                    v[3 * n + net.n_edges :], require_stable=False)
    x = sample_reset(params, inputs, 2.0, m, seed=5, rail=truth["rail_v"]).x[0, :, 0, :].astype(np.float64)
    gain, off, noise = truth["adc"]["gain"], truth["adc"]["offset_v"], truth["adc"]["noise_v"]
    mean_t = gain * x.mean(0) + off
    var_t = gain**2 * x.var(0, ddof=1) + noise**2
    se = np.sqrt(var_t / m + x_emu.var(0, ddof=1) / m)
    z = (x_emu.mean(0) - mean_t) / se
    assert np.abs(z).max() < 4.5, z
    ratio = x_emu.var(0, ddof=1) / var_t
    assert np.all(np.abs(ratio - 1) < 0.25), ratio


def test_element_curves_of_default_and_jj_boards():
    from sim_backend.emulator.board import Board, board_from_name_or_path

    for name in ("default", "jj"):
        board = Board(board_from_name_or_path(name))
        lay, truth = board.layout, board.truth
        periodic = lay.period > 0
        assert periodic.any() == (name == "jj")
        u = np.linspace(0, 1, 201)[:, None]
        for ch in np.flatnonzero(~periodic):
            v = lay.vmin[ch] + u[:, 0] * (lay.vmax[ch] - lay.vmin[ch])
            assert np.all(np.diff(element_value(truth, ch, v, 300.0)) > 0), ch  # RLC: monotonic
        for ch in np.flatnonzero(periodic)[:20]:
            v = np.linspace(-3, 3, 7)
            np.testing.assert_allclose(element_value(truth, ch, v, 300.0),
                                       element_value(truth, ch, v + lay.period[ch], 300.0), atol=1e-9)
    ideal = Board(board_from_name_or_path("ideal"))
    v = np.linspace(-2, 5, 11)
    np.testing.assert_array_equal(element_value(ideal.truth, 0, v, 310.0), 4.0 * v)


def test_refuses_non_loopback_host(tmp_path):
    import subprocess
    import sys

    from tests.emulator_process import REPO_ROOT

    r = subprocess.run([sys.executable, "-m", "sim_backend.emulator", "--host", "192.0.2.1", "--port", "0",
                        "--no-warmup"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert r.returncode == 2 and "loopback" in r.stderr and "READY" not in r.stdout


# ----------------------------------------------------------------------------- transports
def test_pty_transport_answers_idn(emulator):
    assert emulator.pty and emulator.asrl == f"ASRL{emulator.pty}::INSTR"
    fd = os.open(emulator.pty, os.O_RDWR | os.O_NOCTTY)
    try:
        tty.setraw(fd)
        termios.tcflush(fd, termios.TCIOFLUSH)
        os.write(fd, b"*IDN?\n")
        buf = b""
        deadline = time.monotonic() + 10
        while b"\n" not in buf and time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.5)
            if r:
                buf += os.read(fd, 4096)
        assert buf.startswith(b"TCLAB,") and buf.endswith(b"\n")
    finally:
        os.close(fd)


def test_reconnect_after_drop(emulator):
    c = Client(emulator.port)
    c.write("DAC:VOLT 7,0.5")
    c.close()  # drop mid-session
    c = Client(emulator.port)
    assert float(c.query("DAC:VOLT? 7")) == pytest.approx(0.5, abs=DAC_LSB_V)
    c.close()


def test_fault_injection_and_sigterm(tmp_path):
    with running_emulator(board="ideal", truth=False, extra_args=["--fault-rate", "0.5", "--seed", "3"],
                          workdir=tmp_path) as emu:
        seen = set()
        for _ in range(40):
            c = Client(emu.port, timeout=5)
            c.sock.sendall(b"*IDN?\n")
            t0 = time.monotonic()
            data = b""
            while True:
                chunk = c.sock.recv(4096)
                if not chunk:
                    break
                data += chunk
                if data.endswith(b"\n"):
                    break
            dt = time.monotonic() - t0
            c.close()
            if data.endswith(b"\n"):
                assert data.startswith(b"TCLAB,")
                seen.add("delay" if dt >= 0.19 else "ok")
            else:
                seen.add("truncate" if data else "drop")
                assert b"TCLAB,".startswith(data[:6]) or data.startswith(b"TCLAB,")
            if len(seen) == 4:
                break
        assert seen == {"ok", "delay", "truncate", "drop"}
        assert emu.stop() == 0  # SIGTERM: clean exit
        assert "Traceback" not in emu.log()


# ----------------------------------------------------------------------------- statistics
IDEAL_BOARD = """\
name = "ideal-test"
seed = 11
[topology]
layered = { width = 8, depth = 4, inputs = 1 }
[nonideal]
ideal = true
"""


def test_ideal_board_matches_twin_moments(tmp_path):
    board = tmp_path / "ideal.toml"
    board.write_text(IDEAL_BOARD)
    m = 2000
    with running_emulator(board=board, truth=True, workdir=tmp_path) as emu:
        c = Client(emu.port)
        rows = [r.split(",") for r in c.query_block("BOARD:MAP?").decode().splitlines()]
        gain = np.array([float(r[6]) for r in rows])
        n_ch = len(rows)
        n = int(c.query("BOARD:NODES?"))
        volts = np.zeros(n_ch)
        volts[: 2 * n] = 1.0 / gain[: 2 * n]  # Q = R = 1
        volts[2 * n] = 0.5 / gain[2 * n]  # B_0 = 0.5
        c.write(b"DAC:BLOCK 0," + block(volts.astype("<f4").tobytes()))
        applied = np.frombuffer(c.query_block(f"DAC:BLOCK? 0,{n_ch}"), "<f4").astype(np.float64)
        c.write(b"INP:BLOCK " + block(np.zeros(1, "<f4").tobytes()))
        c.write(f"ACQ:MODE RESET;ACQ:TIME 1e-6;ACQ:COUNT {m};OUTP ON;INIT")
        assert c.query("*OPC?") == "1"
        codes = np.frombuffer(c.query_block("FETC?"), "<i2").reshape(1, m, n)
        rng_v = float(c.query("ACQ:RANGE?"))
        assert c.error() == 0
        c.close()
        truth = emu.truth()
    x_emu = codes[0].astype(np.float64) * rng_v / 32768
    values = gain * applied  # ideal board: element value = nominal gain * applied volts
    np.testing.assert_allclose(element_value(truth, np.arange(n_ch), applied, 300.0), values, rtol=0, atol=1e-12)
    net = layered(8, 4, 1)
    params = Params(net, values[:n], np.zeros(n), values[n : 2 * n], values[2 * n : 3 * n],
                    values[3 * n : 3 * n + net.n_edges], values[3 * n + net.n_edges :], require_stable=False)
    x_twin = sample_reset(params, np.zeros((1, 1)), 1.0, m, dt=1e-3, seed=987, rail=truth["rail_v"]).x[0, :, 0, :]
    x_twin = x_twin.astype(np.float64)

    def moments(x):
        mean = x.mean(0)
        var = x.var(0, ddof=1)
        m4 = ((x - mean) ** 4).mean(0)
        return mean, var, var / len(x), (m4 - var**2) / len(x)

    me, ve, se_me, se_ve = moments(x_emu)
    mt, vt, se_mt, se_vt = moments(x_twin)
    z_mean = (me - mt) / np.sqrt(se_me + se_mt)
    z_var = (ve - vt) / np.sqrt(se_ve + se_vt)
    assert np.abs(z_mean).max() < 4, z_mean
    assert np.abs(z_var).max() < 4, z_var
    assert me[0] > 0.1 and abs(me[1:]).max() < 0.1  # the bias on node 0 shows


def test_emulator_exits_when_its_launcher_is_killed(tmp_path):
    """An emulator never outlives a killed notebook kernel or test run (``--parent-pid``)."""
    import signal
    import subprocess
    import sys

    script = (
        "import sys, time\n"
        "from sim_backend.emulator.process import start_emulator\n"
        f"emu = start_emulator(workdir={str(tmp_path)!r}, truth=False, extra_args=['--no-warmup'])\n"
        "print(emu.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    launcher = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(launcher.stdout.readline())
        os.kill(pid, 0)  # running
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            try:  # reap it if it became our child's orphan in this process group
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
            pytest.fail("the emulator kept running after its launcher was killed")
    finally:
        if launcher.poll() is None:
            launcher.kill()
