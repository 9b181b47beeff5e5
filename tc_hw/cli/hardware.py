"""``tc-hw calibrate``, ``upload``, ``refine`` and ``report``: programs on a board."""

from __future__ import annotations

import calibration
from calibration.scale import scaled_program

from ..backends import open_device
from ..model import provenance
from ..model.files import load_params
from ..model.tasks import load_task
from ..refine import RefineConfig, gap_closed, measure_cos_loss, refine, twin_task_loss
from ..station import resolve
from ..train.cos import twin_cos_loss
from ._cluster import (
    add_cluster_option,
    add_station_option,
    board_or_station,
    calibrate_station,
    refine_station,
)
from ._common import (
    EXIT_OK,
    RESOURCE_HELP,
    add_json,
    check_input_file,
    check_output_file,
    emit,
    parse_scale,
)
from .run import cmd_report as report_any_file


def _load_cal(path, device, resource: str | None = None):
    """The calibration record ``path``; without one, the station file's for the board, else nominal gains."""

    if path is None and resource is not None:
        path = resolve(resource)[1].get("calibration")
    return calibration.load_or_nominal(path, device.channel_map)


def _program(args, device, cal=None):
    """The parameter file, rescaled (``--scale``) to fit the board (through ``cal``) if asked."""
    return scaled_program(load_params(args.params), parse_scale(getattr(args, "scale", None)), device.channel_map, cal)


def cmd_calibrate(args) -> int:
    board_or_station(args, out_required=True)
    if args.station:
        return calibrate_station(args)
    check_output_file(args.out, "--out")
    dev = open_device(args.resource)
    try:
        provenance.note(args=args, device=dev, resource=args.resource, writer="tc-hw calibrate")
        _, summary = calibration.calibrate(dev, args.out, progress=not args.json)
    finally:
        dev.close()
    lines = [f"calibration of {summary.get('identity', args.resource)} appended to {args.out}"]
    for k, v in summary.items():
        if k not in ("identity",):
            lines.append(f"  {k}: {v}")
    lines.append(f"Next: tc-hw upload --resource {args.resource} --params P.h5 --cal {args.out}")
    emit(args, summary, "\n".join(lines))
    return EXIT_OK


def cmd_upload(args) -> int:
    parse_scale(args.scale)
    check_input_file(args.params, "--params")
    if args.cal not in (None, "nominal"):
        check_input_file(args.cal, "--cal")
    dev = open_device(args.resource)
    try:
        cal = _load_cal(args.cal, dev, args.resource)
        params, lam = _program(args, dev, cal)
        rep = calibration.upload(dev, params, cal)
        rep["scale"] = lam
        if args.task == "cos":
            rep["twin_loss"] = twin_cos_loss(params, seed=args.seed)
            rep["board_loss"] = measure_cos_loss(dev, params, cal, seed=args.seed)
            if args.cal not in (None, "nominal"):
                rep["nominal_board_loss"] = measure_cos_loss(dev, params, calibration.nominal(dev.channel_map),
                                                             seed=args.seed)
                calibration.upload(dev, params, cal)  # leave the calibrated program on the board
    finally:
        dev.close()
    if not args.full:
        rep.pop("volts", None)
        rep.pop("effective", None)
    human = [f"uploaded {args.params} to {rep['identity']} through {args.cal or 'nominal gains'}"
             f" ({rep['channels']} channels, read back within {rep['readback_max_error_v'] * 1e6:.0f} uV)"]
    for kind, d in rep["difference"].items():
        human.append(f"  {kind}: effective - trained max {d['max_abs']:.3g}, rms {d['rms']:.3g}")
    for k in ("twin_loss", "board_loss", "nominal_board_loss"):
        if k in rep:
            human.append(f"  {k}: {rep[k]:.4g}")
    human += [f"  warning: {w}" for w in rep.get("warnings", [])]
    emit(args, rep, "\n".join(human))
    return EXIT_OK


