"""Drivers against the board emulator process, through real pyvisa-py (TCP and pty) and pyserial.

Unit tests first (blocks, map parsing, resource strings, float32 safety), then the emulator:
identity and map over every transport, DAC blocks whose payload holds 0x0A, refusal of unsafe
voltages with nothing sent, board errors with their SCPI codes, erroring queries answered at
once, reconnect + restore after a dropped connection, timeouts, split acquisitions and a 5 %
fault-rate acquisition loop.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from drivers import (
    BoardError,
    ConnectionLost,
    MapError,
    ReplyTimeout,
    TCBoard,
    open_serial,
    open_visa,
    parse_channel_map,
)
from drivers.blocks import (
    BlockFormatError,
    decode_block,
    encode_block,
    pack_float32,
    pack_int16,
    read_block,
    unpack_float32,
    unpack_int16,
)
from drivers.board import DAC_LSB_V
from drivers.scpi import parse_error_line
from drivers.transport import SerialTransport, VisaTransport, classify_resource
from tc_hw.model.device import Channel, ChannelMap, Device, DeviceError, UnsafeVoltageError, armed
from tests.emulator_process import emulator, running_emulator  # noqa: F401  (pytest fixture)


# ============================================================================ unit tests
def test_block_round_trip_with_newlines_and_lengths():
    for payload in (b"", b"\n", b"ab\ncd\n", bytes(range(256)) * 50):
        blk = encode_block(payload)
        assert decode_block(blk + b"\n") == payload
        assert decode_block(blk, terminator=None) == payload
        pos = iter([blk + b"\n"])
        buf = bytearray(next(pos))

        def rd(n):
            out = bytes(buf[:n])
            del buf[:n]
            assert len(out) == n
            return out

        assert read_block(rd) == payload
    assert encode_block(b"x" * 12) == b"#212" + b"x" * 12


@pytest.mark.parametrize(
    "raw, words",
    [
        (b"$15hello\n", "must start with '#'"),
        (b"#05hello\n", "indefinite-length"),
        (b"#x5hello\n", "digit 1-9"),
        (b"#2a5hello\n", "not all digits"),
        (b"#19hello\n", "truncated block"),
        (b"#15hello;", "followed by"),
        (b"#", "truncated block header"),
    ],
)
def test_garbled_block_headers_raise_clear_errors(raw, words):
    with pytest.raises(BlockFormatError, match=words):
        decode_block(raw)


def test_little_endian_helpers_are_strict():
    v = np.array([1.0, -2.5, 3.25])
    assert pack_float32(v) == v.astype("<f4").tobytes()
    assert np.array_equal(unpack_float32(pack_float32(v), 3), v)
    assert np.array_equal(unpack_int16(pack_int16([-32768, 0, 32767])), [-32768, 0, 32767])
    with pytest.raises(BlockFormatError, match="whole number"):
        unpack_float32(b"\x00" * 6)
    with pytest.raises(BlockFormatError, match="expected 4"):
        unpack_float32(b"\x00" * 12, 4)
    with pytest.raises(BlockFormatError, match="outside -32768..32767"):
        pack_int16([40000])  # no wrapping
    with pytest.raises(BlockFormatError, match="float32"):
        pack_float32([1e300])  # no silent inf


def _map_csv(n_nodes=2, edges=((0, 1),), w=((0, 0),)):
    rows = []
    ch = 0
    for kind in "QRB":
        for i in range(n_nodes):
            rows.append(f"{ch},{kind},{i},-1,-2.5,5,4,0")
            ch += 1
    for a, b in edges:
        rows.append(f"{ch},C,{a},{b},-5,5,4,0")
        ch += 1
    for k, j in w:
        rows.append(f"{ch},W,{k},{j},-5,5,4,12")
        ch += 1
    return ("\n".join(rows) + "\n").encode(), ch


def test_parse_channel_map_and_its_checks():
    raw, n = _map_csv()
    cm = parse_channel_map(raw, n, 2, 1)
    assert len(cm) == n == 8
    assert [c.kind for c in cm] == list("QQRRBBCW")
    assert cm[6] == Channel(6, "C", 0, 1, -5.0, 5.0, 4.0, 0.0) and cm[7].period == 12.0
    with pytest.raises(MapError, match="7 rows but BOARD:CHAN"):
        parse_channel_map(raw.split(b"\n", 1)[1], n, 2, 1)
    with pytest.raises(MapError, match="does not end"):
        parse_channel_map(raw[:-1], n, 2, 1)
    with pytest.raises(MapError, match="kind 'X'"):
        parse_channel_map(raw.replace(b",C,", b",X,"), n, 2, 1)
    with pytest.raises(MapError, match="b=-1"):
        parse_channel_map(raw.replace(b"0,Q,0,-1", b"0,Q,0,3"), n, 2, 1)
    with pytest.raises(MapError, match="vmin"):
        parse_channel_map(raw.replace(b"6,C,0,1,-5,5", b"6,C,0,1,5,-5"), n, 2, 1)


def test_resource_strings_pick_the_transport():
    assert classify_resource("TCPIP0::127.0.0.1::5025::SOCKET") == "visa"
    assert classify_resource("ASRL/dev/pts/3::INSTR") == "visa"
    assert classify_resource("/dev/pts/3") == "serial"
    assert classify_resource("serial:///dev/pts/3") == "serial"
    with pytest.raises(ValueError, match="SOCKET"):
        classify_resource("TCPIP0::10.0.0.1::inst0::INSTR")
    with pytest.raises(ValueError, match="unrecognised"):
        classify_resource("GPIB0::12::INSTR")


def test_error_lines_and_board_error():
    e = parse_error_line(b'-222,"Data out of range; ch 3 (Q) +9 V outside [-2.5, +5] V"')
    assert (e.code, e.text.split(";")[0]) == (-222, "Data out of range")
    err = BoardError(e.code, e.text, "DAC:VOLT 3,9")
    assert isinstance(err, DeviceError) and err.code == -222 and "DAC:VOLT 3,9" in str(err)


def test_float32_rounding_past_a_bound_is_refused_not_clamped():
    cm = ChannelMap((Channel(0, "Q", 0, -1, -0.1, 0.1, 4.0),))
    stub = SimpleNamespace(channel_map=cm)
    assert TCBoard._check_float32(stub, np.array([0.0999999]), 0)[0] <= 0.1
    with pytest.raises(UnsafeVoltageError, match="ch 0: 0.1 V becomes .* in float32"):
        TCBoard._check_float32(stub, np.array([0.1]), 0)  # float32(0.1) > 0.1


# ============================================================================ helpers
class CountingTransport:
    """Wraps a transport and records every write (to prove that nothing was sent)."""

    def __init__(self, inner):
        self.inner = inner
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.inner.write(data)

    @property
    def timeout(self):
        return self.inner.timeout

    @timeout.setter
    def timeout(self, v):
        self.inner.timeout = v

    def __getattr__(self, name):
        return getattr(self.inner, name)


def grid_values_with_newline(ch: Channel, n: int) -> np.ndarray:
    """``n`` voltages on the DAC grid inside ``ch``'s safe range whose float32 bytes hold 0x0A."""
    out = []
    for k in range(int(np.ceil(ch.vmin / DAC_LSB_V)), int(np.floor(ch.vmax / DAC_LSB_V)) + 1):
        v = k * DAC_LSB_V
        if 0x0A in np.float32(v).tobytes():
            out.append(v)
            if len(out) == n:
                return np.array(out)
    raise AssertionError("no such voltage")


