"""The one Langevin core: each scheme's step and each force path, written once.

Compiled pieces (numba, ``inline="always"``) shared by the twin's kernel
(:func:`sim_backend.kernel.run_block_kernel`) and the population sampler
(:mod:`sim_backend.population`).  Every array is laid out ``(node, lane)`` over exactly ``LANES``
lanes (a compile-time trip count, so the lane loops vectorise without remainder loops).

Force ``F = B - I W - C x - x (2Q + 3S x + 4R x^2)`` (the field ``h = B - I W`` precomputed):

* :func:`local_force` — the on-site part of one node, the one formula every path uses;
* :func:`sparse_force` — CSR couplings, coefficients shared by all lanes;
* :func:`sparse_force_lanes` — CSR couplings, coefficients per lane (a population's candidates);
* the dense path is the register tile :func:`sim_backend.simd.dense_force`.

Steps (nodes in pairs, one :func:`sim_backend.rng.gauss_pair` per pair and lane):

* :func:`overdamped_step` — Euler-Maruyama (``scheme`` 0) or Leimkuhler-Matthews (1):
  ``x' = clip(x + mu dt F + noise_scale * noise)``, ``noise`` = ``z`` (EM) or ``z_n + z_n+1`` (LM,
  ``noise_scale`` halved by the caller);
* :func:`baoab_step` — underdamped (inertial) Langevin by the BAOAB splitting, see
  :func:`baoab_coefficients`.

Python-level helpers (:func:`check_run`, :func:`overdamped_scales`, :func:`check_nodes`,
:func:`start_state`) are the argument checks and preparation the twin and the population sampler
share.

Units: ``dt`` and times are physical times, the drift is ``mobility * F`` (overdamped) or the
acceleration ``F / mass`` (underdamped), noise variances are in units of ``kT``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .rng import gauss_pair
from .simd import fused_sub_product

LANES = 128
SCHEMES = ("em", "lm", "baoab")
SCHEME_CODE = {"em": 0, "lm": 1, "baoab": 2}


# --- compiled force -------------------------------------------------------------------------------------


@njit(inline="always")
def local_force(h, xv, c1, c2, c3):
    """On-site force of one node: ``h - x (c1 + x (c2 + c3 x))`` with ``c1, c2, c3 = 2Q, 3S, 4R``."""
    return h - xv * (c1 + xv * (c2 + c3 * xv))


@njit(inline="always")
def sparse_force(indptr, indices, values, x, h, a1, a2, a3, f, n_pad):
    """``f = h - C x - x (a1 + x (a2 + a3 x))`` for every lane; ``C`` in CSR (``values`` (nnz,)),
    ``a1, a2, a3`` shape (>= n_pad,), ``x, h, f`` shape (>= n_pad, LANES).

    Each lane subtracts the couplings of row ``i`` in CSR order, each product rounded once with
    its subtraction (:func:`sim_backend.simd.fused_sub_product`); four of them share one pass over
    the lanes, so ``f`` is loaded and stored once per four."""
    for i in range(n_pad):
        c1 = a1[i]
        c2 = a2[i]
        c3 = a3[i]
        k = indptr[i]
        end = indptr[i + 1]
        if k + 3 < end:  # the on-site force and the first four couplings in one pass
            j1 = indices[k]
            j2 = indices[k + 1]
            j3 = indices[k + 2]
            j4 = indices[k + 3]
            e1 = values[k]
            e2 = values[k + 1]
            e3 = values[k + 2]
            e4 = values[k + 3]
            for b in range(LANES):
                g = local_force(h[i, b], x[i, b], c1, c2, c3)
                g = fused_sub_product(fused_sub_product(g, e1, x[j1, b]), e2, x[j2, b])
                f[i, b] = fused_sub_product(fused_sub_product(g, e3, x[j3, b]), e4, x[j4, b])
            k += 4
        else:
            for b in range(LANES):
                f[i, b] = local_force(h[i, b], x[i, b], c1, c2, c3)
        while k + 3 < end:
            j1 = indices[k]
            j2 = indices[k + 1]
            j3 = indices[k + 2]
            j4 = indices[k + 3]
            e1 = values[k]
            e2 = values[k + 1]
            e3 = values[k + 2]
            e4 = values[k + 3]
            for b in range(LANES):
                g = fused_sub_product(fused_sub_product(f[i, b], e1, x[j1, b]), e2, x[j2, b])
                f[i, b] = fused_sub_product(fused_sub_product(g, e3, x[j3, b]), e4, x[j4, b])
            k += 4
        while k < end:
            j = indices[k]
            c = values[k]
            for b in range(LANES):
                f[i, b] = fused_sub_product(f[i, b], c, x[j, b])
            k += 1


@njit(inline="always")
def sparse_force_lanes(indptr, indices, cv, x, h, c1, c2, c3, f, n_pad):
    """As :func:`sparse_force` with per-lane coefficients: ``cv`` (nnz, LANES), ``c1, c2, c3``
    (n_pad, LANES)."""
    for i in range(n_pad):
        for b in range(LANES):
            f[i, b] = local_force(h[i, b], x[i, b], c1[i, b], c2[i, b], c3[i, b])
        for k in range(indptr[i], indptr[i + 1]):
            j = indices[k]
            for b in range(LANES):
                f[i, b] -= cv[k, b] * x[j, b]


# --- compiled steps -------------------------------------------------------------------------------------


@njit(inline="always")
def signed_pair(s, b, sg, signed):
    """Two standard normals of lane ``b``; negated by ``sg[b] = -1`` when ``signed`` (antithetic)."""
    z1, z2 = gauss_pair(s, b)
    if signed:
        z1 = z1 * sg[b]
        z2 = z2 * sg[b]
    return z1, z2


@njit(inline="always")
def first_noise(s, sg, signed, xi, n_pad):
    """Draw the LM scheme's initial noise ``xi`` (n_pad, LANES)."""
    for i in range(0, n_pad, 2):
        for b in range(LANES):
            z1, z2 = signed_pair(s, b, sg, signed)
            xi[i, b] = z1
            xi[i + 1, b] = z2


