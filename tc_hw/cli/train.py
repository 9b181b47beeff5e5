"""``tc-hw train``: train a computer on the twin (or on its model) and save the parameters."""

from __future__ import annotations

from ._common import EXIT_BAD_INPUT, EXIT_OK, add_json, emit

#: task -> methods, the first being the default
METHODS = {"mnist": ("om", "direct"), "cos": ("ga", "direct")}


def _train_mnist(args):
    if args.method == "om":
        from ..train.om import train_mnist_om

        return train_mnist_om(method=args.solver, out=args.out, seed=args.seed, progress=not args.json)
    from ..train.direct import DirectConfig, train_mnist_direct

    cfg = DirectConfig(seed=args.seed, **({"epochs": args.epochs} if args.epochs else {}))
    return train_mnist_direct(out=args.out, init=args.init, cfg=cfg, progress=not args.json)


def _train_cos(args):
    if args.method == "ga":
        from ..train.cos import train_cos_ga

        sizes = {k: getattr(args, k) for k in ("population", "points", "samples") if getattr(args, k)}
        return train_cos_ga(args.generations, mode=args.mode, seed=args.seed, out=args.out,
                            progress=not args.json, **sizes)
    from ..train.direct import train_cos_direct

    return train_cos_direct(out=args.out, seed=args.seed, mode=args.mode, progress=not args.json,
                            **({"iterations": args.epochs} if args.epochs else {}))


def cmd_train(args) -> int:
    method = args.method or METHODS[args.task][0]
    if method not in METHODS[args.task]:
        print(f"tc-hw train: task {args.task!r} has methods {', '.join(METHODS[args.task])}, not {method!r}")
        return EXIT_BAD_INPUT
    args.method = method
    _, result = (_train_mnist if args.task == "mnist" else _train_cos)(args)
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
            "  cos/direct    the same network trained through its dynamics"
        ),
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
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
    p.add_argument("--epochs", type=int, help="direct: passes over the data (mnist) or iterations (cos)")
    p.add_argument("--generations", type=int, default=300, help="ga: generations (default: 300; 100 barely moves the loss)")
    p.add_argument("--population", type=int, help="ga: candidates per generation (default: 50)")
    p.add_argument("--points", type=int, help="ga: inputs z per generation")
    p.add_argument("--samples", type=int, help="ga: samples per input")
    p.add_argument("--mode", choices=["reset", "serial"], default="reset", help="cos: sampling mode (default: reset)")
    add_json(p)
    p.set_defaults(func=cmd_train)
