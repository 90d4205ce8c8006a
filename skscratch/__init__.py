"""skscratch: Selective Kernel Networks from scratch in NumPy.

Every operation is a pair of pure functions, `*_forward(...) -> (out, cache)` and
`*_backward(dout, cache) -> gradients`, written by hand and checked by finite differences.
"""

import os

# After every matrix product OpenBLAS's threads spin for up to 2^28 cycles (about 0.1 s)
# waiting for the next one. Here a matrix product is followed by compiled kernels whose own
# threads then share the cores with the spinning ones. 2^18 cycles (below a millisecond) keeps
# them awake between the per-image products of one 1x1 convolution, but not over the kernels
# that follow: on 2 cores a training step of the default network (batch 128) ran at 143
# images/s with the default, 200 with 2^4 cycles and 225 with 2^18. This takes effect only if
# NumPy is imported after skscratch (as `python -m skscratch` does); a user's own setting wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "18")

from skscratch.activations import (
    branch_softmax_backward,
    branch_softmax_forward,
    relu_backward,
    relu_forward,
)
from skscratch.batchnorm import (
    batchnorm_backward,
    batchnorm_forward,
    batchnorm_relu_backward,
    batchnorm_relu_forward,
)
from skscratch.conv import conv2d_backward, conv2d_forward
from skscratch.im2col import col2im, col2im_reference, conv_output_size, im2col, im2col_reference
from skscratch.linear import linear_backward, linear_forward
from skscratch.losses import softmax_cross_entropy
from skscratch.pooling import global_avg_pool_backward, global_avg_pool_forward
from skscratch.sk import sk_unit_backward, sk_unit_forward

__version__ = "0.1.0"

__all__ = [
    "batchnorm_backward",
    "batchnorm_forward",
    "batchnorm_relu_backward",
    "batchnorm_relu_forward",
    "branch_softmax_backward",
    "branch_softmax_forward",
    "col2im",
    "col2im_reference",
    "conv2d_backward",
    "conv2d_forward",
    "conv_output_size",
    "global_avg_pool_backward",
    "global_avg_pool_forward",
    "im2col",
    "im2col_reference",
    "linear_backward",
    "linear_forward",
    "relu_backward",
    "relu_forward",
    "sk_unit_backward",
    "sk_unit_forward",
    "softmax_cross_entropy",
]
