"""``tc-hw run``: the board as a computer (a program on a batch of inputs, into one HDF5 file)."""

from __future__ import annotations

import json

import calibration
from calibration.scale import scaled_program

from ..backends import backend_for, open_device
from ..model import provenance
from ..model.files import load_params
from ..model.runlog import read_log
from ..report import report
from ..run import builtin_task, check_run, load_inputs, read_run, run_program
from ..station import resolve
from ._common import EXIT_OK, RESOURCE_HELP, add_json, emit, parse_scale


def _validated(args):
    """Everything that can be checked without the device: settings, the output path, the program,
    the calibration record, the inputs or task.  Returns (params, lam or None, cal or None, task, inputs)."""

    check_run(samples=args.samples, time_s=args.time, mode=args.mode, batch=args.batch, out=args.out,
              overwrite=args.overwrite)
    if (args.task is None) == (args.inputs is None):
        raise ValueError("give exactly one of --task (a task to score) or --inputs (a file of inputs)")
    if args.points is not None and args.task is None:
        raise ValueError("--points sets the task's number of inputs: it needs --task")
    if args.points is not None and args.points < 1:
        raise ValueError(f"--points must be a positive integer, got {args.points}")
    if not (args.input_scale > 0):
        raise ValueError(f"--input-scale must be positive, got {args.input_scale}")
    parse_scale(args.scale)
    params = load_params(args.params)
    cal = None if args.cal in (None, "nominal") else calibration.load(args.cal)
    task = builtin_task(args.task, args.points or 250) if args.task else None
    inputs = task.inputs if task is not None else load_inputs(args.inputs)
    return params, cal, task, inputs


def cmd_run(args) -> int:
    resource, station = resolve(args.resource)
    if args.cal is None and station.get("calibration"):
        args.cal = station["calibration"]  # the station file's calibration of this board
    params, cal, task, inputs = _validated(args)
    if cal is None and backend_for(resource) != "twin" and args.cal != "nominal":
        raise ValueError("a board needs --cal (a calibration record; or --cal nominal for nominal gains, "
                         "which is rarely what you want)")
    provenance.note(args=args, program_path=args.params, writer="tc-hw run")
    dev = open_device(args.resource)
    try:
        cal = cal or calibration.nominal(dev.channel_map)
        params, lam = scaled_program(params, parse_scale(args.scale), dev.channel_map, cal)
        r = run_program(dev, params, cal, inputs, args.out, samples=args.samples, mode=args.mode, time_s=args.time,
                        batch=args.batch, seed=args.seed, task=task, input_scale=args.input_scale, scale=lam,
                        overwrite=args.overwrite, all_nodes=args.all_nodes, twin=not args.no_twin,
                        resource=args.resource, allow_rails=args.allow_rails)
    finally:
        dev.close()
    r["scale"] = lam
    lines = [f"ran {args.params} on {r['identity']}: {r['inputs']} inputs x {r['samples']} {r['mode']} samples "
             f"({r['acquisitions']} acquisition(s), t = {r['time_s']:.3g} s) in {r['seconds']:.1f} s",
             f"  board temperature {min(r['temperature_k']):.2f} .. {max(r['temperature_k']):.2f} K, "
             f"read back within {r['readback_max_error_v'] * 1e6:.0f} uV"]
    for k in ("loss", "twin_loss", "top1", "twin_top1"):
        if r.get(k) is not None:
            lines.append(f"  {k}: {r[k]:.4g}")
    lines += [f"  warning: {w}" for w in r.get("warnings", [])]
    lines.append(f"  written to {r['out']}\nNext: tc-hw report {r['out']}")
    emit(args, r, "\n".join(lines))
    return EXIT_OK


