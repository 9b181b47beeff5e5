"""The JAX engine (``engine="gpu"``) against the CPU twin and independent references.

Runs on whatever device JAX finds (the CPU in CI).  Every statistical check states its tolerance
in standard errors; the agreement tests compare whole trajectories with the numba kernel for the
same seeds (the same Gaussians: they can only agree if generator, force, step, rails, mobility
mapping and observation bookkeeping are all the same).
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg as sl

jax = pytest.importorskip("jax")

from sim_backend import jax_engine, reference, twin  # noqa: E402
from sim_backend.rng import normal, stream_states  # noqa: E402
from tc_hw import Network, Params, all_to_all, layered  # noqa: E402
from tests.test_twin import boltzmann_moments, one_node, random_quadratic  # noqa: E402

# float32 trajectories differ from the CPU's by rounding only (operation order, fused multiply-adds);
# over tens of steps of a contracting flow that stays within a few float32 ulps of O(1) states.
TOL = {np.float32: 2e-5, np.float64: 2e-6}  # float64 noise is float32 Gaussians: ~1e-7 relative


def test_gaussians_are_the_cpu_generators_stream_for_stream():
    cpu = normal(7, 64, 5)  # (64, 5): streams of (input 0, sample j)
    states = stream_states(7, np.zeros(5, np.int64), np.arange(5))
    gpu = jax_engine.gauss_pairs(states, 32)
    np.testing.assert_allclose(gpu, cpu, rtol=2e-6, atol=2e-6)
    assert np.abs(gpu - normal(8, 64, 5)).max() > 1  # a different seed is a different stream


def _random_params(net, seed, kT=0.3, **kw):
    rng = np.random.default_rng(seed)
    return Params.uniform(net, 1, 0.2, 1, bias=rng.normal(0, 0.5, net.n_nodes),
                          coupling=rng.normal(0, 0.3, net.n_edges),
                          crossbar=rng.normal(0, 1, net.n_crossbar), kT=kT, **kw)


@pytest.mark.parametrize(
    "net, dtype, scheme, times, rail",
    [(layered(4, 2, 1), np.float32, "lm", [0.1, 0.3], 0.6), (all_to_all(14, 4, 2), np.float64, "em", [0.3], 0.6),
     (layered(3, 2, 1), np.float32, "baoab", [0.1, 0.3], 0.15)],
    ids=["sparse-f32-lm", "dense-f64-em", "sparse-f32-baoab"],
)
def test_reset_trajectories_equal_the_cpu_twin_for_the_same_seeds(net, dtype, scheme, times, rail):
    p = _random_params(net, 1)
    inputs = np.random.default_rng(2).normal(size=(3, net.n_inputs))
    assert twin.uses_dense_coupling(p) == (net.n_nodes >= 16)
    kw = dict(dt=1e-2, seed=5, dtype=dtype, scheme=scheme, energy=True, rail=rail, sample_offset=3)
    cpu = twin.sample_reset(p, inputs, times, 40, **kw)
    gpu = twin.sample_reset(p, inputs, times, 40, engine="gpu", **kw)
    assert gpu.x.dtype == dtype and gpu.x.shape == cpu.x.shape == (3, 40, len(times), net.n_nodes)
    np.testing.assert_allclose(gpu.x, cpu.x, rtol=0, atol=TOL[dtype])
    np.testing.assert_allclose(gpu.final, cpu.final, rtol=0, atol=TOL[dtype])
    np.testing.assert_allclose(gpu.heat_kT, cpu.heat_kT, rtol=1e-4, atol=1e-3)
    assert np.abs(cpu.x[:, :, -1]).max() == pytest.approx(rail)  # the rails were hit, and agree
    other = twin.sample_reset(p, inputs, times, 40, engine="gpu", **{**kw, "seed": 6})
    assert np.abs(other.x - cpu.x).max() > 0.1  # the comparison can fail


def test_serial_per_node_mobility_and_rails_equal_the_cpu_twin():
    net = layered(3, 2, 1)
    p = _random_params(net, 3, mobility=np.linspace(0.5, 2.0, net.n_nodes))
    kw = dict(dt=1e-2, seed=9, rail=1.0, nodes=[5, 0, 2])
    cpu = twin.sample_serial(p, [[0.3], [-1.0]], 0.05, 12, **kw)
    gpu = twin.sample_serial(p, [[0.3], [-1.0]], 0.05, 12, engine="gpu", **kw)
    assert gpu.x.shape == cpu.x.shape == (2, 12, 1, 3)
    np.testing.assert_allclose(gpu.x, cpu.x, rtol=0, atol=TOL[np.float32])
    np.testing.assert_array_equal(gpu.nodes, [5, 0, 2])


def test_bad_engine_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="engine must be one of"):
        twin.sample_reset(one_node(1, 0, 1, 1.0), [[0.0]], 0.01, 1, engine="tpu")
    monkeypatch.setitem(sys.modules, "sim_backend.jax_engine", None)  # as if JAX were not installed
    monkeypatch.delattr(sys.modules["sim_backend"], "jax_engine")
    with pytest.raises(ValueError, match=r"needs JAX \(pip install 'tc-hw\[gpu\]'\)"):
        twin.sample_reset(one_node(1, 0, 1, 1.0), [[0.0]], 0.01, 1, engine="gpu")


@pytest.mark.parametrize("J", [(1, 0, 1), (-1, 0, 1)])
def test_one_node_equilibrium_matches_quadrature(J):
    """Mean and variance after 8 relaxation times within 3 standard errors of the Boltzmann
    moments (power: a 1 % error in the variance is 1.4 standard errors at m = 20,000)."""
    bias = 0.0 if J[0] < 0 else 0.3
    p = one_node(*J, kT=0.1, bias=bias)
    mean_ref, var_ref = boltzmann_moments(p)
    m = 20000
    run = twin.sample_reset(p, [[0.0]], 8.0, m, dt=2e-3, seed=11, dtype=np.float64, scheme="lm", engine="gpu")
    x = run.x[0, :, 0, 0]
    kurt = np.mean((x - x.mean()) ** 4) / x.var() ** 2
    assert abs(x.mean() - mean_ref) < 3 * np.sqrt(var_ref / m), (x.mean(), mean_ref)
    assert abs(x.var(ddof=1) - var_ref) < 3 * var_ref * np.sqrt((kurt - 1) / m), (x.var(), var_ref)


def test_quadratic_network_matches_the_exact_moments_of_the_discrete_scheme():
    """Euler-Maruyama on V = x.H.x/2 - b.x is the linear map x' = A x + dt b + sqrt(2 kT dt) z,
    A = I - dt H; its mean and covariance after k steps are exact (no O(dt) bias to allow for), so
    at dt = 0.05 the test separates the discrete scheme from the continuous process (whose
    variances differ by several standard errors) and checks every coefficient's sign."""
    n, m, dt, k = 6, 20000, 0.05, 10
    p = random_quadratic(n, np.random.default_rng(6))
    inputs = np.array([[0.4, -1.0]])
    h, b = p.hessian_at_zero(), p.field(inputs)[0]
    a = np.eye(n) - dt * h
    mean, cov = np.zeros(n), np.zeros((n, n))
    for _ in range(k):
        mean, cov = a @ mean + dt * b, a @ cov @ a.T + 2 * p.kT * dt * np.eye(n)
    x = twin.sample_reset(p, inputs, k * dt, m, dt=dt, seed=5, dtype=np.float64, engine="gpu").x[0, :, 0]
    z = (x.mean(0) - mean) / np.sqrt(np.diag(cov) / m)
    assert np.abs(z).max() < 4.5, z
    se = np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov))) / m)
    assert np.abs((np.cov(x.T) - cov) / se).max() < 5.0
    cont = p.kT * np.linalg.solve(h, np.eye(n) - sl.expm(-2 * h * k * dt))  # the continuous process
    ratio = np.diag(np.cov(x.T)) / np.diag(cov)
    assert abs(ratio.mean() - 1) < 4 * np.sqrt(2 / m / n) < abs(np.mean(np.diag(cont) / np.diag(cov)) - 1)


