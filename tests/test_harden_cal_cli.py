"""Issue 15 reproductions: calibration records (items 8, 10, 12) and CLI messages (14-16)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

import calibration
from calibration.mapping import _suggested_factor
from sim_backend.device import TwinDevice
from tc_hw.cli import exit_code_of, main
from tests.test_calibration import _params, _write_entry


@pytest.fixture(scope="module")
def dev():
    return TwinDevice()


@pytest.fixture()
def cal_path(tmp_path, dev):
    path = tmp_path / "cal.h5"
    _write_entry(path, dev, 1.0)
    return path


def _entry(f):
    return f["entries"][sorted(f["entries"])[-1]]


@pytest.mark.parametrize("mutate,match", [
    (lambda f: f.attrs.__setitem__("format_version", 9), "format_version"),
    (lambda f: _entry(f).attrs.__setitem__("complete", "no"), "no complete"),
    (lambda f: _entry(f)["fits/tempco"].__setitem__(3, np.inf), "temperature coefficient"),
    (lambda f: (_entry(f)["fits/tempco"].__setitem__(3, 0.01), _entry(f)["fits/t_ref"].__setitem__(3, np.nan)),
     "temperature coefficient"),
    (lambda f: _entry(f)["fits/coef"].__setitem__((5, 0), np.nan), "not finite"),
    (lambda f: _entry(f)["adc_fit/gain"].__setitem__(0, np.nan), "ADC"),
    (lambda f: _entry(f)["adc_fit/gain"].__setitem__(0, 1e6), "absurd"),
    (lambda f: _entry(f)["fits/coef"].__setitem__(slice(None), _entry(f)["fits/coef"][()] * 1e6), "absurd"),
    (lambda f: _entry(f).__delitem__("fits"), "damaged"),
], ids=["version-9", "complete-no", "inf-tempco", "tempco-without-reference", "nan-coef", "nan-adc-gain", "adc-gain-1e6", "coef-x1e6", "no-fits"])
def test_item8_bad_calibration_records_are_refused(cal_path, mutate, match):
    assert calibration.load(cal_path).ok.all()
    with h5py.File(cal_path, "r+") as f:
        mutate(f)
    with pytest.raises(calibration.CalibrationError, match=match):
        calibration.load(cal_path)


@pytest.mark.parametrize("content", [b"", b"\x89HDF\r\n\x1a\n" + b"\0" * 40, b"random bytes" * 10,
                                     b"\x80\x04\x95pickle."], ids=["empty", "truncated", "random", "pickle"])
def test_item12_cal_files_that_are_not_records_exit_2(tmp_path, content, capsys):
    p = tmp_path / "cal.h5"
    p.write_bytes(content)
    rc = main(["upload", "--resource", "twin", "--params", str(_params_file(tmp_path)), "--cal", str(p)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and str(p) in err


def test_item12_cal_folder_exits_2(tmp_path, capsys):
    rc = main(["upload", "--resource", "twin", "--params", str(_params_file(tmp_path)), "--cal", str(tmp_path)])
    assert rc == 2 and "folder" in capsys.readouterr().err


def _params_file(tmp_path):
    from tc_hw.model.files import save_params

    p = tmp_path / "prog.h5"
    if not p.exists():
        save_params(_params(TwinDevice()), p)
    return p


@pytest.mark.parametrize("scale", ["100", "1e-300", "nan", "-1", "inf", "abc"])
def test_item10_upload_scales_are_messages_not_tracebacks(tmp_path, scale, capsys):
    rc = main(["upload", "--resource", "twin", "--params", str(_params_file(tmp_path)), "--scale", scale])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "ZeroDivision" not in err


def test_item10_suggested_factor_is_never_zero():
    for s_hi in (1e-300, 1e-5, 0.0009, 0.5):
        s = _suggested_factor(0.0, s_hi)
        assert 0 < s <= s_hi and s >= 0.99 * s_hi * (1 - 1e-2)
    assert _suggested_factor(1.2345, 10) == pytest.approx(1.24)


def test_item14_keyerror_is_a_bug_not_bad_input():
    assert exit_code_of(KeyError("x")) is None
    assert exit_code_of(FileExistsError("x")) == 2 and exit_code_of(NotADirectoryError("x")) == 2
    assert exit_code_of(BlockingIOError("x")) == 2 and exit_code_of(ConnectionResetError("x")) == 3


def test_item14_outputs_under_a_regular_file_exit_2(tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.write_text("x")
    from tests.test_harden_files import _make_log

    log = tmp_path / "run.h5"
    _make_log(log, 2)
    assert main(["report", str(log), "--folder", str(plain / "sub")]) == 2
    assert main(["calibrate", "--resource", "twin", "--out", str(plain / "cal.h5")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err


def test_item7_report_does_not_write_through_a_symlink(tmp_path):
    from tests.test_harden_files import _make_log

    log = tmp_path / "run.h5"
    _make_log(log, 2)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (tmp_path / "run_loss.png").symlink_to(victim)
    assert main(["report", str(log)]) == 2
    assert victim.read_text() == "keep"


@pytest.mark.parametrize("argv", [
    ["--dt", "0"], ["--dt", "-1e-3"], ["--samples", "0"], ["--time", "nan"], ["--time", "0"], ["--dt", "inf"],
    ["--time", "1e-9"],
])
def test_item15_evaluate_bad_numbers_exit_2_before_work(tmp_path, argv, capsys):
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(["evaluate", "--params", str(_params_file(tmp_path)), *argv]))
    assert e.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_item15_acquire_json_has_no_nan(capsys):
    assert main(["acquire", "--resource", "twin", "--samples", "1", "--json"]) == 0
    out = capsys.readouterr().out
    r = json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in JSON output"))
    assert r["std_v"][0] is None


def test_item16_refusals_print_enough_digits(dev):
    ch = dev.channel_map[0]
    v = np.zeros(len(dev.channel_map))
    v[0] = ch.vmin - 1e-7
    with pytest.raises(ValueError) as e:
        dev.channel_map.check(v)
    assert repr(ch.vmin - 1e-7)[:9] in str(e.value) or f"{ch.vmin - 1e-7:.9g}" in str(e.value)