@pytest.fixture
def tcp_board(emulator):
    with open_visa(emulator.tcp, timeout_s=5.0) as b:
        b.reset()
        yield b


# ============================================================================ emulator
def _check_identity_and_map(b: TCBoard, emulator):
    assert isinstance(b, Device)
    assert b.identity.startswith("TCLAB,")
    assert b.technology == "RLC"
    assert b.n_nodes == emulator.ready["nodes"] and b.n_channels == emulator.ready["channels"]
    assert len(b.channel_map) == b.n_channels
    assert [c.index for c in b.channel_map] == list(range(b.n_channels))
    assert len(b.channel_map.of_kind("Q")) == b.n_nodes
    assert len(b.channel_map.of_kind("W")) >= b.n_inputs
    assert b.tau_s > 0 and b.adc_range_v > 0


def _check_dac_round_trip(b: TCBoard):
    v = grid_values_with_newline(b.channel_map[0], 8)
    payload = pack_float32(v)
    assert b"\n" in payload
    b.set_channels(v, start=0)
    assert np.array_equal(b.get_channels(0, 8), v)  # exact: the values are on the DAC grid
    raw = b.session.query_block("DAC:BLOCK? 0,8")
    assert b"\n" in raw and raw == payload


def test_identity_map_and_blocks_over_pyvisa_tcp(tcp_board, emulator):
    _check_identity_and_map(tcp_board, emulator)
    assert isinstance(tcp_board.session.transport, VisaTransport)
    _check_dac_round_trip(tcp_board)


