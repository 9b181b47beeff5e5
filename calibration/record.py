"""The calibration record (HDF5, append-only) and the loaded :class:`Calibration`.

One file holds any number of calibrations of a board, each an *entry* that is written once and
never changed afterwards (new calibrations and refits add entries)::

    /                                   attrs: format = "tc-hw/calibration", format_version = 2
    /entries/<NNNN_YYYYmmddTHHMMSSZ>/   attrs: kind ("measured" | "refit" | "combined"), complete, created (UTC
                                        ISO), identity, technology, n_nodes, n_inputs, n_channels,
                                        tau_nominal_s, software_version, options (JSON),
                                        summary (JSON), derived_from, temperature_k, seconds
        channel_map                     the board map (index, kind, a, b, vmin, vmax, gain, period)
        inputs                          (P, K) input batch of the element acquisitions
        adc/                            CAL:REF raw data: levels (L,), mean, var (L, N) volts,
                                        count (L,), saturated (L, N), raw (L, m, N) int16 codes,
                                        temperature_k (L,); attrs volts_per_code, measured
        adc_fit/                        gain, offset, gain_sd, offset_sd, chi2_red, ok (N,);
                                        version 2, nonlinear readout: inverse (N, 4), the cubic
                                        x(r) (calibration.adc)
        acquisitions/<kkkk_name>/       one element acquisition: requested, applied (n_ch,) volts,
                                        sums_total (D(D+1)/2,) float64 and sums_groups (G, ...)
                                        float32 (upper triangles of sum z z^T, see
                                        calibration.stein), counts (G,), correction (optional),
                                        rail_fraction, clip_fraction (N,), raw (chains, M, N)
                                        int16; attrs name, stage, temperature_k, interval_s,
                                        samples, burn, repeats, wall_s, meta (JSON)
        tau/                            short-interval increments: q1, q2 (G, N), n1, n2 (G,),
                                        applied, raw, rail_fraction (N,; version 2); attrs
                                        interval_s, temperature_k
        points/                         per measured point: channel, volts, value, sigma,
                                        temp_k, acq, used
        fits/                           per channel: model, coef (n_ch, 16) NaN-padded, cov
                                        (n_ch, 16, 16), period, branch (n_ch, 2), t_ref, tempco,
                                        tempco_sd, chi2_red, dof, n_points, rms_resid, ok, reason;
                                        version 2 adds: knots (n_ch, 24) NaN-padded (full clamped
                                        knot vector of a ``spline`` model), span (n_ch, 2) the
                                        calibrated span in volts, cv_rms (held-out rms residual,
                                        value units), shape (label of the chosen candidate)
        nodes/                          diffusion, diffusion_sd (V^2/s), tau_s, tau_sd, kT, kT_sd
        provenance                      NXcollection: who wrote the entry, how (tc_hw.model.provenance)

A refit entry links (HDF5 soft links) ``adc``, ``inputs``, ``acquisitions`` and ``tau`` of the
entry it was derived from instead of copying them; a combined entry (curves fitted to the pooled
points of several entries, which determines temperature coefficients) links those of the newest.  An entry whose ``complete`` attribute is False (a
calibration that was interrupted) is never loaded.

Versions.  Each entry carries its own ``format_version`` attribute (none: version 1).  Version 1
entries load with ``span`` = the safe range and no knots; an entry or file of a version newer
than :data:`FORMAT_VERSION` is refused with a message naming both versions.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path

import h5py
import numpy as np

from tc_hw.model import provenance as _provenance
from tc_hw.model.device import Channel, ChannelMap
from tc_hw.model.jsonsafe import dumps

from .adc import AdcData, AdcFit
from .curves import CurveError, CurveFit
from .elements import ConfigData, TauData

__all__ = ["Calibration", "RecordWriter", "load", "entries", "read_material", "FORMAT", "CalibrationError"]

FORMAT = "tc-hw/calibration"
FORMAT_VERSION = 2
_MAXC = 16
_MAXK = 24


class CalibrationError(ValueError):
    """A calibration record is missing, malformed, or does not fit the board."""


def _software_version() -> str:
    from tc_hw.model import __version__

    return __version__


def to_json(obj) -> str:
    """``obj`` as strict JSON (:func:`tc_hw.model.jsonsafe.dumps`: NaN and infinities as null)."""
    return dumps(obj)


_MAP_DTYPE = np.dtype([("index", "<i8"), ("kind", "S1"), ("a", "<i8"), ("b", "<i8"), ("vmin", "<f8"),
                       ("vmax", "<f8"), ("gain", "<f8"), ("period", "<f8")])


def _map_array(channel_map) -> np.ndarray:
    return np.array([(c.index, c.kind.encode(), c.a, c.b, c.vmin, c.vmax, c.gain, c.period) for c in channel_map],
                    dtype=_MAP_DTYPE)


def _map_from(arr) -> ChannelMap:
    return ChannelMap(tuple(Channel(int(r["index"]), r["kind"].decode(), int(r["a"]), int(r["b"]), float(r["vmin"]),
                                    float(r["vmax"]), float(r["gain"]), float(r["period"])) for r in arr))


def _upper(m: np.ndarray) -> np.ndarray:
    iu = np.triu_indices(m.shape[-1])
    return m[..., iu[0], iu[1]]


def _full(u: np.ndarray, d: int) -> np.ndarray:
    iu = np.triu_indices(d)
    out = np.zeros(u.shape[:-1] + (d, d))
    out[..., iu[0], iu[1]] = u
    out[..., iu[1], iu[0]] = u
    return out


def _dim(n_tri: int) -> int:
    return int(round((math.sqrt(8 * n_tri + 1) - 1) / 2))


# ------------------------------------------------------------------------------------ writing
class RecordWriter:
    """Writes one new entry; nothing else in the file is ever touched.

    >>> w = RecordWriter.begin("cal.h5", device, options)       # doctest: +SKIP
    >>> w.add_config(data); ...; w.finish(analysis, summary)
    """

    def __init__(self, path: Path, name: str):
        self.path = Path(path)
        self.name = name
        self._k = 0

    @classmethod
    def begin(cls, path, *, identity: str, technology: str, n_nodes: int, n_inputs: int, channel_map,
              tau_nominal_s: float, options: dict, kind: str = "measured", derived_from: str = "") -> "RecordWriter":
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "a") as f:
            if "format" in f.attrs and f.attrs["format"] != FORMAT:
                raise CalibrationError(f"{path} is not a calibration record (format {f.attrs['format']!r})")
            old = int(f.attrs.get("format_version", FORMAT_VERSION))
            if old > FORMAT_VERSION:
                raise CalibrationError(f"{path} is a calibration record of format version {old}; this tc-hw writes "
                                       f"version {FORMAT_VERSION}: append with a newer tc-hw")
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = max(old, FORMAT_VERSION)
            root = f.require_group("entries")
            now = _dt.datetime.now(_dt.timezone.utc)
            seq = len(root)
            name = f"{seq:04d}_{now.strftime('%Y%m%dT%H%M%SZ')}"
            while name in root:
                seq += 1
                name = f"{seq:04d}_{now.strftime('%Y%m%dT%H%M%SZ')}"
            g = root.create_group(name)
            g.attrs.update(
                kind=kind, complete=False, created=now.isoformat(), identity=identity, technology=technology,
                n_nodes=n_nodes, n_inputs=n_inputs, n_channels=len(channel_map), tau_nominal_s=tau_nominal_s,
                software_version=_software_version(), options=to_json(options), summary="{}",
                derived_from=derived_from, temperature_k=math.nan, seconds=math.nan, format_version=FORMAT_VERSION,
            )
            g.create_dataset("channel_map", data=_map_array(channel_map))
            _provenance.write(g, instrument={"identity": identity, "technology": technology}, writer="calibration")
        return cls(path, name)

    def _group(self, f):
        return f["entries"][self.name]

    def add_inputs(self, inputs) -> None:
        with h5py.File(self.path, "a") as f:
            self._group(f).create_dataset("inputs", data=np.asarray(inputs, np.float64))

    def add_adc(self, data: AdcData | None, fit: AdcFit) -> None:
        with h5py.File(self.path, "a") as f:
            g = self._group(f)
            a = g.create_group("adc")
            a.attrs["measured"] = data is not None
            if data is not None:
                for k in ("levels", "mean", "var", "count", "saturated", "temperature_k"):
                    a.create_dataset(k, data=getattr(data, k))
                a.create_dataset("raw", data=data.raw, compression="gzip")
                a.attrs["volts_per_code"] = data.volts_per_code
            self._write_adc_fit(g, fit)

    @staticmethod
    def _write_adc_fit(g, fit: AdcFit) -> None:
        af = g.create_group("adc_fit")
        for k in ("gain", "offset", "gain_sd", "offset_sd", "chi2_red", "ok"):
            af.create_dataset(k, data=np.asarray(getattr(fit, k)))
        af.attrs["measured"] = fit.measured
        af.attrs["reason"] = to_json(fit.reason)
        if fit.inverse is not None:  # version 2: a readout with integral nonlinearity
            af.create_dataset("inverse", data=np.asarray(fit.inverse, np.float64))

    def add_config(self, d: ConfigData) -> None:
        with h5py.File(self.path, "a") as f:
            acq = self._group(f).require_group("acquisitions")
            g = acq.create_group(f"{self._k:04d}_{d.name}")
            self._k += 1
            g.attrs.update(name=d.name, stage=d.stage, temperature_k=d.temperature_k, interval_s=d.interval_s,
                           samples=d.samples, burn=d.burn, repeats=d.repeats, wall_s=d.wall_s, meta=to_json(d.meta))
            g.create_dataset("requested", data=d.requested)
            g.create_dataset("applied", data=d.applied)
            total = d.total if d.total is not None else d.sums.sum(0)
            g.create_dataset("sums_total", data=_upper(total))
            g.create_dataset("sums_groups", data=_upper(d.sums).astype(np.float32))
            g.create_dataset("counts", data=d.counts)
            if d.correction is not None:
                g.create_dataset("correction", data=d.correction)
            g.create_dataset("rail_fraction", data=d.rail_fraction)
            g.create_dataset("clip_fraction", data=d.clip_fraction)
            g.create_dataset("raw", data=d.raw, compression="gzip")

    def add_tau(self, t: TauData | None) -> None:
        if t is None:
            return
        with h5py.File(self.path, "a") as f:
            g = self._group(f).create_group("tau")
            for k in ("q1", "q2", "n1", "n2", "applied"):
                g.create_dataset(k, data=getattr(t, k))
            if t.rail_fraction is not None:
                g.create_dataset("rail_fraction", data=np.asarray(t.rail_fraction, np.float64))
            g.create_dataset("raw", data=t.raw, compression="gzip")
            g.attrs.update(interval_s=t.interval_s, temperature_k=t.temperature_k)

    def link_material(self, source: str) -> None:
        """Refit entries: point ``adc``, ``inputs``, ``acquisitions`` and ``tau`` at ``source``'s."""
        with h5py.File(self.path, "a") as f:
            g = self._group(f)
            src = f["entries"][source]
            for k in ("adc", "inputs", "acquisitions", "tau"):
                if k in src:
                    g[k] = h5py.SoftLink(f"/entries/{source}/{k}")

    def finish(self, analysis, summary: dict, seconds: float, adc_fit: AdcFit | None = None) -> None:
        """Write points, fits, node results and the summary; mark the entry complete."""
        with h5py.File(self.path, "a") as f:
            g = self._group(f)
            if adc_fit is not None and "adc_fit" not in g:
                self._write_adc_fit(g, adc_fit)
            p = g.create_group("points")
            for k, v in analysis.points.items():
                p.create_dataset(k, data=np.asarray(v))
            self._write_fits(g, analysis.fits)
            nd = g.create_group("nodes")
            for k, v in analysis.nodes.items():
                nd.create_dataset(k, data=np.asarray(v, np.float64))
            temps = analysis.points.get("temp_k", np.array([]))
            g.attrs["temperature_k"] = float(np.nanmean(temps)) if len(temps) and np.isfinite(temps).any() else math.nan
            g.attrs["seconds"] = float(seconds)
            g.attrs["summary"] = to_json(summary)
            g.attrs["complete"] = True

    @staticmethod
    def _write_fits(g, fits) -> None:
        n = len(fits)
        fg = g.create_group("fits")
        coef = np.full((n, _MAXC), np.nan)
        cov = np.full((n, _MAXC, _MAXC), np.nan)
        for i, c in enumerate(fits):
            k = len(c.coef)
            coef[i, :k] = c.coef
            cov[i, :k, :k] = c.cov
        knots = np.full((n, _MAXK), np.nan)
        for i, c in enumerate(fits):
            if len(c.coef) > _MAXC or len(c.knots) > _MAXK:
                raise ValueError(f"channel {c.channel}: {len(c.coef)} coefficients / {len(c.knots)} knots exceed the "
                                 f"record's {_MAXC} / {_MAXK}")
            knots[i, :len(c.knots)] = c.knots
        fg.create_dataset("coef", data=coef)
        fg.create_dataset("cov", data=cov, compression="gzip")
        fg.create_dataset("knots", data=knots)
        fg.create_dataset("span", data=np.array([c.span for c in fits], np.float64).reshape(n, 2))
        fg.create_dataset("cv_rms", data=np.array([c.cv_rms for c in fits], np.float64))
        fg.create_dataset("shape", data=np.array([str(c.extra.get("shape", c.model)) for c in fits],
                                                 dtype=h5py.string_dtype()))
        fg.create_dataset("model", data=np.array([c.model for c in fits], dtype=h5py.string_dtype()))
        fg.create_dataset("reason", data=np.array([c.reason for c in fits], dtype=h5py.string_dtype()))
        fg.create_dataset("branch", data=np.array([c.branch for c in fits], np.float64).reshape(n, 2))
        for k in ("period", "t_ref", "tempco", "tempco_sd", "chi2_red", "rms_resid"):
            fg.create_dataset(k, data=np.array([getattr(c, k) for c in fits], np.float64))
        for k in ("dof", "n_points"):
            fg.create_dataset(k, data=np.array([getattr(c, k) for c in fits], np.int64))
        fg.create_dataset("ok", data=np.array([c.ok for c in fits], bool))


