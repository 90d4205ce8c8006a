"""Batch normalisation for (N, C) and (N, C, H, W) inputs, as `torch.nn.BatchNorm1d/2d`.

Training mode normalises with the statistics of the batch, over every axis but the channel one
(m values per channel: N, or N*H*W):

    mu = mean(x),  var = mean((x - mu)^2)               (biased: divide by m)
    xhat = (x - mu) / sqrt(var + eps)
    out = gamma * xhat + beta

and moves the running statistics towards the batch's, momentum being the weight of the new batch:

    running_mean <- (1 - momentum) * running_mean + momentum * mu
    running_var  <- (1 - momentum) * running_var  + momentum * var * m / (m - 1)   (unbiased)

Evaluation mode uses the running statistics instead, and they are left alone.

Backward in training mode: mu and var depend on every x in the channel, so dx has three terms.
With dxhat = dout * gamma, the chain rule through mu and var simplifies to

    dx = (1 / sqrt(var + eps)) * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))

In evaluation mode mu and var are constants, and dx = dxhat / sqrt(running_var + eps).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from skscratch._checks import float_array, nonempty, same_dtype, shape_is


class BatchNormCache(NamedTuple):
    xhat: NDArray
    gamma: NDArray
    inv_std: NDArray  # (C,)
    training: bool


def _axes(x: NDArray) -> tuple[int, ...]:
    """The axes that a channel's statistics run over: all but axis 1."""
    return (0,) if x.ndim == 2 else (0, 2, 3)


def _per_channel(v: NDArray, ndim: int) -> NDArray:
    """(C,) -> a shape that broadcasts against (N, C) or (N, C, H, W)."""
    return v.reshape(1, -1) if ndim == 2 else v.reshape(1, -1, 1, 1)


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
) -> tuple[NDArray, NDArray, NDArray, BatchNormCache]:
    """Batch norm forward.

    x: (N, C) or (N, C, H, W); gamma, beta, running_mean, running_var: (C,).
    Returns (out like x, new_running_mean (C,), new_running_var (C,), cache). The running
    statistics passed in are not modified; in evaluation mode copies of them are returned.
    """
    x = float_array("x", x, ndim=(2, 4))
    params = checked_params(x, gamma, beta, running_mean, running_var, training, momentum, eps)
    # Batch statistics in training mode, running ones in evaluation mode; running_stats gives
    # the updated running statistics; normalise, scale and shift.
    # BEGIN SOLUTION
    axes = _axes(x)
    if training:
        mu, var = x.mean(axis=axes), x.var(axis=axes)
    else:
        mu, var = params["running_mean"], params["running_var"]
    new_mean, new_var = running_stats(params, mu, var, x, training, momentum)

    inv_std = (1.0 / np.sqrt(var + eps)).astype(x.dtype)
    xhat = (x - _per_channel(mu, x.ndim)) * _per_channel(inv_std, x.ndim)
    out = _per_channel(params["gamma"], x.ndim) * xhat + _per_channel(params["beta"], x.ndim)
    return out, new_mean, new_var, BatchNormCache(xhat, params["gamma"], inv_std, training)
    # END SOLUTION


def running_stats(params, mu, var, x, training, momentum):
    """The running statistics after this batch (copies of the old ones in evaluation mode)."""
    if not training:
        return params["running_mean"].copy(), params["running_var"].copy()
    m = x.size // x.shape[1]
    new_mean = (1 - momentum) * params["running_mean"] + momentum * mu
    new_var = (1 - momentum) * params["running_var"] + momentum * var * (m / (m - 1))
    return new_mean.astype(x.dtype), new_var.astype(x.dtype)


def checked_params(x, gamma, beta, running_mean, running_var, training, momentum, eps):
    """Check the per-channel arrays and options against x; return the arrays by name."""
    nonempty("x", x)
    c = x.shape[1]
    if training and x.size // max(c, 1) < 2:
        raise ValueError(
            f"batch norm in training mode needs more than 1 value per channel, got x of "
            f"shape {x.shape}"
        )
    params = {}
    for name, value in [
        ("gamma", gamma),
        ("beta", beta),
        ("running_mean", running_mean),
        ("running_var", running_var),
    ]:
        arr = float_array(name, value, ndim=1)
        same_dtype(name, arr, "x", x)
        shape_is(name, arr, (c,))
        params[name] = arr
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    return params


def batchnorm_backward(dout: NDArray, cache: BatchNormCache) -> tuple[NDArray, NDArray, NDArray]:
    """Batch norm backward. dout: like x. Returns dx (like x), dgamma (C,), dbeta (C,)."""
    xhat, gamma, inv_std, training = cache
    dout = float_array("dout", dout)
    same_dtype("dout", dout, "the forward input", xhat)
    shape_is("dout", dout, xhat.shape)
    # In training mode dx has two more terms than in evaluation mode: the mean and the variance
    # of the batch depend on every x.
    # BEGIN SOLUTION
    axes = _axes(xhat)

    dbeta = dout.sum(axis=axes)
    dgamma = (dout * xhat).sum(axis=axes)
    dxhat = dout * _per_channel(gamma, dout.ndim)
    if training:
        # The mean and variance terms: how moving one x shifts mu and var of its whole channel.
        mean_dxhat = dxhat.mean(axis=axes, keepdims=True)
        mean_dxhat_xhat = (dxhat * xhat).mean(axis=axes, keepdims=True)
        dx = (dxhat - mean_dxhat - xhat * mean_dxhat_xhat) * _per_channel(inv_std, dout.ndim)
    else:
        dx = dxhat * _per_channel(inv_std, dout.ndim)
    return dx, dgamma, dbeta
    # END SOLUTION
