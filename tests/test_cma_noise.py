"""CMA-ES under measurement noise: sample sizes that grow as the candidates' losses drown in their
noise, the debias term of the readout each candidate is scored with, and a perturbed program
improved on the twin backend (the regression of issue 14: CMA-ES closed no gap once every candidate
was scored with its own exact readout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cma")

import calibration
from calibration.scale import fitting_scale
from sim_backend.device import TwinDevice
from tc_hw.model.device import armed
from tc_hw.model.files import load_params
from tc_hw.model.runlog import read_log
from tc_hw.model.tasks import cos_task
from tc_hw.refine import RefineConfig, _Problem, refine
from tc_hw.train.cmaes import CMAES

PROGRAM = Path(__file__).parent / "data" / "cos_program.h5"


def _es(max_factor: int) -> CMAES:
    return CMAES(np.zeros(5), np.ones(5), population=10, seed=4, max_generations=20, max_factor=max_factor)


def test_cma_sample_factor_doubles_only_while_noise_dominates_and_replays(tmp_path):
    rng = np.random.default_rng(7)
    es = _es(4)
    # losses whose spread (sd 1) is far above their standard error (0.1): the factor stays 1
    for _ in range(3):
        es.tell(np.sum(es.ask() ** 2, axis=1) + rng.normal(0, 0.1, 10), se=np.full(10, 0.1))
    assert es.factors == [1, 1, 1] and es.samples_factor == 1
    # pure noise (the candidates' true losses equal): doubles every generation up to max_factor
    for _ in range(3):
        es.ask()
        es.tell(rng.normal(0, 1.0, 10), se=np.full(10, 1.0))
    assert es.factors == [1, 1, 1, 1, 2, 4] and es.samples_factor == 4
    assert es.units == 10 * (1 + 1 + 1 + 1 + 2 + 4) and es.generation_units() == 40
    # without standard errors, or with max_factor 1, nothing grows
    plain = _es(1)
    plain.tell(rng.normal(0, 1.0, 10), se=np.full(10, 1.0))
    assert plain.samples_factor == 1
    es.save(tmp_path / "c.h5")
    back = CMAES.load(tmp_path / "c.h5")
    assert back.factors == es.factors and back.samples_factor == 4 and back.max_factor == 4
    np.testing.assert_array_equal(back.ask(), es.ask())


def _problem(samples: int = 40):
    dev = TwinDevice(seed=11)
    params = load_params(PROGRAM)
    params = params.rescaled(fitting_scale(params, dev.channel_map))
    prob = _Problem(dev, params, calibration.nominal(dev.channel_map), RefineConfig(points=6, samples=samples))
    return dev, prob


def test_readout_var_is_the_variance_of_the_scored_readout():
    """The debias term's variance comes from the output nodes' covariance, for any readout: the same
    as the variance over the readings of that readout's output (twin, one seeded acquisition)."""
    dev, prob = _problem()
    z = cos_task(6)[0]
    x = prob.x0[None, :]
    xbar, cov = prob.moments(x, z, [5])
    other = prob.readout0 * np.array([1.5, -0.3, 2.0]) + 0.1  # a readout other than the vector's
    # the raw readings of the same seeded acquisition
    dev.set_inputs(prob.device_inputs(z))
    dev.set_channels(prob.split(x[0])[0])
    dev.reseed(5)
    with armed(dev):
        acq = dev.acquire("reset", prob.time_s, 40, nodes=prob.outputs)
    raw = prob.cal.adc.correct(acq.volts, prob.outputs)  # (P, M, n_out)
    np.testing.assert_allclose(raw.mean(axis=1), xbar[0], rtol=1e-12, atol=1e-12)
    for f in (prob.readout0, other):
        np.testing.assert_allclose(prob.readout_var(cov, [f])[0], (raw @ f).var(axis=1, ddof=1), rtol=1e-9)
    # means() reports the vector's own readout's variance, as before
    np.testing.assert_allclose(prob.means(x, z, [5])[1][0], (raw @ prob.readout0).var(axis=1, ddof=1), rtol=1e-9)


def _noisy_quadratic_run(max_factor: int, seed: int, noise_sd: float, budget: int = 80) -> float:
    """CMA-ES on ``|y - 1|^2`` in 12 dimensions (the optimum ~3.5 steps from the start), each loss
    with Gaussian noise of sd ``noise_sd / sqrt(samples_factor)`` (a measurement with that many more
    readings), until ``budget`` generations' worth of units; returns the mean's excess loss."""
    rng = np.random.default_rng(1000 + seed)
    es = CMAES(np.zeros(12), np.ones(12), population=20, seed=seed, max_generations=10**6, max_factor=max_factor)
    while es.units + es.generation_units() <= budget * es.population:
        y = es.ask()
        sd = noise_sd / np.sqrt(es.samples_factor)
        es.tell(np.sum((y - 1.0) ** 2, axis=1) + rng.normal(0.0, sd, es.population), se=np.full(es.population, sd))
    return float(np.sum((es.best[0] - 1.0) ** 2))


