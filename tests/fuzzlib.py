"""The fuzz campaign of issue 15 as reusable pieces: corpora, hypothesis strategies, checkers.

Used by ``tests/test_fuzz.py`` (short, in CI) and ``benchmarks/fuzz.py`` (long, ``--json``).

Every *case* is one call of a loader, parser, driver or CLI command on hostile input, timed.
Outcomes are tallied in a :class:`Tally`:

``tracebacks``     the call raised an exception outside the documented failure classes (a bug:
                   the CLI would print a traceback), or the CLI returned an exit code outside
                   {0, 2, 3}, or printed "Traceback";
``hangs``          the call took longer than its time bound (``bound_s``);
``unsafe_writes``  DAC writes outside the map or +-10 V seen by the checking fake board;
``data_lost``      a run log that does not reopen with all its committed generations after a
                   kill and resume, or after a concurrent second writer was refused.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from hypothesis import strategies as st

from drivers.blocks import BlockFormatError, read_block
from drivers.scpi import ProtocolError, parse_error_line

__all__ = ["Tally", "Corpus", "check_loader", "check_scpi_line", "check_block", "check_cli", "check_fake_board",
           "check_kill_resume", "argv_strategy", "mutation_strategy", "json_strategy", "LOADERS"]


@dataclass
class Tally:
    """Counts of fuzz outcomes; ``strict`` makes every bad outcome raise ``AssertionError`` at once."""

    strict: bool = False
    cases: int = 0
    tracebacks: int = 0
    hangs: int = 0
    data_lost: int = 0
    unsafe_writes: int = 0
    examples: list = field(default_factory=list)

    def bad(self, kind: str, what: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.examples) < 20:
            self.examples.append(f"{kind}: {what[:400]}")
        if self.strict:
            raise AssertionError(f"{kind}: {what}")

    def summary(self) -> dict:
        return {"cases": self.cases, "tracebacks": self.tracebacks, "hangs": self.hangs,
                "data_lost": self.data_lost, "unsafe_writes": self.unsafe_writes}


@contextlib.contextmanager
def _timed(tally: Tally, what: str, bound_s: float):
    tally.cases += 1
    t = time.monotonic()
    yield
    dt = time.monotonic() - t
    if dt > bound_s:
        tally.bad("hangs", f"{what} took {dt:.1f} s (bound {bound_s} s)")


# ------------------------------------------------------------------------------ corpus of good files
KILLED_WRITER = """
import os, sys, numpy as np
from tc_hw.model.runlog import RunLog
log = RunLog.create(sys.argv[1], {"task": "cos"}, population=4, n_params=3, elites=2)
for g in range(3):
    log.append(g, {"population": np.full((4, 3), g), "losses": np.arange(4.0), "elite_losses": [g, g],
                   "best_loss": g, "best": np.full(3, g), "temperature_k": [300, 300], "wall_s": 0.0,
                   "retries": 0, "paused_s": 0.0})
