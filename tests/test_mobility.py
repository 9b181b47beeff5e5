"""Per-node mobilities (per-node time constants) in Params, the twin, the population kernel and
parameter files: exact OU moments, the numpy reference integrator, the change of variables, and
scalar-mobility runs pinned bitwise to the values they had before per-node mobility existed."""

import numpy as np
import pytest
import scipy.linalg as sl

from sim_backend import population, reference, twin
from tc_hw import Network, Params, all_to_all, layered
from tc_hw.model.files import load_params, save_params
from tc_hw.model.params import ParamsError


def _random_params(net, seed, **kw):
    r = np.random.default_rng(seed)
    n = net.n_nodes
    return Params(net, r.uniform(0.5, 1.5, n), r.uniform(-0.2, 0.2, n), r.uniform(0.5, 1.5, n), r.uniform(-1, 1, n),
                  r.uniform(-0.3, 0.3, net.n_edges), r.uniform(-1, 1, net.n_crossbar), require_stable=False, **kw)


# Values recorded with the code of commit 0087503 (before per-node mobility), same calls as below.
PINNED = {
    ("sparse", "em", "float32"): ([-0.5257592797279358, -0.8384979367256165, 0.7161417007446289], -3.637271387991428),
    ("sparse", "em", "float64"): ([-0.5257592523647062, -0.8384979006861433, 0.7161416200501328], -3.6372708545808337),
    ("sparse", "lm", "float32"): ([-0.5831894874572754, -0.7532501220703125, 0.627414882183075], -3.6698375876993765),
    ("sparse", "lm", "float64"): ([-0.5831894304428531, -0.7532500359938517, 0.6274148483363272], -3.669836865057536),
    ("dense", "em", "float32"): ([0.380959689617157, -0.4340992569923401, 0.0496145598590374], -1.8288891750905247),
    ("dense", "em", "float64"): ([0.3809596666066591, -0.43409923189462923, 0.04961451763184326], -1.828888612185016),
    ("dense", "lm", "float32"): ([0.35793474316596985, -0.4441002905368805, 0.09575407207012177], -2.4877182322343003),
    ("dense", "lm", "float64"): ([0.35793472098634405, -0.4441002682665601, 0.09575408383311361], -2.4877176340987144),
}


@pytest.mark.parametrize("key", sorted(PINNED))
def test_scalar_mobility_runs_are_bitwise_unchanged(key):
    name, scheme, dtype = key
    if name == "sparse":
        p, inp = _random_params(layered(4, 3, 1), 1), np.array([[0.3], [-0.7]])
    else:
        p, inp = _random_params(all_to_all(15, 2, 2), 2), np.array([[0.3, 0.1], [-0.7, 0.5]])
    r = twin.sample_reset(p, inp, [0.05, 0.2], 3, dt=1e-2, seed=7, dtype=np.dtype(dtype), scheme=scheme, rail=1.2,
                          energy=True)
    values, heat = PINNED[key]
    assert r.x[1, 2, 1, :3].astype(float).tolist() == values
    assert float(r.heat_kT[1, 2]) == heat


def test_scalar_mobility_serial_and_population_bitwise_unchanged():
    p = _random_params(layered(4, 3, 1), 1)
    inp = np.array([[0.3], [-0.7]])
    s = twin.sample_serial(p, inp, 0.05, 4, dt=1e-2, seed=3, x0=0.2)
    assert s.x[0, 3, 0, :3].astype(float).tolist() == [-0.6219664216041565, -0.815313994884491, 0.27143675088882446]
    pop = population.population_reset([p, p.copy(bias=p.bias * 0.5)], inp, 0.2, 2, dt=1e-2, seed=[5, 6], rail=1.0,
                                      scheme="lm")
    assert pop[1, 1, 1, 0, :].astype(float).tolist() == [0.2772633731365204, 0.36769360303878784,
                                                         0.17132750153541565, -0.40130510926246643]


