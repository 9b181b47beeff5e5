"""Explicit-SIMD register tiles for the twin's dense products.

LLVM does not vectorise the product ``g[i, b] = sum_j c[i, j] x[j, b]`` well when it is written
as scalar numba loops: it either vectorises the ``j`` sum (then every output needs a horizontal
reduction and the state must be transposed each step) or keeps the accumulators in memory.  The
intrinsic below writes the textbook GEMM micro-kernel directly in LLVM IR: a tile of ``RB`` rows
times ``NV`` vectors of lanes stays in registers (8 or 16 accumulators), each step of the ``j`` loop
loads ``NV`` lane vectors of ``x[j]``, broadcasts ``RB`` coefficients ``c[i + r, j]`` and issues
``RB * NV`` fused multiply-adds.  Two tiles share that loop:

* :func:`force_tile`, whose epilogue adds the field and the local force ``-x (2Q + 3S x + 4R x^2)``,
  so a block's whole deterministic force comes out of one pass (the Langevin kernel);
* :func:`product_tile`, a plain product (the field ``B - I W`` of many inputs, see
  :func:`field_kernel`).

:func:`fused_sub_product` (``f - c x`` rounded once) is the scalar step of the sparse force's
chains, written as an intrinsic so that fastmath cannot reassociate them.

Tiles, chosen so that half of the CPU's vector registers accumulate (the rest hold the ``x``
vectors and the broadcast coefficient), see :func:`tile_shape`:

* AVX2 (16 registers, 8 accumulators): float32 2 rows x 4 vectors of 8 lanes (32 lanes),
  float64 4 rows x 2 vectors of 4 lanes (8 lanes);
* AVX-512VL (32 registers usable by 256-bit code, 16 accumulators): float32 4 rows x 4 vectors
  (32 lanes), float64 4 rows x 4 vectors (16 lanes).  Twice the rows or vectors per tile halves
  the loads per multiply-add and leaves twice the independent sums to hide the FMA latency.

Each lane's sum runs over ``j`` in order with one multiply-add per term (``llvm.fmuladd``: fused
where the CPU has FMA), whatever its position in the block, so a trajectory's result does not
depend on where it sits (the kernel's reproducibility guarantee).  On CPUs with narrower vectors
LLVM splits the 256-bit operations.
"""

from __future__ import annotations

from llvmlite import binding as llvm
from llvmlite import ir
import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

VECTOR_BYTES = 32  # AVX2 register


def _has_32_vector_registers() -> bool:
    """Whether this CPU gives 256-bit code 32 vector registers (AVX-512VL: ymm0-31) instead of 16."""
    try:
        return bool(llvm.get_host_cpu_features().get("avx512vl", False))
    except RuntimeError:  # features unknown on this platform: assume the 16 of AVX2
        return False


WIDE_TILES = _has_32_vector_registers()  # a compile-time constant of every kernel (numba freezes globals)


@njit(inline="always")
def tile_shape(itemsize):
    """``(rows, lanes)`` covered by one tile for elements of ``itemsize`` bytes.

    With 32 vector registers, 16 accumulate (float32 4 x 32, float64 4 x 16); with 16, 8 do
    (float32 2 x 32, float64 4 x 8).  Either way each lane's sum is the same (see the module)."""
    if itemsize == 4:
        return (4, 32) if WIDE_TILES else (2, 32)
    return (4, 16) if WIDE_TILES else (4, 8)


