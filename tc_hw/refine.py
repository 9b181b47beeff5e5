"""In-hardware refinement: the genetic algorithm with the device in the loop.

A program trained on the twin is uploaded through the calibration and then refined on the board
itself (the out-of-equilibrium paper's answer to the gap between model and hardware).  The GA
(:class:`tc_hw.train.ga.GeneticAlgorithm`, ask/tell) searches directly in **channel volts** of
the trainable elements (biases, couplings, crossbar) plus the digital readout weights, starting
from the calibrated upload; every candidate is clipped to its channel's safe range before it is
sent, so no candidate can ever ask for an unsafe voltage (the search space is the safe box).

One generation: the same input batch for every candidate (``points`` inputs, evenly spaced,
shifted per generation), one bulk upload and **one** batched acquisition of ``samples`` readings
per input per candidate, losses from the ADC-corrected samples; the elites (rows 0..4) are
re-measured with fresh noise every generation.  The generation is logged (:mod:`tc_hw.runlog`),
then the GA state is checkpointed atomically (``<log>.ga.h5``).  A connection fault the driver
cannot recover aborts the generation, which is then redone whole (never half-counted).  While
the board temperature is outside ``temp_band`` the loop pauses, says so, and waits.

Resuming (``resume=True``) reopens the log and the checkpoint; a generation that was logged but
not checkpointed is redone.  With a backend whose noise can be seeded (the twin's ``reseed``),
every acquisition's seed is derived from ``(seed, generation)`` (``common_noise``: the same noise
for every candidate of a generation, so that their differences come from the parameters only; else
``(seed, generation, candidate)``), so a resumed run ends with exactly the parameters and losses
of an uninterrupted one.  A board's noise cannot be seeded: there every candidate has its own.

Noise, and why the result can never be worse than the start
-----------------------------------------------------------
A candidate's loss is estimated from ``points x samples`` readings.  Its noise is large: with
an output variance ``s^2`` of about 1 per reading (the demo's program on the default board), 25
x 50 readings have a bias ``s^2 / 50 = 0.02`` and a spread of about 0.014 on a loss of 0.03,
while what refinement can gain is a few thousandths.  Three things follow:

* ``debias`` (default): the loss of a candidate is corrected for its finite ``samples``,
  ``mean_p[(ybar_p - y_p)^2 - s_p^2 / samples + s_p^2 / final_samples]`` (``s_p^2`` the sample
  variance of the output at input ``p``), an unbiased estimate of the loss that the final
  measurement (``final_samples`` readings per input) reports.  Without it the GA would favour
  quiet candidates over accurate ones ``final_samples / samples`` times too strongly.
* ``readout_fit`` (default): before the GA, the start program is measured once with
  ``final_points x final_samples`` readings and the digital readout ``f`` is fitted to that
  measurement by least squares (an exact, cheap step that no amount of noisy search matches: it
  absorbs the board's output gains and offsets the calibration left).  The GA starts from this
  refitted program (unmutated, as row 0 of generation 0) and then mutates the analog elements
  only (a readout mutation of the default size would cost about as much as the whole loss).
* The end: the start program (as uploaded), the start with the fitted readout and the GA's best
  are measured together, with the same fresh ``final_points x final_samples`` measurement (the
  start's analog program is measured once and read out both ways), and the best of them is the
  result (``kept`` says which).  The GA's best is the minimum of many noisy estimates (the
  winner's curse), so it is often no better than the start; the refined program is then the
  start itself, and ``refined_loss <= start_loss`` always.  These figures are written to the
  log's ``/entry/final`` group after the run.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import h5py
import numpy as np

from .device import DeviceError, Seedable, armed, reconnect_count
from .params import Params
from .runlog import RunLog
from .tasks import cos_task

__all__ = ["RefineConfig", "refine", "measure_cos_loss", "read_final"]

TRAINABLE_KINDS = ("B", "C", "W")


@dataclass(frozen=True)
class RefineConfig:
    """Sizes and settings of a refinement run (defaults: one generation of a 32-node emulated
    board in a few seconds here)."""

    generations: int = 30
    population: int = 20
    elites: int = 5
    points: int = 25  #: inputs per generation
    samples: int = 100  #: readings per input per candidate
    mutation: float = 0.02  #: mutation of a parameter with fan-in 1, in program units
    seed: int = 0
    temp_band: tuple | None = None  #: (low, high) kelvin; None: calibration temperature +- 5 K
    pause_poll_s: float = 2.0
    max_pause_s: float = 3600.0
    max_seconds: float | None = None
    retries: int = 3  #: attempts per generation after unrecovered device faults
    final_points: int = 250
    final_samples: int = 1000
    debias: bool = True  #: candidate losses estimate the loss at ``final_samples`` readings per input
    common_noise: bool = True  #: seedable backends: one noise seed per generation for every candidate
    readout_fit: bool = True  #: least-squares readout fitted to a start measurement before the GA
    input_scale: float = 1.0  #: the board's input line carries ``input_scale * z`` (crossbar weights / it)


#: Settings a run log written before they existed was made with (used when resuming such a run).
_OLD_DEFAULTS = {"debias": False, "common_noise": False, "readout_fit": False}


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint32)[0])


class _Problem:
    """The cos task on a device: vector <-> (volts, readout), and the measured loss."""

    def __init__(self, device, params: Params, cal, cfg: RefineConfig, trainable=None):
        from calibration import map_params
        from calibration.mapping import channel_values

        self.device, self.params, self.cal, self.cfg = device, params, cal, cfg
        cmap = device.channel_map
        self.volts0 = map_params(params, cal, cmap)
        fan = params.network.fan_in() + params.network.degree()
        if trainable is None:
            # the program's biases, couplings and crossbar weights, on nodes that are part of the
            # computer (a board element the program lacks, or a bias of a node coupled to nothing,
            # stays where the mapping put it: at its calibrated zero)
            _, src = channel_values(params, cmap)
            trainable = [c.index for c in cmap if c.kind in TRAINABLE_KINDS and src[c.index][1] is not None
                         and self._fan(c, fan) > 0]
        self.trainable = np.asarray(trainable, dtype=np.int64)
        self.lo = np.array([cmap[i].vmin for i in self.trainable])
        self.hi = np.array([cmap[i].vmax for i in self.trainable])
        if params.readout is None:
            raise ValueError("refinement of the cos task needs readout weights in the parameter file")
        self.readout0 = params.readout[0].copy()
        self.outputs = np.asarray(params.network.outputs)
        self.time_s = device.tau_s * params.mobility * params.kT * 1.0  # t_f = 1 program unit
        gain = np.abs(np.array([cmap[i].gain for i in self.trainable], dtype=float))
        fan_ch = np.maximum(np.array([self._fan(cmap[i], fan) for i in self.trainable], dtype=float), 1.0)
        with np.errstate(divide="ignore"):
            step = np.where(gain > 0, cfg.mutation / params.kT / np.where(gain > 0, gain, 1.0) / np.sqrt(fan_ch), 0.0)
        self.sigma = np.concatenate([step, np.full(self.readout0.size, cfg.mutation)])

    @staticmethod
    def _fan(c, fan) -> float:
        return float(fan[c.a]) if c.kind == "B" else float(fan[c.b]) if c.kind == "W" else 0.5 * (fan[c.a] + fan[c.b])

    @property
    def x0(self) -> np.ndarray:
        return np.concatenate([self.volts0[self.trainable], self.readout0])

    def split(self, v) -> tuple[np.ndarray, np.ndarray]:
        """Channel volts (all channels; trainable ones clipped into the safe box) and readout."""
        k = len(self.trainable)
        volts = self.volts0.copy()
        volts[self.trainable] = np.clip(v[:k], self.lo, self.hi)
        return volts, np.asarray(v[k:])

    def device_inputs(self, z) -> np.ndarray:
        """The task's inputs ``z`` (P, 1) as the board's input batch: line 0 carries
        ``cfg.input_scale * z``, any further lines of the board carry 0."""
        k = max(1, int(getattr(self.device, "n_inputs", 1) or 1))
        inputs = np.zeros((len(z), k))
        inputs[:, 0] = self.cfg.input_scale * np.asarray(z)[:, 0]
        return inputs

    def means(self, population, z, seeds, samples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean output-node readings (C, P, n_out) and the variance of the readout ``f . x`` over
        the readings (C, P), one upload and one acquisition of ``samples`` readings per input for
        each candidate (default ``cfg.samples``)."""
        xbar = np.empty((len(population), len(z), len(self.outputs)))
        var = np.zeros((len(population), len(z)))
        dev = self.device
        dev.set_inputs(self.device_inputs(z))
        for c, v in enumerate(population):
            volts, f = self.split(v)
            dev.set_channels(volts)
            if seeds is not None and isinstance(dev, Seedable):
                dev.reseed(seeds[c])
            with armed(dev):
                acq = dev.acquire("reset", self.time_s, samples or self.cfg.samples, nodes=self.outputs)
            x = self.cal.adc.correct(acq.volts, self.outputs)  # (P, M, n_out)
            xbar[c] = x.mean(axis=1)
            if x.shape[1] > 1:
                var[c] = (x @ f).var(axis=1, ddof=1)
        return xbar, var

    def loss_of(self, xbar, f, var, samples: int, z) -> float:
        """The task loss of mean readings ``xbar`` (P, n_out) read out with ``f``; with
        ``cfg.debias`` corrected from ``samples`` to ``cfg.final_samples`` readings per input."""
        target = np.cos(2 * np.pi * np.asarray(z)[:, 0])
        err = float(np.mean((xbar @ f - target) ** 2))
        if self.cfg.debias and samples > 1 and samples != self.cfg.final_samples:
            err += float(np.mean(var)) * (1.0 / self.cfg.final_samples - 1.0 / samples)
        return err if np.isfinite(err) else np.inf

    def losses(self, population, z, seeds, samples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Loss of every candidate (one upload and one acquisition of ``samples`` readings per
        input each, default ``cfg.samples``) and the mean outputs."""
        m = samples or self.cfg.samples
        xbar, var = self.means(population, z, seeds, m)
        out, ys = np.empty(len(population)), np.empty((len(population), len(z)))
        for c, v in enumerate(population):
            f = self.split(v)[1]
            ys[c] = xbar[c] @ f
            out[c] = self.loss_of(xbar[c], f, var[c], m, z)
        return out, ys

    def fit_readout(self, xbar, z) -> np.ndarray | None:
        """Least-squares readout for mean readings ``xbar`` (P, n_out), or None if it fails."""
        target = np.cos(2 * np.pi * np.asarray(z)[:, 0])
        if not np.all(np.isfinite(xbar)):
            return None
        f, *_ = np.linalg.lstsq(xbar, target, rcond=None)
        return f if np.all(np.isfinite(f)) else None


def measure_cos_loss(device, params: Params, cal, *, points: int = 250, samples: int = 1000, seed: int = 0,
                     volts=None, input_scale: float = 1.0) -> float:
    """cos(2 pi z) loss of ``params`` uploaded through ``cal`` (or of given ``volts``), measured on
    ``device`` with ``points`` inputs and ``samples`` readings each (the input line carrying
    ``input_scale * z``: a program whose crossbar weights were divided by ``input_scale``)."""
    prob = _Problem(device, params, cal, RefineConfig(final_samples=samples, input_scale=input_scale))
    z, _ = cos_task(points)
    v = prob.x0 if volts is None else np.concatenate([np.asarray(volts)[prob.trainable], prob.readout0])
    loss, _ = _retrying(prob.cfg, "the measurement", lambda: prob.losses(v[None, :], z, [seed], samples))
    return float(loss[0])


def _wait_for_band(device, band, cfg: RefineConfig, bar) -> tuple[float, float]:
    """Pause while the temperature is outside ``band``; returns (temperature, seconds paused)."""
    t0 = time.monotonic()
    temp = float(device.temperature())
    while not band[0] <= temp <= band[1]:
        if time.monotonic() - t0 > cfg.max_pause_s:
            raise DeviceError(f"board temperature {temp:.2f} K outside {band[0]:.2f}..{band[1]:.2f} K "
                              f"for {cfg.max_pause_s:.0f} s: giving up")
        msg = f"paused: board at {temp:.2f} K, outside {band[0]:.2f}..{band[1]:.2f} K; waiting"
        if bar is not None:
            bar.set_description_str(msg)
        else:
            print(msg, file=sys.stderr)
        time.sleep(cfg.pause_poll_s)
        temp = float(device.temperature())
    return temp, time.monotonic() - t0


def _retrying(cfg: RefineConfig, what: str, measure):
    """``measure()``, redone whole (up to ``cfg.retries`` times) after a fault the driver could not recover."""
    for attempt in range(cfg.retries + 1):
        try:
            return measure()
        except DeviceError as e:
            if attempt == cfg.retries:
                raise
            print(f"refine: {what}, attempt {attempt + 1} failed ({e}); redoing it", file=sys.stderr)


def _stored_config(stored: dict, cfg: RefineConfig) -> RefineConfig:
    """The configuration of a logged run (settings it predates get their old behaviour)."""
    known = {f.name for f in fields(RefineConfig)}
    d = {**_OLD_DEFAULTS, **{k: v for k, v in stored.items() if k in known}}
    d["temp_band"] = tuple(d["temp_band"]) if d.get("temp_band") else None
    d["generations"] = max(cfg.generations, int(d["generations"]))
    return RefineConfig(**d)


def refine(device, params: Params, cal, log_path, cfg: RefineConfig = RefineConfig(), *, resume: bool = False,
           progress: bool = True, task: str = "cos") -> dict:
    """Refine ``params`` on ``device`` through calibration ``cal``; log every generation.

    Parameters
    ----------
    device : tc_hw.device.Device
    params : Params
        The program trained on the twin (with readout weights for the cos task).
    cal : calibration.Calibration
    log_path : path
        The run log (HDF5, SWMR); the GA checkpoint goes to ``<log_path>.ga.h5``.
    cfg : RefineConfig
    resume : bool
        Continue the run in ``log_path`` (its stored configuration wins over ``cfg``'s sizes).

    Returns
    -------
    dict
        Measured together at the end with ``final_points`` x ``final_samples`` readings:
        ``start_loss`` (the calibrated upload as it was given), ``readout_fit_loss`` (the same
        analog program with the least-squares readout; None without ``readout_fit``),
        ``ga_best_loss`` (the GA's best elite); ``refined_loss``, the smallest of them, is the
        loss of the returned program (``best_volts``, ``best_readout``) and ``kept`` says which
        it is (``"ga"``, ``"readout fit"`` or ``"start"``).  Also ``start_fit_loss`` (the start
        measurement the readout was fitted to, in-sample), ``generations``, ``stop``,
        ``seconds``, ``paused_s``, ``retries``, ``log``.
    """
    from tqdm import tqdm

    from .train.ga import GeneticAlgorithm

    if task != "cos":
        raise ValueError(f"refinement supports the cos task, not {task!r}")
    log_path = Path(log_path)
    ckpt = log_path.with_name(log_path.name + ".ga.h5")
    if resume:
        log = RunLog.reopen(log_path)
        stored_all = log.config
        cfg = _stored_config(stored_all["refine"], cfg)
        ga = GeneticAlgorithm.load(ckpt) if ckpt.exists() else None
    else:
        if log_path.exists():
            raise FileExistsError(f"{log_path} exists: use --resume to continue that run, or another --log")
        log, ga, stored_all = None, None, {}
    prob = _Problem(device, params, cal, cfg, trainable=stored_all.get("trainable_channels"))
    t_start = time.monotonic()
    z_final, _ = cos_task(cfg.final_points)
    # the start measurement and the least-squares readout (once per run; stored in the log's config)
    fit, start_fit_loss = None, None
    if cfg.readout_fit:
        if log is not None:  # resuming: the fit of the first session
            if stored_all.get("readout_fit") is not None:
                fit = np.asarray(stored_all["readout_fit"], float)
            start_fit_loss = stored_all.get("start_fit_loss")
        else:
            if progress:
                print("refine: measuring the start program and fitting its readout by least squares",
                      file=sys.stderr, flush=True)
            xbar, var = _retrying(cfg, "the start measurement", lambda: prob.means(
                prob.x0[None, :], z_final, [_seed(cfg.seed, 7, 2)], cfg.final_samples))
            fit = prob.fit_readout(xbar[0], z_final)
            if fit is not None:
                start_fit_loss = {"given_readout": prob.loss_of(xbar[0], prob.readout0, var[0], cfg.final_samples,
                                                                z_final),
                                  "fitted_readout_in_sample": prob.loss_of(xbar[0], fit, var[0], cfg.final_samples,
                                                                           z_final)}
    x_start = prob.x0 if fit is None else np.concatenate([prob.volts0[prob.trainable], fit])
    sigma = prob.sigma.copy()
    if fit is not None:  # the fitted readout is at its measured optimum: the GA searches the analog elements
        sigma[len(prob.trainable):] = 0.0
    if ga is None:
        ga = GeneticAlgorithm(x_start, sigma, init_sigma=sigma, population=cfg.population,
                              elites=cfg.elites, seed=cfg.seed, max_generations=cfg.generations,
                              max_seconds=cfg.max_seconds, start_with_x0=True)
    ga.with_config(max_generations=cfg.generations)
    band = cfg.temp_band or (cal.temperature_k - 5.0, cal.temperature_k + 5.0)
    if not np.all(np.isfinite(band)):
        band = (-np.inf, np.inf)
    if log is None:
        config = {"task": task, "refine": asdict(cfg), "n_trainable_channels": int(len(prob.trainable)),
                  "trainable_channels": prob.trainable.tolist(), "time_s": prob.time_s,
                  "readout_fit": None if fit is None else fit.tolist(), "start_fit_loss": start_fit_loss}
        instrument = {"identity": device.identity, "technology": device.technology,
                      "calibration_entry": str(getattr(cal, "entry", "")),
                      "calibration_hash": str(getattr(cal, "hash", "")), "temp_band_k": list(band)}
        log = RunLog.create(log_path, config, population=cfg.population, n_params=ga.n_params,
                            elites=cfg.elites, instrument=instrument)
    if log.completed > ga.generation:  # logged but not checkpointed: redo that generation
        log.truncate(ga.generation)
    paused_total, retries_total = 0.0, 0
    g_start = ga.generation
    t_ga = time.monotonic()
    bar = tqdm(total=cfg.generations, initial=ga.generation, desc="refine", unit="gen",
               disable=not progress, file=sys.stderr)
    try:
        while (stop := ga.stop_reason()) is None:
            g = ga.generation
            temp0, paused = _wait_for_band(device, band, cfg, bar if progress else None)
            paused_total += paused
            bar.set_description_str("refine")
            # the input batch of this generation: evenly spaced, shifted by a seeded offset
            shift = np.random.default_rng(_seed(cfg.seed, g, 1)).uniform(0, 1 / cfg.points)
            z = (np.arange(cfg.points) / cfg.points + shift)[:, None]
            if cfg.common_noise:
                seeds = [_seed(cfg.seed, g, 2)] * cfg.population
            else:
                seeds = [_seed(cfg.seed, g, 2, c) for c in range(cfg.population)]
            pop = ga.ask()
            t0 = time.monotonic()
            r0 = reconnect_count(device)
            for attempt in range(cfg.retries + 1):
                try:
                    losses, _ = prob.losses(pop, z, seeds)
                    break
                except DeviceError as e:
                    if attempt == cfg.retries:
                        raise
                    print(f"refine: generation {g} attempt {attempt + 1} failed ({e}); redoing it", file=sys.stderr)
            retries = reconnect_count(device) - r0 + attempt
            retries_total += retries
            ga.tell(losses)
            best = int(np.argmin(losses))
            log.append(g, {"population": pop, "losses": losses, "elite_losses": ga.elite_losses,
                           "best_loss": losses[best], "best": pop[best],
                           "temperature_k": [temp0, float(device.temperature())],
                           "wall_s": time.monotonic() - t0, "retries": retries, "paused_s": paused})
            ga.save(ckpt)
            bar.update()
            el = time.monotonic() - t_ga
            rate = (ga.generation - g_start) / max(el, 1e-9)
            bar.set_postfix(best=f"{ga.best[1]:.3g}", gen_per_min=f"{60 * rate:.1f}")
    finally:
        bar.close()
        log.close()
    # the end: start and GA best measured together, the best of them is the result
    if progress:
        print("refine: measuring the start and the GA's best together to pick the result", file=sys.stderr,
              flush=True)
    best_v, _ = ga.best
    xbar, var = _retrying(cfg, "the final measurement", lambda: prob.means(
        np.stack([prob.x0, best_v]), z_final, [_seed(cfg.seed, 7, 0), _seed(cfg.seed, 7, 1)], cfg.final_samples))
    m = cfg.final_samples
    vb, fb = prob.split(best_v)
    v0, f0 = prob.split(prob.x0)
    cands = {"start": (prob.loss_of(xbar[0], f0, var[0], m, z_final), v0, f0)}
    if fit is not None:  # the same measurement of the start's analog program, read out with the fitted readout
        cands["readout fit"] = (prob.loss_of(xbar[0], fit, var[0], m, z_final), v0, fit)
    cands["ga"] = (prob.loss_of(xbar[1], fb, var[1], m, z_final), vb, fb)
    kept = min(cands, key=lambda k: (cands[k][0], list(cands).index(k)))
    refined, volts, f = cands[kept]
    result = {"start_loss": float(cands["start"][0]),
              "readout_fit_loss": float(cands["readout fit"][0]) if fit is not None else None,
              "ga_best_loss": float(cands["ga"][0]), "refined_loss": float(refined), "kept": kept,
              "start_fit_loss": start_fit_loss, "generations": int(ga.generation), "stop": stop,
              "best_volts": np.asarray(volts).tolist(), "best_readout": np.asarray(f).tolist(),
              "seconds": round(time.monotonic() - t_start, 1), "paused_s": round(paused_total, 1),
              "retries": int(retries_total), "log": str(log_path)}
    _write_final(log_path, result, cfg)
    return result


def _write_final(log_path: Path, result: dict, cfg: RefineConfig) -> None:
    """The end figures into ``/entry/final`` of the (closed) run log; a failure only warns."""
    try:
        with h5py.File(log_path, "r+", libver="latest") as f:
            if "entry/final" in f:
                del f["entry/final"]
            g = f["entry"].create_group("final")
            for k in ("start_loss", "readout_fit_loss", "ga_best_loss", "refined_loss"):
                g.attrs[k] = np.nan if result[k] is None else result[k]
            g.attrs.update({"kept": result["kept"], "generations": result["generations"],
                            "points": cfg.final_points, "samples": cfg.final_samples})
            g["volts"] = np.asarray(result["best_volts"], float)
            g["readout"] = np.asarray(result["best_readout"], float)
    except OSError as e:
        print(f"refine: could not write the final figures into {log_path} ({e})", file=sys.stderr)


def read_final(log_path) -> dict | None:
    """The end figures of a finished run (``/entry/final``), or None for a run that has not ended."""
    with h5py.File(log_path, "r", libver="latest", swmr=True) as f:
        g = f.get("entry/final")
        if g is None:
            return None
        out = {k: (v.decode() if isinstance(v, bytes) else v.item() if hasattr(v, "item") else v)
               for k, v in g.attrs.items()}
        out["volts"], out["readout"] = g["volts"][()], g["readout"][()]
        return out
