"""Layers made of two operations, as a network uses them: batch norm then ReLU, and a residual
block's sum then ReLU.

Each composite nests the caches of its parts and its backward undoes them in reverse order, as
CS231n's `layer_utils` does. The fast backend (`skscratch.fast`) computes each of these in one
fused pass; these are what its results are checked against.
"""

from __future__ import annotations

from numpy.typing import NDArray

from skscratch._checks import float_array, same_dtype, shape_is
from skscratch.activations import ReluCache, relu_backward, relu_forward
from skscratch.batchnorm import batchnorm_backward, batchnorm_forward


def batchnorm_relu_forward(
    x: NDArray,
    gamma: NDArray,
    beta: NDArray,
    running_mean: NDArray,
    running_var: NDArray,
    *,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    relu: bool = True,
) -> tuple[NDArray, NDArray, NDArray, tuple]:
    """Batch norm, then ReLU unless relu=False. Arguments and returns as `batchnorm_forward`;
    the cache is (batch-norm cache, ReLU cache or None)."""
    out, new_mean, new_var, bn_cache = batchnorm_forward(
        x, gamma, beta, running_mean, running_var,
        training=training, momentum=momentum, eps=eps,
    )  # fmt: skip
    relu_cache = None
    if relu:
        out, relu_cache = relu_forward(out)
    return out, new_mean, new_var, (bn_cache, relu_cache)


def batchnorm_relu_backward(dout: NDArray, cache: tuple) -> tuple[NDArray, NDArray, NDArray]:
    """Backward of `batchnorm_relu_forward`: through the ReLU, then the batch norm.
    Returns dx, dgamma (C,), dbeta (C,)."""
    bn_cache, relu_cache = cache
    if relu_cache is not None:
        dout = relu_backward(dout, relu_cache)
    return batchnorm_backward(dout, bn_cache)


def add_relu_forward(x: NDArray, residual: NDArray) -> tuple[NDArray, ReluCache]:
    """ReLU(x + residual): the end of a residual block. Its backward is `relu_backward`, whose
    dx is the gradient of both x and residual (a sum passes its gradient to each term)."""
    x = float_array("x", x)
    residual = float_array("residual", residual)
    same_dtype("residual", residual, "x", x)
    shape_is("residual", residual, x.shape)
    return relu_forward(x + residual)
