"""The SK unit on the fast backend: the pair of `skscratch.sk`, with the same arguments.

The same Split, Fuse and Select, with the compiled convolution and fused batch norm + ReLU, and
the select step's weighted sum and its two gradients each in one pass (the kernels below). The
fully connected layers and the softmax across branches are skscratch's own pairs: they are small.
Fuse pools each branch and adds the pools (pooling is linear), which never writes U out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numba import njit, prange
from numpy.typing import NDArray

from skscratch.activations import branch_softmax_backward, branch_softmax_forward
from skscratch.fast import memory
from skscratch.fast.batchnorm import batchnorm_relu_backward, batchnorm_relu_forward
from skscratch.fast.conv import conv2d_backward, conv2d_forward
from skscratch.linear import linear_backward, linear_forward
from skscratch.sk import bn_params, checked_dout, checked_input


class SKCache(NamedTuple):
    branch_caches: list[tuple]  # per branch: (conv, batch norm + ReLU) caches
    branches: tuple[NDArray, ...]  # U_m, each (N, C, H', W'), C-contiguous
    fc_cache: tuple
    fc_bn_cache: tuple  # batch norm + ReLU
    select_cache: tuple
    softmax_cache: tuple
    a: NDArray  # (N, M, C)
    running_stats: dict[str, NDArray]


def sk_unit_forward(
    x: NDArray,
    params: dict[str, NDArray],
    *,
    stride: int = 1,
    groups: int = 32,
    dilations: Sequence[int] | None = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> tuple[NDArray, SKCache]:
    """`skscratch.sk.sk_unit_forward` on the fast backend."""
    x, params, groups, dilations = checked_input(x, params, groups, dilations, training)
    bn = dict(training=training, momentum=momentum, eps=eps)
    stats: dict[str, NDArray] = {}
    n_branches = len(dilations)
    branches, branch_caches = [], []
    for m, dilation in enumerate(dilations):
        weight = params[f"convs.{m}.weight"]
        padding = dilation * (weight.shape[-1] - 1) // 2
        u, conv_cache = conv2d_forward(
            x, weight, stride=stride, padding=padding, dilation=dilation, groups=groups
        )
        u, stats[f"bns.{m}.running_mean"], stats[f"bns.{m}.running_var"], bn_relu_cache = (
            batchnorm_relu_forward(u, *bn_params(params, f"bns.{m}"), **bn)
        )
        branches.append(np.ascontiguousarray(u))
        branch_caches.append((conv_cache, bn_relu_cache))

    s = sum(u.mean(axis=(2, 3)) for u in branches)  # (N, C): the pool of U, branch by branch
    z, fc_cache = linear_forward(s, params["fc.weight"])  # (N, d)
    z, stats["fc_bn.running_mean"], stats["fc_bn.running_var"], fc_bn_cache = (
        batchnorm_relu_forward(z, *bn_params(params, "fc_bn"), **bn)
    )
    logits, select_cache = linear_forward(z, params["select.weight"])  # (N, M*C)
    n, c = s.shape
    a, softmax_cache = branch_softmax_forward(logits.reshape(n, n_branches, c))  # (N, M, C)
    v = memory.empty(branches[0].shape, x.dtype)
    _weighted_sum(tuple(branches), a, v)
    cache = SKCache(
        branch_caches, tuple(branches), fc_cache, fc_bn_cache, select_cache, softmax_cache, a,
        stats,
    )  # fmt: skip
    return v, cache


def sk_unit_backward(dout: NDArray, cache: SKCache) -> tuple[NDArray, dict[str, NDArray]]:
    """`skscratch.sk.sk_unit_backward` on the fast backend."""
    dout = np.ascontiguousarray(checked_dout(dout, cache.branches[0]))
    branches, a = cache.branches, cache.a
    grads: dict[str, NDArray] = {}
    da = _weighted_sum_backward_weights(dout, branches)  # (N, M, C)
    dlogits = branch_softmax_backward(da, cache.softmax_cache)
    n, n_branches, c = dlogits.shape
    dz, grads["select.weight"], _ = linear_backward(
        dlogits.reshape(n, n_branches * c), cache.select_cache
    )
    dz, grads["fc_bn.weight"], grads["fc_bn.bias"] = batchnorm_relu_backward(dz, cache.fc_bn_cache)
    ds, grads["fc.weight"], _ = linear_backward(dz, cache.fc_cache)
    # The pooling gives every pixel of every U_m the same ds / (H' W'); the kernel adds that per
    # pixel to a_m dV instead of writing it out.
    h, w = dout.shape[2:]
    du_pixel = (ds / (h * w)).astype(dout.dtype)  # (N, C)
    dbranches = memory.empty((len(branches), *dout.shape), dout.dtype)  # (M, N, C, H', W')
    _weighted_sum_backward_branches(dout, a, du_pixel, dbranches)
    dx = None
    for m, (conv_cache, bn_relu_cache) in enumerate(cache.branch_caches):
        du, grads[f"bns.{m}.weight"], grads[f"bns.{m}.bias"] = batchnorm_relu_backward(
            dbranches[m], bn_relu_cache
        )
        # The later branches add their dx into the first's as the kernels write it.
        dx, grads[f"convs.{m}.weight"], _ = conv2d_backward(du, conv_cache, add_to=dx)
    return dx, grads


# The select step: V = sum_m a_m U_m, a_m one weight per image and channel. The branches come as
# a tuple of M arrays (N, C, H, W); a is (N, M, C).


@njit(cache=True, parallel=True, fastmath=True)
def _weighted_sum(us, a, v):
    """v[n, c] = sum_m a[n, m, c] * us[m][n, c], in one pass over the branches."""
    n_img, n_ch = a.shape[0], a.shape[2]
    for nc in prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        dst = v[n, c].ravel()
        src = us[0][n, c].ravel()
        weight = a[n, 0, c]
        for k in range(dst.size):
            dst[k] = weight * src[k]
        for m in range(1, len(us)):
            src = us[m][n, c].ravel()
            weight = a[n, m, c]
            for k in range(dst.size):
                dst[k] += weight * src[k]


@njit(cache=True, parallel=True, fastmath=True)
def _weighted_sum_backward_weights(dv, us):
    """da[n, m, c] = sum_{h,w} dv[n, c] * us[m][n, c]: the gradient of each branch's weight."""
    n_img, n_ch = dv.shape[0], dv.shape[1]
    da = np.empty((n_img, len(us), n_ch), dtype=dv.dtype)
    for nc in prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        d = dv[n, c].ravel()
        for m in range(len(us)):
            src = us[m][n, c].ravel()
            acc = dv.dtype.type(0)
            for k in range(d.size):
                acc += d[k] * src[k]
            da[n, m, c] = acc
    return da


@njit(cache=True, parallel=True, fastmath=True)
def _weighted_sum_backward_branches(dv, a, g, du):
    """du[m, n, c] = a[n, m, c] * dv[n, c] + g[n, c]: each branch's gradient through the
    weighted sum plus the gradient that all branches share through the fuse step's average
    pool, which is the same g[n, c] = ds[n, c] / (H * W) at every pixel."""
    n_img, n_br, n_ch = a.shape
    for nc in prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        d = dv[n, c].ravel()
        shared = g[n, c]
        for m in range(n_br):
            dst = du[m, n, c].ravel()
            weight = a[n, m, c]
            for k in range(d.size):
                dst[k] = weight * d[k] + shared
