"""Throughput of the twin's compiled kernel against a plain-numpy Euler-Maruyama baseline.

Both run in this process on the same network and inputs, so the ratio is meaningful on a noisy
machine.  Scenarios (issue "numerical twin"):

* A: the 784-input 64/10 all-to-all network, 10,000 trajectories, 200 steps;
* B: the 8-wide 4-deep layered network, 250 inputs x 1,000 samples, 1,000 steps.

The baseline is what one would write in numpy: the field ``B - I W`` by one matrix product, then
float32 state, ``X @ C`` through (threaded) OpenBLAS, ``Generator.standard_normal(dtype=float32)``.
It runs a slice of the steps; its time for the whole job is its set-up plus the slice's loop time
scaled to all the steps.  ``ratio`` compares whole jobs (the twin's time is one complete
``sample_reset`` call, set-up included); ``kernel_ratio`` compares the step loops alone (the twin's
set-up is timed with a one-step call and subtracted).

Usage: ``python benchmarks/twin_throughput.py [--json] [--quick] [--engine {cpu,gpu}]`` (``gpu``: the JAX engine,
see benchmarks/engine_gpu.py and docs/engines.md)
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from numba import njit

from sim_backend import twin
from sim_backend.kernel import LANES
from sim_backend.simd import dense_force, tile_shape
from tc_hw import Params, layered, thermo_gd_network

REPEATS = 3  # every timing is the best of this many runs, twin and numpy alike
PEAK_SGEMM_FLOPS = 190e9  # this machine's float32 sgemm peak on 2 cores (DEVELOPERS.md)


def numpy_baseline(params: Params, inputs, n_samples: int, n_steps: int, dt: float, seed: int = 0):
    """Plain-numpy Euler-Maruyama; returns (set-up seconds, seconds for ``n_steps`` steps of all trajectories)."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    t_setup = time.perf_counter()
    field = np.repeat(params.field(inputs), n_samples, axis=0).astype(f32)
    c = params.coupling_matrix().astype(f32)
    q2, s3, r4 = (f32(2) * params.quadratic).astype(f32), (3 * params.cubic).astype(f32), (4 * params.quartic).astype(f32)
    x = np.zeros_like(field)
    mu_dt, sigma = f32(params.mobility * dt), f32(np.sqrt(2 * params.mobility * params.kT * dt))
    t0 = time.perf_counter()
    for _ in range(n_steps):
        force = field - x * (q2 + x * (s3 + r4 * x)) - x @ c
        x = x + mu_dt * force + sigma * rng.standard_normal(x.shape, dtype=f32)
    return t0 - t_setup, time.perf_counter() - t0