def test_sign_conventions_zero_temperature_fixed_point_is_a_minimum_of_the_energy():
    """At kT -> 0 the run descends V: the final state is a stationary point of ``Params.energy``
    (central differences), for bias, crossbar, coupling and quartic/cubic terms of both signs."""
    net = Network(3, [(0, 1), (1, 2)], 2, [(0, 0), (1, 2), (0, 1)], [2])
    p = Params(net, [0.5, 1.0, 0.2], [0.3, -0.2, 0.1], [0.4, 0.6, 0.5], [0.7, -0.4, 0.2], [0.6, -0.5],
               [1.5, -0.8, 0.9], kT=1e-14)
    inputs = np.array([[1.0, -0.5], [-0.7, 0.3]])
    x = twin.sample_reset(p, inputs, 20.0, 1, dt=1e-2, dtype=np.float64, engine="gpu").x[:, 0, 0]
    eps = 1e-6
    for xp, inp in zip(x, inputs):
        grad = [(p.energy(xp + eps * e, inp) - p.energy(xp - eps * e, inp)) / (2 * eps) for e in np.eye(3)]
        np.testing.assert_allclose(np.ravel(grad), 0, atol=1e-6)
        v0 = p.energy(xp, inp)
        assert all(p.energy(xp + d, inp) > v0 for d in 1e-3 * np.vstack([np.eye(3), -np.eye(3)]))  # a minimum
    assert np.abs(x[0] - x[1]).max() > 0.05  # the inputs move the fixed point


