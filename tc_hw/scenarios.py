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
    Each DAC line leaks 3 % of each neighbouring line's volts into its element, always adding
    (capacitive coupling of adjacent lines: ``crosstalk_same_sign``, ``crosstalk_min`` =
    ``crosstalk`` = 3 %).  Unmodelled: every element value is shifted by an amount set by the
    *neighbours'* volts.
``tau``
    Every node's time constant 10 % longer than nominal (``tau_node_factors``; capacitors aged
    alike); the twin and the calibration use the nominal one.
``control``
    No gap: the same board calibrated now, at today's temperature (checks that the others' gaps
    are theirs, not the emulator's time step or the mapping).
``classify``
    A 12-node board with 8 input lines for the classification task, aged as ``aged``.
``zoo`` (``zoo:SEED``)
    A zoo board (:mod:`sim_backend.emulator.zoo`, default :data:`ZOO_SEED`) as an operator meets
    it: calibrated by the real routine (:func:`calibration.calibrate`, the demo's quick
    settings), running the demo's own program for it (:func:`zoo_program`).  Its gap is what the
    calibration gets wrong on a board it has never seen.

The scenario boards are the emulator's default board (:data:`sim_backend.emulator.board.DEFAULT_BOARD_TOML`,
32-node layered, seed 20250101) with its name and serial, a quieter temperature swing (0.2 K)
and these non-idealities set; all are reproducible (board seed, fixed factors), and
``board_toml(name, seed)`` draws the same scenario on another board seed.

How large each gap is (``start_loss / twin_loss`` of ``benchmarks/refine_methods.py``: the
benchmark program, 3 read-out nodes, uploaded in one crossbar polarity; unbiased losses, twin
0.00055; ``docs/scenarios.md`` has the tables): ``aged`` 26x (0.5-16x on four board draws of
:func:`gap_check`: drift is random in sign), ``tau`` 4.0x, ``crosstalk`` 5.3x.  Two things set
their size:

* the losses are unbiased (:func:`tc_hw.model.tasks.cos_loss_unbiased`): a loss measured with
  1000 readings per input carries ``var / 1000`` (about 0.0015, two thirds of the twin's plain
  loss), which every program pays alike; the plain ratios are 7.8x, 1.8x and 2.1x;
* a common error is not absorbed by the board-fitted readout: every node 10 % slower shifts the
  whole out-of-equilibrium response (the program is observed at ``t_f = 1``, about two relaxation
  times), and same-sign crosstalk along a crossbar of one polarity is an error of the input gain,
  the combination the program is most sensitive to (with the trained mixed signs it cancels:
  1.2x).  A per-node spread of time constants (+-10 %) is mostly absorbed by the readout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import calibration
from calibration import map_params
from calibration.adc import AdcFit
from calibration.curves import CurveFit
from calibration.mapping import on_board_mobility
from calibration.record import Calibration
from calibration.scale import fitting_scale
from drivers.board import parse_channel_map
from sim_backend import twin
from sim_backend.emulator.acquire import time_step
from sim_backend.emulator.board import DEFAULT_BOARD_TOML, Board, parse_board, quantize
from sim_backend.emulator.zoo import zoo_board_toml

from . import demo
from .model.tasks import cos_task
from .train.cos import readout_lstsq

__all__ = [
    "SCENARIOS",
    "ZOO_SEED",
    "Scenario",
    "board_channel_map",
    "board_toml",
    "fit_observation_time",
    "gap_check",
    "scenario_board",
    "truth_calibration",
    "write_board",
    "write_zoo_board",
    "zoo_program",
    "zoo_seed",
]

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


def _tau_factors(n: int = 32, slower: float = 0.10) -> str:
    """Every node ``slower`` (fraction) slower than nominal: TOML list text."""
    return "[" + ", ".join([f"{1.0 + slower:.4f}"] * n) + "]"


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
    "crosstalk": Scenario("crosstalk", "unmodelled DAC crosstalk: 3 % of each neighbouring line's volts, adding",
                          nonideal={"crosstalk": "0.03", "crosstalk_min": "0.03", "crosstalk_same_sign": "1"}),
    "tau": Scenario("tau", "every node's time constant 10 % longer than the twin's and the calibration's",
                    extra={"tau_node_factors": _tau_factors()}),
    "control": Scenario("control", "no gap: calibrated now, at today's temperature (the check of the others)"),
    "classify": Scenario("classify", "12 nodes, 8 input lines, all-to-all; calibrated 8 h ago, 3 K cooler; "
                         "elements drift up to 2 %/h", topology="all_to_all = { hidden = 8, outputs = 4, inputs = 8 }",
                         nonideal={"drift_per_hour": "0.02"}, age_h=8.0, temp_step_k=3.0),
}


def _scenario(name) -> Scenario:
    """Scenario ``name`` (a :class:`Scenario` is taken as it is)."""
    if isinstance(name, Scenario):
        return name
    if name not in SCENARIOS:
        raise ValueError(f"no scenario {name!r}; scenarios: {', '.join(SCENARIOS)}")
    return SCENARIOS[name]


