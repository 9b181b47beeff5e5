"""``tc-hw demo``: the whole loop on the embedded default board (or a real one)."""

from __future__ import annotations

import json
import sys

from calibration.mapping import UploadError

from .. import demo as demo_app  # run_demo looked up at call time (tests replace it)
from ._common import EXIT_DEVICE, EXIT_OK, RESOURCE_HELP, add_json, emit


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.0f} %"


def _gap_line(g, closed) -> str:
    """One line on the gap to the twin and what each step closed (empty without the figures)."""
    if not g:
        return ""
    return (f"  gap to the twin: calibration closed {_pct(g['calibration'])} of the nominal upload's; of the "
            f"calibrated upload's, the readout fit {_pct(g['readout_fit'])}, the analog refinement "
            f"{_pct(g['analog_refinement'])} (gap_closed {_pct(closed)})\n")


def cmd_demo(args) -> int:
    try:
        extra = {"local_options": {"skip": True}} if getattr(args, "no_local_pass", False) else {}
        s = demo_app.run_demo(args.out, args.resource, seed=args.seed, generations=args.generations, progress=not args.json,
                               ga_seconds=args.ga_seconds, **extra)
    except UploadError as e:  # the board did not apply what was sent
        print(f"tc-hw: device fault: {e}", file=sys.stderr)
        return EXIT_DEVICE
    except demo_app.NotLearnedError as e:  # never a result: an error with its figures
        print(f"tc-hw: error: {e}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": str(e), "exit_code": e.exit_code, **e.figures}, default=str))
        return e.exit_code
    emit(args, s,
         f"tc-hw demo on {s['board']}:\n"
         f"  cos(2 pi z) loss: twin {_f(s['twin_loss'])} | nominal upload {_f(s['nominal_upload_loss'])} | "
         f"calibrated upload {_f(s['calibrated_upload_loss'])}"
         + (f" (curves alone {_f(s['curves_upload_loss'])})" if s.get("curves_upload_loss") is not None else "")
         + f" | refined {_f(s['refined_loss'])} "
         f"(kept: {s['kept']})\n"
         + _gap_line(s.get("gap_steps"), s.get("gap_closed")) +
         f"  energy per inference {s['energy_per_inference_kT']:.3g} kT (twin)\n"
         f"  report: {s['report']}\n  files: " + ", ".join(s["files"].values()) + "\n"
         f"  ({s['seconds']['total_s']:.0f} s)\n"
         f"Next: open {s['report']}; `tc-hw --help` lists every step on its own.")
    return EXIT_OK


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole loop: emulated board, calibrate, train, upload, refine, report",
        description=(
            "Start an emulated board (its own process, with crosstalk and drift that nothing models), "
            "calibrate it, train cos(2 pi z) on the twin, upload it with nominal gains and through the "
            "calibration, refine it on the board, and write the run log, PNG plots and report.md. "
            "With --resource the same runs on any board that follows the board manual and has at least "
            "32 nodes and an input line: the computer (up to 8 x 4 nodes) is laid out on the board's own "
            "coupling graph and its elements bounded to what the calibrated channels reach. "
            "A program that did not learn (cos loss not below 0.1; a constant output has 0.5) is an error, "
            "never a result: exit 2 when it did not learn on the twin (the board's elements are too weak "
            "for the computer; nothing uploaded), 3 when it learned on the twin but not on the board. "
            "After training, a local pass measures the program's channels at the program's own voltages "
            "(the calibration's designs, one setting per self-term kind and per matching of the couplings) "
            "and shifts each calibrated curve through the combined value: a quick calibration's curve can "
            "miss by several of its own sigmas where it kinks between its levels. "
            "twin_loss, nominal_upload_loss, curves_upload_loss (the calibration's curves alone) and "
            "calibrated_upload_loss (with the local pass) use the same readout (the trained "
            "weights, no refit; 250 inputs x 1000 readings). "
            "Exit codes: 0 done, 2 a board that cannot run the demo (or bad arguments), 3 device fault."
        ),
        epilog="example: tc-hw demo --out tc-hw-demo --json",
    )
    p.add_argument("--out", default="tc-hw-demo", help="folder for every file the demo writes (default: tc-hw-demo)")
    p.add_argument("--resource", help=RESOURCE_HELP + " (default: start an emulator)")
    p.add_argument("--generations", type=int, default=10, help="most refinement generations (default: 10)")
    p.add_argument("--ga-seconds", type=float, default=60.0,
                   help="most seconds of refinement generations, on top of its measurements (default: 60)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--no-local-pass", action="store_true",
                   help="upload through the calibration's curves alone (no measurement at the program's voltages)")
    add_json(p)
    p.set_defaults(func=cmd_demo)
