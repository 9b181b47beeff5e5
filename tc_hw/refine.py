"""In-hardware refinement: the analog program improved with the device in the loop.

Methods (``RefineConfig.method``): ``ga`` (default, described below), ``cma`` (CMA-ES,
:mod:`tc_hw.train.cmaes`, the same ask/tell loop) and ``twin-guided`` (Levenberg-Marquardt
steps from the board's measured output means and the twin's Jacobian through the calibration,
:mod:`tc_hw.refine_twin`).  With the GA every candidate's readout is refitted exactly (least
squares on its own measurement; multinomial logistic regression for cross-entropy tasks,
:func:`fit_task_readout`) and kept by the GA.  GA and CMA-ES search along the ``subspace``
directions the twin sees the outputs move along (right singular vectors of the twin's output
Jacobian at the start, each scaled to move the outputs by the same rms, ``subspace_step`` times
the start's root loss): the gap lies there, and a search in every channel spends its readings on
directions that change nothing measurable.  Without a subspace (``subspace=0``) mutations are
scaled per parameter by the twin's sensitivities (``sensitivity_sigma``).  Any task: ``task`` is ``"cos"`` or a
:class:`tc_hw.model.tasks.Task` (data and a loss).  The result also says what the run saw of drift
and whether a recalibration would serve better (``drift``).

A program trained on the twin is uploaded through the calibration and then refined on the board
itself (the out-of-equilibrium paper's answer to the gap between model and hardware).  The GA
(:class:`tc_hw.train.ga.GeneticAlgorithm`, ask/tell) searches directly in **channel volts** of
the trainable elements (biases, couplings, crossbar) plus the digital readout weights, starting
from the calibrated upload; every candidate is clipped to its channel's safe range before it is
sent, so no candidate can ever ask for an unsafe voltage (the search space is the safe box).

One generation: the same input batch for every candidate (``points`` inputs, evenly spaced,
shifted per generation), one bulk upload and **one** batched acquisition of ``samples`` readings
per input per candidate, losses from the ADC-corrected samples; the elites (rows 0..4) are
re-measured with fresh noise every generation.  The generation is logged (:mod:`tc_hw.model.runlog`),
then the GA state is checkpointed atomically (``<log>.ga.h5``).  A connection fault the driver
cannot recover aborts the generation, which is then redone whole (never half-counted).  While
the board temperature is outside ``temp_band`` the loop pauses, says so, and waits.

Resuming (``resume=True``) reopens the log and the checkpoint; a generation that was logged but
not checkpointed is redone.  With a backend whose noise can be seeded (the twin's ``reseed``),
every acquisition's seed is derived from ``(seed, generation)`` (:mod:`tc_hw.model.seeds`; ``common_noise``: the same noise
for every candidate of a generation, so that their differences come from the parameters only; else
``(seed, generation, candidate)``), so a resumed run ends with exactly the parameters and losses
of an uninterrupted one.  A board's noise cannot be seeded: there every candidate has its own.

Noise, and why the result can never be worse than the start
-----------------------------------------------------------
A candidate's loss is estimated from ``points x samples`` readings.  Its noise is large: with
an output variance ``s^2`` of about 1 per reading (the demo's program on the default board), 25
x 50 readings have a bias ``s^2 / 50 = 0.02`` and a spread of about 0.014 on a loss of 0.03,
while what refinement can gain is a few thousandths.  Three things follow:

* ``debias`` (default): the loss of a candidate is corrected for its finite ``samples``,
  ``mean_p[(ybar_p - y_p)^2 - s_p^2 / samples + s_p^2 / final_samples]`` (``s_p^2`` the sample
  variance of the output at input ``p``), an unbiased estimate of the loss that the final
  measurement (``final_samples`` readings per input) reports.  Without it the GA would favour
  quiet candidates over accurate ones ``final_samples / samples`` times too strongly.
* ``readout_fit`` (default): before the GA, the start program is measured once with
  ``final_points x final_samples`` readings and the digital readout ``f`` is fitted to that
  measurement by least squares (an exact, cheap step that no amount of noisy search matches: it
  absorbs the board's output gains and offsets the calibration left).  The GA starts from this
  refitted program (unmutated, as row 0 of generation 0) and then mutates the analog elements
  only (a readout mutation of the default size would cost about as much as the whole loss).
* The end: the start program (as uploaded), the start with the fitted readout and the GA's best
  are measured together, with the same fresh ``final_points x final_samples`` measurement (the
  start's analog program is measured once and read out both ways).  The GA's best is the minimum
  of many noisy estimates (the winner's curse), so it is often no better than the start: it is
  kept only when it beats the start (with the fitted readout) by a one-sided z test at level
  ``keep_alpha`` on this fresh measurement (:func:`keep_test`; its difference, standard error
  and the improvement it detects with 80 % power are in ``keep_test``); otherwise the better of
  the two starts is kept (``kept`` says which).  A method no better than the start is kept with
  probability at most ``keep_alpha``.  These figures are written to the log's ``/entry/final``
  group after the run.

Noise-aware GA (``rungs``, ``max_factor``, ``max_readings``): each generation is a successive
halving on its common inputs (every candidate measured with ``samples`` readings per input, the
better half measured again with twice as many fresh readings, and so on for ``rungs`` rungs; a
candidate's loss pools its measurements; the elites come from the last rung), the base readings
double (up to ``max_factor`` times) once the candidates' spread of losses is no larger than one
candidate's standard error (:meth:`_Problem.loss_se`), and ``max_readings`` caps the run's
readings (the run stops before a generation that would pass it: ``stop`` is ``"readings"``).

CMA-ES scores each candidate with its exact readout (``cma_readout_fit``) and the debias term of
that readout's noise, and measures each candidate with readings that double (up to ``max_factor``)
by the GA's rule (:class:`tc_hw.train.cmaes.CMAES`); without ``max_readings`` it stops before a
generation that would pass the readings of ``generations`` generations at ``samples``.  Its program
is the distribution mean, which then goes through the same final comparison and keep test.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Protocol, runtime_checkable

import h5py
import numpy as np

from calibration import map_params
from calibration.mapping import channel_values
from sim_backend.population import population_reset

from .model import seeds
from .model.device import DeviceError, Seedable, armed, reconnect_count
from .model.params import Params
from .model.runlog import RunLog, read_log
from .model.tasks import Task, cos_task
from .refine_twin import TwinGuided, TwinModel
from .train.cmaes import CMAES
from .train.ga import GeneticAlgorithm

__all__ = ["RefineConfig", "refine", "measure_cos_loss", "read_final", "gap_closed", "METHODS", "twin_task_loss",
           "fit_task_readout", "keep_test"]

TRAINABLE_KINDS = ("B", "C", "W")


@dataclass(frozen=True)
class RefineConfig:
    """Sizes and settings of a refinement run (defaults: one generation of a 32-node emulated
    board in a few seconds here)."""

    generations: int = 30
    population: int = 20
    elites: int = 5
    points: int = 25  #: inputs per generation
    samples: int = 100  #: readings per input per candidate
    mutation: float = 0.02  #: mutation of a parameter with fan-in 1, in program units
    seed: int = 0
    temp_band: tuple | None = None  #: (low, high) kelvin; None: calibration temperature +- 5 K
    pause_poll_s: float = 2.0
    max_pause_s: float = 3600.0
    max_seconds: float | None = None
    retries: int = 3  #: attempts per generation after unrecovered device faults
    final_points: int = 250
    final_samples: int = 1000
    debias: bool = True  #: candidate losses estimate the loss at ``final_samples`` readings per input
    common_noise: bool = True  #: seedable backends: one noise seed per generation for every candidate
    readout_fit: bool = True  #: least-squares readout fitted to a start measurement before the GA
    input_scale: float = 1.0  #: the board's input line carries ``input_scale * z`` (crossbar weights / it)
    method: str = "ga"  #: ``ga`` (default), ``cma`` (CMA-ES, the ``cma`` package) or ``twin-guided``
    trials: int = 4  #: twin-guided: trial steps per iteration (population = trials + 1)
    radius: float = 0.05  #: twin-guided: initial trust radius, fraction of each channel's half span
    twin_samples: int = 64  #: twin-guided: twin runs per input for the Jacobian (common random numbers)
    twin_dt: float = 1e-2  #: twin-guided: twin time step (program units)
    jacobian_step: float = 0.01  #: twin-guided: finite-difference step, fraction of each channel's half span
    sensitivity_sigma: bool = True  #: ga/cma: mutation scale per parameter set by its effect on the twin
    subspace: int = 12  #: ga/cma: search along the twin's r most visible output directions (0: every channel)
    subspace_step: float = 0.3  #: ga/cma: rms output change of one mutation, fraction of sqrt(start loss)
    rungs: int = 3  #: ga: successive-halving rungs per generation (best half re-measured with twice the readings)
    max_factor: int = 4  #: ga/cma: the base readings per candidate may double up to this factor as the population converges
    elite_memory: float = 0.0  #: ga: fraction of an elite's readings carried into the next generation's estimate
    cma_readout_fit: bool = True  #: cma: each candidate's loss with the readout fitted to its own measurement
    recombine: bool = True  #: ga: one child per generation is the elites' centroid
    max_readings: int | None = None  #: stop before a generation that would take the run past this many readings
    keep_alpha: float = 0.05  #: the method's program is kept only if it beats the start at this one-sided level
    keep_samples: int | None = None  #: readings per input of the final comparison (None: ``final_samples``)

    def __post_init__(self):
        _validate(self)


METHODS = ("ga", "cma", "twin-guided")


def _validate(cfg: "RefineConfig") -> None:
    """Refuse sizes and ranges that cannot make a run (ValueError naming the setting)."""
    import math

    if cfg.method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    for name, least in (("generations", 0), ("population", 2), ("elites", 1), ("points", 2), ("samples", 2),
                        ("final_points", 2), ("final_samples", 2), ("trials", 1), ("twin_samples", 1),
                        ("retries", 0), ("subspace", 0), ("rungs", 1), ("max_factor", 1)):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {v!r}")
    if cfg.elites >= cfg.population:
        raise ValueError(f"elites ({cfg.elites}) must be smaller than population ({cfg.population})")
    for name in ("mutation", "radius", "twin_dt", "jacobian_step", "input_scale", "pause_poll_s", "max_pause_s",
                 "subspace_step"):
        v = getattr(cfg, name)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    if cfg.keep_samples is not None and (isinstance(cfg.keep_samples, bool) or not isinstance(
            cfg.keep_samples, (int, np.integer)) or cfg.keep_samples < 2):
        raise ValueError(f"keep_samples must be an integer >= 2 or None, got {cfg.keep_samples!r}")
    if cfg.max_readings is not None and (isinstance(cfg.max_readings, bool) or not isinstance(
            cfg.max_readings, (int, np.integer)) or cfg.max_readings < 1):
        raise ValueError(f"max_readings must be an integer >= 1 or None, got {cfg.max_readings!r}")
    if not (isinstance(cfg.elite_memory, (int, float)) and 0 <= cfg.elite_memory <= 1):
        raise ValueError(f"elite_memory must be a number in 0..1, got {cfg.elite_memory!r}")
    if not (isinstance(cfg.keep_alpha, (int, float)) and 0 < cfg.keep_alpha < 0.5):
        raise ValueError(f"keep_alpha must be a number in (0, 0.5), got {cfg.keep_alpha!r}")
    if cfg.max_seconds is not None and not (math.isfinite(cfg.max_seconds) and cfg.max_seconds > 0):
        raise ValueError(f"max_seconds must be a finite number > 0, got {cfg.max_seconds!r}")
    if cfg.temp_band is not None:
        band = tuple(cfg.temp_band)
        if len(band) != 2 or not all(isinstance(t, (int, float)) and math.isfinite(t) for t in band):
            raise ValueError(f"temp_band must be two finite temperatures in kelvin, got {cfg.temp_band!r}")
        if not 0 < band[0] < band[1] <= 1000:
            raise ValueError(f"temp_band must be LOW < HIGH within 0..1000 K, got {band[0]}..{band[1]}")


#: Settings a run log written before they existed was made with (used when resuming such a run).
_OLD_DEFAULTS = {"debias": False, "common_noise": False, "readout_fit": False, "sensitivity_sigma": False,
                 "subspace": 0, "rungs": 1, "max_factor": 1, "cma_readout_fit": False, "recombine": False}


def _as_task(z) -> Task:
    """A batch as a :class:`~tc_hw.model.tasks.Task`: a task as it is, an array ``z`` (P, 1) of the cos task's inputs
    as the cos task on those inputs."""
    if isinstance(z, Task):
        return z
    z = np.asarray(z, float)
    return Task("cos", z, "mse", targets=np.cos(2 * np.pi * z[:, 0]))


class _Problem:
    """The cos task on a device: vector <-> (volts, readout), and the measured loss."""

    def __init__(self, device, params: Params, cal, cfg: RefineConfig, trainable=None):

        self.device, self.params, self.cal, self.cfg = device, params, cal, cfg
        self.readings = 0  #: board readings taken so far (every acquisition, every candidate)
        self.task: Task | None = None  #: the task (None: the cos task on continuous inputs)
        cmap = device.channel_map
        self.volts0 = map_params(params, cal, cmap)
        fan = params.network.fan_in() + params.network.degree()
        if trainable is None:
            # the program's biases, couplings and crossbar weights, on nodes that are part of the
            # computer (a board element the program lacks, or a bias of a node coupled to nothing,
            # stays where the mapping put it: at its calibrated zero)
            _, src = channel_values(params, cmap)
            trainable = [c.index for c in cmap if c.kind in TRAINABLE_KINDS and src[c.index][1] is not None
                         and self._fan(c, fan) > 0]
        self.trainable = np.asarray(trainable, dtype=np.int64)
        # candidates stay inside each channel's safe range and its calibrated span
        spans = np.array([cal.span(i) for i in self.trainable]).reshape(-1, 2)
        self.lo = np.maximum([cmap[i].vmin for i in self.trainable], spans[:, 0])
        self.hi = np.minimum([cmap[i].vmax for i in self.trainable], spans[:, 1])
        if params.readout is None:
            raise ValueError("refinement needs readout weights in the parameter file")
        self.n_y = int(params.readout.shape[0])  #: outputs of the readout (1 for cos)
        self.readout0 = params.readout.ravel().copy()
        self.outputs = np.asarray(params.network.outputs)
        self.time_s = device.tau_s * params.mobility * params.kT * 1.0  # t_f = 1 program unit
        gain = np.abs(np.array([cmap[i].gain for i in self.trainable], dtype=float))
        fan_ch = np.maximum(np.array([self._fan(cmap[i], fan) for i in self.trainable], dtype=float), 1.0)
        with np.errstate(divide="ignore"):
            step = np.where(gain > 0, cfg.mutation / params.kT / np.where(gain > 0, gain, 1.0) / np.sqrt(fan_ch), 0.0)
        self.sigma = np.concatenate([step, np.full(self.readout0.size, cfg.mutation)])

    @staticmethod
    def _fan(c, fan) -> float:
        return float(fan[c.a]) if c.kind == "B" else float(fan[c.b]) if c.kind == "W" else 0.5 * (fan[c.a] + fan[c.b])

    @property
    def x0(self) -> np.ndarray:
        return np.concatenate([self.volts0[self.trainable], self.readout0])

    def split(self, v) -> tuple[np.ndarray, np.ndarray]:
        """Channel volts (all channels; trainable ones clipped into the safe box) and readout."""
        k = len(self.trainable)
        volts = self.volts0.copy()
        volts[self.trainable] = np.clip(v[:k], self.lo, self.hi)
        return volts, np.asarray(v[k:])

    def readout_matrix(self, f) -> np.ndarray:
        """The readout vector ``f`` as the matrix (n_y, n_out) applied to output-node means."""
        return np.asarray(f, float).reshape(self.n_y, -1)

    def device_inputs(self, z) -> np.ndarray:
        """The task's inputs (P, k) (or the cos inputs ``z``, (P, 1)) as the board's input batch:
        line ``j < k`` carries ``cfg.input_scale * input_j``, any further lines of the board carry 0."""
        x = _as_task(z).inputs
        k = max(1, int(getattr(self.device, "n_inputs", 1) or 1))
        if x.shape[1] > k:
            raise ValueError(f"the task has {x.shape[1]} inputs, the board {k} input lines")
        inputs = np.zeros((len(x), k))
        inputs[:, : x.shape[1]] = self.cfg.input_scale * x
        return inputs

    def means(self, population, z, seeds, samples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean output-node readings (C, P, n_out) and the variance of each candidate's own readout
        ``f . x`` over the readings (C, P) (:meth:`moments`)."""
        xbar, cov = self.moments(population, z, seeds, samples)
        return xbar, self.readout_var(cov, [self.split(v)[1] for v in population])

    def readout_var(self, cov, readouts) -> np.ndarray:
        """Variance of one reading of the read-out output(s) (C, P), summed over the readout's rows,
        from the output nodes' covariance ``cov`` (C, P, n_out, n_out) and a readout per candidate."""
        f = np.stack([self.readout_matrix(r) for r in readouts])  # (C, n_y, n_out)
        return np.einsum("cyi,cpij,cyj->cp", f, np.asarray(cov, float), f)

    def moments(self, population, z, seeds, samples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean output-node readings (C, P, n_out) and their covariance over the readings (C, P,
        n_out, n_out; zeros with one reading), one upload and one acquisition of ``samples``
        readings per input for each candidate (default ``cfg.samples``).  A readout's variance is
        :meth:`readout_var` of it, so a candidate scored with a readout fitted afterwards gets the
        noise of that readout, not of the one it was sent with."""
        n_out = len(self.outputs)
        xbar = np.empty((len(population), len(z), n_out))
        cov = np.zeros((len(population), len(z), n_out, n_out))
        dev = self.device
        self.readings += len(population) * len(z) * int(samples or self.cfg.samples)
        dev.set_inputs(self.device_inputs(z))
        for c, v in enumerate(population):
            volts = self.split(v)[0]
            dev.set_channels(volts)
            if seeds is not None and isinstance(dev, Seedable):
                dev.reseed(seeds[c])
            with armed(dev):
                acq = dev.acquire("reset", self.time_s, samples or self.cfg.samples, nodes=self.outputs)
            x = self.cal.adc.correct(acq.volts, self.outputs)  # (P, M, n_out)
            xbar[c] = x.mean(axis=1)
            if x.shape[1] > 1:
                d = x - xbar[c][:, None, :]
                cov[c] = np.einsum("pmi,pmj->pij", d, d) / (x.shape[1] - 1)
        return xbar, cov

    def loss_of(self, xbar, f, var, samples: int, z) -> float:
        """The task loss of mean readings ``xbar`` (P, n_out) read out with ``f``; with
        ``cfg.debias`` (mse tasks) corrected from ``samples`` to ``cfg.final_samples`` readings per input."""
        task = _as_task(z)
        err = task.score(xbar @ self.readout_matrix(f).T)
        if task.loss == "mse" and self.cfg.debias and samples > 1 and samples != self.cfg.final_samples:
            err += float(np.mean(var)) * (1.0 / self.cfg.final_samples - 1.0 / samples)
        return err if np.isfinite(err) else np.inf

    def loss_se(self, xbar, f, var, samples: int, z) -> float | None:
        """Standard error of :meth:`loss_of` from the measurement's own noise (mse tasks; None
        otherwise): ``sqrt(sum_p (4 e_p^2 v_p / m + 2 v_p^2 / m^2)) / P`` with ``e_p`` the error
        of the mean output at input ``p``, ``v_p`` the variance of one reading of the read-out
        output and ``m`` the readings per input (the variance of ``(e + n)^2``, ``n ~ N(0, v / m)``)."""
        task = _as_task(z)
        if task.loss != "mse":
            return None
        err = np.asarray(xbar) @ self.readout_matrix(f).T - task.fit_targets().reshape(len(xbar), -1)
        e = np.sqrt(np.sum(err**2, axis=-1))  # several outputs: |e_p| with v_p their summed variance (a bound)
        v = np.asarray(var, float)
        m = float(samples)
        total = float(np.sum(4.0 * e**2 * v / m + 2.0 * v**2 / m**2))
        return float(np.sqrt(max(total, 0.0))) / len(e) if np.isfinite(total) else None

    def losses(self, population, z, seeds, samples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Loss of every candidate (one upload and one acquisition of ``samples`` readings per
        input each, default ``cfg.samples``) and the mean outputs."""
        m = samples or self.cfg.samples
        xbar, var = self.means(population, z, seeds, m)
        out, ys = np.empty(len(population)), []
        for c, v in enumerate(population):
            f = self.split(v)[1]
            ys.append(xbar[c] @ self.readout_matrix(f).T)
            out[c] = self.loss_of(xbar[c], f, var[c], m, z)
        return out, np.array(ys)

    def fit_readout(self, xbar, z) -> np.ndarray | None:
        """Least-squares readout (as a vector) for mean readings ``xbar`` (P, n_out), or None if it fails."""
        f = fit_task_readout(_as_task(z), xbar)
        return None if f is None or f.shape[0] != self.n_y else f.ravel()

    def exact_readouts(self, xbar, z, readouts) -> list:
        """Each candidate's readout fitted to its own mean readings ``xbar[c]`` (C, P, n_out), the
        given ``readouts[c]`` where the fit fails."""
        fits = [self.fit_readout(x, z) for x in xbar]
        return [f0 if f is None else f for f, f0 in zip(fits, readouts)]

    def better_readout(self, xbar, var, samples: int, z, readout) -> np.ndarray:
        """The readout fitted to this measurement (``xbar`` (P, n_out), ``var``) where it has the
        lower loss, else ``readout``."""
        fit = self.fit_readout(xbar, z)
        if fit is not None and self.loss_of(xbar, fit, var, samples, z) < self.loss_of(xbar, readout, var, samples, z):
            return fit
        return readout


