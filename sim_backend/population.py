"""Sampling a whole population of parameter sets (one topology) in one compiled call.

A genetic algorithm evaluates ``pop`` candidate computers on the same inputs every generation.
:func:`population_reset` and :func:`population_serial` run all of them at once and return the
samples with a leading candidate axis, ``x`` of shape ``(pop, P, M, n_obs, n)``.

Two methods:

``"lanes"`` (default)
    A kernel of this module that stacks candidates along the *lanes* of the twin's kernel: every
    trajectory ``(candidate, input p, sample m)`` is one lane, and the per-node coefficients
    ``2Q, 3S, 4R``, the field ``B - I W`` and the couplings are per-lane arrays.  Lanes of
    different candidates share blocks, so no block is half empty when ``P * M`` is small (serial
    sampling has only ``P`` lanes per candidate).  The per-lane arithmetic, operation by operation,
    is that of :func:`sim_backend.kernel.run_block_kernel`'s sparse (CSR) path (the same
    :mod:`sim_backend.langevin` force and step functions), and the noise of
    trajectory ``(p, m)`` of candidate ``c`` is the stream ``(seeds[c], p, m)``: for networks the
    twin integrates on its sparse path (e.g. :func:`tc_hw.model.network.layered`) the samples are
    **bitwise equal** to ``twin.sample_reset(candidate, ..., seed=seeds[c])`` (tested).  With one
    seed for every candidate, all candidates see the same noise (common random numbers), which
    makes loss *differences* between candidates much less noisy.

``"union"``
    The disjoint union of the ``pop`` networks (one input line feeding every copy) run once by the
    twin's own kernel.  Each candidate gets independent noise, but which noise depends on its
    position in the population, so the result agrees with per-candidate sampling only
    statistically.  Kept as a cross-check of the lanes kernel and for backends that only offer the
    twin's kernel.

Both methods do the same arithmetic per trajectory step as a loop over
:func:`sim_backend.twin.sample_reset`; batching gains where a loop would leave blocks of lanes or
threads idle (serial sampling, few inputs or samples per candidate).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from numba import njit, prange

from tc_hw.model.network import Network
from tc_hw.model.params import Params

from . import langevin, twin
from .langevin import LANES, baoab_step, first_noise, observe, overdamped_step, sparse_force, sparse_force_lanes
from .rng import stream_states

__all__ = ["population_reset", "population_serial", "disjoint_union"]


@njit(parallel=True, fastmath=True, error_model="numpy", cache=True)
def _population_kernel(
    indptr,  # (Np + 1,) int64 CSR row pointers of the shared topology
    indices,  # (nnz,) int64
    values,  # (C, nnz) float: couplings per candidate
    field,  # (C, P, Np) float: B - I @ W per candidate and input
    a1,  # (C, Np) float: 2 Q
    a2,  # (C, Np) float: 3 S
    a3,  # (C, Np) float: 4 R
    lane_cand,  # (T,) int64
    lane_input,  # (T,) int64
    lane_sign,  # (T,) float: +1, or -1 for the antithetic partner (noise negated)
    states,  # (T, 4) uint32
    x0,  # (Np,) float
    mu_dt,
    noise_scale,
    n_steps,
    obs_steps,  # (n_obs,) int64
    obs_nodes,  # (n_o,) int64
    scheme,  # 0 EM, 1 LM, 2 BAOAB (the steps of sim_backend.langevin)
    rail,  # (Np,) float: per-node rails (float max: none)
    out,  # (T, n_obs, n_o)
    baoab,  # (5,) float: sim_backend.langevin.baoab_coefficients (unused unless scheme 2)
):
    n_traj = lane_input.shape[0]
    n_pad = field.shape[2]
    nnz = values.shape[1]
    n_obs = obs_steps.shape[0]
    n_blocks = (n_traj + LANES - 1) // LANES
    for blk in prange(n_blocks):
        x = np.empty((n_pad, LANES), field.dtype)
        f = np.empty((n_pad, LANES), field.dtype)
        xi = np.zeros((n_pad, LANES), field.dtype)
        h = np.empty((n_pad, LANES), field.dtype)
        c1 = np.empty((n_pad, LANES), field.dtype)
        c2 = np.empty((n_pad, LANES), field.dtype)
        c3 = np.empty((n_pad, LANES), field.dtype)
        cv = np.empty((max(nnz, 1), LANES), field.dtype)
        s = np.empty((4, LANES), np.uint32)
        sg = np.empty(LANES, field.dtype)
        c0 = lane_cand[blk * LANES]
        same = lane_cand[min(blk * LANES + LANES - 1, n_traj - 1)] == c0  # lanes are sorted by candidate
        for b in range(LANES):
            t = min(blk * LANES + b, n_traj - 1)
            c = lane_cand[t]
            p = lane_input[t]
            for i in range(n_pad):
                h[i, b] = field[c, p, i]
                x[i, b] = x0[i]
                c1[i, b] = a1[c, i]
                c2[i, b] = a2[c, i]
                c3[i, b] = a3[c, i]
            for k in range(nnz):
                cv[k, b] = values[c, k]
            for w in range(4):
                s[w, b] = states[t, w]
            sg[b] = lane_sign[t]
        if scheme == 1:
            first_noise(s, sg, True, xi, n_pad)
        k_obs = 0
        for step in range(1, n_steps + 1):
            if same:  # one candidate in the whole block: scalar coefficients, as the twin's kernel
                sparse_force(indptr, indices, values[c0], x, h, a1[c0], a2[c0], a3[c0], f, n_pad)
            else:
                sparse_force_lanes(indptr, indices, cv, x, h, c1, c2, c3, f, n_pad)
            if scheme == 2:  # xi holds the velocities
                kick = baoab[0] if step == 1 else baoab[1]
                baoab_step(x, xi, f, s, sg, True, n_pad, kick, baoab[2], baoab[3], baoab[4], rail)
            else:
                overdamped_step(x, f, xi, s, sg, True, n_pad, mu_dt, noise_scale, scheme, rail)
            if k_obs < n_obs and obs_steps[k_obs] == step:
                observe(x, out, obs_nodes, k_obs, blk * LANES, n_traj)
                k_obs += 1


def _check_population(candidates: Sequence[Params]) -> Network:
    if len(candidates) == 0:
        raise ValueError("the population is empty")
    first = candidates[0]
    for k, c in enumerate(candidates):
        if not isinstance(c, Params):
            raise TypeError(f"candidate {k} is a {type(c).__name__}, not Params")
        if not c.network.same_as(first.network):
            raise ValueError(f"candidate {k} has a different topology from candidate 0")
        if c.kT != first.kT or not np.array_equal(c.mobility, first.mobility):
            raise ValueError(
                f"candidate {k} has kT/mobility ({c.kT}, {c.mobility}), candidate 0 ({first.kT}, {first.mobility})"
            )
    return first.network


def _seeds(seed, n: int) -> np.ndarray:
    s = np.asarray(seed)
    if s.ndim == 0:
        return np.full(n, int(s), dtype=object)
    if s.shape != (n,):
        raise ValueError(f"seed must be an int or have shape ({n},), got {s.shape}")
    return np.array([int(v) for v in s], dtype=object)


def _run_lanes(candidates, inputs, n_samples, n_steps, obs_steps, nodes, dt, seeds, dtype, scheme, x0, rail,
               antithetic=False, mass=1.0, friction=None):
    """Samples of all candidates, shape (C, P, M, n_obs, n_o)."""
    dtype = langevin.check_run(dtype, scheme, dt, n_samples)
    inputs = candidates[0].check_inputs(inputs)
    baoab = twin.baoab_arguments(candidates[0], dt, scheme, mass, friction, dtype)
    scale = twin.unit_mobility(candidates[0])[1]  # per-node mobility: integrate y = x / sqrt(mu)
    if scale is not None:
        candidates = [twin.unit_mobility(c)[0] for c in candidates]
    first = candidates[0]
    net = first.network
    n = net.n_nodes
    n_pad = n + (n & 1)
    nodes = langevin.check_nodes(nodes, net.outputs, n)
    n_c, p_count = len(candidates), len(inputs)
    # CSR of the shared topology, in the order twin._prepare uses (row-major over the dense matrix)
    a, b = net.edges.T
    mask = np.zeros((n_pad, n_pad), bool)
    mask[a, b] = mask[b, a] = True
    indptr, indices, rows, cols = langevin.csr_pattern(mask)
    values = np.zeros((n_c, max(len(cols), 1)), dtype)
    field = np.zeros((n_c, p_count, n_pad), dtype)
    a1 = np.zeros((n_c, n_pad), dtype)
    a2 = np.zeros((n_c, n_pad), dtype)
    a3 = np.zeros((n_c, n_pad), dtype)
    for k, c in enumerate(candidates):
        if len(cols):
            values[k] = c.coupling_matrix()[rows, cols]
        field[k] = twin._field(c, inputs, n_pad)  # the twin's own field: bitwise the same numbers
        a1[k, :n] = 2 * c.quadratic
        a2[k, :n] = 3 * c.cubic
        a3[k, :n] = 4 * c.quartic
    start = langevin.start_state(x0, n, n_pad, dtype, scale)
    per = p_count * n_samples
    lane_cand = np.repeat(np.arange(n_c, dtype=np.int64), per)
    lane_input = np.tile(np.repeat(np.arange(p_count, dtype=np.int64), n_samples), n_c)
    m = np.arange(n_samples, dtype=np.int64)
    if antithetic:
        if n_samples % 2:
            raise ValueError(f"antithetic sampling needs an even number of samples, got {n_samples}")
        half = n_samples // 2
        sample = np.tile(m % half, p_count)  # sample m + M/2 replays the stream of sample m, negated
        lane_sign = np.tile(np.where(m < half, 1.0, -1.0), n_c * p_count).astype(dtype)
    else:
        sample = np.tile(m, p_count)
        lane_sign = np.ones(n_c * per, dtype)
    states = np.concatenate([stream_states(s, lane_input[:per], sample) for s in seeds])
    out = np.empty((n_c * per, len(obs_steps), len(nodes)), dtype)
    rails = twin.rail_array(rail, n_pad, n, dtype, scale)
    _population_kernel(
        indptr,
        indices,
        values,
        field,
        a1,
        a2,
        a3,
        lane_cand,
        lane_input,
        lane_sign,
        states,
        start,
        *langevin.overdamped_scales(first.mobility, first.kT, dt, scheme, dtype),
        int(n_steps),
        np.asarray(obs_steps, np.int64),
        nodes,
        langevin.SCHEME_CODE[scheme],
        rails,
        out,
        baoab,
    )
    out = out.reshape(n_c, p_count, n_samples, len(obs_steps), len(nodes))
    return out if scale is None else twin.to_node_coordinates(out, scale[nodes], rail, dtype)


def disjoint_union(candidates: Sequence[Params]) -> tuple[Params, np.ndarray]:
    """One :class:`Params` holding every candidate as a disjoint copy of the shared network.

    Copy ``c`` occupies nodes ``c*N .. c*N + N-1``; the union has the candidates' input lines
    (line ``k`` feeds the first-layer nodes of every copy).  Returns ``(union, offsets)`` with
    ``offsets[c] = c * N``.  Each candidate is checked for stability on its own (the union is built
    with ``require_stable=False`` to avoid an eigenvalue problem of size ``pop * N``).
    """
    net = _check_population(candidates)
    n, n_c = net.n_nodes, len(candidates)
    off = np.arange(n_c) * n
    e = np.concatenate([net.edges + o for o in off]) if net.n_edges else np.zeros((0, 2), np.int64)
    w = np.concatenate([net.crossbar + [0, o] for o in off]) if net.n_crossbar else np.zeros((0, 2), np.int64)
    union = Network(n * n_c, e, net.n_inputs, w, np.concatenate([net.outputs + o for o in off]))
    cat = lambda k: np.concatenate([getattr(c, k) for c in candidates])  # noqa: E731
    p = Params(
        union,
        cat("quadratic"),
        cat("cubic"),
        cat("quartic"),
        cat("bias"),
        cat("coupling"),
        cat("crossbar"),
        kT=candidates[0].kT,
        mobility=np.tile(candidates[0].mobility, n_c) if candidates[0].has_node_mobility else candidates[0].mobility,
        require_stable=False,
    )
    return p, off


def _run(candidates, inputs, n_samples, times_or_interval, serial, nodes, dt, seed, dtype, scheme, x0, rail, method,
         antithetic=False, mass=1.0, friction=None):
    candidates = list(candidates)
    net = _check_population(candidates)
    if method not in ("lanes", "union"):
        raise ValueError(f"method must be 'lanes' or 'union', got {method!r}")
    if serial:
        k = twin.steps_for(times_or_interval, dt)
        obs = k * np.arange(1, n_samples + 1, dtype=np.int64)
        lanes_m = 1
    else:
        t = np.atleast_1d(np.asarray(times_or_interval, dtype=float))
        obs = np.array([twin.steps_for(v, dt) for v in t], np.int64)
        if np.any(np.diff(obs) <= 0):
            raise ValueError(f"observation times must be strictly increasing, got {t.tolist()}")
        lanes_m = n_samples
    if method == "lanes":
        seeds = _seeds(seed, len(candidates))
        x = _run_lanes(candidates, inputs, lanes_m, obs[-1], obs, nodes, dt, seeds, dtype, scheme,
                       x0, rail, antithetic, mass, friction)
    else:
        if np.ndim(seed) != 0:
            raise ValueError("method 'union' takes one seed for the whole population")
        if antithetic:
            raise ValueError("antithetic sampling needs method 'lanes'")
        union, off = disjoint_union(candidates)
        nodes_c = np.asarray(net.outputs if nodes is None else nodes, np.int64).reshape(-1)
        if len(nodes_c) == 0 or nodes_c.min() < 0 or nodes_c.max() >= net.n_nodes:
            raise ValueError(f"nodes must be indices in 0..{net.n_nodes - 1}")
        all_nodes = (off[:, None] + nodes_c[None, :]).ravel()
        x0u = None if x0 is None else np.tile(np.broadcast_to(np.asarray(x0, float), (net.n_nodes,)), len(candidates))
        kw = dict(dt=dt, seed=int(seed), nodes=all_nodes, dtype=dtype, scheme=scheme, x0=x0u, rail=rail, mass=mass,
                  friction=friction)
        if serial:
            r = twin.sample_serial(union, inputs, times_or_interval, n_samples, **kw).x  # (P, M, 1, C*n_o)
        else:
            r = twin.sample_reset(union, inputs, times_or_interval, n_samples, **kw).x  # (P, M, n_obs, C*n_o)
        p_, m_, o_, _ = r.shape
        return np.moveaxis(r.reshape(p_, m_, o_, len(candidates), len(nodes_c)), 3, 0)
    if serial:
        return x.transpose(0, 1, 3, 2, 4)  # (C, P, 1, M, n_o) -> (C, P, M, 1, n_o)
    return x


def population_reset(
    candidates: Sequence[Params],
    inputs,
    times,
    n_samples: int,
    *,
    dt: float = 1e-3,
    seed=0,
    nodes=None,
    dtype=np.float32,
    scheme: str = "em",
    x0=None,
    rail: float | None = None,
    method: str = "lanes",
    antithetic: bool = False,
    mass: float = 1.0,
    friction: float | None = None,
) -> np.ndarray:
    """Reset sampling of every candidate on the same inputs, in one call.

    Parameters
    ----------
    candidates : sequence of Params, length C
        Same topology, ``kT`` and ``mobility`` (a scalar or the same per-node array; per-node
        mobilities are integrated as in :func:`sim_backend.twin.unit_mobility`).
    inputs : array_like, shape (P, K)
    times : float or sequence of float
        Observation time(s), multiples of ``dt``.
    n_samples : int
        M independent runs per candidate and input.
    seed : int or array_like of int, shape (C,)
        Noise seed(s).  With ``method="lanes"``, trajectory ``(c, p, m)`` uses the twin's stream
        ``(seed[c], p, m)``; one int means the same noise for every candidate.
    nodes : sequence of int, optional
        Nodes to record (default: the network's outputs).
    dt, dtype, scheme, x0, rail, mass, friction
        As for :func:`sim_backend.twin.sample_reset` (``scheme="baoab"``: underdamped).
    method : {"lanes", "union"}
        See the module docstring.
    antithetic : bool
        (lanes only; M even) Antithetic variates: sample ``m + M/2`` is driven by the negated
        noise of sample ``m``.  Each sample is still an exact trajectory of the dynamics, so
        sample means stay unbiased, but for a nearly linear response the two halves' noise cancels
        in the mean, whose variance drops many-fold.  The pairs are not independent: do not use
        ``var / M`` of such samples as the error of their mean.  (A twin-only device: the bath
        of a real board cannot be negated.)

    Returns
    -------
    ndarray, shape (C, P, M, n_times, n_nodes)
        ``x[c]`` equals ``twin.sample_reset(candidates[c], ..., seed=seed[c]).x`` (bitwise with
        ``method="lanes"`` on sparse-path networks; in distribution otherwise).
    """
    return _run(candidates, inputs, n_samples, times, False, nodes, dt, seed, dtype, scheme, x0, rail, method,
                antithetic, mass, friction)


def population_serial(
    candidates: Sequence[Params],
    inputs,
    interval: float,
    n_samples: int,
    *,
    dt: float = 1e-3,
    seed=0,
    nodes=None,
    dtype=np.float32,
    scheme: str = "em",
    x0=None,
    rail: float | None = None,
    method: str = "lanes",
    mass: float = 1.0,
    friction: float | None = None,
) -> np.ndarray:
    """Serial sampling of every candidate: one run per input, read every ``interval``.

    Returns ``x`` of shape (C, P, M, 1, n_nodes), ``x[c, p, m, 0]`` the reading at
    ``(m + 1) * interval``; ``x[c]`` equals ``twin.sample_serial(candidates[c], ...).x`` (see
    :func:`population_reset` for ``seed`` and ``method``).
    """
    return _run(candidates, inputs, n_samples, interval, True, nodes, dt, seed, dtype, scheme, x0, rail, method,
                False, mass, friction)
