"""Global average pooling: one number per image and channel, the mean over the H x W plane.

    out[n, c] = (1 / (H*W)) * sum_{y,x} x[n, c, y, x]

Every pixel contributes 1/(H*W) of itself, so dx[n, c, y, x] = dout[n, c] / (H*W).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from skscratch._checks import float_array, nonempty, shape_is


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
