"""The twin against independent references: quadrature, exact OU moments, the numpy integrator."""

import numpy as np
import pytest
import scipy.integrate as si
import scipy.linalg as sl
from scipy import stats

from sim_backend import reference, twin
from sim_backend.rng import normal
from tc_hw import Network, Params, all_to_all, layered


def one_node(J2, J3, J4, kT, bias=0.0):
    """The paper's neuron U = J2 x^2 + J3 x^3 + J4 x^4 - (bias + I) x (crossbar weight -1)."""
    net = Network(1, [], 1, [(0, 0)], [0])
    return Params(net, [J2], [J3], [J4], [bias], [], [-1.0], kT=kT)


def boltzmann_moments(p: Params):
    """Mean and variance of exp(-V/kT) for a one-node Params, by quadrature."""
    q, s, r, b = p.quadratic[0], p.cubic[0], p.quartic[0], p.bias[0]

    def v(x):
        return q * x**2 + s * x**3 + r * x**4 - b * x

    xs = np.linspace(-6, 6, 200001)
    vmin = v(xs).min()
    w = lambda x, k: x**k * np.exp(-(v(x) - vmin) / p.kT)  # noqa: E731
    z = si.quad(w, -6, 6, args=(0,), points=[0], limit=400)[0]
    m1 = si.quad(w, -6, 6, args=(1,), points=[0], limit=400)[0] / z
    m2 = si.quad(w, -6, 6, args=(2,), points=[0], limit=400)[0] / z
    return m1, m2 - m1 * m1


@pytest.mark.parametrize("beta", [1, 10, 100])
@pytest.mark.parametrize("J", [(1, 0, 1), (1, 0, 0), (0, 0, 1), (-1, 0, 1)])
def test_one_node_equilibrium_matches_quadrature(J, beta):
    bias = 0.0 if J[0] < 0 else 0.3  # the bistable node is tested at zero input (symmetric wells)
    p = one_node(*J, kT=1.0 / beta, bias=bias)
    mean_ref, var_ref = boltzmann_moments(p)
    # relaxation time ~ 1/curvature; t = 8 is many relaxation times for every case here
    m = 20000
    x = twin.sample_reset(p, [[0.0]], 8.0, m, dt=1e-3, seed=11, dtype=np.float64, scheme="lm").x[0, :, 0, 0]
    se_mean = np.sqrt(var_ref / m)
    kurt = stats.kurtosis(x, fisher=False)
    se_var = var_ref * np.sqrt((kurt - 1) / m)
    assert abs(x.mean() - mean_ref) < 3 * se_mean, (x.mean(), mean_ref, se_mean)
    assert abs(x.var(ddof=1) - var_ref) < 3 * se_var, (x.var(), var_ref, se_var)


def random_quadratic(n, rng, kT=0.5):
    a = rng.normal(size=(n, n))
    h = a @ a.T / n + 0.5 * np.eye(n)  # positive definite Hessian 2 diag(Q) + C
    edges = np.array([(i, j) for i in range(n) for j in range(i + 1, n)])
    k = 2
    crossbar = [(l, j) for l in range(k) for j in range(n)]
    return Params(
        Network(n, edges, k, crossbar, [n - 1]),
        np.diag(h) / 2,
        0.0,
        0.0,
        rng.normal(size=n),
        h[edges[:, 0], edges[:, 1]],
        rng.normal(size=k * n),
        kT=kT,
    )


