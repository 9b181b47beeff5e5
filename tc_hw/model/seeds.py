"""One seed scheme: every random sub-stream of a run is derived from ``(seed, purpose, *index)``.

A run has one user seed.  Every stream the application draws from it (the twin's noise of one
generation, the input batch of one epoch, a final check, the GA's own sampler...) is named by a
*purpose* (a string constant below) and an index tuple (generation, candidate, epoch, ...), and
its seed is

    ``SeedSequence([seed, blake2b_32(purpose), *index]).generate_state(2, uint32)`` -> 63 bits

so two purposes never share a stream by construction (a different entropy word), and the same
``(seed, purpose, index)`` gives the same stream on every machine and after every resume.  The
twin's own contract is untouched: the trajectory of input ``p``, sample ``m`` still depends only
on the seed it is given (``sim_backend/rng.py``); this module only chooses that seed.

Purposes
--------
===================  ============================  ==============================================
constant             index                         stream
===================  ============================  ==============================================
REFINE_BATCH         generation                    refine: the generation's input batch
REFINE_NOISE         generation[, candidate]       refine: acquisition noise of the candidates
REFINE_JACOBIAN      generation                    refine (twin-guided): the generation's twin Jacobian
REFINE_START         (which,)                      refine: start measurements (0 final-size, 1 design
                                                   inputs, 2 sensitivity Jacobian)
REFINE_FINAL         (which,)                      refine: final check (0 start, 1 best)
GA                   ()                            GA: mutation, crossover, selection
CMAES                ()                            CMA-ES: the strategy's sampler (32 bits)
COS_NOISE            generation                    cos training: twin noise of a generation
COS_BATCH            generation                    cos training: input batch / jitter
COS_CHECK            (which,)                      cos training: final checks (0 elites, 1 eval, 2 readout)
COS_CANDIDATE        candidate                     cos loss without common noise: one candidate
DIRECT_NOISE         iteration                     direct training: Langevin noise of a step
DIRECT_DATA          ()                            direct training: split, batch order, cos start/inputs
DIRECT_INIT          ()                            direct training: MNIST initial parameters
DIRECT_VALIDATE      epoch                         direct training: validation accuracy
DIRECT_FINAL         (which,)                      direct training: 0 MNIST test, 1 readout fit, 2-3 final
                                                   cos losses, 4 figure
OM_CHUNK             chunk                         Onsager-Machlup training: a chunk's idealised paths
OM_EVAL              (which,)                      Onsager-Machlup training: 0 validation, 1 MNIST test
GEN_SELECT           ()                            generative: which training images are chosen
GEN_INIT             (which,)                      generative: 0 random hidden code, 1 its projection
GEN_NOISING          ()                            generative: noise of forward (noising) paths
GEN_REVERSE          ()                            generative: sampling in the reverse statistics
GEN_GROUP            group                         generative: one label group's reverse statistics
GEN_TRAIN            ()                            generative: the training loop's own sampler
GEN_EPOCH            epoch                         generative: an epoch's noising paths
GEN_SAMPLE           ()                            generative: ``generate``'s start and noise
GEN_EVAL             (which,)                      generative: 0 fresh-path objective, 1 generated samples,
                                                   2 figure paths
TEACHER_INIT         ()                            MNIST teacher: initial weights
TEACHER_DATA         ()                            MNIST teacher: batch order
DEMO                 (which,)                      demo: 0 output extent, 1 board scores (paired), 2 twin loss,
                                                   3 heat, 4 nominal vs calibrated loss (paired)
ACQUISITION          acquisition                   ``tc-hw run``: one acquisition on the twin
RUN_TWIN             ()                            ``tc-hw run``: the task's twin score of the program
CALIBRATION          (which,)                      calibration: 0 the designed input batch
BENCHMARK            (which,)                      ``benchmarks/``: a script's side measurements
===================  ============================  ==============================================

An index is any number of non-negative integers; ``derive(s, P, 7)`` and ``derive(s, P, 7, 0)``
are different streams (the index length is part of the entropy).
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["derive", "derive32", "rng", "purpose_word", "PURPOSES", "REFINE_BATCH", "REFINE_NOISE",
           "REFINE_JACOBIAN", "REFINE_START", "REFINE_FINAL", "GA", "CMAES", "COS_NOISE", "COS_BATCH",
           "COS_CHECK", "COS_CANDIDATE", "DIRECT_NOISE", "DIRECT_DATA", "DIRECT_INIT", "DIRECT_VALIDATE",
           "DIRECT_FINAL", "OM_CHUNK", "OM_EVAL", "GEN_SELECT", "GEN_INIT", "GEN_NOISING", "GEN_REVERSE",
           "GEN_GROUP", "GEN_TRAIN", "GEN_EPOCH", "GEN_SAMPLE", "GEN_EVAL", "TEACHER_INIT", "TEACHER_DATA",
           "DEMO", "ACQUISITION", "RUN_TWIN", "CALIBRATION", "BENCHMARK"]

REFINE_BATCH = "refine.batch"
REFINE_NOISE = "refine.noise"
REFINE_JACOBIAN = "refine.jacobian"
REFINE_START = "refine.start"
REFINE_FINAL = "refine.final"
GA = "ga"
CMAES = "cmaes"
COS_NOISE = "cos.noise"
COS_BATCH = "cos.batch"
COS_CHECK = "cos.check"
COS_CANDIDATE = "cos.candidate"
DIRECT_NOISE = "direct.noise"
DIRECT_DATA = "direct.data"
DIRECT_INIT = "direct.init"
DIRECT_VALIDATE = "direct.validate"
DIRECT_FINAL = "direct.final"
OM_CHUNK = "om.chunk"
OM_EVAL = "om.eval"
GEN_SELECT = "generative.select"
GEN_INIT = "generative.init"
GEN_NOISING = "generative.noising"
GEN_REVERSE = "generative.reverse"
GEN_GROUP = "generative.group"
GEN_TRAIN = "generative.train"
GEN_EPOCH = "generative.epoch"
GEN_SAMPLE = "generative.sample"
GEN_EVAL = "generative.eval"
TEACHER_INIT = "teacher.init"
TEACHER_DATA = "teacher.data"
DEMO = "demo"
ACQUISITION = "run.acquisition"
RUN_TWIN = "run.twin"
CALIBRATION = "calibration"
BENCHMARK = "benchmark"

#: Every purpose above (the table in the module docstring).
PURPOSES = (REFINE_BATCH, REFINE_NOISE, REFINE_JACOBIAN, REFINE_START, REFINE_FINAL, GA, CMAES, COS_NOISE,
            COS_BATCH, COS_CHECK, COS_CANDIDATE, DIRECT_NOISE, DIRECT_DATA, DIRECT_INIT, DIRECT_VALIDATE,
            DIRECT_FINAL, OM_CHUNK, OM_EVAL, GEN_SELECT, GEN_INIT, GEN_NOISING, GEN_REVERSE, GEN_GROUP,
            GEN_TRAIN, GEN_EPOCH, GEN_SAMPLE, GEN_EVAL, TEACHER_INIT, TEACHER_DATA, DEMO, ACQUISITION,
            RUN_TWIN, CALIBRATION, BENCHMARK)

#: Test hook: when a list, every ``(seed, purpose, index, derived)`` is appended to it.
_RECORD: list | None = None


def purpose_word(purpose: str) -> int:
    """The 32-bit entropy word of a purpose name (BLAKE2b, 4-byte digest; stable across runs)."""
    if not isinstance(purpose, str) or not purpose:
        raise ValueError(f"a seed purpose is a non-empty string, got {purpose!r}")
    return int.from_bytes(hashlib.blake2b(purpose.encode(), digest_size=4).digest(), "little")


def _entropy(seed: int, purpose: str, index) -> list[int]:
    seed = int(seed)
    idx = [int(i) for i in index]
    if seed < 0 or any(i < 0 for i in idx):
        raise ValueError(f"seed and index must be non-negative integers, got seed={seed}, index={tuple(idx)}")
    return [seed, purpose_word(purpose), len(idx), *idx]


def derive(seed: int, purpose: str, *index: int) -> int:
    """The 63-bit seed (0 <= s < 2**63) of stream ``(seed, purpose, *index)``.

    For the twin (``seed=``, ``reseed``), ``np.random.default_rng`` and anything taking a
    non-negative 64-bit integer."""
    words = np.random.SeedSequence(_entropy(seed, purpose, index)).generate_state(2, np.uint32)
    out = (int(words[1]) << 32 | int(words[0])) & ((1 << 63) - 1)
    if _RECORD is not None:
        _RECORD.append((int(seed), purpose, tuple(int(i) for i in index), out))
    return out


def derive32(seed: int, purpose: str, *index: int) -> int:
    """The low 32 bits of :func:`derive` (for APIs that take a 32-bit seed, e.g. ``cma``)."""
    return derive(seed, purpose, *index) & 0xFFFFFFFF


def rng(seed: int, purpose: str, *index: int) -> np.random.Generator:
    """A numpy generator on stream ``(seed, purpose, *index)``."""
    return np.random.default_rng(derive(seed, purpose, *index))
