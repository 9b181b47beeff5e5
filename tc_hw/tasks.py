"""Tasks: inputs, targets and scores computed from samples of the output nodes.

A task never runs a device itself; it turns a batch of output samples, shape (P, M, n_out), into
a score.  The classification metrics follow Whitelam (arXiv 2509.15324): the class is the argmax
of the sample-averaged outputs (after readout weights, if any); top-2 counts a hit if the label is
among the two largest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .params import Params

__all__ = ["ClassificationScore", "score_classification", "mnist_inputs", "cos_task", "cos_loss"]


@dataclass(frozen=True)
class ClassificationScore:
    """Accuracy figures (fractions in [0, 1]) and the confusion matrix (true, predicted)."""

    top1: float
    top2: float
    n: int
    confusion: np.ndarray

    def as_dict(self) -> dict:
        return {"top1": self.top1, "top2": self.top2, "n": self.n}


def score_classification(params: Params, output_samples, labels) -> ClassificationScore:
    """Score classification from output-node samples.

    Parameters
    ----------
    params : Params
        Supplies the readout weights (if any) applied to the sample means.
    output_samples : array_like, shape (P, M, n_out)
        Values of the output nodes for P inputs, M samples each.
    labels : array_like of int, shape (P,)
    """
    y = params.output(np.asarray(output_samples, dtype=np.float64).mean(axis=1))  # (P, classes)
    labels = np.asarray(labels).astype(np.int64)
    if y.shape[0] != labels.shape[0]:
        raise ValueError(f"{y.shape[0]} outputs for {labels.shape[0]} labels")
    order = np.argsort(-y, axis=1, kind="stable")
    top1 = order[:, 0] == labels
    top2 = top1 | (order[:, 1] == labels)
    k = y.shape[1]
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (labels, order[:, 0]), 1)
    return ClassificationScore(float(top1.mean()), float(top2.mean()), int(len(labels)), confusion)


def mnist_inputs(split: str = "test", norm: float | None = 44.483989):
    """MNIST images normalised as for the published parameters, shape (n, 784), and labels."""
    from .data.mnist import load_mnist
    from .data.thermo_gd import normalise_images

    images, labels = load_mnist(split)
    return normalise_images(images, norm), labels


def cos_task(n_points: int = 250):
    """Inputs ``z_j = j/(K-1)`` on [0, 1], shape (K, 1), and targets ``cos(2 pi z)``, shape (K,)."""
    z = np.linspace(0.0, 1.0, n_points)
    return z[:, None], np.cos(2 * np.pi * z)


def cos_loss(params: Params, output_samples, targets) -> float:
    """Loss (14) of Whitelam & Casert: mean over inputs of ``(y0(z_j) - y(z_j))^2``.

    ``y(z) = sum_i f_i <x_i(z)>`` is the computer's output (readout weights ``f`` of ``params``
    applied to the sample means of the output nodes; without readout weights there must be one
    output node).

    Parameters
    ----------
    params : Params
        Supplies the readout weights, shape (1, n_out), if any.
    output_samples : array_like, shape (P, M, n_out)
        Output-node values, M samples (reset or serial) for each of P inputs.
    targets : array_like, shape (P,)
        ``y0(z_j)``, e.g. ``cos(2 pi z_j)`` from :func:`cos_task`.

    Returns
    -------
    float (``inf`` if the outputs are not finite).
    """
    y = params.output(np.asarray(output_samples, dtype=np.float64).mean(axis=1))  # (P, n_features)
    t = np.asarray(targets, dtype=np.float64).reshape(-1)
    if y.ndim != 2 or y.shape[1] != 1:
        raise ValueError(f"the output must be one number per input, got shape {y.shape[1:]} (set readout weights)")
    if y.shape[0] != t.shape[0]:
        raise ValueError(f"{y.shape[0]} outputs for {t.shape[0]} targets")
    with np.errstate(over="ignore", invalid="ignore"):
        loss = float(np.mean((y[:, 0] - t) ** 2))
    return loss if np.isfinite(loss) else float("inf")