@njit(inline="always")
def overdamped_step(x, f, xi, s, sg, signed, n_pad, mu_dt, noise_scale, scheme, rail):
    """One Euler-Maruyama (``scheme`` 0) or Leimkuhler-Matthews (1) step of every lane, in place.

    ``x' = min(max(x + mu_dt f + noise_scale n, -rail), rail)`` with ``n = z`` (EM) or ``n = xi +
    z`` then ``xi = z`` (LM).  ``rail`` (>= n_pad,) per node."""
    for i in range(0, n_pad, 2):
        r1 = rail[i]
        r2 = rail[i + 1]
        if scheme == 1:
            for b in range(LANES):
                z1, z2 = signed_pair(s, b, sg, signed)
                n1 = xi[i, b] + z1
                n2 = xi[i + 1, b] + z2
                xi[i, b] = z1
                xi[i + 1, b] = z2
                x[i, b] = min(max(x[i, b] + mu_dt * f[i, b] + noise_scale * n1, -r1), r1)
                x[i + 1, b] = min(max(x[i + 1, b] + mu_dt * f[i + 1, b] + noise_scale * n2, -r2), r2)
        else:
            for b in range(LANES):
                z1, z2 = signed_pair(s, b, sg, signed)
                x[i, b] = min(max(x[i, b] + mu_dt * f[i, b] + noise_scale * z1, -r1), r1)
                x[i + 1, b] = min(max(x[i + 1, b] + mu_dt * f[i + 1, b] + noise_scale * z2, -r2), r2)


@njit(inline="always")
def baoab_step(x, v, f, s, sg, signed, n_pad, kick, half_dt, decay, kick_noise, rail):
    """One BAOAB step of every lane, in place, given the force ``f`` at the current ``x``.

    ``v += kick f`` (``kick = dt / (2 m)``, or ``dt / m`` when it also closes the previous step's
    last half kick), ``x += half_dt v``, ``v = decay v + kick_noise z``, ``x += half_dt v``, then
    ``x`` is clipped to ``rail``.  The closing half kick of the last step changes only ``v``,
    which is not observed."""
    for i in range(0, n_pad, 2):
        r1 = rail[i]
        r2 = rail[i + 1]
        for b in range(LANES):
            z1, z2 = signed_pair(s, b, sg, signed)
            v1 = v[i, b] + kick * f[i, b]
            v2 = v[i + 1, b] + kick * f[i + 1, b]
            y1 = x[i, b] + half_dt * v1
            y2 = x[i + 1, b] + half_dt * v2
            v1 = decay * v1 + kick_noise * z1
            v2 = decay * v2 + kick_noise * z2
            v[i, b] = v1
            v[i + 1, b] = v2
            x[i, b] = min(max(y1 + half_dt * v1, -r1), r1)
            x[i + 1, b] = min(max(y2 + half_dt * v2, -r2), r2)


@njit(inline="always")
def observe(x, out, obs_nodes, k_obs, first, n_traj):
    """Copy the observed nodes of lanes ``first ..`` (below ``n_traj``) to ``out[t, k_obs]``."""
    for b in range(LANES):
        t = first + b
        if t < n_traj:
            for q in range(obs_nodes.shape[0]):
                out[t, k_obs, q] = x[obs_nodes[q], b]


# --- shared Python-level preparation ---------------------------------------------------------------------