def board_toml(name, seed: int | None = None) -> str:
    """The board file (TOML text) of scenario ``name`` (or of a :class:`Scenario`); ``seed``: another
    draw of the same scenario (the board seed: every hidden per-channel value, crosstalk and drift
    coefficients included, is drawn anew with the same sizes; None: the default board's seed)."""
    s = _scenario(name)
    name = s.name

    text = "\n".join(line for line in DEFAULT_BOARD_TOML.splitlines() if not line.startswith("#"))
    if _LAYERED not in text:
        raise RuntimeError("the emulator's default board is no longer the 8 x 4 layered one the scenarios assume")
    text = text.replace(_LAYERED, s.topology)
    top = {"name": f'"{name}"', "serial": f'"EMU-{name}"', **s.extra}
    if seed is not None:
        top["seed"] = str(int(seed))
    text = _set_keys(text, "", top)
    return _set_keys(text, "nonideal", {**_COMMON_NONIDEAL, **s.nonideal})


def write_board(name: str, folder, seed: int | None = None) -> Path:
    """Write scenario ``name``'s board file (board seed ``seed``, see :func:`board_toml`) into
    ``folder``; returns its path."""
    path = Path(folder) / f"{name}.toml"
    path.write_text(board_toml(name, seed), encoding="utf-8")
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


# ----------------------------------------------------------------------------- quick gap check
def scenario_board(name, seed: int | None = None):
    """Scenario ``name``'s emulated board in-process (:class:`sim_backend.emulator.board.Board`:
    the description plus its hidden truth, the same the emulator process draws); ``seed``: the
    board seed of another draw (:func:`board_toml`)."""
    return Board(parse_board(board_toml(name, seed), _scenario(name).name))


def board_channel_map(board):
    """The ``BOARD:MAP?`` channel map of ``board``, parsed by the driver's own parser."""
    lay = board.layout
    return parse_channel_map(lay.map_csv().encode(), lay.n_channels, lay.n_nodes, lay.n_inputs)


def _lstsq_loss(x, y0, at_samples: int | None) -> float:
    """cos loss of output samples ``x`` (P, M, n_out) read out by the least-squares fit to their
    means, debiased from ``M`` to ``at_samples`` runs per input (``+ var (1/at - 1/M)``; None:
    infinitely many, the unbiased loss)."""
    x = np.asarray(x, np.float64)
    xbar = x.mean(axis=1)
    f, *_ = np.linalg.lstsq(xbar, y0, rcond=None)
    var = float(np.mean((x @ f).var(axis=1, ddof=1)))
    return float(np.mean((xbar @ f - y0) ** 2)) + var * ((1.0 / at_samples if at_samples else 0.0) - 1.0 / x.shape[1])


def gap_check(name, program, *, points: int = 100, samples: int = 400, seed: int = 0,
              elapsed_s: float = 0.0, cal=None, at_samples: int | None = 1000, board_seed: int | None = None) -> dict:
    """The scenario's gap on the twin alone, without the emulator process (seconds, not minutes).

    ``program`` (a cos computer, :class:`~tc_hw.model.params.Params`) is rescaled to fit the
    board, mapped through the scenario's calibration (default :func:`truth_calibration` at the
    scenario's age and temperature step), and the board's true equation at those volts
    (:meth:`Board.params` at ``elapsed_s`` seconds after the emulator's start, its temperature
    then) is sampled on the twin with the emulator's time step and rails; the program itself is
    sampled at dt = 1e-3.  Both use the same seed, but with different time steps their noise is
    not shared (each loss has its own standard error, about 3e-4 at 100 x 1000); each gets its
    own least-squares readout, so ``ratio`` = ``board_loss / twin_loss`` is the gap that a
    board measurement with a board-fitted readout shows (ADC noise and quantisation left out:
    1 mV against node spreads of order 0.3 V).

    Returns ``{"twin_loss", "board_loss", "ratio", "scale"}``: losses on ``points`` inputs of
    ``samples`` runs each, debiased to what ``at_samples`` runs per input measure (the final
    measurement's 1000: its sampling bias ``var / 1000`` is in both losses; None: unbiased, as the
    benchmark reports them), and the program's coordinate scale on the board.
    """
    sc = _scenario(name)
    board = scenario_board(sc, board_seed)
    cmap = board_channel_map(board)
    if cal is None:
        cal = truth_calibration(board.truth, cmap, age_h=sc.age_h, temp_step_k=sc.temp_step_k)
    lam = fitting_scale(program, cmap, cal)
    prog = program.rescaled(lam)
    z, y0 = cos_task(points)
    outputs = np.asarray(prog.network.outputs)
    x_twin = twin.sample_reset(prog, z, 1.0, samples, dt=1e-3, seed=seed, nodes=outputs).x[:, :, 0, :]
    volts = quantize(map_params(prog, cal, cmap))
    truth_eq = board.params(volts, board.temperature(elapsed_s), elapsed_s)
    t_tau = float(np.max(prog.mobility)) * prog.kT  # t_f = 1 program unit, as refine measures it
    x_board = twin.sample_reset(truth_eq, z, t_tau, samples, dt=time_step(t_tau), seed=seed, nodes=outputs,
                                rail=board.desc.rail_v).x[:, :, 0, :]
    tl = _lstsq_loss(x_twin, y0, at_samples)
    bl = _lstsq_loss(x_board, y0, at_samples)
    return {"twin_loss": tl, "board_loss": bl, "ratio": bl / tl, "scale": lam}