os._exit(0)  # as SIGKILL: nothing closed
"""


def _row(g, p=4, n=3):
    return {"population": np.full((p, n), g, float), "losses": np.arange(p) + g, "elite_losses": [g, g + 1],
            "best_loss": g, "best": np.full(n, g), "temperature_k": [300, 301], "wall_s": 1.0, "retries": 0,
            "paused_s": 0.0}


class Corpus:
    """Good files of every kind, written once into ``folder``, as bytes to mutate."""

    def __init__(self, folder):
        from calibration.record import RecordWriter
        from sim_backend.device import TwinDevice
        from tc_hw.model.files import save_params
        from tc_hw.model.network import layered
        from tc_hw.model.params import Params
        from tc_hw.model.runlog import RunLog

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        params = Params.uniform(layered(2, 2), bias=0.1, coupling=0.2, crossbar=0.3)
        self.params_h5 = save_params(params, self.folder / "good_params.h5")
        self.params_json = save_params(params, self.folder / "good_params.json")
        log = self.folder / "good_log.h5"
        if not log.exists():
            with RunLog.create(log, {"task": "cos"}, population=4, n_params=3, elites=2) as L:
                for g in range(3):
                    L.append(g, _row(g))
        self.log = log
        killed = self.folder / "killed_log.h5"
        if not killed.exists():  # a writer killed mid-run: superblock still marked open for SWMR writing
            subprocess.run([sys.executable, "-c", KILLED_WRITER, str(killed)], check=True,
                           env={**os.environ, "PYTHONPATH": os.getcwd()})
        self.killed_log = killed
        cal = self.folder / "good_cal.h5"
        if not cal.exists():
            from tests.test_calibration import _fake_analysis

            dev = TwinDevice()
            w = RecordWriter.begin(cal, identity=dev.identity, technology=dev.technology, n_nodes=dev.n_nodes,
                                   n_inputs=dev.n_inputs, channel_map=dev.channel_map, tau_nominal_s=dev.tau_s,
                                   options={})
            an = _fake_analysis(dev.channel_map)
            w.add_adc(None, an.adc)
            w.finish(an, {}, 1.0)
        self.cal = cal
        self.bytes = {k: Path(getattr(self, k)).read_bytes()
                      for k in ("params_h5", "params_json", "log", "killed_log", "cal")}
        self._n = 0

    def scratch(self, suffix: str) -> Path:
        self._n += 1
        return self.folder / f"case{self._n % 50}{suffix}"


# ------------------------------------------------------------------------------ loaders
def _load_params(path):
    from tc_hw.model.files import load_params

    return load_params(path)


def _load_cal(path):
    import calibration

    return calibration.load(path)


def _read_log(path):
    from tc_hw.model.runlog import read_log

    return read_log(path)


def _reopen_log(path):
    from tc_hw.model.runlog import RunLog

    RunLog.reopen(path).close()


#: loader name -> (callable, corpus key, suffix)
LOADERS = {"params_h5": (_load_params, "params_h5", ".h5"), "params_json": (_load_params, "params_json", ".json"),
           "cal": (_load_cal, "cal", ".h5"), "log": (_read_log, "log", ".h5"), "log_reopen": (_reopen_log, "log", ".h5"),
           "killed_log": (_read_log, "killed_log", ".h5"), "killed_log_reopen": (_reopen_log, "killed_log", ".h5")}


def mutation_strategy():
    """(kind, position fraction, payload) mutations of a good file: truncate, flip, splice, zero."""
    return st.tuples(st.sampled_from(["truncate", "flip", "splice", "zero", "random", "empty"]),
                     st.floats(0, 1), st.binary(min_size=1, max_size=64))


def _mutate(data: bytes, mutation) -> bytes:
    kind, frac, payload = mutation
    i = int(frac * max(len(data) - 1, 0))
    if kind == "truncate":
        return data[:i]
    if kind == "flip":
        return data[:i] + bytes([data[i] ^ (payload[0] or 1)]) + data[i + 1:]
    if kind == "splice":
        return data[:i] + payload + data[i + len(payload):]
    if kind == "zero":
        return data[:i] + b"\0" * len(payload) + data[i + len(payload):]
    if kind == "random":
        return payload * (1 + int(frac * 100))
    return b""


def check_loader(corpus: Corpus, name: str, mutation, tally: Tally, bound_s: float = 10.0) -> None:
    """Load a mutated file of kind ``name``: it must load or raise a ``ValueError`` (ParamsError,
    CalibrationError, ...) with a message, within ``bound_s``."""
    fn, key, suffix = LOADERS[name]
    path = corpus.scratch(suffix)
    for p in (path, path.with_name(path.name + ".lock")):
        if p.exists() or p.is_symlink():
            p.unlink()
    path.write_bytes(_mutate(corpus.bytes[key], mutation))
    tally.cases += 1
    outcome = _in_child(lambda: _load_outcome(fn, path), bound_s)
    if outcome is None:
        tally.bad("hangs", f"{name} {mutation[0]}: no result within {bound_s} s (file kept at {path}.hang)")
        path.rename(path.with_name(path.name + ".hang"))
    elif outcome:
        tally.bad("tracebacks", f"{name} {mutation}: {outcome}")


def _load_outcome(fn, path) -> str:
    """'' for a load or a clear refusal (ValueError with a message), else the traceback."""
    try:
        fn(path)
    except ValueError as e:
        return "" if str(e) else "ValueError without a message"
    except Exception as e:  # anything else would reach the user as a traceback
        return f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
    return ""


def _in_child(work, bound_s: float):
    """Run ``work()`` (returning a str) in a forked child; its result, or None if it did not end
    within ``bound_s`` (the child is killed).  A hang inside a C library cannot block the fuzz."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(r)
            os.write(w, work().encode("utf-8", "replace")[:60000])
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    deadline = time.monotonic() + bound_s
    chunks = []
    os.set_blocking(r, False)
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            try:
                while (b := os.read(r, 65536)):
                    chunks.append(b)
            except BlockingIOError:
                pass
            if done:
                return b"".join(chunks).decode("utf-8", "replace") if status == 0 else "child crashed"
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return None
            time.sleep(0.005)
    finally:
        os.close(r)


