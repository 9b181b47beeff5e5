"""Accuracy and duration of a full calibration against the board emulator's hidden truth.

Starts the emulator as its own process (``--truth-file``), opens it over TCP with PyVISA,
runs :func:`calibration.calibrate`, and compares with the truth dump:

* per element kind: the median over channels of each channel's median absolute error over its
  safe range (201 voltages), in % of the channel's full scale (largest |true value| on the safe
  range), plus the 90th percentile and the worst channel;
* ADC: largest and median |fitted gain / true gain - 1| (%), largest offset error (mV);
* nodes: time constants against the emulator's tau, temperatures against kT = 1;
* an upload round trip: random program -> map -> upload -> effective values vs truth;
* seconds of the calibration.

Prints one JSON object.  Usage::

    python benchmarks/calibration_accuracy.py [--board default] [--seed N] [--quick]
        [--no-integrator-correction] [--out DIR]
    python benchmarks/calibration_accuracy.py --zoo N [--seeds S1,S2,...] [--json] [--out DIR]
        [--ports LO-HI]

Zoo mode (``--zoo N``) draws N zoo boards (:mod:`sim_backend.emulator.zoo`) from fresh seeds
(``os.urandom``, 32 bits each; ``--seeds`` gives them instead; they are printed on stderr first
and listed in the result), runs each as its own emulator process (``--zoo SEED``) through PyVISA,
calibrates it with the default settings (the routine ``tc-hw calibrate`` runs) and compares with
its truth dump.  The one JSON object holds, for each kind ``"Q","R","B","C","W"``,
``{"median": m, "p95": p}``: the median and the 95th percentile over all boards' channels of
each channel's error, where a channel's error is the median over its calibrated span (201
voltages of the fit's branch) of ``|calibrated value - true value|`` at the calibration's
reference temperature, divided by the channel's *full scale*: the largest ``|true value|`` over
its whole safe range (the definition of the default mode above).  Also ``lost_channels`` (fits
refused whole), ``partial_channels`` (kept on a span shorter than the safe range by more than
0.5 %), ``boards``, ``seconds`` (wall time, all boards), ``seeds``, ``per_board`` and
``diagnostics`` (which parts carry the error: ADC gain/offset errors, per-node tau and kT errors,
the error per curve family, the error left after removing each channel's best single gain
factor -- what remains is curve shape, what goes is a scale such as an ADC gain or kT -- and the
error in units of the calibration's own one-sigma curve uncertainty: a median near 0.67, the
median of |N(0, 1)|, says the error is statistical, i.e. more data would shrink it).
``per_board`` also gives each board's seconds, acquisitions and ``second_pass`` (the
acquisitions of the calibration's residual-driven second pass).  Boards run one after the other:
the emulator integrates its chains on every core already, so two boards at once would not
shorten the wall time on a two-core machine.  A progress bar is drawn on stderr.

``--quick`` calibrates a reduced set (two matchings) for a smoke run.  By default the
calibration corrects for the emulator's Euler-Maruyama step (``dt = 1e-3 tau``, see
``sim_backend/emulator/acquire.py``; ``calibrate``'s default ``"auto"`` does the same for the
emulator and the twin); a physical board is calibrated without it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import calibration  # noqa: E402
from sim_backend.emulator.truth import element_value, load_truth  # noqa: E402
from tc_hw.backends import open_device  # noqa: E402
from tests.emulator_process import running_emulator  # noqa: E402


def compare(cal, truth) -> dict:
    cm = cal.channel_map
    out = {}
    for kind in "QRBCW":
        errs, n_bad = [], 0
        for c in cm.of_kind(kind):
            f = cal.curve(c.index)
            if not f.ok:
                n_bad += 1
                continue
            lo, hi = f.branch
            grid = np.linspace(lo, hi, 201)
            t_ref = f.t_ref if np.isfinite(f.t_ref) else None
            true = element_value(truth, c.index, grid, t_ref)
            full = np.abs(element_value(truth, c.index, np.linspace(c.vmin, c.vmax, 201), t_ref)).max()
            errs.append(100 * np.median(np.abs(f.raw_value(grid) - true)) / full)
        if errs or n_bad:
            e = np.array(errs) if errs else np.array([np.nan])
            out[kind] = {"channels": len(errs) + n_bad, "refused": n_bad, "median_pct_fs": float(np.median(e)),
                         "p90_pct_fs": float(np.percentile(e, 90)), "max_pct_fs": float(np.max(e))}
    a = cal.adc
    g_true = np.asarray(truth["adc"]["gain"])
    o_true = np.asarray(truth["adc"]["offset_v"])
    out["adc"] = {"gain_err_max_pct": float(100 * np.max(np.abs(a.gain / g_true - 1))),
                  "gain_err_median_pct": float(100 * np.median(np.abs(a.gain / g_true - 1))),
                  "offset_err_max_mv": float(1e3 * np.max(np.abs(a.offset - o_true)))}
    nodes = cal.nodes
    if "tau_s" in nodes:
        out["tau_err_max_pct"] = float(100 * np.max(np.abs(nodes["tau_s"] / truth["tau_s"] - 1)))
    if "kT" in nodes:
        out["kT_err_max_pct"] = float(100 * np.max(np.abs(nodes["kT"] - 1)))
    return out


def upload_check(dev, cal, truth, seed=1) -> dict:
    """Map and upload a random program; compare the calibration's effective values with the truth."""
    from tc_hw import Params
    from sim_backend.device import TwinDevice

    net = TwinDevice().network  # same topology as the default emulated board
    rng = np.random.default_rng(seed)
    p = Params(net, rng.uniform(1, 12, net.n_nodes), np.zeros(net.n_nodes), rng.uniform(2, 12, net.n_nodes),
               rng.uniform(-10, 10, net.n_nodes), rng.uniform(-10, 10, net.n_edges),
               rng.uniform(-10, 10, net.n_crossbar))
    temp = dev.temperature()
    rep = calibration.upload(dev, p, cal, temp_k=temp)
    volts = np.asarray(rep["volts"])
    true = element_value(truth, np.arange(len(volts)), volts, temp)
    target, _ = calibration.mapping.channel_values(p, dev.channel_map)
    return {"max_abs_err_vs_truth": float(np.max(np.abs(true - target))),
            "median_abs_err_vs_truth": float(np.median(np.abs(true - target))),
            "readback_max_error_v": rep["readback_max_error_v"]}