def test_identity_map_and_blocks_over_pyvisa_asrl_pty(emulator):
    with open_visa(emulator.asrl, timeout_s=5.0) as b:
        _check_identity_and_map(b, emulator)
        _check_dac_round_trip(b)
        b.set_inputs(np.zeros((2, b.n_inputs)))
        with armed(b):
            acq = b.acquire("reset", 1e-6, 20, nodes=[1, 0])
        assert acq.codes.shape == (2, 20, 2)


def test_identity_map_and_blocks_over_pyserial_pty(emulator):
    for resource in (emulator.pty, "serial://" + emulator.pty):
        with open_serial(resource, timeout_s=5.0) as b:
            assert isinstance(b.session.transport, SerialTransport)
            _check_identity_and_map(b, emulator)
            _check_dac_round_trip(b)


def test_unsafe_voltage_refused_naming_channels_and_nothing_sent(tcp_board):
    b = tcp_board
    before = b.get_channels()
    counter = CountingTransport(b.session.transport)
    b.session.transport = counter
    try:
        cm = b.channel_map
        v = np.zeros(b.n_channels)
        v[3] = cm[3].vmax + 0.5
        v[200] = cm[200].vmin - 1.0
        with pytest.raises(UnsafeVoltageError) as ei:
            b.set_channels(v)
        msg = str(ei.value)
        assert "ch 3 (Q)" in msg and f"{v[3]:+.6g}" in msg and f"{cm[3].vmax:+.6g}" in msg
        assert "ch 200" in msg and "nothing sent" in msg
        with pytest.raises(UnsafeVoltageError, match="ch 11"):
            b.set_channels([cm[11].vmax + 1e-9], start=11)  # just outside; never clamped
        with pytest.raises(ValueError, match="NaN"):
            b.set_channels([np.nan], start=0)
        with pytest.raises(ValueError, match="do not exist"):
            b.set_channels(np.zeros(3), start=b.n_channels - 1)
        assert counter.writes == []  # not a single byte went out
    finally:
        b.session.transport = counter.inner
    assert np.array_equal(b.get_channels(), before)
    b.set_channels([cm[11].vmax], start=11)  # bounds are inclusive


def test_board_errors_carry_scpi_code_text_and_command(tcp_board):
    s = tcp_board.session
    vmax = tcp_board.channel_map[3].vmax
    with pytest.raises(BoardError) as ei:
        s.write(f"DAC:VOLT 3,{vmax + 1}")  # raw command: bypasses the client-side check
    assert ei.value.code == -222 and "Data out of range" in ei.value.text
    assert "DAC:VOLT 3" in ei.value.command
    with pytest.raises(BoardError) as ei:
        s.write_block("DAC:BLOCK 0,", pack_float32([99.0]))
    assert ei.value.code == -222 and "block of 4 bytes" in ei.value.command
    with pytest.raises(BoardError, match="-113"):
        s.write("FOO:BAR 1")
    # unchecked writes, then the queue: first error raised, all collected, queue emptied
    s.write("FOO:BAR 1", check=False)
    s.write(f"DAC:VOLT 3,{vmax + 1}", check=False)
    with pytest.raises(BoardError) as ei:
        s.check_errors()
    assert [e.code for e in ei.value.errors] == [-113, -222]
    s.check_errors()  # empty now
    with pytest.raises(BoardError) as ei:
        s.write("INIT")  # outputs off after *RST
    assert ei.value.code == -200
    assert tcp_board.get_channels(3, 1)[0] == 0.0  # refused writes changed nothing