# ------------------------------------------------------------------------------------ reading
def _open(path):
    from tc_hw.model.safeio import open_hdf5_read

    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"no calibration record at {path}")
    try:
        f = open_hdf5_read(path, "calibration record")
    except ValueError as e:
        raise CalibrationError(str(e)) from None
    if f.attrs.get("format") != FORMAT or not isinstance(f.get("entries"), h5py.Group):
        f.close()
        raise CalibrationError(f"{path} is not a calibration record (format {FORMAT!r})")
    version = f.attrs.get("format_version")
    if not isinstance(version, (int, np.integer)) or not 1 <= int(version) <= FORMAT_VERSION:
        f.close()
        raise CalibrationError(f"{path}: calibration record format_version {version!r} is not one this code "
                               f"reads (1..{FORMAT_VERSION})")
    return f


def _is_complete(attrs) -> bool:
    """True only for a boolean True (or integer 1) ``complete`` attribute: "no", "False" are not."""
    v = attrs.get("complete")
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    return isinstance(v, (int, np.integer)) and int(v) == 1


#: Largest factor by which a calibrated reach or ADC gain may differ from the nominal one
#: before the record is refused as absurd (a real board is within a few per cent to a few x).
ABSURD_FACTOR = 1e3


def _validate(cal: "Calibration", where: str) -> None:
    """Refuse a loaded entry whose numbers cannot be a board's: NaN/inf coefficients, ADC gains
    or offsets, or a reach or gain off the nominal by more than :data:`ABSURD_FACTOR`."""
    for c in cal.fits:
        if not c.ok:
            continue
        name = f"{where}: channel {c.channel} ({c.kind})"
        nums = np.r_[np.ravel(c.coef), np.ravel(c.branch)]
        if not np.all(np.isfinite(nums)) or len(c.coef) == 0:
            raise CalibrationError(f"{name} has non-finite fit coefficients; refused (recalibrate)")
        # NaN tempco means "not measured" (no correction is applied); anything else must be a number
        if math.isinf(c.tempco) or (math.isfinite(c.tempco) and not math.isfinite(c.t_ref)):
            raise CalibrationError(f"{name}: temperature coefficient {c.tempco!r} at reference {c.t_ref!r} K is "
                                   "not usable (an unmeasured one is NaN); refused (recalibrate)")
        lo, hi = c.value_range(None)
        ch = cal.channel_map[c.channel]
        span, nominal = abs(hi - lo), abs(ch.gain) * (ch.vmax - ch.vmin)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise CalibrationError(f"{name} reaches non-finite values; refused (recalibrate)")
        if nominal > 0 and not (1 / ABSURD_FACTOR <= span / nominal <= ABSURD_FACTOR):
            raise CalibrationError(f"{name} reaches a span of {span:.6g}, {span / nominal:.3g} x the nominal "
                                   f"{nominal:.6g}: absurd, refused (recalibrate)")
    a = cal.adc
    ok = np.asarray(a.ok, bool)
    gain, off = np.asarray(a.gain, np.float64), np.asarray(a.offset, np.float64)
    bad = np.flatnonzero(ok & ~(np.isfinite(gain) & np.isfinite(off)))
    if len(bad):
        raise CalibrationError(f"{where}: ADC gain/offset of node(s) {bad[:10].tolist()} are not finite; refused")
    bad = np.flatnonzero(ok & ~((gain >= 1 / ABSURD_FACTOR) & (gain <= ABSURD_FACTOR)))
    if len(bad):
        raise CalibrationError(f"{where}: ADC gain of node(s) {bad[:10].tolist()} ({gain[bad][:3].tolist()}) is "
                               f"outside [{1 / ABSURD_FACTOR:g}, {ABSURD_FACTOR:g}]: absurd, refused")


