"""``tc-hw demo``: the whole loop on the embedded default board (or a real one)."""

from __future__ import annotations

from ._common import EXIT_OK, RESOURCE_HELP, add_json, emit


def cmd_demo(args) -> int:
    from ..demo import run_demo

    s = run_demo(args.out, args.resource, seed=args.seed, generations=args.generations, progress=not args.json)
    emit(args, s,
         f"tc-hw demo on {s['board']}:\n"
         f"  cos(2 pi z) loss: twin {s['twin_loss']:.4g} | nominal upload {s['nominal_upload_loss']:.4g} | "
         f"calibrated upload {s['calibrated_upload_loss']:.4g} | refined {s['refined_loss']:.4g}\n"
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
            "With --resource the same runs on a real board (it must have the default board's layout)."
        ),
        epilog="example: tc-hw demo --out tc-hw-demo --json",
    )
    p.add_argument("--out", default="tc-hw-demo", help="folder for every file the demo writes (default: tc-hw-demo)")
    p.add_argument("--resource", help=RESOURCE_HELP + " (default: start an emulator)")
    p.add_argument("--generations", type=int, default=10, help="refinement generations (default: 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    add_json(p)
    p.set_defaults(func=cmd_demo)
