"""``--cluster`` and ``--station`` of ``tc-hw train``, ``calibrate`` and ``refine`` (tc_hw.cluster).

Only parsing and printing: the work is :mod:`tc_hw.cluster`'s.  Without these options the
commands run exactly as before.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from .. import cluster
from ..model import provenance
from ..model.files import load_params
from ..refine import gap_closed, twin_task_loss
from ..station import boards, calibrate_options, cluster_address
from ..train.cos import twin_cos_loss
from ._common import EXIT_DEVICE, EXIT_OK, emit

CLUSTER_HELP = ("run on a Ray cluster: 'local' starts one on this machine (one worker per core), "
                "HOST:PORT (or 'auto') joins a running one; default: the station file's [cluster] address, else "
                "no cluster. Results are bitwise those without it; needs pip install 'tc-hw[cluster]' "
                "(docs/cluster.md)")
STATION_HELP = ("station file (TOML) naming several boards ([board.NAME] resource = ...): work on all of them, "
                "in parallel with --cluster (docs/cluster.md)")


def add_cluster_option(p) -> None:
    p.add_argument("--cluster", metavar="ADDRESS|local", help=CLUSTER_HELP)


def add_station_option(p) -> None:
    p.add_argument("--station", metavar="FILE", help=STATION_HELP)


def board_or_station(args, *, out_required: bool = False) -> None:
    """Refuse (ValueError, exit 2) anything but exactly one of --resource and --station, and
    --cluster with one --resource."""
    if bool(getattr(args, "resource", None)) == bool(getattr(args, "station", None)):
        raise ValueError("give either --resource (one board) or --station (every board of a station file)")
    if args.resource and getattr(args, "cluster", None):
        raise ValueError("--cluster spreads the boards of a --station over a cluster; with one --resource there "
                         "is nothing to spread (leave --cluster out)")
    if out_required and args.resource and not args.out:
        raise ValueError("--out: the calibration record to write is required with --resource")


@contextmanager
def joined(address: str, boards: int = 0):
    """The cluster ``address`` joined (or started: then stopped at the end) for the block."""

    info = cluster.connect(address, boards=boards)
    try:
        yield info
    finally:
        if info["started"]:
            cluster.shutdown()


def _argv() -> list:

    return list(provenance.noted().get("argv") or [])


# ------------------------------------------------------------------------------------- train


def train_cos_on_cluster(args, train):
    """``train(evaluate=...)`` (a ``train_cos_ga`` call) with every population evaluated on ``--cluster``.

    The GA, its checkpoint and the result file stay here; the result gets ``cluster`` (workers,
    batches, retries and their events), also stored as the JSON attribute ``cluster`` of an
    HDF5 result file.
    """

    with joined(args.cluster) as info:
        ev = cluster.ClusterEvaluator(max(1, info["cpus"]))
        params, result = train(evaluate=ev)
    result["cluster"] = {"address": args.cluster, **ev.summary()}
    out = Path(args.out)
    if out.suffix.lower() in (".h5", ".hdf5") and out.is_file():
        import h5py

        with h5py.File(out, "a") as f:
            f.attrs["cluster"] = json.dumps(result["cluster"])
    return params, result


def evaluate_mnist_on_cluster(args, params, time_obs: float, dt: float) -> dict:
    """``tc-hw evaluate --cluster``: the ``--samples`` runs per digit spread over the workers."""

    with joined(args.cluster) as info:
        ev = cluster.ClusterEvaluator(max(1, min(info["cpus"], args.samples)))
        result = cluster.evaluate_mnist_on_cluster(params, args.samples, args.seed, time_obs, dt, ev)
    result["cluster"]["address"] = args.cluster
    return result


# ---------------------------------------------------------------------------------- calibrate


def _station(args) -> tuple[dict, str | None]:

    st = boards(args.station)
    if not st:
        raise ValueError(f"--station {args.station}: names no boards ([board.NAME] with resource = \"...\")")
    return st, args.cluster or cluster_address(args.station)


def _run_on_station(address, n_boards: int, work):
    """``work(parallel)`` on a joined cluster with ``board`` resources, or one board after another."""
    if not address:
        return work(False)
    with joined(address, boards=n_boards) as info:
        if info["boards"] < 1:
            raise ValueError(f"--cluster {address}: no node offers the 'board' resource; start the nodes the boards "
                             "are plugged into with: ray start --resources '{\"board\": 1}'")
        return work(True)


def calibrate_station(args) -> int:
    """``tc-hw calibrate --station``: one calibration record per board (exit 3 if any board failed)."""

    st, address = _station(args)
    folder = Path(args.out) if args.out else Path(args.station).resolve().parent
    options = calibrate_options(args.station)
    r = _run_on_station(address, len(st), lambda parallel: cluster.station_calibrate(
        st, folder, options, parallel=parallel, argv=_argv()))
    r["cluster"] = address
    lines = [f"calibrated {len(r['boards'])} of {len(st)} boards" + (f" on cluster {address}" if address else "")]
    lines += [f"  {name}: {s.get('channels_ok', '?')} channels ok -> {s['out']}" for name, s in r["boards"].items()]
    lines += [f"  {name}: FAILED {msg}" for name, msg in r["errors"].items()]
    emit(args, r, "\n".join(lines))
    return EXIT_DEVICE if r["errors"] else EXIT_OK


# ------------------------------------------------------------------------------------- refine


def refine_station(args, cfg, task) -> int:
    """``tc-hw refine --station``: refine the program on every board, one run log each."""

    st, address = _station(args)
    r = _run_on_station(address, len(st), lambda parallel: cluster.station_refine(
        st, args.params, args.log, cfg, cal=args.cal, task=task, resume=args.resume, scale=args.scale,
        parallel=parallel, argv=_argv()))
    if task == "cos":
        twin = {"loss": twin_cos_loss(_params(args), points=cfg.final_points, samples=cfg.final_samples,
                                      seed=args.seed)}
    else:
        twin = twin_task_loss(_params(args), task, samples=cfg.final_samples, seed=args.seed)
    for res in r["boards"].values():
        res["twin_loss"] = twin["loss"]
        res["gap_closed"] = gap_closed(twin["loss"], res["start_loss"], res["refined_loss"])
        if not args.full:
            res.pop("best_volts", None)
    r["cluster"] = address
    lines = [f"refined on {len(r['boards'])} of {len(st)} boards" + (f" on cluster {address}" if address else "")
             + f" (twin loss {twin['loss']:.4g})"]
    lines += [f"  {name}: start {res['start_loss']:.4g} -> refined {res['refined_loss']:.4g}, log {res['log']}"
              for name, res in r["boards"].items()]
    lines += [f"  {name}: FAILED {msg}" for name, msg in r["errors"].items()]
    emit(args, r, "\n".join(lines))
    return EXIT_DEVICE if r["errors"] else EXIT_OK


def _params(args):

    return load_params(args.params)
