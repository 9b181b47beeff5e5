"""Direct training: back-propagation through the computer's own stochastic dynamics.

The computer is trained for what it is used for: the class is read from the output nodes at the
observation time ``t_f`` of one noisy reset trajectory.  The loss is the cross-entropy of
``softmax(scale * x_out(t_f))`` with the label, where ``x(t)`` is the Euler-Maruyama trajectory

    x_{k+1} = x_k + dt F(x_k) + sqrt(2 mu kT dt) xi_k,   F(x) = u - (2Q + 3S x + 4R x^2) x - C x,
    u = B - I W

(``mu = 1``), with the noise ``xi`` held fixed while differentiating (the reparametrisation
gradient).  The adjoint runs backwards,

    lam_K = dL/dx_K,   lam_k = lam_{k+1} - dt [(2Q + 6S x_k + 12R x_k^2) lam_{k+1} + C lam_{k+1}],

and gives ``dL/du = dt sum_k lam_{k+1}`` and ``dL/dC_ab = -dt sum_k (lam_{k+1,a} x_{k,b} +
lam_{k+1,b} x_{k,a})`` on the network's edges; ``dL/dB = dL/du``, ``dL/dW = -I^T dL/du``.  The
self terms ``Q, S, R`` and ``kT`` stay fixed (they are the computer's hardware, ``J2 = J4 =
kT = 1`` in the gradient-descent paper).  Every image gets a new noise realisation every epoch,
so the computer learns to classify from one sample; the twin's evaluation averages 10.

Cost here (2 cores): one epoch of 55,000 digits with 200 steps is 25-50 s of float32 numpy
(BLAS on one thread: threaded OpenBLAS is slow on these small products).  Measured with the
defaults (15 epochs from a random start, seed 0): 0.9698 top-1 / 0.9917 top-2 on the full test
set with 10 samples per digit (the published OM parameters: 0.9203 / 0.9659), 749 s of training
on a loaded machine, 1.4e4 kT of heat per inference (published: 2.3e4 kT).  With ``lr = 3e-3``,
``scale = 3`` and 10 epochs it stops at 0.951; from the published parameters, 6 epochs, 0.948.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np

from sim_backend.langevin import euler_maruyama_paths, polynomial_force

from ..model.params import Params
from ..model import seeds

__all__ = ["DirectConfig", "forward", "backward", "train_direct", "train_mnist_direct", "trajectory_loss_and_grad", "initial_params"]


@dataclass(frozen=True)
class DirectConfig:
    """Settings of direct training (times in units of ``1/mobility``)."""

    epochs: int = 15
    batch: int = 128
    lr: float = 1e-2
    lr_final: float = 1e-4  #: cosine decay from ``lr`` to this
    scale: float = 5.0  #: logits = scale * x_out(t_f)
    time_obs: float = 0.2
    dt: float = 1e-3
    weight_decay: float = 0.0
    validation: int = 5000  #: training digits held out to pick the best epoch
    seed: int = 0


class _Model:
    """Dense float32 view of ``Params``: ``W`` (K, N), ``B`` (N,), ``C`` (N, N) on edges."""

    def __init__(self, params: Params):
        net = params.network
        self.params = params
        self.mask = np.zeros((net.n_nodes, net.n_nodes), np.float32)
        a, b = net.edges.T
        self.mask[a, b] = self.mask[b, a] = 1
        self.wmask = np.zeros((net.n_inputs, net.n_nodes), np.float32)
        self.wmask[tuple(net.crossbar.T)] = 1
        f32 = np.float32
        self.W = params.crossbar_matrix().astype(f32)
        self.B = params.bias.astype(f32)
        self.C = params.coupling_matrix().astype(f32)
        self.q2 = (2 * params.quadratic).astype(f32)
        self.s3 = (3 * params.cubic).astype(f32)
        self.r4 = (4 * params.quartic).astype(f32)
        self.sigma = f32(np.sqrt(2 * params.mobility * params.kT))
        self.mu = f32(params.mobility)

    def tensors(self) -> list[np.ndarray]:
        return [self.W, self.B, self.C]

    def to_params(self) -> Params:
        net = self.params.network
        a, b = net.edges.T
        k, j = net.crossbar.T
        return self.params.copy(
            bias=self.B.astype(np.float64),
            coupling=self.C[a, b].astype(np.float64),
            crossbar=self.W[k, j].astype(np.float64),
        )


def forward(model: _Model, inputs, noise, dt: float, field=None) -> np.ndarray:
    """Euler-Maruyama trajectories from ``x = 0``: states ``x_0..x_K``, shape (K+1, P, N).

    ``inputs`` has shape (P, K_in); ``noise`` shape (K, P, N), standard normal, float32;
    ``field`` (optional, (P, N), program units) is added to every trajectory's field ``B - I W``
    (:func:`backward` is the same with or without it: the field enters the force additively).
    """
    f32 = np.float32
    steps, p, n = noise.shape
    mu_dt = f32(model.mu * dt)
    amp = f32(model.sigma * np.sqrt(dt))
    u = model.B[None, :] - inputs @ model.W  # (P, N)
    if field is not None:
        u = (u + field).astype(u.dtype)
    xs = np.empty((steps + 1, p, n), u.dtype)
    xs[0] = 0

    def force(k, x):
        return polynomial_force(x, u, model.q2, model.s3, model.r4) - x @ model.C

    for k, _, x in euler_maruyama_paths(force, xs[0], steps, mu_dt, amp, lambda k, x: noise[k]):
        xs[k + 1] = x
    return xs


def backward(model: _Model, inputs, xs, lam, dt: float) -> list[np.ndarray]:
    """Adjoint of :func:`forward`: gradients ``[dL/dW, dL/dB, dL/dC]`` from ``lam = dL/dx_K``.

    ``xs`` is the output of :func:`forward`, shape (K+1, P, N); ``lam`` has shape (P, N).
    """
    f32 = np.float32
    steps, p, n = xs.shape[0] - 1, xs.shape[1], xs.shape[2]
    mu_dt = f32(model.mu * dt)
    lam = np.asarray(lam, xs.dtype)
    lams = np.empty((steps, p, n), xs.dtype)  # lam_{k+1} for k = 0..steps-1
    for k in range(steps - 1, -1, -1):
        lams[k] = lam
        xk = xs[k]
        curv = model.q2 + xk * (2 * model.s3 + 3 * model.r4 * xk)
        lam = lam - mu_dt * (curv * lam + lam @ model.C)
    g_u = mu_dt * lams.sum(axis=0)  # (P, N)
    g_c = -mu_dt * (lams.reshape(-1, n).T @ xs[:-1].reshape(-1, n))
    g_c = (g_c + g_c.T) * model.mask
    return [-(inputs.T @ g_u) * model.wmask, g_u.sum(axis=0), g_c]


def trajectory_loss_and_grad(model: _Model, inputs, labels, noise, dt: float, scale: float, outputs):
    """Mean cross-entropy of ``softmax(scale * x_out(t_f))`` over a batch, and its gradient.

    Parameters
    ----------
    inputs : ndarray, shape (P, K), float32
    labels : ndarray of int, shape (P,)
    noise : ndarray, shape (steps, P, N), float32, standard normal
    dt : float
    scale : float
        Logit scale applied to the output nodes.
    outputs : ndarray of int, shape (n_out,)

    Returns
    -------
    loss : float
    grads : list of ndarray, shapes of ``model.tensors()``
    correct : int
        Digits whose single trajectory is classified correctly.
    """
    xs = forward(model, inputs, noise, dt)
    p, n = xs.shape[1:]
    logits = scale * xs[-1][:, outputs]
    logits -= logits.max(axis=1, keepdims=True)
    prob = np.exp(logits)
    prob /= prob.sum(axis=1, keepdims=True)
    rows = np.arange(p)
    loss = float(-np.log(prob[rows, labels] + 1e-30).mean())
    correct = int((logits.argmax(axis=1) == labels).sum())
    prob[rows, labels] -= 1
    lam = np.zeros((p, n), xs.dtype)
    lam[:, outputs] = (scale / p) * prob
    return loss, backward(model, inputs, xs, lam, dt), correct


class _Adam:
    def __init__(self, tensors, lr: float, b1=0.9, b2=0.999, eps=1e-8):
        self.m = [np.zeros_like(t) for t in tensors]
        self.v = [np.zeros_like(t) for t in tensors]
        self.lr, self.b1, self.b2, self.eps, self.t = lr, b1, b2, eps, 0

    def step(self, tensors, grads, lr: float) -> None:
        self.t += 1
        c1, c2 = 1 - self.b1**self.t, 1 - self.b2**self.t
        for t, g, m, v in zip(tensors, grads, self.m, self.v):
            m *= self.b1
            m += (1 - self.b1) * g
            v *= self.b2
            v += (1 - self.b2) * g * g
            t -= (lr * (m / c1) / (np.sqrt(v / c2) + self.eps)).astype(t.dtype)


def _accuracy(model: _Model, inputs, labels, cfg: DirectConfig, seed: int) -> float:
    """One-trajectory accuracy on ``inputs`` (no gradient), for picking the best epoch."""
    from sim_backend.twin import sample_reset

    run = sample_reset(model.to_params(), inputs, cfg.time_obs, 1, dt=cfg.dt, seed=seed,
                       nodes=model.params.network.outputs)
    return float((run.x[:, 0, 0, :].argmax(axis=1) == labels).mean())


def train_direct(params: Params, inputs, labels, cfg: DirectConfig = DirectConfig(), progress: bool = True):
    """Train ``params`` (bias, couplings, crossbar) on ``(inputs, labels)`` through the dynamics.

    Parameters
    ----------
    params : Params
        Start point (its self terms, ``kT`` and mobility are kept).
    inputs : ndarray, shape (P, K)
    labels : ndarray of int, shape (P,)
    cfg : DirectConfig
    progress : bool
        Show a tqdm bar on stderr.

    Returns
    -------
    Params
        The parameters of the epoch with the best validation accuracy.
    history : dict
        Per-epoch ``loss`` (training cross-entropy), ``train_acc`` (one sample), ``val_acc``.
    """
    from threadpoolctl import threadpool_limits
    from tqdm import tqdm

    from sim_backend.rng import normal

    x_all = np.asarray(inputs, np.float32)
    y_all = np.asarray(labels, np.int64)
    if x_all.ndim != 2 or x_all.shape[1] != params.network.n_inputs or len(x_all) != len(y_all):
        raise ValueError(f"inputs must have shape (P, {params.network.n_inputs}) with one label each")
    if not np.isfinite(x_all).all():
        raise ValueError("inputs contain NaN or infinite values")
    rng = seeds.rng(cfg.seed, seeds.DIRECT_DATA)
    order = rng.permutation(len(x_all))
    n_val = min(cfg.validation, len(x_all) // 5)
    val, train = order[:n_val], order[n_val:]
    model = _Model(params)
    outputs = np.asarray(params.network.outputs)
    steps = int(round(cfg.time_obs / cfg.dt))
    opt = _Adam(model.tensors(), cfg.lr)
    n_batches = -(-len(train) // cfg.batch)
    total = cfg.epochs * n_batches
    history = {"loss": [], "train_acc": [], "val_acc": []}
    best = (-1.0, model.to_params())
    bar = tqdm(total=total, desc="direct training", unit="batch", disable=not progress, file=sys.stderr)
    it = 0
    with threadpool_limits(1, "blas"):
        for epoch in range(cfg.epochs):
            perm = rng.permutation(train)
            losses, correct = [], 0
            for b in range(n_batches):
                idx = perm[b * cfg.batch : (b + 1) * cfg.batch]
                noise = normal(seeds.derive(cfg.seed, seeds.DIRECT_NOISE, it), steps * len(idx) * model.B.size).reshape(
                    steps, len(idx), -1
                )
                loss, grads, ok = trajectory_loss_and_grad(model, x_all[idx], y_all[idx], noise, cfg.dt, cfg.scale, outputs)
                if not np.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss} at epoch {epoch}, batch {b}: lower lr")
                if cfg.weight_decay:
                    grads[0] = grads[0] + cfg.weight_decay * model.W
                    grads[2] = grads[2] + cfg.weight_decay * model.C
                frac = it / max(1, total - 1)
                lr = cfg.lr_final + 0.5 * (cfg.lr - cfg.lr_final) * (1 + np.cos(np.pi * frac))
                opt.step(model.tensors(), grads, lr)
                losses.append(loss)
                correct += ok
                it += 1
                bar.update()
                if b % 20 == 0:
                    bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", acc=f"{correct / ((b + 1) * cfg.batch):.3f}")
            val_seed = seeds.derive(cfg.seed, seeds.DIRECT_VALIDATE, epoch)
            val_acc = _accuracy(model, x_all[val], y_all[val], cfg, seed=val_seed) if n_val else float("nan")
            history["loss"].append(float(np.mean(losses)))
            history["train_acc"].append(correct / len(train))
            history["val_acc"].append(val_acc)
            bar.set_postfix(epoch=epoch + 1, val_acc=f"{val_acc:.4f}")
            if not n_val or val_acc > best[0]:
                best = (val_acc, model.to_params())
    bar.close()
    return best[1], history


def train_mnist_direct(out=None, init=None, cfg: DirectConfig = DirectConfig(), evaluate_samples: int = 10,
                       progress: bool = True):
    """Direct training of the 784/64/10 computer on MNIST; evaluate on the test set; save.

    Parameters
    ----------
    out : path, optional
        Parameter file to write (HDF5), with ``<stem>_loss.png`` and ``<stem>_confusion.png``.
    init : Params or path, optional
        Start point (e.g. the OM solution); default: ``thermo_gd_network`` with ``J2 = J4 =
        kT = 1`` and small random couplings (N(0, 1e-2) scaled by 1/sqrt(inputs + couplings at the node)).
    cfg : DirectConfig
    evaluate_samples : int
        Samples per test digit for the final twin evaluation.

    Returns
    -------
    (Params, dict)
        The metrics hold ``top1``, ``top2`` (full test set), ``train_seconds``,
        ``heat_per_inference_kT`` and the per-epoch history.
    """
    from ..evaluation import evaluate_mnist
    from ..model.files import load_params, save_params
    from ..model.network import thermo_gd_network
    from ..model.tasks import mnist_inputs

    if init is None:
        params = initial_params(thermo_gd_network(), seeds.derive(cfg.seed, seeds.DIRECT_INIT))
    elif isinstance(init, Params):
        params = init
    else:
        params = load_params(init)
    images, labels = mnist_inputs("train")
    t0 = time.perf_counter()
    trained, history = train_direct(params, images, labels, cfg, progress)
    seconds = time.perf_counter() - t0
    metrics = evaluate_mnist(trained, evaluate_samples, seeds.derive(cfg.seed, seeds.DIRECT_FINAL, 0), cfg.time_obs,
                             cfg.dt, progress=progress)
    result = {
        "method": "direct",
        "task": "mnist",
        "top1": metrics["top1"],
        "top2": metrics["top2"],
        "train_seconds": round(seconds, 1),
        "heat_per_inference_kT": metrics["heat_per_inference_kT"],
        "samples": evaluate_samples,
        "history": history,
    }
    if out is not None:
        from .plots import confusion_png, loss_png

        provenance = {"method": "direct", "task": "mnist", "config": cfg.__dict__, **{k: result[k] for k in ("top1", "top2", "train_seconds")}}
        save_params(trained, out, provenance)
        result["out"] = str(out)
        result["plots"] = [
            str(loss_png(out, {"train cross-entropy": history["loss"]}, "epoch",
                         extra={"validation accuracy (1 sample)": history["val_acc"]})),
            str(confusion_png(out, metrics["confusion"])),
        ]
    return trained, result


def initial_params(network, seed: int = 0, sigma: float = 1e-2) -> Params:
    """``J2 = J4 = kT = 1``, zero biases, couplings and crossbar from N(0, sigma^2)/sqrt(fan-in)."""
    rng = np.random.default_rng(seed)
    fan = np.maximum(1, network.fan_in() + network.degree())
    c = rng.normal(0, sigma, network.n_edges) / np.sqrt(fan[network.edges[:, 1]])
    w = rng.normal(0, sigma, network.n_crossbar) / np.sqrt(fan[network.crossbar[:, 1]])
    n = network.n_nodes
    return Params(network, np.ones(n), np.zeros(n), np.ones(n), np.zeros(n), c, w)


def train_cos_direct(out=None, seed: int = 0, mode: str = "reset", iterations: int = 800, points: int = 20,
                     samples: int = 16, dt: float = 1e-2, lr: float = 5e-2, lr_final: float = 1e-3,
                     t_f: float = 1.0, restarts: int = 4, bound: float | dict | None = None,
                     max_seconds: float | None = None,
                     eval_samples: int = 1000, progress: bool = True, base: Params | None = None):
    """Train the 8x4 layered cos(2 pi z) computer through its dynamics (reset sampling).

    Each iteration draws ``points`` inputs ``z`` uniformly on [0, 1] and ``samples`` fresh
    trajectories per input to ``t_f``; the loss is the task's ``mean_z (f . <x_out(z)> - cos 2 pi
    z)^2`` with the sample mean over those trajectories, differentiated exactly (adjoint) with
    respect to biases, couplings, crossbar and readout ``f``, and stepped with Adam (cosine
    learning-rate decay).

    The start matters: cos(2 pi z) is even about z = 1/2, so its best linear fit is zero, and a
    network started near zero (linear response) sits on the plateau loss = 1/2 with vanishing
    gradient.  The start is therefore in the nonlinear regime: crossbar N(0, 4^2) (the field
    ``w z`` must reach the quartic's scale), biases N(0, 1), couplings N(0, 0.5^2), readout
    N(0, 0.3^2).  Even so a start can stall on the plateau, so ``restarts`` starts are trained
    for ``iterations / (4 restarts)`` iterations each and the best goes on (they count against
    ``iterations``).

    ``bound`` keeps every bias, coupling and crossbar weight in ``[-bound, bound]`` (projected
    after each step).  It is off by default: a bound of 2 (the default board's +-20 board units
    at kT = 0.1) stops the loss near 0.19.  A strong program is made to fit a board instead by
    :meth:`tc_hw.model.params.Params.rescaled` (smaller elements, longer board time).  The same computer, kT, dt and final measurement as
    :func:`tc_hw.train.cos.train_cos_ga`, so the two methods compare loss for wall time.
    ``bound`` may also be a dict with a bound per kind (``bias``, ``coupling``, ``crossbar``;
    a kind not named is not bounded), e.g. the reach of a board's channels at a chosen scale.

    ``base`` is the untrained computer (default :func:`tc_hw.train.cos.cos_network`, the 8x4
    layered one): any network with one input line and readout weights of shape (1, n_out), e.g.
    one laid out on a board's own coupling graph (:func:`tc_hw.demo.board_computer`).

    Returns
    -------
    (Params, dict)
        Metrics: ``loss`` (all 250 points, ``eval_samples`` samples, ``dt``), ``loss_check_dt``
        (the same at dt = 1e-3), ``iterations``, ``train_seconds``, ``history`` (per-iteration minibatch loss).
    """
    from threadpoolctl import threadpool_limits
    from tqdm import tqdm

    from sim_backend.rng import normal

    from ..model.files import save_params
    from ..model.tasks import cos_task
    from .cos import cos_network, evaluate_cos

    if mode != "reset":
        raise ValueError("direct training of the cos task supports mode='reset' only (use --method ga for serial)")
    base = cos_network() if base is None else base
    if base.readout is None or base.readout.shape != (1, len(base.network.outputs)) or base.network.n_inputs != 1:
        raise ValueError("the cos computer needs one input line and readout weights of shape (1, n_outputs)")
    if isinstance(bound, dict):
        unknown = set(bound) - {"bias", "coupling", "crossbar"}
        if unknown:
            raise ValueError(f"bound: unknown kinds {sorted(unknown)} (use bias, coupling, crossbar)")
        bounds = [bound.get("crossbar"), bound.get("bias"), bound.get("coupling")]  # the order of _Model.tensors
    else:
        bounds = [bound] * 3
    rng = seeds.rng(seed, seeds.DIRECT_DATA)
    steps = int(round(t_f / dt))
    outputs = np.asarray(base.network.outputs)

    def start():
        net = base.network
        p = base.copy(bias=rng.normal(0, 1.0, net.n_nodes), coupling=rng.normal(0, 0.5, net.n_edges),
                      crossbar=rng.normal(0, 4.0, net.n_crossbar))
        model = _Model(p)
        tensors = model.tensors() + [rng.normal(0, 0.3, base.readout.shape[1]).astype(np.float32)]
        project(model)
        return model, tensors, _Adam(tensors, lr)

    def project(model):
        for t, b in zip(model.tensors(), bounds):
            if b is not None:
                np.clip(t, -b, b, out=t)

    def step(model, tensors, opt, it, step_lr) -> float:
        f = tensors[-1]
        z = rng.uniform(0, 1, points).astype(np.float32)
        inputs = np.repeat(z, samples)[:, None]
        noise = normal(seeds.derive(seed, seeds.DIRECT_NOISE, it), steps * len(inputs) * model.B.size).reshape(steps, len(inputs), -1)
        xs = forward(model, inputs, noise, dt)
        xbar = xs[-1][:, outputs].reshape(points, samples, -1).mean(axis=1)  # (points, n_out)
        err = xbar @ f - np.cos(2 * np.pi * z)
        loss = float(np.mean(err**2))
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at iteration {it}: lower lr")
        lam = np.zeros((len(inputs), model.B.size), np.float32)
        lam[:, outputs] = np.repeat(2 * err / (points * samples), samples)[:, None] * f[None, :]
        opt.step(tensors, backward(model, inputs, xs, lam, dt) + [(2 / points) * (err @ xbar)], step_lr)
        project(model)
        return loss

    history = []
    t0 = time.perf_counter()
    bar = tqdm(total=iterations, desc="direct training (cos)", unit="it", disable=not progress, file=sys.stderr)
    probe = iterations // (4 * restarts) if restarts > 1 else 0
    with threadpool_limits(1, "blas"):
        # a few starts, each trained briefly; the one with the lowest recent loss goes on
        runs = []
        for r in range(restarts if probe else 1):
            run = start()
            losses = [step(*run, len(history) + i, lr) for i in range(probe)]
            history += losses
            bar.update(probe)
            runs.append((np.mean(losses[-max(1, probe // 4):]) if losses else 0.0, r, run))
        model, tensors, opt = min(runs, key=lambda t: (t[0], t[1]))[2]
        rest = iterations - len(history)
        for i in range(rest):
            step_lr = lr_final + 0.5 * (lr - lr_final) * (1 + np.cos(np.pi * i / max(1, rest - 1)))
            history.append(step(model, tensors, opt, len(history), step_lr))
            bar.update()
            bar.set_postfix(loss=f"{np.mean(history[-20:]):.2e}")
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                break
    f = tensors[-1]
    bar.close()
    seconds = time.perf_counter() - t0
    trained = model.to_params().copy(readout=f[None, :].astype(np.float64))
    # training ends with the exact least-squares readout (on its own noise seed), so the program's
    # twin loss is its best and a board's refitted readout is no gain over the training
    from .cos import readout_lstsq

    trained = readout_lstsq(trained, samples=eval_samples, dt=1e-3, seed=seeds.derive(seed, seeds.DIRECT_FINAL, 1))
    z_all, y0 = cos_task()
    vec = trained.vector()[None, :]
    loss_final = float(evaluate_cos(vec, trained, z_all, y0, samples=eval_samples, dt=dt, seed=seeds.derive(seed, seeds.DIRECT_FINAL, 2))[0])
    loss_check = float(evaluate_cos(vec, trained, z_all, y0, samples=eval_samples, dt=1e-3, seed=seeds.derive(seed, seeds.DIRECT_FINAL, 3))[0])
    result = {
        "method": "direct",
        "task": "cos",
        "loss": loss_final,
        "loss_check_dt": loss_check,
        "iterations": len(history),
        "train_seconds": round(seconds, 1),
        "history": history,
    }
    if out is not None:
        from .plots import loss_png

        provenance = {"method": "direct", "task": "cos", "iterations": len(history), "points": points,
                      "samples": samples, "dt": dt, "lr": lr, "seed": seed, "loss": loss_final}
        save_params(trained, out, provenance)
        result["out"] = str(out)
        result["plots"] = [str(loss_png(out, {"minibatch loss": history}, "iteration", log=True)),
                           str(cos_png(out, trained, dt, seed))]
    return trained, result


def cos_png(out, params: Params, dt: float, seed: int = 0):
    """The learned ``y(z)`` (mean and standard error, 1000 samples) against ``cos(2 pi z)``."""
    from sim_backend.twin import sample_reset

    from ..model.plotting import figure, save
    from ..model.tasks import cos_task
    from .plots import png_path

    z, y0 = cos_task()
    x = sample_reset(params, z, 1.0, 1000, dt=dt, seed=seeds.derive(seed, seeds.DIRECT_FINAL, 4), nodes=params.network.outputs).x[:, :, 0, :]
    y = x @ params.readout[0]  # (P, M)
    fig, ax = figure()
    ax.plot(z[:, 0], y0, "k--", label="target cos(2 pi z)")
    ax.fill_between(z[:, 0], y.mean(1) - y.std(1) / np.sqrt(y.shape[1]), y.mean(1) + y.std(1) / np.sqrt(y.shape[1]),
                    alpha=0.4)
    ax.plot(z[:, 0], y.mean(1), label="computer <y(z)>")
    ax.set_xlabel("input z")
    ax.set_ylabel("output")
    ax.legend()
    return save(fig, png_path(out, "cos"))
