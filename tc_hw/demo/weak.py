"""The weak-board computer: for a board whose elements are weak relative to kT.

* :func:`plan_for_weak_board`: a 2-layer (:data:`WEAK_DEPTH`) computer of quartic wells (``Q``
  near 0, ``R`` at the top of its reach) and each element's own bounds (:func:`_element_bounds`);
  :func:`_read_every_node`: every node an output;
* the physics of its readings: :func:`quartic_relaxation_time` of a well and the program
  mobility :func:`weak_mobility` (readings of :data:`WEAK_RELAXATIONS` relaxation times);
* :func:`weak_field_sigma`: the field errors that element errors of :data:`WEAK_ELEMENT_ERROR`
  of full scale give each node (training tolerates them).
"""

from __future__ import annotations

import math

import numpy as np

from calibration.mapping import channel_values

from ..model.network import Network
from .common import DemoError
from .plan import (
    _KIND_FIELD,
    _POWER,
    _SLACK,
    MAX_INPUT_SCALE,
    BoardPlan,
    _channel_reach,
    embed,
)

#: Quartic term of the weak-board plan in program units (kT 0.1): sets its coordinate scale.
WEAK_QUARTIC = 1.0

#: Layers of the weak-board computer: each hop through a weak coupling halves the signal that
#: reaches the output (measured on zoo board 7007: twin loss 0.04 with 2 layers, 0.51 with 4).
WEAK_DEPTH = 2

#: One reading of the weak-board computer lasts this many relaxation times of its quartic wells
#: (:func:`quartic_relaxation_time`).  At ``t_f = 1`` (mobility 1, about 1.3 relaxation times) the
#: nodes are still on their way from ``x = 0`` when read, their means respond nearly linearly, and
#: training stalls (zoo 880011's calibration: twin loss 0.24); about 6 relaxation times reach the
#: equilibrium response, whose ``h^(1/3)`` saturation is the nonlinearity (0.007 there).  On the
#: board a reading lasts ``tau * mobility * kT / lam^2``: a few microseconds, cheap.
WEAK_RELAXATIONS = 6.0

#: Element errors the weak-board computer is trained to tolerate, as a fraction of each channel's
#: calibrated value range (its reach, about 0.4 of the nominal full scale on the zoo's weak boards).
#: The elements the trained program uses sit near the ends of their reach, where the calibration is
#: least accurate: on tuning board zoo 880005 (hidden truth, diagnosis only) its used couplings were
#: off by 0.3 % of nominal full scale (median), up to 1.3 %, against 0.04 % for the unused ones
#: (near 0), and they alone raised the loss from 0.0035 to 0.0087.  Trained with 3 % (about 1.2 %
#: of nominal full scale), the program on that board's true elements lost 0.0078 against a twin
#: loss of 0.0064 (ratio 1.2); with 0.5 % and 1.5 %: ratio 3.1 (twin 0.0029).
WEAK_ELEMENT_ERROR = 0.03


