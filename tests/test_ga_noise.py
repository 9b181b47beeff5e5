"""The GA under measurement noise: successive halving, growing sample sizes, the keep test."""

from __future__ import annotations

import numpy as np
import pytest

from tc_hw.refine import keep_test
from tc_hw.train.ga import GAConfig, GeneticAlgorithm


def _halving_picks_best(rng, delta: float, rungs: int, pop: int = 16) -> tuple[bool, int]:
    """One generation on a synthetic objective: ``pop`` candidates, one of true loss 0, the others
    ``delta``; a measurement of ``f`` units has Gaussian noise of sd ``1 / sqrt(f)``.  Returns
    (the elite is the true best, units used)."""
    ga = GeneticAlgorithm(np.zeros(2), 1.0, population=pop, elites=1, rungs=rungs, keep_elites=False,
                          seed=int(rng.integers(1 << 30)))
    true = np.full(pop, delta)
    best = int(rng.integers(pop))
    true[best] = 0.0
    while ga.generation == 0:
        rows = ga.rows
        ga.tell(true[rows] + rng.standard_normal(len(rows)) / np.sqrt(ga.samples_factor))
    picked = np.flatnonzero((ga.last_population == ga.elites[0]).all(axis=1))
    return bool(picked.size == 1 and picked[0] == best), ga.units


def test_successive_halving_picks_the_true_best_with_stated_power():
    """16 candidates, the best ``1.5`` noise-sd (of one unit) better than the 15 others; halving
    over 5 rungs (16, 8, 4, 2, 1 rows at 1, 2, 4, 8, 16 units: 80 units) picks it with probability
    0.91 (4000-trial simulation).  200 trials: >= 0.85 passes with probability > 0.998 at 0.91;
    a halving that kept the worse half picks it with probability ~0 (the test can fail)."""
    rng = np.random.default_rng(20261205)
    trials = [_halving_picks_best(rng, 1.5, rungs=5) for _ in range(200)]
    assert {u for _, u in trials} == {80}
    assert np.mean([ok for ok, _ in trials]) >= 0.85


def test_halving_spends_fewer_readings_than_measuring_everyone_as_much():
    """Halving's last-rung rows have 31 units each behind them, at 80 units in all: measuring all
    16 rows with 31 units would cost 496.  And one flat unit each picks the best of the example
    above with probability 0.42 (10^5-trial simulation; 200 trials: 0.30-0.55 passes with
    probability > 0.999): the halving's 0.91 costs 80 units against 16."""
    cfg = GAConfig(population=16, elites=1, rungs=5)
    assert cfg.rung_sizes() == [16, 8, 4, 2, 1]
    rng = np.random.default_rng(7)
    flat = [_halving_picks_best(rng, 1.5, rungs=1) for _ in range(200)]
    assert {u for _, u in flat} == {16}
    assert 0.30 <= np.mean([ok for ok, _ in flat]) <= 0.55


def test_rows_pool_their_measurements_weighted_by_readings():
    ga = GeneticAlgorithm(np.zeros(2), 1.0, population=4, elites=1, rungs=2, seed=1)
    assert list(ga.rows) == [0, 1, 2, 3] and ga.samples_factor == 1 and ga.generation_units() == 4 + 2 * 2
    ga.tell([3.0, 1.0, 2.0, 4.0])
    assert list(ga.rows) == [1, 2] and ga.rung == 1 and ga.samples_factor == 2
    assert ga.stop_reason() is None  # never stops mid-generation
    ga.tell([4.0, 0.5])  # row 1: (1 + 2*4) / 3 = 3; row 2: (2 + 2*0.5) / 3 = 1
    assert ga.generation == 1 and ga.rung == 0 and ga.units == 8
    np.testing.assert_allclose(ga.last_losses, [3.0, 3.0, 1.0, 4.0])
    assert ga.best[1] == pytest.approx(1.0)
    np.testing.assert_array_equal(ga.best[0], ga.last_population[2])


def test_sample_size_grows_only_when_noise_hides_the_differences():
    spread = np.linspace(0.0, 1.0, 10)  # robust sd ~0.37
    ga = GeneticAlgorithm(np.zeros(2), 1.0, population=10, elites=2, max_factor=4, seed=0)
    ga.tell(spread, se=np.full(10, 0.1))  # noise well below the spread: stays
    assert ga.factor == 1 and ga.generation_units() == 10
    for expected in (2, 4, 4):  # noise above the spread: doubles, up to max_factor
        ga.tell(spread, se=np.full(10, 1.0))
        assert ga.factor == expected and ga.samples_factor == expected
    assert list(ga.history["factor"]) == [1, 1, 2, 4]
    assert ga.units == 10 * (1 + 1 + 2 + 4)


