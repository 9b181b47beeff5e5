"""The PNGs written next to a trained parameter file ``<stem>.h5``: ``<stem>_<what>.png``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..model.plotting import figure, save

__all__ = ["png_path", "loss_png", "confusion_png"]


def png_path(out, what: str) -> Path:
    """``<dir>/<stem>_<what>.png`` for the result file ``out``."""
    out = Path(out)
    return out.with_name(f"{out.stem}_{what}.png")


def loss_png(out, series: dict, xlabel: str, extra: dict | None = None, log: bool = False) -> Path:
    """Loss curve(s) against ``xlabel`` (epoch, generation...); ``extra`` curves on a right axis."""
    fig, ax = figure()
    for name, values in series.items():
        ax.plot(np.arange(1, len(values) + 1), values, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    if log:
        ax.set_yscale("log")
    lines, labels = ax.get_legend_handles_labels()
    if extra:
        ax2 = ax.twinx()
        for name, values in extra.items():
            ax2.plot(np.arange(1, len(values) + 1), values, "--", color="C3", label=name)
        ax2.set_ylabel(", ".join(extra))
        l2, n2 = ax2.get_legend_handles_labels()
        lines, labels = lines + l2, labels + n2
    ax.legend(lines, labels, loc="best")
    ax.set_title(Path(out).stem)
    return save(fig, png_path(out, "loss"))


def confusion_png(out, confusion) -> Path:
    """Confusion matrix (true class down, predicted across), counts annotated, diagonal accuracy in the title."""
    c = np.asarray(confusion, dtype=float)
    fig, ax = figure(size=(5.6, 5.0))
    im = ax.imshow(c / np.maximum(1, c.sum(1, keepdims=True)), cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(c):
        if v:
            ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=6, color="w" if i == j else "k")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_xticks(range(len(c)))
    ax.set_yticks(range(len(c)))
    ax.set_title(f"{Path(out).stem}: top-1 {np.trace(c) / c.sum():.4f}")
    fig.colorbar(im, ax=ax, label="fraction of true class")
    return save(fig, png_path(out, "confusion"))
