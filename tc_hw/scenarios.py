"""Boards with a real analog gap, for refinement: board files and the calibration each was given.

A refinement method is judged where the calibrated upload is measurably worse than the twin.
Each scenario is an emulated board (a board file, TOML, read by the emulator) plus the
calibration record the operator holds for it, made from the board's hidden truth as a perfect
calibration routine would have measured it *at calibration time* (:func:`truth_calibration`).
The calibration is perfect for what it models (element curves, ADC gain and offset) and blind to
what it does not:

``aged``
    Calibrated 8 hours ago at 3 K below today's board temperature; since then every element
    drifted by up to 2 % per hour (uniform per channel, the board keeps drifting during the run)
    and the tempco (up to 0.5 %/K) moved each value.  The calibration's tempco is unknown (NaN),
    as after a calibration at one temperature, so the upload is not corrected for the step.
``crosstalk``
    Each DAC line leaks 1-3 % of each neighbouring line's volts into its element, always adding
    (capacitive coupling of adjacent lines: ``crosstalk_same_sign``; magnitudes uniform over
    ``crosstalk_min``..``crosstalk`` = 1..3 %).  Unmodelled: every element value is shifted by an
    amount set by the *neighbours'* volts (the board-fitted readout absorbs much of it).
``tau``
    Per-node time constants 6-10 % longer than nominal (``tau_node_factors``; aged capacitors);
    the twin and the calibration use the nominal one.
``classify``
    A 12-node board with 8 input lines for the classification task, aged as ``aged``.

The scenario boards are the emulator's default board (:data:`sim_backend.emulator.board.DEFAULT_BOARD_TOML`,
32-node layered, seed 20250101) with its name and serial, a quieter temperature swing (0.2 K)
and these non-idealities set; all are reproducible (board seed, fixed factors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calibration.adc import AdcFit
from calibration.curves import CurveFit
from calibration.record import Calibration
from sim_backend.emulator.board import DEFAULT_BOARD_TOML

__all__ = ["Scenario", "SCENARIOS", "board_toml", "write_board", "truth_calibration"]

#: What every scenario changes in the emulator's default board file (DEFAULT_BOARD_TOML): a
#: quieter temperature (0.2 K swing instead of 0.5 K), so that the gap is the scenario's own.
_COMMON_NONIDEAL = {"temp_drift_k": "0.2"}

_LAYERED = "layered = { width = 8, depth = 4, inputs = 1 }"


def _set_keys(text: str, section: str, keys: dict) -> str:
    """TOML ``text`` with ``key = value`` lines of table ``section`` ("" = top level) replaced, or
    added at the table's start where absent (``keys``: name -> TOML value text)."""
    lines = text.splitlines()
    start = 0 if not section else lines.index(f"[{section}]") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
    todo = dict(keys)
    for i in range(start, end):
        name = lines[i].split("=", 1)[0].strip()
        if "=" in lines[i] and name in todo:
            lines[i] = f"{name} = {todo.pop(name)}"
    insert = [f"{k} = {v}" for k, v in todo.items()]
    at = start if section else end
    return "\n".join(lines[:at] + insert + lines[at:]) + "\n"


def _tau_factors(n: int = 32, low: float = 0.06, high: float = 0.10, seed: int = 14) -> str:
    """Every node slower by ``low``..``high`` (uniform; the board's capacitors aged the same way)."""
    f = 1.0 + np.random.default_rng(seed).uniform(low, high, n)
    return "[" + ", ".join(f"{v:.4f}" for v in f) + "]"


@dataclass(frozen=True)
class Scenario:
    """One board with a gap: its board file text and the age/temperature of its calibration."""

    name: str
    description: str
    extra: dict = field(default_factory=dict)  #: top-level board-file keys (name -> TOML value text)
    nonideal: dict = field(default_factory=dict)  #: ``[nonideal]`` keys set (name -> TOML value text)
    topology: str = _LAYERED  #: the ``[topology]`` line
    age_h: float = 0.0  #: hours between the calibration and the emulator's start
    temp_step_k: float = 0.0  #: board temperature minus calibration temperature, kelvin


