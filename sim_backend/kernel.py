"""The compiled Langevin kernel (numba): the twin's hot loop.

Trajectories are processed in blocks of ``LANES`` independent lanes; within a block every array
is laid out ``(node, lane)`` so that each inner loop runs over lanes and vectorises (AVX2: 8
float32 lanes).  Each step has two passes over the block, which stays in L1/L2 cache:

1. the deterministic force ``B - I W - C x - (2Q x + 3S x^2 + 4R x^3)`` (the field ``B - I W`` is
   precomputed per input).  Dense graphs use the explicit-SIMD register tile of
   :mod:`sim_backend.simd`; sparse ones a CSR loop;
2. the Gaussians (:mod:`sim_backend.rng`) and the update of the state, node pair by node pair.

Blocks are spread over threads with ``prange``.  Padding lanes (past the last trajectory) are
computed and discarded, so every trajectory runs through exactly the same code path and the
result of a trajectory is bitwise independent of the block it lands in and of the thread count.
That is why the dense product is not a BLAS call: BLAS kernels round a column differently
depending on its position in the matrix, which would make results depend on batch size.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .rng import gauss_pair
from .simd import dense_force

LANES = 128


@njit(parallel=True, fastmath=True, error_model="numpy", cache=True)
def run_block_kernel(
    dense,  # (Nr, Np) float: dense symmetric couplings, rows zero-padded to Nr (multiple of 4), or (0, 0) when sparse
    indptr,  # (Np + 1,) int64 CSR row pointers (all zero when dense)
    indices,  # (nnz,) int64
    values,  # (nnz,) float
    field,  # (P, Np) float: B - I @ W per input vector
    lane_input,  # (T,) int64: input vector of each trajectory
    states,  # (T, 4) uint32: initial xoshiro128++ states
    a1,  # (Nr,) float: 2 Q (zero-padded to Nr >= Np rows)
    a2,  # (Nr,) float: 3 S
    a3,  # (Nr,) float: 4 R
    x0,  # (Nr,) float: start state (entries past Np unused)
    mu_dt,  # float: mobility * dt
    noise_scale,  # float: sqrt(2 mobility kT dt) (EM) or half of it (LM, applied to xi_n + xi_n+1)
    n_steps,  # int
    obs_steps,  # (n_obs,) int64, strictly increasing, in 1..n_steps
    obs_nodes,  # (n_o,) int64
    scheme,  # 0: Euler-Maruyama, 1: Leimkuhler-Matthews
    rail,  # (Nr,) float: |x_i| is clipped to rail[i] after each step (float max: no rails)
    out,  # (T, n_obs, n_o) float: observed states
    final,  # (T, Np) float or (0, Np): full final state
):
    n_traj = lane_input.shape[0]
    n_pad = field.shape[1]
    n_obs = obs_steps.shape[0]
    n_o = obs_nodes.shape[0]
    use_dense = dense.shape[0] > 0
    n_blocks = (n_traj + LANES - 1) // LANES
    for blk in prange(n_blocks):
        n_rows = a1.shape[0]  # the dense force works on whole tiles of rows; rows >= n_pad stay zero
        x = np.zeros((n_rows, LANES), field.dtype)
        f = np.zeros((n_rows, LANES), field.dtype)
        h = np.zeros((n_rows, LANES), field.dtype)
        xi = np.zeros((n_pad, LANES), field.dtype)  # previous noise (LM)
        s = np.empty((4, LANES), np.uint32)
        for b in range(LANES):
            t = min(blk * LANES + b, n_traj - 1)
            p = lane_input[t]
            for i in range(n_pad):
                h[i, b] = field[p, i]
                x[i, b] = x0[i]
            for w in range(4):
                s[w, b] = states[t, w]
        if scheme == 1:
            for i in range(0, n_pad, 2):
                for b in range(LANES):
                    z1, z2 = gauss_pair(s, b)
                    xi[i, b] = z1
                    xi[i + 1, b] = z2
        k_obs = 0
        for step in range(1, n_steps + 1):
            if use_dense:
                dense_force(dense, x, h, a1, a2, a3, f)
            else:
                for i in range(n_pad):
                    c1 = a1[i]
                    c2 = a2[i]
                    c3 = a3[i]
                    for b in range(LANES):
                        xv = x[i, b]
                        f[i, b] = h[i, b] - xv * (c1 + xv * (c2 + c3 * xv))
                    for k in range(indptr[i], indptr[i + 1]):
                        j = indices[k]
                        c = values[k]
                        for b in range(LANES):
                            f[i, b] -= c * x[j, b]
            for i in range(0, n_pad, 2):
                r1 = rail[i]
                r2 = rail[i + 1]
                if scheme == 1:
                    for b in range(LANES):
                        z1, z2 = gauss_pair(s, b)
                        n1 = xi[i, b] + z1
                        n2 = xi[i + 1, b] + z2
                        xi[i, b] = z1
                        xi[i + 1, b] = z2
                        x[i, b] = min(max(x[i, b] + mu_dt * f[i, b] + noise_scale * n1, -r1), r1)
                        x[i + 1, b] = min(max(x[i + 1, b] + mu_dt * f[i + 1, b] + noise_scale * n2, -r2), r2)
                else:
                    for b in range(LANES):
                        z1, z2 = gauss_pair(s, b)
                        x[i, b] = min(max(x[i, b] + mu_dt * f[i, b] + noise_scale * z1, -r1), r1)
                        x[i + 1, b] = min(max(x[i + 1, b] + mu_dt * f[i + 1, b] + noise_scale * z2, -r2), r2)
            if k_obs < n_obs and obs_steps[k_obs] == step:
                for b in range(LANES):
                    t = blk * LANES + b
                    if t < n_traj:
                        for q in range(n_o):
                            out[t, k_obs, q] = x[obs_nodes[q], b]
                k_obs += 1
        if final.shape[0] > 0:
            for b in range(LANES):
                t = blk * LANES + b
                if t < n_traj:
                    for i in range(n_pad):
                        final[t, i] = x[i, b]
