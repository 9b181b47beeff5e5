"""The one Langevin core: the twin's underdamped (BAOAB) option against independent references."""

import numpy as np
import pytest

from sim_backend import population, reference, twin
from tc_hw import Network, Params

from .test_twin import boltzmann_moments, one_node, random_quadratic


@pytest.mark.parametrize("J", [(1, 0, 1), (-1, 0, 1)])
def test_baoab_one_node_equilibrium_matches_quadrature(J):
    """x moments against quadrature of exp(-V/kT), v variance against kT/m (3-sigma bands: a
    true model passes with probability > 0.99 per moment; a 5% error in the variance at these
    sizes is > 5 sigma)."""
    kT, mass, m = 0.5, 0.25, 20000
    bias = 0.0 if J[0] < 0 else 0.3
    p = one_node(*J, kT=kT, bias=bias)
    mean_ref, var_ref = boltzmann_moments(p)
    r = twin.sample_reset(p, [[0.0]], 10.0, m, dt=1e-2, seed=3, dtype=np.float64, scheme="baoab", mass=mass,
                          friction=1.0)
    x = r.x[0, :, 0, 0]
    se_mean = np.sqrt(var_ref / m)
    se_var = var_ref * np.sqrt(2.0 / m) * 1.5  # kurtosis allowance for the double well
    assert abs(x.mean() - mean_ref) < 3 * se_mean, (x.mean(), mean_ref)
    assert abs(x.var(ddof=1) - var_ref) < 3 * se_var, (x.var(), var_ref)


def test_baoab_harmonic_configurations_are_exact_at_large_dt():
    """For a harmonic node BAOAB's configurational marginal is exact at any stable ``dt``
    (Leimkuhler & Matthews 2013): var x = kT / (2 Q) even at dt = 0.02 (3-sigma band)."""
    kT, mass, m = 0.5, 0.5, 20000
    p = one_node(1, 0, 0, kT=kT)
    x = twin.sample_reset(p, [[0.0]], 8.0, m, dt=2e-2, seed=4, dtype=np.float64, scheme="baoab", mass=mass).x
    var = x[0, :, 0, 0].var(ddof=1)
    assert abs(var - kT / 2) < 3 * (kT / 2) * np.sqrt(2.0 / m)


@pytest.mark.parametrize("n", [6, 20])  # 6: sparse CSR path, 20: dense SIMD tile path
def test_baoab_quadratic_network_matches_exact_stationary_covariance(n):
    """Stationary OU moments of a quadratic network: mean H^-1 b, covariance kT H^-1 (exact for
    BAOAB's configurations at any stable dt in the harmonic case)."""
    rng = np.random.default_rng(n)
    p = random_quadratic(n, rng)
    inputs = np.array([[0.4, -1.0]])
    h = p.hessian_at_zero()
    b = p.field(inputs)[0]
    m = 6000
    x = twin.sample_reset(p, inputs, 12.0, m, dt=2e-2, seed=6, dtype=np.float64, scheme="baoab", mass=0.5).x[0, :, 0]
    mean_ex = np.linalg.solve(h, b)
    cov_ex = p.kT * np.linalg.inv(h)
    z = (x.mean(0) - mean_ex) / np.sqrt(np.diag(cov_ex) / m)
    assert np.abs(z).max() < 4.5, z
    cov = np.cov(x.T)
    se = np.sqrt((cov_ex**2 + np.outer(np.diag(cov_ex), np.diag(cov_ex))) / m)
    assert np.abs((cov - cov_ex) / se).max() < 5.0


def test_baoab_transient_matches_numpy_reference():
    """Finite time (out of equilibrium) from rest: the twin and reference.underdamped agree in
    mean and variance per node (two-sample z < 4.5; variance ratio within 10%)."""
    rng = np.random.default_rng(2)
    net = Network(3, [(0, 1), (1, 2)], 1, [(0, 0)], [2])
    p = Params(net, [1.0, 0.5, 1.0], 0.1, [0.5, 1.0, 0.5], rng.normal(0, 0.5, 3), [0.4, -0.3], [1.5], kT=0.3)
    m, dt, steps = 8000, 1e-2, 40
    fast = twin.sample_reset(p, [[1.0]], steps * dt, m, dt=dt, seed=1, dtype=np.float64, scheme="baoab",
                             mass=0.3, friction=0.8).x[0, :, 0]
    ref, _ = reference.underdamped(p, [[1.0]], steps, m, dt=dt, mass=0.3, friction=0.8, rng=2)
    ref = ref[0, :, -1]
    se = np.sqrt(fast.var(0) / m + ref.var(0) / m)
    assert np.abs((fast.mean(0) - ref.mean(0)) / se).max() < 4.5
    assert np.abs(fast.var(0) / ref.var(0) - 1).max() < 0.1
    # the transient is far from the overdamped one: the test can tell the schemes apart
    em = twin.sample_reset(p, [[1.0]], steps * dt, m, dt=dt, seed=1, dtype=np.float64).x[0, :, 0]
    assert np.abs((em.mean(0) - ref.mean(0)) / se).max() > 10