def cmd_report(args) -> int:
    """Provenance of any tc-hw file; for a run log also the plots (``tc_hw.report``)."""

    prov = provenance.read(args.file)
    r = {"file": prov["file"], "kind": prov["kind"], "provenance": prov["blocks"]}
    lines = [f"{args.file}: tc-hw {prov['kind']} file"]
    if prov["kind"] == "run-log":
        if read_log(args.file)["completed_generations"] > 0:
            r.update(report(args.file, args.folder))
            lines.append(f"{r['generations']} generations, best loss {r['best_loss']:.4g}\n  " + "\n  ".join(r["plots"]))
    if prov["kind"] == "run":
        run = read_run(args.file)
        r.update(complete=run["complete"], completed_inputs=run["completed_inputs"],
                 figures={k: provenance._attr(v) for k, v in run["figures"].items()})
        figs = [f"{k} {v:.4g}" for k, v in r["figures"].items() if isinstance(v, float)]
        lines.append(f"{'complete' if run['complete'] else 'INCOMPLETE'} run: {run['completed_inputs']} inputs"
                     + "".join(f", {x}" for x in figs))
    if not prov["blocks"]:
        lines.append("  no provenance block (written before tc-hw recorded provenance)")
    for where, block in prov["blocks"].items():
        lines.append(f"  {where}:")
        for k in provenance.FIELDS:
            v = block.get(k, "")
            if v not in ("", None, {}):
                lines.append(f"    {k}: {v if isinstance(v, str) else json.dumps(v)}")
    emit(args, r, "\n".join(lines))
    return EXIT_OK


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run a program on a batch of inputs and write every sample to one HDF5 file",
        description=(
            "The board as a computer. Upload a program through a calibration (verified read-back, as "
            "`tc-hw upload`), apply a batch of inputs (a task's, or a file's), take --samples readings per input "
            "and write one HDF5 run file: the samples (P, M, n) in volts and in node units, the inputs, the "
            "channel volts as read back, the board temperature of each acquisition, the program's outputs after "
            "the readout, and the provenance (board identity, calibration hash, program hash, version). A task "
            "also scores the outputs (its loss, and twin_loss: the same program on the twin). With --resource "
            "twin no calibration is needed: the twin's elements are exactly nominal, and its node values are "
            "read as volts by an ideal ADC (node units = volts). Every argument is checked before the file is "
            "created or anything is sent; an existing file is never replaced without --overwrite; a run that "
            "is killed leaves a readable file marked incomplete."
        ),
        epilog=("examples:\n"
                "  tc-hw run --resource TCPIP0::127.0.0.1::5025::SOCKET --params cos.h5 --cal cal.h5 --task cos "
                "--samples 1000 --out run.h5 --json\n"
                "  tc-hw run --resource twin --params cos.h5 --inputs inputs.npy --samples 200 --out run2.h5\n"
                "  tc-hw report run.h5"),
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument("--resource", required=True, help=RESOURCE_HELP)
    p.add_argument("--params", required=True, help="the program: a parameter file (.h5 or .json)")
    p.add_argument("--cal", help="calibration record (.h5); needed for a board unless the station file names one "
                   "('nominal': nominal gains); the twin uses nominal gains")
    src = p.add_argument_group("inputs (exactly one)")
    src.add_argument("--task", help="built-in task whose inputs to run and whose score to report: cos")
    src.add_argument("--inputs", help="inputs file: .npy array or HDF5 dataset 'inputs', shape (P, k) with k the "
                     "program's input lines (a 1-D array is one line)")
    p.add_argument("--points", type=int, help="number of task inputs (default: 250 for cos)")
    p.add_argument("--samples", type=int, required=True, help="readings per input (M)")
    p.add_argument("--mode", choices=["reset", "serial"], default="reset",
                   help="reset: every reading from x = 0 after --time; serial: one run per input read every --time "
                        "(default: reset)")
    p.add_argument("--time", type=float, help="observation time / sampling interval, seconds (default: one unit of "
                   "program time on the device, tau x mobility x kT)")
    p.add_argument("--batch", type=int, help="inputs per acquisition (default: all in one; the board temperature is "
                   "recorded per acquisition, and a killed run keeps the finished acquisitions)")
    p.add_argument("--input-scale", type=float, default=1.0,
                   help="the board's input lines carry this times the inputs (a program whose crossbar was divided "
                        "by it; default: 1)")
    p.add_argument("--scale", help="node-coordinate scale lambda for a program too strong for the board, or 'auto' "
                   "(as tc-hw upload)")
    p.add_argument("--allow-rails", action="store_true",
                   help="run a program whose nodes would reach the board's rails (by default it is refused before "
                        "anything is sent: the twin's 99.9th percentile of |x| must stay within the safe node volts)")
    p.add_argument("--all-nodes", action="store_true", help="digitise every node (default: the output nodes)")
    p.add_argument("--seed", type=int, default=0, help="seed of the twin's noise and of twin_loss (default: 0)")
    p.add_argument("--no-twin", action="store_true", help="skip twin_loss (the task on the twin)")
    p.add_argument("--out", required=True, help="run file to write (.h5)")
    p.add_argument("--overwrite", "--force", action="store_true", help="replace an existing --out")
    add_json(p)
    p.set_defaults(func=cmd_run)
