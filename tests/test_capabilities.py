"""Optional backend capabilities as runtime-checkable protocols (tc_hw.model.device), not hasattr probes.

The board driver is exercised through real PyVISA over TCP on 127.0.0.1 against the emulator
running as its own process."""

import numpy as np
import pytest

from calibration import adc
from drivers import open_visa
from sim_backend.device import TwinDevice
from tc_hw.model.device import (
    CalibrationReference,
    Device,
    ReconnectCounter,
    Seedable,
    UnsafeVoltageError,
    armed,
    reconnect_count,
)
from tests.emulator_process import emulator, running_emulator  # noqa: F401  (pytest fixture)


def test_twin_device_is_seedable_only():
    dev = TwinDevice()
    assert isinstance(dev, Device) and isinstance(dev, Seedable)
    assert not isinstance(dev, CalibrationReference) and not isinstance(dev, ReconnectCounter)
    assert reconnect_count(dev) == 0 and not adc.supports_cal_ref(dev)
    with pytest.raises(NotImplementedError, match="CAL:REF"):
        adc.set_cal_ref(dev, 1.0)


def test_reseed_makes_twin_acquisitions_repeat():
    dev = TwinDevice()
    dev.set_inputs(np.zeros((2, dev.n_inputs)))
    got = []
    for seed in (5, 5, 6):
        dev.reseed(seed)
        with armed(dev):
            got.append(dev.acquire("reset", 2 * dev.tau_s, 8).volts)
    assert np.array_equal(got[0], got[1]) and not np.array_equal(got[0], got[2])


def test_board_offers_cal_ref_and_reconnect_counter_not_seeding(emulator):
    with open_visa(emulator.tcp, timeout_s=5.0) as b:
        b.reset()
        assert isinstance(b, Device) and isinstance(b, CalibrationReference) and isinstance(b, ReconnectCounter)
        assert not isinstance(b, Seedable)
        assert reconnect_count(b) == 0 and adc.supports_cal_ref(b)
        b.set_inputs(np.zeros((2, b.n_inputs)))
        adc.set_cal_ref(b, 1.25)
        assert abs(b.session.query("CAL:REF?", float) - 1.25) < 1e-6
        with armed(b):
            x = b.acquire("reset", 1e-6, 20, nodes=[0, 3]).volts
        assert np.all(np.abs(x.mean(axis=(0, 1)) - 1.25) < 0.1)  # the ADCs read the reference
        with pytest.raises(UnsafeVoltageError, match=r"CAL:REF \+6 V outside"):
            b.cal_ref(6.0)
        with pytest.raises(UnsafeVoltageError):
            b.cal_ref(float("nan"))
        assert abs(b.session.query("CAL:REF?", float) - 1.25) < 1e-6  # nothing was sent
        b.cal_ref(None)
        assert b.session.query("CAL:REF?") == "OFF"
