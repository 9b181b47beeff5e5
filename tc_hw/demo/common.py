"""What every part of ``tc-hw demo`` shares: its refusals and how it says what it does.

* :class:`DemoError` (a board that cannot run the demo; exit 2) and :class:`NotLearnedError`
  (a program that did not learn: exit 2 on the twin, 3 on the board), with the threshold
  :data:`LEARNED_LOSS` and the checks that raise them (:func:`_check_twin_learned`,
  :func:`_check_board_learned`, which write ``failure.json``);
* :data:`LOSS_READOUT`: how every loss the demo reports is read out;
* the progress lines on stderr (:func:`_say`) and an element bound as text (:func:`_bound_text`).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

#: A program whose cos(2 pi z) loss is not below this did not learn its task (a constant output,
#: the linear plateau, has 1/2): the demo stops with :class:`NotLearnedError` instead of a result.
LEARNED_LOSS = 0.1

#: How ``twin_loss``, ``calibrated_upload_loss`` (and ``nominal_upload_loss``, ``curves_upload_loss``)
#: are read out, the same for all so that they compare: the trained readout weights, no refit.
LOSS_READOUT = ("trained readout f (no refit) applied to the mean of 1000 readings per input, "
                "250 inputs z in [0, 1]; twin and board alike")


class DemoError(ValueError):
    """This board cannot run the demo (the message says why)."""


class NotLearnedError(DemoError):
    """The trained program did not learn cos(2 pi z) (its loss is not below :data:`LEARNED_LOSS`).

    ``exit_code``: 2 when it did not learn on the twin (this board's elements cannot hold a
    working computer: nothing was uploaded), 3 when it learned on the twin but not on the board
    (a board or calibration fault); ``figures``: the losses measured so far (dict).
    """

    def __init__(self, message: str, exit_code: int, figures: dict):
        super().__init__(message)
        self.exit_code = int(exit_code)
        self.figures = dict(figures)


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"tc-hw demo: {text}", file=sys.stderr, flush=True)


def _bound_text(b) -> str:
    return f"{b:g}" if not isinstance(b, dict) else ", ".join(f"{k} {v:.3g}" for k, v in b.items())


def _check_twin_learned(twin_loss: float, plan, lam: float, extent: float, folder: Path, trainings=(),
                        v_safe: float = math.inf) -> None:
    """Raise :class:`NotLearnedError` (exit 2, nothing uploaded) for a program that did not learn on the twin."""
    if twin_loss < LEARNED_LOSS:
        return
    figures = {"twin_loss": twin_loss, "coordinate_scale": lam, "planned_scale": plan.scale,
               "training_bound": plan.bound, "input_scale": plan.input_scale, "node_extent_v": extent / lam,
               "safe_v": v_safe, "trainings": list(trainings)}
    _write_failure(folder, figures)
    tried = "; ".join(f"scale {t['scale']:.3f}: loss {t['twin_loss_training']:.3g}, nodes to "
                      f"{t['node_extent_v']:.2f} V" for t in trainings if "twin_loss_training" in t)
    raise NotLearnedError(
        f"the program trained on the twin did not learn cos(2 pi z): its loss is {twin_loss:.4g} (a constant output "
        f"has 0.5, a learned program less than {LEARNED_LOSS}) with element bounds {_bound_text(plan.bound)} (program "
        f"units, kT 0.1) at a coordinate scale of {lam:.3f}"
        + (f" (tried {tried}; safe node range {v_safe:.2f} V)" if tried else "")
        + ": this board's elements are too weak relative to kT for the demo's computer: the smaller scales that "
        "give larger bounds put its nodes beyond the safe node range (the rails); nothing was uploaded (figures in "
        f"{folder / 'failure.json'})", 2, figures)


def _check_board_learned(twin_loss, nominal_loss, calibrated_loss, refined: dict, folder: Path) -> None:
    """Raise :class:`NotLearnedError` (exit 3) when the program learned on the twin but nothing on the
    board (upload nor refinement) reaches :data:`LEARNED_LOSS`."""
    if refined["refined_loss"] < LEARNED_LOSS:
        return
    figures = {"twin_loss": twin_loss, "nominal_upload_loss": nominal_loss, "calibrated_upload_loss": calibrated_loss,
               "refined_loss": refined["refined_loss"], "kept": refined["kept"], "loss_readout": LOSS_READOUT}
    _write_failure(folder, figures)
    raise NotLearnedError(
        f"the program learned cos(2 pi z) on the twin (loss {twin_loss:.4g}) but not on the board: through the "
        f"calibration {calibrated_loss:.4g}, after refinement {refined['refined_loss']:.4g} (a learned program is "
        f"below {LEARNED_LOSS}); the board does not compute what the calibrated twin predicts: calibrate again "
        f"(tc-hw calibrate) or check the board (figures in {folder / 'failure.json'})", 3, figures)


def _write_failure(folder: Path, figures: dict) -> None:
    (Path(folder) / "failure.json").write_text(json.dumps(figures, indent=1, default=str))
