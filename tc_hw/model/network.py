"""Topology of a thermodynamic computer: nodes, coupling graph, input crossbar, outputs.

A :class:`Network` says *which* elements exist; :class:`tc_hw.model.params.Params` says what
their values are.  The element order used everywhere (files, DAC channel maps, parameter
vectors) is the board manual's: edges ``(a, b)`` with ``a < b`` in row-major order, and
crossbar entries ``(line, node)`` line-major.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Network", "layered", "all_to_all", "thermo_gd_network"]


def _pairs(array, name: str) -> np.ndarray:
    a = np.asarray(array, dtype=np.int64)
    if a.size == 0:
        return np.zeros((0, 2), np.int64)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{name} must have shape (n, 2), got {a.shape}")
    return a


@dataclass(frozen=True, eq=False)
class Network:
    """Topology of a network of thermodynamic neurons.

    Parameters
    ----------
    n_nodes : int
        Number of fluctuating nodes ``N``.
    edges : array_like of int, shape (E, 2)
        Coupled pairs ``(a, b)``; stored with ``a < b``, sorted row-major, unique.
    n_inputs : int
        Number of input lines ``K``.
    crossbar : array_like of int, shape (L, 2)
        Input connections ``(line k, node j)``; stored sorted line-major, unique.
    outputs : array_like of int, shape (n_out,)
        Nodes that are read out as the computer's answer.
    layers : tuple of tuple of int, optional
        Node indices of each layer, for layered designs (metadata only).
    """

    n_nodes: int
    edges: np.ndarray
    n_inputs: int
    crossbar: np.ndarray
    outputs: np.ndarray
    layers: tuple = field(default=())

    def __post_init__(self):
        n = int(self.n_nodes)
        k = int(self.n_inputs)
        if n < 1:
            raise ValueError(f"n_nodes must be >= 1, got {n}")
        if k < 0:
            raise ValueError(f"n_inputs must be >= 0, got {k}")
        e = _pairs(self.edges, "edges")
        if len(e):
            if (e < 0).any() or (e >= n).any():
                raise ValueError(f"edges reference nodes outside 0..{n - 1}")
            if (e[:, 0] == e[:, 1]).any():
                raise ValueError("edges must join two different nodes (self-couplings are per-node parameters)")
            e = np.sort(e, axis=1)
            e = np.unique(e, axis=0)  # sorted row-major
        w = _pairs(self.crossbar, "crossbar")
        if len(w):
            if (w[:, 0] < 0).any() or (w[:, 0] >= k).any():
                raise ValueError(f"crossbar references input lines outside 0..{k - 1}")
            if (w[:, 1] < 0).any() or (w[:, 1] >= n).any():
                raise ValueError(f"crossbar references nodes outside 0..{n - 1}")
            w = np.unique(w, axis=0)
        o = np.asarray(self.outputs, dtype=np.int64).reshape(-1)
        if (o < 0).any() or (o >= n).any():
            raise ValueError(f"outputs reference nodes outside 0..{n - 1}")
        if len(np.unique(o)) != len(o):
            raise ValueError("outputs contain a repeated node")
        for name, value in (("edges", e), ("crossbar", w), ("outputs", o)):
            value.setflags(write=False)
            object.__setattr__(self, name, value)
        object.__setattr__(self, "n_nodes", n)
        object.__setattr__(self, "n_inputs", k)
        object.__setattr__(self, "layers", tuple(tuple(int(i) for i in layer) for layer in self.layers))

    @property
    def n_edges(self) -> int:
        """Number of couplings ``E``."""
        return len(self.edges)

    @property
    def n_crossbar(self) -> int:
        """Number of crossbar weights ``L``."""
        return len(self.crossbar)

    def degree(self) -> np.ndarray:
        """Number of couplings at each node, shape (N,)."""
        return np.bincount(self.edges.ravel(), minlength=self.n_nodes)

    def fan_in(self) -> np.ndarray:
        """Number of input lines feeding each node, shape (N,)."""
        return np.bincount(self.crossbar[:, 1], minlength=self.n_nodes)

    def same_as(self, other: "Network") -> bool:
        """True if both networks have identical topology."""
        return (
            self.n_nodes == other.n_nodes
            and self.n_inputs == other.n_inputs
            and np.array_equal(self.edges, other.edges)
            and np.array_equal(self.crossbar, other.crossbar)
            and np.array_equal(self.outputs, other.outputs)
        )

    def __repr__(self) -> str:
        return (
            f"Network(n_nodes={self.n_nodes}, n_edges={self.n_edges}, n_inputs={self.n_inputs}, "
            f"n_crossbar={self.n_crossbar}, outputs={len(self.outputs)})"
        )


def layered(width: int = 8, depth: int = 4, n_inputs: int = 1) -> Network:
    """Layered design of the out-of-equilibrium paper (Whitelam & Casert, Fig. 5).

    ``depth`` layers of ``width`` nodes; adjacent layers are coupled all-to-all, every input
    line feeds every node of the first layer, and the last layer is the output.
    """
    if width < 1 or depth < 1:
        raise ValueError(f"width and depth must be >= 1, got {width}, {depth}")
    layers = [list(range(d * width, (d + 1) * width)) for d in range(depth)]
    edges = [(a, b) for d in range(depth - 1) for a in layers[d] for b in layers[d + 1]]
    crossbar = [(k, j) for k in range(n_inputs) for j in layers[0]]
    return Network(width * depth, edges, n_inputs, crossbar, layers[-1], layers=layers)


def all_to_all(n_hidden: int, n_out: int, n_inputs: int) -> Network:
    """All-to-all design: hidden and output nodes all coupled, every input feeds every node.

    Node order is hidden ``0..n_hidden-1`` then outputs; this is the 784/64/10 design of the
    gradient-descent paper with ``all_to_all(64, 10, 784)``.
    """
    n = n_hidden + n_out
    a, b = np.triu_indices(n, 1)
    crossbar = np.stack(np.meshgrid(np.arange(n_inputs), np.arange(n), indexing="ij"), -1).reshape(-1, 2)
    return Network(
        n,
        np.stack([a, b], 1),
        n_inputs,
        crossbar,
        np.arange(n_hidden, n),
        layers=(tuple(range(n_hidden)), tuple(range(n_hidden, n))),
    )


def thermo_gd_network() -> Network:
    """The 784-input, 64-hidden, 10-output computer of Whitelam, arXiv 2509.15324."""
    return all_to_all(64, 10, 784)
