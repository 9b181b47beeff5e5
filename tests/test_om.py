"""Onsager-Machlup teacher-student training: action, gradient, solvers, identification, teacher files."""

import h5py
import numpy as np
import pytest

from tc_hw.model.network import all_to_all, layered, thermo_gd_network
from tc_hw.train import om
from tc_hw.train.om import (
    OMStats,
    action_from_trajectories,
    evaluate_twin,
    guide_bias,
    ideal_trajectories,
    om_action,
    om_gd,
    om_gradient,
    om_lstsq,
    om_objective,
    student_template,
    teacher_stats,
    train_mnist_om,
    trajectory_stats,
)
from tc_hw.train.teacher import Teacher, TeacherError, get_teacher, train_teacher

DT = 1e-3


def tiny_problem(net=None, seed=0, kT=1.0, n_traj=2):
    rng = np.random.default_rng(seed)
    net = net or all_to_all(3, 2, 4)
    tmpl = student_template(net, quadratic=1.0, cubic=0.2, quartic=1.0)
    inputs = rng.normal(size=(6, net.n_inputs))
    guide = 3 * rng.normal(size=(6, net.n_nodes))
    x = ideal_trajectories(guide, 0.02, DT, kT=kT, n_traj=n_traj, seed=1, cubic=0.2)
    stats = trajectory_stats(inputs, x, DT, cubic=0.2)
    params = tmpl.copy(bias=rng.normal(size=net.n_nodes), coupling=rng.normal(size=net.n_edges),
                       crossbar=rng.normal(size=net.n_crossbar))
    return tmpl, params, inputs, x, stats


def penalised_gradient(p, stats, ridge):
    """Gradient of om_objective from om_gradient plus the penalty terms."""
    g = om_gradient(p, stats)
    scale = om._action_scale(p, stats) * stats.count
    return {"bias": g["bias"] / scale, "crossbar": g["crossbar"] / scale + 2 * ridge * p.crossbar,
            "coupling": g["coupling"] / scale + 4 * ridge * p.coupling}


@pytest.mark.parametrize("net", [all_to_all(3, 2, 4), layered(3, 2, 2)], ids=["all_to_all", "layered"])
def test_action_from_statistics_and_gradient_match_definition(net):
    _, p, inputs, x, stats = tiny_problem(net)
    direct = action_from_trajectories(p, inputs, x, DT)
    assert om_action(p, stats) == pytest.approx(direct, rel=1e-10)
    grad = om_gradient(p, stats)
    h = 1e-5
    for kind in ("bias", "coupling", "crossbar"):
        v = getattr(p, kind)
        fd = np.empty_like(v)
        for j in range(len(v)):
            e = np.zeros_like(v)
            e[j] = h
            fd[j] = (action_from_trajectories(p.copy(**{kind: v + e}), inputs, x, DT)
                     - action_from_trajectories(p.copy(**{kind: v - e}), inputs, x, DT)) / (2 * h)
        np.testing.assert_allclose(grad[kind], fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())


