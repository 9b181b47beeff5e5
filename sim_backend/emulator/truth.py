"""The hidden truth of an emulated board, as a JSON file, and functions to evaluate it.

Written by ``--truth-file PATH`` at start-up (before the ready line); never reachable over SCPI.
Tests read it to compare what calibration found with what the board really is::

    truth = load_truth(path)
    element_value(truth, channel=5, volts=1.2, temp_k=300.3)   # element value, energy units
    adc_volts(truth, node=3, volts=0.5)                        # noiseless ADC reading, volts
    adc_code(truth, node=3, volts=0.5)                         # noiseless int16 code

JSON layout (format ``tc-hw-emulator-truth/1``; arrays as lists)::

    format, name, technology, seed, n_nodes, n_inputs, tau_s (s, nominal = BOARD:TAU?), rail_v (V)
    kT           1.0: the board equation's energy unit (element values are in units of kT)
    nodes        {tau_s (length N): each node's true time constant, tau_s * tau_node_factors}
    tau_node_factors   list of N factors, or null (every node has tau_s)
    capacity_readings, work_limit_element_steps (null: unlimited), zoo_seed (null: not a zoo board)
    nonideal     {the sizes used: gain_spread, offset, ...}
    channels     {kind, a, b, vmin, vmax, gain_nominal, period, gain_factor, offset_v,
                  nonlin, tempco_per_k, xtalk_prev, xtalk_next, drift_per_s, dac_inl_v,
                  shape, shape_k, kink_hi_v, kink_hi_slope, kink_lo_v, kink_lo_slope}
                                                                 each of length n_channels
    adc          {gain, offset_v, noise_v, inl (length N), range_v}
    temperature  {t0_k, drift_k, period_s, phase}
    dac          {lsb_v, full_scale_v}
    curves       {volts, value}: (n_channels, 129) each, every channel's static curve on its
                 safe range at t0_k (no crosstalk or drift), for readers without this package

The curves are :func:`sim_backend.emulator.nonideal.element_curve` (formulas in that module).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from tc_hw.model.jsonsafe import dumps, nan_for_null

from . import nonideal as ni

__all__ = ["dump_truth", "load_truth", "element_value", "adc_volts", "adc_code", "board_temperature", "node_tau_s"]

_STRING_ARRAYS = {"kind"}


def dump_truth(truth: dict, path) -> None:
    """Write ``truth`` as JSON (atomically: a temporary file renamed into place).

    Values pass through :func:`tc_hw.model.jsonsafe.json_safe`: a non-finite float is written as
    ``null`` (JSON has no NaN) and :func:`load_truth` reads it back as ``nan``."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)  # unique, exclusive
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(dumps(truth, indent=1))
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _numeric(values: list) -> np.ndarray:
    """A JSON list as an array; ``null`` entries (non-finite floats when written) become ``nan``."""
    out = np.asarray(values)
    return nan_for_null(values) if out.dtype == object else out


def load_truth(path) -> dict:
    """Read a truth file; per-channel and per-node lists become numpy arrays."""
    truth = json.loads(Path(path).read_text(encoding="utf-8"))
    for section in ("channels", "adc", "nodes", "curves"):
        for k, v in truth.get(section, {}).items():
            if isinstance(v, list):
                truth[section][k] = np.asarray(v, dtype=str) if k in _STRING_ARRAYS else _numeric(v)
    return truth


def _channels(truth: dict, channel) -> dict:
    idx = np.asarray(channel, np.int64)
    return {k: np.asarray(v)[idx] for k, v in truth["channels"].items() if k != "kind"}


def element_value(truth: dict, channel, volts, temp_k: float | None = None) -> np.ndarray:
    """True element value of ``channel`` (int or int array) at applied ``volts`` and ``temp_k``.

    ``channel`` and ``volts`` broadcast; ``temp_k`` defaults to the reference temperature ``t0_k``.
    Pass the *applied* (DAC-quantised) voltage, as ``DAC:BLOCK?`` reports it.
    """
    t0 = truth["temperature"]["t0_k"]
    return ni.element_curve(_channels(truth, channel), volts, t0 if temp_k is None else temp_k, t0)


def adc_volts(truth: dict, node, volts) -> np.ndarray:
    """Noiseless ADC reading (volts) of node(s) ``node`` whose true value is ``volts``."""
    adc = truth["adc"]
    idx = np.asarray(node, np.int64)
    out = np.asarray(adc["gain"], float)[idx] * np.asarray(volts, float) + np.asarray(adc["offset_v"], float)[idx]
    inl = np.asarray(adc.get("inl", 0.0), float)
    if np.any(inl):
        out = out + ni._adc_inl(adc, inl[idx], np.asarray(volts, float))
    return out


def node_tau_s(truth: dict) -> np.ndarray:
    """Each node's true time constant in seconds, shape (N,)."""
    nodes = truth.get("nodes")
    if nodes and "tau_s" in nodes:
        return np.asarray(nodes["tau_s"], float)
    return np.full(int(truth["n_nodes"]), float(truth["tau_s"]))


def adc_code(truth: dict, node, volts) -> np.ndarray:
    """Noiseless int16 code for node(s) ``node`` at true value ``volts``."""
    return ni.adc_codes(adc_volts(truth, node, volts), truth["adc"]["range_v"])


def board_temperature(truth: dict, elapsed_s: float) -> float:
    """Board temperature (kelvin) ``elapsed_s`` seconds after the emulator started."""
    return ni.board_temperature(truth, elapsed_s)
