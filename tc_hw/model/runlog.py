"""HDF5 run logs that another process can watch live and that survive a kill at any moment.

One file per run, NeXus-style (``NX_class`` attributes), written with h5py in SWMR mode::

    /entry                      NXentry   attrs: format, format_version, start_time, program, version
      config                    dataset   JSON text: the run's settings (task, sizes, seeds, paths)
      instrument                NXinstrument  attrs: identity, technology, resource, calibration id/hash
      generations               NXdata    one row per generation, appended:
        population   (G, P, n)  the candidates evaluated (search-space vectors)
        losses       (G, P)     their measured losses
        elite_losses (G, E)     losses of the elites selected in that generation
        best_loss    (G,)       smallest loss of the generation
        best         (G, n)     its vector
        temperature_k (G, 2)    board temperature before and after the generation
        wall_s       (G,)       seconds the generation took
        retries      (G,)       connection faults recovered during the generation
        paused_s     (G,)       seconds paused for the temperature band
        codes        (G, P, M*, n*) optional raw ADC codes, attr ``volts_per_code``
      completed_generations (1,) written last, after every row of a generation is in place
      provenance                NXcollection: the provenance block (:mod:`tc_hw.model.provenance`)

Every dataset is created up front (SWMR forbids creating objects later), rows are written
first and ``completed_generations`` last, then the file is flushed.  A reader
(:func:`read_log`, or ``h5py.File(path, "r", libver="latest", swmr=True)`` while the run goes on)
trusts only the first ``completed_generations`` rows, so a run killed mid-generation (SIGKILL
included) leaves a readable file whose half-written generation simply does not count.
"""

from __future__ import annotations

import datetime as _dt
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import h5py
import numpy as np

from . import provenance as _provenance
from .safeio import LockedError, hold_lock, open_hdf5_read, refuse_symlink, temporary_beside

__all__ = ["RunLog", "read_log", "LOG_FORMAT", "LogBusyError", "lock_path_of"]

LOG_FORMAT = "tc-hw/run-log"
LOG_VERSION = 1
_ROWS = ("population", "losses", "elite_losses", "best_loss", "best", "temperature_k", "wall_s", "retries", "paused_s")


class LogBusyError(LockedError, ValueError):
    """The run log is being written by another live process (``pid``); refused, nothing touched."""