#: Ridge of the multinomial logistic readout, per example (keeps separable classes finite).
LOGISTIC_RIDGE = 1e-4


def fit_task_readout(task: Task, xbar, *, newton_steps: int = 20) -> np.ndarray | None:
    """The exact readout (n_y, n_out) of output-node means ``xbar`` (P, n_out) for ``task``'s loss.

    ``mse``: least squares to the targets.  ``cross-entropy`` (and ``accuracy``): multinomial
    logistic regression, ``min_F mean_p -log softmax(F x_p)[label_p] + ridge |F|^2 / 2``, by
    Newton steps with a backtracking line search from the least-squares fit to the one-hot labels
    (whose logits are poorly scaled: a probe fitted to 0/1 targets is not a log-probability).
    The problem is convex, so the steps converge to its one optimum.  None if the fit fails.
    """
    f = task.fit_readout(xbar)
    if f is None or task.loss == "mse":
        return f
    x = np.asarray(xbar, np.float64)
    y = np.eye(task.n_outputs)[task.labels]
    lam = LOGISTIC_RIDGE

    def objective(w):
        return task.score(x @ w.T) + 0.5 * lam * float(np.sum(w * w))

    w, obj = np.asarray(f, float), objective(np.asarray(f, float))
    n_y, n_out = w.shape
    for _ in range(newton_steps):
        p = _softmax(x @ w.T)  # (P, n_y)
        grad = ((p - y).T @ x) / len(x) + lam * w  # (n_y, n_out)
        # Hessian of the mean cross-entropy: mean_p (diag(p) - p p^T) kron x x^T, plus the ridge
        a = np.einsum("pi,ij->pij", p, np.eye(n_y)) - np.einsum("pi,pj->pij", p, p)
        h = np.einsum("pij,pk,pl->ikjl", a, x, x).reshape(n_y * n_out, n_y * n_out) / len(x)
        h += lam * np.eye(n_y * n_out)
        step = np.linalg.lstsq(h, grad.ravel(), rcond=None)[0].reshape(n_y, n_out)
        t = 1.0
        while t > 1e-6 and not objective(w - t * step) < obj:
            t *= 0.5
        if t <= 1e-6:
            break
        w = w - t * step
        new = objective(w)
        if obj - new < 1e-12 * max(1.0, abs(obj)):
            obj = new
            break
        obj = new
    return w if np.all(np.isfinite(w)) else np.asarray(f, float)


