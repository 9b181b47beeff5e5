"""Any task, not only cos: refine a classification program on an emulated board with 8 input lines.

The task (a task file, docs/task-file.md): 4 classes of 8-dimensional inputs (Gaussian clusters,
seeded), loss cross-entropy, accuracy reported.  The program: the 12-node all-to-all computer of
the ``classify`` scenario board (8 hidden + 4 output nodes, every input line feeding every node),
random couplings and crossbar (a reservoir), its readout (4 x 4) fitted on the twin exactly
(multinomial logistic regression, :func:`tc_hw.refine.fit_task_readout`: logits scaled for the
cross-entropy, not a least-squares probe).  The board: the ``classify`` scenario (calibrated 4 h
ago, 1 K cooler, elements drifting up to 1.5 %/h), run as its own emulator process; the calibration
is the one a perfect routine made then (:func:`tc_hw.scenarios.truth_calibration`).

The task goes through its file (``save_task``, ``load_task``: what ``tc-hw refine --task
task.h5`` reads), and the report has the task's loss and accuracy on the twin, at the start (calibrated upload,
least-squares readout) and refined.

Usage: ``python benchmarks/refine_classify.py [--json] [--quick] [--work DIR]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from tc_hw.model import seeds


def make_task(n: int = 240, seed: int = 0):
    from tc_hw.model.tasks import Task

    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, (4, 8))
    labels = rng.integers(0, 4, n)
    inputs = centres[labels] + 0.7 * rng.normal(0.0, 1.0, (n, 8))
    return Task("clusters-8d-4class", inputs, "cross-entropy", labels=labels)


def reservoir_program(task, samples: int = 400, seed: int = 0):
    """The untrained start: random couplings and crossbar (a reservoir) with its exact readout on the twin."""
    from sim_backend.population import population_reset
    from tc_hw.model.network import all_to_all
    from tc_hw.model.params import Params
    from tc_hw.refine import fit_task_readout

    net = all_to_all(8, 4, 8)
    rng = np.random.default_rng(seed)
    n = net.n_nodes
    p = Params(net, np.ones(n), np.zeros(n), np.ones(n), rng.normal(0, 0.3, n), rng.normal(0, 0.4, net.n_edges),
               rng.normal(0, 0.6, net.n_crossbar), kT=0.5, readout=np.eye(4))
    x = population_reset([p], task.inputs, 1.0, samples, dt=1e-2, seed=seeds.derive(seed, seeds.BENCHMARK, 0),
                         nodes=net.outputs)
    xbar = np.asarray(x[0, :, :, -1, :], np.float64).mean(axis=1)
    return p.copy(readout=fit_task_readout(task, xbar))


#: Training of the classifier on the twin (tc_hw.train.task.train_task_varpro): element bound
#: (program units, kT 0.5), Adam steps, examples x runs per step.
TRAINING = dict(bound=2.0, iterations=100, batch=48, samples=8)


def make_program(task, seed: int = 0, kind: str = "trained"):
    """The program refined on the board: the reservoir (``kind="reservoir"``), or the reservoir
    trained for the task on the twin through its dynamics with the exact logistic readout
    projected out (:func:`tc_hw.train.task.train_task_varpro`; ends with the exact readout).
    Returns ``(params, training metrics or {})``."""
    from tc_hw.train.task import train_task_varpro

    start = reservoir_program(task, seed=seed)
    if kind == "reservoir":
        return start, {}
    trained, metrics = train_task_varpro(start, task, seed=seed, **TRAINING)
    metrics.pop("history")
    return trained, metrics


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quick", action="store_true", help="fewer generations")
    ap.add_argument("--work", help="folder (default: a temporary one)")
    ap.add_argument("--method", default="ga", choices=["ga", "cma"])
    ap.add_argument("--program", default="trained", choices=["trained", "reservoir"],
                    help="trained on the twin for the task (default), or the untrained reservoir")
    ap.add_argument("--board-seed", type=int, help="emulator seed (the board's hidden truth; default: the board file's)")
    args = ap.parse_args(argv)
    from calibration.scale import fitting_scale
    from sim_backend.emulator.process import running_emulator
    from sim_backend.emulator.truth import load_truth
    from tc_hw.backends import open_device
    from tc_hw.model.files import save_params
    from tc_hw.refine import RefineConfig, gap_closed, refine, twin_task_loss
    from tc_hw.scenarios import SCENARIOS, truth_calibration, write_board
    from tc_hw.model.tasks import load_task, save_task

    work = Path(args.work or tempfile.mkdtemp(prefix="refine-classify-"))
    work.mkdir(parents=True, exist_ok=True)
    save_task(make_task(), work / "task.h5")
    task = load_task(work / "task.h5")  # what an operator's --task FILE gives
    program, training = make_program(task, kind=args.program)
    save_params(program, work / "prog.h5", {"method": f"{args.program}, exact logistic readout", "task": task.name})
    sc = SCENARIOS["classify"]
    cfg = RefineConfig(method=args.method, generations=6 if args.quick else 30, population=12, elites=3, points=60,
                       samples=100, final_samples=400, seed=0)
    extra = [] if args.board_seed is None else ["--seed", str(args.board_seed)]
    with running_emulator(board=write_board("classify", work), workdir=work, extra_args=extra) as emu:
        dev = open_device(emu.ready["tcp"])
        try:
            cal = truth_calibration(load_truth(emu.truth_file), dev.channel_map, dev.identity, age_h=sc.age_h,
                                    temp_step_k=sc.temp_step_k)
            program = program.rescaled(min(1.0, fitting_scale(program, dev.channel_map, cal)))
            r = refine(dev, program, cal, work / "run.h5", cfg, progress=not args.json, task=task)
        finally:
            dev.close()
    twin = twin_task_loss(program, task, samples=cfg.final_samples)
    r.update(twin_loss=twin["loss"], twin_accuracy=twin["accuracy"],
             gap_closed=gap_closed(twin["loss"], r["start_loss"], r["refined_loss"]))
    keys = ("task", "loss_name", "twin_loss", "twin_accuracy", "start_loss", "start_accuracy", "refined_loss",
            "refined_accuracy", "gap_closed", "readings", "kept", "generations", "seconds")
    row = {"program": args.program, **{k: r.get(k) for k in keys}, "training": training}
    print(json.dumps(row) if args.json else "\n".join(f"{k}: {v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
