"""Running a program on data: what ``tc-hw run`` does, and the HDF5 run file it writes.

One run: the program is uploaded through the calibration (verified read-back, as ``tc-hw
upload``), the input batch is applied in acquisitions of ``batch`` inputs, ``samples`` readings
per input are taken (reset or serial mode; a board driver splits each acquisition to fit the
board's capacity), and everything is written to one file as it comes.

Units.  ``volts``: what the device reported (board: ADC code x volts per code; twin: the node
value itself, read as volts by an ideal ADC).  ``node_units``: the program's node coordinate x,
``(volts - adc_offset) / adc_gain`` through the calibration's ADC fit; one node unit is one volt
at the node (the manual's ``x_i`` is read out in volts, energies in kT), so on the twin (ideal
ADC, nominal calibration) ``node_units == volts``.  A program rescaled with ``--scale lambda``
runs in its rescaled coordinates: the file's node units are those of the uploaded program.

Run file layout (``/entry`` ``format = "tc-hw/run"``, ``format_version = 1``; NeXus base classes)::

    /                          attrs: default = "entry"
    /entry                     NXentry  attrs: format, format_version, program_name, version, start_time,
                               end_time, complete (False until the run ended), default = "outputs",
                               mode, time_s, samples, batch, task, scale, input_scale
      provenance               NXcollection: the provenance block (tc_hw.model.provenance)
      instrument               NXinstrument  attrs: identity, technology, resource, calibration_entry
        channel_volts          (n_channels,) volts applied, as read back after the upload
        requested_volts        (n_channels,) volts the mapping asked for
        temperature_k          (A,) board temperature at each acquisition (NaN until taken)
        acquisition_s          (A,) wall seconds of each acquisition
      inputs                   (P, k) the inputs as given (task or file)
      board_inputs             (P, K) what the board's K input lines carried (input_scale x inputs, 0-padded)
      samples                  NXdata  signal = "node_units"
        volts                  (P, M, n) float64
        node_units             (P, M, n) float64
        nodes                  (n,) the digitised nodes
        acquisition            (P,) int64: which acquisition measured each input
      outputs                  NXdata  signal = "mean", axes = ["input"] (or ["input", "."])
        mean                   (P,) or (P, F): the program's outputs (readout of the node means)
        mean_errors            same shape: their standard errors (sample std / sqrt(M))
        input                  (P,) the first input column (the plot's x axis)
      completed_inputs         (1,) int64: inputs whose rows are written; rows beyond it do not count
      figures                  NXcollection attrs (written at the end, with a task): loss, twin_loss, ...

The file is written in SWMR mode (watch it with ``h5py.File(path, "r", libver="latest",
swmr=True)``); a run killed at any moment leaves a readable file whose ``complete`` is False and
whose first ``completed_inputs`` rows hold what was measured.
"""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path

import h5py
import numpy as np

import calibration
from calibration.elements import RAIL_GUARD_V
from sim_backend.twin import sample_reset

from . import __version__
from .model import provenance, seeds, tasks
from .model.device import Seedable, armed
from .model.safeio import open_hdf5_read
from .model.tasks import cos_loss, cos_task
from .train.cos import twin_cos_loss

__all__ = ["RUN_FORMAT", "RUN_VERSION", "load_inputs", "CosTask", "builtin_task", "run_program", "read_run",
           "RunError"]

RUN_FORMAT = "tc-hw/run"
RUN_VERSION = 1


class RunError(ValueError):
    """A run's arguments or files are unusable (nothing was sent, no file was written)."""


# ------------------------------------------------------------------------------------ inputs
def _as_batch(a, where: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] == 0:
        raise RunError(f"{where}: inputs must have shape (P, k) with P >= 1, got {a.shape}")
    if not np.isfinite(a).all():
        raise RunError(f"{where}: inputs contain NaN or infinite values")
    return a


