"""The twin's Langevin kernel in JAX: ``engine="gpu"`` runs on whatever device JAX finds.

:func:`run_block_kernel` has the signature and the contract of the numba kernel
:func:`sim_backend.kernel.run_block_kernel` (same arguments, same in-place outputs), so the twin's
preparation — the field ``B - I W``, the per-node mobility change of variables, rails, stream
states, heat — is shared, and only the step loop differs.  The model and the steps are the one
Langevin core's (:mod:`sim_backend.langevin`): the on-site force is
:func:`sim_backend.langevin.polynomial_force`, applied here to JAX arrays; couplings are added in
the same order as the numba kernel (CSR order for sparse graphs; ``h - C x`` first for dense ones).

Noise: the same counter-based generator as :mod:`sim_backend.rng` written in uint32 arithmetic
(xoshiro128++ from the same SplitMix64 stream states, the same float32 Box-Muller polynomials), so
trajectory ``(seed, p, m)`` draws the same Gaussians on every engine.  Trajectories therefore agree
with the CPU twin up to floating-point rounding (operation order and fused multiply-adds differ
between compilers); bitwise equality across engines is not promised.

Layout for throughput: one trajectory is a scalar program (on sparse graphs every node a scalar,
the generator four uint32 scalars) that is ``vmap``-ed over trajectories, so on a device each
trajectory is one thread and a whole step — generator, force, update — can fuse into one
elementwise kernel over the trajectory axis (no gathers between nodes; couplings of a sparse graph
are unrolled at trace time).  On dense graphs the state is a vector per trajectory and the
couplings one batched matrix product per step.
Steps run in a ``lax.fori_loop`` (``unroll`` steps per loop iteration, default 1), observations in a
``lax.scan``; there is no host synchronisation per step.  The dense product uses
``precision=HIGHEST`` (no TF32).  With several devices the trajectory axis is
sharded over all of them.

float64 needs JAX's x64 mode; it is switched on for the duration of a float64 call.
"""

from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .langevin import polynomial_force

__all__ = ["run_block_kernel", "gauss_pairs", "devices", "CHUNK"]

CHUNK = 1 << 21  # trajectories per device call at most (bounds device memory); tails are padded
_U32 = jnp.uint32

# Box-Muller polynomial coefficients, exactly those of sim_backend.rng.gauss_pair (float32)
_LOG_COEF = tuple(np.float32(c) for c in (2.0, 2.0 / 3.0, 0.4, 2.0 / 7.0, 2.0 / 9.0))
_SIN_COEF = tuple(np.float32(c) for c in (1.0, -1 / 6, 1 / 120, -1 / 5040, 1 / 362880))
_COS_COEF = tuple(np.float32(c) for c in (1.0, -0.5, 1 / 24, -1 / 720, 1 / 40320, -1 / 3628800))