def json_strategy():
    """Arbitrary JSON, and good parameter documents with one field replaced by arbitrary JSON."""
    leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8))
    anyjson = st.recursive(leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c,
                                                                                     max_size=4), max_leaves=20)
    path = st.lists(st.sampled_from(["format", "format_version", "kT", "mobility", "network", "params", "n_nodes",
                                     "n_inputs", "edges", "crossbar", "outputs", "layers", "quadratic", "bias",
                                     "coupling", "readout"]), min_size=1, max_size=2)
    return st.one_of(st.tuples(st.just("whole"), st.just([]), anyjson), st.tuples(st.just("field"), path, anyjson))


def check_params_json(corpus: Corpus, case, tally: Tally, bound_s: float = 10.0) -> None:
    how, path, value = case
    if how == "whole":
        doc = value
    else:
        doc = json.loads(corpus.bytes["params_json"])
        d = doc
        for k in path[:-1]:
            d = d.get(k) if isinstance(d, dict) else None
        if isinstance(d, dict):
            d[path[-1]] = value
    p = corpus.scratch(".json")
    p.write_text(json.dumps(doc))
    with _timed(tally, "params_json field", bound_s):
        try:
            _load_params(p)
        except ValueError:
            pass
        except Exception as e:
            tally.bad("tracebacks", f"params json {case!r}: {type(e).__name__}: {e}")


# ------------------------------------------------------------------------------ SCPI replies
def check_scpi_line(line: bytes, tally: Tally) -> None:
    """``parse_error_line`` on any bytes: an entry or :class:`ProtocolError`, nothing else."""
    with _timed(tally, "parse_error_line", 1.0):
        try:
            e = parse_error_line(line)
            assert isinstance(e.code, int) and isinstance(e.text, str)
        except ProtocolError:
            pass
        except Exception as e:
            tally.bad("tracebacks", f"parse_error_line({line[:60]!r}): {type(e).__name__}: {e}")


def check_block(stream: bytes, limit: int, tally: Tally) -> None:
    """``read_block`` on any byte stream through a bounded reader: payload (never longer than
    ``limit``), or :class:`BlockFormatError`/:class:`ProtocolError`/``EOFError`` (stream ended)."""
    from drivers.scpi import bounded_reader

    pos = [0]

    def read_exact(n):
        if pos[0] + n > len(stream):
            raise EOFError("stream ended")
        out = stream[pos[0]:pos[0] + n]
        pos[0] += n
        return out

    with _timed(tally, "read_block", 1.0):
        try:
            payload = read_block(bounded_reader(read_exact, limit, "fuzz"), terminator=None)
            if len(payload) > max(limit, 16):
                tally.bad("tracebacks", f"block of {len(payload)} bytes passed a bound of {limit}")
        except (BlockFormatError, ProtocolError, EOFError):
            pass
        except Exception as e:
            tally.bad("tracebacks", f"read_block({stream[:40]!r}): {type(e).__name__}: {e}")


