"""Twin-guided refinement: the board's forward pass, the twin's Jacobian, Levenberg-Marquardt steps.

The board gives what the twin cannot know: the mean output readings ``xbar_b(theta)`` (P, n_out)
of the uploaded program at the design inputs ``z`` (P, 1).  The twin, read through the
calibration (channel volts -> calibrated element values -> program), gives what the board cannot
give cheaply: the Jacobian ``J = d xbar / d theta`` (P, n_out, K) of those means with respect to
the K trainable channels' volts ``theta`` at the current program, by forward differences with
common random numbers (every perturbed program runs on the same noise, so the differences are
the parameters' effect, not noise).

One iteration (an ask/tell pair, so the run logs, checkpoints and resumes like the GA):

* residual ``r = xbar_b f - y`` from the current board measurement, ``f`` the readout (the exact
  least-squares fit to that measurement);
* the Gauss-Newton system in ``(theta, f)`` with columns ``[J . f, xbar_b]``, ``theta`` scaled by
  each channel's half span ``D``; Levenberg-Marquardt steps for a ladder of damping factors
  ``mu`` (``mu * diag(A^T A)``), each limited to the trust box ``|d theta_k| <= radius * D_k``
  and projected into the channel's safe span (candidate generation may project; user input is
  refused elsewhere);
* the board checks the steps: row 0 of the population is the current program (re-measured, so
  the comparison is between losses measured now, not against a lucky old draw), rows 1.. the
  trial steps; the best trial is accepted only if its measured loss is below the current one's,
  then the radius grows, else it shrinks.

Units: volts for ``theta``, program units for the readout; losses are the task's mean squared
error.  State (current vector, its board means, radius, history) is plain arrays, checkpointed in
HDF5 without pickle; the Jacobian is recomputed from the state, so a resumed run asks exactly
the populations of an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from calibration.mapping import effective_params
from sim_backend.population import population_reset

from .model.safeio import open_hdf5_read, replace_atomically

__all__ = ["TwinModel", "TwinGuided", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "tc-hw/twin-guided-checkpoint"


class TwinModel:
    """The board as the twin sees it through the calibration.

    Parameters
    ----------
    params : Params
        The program (its element values are replaced by the calibrated values of the volts).
    cal : calibration.Calibration
    channel_map : ChannelMap
    trainable : array of int, shape (K,)
        Channels whose volts vary.
    volts0 : array, shape (n_channels,)
        Volts of every channel (the non-trainable ones stay there).
    """

    def __init__(self, params, cal, channel_map, trainable, volts0, *, dt: float = 1e-2, samples: int = 64):
        self.params, self.cal, self.cmap = params, cal, channel_map
        self.trainable = np.asarray(trainable, np.int64)
        self.volts0 = np.asarray(volts0, float)
        self.dt, self.samples = float(dt), int(samples)
        self.values0 = np.array([float(cal.curve(c.index).value(np.array([self.volts0[c.index]]))[0])
                                 for c in channel_map])

    def program(self, theta):
        """The program that volts ``theta`` (K,) on the trainable channels make, per the calibration."""

        values = self.values0.copy()
        for k, ch in enumerate(self.trainable):
            values[ch] = float(self.cal.curve(int(ch)).value(np.array([theta[k]]))[0])
        return effective_params(self.params, self.cmap, values)

    def means(self, thetas, inputs, seed: int) -> np.ndarray:
        """Twin output means (R, P, n_out) of programs ``thetas`` (R, K) at board ``inputs`` (P, k),
        all on the same noise (``seed``)."""

        progs = [self.program(t) for t in np.atleast_2d(thetas)]
        net = self.params.network
        x = population_reset(progs, inputs[:, : net.n_inputs], 1.0, self.samples, dt=self.dt, seed=int(seed),
                             nodes=net.outputs)
        return np.asarray(x[:, :, :, -1, :], np.float64).mean(axis=2)

    def jacobian(self, theta, inputs, step_v, seed: int, hi=None) -> np.ndarray:
        """``d xbar / d theta`` (P, n_out, K) by one-sided differences of ``step_v`` (K,) volts:
        forward, or backward for a channel whose forward step would pass ``hi`` (K,) (the top of
        its calibrated span, where the curve is not known)."""
        theta = np.asarray(theta, float)
        step = np.asarray(step_v, float)
        if hi is not None:
            step = np.where(theta + step > np.asarray(hi, float), -step, step)
        rows = [theta] + [theta + np.eye(len(theta))[k] * step[k] for k in range(len(theta))]
        m = self.means(np.stack(rows), inputs, seed)
        return np.moveaxis((m[1:] - m[0]) / step[:, None, None], 0, -1)


class TwinGuided:
    """Ask/tell Levenberg-Marquardt refinement with a trust region (see the module docstring).

    Parameters
    ----------
    x0 : array, shape (K + n_out,)
        Start: trainable volts then readout.
    xbar0 : array, shape (P, n_out)
        Board means of the start program at the design inputs.
    targets : array, shape (P,)
    lo, hi : arrays, shape (K,)
        Safe span of each trainable channel (volts).
    jacobian : callable ``(theta, generation) -> (P, n_out, K)``
        The twin's Jacobian at ``theta`` (deterministic for a given generation).
    trials : int
        Trial steps per iteration (population = trials + 1).
    radius : float
        Initial trust radius, a fraction of each channel's half span.
    max_generations : int
    """

    def __init__(self, x0, xbar0, targets, lo, hi, *, trials: int = 4, radius: float = 0.05,
                 max_generations: int = 10, min_radius: float = 1e-3):
        self.x = np.asarray(x0, float).copy()
        self.xbar = np.asarray(xbar0, float).copy()
        self.targets = np.asarray(targets, float)
        self.lo, self.hi = np.asarray(lo, float), np.asarray(hi, float)
        self.k = len(self.lo)
        self.trials, self.radius, self.min_radius = int(trials), float(radius), float(min_radius)
        self.max_generations = int(max_generations)
        self.generation = 0
        self.loss = np.inf  # current program's latest measured loss
        self.history = {k: np.zeros(0) for k in ("loss", "best_trial", "radius", "accepted")}
        self.x[self.k:] = self._fit(self.xbar, self.x[self.k:])
        self._pending = None

    @property
    def n_params(self) -> int:
        return self.x.size

    @property
    def population(self) -> int:
        return self.trials + 1

    def _fit(self, xbar, fallback) -> np.ndarray:
        f, *_ = np.linalg.lstsq(xbar, self.targets, rcond=None)
        return f if np.all(np.isfinite(f)) else np.asarray(fallback, float)

    def steps(self, jac) -> np.ndarray:
        """Trial vectors (trials, K + n_out) from the Jacobian ``jac`` (P, n_out, K)."""
        theta, f = self.x[: self.k], self.x[self.k:]
        half = 0.5 * (self.hi - self.lo)
        r = self.xbar @ f - self.targets  # (P,)
        a = np.concatenate([np.einsum("pok,o->pk", jac, f) * half, self.xbar], axis=1)  # scaled columns
        g = a.T @ r
        h = a.T @ a
        d = np.maximum(np.diag(h), 1e-12 * max(np.max(np.diag(h)), 1e-300))
        out = []
        for mu in np.logspace(-3, 0, self.trials):
            s = -np.linalg.solve(h + mu * np.mean(d) * np.eye(len(d)) + mu * np.diag(d), g)
            s_theta = s[: self.k]
            big = np.max(np.abs(s_theta)) if s_theta.size else 0.0
            if big > self.radius:
                s = s * (self.radius / big)
            t_new = np.clip(theta + s[: self.k] * half, self.lo, self.hi)
            out.append(np.concatenate([t_new, f + s[self.k:]]))
        return np.array(out)

    def ask(self, jac) -> np.ndarray:
        """The population: row 0 the current program, rows 1.. the trial steps."""
        pop = np.vstack([self.x[None, :], self.steps(jac)])
        self._pending = pop
        return pop.copy()

    def tell(self, population, losses, xbars) -> None:
        """Losses (population,) and board means (population, P, n_out) of :meth:`ask`'s population."""
        losses = np.asarray(losses, float)
        cur, trial = float(losses[0]), int(np.argmin(losses[1:])) + 1
        accepted = losses[trial] < cur
        if accepted:
            self.x = np.asarray(population[trial], float).copy()
            self.xbar = np.asarray(xbars[trial], float).copy()
            self.loss = float(losses[trial])
            self.radius = min(2.0 * self.radius, 0.5)
        else:  # the current program, measured twice now: average the two measurements
            self.xbar = 0.5 * (self.xbar + np.asarray(xbars[0], float))
            self.loss = cur
            self.radius = max(0.3 * self.radius, self.min_radius)
        self.x[self.k:] = self._fit(self.xbar, self.x[self.k:])
        for key, v in (("loss", cur), ("best_trial", float(losses[trial])), ("radius", self.radius),
                       ("accepted", float(accepted))):
            self.history[key] = np.append(self.history[key], v)
        self.generation += 1
        self._pending = None

    @property
    def best(self) -> tuple[np.ndarray, float]:
        return self.x.copy(), self.loss

    def stop_reason(self) -> str | None:
        if self.generation >= self.max_generations:
            return "generations"
        if self.radius <= self.min_radius and self.generation and not self.history["accepted"][-1]:
            return "trust region"
        return None

    def with_config(self, max_generations=None, **_) -> "TwinGuided":
        if max_generations is not None:
            self.max_generations = int(max_generations)
        return self

    # ------------------------------------------------------------------ checkpoints
    def save(self, path) -> Path:
        return replace_atomically(path, self._write_checkpoint, "twin-guided checkpoint")

    def _write_checkpoint(self, tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = CHECKPOINT_FORMAT
            f.attrs["format_version"] = 1
            f.attrs["config"] = json.dumps({"trials": self.trials, "min_radius": self.min_radius,
                                            "max_generations": self.max_generations})
            f.attrs["generation"] = self.generation
            f.attrs["radius"] = self.radius
            f.attrs["loss"] = self.loss
            for name in ("x", "xbar", "targets", "lo", "hi"):
                f[name] = getattr(self, name)
            for k, v in self.history.items():
                f[f"history/{k}"] = v

    @classmethod
    def load(cls, path) -> "TwinGuided":
        with open_hdf5_read(path, "twin-guided checkpoint") as f:
            if f.attrs.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"{path}: not a twin-guided checkpoint")
            if int(f.attrs.get("format_version", 1)) > 1:
                raise ValueError(f"{path}: checkpoint version {f.attrs['format_version']} is newer than this code")
            cfg = json.loads(f.attrs["config"])
            tg = cls.__new__(cls)
            for name in ("x", "xbar", "targets", "lo", "hi"):
                setattr(tg, name, np.array(f[name][()], float))
            tg.history = {k: np.array(f[f"history/{k}"][()], float) for k in f["history"]}
            tg.generation = int(f.attrs["generation"])
            tg.radius = float(f.attrs["radius"])
            tg.loss = float(f.attrs["loss"])
        tg.k = len(tg.lo)
        tg.trials, tg.min_radius, tg.max_generations = int(cfg["trials"]), float(cfg["min_radius"]), \
            int(cfg["max_generations"])
        tg._pending = None
        return tg
