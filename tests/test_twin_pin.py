"""Bitwise pin of the twin's outputs for fixed seeds.

The digests in ``tests/data/twin_pin.json`` are SHA-256 hashes of the raw bytes of the arrays
returned by the twin (and the population sampler) for a grid of cases: float32 and float64,
dense (SIMD tile) and sparse (CSR) couplings, reset and serial sampling, Euler-Maruyama and
Leimkuhler-Matthews, with and without input lines, scalar mobility.  They were recorded before the
Langevin core was factored out (commit b8df12a) and any refactoring of the integrator must keep
them: a single differing bit in any sample fails the test.  The ``baoab`` entries (the underdamped
scheme, new with the core) were added after it.

Regenerate only for an intended change of numbers: ``python tests/test_twin_pin.py --write``.
The hashes are those of an x86-64 CPU with AVX2 and FMA (the kernel's fused multiply-adds); on
other CPUs the test is skipped.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import sys

import numpy as np
import pytest

from sim_backend import population, twin
from tc_hw import Network, Params, all_to_all, layered

PIN_FILE = pathlib.Path(__file__).parent / "data" / "twin_pin.json"


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _params(kind: str, with_inputs: bool) -> Params:
    """Fixed parameter sets: "sparse" a layered 6x4 network (CSR path), "dense" all-to-all 18 (tile)."""
    rng = np.random.default_rng(1234)
    if kind == "sparse":
        net = layered(6, 4, 1)
    else:
        net = all_to_all(16, 2, 2)
    if not with_inputs:
        net = Network(net.n_nodes, net.edges, 0, np.zeros((0, 2), np.int64), net.outputs)
    n = net.n_nodes
    return Params(
        net,
        rng.uniform(0.5, 1.5, n),
        rng.normal(0, 0.2, n),
        rng.uniform(0.5, 1.5, n),
        rng.normal(0, 0.5, n),
        rng.normal(0, 0.5 / np.sqrt(n), net.n_edges),
        rng.normal(0, 1.0, net.n_crossbar),
        kT=0.3,
        mobility=1.3,
    )


def _inputs(p: Params) -> np.ndarray:
    k = p.network.n_inputs
    return np.linspace(-1.0, 1.0, 3 * k).reshape(3, k) if k else np.zeros((2, 0))


def cases():
    """Yield ``(name, thunk)``; each thunk returns the arrays whose bytes are pinned."""
    for kind in ("sparse", "dense"):
        for with_inputs in (True, False):
            p = _params(kind, with_inputs)
            inp = _inputs(p)
            for dtype in (np.float32, np.float64):
                for scheme in ("em", "lm"):
                    tag = f"{kind}-{'in' if with_inputs else 'noin'}-{np.dtype(dtype).name}-{scheme}"

                    def reset(p=p, inp=inp, dtype=dtype, scheme=scheme):
                        r = twin.sample_reset(p, inp, [0.05, 0.2], 37, dt=1e-2, seed=7, dtype=dtype,
                                              scheme=scheme, energy=True)
                        return r.x, r.heat_kT, r.final

                    def serial(p=p, inp=inp, dtype=dtype, scheme=scheme):
                        r = twin.sample_serial(p, inp, 0.03, 20, dt=1e-2, seed=8, dtype=dtype, scheme=scheme,
                                               x0=np.linspace(-0.5, 0.5, p.network.n_nodes), rail=1.2)
                        return (r.x,)

                    yield f"reset-{tag}", reset
                    yield f"serial-{tag}", serial

                def baoab(p=p, inp=inp, dtype=dtype):
                    r = twin.sample_reset(p, inp, [0.05, 0.2], 37, dt=1e-2, seed=7, dtype=dtype, scheme="baoab",
                                          mass=0.5, friction=2.0, energy=True)
                    return r.x, r.heat_kT, r.final

                yield f"reset-{kind}-{'in' if with_inputs else 'noin'}-{np.dtype(dtype).name}-baoab", baoab
    p = _params("sparse", True)
    pop = [p]
    for k in range(3):
        q = Params(p.network, p.quadratic * (1 + 0.1 * k), p.cubic, p.quartic, p.bias + 0.1 * k, p.coupling,
                   p.crossbar, kT=p.kT, mobility=p.mobility)
        pop.append(q)
    inp = _inputs(p)
    for dtype in (np.float32, np.float64):
        for scheme in ("em", "lm"):
            tag = f"{np.dtype(dtype).name}-{scheme}"
            yield f"population-reset-{tag}", lambda dtype=dtype, scheme=scheme: (
                population.population_reset(pop, inp, [0.05, 0.2], 10, dt=1e-2, seed=[1, 2, 3, 4], dtype=dtype,
                                            scheme=scheme),)
            yield f"population-serial-{tag}", lambda dtype=dtype, scheme=scheme: (
                population.population_serial(pop, inp, 0.03, 12, dt=1e-2, seed=5, dtype=dtype, scheme=scheme,
                                             rail=1.0),)
            yield f"population-antithetic-{tag}", lambda dtype=dtype, scheme=scheme: (
                population.population_reset(pop, inp, 0.1, 8, dt=1e-2, seed=9, dtype=dtype, scheme=scheme,
                                            antithetic=True),)


def _cpu_has_fma() -> bool:
    try:
        flags = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


def test_twin_outputs_are_bitwise_pinned():
    if not _cpu_has_fma():
        pytest.skip("pinned digests are those of an AVX2+FMA CPU")
    pinned = json.loads(PIN_FILE.read_text())
    got = {name: _digest(*thunk()) for name, thunk in cases()}
    assert set(got) == set(pinned), sorted(set(got) ^ set(pinned))
    changed = sorted(k for k in got if got[k] != pinned[k])
    assert not changed, f"{len(changed)} of {len(got)} pinned twin outputs changed: {changed}"


if __name__ == "__main__":
    if "--write" in sys.argv:
        PIN_FILE.write_text(json.dumps({name: _digest(*thunk()) for name, thunk in cases()}, indent=1) + "\n")
        print(f"wrote {PIN_FILE}")
