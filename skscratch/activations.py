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
    out: NDArray  # the output: positive exactly where x was


def relu_forward(x: NDArray) -> tuple[NDArray, ReluCache]:
    """ReLU. x: any shape. Returns (out like x, cache)."""
    x = float_array("x", x)
    out = np.where(x > 0, x, 0).astype(x.dtype)  # NaN gives 0, as x > 0 is False for it
    return out, ReluCache(out)


def relu_backward(dout: NDArray, cache: ReluCache) -> NDArray:
    """ReLU backward. dout: like x. Returns dx: like x."""
    dout = float_array("dout", dout)
    same_dtype("dout", dout, "the forward input", cache.out)
    shape_is("dout", dout, cache.out.shape)
    # The gradient passes where the input was positive (cache.out > 0), and is 0 elsewhere.
    # BEGIN SOLUTION
    return np.where(cache.out > 0, dout, 0).astype(dout.dtype)
    # END SOLUTION


class BranchSoftmaxCache(NamedTuple):
    a: NDArray  # (N, M, C)


def branch_softmax_forward(logits: NDArray) -> tuple[NDArray, BranchSoftmaxCache]:
    """Softmax over the branch axis. logits: (N, M, C). Returns a: (N, M, C), sums 1 over M."""
    z = float_array("logits", logits, ndim=3)
    nonempty("logits", z)
    # Softmax over axis 1; subtract the maximum first so that exp cannot overflow.
    # BEGIN SOLUTION
    e = np.exp(z - z.max(axis=1, keepdims=True))
    a = e / e.sum(axis=1, keepdims=True)
    return a, BranchSoftmaxCache(a)
    # END SOLUTION


def branch_softmax_backward(da: NDArray, cache: BranchSoftmaxCache) -> NDArray:
    """Softmax-across-branches backward. da: (N, M, C). Returns dlogits: (N, M, C)."""
    a = cache.a
    da = float_array("da", da, ndim=3)
    same_dtype("da", da, "the forward logits", a)
    shape_is("da", da, a.shape)
    # The Jacobian of the softmax is a_m (delta_mk - a_k) (see the module docstring).
    # BEGIN SOLUTION
    return a * (da - (da * a).sum(axis=1, keepdims=True))
    # END SOLUTION
