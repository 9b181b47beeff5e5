"""Train a layered thermodynamic computer by genetic algorithm to express ``cos(2 pi z)``.

The task of Whitelam & Casert (out-of-equilibrium thermodynamic computing, Sec. III C, Figs. 6-9):
an 8-wide, 4-deep layered network (:func:`tc_hw.model.network.layered`) of thermodynamic neurons with
intrinsic couplings ``J = (J2, J3, J4) = (1, 0, 1)`` (nonlinear) or ``(1, 0, 0)`` (linear), at
``beta = 10`` (``kT = 0.1``), one input ``I = z`` fed to the first layer, output
``y(z) = sum_i f_i <x_i(z)>`` over the 8 last-layer neurons, loss (14) = mean squared error to
``cos(2 pi z)``.  Trained by the genetic algorithm (:class:`tc_hw.train.ga.GeneticAlgorithm`):
population 50, best 5 kept, mutations ``0.1 / sqrt(fan-in)``, first population spread ``N(0, 1e-2)``
around a start vector (see "Where the GA starts").  Trained are
the biases, couplings, crossbar weights and the readout ``f``; ``J`` is fixed.

Sampling: ``mode="reset"`` takes M independent runs from ``x = 0`` to ``t_f = 1`` per input (eq.
11); ``mode="serial"`` reads one run per input every ``t_obs = 0.2``, M times (eq. 12).

Cost and defaults
-----------------
One trajectory step of the 32-node network costs about 70 ns on one core of this project's CI
machine (35 ns on two idle cores; 100-150 ns effective while other jobs share the machine), the
same whether the population is sampled in one batch (:mod:`sim_backend.population`) or candidate
by candidate.  A paper-size reset generation (50 candidates x 250 inputs x M = 1000 x 1000 steps
of dt = 1e-3 = 1.25e10 trajectory steps) therefore costs about 870 s on one core and 430 s on
two; a paper-size serial generation (50 x 250 x 200 000 steps) about 175 s on one core.  The
defaults cut the reset cost 2500-fold: ``points = 25`` inputs, ``samples = 40`` and
``dt = 0.01`` (100 steps to ``t_f``), i.e. 5e6 trajectory steps, 0.35 s of one core, measured
0.7-0.8 s per generation on the shared 2-core machine: 100 generations in about 1.5 minutes,
300 in 4.  Serial defaults (200 readings, 4000 steps per input) cost about the same.  Pass
``points=250, samples=1000, dt=1e-3`` for the paper's settings.

``dt = 0.01`` is ten times the paper's.  The GA tunes the computer to the dynamics it is trained
on, so the discretisation error shows up when the trained computer is re-run at dt = 1e-3
(``loss_check_dt``): measured 0.017 at dt = 0.01 vs 0.039 at dt = 1e-3 after 300 generations.

Where the GA starts
-------------------
With the paper's start (every trainable value ``N(0, 1e-2)``, ``start="paper"``) the input barely
reaches the last layer by ``t_f = 1``: at the start the z-dependent part of ``y(z)`` is about
2e-5 (each of the three inter-layer hops attenuates it about tenfold), and ``cos(2 pi z)`` is
orthogonal on [0, 1] to the odd (linear) part of the response, so the loss only sees the
second-order part.  The GA then sits at the loss of a constant output (~0.52) on a plateau:
measured 2500 generations without progress (25 x 20 samples), and 300 generations with 10 x 200.
The paper does not say how many generations it ran.  The default ``start="aligned"``
(:func:`start_vector`) centres the first population on couplings -0.5 between layers and
crossbar weights -2 (plus the same ``N(0, 1e-2)`` spread), where the input does reach the output;
from there the defaults reach loss ~0.4 at 100 generations and ~0.02 at 300 (reset), ~0.07 at 300
(serial).  The linear ``(1, 0, 0)`` network stays at ~0.50, as in the paper.

"Fixed input batch": every candidate of a generation is evaluated on the same inputs and, with
``common_noise=True`` (default), the same noise realisation (trajectory ``(p, m)`` uses noise
stream ``(seed_g, p, m)`` for every candidate), so that loss differences within a generation come
from the parameters only.  ``batch="grid"`` (default) uses the same ``points`` evenly spaced
inputs every generation; ``batch="random"`` draws ``points`` of the paper's 250 inputs anew each
generation.  The noise seed ``seed_g`` (``tc_hw.model.seeds.derive(seed, COS_NOISE, g)``) changes every
generation, and the elites are re-measured with it (see :mod:`tc_hw.train.ga`).  In reset mode the training losses use antithetic noise
pairs (``antithetic=True``), which lowers their sampling noise several-fold while the response is
weak; the final, reported loss uses independent runs.

Weak boards: :func:`train_cos_varpro` trains any cos computer through its dynamics with the
readout projected out (the exact least-squares readout of every iteration's means), which
``tc-hw demo`` uses on boards whose elements are weak relative to kT (:mod:`tc_hw.demo`).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim_backend import population as pp
from sim_backend import twin
from sim_backend.rng import normal
from tc_hw.model.files import save_params
from tc_hw.model.network import layered
from tc_hw.model.params import Params, ParamsError
from tc_hw.model.plotting import figure, save
from tc_hw.model.tasks import cos_loss, cos_loss_unbiased, cos_task

from ..model import seeds
from .direct import _Adam, _Model, backward, forward
from .ga import GeneticAlgorithm, fan_in_sigma

__all__ = ["train_cos_ga", "train_cos_varpro", "field_errors", "field_error_penalty", "cos_network", "evaluate_cos", "start_vector", "TRAINABLE"]

#: Element kinds the genetic algorithm changes (the paper's theta = {W, b, J_ij, f}).
TRAINABLE = ("bias", "coupling", "crossbar", "readout")

PAPER_POINTS = 250

#: Default M per mode: about the same cost per generation (reset: 40 runs of 100 steps per input;
#: serial: one run of 200 readings x 20 steps per input).
DEFAULT_SAMPLES = {"reset": 40, "serial": 200}


def cos_network(neuron=(1.0, 0.0, 1.0), kT: float = 0.1, width: int = 8, depth: int = 4) -> Params:
    """The untrained computer: layered ``width x depth``, one input, ``J = neuron`` on every node,
    zero biases, couplings, crossbar and readout (shape (1, width))."""
    j2, j3, j4 = (float(v) for v in neuron)
    net = layered(width, depth, 1)
    return Params.uniform(net, j2, j3, j4, kT=kT, readout=np.zeros((1, len(net.outputs))))


def start_vector(base: Params, start: str = "aligned", coupling: float = -0.5, crossbar: float = -2.0,
                 monostable: bool = False) -> np.ndarray:
    """Centre of the first population, laid out as ``base.vector()``.

    ``"paper"``: every trainable value 0 (with ``init_sigma = 0.1`` the paper's ``N(0, 1e-2)``).
    ``"aligned"``: couplings ``coupling`` (negative: neighbouring layers align) and crossbar
    weights ``crossbar`` (the input ``z`` pushes the first layer up), so that the input reaches the
    last layer by ``t_f = 1``.  With ``monostable`` (used for serial sampling), or for nodes without
    quartic term, the couplings are scaled down to half the value at which the quadratic part of
    ``V`` stops being positive definite: strong aligned couplings make the network a ferromagnet
    with two long-lived states at ``kT = 0.1``, which ruins long time averages (and a linear
    network would be unbounded).  Biases and readout are 0.
    """
    if start == "paper":
        return base.copy(bias=0.0, coupling=0.0, crossbar=0.0, readout=np.zeros_like(base.readout)).vector()
    if start != "aligned":
        raise ValueError(f"start must be 'paper' or 'aligned', got {start!r}")
    c = float(coupling)
    if (monostable or (base.quartic == 0).any()) and base.network.n_edges and c != 0:
        n = base.network.n_nodes
        unit = np.zeros((n, n))
        a, b = base.network.edges.T
        unit[a, b] = unit[b, a] = 1.0
        lam = np.abs(np.linalg.eigvalsh(unit)).max()
        limit = 2 * base.quadratic.min() / lam
        c = float(np.sign(c) * min(abs(c), 0.5 * limit))
    net = base.network
    p = base.copy(bias=0.0, coupling=np.full(net.n_edges, c), crossbar=np.full(net.n_crossbar, float(crossbar)),
                  readout=np.zeros_like(base.readout))
    return p.vector()


def _sample(cands, z, mode, samples, dt, t_f, t_obs, noise, antithetic=False):

    if mode == "reset":
        x = pp.population_reset(cands, z, t_f, samples, dt=dt, seed=noise, antithetic=antithetic)
    else:
        x = pp.population_serial(cands, z, t_obs, samples, dt=dt, seed=noise)
    return x[:, :, :, -1, :]  # (C, P, M, n_out)


def evaluate_cos(vectors, base: Params, z, targets, *, mode="reset", samples=100, dt=1e-2, t_f=1.0,
                 t_obs=0.2, seed=0, common_noise=True, antithetic=False, first: int = 0) -> np.ndarray:
    """Loss (14) of every candidate, shape (C,); ``+inf`` for unstable or diverging candidates.

    ``vectors`` (C, n) are laid out as ``base.vector()``; ``z`` (P, 1) inputs, ``targets`` (P,).
    All candidates are sampled in one batch (:mod:`sim_backend.population`); with
    ``common_noise`` they share the noise streams of ``seed``, otherwise candidate ``c`` uses
    ``seeds.derive(seed, seeds.COS_CANDIDATE, first + c)``: ``first`` is the population row of
    ``vectors[0]``, so a population evaluated in batches gets the losses of one call.
    """
    vectors = np.atleast_2d(np.asarray(vectors, float))
    loss = np.full(len(vectors), np.inf)
    cands, rows = [], []
    for r, v in enumerate(vectors):
        try:
            cands.append(base.with_vector(v))
            rows.append(r)
        except ParamsError:  # e.g. a linear network whose couplings make V unbounded
            pass
    if not cands:
        return loss
    noise = int(seed) if common_noise else [seeds.derive(seed, seeds.COS_CANDIDATE, int(first) + r) for r in rows]
    with np.errstate(all="ignore"):
        x = _sample(cands, z, mode, samples, dt, t_f, t_obs, noise, antithetic)
    for k, (r, c) in enumerate(zip(rows, cands)):
        loss[r] = cos_loss(c, x[k], targets)
    return loss


def _json_list(a) -> list:
    """A float array as a list for JSON: NaN and infinities become None."""
    return [float(v) if np.isfinite(v) else None for v in np.asarray(a, float)]


def twin_cos_loss(params: Params, *, points: int = PAPER_POINTS, samples: int = 1000, dt: float = 1e-3,
                  seed: int = 0) -> float:
    """Loss (14) of one trained computer on ``points`` inputs of [0, 1], ``samples`` reset runs each
    (:func:`twin_cos_losses` gives the unbiased loss too)."""
    return twin_cos_losses(params, points=points, samples=samples, dt=dt, seed=seed)[0]


def twin_cos_losses(params: Params, *, points: int = PAPER_POINTS, samples: int = 1000, dt: float = 1e-3,
                    seed: int = 0) -> tuple[float, float]:
    """``(loss, unbiased loss)`` of :func:`twin_cos_loss`, both from the same runs."""
    z, y0 = cos_task(points)
    with np.errstate(all="ignore"):
        x = _sample([params], z, "reset", samples, dt, 1.0, 0.2, int(seed))[0]
    return cos_loss(params, x, y0), cos_loss_unbiased(params, x, y0)


def readout_lstsq(params: Params, *, mode: str = "reset", points: int = PAPER_POINTS, samples: int = 1000,
                  dt: float = 1e-3, t_f: float = 1.0, t_obs: float = 0.2, seed: int = 0, penalty=None) -> Params:
    """``params`` with the exact least-squares readout for the cos task on the twin.

    The output nodes' sample means ``xbar`` (``points`` inputs of [0, 1] x ``samples`` runs,
    shape (points, n_out)) are measured once; the readout ``f`` (1, n_out) minimising
    ``mean_z (xbar(z) . f - cos 2 pi z)^2`` is the linear least-squares solution, so no readout
    does better on these means (the analog program is unchanged).  Training ends with it, so a
    program's twin loss is its best and later comparisons with the board are fair.  ``penalty``
    (n_out, n_out), optional: minimise ``mean_z (...)^2 + f^T penalty f`` instead
    (:func:`field_error_penalty`: a readout that stays good on a board with element errors).  Returns
    ``params`` unchanged if it has no readout or the fit is not finite.
    """
    if params.readout is None or params.readout.shape[0] != 1:
        return params
    z, y0 = cos_task(points)
    with np.errstate(all="ignore"):
        x = _sample([params], z, mode, samples, dt, t_f, t_obs, int(seed))[0]  # (P, M, n_out)
    xbar = np.asarray(x, np.float64).mean(axis=1)
    if not np.all(np.isfinite(xbar)):
        return params
    if penalty is not None:
        f = np.linalg.solve(xbar.T @ xbar / len(z) + np.asarray(penalty, np.float64), xbar.T @ y0 / len(z))
    else:
        f, *_ = np.linalg.lstsq(xbar, y0, rcond=None)
    return params.copy(readout=f[None, :]) if np.all(np.isfinite(f)) else params


def _settings(**kw) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()}


def train_cos_ga(
    generations: int = 100,
    population: int = 50,
    points: int = 25,
    samples: int | None = None,
    mode: str = "reset",
    seed: int = 0,
    out=None,
    progress: bool = True,
    *,
    neuron=(1.0, 0.0, 1.0),
    width: int = 8,
    depth: int = 4,
    kT: float = 0.1,
    dt: float = 1e-2,
    t_f: float = 1.0,
    t_obs: float = 0.2,
    elites: int = 5,
    mutation: float = 0.1,
    init_sigma: float = 0.1,
    start: str = "aligned",
    batch: str = "grid",
    common_noise: bool = True,
    antithetic: bool = True,
    target_loss: float | None = None,
    patience: int | None = None,
    max_seconds: float | None = None,
    checkpoint=None,
    resume: bool = False,
    eval_points: int = PAPER_POINTS,
    eval_samples: int = 1000,
    check_dt: float | None = 1e-3,
    check_samples: int = 250,
    plots: bool = True,
    evaluate=None,
) -> tuple[Params, dict]:
    """Train the cos(2 pi z) computer by genetic algorithm; returns ``(params, metrics)``.

    Parameters
    ----------
    generations : int
        Generations to run in total (a resumed run continues up to this number).
    population, elites, mutation, init_sigma
        GA settings (paper: 50, 5, 0.1 / sqrt(fan-in), N(0, 0.1^2) start).
    start : {"aligned", "paper"}
        Centre of the first population (:func:`start_vector`); see the module docstring for why
        the default is not the paper's.
    points : int
        Inputs per generation (paper: 250).
    samples : int, optional
        M: reset runs (``mode="reset"``) or serial readings (``mode="serial"``) per input
        (paper: 1000; default :data:`DEFAULT_SAMPLES`, 40 reset or 200 serial).
    mode : {"reset", "serial"}
    seed : int
        Seeds the GA and, through it, every noise seed: the run is reproducible bitwise.
    out : path, optional
        Result file (``.h5``): the trained parameters (:func:`tc_hw.model.files.save_params`, with
        provenance: method, task, settings, loss history) plus a ``ga_history`` group.  Next to it
        go ``<stem>_loss.png``, ``<stem>_cos.png`` and the checkpoint ``<stem>_ga.h5``.
    progress : bool
        tqdm progress bar on stderr with the current best loss.
    neuron : (J2, J3, J4)
        ``(1, 0, 1)`` nonlinear (default) or ``(1, 0, 0)`` linear.
    width, depth : int
        Layered design (paper: 8 x 4).
    kT, dt, t_f, t_obs
        Bath temperature (paper: beta = 10), time step (paper: 1e-3), observation time of reset
        sampling and reading interval of serial sampling.
    batch : {"grid", "random"}
        Inputs per generation: a fixed grid of ``points``, or ``points`` of the 250 paper inputs
        drawn each generation (see the module docstring).
    common_noise : bool
        Same noise streams for every candidate of a generation.
    antithetic : bool
        Reset mode only: half of each input's ``samples`` runs are driven by the negated noise
        of the other half (:func:`sim_backend.population.population_reset`), which cuts the
        sampling noise of the loss several-fold while the network's response is weak.  Only the
        training losses use it; the final measurement uses independent runs.
    target_loss, patience, max_seconds
        Further stopping criteria (see :class:`tc_hw.train.ga.GAConfig`).
    checkpoint : path, optional
        GA checkpoint written every generation (default ``<stem>_ga.h5`` when ``out`` is given).
    resume : bool
        Continue from ``checkpoint`` if it exists (its settings must match).
    eval_points, eval_samples
        Final measurement: the elites are re-measured on ``eval_points`` inputs with
        ``max(samples, eval_samples // 5)`` samples, the best is returned and measured once more
        with ``eval_samples`` samples and fresh noise (the reported ``loss``).
    check_dt, check_samples : float or None, int
        Also report the loss of the trained computer at time step ``check_dt`` (default the
        paper's 1e-3; None to skip), from ``check_samples`` samples (``loss_check_dt``; with fewer
        samples it carries a larger noise floor, about ``var(y) / check_samples``).
    plots : bool
        Write the PNGs (needs ``out``).
    evaluate : callable, optional
        Evaluates populations in place of :func:`evaluate_cos`, with its signature and its results
        (for example :class:`tc_hw.cluster.ClusterEvaluator`, which spreads them over workers).

    Returns
    -------
    params : Params
    metrics : dict
        ``loss`` (final, fresh measurement on ``eval_points`` inputs), ``loss_check_dt``,
        ``generations``, ``train_seconds``, ``seconds_per_generation``, ``stop_reason``,
        ``best_loss_history`` and ``elite_loss_history`` (per generation),
        ``heat_per_trajectory_kT`` and ``heat_per_inference_kT`` (mean heat given to the bath,
        ``(V(x0) - V(x_final)) / kT`` as in :class:`sim_backend.twin.Run`, of one run and of one
        inference = ``eval_samples`` reset runs or one serial run; negative: starting from
        ``x = 0`` the network takes up thermal energy from the bath), ``files``.  All values are
        JSON-serialisable (NaN and infinities in histories are None).
    """
    t0 = time.perf_counter()
    samples = _checked_samples(mode, samples, batch, points, generations, antithetic)
    base = cos_network(neuron, kT, width, depth)
    settings = _settings(
        task="cos", method="ga", mode=mode, neuron=tuple(float(v) for v in neuron), kT=kT, width=width, depth=depth,
        population=population, elites=elites, points=points, samples=samples, dt=dt,
        t_f=t_f, t_obs=t_obs, mutation=mutation, init_sigma=init_sigma, start=start, batch=batch,
        common_noise=common_noise, antithetic=bool(antithetic and mode == "reset"), seed=seed, trainable=TRAINABLE,
    )
    out = None if out is None else Path(out)
    if checkpoint is None and out is not None:
        checkpoint = out.with_name(out.stem + "_ga.h5")
    checkpoint = None if checkpoint is None else Path(checkpoint)
    x0 = start_vector(base, start, monostable=mode == "serial")
    stop = dict(max_generations=generations, target_loss=target_loss, patience=patience, max_seconds=max_seconds)
    ga = _ga_for(base, x0, settings, stop, checkpoint, resume)
    evaluate = evaluate_cos if evaluate is None else evaluate
    _run_generations(ga, base, settings, generations, checkpoint, progress, evaluate)
    final = _final_measurement(ga, base, x0, settings, eval_points, eval_samples, check_dt, check_samples, evaluate)
    metrics = _ga_metrics(ga, final, settings)
    if out is not None:
        _write_ga_result(out, final, ga, metrics, settings, checkpoint, plots)
    metrics["total_seconds"] = time.perf_counter() - t0
    return final.params, metrics


def _checked_samples(mode, samples, batch, points, generations, antithetic) -> int:
    """``samples`` (its mode's default where None) after checking the GA's arguments; ValueError if bad."""
    if mode not in ("reset", "serial"):
        raise ValueError(f"mode must be 'reset' or 'serial', got {mode!r}")
    if samples is None:
        samples = DEFAULT_SAMPLES[mode]
    if batch not in ("grid", "random"):
        raise ValueError(f"batch must be 'grid' or 'random', got {batch!r}")
    if points < 1 or samples < 1 or generations < 0:
        raise ValueError("points and samples must be >= 1 and generations >= 0")
    if antithetic and mode == "reset" and samples % 2:
        raise ValueError(f"antithetic sampling needs an even number of samples, got {samples}")
    if batch == "random" and points > PAPER_POINTS:
        raise ValueError(f"batch='random' draws from the {PAPER_POINTS} paper inputs; points must be <= {PAPER_POINTS}")
    return samples


def _ga_for(base: Params, x0: np.ndarray, settings: dict, stop: dict, checkpoint, resume: bool) -> GeneticAlgorithm:
    """A new GA around ``x0`` (first population ``x0 + N(0, init_sigma^2)`` on the trainable
    entries), or the one resumed from ``checkpoint`` (its settings must equal ``settings``)."""
    if resume and checkpoint is not None and checkpoint.exists():
        ga = GeneticAlgorithm.load(checkpoint)
        if ga.meta.get("settings") != json.loads(json.dumps(settings)):
            raise ValueError(f"{checkpoint} was written with other settings {ga.meta.get('settings')}; "
                             "delete it or resume=False to start afresh")
        ga.with_config(**stop)
        return ga
    sigma = fan_in_sigma(base, TRAINABLE, settings["mutation"])
    init = np.where(sigma > 0, settings["init_sigma"], 0.0)
    return GeneticAlgorithm(x0, sigma, init_sigma=init, population=settings["population"],
                            elites=settings["elites"], seed=settings["seed"], **stop)


def _batch_for(settings: dict, g: int):
    """Inputs ``z`` (P, 1) and targets (P,) of generation ``g``: the grid, or ``points`` paper inputs drawn for ``g``."""
    if settings["batch"] == "grid":
        return cos_task(settings["points"])
    z_paper, t_paper = cos_task(PAPER_POINTS)
    rng = seeds.rng(settings["seed"], seeds.COS_BATCH, g)
    idx = np.sort(rng.choice(PAPER_POINTS, settings["points"], replace=False))
    return z_paper[idx], t_paper[idx]


def _run_generations(ga: GeneticAlgorithm, base: Params, settings: dict, generations: int, checkpoint,
                     progress: bool, evaluate=evaluate_cos) -> None:
    """Ask, evaluate (``evaluate``: :func:`evaluate_cos` or one with its results), tell until the GA stops; checkpoint every generation."""
    from tqdm.auto import tqdm

    s = settings
    bar = tqdm(total=generations, initial=min(ga.generation, generations), disable=not progress, file=sys.stderr,
               desc=f"GA cos {s['mode']}", unit="gen", dynamic_ncols=True)
    try:
        while ga.stop_reason() is None:
            g = ga.generation
            z, tgt = _batch_for(s, g)
            losses = evaluate(ga.ask(), base, z, tgt, mode=s["mode"], samples=s["samples"], dt=s["dt"],
                                  t_f=s["t_f"], t_obs=s["t_obs"], seed=seeds.derive(s["seed"], seeds.COS_NOISE, g),
                                  common_noise=s["common_noise"], antithetic=s["antithetic"])
            ga.tell(losses)
            if checkpoint is not None:
                ga.save(checkpoint, {"settings": settings})
            bar.update(1)
            bar.set_postfix(best=f"{ga.history['best'][-1]:.4g}", elite=f"{ga.history['elite'][-1]:.4g}")
    finally:
        bar.close()


@dataclass
class _Final:
    """The GA's result measured afresh: the chosen computer, its losses, heat and output curve."""

    params: Params
    loss: float
    loss_check: float | None
    check_dt: float | None
    elite_eval: np.ndarray
    heat_traj: float
    heat_inf: float
    z_eval: np.ndarray  # (P,)
    t_eval: np.ndarray  # (P,)
    y_mean: np.ndarray  # (P,)
    y_se: np.ndarray  # (P,)


def _final_measurement(ga, base, x0, settings, eval_points, eval_samples, check_dt, check_samples,
                       evaluate=evaluate_cos) -> _Final:
    """Elites re-measured on ``eval_points`` inputs, the best one with the exact least-squares
    readout, then measured once more with ``eval_samples`` runs and fresh noise (and at ``check_dt``)."""

    s = settings
    mode, dt, seed = s["mode"], s["dt"], s["seed"]
    z_eval, t_eval = cos_task(eval_points)
    elite_vectors = ga.elites if ga.generation else x0[None]
    kw = dict(mode=mode, dt=dt, t_f=s["t_f"], t_obs=s["t_obs"])
    sel_samples = max(s["samples"], eval_samples // 5)
    elite_eval = evaluate(elite_vectors, base, z_eval, t_eval, samples=sel_samples,
                              seed=seeds.derive(seed, seeds.COS_CHECK, 0), **kw)
    best = base.with_vector(elite_vectors[int(np.argmin(elite_eval))])
    if best.readout is not None:  # the exact least-squares readout (its own noise seed)
        best = readout_lstsq(best, points=eval_points, samples=sel_samples, seed=seeds.derive(seed, seeds.COS_CHECK, 2),
                             **kw)
    ev_seed = seeds.derive(seed, seeds.COS_CHECK, 1)
    if mode == "reset":
        run = twin.sample_reset(best, z_eval, s["t_f"], eval_samples, dt=dt, seed=ev_seed,
                                nodes=best.network.outputs, energy=True)
        heat_traj = float(np.mean(run.heat_kT))
        heat_inf = heat_traj * eval_samples
    else:
        run = twin.sample_serial(best, z_eval, s["t_obs"], eval_samples, dt=dt, seed=ev_seed,
                                 nodes=best.network.outputs, energy=True)
        heat_traj = heat_inf = float(np.mean(run.heat_kT))
    y_samples = run.x[:, :, -1, :]
    y_per_sample = (y_samples.astype(np.float64) @ best.readout[0])  # (P, M)
    loss_check = None
    if check_dt is not None and check_dt != dt:
        loss_check = float(evaluate(best.vector(), base, z_eval, t_eval, samples=check_samples, seed=ev_seed,
                                        **{**kw, "dt": check_dt})[0])
    return _Final(best, cos_loss(best, y_samples, t_eval), loss_check, check_dt, elite_eval, heat_traj, heat_inf,
                  z_eval[:, 0], t_eval, best.output(y_samples.astype(np.float64).mean(1))[:, 0],
                  y_per_sample.std(1, ddof=1) / np.sqrt(y_per_sample.shape[1]))


def _ga_metrics(ga, final: _Final, settings: dict) -> dict:
    """The metrics dict of :func:`train_cos_ga` (JSON-serialisable; ``files`` filled by the writer)."""
    return {
        "loss": final.loss,
        "loss_check_dt": final.loss_check,
        "check_dt": final.check_dt,
        "elite_eval_losses": _json_list(final.elite_eval),
        "generations": ga.generation,
        "stop_reason": ga.stop_reason(),
        "train_seconds": ga.elapsed,
        "seconds_per_generation": ga.elapsed / max(ga.generation, 1),
        "total_seconds": None,
        "best_loss_history": _json_list(ga.history["best"]),
        "elite_loss_history": _json_list(ga.history["elite"]),
        "heat_per_trajectory_kT": final.heat_traj,
        "heat_per_inference_kT": final.heat_inf,
        "settings": settings,
        "files": {},
    }


def _write_ga_result(out: Path, final: _Final, ga, metrics: dict, settings: dict, checkpoint, plots: bool) -> None:
    """The result file (parameters with provenance, ``ga_history`` group) and the PNGs; fills ``metrics["files"]``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    prov = {
        "method": "ga",
        "task": "cos",
        "settings": json.dumps(settings),
        "loss": repr(final.loss),
        "loss_history": json.dumps(metrics["best_loss_history"]),
        "elite_loss_history": json.dumps(metrics["elite_loss_history"]),
        "generations": str(ga.generation),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    save_params(final.params, out, prov)
    metrics["files"]["params"] = str(out)
    if out.suffix.lower() != ".json":
        import h5py

        with h5py.File(out, "a") as f:
            if "ga_history" in f:
                del f["ga_history"]
            g = f.create_group("ga_history")
            for k, v in ga.history.items():
                g[k] = v
            g["eval_z"] = final.z_eval
            g["eval_output"] = final.y_mean
    if checkpoint is not None:
        metrics["files"]["checkpoint"] = str(checkpoint)
    if plots:
        metrics["files"].update(_plots(out, ga.history, final.z_eval, final.y_mean, final.y_se, final.t_eval,
                                       final.loss, settings))


def _plots(out: Path, history, z, y, y_se, target, loss, settings) -> dict:

    label = "J = ({:g}, {:g}, {:g}), {} sampling".format(*settings["neuron"], settings["mode"])
    fig, ax = figure()
    gen = np.arange(1, len(history["best"]) + 1)
    if len(gen):
        ax.semilogy(gen, history["best"], label="best of generation")
        ax.semilogy(gen, history["elite"], ".", ms=3, alpha=0.6, label="previous best, re-measured")
        ax.semilogy(gen, history["mean"], alpha=0.5, label="population mean")
    ax.axhline(loss, color="k", ls=":", label=f"final (250 inputs): {loss:.3g}")
    ax.set_xlabel("generation")
    ax.set_ylabel("loss (mean squared error)")
    ax.set_title(f"GA, cos(2 pi z): {label}")
    ax.legend(fontsize=8)
    loss_png = save(fig, out.with_name(out.stem + "_loss.png"))
    fig, ax = figure()
    ax.plot(z, target, "k", label="cos(2 pi z)")
    ax.plot(z, y, color="C2", label=f"computer output, loss {loss:.3g}")
    ax.fill_between(z, y - 2 * y_se, y + 2 * y_se, color="C2", alpha=0.3, lw=0)
    ax.set_xlabel("input z")
    ax.set_ylabel("output y(z)")
    ax.set_title(label)
    ax.legend(fontsize=8)
    cos_png = save(fig, out.with_name(out.stem + "_cos.png"))
    return {"loss_png": str(loss_png), "cos_png": str(cos_png)}


def _ridge_readout(xbar: np.ndarray, target: np.ndarray, ridge: float) -> np.ndarray:
    """Readout ``f`` (n_out,) minimising ``mean (xbar f - target)^2 + ridge |f|^2``; ``xbar`` (P, n_out)."""
    p, n = xbar.shape
    a = xbar.T @ xbar / p + ridge * np.eye(n)
    return np.linalg.solve(a, xbar.T @ target / p)


def _model_bounds(base: Params, bound) -> list:
    """Bounds in the layout of :class:`tc_hw.train.direct._Model` tensors ``[W (K, N), B (N,), C (N, N)]``:
    a float (symmetric, all kinds), a dict per kind of floats (symmetric) or of ``(lo, hi)`` arrays
    in ``base``'s element order (``crossbar``, ``bias``, ``coupling``); None: unbounded."""
    if not isinstance(bound, dict):
        return [bound] * 3
    net = base.network

    def dense(kind):
        b = bound.get(kind)
        if not isinstance(b, tuple):
            return b
        lo, hi = (np.asarray(v, np.float64) for v in b)
        if kind == "bias":
            return lo.astype(np.float32), hi.astype(np.float32)
        shape = (net.n_inputs, net.n_nodes) if kind == "crossbar" else (net.n_nodes, net.n_nodes)
        out = []
        for v in (lo, hi):
            m = np.zeros(shape)
            if kind == "crossbar":
                m[tuple(net.crossbar.T)] = v
            else:
                a, b2 = net.edges.T
                m[a, b2] = m[b2, a] = v
            out.append(m.astype(np.float32))
        return tuple(out)

    return [dense("crossbar"), dense("bias"), dense("coupling")]


def train_cos_varpro(base: Params, *, bound: float | dict | None = None, iterations: int = 300, points: int = 32,
                     samples: int = 16, dt: float = 1e-2, t_f: float = 1.0, lr: float = 5e-2, lr_final: float = 1e-3,
                     restarts: int = 4, ridge: float = 1e-4, seed: int = 0, max_seconds: float | None = None,
                     progress: bool = False, field_sigma=None) -> tuple[Params, dict]:
    """Train the cos(2 pi z) computer ``base`` through its dynamics with the readout projected out.

    Variable projection: at every iteration the readout ``f`` (1, n_out) is the exact (ridge
    ``ridge``) least-squares fit to that iteration's output means ``xbar`` (``points`` inputs
    drawn uniformly on [0, 1], ``samples`` reset runs of ``t_f`` each), and the analog elements
    (bias, coupling, crossbar) follow the gradient of the loss *after* that fit (adjoint of
    :func:`tc_hw.train.direct.forward`; by the envelope theorem ``f`` needs no gradient).  So any
    nonlinearity of the response lowers the loss at once, instead of waiting for a readout
    trained alongside to find it: what gets a weak board's computer off the loss-1/2 plateau.
    ``bound``: for all (float), or per element kind (dict: ``bias``, ``coupling``, ``crossbar``) a
    float or ``(lo, hi)`` arrays per element (``base``'s element order), projected after every step.  ``restarts`` random starts (biases N(0, 1), couplings
    N(0, 0.5^2), crossbar N(0, 4^2), then bounded) are run ``iterations / (4 restarts)``
    iterations each; the best goes on with a cosine-decaying learning rate.

    ``field_sigma``: ``(const, per_z)`` arrays (n_nodes,) in program units, or None.  Each input
    of an iteration then adds to node ``j``'s field an error drawn ``N(0, const_j^2 + z^2
    per_z_j^2)`` (the same for that input's runs; :func:`field_errors`): element errors such as a
    board's calibration leaves (bias and coupling: ``const``; crossbar: ``per_z``).  Drawn anew for
    every input, they cannot be fitted by the readout, so the expected loss of a program whose
    readout is fixed on a board with such errors is what training lowers (the readout gets no
    larger than the errors allow).

    Returns ``(params, metrics)``: the trained computer with its readout from the last iteration
    (callers refit it on more samples: :func:`readout_lstsq`), and ``history`` (minibatch loss
    after the fit, per iteration), ``iterations``, ``train_seconds``.
    """
    from threadpoolctl import threadpool_limits



    bounds = _model_bounds(base, bound)
    rng = seeds.rng(seed, seeds.DIRECT_DATA)
    steps = int(round(t_f / dt))
    outputs = np.asarray(base.network.outputs)

    def project(model):
        for t, b in zip(model.tensors(), bounds):
            if isinstance(b, tuple):
                np.clip(t, b[0], b[1], out=t)
            elif b is not None:
                np.clip(t, -b, b, out=t)

    def start():
        net = base.network
        model = _Model(base.copy(bias=rng.normal(0, 1.0, net.n_nodes), coupling=rng.normal(0, 0.5, net.n_edges),
                                 crossbar=rng.normal(0, 4.0, net.n_crossbar)))
        project(model)
        return model, _Adam(model.tensors(), lr)

    def step(model, opt, it, step_lr):
        z = rng.uniform(0, 1, points).astype(np.float32)
        inputs = np.repeat(z, samples)[:, None]
        noise = normal(seeds.derive(seed, seeds.DIRECT_NOISE, it),
                       steps * len(inputs) * model.B.size).reshape(steps, len(inputs), -1)
        field = None if field_sigma is None else np.repeat(field_errors(field_sigma, z, rng), samples, axis=0)
        xs = forward(model, inputs, noise, dt, field)
        xbar = xs[-1][:, outputs].reshape(points, samples, -1).mean(axis=1).astype(np.float64)
        target = np.cos(2 * np.pi * z)
        f = _ridge_readout(xbar, target, ridge)
        err = xbar @ f - target
        loss = float(np.mean(err**2))
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at iteration {it}: lower lr or dt")
        lam = np.zeros((len(inputs), model.B.size), np.float32)
        lam[:, outputs] = np.repeat(2 * err / (points * samples), samples)[:, None] * f[None, :]
        opt.step(model.tensors(), backward(model, inputs, xs, lam, dt), step_lr)
        project(model)
        return loss, f

    history, t0 = [], time.perf_counter()
    probe = iterations // (4 * restarts) if restarts > 1 else 0
    with threadpool_limits(1, "blas"):
        runs = []
        for r in range(restarts if probe else 1):
            model, opt = start()
            losses = [step(model, opt, len(history) + i, lr)[0] for i in range(probe)]
            history += losses
            runs.append((float(np.mean(losses[-max(1, probe // 4):])) if losses else 0.0, r, model, opt))
        _, _, model, opt = min(runs, key=lambda t: (t[0], t[1]))
        rest, f = iterations - len(history), None
        for i in range(rest):
            step_lr = lr_final + 0.5 * (lr - lr_final) * (1 + np.cos(np.pi * i / max(1, rest - 1)))
            loss, f = step(model, opt, len(history), step_lr)
            history.append(loss)
            if progress and i % 50 == 0:
                print(f"varpro cos: iteration {len(history)}, loss {np.mean(history[-20:]):.3g}", file=sys.stderr)
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                break
    readout = np.zeros((1, len(outputs))) if f is None else f[None, :]
    trained = model.to_params().copy(readout=readout)
    return trained, {"method": "varpro", "history": history, "iterations": len(history),
                     "train_seconds": round(time.perf_counter() - t0, 1)}


def field_errors(field_sigma, z, rng) -> np.ndarray:
    """Field errors (P, n_nodes), float32, one row per input ``z`` (P,): node ``j``'s is drawn
    ``N(0, const_j^2 + z^2 per_z_j^2)`` with ``field_sigma = (const, per_z)`` (program units)."""
    const, per_z = (np.asarray(v, np.float64) for v in field_sigma)
    sd = np.sqrt(const[None, :] ** 2 + (np.asarray(z, np.float64)[:, None] * per_z[None, :]) ** 2)
    return (rng.standard_normal(sd.shape) * sd).astype(np.float32)


def field_error_penalty(params: Params, field_sigma, *, points: int = PAPER_POINTS, samples: int = 64,
                        dt: float = 1e-2, seed: int = 0) -> np.ndarray:
    """Readout penalty (n_out, n_out) of field errors ``field_sigma`` (see :func:`train_cos_varpro`):
    ``S = D^T D / points`` with ``D`` (points, n_out) the change of the output nodes' means when
    each input's field gets its own error draw (:func:`field_errors`), the same runs with and
    without (common noise: ``samples`` runs per input suffice).  ``f^T S f`` is then the expected
    extra loss of readout ``f`` on a board with such errors (to first order); pass ``S`` to
    :func:`readout_lstsq` as ``penalty``."""
    model = _Model(params)
    z = cos_task(points)[0][:, 0].astype(np.float32)
    inputs = np.repeat(z, samples)[:, None]
    steps = int(round(1.0 / dt))
    noise = normal(seeds.derive(seed, seeds.DIRECT_NOISE, 0), steps * len(inputs) * model.B.size)
    noise = noise.reshape(steps, len(inputs), -1)
    err = np.repeat(field_errors(field_sigma, z, seeds.rng(seed, seeds.DIRECT_DATA, 1)), samples, axis=0)
    out = np.asarray(params.network.outputs)

    def means(field):
        return forward(model, inputs, noise, dt, field)[-1][:, out].reshape(points, samples, -1).mean(1)

    d = (means(err) - means(None)).astype(np.float64)
    return d.T @ d / points
