"""Generative thermodynamic computing: reverse action and its gradient, exact least squares,
noising to equilibrium, the generator against the twin, a tiny end-to-end run, bad input."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tc_hw.train import generative as G

TINY = G.GenerativeConfig(t_f=0.3, dt=1e-2, ramp=0.3, hidden_ramp=0.5, mean_ramp=0.7, paths=3)


def _tiny_params(v=5, h=3, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    net = G.generative_network(h, v)
    cvh = rng.normal(0, scale, (v, h))
    chh = rng.normal(0, scale, (h, h))
    chh = np.triu(chh, 1) + np.triu(chh, 1).T
    return G._from_blocks(net, rng.normal(0, 0.5, v + h), cvh, chh, kT=0.1)


def _tiny_paths(v=5, h=3, seed=0, cfg=TINY):
    rng = np.random.default_rng(seed + 10)
    targets = np.hstack([rng.uniform(-0.5, 1.1, (2, v)), 1.25 * np.sign(rng.normal(size=(2, h)))])
    return G.noising_trajectories(targets, v, cfg.paths, cfg, seed).astype(np.float64)


def test_network_layout_and_blocks_round_trip():
    p = _tiny_params()
    net = p.network
    assert net.n_inputs == 0 and list(net.outputs) == list(range(5))
    assert net.n_edges == 5 * 3 + 3  # visible-hidden and hidden-hidden, no visible-visible
    assert not ((net.edges[:, 0] < 5) & (net.edges[:, 1] < 5)).any()
    b, cvh, chh = G._blocks(p)
    c = p.coupling_matrix()
    assert np.allclose(c[:5, 5:], cvh) and np.allclose(c[5:, 5:], chh) and np.allclose(c[:5, :5], 0)
    x = np.random.default_rng(1).normal(size=(4, 8))
    assert np.allclose(G._energy(p, b, cvh, chh, x), p.energy(x))


def test_reverse_action_gradient_matches_finite_differences():
    p = _tiny_params()
    x = _tiny_paths()
    dt = TINY.dt
    grad = G.reverse_action_grad(p, x, dt)
    eps = 1e-6
    for kind, idx in [("bias", 1), ("bias", 6), ("coupling", 2), ("coupling", 14), ("coupling", 16)]:
        def at(delta):
            vals = getattr(p, kind).copy()
            vals[idx] += delta
            return G.reverse_action(p.copy(**{kind: vals}), x, dt)

        numeric = (at(eps) - at(-eps)) / (2 * eps)
        assert numeric == pytest.approx(grad[kind][idx], rel=1e-6, abs=1e-6), (kind, idx)
    # the action from sufficient statistics equals the action of the paths (per path)
    st = G.stats_from_trajectories(x, dt, p.kT, 5)
    assert G.stats_action(p, st) == pytest.approx(G.reverse_action(p, x, dt) / x.shape[1], rel=1e-5)


@pytest.mark.parametrize("hidden_bias", [True, False])
def test_least_squares_solution_has_zero_gradient(hidden_bias):
    x = _tiny_paths(seed=3)
    dt, kT, v, ridge = TINY.dt, 0.1, 5, 1e-2
    st = G.stats_from_trajectories(x, dt, kT, v)
    hist = []
    b, cvh, chh, info = G.reverse_lstsq(st, v, ridge, tol=1e-12, history=hist, hidden_bias=hidden_bias)
    assert info["residual"] < 1e-9 and np.all(np.diff(hist) <= 1e-9 * abs(hist[0]))
    net = G.generative_network(3, v)
    p = G._from_blocks(net, b, cvh, chh, kT)
    # objective = action * 4kT / (dt * count) + ridge sum_i |C_i.|^2  (each coupling counted twice)
    scale = 4 * kT / (dt * st.count)

    def objective_grad(params):
        g = G.reverse_action_grad(params, x, dt)
        return scale * g["bias"], scale * g["coupling"] + 4 * ridge * params.coupling

    g_b, g_c = objective_grad(p)
    g0_b, g0_c = objective_grad(p.copy(bias=np.zeros(8), coupling=np.zeros(net.n_edges)))
    free = slice(None) if hidden_bias else slice(0, v)
    assert np.abs(g_c).max() < 1e-4 * np.abs(g0_c).max()
    assert np.abs(g_b[free]).max() < 1e-4 * np.abs(g0_b).max()
    if not hidden_bias:
        assert np.all(b[v:] == 0)
    assert info["objective"] == pytest.approx(
        G.stats_action(p, st, per_path=False) * 4 * kT / dt + ridge * 2 * (np.sum(cvh**2) + 0.5 * np.sum(chh**2)),
        rel=1e-6)


def test_noising_ends_at_the_uncoupled_equilibrium():
    cfg = G.GenerativeConfig()  # the training protocol: t_f 2.5, dt 1e-2, kT 0.1
    enc = G.Encoding()
    lo, hi = enc.range
    vis = np.array([lo, 0.0, 0.5, hi])
    targets = np.concatenate([vis, [-1.25, 1.25]])[None, :]
    x = G.noising_trajectories(targets, 4, 3000, cfg, seed=1)
    assert x.shape == (251, 3000, 6)
    assert np.allclose(x[0], targets)
    mean, var = G.equilibrium_moments(1.0, 0.0, 1.0, cfg.kT)
    assert mean == pytest.approx(0.0, abs=1e-12)
    assert var == pytest.approx(0.040878, rel=1e-4)  # narrower than the harmonic kT/2 = 0.05
    end = x[-1].astype(np.float64)
    # the mean left over (largest for full ink, held to the end of the mean-image ramp) is under a
    # fifth of the thermal width 0.2
    assert np.abs(end.mean(0)).max() < 0.045
    assert np.allclose(end.var(0), var, rtol=0.1)
    # and the sampler of the generator's start state draws that equilibrium
    p = _tiny_params()
    s = G.uncoupled_equilibrium(p, 20000, np.random.default_rng(0))
    assert np.abs(s.mean(0)).max() < 0.006 and np.allclose(s.var(0), var, rtol=0.03)
    assert np.mean(s.ravel() ** 4) / var**2 < 3  # platykurtic, not Gaussian


def test_generator_agrees_with_the_twin():
    """From one common start, generate() and the twin's kernel give the same distribution."""
    from sim_backend.twin import sample_reset

    p = _tiny_params(v=6, h=4, seed=2, scale=0.5)
    x0 = np.random.default_rng(0).normal(0, 0.2, 10)
    m = 4000
    run = sample_reset(p, np.zeros((1, 0)), 0.5, m, dt=1e-3, seed=3, x0=x0)
    twin = run.x[0, :, 0, :6].astype(np.float64)
    twin_heat = (p.energy(x0) - p.energy(run.x[0, :, 0, :].astype(np.float64))) / p.kT
    ours, heat = G.generate(p, m, seed=4, t_f=0.5, dt=1e-3, x0=np.tile(x0, (m, 1)))
    se = twin.std(0) / np.sqrt(m)
    assert np.all(np.abs(ours.mean(0) - twin.mean(0)) < 5 * np.sqrt(2) * se)
    assert np.allclose(ours.std(0), twin.std(0), rtol=0.06)
    assert np.mean(heat) == pytest.approx(np.mean(twin_heat), abs=5 * np.sqrt(2) * np.std(heat) / np.sqrt(m))