# ----------------------------------------------------------------------------- zoo mode
KINDS = ("Q", "R", "B", "C", "W")
#: Seconds an emulator may take to report ready (its kernel compiles first; on a shared, loaded
#: machine that took over a minute, and the default 60 s lost a board).
START_TIMEOUT_S = 300.0
#: A kept span shorter than the safe range by more than this fraction of it makes a channel partial.
PARTIAL_TOL = 0.005


def channel_errors(cal, truth) -> list[dict]:
    """One record per channel: kind, channel, family, ``lost``, ``partial``, and (kept channels)
    ``err`` (median |fit - truth| over the calibrated span / full scale) and ``err_shape`` (the
    same after the best single factor ``a`` in [0.9, 1.1] on the fit, ``scale``)."""
    from sim_backend.emulator.nonideal import SHAPE_NAMES

    ch = truth["channels"]
    out = []
    for c in cal.channel_map:
        i = c.index
        family = "periodic" if ch["period"][i] > 0 else SHAPE_NAMES[int(ch["shape"][i])] if "shape" in ch else "polynomial"
        rec = {"kind": c.kind, "channel": i, "family": family, "lost": False, "partial": False}
        f = cal.curve(i)
        if not f.ok:
            rec["lost"] = True
            out.append(rec)
            continue
        lo, hi = f.branch
        rec["partial"] = bool((hi - lo) < (1.0 - PARTIAL_TOL) * (c.vmax - c.vmin))
        grid = np.linspace(lo, hi, 201)
        t_ref = f.t_ref if np.isfinite(f.t_ref) else None
        true = element_value(truth, i, grid, t_ref)
        full = np.abs(element_value(truth, i, np.linspace(c.vmin, c.vmax, 201), t_ref)).max()
        fit = f.raw_value(grid)
        rec["err"] = float(np.median(np.abs(fit - true)) / full)
        factors = 1.0 + np.linspace(-0.1, 0.1, 401)  # includes 1: err_shape <= err
        med = np.median(np.abs(factors[:, None] * fit[None, :] - true[None, :]), axis=1)
        rec["err_shape"] = float(med.min() / full)
        rec["scale"] = float(factors[int(np.argmin(med))])
        sigma = _fit_sigma(f, grid)
        if sigma is not None:  # the calibration's own uncertainty: is the error statistical?
            rec["sigma"] = float(np.median(sigma) / full)
            rec["z"] = float(np.median(np.abs(fit - true) / np.maximum(sigma, 1e-300)))
        out.append(rec)
    return out


