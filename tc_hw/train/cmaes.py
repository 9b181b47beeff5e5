"""CMA-ES (the ``cma`` package) behind the genetic algorithm's ask/tell interface.

Same protocol as :class:`tc_hw.train.ga.GeneticAlgorithm`: :meth:`CMAES.ask` hands out a
population (population, n_params), the caller measures a loss for each and passes them to
:meth:`CMAES.tell`; ``best``, ``stop_reason``, ``with_config``, ``save`` and ``load``.

The search runs in scaled coordinates ``y = (x - x0) / sigma`` over the parameters with
``sigma > 0`` (the others stay at ``x0``), with initial step 1, so ``sigma`` plays the role of the
GA's per-parameter mutation scale.  ``best`` is the distribution mean (``xfavorite``): under
measurement noise the mean is a better estimate of the optimum than the smallest noisy loss.

Checkpoints are HDF5 without pickle: the configuration, every population asked and every loss
told.  :meth:`load` rebuilds the strategy with the same seed and replays the ask/tell sequence;
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
    """

    def __init__(self, x0, sigma, *, population: int = 20, seed: int = 0, max_generations: int = 30, basis=None):
        self.x0 = np.asarray(x0, float).copy()
        self.sigma = np.asarray(np.broadcast_to(sigma, self.x0.shape), float).copy()
        self.basis = None if basis is None else np.asarray(basis, float).reshape(self.x0.size, -1).copy()
        if self.basis is None and not np.any(self.sigma > 0):
            raise ValueError("CMA-ES needs at least one parameter with sigma > 0")
        self.population, self.seed, self.max_generations = int(population), int(seed), int(max_generations)
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

    def tell(self, losses) -> None:
        """Losses (population,) of :meth:`ask`'s population; ``+inf`` marks a failed candidate."""
        loss = np.asarray(losses, float)
        if loss.shape != (self.population,) or np.isnan(loss).any():
            raise ValueError(f"expected {self.population} losses (no NaN), got shape {loss.shape}")
        self.ask()
        y = self._pending
        finite = loss[np.isfinite(loss)]
        worst = (finite.max() + 1.0) if finite.size else 1.0
        with _global_rng(self._rng_state):
            self._es.tell(list(y), list(np.where(np.isfinite(loss), loss, worst)))
            self._rng_state = np.random.get_state()
        self.asked.append(y)
        self.told.append(loss)
        self._pending = None

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
            f.attrs["format_version"] = 1
            f.attrs["config"] = json.dumps({"population": self.population, "seed": self.seed,
                                            "max_generations": self.max_generations})
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
            if int(f.attrs.get("format_version", 1)) > 1:
                raise ValueError(f"{path}: checkpoint version {f.attrs['format_version']} is newer than this code")
            cfg = json.loads(f.attrs["config"])
            x0, sigma = f["x0"][()], f["sigma"][()]
            basis = f["basis"][()] if "basis" in f else None
            asked, told = f["asked"][()], f["told"][()]
        es = cls(x0, sigma, basis=basis, **cfg)
        for y, loss in zip(asked, told):
            if not np.array_equal(es.ask(), es._x(y)):
                raise ValueError(f"{path}: replaying generation {es.generation} asked another population")
            es.tell(loss)
        return es