def test_baoab_refusals():
    p = one_node(1, 0, 1, kT=1)
    with pytest.raises(ValueError, match="mass"):
        twin.sample_reset(p, [[0.0]], 0.1, 2, scheme="baoab", mass=0.0)
    with pytest.raises(ValueError, match="friction"):
        twin.sample_reset(p, [[0.0]], 0.1, 2, scheme="baoab", friction=-1.0)
    net = Network(2, [(0, 1)], 1, [(0, 0)], [1])
    q = Params(net, 1.0, 0.0, 1.0, 0.0, [0.1], [1.0], mobility=np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="scalar mobility"):
        twin.sample_reset(q, [[0.0]], 0.1, 2, scheme="baoab")
    with pytest.raises(ValueError, match="mass"):
        population.population_reset([p], [[0.0]], 0.1, 2, scheme="baoab", mass=-1.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_population_baoab_equals_the_twin_bitwise(dtype):
    """The population sampler runs the same BAOAB step: per candidate, bitwise the twin's samples."""
    from tc_hw import layered

    rng = np.random.default_rng(4)
    net = layered(4, 3, 1)
    pop = [Params.uniform(net, 1, 0.1, 1, bias=rng.normal(0, 0.5, 12), coupling=rng.normal(0, 0.4, net.n_edges),
                          crossbar=rng.normal(0, 1, net.n_crossbar), kT=0.3) for _ in range(3)]
    inputs = np.array([[-0.5], [0.5]])
    kw = dict(dt=1e-2, dtype=dtype, scheme="baoab", mass=0.4, friction=2.0)
    x = population.population_reset(pop, inputs, [0.1, 0.3], 6, seed=[3, 4, 5], **kw)
    for c, p in enumerate(pop):
        ref = twin.sample_reset(p, inputs, [0.1, 0.3], 6, seed=3 + c, nodes=net.outputs, **kw).x
        assert np.array_equal(x[c], ref)


def test_numpy_force_is_minus_the_energy_gradient():
    """polynomial_force - x C equals -dV/dx of Params.energy (central differences, float64)."""
    from sim_backend.langevin import polynomial_force

    rng = np.random.default_rng(0)
    p = random_quadratic(5, rng)
    p = Params(p.network, p.quadratic, rng.normal(0, 0.3, 5), rng.uniform(0.2, 1, 5), p.bias, p.coupling,
               p.crossbar, kT=p.kT)
    inputs = np.array([[0.3, -0.7]])
    x = rng.normal(0, 0.8, 5)
    f = polynomial_force(x, p.field(inputs)[0], 2 * p.quadratic, 3 * p.cubic, 4 * p.quartic) - x @ p.coupling_matrix()
    eps = 1e-6
    grad = np.array([(p.energy(x + eps * e, inputs[0]) - p.energy(x - eps * e, inputs[0])) / (2 * eps)
                     for e in np.eye(5)]).reshape(5)
    np.testing.assert_allclose(f, -grad, rtol=1e-6, atol=1e-7)


def test_numpy_euler_maruyama_paths_match_exact_ou_moments():
    """The shared numpy step on dx = -k x dt + sqrt(2 kT) dW from x = 1: mean e^{-kt} and
    variance kT/k (1 - e^{-2kt}) within the O(dt) bias plus 4 standard errors."""
    from sim_backend.langevin import euler_maruyama_paths

    k, kT, dt, n_steps, m = 2.0, 0.5, 1e-3, 500, 20000
    rng = np.random.default_rng(9)
    paths = euler_maruyama_paths(lambda i, x: -k * x, np.ones(m), n_steps, dt, np.sqrt(2 * kT * dt),
                                 lambda i, x: rng.standard_normal(x.shape))
    for _, _, x in paths:
        pass
    t = n_steps * dt
    var_ex = kT / k * (1 - np.exp(-2 * k * t))
    assert abs(x.mean() - np.exp(-k * t)) < 4 * np.sqrt(var_ex / m) + 2 * k * dt
    assert abs(x.var() / var_ex - 1) < 4 * np.sqrt(2 / m) + 2 * k * dt


def test_the_polynomial_force_is_written_once():
    """Guard: the on-site force ``x (2Q + x (3S + 4R x))`` appears in the packages only in the one
    core (sim_backend/langevin.py), apart from the OM needed force (the step solved for F, not a
    step) and the independent numpy reference (written differently on purpose)."""
    import ast
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1]
    pattern = re.compile(r"(\w+) \* \(\w+ \+ \1 \* \(")
    allowed = {("sim_backend/langevin.py", None), ("tc_hw/train/generative.py", "_needed_force")}
    found = []
    for pkg in ("sim_backend", "tc_hw", "calibration", "drivers"):
        for path in (root / pkg).rglob("*.py"):
            text = path.read_text()
            if not pattern.search(text):
                continue
            rel = path.relative_to(root).as_posix()
            funcs = [n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.FunctionDef)]
            for lineno, line in enumerate(text.splitlines(), 1):
                if pattern.search(line):
                    inner = [f.name for f in funcs if f.lineno <= lineno <= f.end_lineno]
                    name = inner[-1] if inner else None
                    if (rel, None) not in allowed and (rel, name) not in allowed:
                        found.append(f"{rel}:{lineno} ({name})")
    assert not found, f"integrator force written outside sim_backend.langevin: {found}"
