"""Genetic algorithm of Whitelam & Casert (out-of-equilibrium thermodynamic computing), ask/tell.

The algorithm never evaluates anything itself: :meth:`GeneticAlgorithm.ask` hands out a
population of parameter vectors, the caller measures a loss for each (on the twin, the emulator or
a real board) and passes them to :meth:`GeneticAlgorithm.tell`.  One generation::

    pop = ga.ask()                   # (population, n_params)
    losses = [evaluate(v) for v in pop]
    ga.tell(losses)                  # selection, then mutation of the next population

Selection and mutation (paper, Sec. III B): the ``elites`` candidates with the smallest losses
are kept; the next population is made of clones of them, each parameter mutated by adding
``sigma_i * N(0, 1)``.  The paper uses ``sigma_i = 0.1 / sqrt(C_i)`` with ``C_i`` the fan-in of
parameter ``i`` (:func:`fan_in_sigma`); parameters with ``sigma_i = 0`` are never changed.  The
first population is ``x0 + init_sigma * N(0, 1)`` (paper: every parameter ``N(0, 1e-2)``).

Elites are re-measured.  With ``keep_elites=True`` (default) rows ``0 .. elites-1`` of every
population after the first are the current elites, unmutated, and rows ``elites ..`` are their
mutated clones (parent of row ``r`` is elite ``(r - elites) % elites``).  The caller evaluates the
elites again with fresh noise, and selection uses only these fresh losses: the best of 50 noisy
measurements is biased low, and a lucky candidate would otherwise survive on one good draw.
With ``keep_elites=False`` all rows are mutants (the paper's literal wording).

Noise-aware selection (``rungs > 1``): successive halving inside every generation.  The first
:meth:`~GeneticAlgorithm.ask` of a generation hands out every row, to be measured with the base
amount of readings (:attr:`~GeneticAlgorithm.samples_factor` units); the best ``1/eta`` of them
(never fewer than ``elites``) are asked again, to be measured with ``eta`` times as many fresh
readings, and so on for ``rungs`` rungs.  A row's estimate is the mean of all its losses of the
generation weighted by their readings (so the caller reports each measurement's own loss), and the
elites are chosen among the rows of the last rung only: a candidate becomes an elite after it has
been measured with the most readings, not on one lucky cheap draw.  Each rung costs the same
readings (rows shrink by ``eta``, readings grow by ``eta``), so ``rungs`` rungs cost about
``rungs`` times one flat generation.  With ``rungs=1`` the GA is the plain one above, bit for bit.

Growing sample sizes (``max_factor > 1``): when the caller passes each row's standard error with
the first rung's losses (``tell(..., se=)``) and the rows' spread of losses is no larger than the
noise (``robust_sd(losses)^2 < 2 median(se)^2``, i.e. the rows' true spread is below one row's
noise), the next generation's base measurement doubles, up to ``max_factor`` units.  Converged
populations get the readings they need to be told apart; early ones stay cheap.

Elite memory (``elite_memory = a > 0``, with ``keep_elites``): an elite enters the next
generation with ``a`` times the readings behind its estimate, and that estimate, pooled with its
fresh measurements; a mutant then has to beat an elite measured with many readings, not one
fresh cheap draw of it.  (The estimate was selected, so it is biased low; ``a < 1`` lets fresh
readings outweigh it, and lets a drifting board's old figures fade.)

Recombination (``recombine=True``): the first child of every generation is the centroid of the
elites, unmutated.  Near an optimum the elites are a parent plus mutations that are mostly
across the way to it, each costing about the mutation's size squared; their mean keeps what they
share and averages the rest away, and for a convex loss its loss is at most the elites' mean loss.

Losses must be real numbers; ``+inf`` marks a failed or unstable candidate (never selected unless
everything failed).  NaN, ``-inf`` and a wrong number of losses raise :class:`ValueError`.

Checkpoints (:meth:`GeneticAlgorithm.save`, :meth:`GeneticAlgorithm.load`) are HDF5, no pickle:
the arrays, the history, the configuration and the numpy ``Generator``'s bit-generator state as a
JSON string attribute.  The next population is drawn in :meth:`tell` (or the constructor) and is
part of the state, so a run resumed from any checkpoint asks exactly the same populations as the
uninterrupted run.  Only the wall-time stopping criterion depends on the clock.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from tc_hw.model.params import ELEMENT_KINDS

from ..model import provenance, seeds
from ..model.safeio import open_hdf5_read, replace_atomically

__all__ = ["GeneticAlgorithm", "GAConfig", "fan_in_sigma", "noise_dominates", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "tc-hw/ga-checkpoint"
CHECKPOINT_VERSION = 2  #: 2 adds the successive-halving and sample-growth state


@dataclass(frozen=True)
class GAConfig:
    """Settings of a :class:`GeneticAlgorithm` (all stored in checkpoints).

    Stopping criteria (any that is set ends the run; see :meth:`GeneticAlgorithm.stop_reason`):
    ``max_generations`` generations told; best loss of a generation ``<= target_loss``; no
    improvement of the best loss seen by more than ``min_delta`` for ``patience`` generations;
    ``max_seconds`` of wall time (summed over resumed sessions).
    """

    population: int = 50
    elites: int = 5
    keep_elites: bool = True
    seed: int = 0
    max_generations: int | None = None
    target_loss: float | None = None
    patience: int | None = None
    min_delta: float = 0.0
    max_seconds: float | None = None
    rungs: int = 1  #: successive-halving rungs per generation (1: every row measured once)
    eta: int = 2  #: halving: a rung keeps the best 1/eta rows and measures each eta times as much
    max_factor: int = 1  #: growing sample sizes: the base measurement doubles up to this many units
    elite_memory: float = 0.0  #: fraction of an elite's readings (and its estimate) carried into the next generation
    recombine: bool = False  #: the first child of every generation is the elites' centroid (unmutated)

    def __post_init__(self):
        if self.population < 2:
            raise ValueError(f"population must be >= 2, got {self.population}")
        if not 1 <= self.elites < self.population:
            raise ValueError(f"elites must be in 1..population-1, got {self.elites}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if self.max_generations is not None and self.max_generations < 0:
            raise ValueError(f"max_generations must be >= 0, got {self.max_generations}")
        if not 0.0 <= self.elite_memory <= 1.0:
            raise ValueError(f"elite_memory must be in 0..1, got {self.elite_memory}")
        for name, least in (("rungs", 1), ("eta", 2), ("max_factor", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {v!r}")

    def rung_sizes(self) -> list[int]:
        """Rows measured at each rung of a generation: the population, then ``ceil(population /
        eta^r)``, never fewer than ``elites``."""
        return [self.population] + [max(self.elites, -(-self.population // self.eta**r))
                                    for r in range(1, self.rungs)]


class GeneticAlgorithm:
    """Ask/tell genetic algorithm with elite re-measurement and exact checkpoint/resume.

    Parameters
    ----------
    x0 : array_like, shape (n_params,)
        Centre of the first population.
    sigma : float or array_like, shape (n_params,)
        Standard deviation of the mutation of each parameter (0: the parameter is fixed).
    init_sigma : float or array_like, shape (n_params,), optional
        Spread of the first population around ``x0`` (default ``sigma``).
    population, elites, keep_elites, seed, max_generations, target_loss, patience, min_delta,
    max_seconds
        See :class:`GAConfig`.
    start_with_x0 : bool
        Row 0 of the first population is ``x0`` itself, unmutated (used by refinement).
    mutation_basis : array_like, shape (n_params, r), optional
        Mutations (and the first population's spread) are ``mutation_basis @ N(0, I_r)``: steps
        in the r directions it spans, each column one standard deviation (``sigma`` and
        ``init_sigma`` are then unused).  Refinement passes the directions the twin sees the
        outputs move along, scaled to a set change of the outputs.
    rungs, eta, max_factor, elite_memory, recombine
        Successive halving, growing sample sizes, elite memory, the centroid child (module
        docstring, :class:`GAConfig`).

    Attributes
    ----------
    generation : int
        Number of generations told so far.
    history : dict of str to ndarray, each shape (generation,)
        ``best`` (smallest loss of each generation), ``mean`` (mean of its finite losses),
        ``elite`` (loss of row 0, the previous best elite re-measured; NaN in generation 0 or
        without ``keep_elites``), ``seconds`` (wall time at the end of the generation),
        ``factor`` (the generation's base measurement, units).
    units : int
        Measurement units asked so far (a row asked at factor ``f`` counts ``f``): the caller's
        readings are ``units`` times its readings per unit.
    last_losses, last_population : ndarray, shapes (population,), (population, n_params)
        The generation just told: every row's final estimate and vector (for the caller's log).
    """

    def __init__(self, x0, sigma, *, init_sigma=None, population: int = 50, elites: int = 5,
                 keep_elites: bool = True, seed: int = 0, max_generations: int | None = None,
                 target_loss: float | None = None, patience: int | None = None, min_delta: float = 0.0,
                 max_seconds: float | None = None, start_with_x0: bool = False, mutation_basis=None,
                 rungs: int = 1, eta: int = 2, max_factor: int = 1, elite_memory: float = 0.0,
                 recombine: bool = False):
        self.config = GAConfig(population, elites, keep_elites, int(seed), max_generations, target_loss,
                               patience, float(min_delta), max_seconds, int(rungs), int(eta), int(max_factor),
                               float(elite_memory), bool(recombine))
        self.x0 = self._vector(x0, "x0")
        n = self.x0.size
        self.sigma = self._per_param(sigma, n, "sigma")
        self.init_sigma = self.sigma.copy() if init_sigma is None else self._per_param(init_sigma, n, "init_sigma")
        self.rng = seeds.rng(self.config.seed, seeds.GA)
        self.generation = 0
        self.elites = np.zeros((0, n))
        self.elite_losses = np.zeros(0)
        self.history = {k: np.zeros(0) for k in ("best", "mean", "elite", "seconds", "factor")}
        self._best_seen = np.inf
        self._since_improved = 0
        self._elapsed_before = 0.0
        self._t0 = time.perf_counter()
        self.meta: dict = {}  # the caller's dict stored by save(), read back by load()
        self.mutation_basis = None if mutation_basis is None else self._basis(mutation_basis, n)
        self._new_generation_state(factor=1, units=0)
        self._population = self.x0 + self._mutations(population)
        if start_with_x0:  # refinement: the program itself competes, so the GA cannot end worse than it began
            self._population[0] = self.x0

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _vector(v, name) -> np.ndarray:
        a = np.array(v, dtype=np.float64)
        if a.ndim != 1 or a.size == 0:
            raise ValueError(f"{name} must be a non-empty 1-D vector, got shape {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"{name} has non-finite values")
        return a

    @staticmethod
    def _per_param(v, n, name) -> np.ndarray:
        a = np.array(np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)))
        if not np.isfinite(a).all() or (a < 0).any():
            raise ValueError(f"{name} must be finite and >= 0")
        return a

    @staticmethod
    def _basis(b, n) -> np.ndarray:
        a = np.array(b, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] != n or a.shape[1] == 0 or not np.isfinite(a).all():
            raise ValueError(f"mutation_basis must be finite with shape ({n}, r), r >= 1, got {a.shape}")
        return a

    def _mutations(self, rows: int, first: bool = True) -> np.ndarray:
        """Mutation steps (rows, n_params): ``sigma * N(0, 1)`` per parameter (``init_sigma`` for
        the first population), or ``basis @ N(0, I_r)`` with a ``mutation_basis`` (n_params, r)."""
        if self.mutation_basis is not None:
            return self.rng.standard_normal((rows, self.mutation_basis.shape[1])) @ self.mutation_basis.T
        scale = self.init_sigma if first else self.sigma
        return scale * self.rng.standard_normal((rows, self.x0.size))

    def _new_generation_state(self, *, factor: int | None = None, units: int | None = None) -> None:
        """Rung 0 of a generation: every row asked, no losses yet (``factor``/``units`` reset if given)."""
        pop = self.config.population
        if not hasattr(self, "last_losses"):  # a new or loaded GA: no generation told in this session
            self.last_losses = self.last_population = None
        if factor is not None:
            self.factor = int(factor)
        if units is not None:
            self.units = int(units)
        self._rung = 0
        self._rows = np.arange(pop)
        self._sum = np.zeros(pop)  # readings-weighted sum of the generation's losses per row
        self._weight = np.zeros(pop)  # readings (units) behind that sum
        self._grow = False

    @property
    def rung(self) -> int:
        """The rung of the generation that :meth:`ask` hands out (0: every row)."""
        return self._rung

    @property
    def rows(self) -> np.ndarray:
        """Indices into the generation's population of the rows :meth:`ask` hands out."""
        return self._rows.copy()

    @property
    def samples_factor(self) -> int:
        """How much to measure each asked row, in units of the caller's base measurement
        (``factor * eta^rung``)."""
        return self.factor * self.config.eta**self._rung

    def generation_units(self) -> int:
        """Units a whole generation at the current base factor costs (every rung)."""
        cfg = self.config
        return self.factor * sum(n * cfg.eta**r for r, n in enumerate(cfg.rung_sizes()))

    def _estimates(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self._weight > 0, self._sum / np.where(self._weight > 0, self._weight, 1.0), np.inf)

    @property
    def n_params(self) -> int:
        return self.x0.size

    @property
    def elapsed(self) -> float:
        """Wall time in seconds spent by this run, including sessions before a resume."""
        return self._elapsed_before + time.perf_counter() - self._t0

    # ------------------------------------------------------------------ ask / tell
    def ask(self) -> np.ndarray:
        """The rows to evaluate now, shape (len(rows), n_params) (a copy): the whole population at
        the first rung of a generation, the surviving rows (:attr:`rows`) at later rungs; measure
        each with :attr:`samples_factor` units.  Asking again before :meth:`tell` returns the same."""
        return self._population[self._rows].copy()

    def tell(self, losses, population=None, se=None) -> None:
        """Report the loss of every row of :meth:`ask`, shape (len(rows),), from this measurement
        alone (the GA pools a row's measurements, weighted by their units).

        After the last rung of a generation: selects the elites among the last rung's rows by
        their pooled estimates, records the history and draws the next population.
        ``population`` (len(rows), n_params), optional: the evaluated vectors as the caller
        finished them (e.g. with the readout refitted exactly per candidate); they replace the
        asked rows before selection, so elites carry what was measured.  ``se`` (len(rows),),
        optional: each loss's standard error, used at the first rung to grow the sample size.
        """
        n = len(self._rows)
        if population is not None:
            arr = np.array(population, dtype=np.float64)
            if arr.shape != (n, self.n_params) or not np.isfinite(arr).all():
                raise ValueError(f"population must be finite with shape {(n, self.n_params)}, got {arr.shape}")
            self._population[self._rows] = arr
        loss = self._checked_losses(losses, n)
        w = self.samples_factor
        self._sum[self._rows] += w * loss
        self._weight[self._rows] += w
        self.units += n * w
        if self._rung == 0 and se is not None:
            self._grow = noise_dominates(loss, se)
        sizes = self.config.rung_sizes()
        if self._rung + 1 < len(sizes):
            est = self._estimates()[self._rows]
            keep = self._rows[np.argsort(est, kind="stable")[: sizes[self._rung + 1]]]
            self._rows, self._rung = np.sort(keep), self._rung + 1
            return
        self._end_generation()

    @staticmethod
    def _checked_losses(losses, n: int) -> np.ndarray:
        loss = np.asarray(losses, dtype=np.float64)
        if loss.shape != (n,):
            raise ValueError(f"expected {n} losses (one per candidate), got shape {loss.shape}")
        if np.isnan(loss).any():
            raise ValueError(f"losses contain NaN at rows {np.flatnonzero(np.isnan(loss))[:10].tolist()}; "
                             "report a failed candidate as +inf")
        if (loss == -np.inf).any():
            raise ValueError("losses contain -inf")
        return loss

    def _end_generation(self) -> None:
        """Select the elites among the last rung's rows, record the history, breed."""
        est = self._estimates()
        rows = self._rows
        order = rows[np.argsort(est[rows], kind="stable")[: self.config.elites]]
        self.elites = self._population[order].copy()
        self.elite_losses = est[order].copy()
        self.last_losses, self.last_population = est.copy(), self._population.copy()
        finite = est[np.isfinite(est)]
        best = float(est[order[0]])
        elite = float(est[0]) if self.config.keep_elites and self.generation > 0 else np.nan
        for key, value in (("best", best), ("mean", float(finite.mean()) if finite.size else np.inf),
                           ("elite", elite), ("seconds", self.elapsed), ("factor", float(self.factor))):
            self.history[key] = np.append(self.history.get(key, np.zeros(0)), value)
        if best < self._best_seen - self.config.min_delta:
            self._best_seen = best
            self._since_improved = 0
        else:
            self._since_improved += 1
        self.generation += 1
        grown = min(2 * self.factor, self.config.max_factor) if self._grow else self.factor
        carried = self.config.elite_memory * self._weight[order]
        self._new_generation_state(factor=grown)
        self._population = self._breed()
        if self.config.keep_elites and self.config.elite_memory > 0:  # rows 0.. are the elites, unmutated
            e = len(order)
            self._weight[:e], self._sum[:e] = carried, carried * np.where(np.isfinite(self.elite_losses),
                                                                          self.elite_losses, 0.0)

    def _breed(self) -> np.ndarray:
        cfg = self.config
        e = cfg.elites
        n_keep = e if cfg.keep_elites else 0
        parents = self.elites[np.arange(cfg.population - n_keep) % e]
        children = parents + self._mutations(len(parents), first=False)
        if cfg.recombine and len(self.elites) > 1:  # the first child: the elites' centroid, unmutated
            children[0] = self.elites.mean(axis=0)
        return np.concatenate([self.elites[:n_keep], children]) if n_keep else children

    # ------------------------------------------------------------------ results
    @property
    def best(self) -> tuple[np.ndarray, float]:
        """Best elite of the last generation and its loss (``(x0, inf)`` before the first tell)."""
        if self.generation == 0:
            return self.x0.copy(), np.inf
        return self.elites[0].copy(), float(self.elite_losses[0])

    def stop_reason(self) -> str | None:
        """Why the run should stop now (``"generations"``, ``"target"``, ``"stagnation"``,
        ``"time"``), or None to go on."""
        cfg = self.config
        if self._rung > 0:  # a generation is finished before anything stops it
            return None
        if cfg.max_generations is not None and self.generation >= cfg.max_generations:
            return "generations"
        if self.generation and cfg.target_loss is not None and self.history["best"][-1] <= cfg.target_loss:
            return "target"
        if cfg.patience is not None and self._since_improved >= cfg.patience:
            return "stagnation"
        if cfg.max_seconds is not None and self.elapsed >= cfg.max_seconds:
            return "time"
        return None

    def run(self, evaluate: Callable[[np.ndarray], np.ndarray], *, checkpoint=None,
            callback: Callable[["GeneticAlgorithm"], None] | None = None) -> str:
        """Ask, ``evaluate(population) -> losses``, tell, until :meth:`stop_reason`; returns it.

        ``checkpoint``: path written after every generation.  ``callback(ga)`` runs after every
        generation.  With ``rungs > 1`` ``evaluate`` is called once per rung and reads
        :attr:`samples_factor` for how much to measure.  At least one stopping criterion must be set.
        """
        cfg = self.config
        if all(v is None for v in (cfg.max_generations, cfg.target_loss, cfg.patience, cfg.max_seconds)):
            raise ValueError("set a stopping criterion (max_generations, target_loss, patience or max_seconds)")
        while (reason := self.stop_reason()) is None:
            self.tell(evaluate(self.ask()))
            if self._rung > 0:  # more rungs of this generation to measure
                continue
            if checkpoint is not None:
                self.save(checkpoint)
            if callback is not None:
                callback(self)
        return reason

    # ------------------------------------------------------------------ checkpoints
    def save(self, path, meta: dict | None = None) -> Path:
        """Write the full state to an HDF5 checkpoint (atomically: temporary file, then rename).

        ``meta`` is any JSON-serialisable dict the caller wants back on :meth:`load` (e.g. the
        settings of the evaluation, to refuse resuming with different ones).
        """
        return replace_atomically(path, lambda tmp: self._write_checkpoint(tmp, meta), "GA checkpoint")

    def _write_checkpoint(self, tmp: Path, meta: dict | None) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = CHECKPOINT_FORMAT
            f.attrs["format_version"] = CHECKPOINT_VERSION
            f.attrs["config"] = json.dumps(asdict(self.config))
            f.attrs["rng_state"] = json.dumps(self.rng.bit_generator.state)
            f.attrs["generation"] = self.generation
            f.attrs["elapsed_s"] = self.elapsed
            f.attrs["best_seen"] = self._best_seen
            f.attrs["since_improved"] = self._since_improved
            f.attrs["meta"] = json.dumps(meta or {})
            for name in ("x0", "sigma", "init_sigma", "elites", "elite_losses"):
                f[name] = getattr(self, name)
            f["population"] = self._population
            if self.mutation_basis is not None:
                f["mutation_basis"] = self.mutation_basis
            f.attrs["factor"], f.attrs["units"], f.attrs["rung"], f.attrs["grow"] = (
                self.factor, self.units, self._rung, int(self._grow))
            f["rung_rows"], f["rung_sum"], f["rung_weight"] = self._rows, self._sum, self._weight
            for k, v in self.history.items():
                f[f"history/{k}"] = v
            provenance.write_entry(f, writer="ga-checkpoint")

    @classmethod
    def load(cls, path) -> "GeneticAlgorithm":
        """Resume from a checkpoint written by :meth:`save` (the caller's ``meta`` is in ``.meta``)."""

        with open_hdf5_read(path, "GA checkpoint") as f:
            if f.attrs.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"{path}: not a GA checkpoint (format {f.attrs.get('format')!r})")
            if int(f.attrs["format_version"]) > CHECKPOINT_VERSION:
                raise ValueError(f"{path}: checkpoint version {f.attrs['format_version']} is newer than this code")
            cfg = GAConfig(**json.loads(f.attrs["config"]))
            ga = cls.__new__(cls)
            ga.config = cfg
            for name in ("x0", "sigma", "init_sigma", "elites", "elite_losses"):
                setattr(ga, name, np.array(f[name][()], dtype=np.float64))
            ga._population = np.array(f["population"][()], dtype=np.float64)
            ga.mutation_basis = np.array(f["mutation_basis"][()], np.float64) if "mutation_basis" in f else None
            ga.history = {k: np.array(f[f"history/{k}"][()], dtype=np.float64) for k in f["history"]}
            state = json.loads(f.attrs["rng_state"])
            ga.rng = np.random.Generator(getattr(np.random, state["bit_generator"])())
            ga.rng.bit_generator.state = state
            ga.generation = int(f.attrs["generation"])
            ga._elapsed_before = float(f.attrs["elapsed_s"])
            ga._best_seen = float(f.attrs["best_seen"])
            ga._since_improved = int(f.attrs["since_improved"])
            ga.meta = json.loads(f.attrs["meta"])
            ga._load_rung_state(f)
        ga.elites = ga.elites.reshape(-1, ga.x0.size)
        ga._t0 = time.perf_counter()
        return ga

    def _load_rung_state(self, f: h5py.File) -> None:
        """The halving and sample-growth state of a checkpoint (version 1: a generation's start,
        base factor 1, every earlier generation one unit per row)."""
        pop = self.config.population
        if "rung_rows" not in f:
            self._new_generation_state(factor=1, units=self.generation * pop)
            self.history.setdefault("factor", np.ones(self.generation))
            return
        self.factor, self.units = int(f.attrs["factor"]), int(f.attrs["units"])
        self._rung, self._grow = int(f.attrs["rung"]), bool(f.attrs["grow"])
        self._rows = np.array(f["rung_rows"][()], dtype=np.int64)
        self._sum = np.array(f["rung_sum"][()], dtype=np.float64)
        self._weight = np.array(f["rung_weight"][()], dtype=np.float64)
        if self._sum.shape != (pop,) or self._weight.shape != (pop,) or not (
                (0 <= self._rows) & (self._rows < pop)).all():
            raise ValueError("GA checkpoint: damaged rung state")

    def with_config(self, **changes) -> "GeneticAlgorithm":
        """Change stopping criteria in place (e.g. more generations after a resume); returns self.

        Only ``max_generations``, ``target_loss``, ``patience``, ``min_delta`` and ``max_seconds``
        may change; the others define the random sequence.
        """
        allowed = {"max_generations", "target_loss", "patience", "min_delta", "max_seconds"}
        bad = set(changes) - allowed
        if bad:
            raise ValueError(f"cannot change {sorted(bad)} of a running GA")
        self.config = GAConfig(**{**asdict(self.config), **changes})
        return self


