"""What the demo reports: the summary (``summary.json``, ``--json``), the gap table and ``report.md``.

* :func:`_summary`: every figure of a run, JSON-serialisable;
* :func:`gap_steps`: how much of the gap to the twin each step closed (calibration, readout fit,
  analog refinement), and :func:`_gap_table`, its lines in the report;
* :func:`_write_markdown`: ``report.md`` (tables, the computer, timings, plots, files).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..refine import gap_closed
from ..report import report
from ..run import safe_node_volts
from .common import LOSS_READOUT, _bound_text
from .stages import BoardFigures
from .training import Choice


def _summary(board_name: str, dev, choice: Choice, cal_summary: dict, twin_loss: float, heat, board: BoardFigures,
             folder: Path, timings: dict) -> dict:
    """The demo's summary (JSON-serialisable; ``report`` added by the caller)."""

    tr, plan, refined, cfg = choice.trained, choice.plan, board.refined, board.config
    params = tr.params
    summary = {
        "board": board_name,
        "identity": board.upload["identity"],
        "technology": dev.technology,
        "computer": {"nodes": len(choice.nodes), "layers": [len(layer) for layer in params.network.layers],
                     "outputs": len(params.network.outputs), "board_nodes": list(map(int, choice.nodes)),
                     "board_total_nodes": int(dev.n_nodes), "training_bound": plan.bound,
                     "planned_scale": plan.scale, "raised_nodes": plan.raised, "input_scale": plan.input_scale,
                     "node_extent_v": tr.extent_v, "safe_v": safe_node_volts(dev), "trainings": choice.trainings,
                     "training_method": tr.metrics.get("method", "direct"),
                     "program_mobility": float(np.mean(params.mobility))},
        "twin_loss": twin_loss,
        "loss_readout": LOSS_READOUT,
        "nominal_upload_loss": board.nominal_loss,
        "calibrated_upload_loss": board.calibrated_loss,
        "curves_upload_loss": None if board.local is None else board.local["curves_upload_loss"],
        "local_pass": board.local,
        "start_loss": refined["start_loss"],
        "uploaded_loss": refined["uploaded_loss"],
        "gap_closed": gap_closed(twin_loss, refined["start_loss"], refined["refined_loss"]),
        "gap_steps": gap_steps(twin_loss, board.nominal_loss, board.calibrated_loss, refined),
        "readout_fit_loss": refined["readout_fit_loss"],
        "ga_best_loss": refined["ga_best_loss"],
        "method": refined["method"],
        "method_best_loss": refined["method_best_loss"],
        "refined_loss": refined["refined_loss"],
        "kept": refined["kept"],
        "generations": refined["generations"],
        "refine_stop": refined["stop"],
        "refine_config": {k: getattr(cfg, k) for k in ("method", "population", "elites", "points", "samples",
                                                        "final_points", "final_samples", "max_seconds")},
        "energy_per_inference_kT": float(np.mean(heat)),
        "coordinate_scale": tr.scale if board.local is None else board.local["coordinate_scale"],
        "calibration": {k: v for k, v in cal_summary.items() if isinstance(v, (int, float, str))},
        "files": {"calibration": str(folder / "cal.h5"), "params": str(choice.file),
                  "run_log": str(folder / "run.h5")},
        "plots": report(folder / "run.h5")["plots"] + tr.metrics.get("plots", []),
        "seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    if tr.on_board is not params:
        summary["files"]["params_on_board"] = str(folder / "cos_board.h5")
    if board.local is not None:
        summary["files"]["local_pass"] = str(folder / "local_pass.json")
    return summary


def gap_steps(twin_loss: float, nominal_loss, calibrated_loss: float, refined: dict) -> dict:
    """How much of the gap to the twin each step of the loop closed (fractions; None without a gap).

    ``calibration``: of the nominal upload's gap (nominal - twin), the part the calibration closed,
    ``(nominal - calibrated) / (nominal - twin)`` (paired measurements, the same noise).  Then, of
    the calibrated upload's gap in refinement's final measurement (``uploaded_loss`` - twin; the
    uploaded program, its fitted readout and the method's best measured together): the part the
    least-squares ``readout_fit`` closed, ``(uploaded - readout fit) / (uploaded - twin)``, the
    part the analog refinement (``method``) closed on top, ``(readout fit - refined) / (uploaded -
    twin)`` (0 when the method's program was not kept), and what is ``left``, ``(refined - twin) /
    (uploaded - twin)`` (the three add up to 1; negative ``left``: better than the twin).
    """
    out = {"nominal_loss": nominal_loss, "calibrated_loss": calibrated_loss, "twin_loss": twin_loss,
           "calibration": None, "uploaded_loss": refined["uploaded_loss"], "readout_fit": None,
           "method": refined["method"], "analog_refinement": None, "left": None}
    if nominal_loss is not None and nominal_loss > twin_loss:
        out["calibration"] = (nominal_loss - calibrated_loss) / (nominal_loss - twin_loss)
    up = float(refined["uploaded_loss"])
    gap = up - twin_loss
    if not gap > 0:
        return out
    fit = up if refined.get("readout_fit_loss") is None else float(refined["readout_fit_loss"])
    after = float(refined["refined_loss"]) if refined["kept"] == refined["method"] else min(fit, up)
    out.update(readout_fit=(up - fit) / gap, analog_refinement=(fit - after) / gap,
               left=(after - twin_loss) / gap)
    return out


_KEPT = {"ga": "the genetic algorithm's best", "cma": "CMA-ES's best",
         "twin-guided": "the twin-guided (Levenberg-Marquardt) refinement's best",
         "readout fit": "the uploaded program with the least-squares readout",
         "start": "the uploaded program itself (nothing measured better)"}


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.0f} %"


