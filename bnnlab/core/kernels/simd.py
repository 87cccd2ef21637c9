"""SIMD value types and the LLVM intrinsics the hot loops are written with.

LLVM's loop vectorizer keeps accumulators in memory (it cannot prove the output does not
alias the inputs), so a loop like ``c[j] += a * b[j]`` costs a load and a store per
vector. To keep GEMM tiles and sparse row sums in registers, the kernels use two value
types, each one AVX2 register: ``float32x8`` (eight floats) and ``uint64x4`` (four packed
64-bit words), with a handful of intrinsics. The raw loads and stores do no bounds or
wraparound checks: callers index only inside their arrays.

How ``uxor_popadd`` counts bits is chosen once per process, from the CPU or from
``BNNLAB_POPCOUNT`` (see :data:`POPCOUNT_MODE`).
"""

from __future__ import annotations

import numba as nb
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from .jit import HOST_FEATURES, JIT_INLINE, POPCOUNT_MODE

_V8 = ir.VectorType(ir.FloatType(), 8)
_I32 = ir.IntType(32)


class _Float32x8(types.Type):
    def __init__(self):
        super().__init__(name="float32x8")


float32x8 = _Float32x8()


@register_model(_Float32x8)
class _Float32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V8)


def _is_f32c(ary):
    return isinstance(ary, types.Array) and ary.dtype == types.float32 and ary.layout == "C"


def _addr(context, builder, aryty, ary, idx, ptr_type):
    data = context.make_array(aryty)(context, builder, ary).data
    return builder.bitcast(builder.gep(data, [idx]), ptr_type.as_pointer())


@intrinsic
def vload(typingctx, ary, idx):
    """Eight floats ary.flat[idx:idx+8] (unaligned)."""
    if not (_is_f32c(ary) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_addr(context, builder, sig.args[0], args[0], args[1], _V8), align=4)

    return float32x8(ary, idx), codegen


@intrinsic
def vstore(typingctx, ary, idx, v):
    """ary.flat[idx:idx+8] = v."""
    if not (_is_f32c(ary) and isinstance(idx, types.Integer) and v == float32x8):
        return None

    def codegen(context, builder, sig, args):
        builder.store(args[2], _addr(context, builder, sig.args[0], args[0], args[1], _V8),
                      align=4)
        return context.get_dummy_value()

    return types.void(ary, idx, v), codegen


@intrinsic
def ld(typingctx, ary, idx):
    """ary.flat[idx] as float32, without Numba's negative-index wraparound select."""
    if not (_is_f32c(ary) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_addr(context, builder, sig.args[0], args[0], args[1],
                                  ir.FloatType()), align=4)

    return types.float32(ary, idx), codegen


