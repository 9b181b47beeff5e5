"""Element values from equilibrium fluctuations: score matching (Stein identities) per node.

For a Gibbs density ``p ~ exp(-V/kT)`` and any smooth ``f``, ``E[d_i f] = E[f d_i V] / kT``.  The
board's ``d_i V`` is linear in the element values of node ``i``::

    d_i V = 2 Q_i x_i + 4 R_i x_i^3 - B_i + sum_j C_ij x_j + sum_k W_ki I_k
          = theta_i . phi_i(x, I),   phi_i = (2 x_i, 4 x_i^3, -1, x_j for j in N(i), I_k for k in L(i))

so taking ``f = phi_i`` gives the linear system ``G theta_i = b`` (Hyvarinen score matching),
``G = E[phi_i phi_i^T]``, ``b = E[d_i phi_i] = (2, 12 E[x_i^2], 0, ...)``, with ``theta`` in units
of the node's ``kT`` (the board convention is ``kT = 1``).  Every element of every node is
estimated from one acquisition; each coupling twice (once from each end).

Sufficient statistics.  Everything above needs only second moments of the augmented vector of
*raw* readings (volts as digitised, before the ADC correction)::

    z = (1, I_1..I_K, r_1..r_N, r_1^2..r_N^2, r_1^3..r_N^3)          (D = 1 + K + 3N)

because the ADC correction ``x = (r - offset) / gain`` maps ``z`` linearly onto
``y = (1, I, x, x^2, x^3)``.  :func:`moments` accumulates ``sum z z^T`` per group of independent
chains; the groups give jackknife uncertainties.  These sums are what the calibration record
stores, so a fit can be redone from stored data alone (with another ADC calibration, too).

Integrator correction (emulated boards).  A board simulated by Euler-Maruyama with step ``dt``
(in units of tau) samples ``exp(-V + dt U)`` with ``U = |grad V|^2 / 4 - Lap V / 2`` to first
order, not ``exp(-V)``; stiff settings (values of order 20 kT) are biased by ``~ dt * stiffness``
(2 % at ``dt = 1e-3``).  :func:`correction_moments` evaluates ``E[y d_i U]`` on the samples and
:func:`estimate` adds ``dt * G^-1 E[phi_i d_i U]``.  A physical board has no ``dt``: leave it 0.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

try:  # small dense products: one BLAS thread is much faster than two competing with the board
    from threadpoolctl import threadpool_limits as _limits
except ImportError:  # pragma: no cover
    _limits = None

__all__ = [
    "Graph",
    "feature_dim",
    "augmented",
    "moments",
    "adc_transform",
    "NodeEstimate",
    "Estimate",
    "estimate",
    "correction_moments",
    "single_thread",
]


def single_thread():
    """Context manager limiting BLAS to one thread (a no-op without threadpoolctl).

    The products here are small; with the simulating board busy on the same cores, a second
    BLAS thread makes them tens of times slower."""
    return _limits(1) if _limits is not None else contextlib.nullcontext()


@dataclass(frozen=True)
class Graph:
    """Which element channels act on which node, from the channel map.

    ``q, r, b`` : channel of node i's Q, R, B (shape (N,));  ``edges`` (E, 2) node pairs and
    ``edge_ch`` (E,) their C channels;  ``w`` (L, 2) (line, node) and ``w_ch`` (L,) their channels.
    """

    n_nodes: int
    n_inputs: int
    q: np.ndarray
    r: np.ndarray
    b: np.ndarray
    edges: np.ndarray
    edge_ch: np.ndarray
    w: np.ndarray
    w_ch: np.ndarray

    @classmethod
    def from_map(cls, channel_map, n_nodes: int, n_inputs: int) -> "Graph":
        q = np.full(n_nodes, -1)
        r = np.full(n_nodes, -1)
        b = np.full(n_nodes, -1)
        edges, edge_ch, w, w_ch = [], [], [], []
        for c in channel_map:
            if c.kind == "Q":
                q[c.a] = c.index
            elif c.kind == "R":
                r[c.a] = c.index
            elif c.kind == "B":
                b[c.a] = c.index
            elif c.kind == "C":
                edges.append((c.a, c.b))
                edge_ch.append(c.index)
            elif c.kind == "W":
                w.append((c.a, c.b))
                w_ch.append(c.index)
        if (q < 0).any() or (r < 0).any() or (b < 0).any():
            raise ValueError("channel map lacks a Q, R or B channel for some node")
        return cls(
            n_nodes, n_inputs, q, r, b,
            np.asarray(edges, np.int64).reshape(-1, 2), np.asarray(edge_ch, np.int64),
            np.asarray(w, np.int64).reshape(-1, 2), np.asarray(w_ch, np.int64),
        )

    def neighbours(self, i: int):
        """(neighbour nodes, their edge indices) of node ``i``."""
        e = self.edges
        hit = np.flatnonzero((e[:, 0] == i) | (e[:, 1] == i))
        other = np.where(e[hit, 0] == i, e[hit, 1], e[hit, 0])
        return other, hit

    def lines(self, i: int):
        """(input lines feeding node ``i``, their crossbar indices)."""
        hit = np.flatnonzero(self.w[:, 1] == i)
        return self.w[hit, 0], hit


def feature_dim(n_nodes: int, n_inputs: int) -> int:
    """Length D of the augmented vector ``z``."""
    return 1 + n_inputs + 3 * n_nodes


def augmented(readings: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """``z`` for samples: ``readings`` (S, N) volts, ``inputs`` (S, K); returns (S, D) float64."""
    r = np.asarray(readings, np.float64)
    s = r.shape[0]
    return np.concatenate([np.ones((s, 1)), np.asarray(inputs, np.float64).reshape(s, -1), r, r * r, r * r * r], 1)


def moments(readings: np.ndarray, inputs: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-group sums ``sum z z^T`` and sample counts.

    ``readings`` (P, M, N) raw volts of P independent chains (burn-in already removed),
    ``inputs`` (P, K).  Chains are split into ``groups`` contiguous groups.  Returns
    ``(S, n)`` with ``S`` of shape (groups, D, D) and ``n`` (groups,).
    """
    p, m, n_nodes = readings.shape
    groups = max(1, min(groups, p))
    bounds = np.linspace(0, p, groups + 1).round().astype(int)
    d = feature_dim(n_nodes, inputs.shape[1])
    out = np.zeros((groups, d, d))
    counts = np.zeros(groups)
    for g in range(groups):
        a, b = bounds[g], bounds[g + 1]
        z = augmented(readings[a:b].reshape(-1, n_nodes), np.repeat(inputs[a:b], m, axis=0))
        out[g] = z.T @ z
        counts[g] = len(z)
    return out, counts


