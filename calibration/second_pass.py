"""A residual-driven second pass: extra voltage levels where a channel's curve is not resolved.

After the planned sweeps, each channel's points so far (:class:`calibration.design.Knowledge`)
are fitted with the learned shapes (:func:`calibration.curves.fit_curve`) and the chosen shape is
cross-validated voltage by voltage (:func:`calibration.curves.cv_scores`: the held-out weighted
squared residual of each interior voltage, about 1 for a resolved curve).  A channel whose worst
held-out voltage scores above :data:`FLAG_SCORE` has a feature (a kink, a sharp bend) between
its levels that no candidate shape follows from the levels it has; the pass asks for the
midpoints on both sides of that voltage.  Midpoints are shared: one self-term setting moves every
node's channel of a kind at once, one edge setting every coupling of a matching, so the requests
are pooled per sweep (Q, R, B, W) and per matching, and the settings that serve the most flagged
channels come first, up to a budget of acquisitions.

Why: on zoo board 816906886 every ``kinked`` coupling (15 of 15) had a worst held-out score of
22-280 and errors of 0.7-1.9 % of full scale at 3-6 x its own one-sigma uncertainty (a shape
error, not noise); of the 60 couplings of other families one scored above 20.  Units: fractions
are of the channel's safe range (0 at ``vmin``, 1 at ``vmax``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from .curves import Candidate, cv_scores, fit_curve, voltage_clusters

__all__ = ["FLAG_SCORE", "Flag", "flag_channel", "midpoints", "plan_requests"]

#: A held-out voltage whose weighted squared residual exceeds this (about a 4.5-sigma miss of a
#: single point) flags the channel.
FLAG_SCORE = 20.0


@dataclass
class Flag:
    """One flagged channel: its worst held-out voltage (volts), that voltage's score, and the
    fractions of its safe range the pass asks for (sorted)."""

    channel: int
    volts: float
    score: float
    fractions: tuple


def flag_channel(channel, volts, values, sigmas, step: float, threshold: float = FLAG_SCORE) -> Flag | None:
    """Fit ``channel``'s points (arrays of shape (n,)) and return a :class:`Flag` when the chosen
    shape's worst held-out voltage scores above ``threshold``; None otherwise (also when the fit
    is refused or has fewer than three interior voltages).  ``step``: the sweep's level spacing
    as a fraction of the safe range (the midpoints lie half a step either side)."""
    v, y, s = (np.asarray(a, np.float64).ravel() for a in (volts, values, sigmas))
    fit = fit_curve(channel, v, y, s)
    if not fit.ok:
        return None
    w = 1.0 / s**2
    cand = Candidate(fit.model, len(fit.coef), fit.knots)
    scores = cv_scores(cand, channel, v, y, w)
    if len(scores) < 3 or not np.isfinite(scores).all() or scores.max() <= threshold:
        return None
    lab = voltage_clusters(v, channel.vmax - channel.vmin)
    missed = np.flatnonzero(scores > threshold) + 1  # folds are the interior clusters 1 .. n - 2
    fractions = sorted({f for k in missed for f in midpoints(channel, float(v[lab == k].mean()), step)})
    worst = int(np.argmax(scores)) + 1
    return Flag(channel.index, float(v[lab == worst].mean()), float(scores.max()), tuple(fractions))


def midpoints(channel, volts: float, step: float) -> tuple:
    """Fractions half a ``step`` either side of ``volts`` (inside 0..1), rounded to 1e-3."""
    span = channel.vmax - channel.vmin
    f = (volts - channel.vmin) / span if span > 0 else 0.0
    return tuple(round(float(x), 3) for x in (f - step / 2, f + step / 2) if 0.0 < x < 1.0)


def plan_requests(wanted: dict, budget: int) -> list:
    """Choose settings to acquire: ``wanted`` maps a setting key (e.g. ``("Q",)`` or
    ``("edge", m)``) to the list of fractions its flagged channels asked for (one entry per
    channel and fraction).  Returns up to ``budget`` (key, fraction) pairs, those asked for by the
    most channels first (ties: by key, then fraction, so the plan is reproducible)."""
    votes = Counter()
    for key, fractions in wanted.items():
        for f in fractions:
            votes[(key, f)] += 1
    order = sorted(votes.items(), key=lambda kv: (-kv[1], str(kv[0][0]), kv[0][1]))
    return [k for k, _ in order[: max(int(budget), 0)]]
