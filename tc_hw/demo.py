"""The whole operator's loop on one board, as ``tc-hw demo`` runs it.

1. start an emulated board as its own process (the embedded default with crosstalk and slow
   drift, which neither the twin nor the calibration model), unless a ``resource`` is given;
2. calibrate it through its commands (:func:`calibration.calibrate`);
3. train the cos(2 pi z) computer on the twin (direct training, elements bounded so that the
   program fits the board after a coordinate rescaling);
4. upload it with nominal gains and through the calibration, measuring the board's loss each way;
5. refine it on the board with the genetic algorithm, logging every generation;
6. write the report: PNG plots and ``report.md`` with the figures.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

__all__ = ["run_demo", "DEMO_BOARD"]


def _demo_board() -> str:
    from sim_backend.emulator.board import DEFAULT_BOARD_TOML

    return DEFAULT_BOARD_TOML.replace(
        "adc_noise_spread = 0.25\n",
        "adc_noise_spread = 0.25\ncrosstalk = 0.005      # not modelled by the twin or the calibration\n"
        "drift_per_hour = 0.02\n",
    ).replace('name = "default"', 'name = "demo"')


DEMO_BOARD = "default board + 0.5 % DAC crosstalk + 2 %/h element drift"

#: Calibration settings of the demo: fewer samples than a full calibration (a few minutes here).
QUICK_CALIBRATION = dict(chains=128, samples=256)


@contextmanager
def _board(folder: Path, resource: str | None, seed: int):
    if resource is not None:
        yield resource
        return
    from sim_backend.emulator.process import running_emulator

    board = folder / "demo_board.toml"
    board.write_text(_demo_board())
    with running_emulator(board=board, truth=True, workdir=folder / "emulator",
                          extra_args=["--seed", str(seed)]) as emu:
        yield emu.tcp


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"tc-hw demo: {text}", file=sys.stderr, flush=True)


def run_demo(folder="tc-hw-demo", resource: str | None = None, *, seed: int = 0, generations: int = 10,
             calibration_options: dict | None = None, progress: bool = True) -> dict:
    """Run the loop; returns the summary (also written to ``<folder>/summary.json``)."""
    import numpy as np

    import calibration
    from calibration.scale import fitting_scale
    from sim_backend.twin import sample_reset

    from .backends import open_device
    from .refine import RefineConfig, measure_cos_loss, refine
    from .report import report
    from .tasks import cos_task
    from .train.cos import twin_cos_loss
    from .train.direct import train_cos_direct

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in ("run.h5", "run.h5.ga.h5", "cal.h5"):
        (folder / old).unlink(missing_ok=True)
    t0 = time.monotonic()
    timings = {}
    with _board(folder, resource, seed) as res:
        dev = open_device(res)
        try:
            _say(progress, f"calibrating {dev.identity} ({dev.n_nodes} nodes, {dev.n_channels} channels)")
            t = time.monotonic()
            opts = QUICK_CALIBRATION if calibration_options is None else calibration_options
            cal, cal_summary = calibration.calibrate(dev, folder / "cal.h5", progress=progress, **opts)
            timings["calibrate_s"] = time.monotonic() - t

            _say(progress, "training cos(2 pi z) on the twin (direct training through the dynamics)")
            t = time.monotonic()
            params, trained = train_cos_direct(out=folder / "cos.h5", seed=seed, bound=3.0, eval_samples=200,
                                               progress=progress)
            timings["train_s"] = time.monotonic() - t
            twin_loss = twin_cos_loss(params, seed=seed)
            heat = sample_reset(params, cos_task()[0], 1.0, 200, dt=1e-3, seed=seed, energy=True,
                                nodes=params.network.outputs).heat_kT
            lam = fitting_scale(params, dev.channel_map, cal)
            program = params.rescaled(lam)

            _say(progress, f"uploading (coordinate scale {lam:.3f}) with nominal gains, then through the calibration")
            t = time.monotonic()
            nominal_loss = measure_cos_loss(dev, program, calibration.nominal(dev.channel_map), seed=seed)
            upload = calibration.upload(dev, program, cal)
            calibrated_loss = measure_cos_loss(dev, program, cal, seed=seed)
            timings["upload_s"] = time.monotonic() - t

            _say(progress, f"refining on the board for {generations} generations")
            t = time.monotonic()
            cfg = RefineConfig(generations=generations, population=10, points=25, samples=50, seed=seed)
            refined = refine(dev, program, cal, folder / "run.h5", cfg, progress=progress)
            timings["refine_s"] = time.monotonic() - t
        finally:
            dev.close()
    plots = report(folder / "run.h5")["plots"] + trained.get("plots", [])
    summary = {
        "board": res if resource is not None else DEMO_BOARD,
        "identity": upload["identity"],
        "twin_loss": twin_loss,
        "nominal_upload_loss": nominal_loss,
        "calibrated_upload_loss": calibrated_loss,
        "start_loss": refined["start_loss"],
        "refined_loss": refined["refined_loss"],
        "generations": refined["generations"],
        "energy_per_inference_kT": float(np.mean(heat)),
        "coordinate_scale": lam,
        "calibration": {k: v for k, v in cal_summary.items() if isinstance(v, (int, float, str))},
        "files": {"calibration": str(folder / "cal.h5"), "params": str(folder / "cos.h5"),
                  "run_log": str(folder / "run.h5")},
        "plots": plots,
        "seconds": {k: round(v, 1) for k, v in {**timings, "total_s": time.monotonic() - t0}.items()},
    }
    summary["report"] = str(_write_markdown(folder, summary))
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _write_markdown(folder: Path, s: dict) -> Path:
    rows = [("twin (the trained program, simulated)", s["twin_loss"]),
            ("board, nominal gains (no calibration)", s["nominal_upload_loss"]),
            ("board, through the calibration", s["calibrated_upload_loss"]),
            (f"board, after {s['generations']} generations of refinement", s["refined_loss"])]
    lines = ["# tc-hw demo report", "", f"Board: {s['board']} (`{s['identity']}`)", "",
             "| cos(2 pi z) loss, 250 inputs x 1000 samples | loss |", "|---|---|"]
    lines += [f"| {name} | {v:.4g} |" for name, v in rows]
    lines += ["", f"Energy per inference on the twin: {s['energy_per_inference_kT']:.3g} kT of heat.",
              f"Program coordinate scale on the board: {s['coordinate_scale']:.3f}.", "",
              "Time: " + ", ".join(f"{k} {v} s" for k, v in s["seconds"].items()), ""]
    lines += [f"![{Path(p).stem}]({Path(p).name})" for p in s["plots"] if Path(p).parent == folder]
    lines += ["", "Files: " + ", ".join(f"{k}: `{v}`" for k, v in s["files"].items()), ""]
    out = folder / "report.md"
    out.write_text("\n".join(lines))
    return out
