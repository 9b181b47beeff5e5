"""Population evaluation and boards on a Ray cluster (optional extra: ``pip install tc-hw[cluster]``).

Two kinds of Ray workers, both driven from the head process, which keeps the genetic algorithm's
ask/tell loop, its checkpoint and the run log (Ray keeps no optimiser state):

Twin tasks (:class:`ClusterEvaluator`)
    Stateless tasks that score a contiguous batch of candidates on the twin.  Every candidate's
    noise is fixed by its *global* row in the population (common noise: the generation's seed;
    independent noise: ``seeds.derive(seed, COS_CANDIDATE, row)``), never by the batch it lands in,
    so any number of workers gives losses bitwise equal to :func:`tc_hw.train.cos.evaluate_cos`
    in one process.  A batch whose worker dies (process killed, node lost) is submitted again,
    whole: its losses are only used from an attempt that finished, so a generation is never
    half-counted; each retry is recorded in :attr:`ClusterEvaluator.events`.

Board actors (:func:`board_actor`)
    One actor per board of a station file, placed with the custom resource ``{"board": 1}``; it
    opens its board's connection once and owns it (and its calibration record) for its life, so
    the boards of a station are calibrated or refined in parallel, each on the host that provides
    the ``board`` resource (start that host's Ray node with ``--resources '{"board": 1}'``).

``connect("local")`` starts a one-machine cluster (node 127.0.0.1, every Ray server listening on
127.0.0.1 only, no dashboard); any other address joins an existing cluster
(``ray.init(address=...)``).  Without a cluster nothing here is used and every result is the
single-process one.
"""

from __future__ import annotations

import contextlib
import os
import time

import numpy as np

import calibration
from calibration.scale import scaled_program

from .backends import open_device
from .evaluation import mnist_metrics, mnist_samples
from .model import provenance, tasks
from .model.files import load_params
from .refine import refine
from .train import cos

__all__ = [
    "ClusterError",
    "connect",
    "shutdown",
    "split_rows",
    "ClusterEvaluator",
    "evaluate_mnist_on_cluster",
    "board_actor",
    "station_calibrate",
    "station_refine",
    "station_log",
    "worker_pids",
]

#: The only address a local cluster's servers listen on.
LOOPBACK = "127.0.0.1"
#: Ray's switch for its single-machine mode (see :func:`_loopback_only`).
_RAY_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

#: Environment of every twin task: one thread per task (a task reserves one CPU).
WORKER_ENV = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class ClusterError(ConnectionError):
    """The cluster could not finish the work (Ray missing, a batch failed more than its retries).

    A ``ConnectionError``: the command line ends with exit code 3, as for a board failure.
    """


def _ray():
    try:
        import ray
    except ImportError:
        raise ClusterError("--cluster needs Ray: pip install 'tc-hw[cluster]' (ray>=2.9)") from None
    return ray


def _retryable():
    """Ray exceptions that mean the worker (not the work) failed: the batch is run again."""
    e = _ray().exceptions
    return (e.WorkerCrashedError, e.NodeDiedError, e.ObjectLostError, e.OwnerDiedError, e.RayActorError,
            e.LocalRayletDiedError)


def connect(address: str, *, num_cpus: int | None = None, boards: int = 0) -> dict:
    """Start (``"local"``) or join (``"HOST:PORT"``, ``"auto"``, ``"ray://..."``) a Ray cluster.

    ``num_cpus`` (local only; default ``os.cpu_count()``): how many one-thread twin tasks run at
    once.  ``boards`` (local only): the amount of the custom resource ``board`` this machine
    offers, one per board actor.  A local cluster's node is 127.0.0.1, every Ray server of it
    listens on 127.0.0.1 only (:func:`_loopback_only`) and it starts no dashboard.
    Returns ``{"address", "cpus", "boards", "started"}`` of the cluster joined; ``started`` is
    False when this process had already joined one (which is kept: call :func:`shutdown` only if
    ``started``).
    """
    ray = _ray()
    started = not ray.is_initialized()
    if started:
        if address == "local":
            with _loopback_only(ray):
                ray.init(num_cpus=int(num_cpus or os.cpu_count() or 1),
                         resources={"board": float(boards)} if boards else None,
                         include_dashboard=False, _node_ip_address=LOOPBACK, log_to_driver=False,
                         object_store_memory=200 * 2**20, configure_logging=False)
            _check_loopback(ray)
        else:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    _notices_to_stderr()
    res = ray.cluster_resources()
    return {"address": address, "cpus": int(res.get("CPU", 0)), "boards": int(res.get("board", 0)), "started": started}