def _fit_sigma(fit, grid):
    """One-sigma uncertainty of the fitted curve on ``grid``, or None if the fit does not give one."""
    try:
        s = np.asarray(fit.sigma(grid), float)
    except (AttributeError, TypeError, ValueError):
        return None
    return s if s.shape == grid.shape and np.all(np.isfinite(s)) and np.all(s > 0) else None


def node_errors(cal, truth) -> dict:
    """ADC gain (relative) and offset (volts) errors and per-node tau and kT relative errors."""
    from sim_backend.emulator.truth import node_tau_s

    a = cal.adc
    res = {"adc_gain": np.abs(np.asarray(a.gain) / np.asarray(truth["adc"]["gain"]) - 1),
           "adc_offset_v": np.abs(np.asarray(a.offset) - np.asarray(truth["adc"]["offset_v"]))}
    nodes = cal.nodes
    if "tau_s" in nodes:
        res["tau"] = np.abs(np.asarray(nodes["tau_s"]) / node_tau_s(truth) - 1)
    if "kT" in nodes:
        res["kT"] = np.abs(np.asarray(nodes["kT"]) / truth.get("kT", 1.0) - 1)
    return res


def _stats(values) -> dict:
    v = np.asarray([x for x in values if np.isfinite(x)], float)
    if not len(v):
        return {"median": None, "p95": None}
    return {"median": float(np.median(v)), "p95": float(np.percentile(v, 95))}


def summarize(records: list[dict], nodes: list[dict], per_board: list[dict], seconds: float, seeds) -> dict:
    """The one JSON object of zoo mode (see the module docstring)."""
    kept = [r for r in records if not r["lost"]]
    out = {k: _stats(r["err"] for r in kept if r["kind"] == k) for k in KINDS}
    out.update(lost_channels=sum(r["lost"] for r in records), partial_channels=sum(r["partial"] for r in kept),
               boards=len(per_board), seconds=round(seconds, 1), seeds=[int(s) for s in seeds])
    families = sorted({r["family"] for r in kept})
    cat = lambda key: np.concatenate([n[key] for n in nodes if key in n]) if any(key in n for n in nodes) else np.array([])  # noqa: E731
    out["diagnostics"] = {
        "full_scale": "largest |true value| over the channel's safe range, at the calibration's t_ref",
        "shape_error_after_best_gain": {k: _stats(r["err_shape"] for r in kept if r["kind"] == k) for k in KINDS},
        "by_family": {f: dict(_stats(r["err"] for r in kept if r["family"] == f), channels=sum(r["family"] == f for r in kept))
                      for f in families},
        "best_gain_factor_minus_1": _stats(abs(r["scale"] - 1) for r in kept),
        "fit_sigma_over_full_scale": {k: _stats(r["sigma"] for r in kept if r["kind"] == k and "sigma" in r)
                                      for k in KINDS},
        "error_over_fit_sigma": {k: _stats(r["z"] for r in kept if r["kind"] == k and "z" in r) for k in KINDS},
        "adc_gain_rel": _stats(cat("adc_gain")),
        "adc_offset_v": _stats(cat("adc_offset_v")),
        "tau_rel": _stats(cat("tau")),
        "kT_rel": _stats(cat("kT")),
    }
    out["per_board"] = per_board
    return out


