"""The whole operator's loop on one board, as ``tc-hw demo`` runs it.

1. start an emulated board as its own process (the embedded default with crosstalk and slow
   drift, which neither the twin nor the calibration model), unless a ``resource`` is given;
2. calibrate it through its commands (:func:`calibration.calibrate`); the embedded board then
   runs :data:`DEMO_AGE_H` hours before the program goes on (emulator key ``age_h``): its
   elements drift away from the calibration, the gap that refinement is for;
3. lay the cos(2 pi z) computer out on the board's own coupling graph (:func:`board_computer`:
   up to 4 layers of up to 8 nodes, reached from input line 0; on the default board this is the
   paper's 8x4 layered computer), choose element bounds from the calibrated reach
   (:func:`plan_for_board`) and train it on the twin (direct training), once more with a
   larger coordinate scale if its nodes would reach the board's rails; on a board whose elements
   are weak relative to kT (the default plan at its smallest scale) a 2-layer computer of quartic
   wells instead (:func:`plan_for_weak_board`), read after :data:`WEAK_RELAXATIONS` relaxation
   times of the wells (:func:`weak_mobility`), trained by variable projection
   (:func:`tc_hw.train.cos.train_cos_varpro`); the twin's loss is that of the program on the
   board's own calibrated per-node time constants (:func:`calibration.mapping.on_board_mobility`);
4. measure the program's channels at its own voltages (:func:`calibration.local.local_pass`), then
   upload it with nominal gains, through the calibration's curves alone and with the local pass,
   measuring the board's loss each way;
5. refine it on the board (:func:`tc_hw.refine.refine`: least-squares readout, then the analog
   program by :data:`DEMO_METHOD`, then the best of start, fitted readout and the method's best
   measured together), logging every generation;
6. write the report: PNG plots and ``report.md`` with the figures, the gap to the twin and how
   much of it each step closed (:func:`gap_steps`: calibration, readout fit, analog refinement).

A board that cannot run it (fewer than 32 nodes, no input line, an input that reaches no
coupled node, element ranges no coordinate scale fits) is refused with :class:`DemoError`
saying why (``tc-hw demo`` exits with 2).
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

import calibration
from calibration.local import local_pass
from calibration.mapping import MappingError, channel_values, on_board_mobility
from calibration.scale import fitting_scale
from sim_backend.emulator.board import DEFAULT_BOARD_TOML
from sim_backend.emulator.process import start_emulator
from sim_backend.twin import sample_reset

from .backends import open_device
from .model import seeds
from .model.files import save_params
from .model.network import Network
from .model.params import Params
from .model.tasks import cos_task
from .refine import (
    RefineConfig,
    _Problem,
    _retrying,
    gap_closed,
    measure_cos_loss,
    refine,
)
from .report import report
from .run import safe_node_volts
from .train.cos import cos_network, field_error_penalty, readout_lstsq, train_cos_varpro, twin_cos_loss
from .train.direct import cos_png, train_cos_direct

__all__ = ["run_demo", "DEMO_BOARD", "DemoError", "NotLearnedError", "board_computer", "plan_for_board", "BoardPlan",
           "plan_for_weak_board", "weak_mobility", "quartic_relaxation_time", "Trained", "Choice", "BoardFigures",
           "embed", "LEARNED_LOSS", "LOSS_READOUT", "gap_steps", "DEMO_AGE_H", "DEMO_METHOD", "REFINE_SIZES"]


def _demo_board() -> str:

    return DEFAULT_BOARD_TOML.replace(
        "adc_noise_spread = 0.25\n",
        "adc_noise_spread = 0.25\ncrosstalk = 0.005      # not modelled by the twin or the calibration\n"
        "drift_per_hour = 0.02\n",
    ).replace('name = "default"', 'name = "demo"')


#: Hours the embedded board runs between its calibration and the program's upload (calibrated in
#: the evening, used the next morning): its elements drift by up to 2 %/h each (uniform per
#: channel), so the calibration is stale by up to 24 % per element when the program goes on; the
#: gap refinement is for (see :class:`_EmbeddedBoard`).  Measured on the demo's programs (seed 0):
#: the calibrated upload is 6-11x the twin's loss at 6-12 h, and the least-squares readout alone
#: closes 96-102 % of that; what is left for the analog refinement is 0-30 % of the twin's loss
#: at 12 h (1.08-1.3x; at 6 h none), at 24 h 2.3x (the calibration is then worse than none).
DEMO_AGE_H = 12.0

DEMO_BOARD = ("default board + 0.5 % DAC crosstalk + 2 %/h element drift, calibrated and then "
              f"{DEMO_AGE_H:g} h older when the program goes on")

#: Calibration settings of the demo: fewer samples than a full calibration (a few minutes here).
QUICK_CALIBRATION = dict(chains=128, samples=256)
#: The local pass after training (:func:`calibration.local.local_pass`): the program's channels
#: measured at the program's own voltages (one Q, one R, one B-and-W setting and one per matching
#: of the couplings, each ``chains`` x ``samples`` readings), each curve shifted through the
#: combined value.  The quick calibration's curves miss by several of their own sigmas where a
#: curve kinks or bends between its levels; a program sitting there is uploaded off by that much
#: (zoo board 880007: four such channels carried over half of the upload's excess over the twin).
LOCAL_PASS = dict(chains=256, samples=512, repeats=1)

#: The demo's computer: up to WIDTH x DEPTH nodes; boards need at least MIN_NODES nodes (two
#: coupled layers of four: the computer uses what the board has, the zoo's 16-node boards too).
WIDTH, DEPTH, MIN_NODES = 8, 4, 8
#: Element bound of direct training (program units) where the board's reach allows it.
BOUND = 3.0
#: Smallest planned coordinate scale (a reading lasts 1 / scale^2 times longer than at scale 1).
MIN_SCALE = 0.3
#: Largest amplitude of the input line relative to z in [0, 1] (the calibration drives +-0.75).
MAX_INPUT_SCALE = 4.0
#: Wall-time budget of the GA generations (the final measurements come on top).
GA_SECONDS = 60.0
#: The demo's analog refinement (``refine_options={"method": ...}`` chooses another).  On the aged
#: board (:data:`DEMO_AGE_H`) the gap left after the readout fit is a few tenths of the twin's
#: loss, below what 10 GA generations of 25 x 200 readings per candidate resolve (seed 0: the GA's
#: best measured worse than the start); twin-guided steps (the board's output means, the twin's
#: Jacobian) close it with fewer readings.
DEMO_METHOD = "twin-guided"
#: Refinement sizes per method (population, points per generation, readings per point).
REFINE_SIZES = {"ga": dict(population=10, elites=3, points=25, samples=200),
                "cma": dict(population=10, elites=3, points=25, samples=200),
                "twin-guided": dict(points=50, samples=200)}


#: A program whose cos(2 pi z) loss is not below this did not learn its task (a constant output,
#: the linear plateau, has 1/2): the demo stops with :class:`NotLearnedError` instead of a result.
LEARNED_LOSS = 0.1
#: How ``twin_loss``, ``calibrated_upload_loss`` (and ``nominal_upload_loss``, ``curves_upload_loss``)
#: are read out, the same for all so that they compare: the trained readout weights, no refit.
LOSS_READOUT = ("trained readout f (no refit) applied to the mean of 1000 readings per input, "
                "250 inputs z in [0, 1]; twin and board alike")


class DemoError(ValueError):
    """This board cannot run the demo (the message says why)."""


class NotLearnedError(DemoError):
    """The trained program did not learn cos(2 pi z) (its loss is not below :data:`LEARNED_LOSS`).

    ``exit_code``: 2 when it did not learn on the twin (this board's elements cannot hold a
    working computer: nothing was uploaded), 3 when it learned on the twin but not on the board
    (a board or calibration fault); ``figures``: the losses measured so far (dict).
    """

    def __init__(self, message: str, exit_code: int, figures: dict):
        super().__init__(message)
        self.exit_code = int(exit_code)
        self.figures = dict(figures)


class _EmbeddedBoard:
    """The demo's emulated board as its own process: calibrated fresh, then ``age_h`` hours older.

    The emulator is started on :func:`_demo_board`'s file; after the calibration,
    :meth:`after_calibration` stops it and starts the same board (same file, same seed: the same
    hidden truth) with its clock ``age_h`` hours on (board-file key ``age_h``): every element has
    drifted for those hours, as on a board calibrated in the evening and used the next morning.
    Nothing in the calibration or the twin knows it.
    """

    def __init__(self, folder: Path, seed: int, age_h: float = DEMO_AGE_H):
        self.folder, self.seed, self.age_h = Path(folder), int(seed), float(age_h)
        self._emu = None

    def _start(self, age_h: float) -> str:
        board = self.folder / ("demo_board.toml" if age_h == 0 else "demo_board_aged.toml")
        board.write_text(("" if age_h == 0 else f"age_h = {age_h!r}\n") + _demo_board())  # a top-level key
        self.stop()
        self._emu = start_emulator(board=board, truth=True, workdir=self.folder / "emulator",
                                   extra_args=["--seed", str(self.seed)])
        return self._emu.tcp

    @property
    def resource(self) -> str:
        return self._emu.tcp if self._emu is not None else self._start(0.0)

    def after_calibration(self, dev, progress: bool):
        """Close ``dev``, let the board age ``age_h`` hours, and return a device on the aged board."""
        if self.age_h <= 0:
            return dev
        dev.close()
        _say(progress, f"the board runs {self.age_h:g} h before the program goes on: its elements drift "
                       "(up to 2 %/h each) away from the calibration, which nothing models")
        return open_device(self._start(self.age_h))

    def stop(self) -> None:
        if self._emu is not None:
            self._emu.stop()
            self._emu = None


class _GivenBoard:
    """A board given by its resource (``--resource``): used as it is."""

    def __init__(self, resource: str):
        self.resource = resource

    def after_calibration(self, dev, progress: bool):
        return dev

    def stop(self) -> None:
        pass


@contextmanager
def _board(folder: Path, resource: str | None, seed: int):
    """The board session: a given resource, or the embedded board (:class:`_EmbeddedBoard`)."""
    session = _GivenBoard(resource) if resource is not None else _EmbeddedBoard(folder, seed)
    try:
        yield session
    finally:
        session.stop()


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"tc-hw demo: {text}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the computer
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


#: Quartic term of the weak-board plan in program units (kT 0.1): sets its coordinate scale.
WEAK_QUARTIC = 1.0


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


# ----------------------------------------------------------------------------- the loop
class Trained(NamedTuple):
    """One training of the demo's program (a named tuple: it unpacks like the old 5-tuple)."""

    params: object  #: the trained computer on its own nodes (program units)
    metrics: dict  #: the trainer's metrics (``loss``: its twin loss; ``plots``)
    on_board: object  #: the program on the whole board before scaling (crossbar / input scale)
    scale: float  #: coordinate scale that fits the board (:func:`calibration.scale.fitting_scale`)
    extent: float  #: 99.9th percentile of |x| over all nodes on the twin (program units)

    @property
    def extent_v(self) -> float:
        """Node extent on the board, volts."""
        return self.extent / self.scale