def adc_transform(gain: np.ndarray, offset: np.ndarray, n_inputs: int, inverse: np.ndarray | None = None) -> np.ndarray:
    """Matrix ``T`` with ``y = T z``, ``y = (1, I, x, x^2, x^3)``, ``x = (r - offset) / gain``.

    With ``inverse`` (N, 4), ``x = a0 + a1 r + a2 r^2 + a3 r^3`` (a readout with integral
    nonlinearity, :func:`calibration.adc.fit`); ``x^2`` and ``x^3`` are then its powers truncated
    at ``r^3`` (``z`` holds no higher powers).  The dropped terms are of relative size
    ``~ 3 (|a2| r + |a3| r^2) / a1``: below 1e-3 for a readout whose nonlinearity is a few 1e-3 of
    a 10 V range and nodes within a few volts."""
    if inverse is None:
        gain = np.asarray(gain, np.float64)
        offset = np.asarray(offset, np.float64)
        inverse = np.stack([-offset / gain, 1.0 / gain, np.zeros_like(gain), np.zeros_like(gain)], 1)
    inv = np.asarray(inverse, np.float64)
    n = len(inv)
    k = n_inputs
    d = feature_dim(n, k)
    t = np.zeros((d, d))
    t[0, 0] = 1.0
    for j in range(k):
        t[1 + j, 1 + j] = 1.0
    i1 = 1 + k + np.arange(n)
    cols = (np.zeros(n, np.int64), i1, i1 + n, i1 + 2 * n)  # z indices of r^0 .. r^3
    pmul = np.polynomial.polynomial.polymul
    for i in range(n):
        p1 = inv[i]
        p2 = pmul(p1, p1)[:4]
        p3 = pmul(pmul(p1, p1), p1)[:4]
        for row, p in ((i1[i], p1), (i1[i] + n, p2), (i1[i] + 2 * n, p3)):
            for deg in range(4):
                t[row, cols[deg][i] if deg else 0] = p[deg] if deg < len(p) else 0.0
    return t