def entries(path) -> list[dict]:
    """All entries, oldest first: ``{name, kind, complete, created, identity, temperature_k, derived_from}``."""
    with _open(path) as f:
        out = []
        for name in sorted(f["entries"]):
            a = f["entries"][name].attrs
            out.append({"name": name, "kind": str(a["kind"]), "complete": _is_complete(a),
                        "created": str(a["created"]), "identity": str(a["identity"]),
                        "temperature_k": float(a["temperature_k"]), "derived_from": str(a["derived_from"])})
        return out


def _pick(f, entry: str | None) -> str:
    names = sorted(f["entries"])
    if entry is not None:
        if entry not in f["entries"]:
            raise CalibrationError(f"no entry {entry!r} (entries: {names})")
        if not _is_complete(f["entries"][entry].attrs):
            raise CalibrationError(f"entry {entry!r} is incomplete (interrupted calibration); not used")
        return entry
    done = [n for n in names if isinstance(f["entries"][n], h5py.Group) and _is_complete(f["entries"][n].attrs)]
    if not done:
        raise CalibrationError("the record holds no complete calibration")
    return done[-1]


def _read_adc_fit(g) -> AdcFit:
    a = g["adc_fit"]
    return AdcFit(*(a[k][()] for k in ("gain", "offset", "gain_sd", "offset_sd", "chi2_red", "ok")),
                  measured=bool(a.attrs["measured"]), reason=json.loads(a.attrs["reason"]),
                  inverse=a["inverse"][()] if "inverse" in a else None)


