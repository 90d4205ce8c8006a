"""The Selective Kernel unit (Li, Wang, Hu, Yang, CVPR 2019): Split, Fuse, Select.

Input X: (N, C, H, W). M branches, G groups, reduction r, floor L; d = max(C // r, L).

    Split   U_m = ReLU(BN_m(conv_m(X)))     m = 1..M: grouped k_m x k_m conv, dilation D_m,
                                            padding D_m (k_m - 1) / 2, the unit's stride;
                                            each U_m is (N, C, H', W')
    Fuse    U = U_1 + ... + U_M
            s = global average pool of U    (N, C)
            z = ReLU(BN_fc(s @ W_fc.T))     (N, d),  W_fc: (d, C)
    Select  logits = z @ W_sel.T            (N, M*C) viewed as (N, M, C),  W_sel: (M*C, d)
            a = softmax over M              a[n, :, c] sums to 1
            V = sum_m a_m * U_m             a_m broadcast over H' x W'

The paper's SK unit has 3x3 kernels with dilations 1, 2, ..., M (its branch of dilation 2 sees
as far as a 5x5 kernel): those are the defaults. Its ablations change them per branch (a 5x5
kernel, or a 3x3 one of dilation 1, beside the first): the kernel size k_m is the size of
branch m's weights, the dilations are an argument.

The backward pass below undoes these steps in reverse. The one subtle point is that every U_m
reaches the output twice: directly, weighted by a_m, and through the fused statistics s (which
decide a). Its gradient is the sum of the two paths.

Parameter keys (a PyTorch module tree would name them the same way):

    convs.{m}.weight                                   (C, C // G, k_m, k_m)
    bns.{m}.weight, bns.{m}.bias                       (C,)
    fc.weight                                          (d, C)
    fc_bn.weight, fc_bn.bias                           (d,)
    select.weight                                      (M*C, d)

and the batch-norm running statistics `bns.{m}.running_mean`, `bns.{m}.running_var`,
`fc_bn.running_mean`, `fc_bn.running_var`, which the forward reads from `params` and returns,
updated, in `cache.running_stats`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from skscratch._checks import float_array, nonempty, positive_int, same_dtype
from skscratch.activations import (
    branch_softmax_backward,
    branch_softmax_forward,
    relu_backward,
    relu_forward,
)
from skscratch.batchnorm import batchnorm_backward, batchnorm_forward
from skscratch.conv import conv2d_backward, conv2d_forward
from skscratch.linear import linear_backward, linear_forward
from skscratch.pooling import global_avg_pool_backward, global_avg_pool_forward

BN_STATS = ("running_mean", "running_var")


def sk_hidden_size(channels: int, r: int = 16, L: int = 32) -> int:
    """d = max(C / r, L): the width of the fused vector z."""
    return max(channels // r, L)


def sk_param_shapes(
    channels: int,
    *,
    branches: int = 2,
    groups: int = 32,
    r: int = 16,
    L: int = 32,
    kernel_sizes: Sequence[int] | None = None,
) -> dict[str, tuple[int, ...]]:
    """The keys and shapes of an SK unit's parameters and running statistics; kernel_sizes
    holds each branch's (odd) kernel size, 3 for every branch if None."""
    if channels % groups:
        raise ValueError(f"channels ({channels}) must be divisible by groups ({groups})")
    kernels = branch_kernel_sizes(kernel_sizes, branches)
    return _shapes(channels, kernels, groups, sk_hidden_size(channels, r, L))


def branch_kernel_sizes(kernel_sizes: Sequence[int] | None, branches: int) -> tuple[int, ...]:
    """Each branch's kernel size, checked (odd, one per branch); None: 3 for every branch."""
    return _per_branch("kernel_sizes", kernel_sizes, [3] * branches, odd=True)


def branch_dilations(dilations: Sequence[int] | None, branches: int) -> tuple[int, ...]:
    """Each branch's dilation, checked (one per branch); None: 1, 2, ..., M (the paper's)."""
    return _per_branch("dilations", dilations, range(1, branches + 1))


def _per_branch(
    name: str, values: Sequence[int] | None, default: Sequence[int], *, odd: bool = False
) -> tuple[int, ...]:
    if values is None:
        return tuple(default)
    values = tuple(positive_int(f"{name}[{m}]", v) for m, v in enumerate(values))
    if len(values) != len(default):
        raise ValueError(f"{name} must hold one value per branch ({len(default)}), got {values}")
    if odd and not all(v % 2 for v in values):
        raise ValueError(f"{name} must be odd (a kernel centred on its pixel), got {values}")
    return values