@pytest.mark.parametrize("n", [6, 20])  # 6 uses the sparse path, 20 the dense (SIMD tile) path
def test_quadratic_network_matches_exact_ou_moments(n):
    rng = np.random.default_rng(n)
    p = random_quadratic(n, rng)
    inputs = np.array([[0.4, -1.0]])
    h = p.hessian_at_zero()
    b = p.field(inputs)[0]
    m = 20000
    for t in (0.1, 0.5):
        x = twin.sample_reset(p, inputs, t, m, dt=1e-3, seed=5, dtype=np.float64).x[0, :, 0]
        mean_ex = (np.eye(n) - sl.expm(-h * t)) @ np.linalg.solve(h, b)
        # covariance from x = 0 solves the Lyapunov ODE; closed form for symmetric H
        cov_ex = p.kT * np.linalg.solve(h, np.eye(n) - sl.expm(-2 * h * t))
        z = (x.mean(0) - mean_ex) / np.sqrt(np.diag(cov_ex) / m)
        assert np.abs(z).max() < 4.5, z
        cov = np.cov(x.T)
        se = np.sqrt((cov_ex**2 + np.outer(np.diag(cov_ex), np.diag(cov_ex))) / m)
        assert np.abs((cov - cov_ex) / se).max() < 5.0
        # the Euler-Maruyama bias is O(dt): a tighter aggregate check on the variances
        assert abs(np.mean(np.diag(cov) / np.diag(cov_ex)) - 1) < 0.01


def test_finite_time_activation_becomes_nonlinear_near_0p2():
    """Paper Fig. 3d: the (1,0,1) neuron at beta = inf is linear in I for t << 0.2."""
    inputs = np.linspace(-5, 5, 21)[:, None]
    p = one_node(1, 0, 1, kT=1e-10)

    def nonlinearity(t):
        x = twin.sample_reset(p, inputs, t, 1, dt=1e-3, dtype=np.float64).x[:, 0, 0, 0]
        slope = x[11] / inputs[11, 0]  # small-signal slope at I = 0.5
        return np.abs(x - slope * inputs[:, 0]).max() / np.abs(x).max()

    values = {t: nonlinearity(t) for t in (0.02, 0.05, 0.2, 0.5, 2.0)}
    assert values[0.02] < 0.01 and values[0.05] < 0.05
    assert values[0.5] > 0.3 and values[2.0] > 0.5
    assert all(a < b for a, b in zip(list(values.values()), list(values.values())[1:]))
    # long times converge to the zero-temperature equilibrium I = 2x + 4x^3
    x_long = twin.sample_reset(p, inputs, 10.0, 1, dt=1e-3, dtype=np.float64).x[:, 0, 0, 0]
    np.testing.assert_allclose(2 * x_long + 4 * x_long**3, inputs[:, 0], atol=2e-4)


def test_kernel_matches_numpy_reference_on_layered_network():
    rng = np.random.default_rng(2)
    net = layered(4, 3, 1)
    p = Params.uniform(net, 1, 0.2, 1, bias=rng.normal(0, 0.5, 12), coupling=rng.normal(0, 0.5, net.n_edges),
                       crossbar=rng.normal(0, 1, net.n_crossbar), kT=0.2)
    inputs = np.array([[0.0], [1.0]])
    m = 4000
    fast = twin.sample_reset(p, inputs, [0.3, 1.0], m, dt=2e-3, seed=3).x.astype(float)
    ref, _ = reference.euler_maruyama(p, inputs, 500, m, dt=2e-3, rng=4, observe_every=150)
    ref = ref[:, :, [0, -1]] if ref.shape[2] > 2 else ref
    # reference observes at steps 150, 300, 450 -> compare the kernel at t = 0.3 (150 steps)
    fast_t = fast[:, :, 0]
    ref_t = ref[:, :, 0]
    se = np.sqrt(fast_t.var(1) / m + ref_t.var(1) / m)
    assert np.abs((fast_t.mean(1) - ref_t.mean(1)) / se).max() < 4.5
    ratio = fast_t.var(1) / ref_t.var(1)
    assert np.abs(ratio - 1).max() < 0.12


def test_heat_is_minus_energy_change_and_matches_stratonovich_sum():
    p = one_node(1, 0, 1, kT=0.1, bias=1.0)
    run = twin.sample_reset(p, [[0.0]], 1.0, 4000, dt=1e-3, seed=1, dtype=np.float64, energy=True)
    np.testing.assert_allclose(run.heat_kT[0], -p.energy(run.final[0]) / p.kT, rtol=1e-12)
    _, heat_ref = reference.euler_maruyama(p, [[0.0]], 1000, 4000, dt=1e-3, rng=2)
    se = np.sqrt(run.heat_kT.var() / 4000 + heat_ref.var() / 4000)
    assert abs(run.heat_kT.mean() - heat_ref.mean()) < 4 * se
    # per trajectory the Stratonovich sum equals -dV/kT up to the O(dt) quadrature error
    x, heat = reference.euler_maruyama(p, [[0.0]], 1000, 200, dt=1e-3, rng=3)
    np.testing.assert_allclose(heat[0], -p.energy(x[0, :, -1]) / p.kT, atol=0.05)


