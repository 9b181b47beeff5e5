"""Provenance: one block in every HDF5 file tc-hw writes, and ``tc-hw report FILE`` to read it.

The block is an HDF5 group named ``provenance`` (``NX_class = "NXcollection"``, ``schema =
"tc-hw/provenance"``, ``schema_version = 1``) whose **attributes** say who wrote the file, how,
and from what.  Where it sits:

* parameter files, run files, run logs, GA checkpoints, teacher files: ``/entry/provenance``;
* calibration records: ``/entries/<entry>/provenance`` (one per calibration entry: the file is
  appended to by several commands over time).

Attributes (strings unless said; ``""`` when unknown, never missing)::

    tc_hw_version        the package version (tc_hw.__version__)
    source_commit        ``git rev-parse HEAD`` of the checkout the package was imported from, or ""
                         (no git, not a checkout); ``source_dirty`` (bool) uncommitted changes there
    python, numpy, h5py  versions
    command_line         the command as typed (``tc-hw run ...``), else the process's argv
    arguments            JSON: the parsed options of the tc-hw command (when a command wrote it)
    host                 socket.gethostname()
    time_utc             ISO 8601 UTC time the block was written
    writer               what wrote the file (e.g. "tc-hw run", "params", "calibration", "run-log")
    resource             the board resource string ("twin" for the twin)
    board_identity       ``*IDN?`` reply (or the twin's description), board_technology ("RLC", "JJ")
    calibration_path     absolute path of the calibration record ("nominal" for nominal gains)
    calibration_entry    the entry used
    calibration_sha256   sha256 of the entry's *content* (see :func:`calibration_sha256`), not of the
                         file's bytes: a record is append-only, so its file hash changes with every
                         new entry while the content of the entry used does not
    program_path         the parameter file the program came from
    program_sha256       sha256 of the program's canonical arrays (:func:`program_sha256`)
    seeds                JSON object: every seed the command used

The values a command knows (device, calibration, program, seeds, options) are noted once with
:func:`note` (a context variable, so nothing global leaks between threads or tests); every
writer then calls :func:`write` on the group it creates, adding what it knows locally.
"""

from __future__ import annotations

import contextvars
import datetime as _dt
import functools
import hashlib
import json
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from . import __version__
from .params import ELEMENT_KINDS
from .safeio import open_hdf5_read

__all__ = ["SCHEMA", "begin", "note", "noted", "collect", "write", "read", "find", "program_sha256", "calibration_sha256",
           "source_commit", "set_nexus_default", "write_entry", "FIELDS"]

SCHEMA = "tc-hw/provenance"
SCHEMA_VERSION = 1

#: Every attribute of a provenance block, in display order.
FIELDS = ("tc_hw_version", "source_commit", "source_dirty", "python", "numpy", "h5py", "command_line", "arguments",
          "host", "time_utc", "writer", "resource", "board_identity", "board_technology", "calibration_path",
          "calibration_entry", "calibration_sha256", "program_path", "program_sha256", "seeds")

_CONTEXT: contextvars.ContextVar[dict] = contextvars.ContextVar("tc_hw_provenance", default={})


# ------------------------------------------------------------------------------------ hashes
def _feed(h, name: str, value) -> None:
    """Add ``name`` and ``value`` (array, number or string) to hash ``h`` unambiguously."""
    h.update(name.encode() + b"\0")
    if isinstance(value, (str, bytes)):
        b = value.encode() if isinstance(value, str) else value
        h.update(b"s" + len(b).to_bytes(8, "little") + b)
        return
    a = np.asarray(value)
    if a.dtype.kind in "OSU":  # strings (HDF5 variable-length ones read as objects): their text, not pointers
        items = [x.decode() if isinstance(x, bytes) else str(x) for x in a.ravel().tolist()]
        b = json.dumps([list(a.shape), items]).encode()
        h.update(b"t" + len(b).to_bytes(8, "little") + b)
        return
    if a.dtype.kind in "iub":
        a = a.astype("<i8")
    elif a.dtype.kind == "f":
        a = a.astype("<f8")
    a = np.ascontiguousarray(a)
    h.update(a.dtype.str.encode() + b"\0" + repr(a.shape).encode() + b"\0" + a.tobytes())


def program_sha256(params) -> str:
    """sha256 (hex) of a program's canonical content.

    Fed in this order: ``n_nodes``, ``n_inputs``, ``edges``, ``crossbar`` pairs, ``outputs``
    (int64 little-endian), the element arrays ``quadratic, cubic, quartic, bias, coupling,
    crossbar`` and ``readout`` (float64 little-endian, C order; ``readout`` as the string "none"
    when absent), ``kT``, ``mobility``; each as name, dtype, shape, bytes.  Layers and file format
    do not enter: the same program read from HDF5 or JSON has the same hash.
    """
    h = hashlib.sha256()
    net = params.network
    for name, v in (("n_nodes", net.n_nodes), ("n_inputs", net.n_inputs), ("edges", net.edges),
                    ("crossbar_pairs", net.crossbar), ("outputs", net.outputs)):
        _feed(h, name, np.asarray(v, np.int64))
    for kind in ELEMENT_KINDS:
        _feed(h, kind, np.asarray(getattr(params, kind), np.float64))
    _feed(h, "readout", "none" if params.readout is None else np.asarray(params.readout, np.float64))
    _feed(h, "kT", float(params.kT))
    _feed(h, "mobility", float(params.mobility) if np.ndim(params.mobility) == 0
              else np.asarray(params.mobility, np.float64))
    return h.hexdigest()