def test_tiny_training_lowers_the_action_and_generates(tmp_path):
    from tc_hw.train.teacher import Teacher

    teacher = Teacher.init(0)  # untrained: only the pipeline is under test here
    out = tmp_path / "gen.h5"
    params, res = G.train_generative((0, 1), out=out, seed=0, progress=False, teacher=teacher, hidden=6,
                                     paths=2, samples=3, t_f=0.5, dt=2e-2, gen_dt=2e-3)
    # gen_dt: two training paths leave stiff couplings; 1e-2 diverges for about half the seeds, 2e-3 for none of 0-4
    assert params.network.n_nodes == 790 and params.kT == 0.1
    assert np.all(params.bias[784:] == 0)  # hidden biases held at 0
    zero = params.copy(bias=np.zeros(790), coupling=np.zeros(params.network.n_edges))
    images, labels = G.select_images((0, 1), 1, 0)
    enc = G.Encoding()
    xv = enc.encode(images)
    targets = np.hstack([xv, G.hidden_targets(xv, 6, 0)])
    cfg = replace(G.GenerativeConfig(), hidden=6, paths=2, t_f=0.5, dt=2e-2)
    st = G.combine_stats(G.reverse_stats(targets, 784, cfg, 0, groups=labels))
    assert res["action_per_path"] < 0.8 * G.stats_action(zero, st)
    for key in ("classified_fraction", "class_fractions", "heat_kT", "train_seconds", "inverted_fraction"):
        assert key in res
    assert set(res["class_fractions"]) == {0, 1} and 0 <= res["classified_fraction"] <= 1
    import json

    json.dumps({k: v for k, v in res.items() if k != "history"})  # the CLI prints it with --json
    assert [p.endswith(s) for p, s in zip(res["plots"], ("_grid.png", "_strip.png", "_loss.png"))] == [True] * 3
    assert all((tmp_path / f"gen_{w}.png").stat().st_size > 1000 for w in ("grid", "strip", "loss"))
    x, heat = G.generate(params, 5, seed=1, t_f=0.5, dt=2e-3)
    assert x.shape == (5, 784) and heat.shape == (5,) and np.isfinite(x).all() and np.isfinite(heat).all()
    # the saved file runs again, with its encoding from the provenance
    loaded, enc2, prov = G.load_generative(out)
    assert enc2 == enc and prov["digits"] == "0,1"
    assert np.array_equal(loaded.coupling, params.coupling)
    r = G.generate_png(out, 4, tmp_path / "grid.png", seed=2, teacher=teacher, dt=2e-3)
    assert (tmp_path / "grid.png").stat().st_size > 1000 and np.isfinite(r["heat_kT"])


