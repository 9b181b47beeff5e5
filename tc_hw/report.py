"""Plots of a run log (:mod:`tc_hw.model.runlog`): what ``tc-hw report run.h5`` writes.

``<stem>_loss.png``         best, median and re-measured elite loss per generation
``<stem>_elites.png``       the best candidate's parameters per generation, relative to the start
``<stem>_temperature.png``  board temperature during each generation, and pauses
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .model.plotting import figure, save
from .model.runlog import read_log

__all__ = ["report"]


def _out(log_path, what: str, folder=None) -> Path:
    p = Path(log_path)
    return Path(folder or p.parent) / f"{p.stem}_{what}.png"


def _band(text) -> tuple[float, float] | None:
    """The allowed temperature band ``(low_K, high_K)`` from its stored JSON, or None if absent,
    unreadable or not two finite numbers (the plot then shows no band)."""
    try:
        lo, hi = (float(v) for v in json.loads(text))
    except (TypeError, ValueError):
        return None
    return (lo, hi) if np.isfinite(lo) and np.isfinite(hi) else None


def report(log_path, folder=None) -> dict:
    """Write the PNGs of run log ``log_path`` (into ``folder``, default beside it); returns a summary."""
    r = read_log(log_path)
    n = r["completed_generations"]
    if n == 0:
        raise ValueError(f"{log_path}: no completed generation to report")
    gens = np.arange(1, n + 1)
    losses = np.where(np.isfinite(r["losses"]), r["losses"], np.nan)

    fig, ax = figure()
    ax.plot(gens, r["best_loss"], label="best of generation")
    ax.plot(gens, np.nanmedian(losses, axis=1), label="median of population", alpha=0.7)
    if n > 1:
        ax.plot(gens[1:], losses[1:, 0], ".", label="previous best, re-measured", ms=4)
    positive = np.concatenate([np.ravel(r["best_loss"]), np.ravel(losses)])
    if np.any(positive[np.isfinite(positive)] > 0) and np.all(positive[np.isfinite(positive)] > 0):
        ax.set_yscale("log")  # debiased losses of a program near the noise floor can be <= 0: stay linear then
    ax.set_xlabel("generation")
    ax.set_ylabel("loss measured on the device")
    ax.legend()
    ax.set_title(Path(log_path).stem)
    loss_png = save(fig, _out(log_path, "loss", folder))

    fig, ax = figure()
    delta = r["best"] - r["best"][:1]
    finite = np.abs(delta[np.isfinite(delta)])
    lim = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    im = ax.imshow(delta.T, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest",
                   extent=(0.5, n + 0.5, delta.shape[1] - 0.5, -0.5))
    ax.set_xlabel("generation")
    ax.set_ylabel("parameter (channel volts, then readout)")
    fig.colorbar(im, ax=ax, label="change from generation 1")
    elites_png = save(fig, _out(log_path, "elites", folder))

    fig, ax = figure()
    t = r["temperature_k"]
    ax.plot(gens, t[:, 0], label="start of generation")
    ax.plot(gens, t[:, 1], label="end of generation")
    band = _band(r["instrument"].get("temp_band_k"))  # a JSON list (RunLog stores lists as JSON)
    if band is not None:
        ax.axhspan(*band, color="g", alpha=0.08, label="allowed band")
    paused = np.flatnonzero(r["paused_s"] > 0)
    if len(paused):
        ax.plot(gens[paused], t[paused, 0], "rv", label="paused before")
    ax.set_xlabel("generation")
    ax.set_ylabel("board temperature (K)")
    ax.legend()
    temp_png = save(fig, _out(log_path, "temperature", folder))
    return {"log": str(log_path), "generations": n, "best_loss": float(np.min(r["best_loss"])),
            "plots": [str(loss_png), str(elites_png), str(temp_png)],
            "retries": int(r["retries"].sum()), "paused_s": float(r["paused_s"].sum())}
