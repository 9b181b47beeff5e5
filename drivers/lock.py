"""One controlling process per board: a per-resource lock that a killed process does not leave held.

A board is controlled by one process at a time (two processes interleaving ``DAC``/``OUTP``/
``INIT`` would corrupt each other's runs: one client closing sends ``OUTP OFF`` under the other's
acquisition).  :func:`acquire_board_lock` takes an exclusive ``fcntl.flock`` on
``<lock dir>/<resource>.lock``; the kernel releases it when the holder exits, SIGKILL included.
A second process is refused with :class:`BoardBusyError` naming the holder's pid.  Handles in the
*same* process share the lock (counted), so one program may open a board twice.

The lock folder is ``$TC_HW_LOCK_DIR``, else ``$XDG_RUNTIME_DIR/tc-hw-locks``, else
``/tmp/tc-hw-locks-<uid>``; it is created ``0700`` and refused if it is a symlink or not ours.
Processes of *different* users use different folders unless ``TC_HW_LOCK_DIR`` points them at a
shared one.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
from pathlib import Path

from tc_hw.model.device import DeviceError
from tc_hw.model.safeio import LockedError, hold_lock

__all__ = ["BoardBusyError", "acquire_board_lock", "lock_dir", "lock_path_for", "BoardLock"]


class BoardBusyError(DeviceError, LockedError):
    """Another process controls this board; ``pid`` names it (None if unknown)."""

    def __init__(self, message: str, pid: int | None):
        DeviceError.__init__(self, message)
        self.pid = pid


_HELD: dict[str, list] = {}  # lock path -> [Lock, count] for this process
_GUARD = threading.Lock()


def lock_dir() -> Path:
    """The folder of board locks (created 0700; refused if it is a symlink or owned by another user)."""
    env = os.environ.get("TC_HW_LOCK_DIR")
    if env:
        d = Path(env)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        d = Path(os.environ["XDG_RUNTIME_DIR"]) / "tc-hw-locks"
    else:
        d = Path("/tmp") / f"tc-hw-locks-{os.getuid()}"
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise DeviceError(f"cannot create the board lock folder {d}: {e.strerror}") from None
    st = os.lstat(d)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise DeviceError(f"board lock folder {d} is a symlink or not a folder; refusing it")
    if not env and st.st_uid != os.getuid():
        raise DeviceError(f"board lock folder {d} belongs to another user; set TC_HW_LOCK_DIR")
    return d


def canonical_resource(resource: str) -> str:
    """The resource in one spelling (case of VISA keywords, ``serial://`` and ASRL wrappers)."""
    r = resource.strip()
    u = r.upper()
    if u.startswith("TCPIP"):
        parts = [p.strip() for p in r.split("::")]
        host = parts[1].lower() if len(parts) > 1 else ""
        host = "127.0.0.1" if host in ("localhost", "127.0.0.1") else host
        port = parts[2] if len(parts) > 3 else ""
        return f"TCPIP::{host}::{port}::SOCKET"
    if u.startswith("ASRL") and u.endswith("::INSTR"):
        r = r[4:-7]
    if r.startswith("serial://"):
        r = r[len("serial://"):]
    try:
        return os.path.realpath(r) if r.startswith("/") else r
    except OSError:
        return r


def lock_path_for(resource: str) -> Path:
    """The lock file of ``resource`` (a readable stem plus a hash of the canonical spelling)."""
    c = canonical_resource(resource)
    stem = re.sub(r"[^A-Za-z0-9.]+", "_", c).strip("_")[:60]
    return lock_dir() / f"{stem}-{hashlib.sha256(c.encode()).hexdigest()[:12]}.lock"


class BoardLock:
    """This process's hold on a board's lock; :meth:`release` once per :func:`acquire_board_lock`."""

    def __init__(self, path: Path):
        self.path = path
        self._released = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        with _GUARD:
            entry = _HELD.get(str(self.path))
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] <= 0:
                entry[0].release()
                del _HELD[str(self.path)]


def acquire_board_lock(resource: str) -> BoardLock:
    """Hold ``resource``'s lock for this process, or raise :class:`BoardBusyError` naming the holder."""
    path = lock_path_for(resource)
    key = str(path)
    with _GUARD:
        entry = _HELD.get(key)
        if entry is not None:
            entry[1] += 1
            return BoardLock(path)
        try:
            lock = hold_lock(path, f"board {resource}")
        except LockedError as e:
            raise BoardBusyError(f"{e}; a board is controlled by one process at a time "
                                 "(read-only use, e.g. `tc-hw info`, is allowed alongside)", e.pid) from None
        except ValueError as e:
            raise DeviceError(str(e)) from None
        _HELD[key] = [lock, 1]
        return BoardLock(path)
