"""Refinement methods on boards with an analog gap: how much of the gap each closes, for how many readings.

Scenarios (:mod:`tc_hw.scenarios`, ``docs/scenarios.md``): ``aged``, ``crosstalk`` and ``tau``
are the emulator's default board with one non-ideality, calibrated by a perfect routine at
calibration time (:func:`tc_hw.scenarios.truth_calibration`: exact for the curves it models,
blind to later drift, crosstalk and per-node time constants), running the benchmark's cos
computer (8 x 4 layered, 3 read-out nodes, trained on the twin, then observed at the time that
gives its best twin loss: :func:`tc_hw.scenarios.fit_observation_time`; by default the stored one,
:data:`DEFAULT_PROGRAM`, on which ``docs/scenarios.md`` measured every gap; ``--train`` trains a
fresh one, whose gaps differ: the crosstalk gap depends on the program), with every crossbar weight
negative (:meth:`~tc_hw.model.params.Params.one_polarity`: an exact change of sign of some nodes, so
that same-sign crosstalk adds up along the crossbar instead of cancelling), rescaled to fit.
``zoo`` (``zoo:SEED``) is a zoo board calibrated by the real routine (the demo's quick settings)
running the demo's program for it (:func:`tc_hw.scenarios.zoo_program`); ``control`` is the
default board calibrated now (no gap).  ``--board-seed`` draws the default-board scenarios anew.

For every method (``twin-guided``, ``ga``, ``cma``) a ``refine`` run starts from the calibrated
upload; then a **fresh** final measurement (``250 inputs x 1000 readings``, seeds not used by
the run) gives:

``twin_loss``      the program on the twin (dt 1e-3; zoo: with the board's calibrated per-node time
                   constants and the exact least-squares readout on the twin): the mean of
                   ``TWIN_REPEATS`` measurements of 250 x 1000 on fresh noise (one has a standard
                   error of about 2e-4, a third of the unbiased loss; the mean's is
                   ``twin_loss_se``), as the reference of every ratio;
``start_loss``     the calibrated upload with the least-squares readout the run fitted on the board;
``refined_loss``   the program the run kept;
                   all three **unbiased** (:func:`tc_hw.model.tasks.cos_loss_unbiased`): each input's
                   squared error less the variance of its mean answer, ``s^2 / 1000``.  That sampling
                   term (about 0.0015 here, two thirds of the twin's plain loss) is the same for every
                   program and no analog change removes it; the plain losses are ``*_loss_1000``;
``gap_closed``     ``(start - refined) / (start - twin)`` (the same with either loss, up to noise);
``readings``       board readings the run took: start measurement, generations and the final
                   comparison of the start with the method's best (``search_readings``: without it);
``seconds``        wall time of the run.

One JSON object per (scenario, method) with ``--json``.  ``--quick`` runs a reduced version
(fewer generations, 250 x 200 final measurement, a shorter training) for checks.

Usage: ``python benchmarks/refine_methods.py [--json] [--quick] [--scenarios aged,tau,zoo:880019]
[--methods twin-guided,ga] [--program cos.h5 | --train] [--work DIR] [--board-seed N] [--zoo-cal cal.h5]
[--port 57300]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tc_hw.model import seeds

METHODS = ("twin-guided", "ga", "cma")
SCENARIO_NAMES = ("aged", "crosstalk", "tau", "zoo")
#: The benchmark's cos program (:func:`train_program`'s training of an earlier version, time-fitted).
DEFAULT_PROGRAM = Path(__file__).resolve().parents[1] / "tests" / "data" / "cos_program.h5"
#: Twin measurements (250 x 1000 each) averaged for the reference ``twin_loss``.
TWIN_REPEATS = 8

#: Run sizes per method (full, quick).  GA and CMA get at most ~20x the readings of twin-guided.
SIZES = {
    "twin-guided": ({"generations": 16, "points": 50, "samples": 200}, {"generations": 4, "points": 40, "samples": 200}),
    # the noise-aware GA (successive halving over 3 rungs, readings growing to 4x, mutations moving the
    # outputs by 0.45 sqrt(start loss)) until 11 M readings, then the start and the GA's best compared with
    # 250 x 4000 readings each (the keep test): 12.9 M in all (twin-guided 1.56 M with its final comparison: 8.3x)
    "ga": ({"generations": 1000, "population": 20, "elites": 5, "points": 25, "samples": 100, "rungs": 3,
            "max_factor": 4, "subspace_step": 0.45, "max_readings": 11_000_000, "keep_samples": 4000},
           {"generations": 8, "population": 12, "elites": 3, "points": 25, "samples": 100}),
    # CMA-ES with growing readings per candidate (up to 4x): 240 base generations, 12.2 M readings
    "cma": ({"generations": 240, "population": 20, "points": 25, "samples": 100},
            {"generations": 8, "population": 12, "points": 25, "samples": 100}),
}


def train_program(out: Path, quick: bool) -> Path:
    """The cos computer (8 x 4 layered, read out from 3 nodes of the last layer), trained on the twin,
    then observed at the time that gives its best twin loss (:func:`tc_hw.scenarios.fit_observation_time`)."""
    from tc_hw.model.files import save_params
    from tc_hw.model.network import Network, layered
    from tc_hw.model.params import Params
    from tc_hw.scenarios import fit_observation_time
    from tc_hw.train.direct import train_cos_direct

    net = layered(8, 4, 1)
    net3 = Network(net.n_nodes, net.edges, net.n_inputs, net.crossbar, net.outputs[:3], layers=net.layers)
    base = Params.uniform(net3, 1.0, 0.0, 1.0, kT=0.1, readout=np.zeros((1, 3)))
    trained, _ = train_cos_direct(iterations=400 if quick else 1600, points=20, samples=16, bound=2.4, restarts=4,
                                  eval_samples=500, progress=False, base=base)
    program, table = fit_observation_time(trained, samples=200 if quick else 1000,
                                          seed=seeds.derive(0, seeds.BENCHMARK, 2))
    save_params(program, out, {"task": "cos", "observation_time_losses": json.dumps(table)})
    return out


def run_scenario(name: str, program_file: Path, methods, quick: bool, work: Path, seed: int = 0, port: int = 0,
                 board_seed: int | None = None, zoo_cal: Path | None = None):
    """Yield one row per method (as each finishes) for scenario ``name`` (``zoo`` or ``zoo:SEED``:
    a zoo board, calibrated by the real routine, running the demo's own program for it)."""
    from sim_backend.emulator.process import running_emulator
    from tc_hw.backends import open_device
    from tc_hw.scenarios import zoo_seed

    final = (250, 200) if quick else (250, 1000)
    folder = work / name.replace(":", "-")
    folder.mkdir(parents=True, exist_ok=True)
    zoo = zoo_seed(name)
    board = _zoo_board_file(zoo, folder) if zoo is not None else _scenario_board_file(name, folder, board_seed)
    extra = ("--port", str(port)) if port else ()
    with running_emulator(board=board, workdir=folder, extra_args=extra) as emu:
        dev = open_device(emu.ready["tcp"])
        try:
            setup = (_zoo_setup(dev, folder, seed, zoo_cal) if zoo is not None
                     else _truth_setup(name, dev, emu, program_file))
            yield from _methods(name, dev, setup, methods, quick, final, folder, seed)
        finally:
            dev.close()


def _scenario_board_file(name: str, folder: Path, board_seed: int | None) -> Path:
    from tc_hw.scenarios import write_board

    return write_board(name, folder, board_seed)


def _zoo_board_file(zoo: int, folder: Path) -> Path:
    from tc_hw.scenarios import write_zoo_board

    return write_zoo_board(zoo, folder)


def _truth_setup(name: str, dev, emu, program_file: Path) -> dict:
    """Program, calibration and input scale of a scenario board: the benchmark's cos program, rescaled
    to fit, through the calibration a perfect routine would have made at calibration time."""
    from calibration.scale import fitting_scale
    from sim_backend.emulator.truth import load_truth
    from tc_hw.model.files import load_params
    from tc_hw.scenarios import SCENARIOS, truth_calibration

    sc = SCENARIOS[name]
    cal = truth_calibration(load_truth(emu.truth_file), dev.channel_map, dev.identity, age_h=sc.age_h,
                            temp_step_k=sc.temp_step_k)
    params = load_params(program_file).one_polarity(-1.0)
    program = params.rescaled(fitting_scale(params, dev.channel_map, cal))
    return {"program": program, "cal": cal, "input_scale": 1.0, "twin_program": program,
            "description": sc.description}


def _zoo_setup(dev, folder: Path, seed: int, zoo_cal: Path | None = None) -> dict:
    """A zoo board as an operator meets it: calibrated by :func:`calibration.calibrate` (the demo's
    quick settings) and running the demo's program for it (planned on the calibration, trained on
    the twin with the board's calibrated per-node time constants)."""
    import calibration
    from tc_hw.scenarios import zoo_program
    from tc_hw.train.cos import readout_lstsq

    z = zoo_program(dev, folder, seed, cal=None if zoo_cal is None else calibration.load(zoo_cal))
    # the twin reference with its exact least-squares readout, as the board's start gets one fitted on the
    # board (the weak-board training ends with a readout tolerant of element errors, not the exact one)
    twin = readout_lstsq(z["twin_program"], points=250, samples=1000, seed=seeds.derive(seed, seeds.BENCHMARK, 3))
    return {**z, "twin_program": twin,
            "description": f"zoo board {dev.identity}: calibrated by the routine, the demo's program"}


def _methods(name, dev, setup, methods, quick, final, folder: Path, seed: int):
    """One refine run per method from the same start, each followed by a fresh final measurement."""
    from tc_hw.refine import RefineConfig, gap_closed, measure_cos_losses, refine

    program, cal, a_in = setup["program"], setup["cal"], setup["input_scale"]
    (twin_1000, twin), twin_se = _twin_losses(setup["twin_program"], final, seed)
    for method in methods:
        cfg = RefineConfig(method=method, seed=seed, final_points=final[0], final_samples=final[1],
                           input_scale=a_in, **SIZES[method][int(quick)])
        t0 = time.monotonic()
        r = refine(dev, program, cal, folder / f"{method}.h5", cfg, progress=False)
        seconds = time.monotonic() - t0
        # a fresh final measurement (seeds and noise the run never saw)
        start_1000, start = measure_cos_losses(dev, program, cal, points=final[0], samples=final[1],
                                               seed=seeds.derive(seed, seeds.BENCHMARK, 0), input_scale=a_in,
                                               volts=_start_volts(program, cal, dev),
                                               readout=_start_readout(r, program))
        refined_1000, refined = measure_cos_losses(dev, program, cal, points=final[0], samples=final[1],
                                                   seed=seeds.derive(seed, seeds.BENCHMARK, 1), input_scale=a_in,
                                                   volts=np.asarray(r["best_volts"]),
                                                   readout=np.asarray(r["best_readout"]))
        yield {"scenario": name, "method": method, "twin_loss": twin, "start_loss": start,
               "refined_loss": refined, "gap_closed": gap_closed(twin, start, refined),
               "twin_loss_1000": twin_1000, "start_loss_1000": start_1000, "refined_loss_1000": refined_1000,
               "twin_loss_se": twin_se,
               "readings": r["readings"] + r["final_readings"], "search_readings": r["readings"],
               "seconds": round(seconds, 1), "kept": r["kept"],
               "generations": r["generations"], "run_start_loss": r["start_loss"],
               "run_refined_loss": r["refined_loss"], "description": setup["description"]}


def _twin_losses(program, final, seed: int) -> tuple:
    """``((plain, unbiased) mean losses, standard error of the unbiased mean)`` of ``program`` on the twin
    over :data:`TWIN_REPEATS` measurements of ``final`` = (inputs, readings) on independent noise."""
    from tc_hw.train.cos import twin_cos_losses

    runs = np.array([twin_cos_losses(program, points=final[0], samples=final[1],
                                     seed=seeds.derive(seed, seeds.BENCHMARK, 10 + k)) for k in range(TWIN_REPEATS)])
    return tuple(float(v) for v in runs.mean(axis=0)), float(runs[:, 1].std(ddof=1) / np.sqrt(len(runs)))


def _start_volts(program, cal, dev) -> np.ndarray:
    from calibration import map_params

    return map_params(program, cal, dev.channel_map)


def _start_readout(r: dict, program) -> np.ndarray:
    from tc_hw.model.runlog import read_log

    fit = read_log(r["log"])["config"].get("readout_fit")
    return np.asarray(fit if fit is not None else program.readout[0], float)


def _known(name: str) -> bool:
    """A scenario of this benchmark: one of :data:`tc_hw.scenarios.SCENARIOS`, ``zoo`` or ``zoo:SEED``."""
    from tc_hw.scenarios import SCENARIOS, zoo_seed

    try:
        return name in SCENARIOS or zoo_seed(name) is not None
    except ValueError:
        return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="one JSON object per (scenario, method)")
    ap.add_argument("--quick", action="store_true", help="reduced sizes for a check (minutes, not an hour)")
    ap.add_argument("--scenarios", default=",".join(SCENARIO_NAMES), help="comma-separated (default: aged,crosstalk,tau,zoo; also control, classify and zoo:SEED)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: twin-guided,ga,cma)")
    ap.add_argument("--program", default=str(DEFAULT_PROGRAM),
                    help="cos program (.h5) of the default-board scenarios (default: the stored benchmark program)")
    ap.add_argument("--train", action="store_true", help="train a fresh cos program instead (about 2 minutes)")
    ap.add_argument("--work", help="folder for boards, logs and the program (default: a temporary one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--board-seed", type=int, default=None,
                    help="another draw of the scenario boards (their board seed; default: the default board's)")
    ap.add_argument("--zoo-cal", help="the zoo board's calibration record from an earlier run (the routine's "
                                      "cal.h5), used instead of calibrating again")
    ap.add_argument("--port", type=int, default=0,
                    help="first loopback TCP port of the emulators (one per scenario, in order; 0: the OS picks)")
    ap.add_argument("--generations", type=int, help="generations of ga and cma (default: ga until 13 M readings, "
                    "cma 240 base generations; quick 8)")
    args = ap.parse_args(argv)
    if args.generations is not None:
        if args.generations < 1:
            print("refine_methods: --generations must be >= 1", file=sys.stderr)
            return 2
        for m in ("ga", "cma"):
            SIZES[m][int(args.quick)]["generations"] = args.generations
    methods = [m for m in args.methods.split(",") if m]
    scenarios = [s for s in args.scenarios.split(",") if s]
    bad = [m for m in methods if m not in METHODS] + [s for s in scenarios if not _known(s)]
    if bad:
        print(f"refine_methods: unknown {bad}", file=sys.stderr)
        return 2
    truth_scenarios = [s for s in scenarios if not s.startswith("zoo")]
    if truth_scenarios and not args.train and not Path(args.program).is_file():
        print(f"refine_methods: no program file {args.program}", file=sys.stderr)
        return 2
    work = Path(args.work or tempfile.mkdtemp(prefix="refine-methods-"))
    work.mkdir(parents=True, exist_ok=True)
    program = (train_program(work / "cos.h5", args.quick) if args.train and truth_scenarios else Path(args.program))
    for i, name in enumerate(scenarios):
        port = args.port + i if args.port else 0
        for row in run_scenario(name, program, methods, args.quick, work, args.seed, port, args.board_seed,
                                Path(args.zoo_cal) if args.zoo_cal else None):
            row["board_seed"] = None if name.startswith("zoo") else args.board_seed
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                print(f"{row['scenario']:10s} {row['method']:12s} twin {row['twin_loss']:.4f} start "
                      f"{row['start_loss']:.4f} refined {row['refined_loss']:.4f} gap closed "
                      f"{'-' if row['gap_closed'] is None else format(row['gap_closed'], '.0%')} readings "
                      f"{row['readings']} ({row['seconds']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
