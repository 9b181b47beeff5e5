"""``tc-hw train``: train a computer on the twin (or on its model) and save the parameters."""

from __future__ import annotations

import argparse

from ..model.files import check_params_target
from ..train.cos import train_cos_ga
from ..train.direct import DirectConfig, train_cos_direct, train_mnist_direct
from ..train.generative import generate_png, train_generative
from ..train.om import train_mnist_om
from ._cluster import add_cluster_option, train_cos_on_cluster
from ._common import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    add_json,
    check_input_file,
    check_output_file,
    emit,
    positive_int,
)

#: task -> methods, the first being the default
METHODS = {"mnist": ("om", "direct"), "cos": ("ga", "direct"), "generate": ("reverse",)}


def _train_mnist(args):
    if args.method == "om":
        return train_mnist_om(method=args.solver, out=args.out, seed=args.seed, progress=not args.json)

    cfg = DirectConfig(seed=args.seed, **({"epochs": args.epochs} if args.epochs else {}))
    return train_mnist_direct(out=args.out, init=args.init, cfg=cfg, progress=not args.json)


def _train_cos(args):
    if args.method == "ga":
        sizes = {k: getattr(args, k) for k in ("population", "points", "samples") if getattr(args, k)}

        def train(evaluate=None):
            return train_cos_ga(args.generations, mode=args.mode, seed=args.seed, out=args.out,
                                progress=not args.json, evaluate=evaluate, **sizes)

        if getattr(args, "cluster", None):
            return train_cos_on_cluster(args, train)
        return train()

    return train_cos_direct(out=args.out, seed=args.seed, mode=args.mode, progress=not args.json,
                            **({"iterations": args.epochs} if args.epochs else {}))


def _train_generative(args):
    return train_generative(digits=args.digits, out=args.out, seed=args.seed, progress=not args.json)


def cmd_generate(args) -> int:
    check_input_file(args.params, "--params")
    check_output_file(args.png, "--png")

    r = generate_png(args.params, args.n, args.png, seed=args.seed, teacher=args.teacher, progress=not args.json)
    emit(args, {k: v for k, v in r.items() if isinstance(v, (int, float, str, list, dict))},
         f"{args.n} samples from {args.params} -> {args.png} (mean heat {r.get('heat_kT', float('nan')):.3g} kT)")
    return EXIT_OK


def _parse_digits(text: str) -> list[int]:
    try:
        digits = [int(d) for d in text.split(",")]
    except ValueError:
        raise ValueError(f"--digits {text!r}: expected digits 0-9 separated by commas, e.g. 0,1,2") from None
    if not digits or any(not 0 <= d <= 9 for d in digits) or len(set(digits)) != len(digits):
        raise ValueError(f"--digits {text!r}: expected distinct digits 0-9 separated by commas")
    return digits


def cmd_train(args) -> int:
    method = args.method or METHODS[args.task][0]
    if method not in METHODS[args.task]:
        print(f"tc-hw train: task {args.task!r} has methods {', '.join(METHODS[args.task])}, not {method!r}")
        return EXIT_BAD_INPUT
    args.method = method
    if getattr(args, "cluster", None) and (args.task, method) != ("cos", "ga"):
        raise ValueError(f"--cluster: only --task cos --method ga evaluates populations on a cluster, not "
                         f"{args.task}/{method}")

    check_output_file(args.out, "--out")
    check_params_target(args.out)  # never a calibration record or run log; before any training
    if args.init is not None:
        check_input_file(args.init, "--init")
    if args.task == "generate":
        _parse_digits(args.digits)
    run = {"mnist": _train_mnist, "cos": _train_cos, "generate": _train_generative}[args.task]
    _, result = run(args)
    result = {k: v for k, v in result.items() if k != "history"}
    shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()
                      if k not in ("out", "plots", "config"))
    emit(args, result, f"tc-hw train --task {args.task} --method {method}: {shown}\n"
                       f"  parameters: {result.get('out')}\n  plots: {', '.join(result.get('plots', []))}\n"
                       f"Next: tc-hw evaluate --params {result.get('out')} --task {args.task} --samples 10")
    return EXIT_OK


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a computer on the twin and save its parameters",
        description=(
            "Train a thermodynamic computer and write its parameters (HDF5, with provenance) and PNG "
            "plots next to --out. Tasks and methods:\n"
            "  mnist/om      Onsager-Machlup teacher-student (arXiv 2509.15324): a 784-32-32-10 teacher, "
            "idealised trajectories, exact least squares (--solver lstsq) or Adam (--solver gd)\n"
            "  mnist/direct  back-propagation through the stochastic dynamics at the observation time\n"
            "  cos/ga        the genetic algorithm of the out-of-equilibrium paper on cos(2 pi z), 8x4 layered network\n"
            "  cos/direct    the same network trained through its dynamics\n"
            "  generate      generative computer (arXiv 2506.15121): reverse-path action on MNIST --digits"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  tc-hw train --task mnist --method om --out om.h5 --json\n"
            "  tc-hw train --task cos --method ga --generations 100 --out cos.h5 --json"
        ),
    )
    p.add_argument("--task", required=True, choices=sorted(METHODS), help="what to learn")
    p.add_argument("--method", help="training method (default: om for mnist, ga for cos)")
    p.add_argument("--out", required=True, help="parameter file to write (.h5); plots go next to it")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same result (default: 0)")
    p.add_argument("--solver", choices=["lstsq", "gd"], default="lstsq",
                   help="om: exact least squares or Adam on the action (default: lstsq)")
    p.add_argument("--init", help="direct: start from this parameter file (e.g. the om result)")
    p.add_argument("--epochs", type=positive_int, help="direct: passes over the data (mnist) or iterations (cos)")
    p.add_argument("--generations", type=positive_int, default=300, help="ga: generations (default: 300; 100 barely moves the loss)")
    p.add_argument("--population", type=positive_int, help="ga: candidates per generation (default: 50)")
    p.add_argument("--points", type=positive_int, help="ga: inputs z per generation")
    p.add_argument("--samples", type=positive_int, help="ga: samples per input")
    p.add_argument("--mode", choices=["reset", "serial"], default="reset", help="cos: sampling mode (default: reset)")
    p.add_argument("--digits", default="0,1,2", help="generate: MNIST digits to learn (default: 0,1,2)")
    add_cluster_option(p)
    add_json(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", help="generate images with a trained generative computer",
                       description="Evolve the trained computer from thermal noise on the twin and write a grid of samples.",
                       epilog="example: tc-hw generate --params gen.h5 --n 64 --png grid.png")
    p.add_argument("--params", required=True, help="generative parameter file from `tc-hw train --task generate`")
    p.add_argument("--n", type=positive_int, default=64, help="samples (default: 64)")
    p.add_argument("--png", required=True, help="grid image to write")
    p.add_argument("--teacher", help="classifier file to label each tile (default: none)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    add_json(p)
    p.set_defaults(func=cmd_generate)