def _softmax(z) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def measure_cos_loss(device, params: Params, cal, *, points: int = 250, samples: int = 1000, seed: int = 0,
                     volts=None, input_scale: float = 1.0, readout=None) -> float:
    """cos(2 pi z) loss of ``params`` uploaded through ``cal`` (or of given ``volts``, all
    channels, and ``readout`` (n_out,)), measured on ``device`` with ``points`` inputs and
    ``samples`` readings each (the input line carrying ``input_scale * z``: a program whose
    crossbar weights were divided by ``input_scale``); :func:`measure_cos_losses` gives the
    unbiased loss too."""
    return measure_cos_losses(device, params, cal, points=points, samples=samples, seed=seed, volts=volts,
                              input_scale=input_scale, readout=readout)[0]


def measure_cos_losses(device, params: Params, cal, *, points: int = 250, samples: int = 1000, seed: int = 0,
                       volts=None, input_scale: float = 1.0, readout=None) -> tuple[float, float]:
    """``(loss, unbiased loss)`` of :func:`measure_cos_loss` from one measurement: the unbiased one
    subtracts the variance of each input's mean answer (the readings' variance over ``samples``), as
    :func:`~tc_hw.model.tasks.cos_loss_unbiased` does on the twin."""
    prob = _Problem(device, params, cal, RefineConfig(final_samples=samples, input_scale=input_scale))
    z, _ = cos_task(points)
    f = prob.readout0 if readout is None else np.asarray(readout, float)
    v = np.concatenate([prob.volts0[prob.trainable] if volts is None else np.asarray(volts)[prob.trainable], f])
    xbar, var = _retrying(prob.cfg, "the measurement", lambda: prob.means(v[None, :], z, [seed], samples))
    loss = float(prob.loss_of(xbar[0], f, var[0], samples, z))
    return loss, float(loss - np.mean(var[0]) / samples)


