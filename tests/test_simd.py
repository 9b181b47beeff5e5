"""The explicit-SIMD pieces of sim_backend.simd against exact arithmetic (fractions)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from numba import njit

from sim_backend.simd import WIDE_TILES, field_kernel, fused_sub_product, tile_shape


@njit(fastmath=True)
def _fused_rows(f, c, x):
    """``f[i] - c[i] x[i]`` through fused_sub_product, in a loop LLVM vectorises (as the kernel's)."""
    out = np.empty_like(f)
    for i in range(f.shape[0]):
        out[i] = fused_sub_product(f[i], c[i], x[i])
    return out


@njit
def _fused_one(f, c, x):
    return fused_sub_product(f, c, x)


def _exact(f, c, x, dtype):
    """``f - c x`` rounded once to ``dtype`` (Fraction -> float is correctly rounded; float32 goes
    through float64, a double rounding that differs with probability ~2^-29 per value)."""
    return np.array([float(Fraction(float(a)) - Fraction(float(b)) * Fraction(float(y))) for a, b, y in zip(f, c, x)],
                    dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_sub_product_rounds_once(dtype):
    bits = np.finfo(dtype).nmant + 1  # 24 or 53
    h = dtype(2.0 ** -((bits + 1) // 2))  # c = x = 1 + h: c x = 1 + 2h + h^2, and h^2 is below the ulp of 1
    got = _fused_one(dtype(1) + 2 * h, dtype(1) + h, dtype(1) + h)
    assert got == -h * h  # the unfused f - round(c x) would give 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_sub_product_vectorised_matches_exact_rounding(dtype):
    rng = np.random.default_rng(11)
    f, c, x = (rng.normal(size=1000).astype(dtype) for _ in range(3))
    got = _fused_rows(f, c, x)
    assert got.dtype == dtype
    assert np.array_equal(got, _exact(f, c, x, dtype))


def test_tiles_fit_the_lane_blocks():
    for itemsize in (4, 8):
        rows, lanes = tile_shape.py_func(itemsize)
        assert 128 % lanes == 0 and 4 % rows == 0  # whole tiles in a block of 128 lanes and 4-row padding
    assert tile_shape.py_func(4) == ((4, 32) if WIDE_TILES else (2, 32))


def test_field_kernel_is_exact_row_by_row_and_batch_independent():
    rng = np.random.default_rng(5)
    k, n = 7, 5
    lanes = tile_shape.py_func(8)[1]
    inputs = rng.normal(size=(70, k))
    w = np.zeros((k, lanes))
    w[:, :n] = rng.normal(size=(k, n))
    bias = rng.normal(size=n)
    out = np.zeros((70, n))
    field_kernel(inputs, w, bias, out)
    ref = np.empty_like(out)  # the kernel's sum: acc = fma(I[p, j], W[j, i], acc) over j in order, then bias - acc
    for p in range(70):
        for i in range(n):
            acc = Fraction(0)
            for j in range(k):
                acc = Fraction(float(acc + Fraction(float(inputs[p, j])) * Fraction(float(w[j, i]))))
            ref[p, i] = float(Fraction(float(bias[i])) - acc)
    assert np.array_equal(out, ref)
    one = np.zeros((1, n))
    field_kernel(inputs[33:34], w, bias, one)  # the same row alone: the same bits
    assert np.array_equal(one[0], out[33])
