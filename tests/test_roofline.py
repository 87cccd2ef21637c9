"""The register-only probes of ``bnnlab bench``: their results against NumPy twins, and
their compiled loops, which must keep all the work in registers and not fold it away."""

import re

import numba as nb
import numpy as np
import pytest

from bnnlab.core.kernels import roofline
from bnnlab.core.kernels.jit import JIT, JIT_FLOAT
from bnnlab.core.kernels.simd import POPCOUNT_MODE


@pytest.mark.parametrize("iters", [0, 1, 3])
def test_binary_probe_counts_what_its_twin_counts(iters):
    words = [np.uint64(v) for v in (0x0123456789ABCDEF, 0xFFFFFFFFFFFFFFFF, 0, 0x8000000000000001)]
    assert int(roofline.binary_probe(iters, *words)) == roofline.binary_probe_ref(iters, *words)


@pytest.mark.parametrize("iters", [0, 1, 50])
def test_float_probe_matches_its_twin(iters):
    got = roofline.float_probe(iters, np.float32(1.0), np.float32(0.999), np.float32(0.001))
    want = roofline.float_probe_ref(iters, 1.0, np.float32(0.999), np.float32(0.001))
    assert got == pytest.approx(want, rel=1e-5)


def _fresh_asm(fn, options, args):
    # A new dispatcher without the on-disk cache: cached code cannot be inspected.
    d = nb.njit(**dict(options, cache=False))(fn.py_func)
    d(*args)
    return d.inspect_asm(d.signatures[0])


def _loops(asm):
    """Bodies of the loops in an x86 listing: label ... backward jump to that label."""
    lines = asm.splitlines()
    where = {}
    out = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\.LBB\w+):", line)
        if m:
            where[m.group(1)] = i
        m = re.match(r"^\s+j\w+\s+(\.LBB\w+)\s*$", line)
        if m and m.group(1) in where:
            out.append(lines[where[m.group(1)]:i + 1])
    return out


def _innermost(asm, marker):
    loops = [b for b in _loops(asm) if any(marker in line for line in b)]
    assert loops, f"no loop with {marker}"
    return min(loops, key=len)


def _memory_operands(body):
    return [line for line in body if "(%" in line and not line.strip().startswith("#")]


def test_binary_probe_loop_stays_in_registers():
    words = [np.uint64(v) for v in (1, 2, 3, 4)]
    asm = _fresh_asm(roofline.binary_probe, JIT, (2, *words))
    marker = "vpopcntq" if POPCOUNT_MODE == "lanes" else "vpshufb"
    body = _innermost(asm, marker)
    count = sum(marker in line for line in body)
    # Six accumulators per word step, once (or unrolled a whole number of times).
    per_step = 6 if POPCOUNT_MODE == "lanes" else 12
    assert count >= per_step and count % per_step == 0, body
    assert sum(line.strip().startswith("vpxor") for line in body) >= count // (per_step // 6)
    assert _memory_operands(body) == [], body


def test_float_probe_loop_stays_in_registers():
    asm = _fresh_asm(roofline.float_probe, JIT_FLOAT,
                     (3, np.float32(1), np.float32(0.5), np.float32(0.1)))
    body = _innermost(asm, "vfmadd")
    count = sum("vfmadd" in line for line in body)
    assert count >= 12 and count % 12 == 0, body
    assert _memory_operands(body) == [], body


def test_measure_roofline_reports_both_peaks_per_thread_count():
    r = roofline.measure_roofline((1, 2), seconds=0.0)
    assert set(r) >= {"binary_tops_per_thread", "float32_gflops_per_thread", "method", "isa",
                      "by_threads"}
    assert set(r["by_threads"]) == {"1", "2"}
    for by in r["by_threads"].values():
        assert by["binary_tops"] > 0 and by["float32_gflops"] > 0
    assert r["method"] and r["isa"]


@pytest.mark.parametrize("iters", [0, 1, 3])
def test_nibble_probe_counts_what_its_twin_counts(iters):
    words = [np.uint64(v) for v in (0x0123456789ABCDEF, 0xFFFFFFFFFFFFFFFF, 0, 0x8000000000000001)]
    got = roofline.binary_probe_nibbles(iters, *words)
    assert int(got) == roofline.binary_probe_nibbles_ref(iters, *words)


def test_nibble_probe_loop_stays_in_registers():
    words = [np.uint64(v) for v in (1, 2, 3, 4)]
    asm = _fresh_asm(roofline.binary_probe_nibbles, JIT, (2, *words))
    body = _innermost(asm, "vpshufb")
    count = sum("vpshufb" in line for line in body)
    # Two lookups for each of four accumulators per word, once or unrolled.
    assert count >= 8 and count % 8 == 0, body
    assert sum(line.strip().startswith("vpxor") for line in body) >= count, body
    assert _memory_operands(body) == [], body


def test_every_count_the_gemm_may_use_has_a_peak():
    peaks = roofline.method_peaks(rounds=1)
    assert list(peaks) == list(roofline.METHOD_PROBES) and all(v > 0 for v in peaks.values())