def _wait_for_band(device, band, cfg: RefineConfig, bar) -> tuple[float, float]:
    """Pause while the temperature is outside ``band``; returns (temperature, seconds paused)."""
    t0 = time.monotonic()
    temp = float(device.temperature())
    while not band[0] <= temp <= band[1]:
        if time.monotonic() - t0 > cfg.max_pause_s:
            raise DeviceError(f"board temperature {temp:.2f} K outside {band[0]:.2f}..{band[1]:.2f} K "
                              f"for {cfg.max_pause_s:.0f} s: giving up")
        msg = f"paused: board at {temp:.2f} K, outside {band[0]:.2f}..{band[1]:.2f} K; waiting"
        if bar is not None:
            bar.set_description_str(msg)
        else:
            print(msg, file=sys.stderr)
        time.sleep(cfg.pause_poll_s)
        temp = float(device.temperature())
    return temp, time.monotonic() - t0


def _attempts(cfg: RefineConfig, what: str, measure):
    """``measure()``, redone whole (up to ``cfg.retries`` times) after a fault the driver could not
    recover; returns ``(its value, failed attempts)``.  The one retry loop of refinement."""
    for attempt in range(cfg.retries + 1):
        try:
            return measure(), attempt
        except DeviceError as e:
            if attempt == cfg.retries:
                raise
            print(f"refine: {what}, attempt {attempt + 1} failed ({e}); redoing it", file=sys.stderr)


def _retrying(cfg: RefineConfig, what: str, measure):
    """``measure()`` through :func:`_attempts`; returns its value."""
    return _attempts(cfg, what, measure)[0]


def _stored_config(stored: dict, cfg: RefineConfig) -> RefineConfig:
    """The configuration of a logged run (settings it predates get their old behaviour)."""
    known = {f.name for f in fields(RefineConfig)}
    d = {**_OLD_DEFAULTS, **{k: v for k, v in stored.items() if k in known}}
    d["temp_band"] = tuple(d["temp_band"]) if d.get("temp_band") else None
    d["generations"] = max(cfg.generations, int(d["generations"]))
    return RefineConfig(**d)


def _subset(task: Task, idx) -> Task:
    idx = np.asarray(idx)
    return Task(task.name, task.inputs[idx], task.loss, targets=None if task.targets is None else task.targets[idx],
                labels=None if task.labels is None else task.labels[idx])


def _design(cfg: RefineConfig, task: Task | None = None):
    """The twin-guided method's fixed design inputs: cos, midpoints of ``points`` equal cells of
    [0, 1] (points, 1); a task, ``points`` examples evenly strided through it."""
    if task is None:
        return ((np.arange(cfg.points) + 0.5) / cfg.points)[:, None]
    return _subset(task, np.unique(np.linspace(0, task.n_examples - 1, min(cfg.points, task.n_examples)).round()
                                   .astype(int)))


def _batch(cfg: RefineConfig, g: int, task: Task | None = None):
    """The GA/CMA input batch of generation ``g`` (the same for every candidate): cos, evenly
    spaced, shifted by a seeded offset; a task, ``points`` examples drawn without replacement."""
    rng = seeds.rng(cfg.seed, seeds.REFINE_BATCH, g)
    if task is None:
        shift = rng.uniform(0, 1 / cfg.points)
        return (np.arange(cfg.points) / cfg.points + shift)[:, None]
    return _subset(task, np.sort(rng.choice(task.n_examples, min(cfg.points, task.n_examples), replace=False)))


def _new_optimizer(cfg: RefineConfig, prob: "_Problem", x_start, sigma, fit_known: bool, loss0: float | None = None):
    """The method's optimiser at the start (GA, CMA-ES or twin-guided)."""
    basis = None
    if cfg.method in ("ga", "cma") and (cfg.sensitivity_sigma or cfg.subspace):
        jac = _output_jacobian(cfg, prob, x_start)
        if cfg.sensitivity_sigma:
            sigma = _sensitivity_sigma(jac, sigma)
        if cfg.subspace:
            basis = _subspace_basis(jac, cfg.subspace, _step_rms(cfg, prob, loss0), x_start.size)
    if cfg.method == "ga":

        return GeneticAlgorithm(x_start, sigma, init_sigma=sigma, population=cfg.population, elites=cfg.elites,
                                seed=cfg.seed, max_generations=cfg.generations, max_seconds=cfg.max_seconds,
                                start_with_x0=True, mutation_basis=basis, rungs=cfg.rungs,
                                max_factor=cfg.max_factor, elite_memory=cfg.elite_memory,
                                recombine=cfg.recombine)
    if cfg.method == "cma":

        return CMAES(x_start, sigma, population=cfg.population, seed=cfg.seed, max_generations=cfg.generations,
                     basis=basis, max_factor=cfg.max_factor)

    z = _design(cfg, prob.task)
    xbar, _ = _retrying(cfg, "the start measurement at the design inputs", lambda: prob.means(
        x_start[None, :], z, [seeds.derive(cfg.seed, seeds.REFINE_START, 1)], cfg.samples))
    return TwinGuided(x_start, xbar[0], _as_task(z).fit_targets()[:, 0], prob.lo, prob.hi, trials=cfg.trials,
                      radius=cfg.radius, max_generations=cfg.generations)