class _Tile:
    """LLVM IR of one tile's accumulation loop; ``acc[r][v]`` holds the sums after :meth:`build`."""

    def __init__(self, context, builder, c_type, x_type, c, x, i, b):
        self.builder = builder
        item = context.get_data_type(c_type.dtype)
        size = context.get_abi_sizeof(item)
        self.rows, lanes = tile_shape.py_func(size)
        self.width = VECTOR_BYTES // size
        self.n_vec = lanes // self.width
        self.vec = ir.VectorType(item, self.width)
        self.ca = context.make_array(c_type)(context, builder, c)
        self.xa = context.make_array(x_type)(context, builder, x)
        self.i0, self.b0 = i, b
        self.ld = cgutils.unpack_tuple(builder, self.xa.shape)[1]  # lanes per row of every (., L) array
        name = f"llvm.fmuladd.v{self.width}f{8 * size}"
        self.fma_fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(self.vec, [self.vec] * 3), name)
        self.rows_i = [builder.add(i, self.const(r)) for r in range(self.rows)]

    @staticmethod
    def const(k):
        return ir.Constant(ir.IntType(64), k)

    def fma(self, a, b, c):
        return self.builder.call(self.fma_fn, [a, b, c])

    def splat(self, scalar):
        w = self.width
        v = self.builder.insert_element(ir.Constant(self.vec, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
        mask = ir.Constant(ir.VectorType(ir.IntType(32), w), [0] * w)
        return self.builder.shuffle_vector(v, ir.Constant(self.vec, ir.Undefined), mask)

    def vector_at(self, array, row, v):
        """Pointer to lanes ``b + v*W .. b + v*W + W-1`` of ``row`` of a (., L) array."""
        bld = self.builder
        ptr = bld.gep(array.data, [bld.add(bld.add(bld.mul(row, self.ld), self.b0), self.const(v * self.width))])
        return bld.bitcast(ptr, self.vec.as_pointer())

    def build(self):
        """Emit ``acc[r][v] = sum_j c[i + r, j] x[j, b + v*W : ...]`` (the j loop, in order)."""
        bld = self.builder
        n = cgutils.unpack_tuple(bld, self.ca.shape)[1]
        c_rows = [bld.gep(self.ca.data, [bld.mul(row, n)]) for row in self.rows_i]
        zero = ir.Constant(self.vec, [0.0] * self.width)
        entry = bld.block
        loop = bld.append_basic_block("tile.loop")
        done = bld.append_basic_block("tile.done")
        bld.branch(loop)
        bld.position_at_end(loop)
        j = bld.phi(ir.IntType(64))
        acc = [[bld.phi(self.vec) for _ in range(self.n_vec)] for _ in range(self.rows)]
        xs = [bld.load(self.vector_at(self.xa, j, v), align=4) for v in range(self.n_vec)]
        new = [[self.fma(self.splat(bld.load(bld.gep(c_rows[r], [j]))), xs[v], acc[r][v]) for v in range(self.n_vec)]
               for r in range(self.rows)]
        j_next = bld.add(j, self.const(1))
        j.add_incoming(self.const(0), entry)
        j.add_incoming(j_next, loop)
        for r in range(self.rows):
            for v in range(self.n_vec):
                acc[r][v].add_incoming(zero, entry)
                acc[r][v].add_incoming(new[r][v], loop)
        bld.cbranch(bld.icmp_signed("<", j_next, n), loop, done)
        bld.position_at_end(done)
        self.acc = new


@intrinsic
def fused_sub_product(typingctx, f, c, x):
    """``f - c * x`` rounded once (``llvm.fma(-c, x, f)``), for float32 or float64 scalars of one type.

    What ``f -= c * x`` compiles to under fastmath on an FMA CPU, written so that LLVM may not
    reassociate a chain of them: ``fused_sub_product(fused_sub_product(f, c1, x1), c2, x2)`` is
    always the two updates in that order (the loop vectoriser still widens it)."""
    if not (isinstance(f, types.Float) and f == c == x):
        return None
    sig = f(f, c, x)

    def codegen(context, builder, signature, args):
        ty = context.get_value_type(signature.return_type)
        name = f"llvm.fma.f{8 * context.get_abi_sizeof(ty)}"
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty] * 3), name)
        return builder.call(fma, [builder.fneg(args[1]), args[2], args[0]])

    return sig, codegen


def _index(context, builder, value, ty):
    return context.cast(builder, value, ty, types.int64)


