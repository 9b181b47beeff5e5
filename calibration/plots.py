"""PNG plots of a calibration, written next to the record: one figure per element kind (fitted
curves with their points; normalised residuals) and one of the ADC fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tc_hw.model.plotting import figure, save

__all__ = ["plot_all", "plot_kind"]


def plot_kind(analysis, cmap, kind: str, path) -> Path | None:
    fits = [f for f in analysis.fits if f.kind == kind]
    if not fits:
        return None
    pts = analysis.points
    fig, axes = figure(1, 2, size=(11.0, 4.2))
    ax_c, ax_r = axes[0, 0], axes[0, 1]
    n_bad = 0
    for f in fits:
        m = (pts["channel"] == f.channel) & pts["used"]
        v, y, s = pts["volts"][m], pts["value"][m], pts["sigma"][m]
        if not f.ok:
            n_bad += 1
            if len(v):
                ax_c.plot(v, y, "x", color="tab:red", ms=3, alpha=0.6)
            continue
        grid = np.linspace(f.vmin, f.vmax, 101)
        ax_c.plot(grid, f.raw_value(grid), lw=0.6, alpha=0.5)
        if f.period > 0:  # the part of the curve that is used: its monotonic branch
            lo, hi = f.branch
            g2 = np.linspace(lo, hi, 41)
            ax_c.plot(g2, f.raw_value(g2), lw=1.2, alpha=0.7)
        if len(v):
            ax_c.plot(v, y, ".", ms=1.5, color="k", alpha=0.3)
            r = (y - f.raw_value(v)) / s
            ax_r.plot(v, r, ".", ms=2, alpha=0.4)
    ax_c.set_xlabel("control voltage (V)")
    ax_c.set_ylabel(f"{kind} value (kT units)")
    ax_c.set_title(f"{kind}: {len(fits) - n_bad}/{len(fits)} curves accepted" + (" (red: refused)" if n_bad else ""))
    ax_r.axhline(0, color="k", lw=0.5)
    ax_r.set_xlabel("control voltage (V)")
    ax_r.set_ylabel("residual / sigma")
    chi = [f.chi2_red for f in fits if np.isfinite(f.chi2_red)]
    ax_r.set_title(f"normalised residuals (median reduced chi2 {np.median(chi):.2f})" if chi else "residuals")
    return save(fig, path)


def plot_adc(analysis, path) -> Path | None:
    a = analysis.adc
    if not a.measured:
        return None
    fig, axes = figure(1, 2, size=(9.0, 3.6))
    nodes = np.arange(len(a.gain))
    axes[0, 0].errorbar(nodes, a.gain, yerr=a.gain_sd, fmt=".", ms=4)
    axes[0, 0].set_xlabel("node")
    axes[0, 0].set_ylabel("ADC gain")
    axes[0, 1].errorbar(nodes, 1e3 * a.offset, yerr=1e3 * a.offset_sd, fmt=".", ms=4)
    axes[0, 1].set_xlabel("node")
    axes[0, 1].set_ylabel("ADC offset (mV)")
    return save(fig, path)


def plot_all(analysis, cmap, record_path: Path, entry: str) -> list[Path]:
    """Write ``<record stem>_<entry>_<kind>.png`` (and ``_adc.png``) beside the record."""
    base = Path(record_path)
    out = []
    for kind in ("Q", "R", "B", "C", "W"):
        p = plot_kind(analysis, cmap, kind, base.with_name(f"{base.stem}_{entry}_{kind}.png"))
        if p is not None:
            out.append(p)
    p = plot_adc(analysis, base.with_name(f"{base.stem}_{entry}_adc.png"))
    if p is not None:
        out.append(p)
    return out
