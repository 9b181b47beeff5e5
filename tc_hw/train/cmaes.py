"""CMA-ES (the ``cma`` package) behind the genetic algorithm's ask/tell interface.

Same protocol as :class:`tc_hw.train.ga.GeneticAlgorithm`: :meth:`CMAES.ask` hands out a
population (population, n_params), the caller measures a loss for each and passes them to
:meth:`CMAES.tell`; ``best``, ``stop_reason``, ``with_config``, ``save`` and ``load``.

The search runs in scaled coordinates ``y = (x - x0) / sigma`` over the parameters with
``sigma > 0`` (the others stay at ``x0``), with initial step 1, so ``sigma`` plays the role of the
GA's per-parameter mutation scale.  ``best`` is the distribution mean (``xfavorite``): under
measurement noise the mean is a better estimate of the optimum than the smallest noisy loss.

Growing sample sizes (``max_factor > 1``, the genetic algorithm's rule): when the caller passes
each candidate's standard error with its losses (``tell(..., se=)``) and the candidates' spread of
losses is no larger than one candidate's noise (``robust_sd(losses)^2 < 2 median(se)^2``), the
next generation's candidates are to be measured with twice the readings (:attr:`samples_factor`
units), up to ``max_factor``.  Selection in a converged population is otherwise decided by the
noise: the mean then walks away from the optimum it had reached, and the noisiest candidates
(the largest loss spread) are the ones most often ranked first.

Checkpoints are HDF5 without pickle: the configuration, every population asked, every loss
told and every generation's sample factor.  :meth:`load` rebuilds the strategy with the same seed and replays the ask/tell sequence;
``cma`` draws from numpy's global generator, so the wrapper keeps that generator's state as its
own (set before every ask, read back after), and the replay reproduces the run bitwise.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from ..model.safeio import open_hdf5_read, replace_atomically
from ..model import seeds
from .ga import noise_dominates

__all__ = ["CMAES", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "tc-hw/cma-checkpoint"


@contextmanager
def _global_rng(state):
    """numpy's global generator set to ``state`` inside the block; the caller's state restored after."""
    saved = np.random.get_state()
    np.random.set_state(state)
    try:
        yield
    finally:
        np.random.set_state(saved)


class CMAES:
    """Ask/tell CMA-ES with exact, pickle-free checkpoint/resume.

    Parameters
    ----------
    x0 : array, shape (n_params,)
    sigma : array, shape (n_params,)
        Initial step of each parameter (0: fixed).
    population : int
    seed : int
    max_generations : int
    basis : array, shape (n_params, r), optional
        Search ``x = x0 + basis @ y`` over ``y`` in R^r (initial step 1, full covariance), instead
        of the per-parameter scaled coordinates (``sigma`` then unused).
    max_factor : int
        Largest :attr:`samples_factor` (1: every generation measured alike, as before).
    """

    def __init__(self, x0, sigma, *, population: int = 20, seed: int = 0, max_generations: int = 30, basis=None,
                 max_factor: int = 1):
        self.x0 = np.asarray(x0, float).copy()
        self.sigma = np.asarray(np.broadcast_to(sigma, self.x0.shape), float).copy()
        self.basis = None if basis is None else np.asarray(basis, float).reshape(self.x0.size, -1).copy()
        if self.basis is None and not np.any(self.sigma > 0):
            raise ValueError("CMA-ES needs at least one parameter with sigma > 0")
        self.population, self.seed, self.max_generations = int(population), int(seed), int(max_generations)
        self.max_factor = int(max_factor)
        if self.max_factor < 1:
            raise ValueError(f"max_factor must be an integer >= 1, got {max_factor!r}")
        self.factor = 1  #: the sample factor of the next generation (units of the caller's base measurement)
        self.factors: list[int] = []  #: the sample factor every told generation was measured with
        self.free = np.flatnonzero(self.sigma > 0) if self.basis is None else np.arange(self.basis.shape[1])
        self._es, self._rng_state = self._strategy()
        self.asked: list[np.ndarray] = []
        self.told: list[np.ndarray] = []
        self._pending = None
        self.meta: dict = {}

    def _strategy(self):
        try:
            import cma
        except ImportError:
            raise ValueError("--method cma needs the cma package: pip install 'tc-hw[cma]'") from None

        opts = {"popsize": self.population, "seed": seeds.derive32(self.seed, seeds.CMAES) or 1, "verbose": -9, "CMA_diagonal": self.basis is None,
                "tolx": 0, "tolfun": 0, "tolfunhist": 0, "tolstagnation": 10**9}
        saved = np.random.get_state()
        try:
            es = cma.CMAEvolutionStrategy(np.zeros(len(self.free)), 1.0, opts)
            state = np.random.get_state()
        finally:
            np.random.set_state(saved)
        return es, state

    @property
    def n_params(self) -> int:
        return self.x0.size

    @property
    def generation(self) -> int:
        return len(self.told)

    @property
    def samples_factor(self) -> int:
        """How much to measure each candidate of :meth:`ask`, in units of the caller's base measurement."""
        return self.factor

    @property
    def units(self) -> int:
        """Measurement units told so far (a candidate measured at factor ``f`` counts ``f``)."""
        return self.population * int(sum(self.factors))

    def generation_units(self) -> int:
        """Units the next generation costs."""
        return self.population * self.factor

    def _x(self, y) -> np.ndarray:
        if self.basis is not None:
            return self.x0 + np.asarray(y) @ self.basis.T
        x = np.tile(self.x0, (len(y), 1))
        x[:, self.free] += np.asarray(y) * self.sigma[self.free]
        return x

    def ask(self) -> np.ndarray:
        """The population to evaluate, shape (population, n_params); the same until :meth:`tell`."""
        if self._pending is None:
            with _global_rng(self._rng_state):
                self._pending = np.array(self._es.ask())
                self._rng_state = np.random.get_state()
        return self._x(self._pending)

    def tell(self, losses, se=None) -> None:
        """Losses (population,) of :meth:`ask`'s population; ``+inf`` marks a failed candidate.
        ``se`` (population,), optional: each loss's standard error, which decides whether the next
        generation's :attr:`samples_factor` doubles (module docstring)."""
        loss = np.asarray(losses, float)
        if loss.shape != (self.population,) or np.isnan(loss).any():
            raise ValueError(f"expected {self.population} losses (no NaN), got shape {loss.shape}")
        grow = se is not None and noise_dominates(loss, se)
        self.ask()
        y = self._pending
        finite = loss[np.isfinite(loss)]
        worst = (finite.max() + 1.0) if finite.size else 1.0
        with _global_rng(self._rng_state):
            self._es.tell(list(y), list(np.where(np.isfinite(loss), loss, worst)))
            self._rng_state = np.random.get_state()
        self.asked.append(y)
        self.told.append(loss)
        self.factors.append(self.factor)
        self._pending = None
        if grow:
            self.factor = min(2 * self.factor, self.max_factor)

    @property
    def best(self) -> tuple[np.ndarray, float]:
        """The distribution mean and the smallest loss of the last generation."""
        x = self._x(np.asarray(self._es.mean)[None, :])[0]
        return x, float(np.min(self.told[-1])) if self.told else np.inf

    @property
    def elite_losses(self) -> np.ndarray:
        return np.sort(self.told[-1]) if self.told else np.zeros(0)

    def stop_reason(self) -> str | None:
        return "generations" if self.generation >= self.max_generations else None

    def with_config(self, max_generations=None, **_) -> "CMAES":
        if max_generations is not None:
            self.max_generations = int(max_generations)
        return self

    def save(self, path) -> Path:
        return replace_atomically(path, self._write_checkpoint, "CMA-ES checkpoint")

    def _write_checkpoint(self, tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = CHECKPOINT_FORMAT
            f.attrs["format_version"] = 2
            f.attrs["config"] = json.dumps({"population": self.population, "seed": self.seed,
                                            "max_generations": self.max_generations, "max_factor": self.max_factor})
            f.attrs["factor"] = self.factor
            f["factors"] = np.array(self.factors, dtype=np.int64)
            f["x0"], f["sigma"] = self.x0, self.sigma
            if self.basis is not None:
                f["basis"] = self.basis
            f["asked"] = np.array(self.asked).reshape(-1, self.population, len(self.free))
            f["told"] = np.array(self.told).reshape(-1, self.population)

    @classmethod
    def load(cls, path) -> "CMAES":
        """Rebuild from a checkpoint by replaying its ask/tell sequence (bitwise the same state)."""
        with open_hdf5_read(path, "CMA-ES checkpoint") as f:
            if f.attrs.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"{path}: not a CMA-ES checkpoint")
            if int(f.attrs.get("format_version", 1)) > 2:
                raise ValueError(f"{path}: checkpoint version {f.attrs['format_version']} is newer than this code")
            cfg = json.loads(f.attrs["config"])
            x0, sigma = f["x0"][()], f["sigma"][()]
            basis = f["basis"][()] if "basis" in f else None
            asked, told = f["asked"][()], f["told"][()]
            # version 1 (before growing sample sizes): every generation at factor 1
            factors = f["factors"][()] if "factors" in f else np.ones(len(told), dtype=np.int64)
            factor = int(f.attrs.get("factor", 1))
        if len(factors) != len(told) or np.any(np.asarray(factors) < 1) or factor < 1:
            raise ValueError(f"{path}: {len(told)} generations told but {len(factors)} sample factors, or a factor < 1")
        es = cls(x0, sigma, basis=basis, **cfg)
        for y, loss, w in zip(asked, told, factors):
            if not np.array_equal(es.ask(), es._x(y)):
                raise ValueError(f"{path}: replaying generation {es.generation} asked another population")
            es.factor = int(w)
            es.tell(loss)
        es.factor = factor
        return es