@intrinsic
def vsplat(typingctx, x):
    """Eight copies of a float32."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        v = builder.insert_element(ir.Constant(_V8, ir.Undefined), args[0], ir.Constant(_I32, 0))
        return builder.shuffle_vector(v, ir.Constant(_V8, ir.Undefined),
                                      ir.Constant(ir.VectorType(_I32, 8), [0] * 8))

    return float32x8(x), codegen


@intrinsic
def vzero(typingctx):
    def codegen(context, builder, sig, args):
        return ir.Constant(_V8, [0.0] * 8)

    return float32x8(), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """a * b + c, fused."""
    if not (a == b == c == float32x8):
        return None

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V8, [_V8] * 3),
                                            "llvm.fma.v8f32")
        return builder.call(fn, args)

    return float32x8(a, b, c), codegen


@intrinsic
def vadd(typingctx, a, b):
    if not (a == b == float32x8):
        return None

    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1])

    return float32x8(a, b), codegen


# --------------------------------------------------------------------------- uint64x4
#
# The <4 x i64> value type of the binary GEMM: XOR four packed words at once and count
# their bits. How the bits are counted depends on the CPU, chosen once at import:
#
# - "lanes" (AVX-512 VPOPCNTDQ with VL): one ``vpopcntq`` per vector, counts added as
#   64-bit lanes.
# - "bytes": count bits per byte (LLVM lowers a byte-wise ctpop to a nibble table
#   lookup, vpshufb on AVX2) and add the byte counts in registers. A byte holds at most
#   8 per word, so up to 31 words are summed before the bytes are folded into 64-bit
#   lane totals.
# - "csa" (everything without VPOPCNTDQ): the binary GEMM counts split nibbles
#   (``unibpop``, below) when A has enough rows; otherwise as "bytes", but where a row
#   has enough words it first sums eight XORed words with carry-save adders (``ucsa``)
#   and counts bytes once per eight words (:mod:`.xnor`); each about 1.2x faster than
#   "bytes" on AVX2.
#
# All are plain LLVM vector operations, so each runs correctly on any x86-64 CPU;
# ``BNNLAB_POPCOUNT=bytes|csa|lanes`` overrides the choice
# (the tests run each). Only kernels of the automatic choice are kept in Numba's on-disk
# cache (see :data:`.jit.CACHE`): a forced mode is compiled afresh and never mixed up.

_U4 = ir.VectorType(ir.IntType(64), 4)
_B32 = ir.VectorType(ir.IntType(8), 32)
_HOST_AVX2 = bool(HOST_FEATURES.get("avx2", False))
_LANES = POPCOUNT_MODE == "lanes"


class _Uint64x4(types.Type):
    def __init__(self):
        super().__init__(name="uint64x4")


uint64x4 = _Uint64x4()


@register_model(_Uint64x4)
class _Uint64x4Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _U4)


def _is_u64c(ary):
    return isinstance(ary, types.Array) and ary.dtype == types.uint64 and ary.layout == "C"


@intrinsic
def uload(typingctx, ary, idx):
    """Four words ary.flat[idx:idx+4]."""
    if not (_is_u64c(ary) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_addr(context, builder, sig.args[0], args[0], args[1], _U4), align=8)

    return uint64x4(ary, idx), codegen


@intrinsic
def uopaque(typingctx, v):
    """v, through an empty inline-assembly statement: no instruction, but LLVM must assume
    the value changed, so work on it cannot be hoisted out of a loop or folded away."""
    if v != uint64x4:
        return None

    def codegen(context, builder, sig, args):
        asm = ir.InlineAsm(ir.FunctionType(_U4, [_U4]), "", "=x,0", side_effect=True)
        return builder.call(asm, [args[0]])

    return uint64x4(v), codegen


@intrinsic
def vopaque(typingctx, v):
    """:func:`uopaque` for float32x8."""
    if v != float32x8:
        return None

    def codegen(context, builder, sig, args):
        asm = ir.InlineAsm(ir.FunctionType(_V8, [_V8]), "", "=x,0", side_effect=True)
        return builder.call(asm, [args[0]])

    return float32x8(v), codegen


@intrinsic
def ustore(typingctx, ary, idx, v):
    """ary.flat[idx:idx+4] = v."""
    if not (_is_u64c(ary) and isinstance(idx, types.Integer) and v == uint64x4):
        return None

    def codegen(context, builder, sig, args):
        builder.store(args[2], _addr(context, builder, sig.args[0], args[0], args[1], _U4),
                      align=8)
        return context.get_dummy_value()

    return types.void(ary, idx, v), codegen


@intrinsic
def uld(typingctx, ary, idx):
    """ary.flat[idx] as uint64, without wraparound handling."""
    if not (_is_u64c(ary) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_addr(context, builder, sig.args[0], args[0], args[1],
                                  ir.IntType(64)), align=8)

    return types.uint64(ary, idx), codegen


@intrinsic
def usplat(typingctx, x):
    if x != types.uint64:
        return None

    def codegen(context, builder, sig, args):
        v = builder.insert_element(ir.Constant(_U4, ir.Undefined), args[0], ir.Constant(_I32, 0))
        return builder.shuffle_vector(v, ir.Constant(_U4, ir.Undefined),
                                      ir.Constant(ir.VectorType(_I32, 4), [0] * 4))

    return uint64x4(x), codegen


@intrinsic
def uzero(typingctx):
    def codegen(context, builder, sig, args):
        return ir.Constant(_U4, [0] * 4)

    return uint64x4(), codegen


@intrinsic
def uadd(typingctx, a, b):
    """Lane-wise 64-bit add."""
    if not (a == b == uint64x4):
        return None

    def codegen(context, builder, sig, args):
        return builder.add(args[0], args[1])

    return uint64x4(a, b), codegen


@intrinsic
def uxor_popadd(typingctx, acc, a, b):
    """acc + popcount(a ^ b): per byte of acc ("bytes" mode) or per 64-bit lane ("lanes")."""
    if not (acc == a == b == uint64x4):
        return None

    def codegen(context, builder, sig, args):
        if _LANES:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_U4, [_U4]),
                                                "llvm.ctpop.v4i64")
            return builder.add(args[0], builder.call(fn, [builder.xor(args[1], args[2])]))
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_B32, [_B32]),
                                            "llvm.ctpop.v32i8")
        x = builder.bitcast(builder.xor(args[1], args[2]), _B32)
        s = builder.add(builder.bitcast(args[0], _B32), builder.call(fn, [x]))
        return builder.bitcast(s, _U4)

    return uint64x4(acc, a, b), codegen


def _ubinop(name, doc):
    @intrinsic
    def op(typingctx, a, b):
        if not (a == b == uint64x4):
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, name)(args[0], args[1])

        return uint64x4(a, b), codegen

    op.__doc__ = doc
    return op


uxor = _ubinop("xor", "Bitwise a ^ b.")
uand = _ubinop("and_", "Bitwise a & b.")
uor = _ubinop("or_", "Bitwise a | b.")


@nb.njit(**JIT_INLINE)
def ucsa(x, y, z):
    """Carry-save adder: (carry, sum) of three bit vectors, x + y + z = 2 * carry + sum
    bit by bit (five bitwise instructions)."""
    u = uxor(x, y)
    return uor(uand(x, y), uand(u, z)), uxor(u, z)


@intrinsic
def upopadd(typingctx, acc, x):
    """acc + popcount(x), in the counters of :func:`uxor_popadd` (bytes or lanes)."""
    if not (acc == x == uint64x4):
        return None

    def codegen(context, builder, sig, args):
        if _LANES:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_U4, [_U4]),
                                                "llvm.ctpop.v4i64")
            return builder.add(args[0], builder.call(fn, [args[1]]))
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_B32, [_B32]),
                                            "llvm.ctpop.v32i8")
        s = builder.add(builder.bitcast(args[0], _B32),
                        builder.call(fn, [builder.bitcast(args[1], _B32)]))
        return builder.bitcast(s, _U4)

    return uint64x4(acc, x), codegen


@intrinsic
def ucadd(typingctx, a, b):
    """a + b in those counters: per byte ("bytes", "csa") or per 64-bit lane ("lanes")."""
    if not (a == b == uint64x4):
        return None

    def codegen(context, builder, sig, args):
        if _LANES:
            return builder.add(args[0], args[1])
        s = builder.add(builder.bitcast(args[0], _B32), builder.bitcast(args[1], _B32))
        return builder.bitcast(s, _U4)

    return uint64x4(a, b), codegen


@nb.njit(**JIT_INLINE)
def ucsa_rest(ones, twos, fours):
    """Counters (as :func:`upopadd` keeps them) of the bits that carry-save adders left
    in their weight-1, -2 and -4 vectors: ones + 2 * twos + 4 * fours, at most 56 a byte."""
    r = upopadd(uzero(), fours)
    r = upopadd(ucadd(r, r), twos)
    return upopadd(ucadd(r, r), ones)


@nb.njit(**JIT_INLINE)
def utimes8(t):
    """8 * t, lane-wise."""
    t = uadd(t, t)
    t = uadd(t, t)
    return uadd(t, t)


def _bytesum(builder, x):
    # Sum of the eight bytes of each 64-bit lane of x (<4 x i64>): vpsadbw against zero
    # on AVX2, else three rounds of shifts and adds.
    if _HOST_AVX2:
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_U4, [_B32, _B32]), "llvm.x86.avx2.psad.bw")
        return builder.call(fn, [builder.bitcast(x, _B32), ir.Constant(_B32, [0] * 32)])

    def splat(c):
        return ir.Constant(_U4, [c] * 4)

    x = builder.add(builder.and_(x, splat(0x00FF00FF00FF00FF)),
                    builder.and_(builder.lshr(x, splat(8)), splat(0x00FF00FF00FF00FF)))
    x = builder.add(builder.and_(x, splat(0x0000FFFF0000FFFF)),
                    builder.and_(builder.lshr(x, splat(16)), splat(0x0000FFFF0000FFFF)))
    return builder.add(builder.and_(x, splat(0xFFFFFFFF)), builder.lshr(x, splat(32)))


@intrinsic
def ubytesum(typingctx, v):
    """Sum of the eight bytes of each 64-bit lane (in "lanes" mode, v itself)."""
    if v != uint64x4:
        return None

    def codegen(context, builder, sig, args):
        if _LANES:
            return args[0]
        return _bytesum(builder, args[0])

    return uint64x4(v), codegen


# --------------------------------------------------------------------------- nibbles
#
# A third way of counting, for the binary GEMM of rows of up to 31 words on CPUs without
# VPOPCNTDQ (:mod:`.xnor_nibbles`): both operands are split beforehand into their low and
# high nibbles (each byte keeps four bits), so the count of a ^ b is two table lookups
# of already separated nibbles, ``T[alo ^ blo] + T[ahi ^ bhi]``: two XORs, two vpshufb
# and two byte adds per vector, where counting a ^ b from whole bytes needs eight
# instructions. On a Zen 3 core that is as fast as the carry-save adders over eight
# words, and it needs no eight words in a row: short rows count at the same rate.

_NIBBLE_COUNTS = [bin(i).count("1") for i in range(16)] * 2


@intrinsic
def unibpop(typingctx, acc, x, y):
    """acc + the bit count of each byte of x ^ y, per byte, for bytes below 16 (nibbles):
    a 16-entry table lookup (vpshufb) on AVX2, else LLVM's byte-wise ctpop."""
    if not (acc == x == y == uint64x4):
        return None

    def codegen(context, builder, sig, args):
        z = builder.bitcast(builder.xor(args[1], args[2]), _B32)
        if _HOST_AVX2:
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_B32, [_B32, _B32]), "llvm.x86.avx2.pshuf.b")
            c = builder.call(fn, [ir.Constant(_B32, _NIBBLE_COUNTS), z])
        else:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_B32, [_B32]),
                                                "llvm.ctpop.v32i8")
            c = builder.call(fn, [z])
        return builder.bitcast(builder.add(builder.bitcast(args[0], _B32), c), _U4)

    return uint64x4(acc, x, y), codegen


