"""Station files: name each board once instead of repeating resource strings.

A station file is TOML::

    [board.bench1]
    resource = "TCPIP0::127.0.0.1::5025::SOCKET"
    calibration = "cal/bench1.h5"      # optional: default --cal for upload / refine
    note = "RLC 8x4, rack 2"

Then ``tc-hw info --resource bench1`` (and every ``--resource``) means that board.  The file is
found at ``$TC_HW_STATION``, else ``./tc-hw-station.toml``, else
``~/.config/tc-hw/station.toml``; relative paths in it are relative to the file.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

__all__ = ["station_file", "boards", "resolve"]


def station_file() -> Path | None:
    """The station file in use, or None."""
    for p in (os.environ.get("TC_HW_STATION"), "tc-hw-station.toml", Path.home() / ".config/tc-hw/station.toml"):
        if p and Path(p).is_file():
            return Path(p)
    return None


def boards(path=None) -> dict:
    """``{name: {"resource": ..., "calibration": ..., ...}}`` from the station file (empty if none)."""
    path = Path(path) if path is not None else station_file()
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"station file {path}: {e}") from e
    out = {}
    for name, entry in data.get("board", {}).items():
        if not isinstance(entry, dict) or "resource" not in entry:
            raise ValueError(f"station file {path}: [board.{name}] needs a resource = \"...\" line")
        entry = dict(entry)
        if "calibration" in entry:
            entry["calibration"] = str((path.parent / entry["calibration"]).resolve())
        out[name] = entry
    return out


def resolve(resource: str) -> tuple[str, dict]:
    """``(resource string, station entry)`` for a board name, or ``(resource, {})`` unchanged."""
    entry = boards().get(resource.strip())
    return (entry["resource"], entry) if entry else (resource, {})
