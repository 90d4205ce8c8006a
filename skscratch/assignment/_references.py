"""Independent NumPy references for the grader: nested loops and formulas, written out again.

Nothing here is imported from skscratch (neither the student's copy nor the instructor's), so a
mistake in the student's code cannot leak into its own grade. The loops are slow and plain on
purpose: each one reads as the definition of its operation.

    H_out = (H + 2*pad - dilation*(KH - 1) - 1) // stride + 1
"""

from __future__ import annotations

import numpy as np


def out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def conv_loops(x, w, b, stride, padding, dilation, groups):
    n, c_in, h, wd = x.shape
    c_out, c_in_g, kh, kw = w.shape
    ho, wo = out_size(h, kh, stride, padding, dilation), out_size(wd, kw, stride, padding, dilation)
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out = np.zeros((n, c_out, ho, wo))
    per_group = c_out // groups
    for co in range(c_out):
        g = co // per_group
        for oy in range(ho):
            for ox in range(wo):
                for ci in range(c_in_g):
                    for i in range(kh):
                        for j in range(kw):
                            out[:, co, oy, ox] += (
                                w[co, ci, i, j]
                                * xp[
                                    :,
                                    g * c_in_g + ci,
                                    oy * stride + i * dilation,
                                    ox * stride + j * dilation,
                                ]
                            )
        if b is not None:
            out[:, co] += b[co]
    return out


def im2col_loops(x, kh, kw, stride, padding, dilation):
    n, c, h, wd = x.shape
    ho, wo = out_size(h, kh, stride, padding, dilation), out_size(wd, kw, stride, padding, dilation)
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    cols = np.zeros((n, c * kh * kw, ho * wo))
    for ch in range(c):
        for i in range(kh):
            for j in range(kw):
                for oy in range(ho):
                    for ox in range(wo):
                        cols[:, (ch * kh + i) * kw + j, oy * wo + ox] = xp[
                            :, ch, oy * stride + i * dilation, ox * stride + j * dilation
                        ]
    return cols


def col2im_loops(cols, x_shape, kh, kw, stride, padding, dilation):
    n, c, h, wd = x_shape
    ho, wo = out_size(h, kh, stride, padding, dilation), out_size(wd, kw, stride, padding, dilation)
    dxp = np.zeros((n, c, h + 2 * padding, wd + 2 * padding))
    for ch in range(c):
        for i in range(kh):
            for j in range(kw):
                for oy in range(ho):
                    for ox in range(wo):
                        dxp[:, ch, oy * stride + i * dilation, ox * stride + j * dilation] += cols[
                            :, (ch * kh + i) * kw + j, oy * wo + ox
                        ]
    return dxp[:, :, padding : padding + h, padding : padding + wd]


def batchnorm_formula(x, gamma, beta, mean, var, eps=1e-5):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return gamma.reshape(shape) * (x - mean.reshape(shape)) / np.sqrt(
        var.reshape(shape) + eps
    ) + beta.reshape(shape)


def batch_stats(x):
    axes = (0,) + tuple(range(2, x.ndim))
    return x.mean(axis=axes), x.var(axis=axes)


def softmax(z, axis):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sk_unit_reference(x, p, stride, groups, training=True, dilations=None):
    """The SK unit from the formulas: Split, Fuse, Select. In training mode every batch norm
    normalises with its batch's statistics, in evaluation mode with its running ones. Branch m
    convolves with its weight's kernel size k and dilation dilations[m] (m + 1 if None), padded
    by dilation (k - 1) / 2."""

    def bn(v, prefix):
        stats = batch_stats(v) if training else (p[f"{prefix}.running_mean"],
                                                 p[f"{prefix}.running_var"])  # fmt: skip
        return batchnorm_formula(v, p[f"{prefix}.weight"], p[f"{prefix}.bias"], *stats)

    m_count = sum(1 for k in p if k.startswith("convs."))
    branches = []
    for m in range(m_count):
        d = m + 1 if dilations is None else dilations[m]
        w = p[f"convs.{m}.weight"]
        u = conv_loops(x, w, None, stride, d * (w.shape[-1] - 1) // 2, d, groups)
        branches.append(np.maximum(bn(u, f"bns.{m}"), 0))
    s = sum(branches).mean(axis=(2, 3))
    z = np.maximum(bn(s @ p["fc.weight"].T, "fc_bn"), 0)
    a = softmax((z @ p["select.weight"].T).reshape(len(x), m_count, -1), axis=1)
    return sum(a[:, m, :, None, None] * u for m, u in enumerate(branches))