def load_inputs(path) -> np.ndarray:
    """An input batch (P, k) float64 from ``.npy`` or HDF5; a 1-D array is one column.

    HDF5: the dataset ``inputs`` (or ``entry/inputs``, so a run file's inputs run again), else the
    file's only dataset.  Raises :class:`RunError` saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"no inputs file at {path}")
    if path.suffix.lower() == ".npy":
        try:
            return _as_batch(np.load(path, allow_pickle=False), str(path))
        except (ValueError, OSError) as e:
            raise RunError(f"{path}: not a readable .npy array ({e})") from None
    try:
        f = open_hdf5_read(path, "inputs file")
    except ValueError as e:
        raise RunError(f"neither .npy nor readable HDF5: {e}") from None
    with f:
        for name in ("inputs", "entry/inputs"):
            if isinstance(f.get(name), h5py.Dataset):
                return _as_batch(f[name][()], f"{path}:{name}")
        sets = []
        f.visititems(lambda n, o: sets.append(n) if isinstance(o, h5py.Dataset) else None)
        if len(sets) != 1:
            raise RunError(f"{path}: no dataset named 'inputs' and {len(sets)} datasets to choose from")
        return _as_batch(f[sets[0]][()], f"{path}:{sets[0]}")


# ------------------------------------------------------------------------------------ tasks
class CosTask:
    """The cos(2 pi z) task: ``points`` inputs z on [0, 1], loss (14) of Whitelam & Casert.

    A task for :func:`run_program` is any object with ``name``, ``inputs`` (P, k), ``score(params,
    output_samples (P, M, n_out)) -> dict`` (with ``loss`` or an accuracy) and ``twin_score(params,
    samples, seed) -> dict`` (the same figures of the same program on the twin)."""

    name = "cos"

    def __init__(self, points: int = 250):

        self.inputs, self.targets = cos_task(int(points))

    def score(self, params, output_samples) -> dict:

        return {"loss": cos_loss(params, output_samples, self.targets)}

    def twin_score(self, params, samples: int, seed: int) -> dict:

        return {"loss": twin_cos_loss(params, points=len(self.inputs), samples=int(samples), seed=int(seed))}


#: Built-in tasks by name; task files (``tc_hw.model.tasks``) plug in through :func:`builtin_task`'s caller.
BUILTIN_TASKS = {"cos": CosTask}


def builtin_task(name: str, points: int = 250):
    """A built-in task by name, or a task file if ``tc_hw.model.tasks`` can load one (``load_task``)."""
    if name in BUILTIN_TASKS:
        return BUILTIN_TASKS[name](points)

    loader = getattr(tasks, "load_task", None)
    if loader is not None and Path(name).is_file():
        return loader(name)
    raise RunError(f"unknown task {name!r}: built-in tasks are {sorted(BUILTIN_TASKS)}"
                   + ("" if loader is None else ", or give a task file"))


# ------------------------------------------------------------------------------------ checks
def check_run(*, samples: int, time_s: float | None, mode: str, batch: int | None, out, overwrite: bool) -> Path:
    """Refuse unusable settings before anything is opened or sent; returns the output path."""
    if int(samples) != samples or samples < 1:
        raise RunError(f"--samples must be a positive integer, got {samples!r}")
    if time_s is not None and not (np.isfinite(time_s) and time_s > 0):
        raise RunError(f"--time must be a positive number of seconds, got {time_s!r}")
    if mode not in ("reset", "serial"):
        raise RunError(f"--mode must be reset or serial, got {mode!r}")
    if batch is not None and (int(batch) != batch or batch < 1):
        raise RunError(f"--batch must be a positive integer, got {batch!r}")
    out = Path(out)
    if out.suffix.lower() not in (".h5", ".hdf5", ".nxs"):
        raise RunError(f"--out {out}: write the run to an HDF5 file (.h5)")
    if not out.parent.is_dir():
        raise RunError(f"--out {out}: folder {out.parent} does not exist")
    if out.exists() and not overwrite:
        raise RunError(f"{out} exists: choose another --out, or --overwrite to replace it")
    return out


def safe_node_volts(device) -> float:
    """Node volts a program should stay within on ``device``: the calibration's rail guard, or 80 %
    of the ADC range where that is smaller (the rails are hidden; the manual says "a few volts")."""
    adc = getattr(device, "adc_range_v", None)
    return float(min(RAIL_GUARD_V, 0.8 * adc)) if adc else float(RAIL_GUARD_V)


def node_extent_v(params, inputs, *, time: float = 1.0, samples: int = 100, max_inputs: int = 50,
                  seed: int = 0) -> float:
    """The 99.9th percentile of |x| over all nodes (node units: volts at the board's nodes) of
    ``params`` on the twin, at up to ``max_inputs`` of ``inputs`` (P, k) spread over the batch,
    ``samples`` reset readings each at program time ``time``."""
    pick = np.unique(np.linspace(0, len(inputs) - 1, min(len(inputs), max_inputs)).round().astype(int))
    x = sample_reset(params, np.asarray(inputs, np.float64)[pick], float(time), int(samples), dt=1e-3,
                     seed=seeds.derive(seed, seeds.RUN_TWIN, 1)).x
    return float(np.percentile(np.abs(x), 99.9))


def check_rails(params, inputs, device, *, input_scale: float = 1.0, time: float = 1.0, seed: int = 0) -> dict:
    """Refuse (:class:`RunError`, nothing sent) a program whose nodes would reach the board's rails:
    the twin's node extent of the program as the board runs it against :func:`safe_node_volts`.
    Returns ``{"node_extent_v", "safe_v"}``."""
    as_run = params if input_scale == 1 else params.copy(crossbar=params.crossbar * input_scale)
    extent, safe = node_extent_v(as_run, inputs, time=time, seed=seed), safe_node_volts(device)
    if extent > safe:
        raise RunError(f"the program's nodes would reach {extent:.2f} V on the board (99.9th percentile of |x| "
                       f"on the twin; safe: {safe:.2f} V): railed nodes compute something else. Run it at a "
                       f"coordinate scale that fits (--scale auto, or a larger --scale), use a program trained "
                       f"with smaller elements, or pass --allow-rails to run it anyway")
    return {"node_extent_v": extent, "safe_v": safe}


def board_batch(inputs: np.ndarray, params, n_lines: int, input_scale: float) -> np.ndarray:
    """The board's input batch (P, n_lines): ``input_scale x inputs`` on the program's lines, 0 after.

    Raises :class:`RunError` when the inputs do not match the program or the board."""
    k = params.network.n_inputs
    if inputs.shape[1] != k:
        raise RunError(f"the program has {k} input line(s) but the inputs have {inputs.shape[1]} column(s)")
    if k > n_lines:
        raise RunError(f"the program needs {k} input lines; the board has {n_lines}")
    out = np.zeros((len(inputs), max(n_lines, 1)))
    out[:, :k] = input_scale * inputs
    return out


# ------------------------------------------------------------------------------------ the file
def _create(path: Path, *, p: int, m: int, nodes, n_features: int, inputs, board_inputs, n_acq: int,
            attrs: dict, instrument: dict, overwrite: bool, known: dict) -> h5py.File:
    if overwrite and path.exists():
        path.unlink()
    f = h5py.File(path, "x", libver="latest")
    e = f.create_group("entry")
    now = _dt.datetime.now(_dt.timezone.utc).isoformat()

    e.attrs.update({"NX_class": "NXentry", "format": RUN_FORMAT, "format_version": RUN_VERSION,
                    "program_name": "tc-hw", "version": __version__, "start_time": now, "end_time": "",
                    "complete": False, **attrs})
    provenance.write(e, writer="run", instrument=instrument, **known)
    ins = e.create_group("instrument")
    ins.attrs["NX_class"] = "NXinstrument"
    ins.attrs.update({k: str(v) for k, v in instrument.items()})
    n_ch = int(instrument.get("n_channels", 0))
    for name, shape in (("channel_volts", (n_ch,)), ("requested_volts", (n_ch,)), ("temperature_k", (n_acq,)),
                        ("acquisition_s", (n_acq,))):
        ins.create_dataset(name, shape=shape, dtype=np.float64, fillvalue=np.nan)
    e.create_dataset("inputs", data=inputs)
    e.create_dataset("board_inputs", data=board_inputs)
    n = len(nodes)
    s = e.create_group("samples")
    s.attrs.update({"NX_class": "NXdata", "signal": "node_units"})
    chunk = (1, m, n)
    for name in ("volts", "node_units"):
        d = s.create_dataset(name, shape=(p, m, n), chunks=chunk, dtype=np.float64, fillvalue=np.nan)
        d.attrs["units"] = "V" if name == "volts" else "node units (1 V at the node)"
    s.create_dataset("nodes", data=np.asarray(nodes, np.int64))
    s.create_dataset("acquisition", shape=(p,), dtype=np.int64, fillvalue=-1)
    o = e.create_group("outputs")
    shape = (p,) if n_features == 1 else (p, n_features)
    o.attrs.update({"NX_class": "NXdata", "signal": "mean",
                    "axes": ["input"] if n_features == 1 else ["input", "."], "input_indices": 0})
    o.create_dataset("mean", shape=shape, dtype=np.float64, fillvalue=np.nan)
    o.create_dataset("mean_errors", shape=shape, dtype=np.float64, fillvalue=np.nan)
    o.create_dataset("input", data=np.asarray(inputs[:, 0], np.float64))
    e.create_dataset("completed_inputs", data=np.zeros(1, np.int64), maxshape=(1,))
    provenance.set_nexus_default(f, "entry", "outputs")
    f.swmr_mode = True
    f.flush()
    return f


def _write_rows(f: h5py.File, p0: int, p1: int, a: int, volts, node_units, mean, sem) -> None:
    e = f["entry"]
    s, o = e["samples"], e["outputs"]
    s["volts"][p0:p1] = volts
    s["node_units"][p0:p1] = node_units
    s["acquisition"][p0:p1] = a
    o["mean"][p0:p1] = mean.reshape((p1 - p0,) + o["mean"].shape[1:])
    o["mean_errors"][p0:p1] = sem.reshape((p1 - p0,) + o["mean"].shape[1:])
    for d in (s["volts"], s["node_units"], s["acquisition"], o["mean"], o["mean_errors"],
              e["instrument/temperature_k"], e["instrument/acquisition_s"]):
        d.flush()
    e["completed_inputs"][0] = p1  # last: these rows count only now
    e["completed_inputs"].flush()
    f.flush()


def _finish(path: Path, figures: dict) -> None:
    """Reopen (outside SWMR, which forbids new attributes) to write the figures and ``complete``."""
    with h5py.File(path, "r+") as f:
        e = f["entry"]
        g = e.create_group("figures")
        g.attrs["NX_class"] = "NXcollection"
        for k, v in figures.items():
            g.attrs[k] = np.nan if v is None else v
        e.attrs["end_time"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
        e.attrs["complete"] = True


# ------------------------------------------------------------------------------------ the run
def _readout_stats(params, x) -> tuple[np.ndarray, np.ndarray]:
    """Outputs ``params.output`` of the node means (P, F) and their standard errors, from output
    node samples ``x`` (P, M, n_out): the readout is linear, so the error is that of the mean of
    the per-sample readout ``f . x``."""
    y = params.output(x)  # (P, M, F): the readout of each sample
    m = x.shape[1]
    sem = y.std(axis=1, ddof=1) / np.sqrt(m) if m > 1 else np.full(y.shape[::2], np.nan)
    return y.mean(axis=1), sem


def run_program(device, params, cal, inputs, out, *, samples: int, mode: str = "reset", time_s: float | None = None,
                batch: int | None = None, seed: int = 0, task=None, input_scale: float = 1.0, scale: float = 1.0,
                overwrite: bool = False, all_nodes: bool = False, twin: bool = True, resource: str = "",
                allow_rails: bool = False) -> dict:
    """Upload ``params`` through ``cal``, run it on ``inputs`` (P, k) and write run file ``out``.

    ``time_s`` defaults to one unit of program time on the device (``tau_s x mobility x kT``);
    ``batch`` inputs per acquisition (default: all in one); ``all_nodes`` digitises every node
    (default: the program's output nodes).  With ``task`` the figures of :meth:`score` (and
    :meth:`twin_score` with ``twin``) are returned and written.  A program whose nodes would reach
    the rails (:func:`check_rails`) is refused before anything is sent, unless ``allow_rails``.  Returns a JSON-ready summary
    with ``loss``, ``twin_loss``, ``inputs``, ``samples``, ``seconds``.
    """

    out = check_run(samples=samples, time_s=time_s, mode=mode, batch=batch, out=out, overwrite=overwrite)
    inputs = _as_batch(inputs, "inputs")
    lines = board_batch(inputs, params, int(getattr(device, "n_inputs", 1) or 1), input_scale)
    calibration.map_params(params, cal, device.channel_map)  # refuses a program that does not fit: nothing sent
    unit_s = float(device.tau_s * np.mean(params.mobility) * params.kT)  # one unit of program time on the device
    rails = None if allow_rails else check_rails(params, inputs, device, input_scale=input_scale,
                                                  time=1.0 if time_s is None else float(time_s) / unit_s, seed=seed)
    p, m = len(inputs), int(samples)
    b = p if batch is None else min(int(batch), p)
    n_acq = -(-p // b)
    nodes = np.arange(device.n_nodes) if all_nodes else np.asarray(params.network.outputs, np.int64)
    outs = np.asarray(params.network.outputs)
    pos = np.array([int(np.flatnonzero(nodes == o)[0]) for o in outs])
    t = float(time_s) if time_s is not None else unit_s
    n_features = params.output(np.zeros((1, len(outs)))).shape[-1]
    known = dict(device=device, cal=cal, params=params, resource=resource, seeds={
        "seed": int(seed),
        "acquisition_seed": "tc_hw.model.seeds.derive(seed, 'run.acquisition', acquisition) on seedable backends (the twin)"})
    instrument = {"identity": device.identity, "technology": device.technology, "resource": resource,
                  "calibration_entry": str(getattr(cal, "entry", "")), "n_channels": len(device.channel_map)}
    attrs = {"mode": mode, "time_s": t, "samples": m, "batch": b, "task": getattr(task, "name", ""),
             "scale": float(scale), "input_scale": float(input_scale)}
    t0 = time.monotonic()
    f = _create(out, p=p, m=m, nodes=nodes, n_features=n_features, inputs=inputs, board_inputs=lines, n_acq=n_acq,
                attrs=attrs, instrument=instrument, overwrite=overwrite, known=known)
    try:
        rep = calibration.upload(device, params, cal)
        ins = f["entry/instrument"]
        ins["requested_volts"][:] = np.asarray(rep["volts"], np.float64)
        ins["channel_volts"][:] = np.asarray(device.get_channels(0, len(device.channel_map)), np.float64)
        x, means, temps = _measure(f, device, cal, params, lines, nodes, pos, mode=mode, time_s=t, samples=m,
                                   batch=b, seed=seed)
    finally:
        f.close()
    result = {"out": str(out), "identity": device.identity, "inputs": p, "samples": m, "mode": mode, "time_s": t,
              "acquisitions": n_acq, "temperature_k": [float(v) for v in temps],
              "readback_max_error_v": rep["readback_max_error_v"], "warnings": rep.get("warnings", []),
              "loss": None, "twin_loss": None, **(rails or {})}
    if task is not None:
        result.update(_score(task, params, x[:, :, pos], m, seed, input_scale, twin))
    result["output_mean_first"] = [float(v) for v in np.ravel(means)[:8]]
    result["seconds"] = time.monotonic() - t0
    _finish(out, {k: v for k, v in result.items() if v is not None and k in (
        "loss", "twin_loss", "top1", "top2", "twin_top1", "twin_top2", "seconds")})
    return result


def _measure(f, device, cal, params, lines, nodes, pos, *, mode, time_s, samples, batch, seed):
    """Acquire ``batch`` inputs at a time and write each acquisition's rows as it comes.

    Returns node-unit samples (P, M, n), the outputs (P, F) and the temperature per acquisition (A,)."""
    p = len(lines)
    n_acq = -(-p // batch)
    ins = f["entry/instrument"]
    temps = np.full(n_acq, np.nan)
    node_units = np.empty((p, samples, len(nodes)))
    means = np.empty((p, params.output(np.zeros((1, len(pos)))).shape[-1]))
    for a in range(n_acq):
        p0, p1 = a * batch, min(p, (a + 1) * batch)
        device.set_inputs(lines[p0:p1])
        if isinstance(device, Seedable):
            device.reseed(seeds.derive(seed, seeds.ACQUISITION, a))
        ta = time.monotonic()
        with armed(device):
            acq = device.acquire(mode, time_s, samples, nodes=nodes)
        temps[a] = acq.temperature_k if np.isfinite(acq.temperature_k) else device.temperature()
        ins["temperature_k"][a] = temps[a]
        ins["acquisition_s"][a] = time.monotonic() - ta
        x = cal.adc.correct(acq.volts, nodes)
        node_units[p0:p1] = x
        means[p0:p1], sem = _readout_stats(params, x[:, :, pos])
        _write_rows(f, p0, p1, a, acq.volts, x, means[p0:p1], sem)
    return node_units, means, temps


def _score(task, params, output_samples, samples: int, seed: int, input_scale: float, twin: bool) -> dict:
    """The task's figures from the output samples (P, M, n_out), and with ``twin`` those of the same
    program on the twin (``twin_`` prefix) -- the program as the board ran it: its input lines
    carried ``input_scale`` x the inputs."""
    out = dict(task.score(params, output_samples))
    if twin:
        as_run = params if input_scale == 1 else params.copy(crossbar=params.crossbar * input_scale)
        twin_seed = seeds.derive(seed, seeds.RUN_TWIN)
        out.update({f"twin_{k}": v for k, v in task.twin_score(as_run, samples, twin_seed).items()})
    return out


def read_run(path) -> dict:
    """A run file's arrays (cut to the completed inputs) and attributes; works on a killed run.

    Returns ``attrs`` (entry), ``complete`` (bool), ``completed_inputs``, ``inputs``,
    ``board_inputs``, ``volts``, ``node_units``, ``nodes``, ``acquisition``, ``mean``,
    ``mean_errors``, ``channel_volts``, ``requested_volts``, ``temperature_k``, ``figures`` (dict)."""
    path = Path(path)
    f = open_hdf5_read(path, "run file")  # never hangs on a truncated file
    with f:
        e = f.get("entry")
        if e is None or e.attrs.get("format") != RUN_FORMAT:
            raise ValueError(f"{path}: not a tc-hw run file")
        if int(e.attrs["format_version"]) > RUN_VERSION:
            raise ValueError(f"{path}: run-file version {e.attrs['format_version']} is newer than this code")
        n = int(e["completed_inputs"][0])
        s, o, ins = e["samples"], e["outputs"], e["instrument"]
        out = {"attrs": dict(e.attrs), "complete": bool(e.attrs["complete"]), "completed_inputs": n,
               "inputs": e["inputs"][:n], "board_inputs": e["board_inputs"][:n], "volts": s["volts"][:n],
               "node_units": s["node_units"][:n], "nodes": s["nodes"][()], "acquisition": s["acquisition"][:n],
               "mean": o["mean"][:n], "mean_errors": o["mean_errors"][:n], "channel_volts": ins["channel_volts"][()],
               "requested_volts": ins["requested_volts"][()], "temperature_k": ins["temperature_k"][()],
               "figures": dict(e["figures"].attrs) if "figures" in e else {}}
        return out


def save_acquisition(out, device, acq, requested_volts, *, overwrite: bool = False, resource: str = "",
                     cal=None) -> Path:
    """Write one :class:`~tc_hw.model.device.Acquisition` (channels set by hand, ``tc-hw acquire``) as a
    run file (same layout as :func:`run_program`'s; the outputs are the node means, no readout).

    Without a calibration ``node_units`` are the volts as read (an ideal ADC assumed)."""
    out = check_run(samples=acq.volts.shape[1], time_s=acq.time_s, mode=acq.mode, batch=None, out=out,
                    overwrite=overwrite)
    volts = np.asarray(acq.volts, np.float64)
    p, m, n = volts.shape
    inputs = np.asarray(acq.inputs, np.float64).reshape(p, -1)
    instrument = {"identity": device.identity, "technology": device.technology, "resource": resource,
                  "calibration_entry": str(getattr(cal, "entry", "") if cal is not None else "none (ideal ADC)"),
                  "n_channels": len(device.channel_map)}
    attrs = {"mode": acq.mode, "time_s": float(acq.time_s), "samples": m, "batch": p, "task": "", "scale": 1.0,
             "input_scale": 1.0}
    known = dict(device=device, cal=cal, resource=resource)
    f = _create(out, p=p, m=m, nodes=np.asarray(acq.nodes), n_features=n, inputs=inputs, board_inputs=inputs,
                n_acq=1, attrs=attrs, instrument=instrument, overwrite=overwrite, known=known)
    try:
        ins = f["entry/instrument"]
        ins["requested_volts"][:] = np.asarray(requested_volts, np.float64)
        ins["channel_volts"][:] = np.asarray(device.get_channels(0, len(device.channel_map)), np.float64)
        ins["temperature_k"][0] = acq.temperature_k
        ins["acquisition_s"][0] = float(acq.meta.get("wall_s", np.nan))
        x = volts if cal is None else cal.adc.correct(volts, acq.nodes)
        sem = x.std(axis=1, ddof=1) / np.sqrt(m) if m > 1 else np.full((p, n), np.nan)
        _write_rows(f, 0, p, 0, volts, x, x.mean(axis=1), sem)
    finally:
        f.close()
    _finish(out, {})
    return out
