"""Batch norm, and batch norm followed by ReLU, compiled and fused.

In a network, batch norm is nearly always followed by ReLU. Done one after the other, the pair
reads and writes the whole activation several times (xhat, the scaled output, the mask, and as
many again in backward). These kernels write the output in one pass once the statistics are
known, and the gradient in one pass once its sums are; they keep only x, from which xhat and the
ReLU mask are recomputed (the mask by the very float operations of the forward, so it is the
forward's to the last bit). The mathematics is that of `skscratch.batchnorm` (followed by
`skscratch.activations.relu_*`); the tests check that the two agree.

`batchnorm_forward` / `batchnorm_backward` take the arguments of skscratch.batchnorm's pair, and
`batchnorm_relu_forward` / `batchnorm_relu_backward` those of skscratch.layers' composition. An
(N, C) input runs as (N, C, 1, 1).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange
from numpy.typing import NDArray

from skscratch._checks import float_array, same_dtype, shape_is
from skscratch.batchnorm import checked_params, running_stats
from skscratch.fast import memory

# A channel's statistics are sums over every image. The kernels read x in memory order, image by
# image, in parallel chunks of images that each keep their own per-channel sums (added at the
# end): reading one channel across all images instead jumps C*H*W values between planes, which
# on small planes (8 x 8) ran at half the speed. The sums are accumulated in float64, so float32
# batches of 10^5 values per channel keep their precision. The outputs depend on one plane each
# and are written plane by plane.

_BN_CHUNKS = 16  # chunks of images per batch: enough to keep every thread busy


# Reassociation lets the compiler split each sum into vector lanes; without NaN/inf assumptions
# (the rest of fastmath), a NaN in the batch still comes out as NaN.
@njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def _bn_stats(x):
    """Per-channel mean and biased variance of x (N, C, H, W), in float64, in one pass:
    var = E[x^2] - E[x]^2, which float64 keeps exact enough for activations of any sensible
    scale (it would lose digits only where the mean is 10^8 times the spread)."""
    n_img, n_ch = x.shape[0], x.shape[1]
    m = n_img * x.shape[2] * x.shape[3]
    n_chunks = min(n_img, _BN_CHUNKS)
    sums = np.zeros((n_chunks, 2, n_ch))  # per chunk: sum of x, sum of x^2
    for chunk in prange(n_chunks):
        for n in range(chunk * n_img // n_chunks, (chunk + 1) * n_img // n_chunks):
            for c in range(n_ch):
                plane = x[n, c].ravel()
                s = 0.0
                q = 0.0
                for k in range(plane.size):
                    v = np.float64(plane[k])
                    s += v
                    q += v * v
                sums[chunk, 0, c] += s
                sums[chunk, 1, c] += q
    total = sums.sum(axis=0)
    mean = total[0] / m
    var = np.maximum(total[1] / m - mean * mean, 0.0)
    return mean, var


@njit(cache=True, inline="always")
def _affine_relu(x, a, b, relu, zero):
    """a * x + b, then max(., zero) if relu: batch norm's output from its scale and shift. The
    forward and backward kernels both compute it here, with the same float operations (no
    fused multiply-add in either), so the backward's ReLU mask is exactly the forward's."""
    v = a * x + b
    return max(v, zero) if relu else v


@njit(cache=True, parallel=True)
def _bn_relu_forward(x, scale, shift, relu, out):
    """out = scale[c] * x + shift[c], then max(., 0) if relu; scale, shift (C,) in x's dtype."""
    n_img, n_ch = x.shape[0], x.shape[1]
    zero = x.dtype.type(0)
    for nc in prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        src = x[n, c].ravel()
        dst = out[n, c].ravel()
        a, b = scale[c], shift[c]
        for k in range(src.size):
            dst[k] = _affine_relu(src[k], a, b, relu, zero)


