"""Generate dependency-free C99 from a ``.bnn`` model, for microcontrollers.

The output is ``bnn_model.h`` / ``bnn_model.c`` (the network: const weight and threshold
tables, static activation buffers, no malloc, no libc beyond ``<stdint.h>``), a tiny
``main.c`` that classifies inputs read from a file, ``bnn_entry.c`` (a freestanding entry
point for the Cortex-M size builds) and a ``Makefile`` (see :mod:`bnnlab.deploy.cbuild`).

Activations are 32-bit words per pixel (channel c at bit c % 32 of word c / 32, bit 1 =
-1), since 32 bits is the natural word of a Cortex-M. Binary blocks use only integer
XOR, popcount, compare; a dense layer is a convolution whose kernel covers its whole
input (the kernels' C is in :mod:`bnnlab.deploy.ckernels`). Floats appear only where the
model has them: a first layer on float input, the scale/offset to logits and, in a
graph, the real-valued tensors between blocks, each computed in the same order as the
Python runtime so the two agree bit for bit.

A stack (version 1) runs its blocks through two ping-pong buffers. A graph (version 2)
keeps each tensor in one of two arenas for as long as a node reads it; the plan and the
C of add, concatenate, max pooling and sign packing are in :mod:`bnnlab.deploy.cgraph`.
Every name in the generated C is made here from numbers; text from the file (the model's
name, class names) enters only escaped, in a comment or a string literal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_folder
from .cbuild import BUILD_PRODUCTS, ENTRY_SOURCE, makefile
from .cgraph import GraphPlan, graph_code, plan_graph
from .ckernels import COMMON, block_call, block_kind, kernel_source
from .format import (ACC_LIMIT, MODE_GE, MODE_LE, MODE_PLUS, Block, ModelFile, ModelFileError,
                     accumulator_bound, validate)

__all__ = ["CExport", "MAX_C_RAM", "export_c", "generate_c"]

# The static activation arrays of a generated model stay below this many bytes, well inside
# what a static array of the host build (and a Cortex-M's address space) can hold.
MAX_C_RAM = 1 << 30

_MAIN = r"""/* Example: classify inputs stored back to back in a binary file (or stdin).
 *   ./bnn_demo images.bin      prints one class index per input
 * Each input is BNN_INPUT_SIZE values of bnn_input_t, in the model's (H, W, C) order. */
#include <stdio.h>
#include "bnn_model.h"

