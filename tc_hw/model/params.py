"""Values of a thermodynamic computer's elements, in one sign convention.

Convention (the board manual's ``V``), energies in units of the bath's ``kT`` scale chosen by
``kT``::

    V(x; I) = sum_i [ Q_i x_i^2 + S_i x_i^3 + R_i x_i^4 - B_i x_i ]
              + sum_(a<b) C_ab x_a x_b + sum_(k,j) W_kj I_k x_j

with quadratic ``Q`` (``quadratic``), cubic ``S`` (``cubic``), quartic ``R`` (``quartic``), bias
``B`` (``bias``; a positive bias pushes a node *up*), couplings ``C`` (``coupling``, one per edge)
and crossbar weights ``W`` (``crossbar``, one per crossbar entry).  Dynamics are overdamped
Langevin, ``dx = -mobility * dV/dx dt + sqrt(2 mobility kT) dW`` (node by node when the mobility
is given per node: boards whose nodes have their own time constants).

Other conventions are converted by explicit functions, e.g. :func:`from_ising_convention`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .network import Network

__all__ = ["Params", "ParamsError", "from_ising_convention", "ELEMENT_KINDS"]

#: Per-node element arrays, in the order of the board's channel map (Q, R, B) plus the cubic.
ELEMENT_KINDS = ("quadratic", "cubic", "quartic", "bias", "coupling", "crossbar")


class ParamsError(ValueError):
    """A parameter set is malformed (shape, finiteness, symmetry or stability)."""


@dataclass(eq=False)
class Params:
    """Element values of a :class:`~tc_hw.model.network.Network`.

    Attributes
    ----------
    network : Network
    quadratic, cubic, quartic, bias : ndarray, shape (N,)
        Per-node self-couplings ``Q, S, R`` and bias ``B`` (energy units).
    coupling : ndarray, shape (E,)
        One value per edge of ``network.edges``.
    crossbar : ndarray, shape (L,)
        One value per entry of ``network.crossbar``.
    readout : ndarray, shape (n_features, n_out), optional
        Output weights ``f``: the computer's answer is ``readout @ <x_outputs>``.
    kT : float
        Bath temperature in the energy units of ``V`` (``beta = 1/kT``).
    mobility : float or ndarray, shape (N,)
        ``mu = 1/tau`` (dimensionless: time in units of the reference ``tau``); a scalar for every
        node, or one value per node for boards whose nodes have their own time constants
        (``mu_i = 1 / tau_node_factor_i``).  A scalar stays a Python float; an array is stored as
        float64 of shape (N,).  See :attr:`mobility_per_node`.
    require_stable : bool
        Refuse potentials that do not confine every node (default).  Only a model of hardware
        with rails (the board emulator) turns this off.
    """

    network: Network
    quadratic: np.ndarray
    cubic: np.ndarray
    quartic: np.ndarray
    bias: np.ndarray
    coupling: np.ndarray
    crossbar: np.ndarray
    readout: np.ndarray | None = None
    kT: float = 1.0
    mobility: float | np.ndarray = 1.0
    require_stable: bool = True

    def __post_init__(self):
        net = self.network
        n = net.n_nodes
        expected = {
            "quadratic": n,
            "cubic": n,
            "quartic": n,
            "bias": n,
            "coupling": net.n_edges,
            "crossbar": net.n_crossbar,
        }
        for name, size in expected.items():
            value = np.asarray(getattr(self, name), dtype=np.float64)
            if value.ndim == 0:
                value = np.full(size, float(value))
            if value.shape != (size,):
                raise ParamsError(f"{name} must have shape ({size},), got {value.shape}")
            bad = ~np.isfinite(value)
            if bad.any():
                raise ParamsError(f"{name} has non-finite values at indices {np.flatnonzero(bad)[:10].tolist()}")
            setattr(self, name, value)
        if self.readout is not None:
            r = np.asarray(self.readout, dtype=np.float64)
            if r.ndim == 1:
                r = r[None, :]
            if r.ndim != 2 or r.shape[1] != len(net.outputs):
                raise ParamsError(f"readout must have shape (n_features, {len(net.outputs)}), got {r.shape}")
            if not np.isfinite(r).all():
                raise ParamsError("readout has non-finite values")
            self.readout = r
        v = float(self.kT)
        if not np.isfinite(v) or v <= 0:
            raise ParamsError(f"kT must be a positive finite number, got {v}")
        self.kT = v
        self.mobility = _check_mobility(self.mobility, n)
        if self.require_stable:
            self._check_stable()

    def _check_stable(self) -> None:
        """Raise :class:`ParamsError` unless ``V`` confines every node."""
        # Stability: V must grow at large |x| for every node in every direction that the
        # couplings can reach.  Per node that needs R > 0, or R == 0 with S == 0 and Q > 0.
        unstable = (self.quartic < 0) | ((self.quartic == 0) & ((self.cubic != 0) | (self.quadratic <= 0)))
        if unstable.any():
            idx = np.flatnonzero(unstable)[:10].tolist()
            raise ParamsError(
                f"nodes {idx} are unstable: each node needs quartic > 0, or quartic == 0 with cubic == 0 "
                "and quadratic > 0"
            )
        purely_quadratic = self.quartic == 0
        if purely_quadratic.any() and self.network.n_edges:
            # Nodes without quartic confinement need the quadratic form restricted to them to be
            # positive definite, otherwise couplings can drive them to infinity.
            idx = np.flatnonzero(purely_quadratic)
            a = self.hessian_at_zero()[np.ix_(idx, idx)]
            lam = np.linalg.eigvalsh(a).min()
            if lam <= 0:
                raise ParamsError(
                    f"the quadratic part of V on the nodes without quartic terms is not positive definite "
                    f"(lowest eigenvalue {lam:.3g}); reduce the couplings between nodes {idx[:10].tolist()}"
                )

    @property
    def mobility_per_node(self) -> np.ndarray:
        """Mobility of every node, float64 shape (N,) (a scalar mobility broadcast)."""
        return np.broadcast_to(np.asarray(self.mobility, np.float64), (self.network.n_nodes,)).copy()

    @property
    def has_node_mobility(self) -> bool:
        """Whether the mobility is given per node (an array) rather than one scalar."""
        return isinstance(self.mobility, np.ndarray)

    # ------------------------------------------------------------------ dense views
    def coupling_matrix(self) -> np.ndarray:
        """Symmetric coupling matrix ``C``, shape (N, N), zero diagonal, such that
        ``sum_(a<b) C_ab x_a x_b = x @ C @ x / 2``."""
        n = self.network.n_nodes
        c = np.zeros((n, n))
        a, b = self.network.edges.T
        c[a, b] = self.coupling
        c[b, a] = self.coupling
        return c

    def crossbar_matrix(self) -> np.ndarray:
        """Crossbar weights as a dense matrix ``W``, shape (K, N)."""
        w = np.zeros((self.network.n_inputs, self.network.n_nodes))
        k, j = self.network.crossbar.T
        w[k, j] = self.crossbar
        return w

    def hessian_at_zero(self) -> np.ndarray:
        """Hessian of ``V`` at ``x = 0``, shape (N, N): ``2 diag(Q) + C``."""
        return np.diag(2 * self.quadratic) + self.coupling_matrix()

    def field(self, inputs) -> np.ndarray:
        """Constant force on each node from bias and inputs, ``B - I @ W``, shape (P, N).

        ``inputs`` has shape (P, K) (or (K,) for one vector)."""
        i = self.check_inputs(inputs)
        return self.bias[None, :] - i @ self.crossbar_matrix()

    def check_inputs(self, inputs) -> np.ndarray:
        """Return ``inputs`` as a float64 array of shape (P, K), or raise ``ValueError``."""
        i = np.asarray(inputs, dtype=np.float64)
        k = self.network.n_inputs
        if i.ndim == 1:
            i = i[None, :]
        if i.ndim != 2 or i.shape[1] != k:
            raise ValueError(f"inputs must have shape (P, {k}), got {np.shape(inputs)}")
        if not np.isfinite(i).all():
            raise ValueError("inputs contain NaN or infinite values")
        return i

    def energy(self, x, inputs=None) -> np.ndarray:
        """Potential energy ``V(x; I)``; ``x`` shape (..., N), ``inputs`` broadcastable (..., K)."""
        x = np.asarray(x, dtype=np.float64)
        v = x * x * (self.quadratic + x * (self.cubic + x * self.quartic)) - self.bias * x
        v = v.sum(-1)
        a, b = self.network.edges.T
        v = v + (x[..., a] * x[..., b] * self.coupling).sum(-1)
        if inputs is not None and self.network.n_crossbar:
            v = v + np.einsum("...k,kn,...n->...", np.asarray(inputs, float), self.crossbar_matrix(), x)
        return v

    def force(self, x, inputs=None) -> np.ndarray:
        """``-dV/dx``, shape (..., N)."""
        x = np.asarray(x, dtype=np.float64)
        f = -x * (2 * self.quadratic + x * (3 * self.cubic + 4 * x * self.quartic)) + self.bias
        f = f - x @ self.coupling_matrix()
        if inputs is not None:
            f = f - np.asarray(inputs, float) @ self.crossbar_matrix()
        return f

    def output(self, node_means) -> np.ndarray:
        """The computer's answer ``readout @ <x_outputs>`` from means of the output nodes.

        ``node_means`` has shape (..., n_out); without readout weights it is returned as is."""
        m = np.asarray(node_means, dtype=np.float64)
        return m if self.readout is None else m @ self.readout.T

    # ------------------------------------------------------------------ vectors
    def vector(self) -> np.ndarray:
        """All trainable values in channel-map order (Q, S, R, B, C, W, readout), 1-D float64."""
        parts = [getattr(self, k) for k in ELEMENT_KINDS]
        if self.readout is not None:
            parts.append(self.readout.ravel())
        return np.concatenate(parts)

    def with_vector(self, v) -> "Params":
        """A copy with values taken from a vector laid out as :meth:`vector`."""
        v = np.asarray(v, dtype=np.float64)
        if v.shape != (self.vector().size,):
            raise ParamsError(f"vector must have shape ({self.vector().size},), got {v.shape}")
        out, pos = {}, 0
        for k in ELEMENT_KINDS:
            n = getattr(self, k).size
            out[k] = v[pos : pos + n]
            pos += n
        if self.readout is not None:
            out["readout"] = v[pos:].reshape(self.readout.shape)
        return replace(self, **out)

    def copy(self, **changes) -> "Params":
        """A validated copy with some fields replaced."""
        return replace(self, **changes)

    def rescaled(self, lam: float) -> "Params":
        """The same computer in node coordinates ``y = x / lam`` (an exact change of variables).

        ``V(x) = V(lam y)`` gives ``Q lam^2, S lam^3, R lam^4, B lam, C lam^2, W lam``; the
        dynamics of ``y`` have mobility ``mobility / lam^2`` at the same ``kT`` and the same time,
        and the readout ``lam f`` gives the same answer.  With ``lam < 1`` every element shrinks
        (biases least, quartic terms most), which is how a program that is too strong for a
        board's element ranges is made to fit: the price is a longer physical time on the board
        (``tau * mobility * kT`` per unit of program time grows by ``1 / lam^2``) and node
        readings ``1 / lam`` larger.
        """
        lam = float(lam)
        if not (np.isfinite(lam) and lam > 0):
            raise ParamsError(f"the coordinate scale must be a positive number, got {lam}")
        if not (1e-30 < lam**4 < 1e30 and np.all(np.isfinite(np.asarray(self.mobility) / lam**2))):
            raise ParamsError(f"the coordinate scale {lam:.9g} is too extreme: lam^4 = {lam**4:.3g} and the "
                              f"mobility would be {np.max(self.mobility):.3g} / lam^2; use a scale within 1e-7..1e7")
        return replace(
            self,
            quadratic=self.quadratic * lam**2,
            cubic=self.cubic * lam**3,
            quartic=self.quartic * lam**4,
            bias=self.bias * lam,
            coupling=self.coupling * lam**2,
            crossbar=self.crossbar * lam,
            readout=None if self.readout is None else self.readout * lam,
            mobility=self.mobility / lam**2,
        )

    def flipped(self, nodes) -> "Params":
        """The same computer with the coordinates of ``nodes`` reversed, ``x_i -> -x_i`` (exact).

        ``V(s x)`` with ``s_i = -1`` on ``nodes`` is ``V(x)`` of a program whose odd terms of those
        nodes change sign: bias and cubic, every coupling with exactly one end among them, their
        crossbar weights; read-out weights of flipped output nodes change sign, so the answer is the
        same.  Which sign a node's crossbar weight has is thus a choice of the program's author
        (e.g. every weight of one polarity, as a capacitive crossbar has).
        """
        n = self.network.n_nodes
        idx = np.asarray(list(nodes), dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ParamsError(f"nodes to flip must be in 0..{n - 1}, got {idx.tolist()}")
        s = np.ones(n)
        s[idx] = -1.0
        a, b = self.network.edges.T
        cb = self.network.crossbar[:, 1]
        return replace(
            self,
            cubic=self.cubic * s,
            bias=self.bias * s,
            coupling=self.coupling * s[a] * s[b],
            crossbar=self.crossbar * s[cb],
            readout=None if self.readout is None else self.readout * s[self.network.outputs],
        )

    def one_polarity(self, sign: float = -1.0) -> "Params":
        """:meth:`flipped` so that every crossbar weight has the sign of ``sign``; raises
        :class:`ParamsError` when a node's weights from several input lines have mixed signs."""
        cb = self.network.crossbar[:, 1]
        wrong = np.sign(self.crossbar) == -np.sign(sign)
        nodes = np.unique(cb[wrong])
        if np.any(np.isin(cb[~wrong & (self.crossbar != 0)], nodes)):
            raise ParamsError("a node has crossbar weights of both signs: no flip gives one polarity")
        return self.flipped(nodes)

    @classmethod
    def uniform(
        cls,
        network: Network,
        quadratic: float = 1.0,
        cubic: float = 0.0,
        quartic: float = 1.0,
        bias=0.0,
        coupling=0.0,
        crossbar=0.0,
        readout=None,
        kT: float = 1.0,
        mobility: float = 1.0,
    ) -> "Params":
        """Same intrinsic couplings ``J = (quadratic, cubic, quartic)`` on every node."""
        n = network.n_nodes
        return cls(
            network,
            np.full(n, float(quadratic)),
            np.full(n, float(cubic)),
            np.full(n, float(quartic)),
            np.broadcast_to(np.asarray(bias, float), (n,)).copy(),
            np.broadcast_to(np.asarray(coupling, float), (network.n_edges,)).copy(),
            np.broadcast_to(np.asarray(crossbar, float), (network.n_crossbar,)).copy(),
            readout,
            kT,
            mobility,
        )

    def __repr__(self) -> str:
        mu = f"per-node {self.mobility.min():.4g}..{self.mobility.max():.4g}" if self.has_node_mobility else self.mobility
        return f"Params({self.network!r}, kT={self.kT}, mobility={mu})"