def _output_jacobian(cfg: RefineConfig, prob: "_Problem", x_start) -> np.ndarray:
    """The twin's Jacobian of the read-out outputs at the design inputs with respect to the
    trainable channels' volts, at ``x_start`` (through the calibration, common random numbers),
    shape (P * n_y, K), output units per volt."""
    k = len(prob.trainable)
    model = _twin_model(cfg, prob)
    z = _design(cfg, prob.task)
    step = cfg.jacobian_step * 0.5 * (prob.hi - prob.lo)
    jac = model.jacobian(x_start[:k], prob.device_inputs(z), step, seeds.derive(cfg.seed, seeds.REFINE_START, 2),
                         hi=prob.hi)
    return np.einsum("pok,yo->pyk", jac, prob.readout_matrix(x_start[k:])).reshape(-1, k)


def _sensitivity_sigma(jac, sigma) -> np.ndarray:
    """Mutation scales of the analog parameters set by their effect (the twin knows it).

    ``rms_k``: the root-mean-square change of the read-out output per volt of channel ``k`` at
    the design inputs (``jac``, (P * n_y, K), :func:`_output_jacobian`).  Every parameter gets
    ``sigma_k = s / rms_k`` with ``s`` the geometric mean of ``sigma_fan_k * rms_k`` over the
    parameters (so the typical step stays the fan-in rule's), clipped to 0.2-5 times the fan-in
    scale ``sigma_fan_k`` (a parameter the twin sees no effect of is not frozen).
    """
    k = jac.shape[1]
    rms = np.sqrt(np.mean(jac**2, axis=0))
    fan = sigma[:k]
    ok = (rms > 0) & (fan > 0)
    out = sigma.copy()
    if not ok.any():
        return out
    target = np.exp(np.mean(np.log(fan[ok] * rms[ok])))
    with np.errstate(divide="ignore"):
        scaled = np.where(rms > 0, target / np.where(rms > 0, rms, 1.0), np.inf)
    out[:k] = np.where(fan > 0, np.clip(scaled, 0.2 * fan, 5.0 * fan), 0.0)
    return out


def _step_rms(cfg: RefineConfig, prob: "_Problem", loss0: float | None) -> float:
    """The rms output change of one subspace mutation: ``subspace_step * sqrt(loss0)`` (the start's
    loss, so steps shrink on a program that is already close), or of the targets' rms without one."""
    if loss0 is not None and np.isfinite(loss0) and loss0 > 0:
        return cfg.subspace_step * float(np.sqrt(loss0))
    y = _as_task(_design(cfg, prob.task)).fit_targets()
    return cfg.subspace_step * 0.1 * float(np.sqrt(np.mean(np.square(y))))


def _subspace_basis(jac, r_max: int, step_rms: float, n_params: int) -> np.ndarray:
    """Mutation basis (n_params, r): the r <= ``r_max`` right singular vectors of the twin's output
    Jacobian ``jac`` (P * n_y, K) with singular values above 1e-3 of the largest, column ``i``
    scaled to ``step_rms sqrt(rows / r) / s_i`` volts, so that a mutation ``basis @ N(0, I_r)``
    changes the read-out outputs by about ``step_rms`` rms, equally along every direction.  The
    readout rows are zero (it is refitted exactly per candidate)."""
    rows, k = jac.shape
    _, s, vt = np.linalg.svd(jac, full_matrices=False)
    r = int(min(r_max, np.sum(s > 1e-3 * s[0]))) if s.size and s[0] > 0 else 0
    basis = np.zeros((n_params, max(r, 1)))
    if r == 0:
        return basis
    basis[:k, :r] = vt[:r].T * (step_rms * np.sqrt(rows / r) / s[:r])
    return basis


def _load_optimizer(cfg: RefineConfig, ckpt: Path):
    if cfg.method == "ga":

        return GeneticAlgorithm.load(ckpt)
    if cfg.method == "cma":

        return CMAES.load(ckpt)

    return TwinGuided.load(ckpt)


def _twin_model(cfg: RefineConfig, prob: "_Problem"):

    return TwinModel(prob.params, prob.cal, prob.device.channel_map, prob.trainable, prob.volts0,
                     dt=cfg.twin_dt, samples=cfg.twin_samples)


def _generation(cfg: RefineConfig, prob: "_Problem", opt, model, g: int):
    """Ask, measure, tell one generation; returns (population, losses, inputs)."""
    if cfg.method == "twin-guided":
        z = _design(cfg, prob.task)
        step = cfg.jacobian_step * 0.5 * (prob.hi - prob.lo)
        jac = model.jacobian(opt.x[: len(prob.trainable)], prob.device_inputs(z), step,
                             seeds.derive(cfg.seed, seeds.REFINE_JACOBIAN, g), hi=prob.hi)
        pop = opt.ask(jac)
    elif cfg.method == "ga":
        return _ga_generation(cfg, prob, opt, g)
    else:
        z = _batch(cfg, g, prob.task)
        pop = opt.ask()
    m = cfg.samples * (opt.samples_factor if isinstance(opt, Metered) else 1)  # CMA-ES: more as it converges
    if cfg.common_noise:
        noise = [seeds.derive(cfg.seed, seeds.REFINE_NOISE, g)] * len(pop)
    else:
        noise = [seeds.derive(cfg.seed, seeds.REFINE_NOISE, g, c) for c in range(len(pop))]
    xbar, cov = prob.moments(pop, z, noise, m)
    fs = [prob.split(v)[1] for v in pop]
    if cfg.method == "cma" and cfg.readout_fit and cfg.cma_readout_fit:  # each candidate scored with its exact readout
        fs = prob.exact_readouts(xbar, z, fs)  # (CMA-ES's vector keeps the start's readout; only the score uses it)
    var = prob.readout_var(cov, fs)  # the noise of the readout scored (the debias term), not of the vector's
    losses = np.array([prob.loss_of(xbar[c], fs[c], var[c], m, z) for c in range(len(pop))])
    if cfg.method == "twin-guided":
        opt.tell(pop, losses, xbar)
    else:
        # each candidate's own noise decides CMA-ES's sample growth; with noise common to the generation
        # (a seedable backend) the candidates' differences carry far less of it, and no se is told
        shared = cfg.common_noise and isinstance(prob.device, Seedable)
        se = [prob.loss_se(xbar[c], fs[c], var[c], m, z) for c in range(len(pop))]
        opt.tell(losses, se=None if shared or None in se else np.array(se))
    return pop, losses


def _rung_noise(cfg: RefineConfig, g: int, rung: int, rows) -> list[int]:
    """Noise seeds of a GA rung's rows (seedable backends): rung 0 as a flat generation
    (``(g,)`` common, ``(g, row)`` per candidate), rung ``r >= 1`` ``(g, r, 0)`` common or
    ``(g, row, r)`` per candidate: fresh noise at every rung."""
    if rung == 0:
        return [seeds.derive(cfg.seed, seeds.REFINE_NOISE, g)] * len(rows) if cfg.common_noise else \
            [seeds.derive(cfg.seed, seeds.REFINE_NOISE, g, int(c)) for c in rows]
    if cfg.common_noise:
        return [seeds.derive(cfg.seed, seeds.REFINE_NOISE, g, rung, 0)] * len(rows)
    return [seeds.derive(cfg.seed, seeds.REFINE_NOISE, g, int(c), rung) for c in rows]


def _ga_generation(cfg: RefineConfig, prob: "_Problem", opt: GeneticAlgorithm, g: int):
    """One GA generation on the board: every rung of its successive halving on the generation's
    inputs, each asked row measured with ``samples * opt.samples_factor`` fresh readings per
    input, its readout refitted exactly on that measurement, its loss and standard error told.
    Returns the generation's population and every row's pooled loss (for the log)."""
    z = _batch(cfg, g, prob.task)
    k = len(prob.trainable)
    while True:
        pop, m = opt.ask(), cfg.samples * opt.samples_factor
        xbar, var = prob.means(pop, z, _rung_noise(cfg, g, opt.rung, opt.rows), m)
        if cfg.readout_fit:  # the exact readout of every candidate, kept by the GA
            pop[:, k:] = prob.exact_readouts(xbar, z, [prob.split(v)[1] for v in pop])
        fs = [prob.split(v)[1] for v in pop]
        losses = np.array([prob.loss_of(xbar[c], fs[c], var[c], m, z) for c in range(len(pop))])
        se = [prob.loss_se(xbar[c], fs[c], var[c], m, z) for c in range(len(pop))]
        told = opt.generation
        opt.tell(losses, population=pop, se=None if None in se else np.array(se))
        if opt.generation > told:
            return opt.last_population, opt.last_losses


