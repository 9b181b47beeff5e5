"""Population evaluation on a local Ray cluster (tc_hw.cluster): bitwise the single-process losses
whatever the number of workers, and a worker killed mid-call costs a logged retry, not a result."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from tc_hw import cluster
from tc_hw.model.tasks import cos_task
from tc_hw.train.cos import cos_network, evaluate_cos, start_vector, train_cos_ga

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_cluster():
    """A two-CPU local cluster for the module (one thread per task), shut down at the end."""
    info = cluster.connect("local", num_cpus=2)
    try:
        yield info
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def population():
    """Ten candidates around the aligned start (different enough that every loss differs)."""
    base = cos_network()
    rng = np.random.default_rng(17)
    return base, start_vector(base) + 0.05 * rng.standard_normal((10, base.vector().size))


def _listening(pids) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket and bound UDP socket of ``pids``."""
    psutil = pytest.importorskip("psutil")
    out = []
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        out += [(pid, c.laddr.ip, c.laddr.port) for c in conns
                if c.status == psutil.CONN_LISTEN or (c.status == psutil.CONN_NONE and not c.raddr)]
    return out


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def test_a_local_cluster_listens_on_loopback_only(local_cluster):
    # every Ray process of the local cluster is a child of this one (GCS, raylet, agents, workers)
    psutil = pytest.importorskip("psutil")
    pids = [os.getpid()] + [p.pid for p in psutil.Process().children(recursive=True)]
    sockets = _listening(pids)
    assert len(sockets) >= 3  # at least the GCS, the raylet and this driver's worker server
    assert [s for s in sockets if not _is_loopback(s[1])] == []
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    assert not _is_loopback("0.0.0.0") and not _is_loopback("::") and _is_loopback("::ffff:127.0.0.1")


def test_split_rows_covers_every_row_once():
    for n in (0, 1, 7, 50):
        for k in (1, 2, 3, 8, 60):
            spans = cluster.split_rows(n, k)
            rows = [r for a, b in spans for r in range(a, b)]
            assert rows == list(range(n)), (n, k, spans)
            assert len(spans) == max(1, min(k, n)) and all(b > a for a, b in spans if n)
    with pytest.raises(ValueError):
        cluster.split_rows(5, 0)


@pytest.mark.parametrize("common_noise", [True, False])
def test_any_number_of_workers_gives_the_single_process_losses(local_cluster, population, common_noise):
    base, vectors = population
    z, tgt = cos_task(6)
    # 6 x 24 = 144 trajectories per candidate: some 128-lane blocks of the population kernel hold one
    # candidate (its scalar path), others two (the per-lane path), and which depends on the split
    kw = dict(samples=24, dt=0.02, seed=5, common_noise=common_noise)
    ref = evaluate_cos(vectors, base, z, tgt, **kw)
    assert np.all(np.isfinite(ref)) and len(np.unique(ref)) == len(ref)
    for workers in (1, 2, 3):
        ev = cluster.ClusterEvaluator(workers)
        got = ev(vectors, base, z, tgt, **kw)
        assert np.array_equal(got, ref), (workers, got - ref)
        assert ev.batches == workers and ev.events == []
    # the rows' own seeds matter: a batch evaluated as if it were the population's start differs
    if not common_noise:
        assert not np.array_equal(evaluate_cos(vectors[5:], base, z, tgt, **kw), ref[5:])


def test_a_worker_killed_mid_call_is_retried_and_logged(local_cluster, population):
    base, vectors = population
    z, tgt = cos_task(25)
    kw = dict(samples=200, dt=0.01, seed=2)  # about a second per batch: the kill lands mid-batch
    ref = evaluate_cos(vectors, base, z, tgt, **kw)
    ev = cluster.ClusterEvaluator(2)
    ev(vectors[:2], base, z[:2], tgt[:2], samples=2, dt=0.01)  # workers up and compiled
    killed = []

    def kill_one_busy_worker():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            pids = cluster.worker_pids()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.005)

    t = threading.Thread(target=kill_one_busy_worker, daemon=True)
    t.start()
    got = ev(vectors, base, z, tgt, **kw)
    t.join()
    assert killed, "no worker was seen busy"
    assert np.array_equal(got, ref)
    assert len(ev.events) == 1 and ev.events[0]["error"] == "WorkerCrashedError" and ev.events[0]["call"] == 1
    assert ev.summary()["retries"] == 1