# ----------------------------------------------------------------------------- Params and files
def test_mobility_validation_and_per_node_view():
    net = layered(2, 2, 1)
    p = Params.uniform(net, mobility=2.0)
    assert isinstance(p.mobility, float) and not p.has_node_mobility
    np.testing.assert_array_equal(p.mobility_per_node, [2.0] * 4)
    q = p.copy(mobility=[1.0, 0.9, 1.1, 1.05])
    assert q.has_node_mobility and q.mobility.dtype == np.float64
    for bad in ([1.0, 1.0, 1.0], [1.0, 0.0, 1.0, 1.0], [1.0, np.nan, 1.0, 1.0], -1.0):
        with pytest.raises(ParamsError, match="mobility"):
            p.copy(mobility=bad)
    # rescaling divides every node's mobility by lam^2
    np.testing.assert_allclose(q.rescaled(0.5).mobility, q.mobility * 4)


@pytest.mark.parametrize("suffix", [".h5", ".json"])
def test_per_node_mobility_round_trips_through_params_files(tmp_path, suffix):
    net = layered(3, 2, 1)
    mu = np.array([1.0, 0.91, 1.1, 0.95, 1.04, 0.97])
    p = Params.uniform(net, mobility=mu)
    back = load_params(save_params(p, tmp_path / f"p{suffix}"))
    assert back.has_node_mobility
    np.testing.assert_array_equal(back.mobility, mu)
    scalar = load_params(save_params(Params.uniform(net, mobility=0.5), tmp_path / f"s{suffix}"))
    assert scalar.mobility == 0.5 and not scalar.has_node_mobility


# ----------------------------------------------------------------------------- change of variables
def test_unit_mobility_is_an_exact_change_of_variables():
    net = layered(3, 3, 2)
    rng = np.random.default_rng(0)
    mu = rng.uniform(0.5, 2.0, net.n_nodes)
    p = _random_params(net, 3, mobility=mu)
    py, s = twin.unit_mobility(p)
    assert py.mobility == 1.0
    np.testing.assert_allclose(s, np.sqrt(mu))
    y = rng.normal(size=(5, net.n_nodes))
    inputs = rng.normal(size=(5, 2))
    # U(y) = V(s y) and -dU/dy = s * F(s y): so mobility-1 steps in y are mobility-mu steps in x
    np.testing.assert_allclose(py.energy(y, inputs), p.energy(s * y, inputs), rtol=1e-12)
    np.testing.assert_allclose(py.force(y, inputs), s * p.force(s * y, inputs), rtol=1e-12, atol=1e-12)
    scalar = p.copy(mobility=1.5)
    assert twin.unit_mobility(scalar)[0] is scalar


def test_one_em_step_maps_exactly():
    """One deterministic step from x0 (kT tiny): x1 = x0 + mu dt F(x0), node by node."""
    net = layered(2, 2, 1)
    mu = np.array([0.5, 1.0, 1.7, 2.3])
    p = _random_params(net, 4, mobility=mu).copy(kT=1e-30)
    x0 = np.array([0.3, -0.2, 0.5, 0.1])
    dt = 1e-2
    got = twin.sample_reset(p, [[0.4]], dt, 1, dt=dt, dtype=np.float64, x0=x0).x[0, 0, 0]
    np.testing.assert_allclose(got, x0 + mu * dt * p.force(x0, [[0.4]])[0], rtol=1e-13, atol=1e-15)


# ----------------------------------------------------------------------------- physics
def _quadratic_network(n, seed, kT=0.5):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n))
    h = a @ a.T / n + 0.5 * np.eye(n)
    edges = np.array([(i, j) for i in range(n) for j in range(i + 1, n)])
    crossbar = [(0, j) for j in range(n)]
    p = Params(Network(n, edges, 1, crossbar, [n - 1]), np.diag(h) / 2, 0.0, 0.0, rng.normal(size=n),
               h[edges[:, 0], edges[:, 1]], rng.normal(size=n), kT=kT)
    return p, h


