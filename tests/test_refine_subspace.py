"""Refinement's additions: scenario boards derived from the emulator's default board, structured
crosstalk, the GA's and CMA-ES's subspace mutations, and /entry/final written under the log lock."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tc_hw.model.runlog import RunLog, read_log


def test_scenario_boards_are_the_default_board_with_their_changes():
    import tomllib

    from sim_backend.emulator.board import DEFAULT_BOARD_TOML, parse_board
    from tc_hw.scenarios import SCENARIOS, board_toml

    default = tomllib.loads(DEFAULT_BOARD_TOML)
    for name in SCENARIOS:
        doc = tomllib.loads(board_toml(name))
        parse_board(board_toml(name), name)  # the emulator accepts it
        assert doc["name"] == name and doc["channels"] == default["channels"] and doc["seed"] == default["seed"]
        changed = {k for k in doc["nonideal"] if doc["nonideal"][k] != default["nonideal"].get(k)}
        assert changed <= {"temp_drift_k", "drift_per_hour", "crosstalk", "crosstalk_min", "crosstalk_same_sign"}
    with pytest.raises(ValueError, match="no scenario"):
        board_toml("nope")


def test_crosstalk_scenario_couplings_are_3_percent_and_same_sign():
    from sim_backend.emulator.board import Board, parse_board
    from tc_hw.scenarios import board_toml

    ch = Board(parse_board(board_toml("crosstalk"), "crosstalk")).truth["channels"]
    prev, nxt = np.asarray(ch["xtalk_prev"]), np.asarray(ch["xtalk_next"])
    for x in (prev[1:], nxt[:-1]):  # the first (last) channel has no left (right) neighbour
        np.testing.assert_allclose(x, 0.03)
    assert prev[0] == 0 and nxt[-1] == 0


def test_crosstalk_min_zero_keeps_old_boards_unchanged():
    from sim_backend.emulator.nonideal import NonIdeal, _crosstalk

    u = np.random.default_rng(1).uniform(-1, 1, 50)
    np.testing.assert_array_equal(_crosstalk(NonIdeal(crosstalk=0.02), u), 0.02 * u)
    both = _crosstalk(NonIdeal(crosstalk=0.03, crosstalk_min=0.01), u)
    np.testing.assert_array_equal(np.sign(both), np.sign(u))
    assert np.abs(both).min() >= 0.01 and np.abs(both).max() <= 0.03


def test_tau_scenario_makes_every_node_10_percent_slower():
    import tomllib

    from tc_hw.scenarios import board_toml

    f = np.asarray(tomllib.loads(board_toml("tau"))["tau_node_factors"])
    assert f.shape == (32,)
    np.testing.assert_allclose(f, 1.10)


def test_subspace_basis_moves_the_outputs_by_the_set_rms_along_the_visible_directions():
    from tc_hw.refine import _subspace_basis

    rng = np.random.default_rng(0)
    # a Jacobian (rows 40, K 30) of rank 5 with singular values spread over two decades
    u, _ = np.linalg.qr(rng.normal(size=(40, 5)))
    v, _ = np.linalg.qr(rng.normal(size=(30, 5)))
    s = np.array([10.0, 3.0, 1.0, 0.3, 0.1])
    jac = u @ np.diag(s) @ v.T
    b = _subspace_basis(jac, 12, 0.05, 33)
    assert b.shape == (33, 5) and np.all(b[30:] == 0)  # rank 5 found; readout rows untouched
    steps = rng.standard_normal((4000, 5)) @ b.T
    dy = steps[:, :30] @ jac.T
    rms = np.sqrt(np.mean(dy**2))
    assert abs(rms - 0.05) < 0.003  # sd of the estimate ~0.05 / sqrt(2 * 4000 * 40 / ...) << 0.003
    # every direction moves the outputs equally: column norms of jac @ basis are equal
    col = np.linalg.norm(jac @ b[:30], axis=0)
    np.testing.assert_allclose(col, col[0], rtol=1e-9)
    # the mutations lie in the Jacobian's row space (no step the twin cannot see)
    resid = steps[:, :30] - steps[:, :30] @ v @ v.T
    assert np.abs(resid).max() < 1e-10
    assert _subspace_basis(jac, 2, 0.05, 33).shape == (33, 2)


def test_ga_mutation_basis_steps_in_its_span_and_resumes_bitwise(tmp_path):
    from tc_hw.train.ga import GeneticAlgorithm

    basis = np.zeros((6, 2))
    basis[0, 0], basis[3, 1] = 0.5, 0.1
    ga = GeneticAlgorithm(np.ones(6), 0.3, population=8, elites=2, seed=4, max_generations=5, mutation_basis=basis)
    first = ga.ask()
    np.testing.assert_array_equal(first[:, [1, 2, 4, 5]], 1.0)  # only the basis directions move
    assert np.std(first[:, 0]) > 3 * np.std(first[:, 3]) > 0
    ga.tell(np.sum((first - 2) ** 2, axis=1))
    ga.save(tmp_path / "g.h5")
    back = GeneticAlgorithm.load(tmp_path / "g.h5")
    np.testing.assert_array_equal(back.ask(), ga.ask())
    np.testing.assert_array_equal(back.mutation_basis, basis)
    for g in (ga, back):
        g.tell(np.sum((g.ask() - 2) ** 2, axis=1))
    np.testing.assert_array_equal(back.ask(), ga.ask())
    with pytest.raises(ValueError, match="mutation_basis"):
        GeneticAlgorithm(np.ones(6), 0.3, population=8, elites=2, mutation_basis=np.ones((5, 2)))


def test_cma_basis_searches_its_span_and_replays(tmp_path):
    pytest.importorskip("cma")
    from tc_hw.train.cmaes import CMAES

    basis = np.zeros((5, 2))
    basis[1, 0], basis[4, 1] = 1.0, 0.2
    es = CMAES(np.zeros(5), np.zeros(5), population=6, seed=2, max_generations=4, basis=basis)
    for _ in range(3):
        pop = es.ask()
        np.testing.assert_array_equal(pop[:, [0, 2, 3]], 0.0)
        es.tell(np.sum((pop - 1) ** 2, axis=1))
    es.save(tmp_path / "c.h5")
    back = CMAES.load(tmp_path / "c.h5")
    np.testing.assert_array_equal(back.ask(), es.ask())


WRITER = """
import sys, time, numpy as np
from tc_hw.model.runlog import RunLog
log = RunLog.create(sys.argv[1], {"task": "cos"}, population=2, n_params=3, elites=1)
log.append(0, {"population": np.zeros((2, 3)), "losses": [1.0, 2.0], "elite_losses": [1.0], "best_loss": 1.0,
               "best": np.zeros(3), "temperature_k": [300, 300], "wall_s": 0.1, "retries": 0, "paused_s": 0})
