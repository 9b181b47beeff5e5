"""From trained parameters to channel volts and back: :func:`map_params`, :func:`upload`,
:func:`nominal`.

Units.  A :class:`~tc_hw.model.params.Params` has energies in units where the bath is ``kT`` and time
in units of ``1/mobility``; the board's equation has ``kT = 1`` and time constant ``tau``.  So an
element's board value is ``param / kT``, and one unit of program time lasts
``tau * mobility * kT`` seconds on the board (``report["time_scale_s"]``).

Quantisation.  A value is mapped to volts through the calibrated curve, then to the nearest
16-bit DAC code (LSB = 20 V / 65536) that lies inside the channel's safe range (and, for
periodic elements, on the calibrated monotonic branch).  The *effective* value is the curve at
the quantised voltage; the reachable range is computed on the same grid.

Refusals.  Anything outside reach raises :class:`MappingError`, naming each offending parameter,
its channel, the reachable range and the excess (and, for a channel calibrated over part of its
safe range, its calibrated span: the reach is what that span gives), and suggesting a rescaling (all energies by
``s``, i.e. a hotter program; or node coordinates by ``lambda``, which changes nothing but the
read-out scale and the time scale).  Nothing is ever clamped.
"""

from __future__ import annotations

import math

import numpy as np

from tc_hw.model.device import KINDS
from tc_hw.model.params import Params

from . import adc as adc_mod
from .curves import nominal_curve
from .record import Calibration, CalibrationError, load

__all__ = ["map_params", "on_board_mobility", "upload", "nominal", "MappingError", "UploadError", "channel_values", "effective_params",
           "DAC_LSB_V"]

DAC_LSB_V = 20.0 / 65536.0
_FIELD = {"Q": "quadratic", "R": "quartic", "B": "bias", "C": "coupling", "W": "crossbar"}
_POWER = {"Q": 2, "R": 4, "B": 1, "C": 2, "W": 1}  # value ~ lambda^p under x -> lambda x


class MappingError(ValueError):
    """Parameters cannot be put on the board as they are (message says which, by how much, and
    what rescaling would fit)."""


class UploadError(RuntimeError):
    """The board did not apply what was sent (read-back differs)."""


def nominal(channel_map) -> Calibration:
    """A calibration that assumes every element is exactly its nominal curve (for comparisons)."""
    fits = [nominal_curve(c) for c in channel_map]
    n_nodes = len([c for c in channel_map if c.kind == "Q"])
    return Calibration(fits, adc_mod.ideal(n_nodes), {}, channel_map, identity="nominal",
                       technology="JJ" if any(c.period > 0 for c in channel_map) else "RLC",
                       entry="nominal", summary={"nominal": True})



def load_or_nominal(path, channel_map) -> Calibration:
    """The calibration record at ``path`` (its newest complete entry), or nominal gains for
    ``channel_map`` when ``path`` is ``None`` or ``"nominal"``."""

    return nominal(channel_map) if path in (None, "nominal") else load(path)

def _check_maps(cal: Calibration, channel_map) -> None:
    a, b = cal.channel_map, channel_map
    if len(a) != len(b):
        raise CalibrationError(f"calibration has {len(a)} channels, the board {len(b)}: not this board's calibration")
    for x, y in zip(a, b):
        if (x.kind, x.a, x.b) != (y.kind, y.a, y.b) or not np.isclose([x.vmin, x.vmax], [y.vmin, y.vmax]).all():
            raise CalibrationError(f"channel {y.index}: board has {y.kind}({y.a},{y.b}) [{y.vmin}, {y.vmax}] V, the "
                                   f"calibration {x.kind}({x.a},{x.b}) [{x.vmin}, {x.vmax}] V: not this board's calibration")


def _label(c) -> str:
    if c.kind in "QRB":
        return f"ch {c.index}, {c.kind} node {c.a}"
    if c.kind == "C":
        return f"ch {c.index}, C {c.a}-{c.b}"
    return f"ch {c.index}, W line {c.a} -> node {c.b}"


