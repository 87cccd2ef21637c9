"""The split-nibble count of the binary GEMM against its twins.

``nib`` is the fewest rows of A a call needs for the nibble count; 1 forces it on every
call with at least one 16-column panel, 0 turns it off. The shapes cover one word, K
not a multiple of 64, 31 words (the most the byte counters hold in one block of K),
32 and 63 words (two and three blocks of K, the later ones subtracted), one row, one to
fifteen columns past the last panel, an odd number of panels (a 16-column tile after
the 32-column ones), and more rows than one block of split rows.
The other popcount modes, and CPUs without AVX2, run in fresh processes below.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bnnlab.core import kernels as K
from bnnlab.core.kernels import packing, xnor

SHAPES = [(1, 1, 16), (3, 1, 1), (1, 576, 64), (7, 65, 17), (2, 64 * 31, 48), (5, 64 * 31 + 1, 32),
          (40, 64 * 9, 80), (33, 200, 15), (4, 64 * 5 - 3, 112), (3, 64 * 63 - 7, 47),
          (2, 64 * 64, 16), (600, 64 * 31, 49), (200, 64 * 9, 64)]


def _operands(m, k, n):
    rng = np.random.default_rng(m * 7919 + k * 31 + n)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    abits = packing.pack_rows_ref(a)
    bbits = packing.pack_rows_ref(b.T)
    return abits, bbits, xnor.xnor_gemm_ref(abits, bbits, k)


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("dtype", [np.int32, np.float32])
def test_nibble_gemm_equals_twin(m, k, n, dtype):
    # 600 rows of 31 words against 49 columns: more than one block of rows in L2.
    assert 600 * 31 * 16 > xnor.NIB_ROWS_L2_BYTES and 31 * 48 * 16 > xnor.NIB_L1_BYTES // 2
    abits, bbits, want = _operands(m, k, n)
    bt = np.ascontiguousarray(bbits.T)
    for nib in (1, 2):
        out = np.full((m, n), 7, dtype)
        xnor.xnor_gemm_serial(abits, bt, np.int64(k), out, np.int64(xnor.CSA_MIN_WORDS),
                              np.int64(nib))
        np.testing.assert_array_equal(out, want)
        out = np.full((m, n), 7, dtype)
        xnor.xnor_gemm_parallel(abits, bt, np.int64(k), out, np.int64(3),
                                np.int64(xnor.CSA_MIN_WORDS), np.int64(nib))
        np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_gemm_with_panels_made_beforehand_equals_twin(m, k, n):
    # The runtime's GEMM: panels made once per model, then calls of any row count; an
    # empty bp takes the count of this process's popcount mode for short calls.
    abits, bbits, want = _operands(m, k, n)
    bt = np.ascontiguousarray(bbits.T)
    made = K.gemm_panels(bt)
    if K.POPCOUNT_MODE == "csa" and n >= 16:
        np.testing.assert_array_equal(made, xnor.nibble_panels_ref(bt, n // 16 * 16))
    else:
        assert made.size == 0
    if made.size:
        assert made.ctypes.data % 64 == 0  # each 32-byte load within one cache line
    for bp in (xnor.nibble_panels(bt, n // 16 * 16), made, np.zeros(0, np.uint64)):
        out = np.full((m, n), 7, np.int32)
        K.xnor_gemm_prepared(abits, bt, bp, np.int64(k), out)
        np.testing.assert_array_equal(out, want)
        # Rows split over threads, and the public wrapper's either way.
        out = np.full((m, n), 7, np.float32)
        K.xnor_gemm_prepared_parallel(abits, bt, bp, np.int64(k), out, np.int64(3))
        np.testing.assert_array_equal(out, want)
        for parallel in (False, True):
            np.testing.assert_array_equal(
                K.xnor_gemm(abits, bt, k, parallel=parallel, threads=2, panels=bp), want)


def test_aligned_words_start_on_a_cache_line():
    assert K.aligned_words(0).shape == (0,)
    for n in (1, 7, 8, 1000):
        for _ in range(5):
            w = K.aligned_words(n)
            assert w.shape == (n,) and w.dtype == np.uint64 and not w.any()
            assert w.ctypes.data % 64 == 0 and w.flags.c_contiguous


@pytest.mark.parametrize("nibbles", [True, False])
def test_public_gemm_takes_either_count_for_short_rows(nibbles):
    abits, bbits, want = _operands(xnor.NIB_MIN_ROWS + 1, 64 * 9 + 5, 48)
    got = K.xnor_gemm(abits, np.ascontiguousarray(bbits.T), 64 * 9 + 5, nibbles=nibbles)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kw,n", [(1, 16), (9, 64), (3, 48), (31, 32)])
def test_nibble_panels_equal_twin(kw, n):
    rng = np.random.default_rng(kw * n)
    bt = rng.integers(0, 2**64 - 1, (kw, n + 5), dtype=np.uint64, endpoint=True)
    np.testing.assert_array_equal(xnor.nibble_panels(bt, n), xnor.nibble_panels_ref(bt, n))


NO_AVX2 = textwrap.dedent("""
    import json
    import numpy as np
    from bnnlab.core.kernels import simd
    simd._HOST_AVX2 = False  # before anything is compiled: the generic LLVM code
    from bnnlab.core.kernels import packing, xnor
    bad = []
    for m, k, n in [(1, 1, 16), (7, 65, 17), (40, 576, 48), (3, 1984, 32), (2, 4100, 16)]:
        rng = np.random.default_rng(m + k + n)
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        abits = packing.pack_rows_ref(a)
        bt = np.ascontiguousarray(packing.pack_rows_ref(b.T).T)
        for nib in (0, 1):
            out = np.full((m, n), 7, np.int32)
            xnor.xnor_gemm_serial(abits, bt, np.int64(k), out, np.int64(32), np.int64(nib))
            if not np.array_equal(out, xnor.binary_dot_ref(a, b)):
                bad.append([m, k, n, nib])
        out = np.full((m, n), 7, np.int32)
        xnor.xnor_gemm_prepared(abits, bt, xnor.nibble_panels(bt, n // 16 * 16), np.int64(k), out)
        if not np.array_equal(out, xnor.binary_dot_ref(a, b)):
            bad.append([m, k, n, "prepared"])
    print(json.dumps({"bad": bad}))
""")


@pytest.mark.slow
def test_nibble_count_without_avx2_instructions(tmp_path):
    """Without AVX2 the table lookup and the byte sums are LLVM's generic vector code."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    proc = subprocess.run([sys.executable, "-c", NO_AVX2], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"bad": []}


def test_cache_sizes_come_from_sysfs_or_defaults(tmp_path):
    from bnnlab.core.kernels import caches

    for name, level, kind, size in [("index0", 1, "Data", "48K"), ("index1", 1, "Instruction", "32K"),
                                    ("index2", 2, "Unified", "2048K"), ("index3", 3, "Unified", "bad")]:
        d = tmp_path / name
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    assert caches.data_cache_bytes(1, str(tmp_path)) == 48 << 10
    assert caches.data_cache_bytes(2, str(tmp_path)) == 2 << 20
    assert caches.data_cache_bytes(3, str(tmp_path)) == 1 << 20  # unreadable, no L3 default
    assert caches.data_cache_bytes(2, str(tmp_path / "missing")) == caches.DEFAULTS[2]