def lock_path_of(path) -> Path:
    """The sidecar lock file of the run log ``path``: ``<log>.lock`` (one writer per log)."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


def _lock(path: Path):
    try:
        return hold_lock(lock_path_of(path), f"run log {path}")
    except LockedError as e:
        raise LogBusyError(f"{e}: a second writer would lose data (refused; nothing was changed)", e.pid) from None


def _version() -> str:
    try:
        return version("tc-hw")
    except PackageNotFoundError:  # running from a source tree
        return "unknown"


class RunLog:
    """Append-only per-generation log of a refinement (or any ask/tell) run.

    Use :meth:`create` for a new run and :meth:`reopen` to resume one; then :meth:`append` once
    per completed generation and :meth:`close` at the end (also a context manager).
    """

    def __init__(self, f: h5py.File, lock=None):
        self.f = f
        self.path = Path(f.filename)
        self.lock = lock  # the writer's lock (released by close, or by the process ending)
        self.g = f["entry/generations"]
        self.done = f["entry/completed_generations"]

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, path, config: dict, *, population: int, n_params: int, elites: int,
               instrument: dict | None = None, codes_shape: tuple | None = None,
               volts_per_code: float | None = None) -> "RunLog":
        """Create ``path`` (refuses to overwrite) with every dataset, then switch to SWMR mode.

        ``config`` is stored as JSON; ``instrument`` values become attributes of
        ``entry/instrument``; ``codes_shape`` ``(P, M, n)`` reserves raw ADC codes per generation.
        """
        _check_sizes(population, n_params, elites, codes_shape)  # before anything is created
        path = refuse_symlink(path, "run log")
        if path.exists():
            raise FileExistsError(f"{path} exists: use --resume to continue that run, or another --log")
        lock = _lock(path)
        try:
            f = h5py.File(path, "x", libver="latest")  # O_EXCL: never over a file or through a symlink
        except FileExistsError:
            lock.release()
            raise FileExistsError(f"{path} exists: use --resume to continue that run, or another --log") from None
        except OSError as e:
            lock.release()
            raise ValueError(f"cannot create the run log {path}: {e}") from None
        try:
            return cls(_fill_new(f, config, population, n_params, elites, instrument, codes_shape,
                                 volts_per_code), lock)
        except BaseException:
            f.close()
            lock.release()
            raise

    @classmethod
    def reopen(cls, path) -> "RunLog":
        """Open an existing log to append after its last completed generation.

        Refused (:class:`LogBusyError`, naming the pid) while another live process writes it; a
        log whose writer was killed is taken over (the kernel freed that writer's lock).
        """
        path = refuse_symlink(path, "run log")
        lock = _lock(path)
        try:
            read_log(path)  # raises a clear error for a file that is not a run log
            try:
                f = h5py.File(path, "r+", libver="latest")
            except OSError as e:
                if "already open for write" not in str(e):
                    raise ValueError(f"{path}: cannot open the run log for writing ({e})") from None
                _rewrite(path)  # a killed SWMR writer leaves the superblock marked open: copy it clean
                f = h5py.File(path, "r+", libver="latest")
            f.swmr_mode = True
        except BaseException:
            lock.release()
            raise
        return cls(f, lock)

    # ------------------------------------------------------------------ writing
    @property
    def completed(self) -> int:
        return int(self.done[0])

    @property
    def config(self) -> dict:
        return json.loads(self.f["entry/config"][()])

    def append(self, generation: int, row: dict) -> None:
        """Write generation ``generation`` (0-based; must equal :attr:`completed`), then count it.

        ``row`` holds the arrays named in the module docstring (``codes`` only if reserved).
        A row left half-written by a kill is overwritten here on resume.
        """
        if generation != self.completed:
            raise ValueError(f"generation {generation} does not follow the {self.completed} completed ones")
        names = _ROWS + (("codes",) if "codes" in self.g else ())
        for name in names:
            d = self.g[name]
            if d.shape[0] < generation + 1:
                d.resize(generation + 1, axis=0)
            value = row.get(name)
            if value is None:
                continue
            d[generation] = np.asarray(value, dtype=d.dtype).reshape(d.shape[1:])
        for name in names:
            self.g[name].flush()
        self.done[0] = generation + 1  # last: the generation counts only now
        self.done.flush()
        self.f.flush()

    def truncate(self, completed: int) -> None:
        """Count only the first ``completed`` generations (their rows stay; later ones are redone)."""
        if not 0 <= completed <= self.completed:
            raise ValueError(f"cannot truncate {self.completed} generations to {completed}")
        self.done[0] = completed
        self.done.flush()
        self.f.flush()

    def write_group(self, name: str, attrs: dict, arrays: dict) -> None:
        """Write ``entry/<name>`` (replacing one there) with ``attrs`` as attributes and ``arrays``
        as datasets, while this writer's lock is still held.

        SWMR mode cannot create groups, so the file is closed and reopened without SWMR for this
        write; the lock is not released in between, so no other writer (a resume) can come in.
        Call it last: the log accepts no more generations after it (:meth:`close` still works).
        """
        path = self.path
        if self.f.id.valid:
            self.f.flush()
            self.f.close()
        with h5py.File(path, "r+", libver="latest") as f:
            if f"entry/{name}" in f:
                del f[f"entry/{name}"]
            g = f["entry"].create_group(name)
            g.attrs.update(attrs)
            for key, value in arrays.items():
                g[key] = value

    def close(self) -> None:
        try:
            if self.f.id.valid:
                self.f.flush()
                self.f.close()
        finally:
            if self.lock is not None:
                self.lock.release()

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fill_new(f: h5py.File, config, population, n_params, elites, instrument, codes_shape, volts_per_code):
    """Create every group and dataset of a new log in the open file ``f``; SWMR mode on."""
    e = f.create_group("entry")
    e.attrs.update({"NX_class": "NXentry", "format": LOG_FORMAT, "format_version": LOG_VERSION,
                    "start_time": _dt.datetime.now(_dt.timezone.utc).isoformat(), "program": "tc-hw",
                    "version": _version()})
    e.create_dataset("config", data=json.dumps(config, default=str))
    ins = e.create_group("instrument")
    ins.attrs["NX_class"] = "NXinstrument"
    for k, v in (instrument or {}).items():
        ins.attrs[k] = v if isinstance(v, (int, float, str)) else json.dumps(v, default=str)
    g = e.create_group("generations")
    g.attrs.update({"NX_class": "NXdata", "signal": "best_loss"})
    p, n = int(population), int(n_params)
    shapes = {"population": (p, n), "losses": (p,), "elite_losses": (int(elites),), "best_loss": (),
              "best": (n,), "temperature_k": (2,), "wall_s": (), "retries": (), "paused_s": ()}
    for name, shape in shapes.items():
        dtype = np.int64 if name == "retries" else np.float64
        g.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), chunks=(1, *shape) if shape else (64,),
                         dtype=dtype, fillvalue=np.nan if dtype is np.float64 else 0)
    if codes_shape is not None:
        d = g.create_dataset("codes", shape=(0, *codes_shape), maxshape=(None, *codes_shape),
                             chunks=(1, *codes_shape), dtype=np.int16, compression="gzip", compression_opts=1)
        d.attrs["volts_per_code"] = float(volts_per_code or np.nan)
    e.create_dataset("completed_generations", data=np.zeros(1, np.int64), maxshape=(1,))
    _provenance.write(e, instrument=instrument, writer="run-log")
    _provenance.set_nexus_default(f, "entry", "generations")
    f.swmr_mode = True
    f.flush()
    return f


def _rewrite(path: Path) -> None:
    """Copy a log whose writer was killed into a fresh file (same layout), atomically replacing it.

    HDF5 marks a file open for SWMR writing in its superblock; a killed writer never clears the
    mark, so the file reads fine but cannot be opened for writing again (``h5clear -s`` would
    clear it; h5py has no binding).  Copying every object with ``H5Ocopy`` keeps chunking and
    maximum shapes, so appending continues as before.
    """
    tmp = temporary_beside(path, ".rewrite")  # unique, created exclusively: no fixed name to pre-place
    try:
        with open_hdf5_read(path, "run log") as src, h5py.File(tmp, "w", libver="latest") as dst:
            dst.attrs.update(dict(src.attrs))
            for name in src:
                src.copy(src[name], dst, name=name)
        tmp.replace(path)
    except (RuntimeError, OSError, KeyError) as e:  # HDF5's errors for damaged objects
        tmp.unlink(missing_ok=True)
        raise ValueError(f"{path}: the run log is damaged and cannot be continued ({e}); start a new --log") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_sizes(population, n_params, elites, codes_shape) -> None:
    """Refuse sizes no run can have (ValueError), so that no file is created for them."""
    for name, v, lo in (("population", population, 1), ("n_params", n_params, 1), ("elites", elites, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"run log: {name} must be a whole number >= {lo}, got {v!r}")
    if elites > population:
        raise ValueError(f"run log: elites ({elites}) cannot exceed the population ({population})")
    if codes_shape is not None and (len(codes_shape) != 3 or any(int(c) < 1 for c in codes_shape)):
        raise ValueError(f"run log: codes_shape must be (P, M, n) of positive sizes, got {codes_shape!r}")


#: the datasets every log has, and the number of dimensions of one row of each
_ROW_NDIM = {"population": 2, "losses": 1, "elite_losses": 1, "best_loss": 0, "best": 1, "temperature_k": 1,
             "wall_s": 0, "retries": 0, "paused_s": 0}


def read_log(path) -> dict:
    """Read a run log (also while it is being written): its completed generations only.

    Returns a dict with ``config`` (dict), ``instrument`` (dict of attributes), ``attrs`` (the
    entry's), ``completed_generations`` and one array per dataset, cut to the completed rows.
    Raises ``ValueError`` for a file that is not an intact tc-hw run log of a version this code
    reads (missing, truncated, crafted or newer files alike); never hangs on a truncated file.
    """
    path = Path(path)
    f = open_hdf5_read(path, "run log")
    with f:
        try:
            return _read_entry(f, path)
        except ValueError:
            raise
        except (KeyError, TypeError, IndexError, AttributeError, RuntimeError, OSError, OverflowError) as e:
            raise ValueError(f"{path}: damaged run log ({type(e).__name__}: {e})") from None


def _read_entry(f: h5py.File, path: Path) -> dict:
    e = f.get("entry")
    if not isinstance(e, h5py.Group) or _text(e.attrs.get("format")) != LOG_FORMAT:
        raise ValueError(f"{path}: not a tc-hw run log")
    version = e.attrs.get("format_version")
    if not isinstance(version, (int, np.integer)) or not 1 <= int(version) <= LOG_VERSION:
        raise ValueError(f"{path}: run-log format_version {version!r} is not one this code reads (1..{LOG_VERSION})")
    done = e["completed_generations"]
    if not isinstance(done, h5py.Dataset) or done.shape != (1,) or done.dtype.kind not in "iu":
        raise ValueError(f"{path}: completed_generations must be one integer")
    done.refresh()
    n = int(done[0])
    config = json.loads(_text(e["config"][()]))
    if not isinstance(config, dict):
        raise ValueError(f"{path}: the run's config is not a JSON object")
    gens, ins = e["generations"], e["instrument"]
    if not isinstance(gens, h5py.Group) or not isinstance(ins, h5py.Group):
        raise ValueError(f"{path}: entry/generations and entry/instrument must be groups")
    out = {"config": config, "attrs": dict(e.attrs), "instrument": dict(ins.attrs),
           "completed_generations": n}
    for name, ndim in _ROW_NDIM.items():
        d = gens[name]
        if not isinstance(d, h5py.Dataset) or d.ndim != ndim + 1 or d.dtype.kind not in "fiu":
            raise ValueError(f"{path}: dataset generations/{name} is not a table of {ndim}-d numeric rows")
    for name, d in gens.items():
        if not isinstance(d, h5py.Dataset):
            continue
        d.refresh()
        if not 0 <= n <= d.shape[0]:
            raise ValueError(f"{path}: {n} completed generations claimed but generations/{name} holds {d.shape[0]} rows")
        out[name] = d[:n]
        if name == "codes":
            out["volts_per_code"] = float(d.attrs["volts_per_code"])
    return out


def _text(v) -> str | None:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v if isinstance(v, str) else None
