"""ReLU and the softmax across branches (the attention of the SK unit's Select step).

ReLU: out = max(x, 0), so dx = dout where x > 0 and 0 elsewhere (the kink at 0 gets gradient 0,
as in PyTorch).

Softmax across branches: logits (N, M, C), one softmax over the M branches for every image n and
channel c:

    a[n, m, c] = exp(z[n, m, c]) / sum_k exp(z[n, k, c])

Subtracting max_k z[n, k, c] first changes nothing mathematically and keeps exp from overflowing.
Its Jacobian is da_m/dz_k = a_m (delta_mk - a_k), so

    dz[n, k, c] = a[n, k, c] * (da[n, k, c] - sum_m da[n, m, c] * a[n, m, c])
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from skscratch._checks import float_array, nonempty, same_dtype, shape_is


class ReluCache(NamedTuple):
    positive: NDArray  # bool mask, like x
    dtype_of_x: NDArray  # a 0-d array of x's dtype, to check dout against


def relu_forward(x: NDArray) -> tuple[NDArray, ReluCache]:
    """ReLU. x: any shape. Returns (out like x, cache)."""
    x = float_array("x", x)
    positive = x > 0
    zero = np.zeros((), dtype=x.dtype)
    return np.where(positive, x, zero), ReluCache(positive, zero)


def relu_backward(dout: NDArray, cache: ReluCache) -> NDArray:
    """ReLU backward. dout: like x. Returns dx: like x."""
    dout = float_array("dout", dout)
    same_dtype("dout", dout, "the forward input", cache.dtype_of_x)
    shape_is("dout", dout, cache.positive.shape)
    return np.where(cache.positive, dout, np.zeros((), dtype=dout.dtype))


class BranchSoftmaxCache(NamedTuple):
    a: NDArray  # (N, M, C)


def branch_softmax_forward(logits: NDArray) -> tuple[NDArray, BranchSoftmaxCache]:
    """Softmax over the branch axis. logits: (N, M, C). Returns a: (N, M, C), sums 1 over M."""
    z = float_array("logits", logits, ndim=3)
    nonempty("logits", z)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    a = e / e.sum(axis=1, keepdims=True)
    return a, BranchSoftmaxCache(a)


def branch_softmax_backward(da: NDArray, cache: BranchSoftmaxCache) -> NDArray:
    """Softmax-across-branches backward. da: (N, M, C). Returns dlogits: (N, M, C)."""
    a = cache.a
    da = float_array("da", da, ndim=3)
    same_dtype("da", da, "the forward logits", a)
    shape_is("da", da, a.shape)
    return a * (da - (da * a).sum(axis=1, keepdims=True))