def _gap_table(g: dict | None) -> list:
    """The report's lines on the gap to the twin and what each step closed (:func:`gap_steps`)."""
    if not g:
        return []
    lines = ["| the gap to the twin: what each step closed | loss | closed |", "|---|---|---|",
             f"| twin | {g['twin_loss']:.4g} | |"]
    if g["nominal_loss"] is not None:
        lines.append(f"| board, nominal gains | {g['nominal_loss']:.4g} | |")
    lines += [f"| board, through the calibration | {g['calibrated_loss']:.4g} | {_pct(g['calibration'])} of the "
              "nominal gap |",
              f"| the same, final measurement (uploaded) | {g['uploaded_loss']:.4g} | |",
              f"| least-squares readout fit | | {_pct(g['readout_fit'])} of the uploaded gap |",
              f"| analog refinement ({g['method']}) | | {_pct(g['analog_refinement'])} of the uploaded gap |",
              f"| left | | {_pct(g['left'])} |", ""]
    return lines


def _write_markdown(folder: Path, s: dict) -> Path:
    rows = [("twin (the trained program, simulated)", s["twin_loss"]),
            ("board, nominal gains (no calibration)", s["nominal_upload_loss"]),
            *([("board, through the calibration's curves alone", s["curves_upload_loss"])]
              if s.get("local_pass") else []),
            ("board, through the calibration" + (" with the local pass" if s.get("local_pass") else ""),
             s["calibrated_upload_loss"]),
            (f"board, refined: {_KEPT[s['kept']]}", s["refined_loss"])]
    lines = ["# tc-hw demo report", "", f"Board: {s['board']} (`{s['identity']}`, {s['technology']})", "",
             "| cos(2 pi z) loss, 250 inputs x 1000 samples | loss |", "|---|---|"]
    lines += [f"| {name} | {'not uploadable' if v is None else f'{v:.4g}'} |" for name, v in rows]
    rc = s["refine_config"]
    method = s.get("method", "ga")
    per = (f"population {rc['population']}, {rc['points']} inputs x {rc['samples']} samples per candidate"
           if method != "twin-guided" else f"{rc['points']} inputs x {rc['samples']} samples per trial step, the "
           "twin's Jacobian through the calibration")
    lines += ["", "Refinement: the uploaded program was measured once and its digital readout fitted to that "
              f"measurement by least squares; the analog refinement ({method}) then ran "
              f"{s['generations']} generations ({s['refine_stop']}; {per}). At the end the uploaded program, "
              f"the same with the fitted readout, and {method}'s best were measured together "
              f"({rc['final_points']} inputs x {rc['final_samples']} samples), and the best is the result:", "",
              "| measured together at the end | loss |", "|---|---|",
              f"| uploaded program | {s['uploaded_loss']:.4g} |"]
    if s["readout_fit_loss"] is not None:
        lines.append(f"| uploaded program, least-squares readout | {s['readout_fit_loss']:.4g} |")
    lines += [f"| {method}'s best | {s.get('method_best_loss', s['ga_best_loss']):.4g} |", "",
              f"Kept: {_KEPT[s['kept']]}.", ""]
    lines += ["Gap closed: " + ("none to close (the calibrated upload with its fitted readout is as good as the twin)"
                                if s.get("gap_closed") is None else
                                f"{100 * s['gap_closed']:.0f} % of (upload with fitted readout - twin)") + ".", ""]
    lines += _gap_table(s.get("gap_steps"))
    c = s["computer"]
    lines += [f"Computer: {c['nodes']} of the board's {c['board_total_nodes']} nodes, layers "
              f"{' x '.join(map(str, c['layers']))}, {c['outputs']} outputs; element bound of training "
              f"{_bound_text(c['training_bound'])}" + (f"; quartic terms raised at nodes {c['raised_nodes']} "
              "(offset elements)" if c["raised_nodes"] else "") + (f"; input line carries {c['input_scale']:.3g} z"
                                                                  if c["input_scale"] != 1.0 else "") + ".",
              f"Node values on the board up to {c['node_extent_v']:.2f} V (99.9th percentile on the twin; "
              f"kept within {c['safe_v']:.2f} V where the board's reach allows it)."
              + ("".join(f" Trained {t['file']} (bound {_bound_text(t['bound'])}, scale {t['scale']:.3f}, "
                         f"{t['node_extent_v']:.2f} V): board loss with a fitted readout "
                         f"{t['board_loss_fitted_readout']:.4g}." for t in c["trainings"])),
              f"Energy per inference on the twin: {s['energy_per_inference_kT']:.3g} kT of heat.",
              f"Program coordinate scale on the board: {s['coordinate_scale']:.3f}.", "",
              "Time: " + ", ".join(f"{k} {v} s" for k, v in s["seconds"].items()), ""]
    lines += [f"![{Path(p).stem}]({Path(p).name})" for p in s["plots"] if Path(p).parent == folder]
    lines += ["", "Files: " + ", ".join(f"{k}: `{v}`" for k, v in s["files"].items()), ""]
    out = folder / "report.md"
    out.write_text("\n".join(lines))
    return out