#: The parts of a calibration entry that an upload depends on (hashed by :func:`calibration_sha256`).
CAL_HASHED = ("channel_map", "fits", "adc_fit", "nodes")


def _feed_attrs(h, prefix: str, attrs) -> None:
    for k in sorted(attrs):
        _feed(h, f"{prefix}@{k}", attrs[k])


def calibration_sha256(path, entry: str) -> str:
    """sha256 (hex) of calibration entry ``entry`` of record ``path``: its attributes and the
    datasets (with their attributes) of ``channel_map``, ``fits``, ``adc_fit`` and ``nodes`` --
    everything a loaded calibration maps with -- in sorted name order, each as name, dtype,
    shape, bytes.  The raw acquisitions and the ``provenance`` block are not hashed.
    """
    h = hashlib.sha256()
    with h5py.File(path, "r") as f:
        g = f["entries"][entry]
        _feed_attrs(h, "", g.attrs)
        for part in CAL_HASHED:
            if part not in g:
                continue
            obj = g[part]
            items = [(part, obj)] if isinstance(obj, h5py.Dataset) else [
                (f"{part}/{k}", obj[k]) for k in sorted(obj) if isinstance(obj[k], h5py.Dataset)]
            if isinstance(obj, h5py.Group):
                _feed_attrs(h, part, obj.attrs)
            for name, d in items:
                _feed(h, name, d[()])
                _feed_attrs(h, name, d.attrs)
    return h.hexdigest()