@pytest.mark.parametrize(
    "net, dtype",
    [(layered(8, 2, 2), np.float32), (all_to_all(14, 4, 2), np.float32), (all_to_all(14, 4, 2), np.float64)],
    ids=["sparse", "dense-f32", "dense-f64"],
)
def test_seed_gives_same_numbers_whatever_batch_or_threads(net, dtype):
    import numba

    rng = np.random.default_rng(0)
    p = Params.uniform(net, 1, 0, 1, coupling=rng.normal(0, 0.3, net.n_edges), crossbar=1.0, kT=0.5)
    inputs = rng.normal(size=(7, 2))
    run = lambda x, m, **kw: twin.sample_reset(p, x, 0.2, m, seed=kw.pop("seed", 42), dtype=dtype, **kw).x  # noqa: E731
    full = run(inputs, 300)
    np.testing.assert_array_equal(run(inputs, 300), full)
    np.testing.assert_array_equal(run(inputs[:3], 120), full[:3, :120])
    np.testing.assert_array_equal(run(inputs, 100, sample_offset=200), full[:, 200:])
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        one = run(inputs, 300)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one, full)
    assert not np.array_equal(run(inputs, 300, seed=43), full)


def test_wide_crossbar_float64_runs_are_batch_independent():
    """The field B - I W of many inputs is not a BLAS product (whose rounding depends on the row)."""
    rng = np.random.default_rng(1)
    net = all_to_all(14, 4, 300)
    p = Params.uniform(net, 1, 0, 1, coupling=rng.normal(0, 0.3, net.n_edges), crossbar=rng.normal(0, 0.1, net.n_crossbar))
    inputs = rng.normal(size=(41, 300))
    np.testing.assert_allclose(twin._field(p, inputs, 19)[:, :18], p.field(inputs), rtol=1e-12, atol=1e-12)
    full = twin.sample_reset(p, inputs, 0.05, 3, dtype=np.float64, seed=2).x
    for m in (1, 5, 17):
        np.testing.assert_array_equal(twin.sample_reset(p, inputs[:m], 0.05, 3, dtype=np.float64, seed=2).x, full[:m])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [2, 21, 74])
