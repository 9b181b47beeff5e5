"""Tasks as data: the task file, losses computed independently, the exact readout, refine --task FILE."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tc_hw.model.tasks import Task, cos_task_object, load_task, save_task


def _blobs(n=60, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    return Task("blobs", (labels * 2.0 - 1.0 + 0.5 * rng.normal(size=n))[:, None], "cross-entropy", labels=labels)


def test_task_file_round_trip(tmp_path):
    t = _blobs()
    save_task(t, tmp_path / "t.h5")
    u = load_task(tmp_path / "t.h5")
    assert (u.name, u.loss, u.n_outputs) == ("blobs", "cross-entropy", 2)
    np.testing.assert_array_equal(u.inputs, t.inputs)
    np.testing.assert_array_equal(u.labels, t.labels)
    c = cos_task_object(50)
    save_task(c, tmp_path / "c.h5")
    np.testing.assert_array_equal(load_task(tmp_path / "c.h5").targets, c.targets)


def test_task_file_refusals(tmp_path):
    import h5py

    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["inputs"] = np.zeros((3, 1))
    with pytest.raises(ValueError, match="not a task file"):
        load_task(tmp_path / "x.h5")
    with pytest.raises(ValueError, match="loss"):
        Task("t", np.zeros((3, 1)), "hinge", targets=np.zeros(3))
    with pytest.raises(ValueError, match="targets"):
        Task("t", np.zeros((3, 1)), "mse")
    with pytest.raises(ValueError, match="labels"):
        Task("t", np.zeros((3, 1)), "accuracy", labels=np.array([0, 1]))


def test_losses_against_direct_formulas():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(6, 3))
    labels = np.array([0, 2, 1, 1, 0, 2])
    t = Task("c", rng.normal(size=(6, 2)), "cross-entropy", labels=labels)
    p = np.exp(y) / np.exp(y).sum(1, keepdims=True)
    assert t.score(y) == pytest.approx(-np.mean(np.log(p[np.arange(6), labels])))
    acc = Task("a", t.inputs, "accuracy", labels=labels)
    assert acc.accuracy(y) == np.mean(y.argmax(1) == labels)
    assert acc.score(y) == pytest.approx(1 - acc.accuracy(y))
    m = Task("m", t.inputs, "mse", targets=rng.normal(size=(6, 3)))
    assert m.score(y) == pytest.approx(np.mean(np.sum((y - m.targets) ** 2, 1)))


def test_fit_readout_is_least_squares_to_one_hot():
    rng = np.random.default_rng(2)
    t = _blobs(40)
    xbar = rng.normal(size=(40, 5))
    f = t.fit_readout(xbar)
    assert f.shape == (2, 5)
    onehot = np.eye(2)[t.labels]
    best = np.sum((xbar @ f.T - onehot) ** 2)
    for _ in range(5):  # any other readout fits the one-hot targets worse
        assert np.sum((xbar @ (f + 0.01 * rng.normal(size=f.shape)).T - onehot) ** 2) > best


def test_cli_refine_with_a_task_file_reports_accuracy_before_and_after(tmp_path, capsys):
    from tc_hw.cli import main
    from tc_hw.model.files import save_params
    from tc_hw.train.cos import cos_network

    task = _blobs(40)
    save_task(task, tmp_path / "task.h5")
    base = cos_network()
    rng = np.random.default_rng(0)
    prog = base.copy(crossbar=rng.normal(0, 1.0, base.network.n_crossbar), readout=rng.normal(0, 0.3, (2, 8)))
    save_params(prog, tmp_path / "p.h5", {"task": "blobs"})
    rc = main(["refine", "--resource", "twin", "--params", str(tmp_path / "p.h5"), "--task", str(tmp_path / "task.h5"),
               "--generations", "2", "--population", "4", "--points", "10", "--samples", "10", "--final-samples",
               "40", "--log", str(tmp_path / "run.h5"), "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    for k in ("twin_loss", "start_loss", "refined_loss", "gap_closed", "readings", "kept", "start_accuracy",
              "refined_accuracy", "twin_accuracy"):
        assert k in r
    assert r["loss_name"] == "cross-entropy" and r["refined_loss"] <= r["start_loss"]
    assert 0.0 <= r["start_accuracy"] <= 1.0 and 0.0 <= r["refined_accuracy"] <= 1.0
    # twin-guided needs a one-output mse task: refused with the bad-input code before anything runs
    rc = main(["refine", "--resource", "twin", "--params", str(tmp_path / "p.h5"), "--task", str(tmp_path / "task.h5"),
               "--method", "twin-guided", "--log", str(tmp_path / "tg.h5"), "--json"])
    assert rc == 2 and not (tmp_path / "tg.h5").exists()
