"""Element curves: value as a function of control voltage, fitted with uncertainties, and inverses.

Shape learned from the data (``shape="learned"``, the default of :func:`fit_curve`): the
candidates are polynomials of degree 1..5, cubic B-splines (``spline``) with 1..4 interior knots
and, for periodic channels, sums of 1..3 harmonics; each is scored by leave-one-voltage-out
cross-validation (every interior voltage cluster held out in turn, weighted squared held-out
residuals); among the adequate candidates (held-out score close to the best, full-data
chi-square close to the smallest: :func:`select_model`), the default shape (cubic, two
harmonics), else the simplest, that passes the checks and is monotonic on its span wins.  The held-out rms residual is stored as
``cv_rms`` (value units): the uncertainty of the *shape*, next to the statistical
:meth:`CurveFit.sigma`.  All models are linear in their coefficients, so covariances are exact.

Calibrated span.  A curve is known only where it was measured: ``span`` is the interval of the
measured voltages (snapped to a safe-range end closer than 1 % of the range).  A channel measured
over part of its safe range keeps that part; :meth:`CurveFit.value` and :meth:`CurveFit.inverse`
refuse outside it, naming the channel and the span.  A channel is refused whole only when
nothing of it could be measured (fewer than three distinct voltages: no curve with a quality
figure).

``shape="poly"`` reproduces the fixed-family models below (format version 1).

Fixed models, chosen by the channel's map entry:

``poly``  (``period == 0``, RLC boards and the Q, R channels of JJ boards)
    ``f(v) = sum_k c_k u^k``, ``u = (v - centre) / half_span`` over the safe range, degree 3 by
    default (an affine element with a mild, smooth nonlinearity).  The fit must be monotonic on
    the whole safe range, or it is refused.
``periodic``  (``period > 0``, flux-controlled elements of JJ boards)
    ``f(v) = c0 + a1 sin(w v) + b1 cos(w v) + a2 sin(2 w v) + b2 cos(2 w v)``, ``w = 2 pi / P``,
    with ``P`` refined around the nominal period.  Only one monotonic *branch* is ever used: the
    longest run of the safe range on which ``f'`` has the sign of the nominal gain; outside it
    :meth:`CurveFit.inverse` refuses.

Both are linear least squares in their coefficients (weights ``1/sigma^2``), so the covariance is
exact; it is scaled by the reduced chi-square when that exceeds 1.  Temperature: values scale as
``1 + tempco * (T - t_ref)`` (``tempco`` per kelvin, NaN when no calibration data had the
temperature spread to measure it; then no correction is applied and :attr:`CurveFit.tempco_known`
is False).

A fit is refused (``ok = False`` with a ``reason``) when it has too few points or degrees of
freedom, a reduced chi-square above ``chi2_max``, is not monotonic where it must be, or its mean
slope is implausibly far from the nominal gain.  Refused curves are never evaluated:
:meth:`CurveFit.value` and :meth:`CurveFit.inverse` raise :class:`CurveError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["CurveFit", "CurveError", "fit_curve", "nominal_curve", "MODELS", "Candidate", "candidates", "select_model",
           "cv_scores", "voltage_clusters", "measured_span", "spline_knots"]

MODELS = ("poly", "periodic", "spline", "nominal")
_GRID = 2049
#: Candidate shapes of the learned fit: polynomial degrees, spline interior knots, harmonics.
POLY_DEGREES = (1, 2, 3, 4, 5)
SPLINE_KNOTS = (1, 2, 3, 4)
HARMONICS = (1, 2, 3)
#: A non-periodic fit whose slope has the wrong sign near an end keeps its longest monotonic run
#: as the branch (mapping and inverse use only the branch) when that run covers this fraction of
#: the calibrated span; otherwise it is refused.
MONOTONE_FRACTION = 0.8
#: A measured span closer than this fraction of the safe range to a range end is snapped to it.
SNAP_FRACTION = 0.01
#: The shapes of the fixed models (format 1): kept unless cross-validation finds them significantly
#: worse (the cubic for channels without a period, two harmonics for periodic ones).
DEFAULT_SHAPES = ("poly3", "periodic2")
#: Adequacy of a shape (:func:`select_model`): standard errors of the fold-by-fold score
#: difference to the best, and the ratio and slack of the score and chi-square limits.
CV_N_SE = 2.0
CV_RATIO = 1.25
CV_SLACK = 0.25
#: A fit whose mean slope (steepest, periodic) is outside [1/GAIN_FACTOR, GAIN_FACTOR] x the
#: nominal gain is refused (wrong sign included).
GAIN_FACTOR = 3.0
#: Level of the likelihood-ratio test that a simpler shape's chi-square excess over the best-fitting
#: shape is noise (:func:`select_model`).
CHI2_LEVEL = 0.99


class CurveError(ValueError):
    """A curve was asked for something it cannot give (refused fit, value out of reach)."""


@dataclass
class CurveFit:
    """One channel's fitted curve (see the module docstring).

    ``coef``/``cov`` the model coefficients and their covariance; ``branch`` (lo, hi) the
    voltage interval that :meth:`inverse` uses; quality: ``chi2_red``, ``dof``, ``n_points``,
    ``rms_resid`` (value units), ``ok``/``reason``.
    """

    channel: int
    kind: str
    model: str
    coef: np.ndarray
    cov: np.ndarray
    vmin: float
    vmax: float
    gain_nominal: float
    period: float = 0.0
    branch: tuple = (math.nan, math.nan)
    t_ref: float = math.nan
    tempco: float = math.nan
    tempco_sd: float = math.nan
    chi2_red: float = math.nan
    dof: int = 0
    n_points: int = 0
    rms_resid: float = math.nan
    ok: bool = False
    reason: str = ""
    extra: dict = field(default_factory=dict)
    knots: np.ndarray = field(default_factory=lambda: np.zeros(0))
    span: tuple = (math.nan, math.nan)
    cv_rms: float = math.nan

    def __post_init__(self):
        if not (math.isfinite(self.span[0]) and math.isfinite(self.span[1])):
            self.span = (float(self.vmin), float(self.vmax))
        self.knots = np.asarray(self.knots, np.float64)

    # -- basis ------------------------------------------------------------------------------
    @property
    def centre(self) -> float:
        return 0.5 * (self.vmin + self.vmax)

    @property
    def half(self) -> float:
        h = 0.5 * (self.vmax - self.vmin)
        return h if h > 0 else 1.0

    def basis(self, v) -> np.ndarray:
        """Design matrix rows for voltages ``v``, shape (len(v), n_coef)."""
        return _basis(self.model, np.atleast_1d(np.asarray(v, np.float64)), len(self.coef), self.centre, self.half,
                      self.period, self.gain_nominal, self.knots)

    def dbasis(self, v) -> np.ndarray:
        return _dbasis(self.model, np.atleast_1d(np.asarray(v, np.float64)), len(self.coef), self.centre, self.half,
                       self.period, self.gain_nominal, self.knots)

    @property
    def partial(self) -> bool:
        """True when the calibrated span is narrower than the safe range."""
        return bool(self.span[0] > self.vmin or self.span[1] < self.vmax)

    def span_text(self) -> str:
        """``"calibrated span [lo, hi] V of the safe range [vmin, vmax] V"``."""
        return (f"calibrated span [{self.span[0]:+.4g}, {self.span[1]:+.4g}] V of the safe range "
                f"[{self.vmin:+.4g}, {self.vmax:+.4g}] V")

    def check_volts(self, v, tol_v: float = 0.0) -> None:
        """Raise :class:`CurveError` naming the channel and its calibrated span when any of ``v``
        lies outside the span (by more than ``tol_v`` volts)."""
        v = np.asarray(v, np.float64).ravel()
        out = (v < self.span[0] - tol_v) | (v > self.span[1] + tol_v)
        if out.any():
            raise CurveError(f"channel {self.channel} ({self.kind}): {float(v[np.argmax(out)]):+.6g} V is outside "
                             f"its {self.span_text()}; refused (the curve is not known there)")

    # -- evaluation -------------------------------------------------------------------------
    @property
    def tempco_known(self) -> bool:
        return math.isfinite(self.tempco)

    def _temp_factor(self, temp_k) -> np.ndarray | float:
        if temp_k is None or not self.tempco_known or not math.isfinite(self.t_ref):
            return 1.0
        return 1.0 + self.tempco * (np.asarray(temp_k, np.float64) - self.t_ref)

    def _require_ok(self) -> None:
        if not self.ok:
            raise CurveError(f"channel {self.channel} ({self.kind}): calibration refused ({self.reason}); not used")

    def raw_value(self, v) -> np.ndarray:
        """``f(v)`` at the reference temperature, without the ``ok`` check (plots, diagnostics)."""
        v = np.asarray(v, np.float64)
        return (self.basis(v.ravel()) @ self.coef).reshape(v.shape)

    def value(self, v, temp_k=None) -> np.ndarray:
        """Element value at applied volts ``v`` (any shape) and board temperature ``temp_k``;
        refuses volts outside the calibrated span by more than half a DAC step (:meth:`check_volts`)."""
        self._require_ok()
        self.check_volts(v, tol_v=_HALF_LSB_V)
        return self.raw_value(v) * self._temp_factor(temp_k)

    def sigma(self, v) -> np.ndarray:
        """One-sigma uncertainty of ``f(v)`` from the coefficient covariance."""
        v = np.asarray(v, np.float64)
        a = self.basis(v.ravel())
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", a, self.cov, a), 0.0)).reshape(v.shape)

    def derivative(self, v) -> np.ndarray:
        """``f'(v)`` (value per volt) at the reference temperature."""
        v = np.asarray(v, np.float64)
        return (self.dbasis(v.ravel()) @ self.coef).reshape(v.shape)

    def value_range(self, temp_k=None) -> tuple[float, float]:
        """(lowest, highest) value reachable on the branch, at ``temp_k``."""
        self._require_ok()
        lo, hi = self.branch
        a, b = self.value(np.array([lo, hi]), temp_k)
        return (float(min(a, b)), float(max(a, b)))

    def inverse(self, value, temp_k=None) -> np.ndarray:
        """Volts on the branch giving ``value`` (any shape); raises :class:`CurveError` for a value
        outside :meth:`value_range` (names the channel and the reachable range)."""
        self._require_ok()
        factor = self._temp_factor(temp_k)
        y = np.asarray(value, np.float64) / factor
        lo, hi = self.branch
        grid = np.linspace(lo, hi, _GRID)
        fg = self.raw_value(grid)
        if fg[-1] < fg[0]:
            grid, fg = grid[::-1], fg[::-1]
        flat = y.ravel()
        tol = 1e-12 * max(1.0, abs(fg[0]), abs(fg[-1]))
        bad = (flat < fg[0] - tol) | (flat > fg[-1] + tol)
        if bad.any():
            f = float(np.ravel(factor)[0]) if np.ndim(factor) else float(factor)
            raise CurveError(
                f"channel {self.channel} ({self.kind}): value {float(np.ravel(value)[np.argmax(bad)]):.6g} "
                f"outside the reachable range [{fg[0] * f:.6g}, {fg[-1] * f:.6g}]"
                + (f" of its {self.span_text()}" if self.partial else "")
            )
        v = np.interp(flat, fg, grid)
        for _ in range(4):  # Newton polish on the monotonic branch
            d = self.derivative(v)
            step = np.where(d != 0, (self.raw_value(v) - flat) / np.where(d != 0, d, 1.0), 0.0)
            v = np.clip(v - step, min(lo, hi), max(lo, hi))
        return v.reshape(y.shape)

    # -- storage ----------------------------------------------------------------------------
    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in (
            "channel", "kind", "model", "vmin", "vmax", "gain_nominal", "period", "t_ref", "tempco", "tempco_sd",
            "chi2_red", "dof", "n_points", "rms_resid", "ok", "reason", "cv_rms")}
        d["coef"] = np.asarray(self.coef).tolist()
        d["knots"] = np.asarray(self.knots).tolist()
        d["branch"] = [float(self.branch[0]), float(self.branch[1])]
        d["span"] = [float(self.span[0]), float(self.span[1])]
        return d


