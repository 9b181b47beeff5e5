"""The numerical twin: sampling a thermodynamic computer by its overdamped Langevin dynamics.

Public functions
----------------
:func:`sample_reset`
    M independent runs per input vector from ``x0`` (default 0), observed at one or several
    times (reset sampling, eq. 11 of Whitelam & Casert).
:func:`sample_serial`
    One continuous run per input vector, observed every ``interval`` (serial sampling, eq. 12).
:func:`reset_moments`
    Mean and variance of reset samples, accumulated chunk by chunk so that memory stays bounded
    whatever ``M``.

Times and ``dt`` are physical times; the drift is ``mobility * force`` and the noise has variance
``2 mobility kT dt`` (overdamped schemes ``"em"``, ``"lm"``; ``scheme="baoab"`` integrates the
underdamped dynamics with a ``mass`` and ``friction``).  The steps are those of the one Langevin
core, :mod:`sim_backend.langevin`.  The number of steps to an observation time ``t`` is ``round(t / dt)``.
The trajectory of input ``p``, sample ``m`` depends only on ``(seed, p, m)``.

Per-node mobilities (``params.mobility`` an array ``mu``, shape (N,)) are integrated by the exact
change of variables ``y_i = x_i / sqrt(mu_i)`` (:func:`unit_mobility`): Langevin dynamics with
mobility ``mu_i`` in ``x`` is Langevin dynamics with mobility 1 in ``y`` for ``U(y) =
V(sqrt(mu) y)``, and the Euler-Maruyama / Leimkuhler-Matthews steps map one to one.  The kernel
integrates ``y`` (rails ``rail / sqrt(mu_i)``); results are mapped back, ``x = sqrt(mu) y``.
A scalar mobility takes the unchanged path (bitwise the same samples as before).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from tc_hw.model.params import Params

from . import kernel, langevin
from .rng import stream_states
from .simd import field_kernel, tile_shape

__all__ = ["sample_reset", "sample_serial", "reset_moments", "Run", "steps_for", "unit_mobility", "rail_array",
           "baoab_arguments", "kernel_for", "ENGINES"]


@dataclass
class Run:
    """Result of a twin run.

    ``x`` has shape (P, M, n_obs, n) (observation times on axis 2); ``heat_kT`` (P, M) is the
    heat given to the bath over the whole run in units of kT, ``V(x0) - V(x_final)`` (exact for
    the time-independent potential of one run; the input is switched on at ``x0`` and, from
    ``x0 = 0``, costs no work); ``times`` the observation times.
    """

    x: np.ndarray
    times: np.ndarray
    nodes: np.ndarray
    heat_kT: np.ndarray | None = None
    final: np.ndarray | None = None


def steps_for(t: float, dt: float) -> int:
    """Number of steps of ``dt`` that reach time ``t`` (``round(t/dt)``, at least 1)."""
    n = int(round(float(t) / float(dt)))
    if n < 1 or abs(n * dt - t) > 1e-6 * max(t, dt):
        raise ValueError(f"time {t} is not a positive multiple of dt = {dt}")
    return n


def unit_mobility(params: Params) -> tuple[Params, np.ndarray | None]:
    """The same dynamics with mobility 1, in coordinates ``y_i = x_i / sqrt(mu_i)``.

    For a per-node mobility ``mu`` (shape (N,)) and ``s = sqrt(mu)``, ``U(y) = V(s y)`` has
    ``Q mu, S mu^1.5, R mu^2, B s, C_ab s_a s_b, W_kj s_j`` (kT unchanged).  Proof that one step
    maps exactly: divide ``x' = x + mu_i dt F_i(x) + sqrt(2 mu_i kT dt) z`` by ``s_i`` and use
    ``-dU/dy_i = s_i F_i(x)``: ``y' = y + dt (-dU/dy_i) + sqrt(2 kT dt) z`` (the LM noise
    ``(z_n + z_n+1)/2`` maps the same way).  Rails ``|x_i| <= r`` become ``|y_i| <= r / s_i``.

    Returns ``(params_y, s)`` with ``s`` float64 shape (N,), or ``(params, None)`` for a scalar
    mobility (nothing to change).  ``params_y`` has no readout.
    """
    if not params.has_node_mobility:
        return params, None
    mu = params.mobility
    s = np.sqrt(mu)
    a, b = params.network.edges.T
    j = params.network.crossbar[:, 1]
    y = replace(
        params,
        quadratic=params.quadratic * mu,
        cubic=params.cubic * mu * s,
        quartic=params.quartic * mu * mu,
        bias=params.bias * s,
        coupling=params.coupling * s[a] * s[b],
        crossbar=params.crossbar * s[j],
        readout=None,
        mobility=1.0,
        require_stable=False,
    )
    return y, s


def rail_array(rail, n_rows: int, n: int, dtype, scale=None) -> np.ndarray:
    """Per-row rails for the kernels, shape (n_rows,): ``rail / scale`` on the N nodes.

    ``rail`` None means no rails (the dtype's largest value); ``scale`` (shape (N,)) is the
    ``sqrt(mu)`` of :func:`unit_mobility`.  Padding rows get ``rail``."""
    dtype = np.dtype(dtype)
    out = np.full(n_rows, np.finfo(dtype).max, dtype)
    if rail is not None:
        out[:] = float(rail)
        if scale is not None:
            out[:n] = float(rail) / scale
    return out


def to_node_coordinates(y, scale, rail, dtype) -> np.ndarray:
    """``x = scale * y`` (nodes on the last axis), clipped to ``[-rail, rail]`` when rails are on,
    as ``dtype``: undoes :func:`unit_mobility` on samples."""
    x = np.asarray(y, np.float64) * scale
    if rail is not None:
        np.clip(x, -float(rail), float(rail), out=x)
    return x.astype(dtype)


def uses_dense_coupling(params: Params) -> bool:
    """Whether the kernel computes the couplings as a dense tile product (else a CSR loop).

    Dense when at least 16 nodes and more than half of all pairs are coupled."""
    n = params.network.n_nodes
    return n >= 16 and params.network.n_edges / max(1, n * (n - 1) / 2) > 0.5


def _prepare(params: Params, dtype):
    """Padded float arrays the kernel needs: dense or CSR couplings and local-force terms."""
    n = params.network.n_nodes
    n_pad = n + (n & 1)  # nodes are updated in pairs
    n_rows = n_pad  # rows of the kernel's per-node arrays
    c = np.zeros((n_pad, n_pad))
    c[:n, :n] = params.coupling_matrix()
    if uses_dense_coupling(params):
        n_rows = -(-n_pad // 4) * 4  # whole tiles of the dense force (sim_backend.simd)
        dense = np.zeros((n_rows, n_pad), dtype)
        dense[:n_pad] = c
        indptr = np.zeros(n_pad + 1, np.int64)
        indices = np.zeros(1, np.int64)
        values = np.zeros(1, dtype)
    else:
        dense = np.zeros((0, 0), dtype)
        indptr, indices, rows, cols = langevin.csr_pattern(c != 0)
        values = np.ascontiguousarray(c[rows, cols], dtype=dtype) if len(cols) else np.zeros(1, dtype)

    def pad(v):
        out = np.zeros(n_rows, dtype)
        out[:n] = v
        return out

    return dense, indptr, indices, values, pad(2 * params.quadratic), pad(3 * params.cubic), pad(4 * params.quartic), pad


def _field(params: Params, inputs: np.ndarray, n_cols: int) -> np.ndarray:
    """``B - I W`` per input vector, shape (P, n_cols) float64 (columns past N are zero).

    Same numbers as :meth:`Params.field` up to rounding, but computed the same way for every input
    (:func:`sim_backend.simd.field_kernel`), so a trajectory does not depend on the batch."""
    n = params.network.n_nodes
    out = np.zeros((len(inputs), n_cols))
    if params.network.n_inputs == 0 or len(inputs) == 0:
        out[:, :n] = params.bias
        return out
    lanes = tile_shape.py_func(8)[1]
    w = np.zeros((params.network.n_inputs, -(-n // lanes) * lanes))
    w[:, :n] = params.crossbar_matrix()
    field_kernel(np.ascontiguousarray(inputs, dtype=np.float64), w, params.bias.astype(np.float64), out)
    return out


def _simulate(
    params: Params,
    inputs,
    n_samples: int,
    n_steps: int,
    obs_steps,
    nodes,
    dt: float,
    seed: int,
    dtype,
    scheme: str,
    x0,
    rail,
    want_final: bool,
    sample_offset: int = 0,
    mass: float = 1.0,
    friction: float | None = None,
    engine: str = "cpu",
):
    run_kernel = kernel_for(engine)
    dtype = langevin.check_run(dtype, scheme, dt, n_samples)
    inputs = params.check_inputs(inputs)
    baoab = baoab_arguments(params, dt, scheme, mass, friction, dtype)
    params, scale = unit_mobility(params)
    n = params.network.n_nodes
    nodes = langevin.check_nodes(nodes, np.arange(n), n)  # writable: one kernel signature
    dense, indptr, indices, values, a1, a2, a3, pad = _prepare(params, dtype)
    p_count = len(inputs)
    n_pad = n + (n & 1)
    field = _field(params, inputs, n_pad).astype(dtype)
    lane_input = np.repeat(np.arange(p_count, dtype=np.int64), n_samples)
    sample = np.tile(np.arange(sample_offset, sample_offset + n_samples, dtype=np.int64), p_count)
    states = stream_states(seed, lane_input, sample)
    start = langevin.start_state(x0, n, len(a1), dtype, scale)
    t_count = len(lane_input)
    out = np.empty((t_count, len(obs_steps), len(nodes)), dtype)
    final = np.empty((t_count if want_final else 0, n_pad), dtype)
    rails = rail_array(rail, len(a1), n, dtype, scale)
    mu_dt, noise_scale = langevin.overdamped_scales(params.mobility, params.kT, dt, scheme, dtype)
    run_kernel(
        dense,
        indptr,
        indices,
        values,
        field,
        lane_input,
        states,
        a1,
        a2,
        a3,
        start,
        mu_dt,
        noise_scale,
        int(n_steps),
        np.asarray(obs_steps, np.int64),
        nodes,
        langevin.SCHEME_CODE[scheme],
        rails,
        out,
        final,
        baoab,
    )
    out = out.reshape(p_count, n_samples, len(obs_steps), len(nodes))
    heat = fin = None
    if want_final:
        fin = final[:, :n].reshape(p_count, n_samples, n)
        v_end = params.energy(fin.astype(np.float64), inputs[:, None, :])  # U(y) = V(x): heat needs no mapping
        v_start = np.broadcast_to(params.energy(start[:n].astype(np.float64), inputs), (p_count,))[:, None]
        heat = (v_start - v_end) / params.kT
    if scale is not None:  # back to x = sqrt(mu) y (clipped: the rail is exact in x, not after rounding)
        out = to_node_coordinates(out, scale[nodes], rail, dtype)
        fin = None if fin is None else to_node_coordinates(fin, scale, rail, dtype)
    return out, nodes, heat, fin


ENGINES = ("cpu", "gpu")


def kernel_for(engine: str):
    """The step-loop kernel of ``engine`` (both have :func:`sim_backend.kernel.run_block_kernel`'s
    signature).  ``"gpu"`` imports JAX on first use (an optional extra); refused when it is absent."""
    if engine == "cpu":
        return kernel.run_block_kernel
    if engine != "gpu":
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    try:
        from . import jax_engine  # local: optional dependency (JAX), imported only when asked for
    except ImportError as exc:
        raise ValueError(f"engine 'gpu' needs JAX (pip install 'tc-hw[gpu]'): {exc}") from exc
    return jax_engine.run_block_kernel


def baoab_arguments(params: Params, dt: float, scheme: str, mass: float, friction, dtype) -> np.ndarray:
    """The kernel's BAOAB coefficients (shape (5,)); zeros for the overdamped schemes.

    ``friction`` defaults to ``1 / mobility`` (the overdamped limit ``mass -> 0`` then has the
    params' mobility).  A per-node mobility is refused with BAOAB (the change of variables of
    :func:`unit_mobility` would need a per-node mass)."""
    if scheme != "baoab":
        return np.zeros(5, dtype)
    if params.has_node_mobility:
        raise ValueError("scheme 'baoab' needs a scalar mobility (the params have a per-node mobility)")
    gamma = 1.0 / float(params.mobility) if friction is None else float(friction)
    return langevin.baoab_coefficients(dt, params.kT, float(mass), gamma, dtype)


def sample_reset(
    params: Params,
    inputs,
    times,
    n_samples: int,
    *,
    dt: float = 1e-3,
    seed: int = 0,
    nodes=None,
    dtype=np.float32,
    scheme: str = "em",
    x0=None,
    rail: float | None = None,
    energy: bool = False,
    sample_offset: int = 0,
    mass: float = 1.0,
    friction: float | None = None,
    engine: str = "cpu",
) -> Run:
    """Reset sampling: ``n_samples`` independent runs per input vector, observed at ``times``.

    Parameters
    ----------
    params : Params
    inputs : array_like, shape (P, K)
    times : float or sequence of float
        Observation time(s), multiples of ``dt``.  Several times share one run per sample.
    n_samples : int
        M, runs per input vector.
    dt : float
        Time step.
    seed : int
        Seed; trajectory ``(p, m)`` depends only on ``(seed, p, m + sample_offset)``.
    nodes : sequence of int, optional
        Nodes to record (default all), in the order given.
    dtype : float32 (default) or float64
        Precision of the state.
    scheme : {"em", "lm", "baoab"}
        Euler-Maruyama (the papers' scheme), Leimkuhler-Matthews (same cost, second order for
        equilibrium averages), or ``"baoab"``: *underdamped* (inertial) Langevin dynamics
        ``m dv = F dt - gamma v dt + sqrt(2 gamma kT) dW``, ``dx = v dt``, started at rest
        (``v = 0``), by the BAOAB splitting (one force per step; exact Ornstein-Uhlenbeck velocity
        update, so the velocity variance is ``kT / m`` at equilibrium for any ``dt``).  Needs a
        scalar mobility.
    x0 : array_like, shape (N,), optional
        Start state (default 0).
    rail : float, optional
        Clip nodes to ``[-rail, rail]`` after every step (hardware rails).
    energy : bool
        Also return the heat per trajectory and the final state (for ``"baoab"`` the heat is
        ``V(x0) - V(x_final)``, which omits the final kinetic energy).
    mass : float
        (``"baoab"`` only) Mass ``m`` of every node, in units where ``F`` is a force.
    friction : float, optional
        (``"baoab"`` only) Friction ``gamma`` (default ``1 / mobility``: the overdamped limit
        ``m -> 0`` then has the params' mobility).
    engine : {"cpu", "gpu"}
        ``"cpu"`` (default): the numba kernel.  ``"gpu"``: the JAX engine
        (:mod:`sim_backend.jax_engine`, on whatever device JAX finds; needs ``tc-hw[gpu]``): the
        same model, seeds and Gaussians, trajectories equal to the CPU's up to float rounding.

    Returns
    -------
    Run
        ``x`` has shape (P, M, n_times, n).
    """
    t = np.atleast_1d(np.asarray(times, dtype=float))
    steps = np.array([steps_for(v, dt) for v in t], np.int64)
    if np.any(np.diff(steps) <= 0):
        raise ValueError(f"observation times must be strictly increasing, got {t.tolist()}")
    out, nodes, heat, fin = _simulate(
        params, inputs, n_samples, steps[-1], steps, nodes, dt, seed, dtype, scheme, x0, rail, energy, sample_offset,
        mass, friction, engine,
    )
    return Run(out, steps * dt, nodes, heat, fin)


def sample_serial(
    params: Params,
    inputs,
    interval: float,
    n_samples: int,
    *,
    dt: float = 1e-3,
    seed: int = 0,
    nodes=None,
    dtype=np.float32,
    scheme: str = "em",
    x0=None,
    rail: float | None = None,
    energy: bool = False,
    mass: float = 1.0,
    friction: float | None = None,
    engine: str = "cpu",
) -> Run:
    """Serial sampling: one run per input vector, read every ``interval`` (first at ``interval``).

    Returns a :class:`Run` whose ``x`` has shape (P, M, 1, n): ``x[p, m, 0]`` is the reading at
    ``times[m] = (m + 1) * interval``.  Other arguments as for :func:`sample_reset`; the run of
    input ``p`` depends only on ``(seed, p)``.
    """
    k = steps_for(interval, dt)
    steps = k * np.arange(1, n_samples + 1, dtype=np.int64)
    out, nodes, heat, fin = _simulate(
        params, inputs, 1, steps[-1], steps, nodes, dt, seed, dtype, scheme, x0, rail, energy, 0, mass, friction, engine
    )
    return Run(out.transpose(0, 2, 1, 3), steps * dt, nodes, heat, fin)


def reset_moments(
    params: Params,
    inputs,
    times,
    n_samples: int,
    *,
    chunk: int = 256,
    **kwargs,
):
    """Mean and variance over ``n_samples`` reset runs, accumulated in chunks of samples.

    Returns ``mean, var`` of shape (P, n_times, n) (float64, ``var`` with ``ddof=1``).  The
    samples are exactly those of :func:`sample_reset` with the same seed.
    """
    total = s1 = s2 = None
    done = 0
    while done < n_samples:
        m = min(chunk, n_samples - done)
        x = sample_reset(params, inputs, times, m, sample_offset=done, **kwargs).x.astype(np.float64)
        mean_c = x.mean(1)
        m2_c = ((x - mean_c[:, None]) ** 2).sum(1)
        if total is None:
            total, s1, s2 = m, mean_c, m2_c
        else:  # Chan et al. pairwise update
            delta = mean_c - s1
            new = total + m
            s1 = s1 + delta * m / new
            s2 = s2 + m2_c + delta**2 * total * m / new
            total = new
        done += m
    return s1, s2 / max(total - 1, 1)