def _refine_config(args):
    """The run's settings from the command line, validated (by ``RefineConfig``) before anything
    is opened or created; a refusal names the option (ValueError: exit code 2)."""
    sizes = {k: getattr(args, k) for k in ("population", "points", "samples", "final_samples", "rungs", "max_factor",
                                           "max_readings") if getattr(args, k, None) is not None}
    if args.method == "twin-guided":
        sizes.setdefault("points", 50)
        sizes.setdefault("samples", 200)
    if sizes.get("population", 20) <= 5:  # the default 5 elites need a population of at least 6
        sizes["elites"] = max(1, sizes["population"] // 2)
    try:
        return RefineConfig(generations=args.generations, seed=args.seed, method=args.method, **sizes,
                            temp_band=tuple(args.temp_band) if args.temp_band else None)
    except ValueError as e:  # RefineConfig names its field; the operator typed the option
        field = str(e).split(" ", 1)[0]
        raise ValueError(f"--{field.replace('_', '-')}: {e}") from None


def cmd_refine(args) -> int:
    board_or_station(args)
    cfg = _refine_config(args)  # bad sizes and ranges are refused before the board or the log is touched
    task = "cos" if args.task == "cos" else load_task(args.task)
    if args.station:
        return refine_station(args, cfg, task)
    dev = open_device(args.resource)
    try:
        cal = _load_cal(args.cal, dev, args.resource)
        params, lam = _program(args, dev, cal)
        provenance.note(args=args, device=dev, cal=cal, params=params, program_path=args.params,
                        resource=args.resource, seeds={"seed": args.seed}, writer="tc-hw refine")
        result = refine(dev, params, cal, args.log, cfg, resume=args.resume, progress=not args.json, task=task)
    finally:
        dev.close()
    if task == "cos":
        result["twin_loss"] = twin_cos_loss(params, points=cfg.final_points, samples=cfg.final_samples,
                                            seed=args.seed)
    else:
        twin = twin_task_loss(params, task, samples=cfg.final_samples, seed=args.seed)
        result["twin_loss"] = twin["loss"]
        if "accuracy" in twin:
            result["twin_accuracy"] = twin["accuracy"]
    result["gap_closed"] = gap_closed(result["twin_loss"], result["start_loss"], result["refined_loss"])
    result["scale"] = lam
    if not args.full:
        result.pop("best_volts", None)
    gap = "no gap to close" if result["gap_closed"] is None else f"gap closed {100 * result['gap_closed']:.0f} %"
    if "refined_accuracy" in result:
        gap += (f"; accuracy {result['start_accuracy']:.3f} -> {result['refined_accuracy']:.3f}"
                f" (twin {result['twin_accuracy']:.3f})")
    emit(args, result,
         f"refined on the board by {result['method']} for {result['generations']} generations ({result['stop']}), "
         f"{result['readings']} readings:\n"
         f"  twin loss {result['twin_loss']:.4g}, calibrated upload with fitted readout {result['start_loss']:.4g}, "
         f"refined {result['refined_loss']:.4g} (kept: {result['kept']}; {gap})\n"
         f"  {result['drift']['advice']}\n"
         f"  log: {result['log']}\nNext: tc-hw report {result['log']}")
    return EXIT_OK


def cmd_report(args) -> int:
    if args.folder is not None:
        check_output_file(f"{args.folder}/x.png", "--folder")
    return report_any_file(args)


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="measure a board and append a calibration record",
        description=(
            "Calibrate a board through its commands only: ADC gain and offset from CAL:REF sweeps, "
            "every element's value against control voltage from measured fluctuations, node time "
            "constants and temperatures. Fits with a poor quality figure are reported and never used. "
            "The record (HDF5) is append-only; plots are written next to it."
        ),
        epilog=("examples: tc-hw calibrate --resource TCPIP0::127.0.0.1::5025::SOCKET --out cal.h5 --json; "
                "every board of a station at once, one record each: "
                "tc-hw calibrate --station station.toml --cluster local --json"),
    )
    p.add_argument("--resource", help=RESOURCE_HELP)
    p.add_argument("--out", help="calibration record to create or append to (.h5); with --station, the folder for "
                   "boards whose entry names no calibration (default: the station file's folder; <name>.h5)")
    add_station_option(p)
    add_cluster_option(p)
    add_json(p)
    p.set_defaults(func=cmd_calibrate)

    scale_help = ("node-coordinate scale lambda < 1 that shrinks a program too strong for the board's element "
                  "ranges (exact: longer board time, larger readings); 'auto' picks the largest that fits")
    p = sub.add_parser(
        "upload",
        help="map a parameter file to channel volts through a calibration and upload it",
        description=(
            "Trained parameters -> element values -> volts through the calibrated inverse curves, on the "
            "DAC grid. A program that does not fit is refused with what is out of range and a suggested "
            "rescaling. All channels are written in one block, read back and verified; the report gives "
            "the effective parameters and their difference from the trained ones. With --task cos the "
            "board's loss is measured (M = 1000) and compared with the twin's and with a nominal-gain upload."
        ),
        epilog="example: tc-hw upload --resource TCPIP0::127.0.0.1::5025::SOCKET --params cos.h5 --cal cal.h5 --task cos --json",
    )
    p.add_argument("--resource", required=True, help=RESOURCE_HELP)
    p.add_argument("--params", required=True, help="parameter file (.h5 or .json)")
    p.add_argument("--cal", help="calibration record (default: nominal gains, no calibration)")
    p.add_argument("--scale", help=scale_help)
    p.add_argument("--task", choices=["cos"], help="also measure the task's loss on the board")
    p.add_argument("--seed", type=int, default=0, help="seed of the twin comparison (default: 0)")
    p.add_argument("--full", action="store_true", help="include per-channel volts and effective values")
    add_json(p)
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser(
        "refine",
        help="continue training on the board itself (genetic algorithm, run log)",
        description=(
            "Start from a program trained on the twin, upload it through the calibration and refine it on the "
            "board: first the readout by least squares on a start measurement, then the analog program by "
            "--method, scoring candidates from samples measured on the board. The start, the readout fit and "
            "the method's best are measured together at the end and the best is kept; --json reports "
            "twin_loss, start_loss (calibrated upload, fitted readout), refined_loss, gap_closed = (start - "
            "refined) / (start - twin), readings and kept. Every generation "
            "goes to the run log (HDF5, SWMR: watch it live with `tc-hw report`); a killed run continues "
            "with --resume. Candidates never leave the channels' safe ranges. The loop pauses while the "
            "board temperature is outside --temp-band."
        ),
        epilog=("example: tc-hw refine --resource TCPIP0::127.0.0.1::5025::SOCKET --params cos.h5 --cal cal.h5 "
                "--task cos --method twin-guided --generations 8 --log run.h5 --json"),
    )
    p.add_argument("--resource", help=RESOURCE_HELP)
    add_station_option(p)
    add_cluster_option(p)
    p.add_argument("--params", required=True, help="program trained on the twin (.h5)")
    p.add_argument("--cal", help="calibration record (default: nominal gains; with --station, each board's "
                   "calibration in the station file)")
    p.add_argument("--task", default="cos", help="task scored on the board: cos (built in) or a task file (HDF5: "
                   "inputs, targets or labels, loss mse / cross-entropy / accuracy; docs/task-file.md) (default: cos)")
    p.add_argument("--log", required=True, help="run log to write (.h5); with --resume, the one to continue; with "
                   "--station, board NAME logs to <stem>_NAME.h5")
    p.add_argument("--resume", action="store_true", help="continue the run in --log after its last generation")
    p.add_argument("--method", default="ga", choices=["ga", "cma", "twin-guided"],
                   help="ga: the papers' genetic algorithm under noise (elites re-measured, common inputs per "
                        "generation, successive halving, readings that grow as the candidates converge, the result "
                        "kept only if it beats the start significantly); "
                        "cma: CMA-ES (the cma package); twin-guided: Levenberg-Marquardt steps from the board's "
                        "measured outputs and the twin's Jacobian through the calibration, each step checked on "
                        "the board -- usually the fewest readings (default: ga)")
    p.add_argument("--generations", type=int, default=30, help="generations, or twin-guided iterations (default: 30)")
    p.add_argument("--population", type=int, help="candidates per generation (default: 20)")
    p.add_argument("--points", type=int, help="inputs per generation (default: 25; twin-guided: 50)")
    p.add_argument("--samples", type=int, help="readings per input per candidate (default: 100; twin-guided: 200)")
    p.add_argument("--final-samples", type=int, help="readings per input of the final start/refined measurement "
                   "on all 250 inputs (default: 1000)")
    p.add_argument("--rungs", type=int, help="ga: successive-halving rungs per generation: every candidate measured, "
                   "the better half measured again with twice the readings, ... (default: 3; 1: one measurement each)")
    p.add_argument("--max-factor", type=int, help="ga, cma: the readings per candidate double (up to this factor) "
                   "once the candidates' losses differ by less than their noise (default: 4; 1: never)")
    p.add_argument("--max-readings", type=int, help="stop before a generation that would take the run past this "
                   "many board readings (default: no limit; cma: the readings of --generations generations at "
                   "--samples)")
    p.add_argument("--scale", help=scale_help)
    p.add_argument("--temp-band", type=float, nargs=2, metavar=("LOW_K", "HIGH_K"),
                   help="pause while the board is outside this band (default: calibration temperature +- 5 K)")
    p.add_argument("--seed", type=int, default=0, help="seed of the GA and of seeded backends (default: 0)")
    p.add_argument("--full", action="store_true", help="include the best candidate's channel volts")
    add_json(p)
    p.set_defaults(func=cmd_refine)

    p = sub.add_parser("report", help="provenance of any tc-hw file; plots of a run log",
                       description=("Show who wrote a tc-hw file and from what (version, commit, command, host, "
                                    "time, board identity, calibration and program hashes, seeds): parameter "
                                    "files, calibration records, run logs and run files. For a run log also write "
                                    "PNG plots (loss, elite parameters, temperature); works while the run goes on."),
                       epilog="examples: tc-hw report run.h5 --json; tc-hw report refine-log.h5 --folder plots")
    p.add_argument("file", help="a file tc-hw wrote (.h5)")
    p.add_argument("--folder", help="where to write a run log's PNGs (default: beside the log)")
    add_json(p)
    p.set_defaults(func=cmd_report)