def plan_for_weak_board(base, nodes, channel_map, cal=None, margin: float = 0.9,
                        max_input_scale: float = MAX_INPUT_SCALE, quartic: float = WEAK_QUARTIC) -> BoardPlan:
    """A plan for a board whose elements are weak relative to kT (:func:`plan_for_board` gives
    bounds so small there that the mean response stays linear: the loss-1/2 plateau).

    In board units (kT = 1, x in volts) a node ``Q x^2 + R x^4 - h x`` responds nonlinearly to a
    field ``h`` of order ``R^(1/4)`` only when its quadratic term does not dominate: with ``Q``
    near its maximum (the default plan's ``J2 = J4``) the fields the weak elements reach keep
    ``<x>(h)`` linear.  So every node gets ``Q`` as close to 0 as its reach allows (0, or the
    reach's end nearest 0) and ``R`` at ``SLACK`` of its reach's top: a quartic well, whose mean
    response saturates like ``h^(1/3)``.  The coordinate scale ``lam`` makes the median quartic
    term ``quartic`` in program units (``R kT / lam^4``); biases, couplings and crossbar weights
    get the bounds their reach leaves at ``lam`` (crossbar weights helped by an input amplitude up
    to ``max_input_scale``, as in :func:`plan_for_board`).  The nodes' board extent is then about
    ``(kT / quartic)^(1/4) / lam`` volts, inside a few volts.

    Raises :class:`DemoError` when a quartic element cannot be positive, or an element the
    program needs at 0 cannot be 0.
    """

    n = sum(1 for c in channel_map if c.kind == "Q")
    kt = base.kT
    full = embed(base, nodes, channel_map, quadratic=np.zeros(n), quartic=np.ones(n))
    _, src = channel_values(full, channel_map)
    q_b, r_b = np.zeros(n), np.full(n, np.nan)
    reach_k = {"B": math.inf, "C": math.inf, "W": math.inf}
    reach_c = {}  # channel index -> (lo, hi) of the computer's trainable elements
    for c in channel_map:
        field, idx = src[c.index]
        where = f"{c.kind} channel {c.index} ({field}{'' if idx is None else f'[{idx}]'})"
        lo, hi = _channel_reach(c, cal, margin, where)
        if c.kind == "R":
            if hi <= 0:
                raise DemoError(f"{where}: reaches [{lo:.4g}, {hi:.4g}] (board units): the computer needs a "
                                "positive quartic term there")
            r_b[c.a] = _SLACK * hi
        elif c.kind == "Q":
            q_b[c.a] = 0.0 if lo <= 0 <= hi else (lo / _SLACK if lo > 0 else _SLACK * hi)
        elif not lo <= 0 <= hi:
            raise DemoError(f"{where}: the board reaches only [{lo:.4g}, {hi:.4g}] (board units), not 0: "
                            "a trained element could not be put on it")
        elif idx is not None:
            reach_k[c.kind] = min(reach_k[c.kind], -lo, hi)
            reach_c[c.index] = (lo, hi)
    lam = float((np.median(r_b[np.asarray(nodes)]) * kt / quartic) ** 0.25)
    bounds = {_KIND_FIELD[k]: float(_SLACK * r * kt / lam ** _POWER[k]) for k, r in reach_k.items()
              if math.isfinite(r)}
    scale_in = 1.0
    if "crossbar" in bounds:
        scale_in = float(max_input_scale)
        bounds["crossbar"] *= scale_in
    raised = sorted(int(i) for i in np.flatnonzero(q_b != 0))
    per = _element_bounds(base, nodes, channel_map, reach_c, lam, kt, scale_in)
    return BoardPlan(bounds, lam, q_b * kt / lam**2, r_b * kt / lam**4, raised, scale_in, per)


def _element_bounds(base, nodes, channel_map, reach_c: dict, lam: float, kt: float, scale_in: float) -> dict:
    """Each trainable element's own bounds (program units, ``SLACK`` inside its channel's reach
    ``reach_c[channel]`` at scale ``lam``; crossbar weights times the input amplitude ``scale_in``):
    ``{"bias": (lo, hi), "coupling": (lo, hi), "crossbar": (lo, hi)}``, arrays in the computer's
    element order.  Elements without a channel in ``reach_c`` get bounds 0."""
    net = base.network
    inv = {int(j): i for i, j in enumerate(nodes)}
    edge = {tuple(sorted((int(a), int(b)))): k for k, (a, b) in enumerate(net.edges)}
    cross = {(int(k), int(j)): e for e, (k, j) in enumerate(net.crossbar)}
    out = {"bias": np.zeros((2, net.n_nodes)), "coupling": np.zeros((2, net.n_edges)),
           "crossbar": np.zeros((2, net.n_crossbar))}
    for c in channel_map:
        if c.index not in reach_c:
            continue
        if c.kind == "B":
            field, k = "bias", inv.get(c.a)
        elif c.kind == "C":
            field = "coupling"
            k = edge.get(tuple(sorted((inv[c.a], inv[c.b])))) if c.a in inv and c.b in inv else None
        else:
            field, k = "crossbar", (cross.get((c.a, inv[c.b])) if c.b in inv else None)
        if k is None:
            continue
        factor = _SLACK * kt / lam ** _POWER[c.kind] * (scale_in if c.kind == "W" else 1.0)
        out[field][:, k] = np.asarray(reach_c[c.index]) * factor
    return {k: (v[0], v[1]) for k, v in out.items()}