def test_online_training_lowers_the_objective():
    x = _tiny_paths(seed=5)
    targets = x[0, ::TINY.paths]
    cfg = replace(TINY, online_epochs=15, online_batch=16, online_lr=2e-2)
    hist = []
    b, cvh, chh, info = G.reverse_online(targets, 5, cfg, seed=0, history=hist)
    assert info["iterations"] == len(hist) > 20
    assert np.mean(hist[-5:]) < 0.7 * np.mean(hist[:3])
    assert np.all(b[5:] == 0) and np.allclose(chh, chh.T) and np.all(np.diag(chh) == 0)


def test_quantised_couplings_use_the_grid():
    p = _tiny_params(v=6, h=4, seed=1)
    for bits in (2, 3, 5):
        q = G.quantise_couplings(p, bits)
        levels = 2 ** (bits - 1) - 1
        for sl in (slice(0, 24), slice(24, None)):
            top = np.abs(p.coupling[sl]).max()
            n = q.coupling[sl] / top * levels
            assert np.allclose(n, np.round(n)) and np.abs(n).max() == pytest.approx(levels)
            assert np.abs(q.coupling[sl] - p.coupling[sl]).max() <= top / levels / 2 + 1e-12
    assert np.allclose(G.quantise_couplings(p, 24).coupling, p.coupling, atol=1e-6)
    assert np.array_equal(G.quantise_couplings(p, 4).bias, p.bias)


def test_bad_input_is_refused():
    for digits in ((0, 10), (-1,), (), "a,b", (1, 1)):
        with pytest.raises(ValueError):
            G._check_digits(digits)
    with pytest.raises(ValueError):
        G.train_generative((0, 12), progress=False)
    with pytest.raises(ValueError):
        G.train_generative((0, 1), progress=False, method="sgd")
    with pytest.raises(ValueError):
        G.train_generative((0, 1), progress=False, ramp=0.0)
    img = np.zeros((2, 784))
    img[:, 100] = 255
    img[1, 5] = np.nan
    with pytest.raises(ValueError):
        G.Encoding().encode(img)
    with pytest.raises(ValueError):
        G.Encoding().encode(np.full((1, 784), 300.0))
    with pytest.raises(ValueError):
        G.Encoding("log")
    targets = np.zeros((2, 8))
    targets[0, 3] = np.nan
    with pytest.raises(ValueError):
        G.reverse_stats(targets, 5, TINY)
    with pytest.raises(ValueError):
        G.stats_from_trajectories(np.full((3, 2, 8), np.nan), 0.01, 0.1, 5)
    p = _tiny_params()
    with pytest.raises(ValueError):
        G.generate(p, 0)
    with pytest.raises(ValueError):
        G.generate(p, 2, x0=np.full((2, 8), np.nan), t_f=0.1, dt=1e-2)
    with pytest.raises(ValueError):
        G.quantise_couplings(p, 1)
    with pytest.raises(ValueError):
        G.combine_stats([G.stats_from_trajectories(_tiny_paths(), 0.01, 0.1, 5)], weights=[-1.0])
    from tc_hw.model.network import all_to_all
    from tc_hw.model.params import Params

    with pytest.raises(ValueError):
        G.generate(Params.uniform(all_to_all(3, 2, 0)), 2)