@dataclass
class Choice:
    """The program the demo goes on with: its plan, computer, file and training, and every attempt."""

    plan: BoardPlan
    base: object
    nodes: list
    file: Path
    trained: Trained
    trainings: list


@dataclass
class BoardFigures:
    """What the board measured: the upload report, the upload losses and the refinement."""

    upload: dict
    nominal_loss: float | None
    calibrated_loss: float
    refined: dict
    config: object
    local: dict | None = None  #: the local pass's report (``curves_upload_loss``: the upload through the curves alone)


def run_demo(folder="tc-hw-demo", resource: str | None = None, *, seed: int = 0, generations: int = 10,
             calibration_options: dict | None = None, progress: bool = True, ga_seconds: float = GA_SECONDS,
             refine_options: dict | None = None, local_options: dict | None = None) -> dict:
    """Run the loop; returns the summary (also written to ``<folder>/summary.json``).

    ``local_options``: sizes of the local pass (:data:`LOCAL_PASS`; ``{"skip": True}``: none, the
    upload goes through the calibration's curves alone)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in ("run.h5", "run.h5.ga.h5", "cal.h5", "cos_rails.h5", "cos_board.h5", "cos_weak.h5"):
        (folder / old).unlink(missing_ok=True)
    t0 = time.monotonic()
    timings = {}
    with _board(folder, resource, seed) as session:
        dev = open_device(session.resource)
        try:
            cal, cal_summary = _calibrate(dev, folder, calibration_options, progress, timings)
            t = time.monotonic()
            choice = _choose_program(dev, cal, folder, seed, progress)
            timings["train_s"] = time.monotonic() - t
            twin_loss, heat = _twin_figures(choice, cal, folder, seed, safe_node_volts(dev))
            staged = _local_stage(dev, choice, cal, folder, local_options, progress, timings)
            dev = session.after_calibration(dev, progress)  # the embedded board ages (DEMO_AGE_H)
            board = _on_the_board(dev, choice, staged, seed, generations, ga_seconds, refine_options, progress,
                                  timings, folder)
            _check_board_learned(twin_loss, board.nominal_loss, board.calibrated_loss, board.refined, folder)
        finally:
            dev.close()
    summary = _summary(resource if resource is not None else DEMO_BOARD, dev, choice, cal_summary, twin_loss, heat, board,
                       folder, {**timings, "total_s": time.monotonic() - t0})
    summary["report"] = str(_write_markdown(folder, summary))
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _calibrate(dev, folder: Path, calibration_options, progress: bool, timings: dict):
    """Refuse an unsuitable board (:func:`board_computer`), then calibrate it; returns ``(cal, summary)``."""

    base, _ = board_computer(dev.channel_map)  # refuses an unsuitable board before calibrating
    _warn_slow_line(dev, calibration_options or QUICK_CALIBRATION, len(base.network.outputs))
    _say(progress, f"calibrating {dev.identity} ({dev.n_nodes} nodes, {dev.n_channels} channels)")
    t = time.monotonic()
    opts = QUICK_CALIBRATION if calibration_options is None else calibration_options
    cal, cal_summary = calibration.calibrate(dev, folder / "cal.h5", progress=progress, **opts)
    timings["calibrate_s"] = time.monotonic() - t
    return cal, cal_summary


def _choose_program(dev, cal, folder: Path, seed: int, progress: bool) -> Choice:
    """Plan and train the program on the twin: the weak-board plan where the default plan is at its
    smallest scale, else the default plan (again off the rails, at smaller scales, and finally
    the weak-board plan while it does not learn).  Raises :class:`NotLearnedError` (exit 2) when
    nothing learned within the safe node range."""
    cmap = dev.channel_map
    v_safe = safe_node_volts(dev)
    base, nodes = board_computer(cmap)
    plan = plan_for_board(base, nodes, cmap, cal)
    if _is_weak(plan):
        plan_w, base_w, nodes_w, weak = _train_weak(cmap, cal, folder / "cos_weak.h5", seed, progress)
        return Choice(plan_w, base_w, nodes_w, folder / "cos_weak.h5", Trained(*weak), [])
    choice = Choice(plan, base, nodes, folder / "cos.h5", Trained(*_train_for(plan, base, nodes, cmap, cal,
                                                                           folder / "cos.h5", seed, progress)), [])
    if choice.trained.extent_v > v_safe:
        _off_the_rails(dev, choice, cal, folder, seed, progress, v_safe)
    if choice.trained.metrics["loss"] >= LEARNED_LOSS:  # smaller scales, while the nodes stay off the rails
        found = _learn_at_smaller_scales(choice.plan, choice.trained, base, nodes, cmap, cal, folder, seed, progress,
                                         v_safe, choice.trainings)
        if found is not None:
            choice.plan, choice.file, choice.trained = found[0], found[1], Trained(*found[2])
    if choice.trained.metrics["loss"] >= LEARNED_LOSS:  # last: the weak-board plan
        plan_w, base_w, nodes_w, weak = _train_weak(cmap, cal, folder / "cos_weak.h5", seed, progress)
        weak = Trained(*weak)
        choice.trainings.append(_attempt("cos_weak.h5", plan_w, weak.scale, weak.extent, weak.metrics["loss"]))
        if weak.metrics["loss"] < choice.trained.metrics["loss"] and weak.extent_v <= v_safe:
            choice.plan, choice.base, choice.nodes, choice.file, choice.trained = (
                plan_w, base_w, nodes_w, folder / "cos_weak.h5", weak)
    return choice


def _off_the_rails(dev, choice: Choice, cal, folder: Path, seed: int, progress: bool, v_safe: float) -> None:
    """The nodes would reach the rails: plan a larger coordinate scale (smaller elements, smaller
    bounds), train once more, and keep in ``choice`` the one that measures better on the board."""
    cmap, first, plan = dev.channel_map, choice.trained, choice.plan
    _say(progress, f"the program's nodes would reach {first.extent_v:.2f} V on the board (safe: "
                   f"{v_safe:.2f} V); training again at a coordinate scale of at least "
                   f"{1.05 * first.extent / v_safe:.3f}")
    plan2 = plan_for_board(choice.base, choice.nodes, cmap, cal, min_scale=max(MIN_SCALE, 1.05 * first.extent / v_safe))
    second = Trained(*_train_for(plan2, choice.base, choice.nodes, cmap, cal, folder / "cos_rails.h5", seed,
                                 progress))
    # which is better on this board? (smaller elements keep off the rails but compute less)
    _say(progress, "measuring both programs on the board (250 x 500, least-squares readout)")
    first_score = _board_score(dev, first.on_board.rescaled(first.scale), cal, plan.input_scale,
                               seeds.derive(seed, seeds.DEMO, 1))
    second_score = _board_score(dev, second.on_board.rescaled(second.scale), cal, plan2.input_scale,
                                seeds.derive(seed, seeds.DEMO, 1))
    choice.trainings[:] = [dict(file="cos.h5", bound=plan.bound, scale=first.scale, node_extent_v=first.extent_v,
                                board_loss_fitted_readout=first_score),
                           dict(file="cos_rails.h5", bound=plan2.bound, scale=second.scale,
                                node_extent_v=second.extent_v, board_loss_fitted_readout=second_score)]
    if second_score < first_score:
        choice.plan, choice.file, choice.trained = plan2, folder / "cos_rails.h5", second


def _twin_figures(choice: Choice, cal, folder: Path, seed: int, v_safe: float) -> tuple[float, np.ndarray]:
    """The twin's loss of the program on the board's own per-node time constants (refusing a program
    that did not learn: :func:`_check_twin_learned`) and its heat per run (kT, (P, M))."""


    tr = choice.trained
    twin_loss = twin_cos_loss(on_board_mobility(tr.params, cal, choice.nodes), seed=seeds.derive(seed, seeds.DEMO, 2))
    _check_twin_learned(twin_loss, choice.plan, tr.scale, tr.extent, folder, choice.trainings, v_safe)
    heat = sample_reset(tr.params, cos_task()[0], 1.0, 200, dt=1e-3, seed=seeds.derive(seed, seeds.DEMO, 3),
                        energy=True, nodes=tr.params.network.outputs).heat_kT
    return twin_loss, heat


def _local_calibration(dev, program, cal, options: dict | None, progress: bool, timings: dict, folder=None):
    """The local pass (:data:`LOCAL_PASS`, :func:`calibration.local.local_pass`) at ``program``'s
    voltages through ``cal``; returns ``(calibration to upload through, report or None)``; the
    per-channel points go to ``<folder>/local_pass.json``."""
    opts = {**LOCAL_PASS, **(options or {})}
    if opts.pop("skip", False):
        return cal, None
    cmap = dev.channel_map
    volts = calibration.map_params(program, cal, cmap)
    _, src = channel_values(program, cmap)
    used = [c.index for c in cmap if src[c.index][1] is not None]
    _say(progress, f"local pass: measuring the program's {len(used)} channels at its own voltages")
    t = time.monotonic()
    say = (lambda text: _say(progress, text)) if progress else None
    local, rep = local_pass(dev, cal, volts, used, progress=say, **opts)
    timings["local_pass_s"] = time.monotonic() - t
    if folder is not None:  # the per-channel points on their own (the summary keeps the per-kind figures)
        (Path(folder) / "local_pass.json").write_text(json.dumps(rep.pop("points")))
    return local, rep


def _through_local(dev, tr: Trained, cal_local, cal_curves, local: dict, progress: bool):
    """The program to upload through the locally corrected calibration: a shifted curve may reach
    less far than the program's value, so the least smaller coordinate scale that fits (the
    measured voltages move by as little); where none fits (an element the program needs at 0 no
    longer reaches 0), the calibration's curves alone, said in ``local["not_used"]``.
    Returns ``(calibration, program)`` and sets ``local["coordinate_scale"]``."""
    try:
        lam = min(tr.scale, fitting_scale(tr.on_board, dev.channel_map, cal_local, margin=0.999))
        program = tr.on_board.rescaled(lam)
        calibration.map_params(program, cal_local, dev.channel_map)
    except MappingError as e:
        _say(progress, f"the locally corrected calibration cannot hold the program ({e}); uploading through the "
                       "calibration's curves alone")
        local["not_used"], local["coordinate_scale"] = str(e), tr.scale
        return cal_curves, tr.on_board.rescaled(tr.scale)
    local["coordinate_scale"] = lam
    return cal_local, program


@dataclass
class Staged:
    """The program as the calibration stage leaves it: ``program`` to upload through ``cal``
    (after the local pass, when it ran), ``curves_program`` through ``cal_curves`` alone, and the
    local pass's report (``None`` when skipped)."""

    program: object
    cal: object
    curves_program: object
    cal_curves: object
    local: dict | None


