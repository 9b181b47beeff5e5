"""The board zoo: boards tc-hw has never seen, drawn from a seed.

``draw_board(seed)`` returns a :class:`~sim_backend.emulator.board.BoardDescription` whose
every property is drawn from ``seed`` (the same seed always gives the same board; different
seeds give different boards).  Served by ``tc-hw emulate --zoo SEED`` or a board file holding
``zoo = SEED``.  What varies from board to board (ranges are uniform unless said otherwise):

* technology: RLC (3 in 4) or JJ (periodic B, C, W elements, period 10-14 V);
* topology: layered, 16-32 nodes (width x depth in :data:`SHAPES`), 1 or 2 input lines;
* nominal gains: the default's times a board factor log-uniform in [0.1, 1] (weak boards),
  times 0.9-1.1 per kind; safe ranges the default's stretched by 0.8-1.2 (rounded to 256 DAC LSB, 0.078 V);
* element curves: per channel one of four families -- polynomial (the default board's),
  saturating (tanh), exponential, piecewise linear with two kinks -- with family probabilities
  drawn per board (Dirichlet(1, 1, 1, 1)) and curvature ``shape_strength`` 0.3-1.2; gain spread
  5-20 %, offsets 2-20 % of the span (so many elements, R among them, cross zero inside their
  safe range), polynomial nonlinearity 0-6 % of full scale, tempco 0.1-0.5 %/K;
* per-node time constants: ``tau_node_factors`` = (1 + c)(1 + 0.1 U(-1, 1)) with a board-wide
  c in +-6 % (the nominal ``tau_s`` that ``BOARD:TAU?`` reports is 0.5-2 times the default's);
* ADC per node: gain 0.5-3 %, offset 2-20 mV, noise 0.5-2 mV, integral nonlinearity 0-0.02 % of
  the range (up to 0.8 mV, about 6 LSB, at the worst point of a 4 V range); DAC integral nonlinearity 0-5 mV per channel; DAC crosstalk 0-0.05 %;
* board temperature drift 0.1-1 K with period 300-1800 s;
* a capacity (``capacity_readings``: 2^22 .. 2^26 readings per INIT) and a work limit
  (``work_limit_element_steps``: log-uniform 2e9 .. 2e10).

The calibration must never read this module or a board's zoo seed: it is judged on boards drawn
from seeds it has not seen.  Boards are identified as ``zoo-<seed>`` (name) and ``ZOO<seed>``
(serial) only so that a person can reproduce one.
"""

from __future__ import annotations

import math

import numpy as np

from tc_hw.model.network import layered

from . import nonideal as ni
from .board import DAC_FULL_SCALE_V, DAC_LSB_V, BoardDescription, KindSpec, _JJ_KINDS, _RLC_KINDS

__all__ = ["draw_board", "SHAPES", "zoo_board_toml"]

#: Layered (width, depth) shapes a zoo board may have: 16 to 32 nodes, every one with couplings.
SHAPES = ((4, 4), (5, 4), (6, 3), (6, 4), (8, 2), (8, 3), (7, 4), (8, 4))

#: Safe-range bounds are multiples of this (256 DAC LSB): exact in float32 and on the DAC grid,
#: so that a driver can program a bound exactly.
RANGE_STEP_V = 256 * DAC_LSB_V

#: Stream id mixed into the zoo seed (independent of the board seed's streams).
_ZOO_STREAM = 0x200B0A2D


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _kinds(rng: np.random.Generator, technology: str, gain_scale: float) -> dict:
    """Per-kind safe range (stretched 0.8-1.2, 0.1 V steps, within the DAC), gain and period."""
    base = _JJ_KINDS if technology == "JJ" else _RLC_KINDS
    out = {}
    for k, spec in base.items():
        stretch = _u(rng, 0.8, 1.2)
        vmin = max(round(spec.vmin * stretch / RANGE_STEP_V) * RANGE_STEP_V, -DAC_FULL_SCALE_V)
        vmax = min(round(spec.vmax * stretch / RANGE_STEP_V) * RANGE_STEP_V, 9.0)
        gain = spec.gain * gain_scale * _u(rng, 0.9, 1.1)
        period = round(_u(rng, 10.0, 14.0), 2) if spec.period > 0 else 0.0
        out[k] = KindSpec(vmin, vmax, gain, period)
    return out