# ----------------------------------------------------------------------------- the zoo scenario
#: The zoo board of the ``zoo`` scenario: a mid-gain RLC board (nominal gain about 1/4 of the default
#: board's) whose demo showed calibrated upload / twin = 4.6 last session; ``zoo:SEED`` picks another.
ZOO_SEED = 880007


def zoo_seed(name: str) -> int | None:
    """The zoo seed a scenario name asks for (``zoo``: :data:`ZOO_SEED`, ``zoo:SEED``), else None.
    Raises ValueError for a ``zoo:`` name whose seed is not a non-negative integer."""
    if name == "zoo":
        return ZOO_SEED
    if not name.startswith("zoo:"):
        return None
    text = name.split(":", 1)[1]
    if not text.isdigit():
        raise ValueError(f"zoo scenario {name!r}: the seed must be a non-negative integer")
    return int(text)


def write_zoo_board(seed: int, folder) -> Path:
    """Write the board file ``zoo = SEED`` into ``folder``; returns its path."""
    path = Path(folder) / f"zoo-{int(seed)}.toml"
    path.write_text(zoo_board_toml(int(seed)), encoding="utf-8")
    return path


def zoo_program(device, folder, seed: int = 0, calibration_options: dict | None = None, cal=None) -> dict:
    """A zoo board as an operator meets it, with the demo's steps: calibrated by the real routine
    (:func:`calibration.calibrate` with :data:`tc_hw.demo.QUICK_CALIBRATION`, written to
    ``folder/cal.h5``), and the demo's program planned on that calibration and trained on the twin.

    Returns ``{"program"``: the program on the whole board at its coordinate scale (what ``refine``
    takes), ``"cal"``, ``"input_scale"``: the input line's amplitude per unit z, ``"twin_program"``:
    the trained computer with the board's calibrated per-node time constants (whose twin loss is
    the demo's ``twin_loss``)}.  The gap comes from what the calibration gets wrong on a board it has
    never seen (curve shapes, per-node time constants, ADC), not from a chosen defect.  ``cal``: a
    calibration this board already has (the routine's, e.g. ``calibration.load(folder / "cal.h5")``
    of an earlier run), used instead of calibrating again.
    """
    folder = Path(folder)
    if cal is None:
        opts = demo.QUICK_CALIBRATION if calibration_options is None else calibration_options
        cal, _ = calibration.calibrate(device, folder / "cal.h5", progress=False, **opts)
    choice = demo._choose_program(device, cal, folder, seed, False)
    tr = choice.trained
    return {"program": tr.on_board.rescaled(tr.scale), "cal": cal, "input_scale": float(choice.plan.input_scale),
            "twin_program": on_board_mobility(tr.params, cal, choice.nodes)}


# ----------------------------------------------------------------------------- the benchmark program
#: Time factors :func:`fit_observation_time` tries (program mobility x factor).
TIME_FACTORS = (1.0, 1.1, 1.2, 1.3, 1.4, 1.5)


def fit_observation_time(program, factors=TIME_FACTORS, *, points: int = 100, samples: int = 1000,
                         seed: int = 0):
    """``program`` with the observation time (its ``mobility``, the same thing: ``t_f = 1`` program
    unit is ``tau mobility kT`` on the board) that gives the lowest twin loss at dt = 1e-3, and its
    exact least-squares readout there.

    Direct training integrates at dt = 1e-2, where Euler-Maruyama relaxes faster than the
    dynamics it approximates, so the trained program is a little too slow at dt = 1e-3 (on the
    board): measured, the twin loss of the benchmark's program falls from 0.0050 to 0.0023 at 1.2
    times its trained mobility.  Fitting this one number is part of training (the program is the
    same computer observed at another time); it makes the program's twin loss its best, so that a
    board's gap is not hidden by a board that happens to run faster or slower.  The fit uses its own
    noise seed; each factor's loss is debiased to 1000 readings per input (:func:`_lstsq_loss`).

    Returns ``(program, table)``: ``table`` maps each factor to its loss.
    """
    z, y0 = cos_task(points)
    nodes = np.asarray(program.network.outputs)
    table = {}
    for c in factors:
        q = program.copy(mobility=program.mobility * float(c))
        x = twin.sample_reset(q, z, 1.0, samples, dt=1e-3, seed=seed, nodes=nodes).x[:, :, 0, :]
        table[float(c)] = _lstsq_loss(x, y0, 1000)
    best = min(table, key=table.get)
    q = program.copy(mobility=program.mobility * best)
    return readout_lstsq(q, samples=samples, dt=1e-3, seed=seed + 1), table
