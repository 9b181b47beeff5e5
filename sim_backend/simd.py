"""An explicit-SIMD register tile for the twin's dense coupling force.

LLVM does not vectorise the product ``g[i, b] = sum_j c[i, j] x[j, b]`` well when it is written
as scalar numba loops: it either vectorises the ``j`` sum (then every output needs a horizontal
reduction and the state must be transposed each step) or keeps the accumulators in memory.  The
intrinsic below writes the textbook GEMM micro-kernel directly in LLVM IR: a tile of ``RB`` rows
times ``NV`` vectors of lanes stays in registers (8 accumulators), each step of the ``j`` loop
loads ``NV`` lane vectors of ``x[j]``, broadcasts ``RB`` coefficients ``c[i + r, j]`` and issues
``RB * NV`` fused multiply-adds.  The tile's epilogue adds the field and the local force
``-x (2Q + 3S x + 4R x^2)``, so the block's whole deterministic force comes out of one pass.

Tiles, chosen so that 8 of the 16 AVX2 registers accumulate:

* float32: 2 rows x 4 vectors of 8 lanes (32 lanes);
* float64: 4 rows x 2 vectors of 4 lanes (8 lanes).

Each lane's sum runs over ``j`` in order with one multiply-add per term (``llvm.fmuladd``: fused
where the CPU has FMA), whatever its position in the block, so a trajectory's result does not
depend on where it sits (the kernel's reproducibility guarantee).  On CPUs with narrower vectors
LLVM splits the 256-bit operations.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

VECTOR_BYTES = 32  # AVX2 register


@njit(inline="always")
def tile_shape(itemsize):
    """``(rows, lanes)`` covered by one tile for elements of ``itemsize`` bytes (4: 2 x 32, 8: 4 x 8)."""
    if itemsize == 4:
        return 2, 32
    return 4, 8


@intrinsic
def force_tile(typingctx, c, x, h, a1, a2, a3, f, i, b):
    """One tile of the force ``f = h - c @ x - x (a1 + x (a2 + a3 x))``, rows ``i:i+RB``, lanes ``b:b+LB``.

    ``c`` (Nr, Nj), ``x``, ``h``, ``f`` (Nr, L) C-contiguous; ``a1, a2, a3`` (Nr,); one float dtype.
    """
    if not all(isinstance(a, types.Array) and a.ndim == 2 for a in (c, x, h, f)):
        return None
    sig = types.void(c, x, h, a1, a2, a3, f, i, b)

    def codegen(context, builder, signature, args):
        item = context.get_data_type(signature.args[0].dtype)
        size = context.get_abi_sizeof(item)
        rows, lanes = tile_shape.py_func(size)
        width = VECTOR_BYTES // size
        n_vec = lanes // width
        vec = ir.VectorType(item, width)
        i64 = ir.IntType(64)
        const = lambda k: ir.Constant(i64, k)  # noqa: E731
        arrays = [context.make_array(t)(context, builder, v) for t, v in zip(signature.args[:7], args[:7])]
        ca, xa, ha, a1a, a2a, a3a, fa = arrays
        i0 = context.cast(builder, args[7], signature.args[7], types.int64)
        b0 = context.cast(builder, args[8], signature.args[8], types.int64)
        n = cgutils.unpack_tuple(builder, ca.shape)[1]
        ld = cgutils.unpack_tuple(builder, xa.shape)[1]  # x, h and f share one shape
        fma_name = f"llvm.fmuladd.v{width}f{8 * size}"
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3), fma_name)
        zero = ir.Constant(vec, [0.0] * width)
        splat_mask = ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width)

        def splat(scalar):
            v = builder.insert_element(ir.Constant(vec, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
            return builder.shuffle_vector(v, ir.Constant(vec, ir.Undefined), splat_mask)

        def vector_at(array, row, v):
            ptr = builder.gep(array.data, [builder.add(builder.add(builder.mul(row, ld), b0), const(v * width))])
            return builder.bitcast(ptr, vec.as_pointer())

        rows_i = [builder.add(i0, const(r)) for r in range(rows)]
        c_rows = [builder.gep(ca.data, [builder.mul(row, n)]) for row in rows_i]
        entry = builder.block
        loop = builder.append_basic_block("tile.loop")
        done = builder.append_basic_block("tile.done")
        builder.branch(loop)
        builder.position_at_end(loop)
        j = builder.phi(i64)
        acc = [[builder.phi(vec) for _ in range(n_vec)] for _ in range(rows)]
        xs = [builder.load(vector_at(xa, j, v), align=4) for v in range(n_vec)]
        new = [[builder.call(fma, [splat(builder.load(builder.gep(c_rows[r], [j]))), xs[v], acc[r][v]])
                for v in range(n_vec)] for r in range(rows)]
        j_next = builder.add(j, const(1))
        j.add_incoming(const(0), entry)
        j.add_incoming(j_next, loop)
        for r in range(rows):
            for v in range(n_vec):
                acc[r][v].add_incoming(zero, entry)
                acc[r][v].add_incoming(new[r][v], loop)
        builder.cbranch(builder.icmp_signed("<", j_next, n), loop, done)

        builder.position_at_end(done)  # epilogue: add the local force and the field
        for r, row in enumerate(rows_i):
            k1, k2, k3 = (splat(builder.load(builder.gep(a.data, [row]))) for a in (a1a, a2a, a3a))
            for v in range(n_vec):
                xv = builder.load(vector_at(xa, row, v), align=4)
                poly = builder.call(fma, [builder.call(fma, [k3, xv, k2]), xv, k1])  # a1 + x (a2 + a3 x)
                rest = builder.fsub(builder.load(vector_at(ha, row, v), align=4), new[r][v])  # h - (c @ x)
                builder.store(builder.fsub(rest, builder.fmul(xv, poly)), vector_at(fa, row, v), align=4)
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