def test_growing_samples_bring_the_cma_mean_closer_under_noise_for_the_same_readings():
    """The regression of issue 14 in miniature: with every candidate measured alike, selection near
    the optimum is decided by the noise and the mean wanders; with the sample factor growing by the
    GA's rule (max_factor 4), the same readings bring it closer.  Noise sd 3 (the loss excess of a
    candidate at the optimum is ~12 at step 1): on seeds 0..19 growth ended closer in 19 of 20 runs
    (median excess 0.51 against 1.10); on the 12 seeds asserted here, 12 of 12 (median 0.48 against
    1.17).  Asserted: closer in at least 10 of 12 (a coin would reach that with probability 1.9 %)
    and the median excess at most 0.7 times the fixed one's."""
    grow = np.array([_noisy_quadratic_run(4, s, 3.0) for s in range(12)])
    fixed = np.array([_noisy_quadratic_run(1, s, 3.0) for s in range(12)])
    assert np.sum(grow < fixed) >= 10
    assert np.median(grow) <= 0.7 * np.median(fixed)


def _perturbed(amp: float = 0.3, seed: int = 0):
    """The benchmark's cos program on the twin board with its biases moved by ``amp`` (program units)
    N(0, 1) draws (twin loss with a fitted readout ~0.03 instead of ~0.005), and the exact calibration."""
    cmap = TwinDevice().channel_map
    params = load_params(PROGRAM)
    params = params.rescaled(fitting_scale(params, cmap))
    rng = np.random.default_rng(seed)
    bad = params.copy(bias=params.bias + amp * rng.standard_normal(params.bias.shape))
    return bad.rescaled(min(1.0, fitting_scale(bad, cmap))), calibration.nominal(cmap)


TWIN = {"population": 10, "points": 12, "samples": 50, "final_points": 50, "final_samples": 500, "twin_samples": 16,
        "twin_dt": 2e-2}


def test_cma_improves_a_perturbed_program_on_the_twin(tmp_path):
    """CMA-ES's mean, through the final comparison and keep test, beats the start (calibrated upload
    with the fitted readout).  Measured: refine seed 3, start 0.0299, CMA-ES 0.0056, the difference
    7.9 standard errors; refine seed 4, 0.0321 -> 0.0069, 7.9 se.  The keep test (level 5 %) keeps a
    2.5-se improvement with 80 % power; asserted: kept, and below half the start's loss.  (The old
    CMA-ES passes this too: its failure needs a gap near the noise and many generations, see the
    noisy-quadratic test.)"""
    bad, cal = _perturbed()
    r = refine(TwinDevice(), bad, cal, tmp_path / "a.h5", RefineConfig(method="cma", generations=10, seed=3, **TWIN),
               progress=False)
    assert r["kept"] == "cma" and r["keep_test"]["keep"]
    assert r["refined_loss"] < 0.5 * r["start_loss"]


def test_cma_with_growing_samples_resumes_bitwise(tmp_path):
    """Independent noise per candidate (``common_noise=False``): the sample factor grows, the run
    stops on its readings, and a run killed after two generations resumes to the same populations,
    losses, factors and result."""
    bad, cal = _perturbed()
    cfg = dict(method="cma", seed=5, common_noise=False, **{**TWIN, "final_points": 20, "final_samples": 50,
                                                          "samples": 20, "points": 6})
    full = refine(TwinDevice(), bad, cal, tmp_path / "a.h5", RefineConfig(generations=8, **cfg), progress=False)
    refine(TwinDevice(), bad, cal, tmp_path / "b.h5", RefineConfig(generations=2, **cfg), progress=False)
    resumed = refine(TwinDevice(), bad, cal, tmp_path / "b.h5", RefineConfig(generations=8, **cfg), resume=True,
                     progress=False)
    a, b = read_log(tmp_path / "a.h5"), read_log(tmp_path / "b.h5")
    np.testing.assert_array_equal(a["population"], b["population"])
    np.testing.assert_array_equal(a["losses"], b["losses"])
    fa, fb = CMAES.load(tmp_path / "a.h5.ga.h5"), CMAES.load(tmp_path / "b.h5.ga.h5")
    assert fa.factors == fb.factors and max(fa.factors) > 1  # it grew
    assert full["stop"] == resumed["stop"] == "readings" and full["generations"] < 8
    assert resumed["readings"] == full["readings"] and resumed["best_volts"] == full["best_volts"]