def _local_stage(dev, choice: Choice, cal, folder: Path, local_options, progress: bool, timings: dict) -> Staged:
    """Save the board-coordinate program and run the local pass at its voltages, on the board as
    calibrated (before the embedded board ages): the local pass is part of the calibration."""

    tr, a_in = choice.trained, choice.plan.input_scale
    if tr.on_board is not tr.params:
        save_params(tr.on_board, folder / "cos_board.h5",
                    {"method": tr.metrics.get("method", "direct"), "task": "cos",
                     "board_nodes": list(map(int, choice.nodes)), "input_scale": a_in})
    program = tr.on_board.rescaled(tr.scale)
    cal_local, local = _local_calibration(dev, program, cal, local_options, progress, timings, folder)
    if local is None:
        return Staged(program, cal, program, cal, None)
    cal_used, program_used = _through_local(dev, tr, cal_local, cal, local, progress)
    return Staged(program_used, cal_used, program, cal, local)


def _on_the_board(dev, choice: Choice, staged: Staged, seed: int, generations: int, ga_seconds: float,
                  refine_options, progress: bool, timings: dict, folder: Path) -> BoardFigures:
    """Upload the program with nominal gains, through the calibration's curves alone and through
    the calibration with the local pass (same noise), then refine it (through the latter)."""

    tr, a_in = choice.trained, choice.plan.input_scale
    program, cal, curves_program, cal_curves, local = (staged.program, staged.cal, staged.curves_program,
                                                       staged.cal_curves, staged.local)
    _say(progress, f"uploading (coordinate scale {tr.scale:.3f}) with nominal gains, then through the calibration")
    t = time.monotonic()
    paired_seed = seeds.derive(seed, seeds.DEMO, 4)  # nominal and calibrated: the same noise
    nominal_loss = _nominal_loss(dev, curves_program, calibration, paired_seed, a_in)
    curves_loss = None
    if local is not None:
        curves_loss = measure_cos_loss(dev, curves_program, cal_curves, seed=paired_seed, input_scale=a_in)
        local["curves_upload_loss"] = curves_loss
    upload = calibration.upload(dev, program, cal)
    calibrated_loss = measure_cos_loss(dev, program, cal, seed=paired_seed, input_scale=a_in)
    timings["upload_s"] = time.monotonic() - t
    opts = dict(refine_options or {})
    method = opts.pop("method", DEMO_METHOD)
    _say(progress, f"refining on the board (least-squares readout, then at most {generations} generations "
                   f"or {ga_seconds:.0f} s of {method})")
    t = time.monotonic()
    sizes = {**REFINE_SIZES[method], **opts}
    cfg = RefineConfig(method=method, generations=generations, seed=seed, max_seconds=ga_seconds, input_scale=a_in,
                       **sizes)
    refined = refine(dev, program, cal, folder / "run.h5", cfg, progress=progress)
    timings["refine_s"] = time.monotonic() - t
    return BoardFigures(upload, nominal_loss, calibrated_loss, refined, cfg, local)


