"""Safe file handling shared by every writer and loader: locks, exclusive files, intact HDF5.

* :func:`hold_lock` - one holder per thing (a run log, a board), with ``fcntl.flock`` on a
  sidecar ``.lock`` file.  The kernel drops the lock when its holder dies (SIGKILL included), so
  a killed run never leaves a stale lock; a second holder is refused with the holder's pid.
* :func:`create_exclusive` / :func:`temporary_beside` - files created with
  ``O_CREAT | O_EXCL | O_NOFOLLOW``: never through a symlink (dangling or not), never over an
  existing file; temporary names are unique (``tempfile.mkstemp``) in the target's folder so the
  final ``os.replace`` is atomic.
* :func:`open_hdf5_read` - open an HDF5 file for reading without HDF5 file locking, refusing a
  truncated file *before* h5py sees it (h5py's SWMR reader retries a truncated superblock for
  minutes without a message).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import stat
import struct
import tempfile
import time
from pathlib import Path

import h5py

__all__ = ["LockedError", "hold_lock", "Lock", "create_exclusive", "temporary_beside", "refuse_symlink",
           "open_hdf5_read", "hdf5_problem", "HDF5_SIGNATURE"]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class LockedError(RuntimeError):
    """Something (a run log, a board) is held by another live process; ``pid`` names it (or None)."""

    def __init__(self, message: str, pid: int | None):
        super().__init__(message)
        self.pid = pid


class Lock:
    """A held ``flock`` on a lock file; :meth:`release` (or process death) frees it."""

    def __init__(self, fd: int, path: Path):
        self.fd, self.path = fd, path

    @property
    def held(self) -> bool:
        return self.fd >= 0

    def release(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def hold_lock(lock_path, what: str) -> Lock:
    """Take the exclusive lock ``lock_path`` for ``what`` (a phrase for messages) or raise.

    Raises :class:`LockedError` naming the holding pid when another process holds it, and
    ``ValueError`` when the lock file is a symlink or not a regular file.  The file stays on
    disk after release (removing it would let two processes lock two different files).
    """
    lock_path = Path(lock_path)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ValueError(f"{lock_path} is a symlink: refusing to use it as the lock of {what}") from None
        raise ValueError(f"cannot create the lock file {lock_path} for {what}: {e.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{lock_path} is not a regular file: cannot lock {what}")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        pid = _holder(fd)
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            who = f"process {pid}" if pid else "another process"
            raise LockedError(f"{what} is in use by {who} (lock {lock_path}); wait for it to end or stop it", pid)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return Lock(fd, lock_path)


def refuse_symlink(path, what: str = "file") -> Path:
    """``path`` as a Path; ``ValueError`` if it is a symlink (dangling or not)."""
    path = Path(path)
    if path.is_symlink():
        raise ValueError(f"{path} is a symlink: refusing to write the {what} through it (give the real path)")
    return path


def create_exclusive(path, what: str = "file") -> Path:
    """Create ``path`` empty, exclusively (no existing file, no symlink), and return it.

    Raises ``FileExistsError`` with a message for an existing path (a symlink included) and
    ``ValueError`` when the folder is missing or not writable.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        kind = "a symlink" if path.is_symlink() else "exists"
        raise FileExistsError(f"{path} {'is ' + kind if kind != 'exists' else 'exists'}: "
                              f"refusing to overwrite it with the {what}") from None
    except OSError as e:
        raise ValueError(f"cannot create the {what} {path}: {e.strerror}") from None
    os.close(fd)
    return path


def temporary_beside(path, suffix: str = ".tmp") -> Path:
    """A new, empty, uniquely named file in ``path``'s folder (for an atomic ``os.replace``)."""
    path = Path(path)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as e:
        raise ValueError(f"cannot create a temporary file beside {path}: {e.strerror}") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # the mode a plainly created file would have
    finally:
        os.close(fd)
    return Path(name)