def _read_fits(g, cmap) -> list[CurveFit]:
    fg = g["fits"]
    coef, cov = fg["coef"][()], fg["cov"][()]
    model = [m.decode() if isinstance(m, bytes) else str(m) for m in fg["model"][()]]
    reason = [m.decode() if isinstance(m, bytes) else str(m) for m in fg["reason"][()]]
    arr = {k: fg[k][()] for k in ("period", "t_ref", "tempco", "tempco_sd", "chi2_red", "rms_resid", "dof",
                                  "n_points", "ok", "branch")}
    n = len(cmap)
    knots = fg["knots"][()] if "knots" in fg else np.full((n, 0), np.nan)  # version 1: no splines
    span = fg["span"][()] if "span" in fg else np.array([[c.vmin, c.vmax] for c in cmap], np.float64)
    cv_rms = fg["cv_rms"][()] if "cv_rms" in fg else np.full(n, np.nan)
    shape = ([m.decode() if isinstance(m, bytes) else str(m) for m in fg["shape"][()]] if "shape" in fg else model)
    out = []
    for i, c in enumerate(cmap):
        k = int(np.isfinite(coef[i]).sum())
        fit = CurveFit(
            c.index, c.kind, model[i], coef[i, :k].copy(), cov[i, :k, :k].copy(), c.vmin, c.vmax, c.gain,
            float(arr["period"][i]), (float(arr["branch"][i, 0]), float(arr["branch"][i, 1])), float(arr["t_ref"][i]),
            float(arr["tempco"][i]), float(arr["tempco_sd"][i]), float(arr["chi2_red"][i]), int(arr["dof"][i]),
            int(arr["n_points"][i]), float(arr["rms_resid"][i]), bool(arr["ok"][i]), reason[i],
            knots=knots[i][np.isfinite(knots[i])].copy(), span=(float(span[i, 0]), float(span[i, 1])),
            cv_rms=float(cv_rms[i]))
        fit.extra["shape"] = shape[i]
        out.append(fit)
    return out


