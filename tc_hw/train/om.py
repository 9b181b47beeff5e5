"""Onsager-Machlup (OM) teacher-student training (Whitelam, arXiv 2509.15324).

A digital teacher (:mod:`tc_hw.train.teacher`) gives target activations ``A`` for every
training digit.  An *idealised trajectory* is made for each digit by a non-interacting copy of
the computer, started from ``x = 0`` and driven by constant guide biases ``g`` (hidden
``g = c_hidden A``, outputs ``g = c_output (2A - 1)``)::

    x_{k+1} = x_k + dt (g - 2 Q x_k - 3 S x_k^2 - 4 R x_k^3) [+ sqrt(2 kT_ideal dt) xi_k]

for ``t_f / dt`` Euler steps (``kT_ideal = 0`` by default: deterministic).  The student computer
(inputs clamped, all its couplings, crossbar weights and biases free; ``Q, S, R`` and ``kT``
fixed) is trained to make these paths likely: the loss is the discrete OM action, the negative
log-likelihood of the path under the student's Euler-Maruyama transition density, up to a
constant::

    L = sum_paths sum_k sum_i (dx_i + dt dV/dx_i(x_k))^2 / (4 mobility kT dt)        (mobility 1)
      = dt / (4 kT) sum (F_i - f_i)^2,
    F_i = dx_i/dt + 2 Q_i x_i + 3 S_i x_i^2 + 4 R_i x_i^3     ("needed force", from the path)
    f_i = B_i - sum_j C_ij x_j - sum_k W_ki I_k                (student's force, linear in theta)

So ``f_i = theta_i . z`` with the feature vector ``z = [1, I, x]`` (``D = 1 + K + N``), and
``L`` is a convex quadratic in the parameters.  All it needs are the *sufficient statistics*
``sum z z^T`` and ``sum z F^T`` over steps and paths (:class:`OMStats`); the inputs are constant
along a path, so the input blocks cost one ``I^T I`` per digit set, and ``sum x x^T`` is one
matmul per chunk of paths.  Both solvers work from these statistics only:

- :func:`om_lstsq`: the exact minimiser of ``action + ridge penalty``.  The action decouples per
  node except that a coupling ``C_ab`` is shared by nodes ``a`` and ``b``.  ``symmetric="joint"``
  (default) solves the coupled problem exactly: each node's private parameters (bias, crossbar
  column) are eliminated by a Schur complement (one Cholesky factorisation shared by all nodes
  that see the same inputs), leaving one ``E x E`` system for the couplings.  ``"average"``
  solves each node independently (asymmetric couplings), averages ``C_ab`` and ``C_ba`` and then
  re-solves the private parameters for the averaged couplings; it is an approximation (its
  action is higher, see below).
- :func:`om_gd`: Adam on the same objective, full batch (the gradient is ``2 (G Theta - b)``
  from the statistics, one ``D x D`` by ``D x N`` matmul per step), from ``theta = 0``.

Ridge: the objective minimised by both is ``J = action / (count dt / 4 kT) + ridge (|W|^2 +
sum_i |C_i.|^2)``, i.e. the mean squared force error per node-step plus a penalty on crossbar
weights and (both copies of) each coupling; biases are not penalised.

Measured on MNIST (defaults of :data:`OM_DEFAULTS`; teacher 97.84 % test; 60,000 training
digits, one deterministic path each; twin evaluation of the 10,000 test digits, 10 samples,
seed 0; 2 shared cores, 1 BLAS thread)::

    solver   top-1    top-2    train s (teacher + paths + solver)   action/path
    lstsq    0.9318   0.9711    82 (54 + 20 + 0.5..4)                13063 (exact minimum)
    gd       0.9317   0.9712   129 (86 + 16 + 25; 2000 Adam steps)  13100 (+0.3 %)
    published parameters (Whitelam): 0.9203 / 0.9659 on the same twin

Least squares is both better (it *is* the minimum; Adam gets within 0.3 % of it in 2000 steps
and gives the same accuracy) and faster (one 785 x 785 Cholesky shared by all nodes and one
2701 x 2701 coupling system: ~0.5 s once warm, against ~25 s of Adam), so it is the default.
Heat per inference on the twin: 2.65e4 kT (published parameters: 2.34e4 kT).

Symmetric couplings (validation split, 55,000 / 5,000 digits, same settings): ``"joint"``
reaches objective 2.961e5 and val top-1 / top-2 0.9454 / 0.9800; ``"average"`` 3.681e5
(+24 %) and 0.9164 / 0.9658.  Averaging the two one-sided estimates leaves a
coupling fitted for neither of its nodes, so the joint solution is the one to use (it costs
one extra 2701 x 2701 solve).

Choices (all on validation splits of the training set, two folds of 5,000 digits each, never
the test set): guide constants ``c = 320`` for the first teacher hidden layer and ``c = 160``
for the second hidden layer and the outputs.  Accuracy rises with ``c`` up to ~160 (one
constant for all nodes: c = 5, 10, 40, 80, 160, 320 gave val top-1 0.823, 0.879, 0.922, 0.935,
0.939, 0.942 on fold 1): a larger guide makes the nodes relax within a few steps
(``1/(2 + 12 x^2) ~ 0.01`` at the plateau ``x(g = 160) = 3.3``, the "+-3-4" of the paper's
guide activations) and their states nearly binary, so the student's couplings see settled,
sign-like hidden states for most of ``t_f`` and the ``kT = 1`` noise stops mattering (the
student scores the same at ``kT = 1e-3``).  A larger constant on the pixel-fed first layer
only helps (+0.5 % at (320, 160) over 160 everywhere; 480 or 640 no better), a larger one on
the second layer hurts.  The ridge barely matters between 1e-3 and 0.3 (+-0.2 %), it costs
accuracy from 1 up; 0.1 keeps crossbar weights below ~19.  Finite-temperature idealised
paths (``kT_ideal = 1``) gave no gain and cost 5x the time.  The teacher's weight decay (0.3,
decoupled) matters most: its hidden units are less saturated (39 % of |A| > 0.9 instead of 72 %),
which raised the student's val top-1 from 0.934 to 0.942 (mean of both folds).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from sim_backend.langevin import euler_maruyama_paths, polynomial_force

from ..model.network import Network
from ..model.params import Params
from ..model import seeds

__all__ = [
    "OMStats",
    "guide_bias",
    "ideal_trajectories",
    "trajectory_stats",
    "teacher_stats",
    "om_action",
    "om_gradient",
    "om_objective",
    "action_from_trajectories",
    "om_lstsq",
    "om_gd",
    "student_template",
    "evaluate_twin",
    "train_mnist_om",
    "OM_DEFAULTS",
]

#: Settings of :func:`train_mnist_om`, chosen on a validation split of the training set.
OM_DEFAULTS = {
    "c_hidden": (320.0, 160.0),
    "c_output": 160.0,
    "t_f": 0.2,
    "dt": 1e-3,
    "kT_ideal": 0.0,
    "n_traj": 1,
    "ridge": 0.1,
    "symmetric": "joint",
    "gd_steps": 2000,
    "gd_lr": 0.1,
}


# ---------------------------------------------------------------------------- trajectories
def _per_node(value, n: int, name: str) -> np.ndarray:
    v = np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)).copy()
    if not np.isfinite(v).all():
        raise ValueError(f"{name} must be finite")
    return v


def guide_bias(hidden, output, c_hidden, c_output=None) -> np.ndarray:
    """Guide biases ``[c_hidden A_hidden, c_output (2 A_output - 1)]``, shape (P, n_hidden + n_out).

    ``hidden`` (P, n_hidden) are tanh activations in [-1, 1], ``output`` (P, n_out) softmax
    probabilities in [0, 1].  ``c_hidden`` is a number or one per hidden node (or a pair
    ``(c_layer1, c_layer2)`` for the two 32-unit teacher layers), ``c_output`` a number (default:
    the mean of ``c_hidden``).  Node order is hidden then outputs, as in
    :func:`tc_hw.model.network.all_to_all`."""
    h = np.asarray(hidden, dtype=np.float64)
    o = np.asarray(output, dtype=np.float64)
    if h.ndim != 2 or o.ndim != 2 or len(h) != len(o):
        raise ValueError(f"hidden and output must be (P, n) arrays with the same P, got {h.shape}, {o.shape}")
    if not (np.isfinite(h).all() and np.isfinite(o).all()):
        raise ValueError("activations contain NaN or infinite values")
    ch = np.asarray(c_hidden, dtype=np.float64)
    if ch.ndim == 1 and len(ch) == 2 and h.shape[1] % 2 == 0 and h.shape[1] != 2:
        ch = np.repeat(ch, h.shape[1] // 2)
    ch = np.broadcast_to(ch, (h.shape[1],))
    c_output = float(ch.mean()) if c_output is None else float(c_output)
    return np.hstack([ch * h, c_output * (2 * o - 1)])


def ideal_trajectories(
    guide,
    t_f: float = 0.2,
    dt: float = 1e-3,
    *,
    kT: float = 0.0,
    n_traj: int = 1,
    seed: int = 0,
    quadratic=1.0,
    cubic=0.0,
    quartic=1.0,
) -> np.ndarray:
    """Idealised paths of the non-interacting computer driven by ``guide``, from ``x = 0``.

    Returns float64 of shape (P, n_traj, n_steps + 1, N), ``x[:, :, 0] = 0``.  With ``kT = 0``
    (default) the paths are deterministic and ``n_traj`` copies are identical.
    """
    g = np.asarray(guide, dtype=np.float64)
    if g.ndim != 2:
        raise ValueError(f"guide must have shape (P, N), got {g.shape}")
    if not np.isfinite(g).all():
        raise ValueError("guide contains NaN or infinite values")
    if not (dt > 0 and t_f > 0) or kT < 0 or n_traj < 1:
        raise ValueError("need dt > 0, t_f > 0, kT >= 0 and n_traj >= 1")
    n_steps = int(round(t_f / dt))
    p, n = g.shape
    q2 = 2 * _per_node(quadratic, n, "quadratic")
    s3 = 3 * _per_node(cubic, n, "cubic")
    r4 = 4 * _per_node(quartic, n, "quartic")
    x = np.zeros((p, n_traj, n_steps + 1, n))
    rng = np.random.default_rng(seed) if kT > 0 else None
    sigma = np.sqrt(2 * kT * dt)
    gg = g[:, None, :]
    noise = None if rng is None else (lambda k, cur: rng.standard_normal(cur.shape))
    paths = euler_maruyama_paths(lambda k, cur: polynomial_force(cur, gg, q2, s3, r4), np.zeros((p, n_traj, n)),
                                 n_steps, dt, sigma, noise)
    for k, _, cur in paths:
        x[:, :, k + 1] = cur
    return x


# ---------------------------------------------------------------------------- statistics
@dataclass
class OMStats:
    """Sufficient statistics of a set of paths for the OM action of a student.

    With features ``z = [1, I, x]`` of one step (``u = [1, I]``, ``x`` the state at the step's
    start) and the needed force ``F`` of that step:

    ``uu = sum u u^T`` (1+K, 1+K), ``ux = sum u x^T`` (1+K, N), ``xx = sum x x^T`` (N, N),
    ``uf = sum u F^T`` (1+K, N), ``xf = sum x F^T`` (N, N), ``ff = sum F^2`` (N,), summed over
    ``count`` steps of ``n_paths`` paths.  ``quadratic, cubic, quartic`` are the student's fixed
    local terms used in ``F``; ``dt`` the step.  Statistics of disjoint path sets add (``+``).
    """

    n_inputs: int
    n_nodes: int
    dt: float
    quadratic: np.ndarray
    cubic: np.ndarray
    quartic: np.ndarray
    count: int = 0
    n_paths: int = 0
    uu: np.ndarray = field(default=None, repr=False)
    ux: np.ndarray = field(default=None, repr=False)
    xx: np.ndarray = field(default=None, repr=False)
    uf: np.ndarray = field(default=None, repr=False)
    xf: np.ndarray = field(default=None, repr=False)
    ff: np.ndarray = field(default=None, repr=False)

    def __post_init__(self):
        k, n = self.n_inputs, self.n_nodes
        for name, shape in (("uu", (1 + k, 1 + k)), ("ux", (1 + k, n)), ("xx", (n, n)), ("uf", (1 + k, n)),
                            ("xf", (n, n)), ("ff", (n,))):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(shape))
            elif getattr(self, name).shape != shape:
                raise ValueError(f"{name} must have shape {shape}")

    def _compatible(self, other: "OMStats") -> None:
        if (self.n_inputs, self.n_nodes, self.dt) != (other.n_inputs, other.n_nodes, other.dt) or not all(
            np.array_equal(getattr(self, a), getattr(other, a)) for a in ("quadratic", "cubic", "quartic")
        ):
            raise ValueError("statistics of different students (sizes, dt or local terms) cannot be added")

    def __add__(self, other: "OMStats") -> "OMStats":
        self._compatible(other)
        return replace(
            self,
            count=self.count + other.count,
            n_paths=self.n_paths + other.n_paths,
            **{a: getattr(self, a) + getattr(other, a) for a in ("uu", "ux", "xx", "uf", "xf", "ff")},
        )

    @property
    def dim(self) -> int:
        """Number of features ``D = 1 + K + N``."""
        return 1 + self.n_inputs + self.n_nodes

    def gram(self) -> np.ndarray:
        """``G = sum z z^T``, shape (D, D)."""
        return np.block([[self.uu, self.ux], [self.ux.T, self.xx]])

    def rhs(self) -> np.ndarray:
        """``b = sum z F^T``, shape (D, N)."""
        return np.vstack([self.uf, self.xf])

    def check_student(self, params: Params) -> None:
        """Raise ``ValueError`` unless ``params`` is a student these statistics describe."""
        net = params.network
        if (net.n_inputs, net.n_nodes) != (self.n_inputs, self.n_nodes):
            raise ValueError(
                f"statistics are for {self.n_inputs} inputs and {self.n_nodes} nodes, the network has "
                f"{net.n_inputs} and {net.n_nodes}"
            )
        for a in ("quadratic", "cubic", "quartic"):
            if not np.allclose(getattr(params, a), getattr(self, a)):
                raise ValueError(f"the student's {a} terms differ from those the statistics were made with")


def trajectory_stats(inputs, x, dt: float, *, quadratic=1.0, cubic=0.0, quartic=1.0) -> OMStats:
    """Sufficient statistics of paths ``x`` under inputs ``inputs``.

    Parameters
    ----------
    inputs : array_like, shape (P, K)
        Clamped inputs of each path set (K may be 0).
    x : array_like, shape (P, M, S + 1, N) or (P, S + 1, N)
        M paths of S steps per input (e.g. from :func:`ideal_trajectories` or the twin).
    dt : float
        Step of the paths.
    quadratic, cubic, quartic : float or (N,)
        The student's fixed local terms ``Q, S, R``.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[2] < 2:
        raise ValueError(f"x must have shape (P, M, S+1, N) with S >= 1, got {x.shape}")
    inputs = np.asarray(inputs, dtype=np.float64)
    if inputs.ndim != 2 or len(inputs) != len(x):
        raise ValueError(f"inputs must have shape (P, K) with P = {len(x)}, got {inputs.shape}")
    if not (np.isfinite(x).all() and np.isfinite(inputs).all()):
        raise ValueError("paths or inputs contain NaN or infinite values")
    if not dt > 0:
        raise ValueError(f"dt must be positive, got {dt}")
    p, m, s1, n = x.shape
    k = inputs.shape[1]
    q, c3, r = (_per_node(v, n, name) for v, name in ((quadratic, "quadratic"), (cubic, "cubic"), (quartic, "quartic")))
    xs = x[:, :, :-1]
    f = np.diff(x, axis=2) / dt + xs * (2 * q + xs * (3 * c3 + xs * 4 * r))
    steps = m * (s1 - 1)
    sx = xs.sum(axis=(1, 2))  # (P, N)
    sf = f.sum(axis=(1, 2))
    u = np.hstack([np.ones((p, 1)), inputs])
    flat_x = xs.reshape(-1, n)
    flat_f = f.reshape(-1, n)
    return OMStats(
        k, n, float(dt), q, c3, r,
        count=p * steps,
        n_paths=p * m,
        uu=steps * (u.T @ u),
        ux=u.T @ sx,
        xx=flat_x.T @ flat_x,
        uf=u.T @ sf,
        xf=flat_x.T @ flat_f,
        ff=(flat_f * flat_f).sum(0),
    )


