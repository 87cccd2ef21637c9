"""The Harley-Seal (carry-save adder) count of the binary GEMM against its NumPy twin.

``csa`` is the fewest words a block of K needs to be counted with carry-save adders;
1 forces them on every row, so rows shorter than one block of eight words, rows with
a remainder after the last block, and K cut into several blocks all go through them.
The other popcount modes are run in fresh processes by test_kernels_popcount_modes.
"""

import numpy as np
import pytest

from bnnlab.core import kernels as K
from bnnlab.core.kernels import packing, roofline, xnor

SHAPES = [(1, 1, 1), (1, 64 * 7, 16), (1, 64 * 8, 16), (2, 64 * 8 + 1, 17), (3, 1100, 33),
          (5, 64 * 17 - 5, 48), (1, 64 * 128 + 64 * 9 + 3, 16), (9, 64 * 300, 32),
          (64, 64 * 24, 40)]


def _operands(m, k, n):
    rng = np.random.default_rng(m * 7919 + k * 31 + n)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    abits = packing.pack_rows_ref(a)
    bbits = packing.pack_rows_ref(b.T)
    return abits, bbits, xnor.xnor_gemm_ref(abits, bbits, k)


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("csa", [1, 8, xnor.CSA_MIN_WORDS])
@pytest.mark.parametrize("dtype", [np.int32, np.float32])
def test_csa_gemm_equals_twin(m, k, n, csa, dtype):
    abits, bbits, want = _operands(m, k, n)
    bt = np.ascontiguousarray(bbits.T)
    out = np.full((m, n), 7, dtype)
    xnor.xnor_gemm_serial(abits, bt, np.int64(k), out, np.int64(csa))
    np.testing.assert_array_equal(out, want)
    out = np.full((m, n), 7, dtype)
    xnor.xnor_gemm_parallel(abits, bt, np.int64(k), out, np.int64(2), np.int64(csa))
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("csa", [True, False])
def test_public_gemm_takes_either_count(csa):
    abits, bbits, want = _operands(6, 64 * 40 + 9, 35)
    got = K.xnor_gemm(abits, np.ascontiguousarray(bbits.T), 64 * 40 + 9, csa=csa)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("iters", [0, 1, 3, 17])
def test_csa_probe_counts_what_its_twin_counts(iters):
    words = (np.uint64(0x0123456789ABCDEF), np.uint64(0xFEDCBA9876543210),
             np.uint64(0x5851F42D4C957F2D))
    assert int(roofline.binary_probe_csa(iters, *words)) == roofline.binary_probe_csa_ref(
        iters, *words)