def test_erroring_query_raises_at_once_without_waiting(tcp_board):
    s = tcp_board.session
    s.timeout = 10.0
    t0 = time.monotonic()
    with pytest.raises(BoardError) as ei:
        s.query_block("FETC?")  # nothing acquired: -230 and no reply
    assert ei.value.code == -230
    with pytest.raises(BoardError) as ei:
        s.query(f"DAC:VOLT? {tcp_board.n_channels + 5}", float)
    assert ei.value.code == -222
    assert time.monotonic() - t0 < 2.0  # far below the 10 s timeout: no blind wait
    assert s.query("*IDN?").startswith("TCLAB")  # still in step
    assert tcp_board.session.reconnects == 0


def test_acquisitions_shapes_units_and_requirements(tcp_board):
    b = tcp_board
    with pytest.raises(DeviceError, match="set_inputs"):
        b.acquire("reset", 1e-6, 10)
    inputs = np.linspace(-1, 1, 3)[:, None] * np.ones((1, b.n_inputs))
    b.set_inputs(inputs)
    with pytest.raises(DeviceError, match="arm"):
        b.acquire("reset", 1e-6, 10)
    with armed(b):
        a = b.acquire("reset", 2e-6, 50)
        s = b.acquire("serial", 1e-6, 40, nodes=[5, 2])
    assert a.volts.shape == (3, 50, b.n_nodes) and a.codes.dtype == np.int16
    assert a.volts_per_code == b.adc_range_v / 32768
    assert np.array_equal(a.volts, a.codes * a.volts_per_code)
    assert np.array_equal(a.nodes, np.arange(b.n_nodes)) and a.mode == "reset" and a.time_s == 2e-6
    assert np.array_equal(a.inputs, inputs) and 250 < a.temperature_k < 350
    assert s.volts.shape == (3, 40, 2) and s.nodes.tolist() == [5, 2] and s.mode == "serial"
    assert b.session.query("OUTP?") == "0"  # armed() disarmed
    with pytest.raises(ValueError, match="repeated"):
        b.acquire("reset", 1e-6, 10, nodes=[1, 1])
    with pytest.raises(ValueError, match="mode"):
        b.acquire("sweep", 1e-6, 10)