def fan_in_sigma(params, trainable=("bias", "coupling", "crossbar", "readout"), scale: float = 0.1) -> np.ndarray:
    """Mutation scales ``scale / sqrt(C)`` per entry of ``params.vector()`` (paper, Sec. III B).

    ``C`` is the fan-in: 1 for biases and readout weights; ``N_j`` for crossbar weights into node
    ``j``; ``(N_a + N_b) / 2`` for the coupling ``(a, b)``.  ``N_j`` is the number of connections
    entering node ``j``: its couplings plus its input lines.  (The paper's network is not
    feed-forward, so every coupling counts; for the layered 8x4 design ``N`` is 9, 16, 16, 8 by
    layer.)  Kinds not in ``trainable`` get 0 (never mutated).

    Parameters
    ----------
    params : tc_hw.model.params.Params
    trainable : sequence of str
        Element kinds to mutate (``quadratic``, ``cubic``, ``quartic``, ``bias``, ``coupling``,
        ``crossbar``, ``readout``).
    scale : float
        Mutation scale of a parameter with fan-in 1 (paper: 0.1, i.e. variance 1e-2).

    Returns
    -------
    ndarray, shape (params.vector().size,)
    """

    net = params.network
    conn = (net.degree() + net.fan_in()).astype(np.float64)
    conn = np.maximum(conn, 1.0)
    known = set(ELEMENT_KINDS) | {"readout"}
    bad = set(trainable) - known
    if bad:
        raise ValueError(f"unknown element kinds {sorted(bad)}; use {sorted(known)}")
    parts = []
    for kind in ELEMENT_KINDS:
        size = getattr(params, kind).size
        if kind not in trainable:
            parts.append(np.zeros(size))
        elif kind == "coupling":
            a, b = net.edges.T
            parts.append(scale / np.sqrt((conn[a] + conn[b]) / 2))
        elif kind == "crossbar":
            parts.append(scale / np.sqrt(conn[net.crossbar[:, 1]]))
        else:
            parts.append(np.full(size, scale))
    if params.readout is not None:
        parts.append(np.full(params.readout.size, scale if "readout" in trainable else 0.0))
    return np.concatenate(parts)


def noise_dominates(loss, se) -> bool:
    """True when the candidates' spread of losses is no more than one candidate's noise:
    ``robust_sd^2 < 2 median(se)^2`` over the finite ones (robust sd: 1.4826 MAD); the rule by
    which the GA and CMA-ES grow their readings per candidate.  ``loss``, ``se``: shape (C,)."""
    loss, se = np.asarray(loss, dtype=np.float64), np.asarray(se, dtype=np.float64)
    if se.shape != loss.shape:
        raise ValueError(f"se must have shape {loss.shape}, got {se.shape}")
    ok = np.isfinite(loss) & np.isfinite(se)
    if ok.sum() < 3:
        return False
    spread = 1.4826 * np.median(np.abs(loss[ok] - np.median(loss[ok])))
    return bool(spread**2 < 2.0 * np.median(se[ok]) ** 2)
