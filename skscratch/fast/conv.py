"""Convolution, compiled: the pair of `skscratch.conv`, with the same arguments and results.

Two algorithms, chosen per call by `algorithm` ("auto" by default):

- "im2col": the products of skscratch.conv, with the compiled im2col / col2im of
  `skscratch.fast.im2col` (a 1x1 convolution needs neither: it is a reshape, or a strided copy);
- "direct": kernels that convolve without im2col (`direct_forward`, `direct_backward`). When a
  group has only a few channels (the SK unit's 3x3 convolutions: 2-16 channels per group), each
  per-group product is a sliver (2 x 18 by 18 x L) on which matrix-product libraries waste their
  speed, and copying 9 shifted versions of the input costs more than the arithmetic. A stride-s
  convolution reads the padded input in s*s interleaved phases, each a stride-1 convolution
  (`skscratch.fast.phases`), so no work is thrown away;
- "auto": "direct" for windows larger than 1x1 with up to 16 input channels per group, else
  "im2col" (measured on a 2-core AVX2 machine at batch 128: direct was 1.5-4x faster for 2-16
  channels per group at stride 1 and 2, except for 16 channels per group at stride 2, where the
  two were even; dense 3x3 convolutions of 3-16 input channels, such as a network's first,
  took forward + backward 0.3-0.9x the time of im2col; 1x1 convolutions and wider groups keep
  the large matrix products that BLAS does well).

Both give the result of skscratch.conv up to rounding; the tests check that they do.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from skscratch.conv import checked_conv_args, checked_dout
from skscratch.fast import direct_backward, direct_forward, memory
from skscratch.fast.im2col import col2im, im2col
from skscratch.fast.phases import _pad_phases, _spread_rows, phase_geometry

ALGORITHMS = ("auto", "im2col", "direct")
# Up to this many input channels per group, "auto" convolves windows larger than 1x1 directly.
DIRECT_MAX_GROUP_WIDTH = 16


class ConvCache(NamedTuple):
    x: NDArray
    w: NDArray
    has_bias: bool
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    out_size: tuple[int, int]  # (H_out, W_out)
    algorithm: str  # "im2col" or "direct": the one the forward ran, and the backward runs


def choose_algorithm(algorithm: str, c_in_g: int, taps: int) -> str:
    """The algorithm a convolution of c_in_g input channels per group and `taps` kernel taps
    runs: `algorithm` itself, unless it is "auto"."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm == "auto":
        return "direct" if taps > 1 and c_in_g <= DIRECT_MAX_GROUP_WIDTH else "im2col"
    return algorithm


