"""Calibration of a thermodynamic-computing board: ADC readout, element curves, node time
constants; the calibration record; mapping trained parameters to volts and uploading them.

Public API::

    cal, summary = calibration.calibrate(device, "cal.h5")     # measure, fit, append to the record
    cal = calibration.load("cal.h5")                           # newest complete entry
    cal.element_value(channel, volts, temp_k=None)             # board units (kT = 1)
    cal.volts_for(channel, value, temp_k=None)                 # inverse, on the monotonic branch
    cal.span(channel); cal.check_volts(volts)                  # calibrated span; refuse volts outside it
    cal.node_mobility(mobility); cal.node_tau_s(); cal.node_temperatures()   # per node, for the twin
    volts = calibration.map_params(params, cal, device.channel_map)   # refuses what does not fit
    report = calibration.upload(device, params, cal)           # one block, read back, verify
    calibration.nominal(device.channel_map)                    # nominal gains, for comparison
    calibration.load_or_nominal(path_or_None, channel_map)     # a record, else nominal gains
    calibration.refit("cal.h5")                                # redo the fits from stored data
    calibration.combine("cal.h5")                              # pool entries: temperature coefficients

Modules: :mod:`.adc` (CAL:REF sweeps), :mod:`.stein` (element values from fluctuations),
:mod:`.design` (which settings to acquire), :mod:`.elements` (acquisitions), :mod:`.curves`
(curve models, fits, inverses), :mod:`.record` (HDF5 record, :func:`load`), :mod:`.mapping`
(:func:`map_params`, :func:`upload`), :mod:`.plots`, :mod:`.routine` (:func:`calibrate`).
The package talks to a board only through the :class:`tc_hw.model.device.Device` protocol.
"""

from .curves import CurveError, CurveFit, fit_curve
from .mapping import MappingError, UploadError, effective_params, load_or_nominal, map_params, nominal, upload
from .record import Calibration, CalibrationError, entries, load
from .routine import DEFAULTS, calibrate, combine, refit

__all__ = [
    "calibrate",
    "refit",
    "combine",
    "load",
    "entries",
    "map_params",
    "upload",
    "nominal",
    "load_or_nominal",
    "effective_params",
    "Calibration",
    "CalibrationError",
    "CurveFit",
    "CurveError",
    "MappingError",
    "UploadError",
    "fit_curve",
    "DEFAULTS",
]
