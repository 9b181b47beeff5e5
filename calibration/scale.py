"""The coordinate scale that makes a program fit a board's element ranges."""

from __future__ import annotations

import numpy as np

from tc_hw.params import Params

from .mapping import _POWER, MappingError, channel_values

__all__ = ["fitting_scale"]


def fitting_scale(params: Params, channel_map, margin: float = 0.8) -> float:
    """Largest ``lam <= 1`` such that ``params.rescaled(lam)`` fits every channel's nominal reach.

    An element of kind with power ``p`` (Q, C: 2; R: 4; B, W: 1) scales as ``lam^p``
    (:meth:`tc_hw.params.Params.rescaled`); its board value must stay within ``margin`` times
    the nominal reach ``gain * [vmin, vmax]`` on its side of zero (the margin leaves room for
    the calibrated curves, which differ from nominal by a few per cent).

    Raises :class:`~calibration.mapping.MappingError` if some value has the wrong sign for its
    channel (no scale helps).
    """
    values, src = channel_values(params, channel_map)
    lam = 1.0
    for c in channel_map:
        v = values[c.index]
        if v == 0:
            continue
        ends = np.array([c.gain * c.vmin, c.gain * c.vmax])
        side = ends.max() if v > 0 else ends.min()
        if side * v <= 0:
            raise MappingError(f"{src[c.index][0]}[{src[c.index][1]}] = {v:+.4g} (board units) has a sign that "
                               f"channel {c.index} ({c.kind}) cannot reach at any scale")
        lam = min(lam, (margin * abs(side) / abs(v)) ** (1.0 / _POWER[c.kind]))
    return float(lam)
