"""The ``tc-hw`` command line.

Every subcommand prints a human summary by default and one JSON object with ``--json``.
Exit codes: 0 success, 2 bad input (arguments, files, parameters), 3 device fault (connection,
timeout, board error), 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_DEVICE = 0, 1, 2, 3

#: Observation settings of the published MNIST computer (arXiv 2509.15324).
MNIST_DEFAULTS = {"time": 0.2, "dt": 1e-3}


def _emit(args, result: dict, human: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(result))
    else:
        print(human)


def evaluate_mnist(params, samples: int, seed: int, time_obs: float, dt: float, progress: bool = True) -> dict:
    """Evaluate ``params`` on the 10,000 MNIST test digits on the twin; returns metrics.

    Each digit gets ``samples`` independent trajectories of length ``time_obs`` from x = 0; the
    output nodes at ``time_obs`` are averaged over samples before the argmax.
    """
    from tqdm import tqdm

    from sim_backend.twin import sample_reset

    from .tasks import mnist_inputs, score_classification

    inputs, labels = mnist_inputs("test")
    t0 = time.perf_counter()
    outs, heat = [], []
    for m in tqdm(range(samples), desc="twin: MNIST test set", unit="sample", disable=not progress, file=sys.stderr):
        run = sample_reset(
            params, inputs, time_obs, 1, dt=dt, seed=seed, nodes=params.network.outputs, energy=True, sample_offset=m
        )
        outs.append(run.x[:, :, 0, :])
        heat.append(run.heat_kT)
    seconds = time.perf_counter() - t0
    score = score_classification(params, np.concatenate(outs, axis=1), labels)
    return {
        "task": "mnist",
        **score.as_dict(),
        "samples": samples,
        "seed": seed,
        "time": time_obs,
        "dt": dt,
        "heat_per_inference_kT": float(np.concatenate(heat, axis=1).mean()),
        "seconds": seconds,
    }


def cmd_evaluate(args) -> int:
    from .files import load_params

    params = load_params(args.params, format=args.format)
    if args.task != "mnist":
        raise ValueError(f"unknown task {args.task!r}")
    defaults = MNIST_DEFAULTS
    result = evaluate_mnist(
        params,
        args.samples,
        args.seed,
        args.time if args.time is not None else defaults["time"],
        args.dt if args.dt is not None else defaults["dt"],
        progress=not args.json,
    )
    _emit(
        args,
        result,
        f"MNIST test set ({result['n']} digits, {args.samples} samples each, t = {result['time']}, dt = {result['dt']}):\n"
        f"  top-1 {100 * result['top1']:.2f} %   top-2 {100 * result['top2']:.2f} %\n"
        f"  heat per inference {result['heat_per_inference_kT']:.3g} kT   ({result['seconds']:.1f} s on the twin)",
    )
    return EXIT_OK


def cmd_demo(args) -> int:
    from .data.thermo_gd import load_published

    params = load_published()
    result = evaluate_mnist(
        params, args.samples, args.seed, MNIST_DEFAULTS["time"], MNIST_DEFAULTS["dt"], progress=not args.json
    )
    _emit(
        args,
        result,
        "tc-hw demo: the published 784/64/10 thermodynamic computer (arXiv 2509.15324) on the twin\n"
        f"  MNIST test set top-1 {100 * result['top1']:.2f} %, top-2 {100 * result['top2']:.2f} % "
        f"({args.samples} samples per digit, {result['seconds']:.1f} s)\n"
        f"  heat per inference {result['heat_per_inference_kT']:.3g} kT\n"
        "Next: `tc-hw evaluate --help` to evaluate your own parameter file.",
    )
    return EXIT_OK


def cmd_emulate(args) -> int:
    from sim_backend.emulator import main as emulator_main

    return emulator_main(args.emulator_args)


def _device_summary(dev) -> dict:
    kinds = {}
    for ch in dev.channel_map:
        kinds[ch.kind] = kinds.get(ch.kind, 0) + 1
    return {
        "identity": dev.identity,
        "technology": dev.technology,
        "nodes": dev.n_nodes,
        "inputs": dev.n_inputs,
        "channels": len(dev.channel_map),
        "channels_by_kind": kinds,
        "tau_s": dev.tau_s,
        "temperature_k": dev.temperature(),
    }


def cmd_info(args) -> int:
    from .backends import open_device

    dev = open_device(args.resource)
    try:
        info = _device_summary(dev)
    finally:
        dev.close()
    _emit(
        args,
        info,
        f"{info['identity']}\n  {info['technology']} board: {info['nodes']} nodes, {info['inputs']} inputs, "
        f"{info['channels']} channels {info['channels_by_kind']}, tau = {info['tau_s']:g} s, T = {info['temperature_k']:.2f} K",
    )
    return EXIT_OK


def _parse_sets(items) -> dict:
    out = {}
    for item in items or []:
        ch, sep, volts = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects CH=VOLTS, got {item!r}")
        out[int(ch)] = float(volts)
    return out


def cmd_acquire(args) -> int:
    from .backends import open_device
    from .device import armed

    dev = open_device(args.resource)
    try:
        volts = np.zeros(len(dev.channel_map))
        for ch, v in _parse_sets(args.set).items():
            if not 0 <= ch < len(volts):
                raise ValueError(f"channel {ch} does not exist (board has {len(volts)})")
            volts[ch] = v
        dev.set_channels(volts)
        dev.set_inputs(np.zeros((1, dev.n_inputs)))
        with armed(dev):
            acq = dev.acquire(args.mode, args.time, args.samples)
    finally:
        dev.close()
    x = acq.volts[0]
    result = {
        "identity": dev.identity,
        "mode": args.mode,
        "time_s": args.time,
        "samples": args.samples,
        "nodes": acq.nodes.tolist(),
        "mean_v": x.mean(0).tolist(),
        "std_v": x.std(0, ddof=1).tolist(),
    }
    lines = [f"{args.mode} acquisition, t = {args.time:g} s, {args.samples} samples ({dev.identity}):"]
    lines += [f"  node {n:3d}: mean {m:+.5f} V  std {sd:.5f} V" for n, m, sd in zip(acq.nodes, result["mean_v"], result["std_v"])]
    _emit(args, result, "\n".join(lines))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tc-hw",
        description="Control stack for analog thermodynamic computers: numerical twin, boards, calibration, training.",
        epilog="Run `tc-hw COMMAND --help` for each command's options and examples.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "evaluate",
        help="evaluate a parameter file on a task on the twin",
        description=(
            "Run a trained thermodynamic computer on the numerical twin and score it. For MNIST the "
            "10,000 test digits are normalised as in arXiv 2509.15324, each digit is run `--samples` "
            "times from x = 0 for `--time`, and the averaged output nodes are classified by argmax."
        ),
        epilog=(
            "example: tc-hw evaluate --params ../shared/data/thermo_gd/parameters.dat "
            "--format thermo_gd --task mnist --samples 10 --seed 1 --json"
        ),
    )
    p.add_argument("--params", required=True, help="parameter file (.h5, .json, or the published .dat)")
    p.add_argument("--format", choices=["hdf5", "json", "thermo_gd"], help="file format (default: from the extension)")
    p.add_argument("--task", default="mnist", choices=["mnist"], help="task to score (default: mnist)")
    p.add_argument("--samples", type=int, default=1, help="trajectories per input, averaged (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same numbers (default: 0)")
    p.add_argument("--time", type=float, help="observation time in units of 1/mobility (default: 0.2 for mnist)")
    p.add_argument("--dt", type=float, help="time step (default: 1e-3)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "demo",
        help="run the main job on the embedded default",
        description="Evaluate the published MNIST thermodynamic computer on the twin and print its accuracy.",
    )
    p.add_argument("--samples", type=int, default=1, help="trajectories per digit (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "emulate",
        help="run a board emulator (its own process) on 127.0.0.1 and/or a pty",
        description="Start the board emulator; all arguments go to it (see `tc-hw emulate --help`).",
        add_help=False,
    )
    p.add_argument("emulator_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_emulate)

    resource_help = "board resource: TCPIP0::127.0.0.1::5025::SOCKET, ASRL/dev/pts/N::INSTR, /dev/ttyX, or twin"
    p = sub.add_parser("info", help="identity and size of a board", description="Query a board's identity, technology and channel counts.")
    p.add_argument("--resource", required=True, help=resource_help)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "acquire",
        help="program channels, acquire, print per-node mean and std",
        description=(
            "Program every channel to 0 V except those given with --set, apply one zero input vector, "
            "acquire and print per-node mean and standard deviation in volts. Unsafe voltages are refused."
        ),
        epilog="example: tc-hw acquire --resource twin --mode reset --time 1e-6 --samples 200 --set 0=1.0 32=1.0 --json",
    )
    p.add_argument("--resource", required=True, help=resource_help)
    p.add_argument("--mode", choices=["reset", "serial"], default="reset", help="sampling mode (default: reset)")
    p.add_argument("--time", type=float, default=1e-6, help="observation time / interval, seconds (default: 1e-6)")
    p.add_argument("--samples", type=int, default=200, help="samples per input vector (default: 200)")
    p.add_argument("--set", nargs="*", metavar="CH=VOLTS", help="channel voltages (others are 0 V)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=cmd_acquire)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``tc-hw`` console command; returns the exit code."""
    from .device import DeviceError
    from .params import ParamsError

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["emulate"]:  # everything after `emulate` belongs to the emulator
        return cmd_emulate(argparse.Namespace(emulator_args=argv[1:]))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return args.func(args)
    except (DeviceError, ConnectionError, TimeoutError) as e:
        print(f"tc-hw: device fault: {e}", file=sys.stderr)
        return EXIT_DEVICE
    except (ParamsError, ValueError, FileNotFoundError, KeyError) as e:
        print(f"tc-hw: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