@contextlib.contextmanager
def _loopback_only(ray):
    """While a local cluster starts: Ray's single-machine mode, in which the node address
    ``127.0.0.1`` is kept (on Linux Ray otherwise swaps it for the primary interface's address)
    and so every server (GCS, raylet, object manager, workers, agents) binds to 127.0.0.1.

    That mode is Ray's default on macOS and Windows; on Linux it is the environment variable
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``.  Ray reads the variable when it is first imported,
    so the already-read value (``ray._private.ray_constants.ENABLE_RAY_CLUSTER``) is set too, and
    both are restored afterwards (joining another cluster later still uses the host's address).
    The started processes inherit the variable."""
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    saved_env = os.environ.get(_RAY_CLUSTER_ENV)
    saved_flag = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[_RAY_CLUSTER_ENV] = "0"
    if saved_flag is not None:
        constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop(_RAY_CLUSTER_ENV, None)
        else:
            os.environ[_RAY_CLUSTER_ENV] = saved_env
        if saved_flag is not None:
            constants.ENABLE_RAY_CLUSTER = saved_flag


def _check_loopback(ray) -> None:
    """Refuse a local cluster whose node is not 127.0.0.1 (its servers would listen on a
    network interface): stop it and raise :class:`ClusterError`."""
    node_ip = ray.util.get_node_ip_address()
    if node_ip != LOOPBACK:
        ray.shutdown()
        raise ClusterError(f"the local Ray node registered as {node_ip}, not {LOOPBACK}: its servers would listen "
                           f"beyond loopback; this Ray version ignores {_RAY_CLUSTER_ENV}=0")


def _notices_to_stderr() -> None:
    """Send Ray's notices about dead workers to stderr (Ray prints them on stdout), so that a
    command's ``--json`` output stays one JSON line.  Leaves Ray alone if its internals differ."""
    try:
        from ray._private import worker
    except ImportError:
        return
    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "_tc_hw", False):
        return

    def to_stderr(data, *args, **kwargs):
        return original({**data, "is_err": True}, *args, **kwargs)

    to_stderr._tc_hw = True
    worker.print_to_stdstream = to_stderr


def shutdown() -> None:
    """Leave (and, if it was started here, stop) the cluster."""
    ray = _ray()
    if ray.is_initialized():
        ray.shutdown()


