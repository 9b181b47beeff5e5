"""The demo's stages on the board: calibrate, local pass, upload and refine.

* :func:`_calibrate`: refuse an unsuitable board, then :func:`calibration.calibrate` with
  :data:`QUICK_CALIBRATION` (warning first on a slow line, :func:`_warn_slow_line`);
* :func:`_local_stage`: save the board-coordinate program and run the local pass at its voltages
  (:data:`LOCAL_PASS`, :func:`_local_calibration`, :func:`_through_local`) on the board as
  calibrated; returns :class:`Staged`;
* :func:`_on_the_board` (after the embedded board aged, :mod:`tc_hw.demo.session`): upload with
  nominal gains (:func:`_nominal_loss`), through the calibration's curves alone and with the local
  pass, then refine (:data:`DEMO_METHOD`, :data:`REFINE_SIZES`, :data:`GA_SECONDS`); returns
  :class:`BoardFigures`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import calibration
from calibration.local import local_pass
from calibration.mapping import MappingError, channel_values
from calibration.scale import fitting_scale

from ..model import seeds
from ..model.files import save_params
from ..refine import RefineConfig, measure_cos_loss, refine
from .common import _say
from .plan import board_computer
from .training import Choice, Trained

#: Calibration settings of the demo: fewer samples than a full calibration (a few minutes here).
QUICK_CALIBRATION = dict(chains=128, samples=256)

#: The local pass after training (:func:`calibration.local.local_pass`): the program's channels
#: measured at the program's own voltages (one Q, one R, one B-and-W setting and one per matching
#: of the couplings, each ``chains`` x ``samples`` readings), each curve shifted through the
#: combined value.  The quick calibration's curves miss by several of their own sigmas where a
#: curve kinks or bends between its levels; a program sitting there is uploaded off by that much
#: (zoo board 880007: four such channels carried over half of the upload's excess over the twin).
LOCAL_PASS = dict(chains=256, samples=512, repeats=1)

#: Wall-time budget of the GA generations (the final measurements come on top).
GA_SECONDS = 60.0

#: The demo's analog refinement (``refine_options={"method": ...}`` chooses another).  On the aged
#: board (:data:`DEMO_AGE_H`) the gap left after the readout fit is a few tenths of the twin's
#: loss, below what 10 GA generations of 25 x 200 readings per candidate resolve (seed 0: the GA's
#: best measured worse than the start); twin-guided steps (the board's output means, the twin's
#: Jacobian) close it with fewer readings.
DEMO_METHOD = "twin-guided"

#: Refinement sizes per method (population, points per generation, readings per point).
REFINE_SIZES = {"ga": dict(population=10, elites=3, points=25, samples=200),
                "cma": dict(population=10, elites=3, points=25, samples=200),
                "twin-guided": dict(points=50, samples=200)}


@dataclass
class BoardFigures:
    """What the board measured: the upload report, the upload losses and the refinement."""

    upload: dict
    nominal_loss: float | None
    calibrated_loss: float
    refined: dict
    config: object
    local: dict | None = None  #: the local pass's report (``curves_upload_loss``: the upload through the curves alone)


def _calibrate(dev, folder: Path, calibration_options, progress: bool, timings: dict):
    """Refuse an unsuitable board (:func:`board_computer`), then calibrate it; returns ``(cal, summary)``."""

    base, _ = board_computer(dev.channel_map)  # refuses an unsuitable board before calibrating
    _warn_slow_line(dev, calibration_options or QUICK_CALIBRATION, len(base.network.outputs))
    _say(progress, f"calibrating {dev.identity} ({dev.n_nodes} nodes, {dev.n_channels} channels)")
    t = time.monotonic()
    opts = QUICK_CALIBRATION if calibration_options is None else calibration_options
    cal, cal_summary = calibration.calibrate(dev, folder / "cal.h5", progress=progress, **opts)
    timings["calibrate_s"] = time.monotonic() - t
    return cal, cal_summary


def _warn_slow_line(dev, cal_opts: dict, n_out: int) -> None:
    """Say so when the board is on a line too slow for the demo's data (e.g. a 115200-baud serial line)."""
    session = getattr(dev, "session", None)
    bps = getattr(getattr(session, "transport", None), "bytes_per_second", None)
    if not bps or bps >= 1e6:
        return
    cmap = dev.channel_map
    n = dev.n_nodes
    deg = np.bincount([x for c in cmap if c.kind == "C" for x in (c.a, c.b)], minlength=n).max(initial=0)
    levels = 8 if any(c.period > 0 for c in cmap) else 6
    acquisitions = 2 + 4 + 21 + int(deg) * levels
    cal_mb = acquisitions * cal_opts.get("chains", 128) * cal_opts.get("samples", 256) * n * 2 / 1e6
    meas_mb = 250 * 1000 * n_out * 2 / 1e6
    minutes = (cal_mb + 5 * meas_mb) * 1e6 / bps / 60
    print(f"tc-hw demo: warning: the board is on a slow line ({bps / 1e3:.1f} kB/s): calibration moves about "
          f"{cal_mb:.0f} MB of ADC codes and each of the five 250 x 1000 measurements {meas_mb:.0f} MB, about "
          f"{minutes:.0f} minutes of transfer; a socket connection (TCPIP::host::port::SOCKET) is much faster",
          file=sys.stderr, flush=True)