def replace_atomically(path, write, what: str = "file") -> Path:
    """Write ``path`` whole or not at all: ``write(tmp)`` fills a unique temporary file beside it,
    which then replaces ``path`` (never through a symlink, never under a fixed temporary name)."""
    path = refuse_symlink(path, what)
    tmp = temporary_beside(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------ HDF5 reading


def _superblock(head: bytes) -> tuple[int, int, int] | None:
    """``(version, consistency flags, end-of-file address)`` of a version 2/3 superblock at
    offset 0, else None.  Flags bit 0: open for writing; bit 2: open for SWMR writing."""
    if len(head) < 12 or head[:8] != HDF5_SIGNATURE or head[8] not in (2, 3):
        return None
    size = head[9]
    if size not in (2, 4, 8) or len(head) < 12 + 4 * size:
        return None
    fmt = {2: "<H", 4: "<I", 8: "<Q"}[size]
    eof = struct.unpack(fmt, head[12 + 2 * size: 12 + 3 * size])[0]
    return head[8], head[11], eof


def _basic_problem(path: Path) -> tuple[str | None, bytes, int]:
    """(problem or None, the first 64 bytes, the size) from the cheap checks."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "no such file", b"", 0
    except OSError as e:
        return e.strerror or str(e), b"", 0
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not a file", b"", 0
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file", b"", 0
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        return e.strerror or str(e), b"", 0
    if len(head) < 8 or head[:8] != HDF5_SIGNATURE:
        return "not an HDF5 file (no HDF5 signature at its start)", head, st.st_size
    if _superblock(head) is None and len(head) < 64:
        return f"truncated HDF5 file ({st.st_size} bytes)", head, st.st_size
    return None, head, st.st_size


def _truncation(path: Path, head: bytes, size: int, settle_s: float) -> str | None:
    """A truncation message, or None.  A file marked open by a SWMR writer may briefly be shorter
    than its superblock says while the writer flushes: it is given ``settle_s`` to catch up."""
    sb = _superblock(head)
    if sb is None or size >= sb[2]:
        return None
    if sb[1] & 0x05:  # marked open for writing: perhaps a live writer mid-flush
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline:
            time.sleep(0.02)
            problem, head, size = _basic_problem(path)
            if problem:
                return problem
            sb = _superblock(head)
            if sb is None or size >= sb[2]:
                return None
        return (f"truncated HDF5 file: {size} bytes on disk, its superblock says {sb[2]} "
                f"(marked open by a writer that stopped mid-write, or cut short)")
    return f"truncated HDF5 file: {size} bytes on disk, its superblock says {sb[2]}"


def _global_heap_problem(path: Path, head: bytes) -> str | None:
    """A global heap collection (``GCOL``: variable-length strings live there) that HDF5 would
    parse forever: an object that does not advance the parser (size 0 free space), or one that
    runs past its collection.  HDF5 loops on the first without a message.  Scans the file's bytes
    for ``GCOL`` signatures (version 1) and walks their objects as HDF5 does."""
    sb = _superblock(head)
    lsize = head[10] if sb is not None and head[10] in (2, 4, 8) else 8
    fmt = {2: "<H", 4: "<I", 8: "<Q"}[lsize]
    objhdr = 8 + lsize
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            pos = m.find(b"GCOL")
            while pos >= 0:
                if m[pos + 4:pos + 5] == b"\x01" and pos + 8 + lsize <= len(m):
                    size = struct.unpack(fmt, m[pos + 8:pos + 8 + lsize])[0]
                    end = pos + size
                    p = pos + 8 + lsize
                    while size and p < min(end, len(m)):
                        if p + objhdr > min(end, len(m)):
                            break
                        idx = struct.unpack("<H", m[p:p + 2])[0]
                        osize = struct.unpack(fmt, m[p + 8:p + 8 + lsize])[0]
                        need = objhdr + (osize + 7) // 8 * 8 if idx > 0 else osize
                        if need <= 0:
                            return f"damaged global heap at byte {pos} (an object of size 0 that HDF5 would read forever)"
                        p += need
                pos = m.find(b"GCOL", pos + 4)
    except (OSError, ValueError):  # empty file (mmap of 0 bytes) or unreadable: other checks report it
        return None
    except struct.error:
        return "damaged global heap (an object header cut short)"
    return None


def hdf5_problem(path, settle_s: float = 1.0) -> str | None:
    """Why ``path`` cannot be an intact HDF5 file (missing, folder, empty, no signature,
    shorter than its superblock says), or None when these cheap checks pass.  Takes at most
    ``settle_s`` longer for a file marked open by a writer that is flushing."""
    path = Path(path)
    problem, head, size = _basic_problem(path)
    return problem or _truncation(path, head, size, settle_s) or _global_heap_problem(path, head)


def open_hdf5_read(path, what: str = "file"):
    """Open ``path`` read-only without HDF5 file locking; a file marked open by a (live or
    killed) SWMR writer is opened as a SWMR reader.  Raises ``ValueError`` with the reason for a
    missing, truncated or unreadable file (never hangs on a truncated one)."""
    path = Path(path)
    problem, head, size = _basic_problem(path)
    problem = problem or _truncation(path, head, size, 1.0) or _global_heap_problem(path, head)
    if problem:
        raise ValueError(f"{path}: {problem}; not a readable HDF5 {what}")
    sb = _superblock(head)
    swmr_first = sb is not None and bool(sb[1] & 0x05)
    plain = {"locking": False}
    swmr = {"swmr": True}
    attempts = (swmr, plain) if swmr_first else (plain, swmr)
    attempts += ({"libver": "latest", "swmr": True},)  # this process already has it open (h5py's lock)
    msg = ""
    for kw in attempts:
        try:
            if kw is swmr:
                return _open_swmr_bounded(path)
            return h5py.File(path, "r", **kw)
        except OSError as e:
            msg = str(e)
            retry = ("already open for write", "file close degree", "locking flag values", "truncated file")
            if not any(r in msg for r in retry):
                break
    raise ValueError(f"{path}: not a readable HDF5 {what} ({_short(msg)})") from None


#: Metadata read attempts of a SWMR reader.  HDF5's default (100, with an exponentially growing
#: pause between attempts) makes a reader of a damaged file wait for hours; 28 attempts give a
#: live writer's flush about 0.3 s to complete and fail a damaged file within that time.
SWMR_READ_ATTEMPTS = 28


def _hdf5_library():
    """The HDF5 C library h5py uses (ctypes), or None if it cannot be found."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libhdf5" in line and "/" in line}
    except OSError:
        return None
    for p in sorted(paths):
        name = os.path.basename(p)
        if name.startswith("libhdf5") and "_hl" not in name:
            try:
                lib = ctypes.CDLL(p)
                fn = lib.H5Pset_metadata_read_attempts
            except (OSError, AttributeError):
                continue
            fn.argtypes, fn.restype = [ctypes.c_int64, ctypes.c_uint], ctypes.c_int
            return fn
    return None


def _open_swmr_bounded(path: Path):
    """A SWMR read-only h5py.File without file locking and with :data:`SWMR_READ_ATTEMPTS`
    metadata read attempts (falls back to h5py's defaults if the library cannot be reached)."""
    set_attempts = _hdf5_library()
    if set_attempts is None:
        return h5py.File(path, "r", libver="latest", swmr=True, locking=False)
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    fapl.set_file_locking(False, True)
    set_attempts(fapl.id, SWMR_READ_ATTEMPTS)
    fid = h5py.h5f.open(os.fsencode(str(path)), h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ, fapl=fapl)
    return h5py.File(fid)


def _short(msg: str) -> str:
    return msg if len(msg) <= 200 else msg[:197] + "..."