def _check_version(g, name: str) -> int:
    v = int(g.attrs.get("format_version", 1))
    if v > FORMAT_VERSION:
        raise CalibrationError(f"entry {name!r} is of record format version {v}; this tc-hw reads versions 1.."
                               f"{FORMAT_VERSION}: load it with a newer tc-hw")
    return v


def read_material(path, entry: str | None = None, *, allow_incomplete: bool = False) -> dict:
    """Everything measured in an entry: ``meta``, ``channel_map``, ``inputs``, ``adc`` (AdcData or
    None), ``configs`` (list of ConfigData), ``tau`` (TauData or None), ``points``."""
    with _open(path) as f:
        if allow_incomplete and entry is not None:
            name = entry
        else:
            name = _pick(f, entry)
        g = f["entries"][name]
        _check_version(g, name)
        meta = {k: (v.item() if hasattr(v, "item") else v) for k, v in g.attrs.items()}
        meta["name"] = name
        meta["options"] = json.loads(meta["options"])
        meta["summary"] = json.loads(meta["summary"])
        cmap = _map_from(g["channel_map"][()])
        inputs = g["inputs"][()] if "inputs" in g else None
        adc = None
        if "adc" in g and g["adc"].attrs["measured"]:
            a = g["adc"]
            adc = AdcData(a["levels"][()], a["mean"][()], a["var"][()], a["count"][()], a["raw"][()],
                          float(a.attrs["volts_per_code"]), a["saturated"][()], a["temperature_k"][()])
        configs = []
        if "acquisitions" in g:
            for k in sorted(g["acquisitions"]):
                c = g["acquisitions"][k]
                tot = c["sums_total"][()]
                d = _dim(tot.shape[-1])
                total = _full(tot, d)
                groups = _full(c["sums_groups"][()].astype(np.float64), d)
                at = c.attrs
                configs.append(ConfigData(
                    str(at["name"]), str(at["stage"]), c["requested"][()], c["applied"][()], inputs, groups,
                    c["counts"][()], c["correction"][()] if "correction" in c else None, float(at["temperature_k"]),
                    c["rail_fraction"][()], c["clip_fraction"][()], float(at["interval_s"]), int(at["samples"]),
                    int(at["burn"]), int(at["repeats"]), float(at["wall_s"]), c["raw"][()], json.loads(at["meta"]),
                    total=total))
        tau = None
        if "tau" in g:
            t = g["tau"]
            tau = TauData(float(t.attrs["interval_s"]), t["q1"][()], t["q2"][()], t["n1"][()], t["n2"][()],
                          float(t.attrs["temperature_k"]), t["applied"][()], t["raw"][()],
                          t["rail_fraction"][()] if "rail_fraction" in t else None)
        points = {k: g["points"][k][()] for k in g["points"]} if "points" in g else {}
        return {"meta": meta, "channel_map": cmap, "inputs": inputs, "adc": adc, "configs": configs, "tau": tau,
                "points": points}


