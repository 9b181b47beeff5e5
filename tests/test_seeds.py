"""One seed scheme (tc_hw.model.seeds): every sub-stream of a run is its own, and the old collisions are gone."""

from __future__ import annotations

import numpy as np
import pytest

import calibration
from calibration.scale import fitting_scale
from sim_backend.device import TwinDevice
from tc_hw.model import seeds
from tc_hw.refine import RefineConfig, refine
from tc_hw.train.cos import train_cos_ga
from tc_hw.train.direct import train_cos_direct


def test_derive_is_a_pure_function_of_seed_purpose_and_index():
    a = seeds.derive(5, seeds.REFINE_NOISE, 3)
    assert a == seeds.derive(5, seeds.REFINE_NOISE, 3)
    assert 0 <= a < 2**63
    others = {seeds.derive(6, seeds.REFINE_NOISE, 3), seeds.derive(5, seeds.COS_NOISE, 3),
              seeds.derive(5, seeds.REFINE_NOISE, 4), seeds.derive(5, seeds.REFINE_NOISE, 3, 0),
              seeds.derive(5, seeds.REFINE_NOISE)}
    assert a not in others and len(others) == 5
    assert seeds.rng(5, seeds.GA).random() == np.random.default_rng(seeds.derive(5, seeds.GA)).random()
    assert seeds.derive32(5, seeds.CMAES) == seeds.derive(5, seeds.CMAES) & 0xFFFFFFFF


def test_purposes_are_distinct_names_with_distinct_words():
    assert len(set(seeds.PURPOSES)) == len(seeds.PURPOSES)
    assert len({seeds.purpose_word(p) for p in seeds.PURPOSES}) == len(seeds.PURPOSES)
    constants = [n for n in seeds.__all__ if n.isupper() and n != "PURPOSES"]
    assert sorted(getattr(seeds, n) for n in constants) == sorted(seeds.PURPOSES)
    table = seeds.__doc__.split("Purposes", 1)[1]
    assert all(f"\n{n} " in table for n in constants), "every purpose has a row in the module's table"


@pytest.mark.parametrize("bad", [(-1, seeds.GA), (0, seeds.GA, -2), (0, ""), (0, 3)])
def test_derive_refuses_negative_numbers_and_unnamed_purposes(bad):
    with pytest.raises(ValueError):
        seeds.derive(*bad)


def test_refine_start_measurement_is_no_generation_noise():
    """The old scheme gave refine's start measurement the seed of generation 7's common noise."""
    for seed in (0, 3, 12345):
        start = {seeds.derive(seed, seeds.REFINE_START, k) for k in range(3)}
        final = {seeds.derive(seed, seeds.REFINE_FINAL, k) for k in range(2)}
        noise = {seeds.derive(seed, seeds.REFINE_NOISE, g) for g in range(2000)}
        jac = {seeds.derive(seed, seeds.REFINE_JACOBIAN, g) for g in range(2000)}
        assert len(start | final | noise | jac) == 3 + 2 + 2000 + 2000


class _RecordingTwin(TwinDevice):
    """The twin, recording every seed it is given."""

    reseeds: list = []

    def reseed(self, seed: int) -> None:
        type(self).reseeds.append(int(seed))
        super().reseed(seed)


@pytest.fixture
def recorded(monkeypatch):
    log: list = []
    monkeypatch.setattr(seeds, "_RECORD", log)
    monkeypatch.setattr(_RecordingTwin, "reseeds", [])
    return log


def _assert_one_stream_per_key(log):
    by_key = {}
    for seed, purpose, index, value in log:
        assert by_key.setdefault((seed, purpose, index), value) == value
    values = list(by_key.values())
    assert len(set(values)) == len(values), "two (purpose, index) of one run share a stream"
    return by_key


def test_no_two_purposes_of_one_run_share_a_stream(recorded, tmp_path):
    """A small direct training, a small GA training and a refine run past generation 7 on the twin:
    every derived stream is distinct, and every seed the twin is given came from the helper."""
    params, _ = train_cos_direct(iterations=20, points=6, samples=4, bound=3.0, eval_samples=10, restarts=1,
                                 progress=False, seed=3)
    train_cos_ga(3, population=8, elites=2, points=6, samples=4, width=4, depth=1, eval_points=10, eval_samples=8,
                 check_dt=None, progress=False, plots=False, seed=3)
    dev = _RecordingTwin()
    program = params.rescaled(fitting_scale(params, dev.channel_map))
    cal = calibration.nominal(dev.channel_map)
    cfg = RefineConfig(generations=9, population=4, elites=1, points=4, samples=8, final_points=8, final_samples=8,
                       seed=3)
    refine(dev, program, cal, tmp_path / "r.h5", cfg, progress=False)
    by_key = _assert_one_stream_per_key(recorded)
    purposes = {p for _, p, _ in by_key}
    assert {seeds.DIRECT_NOISE, seeds.DIRECT_FINAL, seeds.GA, seeds.COS_NOISE, seeds.COS_CHECK, seeds.REFINE_START,
            seeds.REFINE_NOISE, seeds.REFINE_BATCH, seeds.REFINE_FINAL} <= purposes
    given = _RecordingTwin.reseeds
    assert given and set(given) <= set(by_key.values()), "a seed reached the twin without the helper"
    start = by_key[(3, seeds.REFINE_START, (0,))]
    noise = {v for (s, p, i), v in by_key.items() if p == seeds.REFINE_NOISE}
    assert len(noise) >= 9 and start in given and start not in noise