# ------------------------------------------------------------------------------ fake board
def check_fake_board(mode: str, trigger: str | None, seed: int, tally: Tally, bound_s: float = 20.0) -> None:
    """Open the fake board misbehaving in ``mode`` (on ``trigger``), write safe and unsafe
    channels, read back; a DeviceError is fine, any other exception is a traceback."""
    from drivers.board import open_visa
    from tc_hw.model.device import DeviceError, UnsafeVoltageError
    from tests.fake_board import FakeBoard

    with FakeBoard(mode, trigger, seed) as fb:
        with _timed(tally, f"fake board {mode}/{trigger}", bound_s):
            try:
                with open_visa(fb.resource, timeout_s=0.5, retries=1, reconnect_attempts=1) as b:
                    rng = np.random.default_rng(seed)
                    for _ in range(3):
                        v = rng.uniform(-20, 20, b.n_channels) * (rng.random(b.n_channels) < 0.5)
                        try:
                            b.set_channels(v)
                        except UnsafeVoltageError:
                            pass
                    b.get_channels()
            except DeviceError:
                pass
            except Exception as e:
                tally.bad("tracebacks", f"fake board {mode}/{trigger}: {type(e).__name__}: {e}")
        if fb.unsafe_writes:
            tally.bad("unsafe_writes", f"fake board {mode}: {fb.unsafe_writes} unsafe DAC write(s) received")


# ------------------------------------------------------------------------------ CLI
def argv_strategy(corpus: Corpus):
    """Random command lines: a subcommand, then options with hostile values (numbers that are
    0, negative, NaN, inf, huge or not numbers; paths that are missing, folders, files of the
    wrong kind, truncated, under a regular file, symlinks)."""
    f = corpus.folder
    (f / "plain").write_text("x") if not (f / "plain").exists() else None
    if not (f / "link").is_symlink():
        (f / "link").symlink_to(f / "nowhere")
    paths = [str(p) for p in (corpus.params_h5, corpus.params_json, corpus.log, corpus.cal, f, f / "missing.h5",
                              f / "plain", f / "plain" / "under.h5", f / "link", f / "empty.h5")] + ["", "-"]
    (f / "empty.h5").write_bytes(b"") if not (f / "empty.h5").exists() else None
    outs = [str(f / "plain" / "x.h5"), str(f / "link"), str(corpus.cal), str(corpus.log), str(f),
            str(f / "missing" / "x.h5")]
    nums = ["0", "-1", "1", "2", "nan", "inf", "-inf", "1e-300", "1e300", "abc", "", "1e3", "99999999999", "0.5"]
    opts = {
        "evaluate": {"--params": paths, "--samples": nums, "--time": nums, "--dt": nums, "--seed": nums,
                     "--format": ["hdf5", "json", "thermo_gd", "x"], "--task": ["mnist", "cos"]},
        "acquire": {"--resource": ["twin", "loop://", "bogus", "TCPIP0::127.0.0.1::1::SOCKET"],
                    "--samples": nums, "--time": nums, "--mode": ["reset", "serial", "x"],
                    "--set": ["0=1", "0=nan", "x=1", "99999=1", "0=1e9", "3", "0=-2.5000001"]},
        "upload": {"--resource": ["twin", "loop://"], "--params": paths, "--cal": paths + ["nominal"],
                   "--scale": nums + ["auto", "none"]},
        "info": {"--resource": ["twin", "loop://", "socket://127.0.0.1:1", "", "twin:nosuch"]},
        "report": {"": paths, "--folder": outs},
        "calibrate": {"--resource": ["loop://", "bogus"], "--out": outs},
        "train": {"--task": ["cos", "mnist", "generate", "x"], "--method": ["ga", "om", "direct", "x"],
                  "--out": outs, "--generations": nums, "--population": nums, "--points": nums, "--samples": nums,
                  "--epochs": nums, "--digits": ["0,1", "a", "", "1,1", "10"]},
        "generate": {"--params": paths, "--n": nums, "--png": outs},
        "emulate": {"--port": ["0", "-1", "70000", "x"], "--host": ["0.0.0.0", "example.com", "127.0.0.1"],
                    "--board": paths + ["nosuch"], "--ready-file": outs, "--truth-file": outs,
                    "--fault-rate": nums, "--seed": nums},
    }

    @st.composite
    def argv(draw):
        cmd = draw(st.sampled_from(sorted(opts)))
        out = [cmd]
        for name, values in opts[cmd].items():
            if draw(st.booleans()) or name == "--port":  # never the default port: it may be in use
                v = draw(st.sampled_from(values))
                out += [v] if name == "" else [name, v]
        if draw(st.booleans()):
            out.append("--json")
        if cmd == "emulate":
            out += ["--no-warmup", "--print-board"] if draw(st.booleans()) else ["--no-warmup"]
        return out

    return argv()