def test_simd_dense_force_matches_numpy(n, dtype):
    from numba import njit

    from sim_backend.simd import dense_force

    run = njit(lambda c, x, h, a1, a2, a3, f: dense_force(c, x, h, a1, a2, a3, f))
    rng = np.random.default_rng(n)
    rows, lanes = -(-n // 4) * 4, 128
    c = np.zeros((rows, n), dtype)
    c[:n] = rng.normal(size=(n, n))
    x, h = (np.zeros((rows, lanes), dtype) for _ in range(2))
    x[:n], h[:n] = rng.normal(size=(2, n, lanes))
    a1, a2, a3 = (np.zeros(rows, dtype) for _ in range(3))
    a1[:n], a2[:n], a3[:n] = rng.normal(size=(3, n))
    f = np.full((rows, lanes), np.nan, dtype)
    run(c, x, h, a1, a2, a3, f)
    x64 = x.astype(float)
    expect = h - c.astype(float) @ x64[:n] - x64 * (a1[:, None] + x64 * (a2[:, None] + a3[:, None] * x64))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(f, expect, rtol=tol, atol=tol * np.abs(expect).max())


def test_generator_is_standard_normal():
    z = normal(7, 200000, 4).astype(np.float64)
    for j in range(4):
        assert stats.kstest(z[:, j], "norm").pvalue > 1e-3
    flat = z.ravel()
    n = flat.size
    assert abs(flat.mean()) < 4 / np.sqrt(n)
    assert abs(flat.var() - 1) < 4 * np.sqrt(2 / n)
    assert abs(stats.kurtosis(flat)) < 4 * np.sqrt(24 / n)
    # streams and lags uncorrelated
    c = np.corrcoef(z.T)
    assert np.abs(c - np.eye(4)).max() < 4.5 / np.sqrt(len(z))
    assert abs(np.corrcoef(z[:-1, 0], z[1:, 0])[0, 1]) < 4.5 / np.sqrt(len(z))


def test_serial_sampling_reads_every_interval_from_one_run():
    p = one_node(1, 0, 0, kT=0.5, bias=1.0)
    run = twin.sample_serial(p, [[0.0]], 0.2, 2000, dt=1e-3, seed=3, dtype=np.float64)
    assert run.x.shape == (1, 2000, 1, 1)
    np.testing.assert_allclose(run.times[:3], [0.2, 0.4, 0.6])
    x = run.x[0, :, 0, 0]
    # OU with H = 2: mean (1 - e^{-2t}) / 2, stationary variance kT / 2; lag-1 corr e^{-0.4}
    np.testing.assert_allclose(x[0:1].mean(), 0.5 * (1 - np.exp(-0.4)), atol=0.6)
    tail = x[50:]
    assert abs(tail.mean() - 0.5) < 0.08
    assert abs(tail.var() - 0.25) < 0.05
    assert abs(np.corrcoef(tail[:-1], tail[1:])[0, 1] - np.exp(-0.4)) < 0.08


def test_reset_moments_equal_the_samples_they_summarise():
    p = one_node(1, 0, 1, kT=0.3, bias=0.5)
    x = twin.sample_reset(p, [[0.0], [1.0]], [0.5, 1.0], 1000, seed=9).x.astype(np.float64)
    mean, var = twin.reset_moments(p, [[0.0], [1.0]], [0.5, 1.0], 1000, seed=9, chunk=300)
    np.testing.assert_allclose(mean, x.mean(1), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(var, x.var(1, ddof=1), rtol=1e-5)


def test_rails_bound_an_unconfined_board():
    net = Network(2, [(0, 1)], 1, [(0, 0)], [1])
    p = Params(net, [0, 0], 0, 0, [1.0, 0.0], [0.0], [0.0], require_stable=False)
    x = twin.sample_reset(p, [[0.0]], 5.0, 200, seed=1, rail=2.5).x
    assert np.abs(x).max() <= 2.5 and np.isclose(x[..., 0].max(), 2.5)


def test_underdamped_reference_equilibrium():
    p = one_node(1, 0, 0, kT=0.5)
    x, v = reference.underdamped(p, [[0.0]], 8000, 2000, dt=5e-3, mass=0.5, rng=1)
    assert abs(v[0, :, -1].var() - 0.5 / 0.5) < 0.1
    assert abs(x[0, :, -1].var() - 0.5 / 2) < 0.03


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"times": 0.0}, "multiple of dt"),
        ({"times": [0.5, 0.2]}, "increasing"),
        ({"dtype": np.int32}, "float32 or float64"),
        ({"scheme": "rk4"}, "scheme"),
        ({"nodes": [5]}, "nodes"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    p = one_node(1, 0, 1, kT=1)
    args = {"times": 0.2, **kwargs}
    with pytest.raises(ValueError, match=message):
        twin.sample_reset(p, [[0.0]], args.pop("times"), 2, **args)
    with pytest.raises(ValueError, match="inputs"):
        twin.sample_reset(p, [[0.0, 1.0]], 0.2, 2)
    with pytest.raises(ValueError, match="NaN"):
        twin.sample_reset(p, [[np.nan]], 0.2, 2)


def test_heat_from_a_start_state_without_inputs():
    """Regression: ``x0`` + ``energy=True`` on a network with no input lines."""
    from tc_hw.model.network import Network

    net = Network(3, np.array([[0, 1]]), 0, np.zeros((0, 2), int), np.array([2]))
    r = twin.sample_reset(Params.uniform(net), np.zeros((2, 0)), 0.1, 5, x0=np.full(3, 0.5), energy=True)
    assert r.heat_kT.shape == (2, 5) and np.isfinite(r.heat_kT).all()