log.write_group("final", {"refined_loss": 0.5, "kept": "ga"}, {"volts": np.arange(3.0), "readout": np.ones(2)})
print("written", flush=True)
sys.stdin.readline()  # hold the lock until told
log.close()
"""


def test_final_group_is_written_while_the_log_lock_is_held(tmp_path):
    from tc_hw.model.runlog import LogBusyError
    from tc_hw.refine import read_final

    path = tmp_path / "run.h5"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "written"
        with pytest.raises(LogBusyError):  # a resume cannot slip in between the last generation and the final figures
            RunLog.reopen(path)
        final = read_final(path)
        assert final["refined_loss"] == 0.5 and final["kept"] == "ga"
        np.testing.assert_array_equal(final["volts"], [0.0, 1.0, 2.0])
    finally:
        proc.communicate("\n", timeout=60)
    assert proc.returncode == 0
    assert read_log(path)["completed_generations"] == 1
    RunLog.reopen(path).close()  # released at close


def test_logistic_readout_is_the_cross_entropy_optimum():
    from scipy.optimize import minimize

    from tc_hw.model.tasks import Task
    from tc_hw.refine import LOGISTIC_RIDGE, fit_task_readout

    rng = np.random.default_rng(5)
    x = rng.normal(size=(200, 4))
    w_true = 2.0 * rng.normal(size=(3, 4))
    p = np.exp(x @ w_true.T)
    p /= p.sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(3, p=q) for q in p])
    task = Task("t", x, "cross-entropy", labels=labels)
    f = fit_task_readout(task, x)
    lsq = task.fit_readout(x)

    def obj(w):
        w = w.reshape(3, 4)
        return task.score(x @ w.T) + 0.5 * LOGISTIC_RIDGE * np.sum(w * w)

    ref = minimize(obj, lsq.ravel(), method="BFGS", options={"gtol": 1e-9, "maxiter": 5000})
    assert obj(f.ravel()) <= ref.fun + 1e-7  # an independent optimiser finds nothing better
    np.testing.assert_allclose(f.ravel(), ref.x, atol=2e-3)
    assert task.score(x @ f.T) < 0.8 * task.score(x @ lsq.T)  # the least-squares probe's logits are poorly scaled
    # mse tasks keep the exact least squares
    mse = Task("m", x, "mse", targets=x @ w_true[:1].T)
    np.testing.assert_array_equal(fit_task_readout(mse, x), mse.fit_readout(x))


def test_twin_jacobian_steps_backwards_at_the_top_of_a_span():
    import calibration
    from calibration import map_params
    from calibration.curves import CurveError
    from sim_backend.device import TwinDevice
    from tc_hw.model.network import Network, layered
    from tc_hw.model.params import Params
    from tc_hw.refine_twin import TwinModel

    net = layered(8, 4, 1)
    net = Network(net.n_nodes, net.edges, net.n_inputs, net.crossbar, net.outputs[:3], layers=net.layers)
    params = Params.uniform(net, 1.0, 0.0, 1.0, kT=0.1, readout=np.ones((1, 3)))
    cmap = TwinDevice().channel_map
    cal = calibration.nominal(cmap)
    volts = map_params(params, cal, cmap)
    trainable = np.array([c.index for c in cmap if c.kind == "B" and c.a in set(net.outputs.tolist())])
    hi = np.array([cmap[i].vmax for i in trainable])
    model = TwinModel(params, cal, cmap, trainable, volts, samples=8)
    theta = volts[trainable].copy()
    theta[0] = hi[0]  # a candidate clipped to the top of its span
    z = np.linspace(0, 1, 4)[:, None]
    step = np.full(len(trainable), 0.05)
    with pytest.raises(CurveError):
        model.jacobian(theta, z, step, seed=1)  # a forward step would leave the calibrated span
    jac = model.jacobian(theta, z, step, seed=1, hi=hi)
    theta_b = theta.copy()
    theta_b[0] -= 0.05
    m = model.means(np.stack([theta_b, theta]), z, seed=1)
    np.testing.assert_allclose(jac[:, :, 0], (m[1] - m[0]) / 0.05, rtol=1e-10, atol=1e-12)  # the backward difference
    assert np.abs(jac[:, :, 0]).max() > 0