# ------------------------------------------------------------------------------------ loaded result
class Calibration:
    """A loaded calibration entry: element curves, ADC readout, node time constants.

    ``fits`` (one :class:`~calibration.curves.CurveFit` per channel), ``adc``
    (:class:`~calibration.adc.AdcFit`), ``nodes`` (dict of arrays: ``tau_s``, ``kT``, ...),
    ``channel_map``, ``identity``, ``technology``, ``temperature_k`` (mean during calibration),
    ``entry``/``path``, ``summary``.
    """

    def __init__(self, fits, adc, nodes, channel_map, *, identity="", technology="RLC", temperature_k=math.nan,
                 entry="", path=None, summary=None, created="", tau_nominal_s=math.nan):
        self.fits = list(fits)
        self.adc = adc
        self.nodes = dict(nodes)
        self.channel_map = channel_map
        self.identity = identity
        self.technology = technology
        self.temperature_k = temperature_k
        self.entry = entry
        self.path = path
        self.summary = summary or {}
        self.created = created
        self.tau_nominal_s = float(tau_nominal_s)

    @property
    def ok(self) -> np.ndarray:
        """Per-channel flag: the curve passed its quality checks and may be used."""
        return np.array([c.ok for c in self.fits], bool)

    def failed(self) -> list[dict]:
        return [{"channel": c.channel, "kind": c.kind, "reason": c.reason} for c in self.fits if not c.ok]

    def curve(self, channel: int) -> CurveFit:
        ch = int(channel)
        if not 0 <= ch < len(self.fits):
            raise CalibrationError(f"channel {ch} does not exist (calibration has {len(self.fits)})")
        return self.fits[ch]

    def element_value(self, channel, volts, temp_k=None) -> np.ndarray:
        """Element value(s) of ``channel`` (int or int array) at applied ``volts`` (broadcast with
        ``channel``), corrected to board temperature ``temp_k`` (kelvin; None: the calibration's
        reference temperature).  Energy units of the board (kT = 1).  Raises
        :class:`~calibration.curves.CurveError` for a channel whose fit was refused."""
        ch, v = np.broadcast_arrays(np.asarray(channel, np.int64), np.asarray(volts, np.float64))
        out = np.empty(ch.shape)
        for c in np.unique(ch):
            m = ch == c
            out[m] = self.curve(c).value(v[m], temp_k)
        return out if out.ndim else float(out)

    def volts_for(self, channel, value, temp_k=None) -> np.ndarray:
        """Control volts giving ``value`` on ``channel`` (inverse of :meth:`element_value`, on the
        monotonic branch).  Raises :class:`~calibration.curves.CurveError` when out of reach."""
        ch, y = np.broadcast_arrays(np.asarray(channel, np.int64), np.asarray(value, np.float64))
        out = np.empty(ch.shape)
        for c in np.unique(ch):
            m = ch == c
            out[m] = self.curve(c).inverse(y[m], temp_k)
        return out if out.ndim else float(out)

    def value_range(self, channel, temp_k=None) -> tuple[float, float]:
        return self.curve(channel).value_range(temp_k)

    def span(self, channel) -> tuple[float, float]:
        """Calibrated span (volts) of ``channel``: where its curve was measured (may be narrower
        than the safe range; :meth:`check_volts` refuses outside it)."""
        return tuple(float(x) for x in self.curve(channel).span)

    def partial_channels(self) -> list[int]:
        """Usable channels whose calibrated span is narrower than their safe range."""
        return [c.channel for c in self.fits if c.ok and c.partial]

    def check_volts(self, volts, first: int = 0, tol_v: float = 0.5 * 20.0 / 65536.0) -> None:
        """Refuse channel volts (shape (n,), channels ``first..first+n-1``) outside a calibrated
        span or on a refused channel: :class:`~calibration.curves.CurveError` naming the channel
        and its span.  Refuse, never clamp: nothing is changed."""
        v = np.atleast_1d(np.asarray(volts, np.float64))
        for k, x in enumerate(v):
            c = self.curve(first + k)
            c._require_ok()
            c.check_volts(x, tol_v)

    def node_temperatures(self) -> np.ndarray:
        """Per-node temperature relative to the board's kT (shape (N,), 1 = nominal), as measured
        from couplings seen from both ends; ones when not measured."""
        kt = self.nodes.get("kT")
        n = sum(1 for c in self.channel_map if c.kind == "Q")
        return np.ones(n) if kt is None else np.asarray(kt, np.float64).copy()

    def node_tau_s(self) -> np.ndarray:
        """Measured per-node time constants (seconds, shape (N,)); NaN where not measured (or the
        whole array NaN when the entry has no tau acquisition)."""
        tau = self.nodes.get("tau_s")
        n = sum(1 for c in self.channel_map if c.kind == "Q")
        return np.full(n, np.nan) if tau is None else np.asarray(tau, np.float64).copy()

    def node_mobility(self, mobility: float = 1.0, tau_ref_s: float | None = None) -> np.ndarray:
        """Per-node mobilities (shape (N,)) for a twin that predicts this board: a program of
        scalar ``mobility`` runs on the board with one program time unit = ``tau_ref_s *
        mobility * kT`` seconds (``tau_ref_s`` default: the board's nominal tau), so node ``i``,
        whose measured time constant is ``tau_i``, moves with ``mobility * tau_ref_s / tau_i``.
        Nodes without a measured tau get ``mobility``.  Use as ``Params.mobility`` (array form)."""
        ref = self.tau_nominal_s if tau_ref_s is None else float(tau_ref_s)
        tau = self.node_tau_s()
        ok = np.isfinite(tau) & (tau > 0) & math.isfinite(ref)
        return np.where(ok, mobility * ref / np.where(ok, tau, 1.0), mobility)

    def __repr__(self) -> str:
        return (f"Calibration({self.entry!r}, {self.identity!r}, {int(self.ok.sum())}/{len(self.fits)} channels ok, "
                f"T={self.temperature_k:.2f} K)")


