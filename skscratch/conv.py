"""2-D convolution (grouped, strided, padded, dilated) as im2col + a grouped matrix product.

Forward, for G groups of C_in/G input and C_out/G output channels each:

    cols = im2col(x)                                    (N, C_in*KH*KW, L),  L = H_out*W_out
    out[n, g] = W[g] @ cols[n, g]                       (C_out/G, L) per image and group

where W[g] is the (C_out/G, C_in/G*KH*KW) slice of the weight that group g owns: group g's outputs
only see group g's inputs. Backward is the same product read the other way:

    dW[g]      = sum_n dout[n, g] @ cols[n, g].T
    dcols[n,g] = W[g].T @ dout[n, g]
    dx         = col2im(dcols)                          overlapping windows add
    db         = sum of dout over n, y, x

How it is computed (`method`, or the environment variable SKSCRATCH_CONV, default "auto"):

- "reference": the plain-NumPy im2col_reference / col2im_reference, the version to read;
- "im2col": the same products with the compiled im2col / col2im kernels;
- "direct": compiled kernels that convolve without im2col. When a group has
  only a few channels (the SK unit's 3x3 convolutions: 2-8 channels per group), each per-group
  product is a sliver (2 x 18 by 18 x L) on which matrix-product libraries waste their speed,
  and copying 9 shifted versions of the input costs more than the arithmetic. A stride-s
  convolution is the stride-1 one sampled every s pixels, so the kernels compute that and keep
  every s-th output (backward: spread dout over the stride-1 grid with zeros between);
- "auto": "direct" for stride-1 grouped convolutions of up to 8 channels per group, else
  "im2col" (measured on a 2-core AVX2 machine: with wider groups, or stride 2, where 3/4 of
  the direct kernels' work is thrown away, im2col was as fast or faster).

All four give the same result up to rounding; the tests check that they do.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from skscratch import _kernels
from skscratch._checks import (
    float_array,
    nonempty,
    pair,
    positive_int,
    same_dtype,
    shape_is,
)
from skscratch.im2col import (
    col2im,
    col2im_reference,
    conv_output_size,
    im2col,
    im2col_reference,
)

METHODS = ("auto", "reference", "im2col", "direct")
# Up to this many input channels per group, "auto" convolves directly rather than by im2col.
DIRECT_MAX_GROUP_WIDTH = 8


class ConvCache(NamedTuple):
    x_shape: tuple[int, int, int, int]
    w: NDArray
    saved: NDArray  # im2col: the columns (N, G, C_in/G*KH*KW, L); direct: the padded input
    has_bias: bool
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    out_size: tuple[int, int]  # (H_out, W_out)
    method: str


def _choose_method(method: str | None, stride, c_in_g: int, groups: int) -> str:
    method = method or os.environ.get("SKSCRATCH_CONV") or "auto"
    if method not in METHODS:
        raise ValueError(f"method (or $SKSCRATCH_CONV) must be one of {METHODS}, got {method!r}")
    if method == "auto":
        direct = stride == (1, 1) and groups > 1 and c_in_g <= DIRECT_MAX_GROUP_WIDTH
        return "direct" if direct else "im2col"
    return method


def conv2d_forward(
    x: NDArray,
    w: NDArray,
    b: NDArray | None = None,
    *,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    method: str | None = None,
) -> tuple[NDArray, ConvCache]:
    """Convolution of x with w, as `torch.nn.functional.conv2d`.

    x: (N, C_in, H, W); w: (C_out, C_in // groups, KH, KW); b: (C_out,) or None.
    stride, padding, dilation: an int or an (h, w) pair. method: see the module docstring.
    Returns out: (N, C_out, H_out, W_out) with
    H_out = (H + 2*padding - dilation*(KH - 1) - 1) // stride + 1 (and W_out likewise).
    """
    x = float_array("x", x, ndim=4)
    w = float_array("w", w, ndim=4)
    nonempty("x", x)
    nonempty("w", w, batch=False)
    same_dtype("w", w, "x", x)
    groups = positive_int("groups", groups)
    n, c_in, h, wd = x.shape
    c_out, c_in_g, kh, kw = w.shape
    if c_in % groups:
        raise ValueError(f"input channels ({c_in}) must be divisible by groups ({groups})")
    if c_out % groups:
        raise ValueError(f"output channels of w ({c_out}) must be divisible by groups ({groups})")
    if c_in_g != c_in // groups:
        raise ValueError(
            f"w must have shape (C_out, C_in // groups, KH, KW) = (.., {c_in // groups}, .., ..) "
            f"for {c_in} input channels and {groups} groups, got {w.shape}"
        )
    if b is not None:
        b = float_array("b", b, ndim=1)
        same_dtype("b", b, "x", x)
        shape_is("b", b, (c_out,))
    stride, padding, dilation = (
        pair("stride", stride, 1),
        pair("padding", padding, 0),
        pair("dilation", dilation, 1),
    )

    method = _choose_method(method, stride, c_in_g, groups)
    h_out = conv_output_size(h, kh, stride[0], padding[0], dilation[0])
    w_out = conv_output_size(wd, kw, stride[1], padding[1], dilation[1])
    if h_out < 1 or w_out < 1:
        raise ValueError(
            f"output size would be {h_out}x{w_out}: input {h}x{wd} with padding {padding} is "
            f"smaller than the dilated kernel"
        )

    if method == "direct":
        saved, out = _direct_forward(x, w, stride, padding, dilation, groups)
    else:
        gather = im2col_reference if method == "reference" else im2col
        cols = gather(x, kh, kw, stride=stride, padding=padding, dilation=dilation)
        saved = cols.reshape(n, groups, c_in_g * kh * kw, h_out * w_out)  # (N, G, K, L)
        w_g = w.reshape(groups, c_out // groups, c_in_g * kh * kw)  # (G, C_out/G, K)
        out = np.matmul(w_g, saved)  # (N, G, C_out/G, L)
        out = out.reshape(n, c_out, h_out, w_out)
    if b is not None:
        out += b[None, :, None, None]
    cache = ConvCache(
        x.shape, w, saved, b is not None, stride, padding, dilation, groups, (h_out, w_out), method
    )
    return out, cache


def conv2d_backward(dout: NDArray, cache: ConvCache) -> tuple[NDArray, NDArray, NDArray | None]:
    """Gradients of the convolution.

    dout: (N, C_out, H_out, W_out). Returns dx: (N, C_in, H, W), dw: like w, db: (C_out,) or None.
    """
    x_shape, w, saved, has_bias, stride, padding, dilation, groups, out_size, method = cache
    n, c_in, _, _ = x_shape
    c_out, c_in_g, kh, kw = w.shape
    dout = float_array("dout", dout, ndim=4)
    same_dtype("dout", dout, "the forward input", w)
    shape_is("dout", dout, (n, c_out, *out_size))
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    if method == "direct":
        dx, dw = _direct_backward(dout, saved, w, x_shape, stride, padding, dilation, groups)
        return dx, dw, db

    cols, length = saved, out_size[0] * out_size[1]
    dout_g = dout.reshape(n, groups, c_out // groups, length)  # (N, G, C_out/G, L)
    w_g = w.reshape(groups, c_out // groups, c_in_g * kh * kw)  # (G, C_out/G, K)
    dw = np.matmul(dout_g, cols.transpose(0, 1, 3, 2)).sum(axis=0).reshape(w.shape)
    dcols = np.matmul(w_g.transpose(0, 2, 1), dout_g)  # (N, G, K, L)
    scatter = col2im_reference if method == "reference" else col2im
    dx = scatter(
        dcols.reshape(n, c_in * kh * kw, length),
        x_shape,
        kh,
        kw,
        stride=stride,
        padding=padding,
        dilation=dilation,
    )
    return dx, dw, db


# The direct path: the kernels read each zero-padded input plane as one flat row of width
# W + 2*padding (see skscratch/_kernels.py), so the cache keeps that padded input.


def _flat_geometry(x_shape, w_shape, padding, dilation):
    """The stride-1 output size (H1, W1), the padded width WP, and how many zeros the flat
    buffers need after the last row so that the widest tap never reads past the end."""
    _, _, h, wd = x_shape
    kh, kw = w_shape[2:]
    full = (
        conv_output_size(h, kh, 1, padding[0], dilation[0]),
        conv_output_size(wd, kw, 1, padding[1], dilation[1]),
    )
    return full, wd + 2 * padding[1], (kw - 1) * dilation[1]


def _direct_forward(x, w, stride, padding, dilation, groups):
    full, wp, extra = _flat_geometry(x.shape, w.shape, padding, dilation)
    xpad = _kernels._pad_flat(x, padding[0], padding[1], extra)
    out = _kernels._conv_direct_forward(xpad, w, groups, *full, wp, *dilation)
    if stride != (1, 1):
        out = np.ascontiguousarray(out[:, :, :: stride[0], :: stride[1]])
    return xpad, out


def _direct_backward(dout, xpad, w, x_shape, stride, padding, dilation, groups):
    n, _, h, wd = x_shape
    full, wp, extra = _flat_geometry(x_shape, w.shape, padding, dilation)
    if stride != (1, 1):
        # The stride-1 gradient has dout at every stride-th position and zeros between.
        dfull = np.zeros((n, dout.shape[1], *full), dtype=dout.dtype)
        dfull[:, :, :: stride[0], :: stride[1]] = dout
        dout = dfull
    dspread = _kernels._spread_rows(np.ascontiguousarray(dout), wp, extra)
    hp = h + 2 * padding[0]
    dx = _kernels._conv_direct_backward_data(dspread, w, groups, h, wd, *padding, hp, wp, *dilation)
    kh, kw = w.shape[2:]
    dw = _kernels._conv_direct_backward_weight(xpad, dspread, groups, kh, kw, wp, *dilation)
    return dx, dw