def channel_values(params: Params, channel_map) -> tuple[np.ndarray, list]:
    """Board values (``param / kT``) per channel, and ``(field, index)`` naming each one's source.

    Raises :class:`MappingError` when the program needs an element the board lacks (a coupling or
    crossbar entry, a cubic term) or the node/input counts differ."""
    net = params.network
    n_nodes = sum(1 for c in channel_map if c.kind == "Q")
    n_lines = 1 + max([c.a for c in channel_map if c.kind == "W"] or [-1])
    if net.n_nodes != n_nodes:
        raise MappingError(f"the program has {net.n_nodes} nodes, the board {n_nodes}")
    if np.any(params.cubic != 0):
        idx = np.flatnonzero(params.cubic)[:10].tolist()
        raise MappingError(f"cubic terms at nodes {idx}: the board has no cubic elements")
    edge = {(int(a), int(b)): k for k, (a, b) in enumerate(net.edges)}
    cross = {(int(a), int(b)): k for k, (a, b) in enumerate(net.crossbar)}
    board_edges = {(c.a, c.b) for c in channel_map if c.kind == "C"}
    board_cross = {(c.a, c.b) for c in channel_map if c.kind == "W"}
    missing = [f"coupling[{k}] ({a}-{b})" for (a, b), k in edge.items()
               if (a, b) not in board_edges and params.coupling[k] != 0]
    missing += [f"crossbar[{k}] (line {a} -> node {b})" for (a, b), k in cross.items()
                if (a, b) not in board_cross and params.crossbar[k] != 0]
    if missing:
        raise MappingError(f"the board has no element for {', '.join(missing[:10])}"
                           + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))
    if net.n_inputs > max(n_lines, 0) and np.any(params.crossbar != 0):
        raise MappingError(f"the program has {net.n_inputs} input lines, the board {n_lines}")
    vals = np.zeros(len(channel_map))
    src = []
    for c in channel_map:
        if c.kind in "QRB":
            k = c.a
        elif c.kind == "C":
            k = edge.get((c.a, c.b))
        else:
            k = cross.get((c.a, c.b))
        if k is None:
            src.append((_FIELD[c.kind], None))
            continue
        vals[c.index] = getattr(params, _FIELD[c.kind])[k] / params.kT
        src.append((_FIELD[c.kind], int(k)))
    return vals, src


def _grid_inside(lo_v: float, hi_v: float) -> tuple[float, float]:
    """The first/last DAC grid voltages inside [lo_v, hi_v]."""
    a = math.ceil(lo_v / DAC_LSB_V - 1e-9) * DAC_LSB_V
    b = math.floor(hi_v / DAC_LSB_V + 1e-9) * DAC_LSB_V
    return a, b


