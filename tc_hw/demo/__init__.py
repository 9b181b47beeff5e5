"""The whole operator's loop on one board, as ``tc-hw demo`` runs it.

1. start an emulated board as its own process (the embedded default with crosstalk and slow
   drift, which neither the twin nor the calibration model), unless a ``resource`` is given;
2. calibrate it through its commands (:func:`calibration.calibrate`); the embedded board then
   runs :data:`DEMO_AGE_H` hours before the program goes on (emulator key ``age_h``): its
   elements drift away from the calibration, the gap that refinement is for;
3. lay the cos(2 pi z) computer out on the board's own coupling graph (:func:`board_computer`:
   up to 4 layers of up to 8 nodes, reached from input line 0; on the default board this is the
   paper's 8x4 layered computer), choose element bounds from the calibrated reach
   (:func:`plan_for_board`) and train it on the twin (direct training), once more with a
   larger coordinate scale if its nodes would reach the board's rails; on a board whose elements
   are weak relative to kT (the default plan at its smallest scale) a 2-layer computer of quartic
   wells instead (:func:`plan_for_weak_board`), read after :data:`WEAK_RELAXATIONS` relaxation
   times of the wells (:func:`weak_mobility`), trained by variable projection
   (:func:`tc_hw.train.cos.train_cos_varpro`); the twin's loss is that of the program on the
   board's own calibrated per-node time constants (:func:`calibration.mapping.on_board_mobility`);
4. measure the program's channels at its own voltages (:func:`calibration.local.local_pass`), then
   upload it with nominal gains, through the calibration's curves alone and with the local pass,
   measuring the board's loss each way;
5. refine it on the board (:func:`tc_hw.refine.refine`: least-squares readout, then the analog
   program by :data:`DEMO_METHOD`, then the best of start, fitted readout and the method's best
   measured together), logging every generation;
6. write the report: PNG plots and ``report.md`` with the figures, the gap to the twin and how
   much of it each step closed (:func:`gap_steps`: calibration, readout fit, analog refinement).

A board that cannot run it (fewer than 32 nodes, no input line, an input that reaches no
coupled node, element ranges no coordinate scale fits) is refused with :class:`DemoError`
saying why (``tc-hw demo`` exits with 2).

The package, by role (every name is importable from ``tc_hw.demo`` as before):

* :mod:`tc_hw.demo.common`: the refusals (:class:`DemoError`, :class:`NotLearnedError`,
  :data:`LEARNED_LOSS`) and the progress lines;
* :mod:`tc_hw.demo.plan`: the computer on the board's graph and the plan that makes it fit
  (:func:`board_computer`, :func:`embed`, :func:`plan_for_board`);
* :mod:`tc_hw.demo.weak`: the weak-board computer (:func:`plan_for_weak_board`,
  :func:`weak_mobility`, :func:`weak_field_sigma`);
* :mod:`tc_hw.demo.training`: training on the twin and choosing the program (step 3);
* :mod:`tc_hw.demo.session`: the embedded board, calibrated and then aged, or a given one;
* :mod:`tc_hw.demo.stages`: calibrate, local pass, upload and refine (steps 2, 4, 5);
* :mod:`tc_hw.demo.summary`: the summary, :func:`gap_steps` and ``report.md`` (step 6);
* here: :func:`run_demo`, the loop.
"""

# ruff: noqa: F401  (re-exports: every name of the former tc_hw/demo.py stays importable from here)

from __future__ import annotations

import json
import time
from pathlib import Path