# ----------------------------------------------------------------------------------- basis
_HALF_LSB_V = 0.5 * 20.0 / 65536.0


def _spline_basis(v, knots, deriv=0):
    """Cubic B-spline design matrix on the full knot vector ``knots`` (clamped), or of its
    ``deriv``-th derivative (0 or 1), extrapolating the end polynomials."""
    from scipy.interpolate import BSpline

    t = np.asarray(knots, np.float64)
    if deriv == 0:
        return BSpline.design_matrix(v, t, 3, extrapolate=True).toarray()
    n = len(t) - 4
    b2 = BSpline.design_matrix(v, t[1:-1], 2, extrapolate=True).toarray()  # (m, n - 1)
    d = np.zeros((n - 1, n))
    h = t[4:4 + n - 1] - t[1:n]
    idx = np.arange(n - 1)
    d[idx, idx + 1] = 3.0 / h
    d[idx, idx] = -3.0 / h
    return b2 @ d


def spline_knots(lo: float, hi: float, interior) -> np.ndarray:
    """Clamped cubic knot vector on ``[lo, hi]`` with the given interior knots."""
    return np.concatenate([[lo] * 4, np.sort(np.asarray(interior, np.float64)), [hi] * 4])


def _basis(model, v, n_coef, centre, half, period, gain, knots=None):
    if model == "spline":
        return _spline_basis(v, knots)
    if model == "poly":
        u = (v - centre) / half
        return np.stack([u**k for k in range(n_coef)], 1)
    if model == "periodic":
        w = 2 * np.pi / period
        cols = [np.ones_like(v)]
        for h in range(1, (n_coef - 1) // 2 + 1):
            cols += [np.sin(h * w * v), np.cos(h * w * v)]
        return np.stack(cols, 1)
    if model == "nominal":
        if period > 0:
            return (period / (2 * np.pi) * np.sin(2 * np.pi * v / period))[:, None]
        return v[:, None]
    raise ValueError(f"unknown curve model {model!r}")


def _dbasis(model, v, n_coef, centre, half, period, gain, knots=None):
    if model == "spline":
        return _spline_basis(v, knots, 1)
    if model == "poly":
        u = (v - centre) / half
        cols = [np.zeros_like(v)] + [k * u ** (k - 1) / half for k in range(1, n_coef)]
        return np.stack(cols, 1)
    if model == "periodic":
        w = 2 * np.pi / period
        cols = [np.zeros_like(v)]
        for h in range(1, (n_coef - 1) // 2 + 1):
            cols += [h * w * np.cos(h * w * v), -h * w * np.sin(h * w * v)]
        return np.stack(cols, 1)
    if model == "nominal":
        if period > 0:
            return np.cos(2 * np.pi * v / period)[:, None]
        return np.ones_like(v)[:, None]
    raise ValueError(f"unknown curve model {model!r}")


def nominal_curve(channel) -> CurveFit:
    """The nominal curve of a map channel: ``gain * v`` (RLC) or ``gain P/(2 pi) sin(2 pi v / P)``
    (periodic), exact (zero covariance), branch = safe range (periodic: ``|v| <= P/4`` within it)."""
    c = channel
    lo, hi = c.vmin, c.vmax
    if c.period > 0:
        lo, hi = max(lo, -c.period / 4), min(hi, c.period / 4)
    return CurveFit(c.index, c.kind, "nominal", np.array([c.gain]), np.zeros((1, 1)), c.vmin, c.vmax, c.gain,
                    c.period, (lo, hi), ok=True, reason="nominal gain, not calibrated", chi2_red=math.nan)


# ----------------------------------------------------------------------------------- fitting
def _wls(a, y, w):
    aw = a * w[:, None]
    m = a.T @ aw
    try:
        cov = np.linalg.inv(m)
    except np.linalg.LinAlgError:
        cov = np.linalg.pinv(m)
    coef = cov @ (aw.T @ y)
    res = y - a @ coef
    chi2 = float((res * res * w).sum())
    return coef, cov, res, chi2


def _monotone_runs(d: np.ndarray, sign: float):
    """Index runs [i, j) where ``sign * d > 0``."""
    good = sign * d > 0
    runs, start = [], None
    for i, g in enumerate(good):
        if g and start is None:
            start = i
        elif not g and start is not None:
            runs.append((start, i))
            start = None
    if start is not None:
        runs.append((start, len(good)))
    return runs


def voltage_clusters(v: np.ndarray, safe_span: float, gap_fraction: float = 0.02) -> np.ndarray:
    """Cluster label (0, 1, ... in increasing voltage) of each voltage in ``v`` (shape (n,)):
    sorted voltages further apart than ``gap_fraction`` of the safe range start a new cluster."""
    v = np.asarray(v, np.float64)
    if not len(v):
        return np.zeros(0, np.int64)
    order = np.argsort(v, kind="stable")
    jumps = np.concatenate([[0], (np.diff(v[order]) > gap_fraction * safe_span).astype(np.int64)])
    lab = np.empty(len(v), np.int64)
    lab[order] = np.cumsum(jumps)
    return lab


def measured_span(channel, v: np.ndarray) -> tuple[float, float]:
    """The calibrated span of measured voltages ``v``: ``[min v, max v]``, each end snapped to the
    safe-range end when closer than :data:`SNAP_FRACTION` of the range."""
    tol = SNAP_FRACTION * (channel.vmax - channel.vmin)
    lo, hi = float(np.min(v)), float(np.max(v))
    lo = float(channel.vmin) if lo - channel.vmin <= tol else lo
    hi = float(channel.vmax) if channel.vmax - hi <= tol else hi
    return lo, hi


@dataclass
class Candidate:
    """One shape of the learned fit: ``model`` (poly, spline, periodic), ``n_coef``, ``knots``
    (full clamped knot vector for splines, else empty)."""

    model: str
    n_coef: int
    knots: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def label(self) -> str:
        if self.model == "poly":
            return f"poly{self.n_coef - 1}"
        if self.model == "spline":
            return f"spline{self.n_coef - 4}"
        return f"periodic{(self.n_coef - 1) // 2}"


def candidates(channel, v: np.ndarray, span, shape: str = "learned", degree=3, harmonics: int = 2) -> list:
    """The shapes tried for ``channel`` given its measured voltages ``v``: each needs at least one
    voltage cluster more than it has coefficients.  ``shape="poly"``: the fixed family
    (``degree`` (int or tuple) or ``harmonics``) only."""
    n_cl = int(voltage_clusters(v, channel.vmax - channel.vmin).max()) + 1 if len(v) else 0
    if shape == "poly":
        if channel.period > 0:
            return [Candidate("periodic", 1 + 2 * harmonics)]
        degrees = (degree,) if isinstance(degree, int) else tuple(degree)
        return [Candidate("poly", d + 1) for d in degrees]
    if shape != "learned":
        raise ValueError(f"unknown curve shape {shape!r} (learned or poly)")
    out = [Candidate("poly", d + 1) for d in POLY_DEGREES if d == 1 or d + 2 <= n_cl]
    lab = voltage_clusters(v, channel.vmax - channel.vmin)
    centres = np.array([v[lab == k].mean() for k in range(n_cl)])
    for k in SPLINE_KNOTS:
        if k + 5 <= n_cl:
            inner = np.quantile(centres, np.linspace(0, 1, k + 2)[1:-1])
            out.append(Candidate("spline", k + 4, spline_knots(span[0], span[1], inner)))
    if channel.period > 0:
        out += [Candidate("periodic", 1 + 2 * h) for h in HARMONICS if 2 * h + 2 <= n_cl]
    return out


def _design(cand: Candidate, channel, v, period=None) -> np.ndarray:
    c, h = 0.5 * (channel.vmin + channel.vmax), 0.5 * (channel.vmax - channel.vmin) or 1.0
    return _basis(cand.model, v, cand.n_coef, c, h, channel.period if period is None else period, channel.gain,
                  cand.knots)


def cv_scores(cand: Candidate, channel, v, y, w) -> np.ndarray:
    """Leave-one-cluster-out scores of ``cand``: for each interior voltage cluster, the mean
    weighted squared residual (``w (y - f)^2``) of its points predicted from all other points.
    Shape (n_interior_clusters,); empty with fewer than 3 clusters."""
    lab = voltage_clusters(v, channel.vmax - channel.vmin)
    n_cl = int(lab.max()) + 1 if len(lab) else 0
    a = _design(cand, channel, v)
    sw = np.sqrt(w)
    out = []
    for k in range(1, n_cl - 1):
        test = lab == k
        coef = np.linalg.lstsq(a[~test] * sw[~test, None], y[~test] * sw[~test], rcond=None)[0]
        r = y[test] - a[test] @ coef
        out.append(float(np.mean(w[test] * r * r)))
    return np.array(out)


def _chi2_red(cand: Candidate, channel, v, y, w) -> float:
    a = _design(cand, channel, v)
    sw = np.sqrt(w)
    coef = np.linalg.lstsq(a * sw[:, None], y * sw, rcond=None)[0]
    dof = len(v) - cand.n_coef
    r = y - a @ coef
    return float((w * r * r).sum() / dof) if dof > 0 else math.inf


def _chi2_adequate(cands: list, n_points: int) -> list:
    """Per candidate: is its full-data chi-square consistent with the best-fitting candidate's?

    A likelihood-ratio test: the chi-square excess over the candidate with the smallest total
    chi-square, in units of that candidate's reduced chi-square when above 1 (errors that are
    somewhat underestimated), must stay below the :data:`CHI2_LEVEL` quantile of a chi-square
    with the difference in coefficients as degrees of freedom (at least 1).  The old rule, a
    reduced chi-square within 1.25 x the smallest + 0.5, let a straight line through a
    saturating curve pass when most points sat at one helper voltage (its excess, 36 for 3
    coefficients, diluted over 100 points)."""
    from scipy.stats import chi2 as chi2_dist

    tot = [c.chi2 * max(n_points - c.n_coef, 1) if math.isfinite(c.chi2) else math.inf for c in cands]
    k = int(np.argmin(tot))
    ref = cands[k]
    scale = max(1.0, ref.chi2) if math.isfinite(ref.chi2) else 1.0
    out = []
    for c, t in zip(cands, tot):
        df = max(ref.n_coef - c.n_coef, 1)
        out.append(math.isfinite(t) and (t - tot[k]) / scale <= float(chi2_dist.ppf(CHI2_LEVEL, df)))
    return out


def select_model(cands: list, channel, v, y, w, n_se: float | None = None) -> list:
    """``cands`` in the order they are tried.

    A candidate is *adequate* when its mean cross-validation score (:func:`cv_scores`, a
    held-out reduced chi-square) is within ``n_se`` standard errors (of the fold-by-fold
    difference) of the best candidate's, or within :data:`CV_RATIO` x best + :data:`CV_SLACK`;
    and its chi-square on all points is consistent with the best-fitting candidate's
    (:func:`_chi2_adequate`, a likelihood-ratio test; a shape that misses a kink has one huge fold
    score, whose spread would otherwise excuse it; the full-data chi-square does not).  Adequate
    candidates come first: the channel's default shape (:data:`DEFAULT_SHAPES`: the cubic, or two
    harmonics for a periodic channel) first, then the simplest (fewest coefficients); then the
    rest by mean score.  Each candidate gets ``cv`` (mean score),
    ``cv_rms`` (rms held-out residual, value units) and ``chi2`` attributes."""
    n_se = CV_N_SE if n_se is None else n_se
    scores = []
    for c in cands:
        sc = cv_scores(c, channel, v, y, w)
        c.cv = float(np.mean(sc)) if len(sc) else math.nan
        c.cv_rms = float(math.sqrt(c.cv / np.mean(w))) if len(sc) and math.isfinite(c.cv) else math.nan
        c.chi2 = _chi2_red(c, channel, v, y, w)
        scores.append(sc)
    finite = [c.cv for c in cands if math.isfinite(c.cv)]
    if len(cands) <= 1 or not finite:
        return sorted(cands, key=lambda c: c.n_coef)
    best = int(np.nanargmin([c.cv if math.isfinite(c.cv) else np.nan for c in cands]))
    chi2_ok = _chi2_adequate(cands, len(v))
    near, rest = [], []
    for c, sc, ok in zip(cands, scores, chi2_ok):
        d = sc - scores[best]
        se = float(np.std(d, ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0
        by_cv = math.isfinite(c.cv) and (float(np.mean(d)) <= n_se * se or c.cv <= CV_RATIO * cands[best].cv + CV_SLACK)
        (near if by_cv and ok else rest).append(c)
    default = "periodic2" if channel.period > 0 else "poly3"
    near.sort(key=lambda c: (c.label != default, c.n_coef, c.cv))
    rest.sort(key=lambda c: c.cv if math.isfinite(c.cv) else math.inf)
    return near + rest


def fit_curve(
    channel,
    volts,
    values,
    sigmas,
    temps=None,
    *,
    degree: int | tuple = 3,
    harmonics: int = 2,
    chi2_max: float = 5.0,
    min_points: int | None = None,
    gain_factor: float = GAIN_FACTOR,
    tempco_max_sd: float = 1.5e-3,
    shape: str = "learned",
) -> CurveFit:
    """Fit one channel's curve to measured points, over the span they cover.

    Parameters
    ----------
    channel : tc_hw.model.device.Channel
        Its map entry (kind, safe range, nominal gain, period).
    volts, values, sigmas : array_like, shape (n,)
        Applied (read-back) volts, measured element values and their one-sigma errors.
    temps : array_like, shape (n,), optional
        Board temperature of each point (kelvin).  ``t_ref`` is their weighted mean; the tempco
        is fitted when the points' temperature spread determines it to ``tempco_max_sd`` per
        kelvin or better (otherwise it stays unknown, NaN, and nothing is corrected).
    shape : str
        ``"learned"`` (candidates chosen by cross-validation, :func:`select_model`) or ``"poly"``
        (the fixed ``degree``/``harmonics`` family, tried in order).
    degree : int or tuple of int
        ``shape="poly"``: polynomial degree(s) tried in order (the first that passes wins).
    harmonics : int
        ``shape="poly"``: harmonics of the periodic model.
    chi2_max : float
        Largest acceptable reduced chi-square.
    gain_factor : float
        Refuse when the mean slope is more than this factor above or below the nominal gain
        (:data:`GAIN_FACTOR`: a sanity check against a wrong channel, not a shape prior; a
        tighter check made a shape that misses the curvature win over the right one whose mean
        slope is, correctly, 1.6 x the nominal).

    Returns
    -------
    CurveFit
        Always returned; ``span`` the calibrated span (volts); ``ok`` False (and ``reason``) when
        the fit is refused: nothing measurable (points at fewer than three voltages), or no
        candidate passes the quality checks.
    """
    v = np.asarray(volts, np.float64).ravel()
    y = np.asarray(values, np.float64).ravel()
    s = np.asarray(sigmas, np.float64).ravel()
    t = np.full_like(v, np.nan) if temps is None else np.asarray(temps, np.float64).ravel()
    good = np.isfinite(v) & np.isfinite(y) & np.isfinite(s) & (s > 0)
    v, y, s, t = v[good], y[good], s[good], t[good]
    w = 1.0 / s**2
    t_ok = np.isfinite(t)
    t_ref = float((t[t_ok] * w[t_ok]).sum() / w[t_ok].sum()) if t_ok.any() else math.nan
    dt = np.where(t_ok, t - (t_ref if math.isfinite(t_ref) else 0.0), 0.0)
    fit_tc = bool(np.any(dt != 0))
    base = dict(channel=channel.index, kind=channel.kind, vmin=channel.vmin, vmax=channel.vmax,
                gain_nominal=channel.gain, period=channel.period, t_ref=t_ref, n_points=int(len(v)))
    n_cl = int(voltage_clusters(v, channel.vmax - channel.vmin).max()) + 1 if len(v) else 0
    if n_cl < 3 or len(v) < 4 or (min_points is not None and len(v) < min_points):
        why = ("nothing measurable: no usable points on the safe range" if not len(v) else
               f"nothing measurable: {len(v)} points all at {np.min(v):+.3g} V; a curve needs two voltages"
               if n_cl < 2 else
               f"too few points ({len(v)} at {n_cl} distinct voltages, {np.min(v):+.3g}..{np.max(v):+.3g} V): a "
               "curve with a quality figure needs three voltages")
        return CurveFit(model="poly", coef=np.zeros(2), cov=np.zeros((2, 2)), ok=False, reason=why, **base)
    span = measured_span(channel, v)
    cands = select_model(candidates(channel, v, span, shape, degree, harmonics), channel, v, y, w)
    first, poor = None, None
    for cand in cands:
        fit = _fit_one(channel, v, y, w, dt, fit_tc, cand, dict(base, span=span), tempco_max_sd)
        _judge(fit, channel, v, chi2_max, gain_factor, channel.period > 0)
        first = fit if first is None else first
        if fit.ok:
            return fit
        if poor is None and fit.extra.get("poor_fit_only") and _misses_little(fit, v):
            poor = fit
    return first if poor is None else _accept_poor(poor, chi2_max)


#: A poor fit is kept only when its held-out rms residual is at most this fraction of the range
#: of values over its span (a kink between levels, not a curve of another shape).
POOR_FIT_MAX_FS = 0.10


def _misses_little(fit: CurveFit, v) -> bool:
    """Whether ``fit``'s held-out rms residual is within :data:`POOR_FIT_MAX_FS` of its value range."""
    lo, hi = fit.span
    rng = abs(float(np.ptp(fit.raw_value(np.linspace(lo, hi, 33)))))
    return math.isfinite(fit.cv_rms) and rng > 0 and fit.cv_rms <= POOR_FIT_MAX_FS * rng


def _accept_poor(fit: CurveFit, chi2_max: float) -> CurveFit:
    """A measurable channel that no candidate shape follows to ``chi2_max`` (a sharp kink, say)
    is kept, not lost: the best-scoring monotonic candidate whose only failed check is the
    chi-square and whose held-out residual is small (:func:`_misses_little`), its covariance
    already scaled by the reduced chi-square, flagged in ``reason``."""
    fit.ok = True
    fit.reason = (f"poor fit kept: reduced chi-square {fit.chi2_red:.2f} > {chi2_max:g} (a shape no candidate "
                  f"follows, e.g. a kink); uncertainties scaled by it, held-out rms {fit.cv_rms:.3g}")
    fit.extra["poor_fit"] = True
    return fit


def _fit_one(channel, v, y, w, dt, fit_tc, cand, base, tempco_max_sd=math.inf) -> CurveFit:
    """Weighted least squares of one candidate (with the tempco when the data pin it down)."""
    n_coef = cand.n_coef
    period = channel.period
    proto = CurveFit(model=cand.model, coef=np.zeros(n_coef), cov=np.zeros((n_coef, n_coef)), knots=cand.knots,
                     **base)

    def solve(per, tc):
        proto.period = per
        a = proto.basis(v)
        yy = y / (1.0 + tc * dt)
        return _wls(a, yy, w * (1.0 + tc * dt) ** 2)

    if cand.model == "periodic":
        from scipy.optimize import minimize_scalar

        res = minimize_scalar(lambda p: solve(p, 0.0)[3], bounds=(0.8 * period, 1.2 * period), method="bounded",
                              options={"xatol": 1e-6 * period})
        period = float(res.x)
    tc, tc_sd = 0.0, math.nan
    coef, cov, res, chi2 = solve(period, 0.0)
    if fit_tc:  # only when the data pin the tempco down: sd = 1 / sqrt(sum w (f dt)^2)
        f = proto.basis(v) @ coef
        denom = float((w * (f * dt) ** 2).sum())
        fit_tc = denom > 0 and 1.0 / math.sqrt(denom) <= tempco_max_sd
    if fit_tc:
        for _ in range(3):  # alternate: curve at fixed tempco, tempco by weighted regression
            f = proto.basis(v) @ coef
            xreg = f * dt
            denom = float((w * xreg * xreg).sum())
            if denom <= 0:
                break
            tc = float((w * xreg * (y - f)).sum() / denom)
            tc_sd = float(1.0 / math.sqrt(denom))
            coef, cov, res, chi2 = solve(period, tc)
    dof = len(v) - n_coef - (1 if fit_tc else 0) - (1 if cand.model == "periodic" else 0)
    chi2_red = chi2 / dof if dof > 0 else math.nan
    scale = max(1.0, chi2_red) if math.isfinite(chi2_red) else 1.0
    fit = CurveFit(model=cand.model, coef=coef, cov=cov * scale, knots=cand.knots, **base)
    fit.period = period
    fit.tempco = tc if fit_tc else math.nan
    fit.tempco_sd = tc_sd * math.sqrt(scale) if fit_tc else math.nan
    fit.chi2_red = float(chi2_red)
    fit.dof = int(dof)
    fit.cv_rms = float(getattr(cand, "cv_rms", math.nan))
    fit.rms_resid = float(np.sqrt(np.mean((y - (proto.basis(v) @ coef) * (1.0 + (tc if fit_tc else 0.0) * dt)) ** 2)))
    fit.extra["residuals"] = y - fit.raw_value(v) * (1.0 + (tc if fit_tc else 0.0) * dt)
    fit.extra["shape"] = cand.label
    return fit


def _judge(fit: CurveFit, channel, v, chi2_max, gain_factor, periodic) -> None:
    """Set branch (the monotonic part of the calibrated span: all of it, or for a periodic element
    or a fit that turns near an end, its longest monotonic run), ok and reason."""
    sign = 1.0 if channel.gain >= 0 else -1.0
    lo_s, hi_s = fit.span
    grid = np.linspace(lo_s, hi_s, _GRID)
    d = fit.derivative(grid)
    reasons = []
    if periodic:
        runs = _monotone_runs(d, sign)
        if not runs:
            reasons.append(f"no monotonic branch on the {fit.span_text()}")
            fit.branch = (math.nan, math.nan)
        else:
            f = fit.raw_value(grid)
            i, j = max(runs, key=lambda r: abs(f[r[1] - 1] - f[r[0]]))
            fit.branch = (float(grid[i]), float(grid[j - 1]))
            inside = (v >= fit.branch[0]) & (v <= fit.branch[1])
            if inside.sum() < 3:
                reasons.append(f"monotonic branch [{fit.branch[0]:.3g}, {fit.branch[1]:.3g}] V holds only {int(inside.sum())} points")
    else:
        fit.branch = (lo_s, hi_s)
        if not np.all(sign * d > 0):
            # a flat (saturating) end can come out non-monotonic by noise: keep the longest
            # monotonic run as the branch when it covers most of the span, else refuse
            runs = _monotone_runs(d, sign)
            i, j = max(runs, key=lambda r: r[1] - r[0]) if runs else (0, 0)
            if j - i >= MONOTONE_FRACTION * len(grid):
                fit.branch = (float(grid[i]), float(grid[j - 1]))
            else:
                bad = grid[sign * d <= 0]
                reasons.append(f"{fit.extra.get('shape', fit.model)} not monotonic on the {fit.span_text()} "
                               f"(slope has the wrong sign near {bad[0]:+.3g} V)")
    lo, hi = fit.branch
    if math.isfinite(lo) and hi > lo:
        ref = channel.gain
        if periodic:  # the steepest slope of the branch: the nominal gain wherever the offset puts it
            on = (grid >= lo) & (grid <= hi)
            slope = float(sign * np.max(sign * d[on])) if on.any() else math.nan
            what = "steepest slope"
        else:
            slope = (fit.raw_value(np.array([hi]))[0] - fit.raw_value(np.array([lo]))[0]) / (hi - lo)
            what = "mean slope"
        ratio = slope / ref if ref != 0 else math.nan
        if ref != 0 and not (1.0 / gain_factor <= ratio <= gain_factor):
            reasons.append(f"{what} {slope:.4g}/V is {slope / ref:.2f} x the nominal {ref:.4g}/V")
        fit.extra["slope_ratio"] = float(slope / ref) if ref else math.nan
    if not math.isfinite(fit.chi2_red):
        reasons.append("no degrees of freedom left for a quality figure")
    elif fit.chi2_red > chi2_max:
        fit.extra["poor_fit_only"] = not reasons  # every other check passed
        reasons.append(f"reduced chi-square {fit.chi2_red:.2f} > {chi2_max:g}")
    fit.ok = not reasons
    fit.reason = "; ".join(reasons)
