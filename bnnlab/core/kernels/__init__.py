"""Numba kernels of the engine and the ``.bnn`` runtime, one module per family:

- :mod:`.packing`: signs of float rows into 64-bit words, packed im2col;
- :mod:`.xnor`: the binary GEMM (XOR + population count);
- :mod:`.float_gemm`: the register-tiled float32 products of training;
- :mod:`.conv`: float convolution forward and backward, im2col;
- :mod:`.pooling`: max pooling forward and backward;
- :mod:`.batchnorm`: batch norm in training and inference;
- :mod:`.sign`: the sign binarizer and its straight-through gradient;
- :mod:`.chains`: inference between two binary layers (product, pooling, batch norm and
  sign) in one pass that writes only packed bits;
- :mod:`.histogram`: equal-width histograms for the trainer's telemetry;
- :mod:`.optimizer`: fused optimizer updates;
- :mod:`.threads`: when work is split over threads, and the process-wide tuning that the
  entry points apply (:func:`tune_process`);
- :mod:`.simd` and :mod:`.jit`: the vector types, intrinsics and compile options they
  are written with; :mod:`.caches`: the cache sizes blocks are cut to;
  :mod:`.roofline`: this CPU's peaks; :mod:`.warmup`: compiling everything ahead of use.

Packed bits follow Larq Compute Engine: bit 1 means -1, bit 0 means +1, element i of a
row in bit ``i % 64`` of word ``i // 64``; rows are zero-padded in both operands, so
``dot(a, w) = K - 2 * popcount(a ^ w)`` with the true length K.

Every kernel has a slow, obvious NumPy twin (``*_ref``) in the same module; the tests
compare them on awkward shapes. All kernels release the GIL (``nogil=True``), so a
worker thread can train while the GUI thread paints. Importing this package changes
nothing in the process.

The names below are the API shared by the engine (:mod:`bnnlab.core.layers`, the
optimizers) and the runtime (:mod:`bnnlab.deploy.runtime`).
"""

from .batchnorm import bn_backward_train, bn_forward_train, scale_shift
from .conv import (col2im, conv_backward, conv_forward_direct, im2col, offset_tables,
                   pad_input, padded_extent)
from .float_gemm import gemm_offsets, matmul
from .histogram import histogram_uniform
from .optimizer import adam_update
from .packing import (pack_conv_input, pack_patches, pack_patches_parallel, pack_rows,
                      pack_weights, words_for)
from .pooling import maxpool_backward, maxpool_forward
from .sign import sign_pack, ste_gate
from .simd import POPCOUNT_MODE
from .threads import tune_process
from .warmup import compile_in_children, prepare_kernels, warm_up
from .xnor import (ALIGN_WORDS, aligned_words, gemm_panels, xnor_gemm, xnor_gemm_parallel,
                   xnor_gemm_prepared, xnor_gemm_prepared_parallel, xnor_gemm_serial)

__all__ = [
    "ALIGN_WORDS", "POPCOUNT_MODE", "aligned_words", "adam_update", "bn_backward_train", "bn_forward_train", "col2im",
    "conv_backward", "conv_forward_direct", "gemm_offsets", "gemm_panels", "histogram_uniform", "im2col", "matmul",
    "maxpool_backward", "maxpool_forward", "offset_tables", "pack_conv_input", "pack_patches",
    "pack_patches_parallel", "pack_rows", "pack_weights", "pad_input", "padded_extent", "compile_in_children", "prepare_kernels",
    "scale_shift", "sign_pack", "ste_gate", "tune_process", "warm_up", "words_for",
    "xnor_gemm", "xnor_gemm_parallel", "xnor_gemm_prepared", "xnor_gemm_prepared_parallel",
    "xnor_gemm_serial",
]