def conv2d_forward(
    x: NDArray,
    w: NDArray,
    b: NDArray | None = None,
    *,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    algorithm: str = "auto",
) -> tuple[NDArray, ConvCache]:
    """`skscratch.conv.conv2d_forward`, compiled. algorithm: see the module docstring."""
    checked, b = checked_conv_args(x, w, b, stride, padding, dilation, groups)
    c_out, c_in_g, kh, kw = checked.w.shape
    cache = ConvCache(*checked, choose_algorithm(algorithm, c_in_g, kh * kw))
    x, w, groups = cache.x, cache.w, cache.groups
    if cache.algorithm == "direct":
        out = _direct_forward(cache)
    else:
        cols = _columns(cache)  # (N, G, K, L)
        out = memory.empty((x.shape[0], c_out, *cache.out_size), x.dtype)
        length = cols.shape[-1]  # L, written out: -1 cannot be inferred for an empty batch
        out_g = out.reshape(x.shape[0], groups, c_out // groups, length)  # (N, G, C_out/G, L)
        np.matmul(w.reshape(groups, c_out // groups, -1), cols, out=out_g)
    if b is not None:
        out += b[None, :, None, None]
    return out, cache


def _columns(cache: ConvCache) -> NDArray:
    """im2col of the cached input, viewed per group: (N, G, C_in/G*KH*KW, H_out*W_out)."""
    x, (_, c_in_g, kh, kw) = cache.x, cache.w.shape
    cols = im2col(x, kh, kw, stride=cache.stride, padding=cache.padding, dilation=cache.dilation)
    length = cache.out_size[0] * cache.out_size[1]
    return cols.reshape(x.shape[0], cache.groups, c_in_g * kh * kw, length)


def conv2d_backward(
    dout: NDArray, cache: ConvCache, *, input_grad: bool = True, add_to: NDArray | None = None
) -> tuple[NDArray | None, NDArray, NDArray | None]:
    """`skscratch.conv.conv2d_backward`, compiled.

    add_to: an array like x that dx is added to in place and returned as dx, for gradients that
    sum over several paths (the direct kernels add as they write, saving a pass over memory).
    """
    x, w, groups = cache.x, cache.w, cache.groups
    dout = checked_dout(dout, cache)
    if add_to is not None and input_grad:
        _check_add_to(add_to, x)
        if cache.algorithm != "direct" or not add_to.flags.c_contiguous:  # add once dx is done
            dx, dw, db = conv2d_backward(dout, cache)
            add_to += dx
            return add_to, dw, db
    db = dout.sum(axis=(0, 2, 3)) if cache.has_bias else None
    if cache.algorithm == "direct":
        dx, dw = _direct_backward(dout, cache, input_grad, add_to)
        return dx, dw, db

    n, c_in = x.shape[:2]
    c_out, c_in_g, kh, kw = w.shape
    cols, length = _columns(cache), cache.out_size[0] * cache.out_size[1]
    dout_g = dout.reshape(n, groups, c_out // groups, length)  # (N, G, C_out/G, L)
    w_g = w.reshape(groups, c_out // groups, c_in_g * kh * kw)  # (G, C_out/G, K)
    dw = np.matmul(dout_g, cols.transpose(0, 1, 3, 2)).sum(axis=0).reshape(w.shape)
    if not input_grad:
        return None, dw, db
    dcols = memory.empty(cols.shape, x.dtype)  # (N, G, K, L)
    np.matmul(w_g.transpose(0, 2, 1), dout_g, out=dcols)
    window = dict(stride=cache.stride, padding=cache.padding, dilation=cache.dilation)
    dx = col2im(dcols.reshape(n, c_in * kh * kw, length), x.shape, kh, kw, **window)
    return dx, dw, db


def _check_add_to(add_to, x: NDArray) -> None:
    if not isinstance(add_to, np.ndarray) or add_to.shape != x.shape or add_to.dtype != x.dtype:
        got = (getattr(add_to, "shape", None), getattr(add_to, "dtype", type(add_to).__name__))
        raise ValueError(
            f"add_to must be an array of the input's shape {x.shape} and dtype {x.dtype}, "
            f"got shape {got[0]}, dtype {got[1]}"
        )
    if not add_to.flags.writeable:
        raise ValueError("add_to must be writeable: dx is added to it in place")


def _phases(cache: ConvCache):
    return phase_geometry(
        cache.x.shape, cache.w.shape[2:], cache.stride, cache.padding, cache.dilation,
        cache.out_size,
    )  # fmt: skip


def _padded_phases(x: NDArray, cache: ConvCache, g) -> NDArray:
    """x zero-padded and split into its stride phases (C, sh*sw, N * size), in scratch memory."""
    (sh, sw), (n, c) = cache.stride, x.shape[:2]
    xq = memory.empty((c, sh * sw, n * g.size), x.dtype)
    _pad_phases(x, *cache.padding, sh, sw, g.wq, g.size, xq)
    return xq


def _direct_forward(cache: ConvCache) -> NDArray:
    x, w, g = cache.x, cache.w, _phases(cache)
    out = memory.empty((x.shape[0], w.shape[0], *cache.out_size), x.dtype)
    if w.shape[2:] == (3, 3):  # the same, unrolled over the nine taps, padding as it goes
        direct_forward._conv3x3_direct_forward(
            np.ascontiguousarray(x), w, cache.groups, *cache.padding, *cache.stride,
            *cache.out_size, g.wq, g.size, g.block, g.phase, g.offset, out,
        )  # fmt: skip
        return out
    direct_forward._conv_direct_forward(
        _padded_phases(x, cache, g), w, cache.groups, *cache.out_size, g.wq, g.size, g.block,
        g.phase, g.offset, out,
    )  # fmt: skip
    return out


def _direct_backward(
    dout: NDArray, cache: ConvCache, input_grad: bool, add_to: NDArray | None
) -> tuple[NDArray | None, NDArray]:
    x, w, g = cache.x, cache.w, _phases(cache)
    kh, kw = w.shape[2:]
    three = (kh, kw) == (3, 3)  # kernels unrolled over the nine taps
    lead = int(g.offset.max())  # zeros before the first image, for the stride-1 gather
    n, c_out = dout.shape[:2]
    dspread = memory.empty((c_out, lead + n * g.size), dout.dtype)
    _spread_rows(np.ascontiguousarray(dout), g.wq, g.size, lead, dspread)
    dx = None
    if input_grad:
        add = add_to is not None
        dx = add_to if add else memory.empty(x.shape, x.dtype)
        head = (dx, add, dspread, w, cache.groups, *cache.padding)
        (dil_h, dil_w), block = cache.dilation, g.block
        if three and cache.stride == (1, 1):
            direct_backward._conv3x3_direct_backward_data_stride1(
                *head, g.wq, g.size, block, g.phase, -g.offset, lead
            )
        elif three and cache.stride == (2, 2) and dil_h % 2 == dil_w % 2:
            direct_backward._conv3x3_direct_backward_data_stride2(
                *head, g.wq, g.size, block, -g.offset, lead, dil_h % 2 == 1
            )
        else:
            direct_backward._conv_direct_backward_data(
                *head, *cache.stride, g.wq, g.size, block, g.phase, g.offset, lead
            )
    xq = _padded_phases(x, cache, g)
    if three:
        dw = direct_backward._conv3x3_direct_backward_weight(
            xq, dspread, cache.groups, g.size, g.block, g.phase, g.offset, lead
        )
    else:
        dw = direct_backward._conv_direct_backward_weight(
            xq, dspread, cache.groups, kh, kw, g.size, g.block, g.phase, g.offset, lead
        )
    return dx, dw