@intrinsic
def ulonib(typingctx, v):
    """The low nibble of every byte of v (v & 0x0F0F...)."""
    if v != uint64x4:
        return None

    def codegen(context, builder, sig, args):
        return builder.and_(args[0], ir.Constant(_U4, [0x0F0F0F0F0F0F0F0F] * 4))

    return uint64x4(v), codegen


@intrinsic
def uhinib(typingctx, v):
    """The high nibble of every byte of v, shifted down ((v >> 4) & 0x0F0F...)."""
    if v != uint64x4:
        return None

    def codegen(context, builder, sig, args):
        return builder.and_(builder.lshr(args[0], ir.Constant(_U4, [4] * 4)),
                            ir.Constant(_U4, [0x0F0F0F0F0F0F0F0F] * 4))

    return uint64x4(v), codegen


def _store_dots(context, builder, aryty, ary, idx, cnt, k):
    # ary.flat[idx:idx+n] = k - 2*cnt for an <n x i32> cnt, in ary's dtype.
    vt = cnt.type
    kk = builder.trunc(k, _I32)
    kv = builder.shuffle_vector(
        builder.insert_element(ir.Constant(vt, ir.Undefined), kk, ir.Constant(_I32, 0)),
        ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(_I32, vt.count), [0] * vt.count))
    v = builder.sub(kv, builder.shl(cnt, ir.Constant(vt, [1] * vt.count)))
    if aryty.dtype == types.float32:
        v = builder.sitofp(v, ir.VectorType(ir.FloatType(), vt.count))
    builder.store(v, _addr(context, builder, aryty, ary, idx, v.type), align=4)
    return context.get_dummy_value()


