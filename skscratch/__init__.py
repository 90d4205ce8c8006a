"""skscratch: Selective Kernel Networks from scratch in NumPy.

Every operation is a pair of pure functions, `*_forward(...) -> (out, cache)` and
`*_backward(dout, cache) -> gradients`, written by hand and checked by finite differences.
"""

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