def teacher_stats(
    teacher,
    images,
    c_hidden,
    c_output=None,
    *,
    t_f: float = 0.2,
    dt: float = 1e-3,
    kT_ideal: float = 0.0,
    n_traj: int = 1,
    seed: int = 0,
    quadratic=1.0,
    cubic=0.0,
    quartic=1.0,
    chunk: int = 500,
    progress: bool = True,
    threads: int | None = 1,
) -> OMStats:
    """Statistics of the idealised paths of ``images`` (normalised, (P, 784)) under ``teacher``.

    Paths are made and summarised ``chunk`` digits at a time (memory ~ chunk x n_traj x steps x
    N x 16 bytes); with ``kT_ideal > 0`` each digit gets ``n_traj`` noisy paths, seeded by
    ``(seed, chunk index)``.  ``threads``: BLAS threads (default 1; more are much slower on a
    shared machine)."""
    if threads is not None:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=int(threads), user_api="blas"):
            return teacher_stats(teacher, images, c_hidden, c_output, t_f=t_f, dt=dt, kT_ideal=kT_ideal,
                                 n_traj=n_traj, seed=seed, quadratic=quadratic, cubic=cubic, quartic=quartic,
                                 chunk=chunk, progress=progress, threads=None)
    from tqdm import tqdm

    images = np.asarray(images, dtype=np.float64)
    hid, out = teacher.activations(images)
    g = guide_bias(hid, out, c_hidden, c_output)
    if kT_ideal == 0:
        n_traj = 1  # deterministic: copies would only repeat the same path
    stats = None
    starts = range(0, len(images), chunk)
    for ci, s in enumerate(tqdm(starts, desc="OM: idealised paths", unit="chunk", disable=not progress, file=sys.stderr)):
        if kT_ideal == 0:
            st = _deterministic_stats(images[s : s + chunk], g[s : s + chunk], t_f, dt, quadratic, cubic, quartic)
        else:
            x = ideal_trajectories(g[s : s + chunk], t_f, dt, kT=kT_ideal, n_traj=n_traj,
                                   seed=seeds.derive(seed, seeds.OM_CHUNK, ci),
                                   quadratic=quadratic, cubic=cubic, quartic=quartic)
            st = trajectory_stats(images[s : s + chunk], x, dt, quadratic=quadratic, cubic=cubic, quartic=quartic)
        stats = st if stats is None else stats + st
    return stats


