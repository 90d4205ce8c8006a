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
  only a few channels (the SK unit's 3x3 convolutions: 2-16 channels per group), each per-group
  product is a sliver (2 x 18 by 18 x L) on which matrix-product libraries waste their speed,
  and copying 9 shifted versions of the input costs more than the arithmetic. A stride-s
  convolution reads the padded input in s*s interleaved phases, each a stride-1 convolution
  (see skscratch/_kernels.py), so no work is thrown away;
- "auto": "direct" for windows larger than 1x1 with up to 16 input channels per group, else
  "im2col" (measured on a 2-core AVX2 machine at batch 128: direct was 1.5-4x faster for 2-16
  channels per group at stride 1 and 2, except for 16 channels per group at stride 2, where the
  two were even; dense 3x3 convolutions of 3-16 input channels, such as a network's first,
  took forward + backward 0.3-0.9x the time of im2col; 1x1 convolutions and wider groups keep
  the large matrix products that BLAS does well).

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
# Up to this many input channels per group, "auto" convolves windows larger than 1x1 directly
# rather than by im2col.
DIRECT_MAX_GROUP_WIDTH = 16


class ConvCache(NamedTuple):
    x: NDArray  # the input; backward gathers its columns (or pads it) again
    w: NDArray
    has_bias: bool
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    out_size: tuple[int, int]  # (H_out, W_out)
    method: str

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return self.x.shape


def _choose_method(method: str | None, c_in_g: int, taps: int) -> str:
    method = method or os.environ.get("SKSCRATCH_CONV") or "auto"
    if method not in METHODS:
        raise ValueError(f"method (or $SKSCRATCH_CONV) must be one of {METHODS}, got {method!r}")
    if method == "auto":
        direct = taps > 1 and c_in_g <= DIRECT_MAX_GROUP_WIDTH
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

    method = _choose_method(method, c_in_g, kh * kw)
    h_out = conv_output_size(h, kh, stride[0], padding[0], dilation[0])
    w_out = conv_output_size(wd, kw, stride[1], padding[1], dilation[1])
    if h_out < 1 or w_out < 1:
        raise ValueError(
            f"output size would be {h_out}x{w_out}: input {h}x{wd} with padding {padding} is "
            f"smaller than the dilated kernel"
        )

    cache = ConvCache(
        x, w, b is not None, stride, padding, dilation, groups, (h_out, w_out), method
    )
    if method == "direct":
        out = _direct_forward(cache)
    else:
        # _columns(cache) gives the im2col columns per group (N, G, K, L); multiply each group's
        # weights with its columns.
        # BEGIN SOLUTION
        cols = _columns(cache)  # (N, G, K, L)
        w_g = w.reshape(groups, c_out // groups, c_in_g * kh * kw)  # (G, C_out/G, K)
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
    gather = im2col_reference if cache.method == "reference" else im2col
    cols = gather(x, kh, kw, stride=cache.stride, padding=cache.padding, dilation=cache.dilation)
    length = cache.out_size[0] * cache.out_size[1]
    return cols.reshape(x.shape[0], cache.groups, c_in_g * kh * kw, length)


def conv2d_backward(
    dout: NDArray, cache: ConvCache, *, input_grad: bool = True, add_to: NDArray | None = None
) -> tuple[NDArray | None, NDArray, NDArray | None]:
    """Gradients of the convolution.

    dout: (N, C_out, H_out, W_out). Returns dx: (N, C_in, H, W), dw: like w, db: (C_out,) or None.
    input_grad=False skips dx (returned as None), for a first layer whose input is the data.
    add_to: an array like x that dx is added to in place and returned as dx, for gradients that
    sum over several paths (the direct kernels add as they write, saving a pass over memory).
    """
    x, w, has_bias, stride, padding, dilation, groups, out_size, method = cache
    n, c_in, _, _ = x.shape
    c_out, c_in_g, kh, kw = w.shape
    dout = float_array("dout", dout, ndim=4)
    same_dtype("dout", dout, "the forward input", w)
    shape_is("dout", dout, (n, c_out, *out_size))
    if add_to is not None and input_grad:
        _check_add_to(add_to, x)
        if method != "direct" or not add_to.flags.c_contiguous:  # add once dx is done
            dx, dw, db = conv2d_backward(dout, cache)
            add_to += dx
            return add_to, dw, db
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    if method == "direct":
        dx, dw = _direct_backward(dout, cache, input_grad, add_to)
        return dx, dw, db

    # dW: dout times the columns, summed over images; dx: col2im of W^T times dout.
    # BEGIN SOLUTION
    cols, length = _columns(cache), out_size[0] * out_size[1]
    dout_g = dout.reshape(n, groups, c_out // groups, length)  # (N, G, C_out/G, L)
    w_g = w.reshape(groups, c_out // groups, c_in_g * kh * kw)  # (G, C_out/G, K)
    dw = np.matmul(dout_g, cols.transpose(0, 1, 3, 2)).sum(axis=0).reshape(w.shape)
    if not input_grad:
        return None, dw, db
    dcols = np.matmul(w_g.transpose(0, 2, 1), dout_g)  # (N, G, K, L)
    scatter = col2im_reference if method == "reference" else col2im
    dx = scatter(
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


def _check_add_to(add_to, x: NDArray) -> None:
    if not isinstance(add_to, np.ndarray) or add_to.shape != x.shape or add_to.dtype != x.dtype:
        got = (getattr(add_to, "shape", None), getattr(add_to, "dtype", type(add_to).__name__))
        raise ValueError(
            f"add_to must be an array of the input's shape {x.shape} and dtype {x.dtype}, "
            f"got shape {got[0]}, dtype {got[1]}"
        )
    if not add_to.flags.writeable:
        raise ValueError("add_to must be writeable: dx is added to it in place")


# The direct path: the kernels read each zero-padded input plane, split into its stride phases,
# as flat rows of width WQ, the images of a channel one after another (see skscratch/_kernels.py);
# forward and backward each pad x so.

# Images per block in the direct kernels: enough that a block's flat row is at least about a
# thousand values long (long SIMD loops), few enough that a block stays in the core's cache
# (measured on 2 AVX2 cores: 1024 beat 4096 and 8192 on 8x8 planes and at stride 2).
_BLOCK_VALUES = 1024


class _Phases(NamedTuple):
    wq: int  # columns of each phase plane (its flat row width)
    size: int  # flat length of one image's phase plane, with zeros after the last row
    block: int  # images per block
    phase: NDArray  # (KH, KW): which phase tap (i, j) reads
    offset: NDArray  # (KH, KW): where in it, flat


def _phase_geometry(cache: ConvCache) -> _Phases:
    (_, _, h, wd), (kh, kw) = cache.x.shape, cache.w.shape[2:]
    (sh, sw), (dh, dw) = cache.stride, cache.dilation
    hq = -(-(h + 2 * cache.padding[0]) // sh)
    wq = -(-(wd + 2 * cache.padding[1]) // sw)
    i, j = np.arange(kh)[:, None] * dh, np.arange(kw)[None, :] * dw
    phase = (i % sh) * sw + j % sw
    offset = (i // sh) * wq + j // sw
    # The widest tap reads a whole output's worth (HO * WQ) from its offset on.
    size = max(hq * wq, int(offset.max()) + cache.out_size[0] * wq)
    block = max(1, _BLOCK_VALUES // size)
    return _Phases(wq, size, block, phase.astype(np.int64), offset.astype(np.int64))


def _direct_forward(cache: ConvCache) -> NDArray:
    x, w, g = cache.x, cache.w, _phase_geometry(cache)
    if w.shape[2:] == (3, 3):  # the same, unrolled over the nine taps, padding as it goes
        return _kernels._conv3x3_direct_forward(
            np.ascontiguousarray(x), w, cache.groups, *cache.padding, *cache.stride,
            *cache.out_size, g.wq, g.size, g.block, g.phase, g.offset,
        )  # fmt: skip
    xq = _kernels._pad_phases(x, *cache.padding, *cache.stride, g.wq, g.size)
    return _kernels._conv_direct_forward(
        xq, w, cache.groups, *cache.out_size, g.wq, g.size, g.block, g.phase, g.offset
    )


def _direct_backward(
    dout: NDArray, cache: ConvCache, input_grad: bool, add_to: NDArray | None
) -> tuple[NDArray | None, NDArray]:
    x, w, g = cache.x, cache.w, _phase_geometry(cache)
    kh, kw = w.shape[2:]
    three = (kh, kw) == (3, 3)  # kernels unrolled over the nine taps
    lead = int(g.offset.max())  # zeros before the first image, for the stride-1 gather
    dspread = _kernels._spread_rows(np.ascontiguousarray(dout), g.wq, g.size, lead)
    dx = None
    if input_grad:
        add = add_to is not None
        dx = add_to if add else np.empty(x.shape, dtype=x.dtype)
        head = (dx, add, dspread, w, cache.groups, *cache.padding)
        (dil_h, dil_w), block = cache.dilation, g.block
        if three and cache.stride == (1, 1):
            _kernels._conv3x3_direct_backward_data_stride1(
                *head, g.wq, g.size, block, g.phase, -g.offset, lead
            )
        elif three and cache.stride == (2, 2) and dil_h % 2 == dil_w % 2:
            _kernels._conv3x3_direct_backward_data_stride2(
                *head, g.wq, g.size, block, -g.offset, lead, dil_h % 2 == 1
            )
        else:
            _kernels._conv_direct_backward_data(
                *head, *cache.stride, g.wq, g.size, block, g.phase, g.offset, lead
            )
    xq = _kernels._pad_phases(x, *cache.padding, *cache.stride, g.wq, g.size)
    if three:
        dw = _kernels._conv3x3_direct_backward_weight(
            xq, dspread, cache.groups, g.size, g.block, g.phase, g.offset, lead
        )
    else:
        dw = _kernels._conv_direct_backward_weight(
            xq, dspread, cache.groups, kh, kw, g.size, g.block, g.phase, g.offset, lead
        )
    return dx, dw
