"""How many DAC bits do the couplings of a generative computer need?

Trains (or loads) the generative computer of :mod:`tc_hw.train.generative`, quantises its
couplings to ``b`` bits (symmetric max-scaled grid, one full scale per block: visible-hidden and
hidden-hidden; biases kept), generates the same number of samples from the same noise for every
``b`` and lets the teacher score them.  Writes ``<out>.png`` (classified fraction, smallest class
fraction and inverted fraction against bits) and prints one JSON object.

    python benchmarks/generative_bits.py --out gen_bits.png [--params gen.h5] [--samples 200]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from tc_hw.train import generative as G
from tc_hw.model import seeds


def run(params=None, digits=(0, 1, 2), bits=(2, 3, 4, 5, 6, 8, 10, 12), samples: int = 200, seed: int = 0,
        out="gen_bits.png", teacher=None, progress: bool = False) -> dict:
    from tc_hw.model.plotting import figure, save
    from tc_hw.train.teacher import Teacher, get_teacher

    t0 = time.perf_counter()
    tch = teacher if isinstance(teacher, Teacher) else get_teacher(teacher or G.default_teacher_path(),
                                                                   progress=progress)
    digits = G._check_digits(digits)
    if params is None:
        params, res = G.train_generative(digits, seed=seed, progress=progress, teacher=tch, samples=16)
        enc, t_f = G.Encoding.of(G.GenerativeConfig(**res["config"])), res["config"]["t_f"]
    else:
        params, enc, prov = G.load_generative(params)
        digits = G._check_digits(prov.get("digits", ",".join(map(str, digits))))
        t_f = float(prov.get("t_f", G.GenerativeConfig.t_f))
    images, _ = G.select_images(digits, 1, seed)
    reference = enc.encode(images).mean(0)
    x0 = G.uncoupled_equilibrium(params, samples, seeds.rng(seed, seeds.BENCHMARK, 0))
    rows = []
    for b in [None, *sorted(bits, reverse=True)]:
        p = params if b is None else G.quantise_couplings(params, b)
        x, heat = G.generate(p, samples, seeds.derive(seed, seeds.BENCHMARK, 1), t_f=t_f, x0=x0, progress=progress)
        v = G.classify_samples(tch, x, digits, encoding=enc, reference=reference)
        rows.append({"bits": b, "classified_fraction": v["classified_fraction"],
                     "min_class_fraction": min(v["class_fractions"].values()),
                     "class_fractions": v["class_fractions"], "inverted_fraction": v["inverted_fraction"],
                     "heat_kT": float(np.mean(heat))})
    ref, q = rows[0], rows[1:]
    fig, ax = figure()
    bs = [r["bits"] for r in q]
    for key, style, name in (("classified_fraction", "o-", "confidently classified (p >= 0.9)"),
                             ("min_class_fraction", "s-", "smallest class fraction"),
                             ("inverted_fraction", "^-", "contrast-inverted")):
        line, = ax.plot(bs, [r[key] for r in q], style, label=name)
        ax.axhline(ref[key], color=line.get_color(), ls=":", lw=1)
    ax.set_xlabel("coupling resolution (bits, symmetric max-scaled grid)")
    ax.set_ylabel(f"fraction of {samples} samples")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"generated digits {','.join(map(str, digits))}: quality vs coupling bits "
                 "(dotted: float couplings)", fontsize=8)
    ax.legend(loc="center right", fontsize=7)
    png = save(fig, out)
    return {"digits": list(digits), "samples": samples, "float": ref, "quantised": q, "png": str(png),
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", help="trained generative computer (default: train one, digits 0,1,2)")
    ap.add_argument("--digits", default="0,1,2")
    ap.add_argument("--bits", default="2,3,4,5,6,8,10,12")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="gen_bits.png")
    args = ap.parse_args(argv)
    res = run(args.params, args.digits, [int(b) for b in args.bits.split(",")], args.samples, args.seed,
              Path(args.out), progress=sys.stderr.isatty())
    print(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