def _deterministic_stats(inputs, guide, t_f, dt, quadratic, cubic, quartic) -> OMStats:
    """:func:`trajectory_stats` of the noiseless idealised paths, without storing the paths.

    Their needed force is the guide itself at every step (``F = dx/dt + 2Qx + ... = g`` exactly
    for an Euler path), so ``sum x F^T = sum_p (sum_k x_pk) g_p^T`` and ``sum F^2 = S sum g^2``:
    only ``sum x x^T`` needs the states of every step (one matmul over the chunk's steps)."""
    g = np.asarray(guide, dtype=np.float64)
    p, n = g.shape
    n_steps = int(round(t_f / dt))
    q, c3, r = (_per_node(v, n, name) for v, name in ((quadratic, "quadratic"), (cubic, "cubic"), (quartic, "quartic")))
    q2, s3, r4 = 2 * q, 3 * c3, 4 * r
    xs = np.empty((n_steps, p, n))  # start state of each step; xs[0] = 0
    xs[0] = 0
    for k, _, cur in euler_maruyama_paths(lambda k, x: polynomial_force(x, g, q2, s3, r4), xs[0], n_steps - 1, dt):
        xs[k + 1] = cur
    flat = xs.reshape(-1, n)
    sx = xs.sum(0)
    u = np.hstack([np.ones((p, 1)), np.asarray(inputs, dtype=np.float64)])
    return OMStats(
        u.shape[1] - 1, n, float(dt), q, c3, r,
        count=p * n_steps,
        n_paths=p,
        uu=n_steps * (u.T @ u),
        ux=u.T @ sx,
        xx=flat.T @ flat,
        uf=n_steps * (u.T @ g),
        xf=sx.T @ g,
        ff=n_steps * (g * g).sum(0),
    )