class _Bar(io.TextIOBase):
    """Turns the calibration's log lines into one progress line on the real stderr."""

    def __init__(self, stream, label: str, expected: int = 120):
        self.stream, self.label, self.expected, self.count, self.t0 = stream, label, expected, 0, time.monotonic()

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                self.count += 1
                self.draw(line.strip())
        return len(text)

    def draw(self, last: str = "") -> None:
        done = min(self.count / self.expected, 1.0)
        bar = "#" * int(24 * done) + "-" * (24 - int(24 * done))
        msg = f"\r{self.label} [{bar}] {self.count:3d} lines {time.monotonic() - self.t0:6.0f} s  {last[:60]:<60s}"
        self.stream.write(msg)
        self.stream.flush()


def fresh_seeds(n: int) -> list[int]:
    """``n`` seeds of 32 bits from ``os.urandom`` (boards the calibration has never seen)."""
    return [int.from_bytes(os.urandom(4), "little") for _ in range(n)]


def run_zoo(seeds, out: Path, overrides: dict | None = None, ports: tuple | None = None, **cal_options) -> dict:
    """Calibrate the zoo board of every seed (each its own emulator process) against its truth.

    ``overrides`` replaces some of the drawn non-ideality sizes (e.g. ``{"adc_inl": 0.0}``) to
    find out which part of a board carries the error; the default run has none.
    ``ports`` (lo, hi): board ``k`` listens on 127.0.0.1 port ``lo + k mod (hi - lo + 1)`` instead of
    one the system picks.  ``cal_options`` go to :func:`calibration.calibrate` (none: its defaults,
    as ``tc-hw calibrate``)."""
    records, nodes, per_board = [], [], []
    t_all = time.monotonic()
    real_err = sys.stderr
    for k, seed in enumerate(seeds):
        work = out / f"zoo-{seed}"
        work.mkdir(parents=True, exist_ok=True)
        bar = _Bar(real_err, f"board {k + 1}/{len(seeds)} seed {seed}")
        bar.draw("starting the emulator")
        t0 = time.monotonic()
        if overrides:  # a board file: the zoo board with some sizes replaced (diagnostics only)
            board_file = work / "board.toml"
            board_file.write_text(f"zoo = {int(seed)}\n[nonideal]\n" + "".join(f"{k} = {v!r}\n" for k, v in overrides.items()))
            launch = dict(board=str(board_file))
        else:
            launch = dict(extra_args=["--zoo", str(seed)])
        if ports:
            port = ports[0] + k % (ports[1] - ports[0] + 1)
            launch["extra_args"] = list(launch.get("extra_args", [])) + ["--port", str(port)]
        with running_emulator(truth=True, workdir=work, timeout=START_TIMEOUT_S, **launch) as emu:
            truth = load_truth(emu.truth_file)
            dev = open_device(emu.tcp)
            try:
                with contextlib.redirect_stderr(bar):
                    cal, summary = calibration.calibrate(dev, work / "cal.h5", progress=True, **cal_options)
            finally:
                dev.close()
        recs = channel_errors(cal, truth)
        for r in recs:
            r["seed"] = int(seed)
        records += recs
        nodes.append(node_errors(cal, truth))
        kept = [r for r in recs if not r["lost"]]
        per_board.append({
            "seed": int(seed), "technology": truth["technology"], "nodes": int(truth["n_nodes"]),
            "gain_Q_per_v": float(np.median(np.asarray(truth["channels"]["gain_nominal"])[
                np.asarray(truth["channels"]["kind"]) == "Q"])),
            "seconds": round(time.monotonic() - t0, 1), "acquisitions": summary.get("acquisitions"),
            "second_pass": len(summary.get("second_pass", [])),
            "lost": sum(r["lost"] for r in recs), "partial": sum(r["partial"] for r in kept),
            "median": {kd: _stats(r["err"] for r in kept if r["kind"] == kd)["median"] for kd in KINDS},
        })
        real_err.write(f"\rboard {k + 1}/{len(seeds)} seed {seed}: {per_board[-1]['seconds']:.0f} s, "
                       f"lost {per_board[-1]['lost']}, medians {per_board[-1]['median']}\n")
    return summarize(records, nodes, per_board, time.monotonic() - t_all, seeds)


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--seeds must be comma-separated non-negative integers, got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise SystemExit(f"--seeds must be comma-separated non-negative integers, got {text!r}")
    return seeds


