"""PNG figures drawn without pyplot (no display needed, no global backend switch).

Every plot tc-hw writes goes through :func:`figure` and :func:`save`, so figures share one look,
never try to open a window on a headless lab PC or CI machine, and leave the caller's pyplot
alone (inline figures in a notebook keep working after tc-hw has written a PNG).
"""

from __future__ import annotations

import os
from pathlib import Path

from .safeio import refuse_symlink, temporary_beside

__all__ = ["figure", "save"]


def figure(nrows: int = 1, ncols: int = 1, size=(6.4, 4.0)):
    """A new ``(fig, axes)`` pair, a :class:`matplotlib.figure.Figure` with its own Agg canvas.

    ``size`` is (width, height) in inches; ``axes`` is one Axes for a 1x1 grid, else an array."""
    from matplotlib.figure import Figure  # local: matplotlib takes seconds to import; only when a figure is drawn

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=nrows * ncols == 1)


def save(fig, path) -> Path:
    """Write ``fig`` as a 120-dpi PNG at ``path`` (parent folders created), return the path.

    Written to a unique temporary file beside ``path`` and renamed over it: never through a
    symlink at ``path`` (refused, ``ValueError``), never half-written.  A parent that is a file
    raises ``ValueError`` naming it."""

    path = refuse_symlink(path, "plot")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"cannot write {path}: a part of its folder {path.parent} is a file, not a folder") from None
    tmp = temporary_beside(path, path.suffix or ".png")
    try:
        fig.savefig(tmp, dpi=120, format=(path.suffix[1:] or "png").lower())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
