"""Small, readable pure-numpy integrators: the reference the fast kernel is tested against.

Nothing here is fast; everything here is easy to check by eye.  Time is in the units of
``1/params.mobility`` times ``params.mobility`` (i.e. ``dt`` and ``t`` are physical times and the
drift is ``mobility * force``).  A per-node mobility (``params.mobility`` of shape (N,)) is used
directly, node by node (drift ``mu_i F_i``, noise ``sqrt(2 mu_i kT dt)``): no change of variables,
so it is an independent check of the twin's :func:`sim_backend.twin.unit_mobility`.
"""

from __future__ import annotations

import numpy as np

from tc_hw.model.params import Params

__all__ = ["euler_maruyama", "underdamped"]


def _force(params: Params, field, c, x):
    """``-dV/dx`` given the precomputed field ``B - I W`` (P, 1, N) and coupling matrix ``c``."""
    return field - x * (2 * params.quadratic + x * (3 * params.cubic + 4 * x * params.quartic)) - x @ c


def euler_maruyama(
    params: Params,
    inputs,
    n_steps: int,
    n_samples: int = 1,
    dt: float = 1e-3,
    rng: np.random.Generator | int | None = 0,
    observe_every: int | None = None,
    scheme: str = "em",
    x0=None,
    rail: float | None = None,
):
    """Overdamped Langevin dynamics by Euler-Maruyama (or Leimkuhler-Matthews).

    Parameters
    ----------
    params : Params
    inputs : array_like, shape (P, K)
    n_steps : int
        Number of steps of size ``dt``.
    n_samples : int
        Independent trajectories per input vector (M).
    observe_every : int, optional
        Record the state every this many steps (default: only at the end).
    scheme : {"em", "lm"}
        ``"lm"`` is the Leimkuhler-Matthews scheme (noise ``(xi_n + xi_{n+1})/2``): same cost,
        second-order accurate for equilibrium averages.
    x0 : array_like, shape (N,), optional
        Start state (default 0).
    rail : float, optional
        Clip every node to ``[-rail, rail]`` after each step (hardware rails).

    Returns
    -------
    x : ndarray, shape (P, M, n_obs, N)
        States at steps ``observe_every, 2*observe_every, ...`` (``n_obs = n_steps //
        observe_every``).
    heat : ndarray, shape (P, M)
        Heat given to the bath along each trajectory, in units of ``kT`` (Stratonovich sum
        ``sum F(midpoint) . dx / kT``, with the trapezoidal midpoint force).
    """
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    inputs = params.check_inputs(inputs)
    p_count, n = len(inputs), params.network.n_nodes
    every = n_steps if observe_every is None else int(observe_every)
    field = params.field(inputs)[:, None, :]  # (P, 1, N)
    c = params.coupling_matrix()
    mu = params.mobility_per_node if params.has_node_mobility else params.mobility  # (N,) broadcasts over nodes
    sigma = np.sqrt(2 * mu * params.kT * dt)

    def force(x):
        return _force(params, field, c, x)

    x = np.zeros((p_count, n_samples, n)) if x0 is None else np.broadcast_to(np.asarray(x0, float), (p_count, n_samples, n)).copy()
    f = force(x)
    heat = np.zeros((p_count, n_samples))
    xi = rng.standard_normal(x.shape)
    out = []
    for step in range(1, n_steps + 1):
        if scheme == "em":
            noise = xi
            xi = rng.standard_normal(x.shape)
        elif scheme == "lm":
            xi_next = rng.standard_normal(x.shape)
            noise = 0.5 * (xi + xi_next)
            xi = xi_next
        else:
            raise ValueError(f"scheme must be 'em' or 'lm', got {scheme!r}")
        x_new = x + mu * dt * f + sigma * noise
        if rail is not None:
            np.clip(x_new, -rail, rail, out=x_new)
        f_new = force(x_new)
        heat += (0.5 * (f + f_new) * (x_new - x)).sum(-1)
        x, f = x_new, f_new
        if step % every == 0:
            out.append(x.copy())
    return np.stack(out, axis=2), heat / params.kT


def underdamped(
    params: Params,
    inputs,
    n_steps: int,
    n_samples: int = 1,
    dt: float = 1e-3,
    mass: float = 1.0,
    friction: float | None = None,
    rng: np.random.Generator | int | None = 0,
    observe_every: int | None = None,
):
    """Inertial (underdamped) Langevin dynamics by the BAOAB splitting.

    ``m dv = F dt - gamma v dt + sqrt(2 gamma kT) dW``, ``dx = v dt``, with friction ``gamma``
    (default ``1/mobility``, so that the overdamped limit ``m -> 0`` has mobility ``1/gamma``;
    per node when the mobility is an array).

    Returns states of shape (P, M, n_obs, N) and velocities of the same shape.
    """
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    inputs = params.check_inputs(inputs)
    gamma = 1.0 / params.mobility if friction is None else float(friction)
    p_count, n = len(inputs), params.network.n_nodes
    every = n_steps if observe_every is None else int(observe_every)
    field = params.field(inputs)[:, None, :]
    c = params.coupling_matrix()

    def force(x):
        return _force(params, field, c, x)

    a = np.exp(-gamma * dt / mass)
    b = np.sqrt(params.kT / mass * (1 - a * a))
    x = np.zeros((p_count, n_samples, n))
    v = np.zeros_like(x)
    f = force(x)
    xs, vs = [], []
    for step in range(1, n_steps + 1):
        v += 0.5 * dt * f / mass
        x += 0.5 * dt * v
        v = a * v + b * rng.standard_normal(v.shape)
        x += 0.5 * dt * v
        f = force(x)
        v += 0.5 * dt * f / mass
        if step % every == 0:
            xs.append(x.copy())
            vs.append(v.copy())
    return np.stack(xs, axis=2), np.stack(vs, axis=2)
