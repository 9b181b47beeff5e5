"""The demo's computer on a board, and the plan that makes the trained program fit the board.

* :func:`board_computer`: the cos(2 pi z) computer (up to :data:`WIDTH` x :data:`DEPTH` nodes)
  laid out on the board's own coupling graph from input line 0; :func:`embed`: a computer on its
  own nodes placed on the whole board;
* :class:`BoardPlan` and :func:`plan_for_board`: element bounds, coordinate scale, intrinsic
  terms and input amplitude from each channel's calibrated (else nominal) reach;
  :func:`_is_weak`: whether that plan had to go to its smallest scale (the weak-board plan of
  :mod:`tc_hw.demo.weak` is used instead).

Units: program units (kT 0.1) for the computer, board units (kT = 1, volts) for channel reach.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from calibration.mapping import channel_values

from ..model.network import Network
from ..model.params import Params
from ..train.cos import cos_network
from .common import DemoError

#: The demo's computer: up to WIDTH x DEPTH nodes; boards need at least MIN_NODES nodes (two
#: coupled layers of four: the computer uses what the board has, the zoo's 16-node boards too).
WIDTH, DEPTH, MIN_NODES = 8, 4, 8

#: Element bound of direct training (program units) where the board's reach allows it.
BOUND = 3.0

#: Smallest planned coordinate scale (a reading lasts 1 / scale^2 times longer than at scale 1).
MIN_SCALE = 0.3

#: Largest amplitude of the input line relative to z in [0, 1] (the calibration drives +-0.75).
MAX_INPUT_SCALE = 4.0


def board_computer(channel_map, *, width: int = WIDTH, depth: int = DEPTH, kT: float = 0.1,
                   neuron=(1.0, 0.0, 1.0)):
    """The untrained cos(2 pi z) computer laid out on a board's coupling graph.

    Layer 0: up to ``width`` nodes fed by input line 0; layer ``d + 1``: up to ``width`` nodes
    coupled to layer ``d`` (farthest from the input first, then the most couplings into layer
    ``d``, then the lowest index); at most ``depth`` layers.  The computer uses the board's
    couplings between consecutive layers and the crossbar into layer 0 only; its outputs are the
    last layer.  On a layered 8x4 board (the default) this is :func:`tc_hw.train.cos.cos_network`.

    Returns ``(base, nodes)``: the computer as :class:`~tc_hw.model.params.Params` on its own nodes
    ``0..n-1`` (layer by layer, with zero readout of shape (1, n_out)), and the board node of each.
    Raises :class:`DemoError` for a board with fewer than ``MIN_NODES`` nodes, no input line, or
    an input that reaches no coupled node.
    """

    n = sum(1 for c in channel_map if c.kind == "Q")
    lines = sorted({c.a for c in channel_map if c.kind == "W"})
    if n < MIN_NODES:
        raise DemoError(f"the demo's computer needs a board with at least {MIN_NODES} nodes "
                        f"(two coupled layers; up to {width} x {depth}); this board has {n}")
    if not lines:
        raise DemoError("the demo's task has one input z, but this board has no input line (no W channels)")
    if lines[0] != 0:
        raise DemoError(f"input line 0 feeds no node on this board (its crossbar uses lines {lines[:5]})")
    adj = {i: set() for i in range(n)}
    for c in channel_map:
        if c.kind == "C":
            adj[c.a].add(c.b)
            adj[c.b].add(c.a)
    fed = sorted({c.b for c in channel_map if c.kind == "W" and c.a == 0})
    # distance from the input (breadth first over the couplings)
    dist = {j: 0 for j in fed}
    frontier = list(fed)
    while frontier:
        nxt = []
        for a in frontier:
            for b in sorted(adj[a]):
                if b not in dist:
                    dist[b] = dist[a] + 1
                    nxt.append(b)
        frontier = nxt
    layers = [sorted(fed, key=lambda j: (-len(adj[j]), j))[:width]]
    chosen = set(layers[0])
    while len(layers) < depth and len(chosen) < width * depth:
        prev = layers[-1]
        score = {}
        for a in prev:
            for b in adj[a]:
                if b not in chosen:
                    score[b] = score.get(b, 0) + 1
        if not score:
            break
        layer = sorted(score, key=lambda b: (-dist.get(b, 0), -score[b], b))[:width]
        layers.append(sorted(layer))
        chosen.update(layer)
    if len(layers) < 2:
        raise DemoError(f"input line 0 feeds nodes {fed[:8]} but none of them is coupled to another node: "
                        "the demo's computer needs at least two coupled layers")
    layers[0] = sorted(layers[0])
    nodes = [j for layer in layers for j in layer]
    index = {j: i for i, j in enumerate(nodes)}
    board_edges = {(c.a, c.b) for c in channel_map if c.kind == "C"}
    edges = [(index[a], index[b]) for d in range(len(layers) - 1) for a in layers[d] for b in layers[d + 1]
             if (min(a, b), max(a, b)) in board_edges]
    crossbar = [(0, index[j]) for j in layers[0]]
    outputs = [index[j] for j in layers[-1]]
    net = Network(len(nodes), edges, 1, crossbar, outputs,
                  layers=[[index[j] for j in layer] for layer in layers])
    default = cos_network(neuron, kT=kT, width=width, depth=depth)
    if net.same_as(default.network) and nodes == list(range(len(nodes))):
        return default, nodes
    j2, j3, j4 = (float(v) for v in neuron)
    return Params.uniform(net, j2, j3, j4, kT=kT, readout=np.zeros((1, len(outputs)))), nodes


def embed(params, nodes, channel_map, neuron=(1.0, 0.0, 1.0), quadratic=None, quartic=None):
    """``params`` (a computer on its own nodes, see :func:`board_computer`) on the whole board:
    computer node ``i`` is board node ``nodes[i]``; every other board node gets the intrinsic
    couplings ``neuron`` (in the computer's units) and nothing else, so it fluctuates on its own
    and never touches the computer (``quadratic``, ``quartic``: per board node, (n_board,),
    instead of ``neuron``'s for those).  Returns ``params`` itself where the computer is the board."""

    n = sum(1 for c in channel_map if c.kind == "Q")
    net = params.network
    if n == net.n_nodes and list(nodes) == list(range(n)):
        return params
    m = np.asarray(nodes, dtype=np.int64)
    j2, j3, j4 = (float(v) for v in neuron)

    def full(values, fill):
        out = np.full(n, float(fill))
        out[m] = values
        return out

    bnet = Network(n, m[net.edges], net.n_inputs, np.c_[net.crossbar[:, 0], m[net.crossbar[:, 1]]],
                   m[net.outputs], layers=[[int(m[i]) for i in layer] for layer in net.layers])
    # the board network's edges and crossbar are re-sorted: carry the values over by pair
    cval = {tuple(sorted((int(m[a]), int(m[b])))): v for (a, b), v in zip(net.edges, params.coupling)}
    wval = {(int(k), int(m[j])): v for (k, j), v in zip(net.crossbar, params.crossbar)}
    q = full(params.quadratic, j2) if quadratic is None else np.where(np.isin(np.arange(n), m), 0.0, quadratic)
    r = full(params.quartic, j4) if quartic is None else np.where(np.isin(np.arange(n), m), 0.0, quartic)
    q[m], r[m] = params.quadratic, params.quartic
    return Params(bnet, quadratic=q, cubic=full(params.cubic, j3),
                  quartic=r, bias=full(params.bias, 0.0),
                  coupling=np.array([cval[(int(a), int(b))] for a, b in bnet.edges]),
                  crossbar=np.array([wval[(int(k), int(j))] for k, j in bnet.crossbar]),
                  readout=params.readout, kT=params.kT, mobility=params.mobility)


_KIND_FIELD = {"B": "bias", "C": "coupling", "W": "crossbar"}

_SLACK = 0.97

_POWER = {"Q": 2, "R": 4, "B": 1, "C": 2, "W": 1}


@dataclass
class BoardPlan:
    """How the demo's program is made to fit a board (see :func:`plan_for_board`).

    ``bound``: the element bound of training, a float or a dict per kind (``bias``,
    ``coupling``, ``crossbar``); ``scale``: the planned coordinate scale ``lam``;
    ``quadratic``, ``quartic``: every board node's intrinsic terms in program units, (n_board,);
    ``raised``: board nodes whose terms were raised above the computer's ``J`` to clear a floor;
    ``input_scale``: the input line carries ``input_scale * z`` and the crossbar weights on the
    board are the trained ones divided by it.
    """

    bound: float | dict
    scale: float
    quadratic: np.ndarray
    quartic: np.ndarray
    raised: list
    input_scale: float = 1.0
    #: optional per-element bounds ``{kind: (lo, hi)}`` (program units, arrays laid out as the
    #: computer's ``bias``, ``coupling``, ``crossbar``): each element's own channel reach
    element_bounds: dict | None = None

    def apply(self, base, nodes):
        """The untrained computer ``base`` (on its own nodes) with the planned intrinsic terms."""
        m = np.asarray(nodes)
        return base.copy(quadratic=self.quadratic[m], quartic=self.quartic[m])


def _channel_reach(c, cal, margin: float, where: str) -> tuple[float, float]:
    """Board values (kT = 1 units) channel ``c`` reaches: calibrated (else nominal), ``margin`` inside.

    Raises :class:`DemoError` when the channel's calibration failed (``where`` names it)."""
    if cal is not None:
        curve = cal.curve(c.index)
        if not curve.ok:
            raise DemoError(f"{where}: its calibration failed ({curve.reason}) and the program needs it; "
                            "calibrate again (tc-hw calibrate, more samples) or see the operator's guide")
        lo, hi = (float(t) for t in cal.value_range(c.index))
    else:
        lo, hi = sorted((c.gain * c.vmin, c.gain * c.vmax))
    return (lo / margin if lo > 0 else lo * margin), (hi / margin if hi < 0 else hi * margin)


def plan_for_board(base, nodes, channel_map, cal=None, bound: float = BOUND, margin: float = 0.9,
                   min_scale: float = MIN_SCALE, max_input_scale: float = MAX_INPUT_SCALE) -> BoardPlan:
    """Element bounds, coordinate scale and intrinsic terms so that the trained program fits.

    After training, the program goes on the board in node coordinates ``y = x / lam``
    (:func:`calibration.scale.fitting_scale`): quadratic and quartic terms (fixed) scale as
    ``lam^2`` and ``lam^4``, biases and crossbar weights as ``lam``, couplings as ``lam^2``, and
    each must lie in its channel's reach (calibrated, else nominal; ``margin`` inside it).  The
    plan takes the largest ``lam`` at which every trainable element may still reach ``bound``
    (capped where the fixed terms would leave their reach), but not below ``min_scale`` (one
    sample lasts ``1 / lam^2`` program times): there the bounds are what each kind's reach leaves.
    A quadratic or quartic element whose reach does not include 0 (an offset: the element cannot
    be switched fully off) sets a floor; that node's term is raised to the floor at ``lam``
    (training then uses the raised term) instead of forcing a larger ``lam`` on every element.
    Crossbar weights do not limit ``lam``: where their reach is short at ``lam``, the input line
    carries ``input_scale * z`` (at most ``max_input_scale``) and the weights on the board are the
    trained ones divided by it, the same field ``W z`` (the bound that matters most: training
    with crossbar weights bounded by 1.9 stalls near a loss of 0.2, biases bounded by 1.8 do not).

    Raises :class:`DemoError` when the fixed terms fit no scale, or an element the program
    needs at 0 cannot be 0.
    """

    n = sum(1 for c in channel_map if c.kind == "Q")
    m = np.asarray(nodes)
    kt = base.kT
    quad = np.full(n, float(np.median(base.quadratic)))
    quart = np.full(n, float(np.median(base.quartic)))
    quad[m], quart[m] = base.quadratic, base.quartic
    full = embed(base.copy(quadratic=quad[m], quartic=quart[m]), nodes, channel_map,
                 quadratic=quad, quartic=quart)
    _, src = channel_values(full, channel_map)
    lam_hi = 1.0
    floors = []  # (channel, node, kind, lo)
    reach_k = {"B": math.inf, "C": math.inf, "W": math.inf}
    used = {k: False for k in _KIND_FIELD}
    for c in channel_map:
        field, idx = src[c.index]
        where = f"{c.kind} channel {c.index} ({field}{'' if idx is None else f'[{idx}]'})"
        lo, hi = _channel_reach(c, cal, margin, where)
        if c.kind in ("Q", "R"):
            j = (quad if c.kind == "Q" else quart)[c.a]
            if j <= 0 or hi <= 0:
                raise DemoError(f"{where}: reaches [{lo:.4g}, {hi:.4g}] (board units): the computer needs a "
                                "positive value there")
            lam_hi = min(lam_hi, (hi * kt / j) ** (1.0 / _POWER[c.kind]))
            if lo > 0:
                floors.append((c, lo, hi, where))
        elif idx is not None:  # a trainable element of the computer
            if not lo <= 0 <= hi:
                raise DemoError(f"{where}: the board reaches only [{lo:.4g}, {hi:.4g}] (board units), not 0: "
                                "a trained element could not be put on it")
            reach_k[c.kind] = min(reach_k[c.kind], -lo, hi)
            used[c.kind] = True
        elif not lo <= 0 <= hi:
            raise DemoError(f"{where}: unused by the computer, but the board cannot set it to 0 "
                            f"(reaches [{lo:.4g}, {hi:.4g}])")
    lam = lam_hi
    for k in ("B", "C"):  # crossbar weights are helped by the input amplitude instead (below)
        if used[k]:
            lam = min(lam, (_SLACK * reach_k[k] * kt / bound) ** (1.0 / _POWER[k]))
    lam = max(lam, min(min_scale, lam_hi))
    # (bounds SLACK inside the reach at lam, and raised terms 1/SLACK above their floor at lam,
    # so that the trained program fits at lam with room to spare)
    bounds = {_KIND_FIELD[k]: float(min(bound, _SLACK * r * kt / lam ** _POWER[k]))
              for k, r in reach_k.items() if used[k]}
    scale_in = 1.0
    if used["W"]:
        w = _SLACK * reach_k["W"] * kt / lam
        scale_in = float(min(max(1.0, bound / w), max_input_scale))
        bounds["crossbar"] = float(min(bound, scale_in * w))
    raised = set()
    for c, lo, hi, where in floors:
        arr = quad if c.kind == "Q" else quart
        need = lo * kt / lam ** _POWER[c.kind] / _SLACK
        if need > arr[c.a]:
            if need * lam ** _POWER[c.kind] / kt > hi:
                raise DemoError(f"{where}: reaches only [{lo:.4g}, {hi:.4g}] (board units) after the margin")
            arr[c.a] = need
            raised.add(int(c.a))
    out = float(bound) if all(v == bound for v in bounds.values()) else bounds
    return BoardPlan(out, float(lam), quad, quart, sorted(raised), scale_in)


def _is_weak(plan: BoardPlan, min_scale: float = MIN_SCALE) -> bool:
    """Whether :func:`plan_for_board` had to go to its smallest scale: the board's elements are too
    weak for the default computer (``J2 = J4 = 1`` at kT 0.1) to fit with its bounds and its nodes
    off the rails, so the weak-board plan (:func:`plan_for_weak_board`) is used instead."""
    return plan.scale <= min_scale * (1 + 1e-9)
