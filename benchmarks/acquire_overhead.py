"""Where the time of one board acquisition goes: emulator compute vs driver, transport, parsing.

A 96-node emulated board (preset ``layered96``, its own process on 127.0.0.1) acquires 100 input
vectors x 100 samples in reset mode at ``--time`` seconds (default one time constant) through
the real PyVISA driver (:class:`drivers.board.TCBoard`).  The emulator reports the seconds it
spent computing (``DIAG:COMP?``, an emulator diagnostic), so

    overhead_s = total_s - emulator_compute_s

is everything the stack adds: SCPI round trips, error-queue checks, the int16 block transfer
and its decoding.  The same acquisition is then fetched as comma-separated text (``FORM ASC``,
the emulator's baseline of what ASCII bulk transfer would cost) in the same run.

Usage: ``python benchmarks/acquire_overhead.py [--json] [--repeats N] [--time S]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from drivers.board import open_visa
from sim_backend.emulator.process import running_emulator
from tc_hw.model.device import armed

P, M = 100, 100


def _compute_s(board) -> float:
    return board.session.query("DIAG:COMP?", float)


def binary_acquisition(board, time_s: float) -> dict:
    """One ``board.acquire`` (the driver's normal path: int16 blocks); timings in seconds."""
    c0 = _compute_s(board)
    t0 = time.perf_counter()
    acq = board.acquire("reset", time_s, M)
    total = time.perf_counter() - t0
    compute = _compute_s(board) - c0
    return {"total_s": total, "emulator_compute_s": compute, "bytes": int(acq.codes.nbytes), "calls": acq.meta["calls"]}


def ascii_acquisition(board, time_s: float) -> dict:
    """The same acquisition with ``FETC?`` as text: INIT, ``*OPC?``, then one long line to parse."""
    s = board.session
    n = board.n_nodes
    c0 = _compute_s(board)
    t0 = time.perf_counter()
    s.write(f"ACQ:MODE RESET;ACQ:TIME {time_s!r};ACQ:COUNT {M};ACQ:NODES ALL")
    s.write("INIT")
    s.query("*OPC?", str, timeout_s=120)
    s.write("FORM ASC")
    try:
        text = s.query("FETC?", str, timeout_s=120)
    finally:
        s.write("FORM INT")
    codes = np.fromstring(text, dtype=np.int16, sep=",").reshape(P, M, n)
    total = time.perf_counter() - t0
    compute = _compute_s(board) - c0
    return {"total_s": total, "emulator_compute_s": compute, "bytes": len(text) + 1, "codes": codes}


def _figures(r: dict) -> dict:
    over = r["total_s"] - r["emulator_compute_s"]
    return {
        "total_s": round(r["total_s"], 4),
        "emulator_compute_s": round(r["emulator_compute_s"], 4),
        "overhead_s": round(over, 4),
        "overhead_fraction": round(over / r["total_s"], 4),
        "bytes": r["bytes"],
        "mb_per_s": round(r["bytes"] / 1e6 / max(over, 1e-9), 2),
    }


def run(time_s: float = 1e-6, repeats: int = 3, seed: int = 0) -> dict:
    """Start the emulator, time ``repeats`` acquisitions each way, return the figures of the run with the least overhead."""
    rng = np.random.default_rng(seed)
    with running_emulator(board="layered96", truth=False, extra_args=["--seed", str(seed)]) as emu:
        with open_visa(emu.tcp, timeout_s=30) as board:
            cmap = board.channel_map
            volts = np.zeros(board.n_channels)
            kinds = np.array([c.kind for c in cmap])
            volts[kinds == "Q"] = 0.25  # Q = R = 1 at nominal gain: every node confined
            volts[kinds == "R"] = 0.25
            board.set_channels(volts)
            board.set_inputs(rng.uniform(-1, 1, (P, board.n_inputs)))
            with armed(board):
                board.acquire("reset", time_s, 2)  # warm-up: the emulator compiles its kernel
                binary = [binary_acquisition(board, time_s) for _ in range(repeats)]
                ascii_ = [ascii_acquisition(board, time_s) for _ in range(repeats)]
                # the text path must carry the same data: re-fetch the last acquisition as a block
                same = np.array_equal(board.session.query_block("FETC?"), ascii_[-1]["codes"].astype("<i2").tobytes())
    best = lambda rs: min(rs, key=lambda r: r["total_s"] - r["emulator_compute_s"])  # noqa: E731
    out = {
        "board": "layered96",
        "nodes": board.n_nodes,
        "inputs": P,
        "samples": M,
        "time_s": time_s,
        "repeats": repeats,
        **_figures(best(binary)),
        "calls": binary[0]["calls"],
        "ascii": _figures(best(ascii_)),
        "ascii_matches_binary": bool(same),
    }
    out["ascii_over_binary_overhead"] = round(out["ascii"]["overhead_s"] / max(out["overhead_s"], 1e-9), 1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--repeats", type=int, default=3, help="acquisitions per transfer format (best is reported)")
    ap.add_argument("--time", type=float, default=1e-6, help="observation time in seconds (default 1e-6 = 1 tau)")
    args = ap.parse_args(argv)
    r = run(args.time, args.repeats)
    if args.json:
        print(json.dumps(r))
    else:
        print(
            f"96-node board, {P} inputs x {M} samples at {args.time:g} s: total {r['total_s']:.3f} s, "
            f"emulator compute {r['emulator_compute_s']:.3f} s, overhead {r['overhead_s'] * 1e3:.1f} ms "
            f"({100 * r['overhead_fraction']:.2f} %), {r['bytes'] / 1e6:.2f} MB at {r['mb_per_s']:.0f} MB/s\n"
            f"ASCII baseline: overhead {r['ascii']['overhead_s'] * 1e3:.1f} ms "
            f"({100 * r['ascii']['overhead_fraction']:.2f} %), {r['ascii']['bytes'] / 1e6:.2f} MB, "
            f"{r['ascii_over_binary_overhead']}x the binary overhead",
            file=sys.stdout,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