def _check_mobility(value, n_nodes: int):
    """A positive finite scalar (returned as float) or (n_nodes,) array (float64 copy)."""
    m = np.asarray(value, dtype=np.float64)
    if m.ndim == 0:
        v = float(m)
        if not np.isfinite(v) or v <= 0:
            raise ParamsError(f"mobility must be a positive finite number, got {v}")
        return v
    if m.shape != (n_nodes,):
        raise ParamsError(f"mobility must be a scalar or have shape ({n_nodes},), got {m.shape}")
    bad = ~(np.isfinite(m) & (m > 0))
    if bad.any():
        raise ParamsError(f"mobility must be positive and finite; bad at nodes {np.flatnonzero(bad)[:10].tolist()}")
    return m.copy()


def from_ising_convention(
    network: Network,
    J2,
    J4,
    b,
    J_edges,
    J_inputs,
    J3=0.0,
    kT: float = 1.0,
    readout=None,
) -> Params:
    """Convert ``V = sum(J2 x^2 + J3 x^3 + J4 x^4) + sum b x + sum J x x`` to :class:`Params`.

    This is the convention of Whitelam's papers and code, where a positive bias pushes a node
    *down*; here ``B = -b`` and couplings and crossbar weights keep their sign (the inputs are
    clamped spins ``I_k`` coupled by ``J_kj I_k x_j``).
    """
    n = network.n_nodes
    return Params(
        network,
        np.broadcast_to(np.asarray(J2, float), (n,)).copy(),
        np.broadcast_to(np.asarray(J3, float), (n,)).copy(),
        np.broadcast_to(np.asarray(J4, float), (n,)).copy(),
        -np.broadcast_to(np.asarray(b, float), (n,)),
        J_edges,
        J_inputs,
        readout,
        kT,
    )