@pytest.mark.parametrize("n", [6, 18])  # sparse path, dense (SIMD tile) path
def test_per_node_mobility_matches_exact_ou_moments(n):
    """dx = -M (H x - b) dt + sqrt(2 kT M) dW from x = 0: mean ``(1 - e^{-MHt}) x*``, covariance
    ``S - e^{-MHt} S e^{-HMt}`` with ``S = kT H^-1``.  With m = 12000 samples a mean is checked to
    4.5 standard errors; ignoring the per-node mobility (mean mobility instead) moves the means by
    well over 10 standard errors at t = 0.3 (asserted, so the test has power)."""
    p, h = _quadratic_network(n, n)
    mu = np.random.default_rng(100 + n).uniform(0.4, 2.5, n)
    p = p.copy(mobility=mu)
    inputs = np.array([[0.7]])
    b = p.field(inputs)[0]
    m, t = 12000, 0.3
    x = twin.sample_reset(p, inputs, t, m, dt=1e-3, seed=9, dtype=np.float64, scheme="lm").x[0, :, 0]
    xstar = np.linalg.solve(h, b)
    e = sl.expm(-np.diag(mu) @ h * t)
    mean_ex = xstar - e @ xstar
    s_inf = p.kT * np.linalg.inv(h)
    cov_ex = s_inf - e @ s_inf @ e.T
    se = np.sqrt(np.diag(cov_ex) / m)
    z = (x.mean(0) - mean_ex) / se
    assert np.abs(z).max() < 4.5, z
    cov = np.cov(x.T)
    se_cov = np.sqrt((cov_ex**2 + np.outer(np.diag(cov_ex), np.diag(cov_ex))) / m)
    assert np.abs((cov - cov_ex) / se_cov).max() < 5.0
    mean_scalar = xstar - sl.expm(-mu.mean() * h * t) @ xstar
    assert np.abs((mean_scalar - mean_ex) / se).max() > 10


def test_per_node_mobility_matches_numpy_reference_with_quartic_terms_and_rails():
    """The reference integrates ``x`` with the mobility array directly (no change of variables)."""
    net = layered(3, 2, 1)
    rng = np.random.default_rng(5)
    mu = np.array([0.5, 1.0, 2.0, 0.8, 1.6, 1.2])
    p = Params.uniform(net, 1.0, 0.2, 1.0, bias=rng.normal(0, 0.5, 6), coupling=rng.normal(0, 0.5, net.n_edges),
                       crossbar=rng.normal(0, 1, net.n_crossbar), kT=0.3, mobility=mu)
    inputs = np.array([[1.5]])
    m, dt, rail = 6000, 2e-3, 0.6
    fast = twin.sample_reset(p, inputs, 0.3, m, dt=dt, seed=3, dtype=np.float64, rail=rail).x[0, :, 0]
    ref, _ = reference.euler_maruyama(p, inputs, 150, m, dt=dt, rng=4, rail=rail)
    ref = ref[0, :, 0]
    assert np.abs(fast).max() <= rail and (np.abs(ref) == rail).any()  # the rails are reached
    se = np.sqrt(fast.var(0) / m + ref.var(0) / m)
    assert np.abs((fast.mean(0) - ref.mean(0)) / se).max() < 4.5
    assert np.abs(fast.var(0) / ref.var(0) - 1).max() < 0.12
    # power: the same run with one scalar mobility differs clearly
    flat = twin.sample_reset(p.copy(mobility=1.0), inputs, 0.3, m, dt=dt, seed=3, dtype=np.float64, rail=rail).x[0, :, 0]
    assert np.abs((flat.mean(0) - ref.mean(0)) / se).max() > 8


def test_population_lanes_with_per_node_mobility_equal_the_twin_bitwise():
    net = layered(4, 2, 1)
    mu = np.linspace(0.9, 1.1, net.n_nodes)
    a = _random_params(net, 1, mobility=mu)
    b = a.copy(bias=a.bias * 0.5)
    inp = np.array([[0.3], [-0.7]])
    pop = population.population_reset([a, b], inp, 0.2, 3, dt=1e-2, seed=[5, 6], rail=0.8, nodes=np.arange(8))
    for k, c in enumerate((a, b)):
        one = twin.sample_reset(c, inp, 0.2, 3, dt=1e-2, seed=5 + k, rail=0.8).x
        np.testing.assert_array_equal(pop[k], one)


def test_population_union_carries_per_node_mobility():
    net = layered(4, 2, 1)
    mu = np.linspace(0.5, 2.0, net.n_nodes)
    a = _random_params(net, 1, mobility=mu)
    union, off = population.disjoint_union([a, a.copy(bias=-a.bias)])
    np.testing.assert_array_equal(union.mobility, np.tile(mu, 2))
    x = population.population_reset([a, a.copy(bias=-a.bias)], [[0.2]], 0.1, 4, dt=1e-2, method="union", rail=0.5)
    assert x.shape == (2, 1, 4, 1, len(net.outputs)) and np.abs(x).max() <= 0.5
