"""Parameter files: HDF5 (any size) and JSON (small networks).  No pickle, ever.

HDF5 layout (``format = "tc-hw/params"``, ``format_version = 1``)::

    /                      attrs: format, format_version, software_version, kT, mobility
                                  (scalar, or float64 (N,) for per-node mobilities),
                                  convention = "V = sum Q x^2 + S x^3 + R x^4 - B x + sum C x x + sum W I x"
    /network               attrs: n_nodes, n_inputs
    /network/edges         int64 (E, 2)
    /network/crossbar      int64 (L, 2)
    /network/outputs       int64 (n_out,)
    /network/layers/<i>    int64, optional
    /params/<kind>         float64, kind in quadratic, cubic, quartic, bias, coupling, crossbar
    /params/readout        float64 (n_features, n_out), optional
    /provenance            attrs: free-form strings (who made it, how)
    /entry/provenance      NXcollection: the standard provenance block (tc_hw.model.provenance)

A result file of training may hold other groups beside these; :func:`load_params` reads only
these.  JSON holds the same keys as one object.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from . import __version__, provenance as _tc_provenance
from .data.thermo_gd import load_published
from .network import Network
from .params import ELEMENT_KINDS, Params, ParamsError
from .safeio import open_hdf5_read, refuse_symlink, temporary_beside

__all__ = ["save_params", "load_params", "FORMAT", "CONVENTION"]

FORMAT = "tc-hw/params"
FORMAT_VERSION = 1
CONVENTION = "V = sum Q x^2 + S x^3 + R x^4 - B x + sum C x x + sum W I x"


def _version() -> str:
    return __version__


def save_params(params: Params, path, provenance: dict | None = None) -> Path:
    """Write ``params`` to ``path`` (``.h5``/``.hdf5`` or ``.json``); returns the path.

    An existing HDF5 file is updated in place: its ``network``, ``params`` and ``provenance``
    groups are replaced and other groups (e.g. training logs) are kept.
    """
    path = refuse_symlink(path, "parameter file")
    check_params_target(path)
    if path.suffix.lower() == ".json":
        tmp = temporary_beside(path)
        try:
            tmp.write_text(json.dumps(_to_dict(params, provenance), indent=1))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path
    with h5py.File(path, "a") as f:
        write_params_group(f, params, provenance)
    return path


def check_params_target(path) -> None:
    """Refuse (``ValueError``) to write parameters at ``path`` when it holds a file of another
    kind: a folder, a symlink, a non-HDF5 file under an HDF5 name, or an HDF5 file whose root
    ``format`` is another tc-hw format (a calibration record, a run log).  A missing path, an
    existing parameter file and an HDF5 file without a format (a training result) pass."""
    path = Path(path)
    refuse_symlink(path, "parameter file")
    if not path.exists():
        return
    if not path.is_file():
        raise ValueError(f"{path} exists and is not a regular file: refusing to write parameters there")
    if path.suffix.lower() == ".json":
        return
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head != b"\x89HDF\r\n\x1a\n":
        raise ValueError(f"{path} exists and is not an HDF5 file: refusing to overwrite it with parameters")
    with open_hdf5_read(path, "file") as f:
        fmt = f.attrs.get("format")
        fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
        if fmt is None and "entry" in f:
            fmt = f["entry"].attrs.get("format")
    if fmt not in (None, FORMAT):
        raise ValueError(f"{path} is a {fmt!r} file, not a parameter file: refusing to overwrite it "
                         "(choose another --out)")


def write_params_group(f: h5py.Group, params: Params, provenance: dict | None = None) -> None:
    """Write the parameter groups into an open HDF5 file or group."""
    for name in ("network", "params", "provenance"):
        if name in f:
            del f[name]
    f.attrs.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        software_version=_version(),
        kT=params.kT,
        mobility=params.mobility,
        convention=CONVENTION,
    )
    net = params.network
    g = f.create_group("network")
    g.attrs.update(n_nodes=net.n_nodes, n_inputs=net.n_inputs)
    g["edges"] = net.edges
    g["crossbar"] = net.crossbar
    g["outputs"] = net.outputs
    for i, layer in enumerate(net.layers):
        g[f"layers/{i}"] = np.asarray(layer, np.int64)
    p = f.create_group("params")
    for kind in ELEMENT_KINDS:
        p.create_dataset(kind, data=getattr(params, kind), compression="gzip" if getattr(params, kind).size > 4096 else None)
    if params.readout is not None:
        p["readout"] = params.readout
    prov = f.create_group("provenance")
    for k, v in (provenance or {}).items():
        prov.attrs[k] = str(v)
    _tc_provenance.write_entry(f, params=params, writer="params")


def _to_dict(params: Params, provenance: dict | None) -> dict:
    net = params.network
    d = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "software_version": _version(),
        "convention": CONVENTION,
        "kT": params.kT,
        "mobility": params.mobility.tolist() if params.has_node_mobility else params.mobility,
        "network": {
            "n_nodes": net.n_nodes,
            "n_inputs": net.n_inputs,
            "edges": net.edges.tolist(),
            "crossbar": net.crossbar.tolist(),
            "outputs": net.outputs.tolist(),
            "layers": [list(layer) for layer in net.layers],
        },
        "params": {k: getattr(params, k).tolist() for k in ELEMENT_KINDS},
        "provenance": {k: str(v) for k, v in (provenance or {}).items()},
        "tc_hw_provenance": _tc_provenance.collect(params=params, writer="params"),
    }
    if params.readout is not None:
        d["params"]["readout"] = params.readout.tolist()
    return d


def _from_mapping(top, net_g, par_g, where: str) -> Params:
    try:
        edges, crossbar = np.asarray(net_g["edges"]), np.asarray(net_g["crossbar"])
        net = Network(
            int(net_g["n_nodes"]),
            edges.reshape(-1, 2) if len(edges) else np.zeros((0, 2)),
            int(net_g["n_inputs"]),
            crossbar.reshape(-1, 2) if len(crossbar) else np.zeros((0, 2)),
            np.asarray(net_g["outputs"]),
            layers=tuple(net_g.get("layers", ()) or ()),
        )
        values = {k: np.asarray(par_g[k], dtype=np.float64) for k in ELEMENT_KINDS}
    except KeyError as e:
        raise ParamsError(f"{where}: missing entry {e.args[0]!r}; is this a tc-hw parameter file?") from None
    readout = par_g.get("readout")
    kT, mobility = _positive(top.get("kT", 1.0), "kT", where), _mobility_value(top.get("mobility", 1.0), where)
    return Params(net, readout=None if readout is None else np.asarray(readout, float), kT=kT, mobility=mobility,
                  **values)


def _positive(v, name: str, where: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ParamsError(f"{where}: {name} must be a number, got {v!r}") from None
    if not (np.isfinite(x) and x > 0):
        raise ParamsError(f"{where}: {name} must be a finite number > 0, got {v!r}")
    return x


def _check_version(v, where: str) -> None:
    if isinstance(v, bytes):
        v = v.decode("ascii", "replace")
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= int(v) <= FORMAT_VERSION:
        raise ParamsError(f"{where}: format_version {v!r} is not one this code reads (1..{FORMAT_VERSION}); "
                          "a newer tc-hw wrote it, or it is not a tc-hw parameter file")


def _mobility_value(raw, where: str):
    """A stored mobility: a scalar (float) or a per-node list/array (float64 array), finite and > 0."""
    if np.ndim(raw) == 0:
        return _positive(raw, "mobility", where)
    try:
        m = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise ParamsError(f"{where}: mobility must be a number or a list of numbers, got {raw!r}") from None
    if m.ndim != 1 or not (np.all(np.isfinite(m)) and np.all(m > 0)):
        raise ParamsError(f"{where}: per-node mobility must be a list of finite numbers > 0")
    return m


def load_params(path, format: str | None = None) -> Params:
    """Read parameters from ``path``.

    ``format`` is ``"hdf5"``, ``"json"`` or ``"thermo_gd"`` (the published ``parameters.dat`` of
    arXiv 2509.15324); by default it is guessed from the extension.  Raises ``ParamsError`` for a
    file that is not a valid parameter file (any content: wrong types, missing or extra nesting,
    a newer format version, a truncated HDF5 file, link loops), with the reason.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no parameter file at {path}")
    if path.is_dir():
        raise ParamsError(f"{path} is a folder, not a parameter file")
    fmt = format or {".json": "json", ".dat": "thermo_gd"}.get(path.suffix.lower(), "hdf5")
    if fmt == "thermo_gd":
        return _guarded(lambda: load_published(path), path)
    if fmt == "json":
        return _guarded(lambda: _load_json(path), path)
    if fmt != "hdf5":
        raise ValueError(f"unknown parameter format {fmt!r}; use hdf5, json or thermo_gd")
    try:
        f = open_hdf5_read(path, "parameter file")
    except ValueError as e:
        raise ParamsError(str(e)) from None
    with f:
        return _guarded(lambda: _load_hdf5(f, path), path)


