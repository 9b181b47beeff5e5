"""Where the project's shared, read-only data lives."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["shared_dir", "SHARED_ENV_VAR"]

#: Environment variable that overrides the search for the shared folder.
SHARED_ENV_VAR = "TC_HW_SHARED"


def _candidates() -> list[Path]:
    """Folders searched for the shared data, in order (used when ``TC_HW_SHARED`` is unset)."""
    repo_root = Path(__file__).resolve().parents[3]  # .../<repo>/tc_hw/model/data/paths.py
    cwd = Path.cwd()
    return [repo_root.parent / "shared", cwd.parent / "shared", cwd / "shared"]


def shared_dir() -> Path:
    """Return the shared data folder (the one holding ``data/mnist`` and ``data/thermo_gd``).

    ``$TC_HW_SHARED`` wins if set (it must then be an existing directory); otherwise the first
    existing of ``<repo root>/../shared``, ``./../shared`` and ``./shared``.

    Raises
    ------
    FileNotFoundError
        If ``$TC_HW_SHARED`` names no directory, or none of the candidates exists.
    """
    env = os.environ.get(SHARED_ENV_VAR, "").strip()
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"${SHARED_ENV_VAR} is set to {env!r}, which is not a directory")
        return path.resolve()
    searched = _candidates()
    for path in searched:
        if path.is_dir():
            return path.resolve()
    listing = ", ".join(str(p) for p in searched)
    raise FileNotFoundError(
        f"shared data folder not found; searched {listing}. "
        f"Set ${SHARED_ENV_VAR} to the folder that contains data/mnist and data/thermo_gd."
    )