def test_one_rung_is_the_plain_ga_bit_for_bit():
    def run(**kw):
        ga = GeneticAlgorithm(np.zeros(5), 0.1, population=8, elites=2, seed=3, **kw)
        for g in range(4):
            pop = ga.ask()
            ga.tell(np.sum((pop - 1.0) ** 2, axis=1))
        return ga.ask(), ga.elite_losses

    a, b = run(), run(rungs=1, max_factor=1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def _noisy_run(ga, rng_seed: int, generations: int, ckpt=None, stop_after_tells: int | None = None):
    rng = np.random.default_rng(rng_seed)
    tells = 0
    while ga.generation < generations:
        pop = ga.ask()
        rows = ga.rows
        noise = np.random.default_rng([rng_seed, ga.generation, ga.rung]).standard_normal(len(rows))
        loss = np.sum((pop - 0.5) ** 2, axis=1) + 0.05 * noise / np.sqrt(ga.samples_factor)
        ga.tell(loss, se=np.full(len(rows), 0.05 / np.sqrt(ga.samples_factor)))
        tells += 1
        if stop_after_tells is not None and tells == stop_after_tells:
            ga.save(ckpt)
            return None
    del rng
    return ga


def test_checkpoint_in_the_middle_of_a_generation_resumes_bitwise(tmp_path):
    kw = dict(population=10, elites=3, rungs=3, max_factor=4, elite_memory=0.5, seed=11)
    full = _noisy_run(GeneticAlgorithm(np.zeros(4), 0.2, **kw), 5, 6)
    _noisy_run(GeneticAlgorithm(np.zeros(4), 0.2, **kw), 5, 6, ckpt=tmp_path / "g.h5", stop_after_tells=8)
    back = GeneticAlgorithm.load(tmp_path / "g.h5")
    assert back.rung == 8 % 3 and back.generation == 8 // 3
    resumed = _noisy_run(back, 5, 6)
    np.testing.assert_array_equal(full.ask(), resumed.ask())
    np.testing.assert_array_equal(full.elite_losses, resumed.elite_losses)
    assert full.units == resumed.units and full.factor == resumed.factor
    for k in ("best", "mean", "factor"):
        np.testing.assert_array_equal(full.history[k], resumed.history[k])


def test_halving_settings_are_validated():
    with pytest.raises(ValueError, match="rungs"):
        GeneticAlgorithm(np.zeros(2), 0.1, rungs=0)
    with pytest.raises(ValueError, match="eta"):
        GeneticAlgorithm(np.zeros(2), 0.1, eta=1)
    ga = GeneticAlgorithm(np.zeros(2), 0.1, population=4, elites=1, rungs=2)
    with pytest.raises(ValueError, match="expected 4 losses"):
        ga.tell([1.0, 2.0])
    ga.tell([1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="expected 2 losses"):
        ga.tell([1.0, 2.0, 3.0, 4.0])


def test_keep_test_keeps_only_a_significant_improvement():
    """One-sided z test at 5 %: d / se must exceed 1.645; the 80 %-power improvement is
    (1.645 + 0.842) se."""
    t = keep_test(0.010, 0.009, 3e-4, 4e-4)  # d = 1e-3, se = 5e-4: z = 2
    assert t["keep"] and t["se"] == pytest.approx(5e-4) and t["threshold"] == pytest.approx(1.6449 * 5e-4, rel=1e-4)
    assert t["detectable_80"] == pytest.approx((1.6449 + 0.8416) * 5e-4, rel=1e-4)
    assert not keep_test(0.010, 0.0094, 3e-4, 4e-4)["keep"]  # z = 1.2: not enough
    assert not keep_test(0.010, 0.011, 3e-4, 4e-4)["keep"]
    assert keep_test(0.010, 0.009, None, 4e-4) is None


def test_keep_test_false_keeps_at_most_alpha():
    """A method exactly as good as the start: over 4000 simulated final measurements the test keeps
    it 5 % of the time (binomial sd 0.34 %: 3.5-6.5 % passes with probability > 0.999)."""
    rng = np.random.default_rng(3)
    se = 4e-4
    kept = [keep_test(0.01 + se * a, 0.01 + se * b, se, se)["keep"] for a, b in rng.standard_normal((4000, 2))]
    assert 0.035 <= np.mean(kept) <= 0.065


def test_elite_memory_carries_an_elites_readings_into_the_next_generation():
    ga = GeneticAlgorithm(np.zeros(2), 1.0, population=4, elites=1, rungs=2, elite_memory=0.5, seed=2)
    ga.tell([3.0, 1.0, 2.0, 4.0])
    ga.tell([1.0, 2.0])  # row 1: (1 + 2) / 3 = 1 with 3 units, the elite
    assert ga.elite_losses[0] == pytest.approx(1.0)
    ga.tell([2.5, 0.9, 0.8, 5.0])  # row 0 is the elite again: 1.5 units at 1.0, pooled with 2.5 at weight 1
    np.testing.assert_allclose(ga._estimates()[:1], [(1.5 * 1.0 + 2.5) / 2.5])
    assert list(ga.rows) == [1, 2]  # the elite (1.6) is beaten by two fresh rows here
    plain = GeneticAlgorithm(np.zeros(2), 1.0, population=4, elites=1, rungs=2, seed=2)
    plain.tell([3.0, 1.0, 2.0, 4.0])
    plain.tell([1.0, 2.0])
    plain.tell([2.5, 0.9, 0.8, 5.0])
    assert plain._estimates()[0] == 2.5


def test_recombination_makes_the_first_child_the_elites_centroid():
    ga = GeneticAlgorithm(np.zeros(3), 0.5, population=8, elites=3, recombine=True, seed=4)
    pop = ga.ask()
    ga.tell(np.sum(pop**2, axis=1))
    nxt = ga.ask()
    np.testing.assert_array_equal(nxt[:3], ga.elites)
    np.testing.assert_allclose(nxt[3], ga.elites.mean(axis=0))
    plain = GeneticAlgorithm(np.zeros(3), 0.5, population=8, elites=3, seed=4)
    plain.tell(np.sum(plain.ask() ** 2, axis=1))
    np.testing.assert_array_equal(plain.ask()[4:], nxt[4:])  # the other children are drawn as before


def test_refine_settings_of_the_noise_aware_ga_are_validated():
    from tc_hw.refine import RefineConfig

    for bad in ({"rungs": 0}, {"max_factor": 0}, {"max_readings": 0}, {"keep_samples": 1}, {"elite_memory": 1.5},
                {"keep_alpha": 0.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RefineConfig(**bad)
    cfg = RefineConfig()
    assert (cfg.rungs, cfg.max_factor, cfg.recombine, cfg.keep_alpha) == (3, 4, True, 0.05)
