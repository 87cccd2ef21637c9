"""The C source of the kernels the generated model calls, and the call of one block.

Activations are 32-bit words per pixel (channel c at bit c % 32 of word c / 32, bit 1 =
-1). One accumulator function per kind of block (binary input, raw integer pixels, raw
float values), a max over the pool window, and loops over the output: thresholds to bits,
float values (``float(m) * scale + offset``, the logits or, in a graph, a real-valued
tensor), or those values plus another tensor (a graph's residual sum). :func:`kernel_source` emits only the functions a model calls:
``-Wall -Werror`` rejects unused static functions.
"""

from __future__ import annotations

from .format import Block

__all__ = ["COMMON", "block_call", "block_kind", "kernel_source"]

COMMON = r"""
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

# Float values out: the logits, or (a graph's residual sum, done as the block writes) those
# values plus another tensor; the two differ only in these pieces.
_TO_VALUES = r"""
/* {what} */
static void bnn_block_{{kind}}_{out}(const bnn_geometry *g, const {{inp}} *x, const {{w}} *w,
{pad}const float *scale, const float *offset, {extra}float *out)
{{{{
    int filter = {{words}};
    int py, px, f;
    for (py = 0; py < g->hp; py++) {{{{
        for (px = 0; px < g->wp; px++) {{{{
            for (f = 0; f < g->f; f++) {{{{
                {{acc}} m = bnn_pool_{{kind}}(g, x, &w[f * filter], py, px);
{store}
            }}}}
        }}}}
    }}}}
}}}}
"""
_TO_LOGITS = _TO_VALUES.format(
    what="Logits out: float(m) * scale + offset, multiply then add.", out="logits",
    pad=" " * 36, extra="",
    store="                out[(py * g->wp + px) * g->f + f] = (float)m * scale[f] + offset[f];")
_TO_SUM = _TO_VALUES.format(
    what="Float values plus a tensor out: (float(m) * scale + offset) + add, as an add node\n"
         " * sums them. out may be add: each element is read, then written.", out="sum",
    pad=" " * 33, extra="const float *add,\n" + " " * 33,
    store="                int q = (py * g->wp + px) * g->f + f;\n"
          "                float v = (float)m * scale[f] + offset[f];\n"
          "                out[q] = v + add[q];")
_OUTPUTS = {"bits": _TO_BITS, "logits": _TO_LOGITS, "sum": _TO_SUM}


def kernel_source(used: set[tuple[str, str]], emit: bool = False) -> str:
    """The C functions for the (kind, output) pairs a model uses (output "bits", "logits"
    or "sum"); ``emit`` adds ``bnn_emit_bit`` even when no block outputs bits."""
    parts = [_EMIT] if emit or any(out == "bits" for _, out in used) else []
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
            parts.append(_OUTPUTS[out].format(**fmt))
    return "".join(parts)


def block_kind(b: Block) -> str:
    """Which accumulator function block ``b`` calls: "bits", "raw_int" or "raw_float"."""
    if b.input != "raw":  # bits, or the signs of a float tensor packed into bits
        return "bits"
    return "raw_int" if b.acc == "int32" else "raw_float"


def block_call(b: Block, p: str, src: str, dst: str, add: str | None = None) -> str:
    """The C statement running block ``b`` (tables named ``p``_*) from ``src`` into ``dst``;
    with ``add``, a block with float output writes its values plus that tensor."""
    tables = f"{p}_sgn, {p}_thr" if b.output == "bits" else f"{p}_scale, {p}_offset"
    out = b.output
    if add is not None:
        out, tables = "sum", f"{tables}, {add}"
    return f"    bnn_block_{block_kind(b)}_{out}(&{p}_geo, {src}, {p}_w, {tables}, {dst});"

