"""Scoring trained computers on the twin (the reference every other backend is compared with)."""

from __future__ import annotations

import sys
import time

import numpy as np
from tqdm import tqdm

from sim_backend.twin import sample_reset

from .model import tasks
from .model.tasks import score_classification

__all__ = ["MNIST_DEFAULTS", "evaluate_mnist", "mnist_samples", "mnist_metrics"]

#: Observation settings of the published MNIST computer (arXiv 2509.15324).
MNIST_DEFAULTS = {"time": 0.2, "dt": 1e-3}


def mnist_samples(params, inputs, time_obs: float, dt: float, seed: int, m0: int, m1: int,
                  progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Samples ``m0 .. m1 - 1`` of every input (P, 784): trajectory ``(p, m)`` is the twin's
    stream ``(seed, p, m)`` (``sample_offset=m``), so any split of the range gives the same numbers.
    Returns the output nodes at ``time_obs`` (P, m1 - m0, n_out) and the heat (P, m1 - m0) in kT."""
    outs, heat = [], []
    for m in tqdm(range(m0, m1), desc="twin: MNIST test set", unit="sample", disable=not progress, file=sys.stderr):
        run = sample_reset(
            params, inputs, time_obs, 1, dt=dt, seed=seed, nodes=params.network.outputs, energy=True, sample_offset=m
        )
        outs.append(run.x[:, :, 0, :])
        heat.append(run.heat_kT)
    return np.concatenate(outs, axis=1), np.concatenate(heat, axis=1)


def mnist_metrics(params, outs, heat, labels, *, samples: int, seed: int, time_obs: float, dt: float,
                  seconds: float) -> dict:
    """The metrics of :func:`evaluate_mnist` from its output samples (P, M, n_out) and heat (P, M)."""
    score = score_classification(params, outs, labels)
    return {
        "task": "mnist",
        **score.as_dict(),
        "samples": samples,
        "seed": seed,
        "time": time_obs,
        "dt": dt,
        "heat_per_inference_kT": float(heat.mean()),
        "seconds": seconds,
        "confusion": score.confusion.tolist(),
    }


def evaluate_mnist(params, samples: int, seed: int, time_obs: float, dt: float, progress: bool = True) -> dict:
    """Evaluate ``params`` on the 10,000 MNIST test digits on the twin; returns metrics.

    Each digit gets ``samples`` independent trajectories of length ``time_obs`` from x = 0; the
    output nodes at ``time_obs`` are averaged over samples before the argmax.
    """
    inputs, labels = tasks.mnist_inputs("test")
    t0 = time.perf_counter()
    outs, heat = mnist_samples(params, inputs, time_obs, dt, seed, 0, samples, progress=progress)
    return mnist_metrics(params, outs, heat, labels, samples=samples, seed=seed, time_obs=time_obs, dt=dt,
                         seconds=time.perf_counter() - t0)
