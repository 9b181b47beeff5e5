#!/usr/bin/env bash
# One short device check of the twin's JAX engine (engine="gpu"), for a lent GPU machine:
#   1. the devices JAX sees;
#   2. the throughput benchmark, scenarios A and B at full size (JSON lines; jit compile included);
#   3. the engine's physics and CPU-agreement tests, run on that device.
# Usage (repository root): bash benchmarks/gpu_check.sh [OUT_DIR]   -- about 2-4 minutes on an H100.
# Needs python with numpy, scipy, numba, h5py, jax (with CUDA) and pytest; TC_HW_JAX_UNROLL tunes
# the steps fused per loop iteration (default 1).
set -u
out="${1:-${OUT:-/tmp}}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
"$py" -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tee "$out/devices.txt"
timeout 300 "$py" benchmarks/twin_throughput.py --engine gpu --json 2>&1 | tee "$out/twin_throughput_gpu.jsonl"
timeout 240 "$py" -m pytest -q -p no:cacheprovider tests/test_gpu_engine.py 2>&1 | tee "$out/test_gpu_engine.txt"
