"""Tasks: inputs, targets and scores computed from samples of the output nodes.

A task never runs a device itself; it turns a batch of output samples, shape (P, M, n_out), into
a score.  The classification metrics follow Whitelam (arXiv 2509.15324): the class is the argmax
of the sample-averaged outputs (after readout weights, if any); top-2 counts a hit if the label is
among the two largest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .data.mnist import load_mnist
from .data.thermo_gd import normalise_images
from .params import Params

__all__ = ["ClassificationScore", "score_classification", "mnist_inputs", "cos_task", "cos_loss", "Task", "LOSSES",
           "cos_task_object", "save_task", "load_task"]


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


def cos_loss_unbiased(params: Params, output_samples, targets) -> float:
    """Loss (14) without its finite-sample bias: ``mean_z [(y(z) - y0(z))^2 - s^2(z) / M]``.

    ``y(z)`` is the mean of ``M`` readings, so ``(y - y0)^2`` overestimates the program's squared
    error by the variance of that mean, ``sigma^2(z) / M``; ``s^2(z)`` (the readings' variance of the
    read-out answer, ``ddof = 1``) is its unbiased estimate, so the expectation of this loss is the
    loss at infinitely many readings, the part an analog change can lower.  Shapes as
    :func:`cos_loss`; ``M >= 2``.  It can be slightly negative for a program that is almost exact.
    """
    x = np.asarray(output_samples, dtype=np.float64)
    if x.ndim != 3 or x.shape[1] < 2:
        raise ValueError(f"need (inputs, readings >= 2, outputs) samples, got shape {x.shape}")
    y = params.output(x)[..., 0]  # (P, M): the answer of every reading
    with np.errstate(over="ignore", invalid="ignore"):
        bias = float(np.mean(y.var(axis=1, ddof=1))) / x.shape[1]
    loss = cos_loss(params, x, targets) - bias
    return loss if np.isfinite(loss) else float("inf")


# ----------------------------------------------------------------------------- tasks as data
LOSSES = ("mse", "cross-entropy", "accuracy")
TASK_FORMAT = "tc-hw/task"
TASK_VERSION = 1


@dataclass(frozen=True)
class Task:
    """A task is data and a loss: what refinement (and board measurements) need to score a program.

    Attributes
    ----------
    name : str
    inputs : ndarray, shape (P, k)
        Input-line values (program units) of the P examples.
    loss : str
        ``mse`` (mean over examples of the squared error summed over outputs), ``cross-entropy``
        (softmax of the outputs against ``labels``, nats) or ``accuracy`` (scored as the error
        rate ``1 - top1`` so that smaller is better; reported as accuracy).
    targets : ndarray, shape (P, n_y), optional
        Target outputs (``mse``).
    labels : ndarray of int, shape (P,), optional
        Class labels in ``0 .. n_y-1`` (``cross-entropy``, ``accuracy``).

    The outputs ``y`` (P, n_y) are the readout applied to the output nodes' sample means.  The
    readout has an exact least-squares fit for every loss (:meth:`fit_readout`): to the targets
    for ``mse``, to one-hot labels for the classification losses (a linear probe; exact for the
    squared loss it minimises, a good start for the others).
    """

    name: str
    inputs: np.ndarray
    loss: str
    targets: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __post_init__(self):
        x = np.asarray(self.inputs, np.float64)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2 or len(x) < 2 or not np.all(np.isfinite(x)):
            raise ValueError(f"task {self.name!r}: inputs must be finite, shape (P >= 2, k), "
                             f"got {np.shape(self.inputs)}")
        object.__setattr__(self, "inputs", x)
        if self.loss not in LOSSES:
            raise ValueError(f"task {self.name!r}: loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.loss == "mse":
            if self.targets is None:
                raise ValueError(f"task {self.name!r}: the mse loss needs targets")
            t = np.asarray(self.targets, np.float64)
            t = t[:, None] if t.ndim == 1 else t
            if t.shape[0] != len(x) or t.ndim != 2 or not np.all(np.isfinite(t)):
                raise ValueError(f"task {self.name!r}: targets must be finite, shape ({len(x)}, n_y), got {t.shape}")
            object.__setattr__(self, "targets", t)
        else:
            if self.labels is None:
                raise ValueError(f"task {self.name!r}: the {self.loss} loss needs labels")
            lab = np.asarray(self.labels)
            if lab.shape != (len(x),) or not np.issubdtype(lab.dtype, np.integer) or lab.min() < 0:
                raise ValueError(f"task {self.name!r}: labels must be {len(x)} non-negative integers")
            object.__setattr__(self, "labels", lab.astype(np.int64))

    @property
    def n_examples(self) -> int:
        return len(self.inputs)

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def n_outputs(self) -> int:
        """``n_y``: outputs the readout must produce."""
        return self.targets.shape[1] if self.loss == "mse" else int(self.labels.max()) + 1

    def fit_targets(self, idx=None) -> np.ndarray:
        """What the least-squares readout fits, shape (len(idx), n_y): targets, or one-hot labels."""
        idx = slice(None) if idx is None or isinstance(idx, slice) else np.asarray(idx)
        if self.loss == "mse":
            return self.targets[idx]
        return np.eye(self.n_outputs)[self.labels[idx]]

    def score(self, y, idx=None) -> float:
        """The loss of outputs ``y`` (len(idx), n_y) on examples ``idx`` (default all); ``inf`` if not finite."""
        y = np.asarray(y, np.float64)
        y = y[:, None] if y.ndim == 1 else y
        idx = slice(None) if idx is None or isinstance(idx, slice) else np.asarray(idx)
        with np.errstate(all="ignore"):
            if self.loss == "mse":
                v = float(np.mean(np.sum((y - self.targets[idx]) ** 2, axis=1)))
            elif self.loss == "cross-entropy":
                z = y - y.max(axis=1, keepdims=True)
                logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
                v = float(-np.mean(logp[np.arange(len(y)), self.labels[idx]]))
            else:
                v = 1.0 - self.accuracy(y, idx)
        return v if np.isfinite(v) else float("inf")

    def accuracy(self, y, idx=None) -> float:
        """Fraction of examples whose largest output is the label (classification tasks)."""
        if self.labels is None:
            raise ValueError(f"task {self.name!r} has no labels")
        idx = slice(None) if idx is None or isinstance(idx, slice) else np.asarray(idx)
        return float(np.mean(np.argmax(np.asarray(y), axis=1) == self.labels[idx]))

    def fit_readout(self, xbar, idx=None) -> np.ndarray | None:
        """The least-squares readout (n_y, n_out) for output-node means ``xbar`` (len(idx), n_out)."""
        xbar = np.asarray(xbar, np.float64)
        if not np.all(np.isfinite(xbar)):
            return None
        f, *_ = np.linalg.lstsq(xbar, self.fit_targets(idx), rcond=None)
        return f.T if np.all(np.isfinite(f)) else None


def cos_task_object(n_points: int = 250) -> Task:
    """The built-in cos task as a :class:`Task`: ``z`` on [0, 1], targets ``cos(2 pi z)``, mse."""
    z, y = cos_task(n_points)
    return Task("cos", z, "mse", targets=y[:, None])


def save_task(task: Task, path) -> None:
    """Write a task file (HDF5, documented in docs/task-file.md)."""
    with h5py.File(path, "w") as f:
        f.attrs["format"] = TASK_FORMAT
        f.attrs["format_version"] = TASK_VERSION
        f.attrs["name"] = task.name
        f.attrs["loss"] = task.loss
        f["inputs"] = task.inputs
        if task.targets is not None:
            f["targets"] = task.targets
        if task.labels is not None:
            f["labels"] = task.labels


def load_task(path) -> Task:
    """Read a task file; ValueError naming what is wrong (format, version, arrays, loss)."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != TASK_FORMAT:
            raise ValueError(f"{path}: not a task file (format {f.attrs.get('format')!r}, expected {TASK_FORMAT!r})")
        if int(f.attrs.get("format_version", 0)) > TASK_VERSION:
            raise ValueError(f"{path}: task file version {f.attrs['format_version']} is newer than this code")
        if "inputs" not in f:
            raise ValueError(f"{path}: no /inputs dataset")
        loss = f.attrs.get("loss")
        loss = loss.decode() if isinstance(loss, bytes) else loss
        name = f.attrs.get("name", Path(str(path)).stem)
        name = name.decode() if isinstance(name, bytes) else str(name)
        return Task(name, f["inputs"][()], str(loss), targets=f["targets"][()] if "targets" in f else None,
                    labels=f["labels"][()] if "labels" in f else None)