def _sub_dots(context, builder, aryty, ary, idx, cnt):
    # ary.flat[idx:idx+n] -= 2*cnt for an <n x i32> cnt, in ary's dtype.
    vt = cnt.type
    two = builder.shl(cnt, ir.Constant(vt, [1] * vt.count))
    if aryty.dtype == types.float32:
        two = builder.sitofp(two, ir.VectorType(ir.FloatType(), vt.count))
    ptr = _addr(context, builder, aryty, ary, idx, two.type)
    old = builder.load(ptr, align=4)
    new = builder.fsub(old, two) if aryty.dtype == types.float32 else builder.sub(old, two)
    builder.store(new, ptr, align=4)
    return context.get_dummy_value()


def _dots8_args(out, idx, even, odd):
    return (isinstance(out, types.Array) and out.layout == "C" and even == odd == uint64x4
            and out.dtype in (types.int32, types.float32) and isinstance(idx, types.Integer))


def _counts8(builder, even, odd):
    # Eight int32 counts from the byte counters of two vectors: lane q of ``even`` is
    # output 2q, lane q of ``odd`` output 2q + 1 (each sum below 2**16).
    both = builder.or_(_bytesum(builder, even),
                       builder.shl(_bytesum(builder, odd), ir.Constant(_U4, [32] * 4)))
    return builder.bitcast(both, ir.VectorType(_I32, 8))