int main(int argc, char **argv)
{
    static bnn_input_t input[BNN_INPUT_SIZE];
    float logits[BNN_NUM_OUTPUTS];
    FILE *f = argc > 1 ? fopen(argv[1], "rb") : stdin;
    if (f == NULL) {
        fprintf(stderr, "cannot open %s\n", argv[1]);
        return 2;
    }
    while (fread(input, sizeof input[0], BNN_INPUT_SIZE, f) == BNN_INPUT_SIZE) {
        printf("%d\n", bnn_infer(input, logits));
    }
    if (f != stdin) {
        fclose(f);
    }
    return 0;
}
"""

@dataclass
class CExport:
    """What :func:`export_c` wrote and the memory it needs."""

    files: list[str]
    table_bytes: int  # const weights, thresholds and scales (flash)
    ram_bytes: int  # the static activation buffers (a graph's: the peak of its plan)
    tables: dict[str, int] = field(default_factory=dict)  # per array
    plan: GraphPlan | None = None  # a graph's tensors and where they live


def _c_array(ctype: str, name: str, values, per_line: int = 8, fmt=str) -> str:
    vals = [fmt(v) for v in values]
    lines = [", ".join(vals[i:i + per_line]) for i in range(0, len(vals), per_line)] or ["0"]
    body = ",\n    ".join(lines)
    return f"static const {ctype} {name}[{max(len(vals), 1)}] = {{\n    {body}\n}};\n"


def _hex32(v) -> str:
    return f"0x{int(v):08X}u"


def _float(v) -> str:
    v = float(np.float32(v))
    if v == 0.0:
        return "-0.0f" if np.signbit(v) else "0.0f"
    return f"{v!r}f" if "e" in repr(v) or "." in repr(v) else f"{v!r}.0f"


def _words32(bits: np.ndarray) -> np.ndarray:
    """Rows of 0/1 (R, n) -> (R, ceil(n/32)) uint32, bit i of a row at bit i % 32 of word i / 32."""
    r, n = bits.shape
    padded = np.zeros((r, -(-n // 32) * 32), np.uint8)
    padded[:, :n] = bits
    return np.packbits(padded, axis=1, bitorder="little").view("<u4").astype(np.uint32)


def _block_weights(b: Block) -> np.ndarray:
    """Binary kernels in the C layout: per filter, per tap, ceil(C/32) words."""
    neg = (b.signs() < 0).astype(np.uint8)
    if b.input == "raw":
        return _words32(neg)  # one bit stream per filter
    c = b.in_shape[2]
    taps = b.fan_in // c
    per_tap = neg.reshape(b.out_channels * taps, c)
    return _words32(per_tap).reshape(b.out_channels, -1)


def _thresholds(b: Block):
    m = b.modes
    t = b.thresholds
    sgn = np.select([m == MODE_GE, m == MODE_LE], [1, -1], 0).astype(np.int8)
    if b.acc == "int32":
        t64 = np.clip(t.astype(np.int64), -(2**31 - 1), 2**31 - 1)
        thr = np.select([m == MODE_GE, m == MODE_LE, m == MODE_PLUS], [t64, -t64, 0], 1)
        return sgn, thr.astype(np.int64)
    thr = np.select([m == MODE_GE, m == MODE_LE, m == MODE_PLUS],
                    [t.astype(np.float32), -t.astype(np.float32), np.float32(0)], np.float32(1))
    return sgn, thr.astype(np.float32)


def _int_type(values: np.ndarray) -> str:
    lo, hi = int(values.min(initial=0)), int(values.max(initial=0))
    return "int16_t" if -32768 <= lo and hi <= 32767 else "int32_t"


def _block_tables(i: int, b: Block, tables: dict[str, int], thr_types: dict) -> list:
    """The C declarations of block ``i``: geometry, weights, thresholds or scale and offset.

    An integer threshold array is a tuple ``(raw input?, name, values)`` to be rendered once
    the width of every threshold its kernel function reads is known (``thr_types``)."""
    p = f"b{i}"
    ho, wo, _ = b.conv_shape
    hp, wp, _ = b.out_shape
    if b.kind == "conv2d":
        kh, kw = b.kernel_size
        stride, pt, pl = b.stride, b.pads[0], b.pads[2]
        pool, pst = b.pool if b.pool[0] else (1, 1)
    else:
        kh, kw, stride, pt, pl, pool, pst = b.in_shape[0], b.in_shape[1], 1, 0, 0, 1, 1
    h, w, c = b.in_shape
    geo = (f"static const bnn_geometry {p}_geo = {{{h}, {w}, {c}, {b.out_channels}, {kh}, {kw}, "
           f"{stride}, {pt}, {pl}, {b.pad_value}, {ho}, {wo}, {pool}, {pst}, {hp}, {wp}}};\n")
    decls = [f"/* block {i}: {b.kind} {b.input} input -> {b.output}, "
             f"{b.in_shape} -> {b.out_shape} */\n" + geo]
    if b.kernel == "bits" and b.acc == "int32":
        wwords = _block_weights(b).reshape(-1)
        decls.append(_c_array("uint32_t", f"{p}_w", wwords, 6, _hex32))
        tables[f"{p}_w"] = 4 * wwords.size
    else:  # float accumulation multiplies by the weight, ±1 or not
        wf = b.weights().reshape(-1)
        decls.append(_c_array("float", f"{p}_w", wf, 6, _float))
        tables[f"{p}_w"] = 4 * wf.size
    if b.output == "bits":
        sgn, thr = _thresholds(b)
        decls.append(_c_array("int8_t", f"{p}_sgn", sgn, 16))
        tables[f"{p}_sgn"] = sgn.size
        if b.acc == "int32":
            thr_types[b.input == "raw"].append(_int_type(thr))
            decls.append((b.input == "raw", f"{p}_thr", thr))
        else:
            decls.append(_c_array("float", f"{p}_thr", thr, 6, _float))
            tables[f"{p}_thr"] = 4 * thr.size
    else:
        decls.append(_c_array("float", f"{p}_scale", b.scale, 6, _float))
        decls.append(_c_array("float", f"{p}_offset", b.offset, 6, _float))
        tables[f"{p}_scale"] = tables[f"{p}_offset"] = 4 * b.out_channels
    return decls


def _stack_code(mf: ModelFile) -> tuple[str, list[str], int]:
    """(the two ping-pong buffers, the statements of ``bnn_infer``, their bytes) of a stack:
    block i reads buffer (i - 1) % 2 (block 0 the input) and writes buffer i % 2."""
    buf_words = [0, 0]
    calls = []
    for i, b in enumerate(mf.blocks):
        src = "input" if i == 0 else f"bnn_buf{(i - 1) % 2}"
        if b.output == "bits":
            hp, wp, _ = b.out_shape
            buf_words[i % 2] = max(buf_words[i % 2], hp * wp * -(-b.out_channels // 32))
        calls.append(block_call(b, f"b{i}", src, f"bnn_buf{i % 2}" if b.output == "bits"
                                else "logits"))
    # A model with one or two blocks never touches one of the buffers; -Werror would object.
    unused = [f"    (void)bnn_buf{j};" for j in (0, 1) if not buf_words[j]]
    buffers = "".join(f"static uint32_t bnn_buf{j}[{max(buf_words[j], 1)}];\n" for j in (0, 1))
    return buffers, unused + calls, 4 * (buf_words[0] + buf_words[1])


def generate_c(mf: ModelFile) -> tuple[dict[str, str], CExport]:
    """The generated files' texts by name, and the export's memory figures."""
    _check_for_c(mf)
    spec = mf.input
    n_in = int(np.prod(spec.shape))
    in_type = "uint8_t" if spec.encoding == "uint8" else "float"
    decls, tables = [], {}
    thr_types: dict[bool, list[str]] = {True: [], False: []}
    for i, b in enumerate(mf.blocks):
        decls += _block_tables(i, b, tables, thr_types)
    # Threshold arrays take the widest type their kernel function needs.
    thr0_type = "int16_t" if thr_types[True] and "int32_t" not in thr_types[True] else "int32_t"
    thr_type = "int32_t" if "int32_t" in thr_types[False] else "int16_t"
    rendered = []
    for d in decls:
        if isinstance(d, tuple):
            raw, name, thr = d
            ctype = thr0_type if raw else thr_type
            rendered.append(_c_array(ctype, name, thr, 12))
            tables[name] = thr.size * (2 if ctype == "int16_t" else 4)
        else:
            rendered.append(d)
    if mf.nodes:
        plan = plan_graph(mf)
        if plan.ram_bytes > MAX_C_RAM:
            raise ModelFileError(f"the C would hold its activations in {plan.ram_bytes:,} bytes "
                                 f"of static arrays, beyond the {MAX_C_RAM:,} the export allows")
        helpers, buffers, calls, used, emit = graph_code(mf, plan)
        ram = plan.ram_bytes
    else:
        buffers, calls, ram = _stack_code(mf)
        helpers, emit, plan = "", False, None
        used = {(block_kind(b), b.output) for b in mf.blocks}
    names = list(mf.class_names)
    header = f"""/* Generated by bnnlab from a .bnn model ({_c_comment(mf.metadata.get('name', 'model'))}).
 * Input: {tuple(spec.shape)} {in_type}, model input = raw * {spec.scale!r} + {spec.offset!r}.
 * Flash tables: {sum(tables.values())} bytes; static RAM: {ram} bytes. */