def _quantise_inside(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    q = np.rint(v / DAC_LSB_V) * DAC_LSB_V
    a, b = _grid_inside(lo, hi)
    return np.where(q < a, a, np.where(q > b, b, q))  # only moves by < 1 LSB, onto the grid inside


def _plan(params: Params, cal: Calibration, channel_map, temp_k):
    _check_maps(cal, channel_map)
    values, src = channel_values(params, channel_map)
    volts = np.zeros(len(channel_map))
    eff = np.zeros(len(channel_map))
    reach = np.zeros((len(channel_map), 2))
    unusable, outside = [], []
    for c in channel_map:
        curve = cal.curve(c.index)
        name = f"{src[c.index][0]}[{src[c.index][1]}]" if src[c.index][1] is not None else f"{src[c.index][0]}[-]"
        if not curve.ok:
            unusable.append(f"{name} ({_label(c)}): {curve.reason}")
            continue
        lo_b, hi_b = curve.branch
        lo_b, hi_b = max(lo_b, c.vmin), min(hi_b, c.vmax)
        ga, gb = _grid_inside(lo_b, hi_b)
        ya, yb = curve.value(np.array([ga, gb]), temp_k)
        lo, hi = float(min(ya, yb)), float(max(ya, yb))
        reach[c.index] = (lo, hi)
        y = values[c.index]
        if not (lo <= y <= hi):
            ex = (y - hi) if y > hi else (lo - y)
            outside.append(dict(name=name, label=_label(c), kind=c.kind, value=y, lo=lo, hi=hi, excess=ex,
                                pct=100 * ex / max(hi - lo, 1e-300),
                                span=curve.span_text() if curve.partial else ""))
            continue
        v = float(curve.inverse(y, temp_k))
        q = float(_quantise_inside(np.array([v]), ga, gb)[0])
        volts[c.index] = q
        eff[c.index] = float(curve.value(np.array([q]), temp_k)[0])
    if unusable:
        raise MappingError(f"refused: {len(unusable)} channel(s) have no usable calibration: " + "; ".join(unusable[:10])
                           + (f" and {len(unusable) - 10} more" if len(unusable) > 10 else ""))
    if outside:
        raise MappingError(_outside_message(outside, values, reach, channel_map, temp_k))
    return volts, eff, values, reach


def _suggested_factor(s_lo: float, s_hi: float) -> float:
    """A factor in ``[s_lo, s_hi]`` (``0 <= s_lo <= s_hi``, ``s_hi > 0``) rounded inward to 3
    significant digits: the largest one when shrinking (``s_hi < 1``), the smallest when growing.
    Never 0, however small ``s_hi`` is."""
    if s_hi < 1:
        digits = 2 - math.floor(math.log10(s_hi)) if math.isfinite(s_hi) else 3
        s = math.floor(s_hi * 10.0 ** digits) / 10.0 ** digits
        return s if s_lo <= s and s > 0 else s_hi
    if not math.isfinite(s_lo) or s_lo <= 0:
        return 1.0
    digits = 2 - math.floor(math.log10(s_lo))
    s = math.ceil(s_lo * 10.0 ** digits) / 10.0 ** digits
    return s if s <= s_hi else s_lo


def _outside_message(outside, values, reach, channel_map, temp_k) -> str:
    outside = sorted(outside, key=lambda o: -o["pct"])
    parts = [f"{o['name']} ({o['label']}) = {o['value']:.6g} {'>' if o['value'] > o['hi'] else '<'} reachable "
             f"[{o['lo']:.6g}, {o['hi']:.6g}] by {o['excess']:.4g} ({o['pct']:.2g} % of the span)"
             + (f" on its {o['span']}" if o.get("span") else "") for o in outside[:12]]
    msg = (f"refused, nothing sent: {len(outside)} parameter(s) outside what the board can reach"
           + (f" at {temp_k:.2f} K" if temp_k is not None and math.isfinite(temp_k) else "") + ": " + "; ".join(parts)
           + (f" and {len(outside) - 12} more" if len(outside) > 12 else "") + ".")
    # common rescalings that would fit every value: energies by s, node coordinates by lambda
    s_lo, s_hi, l_lo, l_hi = 0.0, math.inf, 0.0, math.inf
    zeros = []
    for c in channel_map:
        y = values[c.index]
        lo, hi = reach[c.index]
        if y == 0:
            if not lo <= 0 <= hi:
                zeros.append(_label(c))
            continue
        a, b = sorted((lo / y, hi / y))  # s * y in [lo, hi]
        s_lo, s_hi = max(s_lo, a), min(s_hi, b)
        p = _POWER[c.kind]
        la = a ** (1.0 / p) if a > 0 else 0.0
        lb = b ** (1.0 / p) if b > 0 else -1.0
        l_lo, l_hi = max(l_lo, la), min(l_hi, lb)
    if zeros:
        msg += (f" Value 0 is out of reach on {', '.join(zeros[:5])}" + (" ..." if len(zeros) > 5 else "")
                + ": no rescaling helps there.")
    elif 0 < s_hi and s_lo <= s_hi and math.isfinite(s_lo):
        s = _suggested_factor(s_lo, s_hi)
        txt = f"{'<=' if s_hi < 1 else '>='} {s:.4g}"
        msg += (f" Suggested: multiply all element values by s {txt} (allowed {s_lo:.4g}..{s_hi:.4g}; the same "
                f"program at kT x {1 / s:.4g}: its samples are those of a {'hotter' if s < 1 else 'colder'} program)")
        if l_lo <= l_hi and l_hi > 0:
            lm = min(max(1.0, l_lo), l_hi)
            msg += (f", or rescale node coordinates by lambda = {lm:.4g} (allowed {l_lo:.4g}..{l_hi:.4g}; "
                    f"x_board = x / lambda: Q, C x {lm ** 2:.4g}, R x {lm ** 4:.4g}, B, W x {lm:.4g}; readings x lambda;"
                    f" times x {1 / lm ** 2:.4g}), which leaves the computation unchanged")
        msg += "."
    else:
        msg += " No common rescaling of the energies fits every element."
    return msg


def on_board_mobility(params: Params, cal, nodes=None) -> Params:
    """``params`` with the per-node mobilities the board ``cal`` calibrated: the twin of the program
    as the board runs it.

    A program of scalar ``mobility`` runs on the board with one program time unit = ``tau_s *
    mobility * kT`` seconds (``tau_s``: the board's nominal tau, as :func:`upload` times it), so
    node ``i`` with measured time constant ``tau_i`` moves with ``mobility * tau_s / tau_i``
    (:meth:`~calibration.record.Calibration.node_mobility`).  ``nodes`` (computer node ``k`` is
    board node ``nodes[k]``; default: the identity) picks the board nodes of a computer laid out on
    part of the board.  Returns ``params`` itself (its scalar mobility, bitwise unchanged) when the
    calibration measured no time constant that differs from nominal or ``cal`` has none.
    """
    node_mobility = getattr(cal, "node_mobility", None)
    if node_mobility is None or np.ndim(params.mobility) != 0:
        return params
    factor = np.asarray(node_mobility(1.0), np.float64)
    if nodes is not None:
        factor = factor[np.asarray(nodes, dtype=np.int64)]
    if factor.shape != (params.network.n_nodes,) or np.all(factor == 1.0):
        return params
    return params.copy(mobility=float(params.mobility) * factor)


def map_params(params: Params, cal: Calibration, device_channel_map, temp_k: float | None = None) -> np.ndarray:
    """Channel volts (n_channels,) that put ``params`` on the board, on the DAC grid.

    ``cal`` is a :class:`~calibration.record.Calibration` (:func:`calibration.load`) or
    :func:`nominal`; ``temp_k`` the board temperature to correct for (None: the calibration's
    reference temperature).  Channels the program does not use are set to value 0.  Raises
    :class:`MappingError` (values out of reach, refused curves, missing elements) or
    :class:`~calibration.record.CalibrationError` (calibration of another board).
    """
    return _plan(params, cal, device_channel_map, temp_k)[0]


def effective_params(params: Params, channel_map, values: np.ndarray) -> Params:
    """``params`` with its element values replaced by board values ``values`` (per channel), in the
    program's units (``x kT``)."""
    net = params.network
    edge = {(int(a), int(b)): k for k, (a, b) in enumerate(net.edges)}
    cross = {(int(a), int(b)): k for k, (a, b) in enumerate(net.crossbar)}
    out = {f: getattr(params, f).copy() for f in _FIELD.values()}
    for c in channel_map:
        k = c.a if c.kind in "QRB" else (edge if c.kind == "C" else cross).get((c.a, c.b))
        if k is not None:
            out[_FIELD[c.kind]][k] = values[c.index] * params.kT
    return params.copy(require_stable=False, **out)


def upload(device, params: Params, cal: Calibration, *, temp_k: float | None = None) -> dict:
    """Map ``params``, write all channels in one block, read back, verify; report effective values.

    The board temperature is read (``device.temperature()``) unless ``temp_k`` is given.  Raises
    :class:`MappingError` before anything is sent when the program does not fit, and
    :class:`UploadError` when the read-back differs from what was sent by more than half an LSB.

    Returns a JSON-ready dict: ``ok``, ``channels``, ``temperature_k``, ``calibration`` (entry),
    ``readback_max_error_v``, ``time_scale_s`` (board seconds per unit of program time),
    ``effective`` (per kind, effective values in program units), ``difference`` (per kind:
    max/rms absolute and max relative difference effective - trained), ``quantisation`` (largest
    value error caused by the DAC grid), ``volts``, ``warnings``.  The effective program as a
    :class:`~tc_hw.model.params.Params`: :func:`effective_params` (``params``, ``channel_map``,
    ``report["effective"]`` values ...) -- or simply map ``cal.element_value`` over ``volts``.
    """
    cmap = device.channel_map
    temp = float(device.temperature()) if temp_k is None else float(temp_k)
    volts, eff, values, _ = _plan(params, cal, cmap, temp)
    cal.check_volts(volts)  # refuse, never clamp: every voltage inside its channel's calibrated span
    device.set_channels(volts, 0)
    back = np.asarray(device.get_channels(0, len(volts)), np.float64)
    err = np.abs(back - volts)
    bad = np.flatnonzero(err > 0.5 * DAC_LSB_V)
    if len(bad):
        raise UploadError("read-back differs from what was sent on channels "
                          + ", ".join(f"{i} (sent {volts[i]:+.6f} V, board {back[i]:+.6f} V)" for i in bad[:10])
                          + (f" and {len(bad) - 10} more" if len(bad) > 10 else ""))
    eff_back = np.array([cal.curve(c.index).value(np.array([back[c.index]]), temp)[0] for c in cmap])
    warnings = []
    if cal.identity not in ("nominal", device.identity):
        warnings.append(f"calibration was made on {cal.identity!r}, the board is {device.identity!r}")
    if math.isfinite(cal.temperature_k) and abs(temp - cal.temperature_k) > 0.3 and not any(
            f.tempco_known for f in cal.fits):
        warnings.append(f"board at {temp:.2f} K, calibrated at {cal.temperature_k:.2f} K, temperature coefficients "
                        "unknown: values uncorrected (up to 0.5 %/K)")
    kt = params.kT
    diff, effective = {}, {}
    for kind in KINDS:
        idx = [c.index for c in cmap if c.kind == kind]
        if not idx:
            continue
        e, t = eff_back[idx] * kt, values[idx] * kt
        d = e - t
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(t != 0, np.abs(d) / np.abs(t), np.nan)
        diff[kind] = {"max_abs": float(np.max(np.abs(d))), "rms": float(np.sqrt(np.mean(d * d))),
                      "max_rel": float(np.nanmax(rel)) if np.isfinite(rel).any() else 0.0}
        effective[kind] = e.tolist()
    q_err = np.abs(eff - values) * kt
    return {
        "ok": True,
        "channels": len(volts),
        "temperature_k": temp,
        "calibration": cal.entry,
        "identity": device.identity,
        "readback_max_error_v": float(err.max()) if len(err) else 0.0,
        "time_scale_s": float(device.tau_s * params.mobility * params.kT),
        "quantisation": {"max_abs": float(q_err.max()) if len(q_err) else 0.0,
                         "lsb_v": DAC_LSB_V},
        "difference": diff,
        "effective": effective,
        "volts": volts.tolist(),
        "warnings": warnings,
    }