#: work functions replaced while the CLI is fuzzed: the fuzz tests the argument checks, so any
#: argv that passes them reaches a stub that checks what it was given (and returns at once)
_STUBS = {
    "tc_hw.train.cos.train_cos_ga": None, "tc_hw.train.direct.train_cos_direct": None,
    "tc_hw.train.om.train_mnist_om": None, "tc_hw.train.direct.train_mnist_direct": None,
    "tc_hw.train.generative.train_generative": None, "tc_hw.train.generative.generate_png": None,
    "tc_hw.evaluation.evaluate_mnist": None, "tc_hw.cli.twin.evaluate_mnist": None, "calibration.calibrate": None,
}


class _StubCalled(Exception):
    pass


def _stub(name):
    def stub(*a, **kw):
        for v in list(a) + list(kw.values()):
            if isinstance(v, float) and not np.isfinite(v):
                raise AssertionError(f"{name} reached with a non-finite argument {v!r}")
            if isinstance(v, int) and not isinstance(v, bool) and v < 0 and name != "calibration.calibrate":
                raise AssertionError(f"{name} reached with a negative argument {v!r}")
        raise _StubCalled(name)
    return stub


@contextlib.contextmanager
def stubbed_work():
    """Replace the long-running work functions by checking stubs (see :data:`_STUBS`)."""
    import importlib

    saved = []
    for dotted in _STUBS:
        mod_name, attr = dotted.rsplit(".", 1)
        mod = importlib.import_module(mod_name)
        saved.append((mod, attr, getattr(mod, attr)))
        setattr(mod, attr, _stub(dotted))
    try:
        yield
    finally:
        for mod, attr, fn in saved:
            setattr(mod, attr, fn)


def warm_up_twin() -> None:
    """Compile the twin's kernels once, untimed (a first compilation on a busy machine can take
    minutes and is not a hang of the command being fuzzed)."""
    from tc_hw.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        for mode in ("reset", "serial"):
            main(["acquire", "--resource", "twin", "--samples", "2", "--time", "1e-6", "--mode", mode])