def _elite_row(cfg: RefineConfig, opt, losses) -> np.ndarray:
    """The log's ``elite_losses`` row: the selected elites' losses (twin-guided: the current program's)."""
    if cfg.method == "ga":
        return opt.elite_losses
    if cfg.method == "cma":
        return np.sort(losses)[: cfg.elites]
    return np.array([opt.loss])


def refine(device, params: Params, cal, log_path, cfg: RefineConfig = RefineConfig(), *, resume: bool = False,
           progress: bool = True, task: str = "cos") -> dict:
    """Refine ``params`` on ``device`` through calibration ``cal`` by ``cfg.method``; log every generation.

    Parameters
    ----------
    device : tc_hw.model.device.Device
    params : Params
        The program trained on the twin (with readout weights for the cos task).
    cal : calibration.Calibration
    log_path : path
        The run log (HDF5, SWMR); the method's checkpoint goes to ``<log_path>.ga.h5``.
    cfg : RefineConfig
    resume : bool
        Continue the run in ``log_path`` (its stored configuration wins over ``cfg``'s sizes).

    Returns
    -------
    dict
        Measured together at the end with ``final_points`` x ``final_samples`` readings:
        ``uploaded_loss`` (the calibrated upload with the program's own readout),
        ``start_loss`` (the calibrated upload with the least-squares readout fitted to the start
        measurement: the reference a refinement has to beat; the uploaded loss without
        ``readout_fit``), ``method_best_loss`` (the method's best program; also as
        ``ga_best_loss``); ``refined_loss``, the smallest of them, is the loss of the returned
        program (``best_volts``, ``best_readout``) and ``kept`` says which it is (the method's
        name, ``"readout fit"`` or ``"start"``).  ``readings``: board readings the run took
        (start measurements and generations; not the final one, ``final_readings``).  Also
        ``readout_fit_loss`` (= ``start_loss`` with ``readout_fit``), ``start_fit_loss``,
        ``method``, ``generations``, ``stop``, ``seconds``, ``paused_s``, ``retries``, ``log``.
    """
    task_obj = _check_task(params, task, cfg)
    log_path = Path(log_path)
    ckpt = log_path.with_name(log_path.name + ".ga.h5")
    t_start = time.monotonic()
    log, opt, stored, cfg = _resume(log_path, ckpt, cfg) if resume else _fresh(log_path, cfg)
    try:
        prob = _Problem(device, params, cal, cfg, trainable=stored.get("trainable_channels"))
        prob.task = task_obj
        if log is not None:
            prob.readings = _readings_so_far(cfg, stored, log.completed, opt)
        fit, start_fit_loss = _start_fit(cfg, prob, stored, resumed=log is not None, progress=progress)
        if opt is None:
            opt = _start_optimizer(cfg, prob, fit, None if not start_fit_loss else
                                   start_fit_loss["fitted_readout_in_sample"])
        opt.with_config(max_generations=cfg.generations)
        band = _temperature_band(cfg, cal)
        if log is None:
            log = _create_log(log_path, cfg, prob, opt, device, cal, band, task, fit, start_fit_loss)
        if log.completed > opt.generation:  # logged but not checkpointed: redo that generation
            log.truncate(opt.generation)
        stop, paused_s, retries = _loop(cfg, prob, opt, log, ckpt, band, progress)
        result = _final(cfg, prob, opt, fit)
        result["drift"] = _drift(cal, start_fit_loss, result, _temperatures_of(log))
        result.update({"start_fit_loss": start_fit_loss, "generations": int(opt.generation), "stop": stop,
                       "seconds": round(time.monotonic() - t_start, 1), "paused_s": round(paused_s, 1),
                       "retries": int(retries), "log": str(log_path)})
        _write_final(log, result, cfg)  # while the run log's lock is held
    finally:
        if log is not None:
            log.close()
    return result


def _check_task(params: Params, task, cfg: RefineConfig) -> Task | None:
    """The task object (None for the cos task); refuses a task the program or the method cannot serve."""
    task_obj = None if isinstance(task, str) and task == "cos" else task
    if task_obj is None:
        return None
    if not isinstance(task_obj, Task):
        raise ValueError(f"task must be 'cos' or a tc_hw.model.tasks.Task, not {task!r}")
    if params.readout is None or params.readout.shape[0] != task_obj.n_outputs:
        raise ValueError(f"the task {task_obj.name!r} needs a readout with {task_obj.n_outputs} rows; the program "
                         f"has {None if params.readout is None else params.readout.shape[0]}")
    if cfg.method == "twin-guided" and (task_obj.loss != "mse" or task_obj.n_outputs != 1):
        raise ValueError("twin-guided refinement needs a task with one output and the mse loss; "
                         "use --method ga or cma")
    return task_obj


def _fresh(log_path: Path, cfg: RefineConfig):
    """A new run: (no log yet, no optimiser yet, no stored config, ``cfg``); refuses an existing log."""
    if log_path.exists():
        raise FileExistsError(f"{log_path} exists: use --resume to continue that run, or another --log")
    return None, None, {}, cfg


def _resume(log_path: Path, ckpt: Path, cfg: RefineConfig):
    """The logged run: (its log, reopened and locked; its optimiser from the checkpoint or None;
    its stored config; its configuration)."""
    log = RunLog.reopen(log_path)
    try:
        stored = log.config
        cfg = _stored_config(stored["refine"], cfg)
        opt = _load_optimizer(cfg, ckpt) if ckpt.exists() else None
    except BaseException:
        log.close()
        raise
    return log, opt, stored, cfg


def _population_size(cfg: RefineConfig) -> int:
    return cfg.trials + 1 if cfg.method == "twin-guided" else cfg.population


@runtime_checkable
class Metered(Protocol):
    """An optimiser that measures its candidates in a varying number of units of ``points x
    samples`` readings (the GA's rungs and growing samples, CMA-ES's growing samples)."""

    @property
    def samples_factor(self) -> int: ...  # units per candidate of the next ask

    @property
    def units(self) -> int: ...  # units asked so far

    def generation_units(self) -> int: ...  # units the next generation takes


def _readings_so_far(cfg: RefineConfig, stored: dict, completed: int, opt=None) -> int:
    """Board readings of a resumed run's first sessions: its start measurements and ``completed``
    generations (a :class:`Metered` optimiser counts what it asked, ``opt.units`` units of
    ``points x samples``)."""
    if isinstance(opt, Metered):
        return int(stored.get("start_readings", 0)) + int(opt.units) * cfg.points * cfg.samples
    return int(stored.get("start_readings", 0)) + completed * cfg.points * cfg.samples * _population_size(cfg)


def _next_readings(cfg: RefineConfig, opt) -> int:
    """Board readings the optimiser's next generation takes (every rung of the GA's)."""
    units = opt.generation_units() if isinstance(opt, Metered) else _population_size(cfg)
    return int(units) * cfg.points * cfg.samples


def _out_of_readings(cfg: RefineConfig, prob: "_Problem", opt) -> bool:
    """True when the next generation would take the run past ``cfg.max_readings``; CMA-ES without
    it: past the readings of ``generations`` generations at ``samples`` (its grown sample sizes spend
    that budget in fewer generations)."""
    if cfg.max_readings is not None:
        return prob.readings + _next_readings(cfg, opt) > cfg.max_readings
    if cfg.method == "cma":
        return opt.units + opt.generation_units() > cfg.generations * cfg.population
    return False


def _final_inputs(cfg: RefineConfig, prob: "_Problem"):
    """The start and final measurement's inputs: the cos task's ``final_points`` or the whole task."""
    return cos_task(cfg.final_points)[0] if prob.task is None else prob.task


