"""Training any task (:class:`tc_hw.model.tasks.Task`) through the dynamics, readout projected out.

The loss is the task's own (mean squared error, or the cross-entropy of a softmax of the
readout), scored as refinement scores it on a board: the readout ``F`` (n_y, n_out) applied to the
output nodes' *sample means* ``xbar`` over ``samples`` reset runs of ``t_f`` program units.  Each
iteration is variable projection: ``F`` is the task's exact readout for that iteration's means
(:func:`tc_hw.refine.fit_task_readout`: least squares for ``mse``, ridge multinomial logistic
regression for ``cross-entropy``/``accuracy``), and the analog elements (biases, couplings,
crossbar) step along the gradient of the loss *after* that fit.  By the envelope theorem the
fitted ``F`` needs no gradient of its own (exact at the fit's optimum, the ridge included):

    dL/dxbar_p = (softmax(F xbar_p) - onehot(label_p)) F / P        (cross-entropy)
    dL/dxbar_p = 2 (F xbar_p - target_p) F / P                      (mse)

and each of the ``samples`` runs of example ``p`` gets ``dL/dxbar_p / samples`` at its final
state; the adjoint of :func:`tc_hw.train.direct.forward` carries it back to the elements (the
reparametrisation gradient, noise held fixed).  The ``accuracy`` loss is trained through its
cross-entropy surrogate.  Training ends with the exact readout fitted on ``final_samples`` runs
per example at ``dt_final``, so the program's twin loss is its best and a board's refitted
readout is no gain over the training.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from sim_backend.population import population_reset
from sim_backend.rng import normal

from ..model import seeds
from ..model.params import Params
from ..model.tasks import Task
from ..refine import fit_task_readout
from .cos import _model_bounds
from .direct import _Adam, _Model, backward, forward

__all__ = ["train_task_varpro", "task_output_means", "readout_gradient"]


def readout_gradient(task: Task, xbar, readout, idx=None) -> np.ndarray:
    """``dL/dxbar`` (P, n_out) of the task loss of outputs ``xbar @ readout.T`` at fixed ``readout``.

    ``xbar``: output-node means of examples ``idx`` (default all), shape (P, n_out); ``readout``
    (n_y, n_out).  Cross-entropy (and accuracy, through its surrogate): ``(softmax(y) - onehot) F / P``;
    mse: ``2 (y - target) F / P``.
    """
    x = np.asarray(xbar, np.float64)
    f = np.asarray(readout, np.float64)
    y = x @ f.T
    if task.loss == "mse":
        return 2.0 * (y - task.fit_targets(idx)) @ f / len(x)
    z = y - y.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return (p - task.fit_targets(idx)) @ f / len(x)


def task_output_means(params: Params, task: Task, *, samples: int, dt: float, seed: int,
                      t_f: float = 1.0) -> np.ndarray:
    """Output-node means (P, n_out) of ``params`` at ``task``'s inputs on the twin: ``samples``
    reset runs of ``t_f`` program units per example (Euler-Maruyama step ``dt``)."""
    net = params.network
    x = population_reset([params], task.inputs[:, : net.n_inputs], t_f, samples, dt=dt, seed=int(seed),
                         nodes=net.outputs)
    return np.asarray(x[0, :, :, -1, :], np.float64).mean(axis=1)


def _check(base: Params, task: Task) -> None:
    if task.inputs.shape[1] != base.network.n_inputs:
        raise ValueError(f"the task has {task.inputs.shape[1]} inputs, the network {base.network.n_inputs} input lines")
    if len(base.network.outputs) < 1:
        raise ValueError("the network has no output nodes")


def train_task_varpro(base: Params, task: Task, *, bound: float | dict | None = None, iterations: int = 200,
                      batch: int = 48, samples: int = 8, dt: float = 1e-2, t_f: float = 1.0, lr: float = 3e-2,
                      lr_final: float = 1e-3, seed: int = 0, final_samples: int = 400, dt_final: float = 1e-3,
                      max_seconds: float | None = None, progress: bool = False) -> tuple[Params, dict]:
    """Train ``base``'s biases, couplings and crossbar weights for ``task``, readout projected out.

    Parameters
    ----------
    base : Params
        The start (its self terms, ``kT``, mobility and network are kept; its readout is ignored).
        ``task.inputs`` (P, k) drive its ``k = n_inputs`` input lines.
    task : Task
    bound : float or dict, optional
        Element bounds, projected after every step (as :func:`tc_hw.train.cos.train_cos_varpro`).
    iterations, batch, samples
        Adam steps; examples per step (drawn without replacement, reshuffled every pass); reset
        runs per example per step.
    dt, t_f
        Euler-Maruyama step and observation time, program units.
    lr, lr_final
        Adam learning rate, cosine-decayed to ``lr_final``.
    final_samples, dt_final
        Runs per example and time step of the final measurement the exact readout is fitted to.

    Returns
    -------
    (Params, dict)
        The trained program with its exact readout (n_y, n_out); metrics ``loss`` (the task loss
        of the final measurement, in-sample for the readout), ``accuracy`` (classification),
        ``start_loss`` (the same measurement of ``base`` with its own exact readout),
        ``history`` (per-iteration minibatch loss after the fit), ``iterations``, ``train_seconds``.
    """
    _check(base, task)
    bounds = _model_bounds(base, bound)
    rng = seeds.rng(seed, seeds.DIRECT_DATA)
    steps = int(round(t_f / dt))
    outputs = np.asarray(base.network.outputs)
    model = _Model(base)
    _project(model, bounds)
    opt = _Adam(model.tensors(), lr)
    order, history, t0 = np.empty(0, np.int64), [], time.perf_counter()
    start = _exact(model.to_params(), task, final_samples, dt_final, seeds.derive(seed, seeds.DIRECT_FINAL, 0), t_f)
    with threadpool_limits(1, "blas"):
        for it in range(iterations):
            if len(order) < batch:
                order = np.concatenate([order, rng.permutation(task.n_examples)])
            idx, order = np.sort(order[:batch]), order[batch:]
            step_lr = lr_final + 0.5 * (lr - lr_final) * (1 + np.cos(np.pi * it / max(1, iterations - 1)))
            history.append(_step(model, opt, task, idx, samples, steps, dt, outputs, step_lr,
                                 seeds.derive(seed, seeds.DIRECT_NOISE, it)))
            _project(model, bounds)
            if progress and it % 25 == 0:
                print(f"train {task.name}: iteration {it}, loss {np.mean(history[-10:]):.4g}", file=sys.stderr)
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                break
    trained, final = _exact(model.to_params(), task, final_samples, dt_final,
                            seeds.derive(seed, seeds.DIRECT_FINAL, 1), t_f, with_params=True)
    metrics = {"method": "varpro", "task": task.name, "loss_name": task.loss, "loss": final["loss"],
               "start_loss": start["loss"], "history": history, "iterations": len(history),
               "train_seconds": round(time.perf_counter() - t0, 1)}
    for k in ("accuracy",):
        if k in final:
            metrics[k], metrics["start_" + k] = final[k], start[k]
    return trained, metrics


def _project(model, bounds) -> None:
    for t, b in zip(model.tensors(), bounds):
        if isinstance(b, tuple):
            np.clip(t, b[0], b[1], out=t)
        elif b is not None:
            np.clip(t, -b, b, out=t)


def _step(model, opt, task: Task, idx, samples: int, steps: int, dt: float, outputs, lr: float, noise_seed: int):
    """One variable-projection step on examples ``idx``; returns the minibatch loss after the readout fit."""
    inputs = np.repeat(task.inputs[idx], samples, axis=0).astype(np.float32)
    noise = normal(noise_seed, steps * len(inputs) * model.B.size).reshape(steps, len(inputs), -1)
    xs = forward(model, inputs, noise, dt)
    xbar = xs[-1][:, outputs].reshape(len(idx), samples, -1).mean(axis=1).astype(np.float64)
    sub = Task(task.name, task.inputs[idx], task.loss,
               targets=None if task.targets is None else task.targets[idx],
               labels=None if task.labels is None else task.labels[idx])
    f = fit_task_readout(sub, xbar)
    if f is None:
        raise FloatingPointError("the output means are not finite: lower lr or dt")
    loss = sub.score(xbar @ f.T)
    g = readout_gradient(sub, xbar, f)  # (batch, n_out)
    lam = np.zeros((len(inputs), model.B.size), np.float32)
    lam[:, outputs] = np.repeat(g / samples, samples, axis=0)
    opt.step(model.tensors(), backward(model, inputs, xs, lam, dt), lr)
    return float(loss)


def _exact(params: Params, task: Task, samples: int, dt: float, seed: int, t_f: float, with_params: bool = False):
    """``params`` with the task's exact readout fitted to one measurement (``samples`` runs per
    example), and that measurement's loss (and accuracy); the figures only unless ``with_params``."""
    xbar = task_output_means(params, task, samples=samples, dt=dt, seed=seed, t_f=t_f)
    f = fit_task_readout(task, xbar)
    if f is None:
        raise FloatingPointError("the final output means are not finite")
    y = xbar @ f.T
    out = {"loss": task.score(y)}
    if task.labels is not None:
        out["accuracy"] = task.accuracy(y)
    return (params.copy(readout=f), out) if with_params else out
