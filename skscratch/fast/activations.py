"""ReLU, compiled: the pair of `skscratch.activations`, and a residual block's sum and ReLU
fused (the pair of `skscratch.layers.add_relu_forward`), each one parallel pass over flat arrays.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numpy.typing import NDArray

from skscratch._checks import float_array, same_dtype, shape_is
from skscratch.activations import ReluCache
from skscratch.fast import memory

_CHUNK = 1 << 16


@njit(cache=True, parallel=True)
def _relu_forward(x, out):
    """out = x where x > 0, else 0 (NaN gives 0, as np.where(x > 0, x, 0)). x: 1-D."""
    zero = x.dtype.type(0)
    for b in prange((x.size + _CHUNK - 1) // _CHUNK):
        src = x[b * _CHUNK : (b + 1) * _CHUNK]
        dst = out[b * _CHUNK : (b + 1) * _CHUNK]
        for k in range(src.size):
            dst[k] = src[k] if src[k] > zero else zero


@njit(cache=True, parallel=True)
def _relu_forward_sum(x, r, out):
    """The ReLU of x + r (1-D both), as `_relu_forward(x + r)` without writing x + r out."""
    zero = x.dtype.type(0)
    for b in prange((x.size + _CHUNK - 1) // _CHUNK):
        src = x[b * _CHUNK : (b + 1) * _CHUNK]
        res = r[b * _CHUNK : (b + 1) * _CHUNK]
        dst = out[b * _CHUNK : (b + 1) * _CHUNK]
        for k in range(src.size):
            v = src[k] + res[k]
            dst[k] = v if v > zero else zero


@njit(cache=True, parallel=True)
def _relu_backward(dout, out, dx):
    """dx = dout where out > 0, else 0. Both 1-D."""
    zero = dout.dtype.type(0)
    for b in prange((dout.size + _CHUNK - 1) // _CHUNK):
        d = dout[b * _CHUNK : (b + 1) * _CHUNK]
        o = out[b * _CHUNK : (b + 1) * _CHUNK]
        dst = dx[b * _CHUNK : (b + 1) * _CHUNK]
        for k in range(d.size):
            dst[k] = d[k] if o[k] > zero else zero


def relu_forward(x: NDArray) -> tuple[NDArray, ReluCache]:
    """`skscratch.activations.relu_forward`, compiled. x: any shape."""
    x = float_array("x", x)
    out = memory.empty(x.shape, x.dtype)
    _relu_forward(np.ascontiguousarray(x).reshape(-1), out.reshape(-1))
    return out, ReluCache(out)


def add_relu_forward(x: NDArray, residual: NDArray) -> tuple[NDArray, ReluCache]:
    """The ReLU of x + residual, summed as it goes: a residual block's sum and its ReLU in one
    pass over memory instead of two. Its backward is `relu_backward`."""
    x = float_array("x", x)
    residual = float_array("residual", residual)
    same_dtype("residual", residual, "x", x)
    shape_is("residual", residual, x.shape)
    flat = (np.ascontiguousarray(a).reshape(-1) for a in (x, residual))
    out = memory.empty(x.shape, x.dtype)
    _relu_forward_sum(*flat, out.reshape(-1))
    return out, ReluCache(out)


def relu_backward(dout: NDArray, cache: ReluCache) -> NDArray:
    """`skscratch.activations.relu_backward`, compiled. dout: like x."""
    dout = float_array("dout", dout)
    same_dtype("dout", dout, "the forward input", cache.out)
    shape_is("dout", dout, cache.out.shape)
    flat = (np.ascontiguousarray(a).reshape(-1) for a in (dout, cache.out))
    dx = memory.empty(dout.shape, dout.dtype)
    _relu_backward(*flat, dx.reshape(-1))
    return dx