def _start_fit(cfg: RefineConfig, prob: "_Problem", stored: dict, *, resumed: bool, progress: bool):
    """The least-squares readout fitted to one start measurement (``final_points x final_samples``)
    and the start's losses with its own and the fitted readout; a resumed run's from its log.
    Returns ``(fit or None, {"given_readout", "fitted_readout_in_sample"} or None)``."""
    if not cfg.readout_fit:
        return None, None
    if resumed:
        fit = stored.get("readout_fit")
        return (None if fit is None else np.asarray(fit, float)), stored.get("start_fit_loss")
    if progress:
        print("refine: measuring the start program and fitting its readout", file=sys.stderr, flush=True)
    z = _final_inputs(cfg, prob)
    xbar, var = _retrying(cfg, "the start measurement", lambda: prob.means(
        prob.x0[None, :], z, [seeds.derive(cfg.seed, seeds.REFINE_START, 0)], cfg.final_samples))
    fit = prob.fit_readout(xbar[0], z)
    if fit is None:
        return None, None
    m = cfg.final_samples
    return fit, {"given_readout": prob.loss_of(xbar[0], prob.readout0, var[0], m, z),
                 "fitted_readout_in_sample": prob.loss_of(xbar[0], fit, var[0], m, z)}


def _start_optimizer(cfg: RefineConfig, prob: "_Problem", fit, loss0: float | None = None):
    """The method's optimiser at the calibrated upload (with the fitted readout, which is then
    frozen for the GA and CMA-ES: the search is in the analog elements)."""
    x_start = prob.x0 if fit is None else np.concatenate([prob.volts0[prob.trainable], fit])
    sigma = prob.sigma.copy()
    if fit is not None:
        sigma[len(prob.trainable):] = 0.0
    return _new_optimizer(cfg, prob, x_start, sigma, fit is not None, loss0)


def _temperature_band(cfg: RefineConfig, cal) -> tuple:
    """Kelvin band the board must be in to measure: ``cfg.temp_band`` or the calibration's +- 5 K
    (no band when the calibration has no temperature)."""
    band = cfg.temp_band or (cal.temperature_k - 5.0, cal.temperature_k + 5.0)
    return band if np.all(np.isfinite(band)) else (-np.inf, np.inf)


def _create_log(log_path, cfg, prob, opt, device, cal, band, task, fit, start_fit_loss) -> RunLog:
    """The new run log (locked), with the run's configuration and start figures."""
    config = {"task": task if prob.task is None else prob.task.name, "refine": asdict(cfg),
              "n_trainable_channels": int(len(prob.trainable)),
              "trainable_channels": prob.trainable.tolist(), "time_s": prob.time_s,
              "readout_fit": None if fit is None else fit.tolist(), "start_fit_loss": start_fit_loss,
              "start_readings": int(prob.readings)}
    instrument = {"identity": device.identity, "technology": device.technology,
                  "calibration_entry": str(getattr(cal, "entry", "")),
                  "calibration_hash": str(getattr(cal, "hash", "")), "temp_band_k": list(band)}
    return RunLog.create(log_path, config, population=_population_size(cfg), n_params=opt.n_params,
                         elites=1 if cfg.method == "twin-guided" else cfg.elites, instrument=instrument)


def _loop(cfg: RefineConfig, prob: "_Problem", opt, log: RunLog, ckpt: Path, band, progress: bool):
    """Generations until the optimiser stops: wait for the band, measure (retrying), log, checkpoint.
    Returns ``(stop reason, seconds paused, retries)``."""
    from tqdm import tqdm

    model = _twin_model(cfg, prob) if cfg.method == "twin-guided" else None
    paused_total, retries_total, g_start, t_gen = 0.0, 0, opt.generation, time.monotonic()
    bar = tqdm(total=cfg.generations, initial=opt.generation, desc=f"refine ({cfg.method})", unit="gen",
               disable=not progress, file=sys.stderr)
    try:
        while (stop := opt.stop_reason() or ("readings" if _out_of_readings(cfg, prob, opt) else None)) is None:
            g = opt.generation
            temp0, paused = _wait_for_band(prob.device, band, cfg, bar if progress else None)
            bar.set_description_str(f"refine ({cfg.method})")
            t0, r0 = time.monotonic(), reconnect_count(prob.device)
            (pop, losses), failed = _attempts(cfg, f"generation {g}", lambda: _generation(cfg, prob, opt, model, g))
            retries = reconnect_count(prob.device) - r0 + failed
            _log_generation(log, cfg, opt, g, pop, losses, [temp0, float(prob.device.temperature())],
                            time.monotonic() - t0, retries, paused)
            opt.save(ckpt)
            paused_total, retries_total = paused_total + paused, retries_total + retries
            bar.update()
            rate = (opt.generation - g_start) / max(time.monotonic() - t_gen, 1e-9)
            bar.set_postfix(best=f"{opt.best[1]:.3g}", gen_per_min=f"{60 * rate:.1f}")
    finally:
        bar.close()
    return stop, paused_total, retries_total


def _log_generation(log: RunLog, cfg, opt, g: int, pop, losses, temps_k, wall_s: float, retries: int,
                    paused_s: float) -> None:
    """Generation ``g``'s row of the run log."""
    best = int(np.argmin(losses))
    log.append(g, {"population": pop, "losses": losses, "elite_losses": _elite_row(cfg, opt, losses),
                   "best_loss": losses[best], "best": pop[best], "temperature_k": temps_k,
                   "wall_s": wall_s, "retries": retries, "paused_s": paused_s})


def _temperatures_of(log: RunLog) -> np.ndarray:
    """Board temperatures (kelvin) logged before and after every completed generation, (G, 2)."""
    n = log.completed
    if n == 0 or "temperature_k" not in log.g:
        return np.zeros((0, 2))
    return np.asarray(log.g["temperature_k"][:n], float).reshape(-1, 2)


#: Temperature distance from the calibration (kelvin) beyond which a recalibration is advised.
RECAL_TEMP_K = 2.0
#: Relative rise of the unchanged start program's loss over a run beyond which the board drifted.
RECAL_LOSS_RISE = 0.25


def read_temperatures(log_path) -> np.ndarray:
    """Board temperatures (kelvin) logged before and after every generation, shape (G, 2)."""

    try:
        return np.asarray(read_log(log_path)["temperature_k"], float).reshape(-1, 2)
    except (OSError, KeyError):
        return np.zeros((0, 2))


def _drift(cal, start_fit_loss, result: dict, temps) -> dict:
    """What the run saw of the board's drift, and whether a recalibration would serve better.

    Two signs, both measured: the board temperature against the calibration's (the elements
    follow it by up to 0.5 %/K), and the loss of the *unchanged* uploaded program (its own
    readout) at the start of the run and at the end (each ``final_points x final_samples``
    readings): a rise means the board moved under the calibration.  Refinement follows drift
    while the loss stays down; a large, lasting move is the calibration's job.
    """
    t_cal = float(getattr(cal, "temperature_k", float("nan")))
    out = {"calibration_temperature_k": t_cal,
           "temperature_k_start": float(temps[0, 0]) if len(temps) else None,
           "temperature_k_end": float(temps[-1, 1]) if len(temps) else None,
           "uploaded_loss_start": None if not start_fit_loss else float(start_fit_loss["given_readout"]),
           "uploaded_loss_end": result["uploaded_loss"]}
    reasons = []
    if len(temps) and np.isfinite(t_cal):
        dt = float(np.max(np.abs(temps - t_cal)))
        out["max_temperature_offset_k"] = dt
        if dt > RECAL_TEMP_K:
            reasons.append(f"the board ran up to {dt:.1f} K from its calibration temperature {t_cal:.1f} K")
    a, b = out["uploaded_loss_start"], out["uploaded_loss_end"]
    se = result.get("uploaded_loss_se", 0.0)  # each measurement's standard error: the rise must exceed the noise
    if a is not None and b is not None and b > (1 + RECAL_LOSS_RISE) * a and b - a > 3.0 * np.sqrt(2.0) * se:
        reasons.append(f"the uploaded program's loss rose from {a:.4g} to {b:.4g} during the run (drift)")
    out["recalibrate"] = bool(reasons)
    out["advice"] = ("recalibrate: " + "; ".join(reasons)) if reasons else \
        "no recalibration needed: temperature and drift within what refinement follows"
    return out