def test_an_error_of_the_evaluation_is_not_retried(local_cluster, population):
    base, vectors = population
    z, tgt = cos_task(4)
    ev = cluster.ClusterEvaluator(2)
    with pytest.raises(ValueError, match="antithetic"):
        ev(vectors, base, z, tgt, samples=3, antithetic=True)  # odd M: refused by the sampler
    assert ev.events == []


def test_train_cos_ga_on_the_cluster_is_bitwise_the_plain_run(local_cluster):
    kw = dict(generations=3, population=8, points=4, samples=4, seed=3, progress=False, elites=2,
              eval_points=5, eval_samples=10, check_dt=None, plots=False)
    p_ref, m_ref = train_cos_ga(**kw)
    ev = cluster.ClusterEvaluator(2)
    p, m = train_cos_ga(**kw, evaluate=ev)
    assert ev.calls >= 3  # every generation (and the final re-measurement of the elites)
    assert np.array_equal(p.vector(), p_ref.vector())
    assert m["best_loss_history"] == m_ref["best_loss_history"]
    assert m["elite_loss_history"] == m_ref["elite_loss_history"] and m["loss"] == m_ref["loss"]


def test_cli_train_cos_with_cluster_records_the_workers_and_matches_the_plain_run(local_cluster, tmp_path, capsys,
                                                                                   monkeypatch):
    import functools

    import h5py

    import tc_hw.cli.train as cli_train
    from tc_hw.cli import main

    # the final measurement at the paper's sizes is not what is tested here: keep it small
    monkeypatch.setattr(cli_train, "train_cos_ga", functools.partial(train_cos_ga, eval_points=5, eval_samples=10,
                                                                      check_dt=None, plots=False))
    argv = ["train", "--task", "cos", "--method", "ga", "--generations", "1", "--population", "6", "--points", "3",
            "--samples", "2", "--json"]
    assert main([*argv, "--out", str(tmp_path / "plain.h5")]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*argv, "--out", str(tmp_path / "ray.h5"), "--cluster", "local"]) == 0  # joins the running cluster
    r = json.loads(capsys.readouterr().out)
    assert ray.is_initialized()  # a cluster the command did not start is left running
    assert r["cluster"]["workers"] == local_cluster["cpus"] and r["cluster"]["retries"] == 0
    assert r["cluster"]["calls"] >= 2 and r["cluster"]["batches"] >= 2 * local_cluster["cpus"]
    for k in ("loss", "best_loss_history", "elite_loss_history", "elite_eval_losses"):
        assert r[k] == plain[k], k
    with h5py.File(tmp_path / "ray.h5", "r") as f:
        assert json.loads(f.attrs["cluster"])["workers"] == local_cluster["cpus"]


def test_mnist_evaluation_on_the_cluster_is_bitwise_the_plain_one(local_cluster, monkeypatch):
    import tc_hw.model.tasks as tasks
    from tc_hw.evaluation import evaluate_mnist
    from tc_hw.model.data.thermo_gd import load_published

    full = tasks.mnist_inputs
    monkeypatch.setattr(tasks, "mnist_inputs", lambda split: tuple(a[:500] for a in full(split)))  # 500 digits
    params = load_published()
    ref = evaluate_mnist(params, samples=3, seed=4, time_obs=0.05, dt=1e-3, progress=False)
    ev = cluster.ClusterEvaluator(2)
    got = cluster.evaluate_mnist_on_cluster(params, 3, 4, 0.05, 1e-3, ev)
    assert ev.batches == 2 and got["cluster"]["retries"] == 0
    for k, v in ref.items():
        if k != "seconds":
            assert got[k] == v, k
    other = cluster.evaluate_mnist_on_cluster(params, 3, 5, 0.05, 1e-3, ev)  # the seed reaches the workers
    assert other["heat_per_inference_kT"] != ref["heat_per_inference_kT"]


def test_cli_evaluate_mnist_with_cluster(local_cluster, monkeypatch, capsys):
    import tc_hw.model.tasks as tasks
    from tc_hw.cli import main
    from tc_hw.model.data.paths import shared_dir

    full = tasks.mnist_inputs
    monkeypatch.setattr(tasks, "mnist_inputs", lambda split: tuple(a[:300] for a in full(split)))
    argv = ["evaluate", "--params", str(shared_dir() / "data" / "thermo_gd" / "parameters.dat"), "--format",
            "thermo_gd", "--samples", "2", "--time", "0.02", "--seed", "7", "--json"]
    assert main(argv) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*argv, "--cluster", "local"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["cluster"]["workers"] == 2 and r["cluster"]["address"] == "local"
    assert {k: v for k, v in r.items() if k not in ("seconds", "cluster")} == \
        {k: v for k, v in plain.items() if k != "seconds"}
