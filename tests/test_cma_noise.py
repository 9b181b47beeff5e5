"""CMA-ES under measurement noise: sample sizes that grow as the candidates' losses drown in their
noise, the debias term of the readout each candidate is scored with, and a perturbed program
improved on the twin backend (the regression of issue 14: CMA-ES closed no gap once every candidate
was scored with its own exact readout)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cma")

import calibration  # noqa: E402
from calibration.scale import fitting_scale  # noqa: E402
from sim_backend.device import TwinDevice  # noqa: E402
from tc_hw.model.files import load_params  # noqa: E402
from tc_hw.model.tasks import cos_task  # noqa: E402
from tc_hw.refine import RefineConfig, _Problem, refine  # noqa: E402
from tc_hw.train.cmaes import CMAES  # noqa: E402

PROGRAM = "tests/data/cos_program.h5"


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
    from tc_hw.model.device import armed

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