def load(path, entry: str | None = None) -> Calibration:
    """Load a calibration entry (default: the newest complete one) from a record file.

    Raises :class:`CalibrationError` when the file is missing, is not a record, or holds no
    complete entry.
    """
    with _open(path) as f:
        try:
            cal = _load_entry(f, entry, path)
            _validate(cal, f"{path} entry {cal.entry}")
        except CalibrationError:
            raise
        except (KeyError, TypeError, IndexError, AttributeError, RuntimeError, OSError, ValueError,
                OverflowError) as e:
            raise CalibrationError(f"{path}: damaged calibration record ({type(e).__name__}: {e})") from None
    return cal


def _load_entry(f, entry, path) -> "Calibration":
    name = _pick(f, entry)
    g = f["entries"][name]
    _check_version(g, name)
    cmap = _map_from(g["channel_map"][()])
    coef = np.asarray(g["fits/coef"][()], np.float64)
    for i, row in enumerate(coef.reshape(len(coef), -1)):
        k = int(np.isfinite(row).sum())
        if not (np.isfinite(row[:k]).all() and np.isnan(row[k:]).all()):
            raise CalibrationError(f"{path} entry {name}: fit coefficients of channel {i} are not finite numbers "
                                   "followed by NaN padding; refused (recalibrate)")
    fits = _read_fits(g, cmap)
    adc = _read_adc_fit(g)
    nodes = {k: g["nodes"][k][()] for k in g["nodes"]} if "nodes" in g else {}
    a = g.attrs
    return Calibration(fits, adc, nodes, cmap, identity=str(a["identity"]), technology=str(a["technology"]),
                       temperature_k=float(a["temperature_k"]), entry=name, path=Path(path),
                       summary=json.loads(a["summary"]), created=str(a["created"]),
                       tau_nominal_s=float(a.get("tau_nominal_s", math.nan)))


__all__ += ["CurveError"]