@intrinsic
def product_tile(typingctx, c, x, g, i, b):
    """One tile of ``g = c @ x``: rows ``i:i+RB`` of ``g``, lanes ``b:b+LB``.

    ``c`` (Nr, Nj), ``x`` (>= Nj, L), ``g`` (Nr, L), C-contiguous, one float dtype, ``Nj >= 1``.
    """
    if not all(isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C" for a in (c, x, g)):
        return None
    sig = types.void(c, x, g, i, b)

    def codegen(context, builder, signature, args):
        ts = signature.args
        tile = _Tile(context, builder, ts[0], ts[1], args[0], args[1],
                     _index(context, builder, args[3], ts[3]), _index(context, builder, args[4], ts[4]))
        tile.build()
        ga = context.make_array(ts[2])(context, builder, args[2])
        for r, row in enumerate(tile.rows_i):
            for v in range(tile.n_vec):
                builder.store(tile.acc[r][v], tile.vector_at(ga, row, v), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def force_tile(typingctx, c, x, h, a1, a2, a3, f, i, b):
    """One tile of the force ``f = h - c @ x - x (a1 + x (a2 + a3 x))``, rows ``i:i+RB``, lanes ``b:b+LB``.

    ``c`` (Nr, Nj), ``x``, ``h``, ``f`` (Nr, L) C-contiguous; ``a1, a2, a3`` (Nr,); one float dtype.
    """
    if not all(isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C" for a in (c, x, h, f)):
        return None
    sig = types.void(c, x, h, a1, a2, a3, f, i, b)

    def codegen(context, builder, signature, args):
        ts = signature.args
        tile = _Tile(context, builder, ts[0], ts[1], args[0], args[1],
                     _index(context, builder, args[7], ts[7]), _index(context, builder, args[8], ts[8]))
        tile.build()
        ha, a1a, a2a, a3a, fa = (context.make_array(t)(context, builder, v) for t, v in zip(ts[2:7], args[2:7]))
        for r, row in enumerate(tile.rows_i):  # epilogue: add the local force and the field
            k1, k2, k3 = (tile.splat(builder.load(builder.gep(a.data, [row]))) for a in (a1a, a2a, a3a))
            for v in range(tile.n_vec):
                xv = builder.load(tile.vector_at(tile.xa, row, v), align=4)
                poly = tile.fma(tile.fma(k3, xv, k2), xv, k1)  # a1 + x (a2 + a3 x)
                rest = builder.fsub(builder.load(tile.vector_at(ha, row, v), align=4), tile.acc[r][v])  # h - c @ x
                builder.store(builder.fsub(rest, builder.fmul(xv, poly)), tile.vector_at(fa, row, v), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always")
def dense_force(c, x, h, a1, a2, a3, f):
    """``f = h - c @ x - x (a1 + x (a2 + a3 x))`` for one block of lanes, tile by tile.

    Shapes: ``c`` (Nr, Nj) with ``Nj <= Nr``; ``x``, ``h``, ``f`` (Nr, L); ``a1..a3`` (Nr,).  ``Nr``
    is a multiple of 4 and ``L`` of 32 (zero padding); all C-contiguous, one float dtype.
    """
    rows, lanes = tile_shape(x.itemsize)
    for b in range(0, x.shape[1], lanes):  # a lane strip of x stays in L1 while the rows pass
        for i in range(0, c.shape[0], rows):
            force_tile(c, x, h, a1, a2, a3, f, i, b)


@njit(parallel=True, cache=True)
def field_kernel(inputs, w, bias, out):
    """``out[p, :N] = bias - inputs[p] @ w[:, :N]`` for every input vector, the same way for each.

    ``inputs`` (P, K), ``w`` (K, NL) the crossbar matrix with columns zero-padded to a multiple of
    the tile's lanes, ``bias`` (N,), ``out`` (P, >= N); one float dtype, ``K >= 1``.  The inputs
    are the tile's rows and the nodes its lanes, so no transpose is needed.  Unlike a BLAS product,
    the sum over ``k`` for input ``p`` does not depend on ``p``'s position in the batch, so the
    twin's float64 runs are bitwise batch-independent too.
    """
    n_in, k_in = inputs.shape
    n = bias.shape[0]
    rows, lanes = tile_shape(inputs.itemsize)
    if w.shape[1] % lanes != 0 or w.shape[0] != k_in or k_in < 1:
        raise ValueError("field_kernel: w must be (K, multiple of the tile lanes), K >= 1")
    n_strips = w.shape[1] // lanes
    packed = np.empty((n_strips, k_in, lanes), w.dtype)  # each strip of w's columns contiguous: streamed in order
    for s in range(n_strips):
        for k in range(k_in):
            for lane in range(lanes):
                packed[s, k, lane] = w[k, s * lanes + lane]
    chunk = 16 * rows  # inputs per task; a strip of w's lanes is reused by all of them from cache
    for blk in prange((n_in + chunk - 1) // chunk):
        p0 = blk * chunk
        g = np.empty((n_strips, chunk, lanes), inputs.dtype)
        if p0 + chunk <= n_in:
            block = inputs[p0 : p0 + chunk]
        else:  # the last, partial chunk: zero-padded copy
            block = np.zeros((chunk, k_in), inputs.dtype)
            block[: n_in - p0] = inputs[p0:]
        for s in range(n_strips):
            w_strip = packed[s]
            g_strip = g[s]
            for i in range(0, chunk, rows):
                product_tile(block, w_strip, g_strip, i, 0)
        for r in range(min(chunk, n_in - p0)):
            for i in range(n):
                out[p0 + r, i] = bias[i] - g[i // lanes, r, i % lanes]