SCENARIOS = {
    "aged": Scenario("aged", "calibrated 8 h ago, 3 K cooler; elements drift up to 2 %/h",
                     nonideal={"drift_per_hour": "0.02"}, age_h=8.0, temp_step_k=3.0),
    "crosstalk": Scenario("crosstalk", "unmodelled DAC crosstalk of up to 3 % of each neighbour's volts",
                          nonideal={"crosstalk": "0.03", "crosstalk_min": "0.01", "crosstalk_same_sign": "1"}),
    "tau": Scenario("tau", "per-node time constants 6-10 % longer than the twin's and the calibration's",
                    extra={"tau_node_factors": _tau_factors()}),
    "classify": Scenario("classify", "12 nodes, 8 input lines, all-to-all; calibrated 8 h ago, 3 K cooler; "
                         "elements drift up to 2 %/h", topology="all_to_all = { hidden = 8, outputs = 4, inputs = 8 }",
                         nonideal={"drift_per_hour": "0.02"}, age_h=8.0, temp_step_k=3.0),
}


def board_toml(name: str) -> str:
    """The board file (TOML text) of scenario ``name``."""
    if name not in SCENARIOS:
        raise ValueError(f"no scenario {name!r}; scenarios: {', '.join(SCENARIOS)}")
    s = SCENARIOS[name]

    text = "\n".join(line for line in DEFAULT_BOARD_TOML.splitlines() if not line.startswith("#"))
    if _LAYERED not in text:
        raise RuntimeError("the emulator's default board is no longer the 8 x 4 layered one the scenarios assume")
    text = text.replace(_LAYERED, s.topology)
    text = _set_keys(text, "", {"name": f'"{name}"', "serial": f'"EMU-{name}"', **s.extra})
    return _set_keys(text, "nonideal", {**_COMMON_NONIDEAL, **s.nonideal})


def write_board(name: str, folder) -> Path:
    """Write scenario ``name``'s board file into ``folder``; returns its path."""
    path = Path(folder) / f"{name}.toml"
    path.write_text(board_toml(name), encoding="utf-8")
    return path


def truth_calibration(truth: dict, channel_map, identity: str = "", *, age_h: float = 0.0,
                      temp_step_k: float = 0.0):
    """The calibration a perfect routine would have recorded ``age_h`` hours before the emulator
    started, at ``temp_step_k`` kelvin below the board's reference temperature.

    Per RLC channel the static curve ``g (v + offset + nonlin s(v))`` is exactly a cubic in
    ``u = (v - centre) / half``: coefficients ``[g (centre + off), g (half + nl span S), 0,
    -g nl span S]`` (``S = 3 sqrt 3 / 2``), scaled by the drift at calibration time ``1 - d age``
    and by the tempco at the calibration temperature.  The ADC fit is the truth's gain and
    offset.  Crosstalk, later drift and per-node time constants are not in it.

    Parameters
    ----------
    truth : dict
        :func:`sim_backend.emulator.truth.load_truth` of the board.
    channel_map : ChannelMap
        The device's map (the record is checked against it at upload).
    """

    ch = truth["channels"]
    t0 = float(truth["temperature"]["t0_k"])
    t_cal = t0 - float(temp_step_k)
    fits = []
    s_norm = 3.0 * math.sqrt(3.0) / 2.0
    for c in channel_map:
        i = c.index
        if float(ch["period"][i]) > 0:
            raise ValueError("truth_calibration handles RLC curves only (channel {i} is periodic)")
        g = float(ch["gain_nominal"][i] * ch["gain_factor"][i])
        g *= (1.0 + float(ch["tempco_per_k"][i]) * (t_cal - t0))
        g *= (1.0 - float(np.asarray(ch.get("drift_per_s", np.zeros(len(channel_map))))[i]) * age_h * 3600.0)
        vmin, vmax = float(ch["vmin"][i]), float(ch["vmax"][i])
        span, centre, half = vmax - vmin, 0.5 * (vmin + vmax), 0.5 * (vmax - vmin)
        nl, off = float(ch["nonlin"][i]), float(ch["offset_v"][i])
        coef = np.array([g * (centre + off), g * (half + nl * span * s_norm), 0.0, -g * nl * span * s_norm])
        fits.append(CurveFit(i, c.kind, "poly", coef, np.zeros((4, 4)), vmin, vmax, float(ch["gain_nominal"][i]),
                             0.0, (vmin, vmax), t_ref=t_cal, ok=True, reason="from the emulator's truth",
                             n_points=0))
    n = len(truth["adc"]["gain"])
    z = np.zeros(n)
    adc = AdcFit(np.asarray(truth["adc"]["gain"], float), np.asarray(truth["adc"]["offset_v"], float), z.copy(),
                 z.copy(), np.full(n, np.nan), np.ones(n, bool), measured=True)
    return Calibration(fits, adc, {}, channel_map, identity=identity, technology=truth.get("technology", "RLC"),
                       temperature_k=t_cal, entry=f"truth (age {age_h:g} h, {temp_step_k:g} K cooler)",
                       summary={"from_truth": True, "age_h": age_h, "temp_step_k": temp_step_k})