# ---------------------------------------------------------------------------- action and gradient
def _theta(params: Params) -> np.ndarray:
    """Coefficients ``Theta`` (D, N) with ``f = z @ Theta``: rows bias, ``-W``, ``-C``."""
    net = params.network
    th = np.empty((1 + net.n_inputs + net.n_nodes, net.n_nodes))
    th[0] = params.bias
    th[1 : 1 + net.n_inputs] = -params.crossbar_matrix()
    th[1 + net.n_inputs :] = -params.coupling_matrix()
    return th


def _theta_grad_to_params(net: Network, g: np.ndarray) -> dict:
    """Map ``dL/dTheta`` (D, N) to gradients of bias, coupling (per edge) and crossbar (per entry)."""
    k = net.n_inputs
    a, b = net.edges.T
    li, lj = net.crossbar.T
    return {
        "bias": g[0].copy(),
        "coupling": -(g[1 + k + b, a] + g[1 + k + a, b]),
        "crossbar": -g[1 + li, lj],
    }


def om_action(params: Params, stats: OMStats) -> float:
    """The discrete OM action of the paths summarised by ``stats`` under ``params`` (sum over paths).

    ``L = sum (dx + mobility dt dV/dx)^2 / (4 mobility kT dt)``, with ``params.kT`` and
    ``params.mobility`` (the paths' needed force is divided by the mobility)."""
    stats.check_student(params)
    th = _theta(params)
    quad = _quad_form(stats, th)
    return float(_action_scale(params, stats) * quad)


def _action_scale(params: Params, stats: OMStats) -> float:
    return params.mobility * stats.dt / (4 * params.kT)


def _quad_form(stats: OMStats, th: np.ndarray, mobility: float = 1.0) -> float:
    """``sum_i |F_i/mu - f_i|^2`` over all steps, from the statistics."""
    gth = stats.gram() @ th
    b = stats.rhs() / mobility
    return float(np.sum(th * gth) - 2 * np.sum(th * b) + stats.ff.sum() / mobility**2)


