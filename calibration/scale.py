"""The coordinate scale that makes a program fit a board's element ranges."""

from __future__ import annotations

import math

from tc_hw.model.params import Params

from .mapping import _POWER, MappingError, channel_values

__all__ = ["fitting_scale", "scaled_program"]


def fitting_scale(params: Params, channel_map, cal=None, margin: float = 0.9) -> float:
    """Largest ``lam <= 1`` such that ``params.rescaled(lam)`` fits every channel's reach.

    An element of kind with power ``p`` (Q, C: 2; R: 4; B, W: 1) scales as ``lam^p``
    (:meth:`tc_hw.model.params.Params.rescaled`).  Its board value must lie in the channel's reach:
    the calibrated range ``cal.value_range(channel)`` if ``cal`` is given, else the nominal
    ``gain * [vmin, vmax]``.  A reach that excludes zero (an offset element, e.g. a quartic
    term that cannot be switched fully off) also sets a lower bound on ``lam``.  ``margin``
    keeps the values that far inside the reach (0.9: 10 %).

    Raises :class:`~calibration.mapping.MappingError` if no scale fits, naming the channel.
    """
    values, src = channel_values(params, channel_map)
    lo_lam, hi_lam = 0.0, 1.0
    for c in channel_map:
        v = float(values[c.index])
        if cal is not None:
            lo, hi = (float(t) for t in cal.value_range(c.index))
        else:
            lo, hi = sorted((c.gain * c.vmin, c.gain * c.vmax))
        lo, hi = (lo / margin if lo > 0 else lo * margin), (hi / margin if hi < 0 else hi * margin)
        name = f"{src[c.index][0]}[{src[c.index][1]}] (ch {c.index}, {c.kind})"
        if v == 0:
            if not lo <= 0 <= hi:
                raise MappingError(f"{name} = 0 but the channel reaches only [{lo:.4g}, {hi:.4g}] at any scale")
            continue
        p = _POWER[c.kind]
        far, near = (hi, lo) if v > 0 else (lo, hi)  # the end that caps lam, the one that floors it
        if far / v <= 0:
            raise MappingError(f"{name} = {v:+.4g} (board units) has a sign the channel cannot reach")
        hi_lam = min(hi_lam, (far / v) ** (1.0 / p))
        if near / v > 0:
            lo_lam = max(lo_lam, (near / v) ** (1.0 / p))
    if lo_lam > hi_lam or not math.isfinite(hi_lam):
        raise MappingError(f"no coordinate scale fits: the program needs lambda >= {lo_lam:.4g} for some channels "
                           f"and <= {hi_lam:.4g} for others")
    return float(hi_lam)


def scaled_program(params: Params, scale, channel_map, cal=None) -> tuple[Params, float]:
    """``params`` in node coordinates rescaled by ``scale``: None, "1" or "none" (unchanged),
    "auto" (:func:`fitting_scale` on ``channel_map`` through ``cal``) or a number lambda > 0.
    Returns ``(program, lambda)``."""
    if scale in (None, "1", "none"):
        return params, 1.0
    lam = fitting_scale(params, channel_map, cal) if scale == "auto" else float(scale)
    return params.rescaled(lam), lam