#ifndef BNN_MODEL_H
#define BNN_MODEL_H

#include <stdint.h>

#define BNN_INPUT_SIZE {n_in}
#define BNN_NUM_OUTPUTS {mf.n_outputs}

typedef {in_type} bnn_input_t;

/* Logits of one input (in the model's H, W, C order); returns the index of the largest. */
int bnn_infer(const bnn_input_t *input, float logits[BNN_NUM_OUTPUTS]);

/* Class names, or NULL when the model file has none. */
extern const char *const *const bnn_class_names;

#endif
"""
    thr_defs = f"#define BNN_THR_T {thr_type}\n#define BNN_THR0_T {thr0_type}\n"
    kernels = COMMON + kernel_source(used, emit) + helpers
    name_table = (_c_array("char *", "bnn_names", [f'"{_c_string(s)}"' for s in names], 5)
                  .replace("static const char *", "static const char *const") if names else "")
    body = f"""/* Generated by bnnlab. C99, no dynamic memory, no libc. */
#include <stdint.h>
#include "bnn_model.h"

#define BNN_INPUT_SCALE {_float(spec.scale)}
#define BNN_INPUT_OFFSET {_float(spec.offset)}
{thr_defs}{kernels}
{"".join(rendered)}
{buffers}{name_table}
const char *const *const bnn_class_names = {"bnn_names" if names else "0"};

