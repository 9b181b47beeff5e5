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
every acquisition's seed is derived from ``(seed, generation, candidate)``, so a resumed run
ends with exactly the parameters and losses of an uninterrupted one.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .device import DeviceError, armed
from .params import Params
from .runlog import RunLog
from .tasks import cos_task

__all__ = ["RefineConfig", "refine", "measure_cos_loss"]

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


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint32)[0])


class _Problem:
    """The cos task on a device: vector <-> (volts, readout), and the measured loss."""

    def __init__(self, device, params: Params, cal, cfg: RefineConfig):
        from calibration import map_params

        self.device, self.params, self.cal, self.cfg = device, params, cal, cfg
        cmap = device.channel_map
        self.volts0 = map_params(params, cal, cmap)
        self.trainable = np.array([c.index for c in cmap if c.kind in TRAINABLE_KINDS and self.volts0[c.index] != 0])
        self.lo = np.array([cmap[i].vmin for i in self.trainable])
        self.hi = np.array([cmap[i].vmax for i in self.trainable])
        if params.readout is None:
            raise ValueError("refinement of the cos task needs readout weights in the parameter file")
        self.readout0 = params.readout[0].copy()
        self.outputs = np.asarray(params.network.outputs)
        self.time_s = device.tau_s * params.mobility * params.kT * 1.0  # t_f = 1 program unit
        fan = params.network.fan_in() + params.network.degree()
        gain = np.abs(np.array([cmap[i].gain for i in self.trainable]))
        fan_ch = np.array([self._fan(cmap[i], fan) for i in self.trainable])
        self.sigma = np.concatenate([cfg.mutation / params.kT / gain / np.sqrt(fan_ch),
                                     np.full(self.readout0.size, cfg.mutation)])

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

    def losses(self, population, z, seeds, samples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Loss of every candidate (one upload and one acquisition of ``samples`` readings per
        input each, default ``cfg.samples``) and the mean outputs."""
        target = np.cos(2 * np.pi * z[:, 0])
        out, ys = np.empty(len(population)), np.empty((len(population), len(z)))
        dev = self.device
        dev.set_inputs(z)
        for c, v in enumerate(population):
            volts, f = self.split(v)
            dev.set_channels(volts)
            if seeds is not None and hasattr(dev, "reseed"):
                dev.reseed(seeds[c])
            with armed(dev):
                acq = dev.acquire("reset", self.time_s, samples or self.cfg.samples, nodes=self.outputs)
            x = self.cal.adc.correct(acq.volts, self.outputs)  # (P, M, n_out)
            ys[c] = x.mean(axis=1) @ f
            err = np.mean((ys[c] - target) ** 2)
            out[c] = err if np.isfinite(err) else np.inf
        return out, ys


def measure_cos_loss(device, params: Params, cal, *, points: int = 250, samples: int = 1000, seed: int = 0,
                     volts=None) -> float:
    """cos(2 pi z) loss of ``params`` uploaded through ``cal`` (or of given ``volts``), measured on
    ``device`` with ``points`` inputs and ``samples`` readings each."""
    prob = _Problem(device, params, cal, RefineConfig())
    z, _ = cos_task(points)
    v = prob.x0 if volts is None else np.concatenate([np.asarray(volts)[prob.trainable], prob.readout0])
    loss, _ = prob.losses(v[None, :], z, [seed], samples)
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
        ``start_loss`` (the calibrated upload), ``refined_loss`` (best elite), both measured with
        ``final_points`` x ``final_samples``; ``generations``; ``stop``; ``best_volts``,
        ``best_readout``; ``seconds``; ``paused_s``; ``retries``.
    """
    from tqdm import tqdm

    from .train.ga import GeneticAlgorithm

    if task != "cos":
        raise ValueError(f"refinement supports the cos task, not {task!r}")
    log_path = Path(log_path)
    ckpt = log_path.with_name(log_path.name + ".ga.h5")
    if resume:
        log = RunLog.reopen(log_path)
        stored = log.config["refine"]
        cfg = RefineConfig(**{**stored, "temp_band": tuple(stored["temp_band"]) if stored["temp_band"] else None,
                              "generations": max(cfg.generations, stored["generations"])})
        ga = GeneticAlgorithm.load(ckpt) if ckpt.exists() else None
    else:
        log, ga = None, None
    prob = _Problem(device, params, cal, cfg)
    if ga is None:
        ga = GeneticAlgorithm(prob.x0, prob.sigma, init_sigma=prob.sigma, population=cfg.population,
                              elites=cfg.elites, seed=cfg.seed, max_generations=cfg.generations,
                              max_seconds=cfg.max_seconds, start_with_x0=True)
    ga.with_config(max_generations=cfg.generations)
    band = cfg.temp_band or (cal.temperature_k - 5.0, cal.temperature_k + 5.0)
    if not np.all(np.isfinite(band)):
        band = (-np.inf, np.inf)
    if log is None:
        config = {"task": task, "refine": asdict(cfg), "n_trainable_channels": int(len(prob.trainable)),
                  "trainable_channels": prob.trainable.tolist(), "time_s": prob.time_s}
        instrument = {"identity": device.identity, "technology": device.technology,
                      "calibration_entry": str(getattr(cal, "entry", "")),
                      "calibration_hash": str(getattr(cal, "hash", "")), "temp_band_k": list(band)}
        log = RunLog.create(log_path, config, population=cfg.population, n_params=ga.n_params,
                            elites=cfg.elites, instrument=instrument)
    if log.completed > ga.generation:  # logged but not checkpointed: redo that generation
        log.truncate(ga.generation)
    session = getattr(device, "session", None)
    paused_total, retries_total = 0.0, 0
    t_start, g_start = time.monotonic(), ga.generation
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
            seeds = [_seed(cfg.seed, g, 2, c) for c in range(cfg.population)]
            pop = ga.ask()
            t0 = time.monotonic()
            r0 = getattr(session, "reconnects", 0)
            for attempt in range(cfg.retries + 1):
                try:
                    losses, _ = prob.losses(pop, z, seeds)
                    break
                except DeviceError as e:
                    if attempt == cfg.retries:
                        raise
                    print(f"refine: generation {g} attempt {attempt + 1} failed ({e}); redoing it", file=sys.stderr)
            retries = getattr(session, "reconnects", 0) - r0 + attempt
            retries_total += retries
            ga.tell(losses)
            best = int(np.argmin(losses))
            log.append(g, {"population": pop, "losses": losses, "elite_losses": ga.elite_losses,
                           "best_loss": losses[best], "best": pop[best],
                           "temperature_k": [temp0, float(device.temperature())],
                           "wall_s": time.monotonic() - t0, "retries": retries, "paused_s": paused})
            ga.save(ckpt)
            bar.update()
            el = time.monotonic() - t_start
            rate = (ga.generation - g_start) / max(el, 1e-9)
            bar.set_postfix(best=f"{ga.best[1]:.3g}", gen_per_min=f"{60 * rate:.1f}")
    finally:
        bar.close()
        log.close()
    best_v, _ = ga.best
    volts, f = prob.split(best_v)
    z, _ = cos_task(cfg.final_points)
    start = prob.losses(prob.x0[None, :], z, [_seed(cfg.seed, 7, 0)], cfg.final_samples)[0][0]
    refined = prob.losses(best_v[None, :], z, [_seed(cfg.seed, 7, 1)], cfg.final_samples)[0][0]
    return {"start_loss": float(start), "refined_loss": float(refined), "generations": int(ga.generation),
            "stop": stop, "best_volts": volts.tolist(), "best_readout": f.tolist(),
            "seconds": round(time.monotonic() - t_start, 1), "paused_s": round(paused_total, 1),
            "retries": int(retries_total), "log": str(log_path)}
