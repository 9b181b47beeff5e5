"""Kill refinement runs with SIGKILL at random moments, resume them, compare with an unbroken run.

Each trial starts ``tc-hw refine`` on the twin backend (whose noise is seeded, so runs repeat
exactly), kills it with SIGKILL at a random moment, checks that the run log is readable, runs
``--resume`` to the end and compares the logged losses, populations and the final result with
those of an uninterrupted run made first with the same seed.

Every method (``--methods ga,cma,twin-guided``, default all three) is tried: ``--kills`` kills
per method; the report has one entry per method.

Usage: ``python benchmarks/kill_resume.py [--json] [--kills 10] [--generations 25] [--methods ga,cma]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tc_hw.model.runlog import read_log


def _program(folder: Path) -> Path:
    """A small cos program trained on the twin (bounded so that it fits the default board)."""
    from tc_hw.train.direct import train_cos_direct

    out = folder / "cos.h5"
    train_cos_direct(out=out, iterations=200, points=10, samples=8, bound=3.0, eval_samples=20, progress=False)
    return out


def _cmd(params: Path, log: Path, generations: int, resume: bool, method: str = "ga") -> list[str]:
    cmd = [sys.executable, "-m", "tc_hw.cli", "refine", "--resource", "twin", "--params", str(params),
           "--method", method,
           "--scale", "auto", "--task", "cos", "--generations", str(generations), "--population", "10",
           "--points", "10", "--samples", "20", "--final-samples", "20", "--log", str(log), "--seed", "5", "--json"]
    return cmd + (["--resume"] if resume else [])


def _run(cmd, timeout=600) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def _same(a: dict, b: dict) -> bool:
    keys = ("losses", "population", "elite_losses", "best_loss", "best")
    return a["completed_generations"] == b["completed_generations"] and all(
        np.array_equal(a[k], b[k], equal_nan=True) for k in keys)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--generations", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    ap.add_argument("--methods", default="ga,cma,twin-guided", help="methods to try (default: all three)")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    t_start = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="tc-kill-"))
    params = _program(folder)
    reports = {}
    for method in [m for m in args.methods.split(",") if m]:
        reports[method] = _trial(method, params, folder, args.generations, args.kills, rng)
    ok = all(r["unreadable"] == 0 and r["mismatched"] == 0 for r in reports.values())
    report = {"methods": reports, "ok": ok, "seconds": round(time.monotonic() - t_start, 1)}
    if args.json:
        print(json.dumps(report))
    else:
        for m, r in reports.items():
            print(f"{m}: {r['kills']} runs killed at random moments: {r['unreadable']} unreadable logs, "
                  f"{r['mismatched']} resumed runs differ from the uninterrupted one ({r['seconds']} s)")
    return 0 if ok else 1


def _trial(method: str, params: Path, folder: Path, generations: int, kills: int, rng) -> dict:
    """``kills`` runs of ``method`` killed at random moments and resumed, against one unbroken run."""
    t_start = time.monotonic()
    t0 = time.monotonic()
    ref_result = _run(_cmd(params, folder / f"ref-{method}.h5", generations, False, method))
    duration = time.monotonic() - t0
    ref = read_log(folder / f"ref-{method}.h5")
    unreadable = mismatched = 0
    moments = []
    for k in range(kills):
        log = folder / f"kill{k}-{method}.h5"
        proc = subprocess.Popen(_cmd(params, log, generations, False, method), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        moment = rng.uniform(0.2, 0.95) * duration
        moments.append(round(moment, 2))
        try:
            proc.wait(moment)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        if log.exists():
            try:
                read_log(log)
            except Exception:
                unreadable += 1
                continue
            result = _run(_cmd(params, log, generations, True, method))
        else:  # killed before the log was created: start again
            result = _run(_cmd(params, log, generations, False, method))
        same = _same(read_log(log), ref) and result["refined_loss"] == ref_result["refined_loss"] \
            and result["best_readout"] == ref_result["best_readout"]
        mismatched += not same
    return {"kills": kills, "unreadable": unreadable, "mismatched": mismatched,
            "seconds": round(time.monotonic() - t_start, 1), "run_seconds": round(duration, 1),
            "kill_moments_s": moments, "generations": generations}


if __name__ == "__main__":
    raise SystemExit(main())
