"""Generate dependency-free C99 from a ``.bnn`` model, for microcontrollers.

The output is ``bnn_model.h`` / ``bnn_model.c`` (the network: const weight and threshold
tables, two static activation buffers, no malloc, no libc beyond ``<stdint.h>``), a tiny
``main.c`` that classifies inputs read from a file, ``bnn_entry.c`` (a freestanding entry
point for the Cortex-M size builds) and a ``Makefile`` (see :mod:`bnnlab.deploy.cbuild`).

Activations are 32-bit words per pixel (channel c at bit c % 32 of word c / 32, bit 1 =
-1), since 32 bits is the natural word of a Cortex-M. Binary blocks use only integer
XOR, popcount, compare; a dense layer is a convolution whose kernel covers its whole
input. Floats appear only where the model has them: a first layer on float input and the
final scale/offset to logits, each computed in the same order as the Python runtime so
the two agree bit for bit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_folder
from .cbuild import BUILD_PRODUCTS, ENTRY_SOURCE, makefile
from .format import (ACC_LIMIT, MODE_GE, MODE_LE, MODE_PLUS, Block, ModelFile, ModelFileError,
                     accumulator_bound, validate)

__all__ = ["CExport", "export_c", "generate_c"]

_COMMON = r"""
#if defined(__GNUC__) || defined(__clang__)
#define BNN_POPCOUNT(x) __builtin_popcount(x)
#else
static int bnn_popcount(uint32_t x)
{
    x = x - ((x >> 1) & 0x55555555u);
    x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
    x = (x + (x >> 4)) & 0x0F0F0F0Fu;
    return (int)((x * 0x01010101u) >> 24);
}
#define BNN_POPCOUNT(x) bnn_popcount(x)
#endif

/* Geometry of one block: a convolution (a dense layer is one whose kernel covers its
 * whole input), then a max pool over the accumulators. */
typedef struct {
    int h, w, c;          /* input */
    int f;                /* output channels */
    int kh, kw, stride;
    int pad_top, pad_left;
    int pad;              /* value of a tap outside the input: 0 (skipped), 1 or -1 */
    int ho, wo;           /* convolution output */
    int pool, pool_stride;
    int hp, wp;           /* pooled output */
} bnn_geometry;

"""

_EMIT = r"""
/* Set output channel f of pixel q to +1 (bit 0) or -1 (bit 1). */
static void bnn_emit_bit(uint32_t *out, int q, int cw, int f, int plus)
{
    uint32_t *word = &out[q * cw + f / 32];
    if (f % 32 == 0) {
        *word = 0u;
    }
    if (!plus) {
        *word |= (uint32_t)1u << (f % 32);
    }
}

"""

# One accumulator per kind of block. Each has a dot product over a filter's taps, a max
# over the pool window, and two loops over the output: thresholds to bits, or logits.
# Only the functions a model calls are emitted: -Wall -Werror rejects unused statics.
_DOT = {
    "bits": r"""
/* Binary convolution on packed pixels: dot = taps - 2 popcount(x ^ w). */
static int32_t bnn_dot_bits(const bnn_geometry *g, const uint32_t *x, const uint32_t *wf,
                            int oy, int ox)
{
    int cw = (g->c + 31) / 32;
    int32_t pop = 0, k = 0;
    int dy, dx, j;
    for (dy = 0; dy < g->kh; dy++) {
        int iy = oy * g->stride + dy - g->pad_top;
        for (dx = 0; dx < g->kw; dx++) {
            int ix = ox * g->stride + dx - g->pad_left;
            const uint32_t *wt = &wf[(dy * g->kw + dx) * cw];
            if (iy >= 0 && iy < g->h && ix >= 0 && ix < g->w) {
                const uint32_t *px = &x[(iy * g->w + ix) * cw];
                for (j = 0; j < cw; j++) {
                    pop += BNN_POPCOUNT(px[j] ^ wt[j]);
                }
            } else if (g->pad != 0) {
                for (j = 0; j < cw; j++) {
                    int bits = g->c - 32 * j < 32 ? g->c - 32 * j : 32;
                    uint32_t all = bits == 32 ? 0xFFFFFFFFu : (((uint32_t)1u << bits) - 1u);
                    pop += BNN_POPCOUNT((g->pad < 0 ? all : 0u) ^ wt[j]);
                }
            } else {
                continue;
            }
            k += g->c;
        }
    }
    return k - 2 * pop;
}
""",
    "raw_int": r"""
/* First layer, integer: raw uint8 input, binary kernel, sum of +-pixel over the taps
 * inside the image (a raw zero outside). The file format bounds 255 * taps below 2^31. */