def _nonideal(rng: np.random.Generator) -> ni.NonIdeal:
    """Sizes of every non-ideality, drawn per board (see the module docstring)."""
    mix = rng.dirichlet([1.0, 1.0, 1.0, 1.0])  # polynomial, saturating, exponential, kinked
    return ni.NonIdeal(
        gain_spread=_u(rng, 0.05, 0.20),
        offset=_u(rng, 0.02, 0.20),
        nonlinearity=_u(rng, 0.0, 0.06),
        tempco_per_k=_u(rng, 0.001, 0.005),
        temp_drift_k=_u(rng, 0.1, 1.0),
        temp_period_s=_u(rng, 300.0, 1800.0),
        adc_gain_spread=_u(rng, 0.005, 0.03),
        adc_offset_v=_u(rng, 0.002, 0.020),
        adc_noise_v=_u(rng, 0.0005, 0.002),
        adc_noise_spread=0.25,
        crosstalk=_u(rng, 0.0, 0.0005),
        drift_per_hour=0.0,
        saturating=float(mix[1]),
        exponential=float(mix[2]),
        kinked=float(mix[3]),
        shape_strength=_u(rng, 0.3, 1.2),
        adc_inl=_u(rng, 0.0, 0.0002),
        dac_inl_v=_u(rng, 0.0, 0.005),
    )


def draw_board(seed: int) -> BoardDescription:
    """The zoo board of ``seed`` (a non-negative int): same seed, same board.

    Returns a :class:`BoardDescription` with ``zoo_seed = seed``; its hidden per-channel truth is
    drawn by :class:`~sim_backend.emulator.board.Board` from the board seed, itself derived from
    ``seed``.  Raises ``ValueError`` for a negative or non-integer seed."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"a zoo seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, _ZOO_STREAM]))
    technology = "JJ" if rng.uniform() < 0.25 else "RLC"
    width, depth = SHAPES[int(rng.integers(len(SHAPES)))]
    n_inputs = 1 if rng.uniform() < 0.7 else 2
    network = layered(width, depth, n_inputs)
    gain_scale = float(10.0 ** rng.uniform(-1.0, 0.0))
    kinds = _kinds(rng, technology, gain_scale)
    nonideal = _nonideal(rng)
    tau_nominal = (1e-9 if technology == "JJ" else 1e-6) * float(2.0 ** rng.uniform(-1.0, 1.0))
    common = _u(rng, -0.06, 0.06)
    factors = (1.0 + common) * (1.0 + 0.1 * rng.uniform(-1.0, 1.0, network.n_nodes))
    capacity = int(2 ** int(rng.integers(22, 27)))
    work_limit = float(10.0 ** rng.uniform(math.log10(2e9), math.log10(2e10)))
    board_seed = int(np.random.SeedSequence([seed, _ZOO_STREAM, 1]).generate_state(1, np.uint32)[0])
    return BoardDescription(
        network=network,
        technology=technology,
        tau_s=tau_nominal,
        seed=board_seed,
        kinds=kinds,
        nonideal=nonideal,
        name=f"zoo-{seed}",
        model=f"TC-{technology}{network.n_nodes}-ZOO",
        serial=f"ZOO{seed}",
        firmware="emu-1.0",
        tau_node_factors=tuple(float(f) for f in factors),
        capacity_readings=capacity,
        work_limit_element_steps=work_limit,
        zoo_seed=seed,
    )


def zoo_board_toml(seed: int) -> str:
    """The board file of zoo board ``seed`` (``zoo = SEED``)."""
    draw_board(seed)  # validate
    return f"# zoo board drawn from seed {seed} (sim_backend.emulator.zoo)\nzoo = {int(seed)}\n"
