"""Wall time and accuracy of each MNIST training method on this machine.

Every method trains the same 784/64/10 computer from MNIST's training set and is scored on the
full test set on the twin (10 samples per digit, t = 0.2, dt = 1e-3); the published parameters
are scored the same way in the same run as the reference (``train_seconds`` 0).  One JSON object
per method is printed, one per line (``--json``).

    om-lstsq   Onsager-Machlup action minimised exactly (normal equations), teacher included
    om-gd      the same action minimised by Adam (the paper's gradient descent)
    direct     back-propagation through the stochastic dynamics, started from the om-lstsq result

Usage: ``python benchmarks/train_time.py [--json] [--methods om-lstsq,om-gd,direct] [--out DIR]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

METHODS = ("published", "om-lstsq", "om-gd", "direct")


def run_method(method: str, out: Path, seed: int = 0, direct_init=None) -> dict:
    """Train (or load) one method's parameters; returns its figures."""
    from tc_hw.evaluation import evaluate_mnist

    if method == "published":
        from tc_hw.model.data.thermo_gd import load_published

        t0 = time.perf_counter()
        m = evaluate_mnist(load_published(), 10, seed, 0.2, 1e-3, progress=False)
        return {"method": method, "top1": m["top1"], "top2": m["top2"], "train_seconds": 0.0,
                "heat_per_inference_kT": m["heat_per_inference_kT"], "eval_seconds": round(time.perf_counter() - t0, 1)}
    if method.startswith("om-"):
        from tc_hw.train.om import train_mnist_om

        _, r = train_mnist_om(method=method[3:], out=out / f"{method}.h5", seed=seed, progress=False)
    elif method == "direct":
        from tc_hw.train.direct import DirectConfig, train_mnist_direct

        _, r = train_mnist_direct(out=out / "direct.h5", init=direct_init, cfg=DirectConfig(seed=seed), progress=False)
    else:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    keep = ("top1", "top2", "train_seconds", "heat_per_inference_kT", "teacher_top1")
    return {"method": method, **{k: r[k] for k in keep if k in r}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="one JSON object per method, one per line")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    ap.add_argument("--out", help="folder for the parameter files and plots (default: a temporary folder)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="tc-train-"))
    out.mkdir(parents=True, exist_ok=True)
    for method in args.methods.split(","):
        init = out / "om-lstsq.h5" if method == "direct" and (out / "om-lstsq.h5").exists() else None
        r = run_method(method.strip(), out, args.seed, init)
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print(f"{r['method']:>10}: top-1 {100 * r['top1']:.2f} %  top-2 {100 * r['top2']:.2f} %  "
                  f"train {r['train_seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