static int32_t bnn_dot_raw_int(const bnn_geometry *g, const bnn_input_t *x, const uint32_t *wf,
                               int oy, int ox)
{
    int32_t acc = 0;
    int dy, dx, cc;
    for (dy = 0; dy < g->kh; dy++) {
        int iy = oy * g->stride + dy - g->pad_top;
        for (dx = 0; dx < g->kw; dx++) {
            int ix = ox * g->stride + dx - g->pad_left;
            if (iy < 0 || iy >= g->h || ix < 0 || ix >= g->w) {
                continue;
            }
            for (cc = 0; cc < g->c; cc++) {
                int t = (dy * g->kw + dx) * g->c + cc;
                int32_t v = (int32_t)x[(iy * g->w + ix) * g->c + cc];
                acc += ((wf[t / 32] >> (t % 32)) & 1u) ? -v : v;
            }
        }
    }
    return acc;
}
""",
    "raw_float": r"""
/* First layer, float: x = raw * scale + offset, summed tap by tap in (dy, dx, c) order. */
static float bnn_dot_raw_float(const bnn_geometry *g, const bnn_input_t *x, const float *wf,
                               int oy, int ox)
{
    float acc = 0.0f;
    int dy, dx, cc;
    for (dy = 0; dy < g->kh; dy++) {
        int iy = oy * g->stride + dy - g->pad_top;
        for (dx = 0; dx < g->kw; dx++) {
            int ix = ox * g->stride + dx - g->pad_left;
            int inside = iy >= 0 && iy < g->h && ix >= 0 && ix < g->w;
            if (!inside && g->pad == 0) {
                continue;
            }
            for (cc = 0; cc < g->c; cc++) {
                int t = (dy * g->kw + dx) * g->c + cc;
                float v = inside ? (float)x[(iy * g->w + ix) * g->c + cc] * BNN_INPUT_SCALE
                                       + BNN_INPUT_OFFSET
                                 : (float)g->pad;
                acc += wf[t] * v;
            }
        }
    }
    return acc;
}
""",
}

# kind: (input type, weight type, accumulator type, threshold type, words per filter)
_KIND_TYPES = {
    "bits": ("uint32_t", "uint32_t", "int32_t", "BNN_THR_T", "g->kh * g->kw * ((g->c + 31) / 32)"),
    "raw_int": ("bnn_input_t", "uint32_t", "int32_t", "BNN_THR0_T", "(g->kh * g->kw * g->c + 31) / 32"),
    "raw_float": ("bnn_input_t", "float", "float", "float", "g->kh * g->kw * g->c"),
}

_POOL = r"""
/* The largest accumulator of filter wf over pool window (py, px). */
static {acc} bnn_pool_{kind}(const bnn_geometry *g, const {inp} *x, const {w} *wf, int py, int px)
{{
    {acc} m = 0;
    int wy, wx, first = 1;
    for (wy = 0; wy < g->pool; wy++) {{
        for (wx = 0; wx < g->pool; wx++) {{
            {acc} d = bnn_dot_{kind}(g, x, wf, py * g->pool_stride + wy, px * g->pool_stride + wx);
            if (first || d > m{nan}) {{
                m = d;
            }}
            first = 0;
        }}
    }}
    return m;
}}
"""

_TO_BITS = r"""
/* Bits out: +1 when sgn * m >= thr; sgn = 1 for "m >= t", -1 for "m <= t" (thr = -t),
 * 0 for a constant channel (thr = 0 gives +1, thr = 1 gives -1). */