def _final(cfg: RefineConfig, prob: "_Problem", opt, fit) -> dict:
    """The start and the method's best measured together; the best of them is the result."""
    z_final = cos_task(cfg.final_points)[0] if prob.task is None else prob.task
    best_v, _ = opt.best
    readings = prob.readings
    xbar, var = _retrying(cfg, "the final measurement", lambda: prob.means(
        np.stack([prob.x0, best_v]), z_final, [seeds.derive(cfg.seed, seeds.REFINE_FINAL, 0),
                                           seeds.derive(cfg.seed, seeds.REFINE_FINAL, 1)], _keep_samples(cfg)))
    m = _keep_samples(cfg)
    vb, fb = prob.split(best_v)
    v0, f0 = prob.split(prob.x0)
    if fit is not None:  # the method's analog program with its exact readout (fitted to this measurement)
        fb = prob.better_readout(xbar[1], var[1], m, z_final, fb)
    cands = {"start": (prob.loss_of(xbar[0], f0, var[0], m, z_final), v0, f0)}
    if fit is not None:  # the same measurement of the start's analog program, read out with the fitted readout
        # refitted to this measurement as the method's program is (above), so neither gets an in-sample edge
        fit = prob.better_readout(xbar[0], var[0], m, z_final, fit)
        cands["readout fit"] = (prob.loss_of(xbar[0], fit, var[0], m, z_final), v0, fit)
    cands[cfg.method] = (prob.loss_of(xbar[1], fb, var[1], m, z_final), vb, fb)
    ref = "readout fit" if fit is not None else "start"
    test = keep_test(cands[ref][0], cands[cfg.method][0], prob.loss_se(xbar[0], cands[ref][2], var[0], m, z_final),
                     prob.loss_se(xbar[1], fb, var[1], m, z_final), cfg.keep_alpha)
    if test is None:  # no standard error (cross-entropy tasks): the smallest measured loss
        kept = min(cands, key=lambda k: (cands[k][0], list(cands).index(k)))
    else:  # the method's program only where it beats the start significantly; else the better start
        kept = cfg.method if test["keep"] else min(("start", ref), key=lambda k: cands[k][0])
    refined, volts, f = cands[kept]
    start = cands[ref][0]
    # standard error of the uploaded program's loss estimate (P inputs, m readings, output variance v)
    v, p_count, l0 = float(np.mean(var[0])), len(z_final), float(cands["start"][0])
    extra = {"uploaded_loss_se": float(np.sqrt(max(4 * l0 * v / m + 2 * v * v / m**2, 0.0) / p_count)),
             "keep_test": test}
    if prob.task is not None and prob.task.labels is not None:  # classification: accuracy before and after
        rows = {"start": 0, "readout fit": 0, cfg.method: 1}
        acc = {k: prob.task.accuracy(xbar[rows[k]] @ prob.readout_matrix(cands[k][2]).T) for k in cands}
        extra |= {"start_accuracy": acc["readout fit" if fit is not None else "start"],
                 "refined_accuracy": acc[kept], "uploaded_accuracy": acc["start"], "task": prob.task.name,
                 "loss_name": prob.task.loss}
    return {**extra,"method": cfg.method, "uploaded_loss": float(cands["start"][0]), "start_loss": float(start),
            "readout_fit_loss": float(cands["readout fit"][0]) if fit is not None else None,
            "method_best_loss": float(cands[cfg.method][0]), "ga_best_loss": float(cands[cfg.method][0]),
            "refined_loss": float(refined), "kept": kept, "readings": int(readings),
            "final_readings": int(prob.readings - readings),
            "best_volts": np.asarray(volts).tolist(), "best_readout": np.asarray(f).tolist()}


def _keep_samples(cfg: RefineConfig) -> int:
    """Readings per input of the final comparison of the start and the method's best."""
    return int(cfg.keep_samples or cfg.final_samples)


def keep_test(start_loss: float, method_loss: float, start_se, method_se, alpha: float = 0.05) -> dict | None:
    """Is the method's program better than the start?  A one-sided z test on one final measurement.

    The two losses come from independent readings of the same inputs, so their difference
    ``d = start - method`` has standard error ``se = sqrt(start_se^2 + method_se^2)``; the
    method's program is kept when ``d > z_(1-alpha) se``.  A method no better than the start is
    kept with probability at most ``alpha``; a true improvement ``delta`` is kept with probability
    (power) ``Phi(delta / se - z_(1-alpha))``: 80 % at ``delta = (z_(1-alpha) + 0.84) se``
    (``detectable_80``, reported).  None when a standard error is missing.
    """
    from statistics import NormalDist

    if start_se is None or method_se is None or not np.isfinite([start_loss, method_loss]).all():
        return None
    se = float(np.hypot(start_se, method_se))
    z = NormalDist().inv_cdf(1.0 - alpha)
    d = float(start_loss) - float(method_loss)
    return {"difference": d, "se": se, "alpha": float(alpha), "threshold": z * se, "keep": bool(d > z * se),
            "detectable_80": (z + NormalDist().inv_cdf(0.8)) * se}


def twin_task_loss(params: Params, task: Task, *, samples: int = 1000, dt: float = 1e-3, seed: int = 0) -> dict:
    """The task's loss of ``params`` on the twin (reset sampling to t = 1 program unit, ``samples``
    runs per example, the program's own readout); ``accuracy`` too for classification tasks."""

    net = params.network
    x = population_reset([params], task.inputs[:, : net.n_inputs], 1.0, samples, dt=dt, seed=int(seed),
                         nodes=net.outputs)
    y = params.output(np.asarray(x[0, :, :, -1, :], np.float64).mean(axis=1))
    out = {"loss": task.score(y)}
    if task.labels is not None:
        out["accuracy"] = task.accuracy(y)
    return out


def gap_closed(twin_loss, start_loss, refined_loss) -> float | None:
    """``(start - refined) / (start - twin)``: the fraction of the analog gap a refinement closed
    (None when there is no gap, ``start <= twin``)."""
    gap = float(start_loss) - float(twin_loss)
    return None if not gap > 0 else (float(start_loss) - float(refined_loss)) / gap


def _write_final(log: RunLog, result: dict, cfg: RefineConfig) -> None:
    """The end figures into ``/entry/final`` of the run log, written while its lock is held
    (:meth:`RunLog.write_group`); a failure only warns."""
    attrs = {k: np.nan if result[k] is None else result[k] for k in (
        "uploaded_loss", "start_loss", "readout_fit_loss", "ga_best_loss", "method_best_loss", "refined_loss")}
    attrs.update({"kept": result["kept"], "generations": result["generations"], "method": result["method"],
                  "recalibrate": bool(result.get("drift", {}).get("recalibrate", False)),
                  "advice": str(result.get("drift", {}).get("advice", "")), "readings": result["readings"],
                  "points": cfg.final_points, "samples": cfg.final_samples})
    arrays = {"volts": np.asarray(result["best_volts"], float), "readout": np.asarray(result["best_readout"], float)}
    try:
        log.write_group("final", attrs, arrays)
    except OSError as e:
        print(f"refine: could not write the final figures into {log.path} ({e})", file=sys.stderr)


def read_final(log_path) -> dict | None:
    """The end figures of a finished run (``/entry/final``), or None for a run that has not ended."""
    with h5py.File(log_path, "r", libver="latest", swmr=True) as f:
        g = f.get("entry/final")
        if g is None:
            return None
        out = {k: (v.decode() if isinstance(v, bytes) else v.item() if hasattr(v, "item") else v)
               for k, v in g.attrs.items()}
        out["volts"], out["readout"] = g["volts"][()], g["readout"][()]
        return out