def _local_calibration(dev, program, cal, options: dict | None, progress: bool, timings: dict, folder=None):
    """The local pass (:data:`LOCAL_PASS`, :func:`calibration.local.local_pass`) at ``program``'s
    voltages through ``cal``; returns ``(calibration to upload through, report or None)``; the
    per-channel points go to ``<folder>/local_pass.json``."""
    opts = {**LOCAL_PASS, **(options or {})}
    if opts.pop("skip", False):
        return cal, None
    cmap = dev.channel_map
    volts = calibration.map_params(program, cal, cmap)
    _, src = channel_values(program, cmap)
    used = [c.index for c in cmap if src[c.index][1] is not None]
    _say(progress, f"local pass: measuring the program's {len(used)} channels at its own voltages")
    t = time.monotonic()
    say = (lambda text: _say(progress, text)) if progress else None
    local, rep = local_pass(dev, cal, volts, used, progress=say, **opts)
    timings["local_pass_s"] = time.monotonic() - t
    if folder is not None:  # the per-channel points on their own (the summary keeps the per-kind figures)
        (Path(folder) / "local_pass.json").write_text(json.dumps(rep.pop("points")))
    return local, rep


def _through_local(dev, tr: Trained, cal_local, cal_curves, local: dict, progress: bool):
    """The program to upload through the locally corrected calibration: a shifted curve may reach
    less far than the program's value, so the least smaller coordinate scale that fits (the
    measured voltages move by as little); where none fits (an element the program needs at 0 no
    longer reaches 0), the calibration's curves alone, said in ``local["not_used"]``.
    Returns ``(calibration, program)`` and sets ``local["coordinate_scale"]``."""
    try:
        lam = min(tr.scale, fitting_scale(tr.on_board, dev.channel_map, cal_local, margin=0.999))
        program = tr.on_board.rescaled(lam)
        calibration.map_params(program, cal_local, dev.channel_map)
    except MappingError as e:
        _say(progress, f"the locally corrected calibration cannot hold the program ({e}); uploading through the "
                       "calibration's curves alone")
        local["not_used"], local["coordinate_scale"] = str(e), tr.scale
        return cal_curves, tr.on_board.rescaled(tr.scale)
    local["coordinate_scale"] = lam
    return cal_local, program


@dataclass
class Staged:
    """The program as the calibration stage leaves it: ``program`` to upload through ``cal``
    (after the local pass, when it ran), ``curves_program`` through ``cal_curves`` alone, and the
    local pass's report (``None`` when skipped)."""

    program: object
    cal: object
    curves_program: object
    cal_curves: object
    local: dict | None


def _local_stage(dev, choice: Choice, cal, folder: Path, local_options, progress: bool, timings: dict) -> Staged:
    """Save the board-coordinate program and run the local pass at its voltages, on the board as
    calibrated (before the embedded board ages): the local pass is part of the calibration."""

    tr, a_in = choice.trained, choice.plan.input_scale
    if tr.on_board is not tr.params:
        save_params(tr.on_board, folder / "cos_board.h5",
                    {"method": tr.metrics.get("method", "direct"), "task": "cos",
                     "board_nodes": list(map(int, choice.nodes)), "input_scale": a_in})
    program = tr.on_board.rescaled(tr.scale)
    cal_local, local = _local_calibration(dev, program, cal, local_options, progress, timings, folder)
    if local is None:
        return Staged(program, cal, program, cal, None)
    cal_used, program_used = _through_local(dev, tr, cal_local, cal, local, progress)
    return Staged(program_used, cal_used, program, cal, local)


def _on_the_board(dev, choice: Choice, staged: Staged, seed: int, generations: int, ga_seconds: float,
                  refine_options, progress: bool, timings: dict, folder: Path) -> BoardFigures:
    """Upload the program with nominal gains, through the calibration's curves alone and through
    the calibration with the local pass (same noise), then refine it (through the latter)."""

    tr, a_in = choice.trained, choice.plan.input_scale
    program, cal, curves_program, cal_curves, local = (staged.program, staged.cal, staged.curves_program,
                                                       staged.cal_curves, staged.local)
    _say(progress, f"uploading (coordinate scale {tr.scale:.3f}) with nominal gains, then through the calibration")
    t = time.monotonic()
    paired_seed = seeds.derive(seed, seeds.DEMO, 4)  # nominal and calibrated: the same noise
    nominal_loss = _nominal_loss(dev, curves_program, calibration, paired_seed, a_in)
    curves_loss = None
    if local is not None:
        curves_loss = measure_cos_loss(dev, curves_program, cal_curves, seed=paired_seed, input_scale=a_in)
        local["curves_upload_loss"] = curves_loss
    upload = calibration.upload(dev, program, cal)
    calibrated_loss = measure_cos_loss(dev, program, cal, seed=paired_seed, input_scale=a_in)
    timings["upload_s"] = time.monotonic() - t
    opts = dict(refine_options or {})
    method = opts.pop("method", DEMO_METHOD)
    _say(progress, f"refining on the board (least-squares readout, then at most {generations} generations "
                   f"or {ga_seconds:.0f} s of {method})")
    t = time.monotonic()
    sizes = {**REFINE_SIZES[method], **opts}
    cfg = RefineConfig(method=method, generations=generations, seed=seed, max_seconds=ga_seconds, input_scale=a_in,
                       **sizes)
    refined = refine(dev, program, cal, folder / "run.h5", cfg, progress=progress)
    timings["refine_s"] = time.monotonic() - t
    return BoardFigures(upload, nominal_loss, calibrated_loss, refined, cfg, local)


def _nominal_loss(dev, program, calibration, seed, input_scale) -> float | None:
    """The board's loss with nominal gains, or None where the nominal map cannot hold the program
    (nominal reach is narrower than the calibrated one, e.g. on a board with large offsets)."""


    try:
        return measure_cos_loss(dev, program, calibration.nominal(dev.channel_map), seed=seed, input_scale=input_scale)
    except MappingError as e:
        print(f"tc-hw demo: no upload with nominal gains: {e}", file=sys.stderr)
        return None