# ------------------------------------------------------------------------------------ sources
@functools.lru_cache(maxsize=1)
def source_commit() -> tuple[str, bool | None]:
    """``(commit, dirty)`` of the git checkout holding this package; ``("", None)`` without one.

    Never raises: git missing, not a checkout, or a slow git all give ``("", None)``."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5)
        if head.returncode != 0:
            return "", None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return head.stdout.strip(), (bool(dirty.stdout.strip()) if dirty.returncode == 0 else None)
    except (OSError, subprocess.SubprocessError):
        return "", None


def _command_line(argv) -> str:
    if argv is None:
        argv = sys.argv
        if argv and (argv[0].endswith(("tc_hw/cli/__main__.py", "tc-hw")) or argv[0] == "-m"):
            argv = ["tc-hw", *argv[1:]]
    else:
        argv = ["tc-hw", *argv]
    return shlex.join(str(a) for a in argv)


def _arguments(args) -> str:
    if args is None:
        return ""
    d = {k: v for k, v in vars(args).items() if k != "func" and not callable(v)}
    return json.dumps(d, default=str, sort_keys=True)


# ------------------------------------------------------------------------------------ context
def note(**values) -> None:
    """Record what the running command knows, for every block written afterwards in this context.

    Keys: ``argv`` (list of the command's arguments), ``args`` (argparse namespace), ``resource``,
    ``device``, ``cal`` (a loaded calibration, or ``"nominal"``), ``params`` (the program as
    uploaded), ``program_path``, ``seeds`` (dict), ``writer``."""
    _CONTEXT.set({**_CONTEXT.get(), **values})


def begin(**values) -> None:
    """Start a new command: forget what earlier commands noted in this context, then :func:`note`."""
    _CONTEXT.set({})
    note(**values)


def noted() -> dict:
    """What :func:`note` recorded so far in this context."""
    return dict(_CONTEXT.get())


def _cal_fields(cal) -> dict:
    if cal is None:
        return {}
    if isinstance(cal, str) or getattr(cal, "path", None) is None:
        return {"calibration_path": "nominal", "calibration_entry": str(getattr(cal, "entry", "") or "nominal"),
                "calibration_sha256": ""}
    path, entry = Path(cal.path).resolve(), str(cal.entry)
    try:
        digest = calibration_sha256(path, entry)
    except (OSError, KeyError):
        digest = ""
    return {"calibration_path": str(path), "calibration_entry": entry, "calibration_sha256": digest}


def collect(**values) -> dict:
    """The provenance block as a dict of strings (and ``source_dirty`` as bool), from what
    :func:`note` recorded updated with ``values`` (same keys; plus ``instrument``, a dict with
    ``identity``, ``technology``, ``calibration_entry``, ``calibration_hash`` as run logs keep)."""
    v = {**_CONTEXT.get(), **{k: x for k, x in values.items() if x is not None}}
    commit, dirty = source_commit()
    out = dict.fromkeys(FIELDS, "")
    out.update(tc_hw_version=__version__, source_commit=commit, source_dirty=bool(dirty) if dirty is not None else "",
               python=sys.version.split()[0], numpy=np.__version__, h5py=h5py.__version__,
               command_line=_command_line(v.get("argv")), arguments=_arguments(v.get("args")),
               host=socket.gethostname(), time_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(),
               writer=str(v.get("writer", "")), resource=str(v.get("resource", "")))
    dev = v.get("device")
    if dev is not None:
        out["board_identity"] = str(getattr(dev, "identity", ""))
        out["board_technology"] = str(getattr(dev, "technology", ""))
    ins = v.get("instrument") or {}  # what the writer states about its instrument wins over the noted device
    for key, field in (("identity", "board_identity"), ("technology", "board_technology"),
                       ("calibration_entry", "calibration_entry")):
        if ins.get(key):
            out[field] = str(ins[key])
    out.update(_cal_fields(v.get("cal")))
    if v.get("params") is not None:
        out["program_sha256"] = program_sha256(v["params"])
    if v.get("program_path"):
        out["program_path"] = str(Path(v["program_path"]).resolve())
    out["seeds"] = json.dumps(v.get("seeds") or {}, sort_keys=True, default=str)
    return out


def write(parent: h5py.Group, **values) -> h5py.Group:
    """(Re)write the ``provenance`` group under ``parent`` from :func:`collect` (``values``)."""
    if "provenance" in parent:
        del parent["provenance"]
    g = parent.create_group("provenance")
    g.attrs.update({"NX_class": "NXcollection", "schema": SCHEMA, "schema_version": SCHEMA_VERSION})
    for k, x in collect(**values).items():
        g.attrs[k] = x
    return g


def write_entry(f: h5py.File, **values) -> h5py.Group:
    """The provenance block at ``/entry/provenance`` of a file without another NeXus entry
    (``/entry`` is created as an NXentry if missing)."""
    e = f.require_group("entry")
    e.attrs["NX_class"] = "NXentry"
    return write(e, **values)


def set_nexus_default(f: h5py.File, entry: str, data: str) -> None:
    """NeXus ``default`` chain: the file's default entry and that entry's default NXdata group."""
    f.attrs["default"] = entry
    f[entry].attrs["default"] = data


# ------------------------------------------------------------------------------------ reading
def _attr(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def find(f: h5py.File) -> dict:
    """``{path: block}`` for every provenance block in an open file."""
    found = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Group) and obj.attrs.get("schema") == SCHEMA:
            block = {k: _attr(obj.attrs[k]) for k in obj.attrs if k not in ("NX_class", "schema")}
            for k in ("arguments", "seeds"):
                if isinstance(block.get(k), str) and block[k]:
                    try:
                        block[k] = json.loads(block[k])
                    except json.JSONDecodeError:
                        pass
            found["/" + name] = block

    f.visititems(visit)  # objects reachable by hard links, each once
    return found


def kind_of(f: h5py.File) -> str:
    """What a tc-hw file is: ``params``, ``calibration``, ``run-log``, ``run``, ``ga-checkpoint``,
    ... (the ``format`` attribute without its ``tc-hw/``), or ``unknown``."""
    fmt = str(_attr(f.attrs.get("format", "")))
    if fmt.startswith("tc-hw/"):
        return fmt[len("tc-hw/"):]
    e = f.get("entry")
    efmt = _attr(e.attrs.get("format", "")) if isinstance(e, h5py.Group) else ""
    return {"tc-hw/run-log": "run-log", "tc-hw/run": "run"}.get(efmt, "unknown")


def read(path) -> dict:
    """The provenance of any tc-hw file: ``{"file", "kind", "blocks": {path: block}}``.

    Raises ``ValueError`` for a file that is not readable HDF5."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no file at {path}")
    if path.suffix.lower() == ".json":
        return _read_json(path)
    f = open_hdf5_read(path, "tc-hw file")  # never hangs on a truncated file
    with f:
        return {"file": str(path), "kind": kind_of(f), "blocks": find(f)}


def _read_json(path: Path) -> dict:
    """A JSON parameter file's block (key ``tc_hw_provenance``)."""
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    fmt = str(d.get("format", "")) if isinstance(d, dict) else ""
    block = d.get("tc_hw_provenance") if isinstance(d, dict) else None
    for k in ("arguments", "seeds"):
        if isinstance(block, dict) and isinstance(block.get(k), str) and block[k]:
            try:
                block[k] = json.loads(block[k])
            except json.JSONDecodeError:
                pass
    return {"file": str(path), "kind": fmt[len("tc-hw/"):] if fmt.startswith("tc-hw/") else "unknown",
            "blocks": {"tc_hw_provenance": block} if isinstance(block, dict) else {}}