def test_statistics_add_and_fast_deterministic_path_agrees():
    rng = np.random.default_rng(3)
    guide, inputs = 50 * rng.normal(size=(8, 5)), rng.normal(size=(8, 3))
    x = ideal_trajectories(guide)
    a = trajectory_stats(inputs, x, DT)
    b = om._deterministic_stats(inputs, guide, 0.2, DT, 1.0, 0.0, 1.0)
    c = trajectory_stats(inputs[:3], x[:3], DT) + trajectory_stats(inputs[3:], x[3:], DT)
    for name in ("uu", "ux", "xx", "uf", "xf", "ff"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(getattr(c, name), getattr(a, name), rtol=1e-12, atol=1e-9)
    assert a.count == b.count == c.count == 8 * 200 and a.n_paths == c.n_paths == 8


@pytest.mark.parametrize("net", [all_to_all(3, 2, 4), layered(3, 2, 2)], ids=["all_to_all", "layered"])
def test_least_squares_is_a_stationary_point(net):
    tmpl, _, _, _, stats = tiny_problem(net)
    ridge = 1e-2
    joint = om_lstsq(tmpl, stats, ridge)
    for kind, g in penalised_gradient(joint, stats, ridge).items():
        assert np.abs(g).max() < 1e-8, kind
    avg = om_lstsq(tmpl, stats, ridge, symmetric="average")
    g = penalised_gradient(avg, stats, ridge)
    assert np.abs(g["bias"]).max() < 1e-8 and np.abs(g["crossbar"]).max() < 1e-8  # private params re-solved
    assert om_objective(avg, stats, ridge) >= om_objective(joint, stats, ridge)  # joint is the exact minimum
    # Any perturbation raises the objective.
    rng = np.random.default_rng(1)
    worse = joint.copy(coupling=joint.coupling + 1e-3 * rng.normal(size=net.n_edges))
    assert om_objective(worse, stats, ridge) > om_objective(joint, stats, ridge)


def test_gd_decreases_the_action_towards_least_squares():
    tmpl, _, _, _, stats = tiny_problem()
    ridge = 1e-2
    p, hist = om_gd(tmpl, stats, steps=3000, lr=3e-2, ridge=ridge, progress=False)
    best = om_objective(om_lstsq(tmpl, stats, ridge), stats, ridge)
    excess = np.asarray(hist["objective"]) - best  # >= 0: the noise of the paths sets the floor
    assert excess.min() >= -1e-9 * best
    assert (np.diff(excess[::20]) <= 1e-9 * best).all()  # decreasing (sampled every 200 steps)
    assert hist["final_objective"] - best < 1e-4 * excess[0]
    assert hist["action_per_path"][-1] < hist["action_per_path"][0]
    assert hist["final_objective"] == pytest.approx(om_objective(p, stats, ridge))


def test_least_squares_identifies_a_quadratic_network_from_twin_trajectories():
    """Parameter identification: the OM solution is the maximum-likelihood estimate of the
    Euler-Maruyama path density, so it recovers the parameters that generated the paths."""
    from sim_backend.twin import sample_reset

    rng = np.random.default_rng(7)
    net = all_to_all(3, 1, 2)
    true = student_template(net, quadratic=1.0, quartic=0.0).copy(
        bias=rng.normal(0, 1, net.n_nodes), coupling=rng.normal(0, 0.3, net.n_edges),
        crossbar=rng.normal(0, 0.5, net.n_crossbar))
    inputs = rng.normal(size=(20, net.n_inputs))
    steps = 1500
    run = sample_reset(true, inputs, np.arange(1, steps + 1) * DT, 50, dt=DT, seed=3, dtype=np.float64)
    x = np.concatenate([np.zeros((20, 50, 1, net.n_nodes)), run.x], axis=2)
    stats = trajectory_stats(inputs, x, DT, quadratic=1.0, quartic=0.0)
    fit = om_lstsq(student_template(net, quadratic=1.0, quartic=0.0), stats, ridge=0.0)
    for kind in ("bias", "coupling", "crossbar"):
        np.testing.assert_allclose(getattr(fit, kind), getattr(true, kind), atol=0.15, err_msg=kind)
    assert om_action(fit, stats) <= om_action(true, stats)  # the MLE beats the truth on its own data
    err = np.abs(fit.vector() - true.vector()).max()
    assert err < 0.15


def test_guide_bias_layout():
    h = np.array([[0.5, -1.0, 0.2, 1.0]])
    o = np.array([[0.9, 0.1]])
    np.testing.assert_allclose(guide_bias(h, o, 10.0), [[5, -10, 2, 10, 8, -8]])
    np.testing.assert_allclose(guide_bias(h, o, (10.0, 20.0), 1.0), [[5, -10, 4, 20, 0.8, -0.8]])
    x = ideal_trajectories(guide_bias(h, o, 10.0))
    assert x.shape == (1, 1, 201, 6) and (x[0, 0, 0] == 0).all()
    assert (np.sign(x[0, 0, -1]) == np.sign([5, -10, 2, 10, 8, -8])).all()


def test_errors_on_bad_shapes_and_nan():
    tmpl, p, inputs, x, stats = tiny_problem()
    with pytest.raises(ValueError, match="NaN"):
        guide_bias(np.array([[np.nan]]), np.array([[0.5]]), 1.0)
    with pytest.raises(ValueError, match="same P"):
        guide_bias(np.zeros((2, 3)), np.zeros((3, 2)), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        ideal_trajectories(np.array([[np.inf, 0.0]]))
    with pytest.raises(ValueError, match="shape"):
        ideal_trajectories(np.zeros(3))
    bad = x.copy()
    bad[0, 0, 3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        trajectory_stats(inputs, bad, DT)
    with pytest.raises(ValueError, match="inputs must have shape"):
        trajectory_stats(inputs[:2], x, DT)
    with pytest.raises(ValueError, match="x must have shape"):
        trajectory_stats(inputs, x[:, :, :1], DT)
    other = student_template(all_to_all(2, 2, 4))
    with pytest.raises(ValueError, match="nodes"):
        om_action(other, stats)
    with pytest.raises(ValueError, match="cubic"):
        om_lstsq(student_template(tmpl.network), stats)  # statistics made with cubic 0.2
    with pytest.raises(ValueError, match="symmetric"):
        om_lstsq(tmpl, stats, symmetric="lower")
    with pytest.raises(ValueError, match="ridge"):
        om_lstsq(tmpl, stats, ridge=-1.0)
    with pytest.raises(ValueError, match="different students"):
        stats + trajectory_stats(inputs, x, DT)  # cubic 0 vs 0.2
    with pytest.raises(ValueError, match="method"):
        train_mnist_om(method="newton")


# ---------------------------------------------------------------------------- teacher
@pytest.fixture(scope="module")
def small_mnist():
    from tc_hw.model.tasks import mnist_inputs

    x, y = mnist_inputs("train")
    return x[:3000], y[:3000]


@pytest.fixture(scope="module")
def small_teacher(small_mnist):
    x, y = small_mnist
    return train_teacher(x[:2000], y[:2000], epochs=3, progress=False, val=(x[2000:], y[2000:]))


def test_teacher_learns_and_round_trips(small_teacher, small_mnist, tmp_path):
    x, y = small_mnist
    t = small_teacher
    assert t.info["val_accuracy"] > 0.8 and t.accuracy(x[2000:], y[2000:]) == t.info["val_accuracy"]
    hid, out = t.activations(x[:10])
    assert hid.shape == (10, 64) and out.shape == (10, 10) and hid.dtype == np.float32
    assert np.abs(hid).max() <= 1 and np.allclose(out.sum(1), 1, atol=1e-5)
    np.testing.assert_array_equal(t.predict_proba(x[:10]), out)
    path = t.save(tmp_path / "teacher.h5")
    back = Teacher.load(path)
    for a, b in zip(t.weights + t.biases, back.weights + back.biases):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(back.predict_proba(x[:50]), t.predict_proba(x[:50]))
    assert back.info["epochs"] == 3 and back.info["optimizer"] == "adam"
    with h5py.File(path) as f:  # plain HDF5 datasets, no pickle
        assert f.attrs["format"] == "tc-hw/teacher" and f["W0"].shape == (784, 32)
    assert get_teacher(path) is not t and np.array_equal(get_teacher(path).weights[0], t.weights[0])  # cache


def test_teacher_accepts_raw_digits_and_rejects_bad_input(small_teacher, tmp_path):
    from tc_hw.model.data.mnist import load_mnist
    from tc_hw.model.tasks import mnist_inputs

    raw, _ = load_mnist("test")
    norm, _ = mnist_inputs("test")
    np.testing.assert_allclose(small_teacher.predict_proba(raw[:20]), small_teacher.predict_proba(norm[:20]), atol=1e-5)
    assert small_teacher.predict_proba(norm[0].reshape(28, 28)).shape == (1, 10)
    with pytest.raises(ValueError, match="shape"):
        small_teacher.predict_proba(np.zeros((3, 100)))
    bad = norm[:2].copy()
    bad[0, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        small_teacher.predict_proba(bad)
    with pytest.raises(TeacherError, match="layer 0"):
        Teacher([np.zeros((10, 32)), np.zeros((32, 32)), np.zeros((32, 10))], [np.zeros(32), np.zeros(32), np.zeros(10)])
    with pytest.raises(ValueError, match="labels"):
        train_teacher(norm[:10], np.arange(10) + 5, epochs=1, progress=False)
    with pytest.raises(ValueError, match="optimizer"):
        train_teacher(norm[:10], np.arange(10), optimizer="lbfgs", progress=False)
    junk = tmp_path / "junk.h5"
    junk.write_text("no")
    with pytest.raises(TeacherError, match="HDF5"):
        Teacher.load(junk)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["format"] = "something"
    with pytest.raises(TeacherError, match="format"):
        Teacher.load(tmp_path / "other.h5")
    with pytest.raises(FileNotFoundError):
        Teacher.load(tmp_path / "missing.h5")


def test_full_size_student_from_teacher_paths(small_teacher, small_mnist):
    """The 784/64/10 pipeline on a few hundred digits: both solvers run and agree."""
    x, y = small_mnist
    stats = teacher_stats(small_teacher, x[:400], (320.0, 160.0), 160.0, progress=False)
    assert stats.count == 400 * 200 and stats.dim == 1 + 784 + 74
    tmpl = student_template(thermo_gd_network())
    exact = om_lstsq(tmpl, stats, ridge=0.1)
    g = penalised_gradient(exact, stats, 0.1)
    scale = np.abs(om_gradient(tmpl, stats)["bias"]).max() / (om._action_scale(tmpl, stats) * stats.count)
    assert max(np.abs(v).max() for v in g.values()) < 1e-6 * scale
    gd, hist = om_gd(tmpl, stats, steps=300, lr=0.1, ridge=0.1, progress=False)
    assert om_objective(exact, stats, 0.1) <= hist["final_objective"] < hist["objective"][0]
    score = evaluate_twin(exact, x[:200], y[:200], samples=1)
    assert score["n"] == 200 and score["top1"] > 0.5  # training digits, tiny teacher