static void bnn_block_{kind}_bits(const bnn_geometry *g, const {inp} *x, const {w} *w,
                                  const int8_t *sgn, const {thr} *thr, uint32_t *out)
{{
    int filter = {words};
    int cw_out = (g->f + 31) / 32;
    int py, px, f;
    for (py = 0; py < g->hp; py++) {{
        for (px = 0; px < g->wp; px++) {{
            for (f = 0; f < g->f; f++) {{
                {acc} m = bnn_pool_{kind}(g, x, &w[f * filter], py, px);
                bnn_emit_bit(out, py * g->wp + px, cw_out, f, {compare});
            }}
        }}
    }}
}}
"""

_TO_LOGITS = r"""
/* Logits out: float(m) * scale + offset, multiply then add. */
static void bnn_block_{kind}_logits(const bnn_geometry *g, const {inp} *x, const {w} *w,
                                    const float *scale, const float *offset, float *out)
{{
    int filter = {words};
    int py, px, f;
    for (py = 0; py < g->hp; py++) {{
        for (px = 0; px < g->wp; px++) {{
            for (f = 0; f < g->f; f++) {{
                {acc} m = bnn_pool_{kind}(g, x, &w[f * filter], py, px);
                out[(py * g->wp + px) * g->f + f] = (float)m * scale[f] + offset[f];
            }}
        }}
    }}
}}
"""


def _kernel_source(used: set[tuple[str, str]]) -> str:
    """The C functions for the (kind, output) pairs a model uses."""
    parts = [_EMIT] if any(out == "bits" for _, out in used) else []
    for kind in ("raw_int", "raw_float", "bits"):
        outs = [out for k, out in sorted(used) if k == kind]
        if not outs:
            continue
        inp, w, acc, thr, words = _KIND_TYPES[kind]
        compare = ("(int32_t)sgn[f] * m >= (int32_t)thr[f]" if acc == "int32_t"
                   else "(sgn[f] != 0 ? (float)sgn[f] * m : 0.0f) >= thr[f]")
        # A float NaN anywhere in the window makes the maximum NaN (as numpy.maximum does).
        nan = " || d != d" if acc == "float" else ""
        fmt = dict(kind=kind, inp=inp, w=w, acc=acc, thr=thr, words=words, compare=compare,
                   nan=nan)
        parts.append(_DOT[kind] + _POOL.format(**fmt))
        for out in outs:
            parts.append((_TO_BITS if out == "bits" else _TO_LOGITS).format(**fmt))
    return "".join(parts)


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
    ram_bytes: int  # the two static activation buffers
    tables: dict[str, int] = field(default_factory=dict)  # per array


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


def generate_c(mf: ModelFile) -> tuple[dict[str, str], CExport]:
    """The generated files' texts by name, and the export's memory figures."""
    _check_for_c(mf)
    spec = mf.input
    n_in = int(np.prod(spec.shape))
    in_type = "uint8_t" if spec.encoding == "uint8" else "float"
    decls, calls, tables = [], [], {}
    used: set[tuple[str, str]] = set()
    buf_words = [0, 0]
    thr_type = "int16_t"
    thr0_type = "int32_t"
    for i, b in enumerate(mf.blocks):
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
        decls.append(f"/* block {i}: {b.kind} {b.input} input -> {b.output}, "
                     f"{b.in_shape} -> {b.out_shape} */\n" + geo)
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
                ctype = _int_type(thr)
                if i == 0:
                    thr0_type = ctype
                elif ctype == "int32_t":
                    thr_type = "int32_t"
                decls.append(("{T}", f"{p}_thr", thr, i))
                tables[f"{p}_thr"] = thr.size * (2 if ctype == "int16_t" else 4)
            else:
                decls.append(_c_array("float", f"{p}_thr", thr, 6, _float))
                tables[f"{p}_thr"] = 4 * thr.size
        else:
            decls.append(_c_array("float", f"{p}_scale", b.scale, 6, _float))
            decls.append(_c_array("float", f"{p}_offset", b.offset, 6, _float))
            tables[f"{p}_scale"] = tables[f"{p}_offset"] = 4 * b.out_channels
            scale, offset = f"{p}_scale", f"{p}_offset"
        src = "input" if i == 0 else f"bnn_buf{(i - 1) % 2}"
        kind = "bits" if b.input == "bits" else ("raw_int" if b.acc == "int32" else "raw_float")
        used.add((kind, b.output))
        if b.output == "bits":
            buf_words[i % 2] = max(buf_words[i % 2], hp * wp * -(-b.out_channels // 32))
            calls.append(f"    bnn_block_{kind}_bits(&{p}_geo, {src}, {p}_w, {p}_sgn, {p}_thr, "
                         f"bnn_buf{i % 2});")
        else:
            calls.append(f"    bnn_block_{kind}_logits(&{p}_geo, {src}, {p}_w, {scale}, {offset}, "
                         "logits);")
    # Threshold arrays take the widest type their kernel function needs.
    rendered = []
    for d in decls:
        if isinstance(d, tuple):
            _, name, thr, i = d
            rendered.append(_c_array(thr0_type if i == 0 else thr_type, name, thr, 12))
            tables[name] = thr.size * (2 if (thr0_type if i == 0 else thr_type) == "int16_t" else 4)
        else:
            rendered.append(d)
    ram = 4 * (buf_words[0] + buf_words[1])
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
    kernels = _COMMON + _kernel_source(used)
    name_table = (_c_array("char *", "bnn_names", [f'"{_c_string(s)}"' for s in names], 5)
                  .replace("static const char *", "static const char *const") if names else "")
    body = f"""/* Generated by bnnlab. C99, no dynamic memory, no libc. */
#include <stdint.h>
#include "bnn_model.h"

#define BNN_INPUT_SCALE {_float(spec.scale)}
#define BNN_INPUT_OFFSET {_float(spec.offset)}
{thr_defs}{kernels}
{"".join(rendered)}
static uint32_t bnn_buf0[{max(buf_words[0], 1)}];
static uint32_t bnn_buf1[{max(buf_words[1], 1)}];
{name_table}
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
    # A model with one or two blocks never touches one of the buffers; -Werror would object.
    unused = [f"    (void)bnn_buf{j};" for j in (0, 1) if not buf_words[j]]
    body = body.replace("    int i, best = 0;\n", "    int i, best = 0;\n" + "".join(u + "\n" for u in unused))
    files = {"bnn_model.h": header, "bnn_model.c": body, "main.c": _MAIN, "Makefile": makefile(),
             "bnn_entry.c": ENTRY_SOURCE}
    return files, CExport(sorted(files), sum(tables.values()), ram, tables)


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
    if mf.nodes:
        raise ModelFileError("the C export holds stacks of blocks (version 1 files); this is a "
                             "graph (version 2), which runs with bnnlab run")
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