def _summary(board_name: str, dev, choice: Choice, cal_summary: dict, twin_loss: float, heat, board: BoardFigures,
             folder: Path, timings: dict) -> dict:
    """The demo's summary (JSON-serialisable; ``report`` added by the caller)."""

    tr, plan, refined, cfg = choice.trained, choice.plan, board.refined, board.config
    params = tr.params
    summary = {
        "board": board_name,
        "identity": board.upload["identity"],
        "technology": dev.technology,
        "computer": {"nodes": len(choice.nodes), "layers": [len(layer) for layer in params.network.layers],
                     "outputs": len(params.network.outputs), "board_nodes": list(map(int, choice.nodes)),
                     "board_total_nodes": int(dev.n_nodes), "training_bound": plan.bound,
                     "planned_scale": plan.scale, "raised_nodes": plan.raised, "input_scale": plan.input_scale,
                     "node_extent_v": tr.extent_v, "safe_v": safe_node_volts(dev), "trainings": choice.trainings,
                     "training_method": tr.metrics.get("method", "direct"),
                     "program_mobility": float(np.mean(params.mobility))},
        "twin_loss": twin_loss,
        "loss_readout": LOSS_READOUT,
        "nominal_upload_loss": board.nominal_loss,
        "calibrated_upload_loss": board.calibrated_loss,
        "curves_upload_loss": None if board.local is None else board.local["curves_upload_loss"],
        "local_pass": board.local,
        "start_loss": refined["start_loss"],
        "uploaded_loss": refined["uploaded_loss"],
        "gap_closed": gap_closed(twin_loss, refined["start_loss"], refined["refined_loss"]),
        "gap_steps": gap_steps(twin_loss, board.nominal_loss, board.calibrated_loss, refined),
        "readout_fit_loss": refined["readout_fit_loss"],
        "ga_best_loss": refined["ga_best_loss"],
        "method": refined["method"],
        "method_best_loss": refined["method_best_loss"],
        "refined_loss": refined["refined_loss"],
        "kept": refined["kept"],
        "generations": refined["generations"],
        "refine_stop": refined["stop"],
        "refine_config": {k: getattr(cfg, k) for k in ("method", "population", "elites", "points", "samples",
                                                        "final_points", "final_samples", "max_seconds")},
        "energy_per_inference_kT": float(np.mean(heat)),
        "coordinate_scale": tr.scale if board.local is None else board.local["coordinate_scale"],
        "calibration": {k: v for k, v in cal_summary.items() if isinstance(v, (int, float, str))},
        "files": {"calibration": str(folder / "cal.h5"), "params": str(choice.file),
                  "run_log": str(folder / "run.h5")},
        "plots": report(folder / "run.h5")["plots"] + tr.metrics.get("plots", []),
        "seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    if tr.on_board is not params:
        summary["files"]["params_on_board"] = str(folder / "cos_board.h5")
    if board.local is not None:
        summary["files"]["local_pass"] = str(folder / "local_pass.json")
    return summary


def gap_steps(twin_loss: float, nominal_loss, calibrated_loss: float, refined: dict) -> dict:
    """How much of the gap to the twin each step of the loop closed (fractions; None without a gap).

    ``calibration``: of the nominal upload's gap (nominal - twin), the part the calibration closed,
    ``(nominal - calibrated) / (nominal - twin)`` (paired measurements, the same noise).  Then, of
    the calibrated upload's gap in refinement's final measurement (``uploaded_loss`` - twin; the
    uploaded program, its fitted readout and the method's best measured together): the part the
    least-squares ``readout_fit`` closed, ``(uploaded - readout fit) / (uploaded - twin)``, the
    part the analog refinement (``method``) closed on top, ``(readout fit - refined) / (uploaded -
    twin)`` (0 when the method's program was not kept), and what is ``left``, ``(refined - twin) /
    (uploaded - twin)`` (the three add up to 1; negative ``left``: better than the twin).
    """
    out = {"nominal_loss": nominal_loss, "calibrated_loss": calibrated_loss, "twin_loss": twin_loss,
           "calibration": None, "uploaded_loss": refined["uploaded_loss"], "readout_fit": None,
           "method": refined["method"], "analog_refinement": None, "left": None}
    if nominal_loss is not None and nominal_loss > twin_loss:
        out["calibration"] = (nominal_loss - calibrated_loss) / (nominal_loss - twin_loss)
    up = float(refined["uploaded_loss"])
    gap = up - twin_loss
    if not gap > 0:
        return out
    fit = up if refined.get("readout_fit_loss") is None else float(refined["readout_fit_loss"])
    after = float(refined["refined_loss"]) if refined["kept"] == refined["method"] else min(fit, up)
    out.update(readout_fit=(up - fit) / gap, analog_refinement=(fit - after) / gap,
               left=(after - twin_loss) / gap)
    return out


#: Each further training on a board whose elements are too weak multiplies the scale by this.
SCALE_STEP = 0.8


def _learn_at_smaller_scales(plan, first, base, nodes, cmap, cal, folder, seed, progress, v_safe, trainings):
    """Train again at smaller coordinate scales (x :data:`SCALE_STEP` each time: larger bounds in
    program units, readings ``1 / lam^2`` times longer) while the program did not learn and its
    nodes stay within ``v_safe`` volts on the board.  Every attempt is appended to ``trainings``.
    Returns ``(plan, params file, training)`` of the first program that learned within the safe
    node range, or ``None`` (the caller then refuses: :func:`_check_twin_learned`)."""
    params, trained, board_prog, lam, extent = first
    trainings.append(_attempt("cos.h5", plan, lam, extent, trained["loss"]))
    scale, k = plan.scale, 0
    while trained["loss"] >= LEARNED_LOSS and extent / lam <= v_safe and scale * SCALE_STEP >= 0.02:
        k, scale = k + 1, scale * SCALE_STEP
        _say(progress, f"the program did not learn (twin loss {trained['loss']:.3g}, nodes within "
                       f"{extent / lam:.2f} V): training again at a coordinate scale of {scale:.3f}")
        plan2 = plan_for_board(base, nodes, cmap, cal, min_scale=scale)
        out = Path(folder) / f"cos_scale{k}.h5"
        params, trained, board_prog, lam, extent = _train_for(plan2, base, nodes, cmap, cal, out, seed, progress)
        trainings.append(_attempt(out.name, plan2, lam, extent, trained["loss"]))
        if trained["loss"] < LEARNED_LOSS and extent / lam <= v_safe:
            return plan2, out, (params, trained, board_prog, lam, extent)
    return None


#: Layers of the weak-board computer: each hop through a weak coupling halves the signal that
#: reaches the output (measured on zoo board 7007: twin loss 0.04 with 2 layers, 0.51 with 4).
WEAK_DEPTH = 2
#: Variable-projection training of the weak-board computer (iterations, inputs x runs per iteration).
WEAK_TRAINING = dict(iterations=400, points=32, samples=64)
#: One reading of the weak-board computer lasts this many relaxation times of its quartic wells
#: (:func:`quartic_relaxation_time`).  At ``t_f = 1`` (mobility 1, about 1.3 relaxation times) the
#: nodes are still on their way from ``x = 0`` when read, their means respond nearly linearly, and
#: training stalls (zoo 880011's calibration: twin loss 0.24); about 6 relaxation times reach the
#: equilibrium response, whose ``h^(1/3)`` saturation is the nonlinearity (0.007 there).  On the
#: board a reading lasts ``tau * mobility * kT / lam^2``: a few microseconds, cheap.
WEAK_RELAXATIONS = 6.0
#: Largest Euler step of weak-board training in units of time at mobility 1 (``mobility * dt``).
WEAK_STEP = 0.05


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


def _is_weak(plan: BoardPlan, min_scale: float = MIN_SCALE) -> bool:
    """Whether :func:`plan_for_board` had to go to its smallest scale: the board's elements are too
    weak for the default computer (``J2 = J4 = 1`` at kT 0.1) to fit with its bounds and its nodes
    off the rails, so the weak-board plan (:func:`plan_for_weak_board`) is used instead."""
    return plan.scale <= min_scale * (1 + 1e-9)


#: Element errors the weak-board computer is trained to tolerate, as a fraction of each channel's
#: calibrated value range (its reach, about 0.4 of the nominal full scale on the zoo's weak boards).
#: The elements the trained program uses sit near the ends of their reach, where the calibration is
#: least accurate: on tuning board zoo 880005 (hidden truth, diagnosis only) its used couplings were
#: off by 0.3 % of nominal full scale (median), up to 1.3 %, against 0.04 % for the unused ones
#: (near 0), and they alone raised the loss from 0.0035 to 0.0087.  Trained with 3 % (about 1.2 %
#: of nominal full scale), the program on that board's true elements lost 0.0078 against a twin
#: loss of 0.0064 (ratio 1.2); with 0.5 % and 1.5 %: ratio 3.1 (twin 0.0029).
WEAK_ELEMENT_ERROR = 0.03


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


def _train_weak(cmap, cal, out, seed, progress):
    """The weak-board computer (:data:`WEAK_DEPTH` layers, :func:`plan_for_weak_board`) trained by
    variable projection (:func:`tc_hw.train.cos.train_cos_varpro`) on the board's own per-node
    time constants, with the exact readout refitted on 1000 runs per input.  Its readings last
    :data:`WEAK_RELAXATIONS` relaxation times of the wells (program mobility :func:`weak_mobility`,
    kept in the program, so the board's readings last as long).  Training and the final readout
    tolerate element errors of :data:`WEAK_ELEMENT_ERROR` of full scale (:func:`weak_field_sigma`):
    a twin loss bought with a large readout would not survive the board's calibration errors.

    Returns ``(plan, base, nodes, (params, metrics, program on the board before scaling, its
    coordinate scale, the 99.9th percentile of |x| on the twin))`` like :func:`_train_for`."""


    base, nodes = _read_every_node(*board_computer(cmap, depth=WEAK_DEPTH))
    plan = plan_for_weak_board(base, nodes, cmap, cal)
    _say(progress, f"weak elements: training a {'x'.join(str(len(l)) for l in base.network.layers)} computer with "
                   f"quartic wells (coordinate scale {plan.scale:.3f}, bounds {_bound_text(plan.bound)}, input "
                   f"line {plan.input_scale:g} z, readings of {WEAK_RELAXATIONS:g} relaxation times: mobility "
                   f"{weak_mobility(kT=base.kT):.3g}) by variable projection")
    mob = weak_mobility(kT=base.kT)
    start = on_board_mobility(plan.apply(base, nodes).copy(mobility=mob), cal, nodes)
    dt = min(1e-2, WEAK_STEP / mob)
    sigma = weak_field_sigma(base, plan, nodes)
    params, trained = train_cos_varpro(start, bound=plan.element_bounds or plan.bound, seed=seed, progress=progress,
                                       dt=dt, field_sigma=sigma, **WEAK_TRAINING)
    penalty = field_error_penalty(params, sigma, dt=dt, seed=seeds.derive(seed, seeds.DEMO, 7))
    params = readout_lstsq(params, samples=1000, dt=1e-3, seed=seeds.derive(seed, seeds.DEMO, 5), penalty=penalty)
    trained["loss"] = twin_cos_loss(params, samples=200, seed=seeds.derive(seed, seeds.DEMO, 6))
    trained["mobility"] = mob
    params = params.copy(mobility=mob)  # the program itself: the board's per-node tau is the board's
    save_params(params, out, {"method": "varpro", "task": "cos", "loss": trained["loss"], "seed": seed,
                              "board_nodes": list(map(int, nodes))})
    trained["plots"] = [str(cos_png(out, params, 1e-2, seed))]
    on_board = embed(params, nodes, cmap, quadratic=plan.quadratic, quartic=plan.quartic)
    on_board = on_board.copy(crossbar=on_board.crossbar / plan.input_scale)
    lam = fitting_scale(on_board, cmap, cal)
    x = sample_reset(params, cos_task(50)[0], 1.0, 200, dt=1e-3, seed=seeds.derive(seed, seeds.DEMO, 0)).x
    return plan, base, nodes, (params, trained, on_board, lam, float(np.percentile(np.abs(x), 99.9)))


def _attempt(name, plan, lam, extent, loss) -> dict:
    return dict(file=name, bound=plan.bound, scale=lam, node_extent_v=extent / lam, twin_loss_training=loss,
                input_scale=plan.input_scale)


def _check_twin_learned(twin_loss: float, plan, lam: float, extent: float, folder: Path, trainings=(),
                        v_safe: float = math.inf) -> None:
    """Raise :class:`NotLearnedError` (exit 2, nothing uploaded) for a program that did not learn on the twin."""
    if twin_loss < LEARNED_LOSS:
        return
    figures = {"twin_loss": twin_loss, "coordinate_scale": lam, "planned_scale": plan.scale,
               "training_bound": plan.bound, "input_scale": plan.input_scale, "node_extent_v": extent / lam,
               "safe_v": v_safe, "trainings": list(trainings)}
    _write_failure(folder, figures)
    tried = "; ".join(f"scale {t['scale']:.3f}: loss {t['twin_loss_training']:.3g}, nodes to "
                      f"{t['node_extent_v']:.2f} V" for t in trainings if "twin_loss_training" in t)
    raise NotLearnedError(
        f"the program trained on the twin did not learn cos(2 pi z): its loss is {twin_loss:.4g} (a constant output "
        f"has 0.5, a learned program less than {LEARNED_LOSS}) with element bounds {_bound_text(plan.bound)} (program "
        f"units, kT 0.1) at a coordinate scale of {lam:.3f}"
        + (f" (tried {tried}; safe node range {v_safe:.2f} V)" if tried else "")
        + ": this board's elements are too weak relative to kT for the demo's computer: the smaller scales that "
        "give larger bounds put its nodes beyond the safe node range (the rails); nothing was uploaded (figures in "
        f"{folder / 'failure.json'})", 2, figures)


def _check_board_learned(twin_loss, nominal_loss, calibrated_loss, refined: dict, folder: Path) -> None:
    """Raise :class:`NotLearnedError` (exit 3) when the program learned on the twin but nothing on the
    board (upload nor refinement) reaches :data:`LEARNED_LOSS`."""
    if refined["refined_loss"] < LEARNED_LOSS:
        return
    figures = {"twin_loss": twin_loss, "nominal_upload_loss": nominal_loss, "calibrated_upload_loss": calibrated_loss,
               "refined_loss": refined["refined_loss"], "kept": refined["kept"], "loss_readout": LOSS_READOUT}
    _write_failure(folder, figures)
    raise NotLearnedError(
        f"the program learned cos(2 pi z) on the twin (loss {twin_loss:.4g}) but not on the board: through the "
        f"calibration {calibrated_loss:.4g}, after refinement {refined['refined_loss']:.4g} (a learned program is "
        f"below {LEARNED_LOSS}); the board does not compute what the calibrated twin predicts: calibrate again "
        f"(tc-hw calibrate) or check the board (figures in {folder / 'failure.json'})", 3, figures)


def _write_failure(folder: Path, figures: dict) -> None:
    (Path(folder) / "failure.json").write_text(json.dumps(figures, indent=1, default=str))


def _train_for(plan, base, nodes, cmap, cal, out, seed, progress):
    """Train under ``plan``; returns (params, metrics, program on the board before scaling,
    its coordinate scale, the 99.9th percentile of |x| over all nodes on the twin)."""


    layers = [len(layer) for layer in base.network.layers]
    bound = plan.bound
    _say(progress, f"training cos(2 pi z) on the twin (direct training through the dynamics; computer "
                   f"{'x'.join(map(str, layers))} nodes on the board's graph, element bound {_bound_text(bound)})")
    params, trained = train_cos_direct(out=out, seed=seed, bound=bound, eval_samples=200,
                                       progress=progress, base=plan.apply(base, nodes))
    on_board = embed(params, nodes, cmap, quadratic=plan.quadratic, quartic=plan.quartic)
    if plan.input_scale != 1.0:  # the input line carries a * z: the same field with weights / a
        on_board = on_board.copy(crossbar=on_board.crossbar / plan.input_scale)
    lam = fitting_scale(on_board, cmap, cal)
    x = sample_reset(params, cos_task(50)[0], 1.0, 200, dt=1e-3, seed=seeds.derive(seed, seeds.DEMO, 0)).x
    return params, trained, on_board, lam, float(np.percentile(np.abs(x), 99.9))


def _board_score(dev, program, cal, input_scale, seed, points: int = 250, samples: int = 500) -> float:
    """Board loss of ``program`` (through ``cal``) with the readout fitted to the same
    measurement: what refinement would start from (in-sample, the same optimism for any program)."""

    cfg = RefineConfig(final_samples=samples, input_scale=input_scale)
    prob = _Problem(dev, program, cal, cfg)
    z, _ = cos_task(points)
    xbar, var = _retrying(cfg, "the measurement", lambda: prob.means(prob.x0[None, :], z, [seed], samples))
    f = prob.fit_readout(xbar[0], z)
    return float(prob.loss_of(xbar[0], prob.readout0 if f is None else f, var[0], samples, z))


def _warn_slow_line(dev, cal_opts: dict, n_out: int) -> None:
    """Say so when the board is on a line too slow for the demo's data (e.g. a 115200-baud serial line)."""
    session = getattr(dev, "session", None)
    bps = getattr(getattr(session, "transport", None), "bytes_per_second", None)
    if not bps or bps >= 1e6:
        return
    cmap = dev.channel_map
    n = dev.n_nodes
    deg = np.bincount([x for c in cmap if c.kind == "C" for x in (c.a, c.b)], minlength=n).max(initial=0)
    levels = 8 if any(c.period > 0 for c in cmap) else 6
    acquisitions = 2 + 4 + 21 + int(deg) * levels
    cal_mb = acquisitions * cal_opts.get("chains", 128) * cal_opts.get("samples", 256) * n * 2 / 1e6
    meas_mb = 250 * 1000 * n_out * 2 / 1e6
    minutes = (cal_mb + 5 * meas_mb) * 1e6 / bps / 60
    print(f"tc-hw demo: warning: the board is on a slow line ({bps / 1e3:.1f} kB/s): calibration moves about "
          f"{cal_mb:.0f} MB of ADC codes and each of the five 250 x 1000 measurements {meas_mb:.0f} MB, about "
          f"{minutes:.0f} minutes of transfer; a socket connection (TCPIP::host::port::SOCKET) is much faster",
          file=sys.stderr, flush=True)


def _nominal_loss(dev, program, calibration, seed, input_scale) -> float | None:
    """The board's loss with nominal gains, or None where the nominal map cannot hold the program
    (nominal reach is narrower than the calibrated one, e.g. on a board with large offsets)."""


    try:
        return measure_cos_loss(dev, program, calibration.nominal(dev.channel_map), seed=seed, input_scale=input_scale)
    except MappingError as e:
        print(f"tc-hw demo: no upload with nominal gains: {e}", file=sys.stderr)
        return None


_KEPT = {"ga": "the genetic algorithm's best", "cma": "CMA-ES's best",
         "twin-guided": "the twin-guided (Levenberg-Marquardt) refinement's best",
         "readout fit": "the uploaded program with the least-squares readout",
         "start": "the uploaded program itself (nothing measured better)"}


def _bound_text(b) -> str:
    return f"{b:g}" if not isinstance(b, dict) else ", ".join(f"{k} {v:.3g}" for k, v in b.items())


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.0f} %"