# Reassociation only (see _bn_stats): contraction into fused multiply-adds would round the
# recomputed output differently from the forward's, and move the ReLU's kink.
@njit(cache=True, parallel=True, fastmath={"reassoc"})
def _bn_relu_backward(dout, x, scale, shift, mean, inv_std, gamma, relu, training, dx):
    """Batch-norm (+ ReLU) backward from the saved input x and the forward's scale and shift.

    g = dout masked where the output scale * x + shift was <= 0 (if relu); xhat = (x - mean) *
    inv_std; then per channel dbeta = sum g, dgamma = sum g * xhat, and
    dx = gamma * inv_std * (g - dbeta / m - xhat * dgamma / m)   (training; without the two
    mean terms in evaluation mode), into dx. Returns dgamma, dbeta.
    """
    n_img, n_ch = x.shape[0], x.shape[1]
    m = n_img * x.shape[2] * x.shape[3]
    zero = x.dtype.type(0)
    n_chunks = min(n_img, _BN_CHUNKS)
    sums = np.zeros((n_chunks, 2, n_ch))  # per chunk: sum of g, sum of g * (x - mean)
    for chunk in prange(n_chunks):
        for n in range(chunk * n_img // n_chunks, (chunk + 1) * n_img // n_chunks):
            for c in range(n_ch):
                mu, a, b = mean[c], scale[c], shift[c]
                d = dout[n, c].ravel()
                xs = x[n, c].ravel()
                sg = 0.0
                sgx = 0.0
                for k in range(d.size):
                    g = d[k] if (not relu or _affine_relu(xs[k], a, b, relu, zero) > zero) else zero
                    sg += g
                    sgx += g * (xs[k] - mu)
                sums[chunk, 0, c] += sg
                sums[chunk, 1, c] += sgx
    total = sums.sum(axis=0)
    dbeta = total[0].astype(x.dtype)
    dgamma = (total[1] * inv_std).astype(x.dtype)  # sum of g * xhat
    for nc in prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        mu, istd, a, b = mean[c], inv_std[c], scale[c], shift[c]
        coef = gamma[c] * istd
        mean_g = x.dtype.type(total[0, c] / m if training else 0.0)
        mean_gx = x.dtype.type(total[1, c] * istd / m if training else 0.0)
        d = dout[n, c].ravel()
        xs = x[n, c].ravel()
        dst = dx[n, c].ravel()
        for k in range(d.size):
            g = d[k] if (not relu or _affine_relu(xs[k], a, b, relu, zero) > zero) else zero
            xhat = (xs[k] - mu) * istd
            dst[k] = coef * (g - mean_g - xhat * mean_gx)
    return dgamma, dbeta


class BatchNormReluCache(NamedTuple):
    x: NDArray  # (N, C, H, W): an (N, C) input is kept as (N, C, 1, 1)
    scale: NDArray  # (C,) in x's dtype: the forward computed scale * x + shift
    shift: NDArray
    mean: NDArray  # (C,) in x's dtype, like inv_std
    inv_std: NDArray  # (C,)
    gamma: NDArray
    training: bool
    relu: bool
    ndim: int  # of the input: 2 or 4


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
) -> tuple[NDArray, NDArray, NDArray, BatchNormReluCache]:
    """Batch norm followed by ReLU (or batch norm alone, relu=False) for x (N, C) or
    (N, C, H, W). Arguments and returns as `skscratch.batchnorm.batchnorm_forward`."""
    x = float_array("x", x, ndim=(2, 4))
    params = checked_params(x, gamma, beta, running_mean, running_var, training, momentum, eps)
    ndim = x.ndim
    x = np.ascontiguousarray(x if ndim == 4 else x[:, :, None, None])
    if training:
        mu, var = _bn_stats(x)
    else:
        mu = params["running_mean"].astype(np.float64)
        var = params["running_var"].astype(np.float64)
    new_mean, new_var = running_stats(params, mu, var, x, training, momentum)
    inv_std = 1.0 / np.sqrt(var + eps)
    # out = gamma * (x - mu) * inv_std + beta = scale * x + shift
    scale = params["gamma"] * inv_std
    shift = params["beta"] - mu * scale
    scale, shift = scale.astype(x.dtype), shift.astype(x.dtype)
    out = memory.empty(x.shape, x.dtype)
    _bn_relu_forward(x, scale, shift, relu, out)
    cache = BatchNormReluCache(
        x, scale, shift, mu.astype(x.dtype), inv_std.astype(x.dtype), params["gamma"],
        training, relu, ndim,
    )  # fmt: skip
    return out.reshape(out.shape[:ndim]), new_mean, new_var, cache


def batchnorm_relu_backward(
    dout: NDArray, cache: BatchNormReluCache
) -> tuple[NDArray, NDArray, NDArray]:
    """Backward of `batchnorm_relu_forward`. dout: like x. Returns dx, dgamma (C,), dbeta (C,)."""
    x, scale, shift, mean, inv_std, gamma, training, relu, ndim = cache
    dout = float_array("dout", dout, ndim=ndim)
    same_dtype("dout", dout, "the forward input", x)
    shape_is("dout", dout, x.shape[:ndim])
    dout = np.ascontiguousarray(dout).reshape(x.shape)
    dx = memory.empty(x.shape, x.dtype)
    dgamma, dbeta = _bn_relu_backward(
        dout, x, scale, shift, mean, inv_std, gamma, relu, training, dx
    )
    return dx.reshape(dx.shape[:ndim]), dgamma, dbeta


def batchnorm_forward(
    x: NDArray,
    gamma: NDArray,
    beta: NDArray,
    running_mean: NDArray,
    running_var: NDArray,
    *,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> tuple[NDArray, NDArray, NDArray, BatchNormReluCache]:
    """`skscratch.batchnorm.batchnorm_forward`, compiled: the fused kernels without the ReLU."""
    return batchnorm_relu_forward(
        x, gamma, beta, running_mean, running_var,
        training=training, momentum=momentum, eps=eps, relu=False,
    )  # fmt: skip


def batchnorm_backward(
    dout: NDArray, cache: BatchNormReluCache
) -> tuple[NDArray, NDArray, NDArray]:
    """`skscratch.batchnorm.batchnorm_backward`, compiled."""
    return batchnorm_relu_backward(dout, cache)