def check_run(dtype, scheme: str, dt: float, n_samples: int) -> np.dtype:
    """Refuse bad run arguments (ValueError naming the argument); returns ``np.dtype(dtype)``."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    if scheme not in SCHEMES:
        raise ValueError(
            f"scheme must be 'em' (Euler-Maruyama), 'lm' (Leimkuhler-Matthews) or 'baoab' (underdamped), got {scheme!r}"
        )
    if not (np.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be positive, got {dt}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    return dtype


def check_nodes(nodes, default, n: int) -> np.ndarray:
    """Observed node indices as a writable int64 array (shape (n_o,)); refuses indices outside 0..n-1."""
    nodes = np.array(default if nodes is None else nodes, np.int64).reshape(-1)
    if len(nodes) == 0 or nodes.min() < 0 or nodes.max() >= n:
        raise ValueError(f"nodes must be indices in 0..{n - 1}")
    return nodes


def start_state(x0, n: int, n_rows: int, dtype, scale=None) -> np.ndarray:
    """Kernel start state, shape (n_rows,) of ``dtype``: ``x0 / scale`` on the N nodes (default 0)."""
    out = np.zeros(n_rows, dtype)
    if x0 is not None:
        x = np.broadcast_to(np.asarray(x0, float), (n,))
        out[:n] = x if scale is None else x / scale
    return out


def csr_pattern(mask) -> tuple:
    """CSR of a boolean (n, n) pattern in row-major order: ``(indptr (n+1,), indices (nnz,) int64,
    rows, cols)``; ``indices`` has one dummy entry when the pattern is empty (numba needs an array)."""
    mask = np.asarray(mask, bool)
    rows, cols = np.nonzero(mask)
    indptr = np.concatenate([[0], np.cumsum(mask.sum(1))]).astype(np.int64)
    indices = np.ascontiguousarray(cols, np.int64) if len(cols) else np.zeros(1, np.int64)
    return indptr, indices, rows, cols


def overdamped_scales(mobility: float, kT: float, dt: float, scheme: str, dtype) -> tuple:
    """``(mu dt, noise_scale)`` as ``dtype`` scalars: ``sqrt(2 mu kT dt)``, halved for LM (which
    adds two Gaussians)."""
    dtype = np.dtype(dtype)
    half = 0.5 if scheme == "lm" else 1.0
    return dtype.type(mobility * dt), dtype.type(np.sqrt(2 * mobility * kT * dt) * half)


def baoab_coefficients(dt: float, kT: float, mass: float, friction: float, dtype) -> np.ndarray:
    """``[dt/(2m), dt/m, dt/2, exp(-gamma dt/m), sqrt(kT/m (1 - exp(-2 gamma dt/m)))]`` as ``dtype``.

    Underdamped dynamics ``m dv = F dt - gamma v dt + sqrt(2 gamma kT) dW``, ``dx = v dt``; the
    O step samples the exact Ornstein-Uhlenbeck velocity update, so the invariant velocity
    variance is ``kT / m`` for any ``dt``."""
    if not (np.isfinite(mass) and mass > 0):
        raise ValueError(f"mass must be positive, got {mass}")
    if not (np.isfinite(friction) and friction > 0):
        raise ValueError(f"friction must be positive, got {friction}")
    decay = np.exp(-friction * dt / mass)
    noise = np.sqrt(kT / mass * (1.0 - decay * decay))
    return np.array([0.5 * dt / mass, dt / mass, 0.5 * dt, decay, noise], np.dtype(dtype))


# --- numpy-level integrators (training, OM, generative) ---------------------------------------------------


def polynomial_force(x, field, a1, a2, a3):
    """``field - x (a1 + x (a2 + a3 x))``: the on-site force with ``a1, a2, a3 = 2Q, 3S, 4R`` plus a
    field (``B - I W``, or any drive); broadcasts, keeps ``x``'s dtype when the others match it.

    The numpy twin of :func:`local_force`.  Couplings are the caller's (``- x @ C``)."""
    return field - x * (a1 + x * (a2 + a3 * x))


def euler_maruyama_step(x, force, mu_dt, amp=None, noise=None):
    """One Euler-Maruyama step, ``x + mu_dt force + amp noise`` (left to right; no noise term when
    ``noise`` is None).  ``mu_dt`` = mobility * dt, ``amp = sqrt(2 mobility kT dt)``; ``noise``
    standard normal of ``x``'s shape."""
    new = x + mu_dt * force
    return new if noise is None else new + amp * noise


def euler_maruyama_paths(vector_field, x0, n_steps: int, mu_dt, amp=None, noise=None):
    """Euler-Maruyama paths with the vector field passed in: yields ``(k, x_k, x_{k+1})``, k = 0..n_steps-1.

    ``vector_field(k, x)`` returns the force at step ``k`` (shape of ``x``); ``noise(k, x)``
    (optional) the standard normals of that step.  Each ``x_{k+1}`` is a new array (callers may
    keep ``x_k``).  Used by direct training's forward pass, OM's idealised paths and the generative
    noising paths; the compiled twin runs the same step in :func:`overdamped_step`."""
    x = x0
    for k in range(n_steps):
        new = euler_maruyama_step(x, vector_field(k, x), mu_dt, amp, None if noise is None else noise(k, x))
        yield k, x, new
        x = new