def _guarded(load, path) -> Params:
    """Run ``load``; any failure that a malformed file can cause becomes a ``ParamsError``."""
    try:
        return load()
    except ParamsError:
        raise
    except RecursionError:
        raise ParamsError(f"{path}: nested too deeply to be a parameter file") from None
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RuntimeError, OSError,
            OverflowError, UnicodeDecodeError) as e:
        raise ParamsError(f"{path}: not a valid parameter file ({type(e).__name__}: {e})") from None


def _load_json(path: Path) -> Params:
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ParamsError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ParamsError(f"{path}: a parameter file holds one JSON object, not {type(d).__name__}")
    if d.get("format") != FORMAT:
        raise ParamsError(f"{path}: format is {d.get('format')!r}, expected {FORMAT!r}")
    _check_version(d.get("format_version"), str(path))
    net, par = d.get("network"), d.get("params")
    if not isinstance(net, dict) or not isinstance(par, dict):
        raise ParamsError(f"{path}: 'network' and 'params' must be JSON objects")
    net["layers"] = net.get("layers") or ()
    return _from_mapping(d, net, par, str(path))


def _load_hdf5(f: h5py.File, path: Path) -> Params:
    fmt = f.attrs.get("format")
    if (fmt.decode() if isinstance(fmt, bytes) else fmt) != FORMAT:
        raise ParamsError(f"{path}: format attribute is {f.attrs.get('format')!r}, expected {FORMAT!r}")
    _check_version(f.attrs.get("format_version"), str(path))
    g, pg = f.get("network"), f.get("params")
    if not isinstance(g, h5py.Group) or not isinstance(pg, h5py.Group):
        raise ParamsError(f"{path}: /network and /params must be groups")
    lg = g.get("layers")
    net = {
        "n_nodes": g.attrs["n_nodes"],
        "n_inputs": g.attrs["n_inputs"],
        "edges": g["edges"][()],
        "crossbar": g["crossbar"][()],
        "outputs": g["outputs"][()],
        "layers": tuple(lg[str(i)][()] for i in range(len(lg))) if isinstance(lg, h5py.Group) else (),
    }
    par = {k: pg[k][()] for k in pg if isinstance(pg.get(k), h5py.Dataset)}
    # only the attributes a parameter file needs are read (a damaged string attribute elsewhere,
    # e.g. software_version, can make HDF5 spin while converting it)
    top = {k: f.attrs[k] for k in ("kT", "mobility") if k in f.attrs}
    return _from_mapping(top, net, par, str(path))