@intrinsic
def ustore_dots8(typingctx, out, idx, even, odd, k):
    """out.flat[idx:idx+8] = k - 2*count as out's dtype (int32 or float32), where count
    is the sum of the byte counters of each 64-bit lane: lane q of ``even`` holds column
    2q, lane q of ``odd`` column 2q + 1."""
    if not (_dots8_args(out, idx, even, odd) and isinstance(k, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return _store_dots(context, builder, sig.args[0], args[0], args[1],
                           _counts8(builder, args[2], args[3]), args[4])

    return types.void(out, idx, even, odd, k), codegen


@intrinsic
def usub_dots8(typingctx, out, idx, even, odd):
    """out.flat[idx:idx+8] -= 2*count, counts as in :func:`ustore_dots8`: a later block of K."""
    if not _dots8_args(out, idx, even, odd):
        return None

    def codegen(context, builder, sig, args):
        return _sub_dots(context, builder, sig.args[0], args[0], args[1],
                         _counts8(builder, args[2], args[3]))

    return types.void(out, idx, even, odd), codegen


@intrinsic
def ustore_dots(typingctx, out, idx, t, k):
    """out.flat[idx:idx+4] = k - 2*t, as out's dtype (int32 or float32)."""
    if not (isinstance(out, types.Array) and out.layout == "C" and t == uint64x4
            and out.dtype in (types.int32, types.float32) and isinstance(idx, types.Integer)
            and isinstance(k, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        cnt = builder.trunc(args[2], ir.VectorType(_I32, 4))
        return _store_dots(context, builder, sig.args[0], args[0], args[1], cnt, args[3])

    return types.void(out, idx, t, k), codegen


@intrinsic
def usub_dots(typingctx, out, idx, t):
    """out.flat[idx:idx+4] -= 2*t, in out's dtype (int32 or float32): a later block of K."""
    if not (isinstance(out, types.Array) and out.layout == "C" and t == uint64x4
            and out.dtype in (types.int32, types.float32) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        cnt = builder.trunc(args[2], ir.VectorType(_I32, 4))
        return _sub_dots(context, builder, sig.args[0], args[0], args[1], cnt)

    return types.void(out, idx, t), codegen



@intrinsic
def popcount64(typingctx, x):
    """LLVM ``ctpop`` on a uint64 (compiles to ``popcnt``, or vector code in loops)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(64)])
        return builder.call(fn, args)

    return sig, codegen