def quartic_relaxation_time(quartic: float, kT: float) -> float:
    """Linear relaxation time (program time units, mobility 1) of a node in the well ``quartic x^4``
    at temperature ``kT``: ``1 / <V''>`` with ``<V''> = 12 quartic <x^2>`` and the Boltzmann
    ``<x^2> = sqrt(kT / quartic) Gamma(3/4) / Gamma(1/4)``.  (``quartic = 1``, ``kT = 0.1``: 0.78.)"""
    x2 = math.sqrt(kT / quartic) * math.gamma(0.75) / math.gamma(0.25)
    return 1.0 / (12.0 * quartic * x2)


def weak_mobility(quartic: float | None = None, kT: float = 0.1, relaxations: float | None = None) -> float:
    """Program mobility of the weak-board computer: its reading (``t_f = 1``) lasts ``relaxations``
    (default :data:`WEAK_RELAXATIONS`) relaxation times of the well ``quartic`` (default
    :data:`WEAK_QUARTIC`) at ``kT`` (:func:`quartic_relaxation_time`)."""
    quartic = WEAK_QUARTIC if quartic is None else quartic
    relaxations = WEAK_RELAXATIONS if relaxations is None else relaxations
    return float(relaxations * quartic_relaxation_time(quartic, kT))


def weak_field_sigma(base, plan: BoardPlan, nodes, error: float = WEAK_ELEMENT_ERROR, margin: float = 0.9):
    """Field errors ``(const, per_z)`` (n_nodes,) in program units that element errors of ``error``
    times each channel's full scale give the weak-board computer ``base`` under ``plan`` (its
    ``element_bounds`` are ``SLACK * margin`` of each channel's reach): node ``j``'s field error
    has variance ``sigma_B^2 + <x^2> sum sigma_C^2`` (its bias and its couplings, with the
    Boltzmann ``<x^2>`` of a neighbour's well) plus ``z^2 sum sigma_W^2`` (its crossbar weights):
    see :func:`tc_hw.train.cos.train_cos_varpro`."""
    net = base.network
    eb = plan.element_bounds
    sd = {k: error * (np.asarray(eb[k][1]) - np.asarray(eb[k][0])) / (_SLACK * margin) for k in eb}
    r4 = np.asarray(plan.quartic)[np.asarray(nodes)]
    x2 = np.sqrt(base.kT / r4) * math.gamma(0.75) / math.gamma(0.25)
    const = sd["bias"] ** 2
    per_z = np.zeros(net.n_nodes)
    for (a, b), s_c in zip(net.edges, sd["coupling"]):
        const[a] += x2[b] * s_c**2
        const[b] += x2[a] * s_c**2
    for (_, j), s_w in zip(net.crossbar, sd["crossbar"]):
        per_z[j] += s_w**2
    return np.sqrt(const), np.sqrt(per_z)


def _read_every_node(base, nodes):
    """The computer ``base`` with every node an output (readout zeros, shape (1, n)): on a weak
    board the first layer's saturating responses are the nonlinearity, and each coupling hop
    attenuates them, so the readout takes them directly as well as the last layer's."""

    net = base.network
    every = Network(net.n_nodes, net.edges, net.n_inputs, net.crossbar, np.arange(net.n_nodes), layers=net.layers)
    return base.copy(network=every, readout=np.zeros((1, net.n_nodes))), nodes
