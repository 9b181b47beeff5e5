"""Element curves: value as a function of control voltage, fitted with uncertainties, and inverses.

Two models, chosen by the channel's map entry:

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

__all__ = ["CurveFit", "CurveError", "fit_curve", "nominal_curve", "MODELS"]

MODELS = ("poly", "periodic", "nominal")
_GRID = 2049


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
                      self.period, self.gain_nominal)

    def dbasis(self, v) -> np.ndarray:
        return _dbasis(self.model, np.atleast_1d(np.asarray(v, np.float64)), len(self.coef), self.centre, self.half,
                       self.period, self.gain_nominal)

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
        """Element value at applied volts ``v`` (any shape) and board temperature ``temp_k``."""
        self._require_ok()
        return self.raw_value(v) * self._temp_factor(temp_k)

    def sigma(self, v) -> np.ndarray:
        """One-sigma uncertainty of ``f(v)`` from the coefficient covariance."""
        v = np.asarray(v, np.float64)
        a = self.basis(v.ravel())
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", a, self.cov, a), 0.0)).reshape(v.shape)

    def derivative(self, v) -> np.ndarray:
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
            "chi2_red", "dof", "n_points", "rms_resid", "ok", "reason")}
        d["coef"] = np.asarray(self.coef).tolist()
        d["branch"] = [float(self.branch[0]), float(self.branch[1])]
        return d


# ----------------------------------------------------------------------------------- basis
def _basis(model, v, n_coef, centre, half, period, gain):
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


def _dbasis(model, v, n_coef, centre, half, period, gain):
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
    gain_tolerance: float = 0.5,
    tempco_max_sd: float = 1.5e-3,
) -> CurveFit:
    """Fit one channel's curve to measured points.

    Parameters
    ----------
    channel : tc_hw.device.Channel
        Its map entry (kind, safe range, nominal gain, period).
    volts, values, sigmas : array_like, shape (n,)
        Applied (read-back) volts, measured element values and their one-sigma errors.
    temps : array_like, shape (n,), optional
        Board temperature of each point (kelvin).  ``t_ref`` is their weighted mean; the tempco
        is fitted when the points' temperature spread determines it to ``tempco_max_sd`` per
        kelvin or better (otherwise it stays unknown, NaN, and nothing is corrected).
    degree : int or tuple of int
        Polynomial degree(s) tried in order (the first that passes ``chi2_max`` wins).
    harmonics : int
        Harmonics of the periodic model.
    chi2_max : float
        Largest acceptable reduced chi-square.
    gain_tolerance : float
        Refuse when the mean slope differs from the nominal gain by more than this fraction.

    Returns
    -------
    CurveFit
        Always returned; ``ok`` False (and ``reason``) when the fit is refused.
    """
    v = np.asarray(volts, np.float64).ravel()
    y = np.asarray(values, np.float64).ravel()
    s = np.asarray(sigmas, np.float64).ravel()
    t = np.full_like(v, np.nan) if temps is None else np.asarray(temps, np.float64).ravel()
    good = np.isfinite(v) & np.isfinite(y) & np.isfinite(s) & (s > 0)
    v, y, s, t = v[good], y[good], s[good], t[good]
    w = 1.0 / s**2
    periodic = channel.period > 0
    t_ok = np.isfinite(t)
    t_ref = float((t[t_ok] * w[t_ok]).sum() / w[t_ok].sum()) if t_ok.any() else math.nan
    dt = np.where(t_ok, t - (t_ref if math.isfinite(t_ref) else 0.0), 0.0)
    fit_tc = bool(np.any(dt != 0))
    degrees = (degree,) if isinstance(degree, int) else tuple(degree)
    model = "periodic" if periodic else "poly"
    n_coefs = [1 + 2 * harmonics] if periodic else [d + 1 for d in degrees]
    base = dict(channel=channel.index, kind=channel.kind, model=model, vmin=channel.vmin, vmax=channel.vmax,
                gain_nominal=channel.gain, period=channel.period, t_ref=t_ref, n_points=int(len(v)))
    span = channel.vmax - channel.vmin
    uv = np.unique(v)
    distinct = int(1 + np.sum(np.diff(uv) > 0.02 * span)) if len(uv) else 0  # voltage clusters
    reach_lo = channel.vmin + 0.15 * span
    reach_hi = channel.vmax - 0.15 * span
    if periodic:  # the branch lies within about a quarter period of the zero crossing
        reach_lo, reach_hi = max(reach_lo, -channel.period / 6), min(reach_hi, channel.period / 6)
    covered = len(v) > 0 and v.min() <= reach_lo and v.max() >= reach_hi
    best = None
    for n_coef in n_coefs:
        need = n_coef + 1 if min_points is None else max(min_points, n_coef + 1)
        if distinct < n_coef + 1 or len(v) < need or not covered:
            why = (f"too few points ({len(v)} at {distinct} distinct voltages) for {n_coef} coefficients"
                   if distinct < n_coef + 1 or len(v) < need else
                   f"points span only [{v.min():+.3g}, {v.max():+.3g}] V of the safe range "
                   f"[{channel.vmin:+.3g}, {channel.vmax:+.3g}] V")
            best = CurveFit(coef=np.zeros(n_coef), cov=np.zeros((n_coef, n_coef)), ok=False, reason=why, **base)
            continue
        fit = _fit_one(channel, v, y, w, dt, fit_tc, n_coef, base, tempco_max_sd)
        best = fit
        if fit.chi2_red <= chi2_max:
            break
    fit = best
    if fit.reason:  # already refused (too few points)
        return fit
    _judge(fit, channel, v, chi2_max, gain_tolerance, periodic)
    return fit


def _fit_one(channel, v, y, w, dt, fit_tc, n_coef, base, tempco_max_sd=math.inf) -> CurveFit:
    periodic = channel.period > 0
    period = channel.period
    proto = CurveFit(coef=np.zeros(n_coef), cov=np.zeros((n_coef, n_coef)), **base)

    def solve(per, tc):
        proto.period = per
        a = proto.basis(v)
        yy = y / (1.0 + tc * dt)
        return _wls(a, yy, w * (1.0 + tc * dt) ** 2)

    if periodic:
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
    dof = len(v) - n_coef - (1 if fit_tc else 0) - (1 if periodic else 0)
    chi2_red = chi2 / dof if dof > 0 else math.nan
    scale = max(1.0, chi2_red) if math.isfinite(chi2_red) else 1.0
    fit = CurveFit(coef=coef, cov=cov * scale, **base)
    fit.period = period
    fit.tempco = tc if fit_tc else math.nan
    fit.tempco_sd = tc_sd * math.sqrt(scale) if fit_tc else math.nan
    fit.chi2_red = float(chi2_red)
    fit.dof = int(dof)
    fit.rms_resid = float(np.sqrt(np.mean((y - (proto.basis(v) @ coef) * (1.0 + (tc if fit_tc else 0.0) * dt)) ** 2)))
    fit.extra["residuals"] = y - fit.raw_value(v) * (1.0 + (tc if fit_tc else 0.0) * dt)
    return fit


def _judge(fit: CurveFit, channel, v, chi2_max, gain_tolerance, periodic) -> None:
    """Set branch, ok and reason."""
    sign = 1.0 if channel.gain >= 0 else -1.0
    grid = np.linspace(channel.vmin, channel.vmax, _GRID)
    d = fit.derivative(grid)
    reasons = []
    if periodic:
        runs = _monotone_runs(d, sign)
        if not runs:
            reasons.append("no monotonic branch on the safe range")
            fit.branch = (math.nan, math.nan)
        else:
            f = fit.raw_value(grid)
            i, j = max(runs, key=lambda r: abs(f[r[1] - 1] - f[r[0]]))
            fit.branch = (float(grid[i]), float(grid[j - 1]))
            inside = (v >= fit.branch[0]) & (v <= fit.branch[1])
            if inside.sum() < 3:
                reasons.append(f"monotonic branch [{fit.branch[0]:.3g}, {fit.branch[1]:.3g}] V holds only {int(inside.sum())} points")
    else:
        fit.branch = (channel.vmin, channel.vmax)
        if not np.all(sign * d > 0):
            bad = grid[sign * d <= 0]
            reasons.append(f"not monotonic on the safe range (slope has the wrong sign near {bad[0]:+.3g} V)")
    lo, hi = fit.branch
    if math.isfinite(lo) and hi > lo:
        slope = (fit.raw_value(np.array([hi]))[0] - fit.raw_value(np.array([lo]))[0]) / (hi - lo)
        ref = channel.gain
        if periodic:  # mean slope of the nominal sine over the same interval
            ref = channel.gain * channel.period / (2 * np.pi) * (
                np.sin(2 * np.pi * hi / channel.period) - np.sin(2 * np.pi * lo / channel.period)) / (hi - lo)
        if ref != 0 and abs(slope / ref - 1.0) > gain_tolerance:
            reasons.append(f"mean slope {slope:.4g}/V is {slope / ref:.2f} x the nominal {ref:.4g}/V")
        fit.extra["slope_ratio"] = float(slope / ref) if ref else math.nan
    if not math.isfinite(fit.chi2_red):
        reasons.append("no degrees of freedom left for a quality figure")
    elif fit.chi2_red > chi2_max:
        reasons.append(f"reduced chi-square {fit.chi2_red:.2f} > {chi2_max:g}")
    fit.ok = not reasons
    fit.reason = "; ".join(reasons)
