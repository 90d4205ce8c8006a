"""Pooling: global average pooling, and max pooling over windows.

Global average pooling gives one number per image and channel, the mean over the H x W plane:

    out[n, c] = (1 / (H*W)) * sum_{y,x} x[n, c, y, x]

Every pixel contributes 1/(H*W) of itself, so dx[n, c, y, x] = dout[n, c] / (H*W).

Max pooling (the ImageNet stem's 3x3, stride 2, padding 1) keeps the largest value of each
K x K window; the padding counts as -inf, so it is never the maximum:

    out[n, c, i, j] = max_{ky,kx} xpad[n, c, i*stride + ky, j*stride + kx]
    H_out = (H + 2*pad - K) // stride + 1

The maximum is a selection, so its gradient goes whole to the one input it selected (the first
in the window, row by row, where several are equal, as PyTorch does) and adds up where windows
overlap: dx[n, c, y, x] = sum of dout over the windows whose maximum is x[n, c, y, x].
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from skscratch._checks import float_array, nonempty, positive_int, shape_is
from skscratch.im2col import conv_output_size


class PoolCache(NamedTuple):
    x_shape: tuple[int, int, int, int]
    dtype: np.dtype


def global_avg_pool_forward(x: NDArray) -> tuple[NDArray, PoolCache]:
    """x: (N, C, H, W) with H*W >= 1. Returns (out (N, C), cache)."""
    x = float_array("x", x, ndim=4)
    nonempty("x", x)
    return x.mean(axis=(2, 3)), PoolCache(x.shape, x.dtype)


def global_avg_pool_backward(dout: NDArray, cache: PoolCache) -> NDArray:
    """dout: (N, C). Returns dx: (N, C, H, W)."""
    n, c, h, w = cache.x_shape
    dout = float_array("dout", dout, ndim=2)
    if dout.dtype != cache.dtype:
        raise TypeError(f"dout has dtype {dout.dtype} but the forward input had {cache.dtype}")
    shape_is("dout", dout, (n, c))
    # Every pixel of a plane contributed 1/(H*W) of itself to the mean.
    # BEGIN SOLUTION
    scale = dout.dtype.type(1.0 / (h * w))
    return np.broadcast_to((dout * scale)[:, :, None, None], cache.x_shape).copy()
    # END SOLUTION


class MaxPoolCache(NamedTuple):
    x_shape: tuple[int, int, int, int]
    dtype: np.dtype
    taken: NDArray  # (N, C, H_out, W_out): which tap ky * K + kx of each window was the maximum
    kernel_size: int
    stride: int
    padding: int


def max_pool2d_forward(
    x: NDArray, kernel_size: int = 3, *, stride: int = 2, padding: int = 1
) -> tuple[NDArray, MaxPoolCache]:
    """x: (N, C, H, W). Returns (out (N, C, H_out, W_out), cache), with
    H_out = (H + 2*padding - kernel_size) // stride + 1 (and W_out alike).

    padding is at most kernel_size // 2, so that every window holds a pixel of x."""
    x = float_array("x", x, ndim=4)
    nonempty("x", x)
    k, s = positive_int("kernel_size", kernel_size), positive_int("stride", stride)
    if not 0 <= padding <= k // 2:
        raise ValueError(f"padding must be from 0 to kernel_size // 2 = {k // 2}, got {padding}")
    n, c, h, w = x.shape
    if min(h, w) + 2 * padding < k:
        raise ValueError(
            f"the {k}x{k} window is larger than the padded input "
            f"{h + 2 * padding}x{w + 2 * padding}"
        )
    h_out, w_out = (conv_output_size(size, k, s, padding, 1) for size in (h, w))
    pad = ((0, 0), (0, 0), (padding, padding), (padding, padding))
    xpad = np.pad(x, pad, constant_values=-np.inf)
    out = np.full((n, c, h_out, w_out), -np.inf, dtype=x.dtype)
    taken = np.zeros((n, c, h_out, w_out), dtype=np.int64)
    # One window tap at a time: tap (ky, kx) of every window is the strided slice below. A
    # later tap replaces the maximum only if it is larger, so ties keep the first.
    for ky in range(k):
        for kx in range(k):
            tap = xpad[:, :, ky : ky + s * h_out : s, kx : kx + s * w_out : s]
            larger = tap > out
            out[larger] = tap[larger]
            taken[larger] = ky * k + kx
    return out, MaxPoolCache(x.shape, x.dtype, taken, k, s, padding)


def max_pool2d_backward(dout: NDArray, cache: MaxPoolCache) -> NDArray:
    """dout: (N, C, H_out, W_out). Returns dx: (N, C, H, W)."""
    n, c, h, w = cache.x_shape
    k, s, p = cache.kernel_size, cache.stride, cache.padding
    dout = float_array("dout", dout, ndim=4)
    if dout.dtype != cache.dtype:
        raise TypeError(f"dout has dtype {dout.dtype} but the forward input had {cache.dtype}")
    shape_is("dout", dout, cache.taken.shape)
    h_out, w_out = cache.taken.shape[2:]
    dxpad = np.zeros((n, c, h + 2 * p, w + 2 * p), dtype=dout.dtype)
    for ky in range(k):
        for kx in range(k):
            # Each window sends its gradient to the tap it took; overlapping windows add.
            chosen = np.where(cache.taken == ky * k + kx, dout, 0)
            dxpad[:, :, ky : ky + s * h_out : s, kx : kx + s * w_out : s] += chosen
    return dxpad[:, :, p : p + h, p : p + w].copy()
