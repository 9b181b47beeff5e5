"""``tc-hw evaluate``: trained computers on the twin."""

from __future__ import annotations

from ..evaluation import MNIST_DEFAULTS, evaluate_mnist
from ..model.files import load_params
from ._cluster import add_cluster_option, evaluate_mnist_on_cluster
from ._common import EXIT_OK, add_json, emit, positive_float, positive_int

#: most integration steps (time / dt) one evaluation may ask for
MAX_STEPS = 10**7


def cmd_evaluate(args) -> int:
    if args.task != "mnist":
        raise ValueError(f"unknown task {args.task!r}")
    defaults = MNIST_DEFAULTS
    time_ = args.time if args.time is not None else defaults["time"]
    dt = args.dt if args.dt is not None else defaults["dt"]
    steps = time_ / dt
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"--time {time_:.9g} / --dt {dt:.9g} = {steps:.6g} steps; it must be 1..{MAX_STEPS:g}")
    params = load_params(args.params, format=args.format)
    if getattr(args, "cluster", None):
        result = evaluate_mnist_on_cluster(args, params, time_, dt)
    else:
        result = evaluate_mnist(params, args.samples, args.seed, time_, dt, progress=not args.json)
    emit(
        args,
        result,
        f"MNIST test set ({result['n']} digits, {args.samples} samples each, t = {result['time']}, dt = {result['dt']}):\n"
        f"  top-1 {100 * result['top1']:.2f} %   top-2 {100 * result['top2']:.2f} %\n"
        f"  heat per inference {result['heat_per_inference_kT']:.3g} kT   ({result['seconds']:.1f} s on the twin)",
    )
    return EXIT_OK


def add_parsers(sub) -> None:
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
    p.add_argument("--samples", type=positive_int, default=1, help="trajectories per input, averaged (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same numbers (default: 0)")
    p.add_argument("--time", type=positive_float, help="observation time in units of 1/mobility, > 0 "
                   "(default: 0.2 for mnist)")
    p.add_argument("--dt", type=positive_float, help="time step, > 0 and at most --time (default: 1e-3)")
    add_cluster_option(p)
    add_json(p)
    p.set_defaults(func=cmd_evaluate)
