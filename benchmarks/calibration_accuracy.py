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

``--quick`` calibrates a reduced set (two matchings) for a smoke run.  By default the
calibration corrects for the emulator's Euler-Maruyama step (``dt = 1e-3 tau``, see
``sim_backend/emulator/acquire.py``; ``calibrate``'s default ``"auto"`` does the same for the
emulator and the twin); a physical board is calibrated without it.
"""

from __future__ import annotations

import argparse
import json
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--board", default="default")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-integrator-correction", action="store_true")
    ap.add_argument("--out", help="folder for the record and plots (default: a temporary folder)")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="tc-cal-"))
    out.mkdir(parents=True, exist_ok=True)
    extra = ["--seed", str(args.seed)] if args.seed is not None else []
    opts = {"integrator_dt_tau": 0.0 if args.no_integrator_correction else 1e-3}
    if args.quick:
        opts.update(max_matchings=2)
    with running_emulator(board=args.board, truth=True, extra_args=extra, workdir=out) as emu:
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