def om_gradient(params: Params, stats: OMStats) -> dict:
    """Analytic gradient of :func:`om_action`: ``{"bias": (N,), "coupling": (E,), "crossbar": (L,)}``.

    Per node ``dL/dTheta_i = 2 scale (G Theta_i - b_i)``; a coupling collects the terms of both
    of its nodes, ``dL/dC_ab = -(dL/dTheta[x_b, a] + dL/dTheta[x_a, b])``."""
    stats.check_student(params)
    th = _theta(params)
    g = 2 * _action_scale(params, stats) * (stats.gram() @ th - stats.rhs() / params.mobility)
    return _theta_grad_to_params(params.network, g)


def action_from_trajectories(params: Params, inputs, x, dt: float) -> float:
    """The OM action straight from its definition (slow; for checks): paths ``x`` (P, [M,] S+1, N)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 3:
        x = x[:, None]
    inputs = params.check_inputs(inputs)
    xs = x[:, :, :-1]
    drift = params.mobility * params.force(xs, inputs[:, None, None, :])
    r = np.diff(x, axis=2) - dt * drift
    return float((r * r).sum() / (4 * params.mobility * params.kT * dt))


def _penalty_weights(net: Network, ridge: float, ridge_coupling: float | None):
    rc = ridge if ridge_coupling is None else ridge_coupling
    if ridge < 0 or rc < 0:
        raise ValueError("ridge must be >= 0")
    return float(ridge), float(rc)


def om_objective(params: Params, stats: OMStats, ridge: float = 0.0, ridge_coupling: float | None = None) -> float:
    """What :func:`om_lstsq` and :func:`om_gd` minimise: mean squared force error per step and node
    summed over nodes, ``action / (count mu dt / 4 kT)``, plus ``ridge |W|^2 + ridge_coupling
    sum_i |C_i.|^2`` (each coupling counted at both of its nodes)."""
    rw, rc = _penalty_weights(params.network, ridge, ridge_coupling)
    return om_action(params, stats) / (_action_scale(params, stats) * stats.count) + rw * np.sum(
        params.crossbar**2
    ) + 2 * rc * np.sum(params.coupling**2)


# ---------------------------------------------------------------------------- solvers
def student_template(network: Network, quadratic=1.0, cubic=0.0, quartic=1.0, kT: float = 1.0) -> Params:
    """A student with zero couplings, crossbar and biases and the given fixed local terms."""
    n = network.n_nodes
    return Params(network, _per_node(quadratic, n, "quadratic"), _per_node(cubic, n, "cubic"),
                  _per_node(quartic, n, "quartic"), np.zeros(n), np.zeros(network.n_edges),
                  np.zeros(network.n_crossbar), kT=kT)


def _node_layout(net: Network):
    """Per node: private feature rows (bias, its inputs) and neighbour nodes with their edge ids."""
    k = net.n_inputs
    private = [[0] for _ in range(net.n_nodes)]
    for line, node in net.crossbar:
        private[node].append(1 + int(line))
    nbrs = [[] for _ in range(net.n_nodes)]
    eids = [[] for _ in range(net.n_nodes)]
    for e, (a, b) in enumerate(net.edges):
        nbrs[a].append(int(b))
        eids[a].append(e)
        nbrs[b].append(int(a))
        eids[b].append(e)
    return [np.asarray(p, np.int64) for p in private], [np.asarray(v, np.int64) for v in nbrs], [
        np.asarray(v, np.int64) for v in eids
    ]


def _spd_solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    import scipy.linalg

    try:
        return scipy.linalg.cho_solve(scipy.linalg.cho_factor(a, lower=True, check_finite=False), b, check_finite=False)
    except np.linalg.LinAlgError:
        return scipy.linalg.lstsq(a, b, check_finite=False)[0]


def om_lstsq(
    template: Params,
    stats: OMStats,
    ridge: float = 1e-3,
    ridge_coupling: float | None = None,
    symmetric: str = "joint",
    threads: int | None = 1,
) -> Params:
    """Exact minimiser of :func:`om_objective` (normal equations), from sufficient statistics.

    Parameters
    ----------
    template : Params
        The student: its network and fixed ``Q, S, R``, ``kT``, ``mobility`` (values of bias,
        coupling and crossbar are ignored).
    stats : OMStats
    ridge, ridge_coupling : float
        Penalties on crossbar weights and couplings (``ridge_coupling`` defaults to ``ridge``) in
        units of the mean squared force error per step (the Gram matrix divided by ``count``).
        Biases are not penalised (a 1e-12 jitter keeps the systems definite).
    symmetric : {"joint", "average"}
        ``"joint"``: exact solution with each symmetric coupling shared by its two nodes
        (Schur complement of the per-node private parameters, one ``E x E`` system).
        ``"average"``: one independent ridge problem per node (couplings ``C_ij != C_ji``),
        couplings averaged, private parameters re-solved for the averaged couplings.
    threads : int or None
        BLAS threads (default 1, fastest on a shared machine); ``None``: leave as is.
    """
    if symmetric not in ("joint", "average"):
        raise ValueError(f"symmetric must be 'joint' or 'average', got {symmetric!r}")
    stats.check_student(template)
    if threads is None:
        return _lstsq(template, stats, ridge, ridge_coupling, symmetric)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=int(threads), user_api="blas"):
        return _lstsq(template, stats, ridge, ridge_coupling, symmetric)


def _lstsq(template: Params, stats: OMStats, ridge, ridge_coupling, symmetric) -> Params:
    net = template.network
    rw, rc = _penalty_weights(net, ridge, ridge_coupling)
    n, k = net.n_nodes, net.n_inputs
    if stats.count == 0:
        raise ValueError("no steps in the statistics")
    g = stats.gram() / stats.count
    b = stats.rhs() / (stats.count * template.mobility)
    xs = slice(1 + k, 1 + k + n)
    private, nbrs, eids = _node_layout(net)
    # Group nodes with the same private features: one factorisation each (all-to-all: one).
    groups: dict[bytes, list[int]] = {}
    for i, p in enumerate(private):
        groups.setdefault(p.tobytes(), []).append(i)
    s_full = {}  # group key -> (P rows, A^-1 G[P, x] (|P|, n), A^-1 b[P, nodes] (|P|, n), S (n, n), h (n, n))
    for key, nodes in groups.items():
        p = private[nodes[0]]
        a = g[np.ix_(p, p)].copy()
        pen = np.full(len(p), rw)
        pen[0] = 0.0
        a[np.diag_indices_from(a)] += pen + 1e-12 * max(1.0, float(np.abs(np.diag(a)).max()))
        rhs = np.hstack([g[p, xs], b[p]])
        sol = _spd_solve(a, rhs)
        ainv_gx, ainv_b = sol[:, :n], sol[:, n:]
        s = g[xs, xs] - g[xs, p] @ ainv_gx
        h = b[xs] - g[xs, p] @ ainv_b
        s_full[key] = (p, ainv_gx, ainv_b, s, h)
    gamma = np.zeros((n, n))  # coefficient matrix: f_i gets + sum_j gamma[j, i] x_j; gamma = -C
    if net.n_edges:
        if symmetric == "joint":
            e = net.n_edges
            hmat = np.zeros((e, e))
            hvec = np.zeros(e)
            for i in range(n):
                if not len(nbrs[i]):
                    continue
                _, _, _, s, h = s_full[private[i].tobytes()]
                ni, ei = nbrs[i], eids[i]
                hmat[np.ix_(ei, ei)] += s[np.ix_(ni, ni)]
                hvec[ei] += h[ni, i]
            hmat[np.diag_indices_from(hmat)] += 2 * rc + 1e-12
            coef = _spd_solve(hmat, hvec)
            a_, b_ = net.edges.T
            gamma[a_, b_] = coef
            gamma[b_, a_] = coef
        else:
            for i in range(n):
                if not len(nbrs[i]):
                    continue
                _, _, _, s, h = s_full[private[i].tobytes()]
                ni = nbrs[i]
                m = s[np.ix_(ni, ni)].copy()
                m[np.diag_indices_from(m)] += rc + 1e-12
                gamma[ni, i] = _spd_solve(m, h[ni, i])
            gamma = 0.5 * (gamma + gamma.T)
    # Private parameters given the couplings.
    th = np.zeros((stats.dim, n))
    th[xs] = gamma
    for key, nodes in groups.items():
        p, ainv_gx, ainv_b, _, _ = s_full[key]
        nodes = np.asarray(nodes)
        th[np.ix_(p, nodes)] = ainv_b[:, nodes] - ainv_gx @ gamma[:, nodes]
    return _params_from_theta(template, th)


def _params_from_theta(template: Params, th: np.ndarray) -> Params:
    net = template.network
    k = net.n_inputs
    a, b = net.edges.T
    li, lj = net.crossbar.T
    return template.copy(bias=th[0].copy(), coupling=-th[1 + k + b, a], crossbar=-th[1 + li, lj])


def om_gd(
    template: Params,
    stats: OMStats,
    steps: int = 2000,
    lr: float = 1e-2,
    ridge: float = 0.0,
    ridge_coupling: float | None = None,
    init: Params | None = None,
    betas=(0.9, 0.999),
    eps: float = 1e-8,
    decay: str = "cosine",
    record_every: int = 10,
    progress: bool = True,
    threads: int | None = 1,
):
    """Adam on :func:`om_objective` (full batch, from sufficient statistics), from zero or ``init``.

    Returns ``(params, history)``; ``history`` has ``step`` and ``objective`` every
    ``record_every`` steps and ``action_per_path`` (the OM action divided by the number of paths).
    ``decay``: ``"cosine"`` (learning rate decays to 0) or ``"none"``.
    """
    from tqdm import tqdm

    if steps < 1 or not lr > 0:
        raise ValueError("steps must be >= 1 and lr > 0")
    if decay not in ("cosine", "none"):
        raise ValueError(f"decay must be 'cosine' or 'none', got {decay!r}")
    stats.check_student(template)
    net = template.network
    rw, rc = _penalty_weights(net, ridge, ridge_coupling)
    k = net.n_inputs
    g = stats.gram() / stats.count
    b = stats.rhs() / (stats.count * template.mobility)
    c0 = stats.ff.sum() / (stats.count * template.mobility**2)
    p0 = init if init is not None else template
    vec = {"bias": p0.bias.copy(), "coupling": p0.coupling.copy(), "crossbar": p0.crossbar.copy()}
    m = {kk: np.zeros_like(v) for kk, v in vec.items()}
    v2 = {kk: np.zeros_like(v) for kk, v in vec.items()}
    a_, b_ = net.edges.T
    li, lj = net.crossbar.T
    th = np.zeros((stats.dim, net.n_nodes))
    history = {"step": [], "objective": [], "action_per_path": []}
    scale_path = _action_scale(template, stats) * stats.count / max(1, stats.n_paths)

    def fill():
        th[0] = vec["bias"]
        th[1 + li, lj] = -vec["crossbar"]
        th[1 + k + a_, b_] = -vec["coupling"]
        th[1 + k + b_, a_] = -vec["coupling"]

    def run():
        for step in tqdm(range(1, steps + 1), desc="OM: Adam", unit="step", disable=not progress, file=sys.stderr,
                         mininterval=1.0):
            fill()
            gth = g @ th
            fit = float(np.sum(th * gth) - 2 * np.sum(th * b) + c0)
            if step == 1 or step % record_every == 0 or step == steps:
                obj = fit + rw * np.sum(vec["crossbar"] ** 2) + 2 * rc * np.sum(vec["coupling"] ** 2)
                history["step"].append(step - 1)
                history["objective"].append(float(obj))
                history["action_per_path"].append(fit * scale_path)
            gt = 2 * (gth - b)
            grads = _theta_grad_to_params(net, gt)
            grads["crossbar"] = grads["crossbar"] + 2 * rw * vec["crossbar"]
            grads["coupling"] = grads["coupling"] + 4 * rc * vec["coupling"]
            rate = lr * (0.5 * (1 + np.cos(np.pi * (step - 1) / steps)) if decay == "cosine" else 1.0)
            for kk in vec:
                m[kk] = betas[0] * m[kk] + (1 - betas[0]) * grads[kk]
                v2[kk] = betas[1] * v2[kk] + (1 - betas[1]) * grads[kk] ** 2
                mh = m[kk] / (1 - betas[0] ** step)
                vh = v2[kk] / (1 - betas[1] ** step)
                vec[kk] -= rate * mh / (np.sqrt(vh) + eps)

    if threads is None:
        run()
    else:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=int(threads), user_api="blas"):
            run()
    fill()
    fit = float(np.sum(th * (g @ th)) - 2 * np.sum(th * b) + c0)
    history["final_objective"] = float(fit + rw * np.sum(vec["crossbar"] ** 2) + 2 * rc * np.sum(vec["coupling"] ** 2))
    history["final_action_per_path"] = fit * scale_path
    return template.copy(**vec), history


# ---------------------------------------------------------------------------- evaluation
def evaluate_twin(params: Params, inputs, labels, samples: int = 10, seed: int = 0, t_f: float = 0.2,
                  dt: float = 1e-3) -> dict:
    """Top-1/top-2 of ``params`` on the twin for any digit set (e.g. a validation split)."""
    from sim_backend.twin import sample_reset

    from ..model.tasks import score_classification

    run = sample_reset(params, inputs, t_f, samples, dt=dt, seed=seed, nodes=params.network.outputs)
    return score_classification(params, run.x[:, :, 0, :], labels).as_dict()


# ---------------------------------------------------------------------------- MNIST pipeline
def _loss_plot(out, method: str, history: dict):
    from ..model.plotting import figure, save
    from .plots import png_path

    fig, ax = figure()
    if method == "gd":
        ax.plot(np.asarray(history["step"]) + 1, history["action_per_path"], label="OM action per path (Adam)")
        if "lstsq_action_per_path" in history:
            ax.axhline(history["lstsq_action_per_path"], color="C3", ls="--", label="exact least-squares minimum")
        ax.set_xlabel("Adam step")
        ax.set_xscale("log")
    else:
        ax.plot(history["ridge_path"], history["ridge_path_action_per_path"], "o-", label="least squares, ridge path")
        ax.axvline(history["ridge"], color="C3", ls="--", label=f"chosen ridge {history['ridge']:g}")
        ax.set_xscale("log")
        ax.set_xlabel("ridge")
    ax.set_yscale("log")
    ax.set_ylabel("OM action per idealised path")
    ax.legend(loc="best")
    ax.set_title(f"{Path(out).stem}: OM {method}")
    return save(fig, png_path(out, "loss"))


def train_mnist_om(
    method: str = "lstsq",
    out=None,
    seed: int = 0,
    teacher_path=None,
    progress: bool = True,
    *,
    c_hidden: float | None = None,
    c_output: float | None = None,
    ridge: float | None = None,
    ridge_coupling: float | None = None,
    symmetric: str | None = None,
    kT_ideal: float | None = None,
    n_traj: int | None = None,
    gd_steps: int | None = None,
    gd_lr: float | None = None,
    teacher_kwargs: dict | None = None,
    validation: int = 0,
    samples: int = 10,
    evaluate: bool = True,
):
    """Train the 784/64/10 computer on MNIST by OM teacher-student; evaluate on the test set; save.

    Parameters
    ----------
    method : {"lstsq", "gd"}
        Exact least squares (:func:`om_lstsq`) or Adam on the action (:func:`om_gd`).
    out : path, optional
        HDF5 parameter file to write (:func:`tc_hw.model.files.save_params`, with provenance), plus
        ``<stem>_loss.png`` and ``<stem>_confusion.png`` next to it.
    seed : int
        Teacher initialisation and minibatch order, idealised-path noise, twin evaluation.
    teacher_path : path, optional
        Teacher cache (HDF5): loaded if it exists, otherwise trained and saved there.
    progress : bool
        Progress bars on stderr.
    c_hidden, c_output, ridge, ridge_coupling, symmetric, kT_ideal, n_traj, gd_steps, gd_lr
        Override :data:`OM_DEFAULTS`.
    teacher_kwargs : dict, optional
        Settings for :func:`tc_hw.train.teacher.train_teacher`.
    validation : int
        Hold out the last ``validation`` training digits from teacher and OM training and report
        the twin accuracy on them (``val_top1``, ``val_top2``): the split used to choose the
        settings (the test set is never used for choices).
    samples : int
        Samples per test digit in the twin evaluation.
    evaluate : bool
        Run the full test-set evaluation (needed for ``top1``/``top2``/heat and the confusion PNG).

    Returns
    -------
    (Params, dict)
        Metrics: ``top1``, ``top2`` (full test set, ``samples`` per digit), ``train_seconds``
        (teacher + paths + solver), ``teacher_top1`` (teacher's test accuracy),
        ``heat_per_inference_kT``, ``om_seconds``, ``teacher_seconds``, the settings and ``history``.
    """
    from threadpoolctl import threadpool_limits

    if method not in ("lstsq", "gd"):
        raise ValueError(f"method must be 'lstsq' or 'gd', got {method!r}")
    with threadpool_limits(limits=1, user_api="blas"):  # BLAS threads are much slower on a shared machine
        return _train_mnist_om(method, out, seed, teacher_path, progress, c_hidden, c_output, ridge,
                               ridge_coupling, symmetric, kT_ideal, n_traj, gd_steps, gd_lr, teacher_kwargs,
                               validation, samples, evaluate)


def _train_mnist_om(method, out, seed, teacher_path, progress, c_hidden, c_output, ridge, ridge_coupling,
                    symmetric, kT_ideal, n_traj, gd_steps, gd_lr, teacher_kwargs, validation, samples, evaluate):
    from ..model.network import thermo_gd_network
    from ..model.tasks import mnist_inputs
    from .teacher import Teacher, get_teacher

    cfg = dict(OM_DEFAULTS)
    for key, val in dict(c_hidden=c_hidden, c_output=c_output, ridge=ridge, symmetric=symmetric, kT_ideal=kT_ideal,
                         n_traj=n_traj, gd_steps=gd_steps, gd_lr=gd_lr).items():
        if val is not None:
            cfg[key] = val
    cfg["ridge_coupling"] = ridge_coupling
    images, labels = mnist_inputs("train")
    if validation:
        if not 0 < validation < len(images):
            raise ValueError(f"validation must be in 1..{len(images) - 1}")
        val_x, val_y = images[-validation:], labels[-validation:]
        images, labels = images[:-validation], labels[:-validation]
    test_x, test_y = mnist_inputs("test")

    t0 = time.perf_counter()
    cached = teacher_path is not None and Path(teacher_path).exists()
    if cached:
        teacher = Teacher.load(teacher_path)
    else:
        teacher = get_teacher(None, images=images, labels=labels, progress=progress, test=False,
                              **{"seed": seed, **(teacher_kwargs or {})})
        if teacher_path is not None:
            teacher.save(teacher_path)
    t_teacher = time.perf_counter() - t0
    teacher_top1 = teacher.accuracy(test_x, test_y)

    t1 = time.perf_counter()
    template = student_template(thermo_gd_network())
    stats = teacher_stats(teacher, images, cfg["c_hidden"], cfg["c_output"], t_f=cfg["t_f"], dt=cfg["dt"],
                          kT_ideal=cfg["kT_ideal"], n_traj=cfg["n_traj"], seed=seed, progress=progress)
    t_stats = time.perf_counter() - t1
    t2 = time.perf_counter()
    per_path = _action_scale(template, stats) * stats.count / stats.n_paths
    if method == "lstsq":
        params = om_lstsq(template, stats, cfg["ridge"], ridge_coupling, cfg["symmetric"])
        t_solve = time.perf_counter() - t2
        history = {"ridge": cfg["ridge"], "ridge_path": [], "ridge_path_action_per_path": []}
        if out is not None:  # the loss plot: training action along a ridge path (not timed)
            for r in cfg["ridge"] * np.logspace(-2, 2, 5):
                p_r = om_lstsq(template, stats, r, None if ridge_coupling is None else ridge_coupling * r / cfg["ridge"],
                               cfg["symmetric"])
                history["ridge_path"].append(float(r))
                history["ridge_path_action_per_path"].append(om_action(p_r, stats) / stats.n_paths)
    else:
        params, history = om_gd(template, stats, cfg["gd_steps"], cfg["gd_lr"], cfg["ridge"], ridge_coupling,
                                progress=progress)
        t_solve = time.perf_counter() - t2
        if out is not None:
            best = om_lstsq(template, stats, cfg["ridge"], ridge_coupling, cfg["symmetric"])
            history["lstsq_action_per_path"] = om_action(best, stats) / stats.n_paths
    train_seconds = time.perf_counter() - t0
    action_path = om_action(params, stats) / stats.n_paths
    history["action_per_path_final"] = action_path
    result = {
        "method": "om",
        "solver": method,
        "task": "mnist",
        "train_seconds": round(train_seconds, 1),
        "teacher_seconds": round(t_teacher, 1),
        "om_seconds": round(t_stats + t_solve, 1),
        "teacher_top1": teacher_top1,
        "teacher_cached": cached,
        "action_per_path": action_path,
        "objective": om_objective(params, stats, cfg["ridge"], ridge_coupling),
        "n_train": len(images),
        "config": cfg,
        "samples": samples,
    }
    if validation:
        v = evaluate_twin(params, val_x, val_y, samples, seeds.derive(seed, seeds.OM_EVAL, 0), cfg["t_f"], cfg["dt"])
        result["val_top1"], result["val_top2"] = v["top1"], v["top2"]
        result["teacher_val_top1"] = teacher.accuracy(val_x, val_y)
    metrics = None
    if evaluate:
        from ..evaluation import evaluate_mnist

        metrics = evaluate_mnist(params, samples, seeds.derive(seed, seeds.OM_EVAL, 1), cfg["t_f"], cfg["dt"], progress=progress)
        result.update(top1=metrics["top1"], top2=metrics["top2"], heat_per_inference_kT=metrics["heat_per_inference_kT"])
    result["history"] = history
    if out is not None:
        from ..model.files import save_params
        from .plots import confusion_png

        provenance = {
            "method": f"om/{method}",
            "task": "mnist",
            "settings": cfg,
            "seed": seed,
            "teacher_top1": teacher_top1,
            "teacher": teacher.info,
            "train_seconds": result["train_seconds"],
            "loss_history": {k: v for k, v in history.items()},
            **{k: result[k] for k in ("top1", "top2", "val_top1", "val_top2") if k in result},
        }
        save_params(params, out, provenance)
        result["out"] = str(out)
        plots = [str(_loss_plot(out, method, history))]
        if metrics is not None:
            plots.append(str(confusion_png(out, metrics["confusion"])))
        result["plots"] = plots
    return params, result
