"""The fast backend: compiled (numba) versions of the operation pairs, for training.

Every pair here takes the arguments of its plain-NumPy pair in the teaching modules and returns
the same result (up to rounding); the tests check each against it on hypothesis-drawn shapes.
This package is the only place that imports numba. Nothing in the teaching modules calls it:
a network runs it when it is built with `backend="fast"` (see `skscratch.backends`).

    module              what it computes                           its reference
    im2col.py           im2col / col2im                            skscratch.im2col
    conv.py             convolution: im2col path or direct         skscratch.conv
    phases.py           the padded, phase-split layout of the direct kernels
    direct_forward.py   direct grouped / dilated convolution, forward
    direct_backward.py  ... and its gradients of input and weights
    batchnorm.py        batch norm, and batch norm + ReLU, fused   skscratch.batchnorm, .layers
    activations.py      ReLU, and a residual sum + ReLU, fused     skscratch.activations, .layers
    sk.py               the SK unit, and its select step fused     skscratch.sk
    memory.py           the blocks its large arrays reuse (no allocator setting needed)

Kernels are compiled on first use and cached on disk (numba's `cache=True`); they carry a
leading underscore, the public functions that check arguments and call them do not. With the
environment variable NUMBA_DISABLE_JIT=1 they run as ordinary (slow) Python, which is how the
tests show that the loops themselves are right.

Parallel loops (`prange`) run only over independent outputs: every iteration writes its own
(image, channel) plane, or its own output channel, so no two threads add into one element.

fastmath, one policy: a kernel may let the compiler reassociate a sum ("reassoc": split it into
SIMD lanes, which changes the rounding of long sums a little) and contract a multiply and an add
into one fused multiply-add ("contract"), where the tests' tolerances cover the change. Never
the rest of fastmath's flags (no NaN, no inf), so that a NaN in an input comes out as NaN, except
in the weight-gradient and select kernels, whose outputs are plain sums of products. Batch norm's
backward does not contract: it recomputes the forward's output to find the ReLU's mask, and must
round exactly as the forward did.
"""

from __future__ import annotations

import sys

from skscratch.fast.activations import add_relu_forward, relu_backward, relu_forward
from skscratch.fast.batchnorm import (
    batchnorm_backward,
    batchnorm_forward,
    batchnorm_relu_backward,
    batchnorm_relu_forward,
)
from skscratch.fast.conv import conv2d_backward, conv2d_forward
from skscratch.fast.sk import sk_unit_backward, sk_unit_forward

__all__ = [
    "add_relu_forward",
    "batchnorm_backward",
    "batchnorm_forward",
    "batchnorm_relu_backward",
    "batchnorm_relu_forward",
    "compilations",
    "conv2d_backward",
    "conv2d_forward",
    "num_threads",
    "relu_backward",
    "relu_forward",
    "sk_unit_backward",
    "sk_unit_forward",
]


def compilations() -> int:
    """How many kernel signatures this process has compiled rather than loaded from numba's
    on-disk cache (0 with NUMBA_DISABLE_JIT=1, where nothing compiles)."""
    total = 0
    for name, module in list(sys.modules.items()):
        if name.startswith(__name__ + "."):
            for f in vars(module).values():
                if hasattr(f, "stats") and hasattr(f, "py_func"):
                    total += sum(f.stats.cache_misses.values())
    return total


def num_threads() -> int:
    """How many threads the parallel kernels use (numba's setting, NUMBA_NUM_THREADS)."""
    from numba import get_num_threads

    return get_num_threads()
