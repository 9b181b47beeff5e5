"""Finding backends by name through entry points, so the core never imports a backend module.

A backend is registered in the ``tc_hw.backends`` entry-point group as a callable that takes a
resource string (and keyword options) and returns a :class:`tc_hw.model.device.Device`.  A new board
family is a plugin: a package that declares, in its own ``pyproject.toml``::

    [project.entry-points."tc_hw.backends"]
    myboard = "myboard_pkg:open_board"
"""

from __future__ import annotations

from importlib.metadata import entry_points

__all__ = ["available", "backend_for", "open_device"]

GROUP = "tc_hw.backends"


def available() -> dict:
    """Installed backends: ``{name: entry point}``."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def backend_for(resource: str) -> str:
    """The backend name a resource string asks for.

    ``twin`` or ``twin:<board>`` -> ``twin``; ``TCPIP...`` and ``ASRL...`` -> ``visa``; a device path
    (``/dev/...``, ``COM3``) or ``serial://...`` -> ``serial``; ``<name>:<rest>`` -> ``<name>``.
    """
    r = resource.strip()
    upper = r.upper()
    if r == "twin" or r.startswith("twin:"):
        return "twin"
    if upper.startswith(("TCPIP", "ASRL", "GPIB", "USB")):
        return "visa"
    if r.startswith(("/dev/", "serial://")) or upper.startswith("COM"):
        return "serial"
    if ":" in r:
        return r.split(":", 1)[0]
    raise ValueError(f"cannot tell which backend serves {resource!r}; installed: {sorted(available())}")


def open_device(resource: str, **options):
    """Open the device behind ``resource`` (or a board named in the station file,
    :mod:`tc_hw.station`) with the backend that serves it."""
    from .station import resolve

    resource, _ = resolve(resource)
    name = backend_for(resource)
    eps = available()
    if name not in eps:
        raise ValueError(f"no backend {name!r} is installed (installed: {sorted(eps)})")
    factory = eps[name].load()
    if name == "twin":
        board = resource.split(":", 1)[1] if ":" in resource else None
        return factory(board, **options)
    return factory(resource, **options)