def _x64():
    """Context manager that switches JAX's 64-bit mode on (``jax.enable_x64``; older JAX:
    ``jax.experimental.enable_x64``)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # JAX < 0.6

    return enable_x64()


def devices() -> list:
    """The devices JAX runs on (``jax.devices()``)."""
    return jax.devices()


# --- the generator (uint32 arithmetic, one trajectory) ------------------------------------------------------


def _rotl(x, k: int):
    return (x << _U32(k)) | (x >> _U32(32 - k))


def _next_u32(s):
    """One xoshiro128++ output and the next state; ``s`` a tuple of four uint32 values."""
    s0, s1, s2, s3 = s
    r = _rotl(s0 + s3, 7) + s0
    t = s1 << _U32(9)
    s2 = s2 ^ s0
    s3 = s3 ^ s1
    s1 = s1 ^ s2
    s0 = s0 ^ s3
    s2 = s2 ^ t
    s3 = _rotl(s3, 11)
    return r, (s0, s1, s2, s3)


def _horner(v, coef):
    """``coef[0] + v (coef[1] + v (...))`` in float32, innermost first (the order of sim_backend.rng)."""
    acc = coef[-1]
    for c in coef[-2::-1]:
        acc = c + v * acc
    return acc


def _log_unit(u):
    """Natural log of float32 ``u`` in (0, 1], the polynomial of :func:`sim_backend.rng._log_unit`."""
    bits = lax.bitcast_convert_type(u, jnp.uint32)
    e = ((bits >> _U32(23)).astype(jnp.int32) - 127).astype(jnp.float32)
    m = lax.bitcast_convert_type((bits & _U32(0x007FFFFF)) | _U32(0x3F800000), jnp.float32)
    big = m > np.float32(1.4142135)
    m = jnp.where(big, m * np.float32(0.5), m)
    e = jnp.where(big, e + np.float32(1.0), e)
    s = (m - np.float32(1.0)) / (m + np.float32(1.0))
    return e * np.float32(0.6931471805599453) + s * _horner(s * s, _LOG_COEF)


def _box_muller(r1, r2):
    """Two standard normals (float32) from two uint32 generator outputs, elementwise: the
    transform of :func:`sim_backend.rng.gauss_pair`."""
    u = ((r1 >> _U32(8)).astype(jnp.float32) + np.float32(0.5)) * np.float32(1.0 / 16777216.0)
    rad = jnp.sqrt(np.float32(-2.0) * _log_unit(u))
    q = r2 >> _U32(30)
    w = ((r2 & _U32(0x3FFFFFFF)).astype(jnp.float32) * np.float32(1.0 / 1073741824.0) - np.float32(0.5)) * np.float32(
        math.pi / 2
    )
    w2 = w * w
    sn = w * _horner(w2, _SIN_COEF)
    cs = _horner(w2, _COS_COEF)
    swap = (q & _U32(1)) != _U32(0)
    c0 = jnp.where(swap, sn, cs)
    d0 = jnp.where(swap, cs, sn)
    c = jnp.where((q == _U32(1)) | (q == _U32(2)), -c0, c0)
    d = jnp.where(q >= _U32(2), -d0, d0)
    return rad * c, rad * d


def gauss_pair(s):
    """Two standard normals (float32) and the next state: :func:`sim_backend.rng.gauss_pair`."""
    r1, s = _next_u32(s)
    r2, s = _next_u32(s)
    z1, z2 = _box_muller(r1, r2)
    return z1, z2, s


def gauss_pairs(states, n_pairs: int) -> np.ndarray:
    """Standard normals of the streams ``states`` (T, 4) uint32: shape (2 n_pairs, T) float32.

    The exact sequence of :func:`sim_backend.rng.normal` (pair after pair), for tests."""

    def one(st):
        def pair(s, _):
            z1, z2, s = gauss_pair(s)
            return s, jnp.stack([z1, z2])

        _, z = lax.scan(pair, (st[0], st[1], st[2], st[3]), None, length=n_pairs)
        return z.reshape(-1)

    return np.asarray(jax.jit(jax.vmap(one, out_axes=1))(jnp.asarray(states, jnp.uint32)))


# --- one trajectory ------------------------------------------------------------------------------------------


def _noise(s, n_pad: int, dtype, vector: bool):
    """``n_pad`` standard normals (as ``dtype``) drawn pair by pair, and the next state.

    The generator's outputs are sequential; the transform is applied per pair of scalars (a list,
    sparse path) or once to the vectors of all pairs (shape (n_pad,), dense path)."""
    r = []
    for _ in range(n_pad):
        r_k, s = _next_u32(s)
        r.append(r_k)
    if vector:
        z1, z2 = _box_muller(jnp.stack(r[0::2]), jnp.stack(r[1::2]))
        return jnp.stack([z1, z2], axis=1).reshape(-1).astype(dtype), s
    z = []
    for i in range(0, n_pad, 2):
        z1, z2 = _box_muller(r[i], r[i + 1])
        z += [z1.astype(dtype), z2.astype(dtype)]
    return z, s


def _each(fn, *args):
    """``fn`` over the nodes: node by node when the state is a list of scalars (sparse path), once
    on the vectors (dense path).  The update formulas are written once, elementwise."""
    if isinstance(args[0], list):
        return [fn(*a) for a in zip(*args)]
    return fn(*args)


def _force(x, h, a, couple):
    """Force on every node: the core's on-site force plus the couplings.

    ``couple`` is ``("dense", C)`` with ``C`` (n_pad, n_pad) and ``x``, ``h``, ``a`` vectors, or
    ``("sparse", pattern, values)`` with ``pattern`` the static CSR ``(indptr, indices)``, ``values``
    (nnz,) and ``x``, ``h``, ``a`` lists of scalars (couplings subtracted in CSR order, as the CPU)."""
    a1, a2, a3 = a
    if couple[0] == "dense":
        return polynomial_force(x, h - jnp.dot(couple[1], x, precision=lax.Precision.HIGHEST), a1, a2, a3)
    indptr, indices = couple[1]
    values = couple[2]
    f = []
    for i in range(len(x)):
        fi = polynomial_force(x[i], h[i], a1[i], a2[i], a3[i])
        for k in range(indptr[i], indptr[i + 1]):
            fi = fi - values[k] * x[indices[k]]
        f.append(fi)
    return f


def _clip(v, r):
    return jnp.minimum(jnp.maximum(v, -r), r)


def _overdamped_step(x, xi, s, f, rail, mu_dt, noise_scale, lm: bool, dtype):
    """Euler-Maruyama or Leimkuhler-Matthews (``lm``) step, as :func:`sim_backend.langevin.overdamped_step`."""
    z, s = _noise(s, len(x), dtype, not isinstance(x, list))
    if lm:
        noise = _each(lambda a, b: a + b, xi, z)
        xi = z
    else:
        noise = z
    x = _each(lambda xv, fv, nv, rv: _clip(xv + mu_dt * fv + noise_scale * nv, rv), x, f, noise, rail)
    return x, xi, s


def _baoab_step(x, v, s, f, rail, kick, half_dt, decay, kick_noise, dtype):
    """One BAOAB step, as :func:`sim_backend.langevin.baoab_step`."""
    z, s = _noise(s, len(x), dtype, not isinstance(x, list))

    def one(xv, vv, fv, zv, rv):
        vv = vv + kick * fv
        yv = xv + half_dt * vv
        vv = decay * vv + kick_noise * zv
        return _clip(yv + half_dt * vv, rv), vv

    res = _each(one, x, v, f, z, rail)
    if isinstance(x, list):
        return [r[0] for r in res], [r[1] for r in res], s
    return res[0], res[1], s


def _trajectory(h, st, x0, a1, a2, a3, coupling, rail, scal, *, cfg):
    """Observations (n_obs, n_o) and final state (n_pad,) of one trajectory.

    ``h`` (n_pad,) its field, ``st`` (4,) uint32 its stream state; ``scal`` = ``[mu_dt,
    noise_scale, baoab coefficients (5)]``; ``cfg`` the static configuration (see :func:`_compiled`)."""
    n_pad, pattern, scheme, segments, obs_nodes, unroll, dtype = cfg
    vector = pattern is None  # dense: the state is a vector; sparse: a list of per-node scalars

    def nodes(v):
        return v if vector else [v[i] for i in range(n_pad)]

    hs, rails, x = nodes(h), nodes(rail), nodes(x0)
    a = (nodes(a1), nodes(a2), nodes(a3))
    couple = ("dense", coupling) if vector else ("sparse", pattern, [coupling[k] for k in range(len(pattern[1]))])
    mu_dt, noise_scale = scal[0], scal[1]
    kick0, kick1, half_dt, decay, kick_noise = (scal[2 + k] for k in range(5))
    s = (st[0], st[1], st[2], st[3])
    aux = nodes(jnp.zeros(n_pad, dtype)) if scheme == 2 else []  # BAOAB: velocity (start at rest); LM: last noise
    if scheme == 1:
        aux, s = _noise(s, n_pad, dtype, vector)

    def step(k, carry):
        x, aux, s = carry
        f = _force(x, hs, a, couple)
        if scheme == 2:
            kick = jnp.where(k == 0, kick0, kick1)
            return _baoab_step(x, aux, s, f, rails, kick, half_dt, decay, kick_noise, dtype)
        return _overdamped_step(x, aux, s, f, rails, mu_dt, noise_scale, scheme == 1, dtype)

    def segment(carry, start, length):
        return lax.fori_loop(start, start + length, step, carry, unroll=max(1, min(unroll, length)))

    def observed(carry):
        return jnp.stack([carry[0][j] for j in obs_nodes])

    carry = (x, aux, s)
    obs = []
    first, rest = segments[0], segments[1:]
    carry = segment(carry, 0, first)  # the first segment holds step 0 (BAOAB's half kick)
    obs.append(observed(carry))
    if rest and len(set(rest)) == 1 and len(rest) > 4:  # serial sampling: equal intervals in a scan
        def body(c, _):
            c = segment(c, 1, rest[0])  # k >= 1: only "not the first step" matters
            return c, observed(c)

        carry, more = lax.scan(body, carry, None, length=len(rest))
        out = jnp.concatenate([obs[0][None], more])
    else:
        done = first
        for length in rest:
            carry = segment(carry, done, length)
            done += length
            obs.append(observed(carry))
        out = jnp.stack(obs)
    return out, carry[0] if vector else jnp.stack(carry[0])


@functools.lru_cache(maxsize=32)
def _compiled(cfg, n_devices: int):
    """The jitted, vmapped run for one static configuration ``cfg`` (hashable)."""
    traj = functools.partial(_trajectory, cfg=cfg)

    def run(field, lane_input, states, x0, a1, a2, a3, coupling, rail, scal):
        # node-major (n_pad, T) and (4, T): each node's value over the trajectories is contiguous
        h = field.T[:, lane_input]
        return jax.vmap(traj, in_axes=(1, 1) + (None,) * 7)(h, states, x0, a1, a2, a3, coupling, rail, scal)

    return jax.jit(run)


def _sharding(n_devices: int):
    """Shardings of the trajectory axis over all devices, for ``(T,)`` and ``(4, T)`` arrays (None
    for one device)."""
    if n_devices < 2:
        return None
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("traj",))
    spec = jax.sharding.PartitionSpec
    return jax.sharding.NamedSharding(mesh, spec("traj")), jax.sharding.NamedSharding(mesh, spec(None, "traj"))


def _segments(obs_steps, n_steps: int) -> tuple:
    steps = [int(v) for v in obs_steps]
    if not steps or steps[-1] != n_steps or min(np.diff([0] + steps)) < 1:
        raise ValueError("obs_steps must be strictly increasing in 1..n_steps and end at n_steps")
    return tuple(int(v) for v in np.diff([0] + steps))


def default_unroll() -> int:
    """Steps per loop iteration: ``TC_HW_JAX_UNROLL`` if set, else 1.

    Unrolling lets several steps fuse into one device kernel (fewer launches and state round trips)
    but multiplies the size of the compiled program, and compile time grows faster than that.
    Tune it on an accelerator with the throughput benchmark."""
    env = os.environ.get("TC_HW_JAX_UNROLL")
    return max(1, int(env)) if env else 1


def run_block_kernel(dense, indptr, indices, values, field, lane_input, states, a1, a2, a3, x0, mu_dt,
                     noise_scale, n_steps, obs_steps, obs_nodes, scheme, rail, out, final, baoab, *, unroll=None):
    """The numba kernel's contract (see :func:`sim_backend.kernel.run_block_kernel` for every
    argument's shape and meaning), run by JAX; fills ``out`` (T, n_obs, n_o) and ``final``
    (T, n_pad) or (0, n_pad) in place.  ``unroll``: steps per loop iteration (default
    :func:`default_unroll`)."""
    dtype = np.dtype(field.dtype)
    if dtype == np.float64 and not jax.config.jax_enable_x64:
        with _x64():
            return run_block_kernel(dense, indptr, indices, values, field, lane_input, states, a1, a2, a3, x0, mu_dt,
                                    noise_scale, n_steps, obs_steps, obs_nodes, scheme, rail, out, final, baoab,
                                    unroll=unroll)
    n_pad = field.shape[1]
    if dense.shape[0] > 0:
        pattern, coupling = None, np.ascontiguousarray(dense[:n_pad, :n_pad])
    else:
        ip = np.asarray(indptr[: n_pad + 1], np.int64)
        pattern = (tuple(int(v) for v in ip), tuple(int(v) for v in indices[: ip[-1]]))
        coupling = np.ascontiguousarray(values[: max(ip[-1], 1)])
    cfg = (n_pad, pattern, int(scheme), _segments(obs_steps, int(n_steps)), tuple(int(j) for j in obs_nodes),
           int(unroll or default_unroll()), dtype.name)
    n_dev = jax.device_count()
    fn = _compiled(cfg, n_dev)
    scal = np.concatenate([[mu_dt, noise_scale], np.asarray(baoab, dtype)]).astype(dtype)
    shared = [jnp.asarray(v) for v in (field, x0[:n_pad], a1[:n_pad], a2[:n_pad], a3[:n_pad], coupling, rail[:n_pad],
                                       scal)]
    sharding = _sharding(n_dev)
    t_count = len(lane_input)
    for start in range(0, t_count, CHUNK):
        stop = min(start + CHUNK, t_count)
        width = -(-(stop - start) // n_dev) * n_dev  # equal shards; padding lanes repeat the last trajectory
        idx = np.minimum(np.arange(start, start + width), stop - 1)
        lanes = [np.asarray(lane_input[idx], np.int32), np.ascontiguousarray(states[idx].T, np.uint32)]  # (T,), (4, T)
        if sharding is not None:
            lanes = [jax.device_put(v, sh) for v, sh in zip(lanes, sharding)]
        field_, x0_, a1_, a2_, a3_, c_, rail_, scal_ = shared
        obs, fin = fn(field_, lanes[0], lanes[1], x0_, a1_, a2_, a3_, c_, rail_, scal_)
        n = stop - start
        out[start:stop] = np.asarray(obs)[:n]
        if final.shape[0] > 0:
            final[start:stop] = np.asarray(fin)[:n]
    return None