def split_rows(n_rows: int, n_batches: int) -> list[tuple[int, int]]:
    """``n_batches`` (at most ``n_rows``) contiguous ``(start, stop)`` row ranges covering ``0..n_rows``."""
    if n_rows < 0 or n_batches < 1:
        raise ValueError(f"need n_rows >= 0 and n_batches >= 1, got {n_rows}, {n_batches}")
    edges = np.linspace(0, n_rows, min(n_batches, max(n_rows, 1)) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


# ---------------------------------------------------------------------------------- twin tasks


def _cos_batch(first, vectors, base, z, targets, kw) -> np.ndarray:
    """Losses of rows ``first .. first + C - 1`` of a population: ``evaluate_cos`` with the batch's
    global row, so independent-noise seeds do not depend on the split (common noise never does)."""
    return cos.evaluate_cos(vectors, base, z, targets, first=int(first), **kw)


def _task(fn, *args):
    """Body of every remote twin task: ``(fn(*args), pid, cpu_s)``, ``cpu_s`` the CPU seconds
    the worker process spent on it."""
    cpu0 = time.process_time()
    out = fn(*args)
    return out, os.getpid(), time.process_time() - cpu0


_REMOTE = {}


def _remote_task():
    if "task" not in _REMOTE:
        # one CPU, one thread (on any cluster); retries are ours: see ClusterEvaluator
        _REMOTE["task"] = _ray().remote(num_cpus=1, max_retries=0, runtime_env={"env_vars": dict(WORKER_ENV)})(_task)
    return _REMOTE["task"]


class ClusterEvaluator:
    """``evaluate_cos`` spread over Ray tasks: same signature, bitwise the same losses.

    Parameters
    ----------
    workers : int
        Batches per call (contiguous row ranges), i.e. tasks that run at once on a cluster with
        at least that many CPUs.
    max_retries : int
        Submissions of a batch after its worker died (process killed, node lost) before
        :class:`ClusterError`.  An exception raised by the evaluation itself is not retried (it
        would fail again) and propagates.

    Attributes
    ----------
    events : list of dict
        One per retried batch: ``call`` (0-based call number), ``rows`` ``[start, stop)``,
        ``attempt`` (1 = first retry), ``error`` (Ray exception name), ``time_s`` since the call
        began.
    calls, batches : int
        Calls made and batches finished.
    cpu_s : float
        CPU seconds the workers spent on the finished batches.
    """

    def __init__(self, workers: int, *, max_retries: int = 3):
        if workers < 1 or max_retries < 0:
            raise ValueError(f"workers must be >= 1 and max_retries >= 0, got {workers}, {max_retries}")
        self.workers, self.max_retries = int(workers), int(max_retries)
        self.events: list[dict] = []
        self.calls = self.batches = 0
        self.cpu_s = 0.0
        self.pids: set[int] = set()

    def __call__(self, vectors, base, z, targets, **kw) -> np.ndarray:
        """Losses of every row of ``vectors`` (C, n), shape (C,); arguments as ``evaluate_cos``."""
        ray = _ray()
        vectors = np.atleast_2d(np.asarray(vectors, float))
        spans = split_rows(len(vectors), self.workers)
        base_ref, z_ref, t_ref = ray.put(base), ray.put(np.asarray(z)), ray.put(np.asarray(targets))
        out = self.map_batches(_cos_batch, spans, lambda a, b: (a, vectors[a:b], base_ref, z_ref, t_ref, kw))
        return np.concatenate(out) if out else np.zeros(0)

    def map_batches(self, fn, spans, args_of) -> list:
        """``[fn(*args_of(a, b)) for (a, b) in spans]``, each a Ray task (one CPU, one thread).

        ``fn`` must be a module-level function.  A batch whose worker died is submitted again
        (see the class); the results come back in the order of ``spans``.  Counts as one call.
        """
        task = _remote_task()
        out = self._gather(lambda k: task.remote(fn, *args_of(*spans[k])), spans)
        self.calls += 1
        return out

    def _gather(self, submit, spans) -> list:
        """Results of every batch, in order; a batch whose worker died is submitted again."""
        ray = _ray()
        retryable = _retryable()
        t0 = time.monotonic()
        pending = {submit(k): k for k in range(len(spans))}
        attempts = [0] * len(spans)
        results = [None] * len(spans)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            k = pending.pop(ready[0])
            try:
                value, pid, cpu_s = ray.get(ready[0])
            except retryable as e:
                attempts[k] += 1
                self.events.append({"call": self.calls, "rows": list(spans[k]), "attempt": attempts[k],
                                    "error": type(e).__name__, "time_s": round(time.monotonic() - t0, 3)})
                if attempts[k] > self.max_retries:
                    raise ClusterError(f"rows {spans[k][0]}..{spans[k][1] - 1}: worker failed {attempts[k]} times "
                                       f"({type(e).__name__}); giving up") from e
                pending[submit(k)] = k
                continue
            results[k] = value
            self.pids.add(pid)
            self.batches += 1
            self.cpu_s += cpu_s
        return results

    def summary(self) -> dict:
        """JSON-ready record for a run log: workers, calls, batches, retries and their events."""
        return {"workers": self.workers, "calls": self.calls, "batches": self.batches, "retries": len(self.events),
                "retry_events": list(self.events)}


def evaluate_mnist_on_cluster(params, samples: int, seed: int, time_obs: float, dt: float,
                              evaluator: ClusterEvaluator, *, split: str = "test") -> dict:
    """:func:`tc_hw.evaluation.evaluate_mnist` with the ``samples`` runs per digit spread over
    ``evaluator``'s workers (contiguous ranges of the sample index ``m``).

    Trajectory ``(digit p, sample m)`` uses the twin's stream ``(seed, p, m)`` wherever it runs,
    so the scores, confusion matrix and heat are bitwise those of ``evaluate_mnist``;
    ``seconds`` is the wall time here, and ``cluster`` the evaluator's :meth:`summary`.  With
    ``samples = 1`` there is one batch (the digits are not split: a digit's stream is fixed by
    its row in the whole test set).
    """

    ray = _ray()
    inputs, labels = tasks.mnist_inputs(split)  # looked up at call time (tests shorten the set)
    refs = ray.put(params), ray.put(inputs)
    t0 = time.perf_counter()
    parts = evaluator.map_batches(mnist_samples, split_rows(samples, evaluator.workers),
                                  lambda a, b: (*refs, time_obs, dt, seed, a, b))
    outs = np.concatenate([o for o, _ in parts], axis=1)
    heat = np.concatenate([h for _, h in parts], axis=1)
    return {**mnist_metrics(params, outs, heat, labels, samples=samples, seed=seed, time_obs=time_obs, dt=dt,
                            seconds=time.perf_counter() - t0),
            "cluster": evaluator.summary()}


def worker_pids(name: str = "_task") -> list[int]:
    """Process ids of this machine's Ray workers (children of this process) now running task ``name``.

    For fault drills (``benchmarks/scale_out.py``, the tests): Ray titles a busy worker
    ``ray::<function>``.
    """
    import psutil

    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if any(part.startswith(f"ray::{name}") for part in p.cmdline()[:1]):
                out.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


# -------------------------------------------------------------------------------- board actors


class _Board:
    """A board of the station: opens its connection once and owns it (Ray actor body, or a plain
    object when the station is worked through one board after another)."""

    def __init__(self, name: str, entry: dict):

        self.name, self.entry = name, dict(entry)
        self.device = open_device(self.entry["resource"])

    def identity(self) -> dict:
        return {"name": self.name, "resource": self.entry["resource"], "pid": os.getpid()}

    def calibrate(self, out: str, options: dict, argv=()) -> dict:
        """Append a calibration record of this board to ``out``; the JSON-ready summary."""

        provenance.begin(argv=list(argv))
        provenance.note(device=self.device, resource=self.entry["resource"], writer="tc-hw calibrate --station")
        _, summary = calibration.calibrate(self.device, out, progress=False, **options)
        self.entry["calibration"] = str(out)
        return {"board": self.name, "resource": self.entry["resource"], "out": str(out), "worker_pid": os.getpid(),
                **summary}

    def refine(self, params_path: str, cal_path: str | None, log: str, cfg, task="cos", resume: bool = False,
               scale=None, argv=()) -> dict:
        """Refine ``params_path`` on this board into run log ``log`` (:func:`tc_hw.refine.refine`)
        through ``cal_path`` (default: the station's calibration of the board, else nominal)."""

        cal_path = cal_path or self.entry.get("calibration")
        cal = calibration.load_or_nominal(cal_path, self.device.channel_map)
        params, lam = scaled_program(load_params(params_path), scale, self.device.channel_map, cal)
        provenance.begin(argv=list(argv))
        provenance.note(device=self.device, cal=cal, params=params, program_path=params_path,
                        resource=self.entry["resource"], seeds={"seed": cfg.seed}, writer="tc-hw refine --station")
        result = refine(self.device, params, cal, log, cfg, resume=resume, progress=False, task=task)
        return {"board": self.name, "resource": self.entry["resource"], "calibration": cal_path or "nominal",
                "scale": lam, "worker_pid": os.getpid(), **result}

    def close(self) -> None:
        self.device.close()


def board_actor(name: str, entry: dict, *, max_restarts: int = 1):
    """A Ray actor for board ``name`` (station entry ``entry``), holding one ``board`` resource.

    It runs on a node that offers ``{"board": 1}`` and keeps the connection open until
    ``close`` or its end; Ray restarts it (reconnecting) up to ``max_restarts`` times.
    """
    ray = _ray()
    cls = ray.remote(num_cpus=1, resources={"board": 1}, max_restarts=max_restarts, max_task_retries=0)(_Board)
    return cls.remote(name, entry)


def _wait_alive(actor, timeout_s: float = 60.0) -> bool:
    """Wait until a restarting actor answers again (True), or ``timeout_s`` passed (False: dead for
    good; Ray reports a restart in progress and a final death with the same exceptions)."""
    ray = _ray()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get(actor.identity.remote(), timeout=10)
            return True
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)