int bnn_infer(const bnn_input_t *input, float logits[BNN_NUM_OUTPUTS])
{{
    int i, best = 0;
{chr(10).join(calls)}
    for (i = 1; i < BNN_NUM_OUTPUTS; i++) {{
        if (logits[i] > logits[best]) {{
            best = i;
        }}
    }}
    return best;
}}
"""
    files = {"bnn_model.h": header, "bnn_model.c": body, "main.c": _MAIN, "Makefile": makefile(),
             "bnn_entry.c": ENTRY_SOURCE}
    return files, CExport(sorted(files), sum(tables.values()), ram, tables, plan)


# Characters copied into generated C as they are; everything else is escaped. Neither
# "*" nor "/" (comment delimiters), "\\" (escapes, line splices), "?" (trigraphs such as
# "??/"), quotes, nor any control or non-ASCII character is in the set.
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 _-.,:;+=()[]#@%&!~^<>{}|$'`")


def _c_comment(text: str, limit: int = 80) -> str:
    """``text`` for a ``/* ... */`` comment: safe characters as they are, others as ``\\uXXXX``."""
    out = "".join(ch if ch in _SAFE else f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}"
                  for ch in str(text)[:limit])
    return out + ("..." if len(text) > limit else "")


def _c_string(s: str) -> str:
    """The body of a C string literal holding the UTF-8 bytes of ``s`` (which has no NUL)."""
    # Octal escapes take at most three digits, so one never swallows the next character.
    return "".join(chr(byte) if chr(byte) in _SAFE else f"\\{byte:03o}" for byte in s.encode())


def _check_for_c(mf: ModelFile) -> None:
    """Refuse what C cannot hold: the record must be valid, class names free of NUL bytes."""
    validate(mf)
    for i, name in enumerate(mf.class_names):
        if "\0" in name:
            raise ModelFileError(f"class name {i} holds a NUL byte, which a C string cannot hold")
    for i, b in enumerate(mf.blocks):
        if b.acc == "int32" and accumulator_bound(b) > ACC_LIMIT:  # validate() refuses it too
            raise ModelFileError(f"block {i}: the accumulator can reach {accumulator_bound(b)}, "
                                 "beyond int32")


def export_c(mf: ModelFile, outdir: str | os.PathLike) -> CExport:
    """Write the C files into ``outdir`` in one step: into a temporary folder, swapped in.

    Other files already in ``outdir`` are kept; stale build products (``bnn_demo``, the
    Cortex-M images) are removed.
    """
    files, info = generate_c(mf)
    out = Path(outdir)
    with atomic_folder(out, replaces=(*files, *BUILD_PRODUCTS)) as tmp:
        for name, text in files.items():
            with open(tmp / name, "w", encoding="ascii", newline="\n") as f:
                f.write(text)
    info.files = [str(out / n) for n in sorted(files)]
    return info
