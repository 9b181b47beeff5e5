"""``tc-hw emulate``, ``info`` and ``acquire``: talking to a board (or the twin) directly."""

from __future__ import annotations

import argparse

import numpy as np

from sim_backend.emulator import main as emulator_main

from ..backends import backend_for, open_device
from ..model.device import armed
from ..run import check_run, save_acquisition
from ..station import resolve
from ._common import (
    EXIT_OK,
    RESOURCE_HELP,
    add_json,
    emit,
    positive_float,
    positive_int,
)


def cmd_emulate(args) -> int:
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
    # info only reads: it does not take the board's lock, so it works beside a running program
    read_only = {} if backend_for(resolve(args.resource)[0]) == "twin" else {"read_only": True}
    dev = open_device(args.resource, **read_only)
    try:
        info = _device_summary(dev)
    finally:
        dev.close()
    emit(
        args,
        info,
        f"{info['identity']}\n  {info['technology']} board: {info['nodes']} nodes, {info['inputs']} inputs, "
        f"{info['channels']} channels {info['channels_by_kind']}, tau = {info['tau_s']:g} s, T = {info['temperature_k']:.2f} K",
    )
    return EXIT_OK


#: the largest acquisition the acquire command asks for (samples per input, seconds per reading)
#: (the twin integrates every step: 1 ms is already 1000 node time constants of the default board)
MAX_SAMPLES, MAX_TIME_S = 10**6, 1e-3


def _parse_sets(items) -> dict:
    out = {}
    for item in items or []:
        ch, sep, volts = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects CH=VOLTS, got {item!r}")
        try:
            c, v = int(ch), float(volts)
        except ValueError:
            raise ValueError(f"--set expects CH=VOLTS with a whole channel number and a number, got {item!r}") from None
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError(f"--set {item!r}: volts must be a finite number")
        out[c] = v
    return out


def cmd_acquire(args) -> int:
    sets = _parse_sets(args.set)  # checked before the board is opened
    if args.samples > MAX_SAMPLES or args.time > MAX_TIME_S:
        raise ValueError(f"acquire: at most {MAX_SAMPLES} samples and {MAX_TIME_S:g} s per reading "
                         f"(got {args.samples}, {args.time!r} s)")
    if args.out:  # refuse a bad --out before the board is touched

        check_run(samples=args.samples, time_s=args.time, mode=args.mode, batch=None, out=args.out,
                  overwrite=args.overwrite)
    dev = open_device(args.resource)
    try:
        volts = np.zeros(len(dev.channel_map))
        for ch, v in sets.items():
            if not 0 <= ch < len(volts):
                raise ValueError(f"channel {ch} does not exist (board has {len(volts)})")
            volts[ch] = v
        dev.set_channels(volts)
        dev.set_inputs(np.zeros((1, dev.n_inputs)))
        with armed(dev):
            acq = dev.acquire(args.mode, args.time, args.samples)
        if args.out:
            save_acquisition(args.out, dev, acq, volts, overwrite=args.overwrite, resource=args.resource)
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
        "std_v": (x.std(0, ddof=1) if len(x) > 1 else np.full(x.shape[1], np.nan)).tolist(),  # NaN -> null
        "out": args.out,
    }
    lines = [f"{args.mode} acquisition, t = {args.time:g} s, {args.samples} samples ({dev.identity}):"]
    lines += [f"  node {n:3d}: mean {m:+.5f} V  std {sd:.5f} V" for n, m, sd in zip(acq.nodes, result["mean_v"], result["std_v"])]
    emit(args, result, "\n".join(lines))
    return EXIT_OK


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "emulate",
        help="run a board emulator (its own process) on 127.0.0.1 and/or a pty",
        description="Start the board emulator; all arguments go to it (see `tc-hw emulate --help`).",
        add_help=False,
    )
    p.add_argument("emulator_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_emulate)

    p = sub.add_parser("info", help="identity and size of a board", description="Query a board's identity, technology and channel counts.")
    p.add_argument("--resource", required=True, help=RESOURCE_HELP)
    add_json(p)
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
    p.add_argument("--resource", required=True, help=RESOURCE_HELP)
    p.add_argument("--mode", choices=["reset", "serial"], default="reset", help="sampling mode (default: reset)")
    p.add_argument("--time", type=positive_float, default=1e-6,
                   help="observation time / interval, seconds, > 0 and at most 1e-3 (default: 1e-6)")
    p.add_argument("--samples", type=positive_int, default=200,
                   help="samples per input vector, >= 1; the std needs 2 (default: 200)")
    p.add_argument("--set", nargs="*", metavar="CH=VOLTS", help="channel voltages (others are 0 V)")
    p.add_argument("--out", help="also write the samples, channel volts and provenance to this run file (.h5, the "
                   "layout of `tc-hw run`; node units = volts as read, no calibration)")
    p.add_argument("--overwrite", "--force", action="store_true", help="replace an existing --out")
    add_json(p)
    p.set_defaults(func=cmd_acquire)
