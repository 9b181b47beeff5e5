"""Networks, parameters, validation and parameter files."""

import json

import h5py
import numpy as np
import pytest

from tc_hw import Network, Params, ParamsError, all_to_all, layered, load_params, save_params
from tc_hw.model.params import from_ising_convention


def small_params(readout=True):
    rng = np.random.default_rng(0)
    net = layered(3, 2, 2)
    return Params(
        net,
        rng.uniform(0.5, 1, 6),
        rng.normal(0, 0.1, 6),
        rng.uniform(0.5, 1, 6),
        rng.normal(size=6),
        rng.normal(size=net.n_edges),
        rng.normal(size=net.n_crossbar),
        readout=rng.normal(size=(2, 3)) if readout else None,
        kT=0.1,
    )


def test_layered_and_all_to_all_topologies():
    net = layered(8, 4, 1)
    assert net.n_nodes == 32 and net.n_edges == 3 * 64 and net.n_crossbar == 8
    assert net.outputs.tolist() == list(range(24, 32))
    assert (net.edges[:, 0] < net.edges[:, 1]).all()
    assert np.array_equal(net.edges, np.unique(net.edges, axis=0))  # row-major order
    big = all_to_all(64, 10, 784)
    assert big.n_nodes == 74 and big.n_edges == 2701 and big.n_crossbar == 784 * 74
    assert big.crossbar[:3].tolist() == [[0, 0], [0, 1], [0, 2]]  # line-major


@pytest.mark.parametrize(
    "args, message",
    [
        ((3, [(0, 3)], 1, [], [0]), "outside"),
        ((3, [(1, 1)], 1, [], [0]), "different nodes"),
        ((3, [(0, 1)], 1, [(1, 0)], [0]), "input lines"),
        ((3, [(0, 1)], 1, [], [0, 0]), "repeated"),
        ((3, [(0, 1, 2)], 1, [], [0]), "shape"),
    ],
)
def test_network_errors_name_the_problem(args, message):
    with pytest.raises(ValueError, match=message):
        Network(*args)


def test_edges_are_normalised():
    net = Network(3, [(2, 0), (1, 0), (0, 2)], 0, [], [2])
    assert net.edges.tolist() == [[0, 1], [0, 2]]


def test_params_validation():
    p = small_params()
    with pytest.raises(ParamsError, match="coupling must have shape"):
        p.copy(coupling=np.zeros(3))
    with pytest.raises(ParamsError, match="bias has non-finite"):
        p.copy(bias=np.array([0, np.nan, 0, 0, 0, 0.0]))
    with pytest.raises(ParamsError, match="unstable"):
        p.copy(quartic=np.array([1, 1, -1, 1, 1, 1.0]))
    with pytest.raises(ParamsError, match="unstable"):
        p.copy(quartic=np.zeros(6), quadratic=np.array([1, 1, 0, 1, 1, 1.0]))
    with pytest.raises(ParamsError, match="positive definite"):
        p.copy(quartic=np.zeros(6), cubic=np.zeros(6), quadratic=np.full(6, 0.1), coupling=np.full(9, 2.0))
    with pytest.raises(ParamsError, match="kT"):
        p.copy(kT=0)
    with pytest.raises(ParamsError, match="readout"):
        p.copy(readout=np.ones((2, 4)))
    # a board model with rails may hold an unconfined potential, but only when it says so
    p.copy(quartic=np.zeros(6), quadratic=np.zeros(6), cubic=np.zeros(6), require_stable=False)


