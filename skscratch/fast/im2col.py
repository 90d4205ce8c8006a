"""im2col and col2im, compiled: the same results as `skscratch.im2col`, without a padded copy.

`im2col` and `col2im` here take the arguments of `skscratch.im2col.im2col` / `col2im` and return
the same arrays (col2im up to the rounding of its sums). The kernels run in parallel over
(image, channel) planes, so no two threads ever write the same element: col2im's overlapping
taps add within one thread.
"""

from __future__ import annotations

from collections.abc import Sequence

from numba import njit, prange
from numpy.typing import NDArray

from skscratch._checks import float_array, nonempty
from skscratch.fast import memory
from skscratch.fast._rows import _add_every, _copy_every, _valid_range, _zero
from skscratch.im2col import checked_col2im_args, window_geometry


@njit(cache=True, parallel=True)
def _im2col(x, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, cols):
    """(N, C, H, W) -> (N, C*KH*KW, HO*WO); rows ordered (c, i, j); padding reads as zero.

    Each output row is written once, its padding zeros included, by copying input rows into it
    (at stride 1 a contiguous copy, which the compiler vectorises)."""
    n_img, n_ch, h, w = x.shape
    for nc in prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        for i in range(kh):
            oy_lo, oy_hi = _valid_range(i * dh - ph, sh, h, ho)
            for j in range(kw):
                ox_lo, ox_hi = _valid_range(j * dw - pw, sw, w, wo)
                x0 = ox_lo * sw + j * dw - pw  # the input column of output column ox_lo
                dst = cols[n, (c * kh + i) * kw + j]
                _zero(dst[: oy_lo * wo])
                for oy in range(oy_lo, oy_hi):
                    row = dst[oy * wo : (oy + 1) * wo]
                    _zero(row[:ox_lo])
                    _copy_every(row[ox_lo:ox_hi], x[n, c, oy * sh + i * dh - ph], x0, sw)
                    _zero(row[ox_hi:])
                _zero(dst[oy_hi * wo :])


@njit(cache=True, parallel=True)
def _col2im(cols, n_ch, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, dx):
    """The adjoint of `_im2col`: (N, C*KH*KW, HO*WO) -> (N, C, H, W), overlapping taps add.

    Each (image, channel) plane belongs to one iteration, which zeroes it and adds every tap's
    rows into it (at stride 1 a contiguous add)."""
    n_img = cols.shape[0]
    for nc in prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        for y in range(h):
            _zero(dx[n, c, y])
        for i in range(kh):
            oy_lo, oy_hi = _valid_range(i * dh - ph, sh, h, ho)
            for j in range(kw):
                ox_lo, ox_hi = _valid_range(j * dw - pw, sw, w, wo)
                x0 = ox_lo * sw + j * dw - pw
                src = cols[n, (c * kh + i) * kw + j]
                for oy in range(oy_lo, oy_hi):
                    row = src[oy * wo + ox_lo : oy * wo + ox_hi]
                    _add_every(dx[n, c, oy * sh + i * dh - ph], x0, sw, row)


@njit(cache=True, parallel=True)
def _every_stride(x, sh, sw, out):
    """x[:, :, ::sh, ::sw] as a new array: the columns of a 1x1 window without padding."""
    n_img, n_ch, h, w = x.shape
    ho, wo = (h - 1) // sh + 1, (w - 1) // sw + 1
    for nc in prange(n_img * n_ch):
        src, dst = x[nc // n_ch, nc % n_ch], out[nc // n_ch, nc % n_ch]
        for y in range(ho):
            for k in range(wo):
                dst[y, k] = src[y * sh, k * sw]


@njit(cache=True, parallel=True)
def _to_every_stride(cols, h, w, sh, sw, dx):
    """The adjoint of `_every_stride`: (N, C, HO, WO) -> (N, C, H, W) with the values at every
    (sh, sw)-th pixel and zeros between, each plane written in one pass."""
    n_img, n_ch, ho, wo = cols.shape
    for nc in prange(n_img * n_ch):
        src, dst = cols[nc // n_ch, nc % n_ch], dx[nc // n_ch, nc % n_ch]
        for y in range(h):
            _zero(dst[y])
            if y % sh == 0:
                for k in range(wo):
                    dst[y, k * sw] = src[y // sh, k]


def im2col(x: NDArray, kh: int, kw: int, *, stride=1, padding=0, dilation=1) -> NDArray:
    """`skscratch.im2col.im2col` by the compiled kernel; the same result, exactly.

    x: (N, C, H, W). Returns cols: (N, C*KH*KW, H_out*W_out), rows ordered (c, i, j).
    """
    x = float_array("x", x, ndim=4)
    nonempty("x", x)
    kh, kw, (sh, sw), (ph, pw), (dh, dw), (ho, wo) = window_geometry(
        x.shape, kh, kw, stride, padding, dilation
    )
    if _is_pointwise(kh, kw, ph, pw):
        # A 1x1 window without padding gathers every stride-th pixel once: a reshape at stride 1,
        # a strided copy otherwise.
        if (sh, sw) == (1, 1):
            return x.reshape(x.shape[0], x.shape[1], ho * wo)
        out = memory.empty((x.shape[0], x.shape[1], ho, wo), x.dtype)
        _every_stride(x, sh, sw, out)
        return out.reshape(x.shape[0], x.shape[1], ho * wo)
    cols = memory.empty((x.shape[0], x.shape[1] * kh * kw, ho * wo), x.dtype)
    _im2col(x, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, cols)
    return cols


def col2im(
    cols: NDArray, x_shape: Sequence[int], kh: int, kw: int, *, stride=1, padding=0, dilation=1
) -> NDArray:
    """`skscratch.im2col.col2im` by the compiled kernel; equal to it up to rounding.

    cols: (N, C*KH*KW, H_out*W_out). Returns dx: x_shape = (N, C, H, W).
    """
    cols, x_shape, geometry = checked_col2im_args(cols, x_shape, kh, kw, stride, padding, dilation)
    kh, kw, (sh, sw), (ph, pw), (dh, dw), (ho, wo) = geometry
    n, c, h, w = x_shape
    if _is_pointwise(kh, kw, ph, pw) and (sh, sw) == (1, 1):
        return cols.reshape(x_shape)
    dx = memory.empty(x_shape, cols.dtype)
    if _is_pointwise(kh, kw, ph, pw):  # the pixels between the strides get nothing
        _to_every_stride(cols.reshape(n, c, ho, wo), h, w, sh, sw, dx)
    else:
        _col2im(cols, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, dx)
    return dx


def _is_pointwise(kh, kw, ph, pw) -> bool:
    """A 1x1 window without padding: each output reads a single pixel (dilation is moot)."""
    return kh == kw == 1 and ph == pw == 0
