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

The output size on each axis is H_out = (H + 2*padding - dilation*(KH - 1) - 1) // stride + 1.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from skscratch._checks import float_array, nonempty, pair, positive_int, same_dtype, shape_is
from skscratch.im2col import col2im, conv_output_size, im2col


class ConvCache(NamedTuple):
    x: NDArray  # the input; backward gathers its columns again
    w: NDArray
    has_bias: bool
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    out_size: tuple[int, int]  # (H_out, W_out)


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
    stride, padding, dilation: an int or an (h, w) pair.
    Returns out: (N, C_out, H_out, W_out) with
    H_out = (H + 2*padding - dilation*(KH - 1) - 1) // stride + 1 (and W_out likewise).
    """
    cache, b = checked_conv_args(x, w, b, stride, padding, dilation, groups)
    x, w, groups = cache.x, cache.w, cache.groups
    n, c_out, (h_out, w_out) = x.shape[0], w.shape[0], cache.out_size
    # _columns(cache) gives the im2col columns per group (N, G, K, L); multiply each group's
    # weights with its columns.
    # BEGIN SOLUTION
    cols = _columns(cache)  # (N, G, K, L)
    w_g = w.reshape(groups, c_out // groups, -1)  # (G, C_out/G, K)
    out = np.matmul(w_g, cols)  # (N, G, C_out/G, L)
    out = out.reshape(n, c_out, h_out, w_out)
    # END SOLUTION
    if b is not None:
        out += b[None, :, None, None]
    return out, cache


def _columns(cache: ConvCache) -> NDArray:
    """im2col of the cached input, viewed per group: (N, G, C_in/G*KH*KW, H_out*W_out).

    The backward pass gathers the columns again rather than keeping them from the forward: they
    are KH*KW times the size of x (divided by stride^2), and x is kept anyway by whoever made it.
    """
    x, (_, c_in_g, kh, kw) = cache.x, cache.w.shape
    cols = im2col(x, kh, kw, stride=cache.stride, padding=cache.padding, dilation=cache.dilation)
    length = cache.out_size[0] * cache.out_size[1]
    return cols.reshape(x.shape[0], cache.groups, c_in_g * kh * kw, length)


def conv2d_backward(
    dout: NDArray, cache: ConvCache, *, input_grad: bool = True
) -> tuple[NDArray | None, NDArray, NDArray | None]:
    """Gradients of the convolution.

    dout: (N, C_out, H_out, W_out). Returns dx: (N, C_in, H, W), dw: like w, db: (C_out,) or None.
    input_grad=False skips dx (returned as None), for a first layer whose input is the data.
    """
    x, w, has_bias, stride, padding, dilation, groups, out_size = cache
    n, c_in, _, _ = x.shape
    c_out, c_in_g, kh, kw = w.shape
    dout = checked_dout(dout, cache)
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    # dW: dout times the columns, summed over images; dx: col2im of W^T times dout.
    # BEGIN SOLUTION
    cols, length = _columns(cache), out_size[0] * out_size[1]
    dout_g = dout.reshape(n, groups, c_out // groups, length)  # (N, G, C_out/G, L)
    w_g = w.reshape(groups, c_out // groups, c_in_g * kh * kw)  # (G, C_out/G, K)
    dw = np.matmul(dout_g, cols.transpose(0, 1, 3, 2)).sum(axis=0).reshape(w.shape)
    if not input_grad:
        return None, dw, db
    dcols = np.matmul(w_g.transpose(0, 2, 1), dout_g)  # (N, G, K, L)
    dx = col2im(
        dcols.reshape(n, c_in * kh * kw, length),
        x.shape,
        kh,
        kw,
        stride=stride,
        padding=padding,
        dilation=dilation,
    )
    return dx, dw, db
    # END SOLUTION


def checked_conv_args(x, w, b, stride, padding, dilation, groups) -> tuple[ConvCache, NDArray]:
    """Check the convolution's arguments against each other; return them as a ConvCache (the
    arrays as arrays, stride, padding and dilation as pairs, with the output size), and b as
    an array (or None)."""
    x = float_array("x", x, ndim=4)
    w = float_array("w", w, ndim=4)
    nonempty("x", x)
    nonempty("w", w, batch=False)
    same_dtype("w", w, "x", x)
    groups = positive_int("groups", groups)
    c_in, h, wd = x.shape[1:]
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
    h_out = conv_output_size(h, kh, stride[0], padding[0], dilation[0])
    w_out = conv_output_size(wd, kw, stride[1], padding[1], dilation[1])
    if h_out < 1 or w_out < 1:
        raise ValueError(
            f"output size would be {h_out}x{w_out}: input {h}x{wd} with padding {padding} is "
            f"smaller than the dilated kernel"
        )
    cache = ConvCache(x, w, b is not None, stride, padding, dilation, groups, (h_out, w_out))
    return cache, b


def checked_dout(dout, cache) -> NDArray:
    """Check dout against the forward's output: (N, C_out, H_out, W_out), the input's dtype."""
    dout = float_array("dout", dout, ndim=4)
    same_dtype("dout", dout, "the forward input", cache.w)
    shape_is("dout", dout, (cache.x.shape[0], cache.w.shape[0], *cache.out_size))
    return dout