def test_heat_matches_the_stratonovich_reference():
    """Mean heat within 4 standard errors of the numpy reference's Stratonovich sum, and per
    trajectory ``-(V(x_final) - V(0)) / kT``."""
    p = one_node(1, 0, 1, kT=0.1, bias=1.0)
    run = twin.sample_reset(p, [[0.0]], 1.0, 4000, dt=1e-3, seed=1, dtype=np.float64, energy=True, engine="gpu")
    np.testing.assert_allclose(run.heat_kT[0], -p.energy(run.final[0]) / p.kT, rtol=1e-12)
    _, heat_ref = reference.euler_maruyama(p, [[0.0]], 1000, 4000, dt=1e-3, rng=2)
    se = np.sqrt(run.heat_kT.var() / 4000 + heat_ref.var() / 4000)
    assert abs(run.heat_kT.mean() - heat_ref.mean()) < 4 * se
    assert run.heat_kT.mean() > 10 * se  # heat flows to the bath as the node settles in its well


def test_several_devices_shard_trajectories_without_changing_them(tmp_path):
    """Two XLA host devices (a subprocess): the trajectory axis is sharded and results are those of one device."""
    script = tmp_path / "two.py"
    script.write_text(
        "import numpy as np, jax\n"
        "from sim_backend import twin\n"
        "from tc_hw import Params, layered\n"
        "assert jax.device_count() == 2\n"
        "net = layered(2, 2, 1)\n"
        "p = Params.uniform(net, 1, 0, 1, coupling=0.2, crossbar=1.0, kT=0.3)\n"
        "kw = dict(dt=1e-2, seed=4)\n"
        "a = twin.sample_reset(p, [[0.2], [0.9], [-1.0]], 0.1, 7, engine='gpu', **kw).x\n"
        "b = twin.sample_reset(p, [[0.2], [0.9], [-1.0]], 0.1, 7, **kw).x\n"
        "assert np.abs(a - b).max() < 2e-5, np.abs(a - b).max()\n"
        "print('ok')\n"
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


def test_a_trajectory_does_not_depend_on_batch_or_chunking(monkeypatch):
    """The seeds-to-trajectories contract within the engine: bitwise the same numbers whatever the
    batch (fewer inputs, a sample offset) and the device-call chunking."""
    net = layered(2, 2, 1)
    p = _random_params(net, 4)
    inputs = np.array([[0.2], [0.9], [-1.0]])
    run = lambda x, m, **kw: twin.sample_reset(p, x, 0.1, m, dt=1e-2, seed=8, engine="gpu", **kw).x  # noqa: E731
    full = run(inputs, 7)
    np.testing.assert_array_equal(run(inputs[:2], 7), full[:2])  # input p keeps its index
    np.testing.assert_array_equal(run(inputs, 3, sample_offset=4), full[:, 4:])
    monkeypatch.setattr(jax_engine, "CHUNK", 8)  # 21 trajectories in chunks of 8, 8 and 5 (padded)
    np.testing.assert_array_equal(run(inputs, 7), full)
    assert not np.array_equal(twin.sample_reset(p, inputs, 0.1, 7, dt=1e-2, seed=9, engine="gpu").x, full)
