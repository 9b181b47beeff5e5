"""Scoring trained computers on the twin (the reference every other backend is compared with)."""

from __future__ import annotations

import sys
import time

import numpy as np

from sim_backend.twin import sample_reset

from .model import tasks
from .model.tasks import score_classification

__all__ = ["MNIST_DEFAULTS", "evaluate_mnist"]

#: Observation settings of the published MNIST computer (arXiv 2509.15324).
MNIST_DEFAULTS = {"time": 0.2, "dt": 1e-3}


def evaluate_mnist(params, samples: int, seed: int, time_obs: float, dt: float, progress: bool = True) -> dict:
    """Evaluate ``params`` on the 10,000 MNIST test digits on the twin; returns metrics.

    Each digit gets ``samples`` independent trajectories of length ``time_obs`` from x = 0; the
    output nodes at ``time_obs`` are averaged over samples before the argmax.
    """
    from tqdm import tqdm



    inputs, labels = tasks.mnist_inputs("test")
    t0 = time.perf_counter()
    outs, heat = [], []
    for m in tqdm(range(samples), desc="twin: MNIST test set", unit="sample", disable=not progress, file=sys.stderr):
        run = sample_reset(
            params, inputs, time_obs, 1, dt=dt, seed=seed, nodes=params.network.outputs, energy=True, sample_offset=m
        )
        outs.append(run.x[:, :, 0, :])
        heat.append(run.heat_kT)
    seconds = time.perf_counter() - t0
    score = score_classification(params, np.concatenate(outs, axis=1), labels)
    return {
        "task": "mnist",
        **score.as_dict(),
        "samples": samples,
        "seed": seed,
        "time": time_obs,
        "dt": dt,
        "heat_per_inference_kT": float(np.concatenate(heat, axis=1).mean()),
        "seconds": seconds,
        "confusion": score.confusion.tolist(),
    }