def _gap_table(g: dict | None) -> list:
    """The report's lines on the gap to the twin and what each step closed (:func:`gap_steps`)."""
    if not g:
        return []
    lines = ["| the gap to the twin: what each step closed | loss | closed |", "|---|---|---|",
             f"| twin | {g['twin_loss']:.4g} | |"]
    if g["nominal_loss"] is not None:
        lines.append(f"| board, nominal gains | {g['nominal_loss']:.4g} | |")
    lines += [f"| board, through the calibration | {g['calibrated_loss']:.4g} | {_pct(g['calibration'])} of the "
              "nominal gap |",
              f"| the same, final measurement (uploaded) | {g['uploaded_loss']:.4g} | |",
              f"| least-squares readout fit | | {_pct(g['readout_fit'])} of the uploaded gap |",
              f"| analog refinement ({g['method']}) | | {_pct(g['analog_refinement'])} of the uploaded gap |",
              f"| left | | {_pct(g['left'])} |", ""]
    return lines


def _write_markdown(folder: Path, s: dict) -> Path:
    rows = [("twin (the trained program, simulated)", s["twin_loss"]),
            ("board, nominal gains (no calibration)", s["nominal_upload_loss"]),
            *([("board, through the calibration's curves alone", s["curves_upload_loss"])]
              if s.get("local_pass") else []),
            ("board, through the calibration" + (" with the local pass" if s.get("local_pass") else ""),
             s["calibrated_upload_loss"]),
            (f"board, refined: {_KEPT[s['kept']]}", s["refined_loss"])]
    lines = ["# tc-hw demo report", "", f"Board: {s['board']} (`{s['identity']}`, {s['technology']})", "",
             "| cos(2 pi z) loss, 250 inputs x 1000 samples | loss |", "|---|---|"]
    lines += [f"| {name} | {'not uploadable' if v is None else f'{v:.4g}'} |" for name, v in rows]
    rc = s["refine_config"]
    method = s.get("method", "ga")
    per = (f"population {rc['population']}, {rc['points']} inputs x {rc['samples']} samples per candidate"
           if method != "twin-guided" else f"{rc['points']} inputs x {rc['samples']} samples per trial step, the "
           "twin's Jacobian through the calibration")
    lines += ["", "Refinement: the uploaded program was measured once and its digital readout fitted to that "
              f"measurement by least squares; the analog refinement ({method}) then ran "
              f"{s['generations']} generations ({s['refine_stop']}; {per}). At the end the uploaded program, "
              f"the same with the fitted readout, and {method}'s best were measured together "
              f"({rc['final_points']} inputs x {rc['final_samples']} samples), and the best is the result:", "",
              "| measured together at the end | loss |", "|---|---|",
              f"| uploaded program | {s['uploaded_loss']:.4g} |"]
    if s["readout_fit_loss"] is not None:
        lines.append(f"| uploaded program, least-squares readout | {s['readout_fit_loss']:.4g} |")
    lines += [f"| {method}'s best | {s.get('method_best_loss', s['ga_best_loss']):.4g} |", "",
              f"Kept: {_KEPT[s['kept']]}.", ""]
    lines += ["Gap closed: " + ("none to close (the calibrated upload with its fitted readout is as good as the twin)"
                                if s.get("gap_closed") is None else
                                f"{100 * s['gap_closed']:.0f} % of (upload with fitted readout - twin)") + ".", ""]
    lines += _gap_table(s.get("gap_steps"))
    c = s["computer"]
    lines += [f"Computer: {c['nodes']} of the board's {c['board_total_nodes']} nodes, layers "
              f"{' x '.join(map(str, c['layers']))}, {c['outputs']} outputs; element bound of training "
              f"{_bound_text(c['training_bound'])}" + (f"; quartic terms raised at nodes {c['raised_nodes']} "
              "(offset elements)" if c["raised_nodes"] else "") + (f"; input line carries {c['input_scale']:.3g} z"
                                                                  if c["input_scale"] != 1.0 else "") + ".",
              f"Node values on the board up to {c['node_extent_v']:.2f} V (99.9th percentile on the twin; "
              f"kept within {c['safe_v']:.2f} V where the board's reach allows it)."
              + ("".join(f" Trained {t['file']} (bound {_bound_text(t['bound'])}, scale {t['scale']:.3f}, "
                         f"{t['node_extent_v']:.2f} V): board loss with a fitted readout "
                         f"{t['board_loss_fitted_readout']:.4g}." for t in c["trainings"])),
              f"Energy per inference on the twin: {s['energy_per_inference_kT']:.3g} kT of heat.",
              f"Program coordinate scale on the board: {s['coordinate_scale']:.3f}.", "",
              "Time: " + ", ".join(f"{k} {v} s" for k, v in s["seconds"].items()), ""]
    lines += [f"![{Path(p).stem}]({Path(p).name})" for p in s["plots"] if Path(p).parent == folder]
    lines += ["", "Files: " + ", ".join(f"{k}: `{v}`" for k, v in s["files"].items()), ""]
    out = folder / "report.md"
    out.write_text("\n".join(lines))
    return out
