"""Which voltages each calibration acquisition applies (the experiment design).

Every acquisition estimates *every* element of the board (:mod:`calibration.stein`), so the
design is about putting each channel at enough distinct voltages across its safe range while
the rest of the board keeps the nodes well confined (no rails, moderate stiffness):

``zero``
    Q, R at confining values, all other channels at 0 V.  Gives each B, C, W channel its value
    at 0 V, hence (with the nominal gain) the voltage ``v0`` where it is close to zero.
``self-Qk``, ``self-Rk``, ``self-BWk`` (3 x ``levels`` acquisitions; the routine's default 13)
    All self-terms of all nodes at once: each node's Q, then R, then B and W together step
    through the levels of their safe ranges while the node's other self-terms take helper values
    that keep it confined and not too stiff (see :func:`plan_self`; a stiff node, ``V'' > 50``,
    would make an emulated board's integrator error visible).  Couplings at ``v0``.
``edge-m-l``
    The couplings are split into matchings (edge colouring; for the bipartite layered boards
    ``max degree`` colours).  Couplings of one matching share no node, so they can all be set
    to level ``l`` at once; the other couplings sit at ``v0``.  Each matched node gets
    ``Q ~ |C| / 2`` (the least stiff confinement of a strongly coupled pair) and a fixed
    quartic.  Cost: ``colours x levels`` acquisitions, growing with the degree, not the edges.

Voltages are always inside the safe range: swept channels are placed at fractions of it, helper
settings (confinement, ``v0``) are derived from what has been measured so far
(:class:`Knowledge`) and placed inside the range.  Design values are in board units (kT = 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tc_hw.model import seeds

__all__ = ["Config", "Knowledge", "edge_colouring", "plan_zero", "plan_self", "self_config", "self_at", "plan_edges",
           "edge_config", "SELF_LEVELS", "BW_PAIRS",
           "input_batch", "on_dac_grid", "DAC_LSB_V"]

#: Self-term sweeps, as fractions (sixths) of the safe range: Q alone, R alone, then B with W.
SELF_LEVELS = 7  # plan_self's default; calibration.routine.DEFAULTS["self_levels"] is 13
#: (B, W) fraction pairs of the bias/crossbar sweep: a large bias with a small crossbar weight and
#: the reverse, so that the field B - W I stays within about 25 kT.
BW_PAIRS = ((0, 3), (1, 2), (2, 5), (3, 0), (4, 6), (5, 1), (6, 4))


def bw_pairs(levels: int) -> tuple:
    """(B, W) level-index pairs of a ``levels``-level bias/crossbar sweep: :data:`BW_PAIRS` for 7,
    else ``(k, (k + levels // 2) % levels)``, which pairs the extreme biases with small crossbar
    weights (largest ``|B| + |W|`` 7/6 of a half range for 13 levels, 4/3 for :data:`BW_PAIRS`)."""
    if levels == 7:
        return BW_PAIRS
    return tuple((k, (k + levels // 2) % levels) for k in range(levels))


@dataclass
class Config:
    """One calibration acquisition: requested ``volts`` (n_channels,), its stage and name."""

    name: str
    stage: str
    volts: np.ndarray
    meta: dict = field(default_factory=dict)


class Knowledge:
    """What is known so far about each channel's curve, for placing helper settings.

    Starts from the nominal gains; :meth:`add` feeds measured points.  :meth:`volts_for` gives
    the voltage expected to produce a value (weighted straight line through the channel's
    points, nominal slope when they are all at one voltage), always inside the safe range.
    """

    def __init__(self, channel_map):
        self.map = channel_map
        n = len(channel_map)
        self._pts = [[] for _ in range(n)]

    def add(self, channels, volts, values, sigmas) -> None:
        for c, v, y, s in zip(np.asarray(channels), np.asarray(volts), np.asarray(values), np.asarray(sigmas)):
            if np.isfinite(y) and np.isfinite(s) and s > 0:
                self._pts[int(c)].append((float(v), float(y), float(s)))

    def points(self, ch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Channel ``ch``'s points so far: volts, values, sigmas (arrays of shape (n,))."""
        pts = self._pts[int(ch)]
        if not pts:
            return np.zeros(0), np.zeros(0), np.zeros(0)
        v, y, s = (np.array(t, np.float64) for t in zip(*pts))
        return v, y, s

    def line(self, ch: int) -> tuple[float, float]:
        """(slope, intercept) of the current straight-line model of channel ``ch``."""
        c = self.map[ch]
        g = c.gain if c.gain != 0 else 1.0
        pts = self._pts[ch]
        if c.period > 0:  # a straight line is only meant near the zero of a periodic element
            pts = [p for p in pts if abs(p[0]) <= c.period / 6]
        if not pts:
            return g, 0.0
        v, y, s = (np.array(t) for t in zip(*pts))
        w = 1.0 / s**2
        if np.ptp(v) < 0.2 * (c.vmax - c.vmin):
            vm = (w * v).sum() / w.sum()
            ym = (w * y).sum() / w.sum()
            return g, ym - g * vm
        a = np.stack([v, np.ones_like(v)], 1)
        m = a.T @ (a * w[:, None])
        slope, icpt = np.linalg.solve(m, a.T @ (w * y))
        if not (0.5 * abs(g) < abs(slope) < 1.5 * abs(g)) or slope * g <= 0:
            slope = g
            icpt = ((w * (y - g * v)).sum()) / w.sum()
        return float(slope), float(icpt)

    def volts_for(self, ch: int, value: float) -> float:
        c = self.map[ch]
        slope, icpt = self.line(ch)
        v = (value - icpt) / slope
        lo, hi = c.vmin, c.vmax
        if c.period > 0:
            lo, hi = max(lo, -c.period / 4), min(hi, c.period / 4)
        return float(min(max(v, lo), hi))

    def value_at(self, ch: int, volts: float) -> float:
        slope, icpt = self.line(ch)
        return slope * volts + icpt


#: DAC step (volts) of boards that follow the manual: 16 bits over +-10 V.
DAC_LSB_V = 20.0 / 65536.0


def on_dac_grid(channel_map, volts) -> np.ndarray:
    """Design volts (n_channels,) moved to the nearest DAC code that lies inside each channel's
    safe range (by less than one step; the board quantises to the same grid anyway).  A safe-range
    end that is not a code (4.4 V) would otherwise be sent as a float32 just outside the range."""
    v = np.asarray(volts, np.float64)
    lo = np.array([c.vmin for c in channel_map], np.float64)
    hi = np.array([c.vmax for c in channel_map], np.float64)
    q = np.rint(v / DAC_LSB_V) * DAC_LSB_V
    a = np.ceil(lo / DAC_LSB_V - 1e-9) * DAC_LSB_V
    b = np.floor(hi / DAC_LSB_V + 1e-9) * DAC_LSB_V
    return np.where(q < a, a, np.where(q > b, b, q))


def input_amplitude(cmap) -> float:
    """The calibration's input amplitude: ``15 / largest nominal |W|`` (volts on each input line),
    so that ``W I`` stays moderate."""
    w_nom = max([abs(c.gain) * max(abs(c.vmin), abs(c.vmax)) for c in cmap.of_kind("W")] or [1.0])
    return 15.0 / w_nom


def level_volts(channel, fraction: float) -> float:
    """Voltage at ``fraction`` (0..1) of the channel's safe range, exactly at the bounds for 0/1."""
    if fraction <= 0:
        return float(channel.vmin)
    if fraction >= 1:
        return float(channel.vmax)
    return float(channel.vmin + fraction * (channel.vmax - channel.vmin))


def input_batch(chains: int, n_inputs: int, amplitude: float, seed: int = 0) -> np.ndarray:
    """Input vectors (chains, K): line values +-amplitude, balanced and uncorrelated across lines."""
    if n_inputs == 0:
        return np.zeros((chains, 0))
    rng = seeds.rng(seed, seeds.CALIBRATION, 0)
    signs = np.where(np.arange(chains) % 2 == 0, 1.0, -1.0)
    cols = [signs]
    for _ in range(1, n_inputs):
        cols.append(rng.permutation(signs))
    return amplitude * np.stack(cols, 1)


def edge_colouring(edges: np.ndarray, n_nodes: int) -> list[np.ndarray]:
    """Split edges into matchings (lists of edge indices), largest first.

    Kempe-chain colouring: optimal (max degree colours) on bipartite graphs, at most a few more
    on others.
    """
    at = [dict() for _ in range(n_nodes)]  # node -> {colour: edge index}
    colour = np.full(len(edges), -1)
    n_col = 0
    for e, (u, v) in enumerate(np.asarray(edges, np.int64)):
        free = [c for c in range(n_col) if c not in at[u] and c not in at[v]]
        if free:
            c = free[0]
        else:
            fu = [c for c in range(n_col) if c not in at[u]]
            fv = [c for c in range(n_col) if c not in at[v]]
            c = None
            if fu and fv:
                a, b = fu[0], fv[0]
                # alternating a/b path from v (v has a, lacks b); swap a <-> b along it
                path, node, want = [], v, a
                while want in at[node]:
                    ed = at[node][want]
                    path.append(ed)
                    x, y = edges[ed]
                    node = y if x == node else x
                    want = b if want == a else a
                if node != u and all(u not in edges[ed] for ed in path):
                    for ed in path:
                        x, y = edges[ed]
                        old = colour[ed]
                        del at[x][old], at[y][old]
                    for ed in path:
                        x, y = edges[ed]
                        new = b if colour[ed] == a else a
                        colour[ed] = new
                        at[x][new] = ed
                        at[y][new] = ed
                    if a not in at[u] and a not in at[v]:
                        c = a
            if c is None:
                c = n_col
                n_col += 1
        colour[e] = c
        at[u][c] = e
        at[v][c] = e
        n_col = max(n_col, c + 1)
    groups = [np.flatnonzero(colour == c) for c in range(n_col)]
    return sorted([g for g in groups if len(g)], key=len, reverse=True)


def _base(cmap, graph, know: Knowledge, q_value: float, r_value: float, zero: bool = True) -> np.ndarray:
    """Confining Q, R on every node; B, C, W at their estimated zero (``zero``) or at 0 V."""
    v = np.zeros(len(cmap))
    for i in range(graph.n_nodes):
        v[graph.q[i]] = know.volts_for(graph.q[i], q_value)
        v[graph.r[i]] = know.volts_for(graph.r[i], r_value)
    for ch in np.concatenate([graph.b, graph.edge_ch, graph.w_ch]).astype(int):
        c = cmap[ch]
        v[ch] = know.volts_for(ch, 0.0) if zero else min(max(0.0, c.vmin), c.vmax)
    return v


def plan_zero(cmap, graph, know: Knowledge, q_conf: float, r_conf: float) -> Config:
    return Config("zero", "zero", _base(cmap, graph, know, q_conf, r_conf, zero=False))


def plan_self(cmap, graph, know: Knowledge, q_confine: float = 3.0, r_confine: float = 1.5,
              levels: int = SELF_LEVELS) -> list[Config]:
    """Self-term sweeps (all nodes at once), each channel kind on its own with helper settings
    that keep the node's stiffness below about 50 kT per V^2:

    * Q over its range; R makes the double well of a negative Q about +-0.8 V wide, or is the
      confining ``r_confine`` for Q >= 0;
    * R over its range; Q is stiff (10) where R may be near zero or negative (lowest level),
      ``q_confine`` at the next, and a shallow double well ``-R/4`` above;
    * B and W together (pairs :func:`bw_pairs`) with Q = 5, R = 1.
    Each sweep steps through ``levels`` equally spaced fractions of the safe range (more levels
    resolve curve shapes with kinks or strong curvature; cost: 3 acquisitions per level).
    Couplings (and B, W outside their sweep) sit at their estimated zero.  Entry ``i`` alone:
    :func:`self_config` (the same settings, planned from what ``know`` holds when it is called).
    """
    return [self_config(cmap, graph, know, i, q_confine, r_confine, levels) for i in range(3 * levels)]


def self_config(cmap, graph, know: Knowledge, index: int, q_confine: float = 3.0, r_confine: float = 1.5,
                levels: int = SELF_LEVELS) -> Config:
    """Entry ``index`` (0 .. 3 ``levels`` - 1) of :func:`plan_self`: sweep ``index // levels`` (Q, R,
    then B with W) at level ``index % levels``."""
    if not 0 <= index < 3 * levels:
        raise IndexError(f"self-term setting {index} of {3 * levels}")
    sweep, k = divmod(int(index), int(levels))
    top = levels - 1
    if sweep == 2:
        fb, fw = bw_pairs(levels)[k]
        return self_at(cmap, graph, know, "BW", (fb / top, fw / top), q_confine, r_confine, name=f"self-BW{k}")
    return self_at(cmap, graph, know, "QR"[sweep], k / top, q_confine, r_confine, name=f"self-{'QR'[sweep]}{k}")


def self_at(cmap, graph, know: Knowledge, sweep: str, fraction, q_confine: float = 3.0, r_confine: float = 1.5,
            name: str | None = None, volts=None) -> Config:
    """One self-term setting: every node's ``sweep`` channel (``"Q"``, ``"R"``; ``"BW"``: B and W,
    ``fraction`` a pair) at ``fraction`` of its safe range, helpers as :func:`plan_self`.  Also
    serves the extra levels of a residual-driven second pass (any fraction, not only the grid)
    and, with ``volts`` (n_channels,) instead of a fraction, a setting at a program's own volts
    (:mod:`calibration.local`)."""
    v = _base(cmap, graph, know, q_confine, r_confine)
    at = (lambda ch, f: level_volts(cmap[int(ch)], f)) if volts is None else (lambda ch, f: float(volts[int(ch)]))
    if volts is not None:
        fraction = (None, None) if sweep == "BW" else None
    if sweep == "Q":
        f = None if fraction is None else float(fraction)
        for i in range(graph.n_nodes):
            qv = at(graph.q[i], f)
            v[graph.q[i]] = qv
            q = know.value_at(graph.q[i], qv)
            r = -q / (2 * 0.64) if q < 0 else r_confine
            v[graph.r[i]] = know.volts_for(graph.r[i], max(r, r_confine))
        meta = {"sweep": "Q", "fraction": f}
    elif sweep == "R":
        f = None if fraction is None else float(fraction)
        for i in range(graph.n_nodes):
            rv = at(graph.r[i], f)
            v[graph.r[i]] = rv
            r = know.value_at(graph.r[i], rv)
            q = 10.0 if (f is not None and f <= 0) or r < 0.5 else (q_confine if r < 4.0 else -r / 4)
            v[graph.q[i]] = know.volts_for(graph.q[i], q)
        meta = {"sweep": "R", "fraction": f}
    elif sweep == "BW":
        fb, fw = (None if x is None else float(x) for x in fraction)
        for i in range(graph.n_nodes):
            v[graph.q[i]] = know.volts_for(graph.q[i], 5.0)
            v[graph.r[i]] = know.volts_for(graph.r[i], 1.0)
            v[graph.b[i]] = at(graph.b[i], fb)
        for ch in graph.w_ch:
            v[ch] = at(ch, fw)
        meta = {"sweep": "BW", "fractions": (fb, fw)}
    else:
        raise ValueError(f"unknown self-term sweep {sweep!r} (Q, R or BW)")
    return Config(name or f"self-{sweep}@{meta.get('fraction', meta.get('fractions'))}", "self", v, meta)


def plan_edges(cmap, graph, know: Knowledge, matchings, levels: int, q_min: float, r_conf: float) -> list[Config]:
    """Every matching at ``levels`` equally spaced fractions of the safe range (:func:`edge_config`)."""
    fractions = np.linspace(0.0, 1.0, levels)
    return [edge_config(cmap, graph, know, match, f, q_min, r_conf, name=f"edge-{m}-{li}", matching=m)
            for m, match in enumerate(matchings) for li, f in enumerate(fractions)]


def edge_config(cmap, graph, know: Knowledge, match, fraction: float, q_min: float, r_conf: float, *,
                name: str = "edge", matching: int = 0, volts=None) -> Config:
    """The couplings of one matching at ``fraction`` of their safe ranges (or at ``volts``
    (n_channels,), a program's own: :mod:`calibration.local`); each matched node gets
    ``Q = max(q_min, |C| / 2)`` (summed over its matched couplings), the rest as :func:`plan_zero`
    with couplings at their estimated zero."""
    v = _base(cmap, graph, know, q_min, r_conf)
    load = np.zeros(graph.n_nodes)
    for e in match:
        ch = int(graph.edge_ch[e])
        v[ch] = level_volts(cmap[ch], fraction) if volts is None else float(volts[ch])
        est = abs(know.value_at(ch, v[ch]))
        a, b = graph.edges[e]
        load[a] += est
        load[b] += est
    for i in np.flatnonzero(load > 0):
        v[graph.q[i]] = know.volts_for(graph.q[i], max(q_min, 0.5 * load[i]))
    return Config(name, "edge", v, {"matching": int(matching), "fraction": float(fraction),
                                    "edges": np.asarray(match).tolist()})