@dataclass
class NodeEstimate:
    """Solution for one node: ``theta`` (Q, R, B, C_j..., W_k...), ``cov`` (jackknife)."""

    theta: np.ndarray
    cov: np.ndarray
    nbr: np.ndarray
    nbr_edges: np.ndarray
    lines_edges: np.ndarray
    condition: float


@dataclass
class Estimate:
    """Element values of one acquisition, per channel (units of kT).

    ``value``/``sigma`` have shape (n_channels,) (NaN for channels not estimated); ``per_end``
    (E, 2) the coupling seen from each end; ``node`` the per-node solutions.
    """

    value: np.ndarray
    sigma: np.ndarray
    per_end: np.ndarray
    per_end_sigma: np.ndarray
    node: list
    n_samples: int


def _node_system(m: np.ndarray, graph: Graph, i: int):
    """(index into y, scale, b-vector, neighbours, edge idx, line idx) for node ``i``."""
    n, k = graph.n_nodes, graph.n_inputs
    x0 = 1 + k
    nbr, e_idx = graph.neighbours(i)
    lines, l_idx = graph.lines(i)
    idx = np.concatenate([[x0 + i, x0 + 2 * n + i, 0], x0 + nbr, 1 + lines]).astype(np.int64)
    scale = np.concatenate([[2.0, 4.0, -1.0], np.ones(len(nbr)), np.ones(len(lines))])
    return idx, scale, nbr, e_idx, l_idx


def _solve(my: np.ndarray, graph: Graph, i: int, corr: np.ndarray | None, dt: float):
    n, k = graph.n_nodes, graph.n_inputs
    idx, scale, nbr, e_idx, l_idx = _node_system(my, graph, i)
    g = my[np.ix_(idx, idx)] * np.outer(scale, scale)
    bvec = np.zeros(len(idx))
    bvec[0] = 2.0
    bvec[1] = 12.0 * my[0, 1 + k + n + i]
    theta = np.linalg.solve(g, bvec)
    if corr is not None and dt:
        theta = theta + dt * np.linalg.solve(g, scale * corr[_corr_rows(idx, n, k), i])
    return theta, g, nbr, e_idx, l_idx


def _corr_rows(idx: np.ndarray, n: int, k: int) -> np.ndarray:
    """Map indices of ``y = (1, I, x, x^2, x^3)`` to rows of the correction matrix ``(1, I, x, x^3)``."""
    out = idx.copy()
    x3 = 1 + k + 2 * n
    out[idx >= x3] -= n
    return out


