"""Training the demo's program on the twin, and choosing the one that goes on the board.

* :func:`_choose_program`: the default plan trained by direct training (:func:`_train_for`), again
  at a larger coordinate scale when its nodes would reach the rails (:func:`_off_the_rails`,
  deciding by a board measurement, :func:`_board_score`), at smaller scales while it does not learn
  (:func:`_learn_at_smaller_scales`), and the weak-board computer trained by variable projection
  (:func:`_train_weak`) where the board's elements are weak; returns a :class:`Choice` holding the
  :class:`Trained` program and every attempt;
* :func:`_twin_figures`: the chosen program's twin loss on the board's own per-node time constants
  (refusing one that did not learn) and its heat per run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from calibration.mapping import on_board_mobility
from calibration.scale import fitting_scale
from sim_backend.twin import sample_reset

from ..model import seeds
from ..model.files import save_params
from ..model.tasks import cos_task
from ..refine import RefineConfig, _Problem, _retrying
from ..run import safe_node_volts
from ..train.cos import (
    field_error_penalty,
    readout_lstsq,
    train_cos_varpro,
    twin_cos_loss,
)
from ..train.direct import cos_png, train_cos_direct
from .common import LEARNED_LOSS, _bound_text, _check_twin_learned, _say
from .plan import MIN_SCALE, BoardPlan, _is_weak, board_computer, embed, plan_for_board
from .weak import (
    WEAK_DEPTH,
    WEAK_RELAXATIONS,
    _read_every_node,
    plan_for_weak_board,
    weak_field_sigma,
    weak_mobility,
)


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


#: Variable-projection training of the weak-board computer (iterations, inputs x runs per iteration).
WEAK_TRAINING = dict(iterations=400, points=32, samples=64)

#: Largest Euler step of weak-board training in units of time at mobility 1 (``mobility * dt``).
WEAK_STEP = 0.05


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