def _shapes(c: int, kernels: Sequence[int], groups: int, d: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    branches = len(kernels)
    for m, k in enumerate(kernels):
        shapes[f"convs.{m}.weight"] = (c, c // groups, k, k)
        for key in ("weight", "bias", *BN_STATS):
            shapes[f"bns.{m}.{key}"] = (c,)
    shapes["fc.weight"] = (d, c)
    for key in ("weight", "bias", *BN_STATS):
        shapes[f"fc_bn.{key}"] = (d,)
    shapes["select.weight"] = (branches * c, d)
    return shapes


def check_params(
    params: dict[str, NDArray], x: NDArray, groups: int
) -> tuple[int, dict[str, NDArray]]:
    """Check every key, shape and dtype of `params` for the input x; return M and the params as
    arrays (lists of floats converted).

    M is the highest branch index among the convs.* and bns.* keys, plus one, so a missing
    branch is reported as missing. d is read from the arrays that carry it (fc.weight, the four
    fc_bn arrays, select.weight), taking the value most of them agree on, so that the one
    wrong array is the one named. A branch's kernel size is its weight's last dimension, which
    must be odd (3 where the weight has no such dimension, for the error to name it).
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of arrays, got {type(params).__name__}")
    channels = x.shape[1]
    if channels % groups:
        raise ValueError(f"input channels ({channels}) must be divisible by groups ({groups})")
    arrays = {key: float_array(f"params[{key!r}]", value) for key, value in params.items()}
    indices = [
        int(k.split(".")[1])
        for k in arrays
        if k.startswith(("convs.", "bns.")) and k.split(".")[1].isdigit()
    ]
    if not indices:
        raise ValueError("params must hold at least one branch, 'convs.0.weight' and 'bns.0.*'")
    branches = max(indices) + 1
    d_votes = [a.shape[0] for k, a in arrays.items() if k.startswith("fc_bn.") and a.ndim]
    d_votes += [
        arrays[k].shape[i]
        for k, i in (("fc.weight", 0), ("select.weight", 1))
        if k in arrays and arrays[k].ndim == 2
    ]
    d = max(set(d_votes), key=d_votes.count) if d_votes else 1
    kernels = [_kernel_size(arrays.get(f"convs.{m}.weight")) for m in range(branches)]
    expected = _shapes(channels, kernels, groups, d)
    missing = [k for k in expected if k not in params]
    if missing:
        raise ValueError(f"params is missing {missing}")
    unexpected = sorted(set(params) - set(expected))
    if unexpected:
        raise ValueError(f"params has unexpected keys {unexpected}")
    for key, shape in expected.items():
        if arrays[key].shape != shape:
            raise ValueError(
                f"params[{key!r}] must have shape {shape} for {channels} channels, {groups} "
                f"groups, {branches} branches, kernel sizes {tuple(kernels)} and d = {d}; "
                f"got {arrays[key].shape}"
            )
        same_dtype(f"params[{key!r}]", arrays[key], "x", x)
    return branches, arrays


def _kernel_size(weight: NDArray | None) -> int:
    """The kernel size a branch's weight (C, C // G, k, k) has, if it is odd; else 3."""
    k = weight.shape[-1] if weight is not None and weight.ndim == 4 else 3
    return k if k % 2 else 3


def bn_params(params: dict[str, NDArray], prefix: str) -> list[NDArray]:
    return [params[f"{prefix}.{k}"] for k in ("weight", "bias", *BN_STATS)]


class SKCache(NamedTuple):
    branch_caches: list[tuple]  # per branch: (conv, batch norm, ReLU) caches
    branches: tuple[NDArray, ...]  # U_m, each (N, C, H', W')
    pool_cache: tuple
    fc_cache: tuple
    fc_bn_cache: tuple
    fc_relu_cache: tuple
    select_cache: tuple
    softmax_cache: tuple
    a: NDArray  # (N, M, C): the attention of each branch, per image and channel
    running_stats: dict[str, NDArray]  # updated batch-norm running statistics


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
    """SK unit forward. x: (N, C, H, W); params: the keys of `sk_param_shapes`.

    The number of branches M is read from the params (convs.0 .. convs.{M-1}), and each
    branch's kernel size k_m from its weight; dilations holds each branch's dilation D_m (1, 2,
    ..., M if None). Every key and shape is checked first, and an error names the key that is
    missing or wrong. Returns V: (N, C, H', W') with H' = (H - 1) // stride + 1, and the cache,
    whose field `a` holds the attention (N, M, C) and `running_stats` the updated batch-norm
    statistics.
    """
    x, params, groups, dilations = checked_input(x, params, groups, dilations, training)
    # Split, Fuse, Select as in the module docstring, from the forward functions of the other
    # exercises; return V and an SKCache of every cache, the attention a and the updated
    # running statistics.
    # BEGIN SOLUTION
    bn = dict(training=training, momentum=momentum, eps=eps)
    stats: dict[str, NDArray] = {}
    n_branches = len(dilations)

    # Split: branch m is a k x k conv with dilation D_m, padded by D_m (k - 1) / 2 on each side
    # (which keeps the size), then batch norm and ReLU.
    branches, branch_caches = [], []
    for m, dilation in enumerate(dilations):
        weight = params[f"convs.{m}.weight"]
        padding = dilation * (weight.shape[-1] - 1) // 2
        u, conv_cache = conv2d_forward(
            x, weight, stride=stride, padding=padding, dilation=dilation, groups=groups
        )
        u, stats[f"bns.{m}.running_mean"], stats[f"bns.{m}.running_var"], bn_cache = (
            batchnorm_forward(u, *bn_params(params, f"bns.{m}"), **bn)
        )
        u, relu_cache = relu_forward(u)
        branches.append(u)
        branch_caches.append((conv_cache, bn_cache, relu_cache))

    # Fuse: one descriptor per channel from the sum of the branches, squeezed to d values.
    s, pool_cache = global_avg_pool_forward(sum(branches))  # (N, C)
    z, fc_cache = linear_forward(s, params["fc.weight"])  # (N, d)
    z, stats["fc_bn.running_mean"], stats["fc_bn.running_var"], fc_bn_cache = batchnorm_forward(
        z, *bn_params(params, "fc_bn"), **bn
    )
    z, fc_relu_cache = relu_forward(z)

    # Select: M logits per channel, a softmax across the branches, a weighted sum.
    logits, select_cache = linear_forward(z, params["select.weight"])  # (N, M*C)
    n, c = s.shape
    a, softmax_cache = branch_softmax_forward(logits.reshape(n, n_branches, c))  # (N, M, C)
    v = sum(a[:, m, :, None, None] * u for m, u in enumerate(branches))  # a_m over H' x W'

    cache = SKCache(
        branch_caches,
        tuple(branches),
        pool_cache,
        fc_cache,
        fc_bn_cache,
        fc_relu_cache,
        select_cache,
        softmax_cache,
        a,
        stats,
    )
    return v, cache
    # END SOLUTION


def sk_unit_backward(dout: NDArray, cache: SKCache) -> tuple[NDArray, dict[str, NDArray]]:
    """SK unit backward. dout: (N, C, H', W'). Returns dx: (N, C, H, W) and grads, a dict with the
    keys of the parameters (not the running statistics)."""
    dout = checked_dout(dout, cache.branches[0])
    branches, a = cache.branches, cache.a
    # Undo the forward step by step in reverse; every U_m reaches the output twice (directly,
    # weighted by a_m, and through the fuse step), so its two gradients add.
    # BEGIN SOLUTION
    n_branches = len(branches)
    grads: dict[str, NDArray] = {}

    # Select, backwards: V = sum_m a_m U_m gives da_m = sum_{h,w} dV * U_m (and dU_m = a_m dV).
    da = np.stack([(dout * u).sum(axis=(2, 3)) for u in branches], axis=1)  # (N, M, C)
    dlogits = branch_softmax_backward(da, cache.softmax_cache)
    n, _, c = dlogits.shape
    dz, grads["select.weight"], _ = linear_backward(
        dlogits.reshape(n, n_branches * c), cache.select_cache
    )

    # Fuse, backwards: through ReLU, BN, the FC and the pooling to the sum U of the branches.
    dz = relu_backward(dz, cache.fc_relu_cache)
    dz, grads["fc_bn.weight"], grads["fc_bn.bias"] = batchnorm_backward(dz, cache.fc_bn_cache)
    ds, grads["fc.weight"], _ = linear_backward(dz, cache.fc_cache)
    du_sum = global_avg_pool_backward(ds, cache.pool_cache)  # U = sum of U_m: each gets all of it

    # Split, backwards: each branch's two gradient paths add, dU_m = a_m dV + dU; then its ReLU,
    # BN and conv. The branches read the same x: their gradients of x add.
    dx = 0
    for m, (conv_cache, bn_cache, relu_cache) in enumerate(cache.branch_caches):
        du = a[:, m, :, None, None] * dout + du_sum
        du = relu_backward(du, relu_cache)
        du, grads[f"bns.{m}.weight"], grads[f"bns.{m}.bias"] = batchnorm_backward(du, bn_cache)
        dx_m, grads[f"convs.{m}.weight"], _ = conv2d_backward(du, conv_cache)
        dx = dx + dx_m
    return dx, grads
    # END SOLUTION


def checked_input(
    x, params, groups, dilations, training
) -> tuple[NDArray, dict[str, NDArray], int, tuple[int, ...]]:
    """Check the SK unit's input, parameters and dilations; return (x and params as arrays,
    groups, the dilation of each of the M branches)."""
    x = float_array("x", x, ndim=4)
    nonempty("x", x)
    if training and x.shape[0] < 2:
        raise ValueError(
            f"x must hold at least 2 images in training mode (the batch norm of the fuse step "
            f"normalises over the batch), got shape {x.shape}"
        )
    groups = positive_int("groups", groups)
    branches, params = check_params(params, x, groups)
    return x, params, groups, branch_dilations(dilations, branches)


def checked_dout(dout, first_branch: NDArray) -> NDArray:
    """Check dout against the unit's output (the shape and dtype of every branch)."""
    dout = float_array("dout", dout, ndim=4)
    same_dtype("dout", dout, "the forward input", first_branch)
    if dout.shape != first_branch.shape:
        raise ValueError(f"dout must have shape {first_branch.shape}, got {dout.shape}")
    return dout