def _sizes(text: str) -> dict:
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise SystemExit(f"--zoo-sizes takes KEY=NUMBER,...; got {part!r}") from None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--board", default="default")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-integrator-correction", action="store_true")
    ap.add_argument("--out", help="folder for the record and plots (default: a temporary folder)")
    ap.add_argument("--zoo", type=int, metavar="N", help="calibrate N zoo boards from fresh seeds (see above)")
    ap.add_argument("--seeds", help="with --zoo: comma-separated zoo seeds instead of fresh ones")
    ap.add_argument("--zoo-sizes", metavar="K=V,...",
                    help="with --zoo (diagnostics): replace drawn non-ideality sizes, e.g. adc_inl=0,dac_inl_v=0")
    ap.add_argument("--ports", metavar="LO-HI", help="listen on 127.0.0.1 ports from this range "
                    "(default: a free port the system picks)")
    ap.add_argument("--json", action="store_true", help="print only the JSON object on stdout (always the case)")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="tc-cal-"))
    out.mkdir(parents=True, exist_ok=True)
    ports = None
    if args.ports:
        try:
            lo, hi = (int(x) for x in args.ports.split("-"))
        except ValueError:
            ap.error(f"--ports takes LO-HI, got {args.ports!r}")
        if not 0 < lo <= hi < 65536:
            ap.error(f"--ports takes LO-HI with 0 < LO <= HI < 65536, got {args.ports!r}")
        ports = (lo, hi)
    if args.zoo is not None or args.seeds:
        seeds = _seed_list(args.seeds) if args.seeds else fresh_seeds(args.zoo)
        if args.zoo is not None and args.zoo < 1:
            ap.error("--zoo needs N >= 1")
        print(f"zoo seeds: {','.join(map(str, seeds))}  (records in {out})", file=sys.stderr, flush=True)
        opts = {"max_matchings": 2} if args.quick else {}  # --quick: a smoke run, not the default settings
        overrides = _sizes(args.zoo_sizes) if args.zoo_sizes else {}
        result = run_zoo(seeds, out, overrides, ports, **opts)
        result["calibration_options"] = opts or "defaults"
        if overrides:
            result["size_overrides"] = overrides
        print(json.dumps(result))
        return 0
    extra = ["--seed", str(args.seed)] if args.seed is not None else []
    if ports:
        extra += ["--port", str(ports[0])]
    opts = {"integrator_dt_tau": 0.0 if args.no_integrator_correction else 1e-3}
    if args.quick:
        opts.update(max_matchings=2)
    with running_emulator(board=args.board, truth=True, extra_args=extra, workdir=out, timeout=START_TIMEOUT_S) as emu:
        truth = load_truth(emu.truth_file)
        dev = open_device(emu.tcp)
        try:
            t0 = time.monotonic()
            cal, summary = calibration.calibrate(dev, out / "cal.h5", progress=True, **opts)
            seconds = time.monotonic() - t0
            result = {"board": args.board, "seconds": round(seconds, 1), "acquisitions": summary["acquisitions"],
                      "channels_ok": summary["channels_ok"], "channels": summary["channels"],
                      "integrator_correction": not args.no_integrator_correction, "record": str(out / "cal.h5")}
            result.update(compare(cal, truth))
            if not args.quick and args.board == "default":
                result["upload"] = upload_check(dev, cal, truth)
        finally:
            dev.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
