"""Throughput of the twin's JAX engine (``engine="gpu"``): the part of ``twin_throughput.py --engine gpu``.

Each scenario is run once to compile (``compile_s`` is that call's time minus a timed call's), then
timed as the best of ``REPEATS`` complete ``sample_reset`` calls (host preparation, transfers and
the device loop).  ``device_loop_s`` is the engine's share of a call (the jitted loop, its inputs'
transfer to the device and the observations' transfer back), so ``neuron_updates_per_s`` is the
whole job and ``device_neuron_updates_per_s`` the engine alone.

FLOPs: couplings (``2 nnz``, or ``2 n_pad^2`` dense) plus 8 per node for the local force and the
update, as in the CPU benchmark; the generator's arithmetic (about 30 float and 12 integer
operations per node and step) is not counted, so ``fraction_of_fp32_peak`` is a lower bound.
"""

from __future__ import annotations

import time

from sim_backend import jax_engine, twin

REPEATS = 2
# float32 peak (non-tensor) by device kind, FLOP/s; an FMA counts 2
FP32_PEAK = {"H100 PCIe": 51.2e12, "H100": 66.9e12, "H200": 66.9e12, "GH200": 66.9e12, "A100": 19.5e12}


def fp32_peak(kind: str) -> float | None:
    """The float32 peak of a device kind (``jax.devices()[0].device_kind``), None if unknown."""
    for key in sorted(FP32_PEAK, key=len, reverse=True):  # "H100 PCIe" before "H100"
        if key in kind:
            return FP32_PEAK[key]
    return None


class _Timed:
    """Wraps the engine's kernel to add up the seconds spent in it."""

    def __init__(self):
        self.inner = jax_engine.run_block_kernel
        self.seconds = 0.0

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0


def scenario(name: str, params, inputs, n_samples: int, n_steps: int, dt: float = 1e-3) -> dict:
    """Time ``sample_reset(engine="gpu")`` on one scenario; returns the JSON record."""
    n = params.network.n_nodes
    updates = len(inputs) * n_samples * n * n_steps
    timed = _Timed()
    jax_engine.run_block_kernel = timed
    try:
        def run():
            timed.seconds = 0.0
            t0 = time.perf_counter()
            twin.sample_reset(params, inputs, dt * n_steps, n_samples, dt=dt, nodes=params.network.outputs,
                              engine="gpu")
            return time.perf_counter() - t0, timed.seconds

        first, _ = run()
        seconds, device_s = min(run() for _ in range(REPEATS))
    finally:
        jax_engine.run_block_kernel = timed.inner
    dense = twin.uses_dense_coupling(params)
    n_pad = n + (n & 1)
    flops_per_traj_step = (2 * n_pad * n_pad if dense else 4 * params.network.n_edges) + 8 * n_pad
    flops = flops_per_traj_step * len(inputs) * n_samples * n_steps
    devs = jax_engine.devices()
    peak = fp32_peak(devs[0].device_kind)
    gflops = flops / device_s / 1e9
    return {
        "scenario": name,
        "engine": "gpu",
        "devices": [str(d) for d in devs],
        "device_kind": devs[0].device_kind,
        "device_count": len(devs),
        "nodes": n,
        "trajectories": len(inputs) * n_samples,
        "steps": n_steps,
        "coupling_path": "dense" if dense else "sparse",
        "unroll": jax_engine.default_unroll(),
        "seconds": seconds,
        "compile_s": max(first - seconds, 0.0),
        "device_loop_s": device_s,
        "neuron_updates_per_s": updates / seconds,
        "device_neuron_updates_per_s": updates / device_s,
        "gflops": gflops,
        "fp32_peak_flops": peak,
        "fraction_of_fp32_peak": None if peak is None else gflops * 1e9 / (len(devs) * peak),
    }