def _failure(e: BaseException) -> str:
    cause = getattr(e, "cause", None)  # a RayTaskError carries the board's own exception
    e = cause if isinstance(cause, BaseException) else e
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _one_by_one(station: dict, method: str, per_board: dict) -> dict:
    """Call ``method`` on each board in turn, in this process."""
    out, errors = {}, {}
    for name, args in per_board.items():
        board = None
        try:
            board = _Board(name, station[name])
            out[name] = getattr(board, method)(*args)
        except Exception as e:  # noqa: BLE001 - one board's failure is reported, the others go on
            errors[name] = _failure(e)
        finally:
            if board is not None:
                board.close()
    return {"boards": out, "errors": errors}


def _on_boards(station: dict, method: str, per_board: dict, parallel: bool = True, again=None) -> dict:
    """Call ``method`` with ``per_board[name]`` (args tuple) on every board: on one actor per board
    at once (``parallel``, a cluster joined), else one after another here.

    An actor that dies (process or node lost) is restarted by Ray (reconnecting to its board) and
    the call is made once more with ``again(args)`` (refine: resume from the run log, so finished
    generations are kept and the one in progress is redone; calibrate: from the start); each such
    restart is listed under ``restarts``.  Returns ``{"boards": {name: result}, "errors": {name:
    message}, "restarts": [...]}``: a failing board does not stop the others.
    """
    if not parallel:
        return {**_one_by_one(station, method, per_board), "restarts": []}
    ray = _ray()
    actors = {name: board_actor(name, station[name]) for name in per_board}
    try:
        refs = {name: getattr(actors[name], method).remote(*per_board[name]) for name in per_board}
        out, errors, restarts = {}, {}, []
        for name in per_board:
            args = per_board[name]
            for attempt in range(2):
                try:
                    out[name] = ray.get(refs[name])
                    break
                except ray.exceptions.RayTaskError as e:  # the board's own failure (not retried)
                    errors[name] = _failure(e)
                    break
                except _retryable() as e:
                    if attempt:
                        errors[name] = f"board actor died twice ({_failure(e)})"
                        break
                    if not _wait_alive(actors[name]):
                        errors[name] = f"board actor died and did not come back ({_failure(e)})"
                        break
                    args = again(args) if again else args
                    restarts.append({"board": name, "error": type(e).__name__, "action": f"{method} again"
                                     + (" (resumed from its run log)" if method == "refine" else "")})
                    refs[name] = getattr(actors[name], method).remote(*args)
        return {"boards": out, "errors": errors, "restarts": restarts}
    finally:
        for a in actors.values():
            try:
                ray.get(a.close.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - the actor may be gone; it is killed below anyway
                pass
            ray.kill(a)


def station_calibrate(station: dict, folder, options: dict | None = None, *, parallel: bool = True,
                      argv=()) -> dict:
    """Calibrate every board of ``station`` (``{name: entry}``), one record per board.

    Board ``name`` goes to ``entry["calibration"]`` if the station names one, else
    ``folder/<name>.h5``.  ``options`` as for :func:`calibration.calibrate` (unknown ones are
    refused here, ValueError).  ``parallel``: one Ray actor per board, all at once (needs
    :func:`connect` and one ``board`` resource per board); else one board after another.
    Returns ``{"boards": {name: summary}, "errors": {name: message}}``.
    """
    from pathlib import Path


    options = dict(options or {})
    unknown = sorted(set(options) - set(calibration.DEFAULTS))
    if unknown:
        raise ValueError(f"calibration options {unknown} are unknown; known: {sorted(calibration.DEFAULTS)}")
    if not station:
        raise ValueError("the station file names no boards ([board.NAME] with resource = ...)")
    folder = Path(folder)
    args = {}
    for name, entry in station.items():
        out = Path(entry.get("calibration") or folder / f"{name}.h5").resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        args[name] = (str(out), options, tuple(argv))
    return _on_boards(station, "calibrate", args, parallel)


def station_refine(station: dict, params_path, log, cfg, *, cal=None, task="cos", resume=False, scale=None,
                   parallel: bool = True, argv=()) -> dict:
    """Refine ``params_path`` on every board of ``station``; board ``name`` logs to
    ``<log stem>_<name>.h5`` and uses ``cal`` or its station calibration (else nominal gains).
    ``parallel`` as for :func:`station_calibrate`; returns the same shape of dict."""
    from pathlib import Path

    if not station:
        raise ValueError("the station file names no boards ([board.NAME] with resource = ...)")
    log = Path(log).resolve()
    args = {name: (str(Path(params_path).resolve()), cal, str(station_log(log, name)), cfg, task, resume, scale,
                   tuple(argv)) for name in station}
    return _on_boards(station, "refine", args, parallel, again=_resumed)


def _resumed(args: tuple) -> tuple:
    """``_Board.refine`` arguments with ``resume=True`` once its run log exists (else afresh)."""
    from pathlib import Path

    return (*args[:5], args[5] or Path(args[2]).exists(), *args[6:])


def station_log(log, name: str):
    """Run log of board ``name`` for ``--log log``: ``<stem>_<name><suffix>`` beside it."""
    from pathlib import Path

    log = Path(log)
    return log.with_name(f"{log.stem}_{name}{log.suffix or '.h5'}")