from ..backends import open_device
from ..run import safe_node_volts
from .common import (
    LEARNED_LOSS,
    LOSS_READOUT,
    DemoError,
    NotLearnedError,
    _bound_text,
    _check_board_learned,
    _check_twin_learned,
    _say,
    _write_failure,
)
from .plan import (
    _KIND_FIELD,
    _POWER,
    _SLACK,
    BOUND,
    DEPTH,
    MAX_INPUT_SCALE,
    MIN_NODES,
    MIN_SCALE,
    WIDTH,
    BoardPlan,
    _channel_reach,
    _is_weak,
    board_computer,
    embed,
    plan_for_board,
)
from .session import (
    DEMO_AGE_H,
    DEMO_BOARD,
    _board,
    _demo_board,
    _EmbeddedBoard,
    _GivenBoard,
)
from .stages import (
    DEMO_METHOD,
    GA_SECONDS,
    LOCAL_PASS,
    QUICK_CALIBRATION,
    REFINE_SIZES,
    BoardFigures,
    Staged,
    _calibrate,
    _local_calibration,
    _local_stage,
    _nominal_loss,
    _on_the_board,
    _through_local,
    _warn_slow_line,
)
from .summary import _KEPT, _gap_table, _pct, _summary, _write_markdown, gap_steps
from .training import (
    SCALE_STEP,
    WEAK_STEP,
    WEAK_TRAINING,
    Choice,
    Trained,
    _attempt,
    _board_score,
    _choose_program,
    _learn_at_smaller_scales,
    _off_the_rails,
    _train_for,
    _train_weak,
    _twin_figures,
)
from .weak import (
    WEAK_DEPTH,
    WEAK_ELEMENT_ERROR,
    WEAK_QUARTIC,
    WEAK_RELAXATIONS,
    _element_bounds,
    _read_every_node,
    plan_for_weak_board,
    quartic_relaxation_time,
    weak_field_sigma,
    weak_mobility,
)

__all__ = ["run_demo", "DEMO_BOARD", "DemoError", "NotLearnedError", "board_computer", "plan_for_board", "BoardPlan",
           "plan_for_weak_board", "weak_mobility", "quartic_relaxation_time", "Trained", "Choice", "BoardFigures",
           "embed", "LEARNED_LOSS", "LOSS_READOUT", "gap_steps", "DEMO_AGE_H", "DEMO_METHOD", "REFINE_SIZES"]


def run_demo(folder="tc-hw-demo", resource: str | None = None, *, seed: int = 0, generations: int = 10,
             calibration_options: dict | None = None, progress: bool = True, ga_seconds: float = GA_SECONDS,
             refine_options: dict | None = None, local_options: dict | None = None) -> dict:
    """Run the loop; returns the summary (also written to ``<folder>/summary.json``).

    ``local_options``: sizes of the local pass (:data:`LOCAL_PASS`; ``{"skip": True}``: none, the
    upload goes through the calibration's curves alone)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in ("run.h5", "run.h5.ga.h5", "cal.h5", "cos_rails.h5", "cos_board.h5", "cos_weak.h5"):
        (folder / old).unlink(missing_ok=True)
    t0 = time.monotonic()
    timings = {}
    with _board(folder, resource, seed) as session:
        dev = open_device(session.resource)
        try:
            cal, cal_summary = _calibrate(dev, folder, calibration_options, progress, timings)
            t = time.monotonic()
            choice = _choose_program(dev, cal, folder, seed, progress)
            timings["train_s"] = time.monotonic() - t
            twin_loss, heat = _twin_figures(choice, cal, folder, seed, safe_node_volts(dev))
            staged = _local_stage(dev, choice, cal, folder, local_options, progress, timings)
            dev = session.after_calibration(dev, progress)  # the embedded board ages (DEMO_AGE_H)
            board = _on_the_board(dev, choice, staged, seed, generations, ga_seconds, refine_options, progress,
                                  timings, folder)
            _check_board_learned(twin_loss, board.nominal_loss, board.calibrated_loss, board.refined, folder)
        finally:
            dev.close()
    summary = _summary(resource if resource is not None else DEMO_BOARD, dev, choice, cal_summary, twin_loss, heat, board,
                       folder, {**timings, "total_s": time.monotonic() - t0})
    summary["report"] = str(_write_markdown(folder, summary))
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