def check_cli(argv: list, tally: Tally, bound_s: float = 60.0) -> None:
    """``tc_hw.cli.main(argv)`` in-process: exit code in {0, 2, 3}, no traceback, in bounded time."""
    from tc_hw.cli import main

    if argv and argv[0] == "emulate" and "--print-board" not in argv:
        return _check_emulate(argv, tally)
    err = io.StringIO()
    with _timed(tally, f"cli {argv}", bound_s):
        code = None
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main(argv)
        except SystemExit as e:  # argparse refusals
            code = e.code if isinstance(e.code, int) else 2
        except _StubCalled:
            code = 0
        except Exception as e:
            tally.bad("tracebacks", f"cli {argv}: {type(e).__name__}: {e}\n{traceback.format_exc()}")
            return
        if code not in (0, 2, 3):
            tally.bad("tracebacks", f"cli {argv}: exit code {code}: {err.getvalue()[-300:]}")
        elif "Traceback" in err.getvalue():
            tally.bad("tracebacks", f"cli {argv}: {err.getvalue()[-300:]}")


def _check_emulate(argv: list, tally: Tally, bound_s: float = 60.0) -> None:
    """The emulator in its own process (it serves until stopped): it must refuse bad arguments
    with exit 2 and a message, or print READY; then it is stopped."""
    with _timed(tally, f"cli {argv}", bound_s):
        p = subprocess.Popen([sys.executable, "-m", "tc_hw.cli", *argv, "--parent-pid", str(os.getpid())],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.getcwd()})
        try:
            line = p.stdout.readline()
            if line.startswith("READY"):
                p.send_signal(signal.SIGTERM)
            _, err = p.communicate(timeout=bound_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            tally.bad("hangs", f"emulate {argv} did not start or stop in time")
            return
        if p.returncode not in (0, 2, 3) or "Traceback" in err:
            tally.bad("tracebacks", f"emulate {argv}: exit {p.returncode}: {err[-300:]}")


# ------------------------------------------------------------------------------ kill / resume
LOG_WRITER = """
import sys, time, numpy as np
from tc_hw.model.runlog import RunLog
path, reopen = sys.argv[1], sys.argv[2] == "1"
log = RunLog.reopen(path) if reopen else RunLog.create(path, {"task": "cos"}, population=4, n_params=3, elites=2)
g = log.completed
while True:
    log.append(g, {"population": np.full((4, 3), g), "losses": np.arange(4.0) + g, "elite_losses": [g, g],
                   "best_loss": g, "best": np.full(3, g), "temperature_k": [300, 300], "wall_s": 0.0,
                   "retries": 0, "paused_s": 0.0})
    print(g + 1, flush=True)
    g += 1
    time.sleep(0.002)
"""


def check_kill_resume(folder, seed: int, tally: Tally, bound_s: float = 60.0) -> None:
    """SIGKILL a log writer at a random moment, try a concurrent second writer (must be refused
    while the first lives), resume, kill again; every generation reported committed must be in
    the log, in order, and read back equal."""
    from tc_hw.model.runlog import LogBusyError, RunLog, read_log

    rng = random.Random(seed)
    path = Path(folder) / f"kr{seed % 20}.h5"
    for p in (path, path.with_name(path.name + ".lock")):
        if p.exists():
            p.unlink()
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    committed = 0
    with _timed(tally, "kill/resume", bound_s):
        for round_ in range(2):
            p = subprocess.Popen([sys.executable, "-c", LOG_WRITER, str(path), "1" if round_ else "0"],
                                 stdout=subprocess.PIPE, text=True, env=env)
            want = rng.randint(1, 15)
            last = committed
            while last < committed + want:
                line = p.stdout.readline()
                if not line:
                    break
                last = int(line)
            try:
                RunLog.reopen(path).close()
                tally.bad("data_lost", "a second writer was let in while the first was alive")
            except LogBusyError:
                pass
            p.send_signal(signal.SIGKILL)
            p.wait()
            p.stdout.close()
            committed = max(committed, last)
            try:
                r = read_log(path)
            except ValueError as e:
                tally.bad("data_lost", f"log unreadable after a kill: {e}")
                return
            n = r["completed_generations"]
            if n < committed or not np.array_equal(r["best_loss"][:committed], np.arange(committed)):
                tally.bad("data_lost", f"{committed} generations committed, log holds {n}")
                return
            committed = n
