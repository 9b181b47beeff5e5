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

A result file of training may hold other groups beside these; :func:`load_params` reads only
these.  JSON holds the same keys as one object.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from .network import Network
from .params import ELEMENT_KINDS, Params, ParamsError

__all__ = ["save_params", "load_params", "FORMAT", "CONVENTION"]

FORMAT = "tc-hw/params"
FORMAT_VERSION = 1
CONVENTION = "V = sum Q x^2 + S x^3 + R x^4 - B x + sum C x x + sum W I x"


def _version() -> str:
    from . import __version__

    return __version__


def save_params(params: Params, path, provenance: dict | None = None) -> Path:
    """Write ``params`` to ``path`` (``.h5``/``.hdf5`` or ``.json``); returns the path.

    An existing HDF5 file is updated in place: its ``network``, ``params`` and ``provenance``
    groups are replaced and other groups (e.g. training logs) are kept.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(_to_dict(params, provenance), indent=1))
        return path
    with h5py.File(path, "a") as f:
        write_params_group(f, params, provenance)
    return path


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
    }
    if params.readout is not None:
        d["params"]["readout"] = params.readout.tolist()
    return d


def _from_mapping(top, net_g, par_g, where: str) -> Params:
    try:
        net = Network(
            int(net_g["n_nodes"]),
            np.asarray(net_g["edges"]).reshape(-1, 2) if len(np.asarray(net_g["edges"])) else np.zeros((0, 2)),
            int(net_g["n_inputs"]),
            np.asarray(net_g["crossbar"]).reshape(-1, 2) if len(np.asarray(net_g["crossbar"])) else np.zeros((0, 2)),
            np.asarray(net_g["outputs"]),
            layers=tuple(net_g.get("layers", ()) or ()),
        )
        values = {k: np.asarray(par_g[k], dtype=np.float64) for k in ELEMENT_KINDS}
    except KeyError as e:
        raise ParamsError(f"{where}: missing entry {e.args[0]!r}; is this a tc-hw parameter file?") from None
    readout = par_g.get("readout")
    return Params(
        net,
        readout=None if readout is None else np.asarray(readout, float),
        kT=float(top.get("kT", 1.0)),
        mobility=_mobility_value(top.get("mobility", 1.0)),
        **values,
    )


def _mobility_value(raw):
    """A stored mobility: a scalar (float) or a per-node list/array (float64 array)."""
    m = np.asarray(raw, dtype=np.float64)
    return float(m) if m.ndim == 0 else m


def load_params(path, format: str | None = None) -> Params:
    """Read parameters from ``path``.

    ``format`` is ``"hdf5"``, ``"json"`` or ``"thermo_gd"`` (the published ``parameters.dat`` of
    arXiv 2509.15324); by default it is guessed from the extension.  Raises ``ParamsError`` for a
    file that is not a valid parameter file, with the reason.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no parameter file at {path}")
    fmt = format or {".json": "json", ".dat": "thermo_gd"}.get(path.suffix.lower(), "hdf5")
    if fmt == "thermo_gd":
        from .data.thermo_gd import load_published

        return load_published(path)
    if fmt == "json":
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ParamsError(f"{path}: not valid JSON ({e})") from None
        if d.get("format") != FORMAT:
            raise ParamsError(f"{path}: format is {d.get('format')!r}, expected {FORMAT!r}")
        layers = d["network"].get("layers") or ()
        d["network"]["layers"] = layers
        return _from_mapping(d, d["network"], d["params"], str(path))
    if fmt != "hdf5":
        raise ValueError(f"unknown parameter format {fmt!r}; use hdf5, json or thermo_gd")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ParamsError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        if f.attrs.get("format") != FORMAT:
            raise ParamsError(f"{path}: format attribute is {f.attrs.get('format')!r}, expected {FORMAT!r}")
        g = f["network"]
        net = {
            "n_nodes": g.attrs["n_nodes"],
            "n_inputs": g.attrs["n_inputs"],
            "edges": g["edges"][()],
            "crossbar": g["crossbar"][()],
            "outputs": g["outputs"][()],
            "layers": tuple(g["layers"][str(i)][()] for i in range(len(g["layers"]))) if "layers" in g else (),
        }
        par = {k: f["params"][k][()] for k in f["params"]}
        return _from_mapping(dict(f.attrs), net, par, str(path))
