"""What running a ``.bnn`` model costs, computed from its header before anything is allocated.

A small valid file can describe a network whose activations, im2col rows or padding
tables take gigabytes, or whose single inference takes minutes: the file format bounds
element counts, not products of them. :func:`runtime_cost` adds up, block by block, the
arrays :mod:`bnnlab.deploy.runtime` builds to load a model and run one input, and the
elementary operations (multiply-adds, or 64-bit XNOR-popcount words) of one inference;
:func:`check_runtime_cost` refuses a model beyond the limits documented in
``docs/bnn-format.md``:

* memory: ``DEFAULT_MAX_MEMORY`` (48 MiB) plus twice the file's size, or
  ``$BNNLAB_MAX_RUNTIME_MEMORY`` bytes (suffixes K, M, G) plus twice the file's size;
* work: ``DEFAULT_MAX_WORK`` (2**30) operations per input, or ``$BNNLAB_MAX_RUNTIME_WORK``.

The figures are upper bounds of what the runtime allocates (a test runs random models
under an address-space limit set from them), not of what NumPy or Numba may keep cached.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

from .format import ACC_LIMIT, Block, ModelFile, ModelFileError, accumulator_bound

__all__ = ["DEFAULT_MAX_MEMORY", "DEFAULT_MAX_WORK", "RuntimeCost", "check_runtime_cost",
           "runtime_cost"]

DEFAULT_MAX_MEMORY = 48 << 20
DEFAULT_MAX_WORK = 1 << 30
MEMORY_ENV = "BNNLAB_MAX_RUNTIME_MEMORY"
WORK_ENV = "BNNLAB_MAX_RUNTIME_WORK"

# Weights unpacked at once while a block is prepared (runtime._GROUP_WEIGHTS), in bytes
# of the int8 signs and their unpacked bits.
_GROUP_BYTES = 2 << 22
# Bytes kept per byte of a binary block's packed weights beyond the weights themselves:
# their nibble panels (twice their size, see kernels.gemm_panels), and a stack's chain
# keeps a copy of both (runtime_chain.Chain).
_BITS_WEIGHT_COPIES = 5
# A stack's chain runs a group of images with scratch for each thread: at most this many
# bytes, or one image's when that is more (runtime_chain.SCRATCH_BYTES).
CHAIN_SCRATCH_BYTES = 2 << 20


@dataclass(frozen=True)
class RuntimeCost:
    memory: int  # bytes to prepare the model and run one input, beyond the decoded file
    work: int  # elementary operations of one inference
    block_memory: tuple[int, ...]
    block_work: tuple[int, ...]


def _words(bits: int) -> int:
    return -(-bits // 64)


def _block_cost(b: Block) -> tuple[int, int]:
    """(bytes, operations) of one block: its prepared arrays plus the buffers of one input."""
    h, w, c = b.in_shape
    f, k = b.out_channels, b.fan_in
    ho, wo, _ = b.conv_shape
    hp, wp, _ = b.out_shape
    ps = b.pool[0] or 1
    pos = ho * wo
    group = min(_GROUP_BYTES, 2 * f * k) + 8 * f  # unpacked signs of a group of filters
    out = 8 * hp * wp * _words(f) + 4 * hp * wp * f * 3  # bits out, or int32 + float32 logits
    epilogue = hp * wp * f * ps * ps
    if b.input == "bits" and b.kind == "conv2d":
        taps = k // c
        prepared = 8 * _words(k) * f * (1 + _BITS_WEIGHT_COPIES) + 8 * f * taps + group
        if b.pad_value == 0 and any(b.pads):
            # the padding table: a mask, its (ho, wo, taps) stack twice, the product
            prepared += 8 * (h + b.pads[0] + b.pads[1]) * (w + b.pads[2] + b.pads[3])
            prepared += 16 * pos * taps + 12 * pos * f
        run = 8 * h * w * _words(c) + 8 * pos * _words(k) + 4 * pos * f + 4 * f
        ops = pos * f * _words(k) + pos * _words(k) * 2 + pos * taps
        return prepared + run + out, ops + epilogue
    if b.input == "bits":  # dense on bits
        prepared = 8 * (h * w * _words(c)) * f * (2 + _BITS_WEIGHT_COPIES) + group
        return prepared + 4 * f + out, f * h * w * _words(c) + epilogue
    # raw input: a (K, F) weight table of 2 or 4 bytes, perhaps a float32 copy of it
    width = 2 if (b.acc == "int32" and 255 * k <= 0x7FFF) else 4
    copy = 4 if b.kind == "conv2d" else 0  # integer convolutions also keep float32 weights
    prepared = (width + copy) * k * f + (group if b.kernel == "bits" else 4 * k * f)
    hpad, wpad = h + b.pads[0] + b.pads[1] + 1, w + b.pads[2] + b.pads[3] + 3
    inputs = 8 * hpad * wpad * c  # the input, normalized and padded
    if b.kind == "conv2d":
        tables = 8 * pos + 8 * k  # pixel origins and tap offsets
        # one-channel rows: 8 signed sums per padded pixel, then per-filter planes
        rows = 16 * hpad * wpad + 2 * f * hpad * wpad // 16 + 6 * hpad * wpad
        run = inputs + tables + rows + 8 * pos * f + 8 * f + 8 * pos
    else:
        run = inputs + 8 * f
    return prepared + run + out, pos * f * k + epilogue


def chain_image_bytes(blocks) -> int:
    """Scratch bytes one image needs in a stack's chain (:class:`~.runtime_chain.Chain`):
    padded pixels (int16), the bits between blocks twice and the packed patches (uint64),
    the largest block's accumulators and the last block's pooled ones (int32)."""
    x16 = act = pbuf = zbuf = acc = 1
    for b in blocks:
        h, w, c = b.in_shape
        f, k = b.out_channels, b.fan_in
        ho, wo, _ = b.conv_shape
        hp, wp, _ = b.out_shape
        if b.input == "raw" and b.kind == "conv2d":
            x16 = max(x16, (h + b.pads[0] + b.pads[1] + 2) * (w + b.pads[2] + b.pads[3] + 2))
        act = max(act, h * w * _words(c), hp * wp * _words(f))
        if b.kind == "conv2d":
            pbuf = max(pbuf, ho * wo * _words(k))
            zbuf = max(zbuf, ho * wo * f)
        else:
            zbuf = max(zbuf, f)
        acc = max(acc, hp * wp * f)
    return 2 * x16 + 8 * (2 * act + pbuf) + 4 * (zbuf + acc)


def _chain_scratch(mf: ModelFile) -> int:
    return max(CHAIN_SCRATCH_BYTES, chain_image_bytes(mf.blocks)) + 4 * max(
        (b.out_channels for b in mf.blocks), default=1)


def _graph_cost(mf: ModelFile) -> tuple[int, int]:
    """(bytes, operations) a graph adds to its blocks: every tensor, kept as float32 (or
    packed bits), the signs a block packs from a float tensor, the float operations."""
    shapes: list = [None]
    mem = work = 0
    for node in mf.nodes:
        src = [shapes[s] for s in node.sources]
        if node.op == "block":
            b = mf.blocks[node.block]
            shape = b.out_shape
            if b.input == "signs":
                mem += 9 * math.prod(b.in_shape)  # the signs as bytes, bits and words
        elif node.op == "add":
            shape = src[0]
            work += math.prod(shape) * (len(src) - 1)
        elif node.op == "concatenate":
            shape = (*src[0][:2], sum(sh[2] for sh in src))
        else:
            size, stride = node.pool
            h, w, c = src[0]
            shape = ((h - size) // stride + 1, (w - size) // stride + 1, c)
            work += math.prod(shape) * size * size
            mem += 4 * math.prod(shape)  # the window being compared
        mem += 4 * math.prod(shape)
        shapes.append(shape)
    return mem, work


def runtime_cost(mf: ModelFile) -> RuntimeCost:
    """Memory and work of running ``mf`` on one input with :class:`~bnnlab.deploy.runtime.Runtime`."""
    # A block on the signs of a float tensor runs as a block on bits.
    per = [_block_cost(dataclasses.replace(b, input="bits") if b.input == "signs" else b)
           for b in mf.blocks]
    raw = 8 * math.prod(mf.input.shape)  # the raw input and its normalized copy
    extra_mem, extra_work = _graph_cost(mf) if mf.nodes else (_chain_scratch(mf), 0)
    mem = raw + sum(m for m, _ in per) + extra_mem
    return RuntimeCost(mem, sum(o for _, o in per) + extra_work, tuple(m for m, _ in per),
                       tuple(o for _, o in per))


def _env_size(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
    digits = text[:-1] if scale > 1 else text
    try:
        value = int(float(digits) * scale)
    except ValueError:
        raise ModelFileError(f"${name}={text!r} is not a size (e.g. 256M)") from None
    if value < 1:
        raise ModelFileError(f"${name}={text!r} must be positive")
    return value


def limits(file_bytes: int = 0, max_memory: int | None = None,
           max_work: int | None = None) -> tuple[int, int]:
    """(memory, work) limits for a model stored in ``file_bytes`` bytes."""
    mem = max_memory if max_memory is not None else _env_size(MEMORY_ENV, DEFAULT_MAX_MEMORY)
    work = max_work if max_work is not None else _env_size(WORK_ENV, DEFAULT_MAX_WORK)
    return mem + 2 * file_bytes, work


def check_runtime_cost(mf: ModelFile, file_bytes: int | None = None,
                       max_memory: int | None = None, max_work: int | None = None) -> RuntimeCost:
    """:func:`runtime_cost`, or :class:`ModelFileError` when it exceeds the limits."""
    if file_bytes is None:  # the arrays are nearly all of a file
        file_bytes = sum(b.kernel_data.nbytes + 8 * b.out_channels for b in mf.blocks)
    for i, b in enumerate(mf.blocks):  # the reader's rule, for records built in memory too
        bound = accumulator_bound(b)
        if bound is not None and bound > ACC_LIMIT:
            raise ModelFileError(f"block {i}: the int32 accumulator can reach {bound}, beyond "
                                 f"{ACC_LIMIT}")
    cost = runtime_cost(mf)
    mem_limit, work_limit = limits(file_bytes, max_memory, max_work)
    if cost.memory > mem_limit:
        i = max(range(len(mf.blocks)), key=lambda j: cost.block_memory[j])
        raise ModelFileError(
            f"running this model needs about {cost.memory / 2**20:,.0f} MiB (block {i}: "
            f"{cost.block_memory[i] / 2**20:,.0f} MiB), beyond the limit of "
            f"{mem_limit / 2**20:,.0f} MiB; set ${MEMORY_ENV} (e.g. 4G) to allow more")
    if cost.work > work_limit:
        i = max(range(len(mf.blocks)), key=lambda j: cost.block_work[j])
        raise ModelFileError(
            f"one inference of this model takes about {cost.work:.3g} operations (block {i}: "
            f"{cost.block_work[i]:.3g}), beyond the limit of {work_limit:.3g}; set "
            f"${WORK_ENV} to allow more")
    return cost
