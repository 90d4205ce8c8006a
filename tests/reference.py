"""Slow, obviously correct references for the tests, written without skscratch.

Each function transcribes a definition into plain Python loops over float64 values, so that it
can be read line by line against the formula and trusted. None of them is fast; the tests keep
shapes small. None of them imports skscratch, so a mistake in the package cannot be copied here.
"""

from __future__ import annotations

import math

import numpy as np


def _pair(value):
    return (value, value) if isinstance(value, int) else (value[0], value[1])


def output_size(size, kernel, stride, padding, dilation):
    """The number of window positions along one axis, as torch.nn.Conv2d."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv2d(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1):
    """out[n, co, oy, ox] = b[co] + sum_{ci, i, j} x[n, g*Cg + ci, iy, ix] * w[co, ci, i, j]

    with g = co // (C_out / groups) the group of output channel co, iy = oy*sh + i*dh - ph and
    ix = ox*sw + j*dw - pw; positions outside the input are the zero padding.
    """
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    n_img, _, h, wd = x.shape
    c_out, c_in_g, kh, kw = w.shape
    c_out_g = c_out // groups
    ho = output_size(h, kh, sh, ph, dh)
    wo = output_size(wd, kw, sw, pw, dw)
    out = np.zeros((n_img, c_out, ho, wo))
    for n in range(n_img):
        for co in range(c_out):
            g = co // c_out_g
            for oy in range(ho):
                for ox in range(wo):
                    total = 0.0 if b is None else float(b[co])
                    for ci in range(c_in_g):
                        for i in range(kh):
                            for j in range(kw):
                                iy = oy * sh + i * dh - ph
                                ix = ox * sw + j * dw - pw
                                if 0 <= iy < h and 0 <= ix < wd:
                                    total += float(x[n, g * c_in_g + ci, iy, ix]) * float(
                                        w[co, ci, i, j]
                                    )
                    out[n, co, oy, ox] = total
    return out


def im2col(x, kh, kw, *, stride=1, padding=0, dilation=1):
    """cols[n, (c, i, j), (oy, ox)] = x[n, c, oy*sh + i*dh - ph, ox*sw + j*dw - pw], 0 outside."""
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    n_img, n_ch, h, wd = x.shape
    ho = output_size(h, kh, sh, ph, dh)
    wo = output_size(wd, kw, sw, pw, dw)
    cols = np.zeros((n_img, n_ch * kh * kw, ho * wo), dtype=x.dtype)
    for n in range(n_img):
        for c in range(n_ch):
            for i in range(kh):
                for j in range(kw):
                    row = (c * kh + i) * kw + j
                    for oy in range(ho):
                        for ox in range(wo):
                            iy = oy * sh + i * dh - ph
                            ix = ox * sw + j * dw - pw
                            if 0 <= iy < h and 0 <= ix < wd:
                                cols[n, row, oy * wo + ox] = x[n, c, iy, ix]
    return cols


def col2im(cols, x_shape, kh, kw, *, stride=1, padding=0, dilation=1):
    """The adjoint of `im2col`: every column entry is added back to the pixel it was read from."""
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    n_img, n_ch, h, wd = x_shape
    ho = output_size(h, kh, sh, ph, dh)
    wo = output_size(wd, kw, sw, pw, dw)
    dx = np.zeros(x_shape)
    for n in range(n_img):
        for c in range(n_ch):
            for i in range(kh):
                for j in range(kw):
                    row = (c * kh + i) * kw + j
                    for oy in range(ho):
                        for ox in range(wo):
                            iy = oy * sh + i * dh - ph
                            ix = ox * sw + j * dw - pw
                            if 0 <= iy < h and 0 <= ix < wd:
                                dx[n, c, iy, ix] += float(cols[n, row, oy * wo + ox])
    return dx


def _channel_values(x, c):
    """Every value of channel c (axis 1) of an (N, C) or (N, C, H, W) array, as a list."""
    return [float(v) for v in np.asarray(x)[:, c].ravel()]


def batchnorm(x, gamma, beta, running_mean, running_var, *, training=True, momentum=0.1, eps=1e-5):
    """Batch norm as torch.nn.BatchNorm1d/2d. Returns (out, new_running_mean, new_running_var).

    Training: normalise with the batch mean and the biased batch variance (divide by m); move the
    running statistics by momentum towards the batch mean and the unbiased variance (m - 1).
    Evaluation: normalise with the running statistics, which stay as they are.
    """
    n_ch = x.shape[1]
    out = np.zeros(x.shape)
    new_mean = np.zeros(n_ch)
    new_var = np.zeros(n_ch)
    for c in range(n_ch):
        values = _channel_values(x, c)
        m = len(values)
        if training:
            mean = math.fsum(values) / m
            squares = math.fsum((v - mean) ** 2 for v in values)
            var = squares / m
            new_mean[c] = (1 - momentum) * float(running_mean[c]) + momentum * mean
            new_var[c] = (1 - momentum) * float(running_var[c]) + momentum * squares / (m - 1)
        else:
            mean, var = float(running_mean[c]), float(running_var[c])
            new_mean[c], new_var[c] = mean, var
        std = math.sqrt(var + eps)
        for idx in np.ndindex(x.shape):
            if idx[1] == c:
                out[idx] = float(gamma[c]) * (float(x[idx]) - mean) / std + float(beta[c])
    return out, new_mean, new_var


def global_avg_pool(x):
    """out[n, c] = the mean of x[n, c] over its H x W plane."""
    n_img, n_ch, h, w = x.shape
    out = np.zeros((n_img, n_ch))
    for n in range(n_img):
        for c in range(n_ch):
            out[n, c] = math.fsum(float(x[n, c, y, z]) for y in range(h) for z in range(w)) / (
                h * w
            )
    return out


def linear(x, w, b=None):
    """out[n, o] = b[o] + sum_i x[n, i] * w[o, i]."""
    n_rows, d_in = x.shape
    d_out = w.shape[0]
    out = np.zeros((n_rows, d_out))
    for n in range(n_rows):
        for o in range(d_out):
            total = math.fsum(float(x[n, i]) * float(w[o, i]) for i in range(d_in))
            out[n, o] = total + (0.0 if b is None else float(b[o]))
    return out


def branch_softmax(logits):
    """a[n, m, c] = exp(z[n, m, c]) / sum_k exp(z[n, k, c]): a softmax over axis 1."""
    n_img, n_br, n_ch = logits.shape
    a = np.zeros(logits.shape)
    for n in range(n_img):
        for c in range(n_ch):
            column = [float(logits[n, m, c]) for m in range(n_br)]
            top = max(column)
            exps = [math.exp(z - top) for z in column]
            total = math.fsum(exps)
            for m in range(n_br):
                a[n, m, c] = exps[m] / total
    return a


def log_sum_exp(row):
    """log(sum(exp(row))) without overflow: max + log(sum(exp(row - max)))."""
    top = max(float(z) for z in row)
    return top + math.log(math.fsum(math.exp(float(z) - top) for z in row))


def softmax_cross_entropy(logits, labels, smoothing=0.0):
    """Mean over rows of logsumexp(z[n]) - sum_k q[n, k] z[n, k], with targets
    q[n, k] = eps/K + (1 - eps if k == y[n]); and its gradient (softmax - q) / N."""
    n_rows, n_cls = logits.shape
    losses = []
    grad = np.zeros((n_rows, n_cls))
    for n in range(n_rows):
        lse = log_sum_exp(logits[n])
        y = int(labels[n])
        q = [smoothing / n_cls + (1.0 - smoothing if k == y else 0.0) for k in range(n_cls)]
        losses.append(lse - math.fsum(q[k] * float(logits[n, k]) for k in range(n_cls)))
        for k in range(n_cls):
            grad[n, k] = (math.exp(float(logits[n, k]) - lse) - q[k]) / n_rows
    return math.fsum(losses) / n_rows, grad


def relu(x):
    """out = x where x > 0, else 0."""
    out = np.zeros(x.shape)
    for idx in np.ndindex(x.shape):
        out[idx] = float(x[idx]) if x[idx] > 0 else 0.0
    return out


def max_pool2d(x, k, stride, padding):
    """out[n, c, i, j] = the largest x[n, c, y, z] of window (i, j), padding excluded, and the
    (y, z) it was found at first, row by row."""
    n_img, n_ch, h, w = x.shape
    h_out = (h + 2 * padding - k) // stride + 1
    w_out = (w + 2 * padding - k) // stride + 1
    out = np.zeros((n_img, n_ch, h_out, w_out))
    at = np.zeros((n_img, n_ch, h_out, w_out, 2), dtype=int)
    for n, c, i, j in np.ndindex(out.shape):
        best = None
        for ky in range(k):
            for kx in range(k):
                y, z = i * stride + ky - padding, j * stride + kx - padding
                if 0 <= y < h and 0 <= z < w and (best is None or x[n, c, y, z] > best):
                    best, at[n, c, i, j] = float(x[n, c, y, z]), (y, z)
        out[n, c, i, j] = best
    return out, at
