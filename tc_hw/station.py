"""Station files: name each board once instead of repeating resource strings.

A station file is TOML::

    [board.bench1]
    resource = "TCPIP0::127.0.0.1::5025::SOCKET"
    calibration = "cal/bench1.h5"      # optional: default --cal for upload / refine
    note = "RLC 8x4, rack 2"

Then ``tc-hw info --resource bench1`` (and every ``--resource``) means that board.  The file is
found at ``$TC_HW_STATION``, else ``./tc-hw-station.toml``, else
``~/.config/tc-hw/station.toml``; relative paths in it are relative to the file.

A station of several boards (``tc-hw calibrate --station``, ``tc-hw refine --station``; see
docs/cluster.md) may also name its Ray cluster and the calibration settings of its boards::

    [cluster]
    address = "local"          # or "HOST:6379"; --cluster on the command line wins

    [calibrate]                # keyword options of calibration.calibrate, for every board
    chains = 128
    samples = 160
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

__all__ = ["station_file", "boards", "resolve", "read_station", "cluster_address", "calibrate_options"]


def station_file() -> Path | None:
    """The station file in use, or None."""
    for p in (os.environ.get("TC_HW_STATION"), "tc-hw-station.toml", Path.home() / ".config/tc-hw/station.toml"):
        if p and Path(p).is_file():
            return Path(p)
    return None


def read_station(path) -> dict:
    """The whole station file ``path`` as a dict (ValueError naming the file if unreadable)."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"station file {path}: {e}") from e


def cluster_address(path) -> str | None:
    """``[cluster] address`` of station file ``path`` (``"local"``, ``"HOST:PORT"``), or None."""
    table = read_station(path).get("cluster", {})
    address = table.get("address") if isinstance(table, dict) else None
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise ValueError(f"station file {path}: [cluster] address must be a non-empty string")
    return address


def calibrate_options(path) -> dict:
    """``[calibrate]`` of station file ``path``: keyword options of :func:`calibration.calibrate`."""
    table = read_station(path).get("calibrate", {})
    if not isinstance(table, dict):
        raise ValueError(f"station file {path}: [calibrate] must be a table of calibration options")
    return dict(table)


def boards(path=None) -> dict:
    """``{name: {"resource": ..., "calibration": ..., ...}}`` from the station file (empty if none)."""
    path = Path(path) if path is not None else station_file()
    if path is None:
        return {}
    data = read_station(path)
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