def test_energy_force_and_dense_views_agree():
    p = small_params()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 6))
    inputs = rng.normal(size=(4, 2))
    c = p.coupling_matrix()
    assert np.allclose(c, c.T) and np.all(np.diag(c) == 0)
    eps = 1e-6
    num = np.stack(
        [(p.energy(x + eps * np.eye(6)[i], inputs) - p.energy(x - eps * np.eye(6)[i], inputs)) / (2 * eps) for i in range(6)],
        -1,
    )
    np.testing.assert_allclose(p.force(x, inputs), -num, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(p.field(inputs), p.force(np.zeros((4, 6)), inputs))


def test_ising_convention_flips_the_bias_only():
    net = layered(2, 2, 1)
    p = from_ising_convention(net, 1.0, 1.0, [0.5, 0, 0, 0], np.ones(4), np.ones(2))
    assert p.bias[0] == -0.5 and (p.coupling == 1).all()
    x = np.array([0.3, -0.2, 0.1, 0.4])
    direct = (x**2 + x**4).sum() + 0.5 * x[0] + sum(x[a] * x[b] for a, b in net.edges) + 0.7 * (x[0] + x[1])
    assert np.isclose(p.energy(x, [0.7]), direct)


def test_vector_round_trip():
    p = small_params()
    v = p.vector()
    q = p.with_vector(v * 2)
    np.testing.assert_allclose(q.coupling, 2 * p.coupling)
    np.testing.assert_allclose(q.readout, 2 * p.readout)
    with pytest.raises(ParamsError):
        p.with_vector(v[:-1])


@pytest.mark.parametrize("suffix", [".h5", ".json"])
@pytest.mark.parametrize("readout", [True, False])
def test_parameter_files_round_trip(tmp_path, suffix, readout):
    p = small_params(readout)
    path = save_params(p, tmp_path / f"p{suffix}", provenance={"made_by": "test"})
    q = load_params(path)
    assert q.network.same_as(p.network) and q.network.layers == p.network.layers
    np.testing.assert_array_equal(q.vector(), p.vector())
    assert q.kT == p.kT and q.mobility == p.mobility


def test_hdf5_update_keeps_other_groups(tmp_path):
    path = tmp_path / "run.h5"
    with h5py.File(path, "w") as f:
        f["log/loss"] = np.arange(3.0)
    save_params(small_params(), path)
    save_params(small_params(False), path)
    with h5py.File(path) as f:
        assert list(f["log/loss"][()]) == [0, 1, 2]
    assert load_params(path).readout is None


def test_malformed_files_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(ParamsError, match="not a readable HDF5"):
        load_params(bad)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(ParamsError, match="format attribute"):
        load_params(other)
    js = tmp_path / "bad.json"
    js.write_text("{")
    with pytest.raises(ParamsError, match="not valid JSON"):
        load_params(js)
    d = json.loads(save_params(small_params(), tmp_path / "ok.json").read_text())
    del d["params"]["coupling"]
    js.write_text(json.dumps(d))
    with pytest.raises(ParamsError, match="coupling"):
        load_params(js)
    d = json.loads((tmp_path / "ok.json").read_text())
    d["params"]["bias"][0] = float("nan")
    js.write_text(json.dumps(d))
    with pytest.raises(ParamsError, match="non-finite"):
        load_params(js)
    with pytest.raises(FileNotFoundError):
        load_params(tmp_path / "missing.h5")


def _random_layered_program(seed: int) -> Params:
    """A 4 x 2 layered program with random bias, couplings, crossbar and readout (kT 0.3)."""
    rng = np.random.default_rng(seed)
    net = layered(4, 2, 1)
    return Params.uniform(net, 1.0, 0.0, 1.0, bias=rng.normal(0, 1, net.n_nodes), coupling=rng.normal(0, 0.5, net.n_edges),
                          crossbar=rng.normal(0, 1, net.n_crossbar), readout=rng.normal(0, 1, (1, 4)), kT=0.3)


def _assert_same_answer(p: Params, q: Params, dt_q: float) -> None:
    """The read-out answers of ``p`` (dt 1e-3) and ``q`` (dt ``dt_q``) at t = 1 agree within 5 standard
    errors at two inputs (4000 twin runs each, independent noise)."""
    from sim_backend.twin import sample_reset

    z, m, outputs = np.array([[0.2], [0.9]]), 4000, p.network.outputs
    yp = sample_reset(p, z, 1.0, m, dt=1e-3, seed=1, nodes=outputs).x[:, :, 0] @ p.readout[0]
    yq = sample_reset(q, z, 1.0, m, dt=dt_q, seed=2, nodes=outputs).x[:, :, 0] @ q.readout[0]
    se = np.sqrt((yp.var(1) + yq.var(1)) / m)
    assert np.all(np.abs(yp.mean(1) - yq.mean(1)) < 5 * se)


def test_flipped_program_has_the_same_energy_and_answer():
    """x_i -> -x_i on some nodes: V(s x) of the flipped program equals V(x), inputs included, and the
    readout gives the same answer on the twin (within noise); one_polarity makes every weight negative."""
    rng = np.random.default_rng(3)
    p = _random_layered_program(3)
    p = p.copy(cubic=rng.normal(0, 0.2, p.network.n_nodes))
    nodes = [0, 2, 5, 7]
    q = p.flipped(nodes)
    s = np.ones(p.network.n_nodes)
    s[nodes] = -1
    x = rng.normal(0, 1, (5, p.network.n_nodes))
    i = rng.normal(0, 1, (5, 1))
    np.testing.assert_allclose(q.energy(x * s, i), p.energy(x, i))
    assert np.allclose(p.flipped(nodes).flipped(nodes).vector(), p.vector())
    neg = p.one_polarity(-1.0)
    assert np.all(neg.crossbar < 0) and np.allclose(np.abs(neg.crossbar), np.abs(p.crossbar))
    _assert_same_answer(p, q, 1e-3)
    with pytest.raises(ParamsError):
        p.flipped([p.network.n_nodes])


def test_rescaled_program_computes_the_same_answer():
    """y = x / lam: same output (readout lam f) at the same time, from the twin, within noise."""
    p = _random_layered_program(0)
    q = p.rescaled(0.5)
    assert q.mobility == 4.0 and q.kT == p.kT and np.allclose(q.quartic, p.quartic / 16)
    x = np.linspace(-1, 1, 2 * p.network.n_nodes).reshape(2, -1)
    np.testing.assert_allclose(q.energy(x / 0.5), p.energy(x))  # V(lam y) = V(x)
    _assert_same_answer(p, q, 2.5e-4)
    with pytest.raises(ParamsError):
        p.rescaled(0.0)


def test_unbiased_cos_loss_removes_the_variance_of_the_mean():
    """Answers ``mu(z) + sigma n`` (Gaussian), M readings per input: the plain loss (14) is biased up by
    ``sigma^2 / M``, the unbiased one is not.  Over 4000 repeated measurements the mean of each is
    known to within its standard error (about 3e-4 here); the plain loss's bias (0.2) is 600 of those,
    and the unbiased loss must lie within 5 of the true squared error."""
    from tc_hw.model.tasks import cos_loss, cos_loss_unbiased

    net = layered(4, 2, 1)
    p = Params.uniform(net, 1.0, 0.0, 1.0, readout=np.array([[1.0, 0.0, 0.0, 0.0]]))
    rng = np.random.default_rng(11)
    points, m, sigma, reps = 20, 5, 1.0, 4000
    target = np.cos(np.linspace(0, 2 * np.pi, points))
    mu = target + rng.normal(0, 0.3, points)
    true = float(np.mean((mu - target) ** 2))
    plain, unbiased = [], []
    for _ in range(reps):
        x = np.zeros((points, m, 4))
        x[:, :, 0] = mu[:, None] + sigma * rng.normal(size=(points, m))
        plain.append(cos_loss(p, x, target))
        unbiased.append(cos_loss_unbiased(p, x, target))
    se = np.std(unbiased) / np.sqrt(reps)
    assert abs(np.mean(plain) - (true + sigma**2 / m)) < 5 * np.std(plain) / np.sqrt(reps)
    assert abs(np.mean(unbiased) - true) < 5 * se
    with pytest.raises(ValueError, match="readings >= 2"):
        cos_loss_unbiased(p, x[:, :1], target)
