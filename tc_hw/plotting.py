"""PNG figures with matplotlib's non-interactive backend (no display needed).

Every plot tc-hw writes goes through :func:`figure` and :func:`save`, so figures share one look
and never try to open a window on a headless lab PC or CI machine.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["figure", "save"]


def figure(nrows: int = 1, ncols: int = 1, size=(6.4, 4.0)):
    """A new ``(fig, axes)`` pair on the Agg backend; ``size`` is (width, height) in inches."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=size, constrained_layout=True, squeeze=nrows * ncols == 1)


def save(fig, path) -> Path:
    """Write ``fig`` as a 120-dpi PNG at ``path`` (parent folders created), close it, return the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
