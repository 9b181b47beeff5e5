"""PNG figures drawn without pyplot (no display needed, no global backend switch).

Every plot tc-hw writes goes through :func:`figure` and :func:`save`, so figures share one look,
never try to open a window on a headless lab PC or CI machine, and leave the caller's pyplot
alone (inline figures in a notebook keep working after tc-hw has written a PNG).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["figure", "save"]


def figure(nrows: int = 1, ncols: int = 1, size=(6.4, 4.0)):
    """A new ``(fig, axes)`` pair, a :class:`matplotlib.figure.Figure` with its own Agg canvas.

    ``size`` is (width, height) in inches; ``axes`` is one Axes for a 1x1 grid, else an array."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=nrows * ncols == 1)


def save(fig, path) -> Path:
    """Write ``fig`` as a 120-dpi PNG at ``path`` (parent folders created), return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
