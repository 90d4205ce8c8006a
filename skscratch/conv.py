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
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from skscratch._checks import float_array, pair, positive_int, same_dtype, shape_is
from skscratch.im2col import col2im, conv_output_size, im2col


class ConvCache(NamedTuple):
    x_shape: tuple[int, int, int, int]
    w: NDArray
    cols: NDArray  # (N, G, C_in/G*KH*KW, L)
    has_bias: bool
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int


def conv2d_forward(
    x: NDArray,
    w: NDArray,
    b: NDArray | None = None,
    *,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
) -> tuple[NDArray, ConvCache]:
    """Convolution of x with w, as `torch.nn.functional.conv2d`.

    x: (N, C_in, H, W); w: (C_out, C_in // groups, KH, KW); b: (C_out,) or None.
    stride, padding, dilation: an int or an (h, w) pair. Returns out: (N, C_out, H_out, W_out) with
    H_out = (H + 2*padding - dilation*(KH - 1) - 1) // stride + 1 (and W_out likewise).
    """
    x = float_array("x", x, ndim=4)
    w = float_array("w", w, ndim=4)
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

    cols = im2col(x, kh, kw, stride=stride, padding=padding, dilation=dilation)
    cols = cols.reshape(n, groups, c_in_g * kh * kw, -1)  # (N, G, K, L)
    w_g = w.reshape(groups, c_out // groups, c_in_g * kh * kw)  # (G, C_out/G, K)
    out = np.matmul(w_g, cols)  # (N, G, C_out/G, L)
    h_out = conv_output_size(h, kh, stride[0], padding[0], dilation[0])
    w_out = conv_output_size(wd, kw, stride[1], padding[1], dilation[1])
    out = out.reshape(n, c_out, h_out, w_out)
    if b is not None:
        out += b[None, :, None, None]
    cache = ConvCache(x.shape, w, cols, b is not None, stride, padding, dilation, groups)
    return out, cache


def conv2d_backward(dout: NDArray, cache: ConvCache) -> tuple[NDArray, NDArray, NDArray | None]:
    """Gradients of the convolution.

    dout: (N, C_out, H_out, W_out). Returns dx: (N, C_in, H, W), dw: like w, db: (C_out,) or None.
    """
    x_shape, w, cols, has_bias, stride, padding, dilation, groups = cache
    n, c_in, _, _ = x_shape
    c_out, c_in_g, kh, kw = w.shape
    length = cols.shape[3]
    dout = float_array("dout", dout, ndim=4)
    same_dtype("dout", dout, "the forward input", cols)
    shape_is("dout", dout, (n, c_out, dout.shape[2], dout.shape[3]))
    if dout.shape[2] * dout.shape[3] != length:
        raise ValueError(f"dout has spatial size {dout.shape[2:]}, the forward output had {length}")

    dout_g = dout.reshape(n, groups, c_out // groups, length)  # (N, G, C_out/G, L)
    w_g = w.reshape(groups, c_out // groups, c_in_g * kh * kw)  # (G, C_out/G, K)
    dw = np.matmul(dout_g, cols.transpose(0, 1, 3, 2)).sum(axis=0).reshape(w.shape)
    dcols = np.matmul(w_g.transpose(0, 2, 1), dout_g)  # (N, G, K, L)
    dx = col2im(
        dcols.reshape(n, c_in * kh * kw, length),
        x_shape,
        kh,
        kw,
        stride=stride,
        padding=padding,
        dilation=dilation,
    )
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dw, db