def scenario(name, params, inputs, n_samples, n_steps, baseline_steps, dt=1e-3):
    n = params.network.n_nodes
    updates = len(inputs) * n_samples * n * n_steps
    twin.sample_reset(params, inputs[:2], dt * 2, 2, dt=dt)  # compile / load the cached kernel

    def run(steps):
        t0 = time.perf_counter()
        twin.sample_reset(params, inputs, dt * steps, n_samples, dt=dt, nodes=params.network.outputs)
        return time.perf_counter() - t0

    one_step = min(run(1) for _ in range(REPEATS))
    seconds = min(run(n_steps) for _ in range(REPEATS))
    setup = min(max((n_steps * one_step - seconds) / (n_steps - 1), 0.0), seconds)  # t(k) = setup + k * step
    base_setup, base_loop = min((numpy_baseline(params, inputs, n_samples, baseline_steps, dt) for _ in range(REPEATS)),
                                key=lambda t: t[0] + t[1])
    base_seconds = base_setup + base_loop * n_steps / baseline_steps
    base_rate = updates / base_seconds
    base_kernel_rate = len(inputs) * n_samples * n * baseline_steps / base_loop
    rate = updates / seconds
    # coupling flops actually executed by the kernel: dense tiles (2 Nr Np) or CSR (2 nnz)
    dense = twin.uses_dense_coupling(params)
    n_pad = n + (n & 1)
    flops_per_traj_step = 2 * (-(-n_pad // 4) * 4) * n_pad if dense else 4 * params.network.n_edges
    flops_per_traj_step += 8 * n_pad  # local force and update
    flops = flops_per_traj_step * len(inputs) * n_samples * n_steps
    return {
        "scenario": name,
        "nodes": n,
        "trajectories": len(inputs) * n_samples,
        "steps": n_steps,
        "twin": {"seconds": seconds, "setup_s": setup, "neuron_updates_per_s": rate,
                 "kernel_neuron_updates_per_s": updates / (seconds - setup)},
        "numpy": {"seconds": base_seconds, "setup_s": base_setup, "loop_s_for_steps": base_loop,
                  "steps": baseline_steps, "neuron_updates_per_s": base_rate,
                  "kernel_neuron_updates_per_s": base_kernel_rate},
        "ratio": rate / base_rate,
        "kernel_ratio": updates / (seconds - setup) / base_kernel_rate,
        "kernel_gflops": flops / (seconds - setup) / 1e9,
        "fraction_of_sgemm_peak": flops / (seconds - setup) / PEAK_SGEMM_FLOPS,
        "coupling_path": "dense" if dense else "sparse",
        **(tile_rate(n_pad) if dense else {}),
    }


def tile_rate(n_pad: int, repeats: int = 2000) -> dict:
    """GFLOP/s of the dense-force tile (sim_backend.simd) on one block, one thread, float32."""

    @njit
    def loop(c, x, h, a1, a2, a3, f, k):
        for _ in range(k):
            dense_force(c, x, h, a1, a2, a3, f)

    rows = -(-n_pad // 4) * 4
    rng = np.random.default_rng(0)
    c = rng.normal(size=(rows, n_pad)).astype(np.float32)
    x, h, f = (rng.normal(size=(rows, LANES)).astype(np.float32) for _ in range(3))
    a = [np.ones(rows, np.float32) for _ in range(3)]
    loop(c, x, h, *a, f, 1)
    best = np.inf
    for _ in range(5):
        t0 = time.perf_counter()
        loop(c, x, h, *a, f, repeats)
        best = min(best, (time.perf_counter() - t0) / repeats)
    gflops = 2 * rows * n_pad * LANES / best / 1e9
    return {"tile_gflops_one_core": gflops, "tile_fraction_of_core_peak": gflops * 1e9 / (PEAK_SGEMM_FLOPS / 2),
            "tile_rows_lanes": list(tile_shape.py_func(4))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON object per scenario")
    ap.add_argument("--quick", action="store_true", help="smaller B (for smoke tests)")
    ap.add_argument("--engine", choices=("cpu", "gpu"), default="cpu",
                    help="cpu: the numba kernel against numpy (default); gpu: the JAX engine on the device JAX "
                         "finds (jax.devices()), with the fraction of its float32 peak (benchmarks/engine_gpu.py)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)

    net_a = thermo_gd_network()
    params_a = Params.uniform(
        net_a, 1, 0, 1, coupling=rng.normal(0, 0.3, net_a.n_edges), crossbar=rng.normal(0, 0.05, net_a.n_crossbar)
    )
    inputs_a = rng.normal(size=(10000, 784))
    net_b = layered(8, 4, 1)
    params_b = Params.uniform(
        net_b, 10, 0, 10, coupling=rng.normal(0, 1, net_b.n_edges), crossbar=rng.normal(0, 3, net_b.n_crossbar)
    )
    inputs_b = np.linspace(0, 1, 250)[:, None]
    if args.engine == "gpu":
        return gpu_main(args, params_a, inputs_a, params_b, inputs_b)
    results = [
        scenario("A: 784-input 64/10 all-to-all, 10,000 x 200 steps", params_a, inputs_a, 1, 200, 50),
        scenario(
            "B: layered 8x4, 250 inputs x 1,000 samples x 1,000 steps",
            params_b,
            inputs_b,
            100 if args.quick else 1000,
            1000,
            20,
        ),
    ]
    for r in results:
        if args.json:
            print(json.dumps(r))
        else:
            print(
                f"{r['scenario']}: twin {r['twin']['neuron_updates_per_s']:.3g} updates/s, numpy "
                f"{r['numpy']['neuron_updates_per_s']:.3g}/s, ratio {r['ratio']:.1f}, "
                f"{r['kernel_gflops']:.1f} GFLOP/s ({100 * r['fraction_of_sgemm_peak']:.0f} % of sgemm peak)"
            )
    return 0


def gpu_main(args, params_a, inputs_a, params_b, inputs_b) -> int:
    """``--engine gpu``: scenarios A and B (``--quick``: 1,000 x 200 and 250 x 20 x 200) on the JAX engine."""
    import engine_gpu  # benchmarks/engine_gpu.py; needs jax (tc-hw[gpu])

    a_in = inputs_a[:1000] if args.quick else inputs_a
    b_samples, b_steps = (20, 200) if args.quick else (1000, 1000)
    results = [
        engine_gpu.scenario(f"A: 784-input 64/10 all-to-all, {len(a_in):,} x 200 steps", params_a, a_in, 1, 200),
        engine_gpu.scenario(f"B: layered 8x4, 250 inputs x {b_samples:,} samples x {b_steps:,} steps", params_b,
                            inputs_b, b_samples, b_steps),
    ]
    for r in results:
        frac = r["fraction_of_fp32_peak"]
        print(json.dumps(r) if args.json else
              f"{r['scenario']} on {r['device_kind']} x{r['device_count']}: {r['neuron_updates_per_s']:.3g} updates/s "
              f"({r['device_neuron_updates_per_s']:.3g} in the device loop), compile {r['compile_s']:.1f} s"
              + ("" if frac is None else f", {100 * frac:.2g} % of fp32 peak"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