def test_large_acquisitions_are_split_and_joined(emulator):
    with open_visa(emulator.tcp, max_samples_per_call=2 * 40 * 32 + 5) as b:
        b.reset()
        b.set_inputs(np.zeros((5, b.n_inputs)))
        b.session.write("CAL:REF 1.0")  # every ADC reads the reference: chunks must agree
        with armed(b):
            a = b.acquire("reset", 1e-6, 40)  # 5 vectors, 2 per call
            c = b.acquire("reset", 1e-6, 3000, nodes=[0, 7])  # 6000 values per vector: split samples
            with pytest.raises(ValueError, match="serial runs cannot be split"):
                b.acquire("serial", 1e-6, 3000, nodes=[0, 7])
        b.session.write("CAL:REF OFF")
        assert a.volts.shape == (5, 40, 32) and a.meta["calls"] == 3
        assert c.volts.shape == (5, 3000, 2) and c.meta["calls"] == 5 * int(np.ceil(3000 / (2565 // 2)))
        for x in (a.volts, c.volts):
            per_node = x.mean(axis=(0, 1))
            assert np.all(np.abs(x - per_node).max(axis=(0, 1)) < 0.02)  # no garbage, no gaps
            assert np.all(np.abs(per_node - 1.0) < 0.1)
        assert b.session.query("INP:COUNT?", int) == 5  # the user's batch is back on the board


def test_reconnect_after_dropped_connection_restores_state(emulator, caplog):
    with open_visa(emulator.tcp, timeout_s=3.0) as b:
        b.reset()
        v = grid_values_with_newline(b.channel_map[0], 6)
        b.set_channels(v)
        b.set_inputs(np.zeros((2, b.n_inputs)))
        b.arm()
        b.acquire("serial", 1e-6, 10, nodes=[3])
        # the board loses its state (power cycle seen through another connection) ...
        with open_visa(emulator.tcp) as other:
            other.session.write("*RST")
        # ... and our cable is pulled (the socket dies under pyvisa-py)
        b.session.transport._sock.shutdown(socket.SHUT_RDWR)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tc_hw.drivers"):
            a = b.acquire("serial", 1e-6, 10, nodes=[3])
        assert a.volts.shape == (2, 10, 1)
        assert b.session.reconnects == 1
        assert np.array_equal(b.get_channels(0, 6), v)
        assert b.session.query("OUTP?;INP:COUNT?;ACQ:MODE?") == "1;2;SERIAL"
        text = caplog.text
        assert "reconnecting" in text and "restoring DAC channels 0..5" in text and "OUTP ON" in text


def test_close_disarms(emulator):
    b = open_visa(emulator.tcp)
    b.arm(True)
    b.close()
    b.close()  # idempotent
    with open_visa(emulator.tcp) as other:
        assert other.session.query("OUTP?") == "0"


# ---------------------------------------------------------------------------- timeouts
def _server(reply: bytes | None):
    """A loopback listener that answers every line with ``reply`` (None: never answers)."""
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        srv.settimeout(0.1)
        conns = []
        while not stop.is_set():
            try:
                c, _ = srv.accept()
                c.settimeout(0.05)
                conns.append(c)
            except socket.timeout:
                pass
            for c in conns:
                try:
                    data = c.recv(4096)
                except (socket.timeout, OSError):
                    continue
                if reply is not None:
                    for _ in range(data.count(b"\n")):
                        c.sendall(reply)
        for c in conns:
            c.close()
        srv.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return f"TCPIP0::127.0.0.1::{srv.getsockname()[1]}::SOCKET", stop


def test_timeouts_are_bounded_and_sized(tcp_board):
    resource, stop = _server(None)
    try:
        t0 = time.monotonic()
        with pytest.raises(ReplyTimeout, match=r"\*IDN\?.*no reply"):
            open_visa(resource, timeout_s=0.3, retries=1, reconnect_attempts=1)
        assert time.monotonic() - t0 < 5.0
    finally:
        stop.set()
    resource, stop = _server(b'ACME,Scope,1,1;0,"No error"\n')
    try:
        with pytest.raises(DeviceError, match="not a TC board"):
            open_visa(resource, timeout_s=1.0)
    finally:
        stop.set()
    with pytest.raises(ConnectionLost, match="refused"):
        open_visa("TCPIP0::127.0.0.1::1::SOCKET", timeout_s=0.5)
    # acquisition and fetch timeouts grow with the work
    b = tcp_board
    t_small = b.acquisition_timeout(1, 10, 1e-6)
    t_big = b.acquisition_timeout(100, 10**6, 1e-4)
    assert t_small >= b.acq_timeout_floor_s and t_big > 2 * 100 * 10**6 * 1e-4
    assert b.fetch_timeout(8 << 20) >= b.session.timeout
    serial_like = 5.0 + 4.0 * (8 << 20) / (115200 / 10)
    assert serial_like > 2000  # what the same fetch needs on a real 115200 baud line


# ---------------------------------------------------------------------------- faults
def test_fault_rate_acquisition_loop_completes(tmp_path):
    with running_emulator(pty=False, truth=False, workdir=tmp_path, extra_args=["--fault-rate", "0.05", "--seed", "11"]) as emu:
        with open_visa(emu.tcp, timeout_s=3.0) as b:
            v = grid_values_with_newline(b.channel_map[0], 4)
            b.set_channels(v)
            b.set_inputs(np.linspace(-1, 1, 4)[:, None])
            b.arm()
            for _ in range(15):
                a = b.acquire("reset", 2e-6, 100, nodes=[0, 1, 2])
                assert a.volts.shape == (4, 100, 3) and a.codes.dtype == np.int16
                assert np.isfinite(a.temperature_k)
            assert b.session.reconnects >= 1  # faults did happen, and were recovered from
            assert np.array_equal(b.get_channels(0, 4), v)