def estimate(
    sums: np.ndarray,
    counts: np.ndarray,
    graph: Graph,
    transform: np.ndarray,
    n_channels: int,
    *,
    correction: np.ndarray | None = None,
    dt: float = 0.0,
    total: np.ndarray | None = None,
) -> Estimate:
    """Score-matching element values with jackknife errors from grouped moment sums.

    ``sums`` (G, D, D) and ``counts`` (G,) from :func:`moments`; ``transform`` from
    :func:`adc_transform`; ``correction`` (1+K+2N, N) from :func:`correction_moments` with
    ``dt`` the integrator step in units of tau (0: none); ``total`` the exact sum over groups
    when ``sums`` are stored with less precision (default ``sums.sum(0)``).  Raises ``numpy.linalg.LinAlgError``
    when a node's system is singular.
    """
    n, k = graph.n_nodes, graph.n_inputs
    ng = len(counts)
    total = sums.sum(0) if total is None else np.asarray(total, np.float64)
    ntot = counts.sum()

    def my_of(s, c):
        return transform @ (s / c) @ transform.T

    full = my_of(total, ntot)
    reps = [my_of(total - sums[g], ntot - counts[g]) for g in range(ng)] if ng > 1 else []
    value = np.full(n_channels, np.nan)
    sigma = np.full(n_channels, np.nan)
    n_e = len(graph.edges)
    per_end = np.full((n_e, 2), np.nan)
    per_end_sig = np.full((n_e, 2), np.nan)
    per_end_reps = np.full((max(ng, 1), n_e, 2), np.nan)
    nodes = []
    for i in range(n):
        theta, g, nbr, e_idx, l_idx = _solve(full, graph, i, correction, dt)
        if reps:
            rep = np.array([_solve(r, graph, i, correction, dt)[0] for r in reps])
            mean = rep.mean(0)
            cov = (ng - 1) / ng * (rep - mean).T @ (rep - mean)
        else:
            rep = theta[None]
            cov = np.full((len(theta), len(theta)), np.nan)
        sd = np.sqrt(np.diag(cov))
        nodes.append(NodeEstimate(theta, cov, nbr, e_idx, l_idx, float(np.linalg.cond(g))))
        for slot, ch in enumerate((graph.q[i], graph.r[i], graph.b[i])):
            value[ch] = theta[slot]
            sigma[ch] = sd[slot]
        end = (graph.edges[e_idx, 1] == i).astype(int)  # 0: i is the first node of the edge
        per_end[e_idx, end] = theta[3 : 3 + len(nbr)]
        per_end_sig[e_idx, end] = sd[3 : 3 + len(nbr)]
        per_end_reps[:, e_idx, end] = rep[:, 3 : 3 + len(nbr)]
        wl = theta[3 + len(nbr) :]
        value[graph.w_ch[l_idx]] = wl
        sigma[graph.w_ch[l_idx]] = sd[3 + len(nbr) :]
    if n_e:
        va, vb = per_end_sig[:, 0] ** 2, per_end_sig[:, 1] ** 2
        with np.errstate(invalid="ignore", divide="ignore"):
            wa = np.where(np.isfinite(va + vb) & (va + vb > 0), vb / (va + vb), 0.5)
        comb = wa * per_end[:, 0] + (1 - wa) * per_end[:, 1]
        if reps:
            rc = wa * per_end_reps[:, :, 0] + (1 - wa) * per_end_reps[:, :, 1]
            sd_c = np.sqrt((ng - 1) / ng * ((rc - rc.mean(0)) ** 2).sum(0))
        else:
            sd_c = np.full(n_e, np.nan)
        value[graph.edge_ch] = comb
        sigma[graph.edge_ch] = sd_c
    return Estimate(value, sigma, per_end, per_end_sig, nodes, int(ntot))


def correction_moments(x: np.ndarray, inputs: np.ndarray, graph: Graph, theta_channels: np.ndarray) -> np.ndarray:
    """``E[y' d_i U]`` on samples, shape (1+K+2N, N), ``y' = (1, I, x, x^3)``.

    ``x`` (S, N) corrected node volts, ``inputs`` (S, K), ``theta_channels`` element values per
    channel (as estimated from the same data).  ``U = |grad V|^2/4 - Lap V / 2``;
    ``d_i U = [d_i V (2Q_i + 12 R_i x_i^2) + sum_k C_ik d_k V] / 2 - 12 R_i x_i``.
    """
    x = np.asarray(x, np.float64)
    inputs = np.asarray(inputs, np.float64)
    n = graph.n_nodes
    th = np.asarray(theta_channels, np.float64)
    qv, rv, bv = th[graph.q], th[graph.r], th[graph.b]
    c = np.zeros((n, n))
    if len(graph.edges):
        a, b = graph.edges.T
        c[a, b] = th[graph.edge_ch]
        c[b, a] = th[graph.edge_ch]
    wm = np.zeros((graph.n_inputs, n))
    if len(graph.w):
        wm[graph.w[:, 0], graph.w[:, 1]] = th[graph.w_ch]
    x2 = x * x
    grad = 2 * qv * x + 4 * rv * x2 * x - bv + x @ c + inputs @ wm
    du = 0.5 * (grad * (2 * qv + 12 * rv * x2) + grad @ c) - 12 * rv * x
    y = np.concatenate([np.ones((len(x), 1)), inputs, x, x2 * x], 1)
    return y.T @ du / len(x)
